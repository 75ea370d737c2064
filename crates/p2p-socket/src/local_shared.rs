//! A local connection that two tasks use at once: a stream's pipe reads it (and writes what
//! could not be written at once), and the multiplexed connection's reader writes the peer's
//! bytes into it the moment they are opened, without handing them to the pipe's task first
//! ([`crate::mux`]). On the bulk path that hand-over was a wakeup of another task, often on the
//! other core, and a copy of every message; a write straight from the reader costs neither.
//!
//! Both TCP and Unix sockets take reads and writes through a shared reference (tokio's
//! `try_read` / `try_write` and readiness polls), so one socket behind an `Arc` serves both
//! tasks; the halves here give the pipe the usual `AsyncRead` / `AsyncWrite` on it.

use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A socket read and written through shared references.
pub(crate) trait SharedIo: Send + Sync {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    /// Ends our sending side (FIN); reading goes on.
    fn shutdown_write(&self) -> io::Result<()>;
    /// Makes the last close reset the connection (see
    /// [`LocalIo::reset_on_drop`](crate::local::LocalIo::reset_on_drop)).
    fn reset_on_drop(&self) {}
}

impl SharedIo for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::try_read(self, buf)
    }
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_write_ready(self, cx)
    }
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
    fn shutdown_write(&self) -> io::Result<()> {
        socket2::SockRef::from(self).shutdown(Shutdown::Write)
    }
    fn reset_on_drop(&self) {
        // Linger 0 makes close() send RST and drop unsent data, without blocking.
        if let Err(e) = socket2::SockRef::from(self).set_linger(Some(Duration::ZERO)) {
            tracing::debug!(error = %e, "could not make the local connection end with a reset");
        }
    }
}

#[cfg(unix)]
impl SharedIo for tokio::net::UnixStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::UnixStream::poll_read_ready(self, cx)
    }
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        tokio::net::UnixStream::try_read(self, buf)
    }
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::UnixStream::poll_write_ready(self, cx)
    }
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        tokio::net::UnixStream::try_write(self, buf)
    }
    fn shutdown_write(&self) -> io::Result<()> {
        socket2::SockRef::from(self).shutdown(Shutdown::Write)
    }
}

/// The reading half of a shared socket, for one task.
pub(crate) struct SharedRead(pub(crate) Arc<dyn SharedIo>);

/// The writing half of a shared socket, for the task that waits for it to take more.
pub(crate) struct SharedWrite(pub(crate) Arc<dyn SharedIo>);

impl AsyncRead for SharedRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale and is cleared now: poll again, which registers us.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.shutdown_write())
    }
}
