//! Real TCP (and Unix socket) services and clients for the tunnel tests, with every byte
//! accounted for by length and sha256. Data is pseudo-random (so a shifted or repeated chunk cannot hash the same) and
//! generated on the fly (so 100 MiB costs no memory).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
#[cfg(unix)]
use std::os::unix::net::{UnixListener, UnixStream};
#[cfg(unix)]
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// What arrived on one side of a connection, and what that side sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub received: u64,
    pub received_sha: String,
    pub sent: u64,
    pub sent_sha: String,
}

/// Checks one connection that moved `volume` bytes each way: the client got exactly the
/// pattern the service sent with `service_seed`, and the service got exactly what the client
/// sent. `what` names the connection in a failure.
pub fn assert_exchanged(
    client: &Tally,
    server: &Tally,
    volume: u64,
    service_seed: u64,
    what: &str,
) {
    assert_eq!(client.received, volume, "{what}: bytes from the service");
    assert_eq!(
        client.received_sha,
        pattern_sha(volume, service_seed),
        "{what}"
    );
    assert_eq!(server.received, volume, "{what}: bytes to the service");
    assert_eq!(server.received_sha, client.sent_sha, "{what}");
}

/// Deterministic pseudo-random bytes (xorshift64*), in chunks.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `len` pattern bytes; returns their sha256.
pub fn send_pattern(w: &mut impl Write, len: u64, seed: u64) -> std::io::Result<String> {
    let mut p = Pattern::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex::encode(h.finalize()))
}

/// The sha256 `send_pattern` produces, without sending.
pub fn pattern_sha(len: u64, seed: u64) -> String {
    send_pattern(&mut std::io::sink(), len, seed).unwrap()
}

/// Reads to EOF; returns the length and sha256.
pub fn read_all(r: &mut impl Read) -> std::io::Result<(u64, String)> {
    read_all_timed(r, Instant::now()).map(|(n, sha, _)| (n, sha))
}

/// Like [`read_all`], also saying how long after `since` the first byte arrived.
pub fn read_all_timed(
    r: &mut impl Read,
    since: Instant,
) -> std::io::Result<(u64, String, Option<Duration>)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut first = None;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((total, hex::encode(h.finalize()), first));
        }
        first.get_or_insert_with(|| since.elapsed());
        h.update(&buf[..n]);
        total += n as u64;
    }
}

/// A connected stream socket, TCP or Unix: what the services and clients here need of one.
pub trait Duplex: Read + Write + Send + Sized + 'static {
    fn clone_handle(&self) -> std::io::Result<Self>;
    fn shutdown_write(&self) -> std::io::Result<()>;
    fn read_timeout(&self, timeout: Duration) -> std::io::Result<()>;
}

/// Both socket types have these methods under the same names, but no trait of std's holds them.
macro_rules! duplex {
    ($stream:ty) => {
        impl Duplex for $stream {
            fn clone_handle(&self) -> std::io::Result<Self> {
                self.try_clone()
            }
            fn shutdown_write(&self) -> std::io::Result<()> {
                self.shutdown(Shutdown::Write)
            }
            fn read_timeout(&self, timeout: Duration) -> std::io::Result<()> {
                self.set_read_timeout(Some(timeout))
            }
        }
    };
}

duplex!(TcpStream);
#[cfg(unix)]
duplex!(UnixStream);

/// Sends `send` bytes (then half-closes) while reading everything the other side sends.
pub fn exchange(stream: impl Duplex, send: u64, seed: u64) -> std::io::Result<Tally> {
    exchange_timed(stream, send, seed).map(|(tally, _)| tally)
}

/// Like [`exchange`], also saying how long the other side's first byte took to arrive.
pub fn exchange_timed(
    stream: impl Duplex,
    send: u64,
    seed: u64,
) -> std::io::Result<(Tally, Option<Duration>)> {
    exchange_ending(stream, send, seed, false)
}

/// Like [`exchange_timed`]; with `end_last`, our write side is shut only after the other side
/// ended its own.
fn exchange_ending(
    mut stream: impl Duplex,
    send: u64,
    seed: u64,
    end_last: bool,
) -> std::io::Result<(Tally, Option<Duration>)> {
    let started = Instant::now();
    stream.read_timeout(Duration::from_secs(120))?;
    let mut writer = stream.clone_handle()?;
    let sender = thread::spawn(move || {
        let sha = send_pattern(&mut writer, send, seed)?;
        if !end_last {
            writer.shutdown_write()?;
        }
        Ok::<_, std::io::Error>((sha, writer))
    });
    let (received, received_sha, first_byte) = read_all_timed(&mut stream, started)?;
    let (sent_sha, writer) = sender.join().expect("sender thread")?;
    if end_last {
        writer.shutdown_write()?;
    }
    let tally = Tally {
        received,
        received_sha,
        sent: send,
        sent_sha,
    };
    Ok((tally, first_byte))
}

/// How the test service treats each connection.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Send `send` bytes and read to EOF at the same time, then close.
    Exchange { send: u64, seed: u64 },
    /// As [`Behaviour::Exchange`], but end our side only after the client ended its own. A Node
    /// hyperdht client destroys its connection as soon as both sides ended and loses what it
    /// had not sent yet (docs/transport.md, "DESTROY"): ending last keeps a test of ours clear of that.
    ExchangeEndingLast { send: u64, seed: u64 },
    /// Send `send` bytes and close at once without reading (HTTP/1.0 style).
    SendAndClose { send: u64, seed: u64 },
    /// Echo everything back; half-close when the client does.
    Echo,
    /// Say `banner` first, then echo.
    Banner(&'static [u8]),
}

