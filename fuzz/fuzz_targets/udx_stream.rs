//! The UDX stream state machine (crates/udx/src/proto) driven by an arbitrary sequence of
//! network events, timer steps and application reads and writes: two endpoints with one
//! stream each, a network the input reorders, drops and duplicates at will, and packets
//! the input forges (mutated real packets from the peer's address, arbitrary bytes aimed at
//! the stream, packets from a stranger's address).
//!
//! Checked, as the simulator (crates/udx/tests/simulator.rs) checks them: nothing panics;
//! no stream buffers more than the window it advertises; unless forged packets reached a
//! stream from its peer's address, it receives exactly the peer's bytes, in order, once;
//! a stranger's packets never change a connected stream; and once the network turns clean,
//! both ends finish or close within a bounded virtual time.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use udx::proto::{Endpoint, EndpointEvent, StreamEvent, MAX_BUFFERED};

/// Reads the fuzz input as a sequence of small numbers; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
}

/// The byte at `offset` of what a side writes: position-dependent, so a byte delivered
/// twice, out of order or from the wrong offset shows.
fn pattern(side: usize, offset: usize) -> u8 {
    (offset.wrapping_mul(31) ^ (offset >> 8) ^ side) as u8
}

const IDS: [u32; 2] = [7, 9];
/// hyperdht's secret-stream keepalive.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// Packets in flight per direction at most, so one input cannot grow the harness itself.
const MAX_IN_FLIGHT: usize = 4096;
/// Bytes each side may write in all.
const MAX_WRITE: usize = 1 << 20;

struct Side {
    ep: Endpoint,
    addr: SocketAddr,
    written: usize,
    /// Bytes written but not yet acknowledged (what the application still holds).
    outstanding: usize,
    shut: bool,
    received: usize,
    eof: bool,
    closed: bool,
    /// Packets the input forged reached this side from its peer's address: its data
    /// may then legitimately differ from what the peer wrote.
    forged: bool,
    /// The application dropped or destroyed its handle: what arrives later is discarded.
    dropped: bool,
    /// Real packets we sent, kept as raw material for forgeries.
    last_sent: Vec<u8>,
}

struct World {
    sides: [Side; 2],
    /// In flight towards side 0 and side 1.
    net: [Vec<Vec<u8>>; 2],
    base: Instant,
    now: Duration,
}

