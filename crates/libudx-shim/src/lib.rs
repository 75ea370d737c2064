//! The API of the crate `libudx` 1.7.3, implemented on top of our own transport `p2p-udx`.
//!
//! # Why this crate exists
//!
//! We reuse the DHT RPC and routing layer of `peeroxide-dht` 1.7.3, which is written against
//! `libudx` 1.7.3. Two things rule out running it on the real `libudx`:
//!
//! - its stream transport moved about 1.2 MB/s, far too slow for a tunnel;
//! - Node's `hyperdht` runs the DHT RPC and its UDX streams on the *same* UDP socket (the
//!   address peers learn from the DHT is the one they punch holes to and stream with). With two
//!   transports, the DHT's socket and our streams' socket would be different sockets.
//!
//! The workspace's `[patch.crates-io]` puts this crate (package name `libudx`) under
//! `peeroxide-dht`, so every DHT datagram goes through a [`udx::UdxSocket`], and the engine reaches
//! that very socket with [`UdxSocket::inner`] to create its own streams on it.
//!
//! Only what `peeroxide-dht` 1.7.3 uses is here. It is an adapter, not a transport: what
//! `p2p-udx` cannot do (packet-level stream relay) fails with [`UdxError::Unsupported`].
//!
//! # Differences from libudx that callers can observe
//!
//! - A socket from [`UdxRuntime::create_socket`] is unbound until [`UdxSocket::bind`], because
//!   `p2p-udx` creates its sockets by binding them.
//! - A stream from [`UdxRuntime::create_stream`] belongs to no socket until
//!   [`UdxStream::connect`] or [`UdxStream::set_firewall_hook`] puts it on one.
//! - The firewall hook runs when the stream's owner next reads or writes after the first packet
//!   fixed the peer, not inside the receive path; a rejected stream is destroyed before any of
//!   the peer's data is handed out.
//! - [`UdxStream::write`] resolves once `p2p-udx` has taken the bytes (its flush), not on the
//!   peer's acknowledgement.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, Mutex};

/// A datagram that is not UDX stream traffic (DHT RPC messages, holepunch probes).
pub use udx::Datagram;

/// The MTU every UDX implementation supports (udx-native's `UDX_MTU_BASE`).
const MTU_BASE: usize = 1200;

/// The largest chunk [`UdxStream::read`] returns at once.
const READ_CHUNK: usize = 64 * 1024;

/// Errors of the adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UdxError {
    /// The socket was used before [`UdxSocket::bind`].
    #[error("UDP socket is not bound yet: call bind() first")]
    NotBound,
    /// [`UdxSocket::bind`] was called twice.
    #[error("UDP socket is already bound; create a new socket to bind another address")]
    AlreadyBound,
    /// The stream was used before [`UdxStream::connect`] or [`UdxStream::set_firewall_hook`].
    #[error("stream is not connected yet: call connect() or set_firewall_hook() first")]
    NotConnected,
    /// [`UdxStream::connect`] or [`UdxStream::set_firewall_hook`] was called twice.
    #[error("stream is already connected; create a new stream for another peer")]
    AlreadyConnected,
    /// The libudx feature has no counterpart in p2p-udx.
    #[error("{0} is not supported: p2p-udx has no such feature (p2p-socket does not use peeroxide-dht's connection paths)")]
    Unsupported(&'static str),
    /// The operating system refused a socket or stream operation.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] udx::UdxError),
}

/// `Result` with [`UdxError`].
pub type Result<T> = std::result::Result<T, UdxError>;

/// A runtime handle, shared by [`UdxRuntime::shared`] runtimes.
///
/// p2p-udx runs on the ambient tokio runtime, so there is no state behind it.
pub struct RuntimeHandle {
    _private: (),
}

/// Creates sockets and streams. p2p-udx needs no runtime of its own; this only keeps libudx's
/// shape.
pub struct UdxRuntime {
    handle: Arc<RuntimeHandle>,
}

impl UdxRuntime {
    /// Creates a runtime. Never fails; the `Result` is libudx's signature.
    pub fn new() -> Result<Self> {
        Ok(Self {
            handle: Arc::new(RuntimeHandle { _private: () }),
        })
    }

    /// A runtime sharing `handle`.
    pub fn shared(handle: Arc<RuntimeHandle>) -> Self {
        Self { handle }
    }

    /// The handle, for [`UdxRuntime::shared`].
    pub fn handle(&self) -> Arc<RuntimeHandle> {
        Arc::clone(&self.handle)
    }

