//! The socket driver: one task per UDP socket that feeds received datagrams, time and the
//! handles' requests to the protocol core ([`crate::proto::Endpoint`]), sends the datagrams it
//! produces, passes non-stream datagrams to the datagram channel, and carries data and status
//! between the core's streams and their handles.
//!
//! One task owning every stream's protocol state keeps the hot path free of locks and of
//! cross-task wakeups: a received burst is processed, acked and answered with new data in a
//! single pass, and the socket is drained with non-blocking calls until it is empty.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::datagrams::DatagramSender;
use crate::proto::{normalize, CloseReason, Endpoint, EndpointEvent, IdMap, Stream, StreamEvent};
use crate::shared::{lock, SocketCore};
use crate::shared::{Event, Handover, StreamShared};
use crate::udp_io::{RecvBuffers, UdpIo, WriteWait};
use crate::wire::Header;
use crate::Datagram;

/// Datagrams read per pass before the driver services streams (and so sends acks).
const RECV_BATCH: usize = 64;

pub(crate) struct Driver {
    io: Arc<UdpIo>,
    write_wait: WriteWait,
    events: mpsc::UnboundedReceiver<Event>,
    /// Every `UdxSocket` and `UdxStream` handle is gone.
    handles_gone: bool,
    registry: Arc<Mutex<HashSet<u32>>>,
    datagrams: Arc<Mutex<Option<DatagramSender>>>,
    endpoint: Endpoint,
    /// The handle side of every stream the endpoint knows.
    shared: IdMap<Arc<StreamShared>>,
    /// Streams moving here from another socket (`change_remote`), with the events their
    /// handles sent before their protocol state arrived (a few: a Wake is sent once until
    /// serviced, a Destroy or Dropped once).
    incoming: HashMap<u32, (Arc<StreamShared>, Vec<Event>)>,
    /// Streams that moved to another socket, by id, with the remote they had here: what that
    /// remote still sends here (its resends) is passed on, nobody else's (the queue to the
    /// other socket is unbounded). Pruned of finished streams at every move.
    moved_out: HashMap<u32, (Weak<StreamShared>, Arc<SocketCore>, SocketAddr)>,
}

impl Driver {
    pub(crate) fn new(
        core: &SocketCore,
        events: mpsc::UnboundedReceiver<Event>,
    ) -> io::Result<Driver> {
        Ok(Driver {
            io: Arc::new(UdpIo::new(core.udp.clone(), core.v6)?),
            write_wait: WriteWait::new(&core.udp)?,
            events,
            handles_gone: false,
            registry: core.registry.clone(),
            datagrams: core.datagrams.clone(),
            endpoint: Endpoint::new(),
            shared: IdMap::default(),
            incoming: HashMap::new(),
            moved_out: HashMap::new(),
        })
    }

