//! The relay itself (blind-relay's `Server`): a HyperDHT server on its own key whose every
//! connection is a session of the `blind-relay` channel. Two sessions that pair with the same
//! token from opposite sides (`isInitiator` true and false) are joined: the relay makes one UDX
//! stream towards each peer, on the socket that carries that peer's session and aimed at the
//! address it comes from (the peer pairs from the same socket, so through the same NAT
//! mapping), and the two relay to each other. From then on packets pass through untouched; the
//! peers' secret stream runs end to end and the relay never holds a key for it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use udx::UdxStream;

use super::book::{Book, Refused, RelayLimits};
use super::channel::{self, Channel, Message};
use super::wire::{Pair, Token};
use crate::dht::{next_stream_id, NetworkOptions};
use crate::error::Result;
use crate::identity::{KeyPair, PublicKey};
use crate::listener::{Handler, Listener, MAX_CONNECTIONS};
use crate::noise_session::Features;
use crate::peer::{Link, PeerStream};

/// A pairing whose other side has not come yet is forgotten after this long (Node's relay keeps
/// them for the life of the session; a client that pairs and then dies should not pin them).
const PENDING_TIMEOUT: Duration = Duration::from_secs(120);
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How to run a relay.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The DHT to announce on. A relay must be reachable by everyone who uses it: run it on a
    /// host with a public address (or at least one its users' NATs all let through).
    pub network: NetworkOptions,
    /// The relay's identity; its public key is what `--relay` takes.
    pub key_pair: KeyPair,
    /// How much it takes on.
    pub limits: RelayLimits,
}

/// A running blind relay. Dropping it stops it; [`RelayServer::close`] also withdraws its
/// announcement.
pub struct RelayServer {
    server: Listener,
    relay: Arc<Relay>,
}

/// What a relay is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Connections of peers to the relay, open now.
    pub sessions: usize,
    /// Pairings waiting for their other side.
    pub pending: usize,
    /// Pairs of peers being relayed now.
    pub relaying: usize,
    /// Pairs joined since start.
    pub paired: u64,
}

impl RelayServer {
    /// Joins the DHT, announces the relay's key and starts relaying.
    pub async fn start(opts: RelayOptions) -> Result<RelayServer> {
        let relay = Arc::new(Relay {
            state: Mutex::new(State {
                book: Book::new(opts.limits),
                pending: HashMap::new(),
                relaying: HashMap::new(),
                paired: 0,
            }),
        });
        let handler: Handler = {
            let relay = Arc::clone(&relay);
            Arc::new(
                move |n, peer, link, _path| -> Pin<Box<dyn Future<Output = ()> + Send>> {
                    Box::pin(Arc::clone(&relay).serve(n, peer, link))
                },
            )
        };
        let server = Listener::start(
            &opts.network,
            opts.key_pair,
            None,
            MAX_CONNECTIONS,
            None,
            Features::default(),
            handler,
        )
        .await?;
        // Ends when the relay does (the server's handler holds the other references).
        let weak = Arc::downgrade(&relay);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            loop {
                every.tick().await;
                match weak.upgrade() {
                    Some(relay) => relay.sweep(),
                    None => return,
                }
            }
        });
        Ok(RelayServer { server, relay })
    }

    /// The key peers pass to `--relay`.
    pub fn public_key(&self) -> PublicKey {
        self.server.public_key()
    }

    /// What the relay is doing now.
    pub fn stats(&self) -> RelayStats {
        self.relay.stats()
    }

    /// Withdraws the announcement and stops; relayed connections are cut.
    pub async fn close(self) {
        self.server.close().await;
    }
}

/// One side of a pairing: a session that asked to be joined.
struct Side {
    session: u64,
    channel: Channel,
    /// Where the peer's session is, which is where its relayed packets come from.
    socket: udx::UdxSocket,
    peer: SocketAddr,
    /// The peer's stream id for the relayed connection.
    stream_id: u32,
}

struct Pending {
    sides: [Option<Side>; 2],
    since: Instant,
}

/// Two peers joined: the relay's stream towards each.
struct Relaying {
    sessions: [u64; 2],
    streams: [UdxStream; 2],
}

/// The relay's state. Behind a std mutex on purpose: every operation under it is O(1) in the
/// number of sessions and pairings (the [`Book`] keeps the counts), never awaits, and never
/// does I/O beyond queueing a datagram, so holding it blocks a tokio worker for microseconds.
struct Relay {
    state: Mutex<State>,
}

struct State {
    /// Who may open a session or a pairing, and each session's own pairings.
    book: Book,
    pending: HashMap<Token, Pending>,
    relaying: HashMap<Token, Relaying>,
    paired: u64,
}

