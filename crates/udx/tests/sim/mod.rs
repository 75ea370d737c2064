//! A deterministic network simulator that drives the protocol core ([`udx::proto`]) with a
//! virtual clock. Two endpoints, one link each way; a link can lose packets at random or in
//! bursts (Gilbert-Elliott), delay them, add per-packet jitter (which reorders), duplicate
//! them, limit bandwidth behind a finite drop-tail queue, swallow datagrams above an MTU (a
//! black hole), and change all of that at a given moment (a path change).
//!
//! Everything random comes from one seed through [`Rng`], so a run is reproduced exactly by
//! its seed. Virtual time costs nothing: only events (arrivals, timers) are visited.
#![allow(dead_code)] // each test binary uses a different subset

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use udx::proto::{Endpoint, EndpointEvent, Stream, StreamEvent, MAX_BUFFERED, RECV_WINDOW};
use udx::StreamStats;

/// SplitMix64: tiny, fast, and the same on every platform and version forever.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.f64() < p
    }
    /// Uniform in [lo, hi].
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.u64() % (hi - lo + 1)
    }
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi - lo).as_nanos() as u64;
        lo + Duration::from_nanos(if span == 0 { 0 } else { self.u64() % span })
    }
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// One direction of a path.
#[derive(Clone, Debug, Default)]
pub struct LinkConfig {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Each packet is delayed by a further uniform 0..jitter (packets overtake each other).
    pub jitter: Duration,
    /// Random loss probability per packet.
    pub loss: f64,
    /// Bursty loss: (p good->bad, p bad->good, loss while bad), per packet.
    pub burst: Option<(f64, f64, f64)>,
    /// Probability that a packet arrives twice.
    pub duplicate: f64,
    /// Bottleneck rate in bytes per second (`None`: unlimited).
    pub rate: Option<f64>,
    /// Bytes the bottleneck queue holds; packets beyond it are dropped (drop-tail).
    pub queue: usize,
    /// Datagrams larger than this vanish silently (an MTU black hole).
    pub mtu: Option<usize>,
    /// From the first to the second virtual time the link behaves as the third config
    /// instead (a burst of heavy loss, an outage), then returns to this one.
    pub during: Option<(Duration, Duration, Box<LinkConfig>)>,
    /// Random loss strikes whole sends of up to this many packets (what one GSO `sendmsg`
    /// hands the kernel): a firewall in a network namespace judges the unsegmented batch once,
    /// as the lab's `iptables -m statistic` rule does.
    pub loss_per_batch: Option<usize>,
}

struct Link {
    cfg: LinkConfig,
    /// At this virtual time the link switches to the second config.
    change: Option<(Duration, LinkConfig)>,
    /// Departure times and sizes of packets waiting at the bottleneck.
    queued: VecDeque<(Duration, usize)>,
    queued_bytes: usize,
    busy_until: Duration,
    bad: bool,
    /// The random-loss verdict of the current batch: when it was sent, its packets so far.
    batch: (Duration, usize, bool),
    /// Delivery times never go backwards by more than the jitter allows (FIFO + jitter).
    pub dropped: u64,
}

impl Link {
    fn new(cfg: LinkConfig, change: Option<(Duration, LinkConfig)>) -> Link {
        Link {
            cfg,
            change,
            queued: VecDeque::new(),
            queued_bytes: 0,
            busy_until: Duration::ZERO,
            bad: false,
            batch: (Duration::MAX, 0, false),
            dropped: 0,
        }
    }

