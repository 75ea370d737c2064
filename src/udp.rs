//! The `--udp` flags of `share` and `connect`: carry datagrams instead of TCP connections,
//! within the limits the user may change.

use std::time::Duration;

use anyhow::{bail, Result};
use p2p_socket::{Protocol, UdpLimits};

/// UDP instead of TCP, and its limits.
#[derive(clap::Args, Debug)]
pub struct UdpArgs {
    /// Carry UDP datagrams instead of TCP connections (DNS, games, WireGuard, media), as
    /// holesail's UDP mode does: each local UDP client gets a connection of its own.
    #[arg(long)]
    udp: bool,
    /// UDP clients served at once; datagrams from more are dropped (the log says so).
    #[arg(long, value_name = "N", default_value_t = UdpLimits::DEFAULT_MAX_FLOWS, requires = "udp")]
    udp_max_flows: usize,
    /// Seconds a UDP client may stay quiet (no datagram either way) before its connection is
    /// closed; its next datagram opens a new one.
    #[arg(long, value_name = "SECONDS", default_value_t = UdpLimits::DEFAULT_IDLE_TIMEOUT.as_secs(), requires = "udp")]
    udp_idle_timeout: u64,
    /// Datagrams waiting per UDP client (while its connection opens, or when the tunnel is
    /// slower than the sender); more are dropped and counted.
    #[arg(long, value_name = "N", default_value_t = UdpLimits::DEFAULT_QUEUE, requires = "udp")]
    udp_queue: usize,
}

impl UdpArgs {
    /// The protocol these flags choose; zero limits are refused, since they would serve nothing.
    pub fn protocol(&self) -> Result<Protocol> {
        if !self.udp {
            return Ok(Protocol::Tcp);
        }
        if self.udp_max_flows == 0 || self.udp_queue == 0 || self.udp_idle_timeout == 0 {
            bail!("--udp-max-flows, --udp-queue and --udp-idle-timeout must be at least 1; leave them out for the defaults");
        }
        Ok(Protocol::Udp(UdpLimits {
            max_flows: self.udp_max_flows,
            idle_timeout: Duration::from_secs(self.udp_idle_timeout),
            queue: self.udp_queue,
        }))
    }
}
