//! What a secret stream runs over: a transport that hands its received bytes over where they
//! lie (UDX) rather than copying them into a buffer of ours, and splits into a read half and a
//! write half that work at the same time.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use udx::UdxStream;

/// Received bytes, a chunk at a time.
pub(crate) trait ChunkRead: Unpin {
    /// At most `max` bytes (`max > 0`); `None` at the end of the stream.
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<BytesMut>>>;
}

/// A transport a [`super::SecretStream`] runs over.
pub(crate) trait Transport: ChunkRead + AsyncWrite + Send {
    /// The read half.
    type Read: ChunkRead + Send;
    /// The write half.
    type Write: AsyncWrite + Unpin + Send;
    /// Splits the transport; it ends when both halves are gone.
    fn split(self) -> (Self::Read, Self::Write);
}

impl ChunkRead for UdxStream {
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<BytesMut>>> {
        UdxStream::poll_read_chunk(self, cx, max)
    }
}

/// The read half of a UDX stream under a secret stream.
pub(crate) struct UdxReadHalf(Arc<UdxStream>);

/// The write half of a UDX stream under a secret stream.
pub(crate) struct UdxWriteHalf(Arc<UdxStream>);

impl Transport for UdxStream {
    type Read = UdxReadHalf;
    type Write = UdxWriteHalf;

    fn split(self) -> (UdxReadHalf, UdxWriteHalf) {
        // A UDX stream reads and writes through shared references, so the halves need no
        // lock of their own (unlike `tokio::io::split`).
        let stream = Arc::new(self);
        (UdxReadHalf(stream.clone()), UdxWriteHalf(stream))
    }
}

impl ChunkRead for UdxReadHalf {
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<BytesMut>>> {
        self.0.poll_read_chunk(cx, max)
    }
}

impl AsyncWrite for UdxWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.0).poll_shutdown(cx)
    }
}

/// In-memory pipes for tests: every read is a copy into a chunk of its own, so every frame
/// goes through the secret stream's copying path.
#[cfg(test)]
mod pipe {
    use tokio::io::{AsyncRead, DuplexStream, ReadBuf, ReadHalf, WriteHalf};

    use super::*;

    fn poll_copy<R: AsyncRead + Unpin>(
        raw: &mut R,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<BytesMut>>> {
        let mut chunk = vec![0u8; max.min(64 << 10)];
        let mut buf = ReadBuf::new(&mut chunk);
        std::task::ready!(Pin::new(raw).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        chunk.truncate(n);
        Poll::Ready(Ok((n > 0).then(|| BytesMut::from(&chunk[..]))))
    }

    impl ChunkRead for DuplexStream {
        fn poll_read_chunk(
            &mut self,
            cx: &mut Context<'_>,
            max: usize,
        ) -> Poll<io::Result<Option<BytesMut>>> {
            poll_copy(self, cx, max)
        }
    }

    impl ChunkRead for ReadHalf<DuplexStream> {
        fn poll_read_chunk(
            &mut self,
            cx: &mut Context<'_>,
            max: usize,
        ) -> Poll<io::Result<Option<BytesMut>>> {
            poll_copy(self, cx, max)
        }
    }

    impl Transport for DuplexStream {
        type Read = ReadHalf<DuplexStream>;
        type Write = WriteHalf<DuplexStream>;

        fn split(self) -> (Self::Read, Self::Write) {
            tokio::io::split(self)
        }
    }
}
