//! The lab itself: namespaces, cables, addresses, rules and the DHT, built in `Lab::new` and
//! removed in `Drop`.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::cleanup;
use crate::delay::{DelayLine, Hold};
use crate::error::LabError;
use crate::firewall;
use crate::netns;
use crate::process::LabProcess;
use crate::spec::{HomeSpec, LabSpec, Nat};

/// The UDP port the lab's DHT nodes listen on (HyperDHT's usual bootstrap port).
pub const DHT_PORT: u16 = 49737;

/// How long a DHT node may take to say it is running.
const DHT_READY: Duration = Duration::from_secs(30);

/// Name of the bridge that is the internet, inside the internet namespace.
const BRIDGE: &str = "br0";

/// Labs made by this process so far: with the pid, it makes each lab's names unique.
static LABS_MADE: AtomicU32 = AtomicU32::new(0);

/// A machine with one address: a public server, or the host inside a home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Short role name: `dht0`, `relay`, `h1`, ...
    pub name: String,
    /// The network namespace it lives in (for [`Lab::exec`]).
    pub netns: String,
    pub ip: Ipv4Addr,
}

/// A home's router. Its WAN side is on the internet; its LAN side faces the home's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    pub netns: String,
    pub wan_ip: Ipv4Addr,
    /// The router's address on the home network (none for an open home, whose router only
    /// forwards the host's public address).
    pub lan_ip: Option<Ipv4Addr>,
}

/// A home: a router with a NAT type, and one host behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Home {
    /// 1 for the first home of the spec, 2 for the second, ...
    pub number: usize,
    pub spec: HomeSpec,
    pub router: Router,
    pub host: Host,
}

impl Home {
    pub fn nat(&self) -> Nat {
        self.spec.nat
    }

    /// The address the rest of the internet sees this home's traffic come from.
    pub fn public_ip(&self) -> Ipv4Addr {
        match self.spec.nat {
            Nat::Open => self.host.ip,
            Nat::Cone | Nat::Symmetric => self.router.wan_ip,
        }
    }
}

/// A running lab. Everything it made (namespaces, links, rules, processes, delay threads) is
/// removed when it is dropped, also when a test panics.
pub struct Lab {
    prefix: String,
    internet: String,
    dht: Vec<Host>,
    relay: Host,
    homes: Vec<Home>,
    created: Vec<String>,
    delays: Vec<DelayLine>,
    daemons: Mutex<Vec<LabProcess>>,
}

impl Lab {
    /// Builds the lab: the internet (a bridge on 198.18.0.0/15), the public hosts (three for
    /// DHT nodes, one for a relay; nothing runs on them yet) and the homes of `spec`.
    ///
    /// Fails with [`LabError::NamespacesNotPermitted`] where network namespaces cannot be
    /// made (not root, or `ip netns add` refused); its message says so plainly.
    pub fn new(spec: LabSpec) -> Result<Lab, LabError> {
        spec.validate()?;
        preflight()?;
        match cleanup::remove_stale_labs() {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!("removed namespaces of labs whose process died: {removed:?}")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("could not look for stale labs: {e}"),
        }
        let prefix = format!(
            "{}{}x{}",
            cleanup::PREFIX,
            std::process::id(),
            LABS_MADE.fetch_add(1, Ordering::Relaxed)
        );
        let public = |name: &str, last: u8| Host {
            name: name.to_string(),
            netns: format!("{prefix}-{name}"),
            ip: Ipv4Addr::new(198, 18, 0, last),
        };
        let dht = vec![public("dht0", 1), public("dht1", 2), public("dht2", 3)];
        let relay = public("relay", 4);
        let homes = spec
            .homes
            .iter()
            .enumerate()
            .map(|(i, s)| plan_home(&prefix, i + 1, *s))
            .collect();
        let mut lab = Lab {
            internet: format!("{prefix}-inet"),
            prefix,
            dht,
            relay,
            homes,
            created: Vec::new(),
            delays: Vec::new(),
            daemons: Mutex::new(Vec::new()),
        };
        // On any error `lab` is dropped here, which removes what was built so far.
        lab.build()?;
        tracing::info!(prefix = %lab.prefix, homes = lab.homes.len(), "lab is up");
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), LabError> {
        let internet = self.internet.clone();
        self.add_netns(&internet).map_err(|e| match e {
            LabError::Command { stderr, .. } => LabError::NamespacesNotPermitted {
                reason: format!("`ip netns add` failed: {stderr}"),
            },
            other => other,
        })?;
        netns::ip_in(&internet, &["link", "add", BRIDGE, "type", "bridge"])?;
        netns::ip_in(&internet, &["link", "set", BRIDGE, "up"])?;

        let public: Vec<Host> = self.dht.iter().chain([&self.relay]).cloned().collect();
        for host in &public {
            self.add_netns(&host.netns)?;
            self.cable(&host.netns, "eth0", &internet, &host.name)?;
            netns::ip_in(
                &host.netns,
                &["addr", "add", &cidr(host.ip, 15), "dev", "eth0"],
            )?;
            netns::iptables_restore(&host.netns, &firewall::public_host())?;
        }

        for home in self.homes.clone() {
            self.build_home(&home)?;
        }
        Ok(())
    }

