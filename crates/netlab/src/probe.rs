//! Small UDP tools for looking at the lab from inside it (run as `netlab udp-echo` and
//! `netlab udp-probe` in a namespace): an echo that tells each sender the address it saw
//! (what a NAT made of the sender), and a probe that sends numbered packets from one socket
//! to several echoes and reports, per echo, what came back.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Answers every datagram with `<datagram>|<sender address>` until the process is killed.
/// Prints `udp-echo listening on <addr>` once bound.
pub fn echo(bind: SocketAddr) -> io::Result<()> {
    let socket = UdpSocket::bind(bind)?;
    println!("udp-echo listening on {}", socket.local_addr()?);
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        let mut reply = buf[..n].to_vec();
        reply.extend_from_slice(format!("|{from}").as_bytes());
        // A reply that cannot be sent is as good as lost; the probe counts it that way.
        let _ = socket.send_to(&reply, from);
    }
}

#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The one local socket every packet is sent from.
    pub bind: SocketAddr,
    pub targets: Vec<SocketAddr>,
    /// Packets per target.
    pub count: u32,
    /// IP TTL of the packets sent (None: the system default, 64).
    pub ttl: Option<u32>,
    /// Pause between two packets.
    pub interval: Duration,
    /// How long to wait for replies after the last packet.
    pub wait: Duration,
}

/// What one target's echo sent back.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetReport {
    pub to: SocketAddr,
    pub sent: u32,
    /// Distinct packets answered.
    pub received: u32,
    /// The address the echo saw the packets come from (the NAT's mapping).
    pub seen_as: Option<SocketAddr>,
    pub rtt_min: Option<Duration>,
    pub rtt_max: Option<Duration>,
    /// Replies that arrived after one to a later packet: packets that were overtaken.
    pub reordered: u32,
}

/// Sends `count` numbered packets to each target, interleaved, from one socket, and collects
/// the replies.
pub fn probe(opts: &ProbeOptions) -> io::Result<Vec<TargetReport>> {
    let socket = UdpSocket::bind(opts.bind)?;
    if let Some(ttl) = opts.ttl {
        socket.set_ttl(ttl)?;
    }
    let base = Instant::now();
    let (done_tx, done) = mpsc::channel();
    let receiver = {
        let socket = socket.try_clone()?;
        let targets = opts.targets.clone();
        let wait = opts.wait;
        thread::spawn(move || receive(&socket, &targets, base, &done, wait))
    };
    for seq in 0..opts.count {
        for (i, to) in opts.targets.iter().enumerate() {
            let msg = format!("p {i} {seq} {}", base.elapsed().as_nanos());
            // A refused send (ICMP unreachable reported back) counts as a lost packet.
            let _ = socket.send_to(msg.as_bytes(), to);
            thread::sleep(opts.interval);
        }
    }
    // If the receiver is gone it has failed; join below reports why.
    let _ = done_tx.send(Instant::now());
    let replies = receiver
        .join()
        .map_err(|_| io::Error::other("the probe's receiver panicked"))??;
    Ok(replies
        .into_iter()
        .enumerate()
        .map(|(i, r)| TargetReport {
            to: opts.targets[i],
            sent: opts.count,
            received: r.seqs.len() as u32,
            seen_as: r.seen_as,
            rtt_min: r.rtts.iter().min().copied(),
            rtt_max: r.rtts.iter().max().copied(),
            reordered: r.reordered,
        })
        .collect())
}

#[derive(Default)]
struct Replies {
    seqs: HashSet<u32>,
    seen_as: Option<SocketAddr>,
    rtts: Vec<Duration>,
    highest: Option<u32>,
    reordered: u32,
}

