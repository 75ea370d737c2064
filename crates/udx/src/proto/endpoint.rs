//! The streams of one UDP socket: demultiplexing by stream id, packets held for streams that
//! are not connected yet, relaying, and the timers of every stream. Datagrams and time go in;
//! datagrams to send ([`Endpoint::transmits`]), the next deadline ([`Endpoint::poll_timeout`])
//! and events ([`Endpoint::poll_event`]) come out.
//!
//! Relaying, as libudx's `udx_stream_relay_to` does it: a relayed stream's packets are not
//! processed but passed on, re-addressed, to another stream's peer. Two streams relaying to
//! each other join their two peers into one UDX connection that runs end to end; that is what
//! a blind relay is made of. A relayed stream keeps no protocol state in use (the peers' streams
//! do acks, retransmission and congestion control end to end); it knows its own peer, where
//! its packets go, and when it ends:
//!
//! - a packet from its peer goes out at once to the destination's peer, with the destination's
//!   remote id in the header and every other byte as it came; packets from any other address
//!   are dropped, so a relay passes on only the traffic of the two peers it paired;
//! - a DESTROY from its peer is passed on too, then the stream closes, and so does every stream
//!   relaying into it (nothing could reach its peer any more);
//! - destroying or dropping a relayed stream closes it (and the streams relaying into it)
//!   without sending anything: the peers find out from their own streams, as with libudx.
//!
//! Packets that arrive before the destination's peer is known are dropped; the peers'
//! retransmissions carry the connection over that moment.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::stream::{CloseReason, Stream, StreamEvent};
use super::transmits::Transmits;
use crate::wire::{Header, FLAG_DATA, FLAG_DESTROY, FLAG_END, HEADER_SIZE};
use crate::StreamStats;

/// Packets one stream may send per [`Endpoint::service`] pass, so one busy stream cannot
/// starve the others and acks keep flowing between bursts.
pub const SEND_BUDGET: usize = 64;
/// How long the id of a stream that finished cleanly keeps answering its peer: our last ack
/// (of the peer's END) may be lost, and the peer then resends until it gets one; without an
/// answer it would time out after a transfer that in fact completed (TCP's TIME-WAIT).
const TIME_WAIT: Duration = Duration::from_secs(30);
/// At most this many finished streams are remembered for that; the oldest go first.
const MAX_TIME_WAIT: usize = 4096;
/// [`Endpoint::service`] stops once this many datagrams wait in its transmits, so that they
/// are sent before more are produced (bounds the queue).
const FLUSH_THRESHOLD: usize = 128;

/// What the owner of an [`Endpoint`] should learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointEvent {
    /// An event of stream `id`.
    Stream(u32, StreamEvent),
    /// The endpoint forgot stream `id` and its id is free again. `done` says it finished
    /// cleanly (both directions ended and acknowledged) rather than closed.
    Removed {
        /// The stream's local id.
        id: u32,
        /// Both directions ended cleanly.
        done: bool,
        /// Its final counters.
        stats: StreamStats,
    },
}

/// A finished stream's last words: the ack to repeat to its peer.
struct TimeWait {
    peer: SocketAddr,
    ack: Header,
    until: Instant,
}

struct Entry {
    stream: Stream,
    /// Relaying to this stream id's peer instead of processing packets.
    relay_to: Option<u32>,
}

/// Every stream of one socket. See the module documentation.
#[derive(Default)]
pub struct Endpoint {
    entries: HashMap<u32, Entry>,
    active: VecDeque<u32>,
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    out: Transmits,
    events: VecDeque<EndpointEvent>,
    time_wait: HashMap<u32, TimeWait>,
    /// Ids in `time_wait`, oldest first.
    time_wait_order: VecDeque<u32>,
}

impl Endpoint {
    /// An endpoint without streams.
    pub fn new() -> Endpoint {
        Endpoint::default()
    }

    /// Registers stream `id`. Returns false if the id is in use.
    pub fn add_stream(&mut self, id: u32, now: Instant) -> bool {
        if self.entries.contains_key(&id) {
            return false;
        }
        self.time_wait.remove(&id);
        self.entries.insert(
            id,
            Entry {
                stream: Stream::new(id, now),
                relay_to: None,
            },
        );
        self.wake(id);
        true
    }

    /// True if stream `id` is registered.
    pub fn contains(&self, id: u32) -> bool {
        self.entries.contains_key(&id)
    }

