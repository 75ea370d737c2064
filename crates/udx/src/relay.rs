//! Relaying, as libudx's `udx_stream_relay_to` does it: a stream whose packets are not processed
//! but passed on, re-addressed, to another stream's peer. Two streams on one socket relaying to
//! each other join their two peers into one UDX connection that runs end to end; that is what a
//! blind relay is made of.
//!
//! The protocol side lives in [`crate::proto::Endpoint`]; this is the handle side.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::shared::{Event, StreamShared};
use crate::{UdxError, UdxSocket, UdxStream};

impl UdxStream {
    /// Forwards every packet that arrives for this stream to `destination`'s peer instead of
    /// processing it (libudx's `relayTo`). Call it on both streams of a pair to relay both ways.
    ///
    /// Call it before [`UdxStream::connect`] or [`UdxStream::connect_on_first_packet`], so that
    /// no packet is ever taken in by this stream itself (which would acknowledge data the far
    /// peer never gets). Both streams must live on the same socket. Calling it again changes the
    /// destination. A relayed stream's handle reads nothing and writes nothing; dropping it ends
    /// the relaying.
    pub fn relay_to(&self, destination: &UdxStream) -> Result<(), UdxError> {
        if !Arc::ptr_eq(&self.shared.core(), &destination.shared.core()) {
            return Err(UdxError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "relay_to: both streams must live on the same socket; create the destination stream on this stream's socket",
            )));
        }
        if Arc::ptr_eq(&self.shared, &destination.shared) {
            return Err(UdxError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "relay_to: a stream cannot relay to itself",
            )));
        }
        {
            let st = self.shared.lock();
            if st.closed.is_some() {
                return Err(UdxError::StreamClosed);
            }
            if st.connect_requested {
                return Err(UdxError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "relay_to: call it before connect, so that no packet is taken in by the relaying stream itself",
                )));
            }
        }
        self.shared.send_event(Event::Relay(
            self.shared.clone(),
            destination.shared.clone(),
        ));
        Ok(())
    }

    /// The socket this stream lives on (the one it moved to, after
    /// [`UdxStream::change_remote`]). A relay pairs streams on the socket that carries the
    /// connection they were negotiated over: that is where both peers can reach it.
    pub fn socket(&self) -> UdxSocket {
        UdxSocket {
            core: self.shared.core(),
        }
    }

    /// A detached view of this stream (its peer, its counters, its end) that stays usable
    /// after the stream was handed to an encryption layer or dropped: a relay pairing must
    /// outlive the traffic of the stream it carries, and a relay pairs on a connection's socket
    /// with that connection's peer.
    pub fn observer(&self) -> StreamObserver {
        StreamObserver {
            shared: self.shared.clone(),
        }
    }
}

/// See [`UdxStream::observer`].
#[derive(Clone)]
pub struct StreamObserver {
    pub(crate) shared: Arc<StreamShared>,
}

impl StreamObserver {
    /// The peer address, once connected.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.lock().remote_addr
    }

    /// Counters and estimates of the stream.
    pub fn stats(&self) -> crate::StreamStats {
        self.shared.lock().stats
    }

    /// Resolves once the stream is over: both directions ended and were acknowledged, or it
    /// was destroyed, reset, or timed out (also after its handle was dropped, as a stream shut
    /// down and dropped finishes in the background). A stream dropped before it ever had a
    /// peer is simply forgotten; this then never resolves.
    pub fn done(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        std::future::poll_fn(move |cx: &mut Context<'_>| {
            let mut st = shared.lock();
            if st.finished || st.closed.is_some() {
                return Poll::Ready(());
            }
            // The driver wakes these when the stream finishes or closes (and when it connects,
            // after which this simply waits again).
            if !st.connect_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                st.connect_wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}
