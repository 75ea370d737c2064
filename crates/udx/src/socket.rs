//! The socket driver: one task per UDP socket that receives datagrams, demultiplexes them
//! to streams by id (or to the datagram channel), runs the streams' timers and sends what
//! the streams produce.
//!
//! One task owning every stream's protocol state keeps the hot path free of locks and of
//! cross-task wakeups: a received burst is processed, acked and answered with new data in a
//! single pass, and the socket is drained with non-blocking calls until it is empty.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::conn::Conn;
use crate::outbox::Outbox;
use crate::relay::Relays;
use crate::shared::{CloseReason, Event, StreamShared};
use crate::udp_io::{RecvBuffers, UdpIo};
use crate::wire::{Header, HEADER_SIZE};
use crate::Datagram;

/// Datagrams read per pass before the driver services streams (and so sends acks).
const RECV_BATCH: usize = 64;
/// Packets one stream may send per pass, so one busy stream cannot starve the others and
/// acks keep flowing between bursts.
const SEND_BUDGET: usize = 64;
/// Send queued datagrams once this many are waiting, to bound the outbox.
const FLUSH_THRESHOLD: usize = 128;

/// The parts of a socket that handles and the driver share.
pub(crate) struct SocketCore {
    pub(crate) udp: Arc<UdpSocket>,
    pub(crate) v6: bool,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) registry: Arc<Mutex<HashSet<u32>>>,
    pub(crate) datagrams: Arc<Mutex<Option<mpsc::UnboundedSender<Datagram>>>>,
}

impl SocketCore {
    pub(crate) fn send_event(&self, ev: Event) {
        // Fails only when the driver is gone, and then the stream is already marked closed.
        let _ = self.events.send(ev);
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// On an IPv6 socket an IPv4 destination must be written as a v4-mapped address.
pub(crate) fn to_socket_family(addr: SocketAddr, v6: bool) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if v6 => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        other => other,
    }
}

/// Reports v4-mapped IPv6 sources as plain IPv4, as libudx does.
pub(crate) fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => addr,
        },
        v4 => v4,
    }
}

pub(crate) struct Driver {
    io: Arc<UdpIo>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Every `UdxSocket` and `UdxStream` handle is gone.
    handles_gone: bool,
    registry: Arc<Mutex<HashSet<u32>>>,
    datagrams: Arc<Mutex<Option<mpsc::UnboundedSender<Datagram>>>>,
    conns: HashMap<u32, Conn>,
    active: Vec<u32>,
    next_active: Vec<u32>,
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    out: Outbox,
    relays: Relays,
}

impl Driver {
    pub(crate) fn new(
        core: &SocketCore,
        events: mpsc::UnboundedReceiver<Event>,
    ) -> io::Result<Driver> {
        Ok(Driver {
            io: Arc::new(UdpIo::new(core.udp.clone(), core.v6)?),
            events,
            handles_gone: false,
            registry: core.registry.clone(),
            datagrams: core.datagrams.clone(),
            conns: HashMap::new(),
            active: Vec::new(),
            next_active: Vec::new(),
            timers: BinaryHeap::new(),
            out: Outbox::default(),
            relays: Relays::default(),
        })
    }