    /// A new socket, unbound until [`UdxSocket::bind`].
    pub async fn create_socket(&self) -> Result<UdxSocket> {
        Ok(UdxSocket {
            bound: Arc::new(OnceLock::new()),
        })
    }

    /// A new stream with our stream id `local_id`, on no socket until [`UdxStream::connect`] or
    /// [`UdxStream::set_firewall_hook`].
    pub async fn create_stream(&self, local_id: u32) -> Result<UdxStream> {
        Ok(UdxStream {
            local_id,
            io: OnceLock::new(),
        })
    }
}

/// A UDP socket carrying DHT datagrams and UDX streams. Clones share one socket.
#[derive(Clone)]
pub struct UdxSocket {
    bound: Arc<OnceLock<udx::UdxSocket>>,
}

impl UdxSocket {
    /// The p2p-udx socket underneath, once bound: the engine creates its own streams on it, so
    /// they share the DHT's UDP port as Node's hyperdht streams do.
    pub fn inner(&self) -> Option<&udx::UdxSocket> {
        self.bound.get()
    }

    fn bound(&self) -> Result<&udx::UdxSocket> {
        self.bound.get().ok_or(UdxError::NotBound)
    }

    /// Binds the socket to `addr`.
    pub async fn bind(&self, addr: SocketAddr) -> Result<()> {
        if self.bound.get().is_some() {
            return Err(UdxError::AlreadyBound);
        }
        let socket = udx::UdxSocket::bind(addr).await?;
        self.bound.set(socket).map_err(|_| UdxError::AlreadyBound)
    }

    /// The bound address.
    pub async fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.bound()?.local_addr()?)
    }

    /// Sets the IP TTL of following datagrams (holepunching sends low-TTL probes).
    pub fn set_ttl(&self, ttl: u32) -> Result<()> {
        Ok(self.bound()?.set_ttl(ttl)?)
    }

    /// The current IP TTL.
    pub fn ttl(&self) -> Result<u32> {
        Ok(self.bound()?.ttl()?)
    }

    /// Sends one datagram (best effort, like UDP).
    pub fn send_to(&self, data: &[u8], addr: SocketAddr) -> Result<()> {
        Ok(self.bound()?.send_to(data, addr)?)
    }

    /// The datagrams that are not stream traffic. Calling it again replaces the previous receiver.
    ///
    /// peeroxide-dht wants an unbounded receiver; the bound is below it, in p2p-udx's
    /// [`udx::DatagramReceiver`] (drops counted in [`udx::UdxSocket::datagrams_dropped`]). A task
    /// moves datagrams across one at a time and ends when either side is gone.
    pub fn recv_start(&self) -> Result<mpsc::UnboundedReceiver<Datagram>> {
        let mut bounded = self.bound()?.take_datagrams();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    datagram = bounded.recv() => {
                        let Some(datagram) = datagram else { return };
                        if tx.send(datagram).is_err() {
                            return;
                        }
                    }
                    () = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }

    /// Drops this handle. The UDP socket closes when its last handle and last stream are gone,
    /// so the engine's streams keep it open after the DHT closed its side.
    pub async fn close(self) -> Result<()> {
        Ok(())
    }
}

/// One reliable stream.
pub struct UdxStream {
    local_id: u32,
    // A lock because libudx's `write`/`shutdown` take `&self` while p2p-udx's AsyncWrite needs
    // `&mut`; `read(&mut self)` reaches in without locking.
    io: OnceLock<Mutex<UdxAsyncStream>>,
}

impl UdxStream {
    fn place_on(&self, socket: &UdxSocket) -> Result<udx::UdxStream> {
        if self.io.get().is_some() {
            return Err(UdxError::AlreadyConnected);
        }
        Ok(socket.bound()?.create_stream(self.local_id)?)
    }

    fn attach(&self, stream: udx::UdxStream, firewall: Option<Firewall>) -> Result<()> {
        let io = UdxAsyncStream {
            stream: Some(Box::pin(stream)),
            firewall,
        };
        self.io
            .set(Mutex::new(io))
            .map_err(|_| UdxError::AlreadyConnected)
    }

    fn io(&self) -> Result<&Mutex<UdxAsyncStream>> {
        self.io.get().ok_or(UdxError::NotConnected)
    }

