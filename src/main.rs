//! `p2p-socket`: the command line. It parses, reports and waits for Ctrl-C; the tunnel itself
//! is the `p2p-socket` library crate.

mod access;
mod allocator;
mod config;
mod demo;
mod holesail;
mod manual;
mod report;
mod stdio;
mod udp;

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{ArgAction, CommandFactory, Parser, Subcommand};
use p2p_socket::{
    default_identity_path, npm_share_key_secret_bits, AllowList, Identity, KeyPair, PublicKey,
    ShareKeyRule,
};
use p2p_socket::{
    BootstrapNode, Connect, ConnectOptions, Connector, Events, Listen, NetworkOptions, Protocol,
    RelayLimits, RelayOptions, RelayServer, Service, Share, ShareOptions,
};
use report::{print_json_line, Output};
use serde_json::json;
use tracing_subscriber::EnvFilter;

/// Share a local TCP port with anyone, peer to peer, end-to-end encrypted, over HyperDHT.
///
/// Alice runs `p2p-socket share --port 8080` and sends Bob the key it prints. Bob runs
/// `p2p-socket connect --port 8080 --key <key>`, and his localhost:8080 reaches hers.
/// No account, no server in the middle; the peers find each other through the public
/// HyperDHT network (or a private one, see `bootstrap`).
#[derive(Parser, Debug)]
#[command(
    name = "p2p-socket",
    version,
    propagate_version = true,
    after_long_help = AFTER_HELP
)]
struct Cli {
    /// DHT bootstrap nodes, host:port[,host:port...]. Default: the public HyperDHT nodes.
    #[arg(
        long,
        global = true,
        env = "P2P_SOCKET_BOOTSTRAP",
        value_name = "HOST:PORT,..."
    )]
    bootstrap: Option<String>,

    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,

    /// Only print errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// Config file of default flags (see "Config file" in --help). Default: the platform's
    /// config dir, e.g. ~/.config/p2p-socket/config.toml, if it exists.
    #[arg(long, global = true, value_name = "PATH", env = config::CONFIG_ENV)]
    config: Option<PathBuf>,

    /// Take this command's flags from `[profiles.NAME]` of the config file.
    #[arg(long, global = true, value_name = "NAME")]
    profile: Option<String>,
    /// Machine-readable output: one JSON object per line on stdout (share, connect, relay,
    /// bootstrap), instead of the text and the status line. The schema is docs/json.md.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Share a local port: prints a key; whoever has it can connect.
    Share(ShareArgs),
    /// Connect to a share: listens locally, dials the sharer at once, and forwards every
    /// connection to the sharer.
    Connect {
        /// The key or connection string the sharer printed: 64 hex characters, 52 z-base-32
        /// characters, hs://0000<z32 key> (holesail public) or hs://s000<key string> (holesail
        /// secure, also `share --secret`: we connect with the key pair derived from it).
        #[arg(
            short,
            long,
            visible_alias = "remote-key",
            required_unless_present = "private",
            conflicts_with = "private"
        )]
        key: Option<String>,
        /// Local port to listen on (0 picks a free one). Without it, the port the sharer's
        /// service record names (holesail and p2p-socket shares keep one), else a free one.
        #[arg(short, long)]
        port: Option<u16>,
        /// Local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        /// Listen on a Unix socket at this path instead of a TCP port (created owner-only; a
        /// stale socket there is replaced, any other file refused).
        #[cfg(unix)]
        #[arg(short, long, value_name = "PATH", conflicts_with_all = ["port", "host"])]
        unix: Option<PathBuf>,
        /// The Unix socket's permission bits, in octal (660 lets the group connect too).
        #[cfg(unix)]
        #[arg(long, value_name = "OCTAL", default_value = "600", requires = "unix", value_parser = octal_mode)]
        unix_mode: u32,
        /// Carry one connection on stdin and stdout instead of listening, and exit when the
        /// sharer ends it (for ssh's ProxyCommand and other pipes).
        #[arg(long, conflicts_with_all = ["port", "host", "json"])]
        stdio: bool,
        /// A relay (`p2p-socket relay`) to go through when no hole can be punched to the
        /// sharer. One the sharer offers is used in preference.
        #[arg(long, value_name = "KEY")]
        relay: Option<String>,
        /// Go through a relay for every connection, never directly (to try a relay out, or
        /// where only the relay is reachable): ours, or the one the sharer offers.
        #[arg(long)]
        force_relay: bool,
        #[command(flatten)]
        udp: udp::UdpArgs,
        #[command(flatten)]
        access: access::ConnectAccess,
        /// Local connections open at once; past this, new ones are closed at once (the log
        /// says so).
        #[arg(long, value_name = "N", default_value_t = Connect::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
        /// Give every local connection an encrypted connection of its own, even when the
        /// sharer can carry them all on one (docs/multiplexing.md).
        #[arg(long)]
        no_multiplex: bool,
        /// Dial the sharer only when the first local connection comes, not at start. By
        /// default connect dials at once, so the first connection does not wait for the
        /// lookup, handshake and hole punch, and an unreachable sharer is reported before any
        /// program connects; a sharer that does not multiplex (Node, holesail) then opens one
        /// connection to its service that stays unused until a local connection takes it (at
        /// most 15 s).
        #[arg(long)]
        lazy: bool,
    },
    /// Create an identity file so `share` keeps the same key across restarts (compatible with
    /// the npm p2p-socket's identity.json).
    CreateId {
        /// Derive the identity from these words instead of at random (anyone who knows them can
        /// derive the key too). Words are joined without spaces, as the npm p2p-socket does.
        #[arg(short, long, value_name = "WORDS", num_args = 1..)]
        seed: Vec<String>,
        /// Where to write it.
        #[arg(long, value_name = "PATH")]
        identity: Option<PathBuf>,
    },
    /// Run a blind relay: peers that cannot punch through their NATs to each other connect
    /// through it (with `--relay <its key>`). It passes on their packets, end-to-end encrypted
    /// (it sees ciphertext only). Run it on a host with a public address.
    Relay {
        /// Derive the relay's key from these words, so it stays the same across restarts
        /// (anyone who knows them can derive the key too).
        #[arg(short, long, value_name = "WORDS", num_args = 1.., conflicts_with = "identity")]
        seed: Vec<String>,
        /// Use the key pair of this identity file (see `create-id`) as the relay's key.
        #[arg(long, value_name = "PATH")]
        identity: Option<PathBuf>,
        /// Peers' connections to the relay open at once (the relay's memory grows with them).
        #[arg(long, value_name = "N", default_value_t = RelayLimits::default().max_sessions)]
        max_sessions: usize,
        /// Connections open at once from one IP address.
        #[arg(long, value_name = "N", default_value_t = RelayLimits::default().max_sessions_per_ip)]
        max_sessions_per_ip: usize,
        /// Pairings waiting for their other side, over all connections.
        #[arg(long, value_name = "N", default_value_t = RelayLimits::default().max_pending)]
        max_pending: usize,
    },
    /// Run a DHT bootstrap node, the entry point of a private network.
    Bootstrap {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0")]
        host: IpAddr,
        /// UDP port to listen on.
        #[arg(long, default_value_t = p2p_socket::DEFAULT_BOOTSTRAP_PORT)]
        port: u16,
    },
    /// Show the whole thing working on this machine, no internet needed: a private DHT, a
    /// share of a built-in web page, a connect, and a verified fetch through the tunnel.
    Demo,
    /// Print a shell completion script, e.g. `p2p-socket completions bash >
    /// ~/.local/share/bash-completion/completions/p2p-socket`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (`p2p-socket man | man -l -`), or write one per command into a
    /// directory.
    Man {
        /// Write p2p-socket.1, p2p-socket-share.1, ... into this directory instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// The end of `--help`: what the rest of the world needs to drive the tool.
const AFTER_HELP: &str = "\
Exit codes:
  0  done (a share, connect, relay or bootstrap node runs until Ctrl-C or SIGTERM, then exits 0)
  1  failed: could not start (port busy, DHT unreachable, bad identity file...) or stopped by
     an error; the message says what happened and what to do
  2  bad command line or config file

Config file:
  Every key is the long name of a flag; values are strings, numbers, true/false or lists.
  Top-level keys apply to every command, [share], [connect], [relay]... to one command, and
  [profiles.NAME] to the command run with --profile NAME. The command line beats the
  environment (P2P_SOCKET_BOOTSTRAP...), which beats the profile, then the command's table,
  then the top level.

    bootstrap = \"203.0.113.7:49737\"
    [profiles.web]
    port = 8080

  `p2p-socket share --profile web` then shares port 8080 through that bootstrap node.

Environment:
  RUST_LOG             log filter, overrides -v/-q (e.g. RUST_LOG=p2p_socket=debug)
  P2P_SOCKET_BOOTSTRAP same as --bootstrap
  P2P_SOCKET_CONFIG    same as --config
  P2P_SOCKET_FIREWALLED=1  never claim to be reachable (forces hole punching; for testing)";

/// `own_output`: the command prints what matters itself (the demo's steps, a completion script,
/// a man page), so only warnings are logged by default.
fn init_logging(verbose: u8, quiet: bool, own_output: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) if own_output => "warn",
        (false, 0) => "warn,p2p_socket=info,p2p_socket_cli=info",
        (false, 1) => "info,p2p_socket=debug,p2p_socket_cli=debug,udx=debug",
        (false, _) => "debug,p2p_socket=trace,udx=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(report::LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn network(cli_bootstrap: &Option<String>) -> Result<NetworkOptions> {
    let bootstrap = match cli_bootstrap {
        Some(list) => {
            let nodes = NetworkOptions::parse_bootstrap_list(list)?;
            if nodes.is_empty() {
                bail!("--bootstrap is empty; give host:port, or leave it out to use the public network");
            }
            nodes
        }
        None => Vec::new(),
    };
    Ok(NetworkOptions {
        // For networks where the reachability check misleads, and for exercising punching on
        // one machine: never claim to be reachable.
        firewalled: std::env::var("P2P_SOCKET_FIREWALLED").is_ok_and(|v| v == "1" || v == "true"),
        ..NetworkOptions::with_bootstrap(bootstrap)
    })
}

