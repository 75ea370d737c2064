//! Roaming's rules without I/O: the ticket both ends derive from a session's first handshake,
//! the proof a resume carries, the two messages of a resume, and the share's table of sessions
//! that may be resumed (docs/roaming.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blake2::digest::consts::U32;
use blake2::digest::{KeyInit, Mac};
use blake2::Blake2bMac;
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::lock::lock;
use crate::noise_session::Keys;

/// Bytes of a session id: enough that guessing a live one is hopeless.
pub(crate) const SESSION_ID_LEN: usize = 16;
/// Marks a resume request and its answer.
const MAGIC: [u8; 4] = *b"p2pr";
const VERSION: u8 = 1;
/// A request: magic, version, session id, proof.
const REQUEST_LEN: usize = 4 + 1 + SESSION_ID_LEN + 32;
/// An answer: magic, version, status, the share's stream id of the session.
const ANSWER_LEN: usize = 4 + 1 + 1 + 4;
/// How long each end waits for the other's resume message on the new connection (the data
/// path is already open then, so this is a round trip with room for loss).
pub(crate) const RESUME_TIMEOUT: Duration = Duration::from_secs(10);
/// Sessions a share keeps for resuming at once. One per open connection at most (the listener
/// holds at most `MAX_CONNECTIONS`), so this is a second fence, not the usual bound.
pub(crate) const MAX_SESSIONS: usize = 512;

/// BLAKE2b-256 keyed with `key` (1 to 64 bytes) over `parts`.
fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Blake2bMac<U32> as KeyInit>::new_from_slice(key).expect("a BLAKE2b key of 1 to 64 bytes");
    for part in parts {
        Mac::update(&mut mac, part);
    }
    mac.finalize().into_bytes().into()
}

/// What both ends of a roaming session know of it, derived from its first handshake.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) id: [u8; SESSION_ID_LEN],
    secret: [u8; 32],
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never goes to a log.
        write!(f, "Ticket({})", hex::encode(&self.id[..4]))
    }
}

impl Ticket {
    /// The ticket of the session `keys` opened; both ends derive the same one. The key is the
    /// initiator's sending key followed by its receiving key (the responder's the other way
    /// round): secret to the two ends, unlike the handshake hash.
    pub(crate) fn derive(keys: &Keys, initiator: bool) -> Ticket {
        let (first, second) = if initiator {
            (keys.tx, keys.rx)
        } else {
            (keys.rx, keys.tx)
        };
        let mut key = [0u8; 64];
        key[..32].copy_from_slice(&first);
        key[32..].copy_from_slice(&second);
        let id = mac(&key, &[b"p2p-socket/roam/id"]);
        Ticket {
            id: id[..SESSION_ID_LEN].try_into().expect("16 of 32 bytes"),
            secret: mac(&key, &[b"p2p-socket/roam/secret"]),
        }
    }

    /// The proof for a resume over the handshake whose hash is `handshake_hash`.
    pub(crate) fn proof(&self, handshake_hash: &[u8; 64]) -> [u8; 32] {
        mac(&self.secret, &[b"p2p-socket/roam/proof", handshake_hash])
    }

    /// Whether `proof` is this ticket's for that handshake (in constant time).
    pub(crate) fn verify(&self, handshake_hash: &[u8; 64], proof: &[u8; 32]) -> bool {
        self.proof(handshake_hash).ct_eq(proof).into()
    }
}

/// The first message of a resuming connection, client to share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) session: [u8; SESSION_ID_LEN],
    pub(crate) proof: [u8; 32],
}

/// Why a resume message could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum BadMessage {
    #[error("a resume message of {got} bytes, expected {expected}")]
    Length { got: usize, expected: usize },
    #[error("not a resume message (wrong magic or version)")]
    NotResume,
    #[error("an unknown resume status {0}")]
    Status(u8),
}

fn header(message: &[u8], expected: usize) -> Result<&[u8], BadMessage> {
    if message.len() != expected {
        return Err(BadMessage::Length {
            got: message.len(),
            expected,
        });
    }
    if message[..4] != MAGIC || message[4] != VERSION {
        return Err(BadMessage::NotResume);
    }
    Ok(&message[5..])
}

impl Request {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REQUEST_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.session);
        out.extend_from_slice(&self.proof);
        out
    }

    pub(crate) fn decode(message: &[u8]) -> Result<Request, BadMessage> {
        let body = header(message, REQUEST_LEN)?;
        let (session, proof) = body.split_at(SESSION_ID_LEN);
        Ok(Request {
            session: session.try_into().expect("split at the id's length"),
            proof: proof.try_into().expect("the rest is 32 bytes"),
        })
    }
}

