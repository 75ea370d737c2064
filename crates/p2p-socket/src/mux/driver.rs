//! Runs [`proto`](super::proto) on an encrypted connection: one task reads the peer's frames
//! and hands each stream its data, and each local connection is piped to its stream by
//! [`pipe_stream`](super::pipe::pipe_stream), which writes the stream's frames itself
//! ([`outgoing`](super::outgoing)); one more task writes the control frames nobody else did.
//!
//! Control frames (OPEN, WINDOW, RESET, CLOSE) go before any data written after them, so a
//! bulk transfer does not hold up another stream's window update or a new stream.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncRead;
use tokio::sync::{mpsc, watch, MutexGuard, Notify};
use tracing::{debug, warn};

use super::deliver::Delivery;
use super::outgoing::{Out, Outgoing};
use super::proto::{self, Event, Limits, Role, Session, HEADER, MAX_DATA};
use crate::farewell::Guard;
use crate::identity::PublicKey;
use crate::lock::lock;
use crate::peer::{Path, PeerStream};

/// Who a stream's connection is with, as events report it: the peer's key, the path, and its
/// address where known.
pub(crate) type Opening = (PublicKey, Path, Option<SocketAddr>);

/// A stream reads its local connection into this much at first (see
/// [`pipe_stream`](super::pipe::pipe_stream)).
pub(super) const FIRST_READ: usize = 4096;

// Every frame goes out as one secret-stream message, so the peer reads it whole.
const _: () = assert!(HEADER + MAX_DATA <= crate::secret::MESSAGE);

/// What a stream's pipe gets; the channel ending without [`Incoming::Fin`] means the stream
/// was reset or the connection is gone.
pub(super) enum Incoming {
    /// The peer's bytes the local connection did not take at once ([`Delivery`]).
    Data(Vec<u8>),
    Fin,
}

pub(super) struct StreamIo {
    incoming: mpsc::UnboundedSender<Incoming>,
    delivery: Arc<Delivery>,
    /// Woken when the stream gets credit, or ends.
    wake: Arc<Notify>,
}

pub(super) struct Inner {
    session: Session,
    pub(super) streams: HashMap<u32, StreamIo>,
    /// Why the connection ended, once it has.
    pub(super) closed: Option<String>,
    /// When the peer's last frame arrived (or the connection started).
    pub(super) heard: Instant,
    /// When a stream last sent data.
    pub(super) sent: Instant,
    /// Both sides agreed on PING frames.
    pub(super) pinging: bool,
    /// Our last PING's number and when it went.
    pub(super) pinged: (u32, Instant),
    /// The round trip of the last PING answered, once one was.
    pub(super) rtt: Option<Duration>,
    /// No new streams go on this connection; it ends with its last stream.
    pub(super) retired: bool,
    /// Roaming is moving this connection to a new path ([`super::live::Resuming`]): a silent
    /// peer is what it is fixing, so the watchdog leaves the connection to it.
    pub(super) resuming: bool,
}

pub(super) struct Shared {
    pub(super) inner: Mutex<Inner>,
    pub(super) out: Outgoing,
    pub(super) closed: watch::Sender<bool>,
    /// The number of the last PONG the peer sent.
    pub(super) pongs: watch::Sender<u32>,
}

impl Shared {
    /// Why the connection ended, once it has.
    pub(super) fn closed_reason(&self) -> Option<String> {
        lock(&self.inner).closed.clone()
    }

    /// Ends the connection: every stream fails at once, the tasks stop.
    pub(super) fn shut(&self, why: String) {
        self.shut_locked(&mut lock(&self.inner), why);
    }

    fn shut_locked(&self, inner: &mut Inner, why: String) {
        if inner.closed.is_some() {
            return;
        }
        debug!(%why, streams = inner.streams.len(), "multiplexed connection ended");
        for (_, io) in inner.streams.drain() {
            io.wake.notify_one();
        }
        inner.closed = Some(why);
        let _ = self.closed.send(true);
    }

    /// Stream `id` is gone: its reader and waker go, the session forgets it, and a retired
    /// connection ends with its last stream.
    fn forget(&self, inner: &mut Inner, id: u32) {
        inner.session.forget(id);
        if let Some(io) = inner.streams.remove(&id) {
            io.wake.notify_one();
        }
        if inner.retired && inner.streams.is_empty() {
            let why = "its last stream ended, and new ones go on a new connection";
            self.out.control_now(proto::close(why));
            self.shut_locked(inner, why.to_string());
        }
    }