    /// When the packet arrives (one entry per copy), or nothing if it is lost.
    fn send(&mut self, now: Duration, size: usize, rng: &mut Rng) -> Vec<Duration> {
        if let Some((at, _)) = &self.change {
            if now >= *at {
                self.cfg = self.change.take().unwrap().1;
            }
        }
        let cfg = match &self.cfg.during {
            Some((from, to, c)) if (*from..*to).contains(&now) => (**c).clone(),
            _ => self.cfg.clone(),
        };
        if cfg.mtu.is_some_and(|m| size > m) {
            self.dropped += 1;
            return Vec::new();
        }
        let mut lost = match cfg.loss_per_batch {
            Some(max) if self.batch.0 == now && self.batch.1 < max => {
                self.batch.1 += 1;
                self.batch.2
            }
            Some(_) => {
                let lost = rng.chance(cfg.loss);
                self.batch = (now, 1, lost);
                lost
            }
            None => rng.chance(cfg.loss),
        };
        if let Some((to_bad, to_good, bad_loss)) = cfg.burst {
            self.bad = if self.bad {
                !rng.chance(to_good)
            } else {
                rng.chance(to_bad)
            };
            lost |= self.bad && rng.chance(bad_loss);
        }
        let mut depart = now;
        if let Some(rate) = cfg.rate {
            while self.queued.front().is_some_and(|(t, _)| *t <= now) {
                let (_, s) = self.queued.pop_front().unwrap();
                self.queued_bytes -= s;
            }
            if self.queued_bytes + size > cfg.queue.max(size) {
                self.dropped += 1;
                return Vec::new();
            }
            let start = self.busy_until.max(now);
            self.busy_until = start + Duration::from_secs_f64(size as f64 / rate);
            depart = self.busy_until;
            self.queued.push_back((depart, size));
            self.queued_bytes += size;
        }
        if lost {
            self.dropped += 1;
            return Vec::new();
        }
        let copies = if rng.chance(cfg.duplicate) { 2 } else { 1 };
        (0..copies)
            .map(|_| depart + cfg.delay + rng.duration(Duration::ZERO, cfg.jitter))
            .collect()
    }
}

/// One direction of one flow, as its application sees it.
pub struct Side {
    pub id: u32,
    /// What this side writes.
    pub data: Vec<u8>,
    written: usize,
    outstanding: usize,
    shut: bool,
    /// Bytes received in order and checked.
    pub received: usize,
    /// Received but not yet "read" by a slow reader.
    unread: usize,
    /// Bytes per second the application reads (`None`: at once).
    pub read_rate: Option<f64>,
    /// Virtual time up to which the slow reader has read.
    read_until: Duration,
    want_update: bool,
    pub eof: bool,
    /// Removed by the endpoint: Some(clean finish).
    pub removed: Option<bool>,
    pub closed: Option<udx::proto::CloseReason>,
    pub stats: StreamStats,
    /// `RemoteChanged` events: changes completed.
    pub remote_changes: u32,
    /// Virtual time when everything this side expects had arrived.
    pub completed_at: Option<Duration>,
    /// Received chunks awaiting the check against the peer's data.
    inbox: Vec<Bytes>,
    pub max_buffered: usize,
    pub writer: Writer,
    /// When set, every change of the sender's window and of the bytes received, with the time:
    /// how a transfer ramps up, round trip by round trip.
    pub trace: Option<Vec<TracePoint>>,
    /// Bytes the application has written so far (or made available to write), and when
    /// it writes next.
    writable: usize,
    next_write: Option<Duration>,
}

/// One point of a [`Side::trace`].
#[derive(Clone, Copy, Debug)]
pub struct TracePoint {
    pub at: Duration,
    pub received: usize,
    pub packets_sent: u64,
    pub cwnd: usize,
    pub in_flight: usize,
}

/// How an application writes its data.
#[derive(Clone, Copy, Debug, Default)]
pub enum Writer {
    /// All at once, as fast as the send buffer takes it.
    #[default]
    AllAtOnce,
    /// `.1` bytes every `.0`.
    Every(Duration, usize),
    /// `.0` bytes, then waits until all it wrote came back, pauses `.1`, and so on: a
    /// long-lived dialogue with an echo service (the peer must be [`Writer::Echo`]).
    Dialogue(usize, Duration),
    /// Writes back what it receives (its data is a copy of its peer's).
    Echo,
    /// `.0` bytes at once, the rest `.1` later: before its bulk the stream has an RTT sample
    /// and a small, app-limited delivery rate, as a tunnel's stream has from its
    /// secret-stream headers and the mux's opening frames.
    Handshake(usize, Duration),
}

