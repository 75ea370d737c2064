//! One stream's protocol state: sequencing, acks and SACKs, retransmission, loss detection,
//! congestion control, END / DESTROY. Free of I/O: packets go into [`Transmits`], time comes
//! in as an argument, and what the application should learn comes out as [`StreamEvent`]s,
//! so whoever drives it (the socket driver, the simulator, a fuzzer) decides when to send.
//!
//! The application side is plain calls: [`Stream::write`] and [`Stream::shutdown`] queue
//! outgoing bytes, [`Stream::take_received`] hands over what arrived in order, and
//! [`Stream::set_unread`] says how much of that the application still holds (which is what
//! the advertised receive window is computed from).
//!
//! Sequence numbers are u64 internally and never wrap; the wire carries their low 32 bits
//! (see [`wire::unwrap_seq`]). Both directions start at 0, as hyperdht expects.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::transmits::Transmits;
use crate::chunks::ChunkQueue;
use crate::congestion::{Congestion, DeliveryRate, Pacer, SendStamp};
use crate::rtt::RttEstimator;
use crate::wire::{self, Header};
use crate::StreamStats;

/// Why a stream stopped working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// We called destroy (or dropped the handle before shutdown).
    Destroyed,
    /// The peer sent DESTROY.
    Reset,
    /// The peer stopped acknowledging data.
    TimedOut,
    /// The socket driver is gone (runtime shut down).
    SocketClosed,
}

/// What the application should learn about a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEvent {
    /// The stream has its peer (from `connect` or from the first packet).
    Connected(SocketAddr),
    /// A stream that is not connected holds a first packet, from this address (see
    /// [`super::Endpoint::replace_placeholder`]).
    Held(SocketAddr),
    /// Everything sent before the last [`Stream::change_remote`] was acknowledged (by the
    /// new peer address: nothing from the old one is accepted any more), so the move is
    /// complete (libudx's `on_remote_changed`).
    RemoteChanged,
    /// The stream stopped working.
    Closed(CloseReason),
}

/// Receive window we advertise: twice libudx's default `recv_rwnd_max`. The sender may only
/// run a window ahead of the oldest hole, and on a lossy path a hole lasts two round trips or
/// more (three when the retransmission is lost too): at 5 % loss and 100 ms, 4 MiB held the
/// sender back a round trip before its rate was found.
pub const RECV_WINDOW: usize = 8 << 20;

/// Size of each allocation received bytes are put in. A reader that needs messages whole
/// (the secret stream's 64 KiB ones) takes them where they arrived as long as they lie in one
/// allocation, and copies only one that straddles two: one message in eight at this size.
/// The window, not this, bounds what a peer makes us hold.
pub const RECV_ALLOCATION: usize = 512 << 10;
/// Most received bytes a stream ever holds: the window plus one packet (the largest UDP
/// payload), see [`Stream::buffered_bytes`].
pub const MAX_BUFFERED: usize = RECV_WINDOW + 65536;
/// Payload per packet at libudx's base MTU of 1200 (minus IPv4 + UDP + UDX headers), which
/// every path that carries UDX at all must carry.
const BASE_PAYLOAD: usize = 1200 - 48;
/// Payload at libudx's MTU ceiling of 1500, reached by probing.
const MAX_PAYLOAD: usize = 1500 - 48;
/// A probe is given up after this many losses (libudx: `UDX_MTU_MAX_PROBES`).
const MTU_MAX_PROBES: u32 = 3;
/// Retransmission timeouts without progress for this long declare the peer gone. A wall
/// time, not a count: six timeouts at the 200 ms floor are over in 4 s, and a burst of heavy
/// loss (30 % both ways for 10 s, in the soak) then killed one stream in fifty whose last
/// packet kept failing; six counted over an RTO inflated by the loss took minutes. 15 s
/// outlasts such a burst and a dead peer is still noticed well within half a minute, like an
/// idle one (six unanswered heartbeats).
const GIVE_UP_AFTER: Duration = Duration::from_secs(15);
/// The exponential backoff of the RTO stops at this interval (or the RTO itself, if longer).
/// RFC 6298 allows a ceiling of 60 s or more; that protects a path from senders that keep
/// resending at full rate, but after a timeout we send at most a minimal window per interval
/// (a few KB), and the ceiling is also how late we notice that the path is back: with it,
/// a stream resumes within about a second of a loss burst or outage ending.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How far ahead of the cumulative ack we buffer out-of-order packets.
const MAX_OUT_OF_ORDER: u64 = 65536;
/// Packets held for a stream that is registered but not connected yet.
const MAX_HELD_PACKETS: usize = 256;
/// And at most this many bytes of them, whatever their size.
const MAX_HELD_BYTES: usize = 512 * 1024;
/// Heartbeats (zero-window probes, keepalives) sent without hearing anything back after which
/// the peer is declared gone: an idle or stalled stream to a dead peer ends in bounded time.
const MAX_UNANSWERED_HEARTBEATS: u32 = 6;
/// A dropped-after-shutdown stream waits at most this long for the peer to end too.
const LINGER_TIMEOUT: Duration = Duration::from_secs(30);
/// A DESTROY that overtook the peer's last packets waits at most this long (and at most one
/// retransmission timeout) for them.
const MAX_DESTROY_WAIT: Duration = Duration::from_secs(2);
/// Lower bound of the tail-loss-probe timeout: the runtime's timers tick in milliseconds and
/// the receiver acks once per received burst.
const MIN_PTO: Duration = Duration::from_millis(2);
/// How long the ack of a lone small data packet waits for data going the other way to carry
/// it (a request answered by a response). Well under the sender's tail-loss-probe timeout
/// (`MIN_PTO` twice plus its RTT), even with the runtime's millisecond timer granularity.
const ACK_DELAY: Duration = Duration::from_millis(1);
/// Lower bound of the reordering window used by loss detection.
const MIN_REORDER_WINDOW: Duration = Duration::from_micros(500);
/// Packets SACKed beyond a hole that, on a path not seen to reorder, make it a loss without
/// a reordering window (RFC 8985's DupThresh, TCP's three duplicate acks).
const DUP_THRESH: usize = 3;
/// The send buffer holds at least this much beyond the congestion window: a few of the
/// tunnel's 64 KiB messages, so a writer does not wait while the window has room. Not more:
/// it is memory per stream, held by every stream whose reader is slower than its writer (50
/// streams with 1 MiB each held 70 MiB in a share).
const SEND_BUFFER_HEADROOM: usize = 256 << 10;
/// And at most this much in total.
const MAX_SEND_BUFFER: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SentState {
    InFlight,
    Lost,
    Acked,
}

/// A packet sent and not yet cumulatively acknowledged.
struct Sent {
    data: Bytes,
    flags: u8,
    time_sent: Instant,
    retransmitted: bool,
    state: SentState,
    /// MTU-probe padding this packet carries (0 for normal packets).
    padding: u8,
    /// Delivery state when it was (last) sent, for the delivery rate.
    stamp: SendStamp,
}

/// Path MTU discovery, libudx style: a full data packet is padded (data offset, at most 255
/// bytes) up to a candidate size, which is adopted when that packet is acknowledged. A lost
/// probe is resent without its padding, so probing never costs data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MtuState {
    /// Want to probe a payload of `target` bytes; `losses` probes of it were lost so far.
    Searching {
        target: usize,
        losses: u32,
    },
    /// A probe is in flight.
    Probing {
        target: usize,
        losses: u32,
    },
    Done,
}

/// The next probe after `current` works, aiming at `ceiling`.
fn next_probe(current: usize, ceiling: usize) -> MtuState {
    // Steps smaller than libudx's 32 bytes are not worth a probe.
    if ceiling < current + 32 {
        return MtuState::Done;
    }
    MtuState::Searching {
        target: ceiling.min(current + u8::MAX as usize),
        losses: 0,
    }
}

/// Where the peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    /// The peer's stream id (what our packets carry).
    pub id: u32,
    /// The peer's address.
    pub addr: SocketAddr,
}

/// One UDX stream's protocol state machine.
pub struct Stream {
    local_id: u32,
    remote: Option<Remote>,
    /// The remote before the last `change_remote` to another address (see [`Stream::hears`]).
    old_remote: Option<SocketAddr>,
    /// `connect_on_first_packet` was called with this remote id.
    connect_on_first: Option<u32>,
    held: Vec<(Bytes, SocketAddr)>,
    held_bytes: usize,
    /// Heartbeats sent since the peer was last heard from.
    unanswered_heartbeats: u32,
    /// Set by [`Stream::change_remote`] while packets sent before the change are unacked:
    /// the move completes when the cumulative ack reaches this sequence number.
    remote_changing: Option<u64>,
    /// SACK ranges of the ack being processed (kept to avoid an allocation per ack).
    sack_ranges: Vec<(u64, u64)>,
    /// Sequence numbers SACK processing visited (its cost, bounded per ack).
    #[cfg(test)]
    sack_visits: u64,
    closed: Option<CloseReason>,
    handle_dropped: bool,
    linger_deadline: Option<Instant>,
    /// The peer's DESTROY arrived ahead of packets it sent before it: its sequence number,
    /// and until when we wait for those packets ([`MAX_DESTROY_WAIT`]).
    remote_destroy: Option<(u64, Instant)>,

    // receive side
    rcv_nxt: u64,
    out_of_order: BTreeMap<u64, (u8, Bytes)>,
    /// Payload bytes in `out_of_order`.
    out_of_order_bytes: usize,
    remote_end: Option<u64>,
    eof_delivered: bool,
    /// Received in order, not yet taken by the application.
    received: ChunkQueue,
    /// Bytes handed to the application that it has not read yet.
    unread: usize,
    /// We advertised less than half the window: the application should ask for a window
    /// update ([`Stream::window_update`]) once it has made room.
    window_update_wanted: bool,
    ack_needed: bool,
    /// The ack owed is for one small in-order data packet and nothing else: it may wait
    /// (until `ack_deadline`) for a data packet of ours to carry it.
    ack_delayable: bool,
    ack_deadline: Option<Instant>,
    events: VecDeque<StreamEvent>,

    // send side
    snd_una: u64,
    snd_nxt: u64,
    sent: VecDeque<Sent>,
    retransmit: VecDeque<u64>,
    in_flight: usize,
    send_rwnd: u32,
    wl1: u32,
    wl2: u32,
    /// Written bytes not yet sent: `pending` is cut into packets, `queued` waits behind it.
    pending: Bytes,
    queued: VecDeque<Bytes>,
    end_requested: bool,
    end_seq: Option<u64>,
    end_acked: bool,
    acked_bytes: usize,
    newly_acked: usize,
    payload: usize,
    mtu: MtuState,