    fn build_home(&mut self, home: &Home) -> Result<(), LabError> {
        let (r, h) = (&home.router.netns, &home.host.netns);
        self.add_netns(r)?;
        self.add_netns(h)?;
        self.cable(r, "wan", &self.internet.clone(), &home.host.name)?;
        self.cable(r, "lan", h, "eth0")?;
        netns::ip_in(
            r,
            &["addr", "add", &cidr(home.router.wan_ip, 15), "dev", "wan"],
        )?;
        netns::sysctl(r, "net.ipv4.ip_forward", "1")?;
        match home.router.lan_ip {
            Some(lan_ip) => {
                netns::ip_in(r, &["addr", "add", &cidr(lan_ip, 24), "dev", "lan"])?;
                netns::ip_in(h, &["addr", "add", &cidr(home.host.ip, 24), "dev", "eth0"])?;
                netns::ip_in(h, &["route", "add", "default", "via", &lan_ip.to_string()])?;
            }
            None => {
                // An open home: the host holds a public address in the internet's /15 and the
                // router stands in for each side on the other (proxy ARP), so the host is
                // reachable as if it were on the internet while its traffic still crosses the
                // router's uplink rules (TTL, loss, delay).
                netns::ip_in(h, &["addr", "add", &cidr(home.host.ip, 15), "dev", "eth0"])?;
                netns::ip_in(r, &["route", "add", &cidr(home.host.ip, 32), "dev", "lan"])?;
                for dev in ["wan", "lan"] {
                    netns::sysctl(r, &format!("net.ipv4.conf.{dev}.proxy_arp"), "1")?;
                    // The default answers proxied ARP up to 0.8 s late, at random.
                    netns::sysctl(r, &format!("net.ipv4.neigh.{dev}.proxy_delay"), "0")?;
                }
            }
        }
        if home.spec.holds() {
            // The queue must have its listener before the NFQUEUE rules send packets to it.
            let hold = Hold {
                delay: home.spec.delay,
                jitter: home.spec.jitter,
                // Reproducible: the same lab draws the same holds for the same packets.
                seed: home.number as u64,
            };
            self.delays.push(DelayLine::start(r, hold)?);
        }
        netns::iptables_restore(r, &firewall::router(&home.spec))
    }

    /// Creates a namespace and records it for teardown; only IPv4, loopback up.
    fn add_netns(&mut self, name: &str) -> Result<(), LabError> {
        netns::add(name)?;
        self.created.push(name.to_string());
        // The lab's rules are IPv4 rules; IPv6 would be a way around them.
        for key in [
            "net.ipv6.conf.all.disable_ipv6",
            "net.ipv6.conf.default.disable_ipv6",
        ] {
            if let Err(e) = netns::sysctl(name, key, "1") {
                tracing::debug!("{key} in {name}: {e} (kernel without IPv6?)");
            }
        }
        netns::ip_in(name, &["link", "set", "lo", "up"])
    }

