//! The multiplexing protocol without I/O: frames and what a connection's streams may do
//! (docs/multiplexing.md). The driver ([`super::driver`]) feeds it the peer's frames and asks it
//! before sending; every decision about a hostile peer is made here, and table-tested.
//!
//! A frame is one secret-stream message: `type (1 byte) | stream id (u32 LE) | body`.

use std::collections::HashMap;

use thiserror::Error;

/// Bytes before a frame's body.
pub(crate) const HEADER: usize = 5;
/// Most bytes of data one frame carries: with the header, one whole 64 KiB secret-stream
/// message, the most our secret stream puts in one (a longer frame would be cut in two
/// messages, and the second read as a frame of its own).
pub(crate) const MAX_DATA: usize = 64 * 1024 - HEADER;
/// Longest reason a CLOSE frame carries.
pub(crate) const MAX_REASON: usize = 256;

const OPEN: u8 = 1;
const DATA: u8 = 2;
const FIN: u8 = 3;
const RESET: u8 = 4;
const WINDOW: u8 = 5;
const CLOSE: u8 = 6;
/// Only on a connection where both sides named the PING feature in the handshake
/// ([`crate::noise_session::Features::ping`]); elsewhere, an unknown type.
const PING: u8 = 7;
const PONG: u8 = 8;

/// One frame as read from the peer; data borrows the message it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A new stream (only the connecting side opens streams).
    Open(u32),
    /// Bytes of a stream, 1 to [`MAX_DATA`] of them.
    Data(u32, &'a [u8]),
    /// The sender will send no more on this stream (TCP's FIN); the other direction goes on.
    Fin(u32),
    /// The stream is abandoned both ways (TCP's RST).
    Reset(u32),
    /// The receiver of a stream has taken this many more bytes: the sender may send them.
    Window(u32, u32),
    /// The connection ends, with why.
    Close(&'a str),
    /// Are you there? Answered with a [`Frame::Pong`] of the same number (the id field).
    Ping(u32),
    /// The answer to the [`Frame::Ping`] of this number.
    Pong(u32),
}

/// Why a peer's frame ends the connection: the peer is broken or hostile.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum Violation {
    #[error("a frame of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("a frame of type {kind} has a body of {len} bytes, which that type does not have")]
    BadLength { kind: u8, len: usize },
    #[error("the sharer opened a stream; only the connecting side does")]
    OpenedByServer,
    #[error("stream {0} opened again, or out of order (ids only grow)")]
    ReusedId(u32),
    #[error("a frame for stream {0}, which was never opened")]
    NeverOpened(u32),
    #[error("{got} bytes on stream {id}, beyond the {allowed} its window allows")]
    OverWindow { id: u32, got: usize, allowed: u32 },
    #[error("data on stream {0} after its end")]
    DataAfterFin(u32),
    #[error("a window update of 0 on stream {0}")]
    EmptyWindow(u32),
    #[error("the close reason is not UTF-8")]
    BadReason,
}

/// Reads one frame; never panics, whatever the bytes.
pub(crate) fn decode(message: &[u8]) -> Result<Frame<'_>, Violation> {
    if message.len() < HEADER {
        return Err(Violation::Short(message.len()));
    }
    let kind = message[0];
    let id = u32::from_le_bytes([message[1], message[2], message[3], message[4]]);
    let body = &message[HEADER..];
    let bad = || Violation::BadLength {
        kind,
        len: body.len(),
    };
    match kind {
        OPEN | FIN | RESET | PING | PONG if !body.is_empty() => Err(bad()),
        PING => Ok(Frame::Ping(id)),
        PONG => Ok(Frame::Pong(id)),
        OPEN => Ok(Frame::Open(id)),
        FIN => Ok(Frame::Fin(id)),
        RESET => Ok(Frame::Reset(id)),
        DATA if body.is_empty() || body.len() > MAX_DATA => Err(bad()),
        DATA => Ok(Frame::Data(id, body)),
        WINDOW => match body {
            [a, b, c, d] => Ok(Frame::Window(id, u32::from_le_bytes([*a, *b, *c, *d]))),
            _ => Err(bad()),
        },
        CLOSE if body.len() > MAX_REASON => Err(bad()),
        CLOSE => std::str::from_utf8(body)
            .map(Frame::Close)
            .map_err(|_| Violation::BadReason),
        other => Err(Violation::UnknownType(other)),
    }
}

