//! The UDX protocol as a pure state machine, as `quinn-proto` is for QUIC: no sockets, no
//! async runtime, no locks, no wakers. Datagrams and the current time go in; datagrams to
//! send, the next deadline and events come out. The socket driver ([`crate::UdxSocket`]) is a
//! thin tokio layer over it; the simulator in the test suite and the fuzz targets drive it
//! directly with a virtual clock.
//!
//! - [`Stream`]: one stream's state machine (sequencing, acks and SACKs, loss detection and
//!   retransmission, congestion control and pacing, END / DESTROY, MTU probing).
//! - [`Endpoint`]: the streams of one socket (demultiplexing by id, packets held for streams
//!   not connected yet, relaying, timers).
//! - [`Transmits`]: the datagrams either produces.
//!
//! A driver loop looks like this:
//!
//! ```
//! use std::time::Instant;
//! use udx::proto::{Endpoint, EndpointEvent};
//!
//! let mut ep = Endpoint::new();
//! let now = Instant::now();
//! ep.add_stream(1, now);
//! ep.connect(1, 2, Some("127.0.0.1:9000".parse().unwrap()), now);
//! ep.stream_mut(1).unwrap().write(bytes::Bytes::from_static(b"hello"));
//! // for each datagram received: ep.handle(now, from, &data) (false: not UDX stream traffic)
//! // when ep.poll_timeout() is reached: ep.handle_timeout(now)
//! ep.service(now, |_id, _stream| { /* exchange data with the application */ });
//! while let Some((to, datagram)) = ep.transmits().pop() {
//!     println!("send {} bytes to {to}", datagram.len());
//! }
//! while let Some(ev) = ep.poll_event() {
//!     if let EndpointEvent::Removed { id, .. } = ev {
//!         println!("stream {id} is gone, its id is free again");
//!     }
//! }
//! ```

mod endpoint;
mod ids;
mod stream;
mod transmits;

use std::net::SocketAddr;

pub use endpoint::{Endpoint, EndpointEvent, SEND_BUDGET};
pub(crate) use ids::IdMap;
pub use stream::{
    CloseReason, Remote, Stream, StreamEvent, MAX_BUFFERED, RECV_ALLOCATION, RECV_WINDOW,
};
pub use transmits::Transmits;

/// Reports v4-mapped IPv6 sources as plain IPv4, as libudx does.
pub(crate) fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => addr,
        },
        v4 => v4,
    }
}