impl Side {
    pub fn new(id: u32, data: Vec<u8>) -> Side {
        Side {
            id,
            data,
            written: 0,
            outstanding: 0,
            shut: false,
            received: 0,
            unread: 0,
            read_rate: None,
            read_until: Duration::ZERO,
            want_update: false,
            eof: false,
            removed: None,
            closed: None,
            stats: StreamStats::default(),
            remote_changes: 0,
            completed_at: None,
            inbox: Vec::new(),
            max_buffered: 0,
            writer: Writer::AllAtOnce,
            trace: None,
            writable: usize::MAX,
            next_write: None,
        }
    }

    /// Writes as `writer` says, from `now` on.
    fn set_writer(&mut self, writer: Writer, now: Duration) {
        self.writer = writer;
        if !matches!(writer, Writer::AllAtOnce) {
            self.writable = 0;
            self.next_write = Some(now);
        }
    }

    /// Writes what is due at `now`.
    fn write_due(&mut self, now: Duration) -> bool {
        if self.next_write.is_none_or(|t| t > now) {
            return false;
        }
        self.next_write = None;
        match self.writer {
            Writer::AllAtOnce => {}
            Writer::Every(interval, chunk) => {
                self.writable += chunk;
                self.next_write = (self.writable < self.data.len()).then_some(now + interval);
            }
            Writer::Dialogue(chunk, _) => self.writable += chunk,
            Writer::Echo => self.writable = self.received,
            Writer::Handshake(first, pause) if self.writable == 0 => {
                self.writable = first;
                self.next_write = Some(now + pause);
            }
            Writer::Handshake(..) => self.writable = self.data.len(),
        }
        true
    }

    /// After bytes arrived: when the dialogue or the echo writes next.
    fn schedule_reply(&mut self, now: Duration) {
        match self.writer {
            Writer::Dialogue(_, pause)
                if self.next_write.is_none()
                    && self.received >= self.writable
                    && self.writable < self.data.len() =>
            {
                self.next_write = Some(now + pause);
            }
            Writer::Echo if self.received > self.writable => self.next_write = Some(now),
            _ => {}
        }
    }

    /// Adds a trace point if tracing and something changed.
    fn record(&mut self, at: Duration) {
        let Some(trace) = &mut self.trace else { return };
        let point = TracePoint {
            at,
            received: self.received + self.inbox.iter().map(Bytes::len).sum::<usize>(),
            packets_sent: self.stats.packets_sent,
            cwnd: self.stats.cwnd,
            in_flight: self.stats.in_flight,
        };
        let same = |p: &TracePoint| {
            (p.received, p.packets_sent, p.cwnd, p.in_flight)
                == (
                    point.received,
                    point.packets_sent,
                    point.cwnd,
                    point.in_flight,
                )
        };
        if !trace.last().is_some_and(same) {
            trace.push(point);
        }
    }

    /// The application's half of a service pass: write what the send buffer allows, take
    /// what arrived.
    fn sync(&mut self, stream: &mut Stream) {
        self.outstanding -= stream.take_acked_bytes();
        let limit = stream.send_limit();
        let end = self.data.len().min(self.writable);
        while self.written < end && self.outstanding < limit {
            let n = (limit - self.outstanding)
                .min(end - self.written)
                .min(64 * 1024);
            stream.write(Bytes::copy_from_slice(
                &self.data[self.written..self.written + n],
            ));
            self.written += n;
            self.outstanding += n;
        }
        if self.written == self.data.len() && !self.shut {
            self.shut = true;
            stream.shutdown();
        }
        while let Some(chunk) = stream.take_received() {
            if self.read_rate.is_some() {
                self.unread += chunk.len();
            }
            self.inbox.push(chunk.freeze());
        }
        stream.set_unread(self.unread);
        self.want_update |= stream.take_window_update_wanted();
        self.eof |= stream.is_eof();
        self.max_buffered = self.max_buffered.max(stream.buffered_bytes());
        self.stats = stream.stats();
    }
}

