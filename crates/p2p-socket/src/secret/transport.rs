//! What the secret stream needs from the transport under it: two halves that can be driven
//! at once, and a write half that takes a sealed frame as it is, so the frame is not copied
//! again on its way to the socket.

use std::future::Future;
use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use udx::{UdxReadHalf, UdxStream, UdxWriteHalf};

/// A byte stream a [`super::SecretStream`] runs on.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// The read half.
    type Reader: AsyncRead + Unpin + Send;
    /// The write half.
    type Writer: FrameWriter;
    /// Splits the stream in two.
    fn split(self) -> (Self::Reader, Self::Writer);
}

/// A write half that can take ownership of what it writes.
pub(crate) trait FrameWriter: AsyncWrite + Unpin + Send {
    /// Writes all of `frame`; a transport that buffers keeps the frame instead of a copy.
    fn write_frame(&mut self, frame: Bytes) -> impl Future<Output = io::Result<()>> + Send;
}

impl Transport for UdxStream {
    type Reader = UdxReadHalf;
    type Writer = UdxWriteHalf;

    fn split(self) -> (UdxReadHalf, UdxWriteHalf) {
        self.into_split()
    }
}

impl FrameWriter for UdxWriteHalf {
    fn write_frame(&mut self, frame: Bytes) -> impl Future<Output = io::Result<()>> + Send {
        self.write_bytes(frame)
    }
}

/// In-memory pipes, for the secret stream's own tests.
#[cfg(test)]
impl Transport for tokio::io::DuplexStream {
    type Reader = tokio::io::ReadHalf<Self>;
    type Writer = tokio::io::WriteHalf<Self>;

    fn split(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}

#[cfg(test)]
impl FrameWriter for tokio::io::WriteHalf<tokio::io::DuplexStream> {
    async fn write_frame(&mut self, frame: Bytes) -> io::Result<()> {
        tokio::io::AsyncWriteExt::write_all(self, &frame).await
    }
}
