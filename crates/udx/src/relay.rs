//! Relaying, as libudx's `udx_stream_relay_to` does it: a stream whose packets are not processed
//! but passed on, re-addressed, to another stream's peer. Two streams on one socket relaying to
//! each other join their two peers into one UDX connection that runs end to end; that is what a
//! blind relay is made of.
//!
//! A relayed stream has no protocol state of its own in use: no acks, no retransmissions, no
//! congestion control (the peers' streams do all of that end to end, over the longer path), and
//! it never reads what it forwards. It only knows its own peer (id and address, from `connect` or
//! from the first packet), where its packets go, and when it ends:
//!
//! - a packet from its peer goes out at once to the destination's peer, with the destination's
//!   remote id in the header and every other byte as it came; packets from any other address
//!   are dropped, so a relay passes on only the traffic of the two peers it paired;
//! - a DESTROY from its peer is passed on too, then the stream closes, and so does every stream
//!   relaying into it (nothing could reach its peer any more);
//! - destroying or dropping a relayed stream's handle closes it (and the streams relaying into
//!   it) without sending anything: the peers find out from their own streams, as with libudx.
//!
//! Packets that arrive before the destination's peer is known are dropped; the peers'
//! retransmissions carry the connection over that moment.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use crate::conn::Conn;
use crate::outbox::Outbox;
use crate::shared::{CloseReason, Event, StreamShared};
use crate::socket::lock;
use crate::wire::{Header, FLAG_DESTROY, HEADER_SIZE};
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
        if !Arc::ptr_eq(&self.core, &destination.core) {
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
        self.core.send_event(Event::Relay(
            self.shared.clone(),
            destination.shared.clone(),
        ));
        Ok(())
    }

    /// The socket this stream lives on. A relay pairs streams on the socket that carries the
    /// connection they were negotiated over: that is where both peers can reach it.
    pub fn socket(&self) -> UdxSocket {
        UdxSocket {
            core: self.core.clone(),
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
    shared: Arc<StreamShared>,
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

/// A stream that relays: its state (peer, held packets) and where its packets go.
struct Relayed {
    conn: Conn,
    to: Arc<StreamShared>,
    forwarded: u64,
}

impl Relayed {
    /// Shows the count on the handle ([`crate::StreamStats::packets_received`]); the lock is
    /// the handle's, which nobody else takes while the stream relays.
    fn publish_stats(&self) {
        self.conn.shared.lock().stats.packets_received = self.forwarded;
    }
}

/// The relayed streams of one socket, kept by its driver apart from the streams it runs.
#[derive(Default)]
pub(crate) struct Relays {
    streams: HashMap<u32, Relayed>,
}

impl Relays {
    fn get(&self, shared: &Arc<StreamShared>) -> Option<&Relayed> {
        self.streams
            .get(&shared.local_id)
            .filter(|r| Arc::ptr_eq(&r.conn.shared, shared))
    }

    fn is_relayed(&self, shared: &Arc<StreamShared>) -> bool {
        self.get(shared).is_some()
    }

    /// Takes the events that concern relaying (and relayed streams); gives back the others.
    pub(crate) fn on_event(
        &mut self,
        ev: Event,
        conns: &mut HashMap<u32, Conn>,
        out: &mut Outbox,
        registry: &Mutex<std::collections::HashSet<u32>>,
    ) -> Option<Event> {
        match ev {
            Event::Relay(from, to) => {
                self.start(from, to, conns);
                None
            }
            Event::Connect(shared, remote_id, addr) if self.is_relayed(&shared) => {
                let id = shared.local_id;
                let held = match self.streams.get_mut(&id) {
                    Some(r) => r.conn.connect(remote_id, addr),
                    None => Vec::new(),
                };
                for (packet, from) in held {
                    if let Some(h) = Header::decode(&packet) {
                        self.on_datagram(&h, &packet, from, conns, out, registry);
                    }
                }
                None
            }
            Event::Destroy(shared) | Event::Dropped(shared) if self.is_relayed(&shared) => {
                self.close(shared.local_id, CloseReason::Destroyed, registry);
                None
            }
            Event::Wake(shared) if self.is_relayed(&shared) => None,
            other => Some(other),
        }
    }

    fn start(
        &mut self,
        from: Arc<StreamShared>,
        to: Arc<StreamShared>,
        conns: &mut HashMap<u32, Conn>,
    ) {
        let id = from.local_id;
        if let Some(r) = self
            .streams
            .get_mut(&id)
            .filter(|r| Arc::ptr_eq(&r.conn.shared, &from))
        {
            r.to = to;
            return;
        }
        if !conns
            .get(&id)
            .is_some_and(|c| Arc::ptr_eq(&c.shared, &from))
        {
            return; // already gone
        }
        if let Some(conn) = conns.remove(&id) {
            self.streams.insert(
                id,
                Relayed {
                    conn,
                    to,
                    forwarded: 0,
                },
            );
        }
    }

    /// Passes on a packet for a relayed stream. Returns false if `h.stream_id` is not one.
    pub(crate) fn on_datagram(
        &mut self,
        h: &Header,
        packet: &[u8],
        from: SocketAddr,
        conns: &HashMap<u32, Conn>,
        out: &mut Outbox,
        registry: &Mutex<std::collections::HashSet<u32>>,
    ) -> bool {
        let id = h.stream_id;
        let Some(r) = self.streams.get_mut(&id) else {
            return false;
        };
        let from_peer = match r.conn.remote {
            Some(peer) => peer.addr == from,
            // Held until connect, or adopted as the peer by connect_on_first_packet.
            None => r.conn.accept_unconnected(packet, from),
        };
        if !from_peer {
            return true;
        }
        r.forwarded += 1;
        r.publish_stats();
        let to = r.to.clone();
        let dest = self
            .streams
            .get(&to.local_id)
            .map(|d| &d.conn)
            .or_else(|| conns.get(&to.local_id))
            .filter(|c| Arc::ptr_eq(&c.shared, &to))
            .and_then(|c| c.remote);
        if let Some(dest) = dest {
            let mut header = *h;
            header.stream_id = dest.id;
            out.push_packet(dest.addr, &header, 0, &packet[HEADER_SIZE..]);
        }
        if h.flags & FLAG_DESTROY != 0 {
            self.close(id, CloseReason::Reset, registry);
        }
        true
    }

    /// Ends a relayed stream, and the streams relaying into it.
    fn close(
        &mut self,
        id: u32,
        reason: CloseReason,
        registry: &Mutex<std::collections::HashSet<u32>>,
    ) {
        let Some(mut r) = self.streams.remove(&id) else {
            return;
        };
        r.conn.close(reason);
        lock(registry).remove(&id);
        let into: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, o)| Arc::ptr_eq(&o.to, &r.conn.shared))
            .map(|(id, _)| *id)
            .collect();
        for id in into {
            self.close(id, reason, registry);
        }
    }

    /// Ends every relayed stream (the driver is going away).
    pub(crate) fn close_all(&mut self) {
        for r in self.streams.values_mut() {
            r.conn.close(CloseReason::SocketClosed);
        }
        self.streams.clear();
    }
}
