//! The probes of a punch, one task per plan: towards a consistent NAT's addresses, at random
//! ports of a randomising NAT's host, or from our birthday sockets.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use tokio::sync::watch;

use super::PUNCH_TIME;
use crate::punch_socket::PunchSocket;

/// Interval and count of the probes to a consistent NAT. Faster than hyperdht's 1 s: the first
/// probes usually die in the other NAT until its side has sent too, and 200 ms is what we then
/// lose; probes are one byte.
const CONSISTENT_TICK: Duration = Duration::from_millis(200);
const CONSISTENT_TICKS: u32 = 50;
/// Probes sprayed at random ports: a burst every interval. With 256 mappings open on the other
/// side a probe hits with p ≈ 1/250; at 500 probes a second half the punches succeed within
/// 0.35 s and 99 % within 2.5 s (hyperdht sends 50 a second: 3.5 s and 23 s). 500 one-byte
/// datagrams a second is still a trickle.
const RANDOM_BURST: usize = 5;
const RANDOM_BURST_EVERY: Duration = Duration::from_millis(10);
/// Interval of the random side's rounds over its birthday sockets (keeping their mappings open).
const BIRTHDAY_KEEPALIVE_EVERY: Duration = Duration::from_millis(20);

/// Sleeps `d` unless punching stops first; false if it stopped.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

/// Probes to a consistent NAT's addresses. Unverified ones (not confirmed by a DHT node) only
/// every fourth tick, as hyperdht does, so a made-up address gets little traffic from us.
pub(super) async fn consistent_probes(
    socket: PunchSocket,
    addresses: Vec<(SocketAddr, bool)>,
    mut stop: watch::Receiver<bool>,
) {
    for tick in 0..CONSISTENT_TICKS {
        for (addr, verified) in &addresses {
            if addr.port() != 0 && (*verified || tick % 4 == 0) {
                socket.probe(*addr, false);
            }
        }
        if !pause(&mut stop, CONSISTENT_TICK).await {
            return;
        }
    }
}

/// Probes at random ports of a random NAT's host, hoping to hit one of the mappings its
/// birthday sockets opened towards us. Ports are drawn without repeats: a port that missed
/// once would miss again.
pub(super) async fn random_probes(
    socket: PunchSocket,
    host: IpAddr,
    mut stop: watch::Receiver<bool>,
) {
    let mut ports: Vec<u16> = (1000..=u16::MAX).collect();
    ports.shuffle(&mut rand::rng());
    let until = Instant::now() + PUNCH_TIME;
    for burst in ports.chunks(RANDOM_BURST) {
        for port in burst {
            socket.probe(SocketAddr::new(host, *port), false);
        }
        if Instant::now() >= until || !pause(&mut stop, RANDOM_BURST_EVERY).await {
            return;
        }
    }
}

/// The random side keeps its birthday mappings open by sending from each socket in turn; the
/// first round with low TTL (they only need to leave our NAT), later ones reach the other side
/// and also give it a chance to hear us first.
pub(super) async fn birthday_keepalive(
    sockets: Vec<PunchSocket>,
    to: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    if !pause(&mut stop, Duration::from_millis(100)).await {
        return;
    }
    let until = Instant::now() + PUNCH_TIME;
    let mut round = 0;
    while Instant::now() < until {
        for socket in &sockets {
            socket.probe(to, round == 0);
            if !pause(&mut stop, BIRTHDAY_KEEPALIVE_EVERY).await || Instant::now() >= until {
                return;
            }
        }
        round += 1;
    }
}