/// Collects replies until `wait` after the sender says (through `done`) it has finished.
fn receive(
    socket: &UdpSocket,
    targets: &[SocketAddr],
    base: Instant,
    done: &mpsc::Receiver<Instant>,
    wait: Duration,
) -> io::Result<Vec<Replies>> {
    let mut replies: Vec<Replies> = targets.iter().map(|_| Replies::default()).collect();
    let mut buf = [0u8; 2048];
    let mut deadline = None;
    loop {
        if deadline.is_none() {
            deadline = match done.try_recv() {
                Ok(finished) => Some(finished + wait),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => Some(Instant::now()),
            };
        }
        // Short reads while the sender is still going, so its end is noticed promptly.
        let left = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::from_millis(50),
        };
        if left.is_zero() {
            return Ok(replies);
        }
        socket.set_read_timeout(Some(left))?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::ConnectionRefused
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let now = base.elapsed();
        let Some((i, seq, sent, seen)) = parse_reply(&buf[..n]) else {
            continue;
        };
        let Some(r) = replies.get_mut(i) else {
            continue;
        };
        if !r.seqs.insert(seq) {
            continue;
        }
        if r.highest.is_some_and(|h| seq < h) {
            r.reordered += 1;
        }
        r.highest = r.highest.max(Some(seq));
        r.seen_as.get_or_insert(seen);
        r.rtts.push(now.saturating_sub(Duration::from_nanos(sent)));
    }
}

/// `p <target> <seq> <sent nanos>|<seen address>`
fn parse_reply(buf: &[u8]) -> Option<(usize, u32, u64, SocketAddr)> {
    let text = std::str::from_utf8(buf).ok()?;
    let (msg, seen) = text.split_once('|')?;
    let mut f = msg.strip_prefix("p ")?.split(' ');
    Some((
        f.next()?.parse().ok()?,
        f.next()?.parse().ok()?,
        f.next()?.parse().ok()?,
        seen.parse().ok()?,
    ))
}

impl fmt::Display for TargetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Option<Duration>| {
            d.map(|d| format!("{:.3}", d.as_secs_f64() * 1000.0))
                .unwrap_or_else(|| "-".into())
        };
        write!(
            f,
            "to={} sent={} received={} seen-as={} rtt-min-ms={} rtt-max-ms={} reordered={}",
            self.to,
            self.sent,
            self.received,
            self.seen_as
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            ms(self.rtt_min),
            ms(self.rtt_max),
            self.reordered,
        )
    }
}

impl FromStr for TargetReport {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .ok_or_else(|| format!("no {key}= in probe line {line:?}"))
        };
        let bad = |key: &str| format!("bad {key} in probe line {line:?}");
        let opt_addr = |key: &str| -> Result<Option<SocketAddr>, String> {
            match field(key)? {
                "-" => Ok(None),
                v => v.parse().map(Some).map_err(|_| bad(key)),
            }
        };
        let opt_ms = |key: &str| -> Result<Option<Duration>, String> {
            match field(key)? {
                "-" => Ok(None),
                v => v
                    .parse::<f64>()
                    .map(|ms| Some(Duration::from_secs_f64(ms / 1000.0)))
                    .map_err(|_| bad(key)),
            }
        };
        Ok(TargetReport {
            to: field("to")?.parse().map_err(|_| bad("to"))?,
            sent: field("sent")?.parse().map_err(|_| bad("sent"))?,
            received: field("received")?.parse().map_err(|_| bad("received"))?,
            seen_as: opt_addr("seen-as")?,
            rtt_min: opt_ms("rtt-min-ms")?,
            rtt_max: opt_ms("rtt-max-ms")?,
            reordered: field("reordered")?.parse().map_err(|_| bad("reordered"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_as_printed() {
        let r = TargetReport {
            to: "198.18.0.2:7000".parse().unwrap(),
            sent: 10,
            received: 9,
            seen_as: Some("198.18.1.1:40000".parse().unwrap()),
            rtt_min: Some(Duration::from_micros(120)),
            rtt_max: None,
            reordered: 3,
        };
        let back: TargetReport = r.to_string().parse().unwrap();
        assert_eq!(back, r);
    }
}