    /// A veth pair from `a_if` in `a_ns` to `b_if` in `b_ns`, both up. Both ends are created
    /// directly in their namespaces, so no name ever appears in the root namespace (which has
    /// its own eth0). An end in the internet namespace becomes a port of the bridge.
    fn cable(&self, a_ns: &str, a_if: &str, b_ns: &str, b_if: &str) -> Result<(), LabError> {
        netns::ip(&[
            "link", "add", a_if, "netns", a_ns, "type", "veth", "peer", "name", b_if, "netns", b_ns,
        ])?;
        if b_ns == self.internet {
            netns::ip_in(b_ns, &["link", "set", b_if, "master", BRIDGE])?;
        }
        netns::ip_in(a_ns, &["link", "set", a_if, "up"])?;
        netns::ip_in(b_ns, &["link", "set", b_if, "up"])
    }

    /// The prefix of every namespace name of this lab (`p2l<pid>x<n>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// All namespaces of this lab.
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// The namespace holding the internet's bridge (no address of its own).
    pub fn internet_netns(&self) -> &str {
        &self.internet
    }

    /// The three public hosts for DHT nodes; the first is the bootstrap node.
    pub fn dht_hosts(&self) -> &[Host] {
        &self.dht
    }

    /// A public host with nothing running on it, for a relay (or any public service).
    pub fn relay_host(&self) -> &Host {
        &self.relay
    }

    /// The homes, in the order of the spec.
    pub fn homes(&self) -> &[Home] {
        &self.homes
    }

    /// `host:port` of the bootstrap node, for `--bootstrap`.
    pub fn bootstrap(&self) -> String {
        format!("{}:{DHT_PORT}", self.dht[0].ip)
    }

    /// A command that runs `program` inside namespace `netns` (`ip netns exec`).
    pub fn exec(&self, netns: &str, program: impl AsRef<OsStr>) -> Command {
        netns::exec(netns, program)
    }