    pub(crate) async fn run(mut self) {
        let mut bufs = RecvBuffers::new();
        let io = self.io.clone();
        loop {
            let now = Instant::now();
            self.drain_events(now);
            if self.handles_gone
                && self.endpoint.is_empty()
                && self.endpoint.transmits().pending() == 0
            {
                tracing::debug!("UDX socket closed: no handles and no streams left");
                return;
            }

            let mut received = 0;
            let mut drained = false;
            while received < RECV_BATCH {
                match io.recv(&mut bufs, |data, from| self.on_datagram(data, from, now)) {
                    Ok((n, empty)) => {
                        received += n;
                        if empty {
                            drained = true;
                            break;
                        }
                    }
                    Err(e) => {
                        // e.g. ICMP errors surfacing on Linux; the socket itself is fine.
                        tracing::trace!(error = %e, "UDP receive error");
                    }
                }
            }

            self.endpoint.handle_timeout(now);
            let more = self.service(now);
            let flushed = self.io.flush(self.endpoint.transmits());
            if flushed {
                self.write_wait.disarm();
            } else if let Err(e) = self.write_wait.arm(&self.io.udp) {
                // Cannot watch for room in the send buffer: try again a little later.
                tracing::warn!(
                    error = %e,
                    "UDX cannot watch its UDP socket for room to send (out of file descriptors? \
                     raise `ulimit -n`); retrying every millisecond"
                );
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                continue;
            }

            if flushed && (more || !drained) {
                // More work is ready: let other tasks run, then go on without waiting.
                yield_to_runtime().await;
                continue;
            }

            // A fresh timer per wait (the deadline moves on almost every pass anyway).
            let deadline = self
                .endpoint
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            let sleep =
                tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now));
            tokio::select! {
                biased;
                ev = self.events.recv(), if !self.handles_gone => match ev {
                    Some(ev) => self.on_event(ev, Instant::now()),
                    None => self.handles_gone = true,
                },
                _ = self.io.udp.readable() => {}
                _ = self.write_wait.writable(), if !flushed => {}
                _ = sleep, if deadline.is_some() => {}
            }
        }
    }

    fn drain_events(&mut self, now: Instant) {
        while !self.handles_gone {
            match self.events.try_recv() {
                Ok(ev) => self.on_event(ev, now),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.handles_gone = true,
            }
        }
    }

    /// The id of `shared` if the endpoint still runs that very stream (ids are reused, so an
    /// event for a stream that is gone must not reach a newer one).
    fn current(&self, shared: &Arc<StreamShared>) -> Option<u32> {
        let id = shared.local_id;
        self.shared
            .get(&id)
            .is_some_and(|s| Arc::ptr_eq(s, shared))
            .then_some(id)
    }

    /// Holds `ev` if it is for a stream still on its way here; returns it otherwise.
    fn hold_for_incoming(&mut self, ev: Event) -> Option<Event> {
        let shared = match &ev {
            Event::Wake(s)
            | Event::Destroy(s)
            | Event::Dropped(s)
            | Event::ChangeRemote(s, ..)
            | Event::Message(s, _)
            | Event::Connect(s, ..)
            | Event::Relay(s, _)
            | Event::Forwarded(s, ..) => s,
            Event::MoveOut(h) => &h.shared,
            Event::Register(_) | Event::Expect(_) | Event::MoveIn(_) | Event::MoveFailed(_) => {
                return Some(ev)
            }
        };
        match self.incoming.get_mut(&shared.local_id) {
            Some((s, held)) if Arc::ptr_eq(s, shared) => {
                held.push(ev);
                None
            }
            _ => Some(ev),
        }
    }

    fn on_event(&mut self, ev: Event, now: Instant) {
        let Some(ev) = self.hold_for_incoming(ev) else {
            return;
        };
        match ev {
            Event::Register(shared) => {
                let id = shared.local_id;
                if self.endpoint.add_stream(id, now) {
                    self.shared.insert(id, shared);
                }
            }
            Event::Connect(shared, remote_id, addr) => {
                if let Some(id) = self.current(&shared) {
                    self.endpoint.connect(id, remote_id, addr, now);
                }
            }
            Event::Relay(from, to) => {
                if let (Some(from), Some(to)) = (self.current(&from), self.current(&to)) {
                    self.endpoint.relay_to(from, to);
                }
            }
            Event::Wake(shared) => {
                if let Some(id) = self.current(&shared) {
                    self.endpoint.wake(id);
                }
            }
            Event::Destroy(shared) => {
                if let Some(id) = self.current(&shared) {
                    self.endpoint.destroy(id, now);
                }
            }
            Event::Dropped(shared) => {
                if let Some(id) = self.current(&shared) {
                    if let Some(stream) = self.endpoint.stream_mut(id) {
                        // Its last writes and its shutdown decide between END and DESTROY.
                        sync(&shared, stream);
                    }
                    self.endpoint.handle_dropped(id, now);
                    // Received but unread data is of no use to anyone now.
                    shared.lock().recv_queue.clear();
                    shared.recv_buffered.store(0, Ordering::Release);
                }
            }
            Event::ChangeRemote(shared, remote_id, addr) => {
                if let Some(id) = self.current(&shared) {
                    self.endpoint.change_remote(id, remote_id, addr);
                }
            }
            Event::Message(shared, payload) => {
                if let Some(id) = self.current(&shared) {
                    self.endpoint.send_message(id, &payload);
                }
            }
            Event::Expect(shared) => {
                self.incoming
                    .insert(shared.local_id, (shared.clone(), Vec::new()));
            }
            Event::Forwarded(shared, packet, from) => {
                if self.current(&shared).is_some() {
                    self.endpoint.handle(now, from, &packet);
                }
            }
            Event::MoveOut(handover) => self.move_out(handover),
            Event::MoveIn(handover) => self.move_in(handover, now),
            Event::MoveFailed(shared) => {
                let id = shared.local_id;
                if self
                    .incoming
                    .get(&id)
                    .is_some_and(|(s, _)| Arc::ptr_eq(s, &shared))
                {
                    self.incoming.remove(&id);
                    // A placeholder that was to give way keeps its id.
                    if !self.endpoint.contains(id) {
                        lock(&self.registry).remove(&id);
                    }
                    let mut st = shared.lock();
                    if !st.finished {
                        st.closed.get_or_insert(CloseReason::SocketClosed);
                    }
                    st.wake_all();
                }
            }
        }
        self.on_endpoint_events();
    }

    /// A stream leaves for another socket: its protocol state goes along, its id is free here.
    fn move_out(&mut self, mut handover: Handover) {
        let Some(id) = self.current(&handover.shared) else {
            return; // dropping the handover tells the other socket
        };
        let Some(stream) = self.endpoint.take_stream(id) else {
            return;
        };
        self.shared.remove(&id);
        lock(&self.registry).remove(&id);
        self.moved_out
            .retain(|_, (s, ..)| s.upgrade().is_some_and(|s| s.lock().closed.is_none()));
        if let Some(old) = stream.remote() {
            self.moved_out.insert(
                id,
                (
                    Arc::downgrade(&handover.shared),
                    handover.to.clone(),
                    old.addr,
                ),
            );
        }
        handover.stream = Some(stream);
        let to = handover.to.clone();
        to.send_event(Event::MoveIn(handover));
    }

    /// A stream arrives from another socket: it carries on here, towards its new remote,
    /// and the events its handle sent meanwhile are played.
    fn move_in(&mut self, mut handover: Handover, now: Instant) {
        let shared = handover.shared.clone();
        let id = shared.local_id;
        let held = match self.incoming.get(&id) {
            Some((s, _)) if Arc::ptr_eq(s, &shared) => self.incoming.remove(&id).map(|(_, h)| h),
            _ => None,
        };
        let (Some(held), Some(stream)) = (held, handover.stream.take()) else {
            return; // dropping the handover releases the id
        };
        // A placeholder gives way, with the packets it held (the new peer's first ones).
        let mut packets = Vec::new();
        if let Some(placeholder) = &handover.placeholder {
            if self.current(&placeholder.shared).is_some() {
                packets = self.endpoint.replace_placeholder(id).unwrap_or_default();
                self.shared.remove(&id);
            }
        }
        if self.endpoint.adopt_stream(stream).is_err() {
            // Cannot happen while the registry guards ids; never run two streams on one id.
            handover.delivered = true;
            let mut st = shared.lock();
            st.closed.get_or_insert(CloseReason::SocketClosed);
            st.wake_all();
            return;
        }
        handover.delivered = true;
        self.shared.insert(id, shared);
        self.endpoint
            .change_remote(id, handover.remote_id, handover.addr);
        for (packet, from) in packets {
            self.endpoint.handle(now, from, &packet);
        }
        for ev in held {
            self.on_event(ev, now);
        }
    }

    /// Passes a packet for a stream that moved away (and whose id no stream here took since)
    /// on to the socket it moved to. Returns false if there is none.
    fn pass_to_moved(&mut self, data: &[u8], from: SocketAddr) -> bool {
        let Some(h) = Header::decode(data) else {
            return false;
        };
        let Some((shared, to, old)) = self.moved_out.get(&h.stream_id) else {
            return false;
        };
        if *old != normalize(from) {
            return false;
        }
        match shared.upgrade().filter(|s| s.lock().closed.is_none()) {
            Some(shared) => {
                to.send_event(Event::Forwarded(shared, Bytes::copy_from_slice(data), from));
                true
            }
            None => {
                self.moved_out.remove(&h.stream_id);
                false
            }
        }
    }

    fn on_datagram(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        if self.endpoint.handle(now, from, data) {
            return;
        }
        if let Some(h) = Header::decode(data) {
            if lock(&self.registry).contains(&h.stream_id) {
                // The stream was created a moment ago; its Register event is still queued
                // behind this packet.
                self.drain_events(now);
                if self.endpoint.handle(now, from, data) {
                    return;
                }
            }
        }
        if self.pass_to_moved(data, from) {
            return;
        }
        if let Some(tx) = lock(&self.datagrams).as_mut() {
            let datagram = Datagram {
                data: data.to_vec(),
                addr: normalize(from),
            };
            tx.offer(datagram, now);
        }
    }

    /// Lets the endpoint's streams act. Returns true if some stream still has something to
    /// send right away.
    fn service(&mut self, now: Instant) -> bool {
        let shared = &self.shared;
        let more = self.endpoint.service(now, |id, stream| {
            if let Some(s) = shared.get(&id) {
                sync(s, stream);
            }
        });
        self.on_endpoint_events();
        more
    }

    /// Tells the handles what happened to their streams.
    fn on_endpoint_events(&mut self) {
        while let Some(ev) = self.endpoint.poll_event() {
            match ev {
                EndpointEvent::Stream(id, StreamEvent::Connected(addr)) => {
                    if let Some(s) = self.shared.get(&id) {
                        let mut st = s.lock();
                        st.remote_addr = Some(addr);
                        for w in st.connect_wakers.drain(..) {
                            w.wake();
                        }
                    }
                }
                EndpointEvent::Stream(id, StreamEvent::Held(from)) => {
                    if let Some(s) = self.shared.get(&id) {
                        let mut st = s.lock();
                        st.first_held_from.get_or_insert(from);
                        for w in st.connect_wakers.drain(..) {
                            w.wake();
                        }
                    }
                }
                EndpointEvent::Stream(id, StreamEvent::RemoteChanged) => {
                    if let Some(s) = self.shared.get(&id) {
                        let mut st = s.lock();
                        st.remote_changing = false;
                        for w in st.connect_wakers.drain(..) {
                            w.wake();
                        }
                    }
                }
                EndpointEvent::Stream(id, StreamEvent::Closed(reason)) => {
                    if let Some(s) = self.shared.get(&id) {
                        let mut st = s.lock();
                        st.closed.get_or_insert(reason);
                        st.wake_all();
                    }
                }
                EndpointEvent::Removed { id, done, stats } => {
                    if let Some(s) = self.shared.remove(&id) {
                        let mut st = s.lock();
                        st.stats = stats;
                        if done {
                            st.finished = true;
                            st.recv_eof = true;
                        }
                        st.wake_all();
                    }
                    lock(&self.registry).remove(&id);
                }
            }
        }
    }
}

