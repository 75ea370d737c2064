//! Moving a connected stream to another peer address, and possibly another socket, as libudx's
//! `udx_stream_change_remote` does it (hyperdht moves a relayed connection to the path a later
//! holepunch opened this way). The protocol side is [`crate::proto::Stream::change_remote`];
//! this is the handle side, and the hand-over between the two sockets' drivers:
//!
//! 1. the new socket reserves the id (its registry) and is told to expect the stream
//!    ([`Event::Expect`]): events the handle sends from now on wait there;
//! 2. the handle points at the new socket, all under the lock that every event is sent under,
//!    so no event reaches the old driver after step 3;
//! 3. the old driver takes the stream's protocol state out of its endpoint and passes it on
//!    ([`Event::MoveOut`], then [`Event::MoveIn`]); the new driver takes it in, changes its
//!    remote, and replays the events that waited.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use crate::relay::StreamObserver;
use crate::shared::lock;
use crate::shared::{Event, Handover, StreamShared};
use crate::{UdxError, UdxSocket, UdxStream};

impl UdxStream {
    /// Moves this connected stream to `remote_id` at `addr`, on `socket` (which may be
    /// another socket than the one it lives on), keeping its sequence space, unacknowledged
    /// data and receive state (udx-native's `changeRemote`). From now on it sends only there
    /// and hears only packets from `addr` on `socket`; what was in flight is resent there.
    /// [`UdxStream::remote_changed`] resolves once everything sent before the change was
    /// acknowledged. The stream id must be free on `socket`.
    pub fn change_remote(
        &self,
        socket: &UdxSocket,
        remote_id: u32,
        addr: SocketAddr,
    ) -> Result<(), UdxError> {
        change_remote(&self.shared, socket, remote_id, addr, None)
    }

    /// [`UdxStream::change_remote`] to the socket of `placeholder`, an unconnected stream
    /// with this stream's id that was listening there: it gives way, and the packets it held
    /// (the new peer's first ones on the new path) are processed by this stream. This is how
    /// a stream follows a peer that moved first: hyperdht's `firewall` hook sees the peer's
    /// packets arrive on another socket and changes the remote to their sender.
    pub fn change_remote_into(
        &self,
        placeholder: UdxStream,
        remote_id: u32,
        addr: SocketAddr,
    ) -> Result<(), UdxError> {
        change_remote_into(&self.shared, placeholder, remote_id, addr)
    }

    /// Resolves once the last [`UdxStream::change_remote`] is complete: everything sent
    /// before it was acknowledged from the new address. Fails if the stream closes first.
    pub async fn remote_changed(&self) -> Result<(), UdxError> {
        remote_changed(&self.shared).await
    }

    /// For a stream that is not connected: resolves with the sender of the first packet that
    /// arrives for it (and is held until it connects, or passed on by
    /// [`UdxStream::change_remote_into`]).
    pub async fn first_packet_from(&self) -> Result<SocketAddr, UdxError> {
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            if let Some(from) = st.first_held_from {
                return Poll::Ready(Ok(from));
            }
            if st.closed.is_some() || st.finished {
                return Poll::Ready(Err(UdxError::StreamClosed));
            }
            if !st.connect_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                st.connect_wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Sends `payload` (at most one packet's worth) as an unordered, unacknowledged datagram
    /// on the stream (udx-native's `trySend`). hyperdht sends an empty one on the new path
    /// once a move completed, so that the peer sees that path carry traffic.
    pub fn send_message(&self, payload: &[u8]) {
        send_message(&self.shared, payload);
    }
}

impl StreamObserver {
    /// [`UdxStream::change_remote`], for a stream whose handle was handed to an encryption
    /// layer.
    pub fn change_remote(
        &self,
        socket: &UdxSocket,
        remote_id: u32,
        addr: SocketAddr,
    ) -> Result<(), UdxError> {
        change_remote(&self.shared, socket, remote_id, addr, None)
    }

    /// [`UdxStream::change_remote_into`].
    pub fn change_remote_into(
        &self,
        placeholder: UdxStream,
        remote_id: u32,
        addr: SocketAddr,
    ) -> Result<(), UdxError> {
        change_remote_into(&self.shared, placeholder, remote_id, addr)
    }

    /// [`UdxStream::remote_changed`].
    pub async fn remote_changed(&self) -> Result<(), UdxError> {
        remote_changed(&self.shared).await
    }

    /// [`UdxStream::send_message`].
    pub fn send_message(&self, payload: &[u8]) {
        send_message(&self.shared, payload);
    }
}

fn send_message(shared: &Arc<StreamShared>, payload: &[u8]) {
    shared.send_event(Event::Message(
        shared.clone(),
        bytes::Bytes::copy_from_slice(payload),
    ));
}

fn change_remote_into(
    shared: &Arc<StreamShared>,
    placeholder: UdxStream,
    remote_id: u32,
    addr: SocketAddr,
) -> Result<(), UdxError> {
    let invalid = |why: &str| {
        Err(UdxError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("change_remote_into: {why}"),
        )))
    };
    if placeholder.shared.local_id != shared.local_id {
        return invalid("the placeholder must have the moving stream's id");
    }
    {
        let st = placeholder.shared.lock();
        if st.connect_requested || st.closed.is_some() {
            return invalid("the placeholder must be a stream that was never connected");
        }
    }
    let socket = placeholder.socket();
    change_remote(shared, &socket, remote_id, addr, Some(placeholder))
}

fn change_remote(
    shared: &Arc<StreamShared>,
    socket: &UdxSocket,
    remote_id: u32,
    addr: SocketAddr,
    placeholder: Option<UdxStream>,
) -> Result<(), UdxError> {
    if addr.port() == 0 {
        return Err(UdxError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "change_remote: the new address has port 0; pass the peer's real address",
        )));
    }
    let addr = crate::proto::normalize(addr);
    // Held to the end: every event of this stream is sent under it (see the module docs).
    let mut core = shared.lock_core();
    {
        let st = shared.lock();
        if st.closed.is_some() || st.finished {
            return Err(UdxError::StreamClosed);
        }
        if st.remote_addr.is_none() {
            return Err(UdxError::NotConnected);
        }
    }
    let same_socket = Arc::ptr_eq(&core, &socket.core);
    // A placeholder holds the id on its socket already, for this stream.
    if same_socket && placeholder.is_some()
        || !same_socket
            && placeholder.is_none()
            && !lock(&socket.core.registry).insert(shared.local_id)
    {
        return Err(UdxError::StreamIdInUse(shared.local_id));
    }
    {
        let mut st = shared.lock();
        st.remote_addr = Some(addr);
        st.remote_changing = true;
    }
    if same_socket {
        core.send_event(Event::ChangeRemote(shared.clone(), remote_id, addr));
        return Ok(());
    }
    socket.core.send_event(Event::Expect(shared.clone()));
    let from = std::mem::replace(&mut *core, socket.core.clone());
    from.send_event(Event::MoveOut(Handover {
        shared: shared.clone(),
        remote_id,
        addr,
        to: socket.core.clone(),
        stream: None,
        placeholder,
        delivered: false,
    }));
    Ok(())
}

async fn remote_changed(shared: &StreamShared) -> Result<(), UdxError> {
    poll_fn(|cx| {
        let mut st = shared.lock();
        if st.closed.is_some() {
            return Poll::Ready(Err(UdxError::StreamClosed));
        }
        if !st.remote_changing || st.finished {
            return Poll::Ready(Ok(()));
        }
        if !st.connect_wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.connect_wakers.push(cx.waker().clone());
        }
        Poll::Pending
    })
    .await
}