    /// Hands the peer's message to the session; an error ends the connection.
    fn on_message(
        self: &Arc<Self>,
        message: &[u8],
        accepted: &mpsc::Sender<MuxStream>,
    ) -> Result<(), String> {
        let frame = proto::decode(message).map_err(|v| self.violated(v))?;
        let mut inner = lock(&self.inner);
        inner.heard = Instant::now();
        let event = inner.session.receive(frame).map_err(|v| self.violated(v))?;
        match event {
            Event::Opened(id) => {
                let (stream, io) = MuxStream::new(id, self);
                inner.streams.insert(id, io);
                if accepted.try_send(stream).is_err() {
                    // The server stopped taking streams (it is closing).
                    inner.streams.remove(&id);
                    inner.session.forget(id);
                    self.control_now(proto::reset(id))?;
                } else if let Some(grant) = inner.session.head_start(id) {
                    self.control_now(proto::window(id, grant))?;
                }
            }
            Event::Refused(id) => {
                warn!(
                    stream = id,
                    open = inner.session.open_streams(),
                    "refused a stream: the peer has the most open at once on this connection; it may open more once some end"
                );
                self.control_now(proto::reset(id))?;
            }
            Event::Data(id, bytes) => {
                let delivery = inner.streams.get(&id).map(|io| Arc::clone(&io.delivery));
                // The write is a system call: not under the lock, which every stream's pipe
                // takes for each message it sends.
                drop(inner);
                self.deliver(id, bytes, delivery)?;
            }
            Event::Fin(id) => {
                // The stream's pipe forgets it once both directions ended.
                if let Some(io) = inner.streams.get(&id) {
                    let _ = io.incoming.send(Incoming::Fin);
                }
            }
            Event::Reset(id) => self.forget(&mut inner, id),
            Event::Credit(id) => {
                if let Some(io) = inner.streams.get(&id) {
                    io.wake.notify_one();
                }
            }
            Event::Closed(reason) => return Err(format!("the peer closed it: {reason}")),
            Event::Ping(n) => self.control_now(proto::pong(n))?,
            Event::Pong(n) => {
                let (sent, at) = inner.pinged;
                if n == sent {
                    inner.rtt = Some(at.elapsed());
                }
                self.pongs.send_if_modified(|last| {
                    let newer = n > *last;
                    *last = (*last).max(n);
                    newer
                });
            }
            Event::Late => {}
        }
        Ok(())
    }

    /// Writes the peer's `bytes` for stream `id` into its local connection, and hands what it
    /// did not take to the stream's pipe.
    fn deliver(
        &self,
        id: u32,
        bytes: &[u8],
        delivery: Option<Arc<Delivery>>,
    ) -> Result<(), String> {
        let written = delivery.as_ref().map_or(0, |d| d.write_now(bytes));
        let mut inner = lock(&self.inner);
        if written > 0 {
            if let Some(grant) = inner.session.taken(id, written) {
                self.control_now(proto::window(id, grant))?;
            }
        }
        if written == bytes.len() {
            return Ok(());
        }
        let queued = inner.streams.get(&id).is_some_and(|io| {
            io.delivery.queue();
            let rest = bytes[written..].to_vec();
            io.incoming.send(Incoming::Data(rest)).is_ok()
        });
        if !queued {
            // Its pipe is gone: the stream ends, so the peer stops sending.
            self.control_now(proto::reset(id))?;
            self.forget(&mut inner, id);
        }
        Ok(())
    }

    fn violated(&self, v: proto::Violation) -> String {
        warn!(error = %v, "the peer broke the multiplexing protocol; closing the connection");
        self.out.control_now(proto::close(&v.to_string()));
        format!("protocol violation: {v}")
    }

    /// Queues a control frame from the reader, which must not wait on the writer.
    fn control_now(&self, frame: Vec<u8>) -> Result<(), String> {
        if self.out.control_now(frame) {
            Ok(())
        } else {
            Err("the peer sends control frames but does not read ours".to_string())
        }
    }

