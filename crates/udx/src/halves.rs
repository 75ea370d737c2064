//! A stream split into a read half and a write half for two tasks (or two futures) to drive
//! at once. Unlike `tokio::io::split` the halves take no lock per call: both only hold the
//! stream's handle, whose state the driver hand-off already guards.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{Chunk, UdxStream};

/// The reading half of [`UdxStream::into_split`].
pub struct UdxReadHalf(Arc<UdxStream>);

/// The writing half of [`UdxStream::into_split`]. Shutting it down sends END; the stream is
/// dropped (DESTROY unless both sides ended) once both halves are.
pub struct UdxWriteHalf(Arc<UdxStream>);

impl UdxStream {
    /// Splits the stream into halves that can be used at the same time.
    pub fn into_split(self) -> (UdxReadHalf, UdxWriteHalf) {
        let stream = Arc::new(self);
        (UdxReadHalf(stream.clone()), UdxWriteHalf(stream))
    }
}

impl UdxReadHalf {
    /// The whole stream (for its address, stats, `destroy`).
    pub fn stream(&self) -> &UdxStream {
        &self.0
    }
}

impl UdxWriteHalf {
    /// The whole stream (for its address, stats, `destroy`).
    pub fn stream(&self) -> &UdxStream {
        &self.0
    }

    /// [`UdxStream::write_bytes`]: queues `data` without copying it.
    pub async fn write_bytes(&self, data: Bytes) -> io::Result<()> {
        self.0.write_bytes(data).await
    }
}

impl AsyncRead for UdxReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.read_into(cx, buf)
    }
}

impl AsyncWrite for UdxWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.write_from(cx, Chunk::Borrowed(data))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.flush_status()
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.shutdown_write()
    }
}
