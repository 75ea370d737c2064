//! The comparison benchmark: the same workload, in one run on loopback, straight over TCP,
//! through our share/connect pair, through the Node hyperdht pair (the npm p2p-socket's wiring,
//! `interop/node/server.js` and `client.js`) and through dumbpipe 0.40.1 (iroh, QUIC), with the
//! two DHT tunnels on one private DHT.
//!
//! ```text
//! cargo bench --bench compare              # 1 GiB each way, 1,000 round trips, 50 x 1 MiB, ...
//! cargo bench --bench compare -- --quick   # small sizes: a smoke run in well under a minute
//! cargo bench --bench compare -- --only rust,node --bulk-mib 256   # some paths, other volume
//! cargo bench --bench compare -- --only rust --round-trips 20000   # long enough to profile
//! ```
//!
//! Needs Node with `npm ci` run in interop/node, and dumbpipe, which the benchmark builds
//! itself into `target/bench-tools` (`cargo install --locked`, a few minutes, once) when it is
//! missing. Prints a Markdown table and writes it to `target/bench-compare.md`. Besides speed it
//! reports the CPU time each side spent per GiB of bulk, which still means something on a
//! machine busy with other work, when the rates do not.

use test_support as support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::cli::{ConnectProcess, LocalDht, ShareProcess};
use support::node::{hypertele_client, NodeClient, NodeServer};
use support::process::ChildProcess;

const MIB: u64 = 1024 * 1024;
const DUMBPIPE_VERSION: &str = "0.40.1";
/// No transfer in the benchmark should stall this long; one that does counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// The sizes of one run.
struct Workload {
    bulk: u64,
    round_trips: usize,
    concurrent: usize,
    concurrent_size: u64,
    burst: usize,
    burst_size: u64,
    fresh_connections: usize,
    dht_nodes: usize,
}

const FULL: Workload = Workload {
    bulk: 1024 * MIB,
    round_trips: 1000,
    concurrent: 50,
    concurrent_size: MIB,
    burst: 30,
    burst_size: 4 * 1024,
    fresh_connections: 20,
    dht_nodes: 10,
};

const QUICK: Workload = Workload {
    bulk: 32 * MIB,
    round_trips: 200,
    concurrent: 50,
    concurrent_size: 64 * 1024,
    burst: 30,
    burst_size: 4 * 1024,
    fresh_connections: 5,
    dht_nodes: 3,
};

// ---------------------------------------------------------------------------------------------
// The service every path leads to. A request is one command byte and a little-endian u64:
// `D n` sends n bytes and closes, `U n` reads n bytes and answers their sha256, `E` echoes.
// The bytes are a pseudo-random pattern with a period that is no power of two, so a lost,
// repeated or shifted message cannot hash the same.

const PERIOD: usize = 1_048_573;

fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut buf = vec![0u8; 2 * PERIOD];
        support::net::Pattern::new(7).fill(&mut buf[..PERIOD]);
        buf.copy_within(..PERIOD, PERIOD);
        buf
    })
}

/// Writes the first `n` bytes of the endless pattern.
fn send_pattern(w: &mut impl Write, n: u64) -> std::io::Result<()> {
    let p = pattern();
    let mut sent = 0u64;
    while sent < n {
        let at = (sent % PERIOD as u64) as usize;
        let len = (n - sent).min(PERIOD as u64) as usize;
        w.write_all(&p[at..at + len])?;
        sent += len as u64;
    }
    Ok(())
}

/// The sha256 of the first `n` pattern bytes (computed once per size, before any timing).
fn expected_sha(n: u64) -> [u8; 32] {
    static CACHE: OnceLock<Mutex<HashMap<u64, [u8; 32]>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(sha) = cache.lock().unwrap().get(&n) {
        return *sha;
    }
    let mut h = HashWriter(Sha256::new());
    send_pattern(&mut h, n).unwrap();
    let sha = h.0.finalize().into();
    cache.lock().unwrap().insert(n, sha);
    sha
}

struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads exactly `n` bytes (or to the end when `n` is `None`); returns their count and sha256.
fn read_hashed(r: &mut impl Read, n: Option<u64>) -> std::io::Result<(u64, [u8; 32])> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let want = match n {
            Some(n) if total == n => break,
            Some(n) => (n - total).min(buf.len() as u64) as usize,
            None => buf.len(),
        };
        let got = r.read(&mut buf[..want])?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        total += got as u64;
    }
    Ok((total, h.finalize().into()))
}

fn request(cmd: u8, n: u64) -> [u8; 9] {
    let mut r = [cmd; 9];
    r[1..].copy_from_slice(&n.to_le_bytes());
    r
}