/// Exit code of a bad command line or config file, as clap uses for a bad flag.
const EXIT_USAGE: i32 = 2;
/// Exit code of a failure at run time.
const EXIT_FAILED: i32 = 1;

#[tokio::main]
async fn main() {
    allocator::tune();
    let args = match config::expand(&Cli::command(), std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::new(e));
            std::process::exit(EXIT_USAGE);
        }
    };
    let cli = Cli::parse_from(args);
    let quiet_logs = matches!(
        cli.command,
        Command::Demo | Command::Completions { .. } | Command::Man { .. }
    );
    init_logging(cli.verbose, cli.quiet, quiet_logs);
    let json = cli.json;
    if let Err(e) = run(cli).await {
        if json {
            print_json_line(json!({"event": "error", "message": format!("{e:#}")}));
        }
        eprintln!("error: {e:#}");
        std::process::exit(EXIT_FAILED);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let output = Output::choose(cli.json, cli.quiet);
    let long_running = match &cli.command {
        Command::Share(_) | Command::Relay { .. } | Command::Bootstrap { .. } => true,
        Command::Connect { stdio, .. } => !stdio,
        _ => false,
    };
    if long_running {
        watch_for_shutdown()?;
    }
    match cli.command {
        Command::Share(args) => share(network(&cli.bootstrap)?, args, &cli.bootstrap, output).await,
        Command::Connect {
            key,
            port,
            host,
            #[cfg(unix)]
            unix,
            #[cfg(unix)]
            unix_mode,
            stdio,
            relay,
            force_relay,
            udp,
            access,
            max_connections,
            no_multiplex,
            lazy,
        } => {
            let (key_pair, remote) = match (access.resolve()?, key) {
                ((key_pair, Some(remote)), _) => (key_pair, remote),
                ((key_pair, None), Some(key)) => {
                    let (remote, secret_pair) = holesail::connect_key(&key)?;
                    // A secret-mode string prescribes the key pair; --identity otherwise.
                    (secret_pair.unwrap_or(key_pair), remote)
                }
                (_, None) => bail!("give the sharer's key with --key"),
            };
            let relay = relay_key(relay)?;
            let network = network(&cli.bootstrap)?;
            if stdio {
                let mut connector = Connector::new(&network, key_pair, remote)
                    .await
                    .map_err(with_hint)
                    .context("could not find the sharer")?
                    .force_relay(force_relay);
                if let Some(relay) = relay {
                    connector = connector.with_relay(relay);
                }
                stdio::run(connector).await?;
                // Now, not when main returns: the runtime would wait for the thread still
                // blocked reading stdin.
                std::process::exit(0);
            }
            // A Unix socket has no port to learn from the sharer's record.
            #[cfg(unix)]
            let wants_port = unix.is_none();
            #[cfg(not(unix))]
            let wants_port = true;
            let from_record = port.is_none() && wants_port;
            let port = match (port, wants_port) {
                (port, true) => holesail::listen_port(&network, remote, port).await?,
                (port, false) => port.unwrap_or(0),
            };
            let listen = Listen::Tcp(SocketAddr::new(host, port));
            #[cfg(unix)]
            let listen = match unix {
                Some(path) => Listen::Unix {
                    path,
                    mode: unix_mode,
                },
                None => listen,
            };
            connect(
                ConnectOptions {
                    network,
                    key_pair,
                    remote,
                    listen,
                    relay,
                    force_relay,
                    protocol: udp.protocol()?,
                    max_connections,
                    multiplex: !no_multiplex,
                    dial_at_start: !lazy,
                    events: Events::new(),
                },
                from_record,
                output,
            )
            .await
        }
        Command::Relay {
            seed,
            identity,
            max_sessions,
            max_sessions_per_ip,
            max_pending,
        } => {
            let limits = RelayLimits {
                max_sessions,
                max_sessions_per_ip,
                max_pending,
                ..RelayLimits::default()
            };
            relay(network(&cli.bootstrap)?, seed, identity, limits, output).await
        }
        Command::CreateId { seed, identity } => {
            let path = identity.unwrap_or_else(default_identity_path);
            let seed = seed.concat();
            let (identity, path) = Identity::save_new(&path, Some(seed.as_str()))?;
            println!("Wrote a new identity to {}", path.display());
            println!("Its public key: {}", identity.public_key());
            println!("`p2p-socket connect --identity {}` connects as this key; a sharer admits it with --allow {}.", path.display(), identity.public_key());
            println!("`p2p-socket share` run in this directory now keeps the same key for the same --host and --port.");
            Ok(())
        }
        Command::Bootstrap { host, port } => {
            let peers = match &cli.bootstrap {
                Some(list) => NetworkOptions::parse_bootstrap_list(list)?,
                None => Vec::new(),
            };
            let node = BootstrapNode::start(host, port, &peers)
                .await
                .context("could not start the bootstrap node")?;
            let addr = node.local_addr()?;
            if output == Output::Json {
                print_json_line(json!({"event": "listening", "local": addr.to_string()}));
            } else {
                println!("Bootstrap node running on {addr} (UDP).");
                println!(
                    "Point peers at it with: --bootstrap <this machine's address>:{}",
                    addr.port()
                );
            }
            wait_for_shutdown().await?;
            node.close().await;
            Ok(())
        }
        Command::Demo => demo::run().await,
        Command::Completions { shell } => {
            manual::completions(Cli::command(), shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out_dir } => {
            manual::man(Cli::command(), out_dir.as_deref(), &mut std::io::stdout())
        }
    }
}

/// The engine's error with the flag that helps, where one does: the engine's messages speak of
/// what to do, the CLI of how.
fn with_hint(e: p2p_socket::Error) -> anyhow::Error {
    let hint = match &e {
        p2p_socket::Error::Bind { .. } => Some("choose the local port with --port"),
        p2p_socket::Error::BootstrapUnreachable { .. } => {
            Some("leave out --bootstrap (and P2P_SOCKET_BOOTSTRAP) to use the public network")
        }
        p2p_socket::Error::PeerNotFound { .. } => {
            Some("check the --key, and that share and connect use the same --bootstrap nodes")
        }
        p2p_socket::Error::HolepunchFailed { .. }
        | p2p_socket::Error::RelayNeeded { .. }
        | p2p_socket::Error::NoRelay { .. } => Some("name a relay with --relay KEY on either side"),
        p2p_socket::Error::RelayFailed { .. } => {
            Some("check the --relay KEY, or leave it out to try without a relay")
        }
        _ => None,
    };
    match hint {
        Some(hint) => anyhow::Error::new(e).context(hint),
        None => anyhow::Error::new(e),
    }
}

#[cfg(unix)]
fn octal_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| format!("{text:?} is not a file mode: give octal digits, like 600 or 660"))
}