    /// Runs `f` on a thread inside `netns` and returns its result; sockets it creates stay in
    /// that namespace (see [`crate::in_netns`]).
    pub fn in_netns<T, F>(&self, netns: &str, f: F) -> Result<T, LabError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        netns::in_netns(netns, f)
    }

    /// Starts `cmd` with its output captured and logged; see [`LabProcess`].
    pub fn spawn(&self, name: &str, cmd: Command) -> Result<LabProcess, LabError> {
        LabProcess::spawn(name, cmd)
    }

    /// Starts the DHT: `p2p-socket bootstrap` on each DHT host at port [`DHT_PORT`], the
    /// others joining the first. Returns the `--bootstrap` value. The nodes run until the lab
    /// is dropped.
    pub fn start_dht(&self, p2p_socket: &Path) -> Result<String, LabError> {
        let bootstrap = self.bootstrap();
        for (i, host) in self.dht.iter().enumerate() {
            let mut cmd = self.exec(&host.netns, p2p_socket);
            cmd.env_remove("P2P_SOCKET_BOOTSTRAP").args([
                "bootstrap",
                "--host",
                &host.ip.to_string(),
                "--port",
                &DHT_PORT.to_string(),
            ]);
            if i > 0 {
                cmd.args(["--bootstrap", &bootstrap]);
            }
            let mut node = LabProcess::spawn(&host.name, cmd)?;
            node.wait_for(DHT_READY, |l| {
                l.starts_with("Bootstrap node running on").then_some(())
            })?;
            self.daemons
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(node);
        }
        Ok(bootstrap)
    }

    /// Gives NAT home `number` (1-based) a new public address, as a PPPoE reconnect or a DHCP
    /// renewal does: the router's WAN address becomes `wan_ip` (in 198.18.0.0/15, unused) and
    /// its NAT forgets every mapping, so the home's traffic leaves from the new address on new
    /// ports and what was sent to the old one is lost.
    pub fn renumber(&mut self, number: usize, wan_ip: Ipv4Addr) -> Result<(), LabError> {
        let home = self
            .homes
            .iter_mut()
            .find(|h| h.number == number)
            .ok_or_else(|| LabError::Spec(format!("no home {number}")))?;
        if home.spec.nat == Nat::Open {
            return Err(LabError::Spec(format!(
                "home {number} is open: its host holds the public address, there is no NAT to renumber"
            )));
        }
        if !netns::tool_on_path("conntrack") {
            return Err(LabError::MissingTool {
                tool: "conntrack",
                package: "conntrack",
            });
        }
        let r = home.router.netns.clone();
        let old = cidr(home.router.wan_ip, 15);
        // Old first: in the same subnet the new address would be a secondary one, which the
        // kernel deletes with the primary.
        netns::ip_in(&r, &["addr", "del", &old, "dev", "wan"])?;
        netns::ip_in(&r, &["addr", "add", &cidr(wan_ip, 15), "dev", "wan"])?;
        // MASQUERADE picks the WAN's address per new mapping; old mappings would go on using
        // the old address, so they all go, as in a router that reconnected.
        netns::run(netns::exec(&r, "conntrack").arg("-F"))?;
        home.router.wan_ip = wan_ip;
        tracing::info!(home = number, %wan_ip, "renumbered the home's public address");
        Ok(())
    }

    /// The router's conntrack table (`conntrack -L`), to see what a NAT did.
    pub fn conntrack(&self, home: &Home) -> Result<String, LabError> {
        if !netns::tool_on_path("conntrack") {
            return Err(LabError::MissingTool {
                tool: "conntrack",
                package: "conntrack",
            });
        }
        netns::run(self.exec(&home.router.netns, "conntrack").arg("-L"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.daemons
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        netns::teardown(&self.created);
        self.delays.clear();
        for ns in self.created.iter().rev() {
            if let Err(e) = netns::delete(ns) {
                tracing::warn!("could not delete namespace {ns}: {e}");
            }
        }
        tracing::info!(prefix = %self.prefix, "lab is down");
    }
}

fn plan_home(prefix: &str, k: usize, spec: HomeSpec) -> Home {
    let k8 = k as u8; // spec.validate keeps k <= MAX_HOMES < 255
    let name = format!("h{k}");
    let (lan_ip, host_ip) = match spec.nat {
        Nat::Open => (None, Ipv4Addr::new(198, 18, k8, 2)),
        Nat::Cone | Nat::Symmetric => (
            Some(Ipv4Addr::new(10, k8, 0, 1)),
            Ipv4Addr::new(10, k8, 0, 2),
        ),
    };
    Home {
        number: k,
        spec,
        router: Router {
            netns: format!("{prefix}-{name}r"),
            wan_ip: Ipv4Addr::new(198, 18, k8, 1),
            lan_ip,
        },
        host: Host {
            netns: format!("{prefix}-{name}"),
            name,
            ip: host_ip,
        },
    }
}

fn cidr(ip: Ipv4Addr, len: u8) -> String {
    format!("{ip}/{len}")
}

/// Says plainly why a lab cannot be built here, before anything is made.
fn preflight() -> Result<(), LabError> {
    if !cfg!(target_os = "linux") {
        return Err(LabError::NamespacesNotPermitted {
            reason: "this is not Linux".into(),
        });
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(LabError::NamespacesNotPermitted {
            reason: format!("not running as root (effective uid {euid})"),
        });
    }
    for (tool, package) in [("ip", "iproute2"), ("iptables-restore", "iptables")] {
        if !netns::tool_on_path(tool) {
            return Err(LabError::MissingTool { tool, package });
        }
    }
    Ok(())
}