fn header(kind: u8, id: u32, body: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body);
    out.push(kind);
    out.extend_from_slice(&id.to_le_bytes());
    out
}

/// What goes before the bytes of a DATA frame of stream `id`.
pub(crate) fn data_header(id: u32) -> [u8; HEADER] {
    let id = id.to_le_bytes();
    [DATA, id[0], id[1], id[2], id[3]]
}

/// A DATA frame for `data` (at most [`MAX_DATA`] bytes). The driver assembles its frames in
/// place ([`data_header`]); this is for tests and fuzz seeds that speak for a peer.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn data(id: u32, data: &[u8]) -> Vec<u8> {
    debug_assert!(!data.is_empty() && data.len() <= MAX_DATA);
    let mut out = Vec::with_capacity(HEADER + data.len());
    out.extend_from_slice(&data_header(id));
    out.extend_from_slice(data);
    out
}

pub(crate) fn open(id: u32) -> Vec<u8> {
    header(OPEN, id, 0)
}

pub(crate) fn fin(id: u32) -> Vec<u8> {
    header(FIN, id, 0)
}

pub(crate) fn reset(id: u32) -> Vec<u8> {
    header(RESET, id, 0)
}

pub(crate) fn ping(n: u32) -> Vec<u8> {
    header(PING, n, 0)
}

pub(crate) fn pong(n: u32) -> Vec<u8> {
    header(PONG, n, 0)
}

pub(crate) fn window(id: u32, credit: u32) -> Vec<u8> {
    let mut out = header(WINDOW, id, 4);
    out.extend_from_slice(&credit.to_le_bytes());
    out
}

/// A CLOSE frame; a reason longer than [`MAX_REASON`] is cut at a character boundary.
pub(crate) fn close(reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = header(CLOSE, 0, end);
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

/// Which end of the connection we are: the connecting side opens streams, the sharer accepts
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

/// What one connection allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Streams open at once; the peer's next OPEN is answered with a RESET.
    pub(crate) max_streams: usize,
    /// Bytes a stream's sender may have sent beyond what the receiver took when the stream
    /// opens. Both sides assume it before any WINDOW frame: part of the wire contract.
    pub(crate) window: u32,
    /// How far a stream's receive window may grow (by granting more than was taken) while our
    /// side takes the bytes as fast as they come: what one stream buffers at most.
    pub(crate) max_window: u32,
    /// Growth beyond `window` all streams of one connection share, so that a connection holds
    /// at most `max_streams * window + growth_budget` bytes.
    pub(crate) growth_budget: u64,
    /// The receive window a stream starts with (granted at once, out of the growth budget)
    /// before any stream of the connection grew larger: the head start of a cold connection.
    pub(crate) cold_window: u32,
}

/// Credit goes back once this fraction of a stream's window was taken.
const GRANT_FRACTION: u32 = 8;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_streams: 256,
            window: 256 * 1024,
            // A fixed 256 KiB window caps one stream at 256 KiB per round trip (2.6 MB/s at
            // 100 ms; 1 MB/s at 5 % loss, where holes hold bytes for extra round trips).
            // 8 MiB matches the UDX receive window below it.
            max_window: 8 << 20,
            growth_budget: 16 << 20,
            // The first fetch through a new connection, traced in the NAT lab at 5 % loss and
            // 100 ms (docs/transport.md, "The cold fetch, traced" and "A rated start"): with
            // 256 KiB the sender ran out of credit in its third round trip, with 2 MiB in its
            // fifth (75-600 ms idle per fetch): credit comes back only for bytes taken in
            // order, a round trip and a repaired hole after they left. The largest window a
            // stream may grow to; it comes out of the growth budget, so a connection holds no
            // more than before.
            cold_window: 8 << 20,
        }
    }
}