/// The share's answer to a resume request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The session moved onto this connection's path; `stream` is the share's stream id of
    /// the session (what the client's moved stream sends to).
    Resumed { stream: u32 },
    /// No such session for this client, or a wrong proof: nothing moved.
    Refused,
}

impl Answer {
    pub(crate) fn encode(self) -> Vec<u8> {
        let (status, stream) = match self {
            Answer::Resumed { stream } => (1, stream),
            Answer::Refused => (0, 0),
        };
        let mut out = Vec::with_capacity(ANSWER_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(status);
        out.extend_from_slice(&stream.to_le_bytes());
        out
    }

    pub(crate) fn decode(message: &[u8]) -> Result<Answer, BadMessage> {
        let body = header(message, ANSWER_LEN)?;
        let stream = u32::from_le_bytes(body[1..5].try_into().expect("4 bytes"));
        match body[0] {
            0 => Ok(Answer::Refused),
            1 => Ok(Answer::Resumed { stream }),
            other => Err(BadMessage::Status(other)),
        }
    }
}

/// Why a share refused a resume (each is logged; the client is told only "refused").
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum Refusal {
    #[error("no open session has this id (it ended, or never existed)")]
    Unknown,
    #[error("the session belongs to another client key")]
    OtherClient,
    #[error("the proof does not match the session's secret")]
    BadProof,
}

/// A session a share keeps for resuming: whose it is, its ticket, and what moving it needs.
pub(crate) struct Entry<H> {
    pub(crate) client: [u8; 32],
    pub(crate) ticket: Ticket,
    /// The session's connection (its stream, for moving it).
    pub(crate) handle: H,
    /// The client's stream id of the session (where the moved stream sends).
    pub(crate) client_stream: u32,
    /// Our stream id of the session (what the client's moved stream sends to).
    pub(crate) our_stream: u32,
}

/// The share's roaming sessions, by id: one per open roaming connection, added when it opens
/// and removed when it ends ([`Registration`]); at most [`MAX_SESSIONS`].
pub(crate) struct Sessions<H> {
    table: Mutex<HashMap<[u8; SESSION_ID_LEN], Arc<Entry<H>>>>,
    max: usize,
}

/// Keeps a session resumable while it is held; dropping it (the connection ended) forgets it.
pub(crate) struct Registration<H> {
    sessions: Arc<Sessions<H>>,
    id: [u8; SESSION_ID_LEN],
}

impl<H> Drop for Registration<H> {
    fn drop(&mut self) {
        lock(&self.sessions.table).remove(&self.id);
    }
}

impl<H> Sessions<H> {
    pub(crate) fn new(max: usize) -> Arc<Sessions<H>> {
        Arc::new(Sessions {
            table: Mutex::new(HashMap::new()),
            max,
        })
    }

    /// Makes `entry` resumable until the registration is dropped; none when the table is full
    /// or the id is taken (then the connection simply does not roam).
    pub(crate) fn register(self: &Arc<Self>, entry: Entry<H>) -> Option<Registration<H>> {
        let mut table = lock(&self.table);
        let id = entry.ticket.id;
        if table.len() >= self.max || table.contains_key(&id) {
            return None;
        }
        table.insert(id, Arc::new(entry));
        Some(Registration {
            sessions: Arc::clone(self),
            id,
        })
    }

    /// The session `request` may resume, for client key `client` over the handshake with hash
    /// `handshake_hash`.
    pub(crate) fn check(
        &self,
        request: &Request,
        client: &[u8; 32],
        handshake_hash: &[u8; 64],
    ) -> Result<Arc<Entry<H>>, Refusal> {
        let entry = lock(&self.table)
            .get(&request.session)
            .cloned()
            .ok_or(Refusal::Unknown)?;
        if entry.client != *client {
            return Err(Refusal::OtherClient);
        }
        if !entry.ticket.verify(handshake_hash, &request.proof) {
            return Err(Refusal::BadProof);
        }
        Ok(entry)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.table).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(tx: u8, rx: u8) -> Keys {
        Keys {
            remote_public_key: [9; 32],
            holepunch_secret: [0; 32],
            handshake_hash: [7; 64],
            tx: [tx; 32],
            rx: [rx; 32],
            features: Default::default(),
        }
    }

    #[test]
    fn both_ends_derive_one_ticket_from_the_split_keys_not_the_hash() {
        let client = Ticket::derive(&keys(1, 2), true);
        let share = Ticket::derive(&keys(2, 1), false);
        assert_eq!(client, share);
        // Another session's keys, even with the same (public) handshake hash: another ticket.
        let other = Ticket::derive(&keys(1, 3), true);
        assert_ne!(client.id, other.id);
        assert_ne!(client.secret, other.secret);
        assert!(!format!("{client:?}").contains(&hex::encode(client.secret)));
    }

