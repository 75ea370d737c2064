//! Congestion control: BBR (v1, as libudx runs it since its PR #256), with a pacer.
//!
//! BBR models the path instead of reacting to loss: it measures the bottleneck bandwidth
//! (the highest delivery rate of the last ten round trips) and the round-trip propagation
//! time (the lowest RTT seen), and sends at that rate with at most two bandwidth-delay
//! products in flight. Random loss does not change either estimate, so a path that loses a
//! few percent of its packets keeps its rate (a loss-based window is cut on every loss and
//! caps near 1.22 * MSS / (RTT * sqrt(p))), and the queue it builds stays below one BDP.
//!
//! - Startup doubles the rate each round (gain 2/ln 2) until the bandwidth stops growing by
//!   25 % for three rounds; Drain then empties the queue Startup built.
//! - ProbeBw cycles the pacing gain through 1.25, 0.75 and six rounds of 1: it probes for
//!   more bandwidth, drains what the probe queued, and cruises. Flows sharing a bottleneck
//!   converge to fair shares because each probe takes from the others' measured maximum.
//! - A retransmission timeout means the path may be gone: the window restarts small.
//!
//! Congestion control is sender-local policy, not wire format, so this interoperates with
//! any UDX peer. The pacer spreads sending at the model's rate while still sending in short
//! bursts (a token bucket refilled from nanosecond-precise elapsed time, deep enough to
//! cover the ~1 ms granularity of the runtime's timers).

use std::time::{Duration, Instant};

/// Initial window in packets, once an RTT is measured: twice what Chromium's QUIC used for years
/// (`kInitialCongestionWindow`, 32); libudx, Linux TCP and RFC 9002 use 10. Only what
/// [`UNPACED_WINDOW`] allows goes out before the first RTT sample; the rest is paced over the
/// measured RTT (see [`Congestion::window`]), at Startup's gain: 64 packets over about a third of
/// the first round trip. A tunnel's stream has its sample before its bulk (the secret stream's
/// headers cross first), so its first fetch saves one of the ~8 round trips Startup takes to
/// send 10 MiB (docs/transport.md, "The cold fetch, traced"). On paths longer than 25 ms the
/// window is a rate instead ([`INITIAL_RATE`]).
pub const INITIAL_WINDOW: usize = 64;
/// The initial window is at least the packets one round trip carries at this rate (64 packets
/// per 25 ms, about 3 MB/s), up to [`MAX_INITIAL_WINDOW`]: a window in packets sends faster the
/// shorter the RTT, so 64 packets over a LAN are a faster start than 256 over 100 ms. Rated,
/// a long path starts no more aggressively than a short one, and its cold transfer saves two
/// of the round trips that cost it the most.
const INITIAL_RATE: f64 = INITIAL_WINDOW as f64 / 0.025;
/// Upper bound of the RTT-scaled initial window (reached at 100 ms).
const MAX_INITIAL_WINDOW: usize = 256;
/// Packets in flight before the first RTT sample, when nothing can be paced yet (libudx's and
/// RFC 6928's initial window, sent as the burst they allow).
const UNPACED_WINDOW: usize = 10;
/// The window never drops below this many packets.
const MIN_WINDOW: usize = 4;
/// Upper bound of the window.
const MAX_WINDOW: usize = 65536;
/// Startup's gain: the smallest that doubles the delivery rate every round (2 / ln 2).
const STARTUP_GAIN: f64 = 2.885;
/// The window in ProbeBw: two BDPs absorb delayed and stretched acks.
const CWND_GAIN: f64 = 2.0;
/// ProbeBw's pacing gains, one per min-RTT phase.
const PROBE_BW_GAINS: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// The RTT a BDP is computed from is at least this: the receiver acks once per received
/// burst and the runtime's timers tick in milliseconds, so on loopback and LANs a window of
/// bandwidth x (microsecond) min RTT would starve the sender between acks.
const MIN_BDP_RTT: Duration = Duration::from_millis(2);
/// Rounds over which the bandwidth maximum is kept.
const BW_WINDOW_ROUNDS: u64 = 10;
/// Startup ends after this many rounds without 25 % more bandwidth.
const FULL_BW_ROUNDS: u32 = 3;
/// An RTT this far above the minimum shows a queue (RFC 9406's HyStart++ bounds: an eighth of
/// the minimum RTT, within 4-16 ms).
const QUEUE_RTT_MIN: Duration = Duration::from_millis(4);
const QUEUE_RTT_MAX: Duration = Duration::from_millis(16);