    /// Puts the stream on `socket` and starts it towards the peer's stream `remote_id` at
    /// `remote_addr`.
    pub async fn connect(
        &self,
        socket: &UdxSocket,
        remote_id: u32,
        remote_addr: SocketAddr,
    ) -> Result<()> {
        let stream = self.place_on(socket)?;
        stream.connect(remote_id, remote_addr)?;
        self.attach(stream, None)
    }

    /// Puts the stream on `socket`, towards the peer's stream `remote_id` at whatever address
    /// sends to it first. `hook(socket, port, ip)` then decides whether that sender is the peer;
    /// if it says no, the stream is destroyed.
    pub fn set_firewall_hook<F>(&self, socket: &UdxSocket, remote_id: u32, hook: F) -> Result<()>
    where
        F: FnOnce(&UdxSocket, u16, IpAddr) -> bool + Send + 'static,
    {
        let stream = self.place_on(socket)?;
        stream.connect_on_first_packet(remote_id);
        let firewall = Firewall {
            socket: socket.clone(),
            hook: Box::new(hook),
        };
        self.attach(stream, Some(firewall))
    }

    /// Writes all of `data` and flushes it into the transport.
    pub async fn write(&self, data: &[u8]) -> Result<()> {
        let mut io = self.io()?.lock().await;
        io.write_all(data).await?;
        io.flush().await?;
        Ok(())
    }

    /// The next chunk of data, or `None` once the peer ended the stream.
    pub async fn read(&mut self) -> Result<Option<Vec<u8>>> {
        let io = self.io.get_mut().ok_or(UdxError::NotConnected)?.get_mut();
        let mut chunk = vec![0; READ_CHUNK];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        chunk.truncate(n);
        Ok(Some(chunk))
    }

    /// Ends our direction of the stream (the peer reads EOF); reading goes on.
    pub async fn shutdown(&self) -> Result<()> {
        Ok(self.io()?.lock().await.shutdown().await?)
    }

    /// libudx forwards packets between two streams here; p2p-udx cannot.
    pub fn relay_to(&self, _destination: &UdxStream) -> Result<()> {
        Err(UdxError::Unsupported(
            "UdxStream::relay_to (packet-level stream relay)",
        ))
    }

    /// Aborts the stream: the peer is told, pending reads and writes fail.
    pub async fn destroy(self) -> Result<()> {
        if let Some(io) = self.io.into_inner() {
            io.into_inner().destroy();
        }
        Ok(())
    }

    /// The stream as `AsyncRead + AsyncWrite`. One that was never connected fails every call.
    pub fn into_async_stream(self) -> UdxAsyncStream {
        match self.io.into_inner() {
            Some(io) => io.into_inner(),
            None => UdxAsyncStream {
                stream: None,
                firewall: None,
            },
        }
    }

    /// The base UDX MTU: p2p-udx does not report the MTU it probed, and every UDX peer
    /// supports this one.
    pub fn effective_mtu(&self) -> usize {
        MTU_BASE
    }
}

type FirewallHook = Box<dyn FnOnce(&UdxSocket, u16, IpAddr) -> bool + Send>;

/// A firewall hook waiting for the stream's first packet to tell who the peer is.
struct Firewall {
    socket: UdxSocket,
    hook: FirewallHook,
}

/// A stream as `tokio::io::AsyncRead + AsyncWrite`.
pub struct UdxAsyncStream {
    // Boxed so that polling needs nothing from p2p-udx's stream beyond the traits.
    stream: Option<Pin<Box<udx::UdxStream>>>,
    firewall: Option<Firewall>,
}

impl UdxAsyncStream {
    fn destroy(&self) {
        if let Some(stream) = &self.stream {
            stream.destroy();
        }
    }

    /// The stream to poll, once its firewall hook (if any) accepted the peer that wrote first.
    fn vetted(&mut self) -> io::Result<Pin<&mut udx::UdxStream>> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, UdxError::NotConnected))?;
        if let Some(peer) = stream.remote_addr() {
            if let Some(Firewall { socket, hook }) = self.firewall.take() {
                if !hook(&socket, peer.port(), peer.ip()) {
                    tracing::debug!(%peer, "firewall hook rejected the stream's first sender");
                    stream.destroy();
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("firewall hook rejected {peer}"),
                    ));
                }
            }
        }
        Ok(stream.as_mut())
    }
}

impl AsyncRead for UdxAsyncStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().vetted() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for UdxAsyncStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().vetted() {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().vetted() {
            Ok(stream) => stream.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().vetted() {
            Ok(stream) => stream.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