    /// The right to write a stream's frames from the stream's own task, once the control
    /// frames queued before went out; none once the connection ended (after its CLOSE).
    async fn writing(&self) -> io::Result<MutexGuard<'_, Out>> {
        let mut out = self.out.lock().await;
        if let Some(why) = self.closed_reason() {
            return Err(gone(&Some(why)));
        }
        out.control().await.map_err(|e| self.write_failed(e))?;
        Ok(out)
    }

    /// Ends the connection after a failed write; the stream's error.
    fn write_failed(&self, e: io::Error) -> io::Error {
        self.shut(format!("writing to the peer failed: {e}"));
        gone(&self.closed_reason())
    }
}

/// A multiplexed connection. Clones share it.
#[derive(Clone)]
pub(crate) struct Mux {
    pub(super) shared: Arc<Shared>,
}

impl Mux {
    /// Starts multiplexing on `peer`; `pinging` when both sides named the PING feature in the
    /// handshake. A server gets each stream the peer opens from the receiver, which ends with
    /// the connection. When `guard` says we stop, the peer gets a CLOSE.
    pub(crate) fn start(
        peer: PeerStream,
        role: Role,
        limits: Limits,
        pinging: bool,
        guard: Guard,
    ) -> (Mux, mpsc::Receiver<MuxStream>) {
        let (mut reader, writer) = peer.into_split();
        let (closed, closed_rx) = watch::channel(false);
        let (accepted_tx, accepted) = mpsc::channel(limits.max_streams.max(1));
        let started = Instant::now();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                session: Session::new(role, limits).pinging(pinging),
                streams: HashMap::new(),
                closed: None,
                heard: started,
                // Not after `heard`: a new connection owes us nothing.
                sent: started,
                pinging,
                pinged: (0, started),
                resuming: false,
                rtt: None,
                retired: false,
            }),
            out: Outgoing::new(writer, limits.max_streams),
            closed,
            pongs: watch::channel(0).0,
        });
        let reading = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut closed = reading.closed.subscribe();
            let why = loop {
                let message = tokio::select! {
                    _ = closed.changed() => return,
                    m = reader.next() => m,
                };
                let result = match message {
                    Ok(Some(m)) => reading.on_message(m, &accepted_tx),
                    Ok(None) => Err("the peer ended the connection".to_string()),
                    Err(e) => Err(format!("reading from the peer failed: {e}")),
                };
                if let Err(why) = result {
                    break why;
                }
            };
            reading.shut(why);
        });
        tokio::spawn(write_loop(Arc::clone(&shared), closed_rx, guard));
        let mux = Mux { shared };
        if pinging && role == Role::Client {
            // The round trip, measured now, bounds how long a later liveness probe waits.
            mux.ping();
            tokio::spawn(mux.clone().watchdog());
        }
        (mux, accepted)
    }

    /// Opens a stream, or none when the connection ended or carries the most it may.
    pub(crate) async fn open(&self) -> Option<MuxStream> {
        let (stream, head_start) = {
            let mut inner = lock(&self.shared.inner);
            if inner.closed.is_some() || inner.retired {
                return None;
            }
            let id = inner.session.open()?;
            let (stream, io) = MuxStream::new(id, &self.shared);
            inner.streams.insert(id, io);
            let head_start = inner.session.head_start(id);
            (stream, head_start)
        };
        // On the control queue, which the writer empties first: the OPEN goes before the
        // stream's data, and its head start right after it.
        let frames = std::iter::once(proto::open(stream.id))
            .chain(head_start.map(|grant| proto::window(stream.id, grant)));
        for frame in frames {
            self.shared.out.control(frame).await.then_some(())?;
        }
        Some(stream)
    }

    /// Whether the connection ended (a roaming session that ended is not resumed).
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.shared.inner).closed.is_some()
    }

    /// Ends the connection and every stream on it.
    pub(crate) fn close(&self, why: &str) {
        self.shared.out.control_now(proto::close(why));
        self.shared.shut(why.to_string());
    }
}