/// What a packet remembers of the delivery state when it was sent, to measure the delivery
/// rate when it is acknowledged (the method of draft-cheng-iccrg-delivery-rate-estimation).
#[derive(Debug, Clone, Copy)]
pub struct SendStamp {
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    app_limited: bool,
}

/// One delivery-rate measurement.
#[derive(Debug, Clone, Copy)]
pub struct RateSample {
    /// Packets per second delivered over the sample's interval.
    pub rate: f64,
    /// The sample was taken while the application, not the network, limited sending.
    pub app_limited: bool,
    /// `delivered` when the packet was sent: a round trip ends when a packet sent after the
    /// previous round's end is acknowledged.
    pub prior_delivered: u64,
}

/// Delivery-rate sampling of one stream.
#[derive(Debug, Clone)]
pub struct DeliveryRate {
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    /// Samples are app-limited until `delivered` passes this.
    app_limited_until: u64,
    /// The newest packet acknowledged in the current batch: (stamp, time it was sent).
    best: Option<(SendStamp, Instant)>,
}

impl DeliveryRate {
    /// Sampling that starts at `now`.
    pub fn new(now: Instant) -> DeliveryRate {
        DeliveryRate {
            delivered: 0,
            delivered_time: now,
            first_sent_time: now,
            app_limited_until: 0,
            best: None,
        }
    }

    /// Packets delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// A packet goes out at `now` with `in_flight` packets already in flight.
    pub fn on_send(&mut self, now: Instant, in_flight: usize) -> SendStamp {
        if in_flight == 0 {
            // After an idle period the interval starts now, not at the last ack.
            self.first_sent_time = now;
            self.delivered_time = now;
        }
        SendStamp {
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
            app_limited: self.app_limited_until > self.delivered,
        }
    }

    /// The sender ran out of data with room in its window: samples until what is in flight
    /// now is delivered measure the application, not the path.
    pub fn on_app_limited(&mut self, in_flight: usize) {
        self.app_limited_until = (self.delivered + in_flight as u64).max(1);
    }

    /// The packet stamped `stamp`, sent at `time_sent`, was delivered at `now`.
    pub fn on_delivered(&mut self, stamp: SendStamp, time_sent: Instant, now: Instant) {
        self.delivered += 1;
        self.delivered_time = now;
        if self
            .best
            .is_none_or(|(b, _)| stamp.delivered >= b.delivered)
        {
            self.best = Some((stamp, time_sent));
            self.first_sent_time = time_sent;
        }
    }

