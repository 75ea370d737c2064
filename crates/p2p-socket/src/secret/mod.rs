//! hyperswarm's secret stream on a byte stream, wire-compatible with
//! `@hyperswarm/secret-stream` and peeroxide-dht: after the Noise handshake each side sends
//! `[3-byte length = 56][32-byte stream id][24-byte header]`, then every message is
//! `[3-byte little-endian length][sealed message]` ([`cipher`]).
//!
//! Written for the bulk path: a message is sealed where it was read and opened where it
//! arrived ([`WriteHalf::buffer`], [`ReadHalf::next`]), a frame goes to the transport in one
//! write, and a read takes as many frames as the transport holds. Both buffers keep the
//! cipher's [`ROOM`] free in front of every message, so that neither side copies one. Memory per direction is one
//! buffer, sized for [`MESSAGE`] and growing only for a larger message a peer sends (at most
//! the 16 MiB a 3-byte length allows, shrunk back after it).

pub(crate) mod cipher;
mod transport;

use std::future::poll_fn;
use std::io;

use blake2::digest::consts::U32;
use blake2::digest::Mac;
use blake2::Blake2bMac;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use cipher::{Opener, Sealer, HEADER_LEN, OVERHEAD, ROOM};
pub(crate) use transport::{ChunkRead, Transport, UdxReadHalf, UdxWriteHalf};

/// The plaintext of one message we send, at most. Each message costs a frame header, a tag, a
/// MAC and a nonce setup; 64 KiB makes that under 0.1 % of the bytes, and keeps a connection's
/// send buffer small.
pub(crate) const MESSAGE: usize = 64 * 1024;
const LENGTH_LEN: usize = 3;
/// What one read from the transport takes at most (when no larger frame is pending): a few
/// messages at once.
const READ_BUFFER: usize = 2 * (LENGTH_LEN + OVERHEAD + MESSAGE);
const ID_LEN: usize = 32;
const ID_FRAME_BODY: usize = ID_LEN + HEADER_LEN;

