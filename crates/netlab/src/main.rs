//! `netlab`: bring the NAT lab up for a person to use by hand, clean up labs left behind, and
//! (hidden, for tests) small UDP probes to run inside the lab's namespaces.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};
use netlab::probe::{self, ProbeOptions};
use netlab::{Home, Lab, LabError, LabSpec, Nat, DHT_PORT};
use tracing_subscriber::EnvFilter;

/// A NAT network lab of Linux network namespaces: a simulated internet with a DHT, and homes
/// behind open, cone or symmetric NATs. Needs root. See docs/lab.md.
#[derive(Parser, Debug)]
#[command(name = "netlab", version)]
struct Cli {
    /// More log output (-v: the lab's steps and its processes' output, -vv: debug).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Bring a lab up with a running DHT, print how to use it, and tear it down on Ctrl-C.
    Up {
        /// The NAT type of each home, in order: open, cone or symmetric.
        #[arg(long, value_delimiter = ',', default_value = "cone,symmetric")]
        homes: Vec<Nat>,
        /// Share of the packets leaving each home that its uplink loses (e.g. 0.05).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Delay of the packets leaving each home on its uplink, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Extra delay per packet, uniform random from 0 to this many milliseconds, on top of
        /// --delay-ms: packets overtake each other, as on Wi-Fi or a multipath link.
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
        /// The p2p-socket binary that runs the DHT nodes (default: the one built next to netlab).
        #[arg(long, value_name = "PATH")]
        p2p_socket: Option<PathBuf>,
    },
    /// Remove labs whose creating process is dead (namespaces and the processes in them).
    Cleanup,
    /// Answer every UDP datagram with the sender's address as seen here.
    #[command(hide = true)]
    UdpEcho {
        #[arg(long)]
        bind: SocketAddr,
    },
    /// Send numbered UDP packets from one socket to echoes; print one report line per echo.
    #[command(hide = true)]
    UdpProbe {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long = "to", required = true)]
        targets: Vec<SocketAddr>,
        #[arg(long, default_value_t = 3)]
        count: u32,
        #[arg(long)]
        ttl: Option<u32>,
        #[arg(long, default_value_t = 1)]
        interval_ms: u64,
        #[arg(long, default_value_t = 1000)]
        wait_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), LabError> {
    match command {
        Command::Up {
            homes,
            loss,
            delay_ms,
            jitter_ms,
            p2p_socket,
        } => up(
            homes,
            loss,
            Duration::from_millis(delay_ms),
            Duration::from_millis(jitter_ms),
            p2p_socket,
        ),
        Command::Cleanup => {
            let removed = netlab::remove_stale_labs()?;
            if removed.is_empty() {
                println!("No stale labs.");
            }
            for ns in removed {
                println!("removed {ns}");
            }
            Ok(())
        }
        Command::UdpEcho { bind } => Ok(probe::echo(bind)?),
        Command::UdpProbe {
            bind,
            targets,
            count,
            ttl,
            interval_ms,
            wait_ms,
        } => {
            let reports = probe::probe(&ProbeOptions {
                bind,
                targets,
                count,
                ttl,
                interval: Duration::from_millis(interval_ms),
                wait: Duration::from_millis(wait_ms),
            })?;
            for r in reports {
                println!("{r}");
            }
            Ok(())
        }
    }
}

fn up(
    homes: Vec<Nat>,
    loss: f64,
    delay: Duration,
    jitter: Duration,
    p2p_socket: Option<PathBuf>,
) -> Result<(), LabError> {
    if homes.is_empty() {
        return Err(LabError::Spec(
            "give at least one home: --homes cone,symmetric".into(),
        ));
    }
    let p2p_socket = match p2p_socket {
        Some(p) => p,
        None => netlab::find_binary("p2p-socket")?,
    };
    // Ctrl-C and SIGTERM are taken with sigwait below; blocked from here on, in this thread
    // and in every thread the lab starts, so they cannot kill the process mid-teardown.
    let signals = block_stop_signals();
    let lab = Lab::new(LabSpec::homes(homes).loss(loss).delay(delay).jitter(jitter))?;
    let bootstrap = lab.start_dht(&p2p_socket)?;
    print_guide(&lab, &bootstrap, &p2p_socket);
    wait_for(&signals);
    println!("\nTearing the lab down...");
    drop(lab);
    println!("Done: every namespace, link and process of the lab is gone.");
    Ok(())
}

fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set, then masking the calling thread. The
    // default disposition is restored first because a shell starts background jobs with
    // SIGINT ignored, and an ignored signal never reaches sigwait.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for(signals: &libc::sigset_t) {
    let mut sig = 0;
    // SAFETY: the set is initialised and blocked in this thread.
    unsafe { libc::sigwait(signals, &mut sig) };
}

fn print_guide(lab: &Lab, bootstrap: &str, bin: &Path) {
    let bin = bin.display();
    println!(
        "netlab: lab {} is up. Ctrl-C tears it all down.\n",
        lab.prefix()
    );
    println!(
        "The internet: 198.18.0.0/15, a bridge in namespace {}",
        lab.internet_netns()
    );
    for (i, h) in lab.dht_hosts().iter().enumerate() {
        let role = if i == 0 { "DHT bootstrap" } else { "DHT node" };
        println!(
            "  {role:<14} {:<18} netns {}",
            format!("{}:{DHT_PORT}", h.ip),
            h.netns
        );
    }
    let relay = lab.relay_host();
    println!(
        "  {:<14} {:<18} netns {}  (nothing runs there yet)",
        "relay host", relay.ip, relay.netns
    );
    println!("Homes:");
    for home in lab.homes() {
        println!("  {}", describe(home));
    }
    let a = &lab.homes()[0];
    let b = lab.homes().get(1).unwrap_or(a);
    println!(
        "\nTry it, each line in its own terminal (as root):\n\
         \n  # home {an}: a service to share (any TCP server on 127.0.0.1 will do)\
         \n  ip netns exec {ans} python3 -m http.server 8080 --bind 127.0.0.1\
         \n  # home {an}: share it; it prints a key\
         \n  ip netns exec {ans} {bin} share --host 127.0.0.1 --port 8080 --bootstrap {bootstrap}\
         \n  # home {bn}: connect with that key\
         \n  ip netns exec {bns} {bin} connect --port 9090 --key <KEY> --bootstrap {bootstrap}\
         \n  # home {bn}: use it\
         \n  ip netns exec {bns} curl -s http://127.0.0.1:9090/\
         \n\nLook inside:\
         \n  ip netns exec {ars} conntrack -L      # the NAT's table in home {an}\
         \n  ip netns exec {ars} iptables-save     # its rules\
         \n  ip netns exec {ans} bash              # a shell in home {an}",
        an = a.number,
        ans = a.host.netns,
        ars = a.router.netns,
        bn = b.number,
        bns = b.host.netns,
    );
}

fn describe(home: &Home) -> String {
    let mut line = format!(
        "home {}  {:<9}  host {:<10} netns {}  public {} (router netns {})",
        home.number,
        home.nat().as_str(),
        home.host.ip,
        home.host.netns,
        home.public_ip(),
        home.router.netns
    );
    if home.spec.loss > 0.0 {
        line += &format!("  loss {}% outbound", home.spec.loss * 100.0);
    }
    if !home.spec.delay.is_zero() {
        line += &format!("  delay {} ms outbound", home.spec.delay.as_millis());
    }
    if !home.spec.jitter.is_zero() {
        line += &format!("  + 0-{} ms jitter", home.spec.jitter.as_millis());
    }
    line
}
