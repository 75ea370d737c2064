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
//!   remote id in the header and every other byte as it came; packets from any other host
//!   are dropped, so a relay passes on only the traffic of the two peers it paired. Another
//!   port of the peer's host is its peer: a hyperdht server that moves to a punched path
//!   (libudx's `changeRemote`) resends a packet it had sent on the relay path from its new
//!   socket, to the relay, and its move completes only once that packet is through;
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

use super::ids::IdMap;
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
    entries: IdMap<Entry>,
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

    /// Moves connected stream `id` to `remote_id` at `addr` (see [`Stream::change_remote`]).
    /// Returns false if there is no such connected stream.
    pub fn change_remote(&mut self, id: u32, remote_id: u32, addr: SocketAddr) -> bool {
        let changed = self
            .entries
            .get_mut(&id)
            .is_some_and(|e| e.stream.change_remote(remote_id, addr));
        self.wake(id);
        changed
    }

    /// Takes stream `id` out of this endpoint, to carry on in another one (a stream moving to
    /// another socket): its id is free here from now on, and no [`EndpointEvent::Removed`] is
    /// reported for it. Relayed streams stay (a relay pairs streams of one socket).
    pub fn take_stream(&mut self, id: u32) -> Option<Box<Stream>> {
        if self.entries.get(&id)?.relay_to.is_some() {
            return None;
        }
        let mut stream = self.entries.remove(&id)?.stream;
        // Its timer and activity entries here are stale now; they skip missing ids.
        stream.scheduled = None;
        stream.active = false;
        Some(Box::new(stream))
    }

    /// Removes the unconnected stream `id` (a placeholder that held the id and the packets
    /// that arrived for it) and returns those packets, so that a stream moving in can take
    /// its place and process them. `None` if `id` is not an unconnected stream.
    pub fn replace_placeholder(&mut self, id: u32) -> Option<Vec<(bytes::Bytes, SocketAddr)>> {
        let entry = self.entries.get(&id)?;
        if entry.relay_to.is_some() || entry.stream.remote().is_some() {
            return None;
        }
        let mut stream = self.take_stream(id)?;
        Some(stream.take_held())
    }

    /// Sends `payload` as an unordered datagram on stream `id` (see [`Stream::send_message`]).
    pub fn send_message(&mut self, id: u32, payload: &[u8]) {
        if let Some(e) = self.entries.get_mut(&id) {
            if e.relay_to.is_none() {
                e.stream.send_message(payload, &mut self.out);
            }
        }
    }

    /// Takes in a stream that another endpoint gave up with [`Endpoint::take_stream`].
    /// Returns it back if its id is in use here.
    pub fn adopt_stream(&mut self, stream: Box<Stream>) -> Result<(), Box<Stream>> {
        let id = stream.local_id();
        if self.entries.contains_key(&id) {
            return Err(stream);
        }
        self.time_wait.remove(&id);
        self.entries.insert(
            id,
            Entry {
                stream: *stream,
                relay_to: None,
            },
        );
        self.wake(id);
        Ok(())
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
            Some(_) => entry.stream.hears(from),
            None => {
                let adopted = entry.stream.accept_unconnected(data, from);
                // Its first held packet is news (`StreamEvent::Held`).
                self.wake(id);
                adopted
            }
        };
        if from_peer {
            if let Some(e) = self.entries.get_mut(&id) {
                e.stream.handle_packet(data, now, &mut self.out);
            }
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
            // The peer's host, on any port (see the module's documentation).
            Some(peer) => peer.addr.ip() == from.ip(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FLAG_DATA;

    fn data_from_peer(to_id: u32, seq: u32) -> Vec<u8> {
        let mut p = Vec::new();
        Header {
            flags: FLAG_DATA,
            data_offset: 0,
            stream_id: to_id,
            recv_window: 1 << 20,
            seq,
            ack: 0,
        }
        .write_to(&mut p);
        p.extend_from_slice(b"hello");
        p
    }

    fn received(ep: &mut Endpoint, now: Instant) -> usize {
        let mut got = 0;
        ep.service(now, |_, s| {
            got += s.take_received().map_or(0, |b| b.len());
        });
        got
    }

    #[test]
    fn after_change_remote_the_new_and_the_old_address_are_heard_no_other() {
        let now = Instant::now();
        let relay: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let direct: SocketAddr = "127.0.0.2:7001".parse().unwrap();
        let mut ep = Endpoint::new();
        assert!(ep.add_stream(1, now));
        ep.connect(1, 2, Some(relay), now);
        assert!(ep.handle(now, relay, &data_from_peer(1, 0)));
        assert_eq!(received(&mut ep, now), 5);

        assert!(ep.change_remote(1, 9, direct));
        // A stranger is not heard.
        let stranger: SocketAddr = "127.0.0.3:7002".parse().unwrap();
        assert!(ep.handle(now, stranger, &data_from_peer(1, 1)));
        assert_eq!(received(&mut ep, now), 0);
        // A late packet by the old path (libudx resends there) is heard.
        assert!(ep.handle(now, relay, &data_from_peer(1, 1)));
        assert_eq!(received(&mut ep, now), 5);
        assert!(ep.handle(now, direct, &data_from_peer(1, 2)));
        assert_eq!(received(&mut ep, now), 5);
        assert!(!ep.change_remote(77, 9, direct), "no such stream");
    }

    #[test]
    fn a_taken_stream_carries_on_in_another_endpoint() {
        let now = Instant::now();
        let peer: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let (mut a, mut b) = (Endpoint::new(), Endpoint::new());
        assert!(a.add_stream(1, now));
        a.connect(1, 2, Some(peer), now);
        assert!(a.handle(now, peer, &data_from_peer(1, 0)));
        assert_eq!(received(&mut a, now), 5);

        let stream = a.take_stream(1).expect("stream 1");
        assert!(!a.contains(1));
        assert!(a.add_stream(1, now), "its id is free in the old endpoint");
        assert!(b.add_stream(1, now));
        let stream = b.adopt_stream(stream).expect_err("id 1 is taken in b");
        b.destroy(1, now);
        received(&mut b, now); // removes the destroyed stream
        assert!(b.adopt_stream(stream).is_ok());
        // Its receive state came along: seq 0 was delivered, so seq 1 is next in order.
        assert!(b.handle(now, peer, &data_from_peer(1, 1)));
        assert_eq!(received(&mut b, now), 5);
        // Nothing was reported removed by the endpoint it left.
        while let Some(ev) = a.poll_event() {
            assert!(!matches!(ev, EndpointEvent::Removed { id: 1, .. }));
        }
    }

    #[test]
    fn a_placeholder_reports_its_first_packet_and_hands_over_what_it_held() {
        let now = Instant::now();
        let peer: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let mut ep = Endpoint::new();
        assert!(ep.add_stream(1, now));
        assert!(ep.handle(now, peer, &data_from_peer(1, 0)));
        assert!(ep.handle(now, peer, &data_from_peer(1, 1)));
        received(&mut ep, now);
        let mut held_events = Vec::new();
        while let Some(ev) = ep.poll_event() {
            held_events.push(ev);
        }
        assert_eq!(
            held_events,
            [EndpointEvent::Stream(1, StreamEvent::Held(peer))],
            "reported once, for the first packet"
        );
        let held = ep.replace_placeholder(1).expect("an unconnected stream");
        assert_eq!(held.len(), 2);
        assert!(held.iter().all(|(_, from)| *from == peer));
        assert!(!ep.contains(1));
        // A connected stream is no placeholder.
        assert!(ep.add_stream(2, now));
        ep.connect(2, 3, Some(peer), now);
        assert!(ep.replace_placeholder(2).is_none());
        assert!(ep.contains(2));
    }

    #[test]
    fn an_empty_message_goes_to_the_peer_outside_the_sequence() {
        let now = Instant::now();
        let peer: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let mut ep = Endpoint::new();
        assert!(ep.add_stream(1, now));
        ep.send_message(1, &[]);
        assert_eq!(
            ep.transmits().pending(),
            0,
            "not connected: nowhere to send"
        );
        ep.connect(1, 2, Some(peer), now);
        ep.send_message(1, &[]);
        let (to, packet) = ep.transmits().pop().expect("the message");
        assert_eq!(to, peer);
        let hdr = Header::decode(&packet).unwrap();
        assert_eq!(
            (hdr.flags, hdr.stream_id, hdr.seq),
            (crate::wire::FLAG_MESSAGE, 2, 0)
        );
        assert_eq!(packet.len(), HEADER_SIZE);
    }

    #[test]
    fn relayed_streams_are_not_taken() {
        let now = Instant::now();
        let mut ep = Endpoint::new();
        assert!(ep.add_stream(1, now) && ep.add_stream(2, now));
        ep.relay_to(1, 2);
        assert!(ep.take_stream(1).is_none());
        assert!(ep.contains(1));
    }
}
