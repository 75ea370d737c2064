//! An encrypted connection as a byte stream: [`Connection`] reads and writes like a TCP
//! stream ([`AsyncRead`] + [`AsyncWrite`], with half-close), so `tokio::io::copy_bidirectional`
//! and every other tokio I/O tool work on it. Underneath, the secret stream frames and
//! encrypts messages.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::identity::PublicKey;
use crate::peer::{Path, PeerStream};
use crate::secret::{self, SecretStreamError, MESSAGE as MAX_MESSAGE};

type Reader = secret::ReadHalf<secret::UdxReadHalf>;
type Writer = secret::WriteHalf<secret::UdxWriteHalf>;
type Step<H, T, E> = Pin<Box<dyn Future<Output = (H, Result<T, E>)> + Send>>;

/// One encrypted connection to a peer, opened by [`crate::Connector::connect`].
///
/// Reading returns the peer's bytes in order; end of file once the peer shut its side down.
/// [`AsyncWriteExt::shutdown`](tokio::io::AsyncWriteExt::shutdown) ends our side only (the
/// peer reads end of file and may go on writing), as TCP's half-close does.
///
/// ```no_run
/// # async fn run(connector: p2p_socket::Connector) -> Result<(), Box<dyn std::error::Error>> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let mut connection = connector.connect().await?;
/// connection.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
/// connection.shutdown().await?; // the peer sees end of file; we still read
/// let mut answer = Vec::new();
/// connection.read_to_end(&mut answer).await?;
/// # Ok(()) }
/// ```
pub struct Connection {
    path: Path,
    remote_public_key: PublicKey,
    read: ReadSide,
    /// What the last message held beyond what the reader took so far.
    unread: Vec<u8>,
    taken: usize,
    write: WriteSide,
}

enum ReadSide {
    Idle(Reader),
    Reading(Step<Reader, Option<Vec<u8>>, SecretStreamError>),
    Ended,
    Failed,
}

enum WriteSide {
    Idle(Writer),
    Writing(Step<Writer, (), io::Error>),
    ShuttingDown(Step<Writer, (), io::Error>),
    Shut,
    Failed,
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the connection failed earlier")
}

impl Connection {
    pub(crate) fn new(stream: PeerStream, path: Path) -> Connection {
        let remote_public_key = PublicKey::from(*stream.remote_public_key());
        let (reader, writer) = stream.into_split();
        Connection {
            path,
            remote_public_key,
            read: ReadSide::Idle(reader),
            unread: Vec::new(),
            taken: 0,
            write: WriteSide::Idle(writer),
        }
    }

    /// How the connection's packets travel.
    pub fn path(&self) -> Path {
        self.path
    }

    /// The key the peer proved it holds in the handshake.
    pub fn remote_public_key(&self) -> PublicKey {
        self.remote_public_key
    }

    /// Drives a write in progress to its end.
    fn poll_written(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let WriteSide::Writing(step) = &mut self.write else {
            return Poll::Ready(match self.write {
                WriteSide::Failed => Err(broken()),
                _ => Ok(()),
            });
        };
        let (writer, result) = ready!(step.as_mut().poll(cx));
        match result {
            Ok(()) => {
                self.write = WriteSide::Idle(writer);
                Poll::Ready(Ok(()))
            }
            Err(e) => {
                self.write = WriteSide::Failed;
                Poll::Ready(Err(e))
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.unread.len() {
                let n = buf.remaining().min(this.unread.len() - this.taken);
                buf.put_slice(&this.unread[this.taken..this.taken + n]);
                this.taken += n;
                return Poll::Ready(Ok(()));
            }
            match std::mem::replace(&mut this.read, ReadSide::Failed) {
                ReadSide::Idle(mut reader) => {
                    this.read = ReadSide::Reading(Box::pin(async move {
                        let message = reader.read().await;
                        (reader, message)
                    }));
                }
                ReadSide::Reading(mut step) => match step.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.read = ReadSide::Reading(step);
                        return Poll::Pending;
                    }
                    Poll::Ready((reader, Ok(Some(message)))) => {
                        this.read = ReadSide::Idle(reader);
                        this.unread = message;
                        this.taken = 0;
                    }
                    Poll::Ready((_, Ok(None))) => {
                        this.read = ReadSide::Ended;
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready((_, Err(e))) => return Poll::Ready(Err(io::Error::from(e))),
                },
                ReadSide::Ended => {
                    this.read = ReadSide::Ended;
                    return Poll::Ready(Ok(()));
                }
                ReadSide::Failed => return Poll::Ready(Err(broken())),
            }
        }
    }
}

impl AsyncWrite for Connection {
    /// Takes up to 64 KiB as one message; it is on its way once the next write, flush or
    /// shutdown returns.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_written(cx))?;
        match std::mem::replace(&mut this.write, WriteSide::Failed) {
            WriteSide::Idle(mut writer) => {
                let message = buf[..buf.len().min(MAX_MESSAGE)].to_vec();
                let n = message.len();
                this.write = WriteSide::Writing(Box::pin(async move {
                    let sent = writer.write(&message).await;
                    (writer, sent)
                }));
                Poll::Ready(Ok(n))
            }
            WriteSide::Shut | WriteSide::ShuttingDown(_) => {
                this.write = WriteSide::Shut;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "this side of the connection was shut down",
                )))
            }
            _ => Poll::Ready(Err(broken())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_written(cx)
    }

    /// Sends what is pending, then the end: the peer reads end of file.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_written(cx))?;
        loop {
            match std::mem::replace(&mut this.write, WriteSide::Failed) {
                WriteSide::Idle(mut writer) => {
                    this.write = WriteSide::ShuttingDown(Box::pin(async move {
                        let shut = writer.shutdown().await;
                        (writer, shut)
                    }));
                }
                WriteSide::ShuttingDown(mut step) => {
                    return match step.as_mut().poll(cx) {
                        Poll::Pending => {
                            this.write = WriteSide::ShuttingDown(step);
                            Poll::Pending
                        }
                        Poll::Ready((_, Ok(()))) => {
                            this.write = WriteSide::Shut;
                            Poll::Ready(Ok(()))
                        }
                        Poll::Ready((_, Err(e))) => Poll::Ready(Err(e)),
                    };
                }
                WriteSide::Shut => {
                    this.write = WriteSide::Shut;
                    return Poll::Ready(Ok(()));
                }
                WriteSide::Writing(_) | WriteSide::Failed => return Poll::Ready(Err(broken())),
            }
        }
    }
}
