//! Congestion control: a loss-based window (slow start, additive increase, multiplicative
//! decrease with CUBIC's β = 0.7, one reduction per recovery episode) combined with a pacer.
//!
//! libudx runs BBR; congestion control is sender-local policy, not wire format, so a simpler
//! controller interoperates just as well. The pacer spreads each window over the RTT so the
//! sender does not dump a whole window into one socket buffer, while still sending in bursts
//! (a token bucket refilled from nanosecond-precise elapsed time, deep enough to cover the
//! ~1 ms granularity of the runtime's timers) so pacing never becomes the bottleneck.

use std::time::{Duration, Instant};

/// Initial window in packets (libudx: 10).
pub const INITIAL_WINDOW: f64 = 10.0;
/// The window never drops below this many packets.
const MIN_WINDOW: f64 = 4.0;
/// Upper bound so a long, loss-free run cannot grow the window without limit.
const MAX_WINDOW: f64 = 65536.0;
/// Multiplicative decrease on loss.
const BETA: f64 = 0.7;

/// Loss-based congestion window in packets.
#[derive(Debug, Clone)]
pub struct Congestion {
    cwnd: f64,
    ssthresh: f64,
    /// While the cumulative ack is below this sequence we are repairing one loss episode:
    /// further losses of packets sent before it do not reduce the window again.
    recovery_end: Option<u64>,
    /// The episode is a fast recovery (window held) rather than an RTO (slow start).
    fast_recovery: bool,
}

impl Default for Congestion {
    fn default() -> Self {
        Congestion {
            cwnd: INITIAL_WINDOW,
            ssthresh: f64::INFINITY,
            recovery_end: None,
            fast_recovery: false,
        }
    }
}

impl Congestion {
    /// Current window in packets.
    pub fn window(&self) -> usize {
        self.cwnd as usize
    }

    /// True while the window grows exponentially.
    pub fn in_slow_start(&self) -> bool {
        self.cwnd < self.ssthresh
    }

    /// `acked` packets were newly delivered; `snd_una` is the new cumulative ack.
    /// `cwnd_limited` says whether the sender was actually using the window: growing it while
    /// the application is the bottleneck would only build up a burst for later.
    /// `queue_building` says the RTT shows a standing queue on the path (see
    /// [`queue_building`]): then the window stops growing (and slow start ends) before the
    /// queue overflows into losses.
    pub fn on_acked(
        &mut self,
        acked: usize,
        snd_una: u64,
        cwnd_limited: bool,
        queue_building: bool,
    ) {
        if let Some(end) = self.recovery_end {
            if snd_una >= end {
                self.recovery_end = None;
            } else if self.fast_recovery {
                // Hold the reduced window until the episode is repaired. After a timeout,
                // however, slow start must run right away or the repair itself crawls.
                return;
            }
        }
        if !cwnd_limited || acked == 0 {
            return;
        }
        if queue_building {
            self.ssthresh = self.ssthresh.min(self.cwnd);
            return;
        }
        let acked = acked as f64;
        if self.cwnd < self.ssthresh {
            self.cwnd += acked;
        } else {
            self.cwnd += acked / self.cwnd;
        }
        self.cwnd = self.cwnd.min(MAX_WINDOW);
    }

    /// Losses were detected; `snd_nxt` is the next sequence number to be sent. All losses of
    /// the packets already sent count as one event.
    pub fn on_loss(&mut self, snd_nxt: u64) {
        if self.recovery_end.is_some() {
            return;
        }
        self.ssthresh = (self.cwnd * BETA).max(MIN_WINDOW);
        self.cwnd = self.ssthresh;
        self.recovery_end = Some(snd_nxt);
        self.fast_recovery = true;
    }

    /// The retransmission timer fired: the path may be gone, restart from a small window.
    pub fn on_rto(&mut self, snd_nxt: u64) {
        self.ssthresh = (self.cwnd * 0.5).max(MIN_WINDOW);
        self.cwnd = MIN_WINDOW;
        self.recovery_end = Some(snd_nxt);
        self.fast_recovery = false;
    }

    /// Pacing rate in bytes per second for the given packet size and smoothed RTT.
    pub fn pacing_rate(&self, mss: usize, srtt: Duration) -> f64 {
        // Like Linux: pace at twice the window rate while probing, 1.25x afterwards, so the
        // pacer keeps up with a growing window and acks, not the pacer, clock the sender.
        let gain = if self.in_slow_start() { 2.0 } else { 1.25 };
        let srtt = srtt.as_secs_f64().max(1e-6);
        gain * self.cwnd * mss as f64 / srtt
    }
}