/// A TCP service on 127.0.0.1 that reports a [`Tally`] per connection.
pub struct Service {
    pub addr: SocketAddr,
    pub tallies: mpsc::Receiver<Tally>,
    /// Connections accepted so far, finished or not.
    accepted: Arc<AtomicU64>,
}

impl Service {
    pub fn start(behaviour: Behaviour) -> Service {
        Self::start_seq(move |_| behaviour)
    }

    /// Like [`Service::start`], with the behaviour of the n-th connection (from 0) chosen by `pick`.
    pub fn start_seq(pick: impl Fn(u64) -> Behaviour + Send + 'static) -> Service {
        Self::serve_on(
            TcpListener::bind("127.0.0.1:0").expect("bind test service"),
            pick,
        )
    }

    /// A service on a free port of another loopback address (127.0.0.2, say), so that a
    /// tunnel's local end can take the same port number on 127.0.0.1.
    pub fn start_at(ip: std::net::IpAddr, behaviour: Behaviour) -> Service {
        let listener = TcpListener::bind((ip, 0)).expect("bind test service");
        Self::serve_on(listener, move |_| behaviour)
    }

    /// A service on a given port (to bring back a service that was down).
    pub fn start_on(port: u16, behaviour: Behaviour) -> Service {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind test service port");
        Self::serve_on(listener, move |_| behaviour)
    }

    fn serve_on(
        listener: TcpListener,
        pick: impl Fn(u64) -> Behaviour + Send + 'static,
    ) -> Service {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&accepted);
        let tallies = serve_each(
            move || {
                let (conn, _) = listener.accept()?;
                counted.fetch_add(1, Ordering::Relaxed);
                Ok(conn)
            },
            pick,
        );
        Service {
            addr,
            tallies,
            accepted,
        }
    }

    /// Connections accepted so far, finished or not.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The next connection's tally.
    pub fn next_tally(&self, timeout: Duration) -> Tally {
        next_tally(&self.tallies, timeout)
    }
}

/// A service on a Unix socket, as [`Service`] is on TCP.
#[cfg(unix)]
pub struct UnixService {
    pub path: PathBuf,
    pub tallies: mpsc::Receiver<Tally>,
}

#[cfg(unix)]
impl UnixService {
    pub fn start(path: &Path, behaviour: Behaviour) -> UnixService {
        let listener = UnixListener::bind(path).expect("bind test service socket");
        let tallies = serve_each(
            move || listener.accept().map(|(conn, _)| conn),
            move |_| behaviour,
        );
        UnixService {
            path: path.to_path_buf(),
            tallies,
        }
    }

    /// The next connection's tally.
    pub fn next_tally(&self, timeout: Duration) -> Tally {
        next_tally(&self.tallies, timeout)
    }
}

fn next_tally(tallies: &mpsc::Receiver<Tally>, timeout: Duration) -> Tally {
    tallies
        .recv_timeout(timeout)
        .expect("the service saw no finished connection in time")
}

/// Serves every connection `accept` returns on a thread of its own, as `pick` says for the
/// n-th (from 0); their tallies come out of the receiver.
fn serve_each<S: Duplex>(
    mut accept: impl FnMut() -> std::io::Result<S> + Send + 'static,
    pick: impl Fn(u64) -> Behaviour + Send + 'static,
) -> mpsc::Receiver<Tally> {
    let (tx, tallies) = mpsc::channel();
    thread::spawn(move || {
        for n in 0.. {
            let Ok(conn) = accept() else { break };
            let tx = tx.clone();
            let behaviour = pick(n);
            thread::spawn(move || {
                if let Ok(t) = serve(conn, behaviour) {
                    let _ = tx.send(t);
                }
            });
        }
    });
    tallies
}

fn serve(conn: impl Duplex, behaviour: Behaviour) -> std::io::Result<Tally> {
    conn.read_timeout(Duration::from_secs(120))?;
    match behaviour {
        Behaviour::Exchange { send, seed } => exchange(conn, send, seed),
        Behaviour::ExchangeEndingLast { send, seed } => {
            exchange_ending(conn, send, seed, true).map(|(tally, _)| tally)
        }
        Behaviour::SendAndClose { send, seed } => {
            let mut w = conn;
            let sent_sha = send_pattern(&mut w, send, seed)?;
            drop(w);
            Ok(Tally {
                received: 0,
                received_sha: String::new(),
                sent: send,
                sent_sha,
            })
        }
        Behaviour::Echo | Behaviour::Banner(_) => {
            let mut w = conn.clone_handle()?;
            let mut sent = 0u64;
            if let Behaviour::Banner(b) = behaviour {
                w.write_all(b)?;
                sent += b.len() as u64;
            }
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut received = 0u64;
            let mut r = conn;
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                received += n as u64;
                w.write_all(&buf[..n])?;
                sent += n as u64;
            }
            w.shutdown_write()?;
            let sha = hex::encode(h.finalize());
            Ok(Tally {
                received,
                received_sha: sha.clone(),
                sent,
                sent_sha: sha,
            })
        }
    }
}

/// A loopback UDP port nobody listens on (it was free a moment ago): a DHT bootstrap that
/// never answers.
pub fn unused_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
