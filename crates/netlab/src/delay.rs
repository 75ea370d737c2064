//! A delay line made of an NFQUEUE: iptables hands every packet of a home's uplink to this
//! thread, which gives each one back to the kernel `delay` (plus a random share of `jitter`)
//! later. The kernel here has no netem, so this is how the lab adds latency and reordering.
//!
//! The nfnetlink_queue protocol is spoken directly (a few fixed-layout messages): the thread
//! asks for metadata only (no payload copies). Without jitter every packet waits the same time
//! and the kernel numbers packets in arrival order, so one batch verdict (which accepts every
//! packet up to an id) releases all that are due. With jitter a later packet may be due first,
//! which a batch verdict cannot express: each due packet gets its own verdict, by id, all of
//! them sent together in one netlink datagram.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::LabError;
use crate::netns;

/// The queue number the lab's NFQUEUE rules use; each namespace has its own queues.
pub(crate) const QUEUE: u16 = 0;

// From linux/netfilter/nfnetlink.h and nfnetlink_queue.h.
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NF_ACCEPT: u32 = 1;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// Packets the kernel may hold for us at once: 50 ms at a few hundred Mbit/s of full-size
/// packets, with room to spare. Beyond it the kernel drops, as a full link buffer would.
const QUEUE_MAXLEN: u32 = 65_536;
/// Socket buffer for the kernel's messages to us (about 100 bytes each with metadata only),
/// so that a burst is never dropped for lack of room.
const RCVBUF: libc::c_int = 32 << 20;
/// Per-packet verdicts sent in one datagram: 32 bytes each, well inside a netlink socket's
/// send buffer.
const VERDICTS_PER_SEND: usize = 2048;

/// How long a delay line holds each packet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hold {
    pub delay: Duration,
    /// Each packet waits `delay` plus a uniform random time in `0..=jitter`.
    pub jitter: Duration,
    /// Seeds the jitter, so that a lab draws the same holds for the same packets.
    pub seed: u64,
}

/// A running delay line; dropping it stops the thread (the kernel then drops what was held).
pub(crate) struct DelayLine {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DelayLine {
    /// Starts holding every packet queued to [`QUEUE`] in `netns` as `hold` says. Returns once
    /// the queue is bound, so NFQUEUE rules added afterwards find a listener.
    pub(crate) fn start(netns: &str, hold: Hold) -> Result<DelayLine, LabError> {
        let ns = netns::open(netns)?;
        let name = netns.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let stop = stop.clone();
            thread::Builder::new()
                .name(format!("delay {netns}"))
                .spawn(move || {
                    let queue = netns::enter(&ns, &name).and_then(|()| {
                        Queue::bind(QUEUE).map_err(|e| LabError::DelayUnsupported {
                            netns: name.clone(),
                            reason: e.to_string(),
                        })
                    });
                    match queue {
                        Ok(queue) => {
                            let _ = ready_tx.send(Ok(()));
                            if let Err(e) = queue.hold(hold, &stop) {
                                tracing::error!(netns = %name, "delay line stopped: {e}");
                            }
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })?
        };
        let line = DelayLine {
            stop,
            thread: Some(thread),
        };
        ready_rx
            .recv()
            .unwrap_or_else(|_| Err(LabError::Spec("the delay thread died".into())))?;
        Ok(line)
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A netlink socket bound to one NFQUEUE.
struct Queue {
    fd: OwnedFd,
    num: u16,
}

impl Queue {
    fn bind(num: u16) -> io::Result<Queue> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: a zeroed sockaddr_nl is valid; nl_pid 0 lets the kernel pick our port id.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SO_RCVBUFFORCE passes the rmem_max cap (we are root); fall back to what is allowed.
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: setsockopt with a c_int value of the right size.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &RCVBUF as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
        let queue = Queue { fd, num };
        queue.configure(
            NFQA_CFG_CMD,
            &[NFQNL_CFG_CMD_BIND, 0, 0, libc::AF_INET as u8],
        )?;
        let mut params = [0u8; 5];
        params[4] = NFQNL_COPY_META;
        queue.configure(NFQA_CFG_PARAMS, &params)?;
        queue.configure(NFQA_CFG_QUEUE_MAXLEN, &QUEUE_MAXLEN.to_be_bytes())?;
        Ok(queue)
    }

    /// Sends one config attribute and waits for the kernel's acknowledgement.
    fn configure(&self, attr: u16, value: &[u8]) -> io::Result<()> {
        let msg = message(
            NFQNL_MSG_CONFIG,
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            self.num,
            attr,
            value,
        );
        self.send(&msg)?;
        let mut buf = vec![0u8; 8192];
        // Bounded: the kernel answers a request at once; nothing else is queued to us yet.
        for _ in 0..16 {
            let n = self.recv(&mut buf, 0)?;
            for (kind, body) in messages(&buf[..n]) {
                if kind == libc::NLMSG_ERROR as u16 && body.len() >= 4 {
                    let errno = -i32::from_ne_bytes(body[..4].try_into().expect("4 bytes"));
                    return if errno == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(errno))
                    };
                }
            }
        }
        Err(io::Error::other(
            "the kernel never acknowledged the NFQUEUE configuration",
        ))
    }