    rtt: RttEstimator,
    rate: DeliveryRate,
    cc: Congestion,
    pacer: Pacer,
    /// Send time and sequence of the most recently sent packet known delivered (RACK).
    rack: Option<(Instant, u64)>,
    rack_rtt: Duration,
    /// Packets SACKed above the cumulative ack (RACK's `segs_sacked`).
    sacked: usize,
    /// The highest sequence number delivered so far (RACK's `fack`).
    highest_delivered: Option<u64>,
    /// A packet sent once was delivered after a higher one: the path reorders, so loss
    /// detection waits a reordering window (RACK's `reord`).
    reordering_seen: bool,
    /// RTT sample of the current ack batch: (send time, rtt) of the newest clean packet.
    rtt_sample: Option<(Instant, Duration)>,
    loss_check_needed: bool,

    rto_deadline: Option<Instant>,
    rto_timeouts: u32,
    /// The first timeout of the current run of timeouts without progress.
    stalled_since: Option<Instant>,
    loss_deadline: Option<Instant>,
    pacing_deadline: Option<Instant>,
    probe_deadline: Option<Instant>,
    /// Tail loss probe: when no ack arrives for a while, resend the newest packet so its
    /// SACK reveals earlier losses without waiting for the (much longer) RTO.
    tlp_deadline: Option<Instant>,
    tlp_in_flight: bool,
    keepalive: Option<Duration>,
    keepalive_deadline: Option<Instant>,
    /// The deadline the endpoint has scheduled for us (to avoid duplicate timer entries).
    pub(crate) scheduled: Option<Instant>,
    /// Queued in the endpoint's active list.
    pub(crate) active: bool,

    stats: StreamStats,
}

impl Stream {
    /// A stream with local id `local_id`, not connected yet.
    pub fn new(local_id: u32, now: Instant) -> Stream {
        Stream {
            local_id,
            remote: None,
            old_remote: None,
            connect_on_first: None,
            held: Vec::new(),
            held_bytes: 0,
            unanswered_heartbeats: 0,
            remote_changing: None,
            sack_ranges: Vec::new(),
            #[cfg(test)]
            sack_visits: 0,
            closed: None,
            handle_dropped: false,
            linger_deadline: None,
            remote_destroy: None,
            rcv_nxt: 0,
            out_of_order: BTreeMap::new(),
            out_of_order_bytes: 0,
            remote_end: None,
            eof_delivered: false,
            received: ChunkQueue::new(RECV_ALLOCATION),
            unread: 0,
            window_update_wanted: false,
            ack_needed: false,
            ack_delayable: false,
            ack_deadline: None,
            events: VecDeque::new(),
            snd_una: 0,
            snd_nxt: 0,
            sent: VecDeque::new(),
            retransmit: VecDeque::new(),
            in_flight: 0,
            send_rwnd: RECV_WINDOW as u32,
            wl1: 0,
            wl2: 0,
            pending: Bytes::new(),
            queued: VecDeque::new(),
            end_requested: false,
            end_seq: None,
            end_acked: false,
            acked_bytes: 0,
            newly_acked: 0,
            payload: BASE_PAYLOAD,
            mtu: next_probe(BASE_PAYLOAD, MAX_PAYLOAD),
            rtt: RttEstimator::default(),
            rate: DeliveryRate::new(now),
            cc: Congestion::new(local_id),
            pacer: Pacer::new(now),
            rack: None,
            rack_rtt: Duration::ZERO,
            sacked: 0,
            highest_delivered: None,
            reordering_seen: false,
            rtt_sample: None,
            loss_check_needed: false,
            rto_deadline: None,
            rto_timeouts: 0,
            stalled_since: None,
            loss_deadline: None,
            pacing_deadline: None,
            probe_deadline: None,
            tlp_deadline: None,
            tlp_in_flight: false,
            keepalive: None,
            keepalive_deadline: None,
            scheduled: None,
            active: false,
            stats: StreamStats::default(),
        }
    }

    /// Our stream id.
    pub fn local_id(&self) -> u32 {
        self.local_id
    }

    /// The peer, once known.
    pub fn remote(&self) -> Option<Remote> {
        self.remote
    }

    /// Whether a packet from `from` is the connected peer's: its remote, or the remote it had
    /// before the last `change_remote`. libudx resends a lost packet to the address it first
    /// sent it to (the relay, after a move to a punched path), until it is acknowledged;
    /// a stream deaf to its old path never acknowledges it and the peer's move never completes.
    pub fn hears(&self, from: SocketAddr) -> bool {
        self.remote.is_some_and(|r| r.addr == from) || self.old_remote == Some(from)
    }

    /// Why the stream stopped, if it did.
    pub fn closed(&self) -> Option<CloseReason> {
        self.closed
    }

    /// Counters and estimates.
    pub fn stats(&self) -> StreamStats {
        let mut stats = self.stats;
        stats.srtt = self.rtt.srtt();
        stats.cwnd = self.cc.window();
        stats.in_flight = self.in_flight;
        stats.max_payload = self.payload;
        stats
    }

    /// Counts a packet passed on by a relay (a relayed stream's only statistic).
    pub(crate) fn count_forwarded(&mut self) {
        self.stats.packets_received += 1;
    }

    /// The next thing the application should learn, if any.
    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    /// Both directions ended and were acknowledged: a clean finish.
    pub fn is_done(&self) -> bool {
        self.end_acked && self.eof_delivered
    }

    /// True once the driver should forget this stream (and free its id).
    pub fn is_finished(&self) -> bool {
        if self.closed.is_some() {
            return true;
        }
        let write_done = self.end_acked;
        let read_done = self.eof_delivered;
        if self.handle_dropped && self.remote.is_none() {
            return true;
        }
        write_done && read_done
    }

    /// Starts the stream towards `remote_id` at `addr`, or (without `addr`) at whoever sends
    /// first. Returns packets held before, from the adopted peer, to replay through
    /// [`Stream::handle_packet`].
    pub fn connect(
        &mut self,
        remote_id: u32,
        addr: Option<SocketAddr>,
    ) -> Vec<(Bytes, SocketAddr)> {
        if self.remote.is_some() || self.closed.is_some() {
            return Vec::new();
        }
        match addr.or_else(|| self.held.first().map(|(_, a)| *a)) {
            Some(addr) => {
                self.set_remote(remote_id, addr);
                let peer = self.remote.map(|r| r.addr);
                // Only what the peer sent counts; anyone else's packets were never ours.
                self.held_bytes = 0;
                let mut held = std::mem::take(&mut self.held);
                held.retain(|(_, from)| Some(*from) == peer);
                held
            }
            None => {
                self.connect_on_first = Some(remote_id);
                Vec::new()
            }
        }
    }

    fn set_remote(&mut self, id: u32, addr: SocketAddr) {
        // Stored as packets from it are reported (plain IPv4), so that matching the source
        // of each packet against it is a plain comparison.
        let addr = super::normalize(addr);
        self.remote = Some(Remote { id, addr });
        self.connect_on_first = None;
        self.events.push_back(StreamEvent::Connected(addr));
    }

    /// Moves a connected stream to another peer address and remote id (libudx's
    /// `udx_stream_change_remote`: a relayed connection moving to the direct path, or a
    /// peer that changed address). The sequence space, unacknowledged data and receive state
    /// stay; from now on every packet goes to `addr` with `remote_id` in its header, and only
    /// packets from `addr` are accepted (the caller's address check reads [`Stream::remote`]).
    /// Whatever was in flight is resent on the new path at once: its acks would come back by
    /// the old one, which is no longer heard. The MTU search starts again (the new path may
    /// carry less). [`StreamEvent::RemoteChanged`] follows once everything sent before the
    /// change is acknowledged. Returns false (and changes nothing) if the stream is not
    /// connected or already closed.
    pub fn change_remote(&mut self, remote_id: u32, addr: SocketAddr) -> bool {
        if self.closed.is_some() || self.remote.is_none() {
            return false;
        }
        let addr = super::normalize(addr);
        if let Some(old) = self.remote.filter(|r| r.addr != addr) {
            self.old_remote = Some(old.addr);
        }
        self.remote = Some(Remote {
            id: remote_id,
            addr,
        });
        if self.snd_una < self.snd_nxt {
            self.remote_changing = Some(self.snd_nxt);
        } else {
            self.remote_changing = None;
            self.events.push_back(StreamEvent::RemoteChanged);
        }
        self.payload = BASE_PAYLOAD;
        self.mtu = next_probe(BASE_PAYLOAD, MAX_PAYLOAD);
        self.retransmit.clear();
        for (idx, pkt) in self.sent.iter_mut().enumerate() {
            if pkt.state == SentState::Acked {
                continue;
            }
            // A probe's padding may not fit the new path; the data alone always does.
            pkt.padding = 0;
            pkt.state = SentState::Lost;
            self.retransmit.push_back(self.snd_una + idx as u64);
        }
        self.in_flight = 0;
        self.loss_deadline = None;
        self.tlp_deadline = None;
        self.tlp_in_flight = false;
        self.rto_deadline = None;
        // The new path gets its own count of timeouts and unanswered heartbeats.
        self.rto_timeouts = 0;
        self.unanswered_heartbeats = 0;
        // Tell the new path at once what we received and how much room we have.
        self.ack_needed = true;
        self.ack_delayable = false;
        true
    }

    /// A packet for this stream arrived before it was connected. Returns true if the stream
    /// should process it now (it just got connected by it), false if it was held or dropped.
    pub fn accept_unconnected(&mut self, packet: &[u8], from: SocketAddr) -> bool {
        if let Some(remote_id) = self.connect_on_first {
            self.set_remote(remote_id, from);
            return true;
        }
        if self.held.len() < MAX_HELD_PACKETS && self.held_bytes + packet.len() <= MAX_HELD_BYTES {
            if self.held.is_empty() {
                self.events.push_back(StreamEvent::Held(from));
            }
            self.held_bytes += packet.len();
            self.held.push((Bytes::copy_from_slice(packet), from));
        }
        false
    }

    /// The packets held before connect (a placeholder giving way to a stream that moves in).
    pub fn take_held(&mut self) -> Vec<(Bytes, SocketAddr)> {
        self.held_bytes = 0;
        std::mem::take(&mut self.held)
    }

    /// Sends `payload` as one unordered datagram on the stream (libudx's `udx_stream_send`,
    /// udx-native's `trySend`): not retransmitted, not counted in the sequence. hyperdht
    /// sends an empty one after a move, so that the peer sees the new path carry traffic.
    pub fn send_message(&mut self, payload: &[u8], out: &mut Transmits) {
        let Some(remote) = self.remote else { return };
        if self.closed.is_some() || payload.len() > MAX_PAYLOAD {
            return;
        }
        let hdr = self.header(wire::FLAG_MESSAGE, self.snd_nxt);
        out.push_packet(remote.addr, &hdr, 0, payload);
        self.stats.packets_sent += 1;
    }

