//! The relay's bookkeeping, apart from its sockets so that its rules can be tested alone: who
//! may open a session (global and per-IP caps), who may open a pairing (per-session and global
//! caps), how fast one session may send pair messages, and which pairings each session has, so
//! that every check is O(1) and a closing session finds its own pairings without a scan.
//!
//! A relay is public by design: anyone who has its key is a client, and a key pair costs
//! nothing to make. So the caps that protect the relay count what a peer cannot multiply for
//! free (its IP address) as well as what it can (sessions, pairings).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::wire::Token;

/// Per session, pairings waiting for their other side and pairs relayed at once. Far above what
/// a p2p-socket or hyperdht peer uses (one per connection in flight), low enough that one
/// session cannot take all of a relay.
const MAX_PENDING_PER_SESSION: usize = 256;
const MAX_LINKS_PER_SESSION: usize = 1024;

/// How much one relay takes on. The defaults suit a public relay on a small host; each field
/// says what it bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelayLimits {
    /// Sessions (peers' connections to the relay) open at once. Each holds an encrypted
    /// connection's buffers, and while a peer sends one its frame (up to 16 MiB, the secret
    /// stream's limit), so this bounds the relay's memory.
    pub max_sessions: usize,
    /// Sessions open at once from one IP address. Key pairs are free, addresses are not: this
    /// keeps one host from taking every session. Peers behind one NAT share it, so it is well
    /// above what one home or office needs (a session per running share or connect).
    pub max_sessions_per_ip: usize,
    /// Pairings waiting for their other side, over all sessions (each session may hold 256).
    /// Each is a few hundred bytes; they are forgotten after two minutes or when their
    /// session closes.
    pub max_pending: usize,
    /// Pair and unpair messages one session may send at once, above its steady rate.
    /// p2p-socket sends one per relayed connection, so a burst of new connections (a browser
    /// opening a page) fits.
    pub pair_burst: u32,
    /// Pair and unpair messages one session may send per second, over time.
    pub pairs_per_second: f64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_sessions: 1024,
            max_sessions_per_ip: 16,
            max_pending: 4096,
            pair_burst: 64,
            pairs_per_second: 16.0,
        }
    }
}

/// A cap that refused something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    /// Which cap, in words for the log ("reached its cap of N sessions").
    pub(crate) cap: String,
    /// Whether to tell the operator (at most once a minute for each global cap, once per
    /// session for a session's own): a hostile peer that keeps a cap busy must not be able to
    /// write the log at its own rate.
    pub(crate) first: bool,
}

/// How often a global cap that keeps refusing is reported.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// When each global cap was last reported.
#[derive(Debug, Default)]
struct Capped {
    sessions: Option<Instant>,
    /// One for every address: a cap per address reported per address would let a peer with
    /// many addresses write the log again.
    sessions_per_ip: Option<Instant>,
    pending: Option<Instant>,
}

/// Whether a cap last reported at `last` is due to be reported again; if so, now.
fn report(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    let due = last.is_none_or(|t| now.saturating_duration_since(t) >= REPORT_EVERY);
    if due {
        *last = Some(now);
    }
    due
}

/// One session's own pairings.
#[derive(Debug)]
struct Session {
    ip: IpAddr,
    pending: usize,
    links: usize,
    /// Every token this session pairs or relays with.
    tokens: HashSet<Token>,
    /// Whether its own cap was reported.
    capped: bool,
}

/// The relay's counts; see the module doc.
#[derive(Debug)]
pub(crate) struct Book {
    limits: RelayLimits,
    next_session: u64,
    sessions: HashMap<u64, Session>,
    per_ip: HashMap<IpAddr, usize>,
    /// Pairings waiting, over all sessions: sides of a token whose other side has not come
    /// (both sides count until the pair is joined, a moment later).
    pending: usize,
    capped: Capped,
}

impl Book {
    pub(crate) fn new(limits: RelayLimits) -> Book {
        Book {
            limits,
            next_session: 0,
            sessions: HashMap::new(),
            per_ip: HashMap::new(),
            pending: 0,
            capped: Capped::default(),
        }
    }