    /// The sample of the acks processed since the last call.
    pub fn take_sample(&mut self) -> Option<RateSample> {
        let (stamp, time_sent) = self.best.take()?;
        let send_elapsed = time_sent.saturating_duration_since(stamp.first_sent_time);
        let ack_elapsed = self
            .delivered_time
            .saturating_duration_since(stamp.delivered_time);
        // The slower of the two: acks that bunch up must not inflate the rate.
        let interval = send_elapsed.max(ack_elapsed).max(Duration::from_micros(1));
        let packets = self.delivered - stamp.delivered;
        Some(RateSample {
            rate: packets as f64 / interval.as_secs_f64(),
            app_limited: stamp.app_limited,
            prior_delivered: stamp.delivered,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Startup,
    Drain,
    ProbeBw { phase: usize, since: Instant },
}

/// BBR's model of the path and its window and pacing rate (see the module documentation).
#[derive(Debug, Clone)]
pub struct Congestion {
    mode: Mode,
    /// Bandwidth maxima of recent rounds, packets per second: (round, max).
    bw_samples: Vec<(u64, f64)>,
    round: u64,
    next_round_delivered: u64,
    full_bw: f64,
    full_bw_rounds: u32,
    min_rtt: Option<Duration>,
    cwnd: usize,
    /// After a timeout the window restarts small and grows back with acks.
    recovering: bool,
    /// An RTT sample rose above the minimum by more than a queue's threshold: Startup's fast
    /// growth is over for good.
    queue_seen: bool,
    /// Spreads the ProbeBw phases of flows that start together.
    phase_seed: usize,
}

impl Congestion {
    /// A controller in Startup; `phase_seed` picks where its ProbeBw cycle starts.
    pub fn new(phase_seed: u32) -> Congestion {
        Congestion {
            mode: Mode::Startup,
            bw_samples: Vec::new(),
            round: 0,
            next_round_delivered: 0,
            full_bw: 0.0,
            full_bw_rounds: 0,
            min_rtt: None,
            cwnd: INITIAL_WINDOW,
            recovering: false,
            queue_seen: false,
            phase_seed: phase_seed as usize,
        }
    }

    /// Current window in packets. Before the first RTT sample only [`UNPACED_WINDOW`]: the
    /// pacer has no rate yet, so a larger window would leave as one burst.
    pub fn window(&self) -> usize {
        match self.min_rtt {
            None => self.cwnd.min(UNPACED_WINDOW),
            Some(_) => self.cwnd,
        }
    }

    /// Estimated bottleneck bandwidth in packets per second (0 before any sample).
    pub fn bandwidth(&self) -> f64 {
        self.bw_samples.iter().map(|(_, b)| *b).fold(0.0, f64::max)
    }

    fn bdp(&self) -> Option<f64> {
        let bw = self.bandwidth();
        let rtt = self.min_rtt?.max(MIN_BDP_RTT);
        (bw > 0.0).then_some(bw * rtt.as_secs_f64())
    }

    fn pacing_gain(&self) -> f64 {
        match self.mode {
            Mode::Startup => STARTUP_GAIN,
            Mode::Drain => 1.0 / STARTUP_GAIN,
            Mode::ProbeBw { phase, .. } => PROBE_BW_GAINS[phase],
        }
    }

    /// An ack batch measured `latest` (the RTT of its most recently sent packet, if that was
    /// not a retransmission); `min` is the path's lowest RTT so far (`Duration::MAX` before
    /// any). Called before [`Congestion::on_ack`] for the same batch.
    pub fn on_rtt(&mut self, latest: Option<Duration>, min: Duration) {
        if min == Duration::MAX {
            return;
        }
        if self.min_rtt.is_none() && self.mode == Mode::Startup && !self.recovering {
            self.cwnd = self.cwnd.max(initial_window(min));
        }
        self.min_rtt = Some(min);
        let threshold = (min / 8).clamp(QUEUE_RTT_MIN, QUEUE_RTT_MAX);
        if latest.is_some_and(|rtt| rtt > min + threshold) {
            self.queue_seen = true;
        }
    }

    /// An ack batch was processed: `acked` packets newly delivered, `sample` its delivery
    /// rate, `in_flight` what is still out.
    pub fn on_ack(
        &mut self,
        now: Instant,
        acked: usize,
        sample: Option<RateSample>,
        delivered: u64,
        in_flight: usize,
    ) {
        let Some(sample) = sample else { return };
        let round_start = sample.prior_delivered >= self.next_round_delivered;
        if round_start {
            self.next_round_delivered = delivered;
            self.round += 1;
        }
        // App-limited samples only count when they show more than we knew.
        if !sample.app_limited || sample.rate > self.bandwidth() {
            match self.bw_samples.last_mut() {
                Some((r, b)) if *r == self.round => *b = b.max(sample.rate),
                _ => self.bw_samples.push((self.round, sample.rate)),
            }
        }
        let oldest = self.round.saturating_sub(BW_WINDOW_ROUNDS);
        self.bw_samples.retain(|(r, _)| *r > oldest);

        if round_start && self.mode == Mode::Startup && !sample.app_limited {
            let bw = self.bandwidth();
            if bw >= self.full_bw * 1.25 {
                self.full_bw = bw;
                self.full_bw_rounds = 0;
            } else {
                self.full_bw_rounds += 1;
                if self.full_bw_rounds >= FULL_BW_ROUNDS {
                    self.mode = Mode::Drain;
                }
            }
        }
        if self.mode == Mode::Drain && self.bdp().is_none_or(|bdp| in_flight as f64 <= bdp) {
            self.mode = Mode::ProbeBw {
                phase: (self.phase_seed % (PROBE_BW_GAINS.len() - 1)) + 1,
                since: now,
            };
        }
        if let Mode::ProbeBw { phase, since } = self.mode {
            let rtt = self.min_rtt.unwrap_or(Duration::from_millis(100));
            // Probing lasts until the probe had its effect (a round and a queue's worth in
            // flight), draining until the queue is gone; cruising one min RTT per phase.
            let bdp = self.bdp().unwrap_or(0.0);
            let next = match PROBE_BW_GAINS[phase] {
                g if g > 1.0 => now - since >= rtt && in_flight as f64 >= bdp * g,
                g if g < 1.0 => now - since >= rtt || in_flight as f64 <= bdp,
                _ => now - since >= rtt,
            };
            if next {
                self.mode = Mode::ProbeBw {
                    phase: (phase + 1) % PROBE_BW_GAINS.len(),
                    since: now,
                };
            }
        }

        let gain = match self.mode {
            Mode::Startup | Mode::Drain => STARTUP_GAIN,
            Mode::ProbeBw { .. } => CWND_GAIN,
        };
        let target = self.bdp().map_or(MAX_WINDOW, |bdp| {
            ((bdp * gain) as usize + 3).clamp(MIN_WINDOW, MAX_WINDOW)
        });
        if self.recovering || self.mode == Mode::Startup {
            // Grow by what was delivered (doubling per round, slow start's speed), up to the
            // target. A first Startup whose every RTT sample showed no queue grows by twice that
            // (tripling per round; the target, 2.885 BDPs, caps it a little below): a cold
            // 10 MiB over 100 ms then takes about 5 rounds from 64 packets instead of 7. On
            // a path with a small bottleneck the queue shows within a round of filling it, and
            // the growth is slow start's again, so the overshoot stays one round's worth.
            let fast = self.mode == Mode::Startup && !self.recovering && !self.queue_seen;
            let growth = if fast { acked * 2 } else { acked };
            let floor = self.min_rtt.map_or(INITIAL_WINDOW, initial_window);
            self.cwnd = (self.cwnd + growth).min(target.max(floor));
            if self.cwnd >= target {
                self.recovering = false;
            }
        } else {
            self.cwnd = target;
        }
    }

    /// `lost` packets were declared lost. BBR's model ignores loss, with one exception: losses
    /// in Startup while the RTT shows a queue (`latest_rtt` above 1.5x `min_rtt`) mean Startup
    /// has overfilled the bottleneck's buffer, so the bandwidth is found (as BBRv2 and v3 also
    /// leave Startup on loss). Random loss does not inflate the RTT and leaves Startup alone.
    /// The latest RTT (of the packets just acked), not the smoothed one: one ack lost at the
    /// start makes the first sample several RTTs long, and `srtt` carries that for a dozen
    /// samples; read as a queue, it ended Startup at a window of 50 packets at 5 % loss
    /// (the simulator's seed 0xc01e of `cold_fetch_after_a_handshake_ramps_up_despite_loss`).
    ///
    /// In Startup, lost packets left the flight as delivered ones did, and the window grows by
    /// both: grown by deliveries alone, it grows (2 - p)-fold per round at random loss p
    /// instead of doubling, and that compounds (at 5 % over the ten rounds of a 10 MiB start
    /// at 100 ms, a window a fifth smaller: one round trip more). Only the retransmissions'
    /// share of the window is lost to loss, as with TCP's slow start in its first round of
    /// recovery (RFC 6937's PRR lets the window follow what left the network).
    pub fn on_loss(&mut self, lost: usize, latest_rtt: Duration, min_rtt: Duration) {
        if self.mode != Mode::Startup {
            return;
        }
        if min_rtt != Duration::MAX && latest_rtt * 2 > min_rtt * 3 {
            self.mode = Mode::Drain;
        } else {
            self.cwnd = (self.cwnd + lost).min(MAX_WINDOW);
        }
    }

    /// The retransmission timer fired: the path may be gone, restart from a small window.
    pub fn on_rto(&mut self) {
        self.cwnd = MIN_WINDOW;
        self.recovering = true;
    }

    /// Pacing rate in bytes per second for the given packet size and smoothed RTT.
    ///
    /// In Startup the rate is at least the window per RTT (times the gain, as Linux's BBR
    /// starts from the initial window over the first RTT): until the window has been in
    /// flight, the bandwidth samples are app-limited, and a stream that first exchanged a few
    /// small messages (a tunnel's handshake) measured one packet per round trip. Paced at that
    /// until a full window's sample came back, its start took three round trips more.
    ///
    /// The window is spread over the minimum RTT, not `srtt` (only used before a minimum is
    /// known): a first sample inflated by a lost ack (the packets of the first window acked
    /// only by the ack of a retransmission, 800 ms after they left on a 100 ms path) would
    /// otherwise pace the window at an eighth of the path's rate, the bandwidth measured at that
    /// pace would cap the window, and the start would crawl for a dozen round trips (the
    /// simulator's seed 0xc01e of `cold_fetch_after_a_handshake_ramps_up_despite_loss`).
    pub fn pacing_rate(&self, mss: usize, srtt: Duration) -> f64 {
        let rtt = self.min_rtt.map_or(srtt, |r| r.max(MIN_BDP_RTT));
        let window_rate = self.cwnd as f64 / rtt.as_secs_f64().max(1e-6);
        let bw = match self.mode {
            Mode::Startup => self.bandwidth().max(window_rate),
            _ if self.bandwidth() > 0.0 => self.bandwidth(),
            _ => window_rate,
        };
        self.pacing_gain() * bw * mss as f64
    }
}

/// The initial window for a path of `min_rtt` (see [`INITIAL_RATE`]).
fn initial_window(min_rtt: Duration) -> usize {
    ((INITIAL_RATE * min_rtt.as_secs_f64()) as usize).clamp(INITIAL_WINDOW, MAX_INITIAL_WINDOW)
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

    /// A sender `secs` long on a path whose bottleneck passes `bw` packets per second, with
    /// `rtt`: packets leave at the bottleneck's pace while the window allows, and each is
    /// acknowledged one RTT after it left.
    fn run(
        c: &mut Congestion,
        rate: &mut DeliveryRate,
        t: &mut Instant,
        secs: f64,
        bw: f64,
        rtt: Duration,
    ) {
        let mut flight: std::collections::VecDeque<(Instant, SendStamp)> = Default::default();
        let end = *t + Duration::from_secs_f64(secs);
        let mut next_send = *t;
        while *t < end {
            let ack_at = flight.front().map(|(sent, _)| *sent + rtt);
            if flight.len() < c.window() && ack_at.is_none_or(|a| next_send <= a) {
                *t = next_send.max(*t);
                flight.push_back((*t, rate.on_send(*t, flight.len())));
                next_send = *t + Duration::from_secs_f64(1.0 / bw);
            } else if let Some((sent, stamp)) = flight.pop_front() {
                *t = sent + rtt;
                rate.on_delivered(stamp, sent, *t);
                let sample = rate.take_sample();
                c.on_rtt(Some(rtt), rtt);
                c.on_ack(*t, 1, sample, rate.delivered(), flight.len());
            }
        }
    }

    #[test]
    fn finds_the_bottleneck_and_keeps_two_bdp_in_flight() {
        let mut t = Instant::now();
        let mut c = Congestion::new(0);
        let mut rate = DeliveryRate::new(t);
        let rtt = Duration::from_millis(100);
        run(&mut c, &mut rate, &mut t, 10.0, 1000.0, rtt);
        let bw = c.bandwidth();
        assert!((800.0..=1200.0).contains(&bw), "bandwidth {bw}");
        assert!(matches!(c.mode, Mode::ProbeBw { .. }), "{:?}", c.mode);
        // 2 x 100 packets of BDP, plus a few.
        assert!((150..=260).contains(&c.window()), "window {}", c.window());
        // Losses do not touch the model; a timeout restarts small and recovers.
        c.on_rto();
        assert_eq!(c.window(), MIN_WINDOW);
        run(&mut c, &mut rate, &mut t, 2.0, 1000.0, rtt);
        assert!(c.window() >= 150, "window {}", c.window());
    }

    #[test]
    fn startup_grows_by_lost_packets_too_unless_the_rtt_shows_a_queue() {
        let mut c = Congestion::new(0);
        let rtt = Duration::from_millis(100);
        c.min_rtt = Some(rtt);
        c.on_loss(5, rtt, rtt);
        assert_eq!(c.window(), INITIAL_WINDOW + 5);
        assert_eq!(c.mode, Mode::Startup);
        // Loss with the RTT 1.6x its minimum: a buffer overflowed, Startup is over.
        c.on_loss(5, rtt * 8 / 5, rtt);
        assert_eq!(c.mode, Mode::Drain);
        assert_eq!(c.window(), INITIAL_WINDOW + 5);
        c.on_loss(5, rtt, rtt);
        assert_eq!(c.window(), INITIAL_WINDOW + 5, "only Startup grows on loss");
    }

    #[test]
    fn the_initial_window_waits_for_a_measured_rtt() {
        let mut c = Congestion::new(0);
        assert_eq!(c.window(), UNPACED_WINDOW, "nothing to pace over yet");
        let rtt = Duration::from_millis(100);
        c.on_rtt(Some(rtt), rtt);
        assert_eq!(c.window(), MAX_INITIAL_WINDOW);
        // Paced at Startup's gain over the RTT: the whole window leaves within the first half
        // of the round trip, not as one burst.
        let rate = c.pacing_rate(1000, rtt) / 1000.0;
        let spread = MAX_INITIAL_WINDOW as f64 / rate;
        assert!(
            (0.3..0.4).contains(&(spread / rtt.as_secs_f64())),
            "{spread}"
        );
    }

    #[test]
    fn the_initial_window_is_a_rate_over_the_first_rtt() {
        for (ms, window) in [(1, 64), (25, 64), (50, 128), (100, 256), (300, 256)] {
            let mut c = Congestion::new(0);
            let rtt = Duration::from_millis(ms);
            c.on_rtt(Some(rtt), rtt);
            assert_eq!(c.window(), window, "{ms} ms");
        }
        // Only a stream's first RTT sets it: after a timeout the window restarts small.
        let mut c = Congestion::new(0);
        c.on_rto();
        let rtt = Duration::from_millis(100);
        c.on_rtt(Some(rtt), rtt);
        assert_eq!(c.window(), MIN_WINDOW);
    }

    #[test]
    fn startup_triples_per_round_until_an_rtt_shows_a_queue() {
        let t = Instant::now();
        let rtt = Duration::from_millis(20);
        let mut c = Congestion::new(0);
        c.on_rtt(Some(rtt), rtt);
        assert_eq!(c.window(), INITIAL_WINDOW);
        // A path far faster than the window: only the growth rule limits it.
        let sample = RateSample {
            rate: 1e6,
            app_limited: false,
            prior_delivered: 0,
        };
        let ack = |c: &mut Congestion, latest: Duration| {
            c.on_rtt(Some(latest), rtt);
            c.on_ack(t + latest, 10, Some(sample), 10, 0);
        };
        // 4 ms above a 20 ms minimum is within the threshold (4-16 ms): twice what was acked.
        ack(&mut c, rtt + Duration::from_millis(4));
        assert_eq!(c.window(), INITIAL_WINDOW + 20);
        // 5 ms above is a queue: slow start's growth from now on, even at the minimum again.
        ack(&mut c, rtt + Duration::from_millis(5));
        assert_eq!(c.window(), INITIAL_WINDOW + 30);
        ack(&mut c, rtt);
        assert_eq!(c.window(), INITIAL_WINDOW + 40);
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