impl State {
    /// Forgets a pairing still waiting, in its sessions' books too.
    fn remove_pending(&mut self, token: &Token) -> Option<Pending> {
        let p = self.pending.remove(token)?;
        for side in p.sides.iter().flatten() {
            self.book.unpend(side.session, token);
        }
        Some(p)
    }

    /// Stops relaying a pair, in its sessions' books too.
    fn remove_relaying(&mut self, token: &Token, why: &str) {
        if let Some(r) = self.relaying.remove(token) {
            for session in r.sessions {
                self.book.unlink(session, token);
            }
            log_end(token, &r, why);
        }
    }
}

fn short(token: &Token) -> String {
    hex::encode(&token[..4])
}

impl Relay {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> RelayStats {
        let st = self.lock();
        RelayStats {
            sessions: st.book.sessions(),
            pending: st.pending.len(),
            relaying: st.relaying.len(),
            paired: st.paired,
        }
    }

    /// One peer's connection to the relay, for as long as it lasts.
    async fn serve(self: Arc<Self>, n: u64, peer: PeerStream, link: Link) {
        let Some(peer_addr) = link.peer() else {
            warn!(
                connection = n,
                "a relay session without a peer address; closed it"
            );
            return;
        };
        let admitted = self.lock().book.admit(peer_addr.ip());
        let session = match admitted {
            Ok(session) => session,
            Err(refused) => {
                log_refusal(&refused, peer_addr, "closed the session");
                return; // dropping the stream closes the connection
            }
        };
        let remote_key = *peer.remote_public_key();
        let (channel, mut messages) = channel::open(peer, remote_key);
        debug!(connection = n, session, peer = %peer_addr, "relay session open");
        let mut rate = self.lock().book.rate();
        let mut rate_warned = false;
        while let Some(message) = messages.recv().await {
            if !rate.take(Instant::now()) {
                // Once per session: a peer that keeps at it would otherwise write the log.
                if !std::mem::replace(&mut rate_warned, true) {
                    warn!(
                        session,
                        peer = %peer_addr,
                        "a relay session sends pair messages faster than the per-peer rate; ignoring the excess"
                    );
                }
                continue;
            }
            match message {
                Message::Pair(pair) => self.on_pair(session, &channel, &link, peer_addr, pair),
                Message::Unpair(token) => self.on_unpair(session, &token),
            }
        }
        self.end_session(session);
        debug!(connection = n, session, "relay session closed");
    }

    fn on_pair(
        self: &Arc<Self>,
        session: u64,
        channel: &Channel,
        link: &Link,
        peer: SocketAddr,
        pair: Pair,
    ) {
        let Ok(stream_id) = u32::try_from(pair.id) else {
            debug!(
                session,
                id = pair.id,
                "pair with a stream id out of range; ignored"
            );
            return;
        };
        let side = Side {
            session,
            channel: channel.clone(),
            socket: link.socket.clone(),
            peer,
            stream_id,
        };
        let token = pair.token;
        let slot = usize::from(pair.is_initiator);
        let mut st = self.lock();
        if st.relaying.contains_key(&token) {
            debug!(
                session,
                token = short(&token),
                "pair for a token already relayed; ignored"
            );
            return;
        }
        let repeat = st
            .pending
            .get(&token)
            .is_some_and(|p| p.sides[slot].is_some());
        if repeat {
            return; // that side already asked (Node's relay ignores repeats too)
        }
        let opens = !st.pending.contains_key(&token);
        if let Err(refused) = st.book.pend(session, token, opens) {
            log_refusal(&refused, peer, "ignored a pairing");
            return;
        }
        let entry = st.pending.entry(token).or_insert_with(|| Pending {
            sides: [None, None],
            since: Instant::now(),
        });
        entry.sides[slot] = Some(side);
        if entry.sides.iter().any(Option::is_none) {
            debug!(
                session,
                token = short(&token),
                "pairing; waiting for the other side"
            );
            return;
        }
        let Some(Pending {
            sides: [Some(b), Some(a)],
            ..
        }) = st.remove_pending(&token)
        else {
            return;
        };
        // `a` is the initiator, `b` the other side.
        match join(&a, &b) {
            Ok(streams) => {
                let ids = [streams[0].local_id(), streams[1].local_id()];
                let done = streams[0].observer();
                st.book.link(a.session, token);
                st.book.link(b.session, token);
                st.relaying.insert(
                    token,
                    Relaying {
                        sessions: [a.session, b.session],
                        streams,
                    },
                );
                st.paired += 1;
                drop(st);
                for (side, id, is_initiator) in [(&a, ids[0], true), (&b, ids[1], false)] {
                    side.channel.pair(&Pair {
                        is_initiator,
                        token,
                        id: u64::from(id),
                        seq: 0,
                    });
                }
                info!(
                    token = short(&token),
                    initiator = %a.peer,
                    other = %b.peer,
                    "relaying a pair of peers"
                );
                let relay = Arc::clone(self);
                tokio::spawn(async move {
                    done.done().await;
                    relay.forget(&token, ids[0]);
                });
            }
            Err(why) => warn!(token = short(&token), %why, "cannot relay this pair"),
        }
    }