fn serve(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let _ = conn.set_nodelay(true);
    let mut req = [0u8; 9];
    conn.read_exact(&mut req)?;
    let n = u64::from_le_bytes(req[1..].try_into().unwrap());
    match req[0] {
        b'D' => send_pattern(&mut conn, n),
        b'U' => {
            let (_, sha) = read_hashed(&mut conn, Some(n))?;
            conn.write_all(&sha)
        }
        b'E' => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let got = conn.read(&mut buf)?;
                if got == 0 {
                    return conn.shutdown(Shutdown::Write);
                }
                conn.write_all(&buf[..got])?;
            }
        }
        _ => Ok(()),
    }
}

/// The service on 127.0.0.1, a thread per connection; it lives as long as the benchmark.
fn start_service() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the benchmark service");
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || serve(conn));
        }
    });
    port
}

// ---------------------------------------------------------------------------------------------
// The paths to the service.

/// One way to reach the service: a local port and the processes on either side (none for
/// direct TCP), kept running while it is measured.
struct Path {
    name: &'static str,
    port: u16,
    /// The sharing side's and the connecting side's process ids.
    pids: Option<(u32, u32)>,
    /// Our share's key, which other tools' clients are pointed at too.
    share_key: Option<String>,
    _processes: Vec<ChildProcess>,
}

fn direct(service: u16) -> Path {
    Path {
        name: "direct TCP",
        port: service,
        pids: None,
        share_key: None,
        _processes: Vec::new(),
    }
}

fn ours(dht: &LocalDht, service: u16) -> Path {
    let share = ShareProcess::start(&dht.bootstrap, service, &[]);
    let connect = ConnectProcess::start(&dht.bootstrap, &share.key);
    Path {
        name: "p2p-socket (Rust)",
        port: connect.addr.port(),
        pids: Some((share.process.pid(), connect.process.pid())),
        share_key: Some(share.key),
        _processes: vec![share.process, connect.process],
    }
}

fn node(dht: &LocalDht, service: u16) -> Path {
    let bootstrap = vec![dht.bootstrap.clone()];
    let server = NodeServer::start(&bootstrap, service, None);
    let client = NodeClient::start(&bootstrap, &server.public_key, 0);
    Path {
        name: "Node hyperdht",
        port: client.port,
        pids: Some((server.process.pid(), client.process.pid())),
        share_key: None,
        _processes: vec![server.process, client.process],
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// The pinned dumbpipe, built into `target/bench-tools` when it is not there yet.
fn dumbpipe_binary() -> PathBuf {
    let root = target_dir().join("bench-tools");
    let bin = root.join("bin/dumbpipe");
    let installed = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(DUMBPIPE_VERSION))
        .unwrap_or(false);
    if installed {
        return bin;
    }
    eprintln!(
        "building dumbpipe {DUMBPIPE_VERSION} into {} (once; a few minutes)",
        root.display()
    );
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "install",
            "--locked",
            "dumbpipe",
            "--version",
            DUMBPIPE_VERSION,
            "--root",
        ])
        .arg(&root)
        .status();
    match status {
        Ok(s) if s.success() => bin,
        other => panic!(
            "could not build dumbpipe {DUMBPIPE_VERSION} ({other:?}): it needs crates.io; run \
             `cargo install --locked dumbpipe --version {DUMBPIPE_VERSION} --root {}` by hand",
            root.display()
        ),
    }
}

/// dumbpipe with its stderr (where it prints its ticket) on the stdout the runner reads.
fn dumbpipe(bin: &std::path::Path, args: &[&str], name: &str) -> ChildProcess {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", r#"exec "$0" "$@" 2>&1"#])
        .arg(bin)
        .args(args)
        // Bound to loopback only: dumbpipe's n0 preset would otherwise reach for iroh's public
        // relays, and the benchmark stays on 127.0.0.0/8. Its ticket then holds 127.0.0.1.
        .args(["--ipv4-addr", "127.0.0.1:0", "--ipv6-addr", "[::1]:0"]);
    ChildProcess::spawn(cmd, name)
}