    pub(crate) async fn run(mut self) {
        let mut bufs = RecvBuffers::new();
        let io = self.io.clone();
        loop {
            let now = Instant::now();
            self.drain_events(now);
            if self.handles_gone && self.conns.is_empty() && self.out.pending() == 0 {
                tracing::debug!("UDX socket closed: no handles and no streams left");
                return;
            }

            let mut received = 0;
            let mut drained = false;
            while received < RECV_BATCH {
                match io.recv(&mut bufs, |data, from| {
                    self.on_datagram(data, normalize(from), now)
                }) {
                    Ok(0) => {
                        drained = true;
                        break;
                    }
                    Ok(n) => received += n,
                    Err(e) => {
                        // e.g. ICMP errors surfacing on Linux; the socket itself is fine.
                        tracing::trace!(error = %e, "UDP receive error");
                    }
                }
            }

            self.fire_timers(now);
            let more = self.service(now);
            let flushed = self.out.flush(&self.io);

            if flushed && (more || !drained) {
                // More work is ready: let other tasks run, then go on without waiting.
                yield_to_runtime().await;
                continue;
            }

            // A fresh timer per wait (the deadline moves on almost every pass anyway).
            let deadline = self
                .timers
                .peek()
                .map(|Reverse((at, _))| tokio::time::Instant::from_std(*at));
            let sleep =
                tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now));
            tokio::select! {
                biased;
                ev = self.events.recv(), if !self.handles_gone => match ev {
                    Some(ev) => self.on_event(ev, Instant::now()),
                    None => self.handles_gone = true,
                },
                _ = self.io.udp.readable() => {}
                _ = self.io.udp.writable(), if !flushed => {}
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

    fn activate(active: &mut Vec<u32>, conn: &mut Conn) {
        if !conn.active {
            conn.active = true;
            active.push(conn.shared.local_id);
        }
    }

    /// The driver's state for `shared`, unless that stream is gone (its id may be reused).
    fn conn_for<'a>(
        conns: &'a mut HashMap<u32, Conn>,
        shared: &Arc<StreamShared>,
    ) -> Option<&'a mut Conn> {
        conns
            .get_mut(&shared.local_id)
            .filter(|c| Arc::ptr_eq(&c.shared, shared))
    }

    fn on_event(&mut self, ev: Event, now: Instant) {
        let Some(ev) = self
            .relays
            .on_event(ev, &mut self.conns, &mut self.out, &self.registry)
        else {
            return;
        };
        match ev {
            Event::Relay(..) => {} // taken by `relays`
            Event::Register(shared) => {
                let id = shared.local_id;
                let mut conn = Conn::new(shared, now);
                Self::activate(&mut self.active, &mut conn);
                self.conns.insert(id, conn);
            }
            Event::Connect(shared, remote_id, addr) => {
                let Some(conn) = Self::conn_for(&mut self.conns, &shared) else {
                    return;
                };
                for (packet, _from) in conn.connect(remote_id, addr) {
                    if let Some(h) = Header::decode(&packet) {
                        conn.on_packet(&h, &packet[HEADER_SIZE..], now, &mut self.out);
                    }
                }
                Self::activate(&mut self.active, conn);
            }
            Event::Wake(shared) => {
                if let Some(conn) = Self::conn_for(&mut self.conns, &shared) {
                    Self::activate(&mut self.active, conn);
                }
            }
            Event::Destroy(shared) => {
                if let Some(conn) = Self::conn_for(&mut self.conns, &shared) {
                    conn.destroy(&mut self.out);
                    Self::activate(&mut self.active, conn);
                }
            }
            Event::Dropped(shared) => {
                if let Some(conn) = Self::conn_for(&mut self.conns, &shared) {
                    conn.on_handle_dropped(&mut self.out);
                    Self::activate(&mut self.active, conn);
                }
            }
        }
    }

    fn on_datagram(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        if let Some(h) = Header::decode(data) {
            let (conns, out) = (&self.conns, &mut self.out);
            if self
                .relays
                .on_datagram(&h, data, from, conns, out, &self.registry)
            {
                return;
            }
            if !self.conns.contains_key(&h.stream_id) {
                // The stream may have been created a moment ago; its Register event could
                // still be queued behind this packet.
                self.drain_events(now);
            }
            if let Some(conn) = self.conns.get_mut(&h.stream_id) {
                // A connected stream hears only its peer: anyone else who learns or guesses
                // the id could otherwise destroy it or acknowledge data away.
                let from_peer = match conn.remote {
                    Some(peer) => peer.addr == from,
                    None => conn.accept_unconnected(data, from),
                };
                if from_peer {
                    conn.on_packet(&h, &data[HEADER_SIZE..], now, &mut self.out);
                    Self::activate(&mut self.active, conn);
                }
                return;
            }
        }
        if let Some(tx) = lock(&self.datagrams).as_ref() {
            let _ = tx.send(Datagram {
                data: data.to_vec(),
                addr: from,
            });
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(conn) = self.conns.get_mut(&id) {
                if conn.scheduled == Some(at) {
                    conn.scheduled = None;
                }
                conn.on_timeout(now, &mut self.out);
                Self::activate(&mut self.active, conn);
            }
        }
    }

    /// Lets every stream that saw packets, events or timers act. Returns true if some stream
    /// still has something to send right away.
    fn service(&mut self, now: Instant) -> bool {
        let mut active = std::mem::take(&mut self.active);
        let mut more = false;
        for id in active.drain(..) {
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            conn.active = false;
            if conn.service(now, &mut self.out, SEND_BUDGET) {
                conn.active = true;
                self.next_active.push(id);
                more = true;
            }
            if conn.is_finished() {
                if let Some(conn) = self.conns.remove(&id) {
                    tracing::trace!(stream = id, stats = ?conn.stats, "stream finished");
                }
                lock(&self.registry).remove(&id);
                continue;
            }
            if let Some(at) = conn.next_timeout() {
                if conn.scheduled.is_none_or(|s| at < s) {
                    conn.scheduled = Some(at);
                    self.timers.push(Reverse((at, id)));
                }
            }
            if self.out.pending() >= FLUSH_THRESHOLD {
                self.out.flush(&self.io);
            }
        }
        self.active = std::mem::take(&mut self.next_active);
        self.next_active = active;
        more
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
        for conn in self.conns.values_mut() {
            conn.close(CloseReason::SocketClosed);
        }
        self.relays.close_all();
    }
}
