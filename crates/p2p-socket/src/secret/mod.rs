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

use std::io;

use blake2::digest::consts::U32;
use blake2::digest::Mac;
use blake2::Blake2bMac;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use cipher::{Opener, Sealer, HEADER_LEN, OVERHEAD, ROOM};

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

impl<T: AsyncRead + AsyncWrite + Unpin> SecretStream<T> {
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
        let body = read
            .frame(&mut raw)
            .await?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        if body.len() != ID_FRAME_BODY {
            return Err(SecretStreamError::Header { got: body.len() });
        }
        if body[..ID_LEN] != stream_id(&handshake_hash, !initiator) {
            return Err(SecretStreamError::StreamId);
        }
        let header: [u8; HEADER_LEN] = body[ID_LEN..].try_into().expect("24 bytes");
        read.opener = Some(Opener::new(&rx, &header));
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
    pub(crate) fn into_split(
        self,
    ) -> (
        ReadHalf<tokio::io::ReadHalf<T>>,
        WriteHalf<tokio::io::WriteHalf<T>>,
    ) {
        let (r, w) = tokio::io::split(self.raw);
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

/// Frames from the transport, several per read.
struct ReadState {
    /// Allocated on the first read: an idle connection holds none. Reads land from [`ROOM`]
    /// on, so every message has the room the cipher opens it in: that, or the frames before
    /// it, which are consumed.
    buf: Vec<u8>,
    /// `buf[start..end]` arrived and is not consumed yet.
    start: usize,
    end: usize,
    /// Known once the peer's header arrived.
    opener: Option<Opener>,
}

impl ReadState {
    fn new() -> ReadState {
        ReadState {
            buf: Vec::new(),
            start: ROOM,
            end: ROOM,
            opener: None,
        }
    }

    /// The next frame's body (`None` at a clean end between frames), or where it lies in
    /// `buf`.
    async fn frame_at<R: AsyncRead + Unpin>(
        &mut self,
        raw: &mut R,
    ) -> io::Result<Option<(usize, usize)>> {
        loop {
            let have = self.end - self.start;
            let upto = if have >= LENGTH_LEN {
                let b = &self.buf[self.start..];
                let len = usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16;
                if have >= LENGTH_LEN + len {
                    let at = self.start + LENGTH_LEN;
                    self.start = at + len;
                    return Ok(Some((at, at + len)));
                }
                self.make_room(LENGTH_LEN + len);
                // No further than this frame's end: once it is consumed the buffer is empty
                // and the next read lands at its front again, so a frame that arrives in
                // parts is never moved there (a move of up to 64 KiB per message before).
                self.start + LENGTH_LEN + len
            } else {
                self.make_room(LENGTH_LEN);
                self.buf.len()
            };
            let n = raw.read(&mut self.buf[self.end..upto]).await?;
            if n == 0 {
                return if self.start == self.end {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer ended its stream in the middle of a message",
                    ))
                };
            }
            self.end += n;
        }
    }

    async fn frame<R: AsyncRead + Unpin>(&mut self, raw: &mut R) -> io::Result<Option<&mut [u8]>> {
        Ok(self.frame_at(raw).await?.map(|(a, b)| &mut self.buf[a..b]))
    }

    /// Makes `buf[start..]` hold at least `frame` bytes: moves what is unread to the front and
    /// sizes the buffer for the usual read, or for one larger frame (the length prefix says
    /// how large: at most the 16 MiB a 3-byte length allows).
    fn make_room(&mut self, frame: usize) {
        if self.start == self.end {
            self.start = ROOM;
            self.end = ROOM;
        }
        let want = ROOM + frame.max(READ_BUFFER);
        let fits = self.buf.len() >= self.start + frame && self.end < self.buf.len();
        if fits && self.buf.len() <= want {
            return;
        }
        // What is unread is less than the frame it belongs to, so `want` holds it: the usual
        // size again after a large frame, or one large enough for the frame now.
        if self.buf.len() < want {
            self.buf.reserve_exact(want - self.buf.len());
            self.buf.resize(want, 0);
        }
        self.buf.copy_within(self.start..self.end, ROOM);
        self.end -= self.start - ROOM;
        self.start = ROOM;
        if self.buf.len() > want {
            self.buf.truncate(want);
            self.buf.shrink_to_fit();
        }
    }
}

/// The read half of a [`SecretStream`].
pub(crate) struct ReadHalf<R> {
    raw: R,
    state: ReadState,
}

impl<R: AsyncRead + Unpin> ReadHalf<R> {
    /// The next message's plaintext, opened where it arrived; `None` once the peer ended its
    /// side. Empty messages (keepalives) are skipped, as Node does.
    pub(crate) async fn next(&mut self) -> Result<Option<&mut [u8]>, SecretStreamError> {
        let range = loop {
            let Some((a, b)) = self.state.frame_at(&mut self.raw).await? else {
                return Ok(None);
            };
            let opener = self
                .state
                .opener
                .as_mut()
                .expect("set before the halves exist");
            let len = opener.open(&mut self.state.buf[a - ROOM..b])?.len();
            if len > 0 {
                break (a + 1, a + 1 + len);
            }
        };
        Ok(Some(&mut self.state.buf[range.0..range.1]))
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
        assert_eq!(
            r.state.buf.len(),
            ROOM + READ_BUFFER,
            "back to the usual size"
        );
        assert!(
            r.state.buf.capacity() < 2 * READ_BUFFER,
            "and its memory freed"
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