/// A stream pair: side `a` on node 0, side `b` on node 1.
#[derive(Debug)]
pub struct FlowSpec {
    pub a_id: u32,
    pub b_id: u32,
    pub a_sends: usize,
    pub b_sends: usize,
    /// b connects with `connect_on_first_packet` instead of an address.
    pub b_waits_for_first_packet: bool,
    /// b registers and connects only at this time (a's early packets are held).
    pub b_connects_at: Duration,
    pub b_read_rate: Option<f64>,
    /// a starts at this time.
    pub a_starts_at: Duration,
    /// The flow starts on the nodes' second addresses (as through a relay) and moves to their
    /// first ones with `change_remote`: a at the first time, b at the second. Until both
    /// moved, packets on the path the receiver left are ignored by it.
    pub remote_change: Option<(Duration, Duration)>,
    /// How each side writes.
    pub a_writes: Writer,
    pub b_writes: Writer,
    /// Both sides keep a [`Side::trace`].
    pub trace: bool,
}

impl FlowSpec {
    pub fn new(a_id: u32, b_id: u32, a_sends: usize, b_sends: usize) -> FlowSpec {
        FlowSpec {
            a_id,
            b_id,
            a_sends,
            b_sends,
            b_waits_for_first_packet: false,
            b_connects_at: Duration::ZERO,
            b_read_rate: None,
            a_starts_at: Duration::ZERO,
            remote_change: None,
            a_writes: Writer::AllAtOnce,
            b_writes: Writer::AllAtOnce,
            trace: false,
        }
    }
}

/// Every stream's progress, for a failure message.
fn streams_state(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .flat_map(|n| n.sides.values())
        .map(|s| {
            format!(
                "stream {}: received {} eof {} removed {:?} closed {:?} {:?}",
                s.id, s.received, s.eof, s.removed, s.closed, s.stats
            )
        })
        .collect()
}

struct Node {
    ep: Endpoint,
    sides: HashMap<u32, Side>,
}

/// A scenario: links both ways plus flows.
#[derive(Debug)]
pub struct Scenario {
    pub seed: u64,
    pub ab: LinkConfig,
    pub ba: LinkConfig,
    /// (when, new a->b, new b->a)
    pub path_change: Option<(Duration, LinkConfig, LinkConfig)>,
    pub flows: Vec<FlowSpec>,
    /// Everything must be over by then (virtual).
    pub deadline: Duration,
}