    /// A pair that ended by itself (a peer destroyed its stream) is let go.
    fn forget(&self, token: &Token, first_id: u32) {
        let mut st = self.lock();
        if st
            .relaying
            .get(token)
            .is_some_and(|r| r.streams[0].local_id() == first_id)
        {
            st.remove_relaying(token, "a peer destroyed its stream");
        }
    }

    fn on_unpair(&self, session: u64, token: &Token) {
        let mut st = self.lock();
        let pending_here = st
            .pending
            .get(token)
            .is_some_and(|p| p.sides.iter().flatten().any(|s| s.session == session));
        if pending_here {
            st.remove_pending(token);
            debug!(session, token = short(token), "pairing cancelled");
            return;
        }
        if st
            .relaying
            .get(token)
            .is_some_and(|r| r.sessions.contains(&session))
        {
            st.remove_relaying(token, "unpaired");
        }
    }

    /// A session closed: what it was pairing and relaying goes with it, found through its own
    /// book (not by scanning every pairing of every session).
    fn end_session(&self, session: u64) {
        let mut st = self.lock();
        for token in st.book.end(session) {
            st.remove_pending(&token);
            st.remove_relaying(&token, "a peer's relay session closed");
        }
    }

    /// Every `SWEEP_EVERY`, not per message: the one pass over all pairings.
    fn sweep(&self) {
        let mut st = self.lock();
        let stale: Vec<Token> = st
            .pending
            .iter()
            .filter(|(_, p)| {
                p.since.elapsed() >= PENDING_TIMEOUT
                    || p.sides.iter().flatten().any(|s| !s.channel.is_open())
            })
            .map(|(t, _)| *t)
            .collect();
        for token in &stale {
            st.remove_pending(token);
        }
        if !stale.is_empty() {
            debug!(
                dropped = stale.len(),
                "forgot pairings whose other side never came"
            );
        }
    }
}

/// A cap reached: said at `warn` when due (so an operator sees which cap and can raise it),
/// else at `debug` (so a flood does not write the log).
fn log_refusal(refused: &Refused, peer: SocketAddr, what: &str) {
    if refused.first {
        warn!(%peer, "relay {}: {what}", refused.cap);
    } else {
        debug!(%peer, "relay {}: {what}", refused.cap);
    }
}

fn log_end(token: &Token, r: &Relaying, why: &str) {
    let [a, b] = &r.streams;
    info!(
        token = short(token),
        from_initiator = a.stats().packets_received,
        to_initiator = b.stats().packets_received,
        "stopped relaying a pair ({why})"
    );
}

/// Makes the relay's two streams of a pair and joins them: `[towards a, towards b]`.
fn join(a: &Side, b: &Side) -> std::result::Result<[UdxStream; 2], String> {
    let (sa, pa) = (a.socket.local_addr(), a.peer);
    let (sb, pb) = (b.socket.local_addr(), b.peer);
    if sa.as_ref().ok() != sb.as_ref().ok() {
        // Relaying happens inside one socket's driver. A public relay takes every session on
        // its DHT socket; sessions on different sockets mean it was reached by punching.
        return Err(format!(
            "the two peers reached the relay on different sockets ({sa:?}, {sb:?}); run the relay on a public address"
        ));
    }
    let make = |socket: &udx::UdxSocket| {
        socket
            .create_stream(next_stream_id())
            .map_err(|e| format!("cannot make a relay stream: {e}"))
    };
    let (to_a, to_b) = (make(&a.socket)?, make(&b.socket)?);
    let wire = || -> std::result::Result<(), udx::UdxError> {
        to_a.relay_to(&to_b)?;
        to_b.relay_to(&to_a)?;
        to_a.connect(a.stream_id, pa)?;
        to_b.connect(b.stream_id, pb)
    };
    wire().map_err(|e| format!("cannot join the relay streams: {e}"))?;
    Ok([to_a, to_b])
}