fn dumbpipe_path(bin: &std::path::Path, service: u16) -> Path {
    let host = format!("127.0.0.1:{service}");
    let mut listen = dumbpipe(bin, &["listen-tcp", "--host", &host], "dumbpipe listen-tcp");
    let ticket = listen.wait_for(Duration::from_secs(30), |line| {
        line.strip_prefix("dumbpipe connect-tcp ")
            .map(|t| t.trim().to_string())
    });
    let port = free_tcp_port();
    let addr = format!("127.0.0.1:{port}");
    let connect = dumbpipe(
        bin,
        &["connect-tcp", "--addr", &addr, &ticket],
        "dumbpipe connect-tcp",
    );
    // connect-tcp prints nothing reliable when ready: wait for its listener.
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "dumbpipe connect-tcp did not listen on {addr} within 30 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
    Path {
        name: "dumbpipe 0.40.1",
        port,
        pids: Some((listen.pid(), connect.pid())),
        share_key: None,
        _processes: vec![listen, connect],
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// Measurements.

fn proc_status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU time the process used so far, user and system (Linux's `/proc/<pid>/stat`, in clock
/// ticks of 10 ms).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

fn cpu_pair(pids: Option<(u32, u32)>) -> Option<(f64, f64)> {
    pids.map(|(a, b)| (cpu_seconds(a), cpu_seconds(b)))
}

/// Starts a new peak: the kernel's VmHWM restarts from the current RSS (Linux 4.0+).
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Downloads `n` bytes on a fresh connection; whether they were exactly the pattern.
fn download(port: u16, n: u64) -> std::io::Result<bool> {
    let mut s = connect(port)?;
    s.write_all(&request(b'D', n))?;
    let (got, sha) = read_hashed(&mut s, None)?;
    Ok(got == n && sha == expected_sha(n))
}

/// Uploads `n` bytes; whether the service hashed exactly the pattern.
fn upload(port: u16, n: u64) -> std::io::Result<bool> {
    let mut s = connect(port)?;
    s.write_all(&request(b'U', n))?;
    send_pattern(&mut s, n)?;
    let mut sha = [0u8; 32];
    s.read_exact(&mut sha)?;
    Ok(sha == expected_sha(n))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Runs `count` copies of `job` at once (released together); the time until all ended and how
/// many failed or delivered wrong bytes.
fn at_once(
    count: usize,
    job: impl Fn() -> std::io::Result<bool> + Send + Sync + 'static,
) -> (Duration, usize) {
    let job = Arc::new(job);
    let gate = Arc::new(Barrier::new(count + 1));
    let workers: Vec<_> = (0..count)
        .map(|_| {
            let (job, gate) = (job.clone(), gate.clone());
            thread::spawn(move || {
                gate.wait();
                matches!(job(), Ok(true))
            })
        })
        .collect();
    gate.wait();
    let t = Instant::now();
    let failed = workers
        .into_iter()
        .map(|w| w.join().unwrap_or(false))
        .filter(|ok| !ok)
        .count();
    (t.elapsed(), failed)
}

#[derive(Default)]
struct Figures {
    down_mb_s: f64,
    up_mb_s: f64,
    bulk_ok: bool,
    ttfb_ms: Vec<f64>,
    rtt_us: Vec<f64>,
    concurrent: (Duration, usize),
    burst: (Duration, usize),
    idle_rss: Option<(f64, f64)>,
    load_rss: Option<(f64, f64)>,
    bulk_rss: Option<(f64, f64)>,
    /// CPU seconds per GiB moved by the bulk transfers, share and connect side.
    bulk_cpu: Option<(f64, f64)>,
    /// Whether a Node client and a hypertele client moved verified bytes through our share.
    foreign_clients: Option<(bool, bool)>,
}

fn rss_pair(pids: Option<(u32, u32)>, field: &str) -> Option<(f64, f64)> {
    pids.map(|(a, b)| (proc_status_mib(a, field), proc_status_mib(b, field)))
}

fn reset_pair(pids: Option<(u32, u32)>) {
    if let Some((a, b)) = pids {
        reset_peak(a);
        reset_peak(b);
    }
}

fn measure(path: &Path, w: &Workload) -> Figures {
    let port = path.port;
    eprintln!("measuring {}", path.name);
    let mut f = Figures::default();

    // The first connection pays for the lookup and the handshake; what follows is measured.
    assert!(
        matches!(download(port, 1), Ok(true)),
        "{}: the first connection through it failed",
        path.name
    );
    thread::sleep(Duration::from_secs(1));
    f.idle_rss = rss_pair(path.pids, "VmRSS:");

    // Time to first byte of a fresh connection: connect, ask for one byte, get it.
    for _ in 0..w.fresh_connections {
        let t = Instant::now();
        let ok = connect(port).and_then(|mut s| {
            s.write_all(&request(b'D', 1))?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)
        });
        if ok.is_ok() {
            f.ttfb_ms.push(ms(t.elapsed()));
        }
    }
    f.ttfb_ms = sorted(std::mem::take(&mut f.ttfb_ms));

    // Small request/response round trips over one open connection.
    if let Ok(mut s) = connect(port) {
        let _ = s.write_all(&request(b'E', 0));
        let msg = [0x5au8; 64];
        let mut back = [0u8; 64];
        for i in 0..w.round_trips + 10 {
            let t = Instant::now();
            if s.write_all(&msg)
                .and_then(|_| s.read_exact(&mut back))
                .is_err()
                || back != msg
            {
                break;
            }
            // The first few warm the path up.
            if i >= 10 {
                f.rtt_us.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    f.rtt_us = sorted(std::mem::take(&mut f.rtt_us));

    // Bulk, each way.
    reset_pair(path.pids);
    let cpu_before = cpu_pair(path.pids);
    let t = Instant::now();
    let down_ok = matches!(download(port, w.bulk), Ok(true));
    f.down_mb_s = w.bulk as f64 / 1e6 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let up_ok = matches!(upload(port, w.bulk), Ok(true));
    f.up_mb_s = w.bulk as f64 / 1e6 / t.elapsed().as_secs_f64();
    f.bulk_ok = down_ok && up_ok;
    f.bulk_rss = rss_pair(path.pids, "VmHWM:");
    let gib = 2.0 * w.bulk as f64 / (1024 * MIB) as f64;
    f.bulk_cpu = cpu_before
        .zip(cpu_pair(path.pids))
        .map(|(b, a)| ((a.0 - b.0) / gib, (a.1 - b.1) / gib));

    // Many transfers at once, then a browser-like burst of small requests.
    reset_pair(path.pids);
    let size = w.concurrent_size;
    f.concurrent = at_once(w.concurrent, move || download(port, size));
    f.load_rss = rss_pair(path.pids, "VmHWM:");
    let size = w.burst_size;
    f.burst = at_once(w.burst, move || download(port, size));
    f
}

/// Node's and hypertele's own clients against our share, while it is the share just measured:
/// each downloads and uploads `size` bytes through it; whether every transfer was verified.
fn foreign_clients(dht: &LocalDht, key: &str, size: u64) -> (bool, bool) {
    let through = |port: u16| {
        matches!(download(port, size), Ok(true)) && matches!(upload(port, size), Ok(true))
    };
    eprintln!("a Node client and a hypertele client against our share");
    let node = NodeClient::start(std::slice::from_ref(&dht.bootstrap), key, 0);
    let node_ok = through(node.port);
    drop(node);
    let (_hypertele, addr) = hypertele_client(&dht.bootstrap, &["-s", key]);
    (node_ok, through(addr.port()))
}

// ---------------------------------------------------------------------------------------------
// The table.

fn pair(v: Option<(f64, f64)>, decimals: usize) -> String {
    match v {
        Some((a, b)) => format!("{a:.decimals$} / {b:.decimals$}"),
        None => "-".into(),
    }
}

fn table(w: &Workload, runs: &[(&str, Figures)]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: String, cell: &dyn Fn(&Figures) -> String| {
        rows.push((label, runs.iter().map(|(_, f)| cell(f)).collect()));
    };
    let bulk = w.bulk / MIB;
    let verified = |ok: bool| if ok { "" } else { " (FAILED)" };
    row(format!("bulk download, {bulk} MiB (MB/s)"), &|f| {
        format!("{:.0}{}", f.down_mb_s, verified(f.bulk_ok))
    });
    row(format!("bulk upload, {bulk} MiB (MB/s)"), &|f| {
        format!("{:.0}{}", f.up_mb_s, verified(f.bulk_ok))
    });
    row(
        "first byte, fresh connection, median (min-max) ms".into(),
        &|f| {
            let t = &f.ttfb_ms;
            format!(
                "{:.2} ({:.2}-{:.2})",
                percentile(t, 0.5),
                percentile(t, 0.0),
                percentile(t, 1.0)
            )
        },
    );
    row(
        format!("{} round trips of 64 B, p50 / p99 us", w.round_trips),
        &|f| {
            format!(
                "{:.0} / {:.0}{}",
                percentile(&f.rtt_us, 0.5),
                percentile(&f.rtt_us, 0.99),
                if f.rtt_us.len() < w.round_trips {
                    " (FAILED)"
                } else {
                    ""
                }
            )
        },
    );
    row(
        format!(
            "{} concurrent {} KiB downloads: ms (failed)",
            w.concurrent,
            w.concurrent_size / 1024
        ),
        &|f| format!("{:.0} ({})", ms(f.concurrent.0), f.concurrent.1),
    );
    row(
        format!(
            "burst of {} connections, {} KiB each: ms (failed)",
            w.burst,
            w.burst_size / 1024
        ),
        &|f| format!("{:.0} ({})", ms(f.burst.0), f.burst.1),
    );
    row("RSS idle, share / connect (MiB)".into(), &|f| {
        pair(f.idle_rss, 0)
    });
    row(
        format!("peak RSS, {} concurrent (MiB)", w.concurrent),
        &|f| pair(f.load_rss, 0),
    );
    row("peak RSS, bulk (MiB)".into(), &|f| pair(f.bulk_rss, 0));
    row("CPU per GiB of bulk, share / connect (s)".into(), &|f| {
        pair(f.bulk_cpu, 2)
    });
    row(
        format!(
            "Node / hypertele client through this share, {} KiB each way",
            w.concurrent_size / 1024
        ),
        &|f| {
            let verdict = |ok| if ok { "verified" } else { "FAILED" };
            f.foreign_clients.map_or("-".into(), |(n, h)| {
                format!("{} / {}", verdict(n), verdict(h))
            })
        },
    );

    let mut out = String::from("| |");
    for (name, _) in runs {
        out += &format!(" {name} |");
    }
    out += "\n|---|";
    out += &"---|".repeat(runs.len());
    out += "\n";
    for (label, cells) in rows {
        out += &format!("| {label} | {} |\n", cells.join(" | "));
    }
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{date}, {cpu}, {cores} cores, loopback")
}

/// The cargo profile this benchmark (and the p2p-socket binary beside it) was built with.
fn build_profile() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/compare-<hash>
    exe.ancestors()
        .nth(2)
        .and_then(|p| p.file_name())
        .map_or_else(|| "unknown".into(), |p| p.to_string_lossy().into_owned())
}

/// The value after `--name` on the command line.
fn option(name: &str) -> Option<String> {
    let mut args = std::env::args().skip_while(|a| a != name);
    args.next()?;
    args.next()
}

fn main() {
    if std::env::var_os("RUST_LOG").is_none() {
        // The processes' per-connection logs would bury the table.
        std::env::set_var("RUST_LOG", "warn");
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let mut w = if quick { QUICK } else { FULL };
    if let Some(mib) = option("--bulk-mib") {
        w.bulk = mib
            .parse::<u64>()
            .expect("--bulk-mib takes a number of MiB")
            * MIB;
    }
    if let Some(n) = option("--round-trips") {
        w.round_trips = n.parse().expect("--round-trips takes a number");
    }
    // `--only rust` (or node, dumbpipe, direct, or several with commas): to profile one.
    let only = option("--only").map(|o| o.to_lowercase());
    let w = &w;
    let wanted = |key: &str| only.as_ref().is_none_or(|o| o.split(',').any(|o| o == key));
    if wanted("node") {
        support::node::require_node();
    }
    // Built (when missing) before anything is measured, not while.
    let dumbpipe_bin = wanted("dumbpipe").then(dumbpipe_binary);
    // Hash the expected bytes before anything is timed.
    for n in [1, w.bulk, w.concurrent_size, w.burst_size] {
        expected_sha(n);
    }

    let service = start_service();
    let dht = LocalDht::start(w.dht_nodes);
    let starters: [(&str, &dyn Fn() -> Path); 4] = [
        ("direct", &|| direct(service)),
        ("rust", &|| ours(&dht, service)),
        ("node", &|| node(&dht, service)),
        ("dumbpipe", &|| {
            dumbpipe_path(dumbpipe_bin.as_deref().expect("built above"), service)
        }),
    ];
    let mut runs = Vec::new();
    for (key, start) in starters {
        if !wanted(key) {
            continue;
        }
        let path = start();
        let mut figures = measure(&path, w);
        // Other tools' clients still work against the share just measured (with Node in the run).
        if let (Some(key), true) = (&path.share_key, wanted("node")) {
            figures.foreign_clients = Some(foreign_clients(&dht, key, w.concurrent_size));
        }
        runs.push((path.name, figures));
        // The table so far, in case a later path fails or the run is cut short.
        eprintln!("{}", table(w, &runs));
        // Dropping the path ends its processes: the next one has the machine to itself.
    }
    let table = table(w, &runs);
    let out = format!(
        "{}, {}, profile {}\n\n{table}",
        machine(),
        if quick { "--quick" } else { "full run" },
        build_profile(),
    );
    println!("\n{out}");
    let file = target_dir().join("bench-compare.md");
    std::fs::write(&file, &out).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
    eprintln!("written to {}", file.display());
}