/// What a run produced.
pub struct Outcome {
    pub flows: Vec<(Side, Side)>,
    pub finished_at: Duration,
    pub dropped: u64,
    /// Bytes each flow's b side had received when the first flow completed there.
    pub received_at_first_finish: Vec<usize>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Arrival {
    at: Duration,
    order: u64,
    to: usize,
    from: SocketAddr,
    data: Vec<u8>,
}

enum Pending {
    StartA(usize),
    ConnectB(usize),
    /// Flow `.0`'s side on node `.1` moves to the other node's first address.
    ChangeRemote(usize, usize),
}

/// Fails with the seed and how to rerun it.
#[track_caller]
pub fn fail(seed: u64, what: String) -> ! {
    panic!(
        "simulation seed {seed:#x} failed: {what}\n  rerun: UDX_SIM_SEED={seed:#x} cargo test --release -p p2p-udx --test {} -- --nocapture",
        env!("CARGO_CRATE_NAME")
    )
}

impl Scenario {
    /// Runs to completion and checks every invariant; panics (with the seed) otherwise.
    pub fn run(self) -> Outcome {
        let seed = self.seed;
        let mut rng = Rng::new(seed);
        let base = Instant::now();
        let addrs: [SocketAddr; 2] = [
            "127.0.0.1:1000".parse().unwrap(),
            "127.0.0.2:2000".parse().unwrap(),
        ];
        // The addresses a flow with a remote change starts on: each node's second path.
        let relay_addrs: [SocketAddr; 2] = [
            "127.0.1.1:1001".parse().unwrap(),
            "127.0.1.2:2001".parse().unwrap(),
        ];
        let start_addrs = |f: &FlowSpec| match f.remote_change {
            Some(_) => relay_addrs,
            None => addrs,
        };
        let (change_ab, change_ba) = match self.path_change.clone() {
            Some((at, ab, ba)) => (Some((at, ab)), Some((at, ba))),
            None => (None, None),
        };
        let mut links = [
            Link::new(self.ab.clone(), change_ab),
            Link::new(self.ba.clone(), change_ba),
        ];
        let mut nodes: Vec<Node> = addrs
            .iter()
            .map(|_| Node {
                ep: Endpoint::new(),
                sides: HashMap::new(),
            })
            .collect();
        let mut todo: Vec<(Duration, Pending)> = Vec::new();
        for (i, f) in self.flows.iter().enumerate() {
            todo.push((f.a_starts_at, Pending::StartA(i)));
            todo.push((f.b_connects_at, Pending::ConnectB(i)));
            if let Some((a_at, b_at)) = f.remote_change {
                todo.push((a_at, Pending::ChangeRemote(i, 0)));
                todo.push((b_at, Pending::ChangeRemote(i, 1)));
            }
        }
        todo.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
        // b's streams exist from the start (packets for them are held until they connect).
        for f in &self.flows {
            assert!(nodes[1].ep.add_stream(f.b_id, base));
        }
        let mut net: BinaryHeap<Reverse<Arrival>> = BinaryHeap::new();
        let mut order = 0u64;
        let mut now = Duration::ZERO;
        let mut steps = 0u64;
        let mut reader_tick: Option<Duration> = None;
        let mut received_at_first_finish = Vec::new();
        let mut flow_data: Vec<(Vec<u8>, Vec<u8>)> = self
            .flows
            .iter()
            .map(|f| {
                let a = rng.bytes(f.a_sends);
                let b = match f.b_writes {
                    Writer::Echo => a.clone(),
                    _ => rng.bytes(f.b_sends),
                };
                (a, b)
            })
            .collect();

        loop {
            steps += 1;
            if steps > 20_000_000 {
                fail(seed, format!("no end after {steps} steps at {now:?}"));
            }
            // Start flows that are due.
            while todo.last().is_some_and(|(t, _)| *t <= now) {
                let (_, p) = todo.pop().unwrap();
                match p {
                    Pending::StartA(i) => {
                        let f = &self.flows[i];
                        let n = &mut nodes[0];
                        assert!(n.ep.add_stream(f.a_id, base + now));
                        n.ep.connect(f.a_id, f.b_id, Some(start_addrs(f)[1]), base + now);
                        let data = std::mem::take(&mut flow_data[i].0);
                        let mut side = Side::new(f.a_id, data);
                        side.set_writer(f.a_writes, now);
                        side.trace = f.trace.then(Vec::new);
                        n.sides.insert(f.a_id, side);
                    }
                    Pending::ConnectB(i) => {
                        let f = &self.flows[i];
                        let n = &mut nodes[1];
                        let addr = (!f.b_waits_for_first_packet).then_some(start_addrs(f)[0]);
                        n.ep.connect(f.b_id, f.a_id, addr, base + now);
                        let data = std::mem::take(&mut flow_data[i].1);
                        let mut side = Side::new(f.b_id, data);
                        side.read_rate = f.b_read_rate;
                        side.set_writer(f.b_writes, now);
                        side.trace = f.trace.then(Vec::new);
                        n.sides.insert(f.b_id, side);
                    }
                    Pending::ChangeRemote(i, node) => {
                        let f = &self.flows[i];
                        let (id, peer_id) = if node == 0 {
                            (f.a_id, f.b_id)
                        } else {
                            (f.b_id, f.a_id)
                        };
                        // A stream already over has nothing to move.
                        nodes[node].ep.change_remote(id, peer_id, addrs[1 - node]);
                    }
                }
            }
            // Deliver what has arrived.
            while net.peek().is_some_and(|Reverse(a)| a.at <= now) {
                let Reverse(a) = net.pop().unwrap();
                // Packets for no stream (after it finished) are what a socket hands the DHT.
                nodes[a.to].ep.handle(base + now, a.from, &a.data);
            }
            // Slow readers read.
            if reader_tick.is_some_and(|t| t <= now) {
                reader_tick = None;
            }
            for node in nodes.iter_mut() {
                for side in node.sides.values_mut() {
                    let Some(rate) = side.read_rate else { continue };
                    if side.unread == 0 {
                        side.read_until = now;
                        continue;
                    }
                    let n = (rate * (now - side.read_until).as_secs_f64()) as usize;
                    if n == 0 {
                        reader_tick = Some(now + Duration::from_millis(1));
                        continue;
                    }
                    side.read_until = now;
                    let n = n.min(side.unread);
                    side.unread -= n;
                    if let Some(stream) = node.ep.stream_mut(side.id) {
                        stream.set_unread(side.unread);
                        if side.want_update && side.unread < RECV_WINDOW / 2 {
                            side.want_update = false;
                            stream.window_update();
                        }
                    }
                    if side.unread > 0 {
                        reader_tick = Some(now + Duration::from_millis(1));
                    }
                }
            }
            // Applications write what is due.
            for node in nodes.iter_mut() {
                for side in node.sides.values_mut() {
                    if side.write_due(now) {
                        node.ep.wake(side.id);
                    }
                }
            }
            // Timers and service, until nothing more is ready at this instant.
            for (i, node) in nodes.iter_mut().enumerate() {
                node.ep.handle_timeout(base + now);
                let mut rounds = 0;
                loop {
                    rounds += 1;
                    if rounds > 100_000 {
                        fail(seed, format!("node {i} busy forever at {now:?}"));
                    }
                    let sides = &mut node.sides;
                    let more = node.ep.service(base + now, |id, stream| {
                        if let Some(side) = sides.get_mut(&id) {
                            side.sync(stream);
                            side.record(now);
                        }
                    });
                    while let Some((to, data)) = node.ep.transmits().pop() {
                        // A packet leaves by the path of its destination address, and so
                        // comes from this node's address on that path.
                        let (dst, from) = match addrs.iter().position(|a| *a == to) {
                            Some(dst) => (dst, addrs[i]),
                            None => match relay_addrs.iter().position(|a| *a == to) {
                                Some(dst) => (dst, relay_addrs[i]),
                                None => fail(seed, format!("packet to unknown address {to}")),
                            },
                        };
                        for at in links[i].send(now, data.len(), &mut rng) {
                            order += 1;
                            net.push(Reverse(Arrival {
                                at,
                                order,
                                to: dst,
                                from,
                                data: data.clone(),
                            }));
                        }
                    }
                    while let Some(ev) = node.ep.poll_event() {
                        match ev {
                            EndpointEvent::Stream(id, StreamEvent::Closed(r)) => {
                                if let Some(s) = node.sides.get_mut(&id) {
                                    s.closed = Some(r);
                                }
                            }
                            EndpointEvent::Stream(
                                _,
                                StreamEvent::Connected(_) | StreamEvent::Held(_),
                            ) => {}
                            EndpointEvent::Stream(id, StreamEvent::RemoteChanged) => {
                                if let Some(s) = node.sides.get_mut(&id) {
                                    s.remote_changes += 1;
                                }
                            }
                            EndpointEvent::Removed { id, done, stats } => {
                                if let Some(s) = node.sides.get_mut(&id) {
                                    if !done {
                                        fail(seed, format!("stream {id} ended at {now:?} without a clean finish: {:?}, received {} bytes, {stats:?}", s.closed, s.received));
                                    }
                                    s.removed = Some(done);
                                    s.stats = stats;
                                    s.eof |= done;
                                }
                            }
                        }
                    }
                    if !more {
                        break;
                    }
                }
            }
            // Check what arrived: exactly once, in order, nothing more, within the window.
            let (left, right) = nodes.split_at_mut(1);
            for f in &self.flows {
                check_arrivals(seed, now, &mut left[0], f.a_id, &right[0], f.b_id);
                check_arrivals(seed, now, &mut right[0], f.b_id, &left[0], f.a_id);
            }
            for side in nodes.iter_mut().flat_map(|n| n.sides.values_mut()) {
                side.schedule_reply(now);
            }
            if received_at_first_finish.is_empty()
                && self.flows.iter().any(|f| {
                    nodes[1]
                        .sides
                        .get(&f.b_id)
                        .is_some_and(|s| s.completed_at.is_some())
                })
            {
                received_at_first_finish = self
                    .flows
                    .iter()
                    .map(|f| nodes[1].sides.get(&f.b_id).map_or(0, |s| s.received))
                    .collect();
            }
            // Done?
            let all_removed = self.flows.iter().all(|f| {
                nodes[0]
                    .sides
                    .get(&f.a_id)
                    .is_some_and(|s| s.removed.is_some())
                    && nodes[1]
                        .sides
                        .get(&f.b_id)
                        .is_some_and(|s| s.removed.is_some())
            });
            if all_removed && todo.is_empty() {
                for f in &self.flows {
                    for (n, id) in [(0, f.a_id), (1, f.b_id)] {
                        let s = &nodes[n].sides[&id];
                        if s.removed != Some(true) {
                            fail(seed, format!("stream {id} ended without a clean finish: {:?}, received {} bytes", s.closed, s.received));
                        }
                    }
                }
                break;
            }
            // Next instant.
            let mut next: Option<Duration> = None;
            let mut consider = |t: Duration| next = Some(next.map_or(t, |n: Duration| n.min(t)));
            if let Some(Reverse(a)) = net.peek() {
                consider(a.at);
            }
            for node in &nodes {
                if let Some(t) = node.ep.poll_timeout() {
                    consider(t.saturating_duration_since(base));
                }
            }
            if let Some((t, _)) = todo.last() {
                consider(*t);
            }
            if let Some(t) = reader_tick {
                consider(t);
            }
            for t in nodes
                .iter()
                .flat_map(|n| n.sides.values())
                .filter_map(|s| s.next_write)
            {
                consider(t);
            }
            let Some(next) = next else {
                let state = streams_state(&nodes);
                fail(
                    seed,
                    format!("stuck at {now:?} with nothing scheduled: {state:?}"),
                );
            };
            now = now.max(next);
            if now > self.deadline {
                let state = streams_state(&nodes);
                fail(
                    seed,
                    format!("not finished within {:?}: {state:?}", self.deadline),
                );
            }
        }
        let dropped = links.iter().map(|l| l.dropped).sum();
        let mut flows = Vec::new();
        let mut a_sides = std::mem::take(&mut nodes[0].sides);
        let mut b_sides = std::mem::take(&mut nodes[1].sides);
        for f in &self.flows {
            flows.push((
                a_sides.remove(&f.a_id).unwrap(),
                b_sides.remove(&f.b_id).unwrap(),
            ));
        }
        Outcome {
            flows,
            finished_at: now,
            dropped,
            received_at_first_finish,
        }
    }
}

/// Checks the bytes stream `id` on `node` received since the last check against what its
/// peer wrote.
fn check_arrivals(seed: u64, now: Duration, node: &mut Node, id: u32, peer: &Node, peer_id: u32) {
    let Some(side) = node.sides.get_mut(&id) else {
        return;
    };
    if side.max_buffered > MAX_BUFFERED {
        fail(
            seed,
            format!(
                "stream {id} buffered {} bytes, more than the window it advertises (+ one packet)",
                side.max_buffered
            ),
        );
    }
    let expect = peer.sides.get(&peer_id).map_or(&[][..], |p| &p.data[..]);
    for c in std::mem::take(&mut side.inbox) {
        let at = side.received;
        if at + c.len() > expect.len() {
            fail(
                seed,
                format!(
                    "stream {id} received {} bytes, more than the {} sent",
                    at + c.len(),
                    expect.len()
                ),
            );
        }
        if expect[at..at + c.len()] != c[..] {
            fail(
                seed,
                format!("stream {id} received wrong bytes at offset {at}"),
            );
        }
        side.received += c.len();
    }
    if side.eof && side.completed_at.is_none() {
        if side.received != expect.len() {
            fail(
                seed,
                format!(
                    "stream {id} saw EOF after {} of {} bytes",
                    side.received,
                    expect.len()
                ),
            );
        }
        side.completed_at = Some(now);
    }
}