    pub(crate) fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// A new session from `ip`, or which cap refuses it.
    pub(crate) fn admit(&mut self, ip: IpAddr) -> Result<u64, Refused> {
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        let (cap, last) = if self.sessions.len() >= self.limits.max_sessions {
            let cap = format!(
                "reached its cap of {} sessions in all",
                self.limits.max_sessions
            );
            (cap, &mut self.capped.sessions)
        } else if from_ip >= self.limits.max_sessions_per_ip {
            let cap = format!(
                "reached its cap of {} sessions from {ip}",
                self.limits.max_sessions_per_ip
            );
            (cap, &mut self.capped.sessions_per_ip)
        } else {
            self.next_session += 1;
            *self.per_ip.entry(ip).or_insert(0) += 1;
            self.sessions.insert(
                self.next_session,
                Session {
                    ip,
                    pending: 0,
                    links: 0,
                    tokens: HashSet::new(),
                    capped: false,
                },
            );
            return Ok(self.next_session);
        };
        Err(Refused {
            cap,
            first: report(last),
        })
    }

    /// Ends a session; returns the tokens it was pairing or relaying with, for the caller to
    /// end (through [`Book::unpend`] and [`Book::unlink`], which then find it gone).
    pub(crate) fn end(&mut self, session: u64) -> Vec<Token> {
        let Some(s) = self.sessions.remove(&session) else {
            return Vec::new();
        };
        if let Some(n) = self.per_ip.get_mut(&s.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&s.ip);
            }
        }
        self.pending -= s.pending;
        s.tokens.into_iter().collect()
    }

    /// `session` pairs with `token`; `opens` when no one waits on that token yet (the pairing
    /// then counts against the global cap).
    pub(crate) fn pend(&mut self, session: u64, token: Token, opens: bool) -> Result<(), Refused> {
        let Some(s) = self.sessions.get_mut(&session) else {
            return Err(Refused {
                cap: "has no such session".into(),
                first: false,
            });
        };
        if s.pending >= MAX_PENDING_PER_SESSION || s.links >= MAX_LINKS_PER_SESSION {
            return Err(Refused {
                cap: format!(
                    "reached a session's cap ({MAX_PENDING_PER_SESSION} pairings waiting, {MAX_LINKS_PER_SESSION} relayed)"
                ),
                first: !std::mem::replace(&mut s.capped, true),
            });
        }
        if opens && self.pending >= self.limits.max_pending {
            return Err(Refused {
                cap: format!(
                    "reached its cap of {} pairings waiting in all",
                    self.limits.max_pending
                ),
                first: report(&mut self.capped.pending),
            });
        }
        s.pending += 1;
        s.tokens.insert(token);
        self.pending += 1;
        Ok(())
    }

    /// `session`'s pairing with `token` ended (joined, cancelled or expired).
    pub(crate) fn unpend(&mut self, session: u64, token: &Token) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.pending -= 1;
            s.tokens.remove(token); // `link` puts it back when the pairing was joined
            self.pending -= 1;
        }
    }

    /// `session` relays with `token` (after its pairing was joined).
    pub(crate) fn link(&mut self, session: u64, token: Token) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.links += 1;
            s.tokens.insert(token);
        }
    }

    /// `session`'s relaying with `token` ended.
    pub(crate) fn unlink(&mut self, session: u64, token: &Token) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.links -= 1;
            s.tokens.remove(token);
        }
    }

    /// A fresh rate limiter for one session's pair messages.
    pub(crate) fn rate(&self) -> Rate {
        Rate {
            tokens: f64::from(self.limits.pair_burst),
            burst: f64::from(self.limits.pair_burst),
            per_second: self.limits.pairs_per_second,
            last: Instant::now(),
        }
    }
}

