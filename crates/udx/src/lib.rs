//! UDX: reliable, ordered, congestion-controlled byte streams over one UDP socket,
//! wire-compatible with Node's `udx-native` (libudx).
//!
//! API CONTRACT (the engine and the libudx shim are written against this; keep it):
//!
//! ```ignore
//! let socket = UdxSocket::bind("127.0.0.1:0".parse()?).await?;
//! let mut datagrams = socket.take_datagrams();     // every packet that is not for a stream
//! let stream = socket.create_stream(local_id)?;     // registers `local_id` on the socket
//! stream.connect(remote_id, peer_addr)?;            // or:
//! stream.connect_on_first_packet(remote_id);        // adopt the address of whoever sends first
//! // stream: AsyncRead + AsyncWrite; poll_shutdown sends END (half-close); drop/destroy sends DESTROY
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io;
use std::net::SocketAddr;

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
pub enum UdxError {
    /// The OS refused a socket operation.
    #[error("UDP socket error: {0}")]
    Io(#[from] io::Error),
    /// The local stream id is already registered on this socket.
    #[error("stream id {0} is already in use on this socket")]
    StreamIdInUse(u32),
    /// The stream was destroyed (by us, by the peer, or because the peer stopped answering).
    #[error("stream closed")]
    StreamClosed,
}

/// A UDP socket that carries many UDX streams (demultiplexed by stream id) and passes every
/// other datagram to whoever called [`UdxSocket::take_datagrams`] (the DHT RPC layer).
/// Cheap to clone; the socket closes when the last clone and the last stream are gone.
#[derive(Clone)]
pub struct UdxSocket {}

/// A datagram that is not UDX stream traffic.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// Payload.
    pub data: Vec<u8>,
    /// Sender.
    pub addr: SocketAddr,
}

impl UdxSocket {
    /// Binds a UDP socket.
    pub async fn bind(addr: SocketAddr) -> Result<UdxSocket, UdxError> {
        let _ = addr;
        todo!()
    }
    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        todo!()
    }
    /// Sends one datagram now (best effort, like UDP).
    pub fn send_to(&self, data: &[u8], addr: SocketAddr) -> io::Result<()> {
        let _ = (data, addr);
        todo!()
    }
    /// Sets the IP TTL for following datagrams (holepunching sends low-TTL probes).
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        let _ = ttl;
        todo!()
    }
    /// Current IP TTL.
    pub fn ttl(&self) -> io::Result<u32> {
        todo!()
    }
    /// Takes the channel of non-stream datagrams. Calling it again replaces the previous receiver.
    pub fn take_datagrams(&self) -> tokio::sync::mpsc::UnboundedReceiver<Datagram> {
        todo!()
    }
    /// Registers a stream with local id `local_id` on this socket. Not yet connected: packets for it
    /// are held (bounded) until `connect` / `connect_on_first_packet`.
    pub fn create_stream(&self, local_id: u32) -> Result<UdxStream, UdxError> {
        let _ = local_id;
        todo!()
    }
}

/// One reliable stream. Implements `tokio::io::AsyncRead` and `AsyncWrite`.
pub struct UdxStream {}

impl UdxStream {
    /// Our stream id (the peer sends to it).
    pub fn local_id(&self) -> u32 {
        todo!()
    }
    /// Starts the stream towards `remote_id` at `addr`.
    pub fn connect(&self, remote_id: u32, addr: SocketAddr) -> Result<(), UdxError> {
        let _ = (remote_id, addr);
        todo!()
    }
    /// Starts the stream towards `remote_id` at the address of the first packet that arrives for it
    /// (hyperdht's "firewall" hook: the side that cannot be dialled waits for the other to send).
    pub fn connect_on_first_packet(&self, remote_id: u32) {
        let _ = remote_id;
        todo!()
    }
    /// The peer address, once connected.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        todo!()
    }
    /// Resolves once the stream has a peer address (after connect or the first packet).
    pub async fn connected(&self) -> Result<SocketAddr, UdxError> {
        todo!()
    }
    /// Aborts: sends DESTROY and fails pending reads and writes.
    pub fn destroy(&self) {
        todo!()
    }
}