fn relay_key(key: Option<String>) -> Result<Option<PublicKey>> {
    key.map(|k| k.parse().context("the --relay is not a relay key"))
        .transpose()
}

/// What `share` takes.
#[derive(clap::Args, Debug)]
struct ShareArgs {
    /// Port of the local service to share.
    #[arg(short, long, required_unless_present = "unix")]
    port: Option<u16>,
    /// Host of the local service.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Share the service listening on this Unix socket instead of a TCP port.
    #[cfg(unix)]
    #[arg(short, long, value_name = "PATH", conflicts_with_all = ["port", "host"])]
    unix: Option<PathBuf>,
    /// Identity file; with one (see `create-id`) the key stays the same across restarts.
    /// Without one, a new key is made for this run.
    #[arg(long, value_name = "PATH")]
    identity: Option<PathBuf>,
    /// A relay (`p2p-socket relay`) to offer peers that cannot reach us otherwise; they go
    /// through it only when no hole can be punched.
    #[arg(long, value_name = "KEY")]
    relay: Option<String>,
    /// How the share key is derived from the identity file. `hashed`: from the whole
    /// secret (safe for any host; a different key from the npm p2p-socket's, so peers
    /// that have the old key need the new one). `npm`: the npm p2p-socket's key, which
    /// keeps only the part of the secret that fits after "host:port:" in 32 bytes
    /// (68 bits for localhost:8080, none for a host of 26+ characters). Default: the npm
    /// key, with a warning, where it keeps at least 64 bits; below that, share refuses
    /// until you choose.
    #[arg(long, value_enum, value_name = "RULE")]
    key_derivation: Option<KeyDerivation>,
    /// Peer connections open at once; past this, new peers get no answer until some
    /// close (the log says so).
    #[arg(long, value_name = "N", default_value_t = Share::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    #[command(flatten)]
    udp: udp::UdpArgs,
    #[command(flatten)]
    access: access::ShareAccess,
    #[command(flatten)]
    holesail: holesail::SecretArgs,
}