    /// Holds every packet as `hold` says until `stop` is set.
    fn hold(&self, hold: Hold, stop: &AtomicBool) -> io::Result<()> {
        let mut rng = StdRng::seed_from_u64(hold.seed);
        let jitter_ns = u64::try_from(hold.jitter.as_nanos()).unwrap_or(u64::MAX);
        // Ordered by due time, then by id (the kernel's arrival order) for equal times.
        let mut held: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut due = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            // Wake for the next due packet, new packets, or (at the latest) to look at `stop`.
            let wait = held
                .peek()
                .map(|Reverse((due, _))| due.saturating_duration_since(now))
                .unwrap_or(Duration::MAX)
                .min(Duration::from_millis(50));
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // Round up: waking a little late is harmless, waking early only spins.
            let ms = wait.as_micros().div_ceil(1000) as libc::c_int;
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, ms) } < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            loop {
                let n = match self.recv(&mut buf, libc::MSG_DONTWAIT) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        // The kernel dropped messages (and so those packets): as a lossy link.
                        tracing::warn!("delay line fell behind; some packets were dropped");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let arrived = Instant::now();
                for (kind, body) in messages(&buf[..n]) {
                    if kind == (NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET) {
                        if let Some(id) = packet_id(body) {
                            let extra = match jitter_ns {
                                0 => Duration::ZERO,
                                j => Duration::from_nanos(rng.random_range(0..=j)),
                            };
                            held.push(Reverse((arrived + hold.delay + extra, id)));
                        }
                    } else if kind == libc::NLMSG_ERROR as u16 && body.len() >= 4 {
                        let errno = -i32::from_ne_bytes(body[..4].try_into().expect("4 bytes"));
                        if errno != 0 {
                            tracing::warn!(
                                "kernel refused a verdict: {}",
                                io::Error::from_raw_os_error(errno)
                            );
                        }
                    }
                }
            }
            let now = Instant::now();
            due.clear();
            while held.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                if let Some(Reverse((_, id))) = held.pop() {
                    due.push(id);
                }
            }
            if jitter_ns == 0 {
                // Due packets are exactly the oldest ones: accept up to the newest of them.
                if let Some(&last) = due.last() {
                    self.send(&verdict(NFQNL_MSG_VERDICT_BATCH, self.num, last))?;
                }
            } else {
                for ids in due.chunks(VERDICTS_PER_SEND) {
                    let msg: Vec<u8> = ids
                        .iter()
                        .flat_map(|&id| verdict(NFQNL_MSG_VERDICT, self.num, id))
                        .collect();
                    self.send(&msg)?;
                }
            }
        }
        Ok(())
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: msg is a valid buffer; an unconnected netlink socket sends to the kernel.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                flags,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// An accept verdict for packet `id` (`NFQNL_MSG_VERDICT`) or for every packet up to `id`
/// (`NFQNL_MSG_VERDICT_BATCH`).
fn verdict(kind: u16, queue: u16, id: u32) -> Vec<u8> {
    let mut hdr = [0u8; 8];
    hdr[..4].copy_from_slice(&NF_ACCEPT.to_be_bytes());
    hdr[4..].copy_from_slice(&id.to_be_bytes());
    message(
        kind,
        libc::NLM_F_REQUEST as u16,
        queue,
        NFQA_VERDICT_HDR,
        &hdr,
    )
}

/// One nfnetlink_queue message with a single attribute.
fn message(kind: u16, flags: u16, queue: u16, attr: u16, value: &[u8]) -> Vec<u8> {
    let attr_len = 4 + value.len();
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + align4(attr_len);
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&(NFNL_SUBSYS_QUEUE << 8 | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // sequence: we match answers by order
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills in ours
    m.push(libc::AF_UNSPEC as u8);
    m.push(0); // NFNETLINK_V0
    m.extend_from_slice(&queue.to_be_bytes());
    m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    m.extend_from_slice(&attr.to_ne_bytes());
    m.extend_from_slice(value);
    m.resize(len, 0);
    m
}

/// The netlink messages in a datagram, as (type, body after the netlink header).
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let body = &buf[NLMSG_HDRLEN..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((kind, body))
    })
}

/// The packet id in an NFQNL_MSG_PACKET body (nfgenmsg, then attributes).
fn packet_id(body: &[u8]) -> Option<u32> {
    let mut attrs = body.get(NFGENMSG_LEN..)?;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes(attrs[..2].try_into().ok()?) as usize;
        // The top two bits are the nested and byte-order flags.
        let kind = u16::from_ne_bytes(attrs[2..4].try_into().ok()?) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NFQA_PACKET_HDR && len >= 8 {
            return Some(u32::from_be_bytes(attrs[4..8].try_into().ok()?));
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    None
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}