/// Writes the control frames no stream wrote first, until the connection ends; then the
/// CLOSE, if any, and the end of our side.
async fn write_loop(shared: Arc<Shared>, mut closed: watch::Receiver<bool>, mut guard: Guard) {
    {
        let stop = guard.stopping();
        tokio::pin!(stop);
        let mut stopping = false;
        loop {
            let queued = tokio::select! {
                biased;
                _ = &mut stop, if !stopping => {
                    stopping = true;
                    Mux { shared: Arc::clone(&shared) }.close("it is stopping");
                    false
                }
                _ = shared.out.queued() => true,
                _ = closed.wait_for(|c| *c) => break,
            };
            if queued {
                if let Err(e) = shared.out.lock().await.control().await {
                    shared.shut(format!("writing to the peer failed: {e}"));
                }
            }
        }
    }
    // A CLOSE queued as the connection ended still tells the peer why.
    shared.out.lock().await.finish().await;
    // The guard goes last: whoever stops waits until the goodbye is on its way.
    drop(guard);
}

/// One stream of a multiplexed connection.
pub(crate) struct MuxStream {
    pub(super) id: u32,
    pub(super) shared: Arc<Shared>,
    pub(super) incoming: mpsc::UnboundedReceiver<Incoming>,
    pub(super) delivery: Arc<Delivery>,
    pub(super) wake: Arc<Notify>,
}

impl MuxStream {
    fn new(id: u32, shared: &Arc<Shared>) -> (MuxStream, StreamIo) {
        // Unbounded, yet bounded: the session refuses data beyond the window we granted.
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
        let wake = Arc::new(Notify::new());
        let delivery = Arc::new(Delivery::default());
        let stream = MuxStream {
            id,
            shared: Arc::clone(shared),
            incoming,
            delivery: Arc::clone(&delivery),
            wake: Arc::clone(&wake),
        };
        let io = StreamIo {
            incoming: incoming_tx,
            delivery,
            wake,
        };
        (stream, io)
    }

    /// The stream's id on its connection.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// Abandons the stream before piping it (the local service refused): the peer's local
    /// connection is reset at once.
    pub(crate) fn refuse(self) {
        let sender = Sender {
            id: self.id,
            shared: &self.shared,
            wake: &self.wake,
        };
        sender.reset();
    }
}

/// The sending side of a stream, shared by the two directions of
/// [`pipe_stream`](super::pipe::pipe_stream).
pub(super) struct Sender<'a> {
    pub(super) id: u32,
    pub(super) shared: &'a Shared,
    pub(super) wake: &'a Notify,
}

pub(super) fn gone(why: &Option<String>) -> io::Error {
    match why {
        Some(why) => io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("the connection to the peer ended: {why}"),
        ),
        None => io::Error::new(io::ErrorKind::ConnectionReset, "the peer reset the stream"),
    }
}

impl Sender<'_> {
    /// Waits until the stream may send, and says how much.
    pub(super) async fn credit(&self) -> io::Result<usize> {
        loop {
            {
                let inner = lock(&self.shared.inner);
                if inner.closed.is_some() || !inner.streams.contains_key(&self.id) {
                    return Err(gone(&inner.closed));
                }
                let credit = inner.session.credit(self.id);
                if credit > 0 {
                    return Ok(credit.min(MAX_DATA as u64) as usize);
                }
            }
            self.wake.notified().await;
        }
    }

    fn sent(&self, n: usize) {
        let mut inner = lock(&self.shared.inner);
        inner.session.sent(self.id, n);
        inner.sent = Instant::now();
    }

    pub(super) async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        self.sent(bytes.len());
        let mut out = self.shared.writing().await?;
        let written = out.data(self.id, bytes).await;
        written.map_err(|e| self.shared.write_failed(e))
    }

    /// Sends what `local` holds now (at most `max` bytes), read straight into the frame that
    /// carries it: how many bytes (0 at its end), or none when it holds nothing yet. A bulk
    /// transfer goes this way, without a copy between the read and the frame; an idle
    /// connection costs a poll of its socket.
    pub(super) async fn send_ready<R: AsyncRead + Unpin>(
        &self,
        local: &mut R,
        max: usize,
    ) -> io::Result<Option<usize>> {
        let mut out = self.shared.writing().await?;
        let n = match out.fill(self.id, local, max).await {
            Some(Ok(n)) if n > 0 => n,
            other => return other.transpose(),
        };
        self.sent(n);
        let written = out.send_filled(n).await;
        written
            .map(|()| Some(n))
            .map_err(|e| self.shared.write_failed(e))
    }

    /// Sends FIN (after the data sent before it).
    pub(super) async fn finish(&self) -> io::Result<()> {
        let mut out = self.shared.writing().await?;
        let written = out.frame(&proto::fin(self.id)).await;
        written.map_err(|e| self.shared.write_failed(e))?;
        drop(out);
        let mut inner = lock(&self.shared.inner);
        inner.session.fin_sent(self.id);
        Ok(())
    }

    /// We took `n` bytes; grants them back to the peer once enough gathered.
    pub(super) async fn taken(&self, n: usize) {
        let grant = lock(&self.shared.inner).session.taken(self.id, n);
        if let Some(grant) = grant {
            self.shared.out.control(proto::window(self.id, grant)).await;
        }
    }

    /// Abandons the stream; the peer is told unless the connection is gone.
    pub(super) fn reset(&self) {
        let mut inner = lock(&self.shared.inner);
        if inner.closed.is_none() && inner.streams.contains_key(&self.id) {
            // Before forgetting it: that may end a retired connection.
            self.shared.out.control_now(proto::reset(self.id));
            self.shared.forget(&mut inner, self.id);
        }
    }

    /// Forgets a stream that ended cleanly both ways.
    pub(super) fn done(&self) {
        self.shared.forget(&mut lock(&self.shared.inner), self.id);
    }
}