/// `--key-derivation`: the CLI's names for the library's [`ShareKeyRule`]s.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KeyDerivation {
    Npm,
    Hashed,
}

/// The share key of `host:port` under `identity`: the rule the user chose, or the npm key
/// where it keeps enough secret (said in a warning, since none keeps the full 128 bits), else
/// a refusal that names the choices.
fn share_key_pair(
    identity: &Identity,
    host: &str,
    port: u16,
    chosen: Option<KeyDerivation>,
) -> Result<KeyPair> {
    let npm_key = match chosen {
        Some(KeyDerivation::Hashed) => {
            return Ok(identity.share_key_pair(host, port, ShareKeyRule::Hashed))
        }
        Some(KeyDerivation::Npm) => identity.share_key_pair(host, port, ShareKeyRule::Npm),
        None => identity.checked_share_key_pair(host, port).context(
            "no safe share key without a choice: --key-derivation hashed (a new key from the whole secret: give your peers \
             the new key), or --key-derivation npm to keep the npm p2p-socket's key knowingly",
        )?,
    };
    tracing::warn!(
        secret_bits = npm_share_key_secret_bits(host, port),
        "using the npm p2p-socket's share key, which keeps only part of the identity's secret \
         (the first 32 bytes of \"host:port:secret\"); --key-derivation hashed derives a \
         full-strength key from the whole secret (a new key: give your peers the new one)"
    );
    Ok(npm_key)
}

