//! # netlab: a NAT network lab made of Linux network namespaces
//!
//! A simulated internet (a bridge on 198.18.0.0/15) with public hosts for three DHT nodes
//! and a relay, and homes, each a router namespace with one host behind it. Per home the
//! router is `open` (the host has a public address), `cone` (endpoint-independent mapping)
//! or `symmetric` (a new random public port per destination), and its uplink can lose and
//! delay packets. Nothing is connected to the root namespace, so no packet of the lab can
//! leave the machine; everything is removed when the [`Lab`] is dropped.
//!
//! ```no_run
//! use netlab::{Lab, LabSpec, Nat};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), netlab::LabError> {
//! let lab = Lab::new(LabSpec::homes([Nat::Cone, Nat::Symmetric]).loss(0.05).delay(Duration::from_millis(50)))?;
//! let p2p_socket = netlab::find_binary("p2p-socket")?; // or env!("CARGO_BIN_EXE_p2p-socket")
//! let bootstrap = lab.start_dht(&p2p_socket)?; // "198.18.0.1:49737"
//! let a = &lab.homes()[0];
//! let mut share = lab.spawn("share", {
//!     let mut cmd = lab.exec(&a.host.netns, &p2p_socket);
//!     cmd.args(["share", "--host", "127.0.0.1", "--port", "8080", "--bootstrap", &bootstrap]);
//!     cmd
//! })?;
//! let key = share.wait_for(Duration::from_secs(30), |l| (l.len() == 64).then(|| l.to_string()))?;
//! // A socket made inside a namespace stays there, wherever it is used afterwards:
//! let listener = lab.in_netns(&a.host.netns, || std::net::TcpListener::bind("127.0.0.1:8080"))??;
//! # Ok(()) }
//! ```
//!
//! Needs root (network namespaces), iproute2 and iptables; `conntrack` for [`Lab::conntrack`].
//! Where namespaces are not permitted, [`Lab::new`] fails with
//! [`LabError::NamespacesNotPermitted`], whose message says so. See docs/lab.md.

mod cleanup;
mod delay;
mod error;
mod firewall;
mod lab;
mod netns;
pub mod probe;
mod process;
mod spec;

use std::path::PathBuf;

pub use cleanup::{creator_pid, remove_stale_labs, PREFIX};
pub use error::LabError;
pub use firewall::MIN_ARRIVAL_TTL;
pub use lab::{Home, Host, Lab, Router, DHT_PORT};
pub use netns::{exec, in_netns};
pub use process::LabProcess;
pub use spec::{HomeSpec, LabSpec, Nat, MAX_DELAY, MAX_HOMES};

/// A binary of this workspace built in the same profile as the running program: next to it
/// (a binary in `target/<profile>/`) or one level up (a test in `target/<profile>/deps/`).
pub fn find_binary(name: &str) -> Result<PathBuf, LabError> {
    let exe = std::env::current_exe()?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| LabError::BinaryNotBuilt {
            name: name.to_string(),
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}