#[cfg(test)]
pub(super) mod tests {
    //! The driver against a hostile peer that writes frames by hand, over a real secret stream
    //! on loopback UDX.
    use std::time::Duration;

    use crate::secret::SecretStream;

    use super::*;

    /// Two ends of one encrypted connection on 127.0.0.1.
    pub(crate) async fn pair() -> (PeerStream, PeerStream) {
        let loopback = "127.0.0.1:0".parse().unwrap();
        let a = udx::UdxSocket::bind(loopback).await.unwrap();
        let b = udx::UdxSocket::bind(loopback).await.unwrap();
        let sa = a.create_stream(1).unwrap();
        let sb = b.create_stream(2).unwrap();
        sa.connect(2, b.local_addr().unwrap()).unwrap();
        sb.connect(1, a.local_addr().unwrap()).unwrap();
        let (k1, k2, hash) = ([1u8; 32], [2u8; 32], [3u8; 64]);
        let (x, y) = tokio::join!(
            SecretStream::from_session(true, sa, k1, k2, hash, [4; 32]),
            SecretStream::from_session(false, sb, k2, k1, hash, [5; 32]),
        );
        (x.unwrap(), y.unwrap())
    }

    /// A guard of an owner that never stops.
    pub(crate) fn no_guard() -> Guard {
        crate::farewell::Farewell::new().guards().guard()
    }

    pub(crate) const SMALL: Limits = Limits {
        max_streams: 2,
        window: 1000,
        max_window: 1000,
        growth_budget: 0,
        cold_window: 0,
    };

    /// The hand-written end of a connection: both halves of its secret stream.
    pub(crate) struct Hand {
        r: crate::secret::ReadHalf<crate::secret::UdxReadHalf>,
        w: crate::secret::WriteHalf<crate::secret::UdxWriteHalf>,
    }

    impl Hand {
        pub(crate) fn new(peer: PeerStream) -> Hand {
            let (r, w) = peer.into_split();
            Hand { r, w }
        }

        pub(crate) async fn read(
            &mut self,
        ) -> Result<Option<Vec<u8>>, crate::secret::SecretStreamError> {
            self.r.read().await
        }

        pub(crate) async fn write(&mut self, frame: &[u8]) -> io::Result<()> {
            self.w.write(frame).await
        }
    }

    /// The next frame the share sends, or none when it ended the connection.
    pub(crate) async fn next(peer: &mut Hand) -> Option<Vec<u8>> {
        tokio::time::timeout(Duration::from_secs(10), peer.read())
            .await
            .expect("the share answers within 10 s")
            .ok()
            .flatten()
    }

    /// The share's CLOSE reason, after which the connection ends.
    pub(crate) async fn closed_with(peer: &mut Hand) -> String {
        loop {
            let Some(frame) = next(peer).await else {
                panic!("the connection ended without a CLOSE");
            };
            if let Ok(proto::Frame::Close(reason)) = proto::decode(&frame) {
                let reason = reason.to_string();
                assert!(next(peer).await.is_none(), "nothing after CLOSE");
                return reason;
            }
        }
    }

