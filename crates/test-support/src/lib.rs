//! What the workspace's tests and benchmarks share: the real `p2p-socket` binary and the Node
//! fixtures of `interop/node` as child processes, and TCP services and clients that account
//! for every byte. A crate of its own (not a `#[path]` include) so that every test binary
//! compiles one copy and the netlab crate's tests can use it too.

pub mod cli;
pub mod lab;
pub mod net;
pub mod node;
pub mod process;