    #[test]
    fn a_proof_holds_for_its_own_handshake_only() {
        let ticket = Ticket::derive(&keys(1, 2), true);
        let other = Ticket::derive(&keys(5, 6), true);
        let (h1, h2) = ([1u8; 64], [2u8; 64]);
        let proof = ticket.proof(&h1);
        assert!(ticket.verify(&h1, &proof));
        assert!(!ticket.verify(&h2, &proof), "replayed on another handshake");
        assert!(
            !ticket.verify(&h1, &other.proof(&h1)),
            "another session's secret"
        );
        let mut flipped = proof;
        flipped[31] ^= 1;
        assert!(!ticket.verify(&h1, &flipped));
    }

    #[test]
    fn messages_round_trip_and_hostile_ones_are_errors() {
        let request = Request {
            session: [3; SESSION_ID_LEN],
            proof: [4; 32],
        };
        assert_eq!(Request::decode(&request.encode()), Ok(request.clone()));
        for answer in [
            Answer::Refused,
            Answer::Resumed {
                stream: 0xdead_beef,
            },
        ] {
            assert_eq!(Answer::decode(&answer.encode()), Ok(answer));
        }
        let good = request.encode();
        for len in 0..good.len() + 2 {
            let mut cut = good.clone();
            cut.resize(len, 0);
            assert_eq!(Request::decode(&cut).is_ok(), len == good.len(), "{len}");
        }
        let mut wrong = good.clone();
        wrong[0] = b'x';
        assert_eq!(Request::decode(&wrong), Err(BadMessage::NotResume));
        wrong = good;
        wrong[4] = 2;
        assert_eq!(Request::decode(&wrong), Err(BadMessage::NotResume));
        let mut status = Answer::Refused.encode();
        status[5] = 7;
        assert_eq!(Answer::decode(&status), Err(BadMessage::Status(7)));
        // A request is not an answer and the other way round.
        assert!(Answer::decode(&request_bytes()).is_err());
        assert!(Request::decode(&Answer::Refused.encode()).is_err());
    }

    fn request_bytes() -> Vec<u8> {
        Request {
            session: [0; SESSION_ID_LEN],
            proof: [0; 32],
        }
        .encode()
    }

    fn entry(client: u8, tx: u8) -> Entry<()> {
        Entry {
            client: [client; 32],
            ticket: Ticket::derive(&keys(tx, 0), false),
            handle: (),
            client_stream: 10,
            our_stream: 20,
        }
    }

    #[test]
    fn only_the_sessions_own_client_with_a_good_proof_resumes_it() {
        let sessions = Sessions::new(4);
        let e = entry(1, 1);
        let ticket = e.ticket.clone();
        let _kept = sessions.register(e).unwrap();
        let hh = [5u8; 64];
        let good = Request {
            session: ticket.id,
            proof: ticket.proof(&hh),
        };
        assert!(sessions.check(&good, &[1; 32], &hh).is_ok());
        assert_eq!(
            sessions.check(&good, &[2; 32], &hh).err(),
            Some(Refusal::OtherClient),
            "someone else's key"
        );
        assert_eq!(
            sessions.check(&good, &[1; 32], &[6; 64]).err(),
            Some(Refusal::BadProof),
            "the proof of another handshake"
        );
        let unknown = Request {
            session: [0; SESSION_ID_LEN],
            ..good
        };
        assert_eq!(
            sessions.check(&unknown, &[1; 32], &hh).err(),
            Some(Refusal::Unknown)
        );
    }

    #[test]
    fn sessions_are_bounded_and_end_with_their_connection() {
        let sessions = Sessions::new(2);
        let a = sessions.register(entry(1, 1)).unwrap();
        assert!(
            sessions.register(entry(1, 1)).is_none(),
            "the same id twice"
        );
        let b = sessions.register(entry(2, 2)).unwrap();
        assert!(sessions.register(entry(3, 3)).is_none(), "past the bound");
        assert_eq!(sessions.len(), 2);
        drop(a);
        assert_eq!(sessions.len(), 1);
        let ticket = entry(1, 1).ticket;
        let hh = [5u8; 64];
        let request = Request {
            session: ticket.id,
            proof: ticket.proof(&hh),
        };
        assert_eq!(
            sessions.check(&request, &[1; 32], &hh).err(),
            Some(Refusal::Unknown),
            "an ended session cannot be resumed"
        );
        assert!(sessions.register(entry(3, 3)).is_some());
        drop(b);
    }
}