/// Moves written bytes and the shutdown from a handle into its stream, and received bytes,
/// acknowledgements, window and counters from the stream to the handle.
fn sync(shared: &StreamShared, stream: &mut Stream) {
    // From here on, a change by the handle needs a new Wake to be noticed.
    shared.clear_wake();
    if shared.window_update_due.swap(false, Ordering::AcqRel) {
        stream.window_update();
    }
    let mut st = shared.lock();
    stream.set_keepalive(st.keepalive);
    while let Some(chunk) = st.send_buf.pop() {
        stream.write(chunk.freeze());
    }
    if st.write_shutdown {
        stream.shutdown();
    }
    let mut received = 0;
    while let Some(chunk) = stream.take_received() {
        received += chunk.len();
        st.recv_queue.push_back(chunk);
    }
    if received > 0 {
        shared.recv_buffered.fetch_add(received, Ordering::AcqRel);
        if let Some(w) = st.read_waker.take() {
            w.wake();
        }
    }
    if stream.is_eof() && !st.recv_eof {
        st.recv_eof = true;
        if let Some(w) = st.read_waker.take() {
            w.wake();
        }
    }
    stream.set_unread(shared.recv_buffered.load(Ordering::Acquire));
    if stream.take_window_update_wanted() {
        shared.window_update_wanted.store(true, Ordering::Release);
    }
    let limit = stream.send_limit();
    let acked = stream.take_acked_bytes();
    let limit_grew = limit > st.send_limit;
    st.send_limit = limit;
    if acked > 0 || limit_grew {
        st.send_outstanding -= acked;
        if st.send_outstanding < st.send_limit {
            if let Some(w) = st.write_waker.take() {
                w.wake();
            }
        }
    }
    st.stats = stream.stats();
    if stream.is_done() && !st.finished {
        st.finished = true;
        st.wake_all();
    }
}

/// Lets the scheduler run other tasks once, then resumes.
///
/// Unlike `tokio::task::yield_now`, whose wakeup is deferred until the worker next parks
/// (and which left the driver unscheduled forever under heavy CPU contention in tests),
/// this simply wakes itself before returning `Pending`, which re-queues the task behind
/// the others.
async fn yield_to_runtime() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The runtime is shutting down (or the socket is done): nobody will move these
        // streams forward any more, so fail whoever still waits on them.
        self.endpoint.close_all(CloseReason::SocketClosed);
        self.on_endpoint_events();
        for (shared, _) in self.incoming.values() {
            let mut st = shared.lock();
            st.closed.get_or_insert(CloseReason::SocketClosed);
            st.wake_all();
        }
    }
}