    #[tokio::test]
    async fn streams_past_the_limit_are_reset_and_the_others_go_on() {
        let (hostile, share) = pair().await;
        let mut hostile = Hand::new(hostile);
        let (_mux, mut accepted) = Mux::start(share, Role::Server, SMALL, false, no_guard());
        for id in 1..=3 {
            hostile.write(&proto::open(id)).await.unwrap();
        }
        assert_eq!(next(&mut hostile).await, Some(proto::reset(3)));
        let first = accepted.recv().await.unwrap();
        let second = accepted.recv().await.unwrap();
        assert_eq!((first.id(), second.id()), (1, 2));
        // Ending one frees a place for a new stream.
        second.refuse();
        assert_eq!(next(&mut hostile).await, Some(proto::reset(2)));
        hostile.write(&proto::open(4)).await.unwrap();
        assert_eq!(accepted.recv().await.unwrap().id(), 4);
    }

    #[tokio::test]
    async fn a_peer_that_pings_but_never_reads_is_cut_off_when_the_answers_fill_the_queue() {
        let (hostile, share) = pair().await;
        let mut hostile = Hand::new(hostile);
        let (mux, _accepted) = Mux::start(share, Role::Server, SMALL, true, no_guard());
        // Each PING is answered with a PONG through the control queue. A peer that sends them
        // faster than the answers can leave, or never reads them, fills it (here after about
        // 14,000 PINGs in 40 ms), and the reader ends the connection rather than wait for the
        // writer or queue without bound.
        let started = Instant::now();
        let mut n = 0u32;
        while !mux.is_closed() {
            assert!(
                n < 2_000_000 && started.elapsed() < Duration::from_secs(120),
                "still open after {n} PINGs"
            );
            if hostile.write(&proto::ping(n)).await.is_err() {
                break;
            }
            n += 1;
        }
        for _ in 0..100 {
            if mux.is_closed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let why = lock(&mux.shared.inner).closed.clone();
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("does not read ours")),
            "{why:?} after {n} PINGs"
        );
    }

    #[tokio::test]
    async fn violations_end_the_connection_with_a_reason() {
        let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
            (
                vec![proto::open(1), proto::data(1, &[0; 1001])],
                "beyond the 1000 its window allows",
            ),
            (vec![vec![99, 0, 0, 0, 0]], "unknown frame type 99"),
            (
                vec![proto::open(1), proto::reset(1), proto::open(1)],
                "stream 1 opened again",
            ),
            (vec![proto::data(7, b"x")], "never opened"),
            (
                vec![proto::data(1, &[0; 10])[..3].to_vec()],
                "shorter than its header",
            ),
        ];
        for (frames, expect) in cases {
            let (hostile, share) = pair().await;
            let mut hostile = Hand::new(hostile);
            let (_mux, _accepted) = Mux::start(share, Role::Server, SMALL, false, no_guard());
            for f in &frames {
                hostile.write(f).await.unwrap();
            }
            let reason = closed_with(&mut hostile).await;
            assert!(reason.contains(expect), "{reason:?} for {expect:?}");
        }
    }

    #[tokio::test]
    async fn a_stream_waits_for_credit_and_resumes_when_granted() {
        let (client_end, share) = pair().await;
        let mut share = Hand::new(share);
        let (mux, _) = Mux::start(client_end, Role::Client, SMALL, false, no_guard());
        let stream = mux.open().await.unwrap();
        let sender = Sender {
            id: stream.id,
            shared: &stream.shared,
            wake: &stream.wake,
        };
        assert_eq!(sender.credit().await.unwrap(), 1000);
        sender.send(&[1; 1000]).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(200), sender.credit()).await;
        assert!(waiting.is_err(), "no credit left: the stream waits");
        assert_eq!(next(&mut share).await, Some(proto::open(1)));
        assert_eq!(next(&mut share).await, Some(proto::data(1, &[1; 1000])));
        share.write(&proto::window(1, 300)).await.unwrap();
        assert_eq!(sender.credit().await.unwrap(), 300);
        // The connection ending fails the waiting stream at once.
        sender.send(&[2; 300]).await.unwrap();
        drop(share);
        mux.close("test over");
        assert!(sender.credit().await.is_err());
    }
}