#[derive(Debug)]
struct Stream {
    /// Bytes the peer may still send before we grant more.
    recv_credit: u32,
    /// Our receive window now: `recv_credit` + bytes received and not yet taken + `taken`.
    recv_window: u32,
    /// The fewest bytes received and not yet taken since the last grant.
    low_water: u32,
    /// Bytes we took since we last granted them back.
    taken: u32,
    /// Bytes we may still send.
    send_credit: u64,
    fin_received: bool,
    fin_sent: bool,
}

/// What a peer's frame means for us.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// A new stream, now open.
    Opened(u32),
    /// A new stream beyond our limit: answer with a RESET.
    Refused(u32),
    Data(u32, &'a [u8]),
    Fin(u32),
    Reset(u32),
    /// The stream may send more.
    Credit(u32),
    /// The peer ends the connection.
    Closed(&'a str),
    /// The peer asks whether we are there: answer with PONG `n`.
    Ping(u32),
    /// The peer answered our PING `n`.
    Pong(u32),
    /// For a stream that is gone already (we reset it, or it ended): a race, nothing to do.
    Late,
}

/// The streams of one connection.
#[derive(Debug)]
pub(crate) struct Session {
    role: Role,
    limits: Limits,
    /// Both sides named the PING feature: PING and PONG are frames, not unknown types.
    ping: bool,
    streams: HashMap<u32, Stream>,
    /// The highest id opened so far, by either side's count: ids only grow, so one that ended
    /// cannot be opened again to confuse a frame in flight with a new stream.
    highest: u32,
    /// The open streams' receive windows beyond `limits.window`, together.
    grown: u64,
    /// The largest receive window a stream of this connection grew to: what this path and our
    /// side sustained.
    reached: u32,
}

impl Session {
    pub(crate) fn new(role: Role, limits: Limits) -> Session {
        Session {
            role,
            limits,
            ping: false,
            streams: HashMap::new(),
            highest: 0,
            grown: 0,
            reached: limits.window.max(limits.cold_window),
        }
    }

    /// Takes PING and PONG frames when `agreed` (both sides named the feature).
    pub(crate) fn pinging(mut self, agreed: bool) -> Session {
        self.ping = agreed;
        self
    }

    /// Streams open now.
    pub(crate) fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Opens our next stream, or none when this connection carries as many as it may (or
    /// ran out of ids): open another connection.
    pub(crate) fn open(&mut self) -> Option<u32> {
        if self.role != Role::Client || self.streams.len() >= self.limits.max_streams {
            return None;
        }
        let id = self.highest.checked_add(1)?;
        self.highest = id;
        self.streams.insert(id, self.fresh());
        Some(id)
    }

    fn fresh(&self) -> Stream {
        Stream {
            recv_credit: self.limits.window,
            recv_window: self.limits.window,
            low_water: u32::MAX,
            taken: 0,
            send_credit: u64::from(self.limits.window),
            fin_received: false,
            fin_sent: false,
        }
    }

    /// What the peer's `frame` does; an error ends the connection.
    pub(crate) fn receive<'a>(&mut self, frame: Frame<'a>) -> Result<Event<'a>, Violation> {
        let id = match frame {
            Frame::Open(id) => return self.on_open(id),
            Frame::Close(reason) => return Ok(Event::Closed(reason)),
            Frame::Ping(_) if !self.ping => return Err(Violation::UnknownType(PING)),
            Frame::Pong(_) if !self.ping => return Err(Violation::UnknownType(PONG)),
            Frame::Ping(n) => return Ok(Event::Ping(n)),
            Frame::Pong(n) => return Ok(Event::Pong(n)),
            Frame::Data(id, _) | Frame::Fin(id) | Frame::Reset(id) | Frame::Window(id, _) => id,
        };
        let Some(stream) = self.streams.get_mut(&id) else {
            return if id == 0 || id > self.highest {
                Err(Violation::NeverOpened(id))
            } else {
                Ok(Event::Late)
            };
        };
        match frame {
            Frame::Data(_, bytes) => {
                if stream.fin_received {
                    return Err(Violation::DataAfterFin(id));
                }
                if bytes.len() > stream.recv_credit as usize {
                    return Err(Violation::OverWindow {
                        id,
                        got: bytes.len(),
                        allowed: stream.recv_credit,
                    });
                }
                stream.recv_credit -= bytes.len() as u32;
                Ok(Event::Data(id, bytes))
            }
            Frame::Fin(_) => {
                if stream.fin_received {
                    return Err(Violation::DataAfterFin(id));
                }
                stream.fin_received = true;
                if stream.fin_sent {
                    self.remove(id);
                }
                Ok(Event::Fin(id))
            }
            Frame::Reset(_) => {
                self.remove(id);
                Ok(Event::Reset(id))
            }
            Frame::Window(_, 0) => Err(Violation::EmptyWindow(id)),
            Frame::Window(_, credit) => {
                // A peer granting more than it could ever hold only hurts itself; saturate.
                stream.send_credit = stream.send_credit.saturating_add(u64::from(credit));
                Ok(Event::Credit(id))
            }
            Frame::Open(_) | Frame::Close(_) | Frame::Ping(_) | Frame::Pong(_) => {
                unreachable!("handled above")
            }
        }
    }

    fn on_open(&mut self, id: u32) -> Result<Event<'static>, Violation> {
        if self.role == Role::Client {
            return Err(Violation::OpenedByServer);
        }
        if id <= self.highest {
            return Err(Violation::ReusedId(id));
        }
        self.highest = id;
        if self.streams.len() >= self.limits.max_streams {
            return Ok(Event::Refused(id));
        }
        self.streams.insert(id, self.fresh());
        Ok(Event::Opened(id))
    }

    /// Bytes stream `id` may send now (0 when it must wait for the peer, or is gone).
    pub(crate) fn credit(&self, id: u32) -> u64 {
        self.streams.get(&id).map_or(0, |s| s.send_credit)
    }

    /// We sent `n` bytes on stream `id` (no more than its [`Session::credit`]).
    pub(crate) fn sent(&mut self, id: u32, n: usize) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.send_credit = s.send_credit.saturating_sub(n as u64);
        }
    }

    /// Our side of stream `id` took `n` bytes; returns the credit to grant the peer now, if
    /// enough has gathered to be worth a frame (an eighth of the window: with a quarter, a
    /// lossy path's sender sat idle waiting for credit, since each grant comes back only after
    /// bytes taken in order, a round trip and a repaired hole after they left).
    ///
    /// The window doubles with a grant while our side keeps up (since the last grant, it once
    /// had at most a quarter of it received and not yet taken), up to `max_window` and the
    /// connection's growth budget: a sender that fills a window per round trip then gets the
    /// window its path needs, as TCP's receive-buffer autotuning does, while a slow local
    /// program stops the growth by leaving bytes untaken. A peer's own sending cannot grow it:
    /// only our taking does.
    pub(crate) fn taken(&mut self, id: u32, n: usize) -> Option<u32> {
        let Limits {
            max_window,
            growth_budget,
            ..
        } = self.limits;
        let budget = growth_budget.saturating_sub(self.grown);
        let s = self.streams.get_mut(&id)?;
        s.taken = s
            .taken
            .saturating_add(n as u32)
            .min(s.recv_window - s.recv_credit);
        // The low-water mark, not the level now: on a lossy path the bytes behind a repaired
        // hole arrive all at once, so a reader that keeps up still finds most of a window
        // untaken just after such a burst; a slow reader never catches up.
        let untaken = s.recv_window - s.recv_credit - s.taken;
        s.low_water = s.low_water.min(untaken);
        if s.fin_received || s.taken < s.recv_window / GRANT_FRACTION {
            return None;
        }
        let caught_up = std::mem::replace(&mut s.low_water, u32::MAX) <= s.recv_window / 4;
        let growth = if caught_up {
            let room = max_window.saturating_sub(s.recv_window);
            s.recv_window
                .min(room)
                .min(budget.min(u64::from(u32::MAX)) as u32)
        } else {
            0
        };
        s.recv_window += growth;
        self.grown += u64::from(growth);
        self.reached = self.reached.max(s.recv_window);
        let grant = std::mem::take(&mut s.taken) + growth;
        s.recv_credit += grant;
        Some(grant)
    }

    /// We sent FIN on stream `id`.
    pub(crate) fn fin_sent(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.fin_sent = true;
            if s.fin_received {
                self.remove(id);
            }
        }
    }

    /// We reset stream `id` (or stopped caring about it): it is gone.
    pub(crate) fn forget(&mut self, id: u32) {
        self.remove(id);
    }

    fn remove(&mut self, id: u32) {
        if let Some(s) = self.streams.remove(&id) {
            self.grown -= u64::from(s.recv_window - self.limits.window);
        }
    }

    /// For a stream just opened (by either side): the credit to grant at once so that it
    /// starts with the largest window a stream of this connection grew to (at least
    /// `cold_window`), within the growth budget. Without
    /// it, every fetch through a warm connection grew its window from 256 KiB again, a few
    /// round trips at a fraction of the path's rate. Bounded as any growth is, and a slow
    /// local program still holds no more than `max_window`.
    pub(crate) fn head_start(&mut self, id: u32) -> Option<u32> {
        let budget = self.limits.growth_budget.saturating_sub(self.grown);
        let s = self.streams.get_mut(&id)?;
        let growth = self
            .reached
            .min(self.limits.max_window)
            .saturating_sub(s.recv_window)
            .min(budget.min(u64::from(u32::MAX)) as u32);
        if growth == 0 {
            return None;
        }
        s.recv_window += growth;
        s.recv_credit += growth;
        self.grown += u64::from(growth);
        Some(growth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limits = Limits {
        max_streams: 2,
        window: 100,
        max_window: 100,
        growth_budget: 0,
        cold_window: 0,
    };

    #[test]
    fn frames_round_trip() {
        let cases: Vec<(Vec<u8>, Frame<'_>)> = vec![
            (open(1), Frame::Open(1)),
            (data(7, b"abc"), Frame::Data(7, b"abc")),
            (fin(u32::MAX), Frame::Fin(u32::MAX)),
            (reset(3), Frame::Reset(3)),
            (window(3, 65536), Frame::Window(3, 65536)),
            (close("bye"), Frame::Close("bye")),
            (ping(9), Frame::Ping(9)),
            (pong(u32::MAX), Frame::Pong(u32::MAX)),
        ];
        for (bytes, frame) in cases {
            assert_eq!(decode(&bytes), Ok(frame));
        }
        let max = vec![9u8; MAX_DATA];
        assert_eq!(decode(&data(1, &max)), Ok(Frame::Data(1, &max)));
        // A long reason is cut on a character boundary and still decodes.
        let long = "é".repeat(MAX_REASON);
        let frame = close(&long);
        let Ok(Frame::Close(cut)) = decode(&frame) else {
            panic!("a cut reason decodes")
        };
        assert!(cut.len() <= MAX_REASON && long.starts_with(cut));
    }

    #[test]
    fn malformed_frames_are_violations() {
        let mut too_big = data(1, &[0; MAX_DATA]);
        too_big.push(0);
        let cases: Vec<(Vec<u8>, Violation)> = vec![
            (vec![], Violation::Short(0)),
            (vec![OPEN, 1, 0, 0], Violation::Short(4)),
            (vec![99, 1, 0, 0, 0], Violation::UnknownType(99)),
            (vec![0, 1, 0, 0, 0], Violation::UnknownType(0)),
            (
                vec![OPEN, 1, 0, 0, 0, 0],
                Violation::BadLength { kind: OPEN, len: 1 },
            ),
            (
                vec![FIN, 1, 0, 0, 0, 0],
                Violation::BadLength { kind: FIN, len: 1 },
            ),
            (
                vec![DATA, 1, 0, 0, 0],
                Violation::BadLength { kind: DATA, len: 0 },
            ),
            (
                too_big,
                Violation::BadLength {
                    kind: DATA,
                    len: MAX_DATA + 1,
                },
            ),
            (
                vec![WINDOW, 1, 0, 0, 0, 1, 0, 0],
                Violation::BadLength {
                    kind: WINDOW,
                    len: 3,
                },
            ),
            (vec![CLOSE, 0, 0, 0, 0, 0xff], Violation::BadReason),
            (
                vec![PING, 1, 0, 0, 0, 0],
                Violation::BadLength { kind: PING, len: 1 },
            ),
            (
                vec![PONG, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                Violation::BadLength { kind: PONG, len: 8 },
            ),
            (
                [vec![CLOSE, 0, 0, 0, 0], vec![b'a'; MAX_REASON + 1]].concat(),
                Violation::BadLength {
                    kind: CLOSE,
                    len: MAX_REASON + 1,
                },
            ),
        ];
        for (bytes, violation) in cases {
            assert_eq!(decode(&bytes), Err(violation), "{bytes:?}");
        }
    }

    #[test]
    fn a_server_refuses_streams_beyond_its_limit_and_takes_more_once_some_end() {
        let mut s = Session::new(Role::Server, SMALL);
        assert_eq!(s.receive(Frame::Open(1)), Ok(Event::Opened(1)));
        assert_eq!(s.receive(Frame::Open(2)), Ok(Event::Opened(2)));
        assert_eq!(s.receive(Frame::Open(3)), Ok(Event::Refused(3)));
        assert_eq!(s.open_streams(), 2);
        assert_eq!(s.receive(Frame::Reset(1)), Ok(Event::Reset(1)));
        assert_eq!(s.receive(Frame::Open(4)), Ok(Event::Opened(4)));
        // A refused stream's late frames are races, not violations.
        assert_eq!(s.receive(Frame::Data(3, b"x")), Ok(Event::Late));
    }

    #[test]
    fn stream_ids_cannot_be_reused_or_invented() {
        let mut s = Session::new(Role::Server, SMALL);
        assert_eq!(s.receive(Frame::Open(5)), Ok(Event::Opened(5)));
        assert_eq!(s.receive(Frame::Reset(5)), Ok(Event::Reset(5)));
        assert_eq!(s.receive(Frame::Open(5)), Err(Violation::ReusedId(5)));
        assert_eq!(s.receive(Frame::Open(4)), Err(Violation::ReusedId(4)));
        assert_eq!(
            s.receive(Frame::Data(6, b"x")),
            Err(Violation::NeverOpened(6))
        );
        assert_eq!(
            s.receive(Frame::Window(0, 1)),
            Err(Violation::NeverOpened(0))
        );
        let mut c = Session::new(Role::Client, SMALL);
        assert_eq!(c.receive(Frame::Open(1)), Err(Violation::OpenedByServer));
        assert_eq!(c.open(), Some(1));
        assert_eq!(c.open(), Some(2));
        assert_eq!(c.open(), None, "at the limit");
        c.forget(1);
        assert_eq!(c.open(), Some(3), "a fresh id, never 1 again");
    }

    #[test]
    fn a_peer_may_not_send_beyond_the_window_we_granted() {
        let mut s = Session::new(Role::Server, SMALL);
        s.receive(Frame::Open(1)).unwrap();
        assert_eq!(
            s.receive(Frame::Data(1, &[0; 60])),
            Ok(Event::Data(1, &[0; 60]))
        );
        assert_eq!(
            s.receive(Frame::Data(1, &[0; 41])),
            Err(Violation::OverWindow {
                id: 1,
                got: 41,
                allowed: 40
            })
        );
        // Taking bytes grants them back once an eighth of the window gathered.
        assert_eq!(s.taken(1, 10), None);
        assert_eq!(s.taken(1, 20), Some(30));
        assert_eq!(
            s.receive(Frame::Data(1, &[0; 70])),
            Ok(Event::Data(1, &[0; 70]))
        );
        assert_eq!(
            s.receive(Frame::Data(1, &[0; 1])),
            Err(Violation::OverWindow {
                id: 1,
                got: 1,
                allowed: 0
            })
        );
    }

    const GROWING: Limits = Limits {
        max_streams: 4,
        window: 100,
        max_window: 800,
        growth_budget: 1000,
        cold_window: 0,
    };

    /// The peer sends all the credit it has.
    fn fill(s: &mut Session, id: u32, credit: &mut u32) {
        let bytes = vec![0; *credit as usize];
        assert_eq!(
            s.receive(Frame::Data(id, &bytes)),
            Ok(Event::Data(id, &bytes))
        );
        *credit = 0;
    }

    #[test]
    fn a_window_grows_while_our_side_keeps_up_and_stops_at_its_bounds() {
        let mut s = Session::new(Role::Server, GROWING);
        s.receive(Frame::Open(1)).unwrap();
        let mut credit = 100;
        // Taking everything at once: each grant doubles the window, 100 -> 200 -> 400 -> 800,
        // then no further.
        for window in [200, 400, 800, 800] {
            let arrived = credit;
            fill(&mut s, 1, &mut credit);
            credit = s.taken(1, arrived as usize).unwrap();
            assert_eq!(credit, window, "the peer may now send a full window");
        }
        // The limit is enforced against the grown window: one byte more is a violation.
        let bytes = vec![0; 801];
        assert!(s.receive(Frame::Data(1, &bytes)).is_err());
    }

    #[test]
    fn a_slow_reader_stops_the_growth() {
        let mut s = Session::new(Role::Server, GROWING);
        s.receive(Frame::Open(1)).unwrap();
        let mut credit = 100;
        fill(&mut s, 1, &mut credit);
        // A quarter taken, three quarters still held: the reader is behind, no growth.
        assert_eq!(s.taken(1, 25), Some(25));
        credit += 25;
        fill(&mut s, 1, &mut credit);
        assert_eq!(s.taken(1, 25), Some(25));
    }

    #[test]
    fn a_reader_that_catches_up_after_bursts_grows_the_window() {
        let mut s = Session::new(Role::Server, GROWING);
        s.receive(Frame::Open(1)).unwrap();
        let mut credit = 100;
        // A whole window arrives at once (behind a repaired hole) and is taken a quarter at a
        // time: the grants along the way find most of it untaken, but the reader catches up.
        fill(&mut s, 1, &mut credit);
        let grants: Vec<Option<u32>> = (0..4).map(|_| s.taken(1, 25)).collect();
        // Three quarters, then half a window untaken at the first two grants; a quarter at the
        // third: caught up, the window doubles to 200. The last quarter is an eighth of that,
        // granted at once, with nothing left untaken: the window doubles again.
        assert_eq!(grants, [Some(25), Some(25), Some(25 + 100), Some(25 + 200)]);
    }

    #[test]
    fn growth_is_shared_within_a_budget_and_returned_when_a_stream_ends() {
        let mut s = Session::new(Role::Server, GROWING);
        let grow = |s: &mut Session, id: u32| {
            s.receive(Frame::Open(id)).unwrap();
            let mut credit = 100;
            let mut window = 100;
            for _ in 0..4 {
                fill(s, id, &mut credit);
                let grant = s.taken(id, window as usize).unwrap();
                window = grant;
                credit = grant;
            }
            window
        };
        assert_eq!(grow(&mut s, 1), 800, "700 of the budget");
        assert_eq!(grow(&mut s, 2), 400, "the 300 left");
        assert_eq!(grow(&mut s, 3), 100, "nothing left");
        assert_eq!(s.receive(Frame::Reset(1)), Ok(Event::Reset(1)));
        assert_eq!(grow(&mut s, 4), 800, "stream 1's growth came back");
    }

    #[test]
    fn a_new_stream_starts_with_the_window_the_latest_one_reached() {
        let mut s = Session::new(Role::Server, GROWING);
        s.receive(Frame::Open(1)).unwrap();
        assert_eq!(s.head_start(1), None, "nothing learned yet");
        let mut credit = 100;
        for _ in 0..2 {
            let arrived = credit;
            fill(&mut s, 1, &mut credit);
            credit = s.taken(1, arrived as usize).unwrap();
        }
        assert_eq!(credit, 400);
        s.receive(Frame::Reset(1)).unwrap();
        s.receive(Frame::Open(2)).unwrap();
        assert_eq!(
            s.head_start(2),
            Some(300),
            "100 assumed by the peer, 300 granted"
        );
        let bytes = vec![0; 400];
        assert!(s.receive(Frame::Data(2, &bytes)).is_ok());
        // Within the budget: the second stream at once gets only what is left of it.
        s.receive(Frame::Open(3)).unwrap();
        let s3 = s.head_start(3);
        s.receive(Frame::Open(4)).unwrap();
        assert_eq!((s3, s.head_start(4)), (Some(300), Some(300)));
        s.receive(Frame::Open(5)).unwrap();
        assert_eq!(s.head_start(5), Some(100), "the rest of the budget");
    }

    #[test]
    fn a_cold_connection_starts_its_streams_at_the_cold_window_within_the_budget() {
        let limits = Limits {
            cold_window: 500,
            ..GROWING
        };
        let mut s = Session::new(Role::Server, limits);
        s.receive(Frame::Open(1)).unwrap();
        assert_eq!(
            s.head_start(1),
            Some(400),
            "100 assumed by the peer, 400 granted"
        );
        let bytes = vec![0; 500];
        assert!(s.receive(Frame::Data(1, &bytes)).is_ok());
        assert!(
            s.receive(Frame::Data(1, &[0])).is_err(),
            "not a byte beyond the cold window"
        );
        s.receive(Frame::Open(2)).unwrap();
        s.receive(Frame::Open(3)).unwrap();
        assert_eq!(
            (s.head_start(2), s.head_start(3)),
            (Some(400), Some(200)),
            "the growth budget bounds it as any growth"
        );
    }

    #[test]
    fn sending_waits_for_credit() {
        let mut c = Session::new(Role::Client, SMALL);
        let id = c.open().unwrap();
        assert_eq!(c.credit(id), 100);
        c.sent(id, 100);
        assert_eq!(c.credit(id), 0);
        assert_eq!(c.receive(Frame::Window(id, 50)), Ok(Event::Credit(id)));
        assert_eq!(c.credit(id), 50);
        assert_eq!(
            c.receive(Frame::Window(id, 0)),
            Err(Violation::EmptyWindow(id))
        );
        c.receive(Frame::Window(id, u32::MAX)).unwrap();
        c.receive(Frame::Window(id, u32::MAX)).unwrap();
        assert!(c.credit(id) > u64::from(u32::MAX));
        assert_eq!(c.credit(99), 0);
    }

    #[test]
    fn a_stream_ends_when_both_sides_sent_fin() {
        let mut s = Session::new(Role::Server, SMALL);
        s.receive(Frame::Open(1)).unwrap();
        assert_eq!(s.receive(Frame::Fin(1)), Ok(Event::Fin(1)));
        assert_eq!(
            s.receive(Frame::Data(1, b"x")),
            Err(Violation::DataAfterFin(1))
        );
        assert_eq!(s.open_streams(), 1, "our direction goes on");
        s.fin_sent(1);
        assert_eq!(s.open_streams(), 0);
        assert_eq!(s.receive(Frame::Window(1, 5)), Ok(Event::Late));
        assert_eq!(s.receive(Frame::Fin(1)), Ok(Event::Late));
    }

    /// An older peer never sends PING (it did not name the feature), and ours only sends it
    /// where both did: so PING is a frame only where agreed, an unknown type elsewhere, just as
    /// the older peer treats it.
    #[test]
    fn ping_and_pong_are_frames_only_where_both_sides_named_the_feature() {
        for role in [Role::Client, Role::Server] {
            let mut plain = Session::new(role, Limits::default());
            assert_eq!(
                plain.receive(Frame::Ping(1)),
                Err(Violation::UnknownType(PING))
            );
            assert_eq!(
                plain.receive(Frame::Pong(1)),
                Err(Violation::UnknownType(PONG))
            );
            let mut agreed = Session::new(role, Limits::default()).pinging(true);
            assert_eq!(agreed.receive(Frame::Ping(7)), Ok(Event::Ping(7)));
            assert_eq!(agreed.receive(Frame::Pong(7)), Ok(Event::Pong(7)));
            assert_eq!(agreed.open_streams(), 0, "no stream state");
        }
    }
}
