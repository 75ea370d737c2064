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
use crate::shared::{Event, Handover, StreamShared};
use crate::socket::lock;
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
        change_remote(&self.shared, socket, remote_id, addr)
    }

    /// Resolves once the last [`UdxStream::change_remote`] is complete: everything sent
    /// before it was acknowledged from the new address. Fails if the stream closes first.
    pub async fn remote_changed(&self) -> Result<(), UdxError> {
        remote_changed(&self.shared).await
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
        change_remote(&self.shared, socket, remote_id, addr)
    }

    /// [`UdxStream::remote_changed`].
    pub async fn remote_changed(&self) -> Result<(), UdxError> {
        remote_changed(&self.shared).await
    }
}

fn change_remote(
    shared: &Arc<StreamShared>,
    socket: &UdxSocket,
    remote_id: u32,
    addr: SocketAddr,
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
    if !same_socket && !lock(&socket.core.registry).insert(shared.local_id) {
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