async fn share(
    network: NetworkOptions,
    args: ShareArgs,
    bootstrap: &Option<String>,
    output: Output,
) -> Result<()> {
    let ShareArgs {
        port,
        host,
        #[cfg(unix)]
        unix,
        identity,
        relay,
        key_derivation,
        max_connections,
        udp,
        access,
        holesail,
    } = args;
    let protocol = udp.protocol()?;
    let relay = relay_key(relay)?;
    // clap requires --port unless --unix is given.
    let port = port.unwrap_or_default();
    let service = Service::Tcp {
        host: host.clone(),
        port,
    };
    #[cfg(unix)]
    let service = match unix {
        Some(path) => Service::Unix(path),
        None => service,
    };
    // An identity's share key is made from where the service is: host and port, or the
    // socket's path.
    let (key_host, key_port) = match &service {
        Service::Tcp { .. } if port == 0 => {
            bail!("--port 0 is not a service port; give the port your local service listens on")
        }
        Service::Tcp { host, port } => (host.clone(), *port),
        other => (other.to_string(), 0),
    };
    let secret = holesail.key_string()?;
    let access = access.resolve(identity.is_some())?;
    let identity_path = identity.clone().unwrap_or_else(default_identity_path);
    // A key string or a seed fixes the key: an identity file lying in the directory has no say.
    let stored = match (&secret, &access.key_pair) {
        (None, None) => Identity::load_optional(&identity_path)?,
        _ => None,
    };
    let key_pair = match (&secret, access.key_pair, stored) {
        (Some(secret), _, _) => secret.key_pair(),
        (None, Some(seeded), _) => seeded,
        (None, None, Some(id)) => {
            tracing::info!(path = %identity_path.display(), "using identity");
            share_key_pair(&id, &key_host, key_port, key_derivation)?
        }
        (None, None, None) if identity.is_some() => bail!(
            "no identity file at {}; create one with `p2p-socket create-id --identity {}`",
            identity_path.display(),
            identity_path.display()
        ),
        (None, None, None) => KeyPair::generate(),
    };
    // Secret mode admits only the key pair derived from the key string, as holesail's secure
    // mode does: knowing the public key is not enough.
    let allow = match &secret {
        Some(_) => {
            let mut list = access.allow.unwrap_or_else(AllowList::new);
            list.insert(key_pair.public_key())?;
            Some(list)
        }
        None => access.allow,
    };
    let connect_with = access.connect_with;
    let allowed = allow.as_ref().map(|a| a.len()).filter(|_| secret.is_none());
    let udp = matches!(protocol, Protocol::Udp(_));
    let events = Events::new();
    output.report_with(
        &events,
        serde_json::json!({
            "connection_string": holesail::connection_string(key_pair.public_key(), secret.as_ref()).to_string(),
            "secret": secret.is_some(),
        }),
    );
    // The record goes up while the share announces, not after: each joins the DHT.
    let (share, record) = tokio::join!(
        Share::start(ShareOptions {
            network: network.clone(),
            key_pair: key_pair.clone(),
            service: service.clone(),
            relay,
            max_connections,
            protocol,
            allow,
            events,
        }),
        holesail::keep_record(&network, key_pair, &key_host, key_port, udp)
    );
    let share = share
        .map_err(with_hint)
        .context("could not start sharing")?;
    let key = share.public_key();
    if output != Output::Json {
        let bootstrap_flag = bootstrap
            .as_ref()
            .map(|b| format!(" --bootstrap {b}"))
            .unwrap_or_default();
        holesail::print_share(
            &holesail::Shared {
                service: &service,
                udp,
                key,
                secret: secret.as_ref(),
                connect_with: connect_with.as_deref(),
            },
            holesail.qr,
            &bootstrap_flag,
        );
        if let Some(n) = allowed.filter(|_| connect_with.is_none()) {
            println!("Only the {n} allowed client key(s) get in: add --identity <their identity file> there.");
        }
    }
    wait_for_shutdown().await?;
    eprintln!("stopping: withdrawing the announcement");
    if let Some(record) = record {
        record.close().await;
    }
    share.close().await;
    Ok(())
}