impl World {
    fn new() -> World {
        let base = Instant::now();
        let addrs: [SocketAddr; 2] = [
            "127.0.0.1:1000".parse().unwrap(),
            "127.0.0.2:2000".parse().unwrap(),
        ];
        let sides = [0, 1].map(|i| {
            let mut ep = Endpoint::new();
            assert!(ep.add_stream(IDS[i], base));
            ep.connect(IDS[i], IDS[1 - i], Some(addrs[1 - i]), base);
            // As every real user of a stream has (the engine's secret stream sends keepalives):
            // without one, a stream that only reads waits forever for a peer that timed out
            // and vanished, as a TCP socket without keepalive would.
            if let Some(s) = ep.stream_mut(IDS[i]) {
                s.set_keepalive(Some(KEEPALIVE));
            }
            Side {
                ep,
                addr: addrs[i],
                written: 0,
                outstanding: 0,
                shut: false,
                received: 0,
                eof: false,
                closed: false,
                forged: false,
                dropped: false,
                last_sent: Vec::new(),
            }
        });
        World {
            sides,
            net: [Vec::new(), Vec::new()],
            base,
            now: Duration::ZERO,
        }
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// Timers, service and the application's half at this instant; what is sent goes into
    /// the network.
    fn step(&mut self, writes: [usize; 2]) {
        let now = self.instant();
        for i in 0..2 {
            let peer_addr = self.sides[1 - i].addr;
            self.sides[i].ep.handle_timeout(now);
            let mut want = writes[i];
            for _round in 0..64 {
                let side = &mut self.sides[i];
                let (written, outstanding, shut) =
                    (&mut side.written, &mut side.outstanding, side.shut);
                let (received, eof) = (&mut side.received, &mut side.eof);
                let forged = side.forged;
                let more = side.ep.service(now, |_, stream| {
                    *outstanding -= stream.take_acked_bytes();
                    let room = stream.send_limit().saturating_sub(*outstanding);
                    let n = want.min(room).min(MAX_WRITE - *written).min(64 * 1024);
                    if n > 0 && !shut {
                        let chunk: Vec<u8> =
                            (*written..*written + n).map(|o| pattern(i, o)).collect();
                        stream.write(Bytes::from(chunk));
                        *written += n;
                        *outstanding += n;
                        want -= n;
                    }
                    while let Some(chunk) = stream.take_received() {
                        for (k, &b) in chunk.iter().enumerate() {
                            assert!(
                                forged || b == pattern(1 - i, *received + k),
                                "side {i} received a wrong byte at offset {}",
                                *received + k
                            );
                        }
                        *received += chunk.len();
                    }
                    stream.set_unread(0);
                    if stream.take_window_update_wanted() {
                        stream.window_update();
                    }
                    *eof |= stream.is_eof();
                    assert!(
                        stream.buffered_bytes() <= MAX_BUFFERED,
                        "side {i} buffers {} bytes, more than it advertises",
                        stream.buffered_bytes()
                    );
                });
                while let Some((to, data)) = side.ep.transmits().pop() {
                    assert_eq!(to, peer_addr, "side {i} sent to a stranger");
                    side.last_sent.clone_from(&data);
                    if self.net[1 - i].len() < MAX_IN_FLIGHT {
                        self.net[1 - i].push(data);
                    }
                }
                while let Some(ev) = side.ep.poll_event() {
                    match ev {
                        EndpointEvent::Stream(_, StreamEvent::Closed(_)) => side.closed = true,
                        // `done` says our side finished, not that the peer's END was read.
                        EndpointEvent::Removed { .. } => side.closed = true,
                        EndpointEvent::Stream(..) => {}
                    }
                }
                if !more {
                    break;
                }
            }
        }
    }

    fn deliver(&mut self, to: usize, data: &[u8], from: SocketAddr) {
        let now = self.instant();
        self.sides[to].ep.handle(now, from, data);
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut w = World::new();
    let stranger: SocketAddr = "127.0.0.3:3000".parse().unwrap();
    for _ in 0..2000 {
        if input.0.is_empty() {
            break;
        }
        let op = input.byte();
        let to = usize::from(op & 1);
        let mut writes = [0, 0];
        match op >> 1 {
            // Time passes (up to about a minute), then timers fire.
            0 => w.now += Duration::from_millis(u64::from(input.u16())),
            // The next packet towards `to`, or any one of them (reordering).
            1 | 2 => {
                let q = &mut w.net[to];
                if !q.is_empty() {
                    let k = if op >> 1 == 1 {
                        0
                    } else {
                        usize::from(input.u16()) % q.len()
                    };
                    let p = q.remove(k);
                    let from = w.sides[1 - to].addr;
                    w.deliver(to, &p, from);
                }
            }
            // Loss.
            3 => {
                let q = &mut w.net[to];
                if !q.is_empty() {
                    let k = usize::from(input.u16()) % q.len();
                    q.remove(k);
                }
            }
            // Duplication.
            4 => {
                let q = &mut w.net[to];
                if !q.is_empty() && q.len() < MAX_IN_FLIGHT {
                    let k = usize::from(input.u16()) % q.len();
                    let p = q[k].clone();
                    q.push(p);
                }
            }
            // The application writes; or shuts down its direction.
            5 => writes[to] = usize::from(input.u16()) * 16,
            6 => {
                if !w.sides[to].shut {
                    w.sides[to].shut = true;
                    let id = IDS[to];
                    if let Some(s) = w.sides[to].ep.stream_mut(id) {
                        s.shutdown();
                    }
                    w.sides[to].ep.wake(id);
                }
            }
            // A forgery: a real packet of the peer's with a few bytes changed, from the peer.
            7 => {
                let mut p = w.sides[1 - to].last_sent.clone();
                for _ in 0..input.byte() % 8 {
                    let at = usize::from(input.u16());
                    let v = input.byte();
                    if !p.is_empty() {
                        let n = p.len();
                        p[at % n] = v;
                    }
                }
                w.sides[to].forged = true;
                let from = w.sides[1 - to].addr;
                w.deliver(to, &p, from);
            }
            // Arbitrary bytes after a header naming the stream, from the peer or a stranger.
            8 | 9 => {
                let mut p = vec![0xFF, 1, input.byte(), input.byte()];
                p.extend_from_slice(&IDS[to].to_le_bytes());
                let n = usize::from(input.byte());
                p.extend(input.bytes(n));
                let from = if op >> 1 == 8 {
                    w.sides[to].forged = true;
                    w.sides[1 - to].addr
                } else {
                    stranger
                };
                w.deliver(to, &p, from);
            }
            // The application drops its handle or destroys the stream.
            10 => {
                let now = w.instant();
                w.sides[to].dropped = true;
                w.sides[to].ep.handle_dropped(IDS[to], now);
            }
            11 => {
                let now = w.instant();
                w.sides[to].dropped = true;
                w.sides[to].ep.destroy(IDS[to], now);
            }
            _ => {}
        }
        w.step(writes);
    }

    // The network turns clean: everything in flight arrives in order, nothing is lost, and
    // both sides finish what they started (or have closed) within bounded virtual time.
    for side in 0..2 {
        if !w.sides[side].shut {
            w.sides[side].shut = true;
            if let Some(s) = w.sides[side].ep.stream_mut(IDS[side]) {
                s.shutdown();
            }
            w.sides[side].ep.wake(IDS[side]);
        }
    }
    for _ in 0..20_000 {
        w.step([0, 0]);
        for to in 0..2 {
            let from = w.sides[1 - to].addr;
            for p in std::mem::take(&mut w.net[to]) {
                w.deliver(to, &p, from);
            }
        }
        w.step([0, 0]);
        let settled = w
            .sides
            .iter()
            .all(|s| s.closed || (s.eof && s.outstanding == 0));
        if settled && w.net.iter().all(Vec::is_empty) {
            break;
        }
        let next = w.sides.iter().filter_map(|s| s.ep.poll_timeout()).min();
        w.now = match next {
            Some(t) if t > w.instant() => t - w.base,
            _ => w.now + Duration::from_millis(1),
        };
        assert!(
            w.now < Duration::from_secs(24 * 3600),
            "no end after a virtual day"
        );
    }
    for (i, s) in w.sides.iter().enumerate() {
        let peer = &w.sides[1 - i];
        assert!(
            s.closed || (s.eof && s.outstanding == 0),
            "side {i} neither finished nor closed on a clean network (eof {}, {} of {} bytes \
             received, {} unacknowledged, virtual {:?})",
            s.eof,
            s.received,
            peer.written,
            s.outstanding,
            w.now
        );
        if s.eof && !s.dropped && !s.forged && !peer.forged {
            assert_eq!(
                s.received, peer.written,
                "side {i} saw EOF before all bytes arrived"
            );
        }
    }
});