/// How the secret stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SecretStreamError {
    /// The transport failed or ended in the middle of a frame.
    #[error("the transport under the secret stream failed")]
    Io(#[from] io::Error),
    /// The peer's first frame is not a stream id and header.
    #[error("the peer's secret stream header has {got} bytes, not {ID_FRAME_BODY}")]
    Header {
        /// Its length.
        got: usize,
    },
    /// The peer's stream id is not the one the handshake implies: not the peer we
    /// handshook with, or a confused one.
    #[error("the peer's secret stream id does not match the handshake")]
    StreamId,
    /// A message failed authentication.
    #[error(transparent)]
    Open(#[from] cipher::OpenError),
}

impl From<SecretStreamError> for io::Error {
    fn from(e: SecretStreamError) -> io::Error {
        match e {
            SecretStreamError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// The stream id each side proves it derived from the handshake: BLAKE2b-256 keyed with the
/// handshake hash, over the namespace of its role.
fn stream_id(handshake_hash: &[u8; 64], initiator: bool) -> [u8; ID_LEN] {
    let ns = peeroxide_dht::crypto::namespace("hyperswarm/secret-stream", &[0, 1]);
    let mut mac = <Blake2bMac<U32> as Mac>::new_from_slice(handshake_hash)
        .expect("BLAKE2b takes a 64-byte key");
    mac.update(&ns[usize::from(!initiator)]);
    mac.finalize().into_bytes().into()
}

/// An encrypted stream over `T`, ready to read and write.
pub(crate) struct SecretStream<T> {
    raw: T,
    read: ReadState,
    write: WriteState,
    remote_public_key: [u8; 32],
}

impl<T: Transport> SecretStream<T> {
    /// Exchanges stream ids and headers over `raw` with the keys a Noise handshake produced
    /// (hyperdht's `NoiseSecretStream` with `{ handshake }`).
    pub(crate) async fn from_session(
        initiator: bool,
        mut raw: T,
        tx: [u8; 32],
        rx: [u8; 32],
        handshake_hash: [u8; 64],
        remote_public_key: [u8; 32],
    ) -> Result<Self, SecretStreamError> {
        let (sealer, header) = Sealer::new(&tx);
        let mut first = [0u8; LENGTH_LEN + ID_FRAME_BODY];
        first[..LENGTH_LEN].copy_from_slice(&length_prefix(ID_FRAME_BODY));
        first[LENGTH_LEN..LENGTH_LEN + ID_LEN]
            .copy_from_slice(&stream_id(&handshake_hash, initiator));
        first[LENGTH_LEN + ID_LEN..].copy_from_slice(&header);
        raw.write_all(&first).await?;

        let mut read = ReadState::new();
        let at = read
            .frame_at(&mut raw)
            .await?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let (buf, a, b) = read.locate(&at);
        let body = &buf[a..b];
        if body.len() != ID_FRAME_BODY {
            return Err(SecretStreamError::Header { got: body.len() });
        }
        if body[..ID_LEN] != stream_id(&handshake_hash, !initiator) {
            return Err(SecretStreamError::StreamId);
        }
        let header: [u8; HEADER_LEN] = body[ID_LEN..].try_into().expect("24 bytes");
        read.opener = Some(Box::new(Opener::new(&rx, &header)));
        Ok(SecretStream {
            raw,
            read,
            write: WriteState::new(sealer),
            remote_public_key,
        })
    }

    /// The key the peer proved in the handshake.
    pub(crate) fn remote_public_key(&self) -> &[u8; 32] {
        &self.remote_public_key
    }

    /// A read half and a write half that can be driven at the same time.
    pub(crate) fn into_split(self) -> (ReadHalf<T::Read>, WriteHalf<T::Write>) {
        let (r, w) = self.raw.split();
        (
            ReadHalf {
                raw: r,
                state: self.read,
            },
            WriteHalf {
                raw: w,
                state: self.write,
            },
        )
    }
}

fn length_prefix(len: usize) -> [u8; LENGTH_LEN] {
    let b = (len as u32).to_le_bytes();
    [b[0], b[1], b[2]]
}

/// Frames from the transport, opened where the transport put them.
///
/// The transport hands over its received bytes as they lie ([`ChunkRead`]); chunks of one
/// allocation follow each other in memory and are joined without a copy. A frame is opened in
/// place when its bytes lie in one run with the cipher's [`ROOM`] in front (the end of the
/// frame before it, consumed by then). One that does not (it straddles two allocations, or
/// starts one) is copied into `joined` first: one frame per allocation of the transport.
struct ReadState {
    /// One run of the transport's bytes: `buf[..start]` is consumed (what the cipher may
    /// clobber as the room before the next frame), `buf[start..]` is not.
    buf: BytesMut,
    start: usize,
    /// A frame being put together by copying, laid out as `[FRAME_AT bytes][length][body]`,
    /// so that its body has the room in front; empty when there is none.
    joined: BytesMut,
    /// `joined` holds a frame that was handed out: cleared before the next.
    joined_taken: bool,
    /// Known once the peer's header arrived. Boxed: the key is larger than the rest of a
    /// stream's reading state, and a connection in waiting is moved around whole.
    opener: Option<Box<Opener>>,
}

/// Where the next frame's body lies.
enum Body {
    /// `buf[a..b]`.
    InPlace(usize, usize),
    /// `joined[ROOM..]`.
    Joined,
}

fn frame_len(prefix: &[u8]) -> usize {
    usize::from(prefix[0]) | usize::from(prefix[1]) << 8 | usize::from(prefix[2]) << 16
}

/// The size of the frame that `start` begins, as far as it is known: its length prefix and
/// body once the prefix is there, the prefix alone before.
fn known_frame_size(start: &[u8]) -> usize {
    if start.len() >= LENGTH_LEN {
        LENGTH_LEN + frame_len(start)
    } else {
        LENGTH_LEN
    }
}

impl ReadState {
    fn new() -> ReadState {
        ReadState {
            buf: BytesMut::new(),
            start: 0,
            joined: BytesMut::new(),
            joined_taken: false,
            opener: None,
        }
    }

    /// The next frame's body (`None` at a clean end between frames), and where it lies.
    async fn frame_at<R: ChunkRead>(&mut self, raw: &mut R) -> io::Result<Option<Body>> {
        if std::mem::take(&mut self.joined_taken) {
            self.joined.clear();
            if self.joined.capacity() > FRAME_AT + LENGTH_LEN + OVERHEAD + MESSAGE {
                // A larger frame than we send: its memory goes with it.
                self.joined = BytesMut::new();
            }
        }
        loop {
            if let Some(body) = self.complete() {
                return Ok(Some(body));
            }
            match poll_fn(|cx| raw.poll_read_chunk(cx, READ_BUFFER)).await? {
                Some(chunk) => self.push(chunk),
                None if self.joined.is_empty() && self.start == self.buf.len() => return Ok(None),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer ended its stream in the middle of a message",
                    ))
                }
            }
        }
    }

    /// The next frame, if all of it is here.
    fn complete(&mut self) -> Option<Body> {
        if self.joined.is_empty() {
            let have = self.buf.len() - self.start;
            if have < LENGTH_LEN {
                return None;
            }
            let len = frame_len(&self.buf[self.start..]);
            if self.start + LENGTH_LEN >= ROOM {
                if have < LENGTH_LEN + len {
                    return None;
                }
                let at = self.start + LENGTH_LEN;
                self.start = at + len;
                return Some(Body::InPlace(at, at + len));
            }
            // No room in front: the frame starts the transport's allocation.
            self.joined.reserve(FRAME_AT + LENGTH_LEN + len);
            self.joined.resize(FRAME_AT, 0);
        }
        // Copy into `joined` what the frame still lacks: its length first, then its body.
        loop {
            let got = self.joined.len() - FRAME_AT;
            let frame = known_frame_size(&self.joined[FRAME_AT..]);
            if got == frame && got >= LENGTH_LEN {
                self.joined_taken = true;
                return Some(Body::Joined);
            }
            let n = (frame - got).min(self.buf.len() - self.start);
            if n == 0 {
                return None;
            }
            self.joined
                .extend_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
        }
    }

    /// The buffer a frame's body lies in, and where in it.
    fn locate(&mut self, body: &Body) -> (&mut [u8], usize, usize) {
        match *body {
            Body::InPlace(a, b) => (&mut self.buf, a, b),
            Body::Joined => {
                let b = self.joined.len();
                (&mut self.joined, ROOM, b)
            }
        }
    }

    /// Takes a chunk from the transport in.
    fn push(&mut self, chunk: BytesMut) {
        let follows = self.buf.as_ptr().wrapping_add(self.buf.len()) == chunk.as_ptr();
        if follows && !self.buf.is_empty() {
            // Keep only the room the next frame is opened in, of what is consumed.
            if self.start > ROOM {
                self.buf.advance(self.start - ROOM);
                self.start = ROOM;
            }
            // No copy: the chunk lies right behind (in the same allocation; otherwise this
            // copies, which is correct too).
            self.buf.unsplit(chunk);
            return;
        }
        // A new run of memory: the start of a frame that is not consumed yet goes into
        // `joined` (where `complete` goes on with the new run's bytes).
        if self.joined.is_empty() && self.start < self.buf.len() {
            let rest = &self.buf[self.start..];
            let frame = known_frame_size(rest);
            self.joined.reserve(FRAME_AT + frame);
            self.joined.resize(FRAME_AT, 0);
            self.joined.extend_from_slice(rest);
        }
        self.buf = chunk;
        self.start = 0;
    }
}

/// The read half of a [`SecretStream`].
pub(crate) struct ReadHalf<R> {
    raw: R,
    state: ReadState,
}

impl<R: ChunkRead> ReadHalf<R> {
    /// The next message's plaintext, opened where it arrived; `None` once the peer ended its
    /// side. Empty messages (keepalives) are skipped, as Node does.
    pub(crate) async fn next(&mut self) -> Result<Option<&mut [u8]>, SecretStreamError> {
        let state = &mut self.state;
        let (at, len) = loop {
            let Some(body) = state.frame_at(&mut self.raw).await? else {
                return Ok(None);
            };
            let mut opener = state.opener.take().expect("set before the halves exist");
            let (buf, a, b) = state.locate(&body);
            let opened = opener.open(&mut buf[a - ROOM..b]).map(|m| m.len());
            state.opener = Some(opener);
            let len = opened?;
            if len > 0 {
                break (body, len);
            }
        };
        let (buf, a, _) = state.locate(&at);
        Ok(Some(&mut buf[a + 1..a + 1 + len]))
    }

    /// Like [`ReadHalf::next`], as an owned buffer.
    pub(crate) async fn read(&mut self) -> Result<Option<Vec<u8>>, SecretStreamError> {
        Ok(self.next().await?.map(|m| m.to_vec()))
    }
}

/// One frame being assembled: `[room][length][tag][plaintext ...][MAC]`, the length inside
/// the cipher's room (written once the message is sealed).
struct WriteState {
    sealer: Sealer,
    /// Allocated on the first write.
    frame: Vec<u8>,
    /// `frame[unsent..sealed]` is sealed and not yet written: a write cancelled in the
    /// middle of a frame leaves the rest here, and the next write finishes it first, so the
    /// peer never sees half a frame followed by another.
    unsent: usize,
    sealed: usize,
}

const PLAINTEXT_AT: usize = ROOM + 1;
/// Where the frame that goes on the wire starts.
const FRAME_AT: usize = ROOM - LENGTH_LEN;

impl WriteState {
    fn new(sealer: Sealer) -> WriteState {
        WriteState {
            sealer,
            frame: Vec::new(),
            unsent: 0,
            sealed: 0,
        }
    }

    fn buffer(&mut self) -> &mut [u8] {
        debug_assert_eq!(self.unsent, self.sealed, "the last frame went out first");
        if self.frame.is_empty() {
            self.frame = vec![0u8; PLAINTEXT_AT + MESSAGE + OVERHEAD - 1];
        }
        &mut self.frame[PLAINTEXT_AT..PLAINTEXT_AT + MESSAGE]
    }

    /// Seals the first `n` bytes of [`WriteState::buffer`] into the frame to write next.
    fn seal(&mut self, n: usize) {
        let end = PLAINTEXT_AT + n + OVERHEAD - 1;
        self.sealer.seal(&mut self.frame[..end]);
        self.frame[FRAME_AT..ROOM].copy_from_slice(&length_prefix(n + OVERHEAD));
        (self.unsent, self.sealed) = (FRAME_AT, end);
    }
}

/// The write half of a [`SecretStream`].
pub(crate) struct WriteHalf<W> {
    raw: W,
    state: WriteState,
}

impl<W: AsyncWrite + Unpin> WriteHalf<W> {
    /// Where the next message's plaintext goes ([`MESSAGE`] bytes); [`WriteHalf::send`] seals
    /// and sends what was put there. After a cancelled write, [`WriteHalf::ready`] first.
    pub(crate) fn buffer(&mut self) -> &mut [u8] {
        self.state.buffer()
    }

    /// Seals the first `n` bytes of [`WriteHalf::buffer`] and writes the frame. Cancelled
    /// half way, the rest of the frame goes out with the next write.
    pub(crate) async fn send(&mut self, n: usize) -> io::Result<()> {
        assert!(n <= MESSAGE, "a message fits the buffer");
        self.state.buffer();
        self.state.seal(n);
        self.ready().await
    }

    /// Finishes writing a frame whose write was cancelled; at once when there is none.
    pub(crate) async fn ready(&mut self) -> io::Result<()> {
        let state = &mut self.state;
        while state.unsent < state.sealed {
            let n = self
                .raw
                .write(&state.frame[state.unsent..state.sealed])
                .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            state.unsent += n;
        }
        Ok(())
    }

    /// Sends `data` as one message, or as several of [`MESSAGE`] bytes when it is longer. An
    /// empty one is a keepalive, which the peer skips. Cancelled, it sent some of the
    /// messages, or none, and never part of one.
    pub(crate) async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.ready().await?;
        if data.is_empty() {
            return self.send(0).await;
        }
        for chunk in data.chunks(MESSAGE) {
            self.buffer()[..chunk.len()].copy_from_slice(chunk);
            self.send(chunk.len()).await?;
        }
        Ok(())
    }

    /// Ends our side: the peer reads the end once it has every message before it.
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        self.ready().await?;
        self.raw.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The largest frame a 3-byte length allows.
    const MAX_FRAME: usize = 0xFF_FF_FF;
    const HASH: [u8; 64] = [7; 64];

    async fn pair() -> (
        SecretStream<tokio::io::DuplexStream>,
        SecretStream<tokio::io::DuplexStream>,
    ) {
        pair_over(1 << 20).await
    }

    /// Two ends over a pipe that holds `capacity` bytes.
    async fn pair_over(
        capacity: usize,
    ) -> (
        SecretStream<tokio::io::DuplexStream>,
        SecretStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(capacity);
        let (tx, rx) = ([1u8; 32], [2u8; 32]);
        let (a, b) = tokio::join!(
            SecretStream::from_session(true, a, tx, rx, HASH, [0; 32]),
            SecretStream::from_session(false, b, rx, tx, HASH, [0; 32]),
        );
        (a.unwrap(), b.unwrap())
    }

    #[tokio::test]
    async fn messages_of_every_size_arrive_in_order() {
        let (a, b) = pair().await;
        messages_arrive_in_order(a, b).await;
    }

    /// Frames that arrive a few hundred bytes at a time are read up to their end and no
    /// further, which must not lose or reorder any (the small ones then come in one read).
    #[tokio::test]
    async fn messages_that_arrive_in_small_pieces_arrive_in_order() {
        let (a, b) = pair_over(777).await;
        messages_arrive_in_order(a, b).await;
    }

    async fn messages_arrive_in_order(
        a: SecretStream<tokio::io::DuplexStream>,
        b: SecretStream<tokio::io::DuplexStream>,
    ) {
        let (_, mut w) = a.into_split();
        let (mut r, _) = b.into_split();
        let sizes = [1usize, 17, MESSAGE, MESSAGE + 1, 3 * MESSAGE + 5, 1000];
        let sender = tokio::spawn(async move {
            for (i, n) in sizes.iter().enumerate() {
                w.write(&vec![i as u8; *n]).await.unwrap();
            }
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        while let Some(m) = r.next().await.unwrap() {
            got.extend_from_slice(m);
        }
        sender.await.unwrap();
        let want: Vec<u8> = sizes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| std::iter::repeat_n(i as u8, *n))
            .collect();
        assert_eq!(got, want);
    }

    /// A peer may send a message as large as the 3-byte length allows; the buffer grows for
    /// it and shrinks back after.
    #[tokio::test]
    async fn a_maximal_message_from_the_peer_is_read_and_the_buffer_shrinks_back() {
        let (a, b) = pair().await;
        let (_, mut w) = a.into_split();
        let (mut r, _) = b.into_split();
        let big = MAX_FRAME - OVERHEAD;
        tokio::spawn(async move {
            let mut frame = vec![0u8; ROOM + MAX_FRAME];
            frame[PLAINTEXT_AT..PLAINTEXT_AT + big].fill(9);
            w.state.sealer.seal(&mut frame);
            frame[FRAME_AT..ROOM].copy_from_slice(&length_prefix(MAX_FRAME));
            w.raw.write_all(&frame[FRAME_AT..]).await.unwrap();
            w.write(b"small").await.unwrap();
        });
        let m = r.next().await.unwrap().unwrap();
        assert_eq!(m.len(), big);
        assert!(m.iter().all(|&b| b == 9));
        assert_eq!(r.next().await.unwrap().unwrap(), b"small");
        assert!(
            r.state.joined.capacity() < READ_BUFFER && r.state.buf.capacity() < READ_BUFFER,
            "the large frame's memory went with it"
        );
    }

    /// A transport that hands out its bytes as UDX does: allocations of `allocation` bytes,
    /// each cut in chunks of assorted sizes that lie next to each other.
    struct Chunked {
        chunks: std::collections::VecDeque<BytesMut>,
    }

    impl Chunked {
        /// Also says where the allocations start.
        fn new(bytes: &[u8], allocation: usize, seed: &mut u32) -> (Chunked, Vec<usize>) {
            let mut chunks = std::collections::VecDeque::new();
            let mut allocations = Vec::new();
            for piece in bytes.chunks(allocation) {
                let mut alloc = BytesMut::with_capacity(allocation);
                alloc.extend_from_slice(piece);
                allocations.push(alloc.as_ptr() as usize);
                while !alloc.is_empty() {
                    *seed ^= *seed << 13;
                    *seed ^= *seed >> 17;
                    *seed ^= *seed << 5;
                    let n = [1, 3, 70, 1452, 20_000, 100_000][*seed as usize % 6];
                    chunks.push_back(alloc.split_to(n.min(alloc.len())));
                }
            }
            (Chunked { chunks }, allocations)
        }
    }

    impl ChunkRead for Chunked {
        fn poll_read_chunk(
            &mut self,
            _cx: &mut std::task::Context<'_>,
            max: usize,
        ) -> std::task::Poll<io::Result<Option<BytesMut>>> {
            let chunk = self.chunks.front_mut().map(|front| {
                if front.len() > max {
                    front.split_to(max)
                } else {
                    std::mem::take(front)
                }
            });
            if self.chunks.front().is_some_and(|c| c.is_empty()) {
                self.chunks.pop_front();
            }
            std::task::Poll::Ready(Ok(chunk))
        }
    }

    /// Messages whose bytes arrive in chunks that lie next to each other are opened where
    /// they lie, all but those at the start of an allocation, which are copied; none is
    /// lost, reordered or corrupted either way.
    #[tokio::test]
    async fn messages_in_one_run_of_memory_are_opened_where_they_lie() {
        const ALLOCATION: usize = 512 << 10;
        let (sealer, header) = Sealer::new(&[1; 32]);
        let mut w = WriteHalf {
            raw: Vec::new(),
            state: WriteState::new(sealer),
        };
        let mut seed = 0x9e37_79b9_u32;
        let mut sent = Vec::new();
        for i in 0..200u32 {
            let n = match i % 5 {
                0 => 1,
                1 => 100,
                _ => MESSAGE,
            };
            let message: Vec<u8> = (0..n).map(|j| (i as usize * 7 + j) as u8).collect();
            w.write(&message).await.unwrap();
            sent.push(message);
        }
        let (raw, allocations) = Chunked::new(&w.raw, ALLOCATION, &mut seed);
        let mut r = ReadHalf {
            raw,
            state: ReadState::new(),
        };
        r.state.opener = Some(Box::new(Opener::new(&[1; 32], &header)));
        let mut in_place = 0;
        for message in &sent {
            let got = r.next().await.unwrap().expect("a message");
            assert_eq!(&got[..], &message[..]);
            let at = got.as_ptr() as usize;
            in_place += usize::from(
                allocations
                    .iter()
                    .any(|&start| (start..start + ALLOCATION).contains(&at)),
            );
        }
        assert!(r.next().await.unwrap().is_none(), "a clean end");
        // Per allocation, the frame across its start, and the one after it when that
        // leaves less than the room in front of it.
        let straddling = 2 * (w.raw.len() / ALLOCATION + 1);
        assert!(
            in_place >= sent.len() - straddling,
            "{in_place} of {} opened in place",
            sent.len()
        );
    }

    /// The mux writes from whichever task has a frame, and such a task may be cancelled in
    /// the middle of a write: the rest of that frame must go out before the next one.
    #[tokio::test]
    async fn a_write_cancelled_half_way_is_finished_by_the_next() {
        let (a, b) = pair_over(1024).await;
        let (_, mut w) = a.into_split();
        let (mut r, _) = b.into_split();
        let first = vec![1u8; 10_000];
        let cut = tokio::time::timeout(Duration::from_millis(50), w.write(&first)).await;
        assert!(
            cut.is_err(),
            "the pipe holds 1 KiB: the write waits, and is cancelled"
        );
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = r.next().await.unwrap() {
                got.push(m.to_vec());
            }
            got
        });
        w.write(b"second").await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), vec![first, b"second".to_vec()]);
    }

    #[tokio::test]
    async fn a_wrong_stream_id_or_header_is_refused() {
        let (a, mut b) = tokio::io::duplex(4096);
        let local = tokio::spawn(async move {
            SecretStream::from_session(true, a, [1; 32], [2; 32], HASH, [0; 32]).await
        });
        let mut frame = vec![0u8; LENGTH_LEN + ID_FRAME_BODY];
        frame[..LENGTH_LEN].copy_from_slice(&length_prefix(ID_FRAME_BODY));
        b.write_all(&frame).await.unwrap();
        assert!(matches!(
            local.await.unwrap(),
            Err(SecretStreamError::StreamId)
        ));

        let (a, mut b) = tokio::io::duplex(4096);
        let local = tokio::spawn(async move {
            SecretStream::from_session(true, a, [1; 32], [2; 32], HASH, [0; 32]).await
        });
        b.write_all(&[3, 0, 0, 1, 2, 3]).await.unwrap();
        assert!(matches!(
            local.await.unwrap(),
            Err(SecretStreamError::Header { got: 3 })
        ));
    }

    #[tokio::test]
    async fn a_forged_message_or_a_cut_frame_fails() {
        let (a, b) = pair().await;
        let (_, mut w) = a.into_split();
        let (mut r, _) = b.into_split();
        let mut frame = vec![0u8; LENGTH_LEN + 20 + OVERHEAD];
        frame[..LENGTH_LEN].copy_from_slice(&length_prefix(20 + OVERHEAD));
        w.raw.write_all(&frame).await.unwrap();
        assert!(matches!(r.next().await, Err(SecretStreamError::Open(_))));

        let (a, b) = pair().await;
        let (_, mut w) = a.into_split();
        let (mut r, _) = b.into_split();
        w.raw.write_all(&[100, 0, 0, 1, 2]).await.unwrap();
        w.shutdown().await.unwrap();
        match r.next().await {
            Err(SecretStreamError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("a cut frame: {:?}", other.map(|m| m.map(|m| m.len()))),
        }
    }
}
