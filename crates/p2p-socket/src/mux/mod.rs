//! Many local TCP connections over one encrypted connection between two p2p-socket peers
//! (docs/multiplexing.md): a connect opens one encrypted connection to a sharer and every
//! further local connection becomes a stream on it, with no lookup, handshake or punch.
//!
//! Both peers say in the Noise handshake that they can ([`crate::noise_session`]); a connection
//! where either did not stays one raw byte stream, exactly as with Node peers. [`proto`] is the
//! protocol without I/O, [`driver`] runs it on a secret stream, writing through [`outgoing`].

mod deliver;
mod driver;
mod live;
mod outgoing;
mod pipe;
mod pool;
pub(crate) mod proto;
mod roam;
mod serve;
mod warm;

pub(crate) use driver::{Mux, MuxStream, Opening};
pub(crate) use pipe::pipe_stream_and_log;
pub(crate) use pool::{Opened, Pool};
pub(crate) use serve::serve;