/// Runs connect until Ctrl-C; a port learned from the sharer's record that is taken here is
/// given up for a free one (`from_record`).
async fn connect(mut opts: ConnectOptions, from_record: bool, output: Output) -> Result<()> {
    let remote = opts.remote;
    let what = if opts.protocol == Protocol::Tcp {
        "Connections to it"
    } else {
        "UDP datagrams to it"
    };
    output.report(&opts.events);
    let started = match Connect::start(opts.clone()).await {
        Err(e) if from_record && holesail::port_taken(&e) => match opts.listen {
            Listen::Tcp(addr) if addr.port() != 0 => {
                opts.listen = Listen::Tcp(holesail::free_port_on(addr.ip(), addr.port()));
                Connect::start(opts).await
            }
            _ => Err(e),
        },
        started => started,
    };
    let connect = started.map_err(with_hint).context("could not connect")?;
    if output != Output::Json {
        println!("Listening on {}", connect.local());
        println!("{what} reach the sharer of {remote}.");
    }
    wait_for_shutdown().await?;
    connect.close().await;
    Ok(())
}

async fn relay(
    network: NetworkOptions,
    seed: Vec<String>,
    identity: Option<PathBuf>,
    limits: RelayLimits,
    output: Output,
) -> Result<()> {
    let key_pair = match identity {
        Some(path) => Identity::load(&path)
            .with_context(|| format!("cannot use {} as the relay's identity", path.display()))?
            .key_pair()
            .clone(),
        None if !seed.is_empty() => KeyPair::from_seed_text(&seed.concat()),
        None => KeyPair::generate(),
    };
    let relay = RelayServer::start(RelayOptions {
        network,
        key_pair,
        limits,
    })
    .await
    .context("could not start the relay")?;
    let key = relay.public_key();
    if output == Output::Json {
        print_json_line(json!({"event": "listening", "key": key.to_string()}));
    } else {
        println!("Relay running. Key:");
        println!("{key}");
        println!("Peers use it with: p2p-socket share|connect ... --relay {key}");
    }
    wait_for_shutdown().await?;
    eprintln!("stopping: withdrawing the announcement");
    relay.close().await;
    Ok(())
}

/// Set once Ctrl-C or SIGTERM arrived; see [`watch_for_shutdown`].
static SHUTDOWN: std::sync::OnceLock<tokio::sync::watch::Receiver<bool>> =
    std::sync::OnceLock::new();

/// Starts listening for Ctrl-C and SIGTERM now, before the command starts: a share announces
/// itself (its `--json` `listening` line is out) before it is done starting, and a signal in
/// that window must still end it cleanly, not kill it.
fn watch_for_shutdown() -> Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::spawn(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop.send(true);
    });
    let _ = SHUTDOWN.set(stopped);
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn wait_for_shutdown() -> Result<()> {
    let mut stopped = SHUTDOWN
        .get()
        .context("no watch for Ctrl-C was started")?
        .clone();
    stopped
        .wait_for(|stop| *stop)
        .await
        .context("cannot watch for Ctrl-C")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// clap checks a definition's consistency (conflicts, requirements naming real arguments)
    /// only in debug builds, which the tests do not use: ask for it here.
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