    /// Received payload bytes this stream holds (in order and out of order) plus those the
    /// application has not read yet: what the peer's data costs us in memory.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered() + self.out_of_order_bytes
    }

    /// Received bytes we hold or the application has not read: what the window is cut by.
    fn buffered(&self) -> usize {
        self.unread + self.received.len()
    }

    fn advertised_window(&mut self) -> u32 {
        let window = RECV_WINDOW.saturating_sub(self.buffered());
        if window < RECV_WINDOW / 2 {
            self.window_update_wanted = true;
        }
        window as u32
    }

    fn header(&mut self, flags: u8, seq: u64) -> Header {
        Header {
            flags,
            data_offset: 0,
            stream_id: self.remote.map_or(0, |r| r.id),
            recv_window: self.advertised_window(),
            seq: seq as u32,
            ack: self.rcv_nxt as u32,
        }
    }

    // ---------------------------------------------------------------- receive path

    /// Processes one datagram addressed to this stream (the caller checked that it comes
    /// from the peer, or adopted its sender with [`Stream::accept_unconnected`]). Anything
    /// that is not a well-formed UDX packet is ignored.
    pub fn handle_packet(&mut self, packet: &[u8], now: Instant, out: &mut Transmits) {
        if let Some(hdr) = Header::decode(packet) {
            self.on_packet(&hdr, &packet[wire::HEADER_SIZE..], now, out);
        }
    }

    fn on_packet(&mut self, hdr: &Header, body: &[u8], now: Instant, out: &mut Transmits) {
        if self.closed.is_some() {
            return;
        }
        self.stats.packets_received += 1;
        self.unanswered_heartbeats = 0;
        if hdr.flags & wire::FLAG_HEARTBEAT != 0 {
            // libudx answers probes with an ack and looks at nothing else.
            self.send_ack(out);
            return;
        }
        let Some((sacks, payload)) = wire::split_body(hdr, body) else {
            return;
        };

        let seq = wire::unwrap_seq(self.rcv_nxt, hdr.seq);
        let was_next = seq == self.rcv_nxt;
        if seq >= self.rcv_nxt {
            if hdr.flags & (wire::FLAG_DATA | wire::FLAG_END) != 0 && !self.eof_delivered {
                self.on_data(seq, hdr.flags, payload);
            }
            if hdr.flags & wire::FLAG_END != 0 {
                self.remote_end = Some(seq);
            }
            if hdr.flags & wire::FLAG_DESTROY != 0 {
                if seq == self.rcv_nxt {
                    self.close(CloseReason::Reset);
                    return;
                }
                // libudx (hyperswarm's secret stream) destroys a stream as soon as both sides
                // ended, with its last packets maybe still on the way: on a path that
                // reorders (a relay and a punched path at once, while moving) the DESTROY
                // can overtake them. Closing now would lose bytes the peer sent.
                let wait = self.rtt.rto().min(MAX_DESTROY_WAIT);
                self.remote_destroy.get_or_insert((seq, now + wait));
            }
        }
        if hdr.flags & (wire::FLAG_DATA | wire::FLAG_END) != 0 {
            // Also for duplicates: the peer evidently missed our ack. A lone small packet
            // that arrived in order (a request, most likely) may wait for the answer to
            // carry its ack; anything more (a second packet, a hole, the end) is acked at
            // once, so bulk transfers and loss recovery see no delay.
            let lone_small = !self.ack_needed
                && was_next
                && seq + 1 == self.rcv_nxt
                && hdr.flags == wire::FLAG_DATA
                && payload.len() < BASE_PAYLOAD
                && self.out_of_order.is_empty();
            self.ack_needed = true;
            self.ack_delayable = lone_small;
        }

        self.on_ack(hdr, seq, sacks, now);
        if self
            .remote_destroy
            .is_some_and(|(destroy, _)| self.rcv_nxt >= destroy)
        {
            // Everything the peer sent before its DESTROY arrived.
            self.close(CloseReason::Reset);
        }
    }

    fn on_data(&mut self, seq: u64, flags: u8, payload: &[u8]) {
        let new = seq == self.rcv_nxt || !self.out_of_order.contains_key(&seq);
        let len = if flags & wire::FLAG_DATA != 0 {
            payload.len()
        } else {
            0
        };
        // The packet that fills the hole at `rcv_nxt` may go one packet over, or a window
        // filled with out-of-order data (which we SACKed, so the sender will not resend it)
        // could never be released.
        let limit = if seq == self.rcv_nxt {
            MAX_BUFFERED
        } else {
            RECV_WINDOW
        };
        if new && self.buffered_bytes() + len > limit {
            // Beyond the window we advertised: memory is bounded by what we offer, not by
            // what a peer sends. Not acknowledged, so an honest sender resends it later.
            self.stats.packets_dropped += 1;
            return;
        }
        if seq == self.rcv_nxt {
            self.deliver(flags, payload);
            self.rcv_nxt += 1;
            // Packets that were waiting for this one.
            while let Some(entry) = self.out_of_order.first_entry() {
                if *entry.key() != self.rcv_nxt {
                    break;
                }
                let (flags, data) = entry.remove();
                self.out_of_order_bytes -= data.len();
                self.deliver(flags, &data);
                self.rcv_nxt += 1;
            }
        } else if seq - self.rcv_nxt < MAX_OUT_OF_ORDER {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.out_of_order.entry(seq) {
                let data = if flags & wire::FLAG_DATA != 0 {
                    Bytes::copy_from_slice(payload)
                } else {
                    Bytes::new()
                };
                self.out_of_order_bytes += data.len();
                slot.insert((flags, data));
            }
        }
    }

    fn deliver(&mut self, flags: u8, payload: &[u8]) {
        // libudx hands out the payload only of DATA packets (an END-only packet's is ignored).
        // Nobody reads a dropped handle: acknowledge the data but do not keep it.
        if flags & wire::FLAG_DATA != 0 && !self.handle_dropped {
            self.received.push(payload);
        }
    }

    fn on_ack(&mut self, hdr: &Header, seq: u64, sacks: wire::SackBlocks<'_>, now: Instant) {
        let ack = wire::unwrap_seq(self.snd_una, hdr.ack);
        if ack > self.snd_nxt {
            return; // acks something we never sent
        }
        // Window update, accepted only from packets not older than the last one that set it
        // (RFC 793's SND.WL1/WL2 rule, as libudx applies it).
        let seq32 = seq as u32;
        let newer = (self.wl1.wrapping_sub(seq32) as i32) < 0
            || (self.wl1 == seq32 && (self.wl2.wrapping_sub(hdr.ack) as i32) <= 0);
        // One packet from the peer's address claiming a sequence number far ahead (a forgery,
        // found by fuzzing) makes every real packet after it look older. Had it carried a
        // window of 0, our sending would stop for good: a closed window reopens from any
        // packet that claims nothing beyond what we took in order and acks nothing we already
        // processed, which the peer's answers to our zero-window probes do. Honest traffic
        // with an open window is ruled exactly as libudx rules it.
        let reopens = self.send_rwnd == 0
            && hdr.recv_window > 0
            && seq <= self.rcv_nxt
            && ack >= self.snd_una;
        if newer || reopens {
            self.send_rwnd = hdr.recv_window;
            self.wl1 = seq32;
            self.wl2 = hdr.ack;
        }
        // An ack older than one already processed (acks overtake each other on reordering
        // paths, and anyone may send a stale one) carries no cumulative news.
        if ack > self.snd_una {
            let newly = (ack - self.snd_una) as usize;
            for idx in 0..newly {
                if !self.mark_delivered(idx, now) {
                    // SACKed before, cumulatively acked now.
                    self.sacked -= 1;
                }
            }
            self.sent.drain(..newly);
            self.snd_una = ack;
        }
        if self.remote_changing.is_some_and(|at| self.snd_una >= at) {
            self.remote_changing = None;
            self.events.push_back(StreamEvent::RemoteChanged);
        }
        // Only the cumulative ack completes our write side: a SACK of the END packet says
        // nothing about the data before it.
        if self.end_seq.is_some_and(|end| self.snd_una > end) {
            self.end_acked = true;
        }
        // At most as many blocks as libudx ever sends, each clipped to what is in flight, and
        // overlaps visited once: one ack costs at most one walk over the packets in flight,
        // however many blocks it carries.
        let mut ranges = std::mem::take(&mut self.sack_ranges);
        ranges.clear();
        ranges.extend(sacks.take(wire::MAX_SACKS).filter_map(|(start, end)| {
            let start = wire::unwrap_seq(self.snd_una, start).max(self.snd_una);
            let end = wire::unwrap_seq(self.snd_una, end).min(self.snd_nxt);
            (start < end).then_some((start, end))
        }));
        ranges.sort_unstable();
        let mut done = self.snd_una;
        for &(start, end) in &ranges {
            for s in start.max(done)..end {
                #[cfg(test)]
                {
                    self.sack_visits += 1;
                }
                if self.mark_delivered((s - self.snd_una) as usize, now) {
                    self.sacked += 1;
                }
            }
            done = done.max(end);
        }
        self.sack_ranges = ranges;
    }

    /// Accounts the packet at `idx` (relative to `snd_una`) as delivered, once: false if it
    /// was already.
    fn mark_delivered(&mut self, idx: usize, now: Instant) -> bool {
        let seq = self.snd_una + idx as u64;
        let pkt = &mut self.sent[idx];
        let was_lost = match pkt.state {
            SentState::Acked => return false,
            SentState::InFlight => {
                self.in_flight -= 1;
                false
            }
            SentState::Lost => true,
        };
        pkt.state = SentState::Acked;
        let data = std::mem::take(&mut pkt.data);
        let (time_sent, retransmitted, padding) = (pkt.time_sent, pkt.retransmitted, pkt.padding);
        self.rate.on_delivered(pkt.stamp, time_sent, now);
        self.newly_acked += 1;
        self.acked_bytes += data.len();
        self.loss_check_needed = true;
        let rtt = now.saturating_duration_since(time_sent);
        if !retransmitted && !was_lost && self.rtt_sample.is_none_or(|(t, _)| time_sent > t) {
            // Karn: never from a retransmitted packet; nor from one we had given up on (its
            // ack comes late for reasons other than the path). Of the packets an ack covers,
            // the most recently sent one measures the path best: the others may only now be
            // cumulatively acked after waiting for a hole to be repaired.
            self.rtt_sample = Some((time_sent, rtt));
        }
        if !retransmitted || rtt >= self.rtt.min_rtt() {
            self.rack_rtt = rtt;
            if self.rack.is_none_or(|(t, s)| (time_sent, seq) > (t, s)) {
                self.rack = Some((time_sent, seq));
            }
        }
        if !retransmitted && self.highest_delivered.is_some_and(|h| seq < h) {
            self.reordering_seen = true;
        }
        self.highest_delivered = self.highest_delivered.max(Some(seq));
        if padding > 0 {
            self.on_probe_acked(data.len() + padding as usize);
        }
        true
    }

    fn on_probe_acked(&mut self, size: usize) {
        if let MtuState::Probing { target, .. } = self.mtu {
            if size == target {
                self.payload = target;
                self.mtu = next_probe(target, MAX_PAYLOAD);
            }
        }
    }

    fn on_probe_lost(&mut self) {
        if let MtuState::Probing { target, losses } = self.mtu {
            let losses = losses + 1;
            self.mtu = if losses >= MTU_MAX_PROBES {
                // This size does not pass: try half-way between what works and it.
                next_probe(self.payload, (self.payload + target) / 2)
            } else {
                MtuState::Searching { target, losses }
            };
        }
    }

    // ---------------------------------------------------------------- after a batch

    /// Runs once after a burst of received packets or events: congestion control, loss
    /// detection, hand-off to the application. Then sends what may be sent.
    pub fn service(&mut self, now: Instant, out: &mut Transmits, budget: usize) -> bool {
        if self.closed.is_none() {
            self.after_acks(now);
        }
        if self.closed.is_some() || self.remote.is_none() {
            return false;
        }
        let more = self.transmit(now, out, budget);
        if self.ack_needed && !self.delay_ack(now) {
            self.send_ack(out);
        }
        // Idle streams send heartbeats so NAT mappings stay open (libudx's keepalive);
        // while data is in flight the data itself does that.
        let idle = self.snd_una == self.snd_nxt;
        match self.keepalive {
            Some(every) if idle => {
                self.keepalive_deadline.get_or_insert(now + every);
            }
            _ => self.keepalive_deadline = None,
        }
        more
    }

    /// True while the owed ack may still wait for data to carry it (starting the wait).
    fn delay_ack(&mut self, now: Instant) -> bool {
        if !self.ack_delayable {
            return false;
        }
        let deadline = *self.ack_deadline.get_or_insert(now + ACK_DELAY);
        deadline > now
    }

    fn after_acks(&mut self, now: Instant) {
        let latest_rtt = self.rtt_sample.take().map(|(_, rtt)| rtt);
        if let Some(rtt) = latest_rtt {
            self.rtt.on_sample(rtt);
        }
        if self.newly_acked > 0 {
            let sample = self.rate.take_sample();
            self.cc.on_rtt(latest_rtt, self.rtt.min_rtt());
            self.cc.on_ack(
                now,
                self.newly_acked,
                sample,
                self.rate.delivered(),
                self.in_flight,
            );
            self.newly_acked = 0;
            self.rto_timeouts = 0;
            self.stalled_since = None;
            self.rto_deadline = (self.snd_una < self.snd_nxt).then(|| now + self.rtt.rto());
            self.tlp_in_flight = false;
            self.tlp_deadline = (self.snd_una < self.snd_nxt).then(|| now + self.pto());
            if let Some(srtt) = self.rtt.srtt() {
                self.pacer
                    .set_rate(self.cc.pacing_rate(self.payload, srtt), self.payload);
            }
        }
        if self.loss_check_needed {
            self.loss_check_needed = false;
            self.detect_losses(now);
        }
        if let Some(end) = self.remote_end {
            if self.rcv_nxt > end && !self.eof_delivered {
                self.eof_delivered = true;
            }
        }
        if self.handle_dropped
            && self.end_acked
            && self.linger_deadline.is_none()
            && !self.eof_delivered
        {
            self.linger_deadline = Some(now + LINGER_TIMEOUT);
        }
    }

    /// RACK (RFC 8985), simplified: a packet is lost when a packet sent after it has been
    /// delivered and it is overdue by more than the latest RTT plus a reordering window.
    fn detect_losses(&mut self, now: Instant) {
        let Some((rack_time, rack_seq)) = self.rack else {
            return;
        };
        // RFC 8985 (6.2, step 4): on a path not seen to reorder, with at least three packets
        // SACKed beyond a hole, the hole is a loss as soon as it is overdue; waiting a quarter
        // of the RTT more only delays every repair (and, at a transfer's end, the last byte).
        let reo_wnd = if !self.reordering_seen && self.sacked >= DUP_THRESH {
            Duration::ZERO
        } else {
            (self.rtt.min_rtt() / 4).max(MIN_REORDER_WINDOW)
        };
        let mut next: Option<Instant> = None;
        let mut lost = 0;
        // Every packet sent before the delivered one counts, higher sequence numbers too: a
        // delivered retransmission was sent after new data that may be lost since (at the
        // tail of a lossy transfer that is all of it, and only a timeout was left).
        for idx in 0..self.sent.len() {
            let seq = self.snd_una + idx as u64;
            let pkt = &mut self.sent[idx];
            if (pkt.time_sent, seq) >= (rack_time, rack_seq) {
                if !pkt.retransmitted {
                    // Sent once, after the delivered one: every packet above it was first
                    // sent later still, so nothing above can be lost by this rule. The walk
                    // stops here and costs no more than when it stopped at `rack_seq`.
                    break;
                }
                continue;
            }
            if pkt.state != SentState::InFlight {
                continue;
            }
            let deadline = pkt.time_sent + self.rack_rtt + reo_wnd;
            if deadline <= now {
                pkt.state = SentState::Lost;
                let was_probe = pkt.padding > 0;
                self.in_flight -= 1;
                self.retransmit.push_back(self.snd_una + idx as u64);
                lost += 1;
                self.stats.packets_lost += 1;
                if was_probe {
                    self.sent[idx].padding = 0;
                    self.on_probe_lost();
                }
            } else {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
            }
        }
        self.loss_deadline = next;
        if lost > 0 {
            tracing::trace!(stream = self.local_id, lost, "packets lost");
            self.cc.on_loss(lost, self.rack_rtt, self.rtt.min_rtt());
        }
    }

    // ---------------------------------------------------------------- application side

    /// Queues `data` to be sent (ignored after [`Stream::shutdown`]). Queue no more than
    /// [`Stream::send_limit`] beyond what was acknowledged ([`Stream::take_acked_bytes`]).
    pub fn write(&mut self, data: Bytes) {
        if !data.is_empty() && !self.end_requested {
            self.queued.push_back(data);
        }
    }

    /// Ends our write side: END follows the queued data.
    pub fn shutdown(&mut self) {
        self.end_requested = true;
    }

    /// How many written bytes may be unacknowledged at once: enough to fill the congestion
    /// window plus headroom, so a writer never waits on a window that has room.
    pub fn send_limit(&self) -> usize {
        (self.cc.window() * self.payload + SEND_BUFFER_HEADROOM).min(MAX_SEND_BUFFER)
    }

    /// Written bytes acknowledged by the peer since the last call.
    pub fn take_acked_bytes(&mut self) -> usize {
        std::mem::take(&mut self.acked_bytes)
    }

    /// Bytes received in order since the last call, a chunk at a time (call until `None`).
    /// Consecutive chunks of one allocation ([`RECV_ALLOCATION`]) lie next to each other in
    /// memory, so a reader can join them without a copy (`BytesMut::unsplit`).
    pub fn take_received(&mut self) -> Option<BytesMut> {
        self.received.pop()
    }

    /// The peer ended its write side and everything before its END was received.
    pub fn is_eof(&self) -> bool {
        self.eof_delivered
    }

    /// The application holds `bytes` received bytes it has not read yet; they count against
    /// the window we advertise.
    pub fn set_unread(&mut self, bytes: usize) {
        self.unread = bytes;
    }

    /// True (once) if we advertised a small window since the last call: then tell the peer
    /// with [`Stream::window_update`] once the application has read enough to make room.
    pub fn take_window_update_wanted(&mut self) -> bool {
        std::mem::take(&mut self.window_update_wanted)
    }

    /// The application made room: send a window update so a stalled peer resumes at once
    /// instead of waiting for its next probe.
    pub fn window_update(&mut self) {
        self.ack_needed = true;
        self.ack_delayable = false;
    }

    /// Heartbeat interval while idle (libudx's keepalive), `None` for none.
    pub fn set_keepalive(&mut self, every: Option<Duration>) {
        self.keepalive = every;
    }

    /// Moves queued writes into `pending` so that packets are full: a short tail of one write
    /// is joined with the head of the next (a copy of at most one packet).
    fn refill_pending(&mut self) {
        while self.pending.len() < self.payload {
            let Some(mut next) = self.queued.pop_front() else {
                return;
            };
            if self.pending.is_empty() {
                self.pending = next;
                continue;
            }
            let take = (self.payload - self.pending.len()).min(next.len());
            let mut joined = BytesMut::with_capacity(self.pending.len() + take);
            joined.extend_from_slice(&self.pending);
            joined.extend_from_slice(&next.split_to(take));
            self.pending = joined.freeze();
            if !next.is_empty() {
                self.queued.push_front(next);
            }
        }
    }

    // ---------------------------------------------------------------- send path

    /// Sends retransmissions and new data as far as window, pacing and `budget` allow.
    /// Returns true when it stopped only because the budget ran out.
    fn transmit(&mut self, now: Instant, out: &mut Transmits, budget: usize) -> bool {
        let Some(remote) = self.remote else {
            return false;
        };
        let mut sent = 0;
        while sent < budget {
            // Retransmissions first; like libudx they ignore the peer's receive window
            // (it may have shrunk while the data was in flight).
            if let Some(&seq) = self.retransmit.front() {
                if seq < self.snd_una
                    || self.sent[(seq - self.snd_una) as usize].state != SentState::Lost
                {
                    self.retransmit.pop_front();
                    continue;
                }
                if self.in_flight >= self.cc.window() {
                    break;
                }
                let idx = (seq - self.snd_una) as usize;
                let len = wire::HEADER_SIZE + self.sent[idx].data.len();
                if let Err(at) = self.pacer.check(now, len) {
                    self.pacing_deadline = Some(at);
                    break;
                }
                self.retransmit.pop_front();
                let hdr = self.header(self.sent[idx].flags, seq);
                let stamp = self.rate.on_send(now, self.in_flight);
                let pkt = &mut self.sent[idx];
                pkt.state = SentState::InFlight;
                pkt.retransmitted = true;
                pkt.time_sent = now;
                pkt.stamp = stamp;
                out.push_packet(remote.addr, &hdr, 0, &pkt.data);
                self.in_flight += 1;
                self.pacer.on_sent(len);
                self.stats.retransmits += 1;
                self.stats.packets_sent += 1;
                self.refill_pending();
                if self.pending.is_empty() {
                    // The tail: with no new data to send after it, a lost retransmission
                    // has no later packet to expose it and waits for the probe timeout (at
                    // 5 % loss the last round of a 10 MiB transfer resends ~150 packets, so
                    // one is lost almost every time: a round trip more). A second copy makes
                    // that a loss of both, 1 in 400, for one packet per repaired hole.
                    let pkt = &self.sent[idx];
                    out.push_packet(remote.addr, &hdr, 0, &pkt.data);
                    self.pacer.on_sent(len);
                    self.stats.packets_sent += 1;
                }
                self.arm_rto(now);
                sent += 1;
                continue;
            }

            self.refill_pending();
            if self.pending.is_empty() && !(self.end_requested && self.end_seq.is_none()) {
                if self.in_flight < self.cc.window() {
                    self.rate.on_app_limited(self.in_flight);
                }
                break;
            }
            let rwnd_packets = match self.send_rwnd as usize {
                0 => 0,
                w => (w / self.payload).max(1),
            };
            // The peer's window counts from its cumulative ack: packets we gave up on are
            // still in it (TCP's rule, snd_nxt < snd_una + rwnd), or we would overrun it.
            let unacked = (self.snd_nxt - self.snd_una) as usize;
            if self.in_flight >= self.cc.window() || unacked >= rwnd_packets {
                if self.send_rwnd == 0 && self.in_flight == 0 && self.probe_deadline.is_none() {
                    // Zero window: probe until the peer reopens it (libudx sends a
                    // heartbeat, whose ack carries the current window).
                    self.probe_deadline = Some(now + self.rtt.rto());
                }
                break;
            }
            self.probe_deadline = None;

            // Probe only with a full packet, and only once the path has carried an ack.
            let padding = match self.mtu {
                // Not while moving to a new path (libudx): a lost probe there would be
                // blamed on the MTU.
                MtuState::Searching { target, .. }
                    if self.pending.len() >= self.payload
                        && self.rack.is_some()
                        && self.remote_changing.is_none() =>
                {
                    (target - self.payload) as u8
                }
                _ => 0,
            };
            let len = wire::HEADER_SIZE + padding as usize + self.payload.min(self.pending.len());
            if let Err(at) = self.pacer.check(now, len) {
                self.pacing_deadline = Some(at);
                break;
            }
            if let (MtuState::Searching { target, losses }, true) = (self.mtu, padding > 0) {
                self.mtu = MtuState::Probing { target, losses };
            }
            let data = self.pending.split_to(self.payload.min(self.pending.len()));
            let mut flags = if data.is_empty() { 0 } else { wire::FLAG_DATA };
            if self.pending.is_empty() && self.queued.is_empty() && self.end_requested {
                flags |= wire::FLAG_END;
                self.end_seq = Some(self.snd_nxt);
            }
            let seq = self.snd_nxt;
            let mut hdr = self.header(flags, seq);
            hdr.data_offset = padding;
            out.push_packet(remote.addr, &hdr, padding as usize, &data);
            let stamp = self.rate.on_send(now, self.in_flight);
            self.sent.push_back(Sent {
                data,
                flags,
                time_sent: now,
                retransmitted: false,
                state: SentState::InFlight,
                padding,
                stamp,
            });
            self.snd_nxt += 1;
            self.in_flight += 1;
            self.pacer.on_sent(len);
            self.stats.packets_sent += 1;
            if self.out_of_order.is_empty() {
                // The data packet carries our cumulative ack and window; SACK info would need
                // a separate ack.
                self.ack_needed = false;
                self.ack_delayable = false;
                self.ack_deadline = None;
            }
            self.arm_rto(now);
            sent += 1;
        }
        sent >= budget
    }

    fn arm_rto(&mut self, now: Instant) {
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rtt.rto());
        }
        if self.tlp_deadline.is_none() {
            self.tlp_deadline = Some(now + self.pto());
        }
    }

    /// Probe timeout, as QUIC's (RFC 9002, 6.2.1): the smoothed RTT, four deviations (at
    /// least a couple of timer ticks) and the receiver's ack delay, and never after the RTO
    /// (armed at the same moment), which it is there to pre-empt. RFC 8985's two RTTs
    /// assume a delayed-ack receiver; ours acks each burst at once, and on a lossy path the
    /// last packets of every transfer are lost often enough that the tail's wait shows.
    fn pto(&self) -> Duration {
        match self.rtt.srtt() {
            Some(srtt) => {
                (srtt + (self.rtt.rttvar() * 4).max(MIN_PTO) + MIN_PTO).min(self.rtt.rto())
            }
            None => self.rtt.rto(),
        }
    }

    /// Resends the newest packet still in flight (once per ack), to provoke an ack.
    fn send_tail_loss_probe(&mut self, now: Instant, out: &mut Transmits) {
        let Some(remote) = self.remote else { return };
        if self.tlp_in_flight || self.snd_una == self.snd_nxt {
            return;
        }
        let Some(idx) = self
            .sent
            .iter()
            .rposition(|p| p.state == SentState::InFlight)
        else {
            return;
        };
        let seq = self.snd_una + idx as u64;
        let hdr = self.header(self.sent[idx].flags, seq);
        let pkt = &mut self.sent[idx];
        pkt.retransmitted = true;
        pkt.time_sent = now;
        let was_probe = std::mem::take(&mut pkt.padding) > 0;
        out.push_packet(remote.addr, &hdr, 0, &pkt.data);
        if was_probe {
            self.on_probe_lost();
        }
        self.stats.retransmits += 1;
        self.stats.packets_sent += 1;
        self.tlp_in_flight = true;
    }

    /// The ack that answers any retransmission once this stream is done (see
    /// [`super::Endpoint`]'s time-wait): where to send it and its header.
    pub(crate) fn final_ack(&mut self) -> Option<(SocketAddr, Header)> {
        let remote = self.remote?;
        Some((remote.addr, self.header(0, self.snd_nxt)))
    }

    fn send_ack(&mut self, out: &mut Transmits) {
        let Some(remote) = self.remote else {
            self.ack_needed = true; // sent once connected
            return;
        };
        self.ack_needed = false;
        self.ack_delayable = false;
        self.ack_deadline = None;
        // The newest blocks, highest first: with more holes than blocks (5 % loss over a
        // window of a thousand packets), reporting the lowest ones would hide every recent
        // arrival, so the sender could neither see them delivered nor detect the losses among
        // them, and would stall at its tail until a timeout. Lower blocks were reported by
        // earlier acks; libudx's sender takes the blocks in any order.
        let mut blocks: Vec<(u32, u32)> = Vec::new();
        let mut iter = self.out_of_order.keys().rev().copied();
        if let Some(last) = iter.next() {
            let (mut start, mut end) = (last, last + 1);
            for s in iter {
                if s + 1 == start {
                    start = s;
                    continue;
                }
                blocks.push((start as u32, end as u32));
                if blocks.len() == wire::MAX_SACKS {
                    break;
                }
                (start, end) = (s, s + 1);
            }
            if blocks.len() < wire::MAX_SACKS {
                blocks.push((start as u32, end as u32));
            }
        }
        let flags = if blocks.is_empty() {
            0
        } else {
            wire::FLAG_SACK
        };
        let hdr = self.header(flags, self.snd_nxt);
        out.push_ack(remote.addr, &hdr, &blocks);
    }

    fn send_control(&mut self, flags: u8, out: &mut Transmits) {
        if let Some(remote) = self.remote {
            let hdr = self.header(flags, self.snd_nxt);
            out.push_packet(remote.addr, &hdr, 0, &[]);
        }
    }

    // ---------------------------------------------------------------- timers

    /// The earliest deadline at which [`Stream::on_timeout`] has something to do.
    pub fn next_timeout(&self) -> Option<Instant> {
        [
            self.rto_deadline,
            self.loss_deadline,
            self.pacing_deadline,
            self.probe_deadline,
            self.tlp_deadline,
            self.keepalive_deadline,
            self.linger_deadline,
            self.ack_deadline,
            self.remote_destroy.map(|(_, until)| until),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers that are due at `now` (retransmission, loss, probes, keepalive).
    pub fn on_timeout(&mut self, now: Instant, out: &mut Transmits) {
        if self.closed.is_some() {
            return;
        }
        if self.pacing_deadline.is_some_and(|t| t <= now) {
            self.pacing_deadline = None;
        }
        if self.loss_deadline.is_some_and(|t| t <= now) {
            self.loss_deadline = None;
            self.detect_losses(now);
        }
        let tlp_due = self.tlp_deadline.is_some_and(|t| t <= now);
        if tlp_due && !self.tlp_in_flight && self.rto_timeouts == 0 {
            // The probe goes first even when the RTO is due too (a PTO of two RTTs is the
            // RTO's 200 ms floor at 100 ms): its ack exposes the losses at the tail for RACK
            // to repair, where a timeout would resend everything from a window of four.
            // The probe gets a full RTO to be answered (RFC 8985, 7.3).
            self.tlp_deadline = None;
            self.send_tail_loss_probe(now, out);
            self.rto_deadline = self.rto_deadline.max(Some(now + self.rtt.rto()));
        } else if self.rto_deadline.is_some_and(|t| t <= now) {
            self.on_rto(now, out);
        } else if tlp_due {
            self.tlp_deadline = None;
        }
        if self.probe_deadline.is_some_and(|t| t <= now) {
            self.probe_deadline = Some(now + self.rtt.rto() * 2);
            self.send_heartbeat(out);
        }
        if self.keepalive_deadline.is_some_and(|t| t <= now) {
            self.keepalive_deadline = None; // re-armed by the next service while still idle
            self.send_heartbeat(out);
        }
        if self.linger_deadline.is_some_and(|t| t <= now) {
            tracing::debug!(
                stream = self.local_id,
                "peer did not end a dropped stream in time, destroying it"
            );
            self.destroy(now, out);
        }
        if self.remote_destroy.is_some_and(|(_, until)| until <= now) {
            tracing::debug!(
                stream = self.local_id,
                "packets sent before the peer's DESTROY never came"
            );
            self.close(CloseReason::Reset);
        }
    }

    /// A heartbeat is answered with an ack; a peer that answers none of several is gone.
    fn send_heartbeat(&mut self, out: &mut Transmits) {
        if self.closed.is_some() {
            return;
        }
        if self.unanswered_heartbeats >= MAX_UNANSWERED_HEARTBEATS {
            tracing::debug!(
                stream = self.local_id,
                "peer answers no heartbeats, closing stream"
            );
            self.give_up(out);
            return;
        }
        self.unanswered_heartbeats += 1;
        self.send_control(wire::FLAG_HEARTBEAT, out);
    }

    /// The peer is presumed gone. If only our side of the path failed (our acks or data
    /// lost, theirs arriving), it still hears us: a DESTROY ends its side now, where it would
    /// otherwise wait, idle, for its own heartbeats to go unanswered (half a minute or more),
    /// with its application hung on a stream that can never deliver again.
    fn give_up(&mut self, out: &mut Transmits) {
        self.send_control(wire::FLAG_DESTROY, out);
        self.close(CloseReason::TimedOut);
    }

    fn on_rto(&mut self, now: Instant, out: &mut Transmits) {
        if self.snd_una == self.snd_nxt {
            self.rto_deadline = None;
            return;
        }
        self.rto_timeouts += 1;
        self.stats.rto_timeouts += 1;
        tracing::debug!(
            stream = self.local_id,
            timeouts = self.rto_timeouts,
            in_flight = self.in_flight,
            unacked = self.snd_nxt - self.snd_una,
            rto = ?self.rtt.rto(),
            "retransmission timeout"
        );
        let stalled_since = *self.stalled_since.get_or_insert(now);
        if now.saturating_duration_since(stalled_since) >= GIVE_UP_AFTER {
            tracing::debug!(
                stream = self.local_id,
                "peer stopped answering, closing stream"
            );
            self.give_up(out);
            return;
        }
        // Everything still in flight is presumed lost; resend in sequence order.
        self.retransmit.clear();
        for (idx, pkt) in self.sent.iter_mut().enumerate() {
            match pkt.state {
                SentState::Acked => continue,
                SentState::InFlight => {
                    pkt.state = SentState::Lost;
                    if pkt.padding > 0 {
                        // The path went silent; do not keep probing it.
                        pkt.padding = 0;
                        self.mtu = MtuState::Done;
                    }
                }
                SentState::Lost => {}
            }
            self.retransmit.push_back(self.snd_una + idx as u64);
        }
        self.in_flight = 0;
        self.loss_deadline = None;
        self.tlp_deadline = None;
        self.tlp_in_flight = false;
        self.cc.on_rto();
        let rto = self.rtt.rto();
        let backoff = rto.saturating_mul(1 << self.rto_timeouts.min(16));
        self.rto_deadline = Some(now + backoff.min(MAX_BACKOFF.max(rto)));
    }

    // ---------------------------------------------------------------- lifecycle

    /// Local destroy: tell the peer (if connected) and fail the handle.
    pub fn destroy(&mut self, now: Instant, out: &mut Transmits) {
        if self.closed.is_some() {
            return;
        }
        // libudx's DESTROY takes the next sequence number, so the peer sees it as current.
        self.send_control(wire::FLAG_DESTROY, out);
        self.snd_nxt += 1;
        self.sent.push_back(Sent {
            data: Bytes::new(),
            flags: wire::FLAG_DESTROY,
            time_sent: now,
            retransmitted: false,
            state: SentState::Acked,
            padding: 0,
            stamp: self.rate.on_send(now, self.in_flight),
        });
        self.close(CloseReason::Destroyed);
    }

    /// The application dropped its handle: abort if it never shut down its write side,
    /// otherwise linger in the background until what it wrote is acknowledged.
    pub fn on_handle_dropped(&mut self, now: Instant, out: &mut Transmits) {
        self.handle_dropped = true;
        if self.remote.is_some() && !self.end_requested {
            self.destroy(now, out);
        }
        // Received but unread data is of no use to anyone now.
        self.received.clear();
        self.unread = 0;
    }

    pub(crate) fn close(&mut self, reason: CloseReason) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(reason);
        self.rto_deadline = None;
        self.loss_deadline = None;
        self.pacing_deadline = None;
        self.probe_deadline = None;
        self.tlp_deadline = None;
        self.keepalive_deadline = None;
        self.linger_deadline = None;
        self.ack_deadline = None;
        self.remote_destroy = None;
        self.sent.clear();
        self.sacked = 0;
        self.retransmit.clear();
        self.out_of_order.clear();
        self.out_of_order_bytes = 0;
        self.queued.clear();
        self.pending = Bytes::new();
        self.events.push_back(StreamEvent::Closed(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "127.0.0.1:9";

    /// Stream 1, connected to stream 2 of [`PEER`].
    fn connected(now: Instant) -> Stream {
        let mut conn = Stream::new(1, now);
        conn.connect(2, Some(PEER.parse().unwrap()));
        conn
    }

    /// A connected stream with `packets` full data packets in flight.
    fn sender_with_in_flight(packets: usize) -> (Stream, Instant) {
        let now = Instant::now();
        let mut conn = connected(now);
        conn.write(Bytes::from(vec![7u8; packets * BASE_PAYLOAD]));
        conn.service(now, &mut Transmits::default(), packets);
        assert_eq!(conn.snd_nxt, packets as u64);
        (conn, now)
    }

    fn ack_packet(ack: u32, sacks: &[(u32, u32)]) -> (Header, Vec<u8>) {
        let hdr = Header {
            flags: if sacks.is_empty() { 0 } else { wire::FLAG_SACK },
            data_offset: 0,
            stream_id: 1,
            recv_window: RECV_WINDOW as u32,
            seq: 0,
            ack,
        };
        let body = sacks
            .iter()
            .flat_map(|(s, e)| s.to_le_bytes().into_iter().chain(e.to_le_bytes()))
            .collect();
        (hdr, body)
    }

    fn feed(conn: &mut Stream, now: Instant, ack: u32, sacks: &[(u32, u32)]) {
        let (hdr, body) = ack_packet(ack, sacks);
        conn.on_packet(&hdr, &body, now, &mut Transmits::default());
        conn.service(now, &mut Transmits::default(), 64);
        assert_consistent(conn);
    }

    #[test]
    fn without_reordering_three_sacked_packets_make_an_overdue_hole_a_loss_at_once() {
        let (mut conn, t0) = sender_with_in_flight(10);
        let rtt = Duration::from_millis(100);
        feed(&mut conn, t0 + rtt, 0, &[(1, 4)]);
        assert_eq!(
            conn.stats.packets_lost, 1,
            "no reordering window to wait for"
        );
        assert_eq!(conn.stats.retransmits, 1);
    }

    #[test]
    fn a_retransmission_goes_twice_only_when_nothing_new_follows_it() {
        for more_to_send in [false, true] {
            let (mut conn, t0) = sender_with_in_flight(10);
            if more_to_send {
                conn.write(Bytes::from(vec![7u8; 100 * BASE_PAYLOAD]));
            }
            let now = t0 + Duration::from_millis(100);
            let (hdr, body) = ack_packet(0, &[(1, 4)]);
            conn.on_packet(&hdr, &body, now, &mut Transmits::default());
            let mut out = Transmits::default();
            conn.service(now, &mut out, 64);
            assert_consistent(&conn);
            let mut copies = 0;
            while let Some((_, packet)) = out.pop() {
                let hdr = Header::decode(&packet).unwrap();
                copies += usize::from(hdr.flags & wire::FLAG_DATA != 0 && hdr.seq == 0);
            }
            let expected = if more_to_send { 1 } else { 2 };
            assert_eq!(copies, expected, "more to send: {more_to_send}");
            assert_eq!(conn.stats.retransmits, 1);
        }
    }

    #[test]
    fn once_the_path_reordered_an_overdue_hole_waits_for_the_reordering_window() {
        let (mut conn, t0) = sender_with_in_flight(10);
        let rtt = Duration::from_millis(100);
        feed(&mut conn, t0 + rtt, 0, &[(1, 2)]);
        // Packet 0, sent once, arrives after packet 1: the path reorders.
        feed(&mut conn, t0 + rtt, 2, &[]);
        assert!(conn.reordering_seen);
        feed(&mut conn, t0 + rtt, 2, &[(3, 6)]);
        assert_eq!(
            conn.stats.packets_lost, 0,
            "packet 2 may still be on its way"
        );
        let later = t0 + rtt + rtt / 4;
        conn.on_timeout(later, &mut Transmits::default());
        conn.service(later, &mut Transmits::default(), 64);
        assert_eq!(conn.stats.packets_lost, 1);
    }

    /// The send-side bookkeeping agrees with itself.
    fn assert_consistent(conn: &Stream) {
        assert_eq!(conn.sent.len() as u64, conn.snd_nxt - conn.snd_una);
        let in_flight = conn
            .sent
            .iter()
            .filter(|p| p.state == SentState::InFlight)
            .count();
        assert_eq!(conn.in_flight, in_flight);
    }

    /// A data packet from the peer, with `len` bytes of payload.
    fn peer_data(seq: u32, flags: u8, len: usize) -> (Header, Vec<u8>) {
        let hdr = Header {
            flags,
            data_offset: 0,
            stream_id: 1,
            recv_window: RECV_WINDOW as u32,
            seq,
            ack: 0,
        };
        (hdr, vec![3u8; len])
    }

    /// Feeds the peer's packet and services the stream; returns what it sent: standalone acks
    /// and data packets.
    fn receive(conn: &mut Stream, now: Instant, packet: (Header, Vec<u8>)) -> (usize, usize) {
        let mut out = Transmits::default();
        conn.on_packet(&packet.0, &packet.1, now, &mut out);
        conn.service(now, &mut out, 64);
        sent_kinds(&mut out)
    }

    fn sent_kinds(out: &mut Transmits) -> (usize, usize) {
        let (mut acks, mut data) = (0, 0);
        while let Some((_, packet)) = out.pop() {
            let hdr = Header::decode(&packet).unwrap();
            if hdr.flags & wire::FLAG_DATA != 0 {
                data += 1;
            } else {
                acks += 1;
            }
        }
        (acks, data)
    }

    #[test]
    fn a_lone_small_packet_is_acked_by_the_answer_or_after_the_ack_delay() {
        let now = Instant::now();
        let mut conn = connected(now);

        // A request: no ack yet, a deadline instead.
        assert_eq!(
            receive(&mut conn, now, peer_data(0, wire::FLAG_DATA, 64)),
            (0, 0)
        );
        assert_eq!(conn.next_timeout(), Some(now + ACK_DELAY));
        // The answer carries the ack.
        conn.write(Bytes::from_static(b"answer"));
        let mut out = Transmits::default();
        conn.service(now, &mut out, 64);
        assert_eq!(sent_kinds(&mut out), (0, 1));
        assert!(!conn.ack_needed && conn.ack_deadline.is_none());

        // Another request, unanswered: acked when the delay is up, not before.
        let t = now + Duration::from_millis(5);
        assert_eq!(
            receive(&mut conn, t, peer_data(1, wire::FLAG_DATA, 64)),
            (0, 0)
        );
        let mut out = Transmits::default();
        conn.service(t + ACK_DELAY / 2, &mut out, 64);
        assert_eq!(sent_kinds(&mut out), (0, 0));
        conn.on_timeout(t + ACK_DELAY, &mut out);
        conn.service(t + ACK_DELAY, &mut out, 64);
        assert_eq!(sent_kinds(&mut out), (1, 0));
    }

    #[test]
    fn acks_that_matter_to_the_sender_are_not_delayed() {
        let now = Instant::now();
        let full = BASE_PAYLOAD;
        let cases = [
            ("a full packet", vec![(0, wire::FLAG_DATA, full)]),
            (
                "a second packet",
                vec![(0, wire::FLAG_DATA, 64), (1, wire::FLAG_DATA, 64)],
            ),
            ("a hole", vec![(1, wire::FLAG_DATA, 64)]),
            ("the end", vec![(0, wire::FLAG_DATA | wire::FLAG_END, 64)]),
            (
                "a duplicate",
                vec![(0, wire::FLAG_DATA, full), (0, wire::FLAG_DATA, 64)],
            ),
        ];
        for (what, packets) in cases {
            let mut conn = connected(now);
            let mut last = (0, 0);
            for (seq, flags, len) in packets {
                last = receive(&mut conn, now, peer_data(seq, flags, len));
            }
            assert_eq!(last, (1, 0), "{what} is acked at once");
            assert_eq!(conn.ack_deadline, None, "{what}");
        }
    }

    #[test]
    fn a_reordered_older_ack_changes_nothing() {
        let (mut conn, now) = sender_with_in_flight(10);
        feed(&mut conn, now, 6, &[]);
        assert_eq!(conn.snd_una, 6);
        feed(&mut conn, now, 3, &[]); // overtaken by the ack of 6
        assert_eq!(conn.snd_una, 6);
        feed(&mut conn, now, 6, &[]); // duplicate
        assert_eq!(conn.snd_una, 6);
        feed(&mut conn, now, 10, &[]);
        assert_eq!((conn.snd_una, conn.in_flight), (10, 0));
    }

    #[test]
    fn impossible_acks_and_sacks_are_ignored() {
        let (mut conn, now) = sender_with_in_flight(10);
        feed(&mut conn, now, 11, &[]); // acks a packet never sent
        feed(&mut conn, now, u32::MAX, &[]); // "before" sequence 0
        feed(&mut conn, now, 1 << 31, &[]); // half the sequence space away
        assert_eq!(conn.snd_una, 0);
        // Blocks reversed, empty, beyond what we sent, before the cumulative ack, or wrapping.
        let sacks = [
            (5, 2),
            (4, 4),
            (9, 4000),
            (u32::MAX - 3, 2),
            (1 << 31, 3),
            (20, 30),
        ];
        feed(&mut conn, now, 1, &sacks);
        assert_eq!(conn.snd_una, 1);
        feed(&mut conn, now, 0, &[(0, 10)]); // stale ack with a SACK of everything
        assert!(conn.sent.iter().all(|p| p.state == SentState::Acked));
        feed(&mut conn, now, 10, &[]);
        assert_eq!(conn.in_flight, 0);
    }

    #[test]
    fn change_remote_needs_a_connected_open_stream() {
        let now = Instant::now();
        let new: SocketAddr = "127.0.0.2:10".parse().unwrap();
        let mut conn = Stream::new(1, now);
        assert!(!conn.change_remote(3, new), "not connected yet");
        assert_eq!(conn.remote(), None);
        conn.connect(2, Some(PEER.parse().unwrap()));
        conn.close(CloseReason::Reset);
        assert!(!conn.change_remote(3, new), "closed");
    }

    #[test]
    fn change_remote_resends_in_flight_packets_to_the_new_peer_and_completes_on_their_ack() {
        let (mut conn, now) = sender_with_in_flight(10);
        feed(&mut conn, now, 4, &[(6, 8)]);
        while conn.poll_event().is_some() {}
        conn.payload = MAX_PAYLOAD; // as after a successful MTU search on the old path
        let new: SocketAddr = "[::ffff:10.0.0.7]:4000".parse().unwrap();
        assert!(conn.change_remote(33, new));
        let remote = conn.remote().unwrap();
        assert_eq!(remote.id, 33);
        assert_eq!(remote.addr, "10.0.0.7:4000".parse().unwrap());
        assert_eq!(
            conn.payload, BASE_PAYLOAD,
            "the new path's MTU is searched again"
        );
        assert_eq!(
            conn.poll_event(),
            None,
            "packets sent before the move are unacked"
        );

        let mut out = Transmits::default();
        conn.service(now, &mut out, 64);
        assert_consistent(&conn);
        let mut resent = Vec::new();
        while let Some((to, packet)) = out.pop() {
            assert_eq!(to, remote.addr, "everything goes to the new peer");
            let hdr = Header::decode(&packet).unwrap();
            assert_eq!(hdr.stream_id, 33, "with its stream id");
            if hdr.flags & wire::FLAG_DATA != 0 {
                resent.push(hdr.seq);
            }
        }
        // Only what the old path left unacknowledged (4, 5, 8, 9), not the sacked 6 and 7;
        // each twice, as nothing new is left to send (the tail rule).
        assert_eq!(resent, [4, 4, 5, 5, 8, 8, 9, 9]);
        assert_eq!(conn.stats().retransmits, 4);

        feed(&mut conn, now, 9, &[]);
        assert_eq!(conn.poll_event(), None, "packet 9 is still unacked");
        feed(&mut conn, now, 10, &[]);
        assert_eq!(conn.poll_event(), Some(StreamEvent::RemoteChanged));
        // Probing resumes on the new path once it is settled.
        assert!(matches!(conn.mtu, MtuState::Searching { .. }));
    }

    #[test]
    fn change_remote_of_an_idle_stream_completes_at_once() {
        let (mut conn, now) = sender_with_in_flight(2);
        feed(&mut conn, now, 2, &[]);
        while conn.poll_event().is_some() {}
        assert!(conn.change_remote(2, "127.0.0.3:3".parse().unwrap()));
        assert_eq!(conn.poll_event(), Some(StreamEvent::RemoteChanged));
        let mut out = Transmits::default();
        conn.service(now, &mut out, 64);
        // An ack tells the new path at once where we are.
        let (to, packet) = out.pop().expect("an ack");
        assert_eq!(to, "127.0.0.3:3".parse().unwrap());
        assert_eq!(Header::decode(&packet).unwrap().ack, 0);
    }

    fn data_packet(seq: u32, payload: &[u8]) -> Vec<u8> {
        packet(wire::FLAG_DATA, seq, payload)
    }

    fn destroy_packet(seq: u32) -> Vec<u8> {
        packet(wire::FLAG_DESTROY, seq, &[])
    }

    fn packet(flags: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        Header {
            flags,
            data_offset: 0,
            stream_id: 1,
            recv_window: RECV_WINDOW as u32,
            seq,
            ack: 0,
        }
        .write_to(&mut p);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn a_destroy_that_overtook_the_peers_last_data_waits_for_it() {
        let now = Instant::now();
        let mut conn = connected(now);
        let mut out = Transmits::default();
        conn.handle_packet(&data_packet(0, b"first "), now, &mut out);
        // Packet 1 is still on a slower path when the DESTROY (sent after it) arrives.
        conn.handle_packet(&destroy_packet(2), now, &mut out);
        assert!(
            conn.closed.is_none(),
            "closed before the data sent ahead of the DESTROY"
        );
        conn.handle_packet(&data_packet(1, b"last"), now, &mut out);
        assert_eq!(conn.closed, Some(CloseReason::Reset));
        assert_eq!(conn.take_received().as_deref(), Some(&b"first last"[..]));
    }

    #[test]
    fn a_destroy_waits_for_missing_data_only_a_bounded_time() {
        let now = Instant::now();
        let mut conn = connected(now);
        let mut out = Transmits::default();
        conn.handle_packet(&destroy_packet(5), now, &mut out);
        assert!(conn.closed.is_none());
        let until = conn
            .next_timeout()
            .expect("a deadline for the missing packets");
        assert!(until - now <= MAX_DESTROY_WAIT);
        conn.on_timeout(until, &mut out);
        assert_eq!(conn.closed, Some(CloseReason::Reset));
        // In order, a DESTROY ends the stream at once.
        let mut conn = connected(now);
        conn.handle_packet(&destroy_packet(0), now, &mut out);
        assert_eq!(conn.closed, Some(CloseReason::Reset));
    }

    #[test]
    fn one_sack_costs_at_most_one_walk_over_the_packets_in_flight() {
        let (mut conn, now) = sender_with_in_flight(10);
        // Thousands of blocks, each claiming everything: libudx never sends more than 50.
        let blocks = vec![(0u32, 10u32); 8000];
        feed(&mut conn, now, 0, &blocks);
        assert!(conn.sack_visits <= 10, "{} visits", conn.sack_visits);
        assert!(conn.sent.iter().all(|p| p.state == SentState::Acked));
    }

    #[test]
    fn data_beyond_the_advertised_window_is_dropped() {
        let now = Instant::now();
        let mut conn = connected(now);
        let payload = vec![1u8; MAX_PAYLOAD];
        let mut out = Transmits::default();
        // Out of order (seq 0 never comes): all of it would sit in memory.
        for seq in 1..(2 * RECV_WINDOW / MAX_PAYLOAD) as u32 {
            conn.handle_packet(&data_packet(seq, &payload), now, &mut out);
            assert!(conn.buffered_bytes() <= RECV_WINDOW);
        }
        assert!(conn.stats().packets_dropped > 0);
        // In order, with an application that reads nothing.
        let mut conn = connected(now);
        for seq in 0..(2 * RECV_WINDOW / MAX_PAYLOAD) as u32 {
            conn.handle_packet(&data_packet(seq, &payload), now, &mut out);
            if let Some(chunk) = conn.take_received() {
                conn.set_unread(conn.unread + chunk.len());
            }
            assert!(conn.buffered_bytes() <= MAX_BUFFERED);
        }
        assert!(conn.stats().packets_dropped > 0);
    }

    #[test]
    fn packets_held_before_connect_are_bounded_in_bytes() {
        let now = Instant::now();
        let mut conn = Stream::new(1, now);
        let big = data_packet(0, &vec![0u8; 60_000]);
        for _ in 0..MAX_HELD_PACKETS {
            conn.accept_unconnected(&big, PEER.parse().unwrap());
        }
        let held: usize = conn.held.iter().map(|(p, _)| p.len()).sum();
        assert!(held <= MAX_HELD_BYTES, "{held} bytes held");
    }

    /// Runs the stream's timers for `secs` of virtual time with nobody answering.
    fn run_silent(conn: &mut Stream, start: Instant, secs: u64) -> Instant {
        let mut now = start;
        let mut out = Transmits::default();
        while conn.closed().is_none() && now < start + Duration::from_secs(secs) {
            conn.service(now, &mut out, 64);
            let Some(at) = conn.next_timeout() else { break };
            now = at.max(now);
            conn.on_timeout(now, &mut out);
            while out.pop().is_some() {}
        }
        now
    }

    /// Timeouts back off to at most a second apart (so a path that comes back is used again
    /// within a second), and the stream gives up after a wall time, not a count: a stream
    /// with a fast RTO used to give up after six timeouts in 4 s, in a loss burst it would
    /// have survived.
    #[test]
    fn timeouts_back_off_to_a_ceiling_and_give_up_after_a_wall_time() {
        let (mut conn, start) = sender_with_in_flight(4);
        // A 40 ms path: the RTO is at its 200 ms floor.
        let (hdr, body) = ack_packet(1, &[]);
        let now = start + Duration::from_millis(40);
        conn.on_packet(&hdr, &body, now, &mut Transmits::default());
        conn.service(now, &mut Transmits::default(), 64);
        let mut out = Transmits::default();
        let mut timeouts = Vec::new();
        let mut last_sent = None;
        let mut t = now;
        while conn.closed().is_none() && t < now + Duration::from_secs(600) {
            let Some(at) = conn.next_timeout() else { break };
            t = at.max(t);
            let before = conn.stats.rto_timeouts;
            conn.on_timeout(t, &mut out);
            if conn.stats.rto_timeouts > before || conn.closed().is_some() {
                timeouts.push(t);
            }
            conn.service(t, &mut out, 64);
            while let Some((_, p)) = out.pop() {
                last_sent = Some(p);
            }
        }
        assert_eq!(conn.closed(), Some(CloseReason::TimedOut));
        assert!(
            last_sent.is_some_and(|p| Header::decode(&p).unwrap().flags == wire::FLAG_DESTROY),
            "giving up sends a DESTROY, so a peer that still hears us ends its side too"
        );
        let gaps: Vec<Duration> = timeouts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().all(|g| *g <= MAX_BACKOFF),
            "timeouts further apart than {MAX_BACKOFF:?}: {gaps:?}"
        );
        let stalled = *timeouts.last().unwrap() - timeouts[0];
        assert!(
            stalled >= GIVE_UP_AFTER && stalled <= GIVE_UP_AFTER + MAX_BACKOFF,
            "gave up after {stalled:?} of timeouts"
        );
        assert!(timeouts.len() > 10, "only {} tries", timeouts.len());
    }

    #[test]
    fn zero_window_probes_to_a_dead_peer_end_the_stream() {
        let (mut conn, now) = sender_with_in_flight(4);
        conn.write(Bytes::from(vec![1u8; 10_000]));
        // The peer acks everything and closes its window, then goes silent.
        let (mut hdr, body) = ack_packet(4, &[]);
        hdr.recv_window = 0;
        conn.on_packet(&hdr, &body, now, &mut Transmits::default());
        let end = run_silent(&mut conn, now, 3600);
        assert_eq!(conn.closed(), Some(CloseReason::TimedOut));
        assert!(end - now < Duration::from_secs(120), "took {:?}", end - now);
    }

    #[test]
    fn a_forged_far_ahead_window_of_zero_is_reopened_by_the_peers_next_packet() {
        let (mut conn, now) = sender_with_in_flight(4);
        // From the peer's address: a sequence number far ahead of anything it sent, window 0
        // (fuzz/corpus/udx_stream/regression-forged-far-ahead-zero-window).
        let (mut forged, body) = ack_packet(4, &[]);
        forged.seq = 786_434;
        forged.recv_window = 0;
        conn.on_packet(&forged, &body, now, &mut Transmits::default());
        assert_eq!(conn.send_rwnd, 0);
        // The peer's real ack, its sequence number where it really is, reopens the window.
        feed(&mut conn, now, 4, &[]);
        assert_eq!(conn.send_rwnd, RECV_WINDOW as u32);
    }

    #[test]
    fn a_stale_ack_does_not_reopen_a_closed_window() {
        let (mut conn, now) = sender_with_in_flight(4);
        let (mut closing, body) = ack_packet(4, &[]);
        closing.recv_window = 0;
        conn.on_packet(&closing, &body, now, &mut Transmits::default());
        assert_eq!(conn.send_rwnd, 0);
        // Overtaken on the way: an older ack that still saw an open window.
        feed(&mut conn, now, 2, &[]);
        assert_eq!(conn.send_rwnd, 0);
    }

    #[test]
    fn keepalives_to_a_dead_peer_end_the_stream() {
        let now = Instant::now();
        let mut conn = connected(now);
        conn.set_keepalive(Some(Duration::from_secs(5)));
        let end = run_silent(&mut conn, now, 3600);
        assert_eq!(conn.closed(), Some(CloseReason::TimedOut));
        assert!(end - now < Duration::from_secs(60), "took {:?}", end - now);
    }

    /// Every internal invariant that must survive any input.
    fn assert_invariants(c: &Stream) {
        if c.closed.is_some() {
            // A closed stream dropped its send state; it only has to stay quiet.
            assert!(c.sent.is_empty() && c.out_of_order.is_empty());
            return;
        }
        assert_eq!(c.sent.len() as u64, c.snd_nxt - c.snd_una);
        let in_flight = c
            .sent
            .iter()
            .filter(|p| p.state == SentState::InFlight)
            .count();
        assert_eq!(c.in_flight, in_flight);
        let sacked = c
            .sent
            .iter()
            .filter(|p| p.state == SentState::Acked)
            .count();
        assert_eq!(c.sacked, sacked);
        assert!(c
            .out_of_order
            .keys()
            .all(|&k| k > c.rcv_nxt && k - c.rcv_nxt < MAX_OUT_OF_ORDER));
        let ooo: usize = c.out_of_order.values().map(|(_, d)| d.len()).sum();
        assert_eq!(c.out_of_order_bytes, ooo);
        assert!(c.buffered_bytes() <= MAX_BUFFERED);
        assert!(c.held_bytes <= MAX_HELD_BYTES && c.held.len() <= MAX_HELD_PACKETS);
        assert!(c.retransmit.iter().all(|&s| s < c.snd_nxt));
    }

    /// SplitMix64, so that every run of the property test below is the same.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Mutates a real packet the way a hostile or broken network might.
    fn mutate(rng: &mut Rng, mut p: Vec<u8>) -> Vec<u8> {
        match rng.below(8) {
            0 if !p.is_empty() => {
                let i = rng.below(p.len() as u64) as usize;
                p[i] ^= 1 << rng.below(8);
            }
            1 if p.len() >= 20 => {
                // A field (window, seq or ack) replaced: near its value or anywhere.
                let at = [8, 12, 16][rng.below(3) as usize];
                let old = u32::from_le_bytes(p[at..at + 4].try_into().unwrap());
                let new = if rng.below(2) == 0 {
                    old.wrapping_add(rng.below(64) as u32).wrapping_sub(32)
                } else {
                    rng.next() as u32
                };
                p[at..at + 4].copy_from_slice(&new.to_le_bytes());
            }
            2 if p.len() >= 4 => p[2] = rng.next() as u8, // flags
            3 if p.len() >= 4 => p[3] = rng.next() as u8, // data offset
            4 => p.truncate(rng.below(p.len() as u64 + 1) as usize),
            5 if p.len() >= 4 => {
                // SACK blocks appended, sensible or not.
                p[2] |= wire::FLAG_SACK;
                for _ in 0..rng.below(100) {
                    p.extend_from_slice(&(rng.next() as u32 % 64).to_le_bytes());
                    p.extend_from_slice(&(rng.next() as u32 % 80).to_le_bytes());
                }
            }
            _ => {}
        }
        p
    }

    /// Property test: two streams talk through a channel that drops, duplicates, reorders
    /// and mutates packets, and injects random ones; nothing panics and every invariant
    /// holds after every step, for thousands of seeded runs.
    #[test]
    fn arbitrary_and_mutated_packet_sequences_never_break_a_stream() {
        let peer: SocketAddr = PEER.parse().unwrap();
        for seed in 0..3000u64 {
            let mut rng = Rng(seed);
            let start = Instant::now();
            let mut now = start;
            let mut a = Stream::new(1, now);
            let mut b = Stream::new(2, now);
            a.connect(2, Some(peer));
            b.connect(1, Some(peer));
            a.write(Bytes::from(vec![1u8; rng.below(200_000) as usize]));
            b.write(Bytes::from(vec![2u8; rng.below(20_000) as usize]));
            let mut wire: Vec<(bool, Vec<u8>)> = Vec::new();
            for _ in 0..300 {
                let mut out = Transmits::default();
                match rng.below(10) {
                    0 => now += Duration::from_millis(rng.below(2000)),
                    1 => {
                        let len = rng.below(1600) as usize;
                        let mut p: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                        if p.len() >= 2 && rng.below(2) == 0 {
                            (p[0], p[1]) = (wire::MAGIC, wire::VERSION);
                        }
                        wire.push((rng.below(2) == 0, p));
                    }
                    2 => a.shutdown(),
                    3 => {
                        // The application takes what arrived and reads some of it.
                        let taken = b.take_received().map_or(0, |c| c.len());
                        let unread = b.unread + taken;
                        b.set_unread(unread - rng.below(unread as u64 + 1) as usize);
                    }
                    _ => {}
                }
                for (to_b, conn) in [(false, &mut a), (true, &mut b)] {
                    conn.on_timeout(now, &mut out);
                    conn.service(now, &mut out, 64);
                    while let Some((_, p)) = out.pop() {
                        wire.push((to_b, p));
                    }
                    assert_invariants(conn);
                }
                // Deliver a random selection, in random order, some twice, some mutated.
                let n = rng.below(wire.len() as u64 + 1) as usize;
                for _ in 0..n {
                    let i = rng.below(wire.len() as u64) as usize;
                    let (to_b, p) = if rng.below(4) == 0 {
                        wire[i].clone()
                    } else {
                        wire.swap_remove(i)
                    };
                    let p = if rng.below(3) == 0 {
                        mutate(&mut rng, p)
                    } else {
                        p
                    };
                    let conn = if to_b { &mut b } else { &mut a };
                    conn.handle_packet(&p, now, &mut out);
                    assert_invariants(conn);
                }
                wire.truncate(2000);
            }
        }
    }
}