/// A token bucket: `burst` at once, then `per_second`.
#[derive(Debug)]
pub(crate) struct Rate {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl Rate {
    /// Whether one more message is allowed at `now`.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn ip(last: u8) -> IpAddr {
        Ipv4Addr::new(127, 0, 0, last).into()
    }

    fn token(n: u32) -> Token {
        let mut t = [0; 32];
        t[..4].copy_from_slice(&n.to_le_bytes());
        t
    }

    fn limits() -> RelayLimits {
        RelayLimits {
            max_sessions: 5,
            max_sessions_per_ip: 3,
            max_pending: 10,
            ..RelayLimits::default()
        }
    }

    #[test]
    fn sessions_are_capped_per_ip_and_in_all_and_a_closed_one_frees_its_place() {
        let mut book = Book::new(limits());
        let a: Vec<u64> = (0..3).map(|_| book.admit(ip(2)).unwrap()).collect();
        let refused = book.admit(ip(2)).unwrap_err();
        assert!(
            refused.first && refused.cap.contains("from 127.0.0.2"),
            "{refused:?}"
        );
        assert!(!book.admit(ip(2)).unwrap_err().first, "said once");
        book.admit(ip(3)).unwrap();
        book.admit(ip(4)).unwrap();
        let refused = book.admit(ip(5)).unwrap_err();
        assert!(
            refused.first && refused.cap.contains("5 sessions in all"),
            "{refused:?}"
        );
        book.end(a[0]);
        book.admit(ip(5)).unwrap();
        assert_eq!(book.sessions(), 5);
        book.end(a[1]);
        book.end(a[1]); // twice is harmless
        assert_eq!(book.sessions(), 4);
        book.admit(ip(2)).unwrap();
    }

    #[test]
    fn pairings_waiting_are_capped_in_all_and_per_session() {
        let mut book = Book::new(limits());
        let s = book.admit(ip(2)).unwrap();
        let t = book.admit(ip(3)).unwrap();
        for n in 0..10 {
            book.pend(s, token(n), true).unwrap();
        }
        let refused = book.pend(t, token(99), true).unwrap_err();
        assert!(
            refused.first && refused.cap.contains("10 pairings"),
            "{refused:?}"
        );
        // The other side of a waiting pairing opens nothing new, so it still gets through.
        book.pend(t, token(3), false).unwrap();
        // Joined: both sides' pairings end, the pair is relayed.
        book.unpend(s, &token(3));
        book.unpend(t, &token(3));
        book.link(s, token(3));
        book.link(t, token(3));
        book.pend(t, token(99), true).unwrap();
        // A session that ends gives back its own pairings and says which.
        let mut tokens = book.end(s);
        tokens.sort();
        let mut want: Vec<Token> = (0..10).map(token).collect();
        want.sort();
        assert_eq!(tokens, want);
        for n in 100..109 {
            book.pend(t, token(n), true).unwrap();
        }

        let mut per_session = Book::new(RelayLimits {
            max_pending: 10_000,
            ..limits()
        });
        let s = per_session.admit(ip(2)).unwrap();
        for n in 0..MAX_PENDING_PER_SESSION as u32 {
            per_session.pend(s, token(n), true).unwrap();
        }
        assert!(per_session.pend(s, token(1 << 20), true).unwrap_err().first);
        assert!(!per_session.pend(s, token(1 << 21), true).unwrap_err().first);
    }

    #[test]
    fn a_session_sends_a_burst_then_its_rate() {
        let book = Book::new(RelayLimits {
            pair_burst: 4,
            pairs_per_second: 2.0,
            ..limits()
        });
        let mut rate = book.rate();
        let t0 = Instant::now();
        let first: usize = (0..100).filter(|_| rate.take(t0)).count();
        assert_eq!(first, 4);
        let later = t0 + Duration::from_secs(10);
        let next: usize = (0..100).filter(|_| rate.take(later)).count();
        assert_eq!(next, 4, "refilled to the burst, no further");
        assert!(!rate.take(later + Duration::from_millis(100)));
        assert!(rate.take(later + Duration::from_millis(600)));
    }
}