    /// Number of registered streams.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no stream is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Stream `id`, to act on as its application (it is serviced in the next pass).
    pub fn stream_mut(&mut self, id: u32) -> Option<&mut Stream> {
        self.wake(id);
        self.entries.get_mut(&id).map(|e| &mut e.stream)
    }

    /// Schedules stream `id` for the next [`Endpoint::service`] pass.
    pub fn wake(&mut self, id: u32) {
        if let Some(e) = self.entries.get_mut(&id) {
            if !e.stream.active {
                e.stream.active = true;
                self.active.push_back(id);
            }
        }
    }

    /// Connects stream `id` to `remote_id` at `addr` (or at whoever sends first) and
    /// processes the packets held for it.
    pub fn connect(&mut self, id: u32, remote_id: u32, addr: Option<SocketAddr>, now: Instant) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let held = entry.stream.connect(remote_id, addr);
        let relayed = entry.relay_to.is_some();
        for (packet, from) in held {
            if relayed {
                self.forward(id, &packet, from);
            } else if let Some(e) = self.entries.get_mut(&id) {
                e.stream.handle_packet(&packet, now, &mut self.out);
            }
        }
        self.wake(id);
    }

    /// Makes stream `from` pass its packets on to stream `to`'s peer (call it before
    /// connecting `from`; calling it again changes the destination).
    pub fn relay_to(&mut self, from: u32, to: u32) {
        if from == to || !self.entries.contains_key(&to) {
            return;
        }
        if let Some(e) = self.entries.get_mut(&from) {
            e.relay_to = Some(to);
        }
    }

    /// Destroys stream `id`: DESTROY to its peer, or for a relayed stream a silent close.
    pub fn destroy(&mut self, id: u32, now: Instant) {
        self.let_go(id, now, Stream::destroy);
    }

    /// The application let go of stream `id` (pass on its last writes and shutdown first).
    pub fn handle_dropped(&mut self, id: u32, now: Instant) {
        self.let_go(id, now, Stream::on_handle_dropped);
    }

    /// The application is done with stream `id`: a relayed stream closes silently (it has
    /// no protocol of its own to finish); any other does `finish` and is serviced.
    fn let_go(&mut self, id: u32, now: Instant, finish: fn(&mut Stream, Instant, &mut Transmits)) {
        match self.entries.get_mut(&id) {
            Some(e) if e.relay_to.is_some() => self.close_relayed(id, CloseReason::Destroyed),
            Some(e) => {
                finish(&mut e.stream, now, &mut self.out);
                self.wake(id);
            }
            None => {}
        }
    }

    /// Takes one received datagram. Returns false if it is not for any of our streams (then
    /// it is the DHT layer's business).
    pub fn handle(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        let from = super::normalize(from);
        let Some(h) = Header::decode(data) else {
            return false;
        };
        let id = h.stream_id;
        let Some(entry) = self.entries.get_mut(&id) else {
            return self.answer_time_wait(now, from, &h);
        };
        if entry.relay_to.is_some() {
            self.forward(id, data, from);
            return true;
        }
        // A connected stream hears only its peer: anyone else who learns or guesses the id
        // could otherwise destroy it or acknowledge data away.
        let from_peer = match entry.stream.remote() {
            Some(peer) => peer.addr == from,
            None => entry.stream.accept_unconnected(data, from),
        };
        if from_peer {
            entry.stream.handle_packet(data, now, &mut self.out);
            self.wake(id);
        }
        true
    }

    /// A packet for a stream that finished: repeat its final ack to its peer if the peer
    /// resends data or its END. Returns false if the id is not (or no longer) in time-wait.
    fn answer_time_wait(&mut self, now: Instant, from: SocketAddr, h: &Header) -> bool {
        let id = h.stream_id;
        let Some(tw) = self.time_wait.get(&id) else {
            return false;
        };
        if tw.until <= now {
            self.time_wait.remove(&id);
            return false;
        }
        if tw.peer == from && h.flags & (FLAG_DATA | FLAG_END) != 0 {
            self.out.push_packet(tw.peer, &tw.ack, 0, &[]);
        }
        true
    }

    fn enter_time_wait(&mut self, id: u32, stream: &mut Stream, now: Instant) {
        let Some((peer, ack)) = stream.final_ack() else {
            return;
        };
        while self.time_wait.len() >= MAX_TIME_WAIT {
            match self.time_wait_order.pop_front() {
                Some(old) => self.time_wait.remove(&old),
                None => break,
            };
        }
        // An id may be in the order queue twice (reused); its entry is removed with the
        // first, which only shortens that entry's wait.
        self.time_wait_order.push_back(id);
        self.time_wait.insert(
            id,
            TimeWait {
                peer,
                ack,
                until: now + TIME_WAIT,
            },
        );
    }

    /// Passes on a packet that arrived for relayed stream `id`.
    fn forward(&mut self, id: u32, packet: &[u8], from: SocketAddr) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let Some(to) = entry.relay_to else { return };
        let from_peer = match entry.stream.remote() {
            Some(peer) => peer.addr == from,
            // Held until connect, or adopted as the peer by connect_on_first_packet.
            None => entry.stream.accept_unconnected(packet, from),
        };
        if !from_peer {
            return;
        }
        entry.stream.count_forwarded();
        self.wake(id);
        let Some(h) = Header::decode(packet) else {
            return;
        };
        if let Some(dest) = self.entries.get(&to).and_then(|d| d.stream.remote()) {
            let mut header = h;
            header.stream_id = dest.id;
            self.out
                .push_packet(dest.addr, &header, 0, &packet[HEADER_SIZE..]);
        }
        if h.flags & FLAG_DESTROY != 0 {
            self.close_relayed(id, CloseReason::Reset);
        }
    }

    /// Ends stream `id` without a word to its peer, and every stream relaying into it.
    fn close_relayed(&mut self, id: u32, reason: CloseReason) {
        let Some(mut entry) = self.entries.remove(&id) else {
            return;
        };
        entry.stream.close(reason);
        self.removed(id, entry.stream);
    }

    /// Reports a stream that left `entries`, and closes the streams relaying into it.
    fn removed(&mut self, id: u32, mut stream: Stream) {
        while let Some(ev) = stream.poll_event() {
            self.events.push_back(EndpointEvent::Stream(id, ev));
        }
        self.events.push_back(EndpointEvent::Removed {
            id,
            done: stream.is_done(),
            stats: stream.stats(),
        });
        let into: Vec<u32> = self
            .entries
            .iter()
            .filter(|(_, e)| e.relay_to == Some(id))
            .map(|(id, _)| *id)
            .collect();
        for id in into {
            self.close_relayed(id, CloseReason::Reset);
        }
    }

    /// Runs the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(e) = self.entries.get_mut(&id) {
                if e.stream.scheduled == Some(at) {
                    e.stream.scheduled = None;
                }
                e.stream.on_timeout(now, &mut self.out);
                self.wake(id);
            }
        }
    }

    /// The earliest deadline of any stream (call [`Endpoint::handle_timeout`] then).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Lets every stream that saw packets, events or timers act: `sync` is called before and
    /// after each one, for its application to exchange data with it. Returns true if some
    /// stream has more to send right away (or the pass stopped to let the transmits drain).
    pub fn service(&mut self, now: Instant, mut sync: impl FnMut(u32, &mut Stream)) -> bool {
        let mut more = Vec::new();
        while let Some(id) = self.active.pop_front() {
            if self.out.pending() >= FLUSH_THRESHOLD {
                self.active.push_front(id);
                break;
            }
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            let stream = &mut entry.stream;
            stream.active = false;
            sync(id, stream);
            if entry.relay_to.is_none() && stream.service(now, &mut self.out, SEND_BUDGET) {
                more.push(id);
            }
            sync(id, stream);
            while let Some(ev) = stream.poll_event() {
                self.events.push_back(EndpointEvent::Stream(id, ev));
            }
            if stream.is_finished() {
                if let Some(mut entry) = self.entries.remove(&id) {
                    tracing::debug!(stream = id, stats = ?entry.stream.stats(), "stream finished");
                    if entry.stream.is_done() {
                        self.enter_time_wait(id, &mut entry.stream, now);
                    }
                    self.removed(id, entry.stream);
                }
                continue;
            }
            if let Some(at) = stream.next_timeout() {
                if stream.scheduled.is_none_or(|s| at < s) {
                    stream.scheduled = Some(at);
                    self.timers.push(Reverse((at, id)));
                }
            }
        }
        for id in more {
            self.wake(id);
        }
        !self.active.is_empty()
    }

    /// Datagrams waiting to be sent.
    pub fn transmits(&mut self) -> &mut Transmits {
        &mut self.out
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// Closes every stream (the socket is going away).
    pub fn close_all(&mut self, reason: CloseReason) {
        let ids: Vec<u32> = self.entries.keys().copied().collect();
        for id in ids {
            if let Some(mut entry) = self.entries.remove(&id) {
                entry.stream.close(reason);
                self.removed(id, entry.stream);
            }
        }
    }
}
