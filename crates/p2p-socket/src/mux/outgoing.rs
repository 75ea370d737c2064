//! Our frames to the peer. Whichever task has a frame writes it to the secret stream itself,
//! under one lock: a stream's data goes from its local connection into the transport without
//! a hop through another task (each hop is a wakeup, often on the other core, and on the bulk
//! path those cost more CPU than the copies). Control frames (OPEN, WINDOW, RESET, CLOSE,
//! PING, PONG) are queued, because the reader must never wait on a write; whoever takes the
//! lock next writes every queued one before its own data, and the connection's writer task
//! takes it when nobody else does.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{mpsc, Mutex, MutexGuard, Notify};

use super::proto;

pub(super) type Writer = crate::secret::WriteHalf<crate::secret::UdxWriteHalf>;

/// Control frames queued for the peer. The reader answers a refused OPEN without waiting, so
/// a peer that floods us with them while reading nothing fills this, and is cut off.
const CONTROL_QUEUE: usize = 1024;
/// The reader also queues each stream's window grants without waiting
/// ([`deliver`](super::deliver)). A grant goes once a quarter of the stream's window was
/// taken, and the peer sends nothing beyond the credit it was granted, so while our writes
/// are held up (a congested path) at most four grants per stream wait; room for them comes
/// on top, so that a busy connection is never mistaken for a flooding peer.
const GRANTS_PER_STREAM: usize = 4;

pub(super) struct Outgoing {
    out: Mutex<Out>,
    control: mpsc::Sender<Vec<u8>>,
    /// Signalled for each queued control frame, for the writer task.
    queued: Notify,
}

/// The secret stream's write half and the control frames waiting for it.
pub(super) struct Out {
    writer: Writer,
    control: mpsc::Receiver<Vec<u8>>,
}

impl Outgoing {
    /// For a connection of at most `max_streams` streams at once.
    pub(super) fn new(writer: Writer, max_streams: usize) -> Outgoing {
        let queue = CONTROL_QUEUE + GRANTS_PER_STREAM * max_streams;
        let (control, control_rx) = mpsc::channel(queue);
        Outgoing {
            out: Mutex::new(Out {
                writer,
                control: control_rx,
            }),
            control,
            queued: Notify::new(),
        }
    }

    /// Queues a control frame without waiting; false when the queue is full.
    pub(super) fn control_now(&self, frame: Vec<u8>) -> bool {
        let queued = self.control.try_send(frame).is_ok();
        if queued {
            self.queued.notify_one();
        }
        queued
    }

    /// Queues a control frame, waiting for room; false once the connection's writing ended.
    pub(super) async fn control(&self, frame: Vec<u8>) -> bool {
        let queued = self.control.send(frame).await.is_ok();
        if queued {
            self.queued.notify_one();
        }
        queued
    }

    /// Waits until a control frame was queued (perhaps written by someone else since).
    pub(super) async fn queued(&self) {
        self.queued.notified().await;
    }

    /// The right to write; every method of [`Out`] is cancel safe.
    pub(super) async fn lock(&self) -> MutexGuard<'_, Out> {
        self.out.lock().await
    }
}

impl Out {
    /// Writes every control frame queued so far.
    pub(super) async fn control(&mut self) -> io::Result<()> {
        loop {
            // Before taking a frame: a frame taken and then cancelled before it was sealed
            // would be lost.
            self.writer.ready().await?;
            let Ok(frame) = self.control.try_recv() else {
                return Ok(());
            };
            self.writer.write(&frame).await?;
        }
    }

    /// Writes a DATA frame of `bytes` (at most [`proto::MAX_DATA`]) for stream `id`, sealed
    /// where it is assembled.
    pub(super) async fn data(&mut self, id: u32, bytes: &[u8]) -> io::Result<()> {
        self.writer.ready().await?;
        let buf = self.writer.buffer();
        buf[..proto::HEADER].copy_from_slice(&proto::data_header(id));
        buf[proto::HEADER..proto::HEADER + bytes.len()].copy_from_slice(bytes);
        self.send_filled(bytes.len()).await
    }

    /// Reads what `local` holds now, at most `max` bytes (at most [`proto::MAX_DATA`]), into
    /// the next DATA frame of stream `id`: how many (0 at its end; then nothing is to be
    /// sent), or none when it holds nothing yet. An error is the local side's. Only after
    /// [`Out::control`], which leaves no frame half written.
    pub(super) async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        id: u32,
        local: &mut R,
        max: usize,
    ) -> Option<io::Result<usize>> {
        let buf = self.writer.buffer();
        buf[..proto::HEADER].copy_from_slice(&proto::data_header(id));
        let mut read = ReadBuf::new(&mut buf[proto::HEADER..proto::HEADER + max]);
        let polled =
            poll_fn(|cx| Poll::Ready(Pin::new(&mut *local).poll_read(cx, &mut read))).await;
        match polled {
            Poll::Ready(Ok(())) => Some(Ok(read.filled().len())),
            Poll::Ready(Err(e)) => Some(Err(e)),
            Poll::Pending => None,
        }
    }

    /// Seals and writes the DATA frame [`Out::data`] or [`Out::fill`] put `n` bytes in.
    pub(super) async fn send_filled(&mut self, n: usize) -> io::Result<()> {
        self.writer.send(proto::HEADER + n).await
    }

    /// Writes one frame.
    pub(super) async fn frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.writer.write(frame).await
    }

    /// The connection ended: writes the CLOSE frames among those queued (the peer learns
    /// why), drops the rest and ends our side.
    pub(super) async fn finish(&mut self) {
        self.control.close();
        while let Ok(frame) = self.control.try_recv() {
            if proto::decode(&frame).is_ok_and(|f| matches!(f, proto::Frame::Close(_))) {
                let _ = self.writer.write(&frame).await;
            }
        }
        let _ = self.writer.shutdown().await;
    }
}