/// Queueing delay beyond which the window stops growing, on top of twice the minimum RTT.
const QUEUE_DELAY_LIMIT: Duration = Duration::from_millis(10);

/// True when the smoothed RTT exceeds twice the path's minimum by more than 10 ms: packets
/// are sitting in a buffer (typically the receiver's socket buffer, or a bloated router
/// queue) and more window would only add delay and, once it overflows, losses that cost
/// the receiver extra work. Generous enough that scheduling jitter on a busy machine and
/// ordinary RTT variation on internet paths do not trigger it.
pub fn queue_building(srtt: Duration, min_rtt: Duration) -> bool {
    min_rtt != Duration::MAX && srtt > min_rtt * 2 + QUEUE_DELAY_LIMIT
}

/// How long a burst may be: covers late timer wakeups (tokio timers have 1 ms granularity).
const BURST_TIME: f64 = 0.002;
/// A burst is never smaller than this many packets.
const MIN_BURST_PACKETS: f64 = 16.0;

/// Token bucket pacer. Without a rate (before the first RTT sample) it does not limit.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: Option<f64>,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// A pacer that does not limit until [`Pacer::set_rate`] is called.
    pub fn new(now: Instant) -> Self {
        Pacer {
            rate: None,
            capacity: 0.0,
            tokens: 0.0,
            last: now,
        }
    }

    /// Sets the rate in bytes per second; `mss` sizes the minimum burst.
    pub fn set_rate(&mut self, rate: f64, mss: usize) {
        self.capacity = (rate * BURST_TIME).max(MIN_BURST_PACKETS * mss as f64);
        if self.rate.is_none() {
            self.tokens = self.capacity;
        }
        self.rate = Some(rate);
    }

    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate).min(self.capacity);
        }
        self.last = now;
    }

    /// `Ok` if `bytes` may go out now, else the instant at which they may.
    pub fn check(&mut self, now: Instant, bytes: usize) -> Result<(), Instant> {
        let Some(rate) = self.rate else { return Ok(()) };
        self.refill(now);
        let bytes = bytes as f64;
        if self.tokens >= bytes {
            return Ok(());
        }
        // Rounded up to whole microseconds: a wait truncated to nanoseconds could come out a
        // hair short, and a check at that instant would fail again with no time passed.
        let wait_us = ((bytes - self.tokens) / rate * 1e6).ceil().max(1.0);
        Err(now + Duration::from_micros(wait_us as u64))
    }

    /// Accounts `bytes` as sent.
    pub fn on_sent(&mut self, bytes: usize) {
        if self.rate.is_some() {
            self.tokens = (self.tokens - bytes as f64).max(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_then_one_reduction_per_episode() {
        let mut c = Congestion::default();
        c.on_acked(10, 10, true, false);
        assert_eq!(c.window(), 20);
        c.on_acked(10, 20, false, false); // app-limited: no growth
        assert_eq!(c.window(), 20);
        c.on_loss(100);
        assert_eq!(c.window(), 14);
        c.on_loss(120); // same episode
        assert_eq!(c.window(), 14);
        c.on_acked(5, 50, true, false); // still recovering
        assert_eq!(c.window(), 14);
        c.on_acked(14, 100, true, false); // recovery over, congestion avoidance
        assert_eq!(c.window(), 15);
        c.on_rto(200);
        assert_eq!(c.window(), MIN_WINDOW as usize);
        c.on_acked(4, 150, true, false); // slow start resumes at once after a timeout
        assert_eq!(c.window(), 8);
        c.on_loss(220); // a loss from before the timeout does not cut again
        assert_eq!(c.window(), 8);
        c.on_acked(8, 230, true, true); // a standing queue: no growth, slow start over
        assert_eq!(c.window(), 8);
        assert!(!c.in_slow_start());
    }

    #[test]
    fn pacer_refills_continuously() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        assert!(p.check(t0, 1_000_000).is_ok()); // no rate yet
        p.set_rate(1_000_000.0, 1000); // 1 MB/s, burst 16 KB
        for _ in 0..16 {
            assert!(p.check(t0, 1000).is_ok());
            p.on_sent(1000);
        }
        let when = p.check(t0, 1000).unwrap_err();
        assert!(when > t0 && when <= t0 + Duration::from_millis(1));
        // 500 µs later half a packet's worth is back, 1 ms later a whole one
        assert!(p.check(t0 + Duration::from_micros(500), 1000).is_err());
        assert!(p.check(t0 + Duration::from_micros(1000), 1000).is_ok());
    }
}
