//! Round-trip time estimation and the retransmission timeout (RFC 6298, as libudx does it,
//! but with sub-millisecond precision so loopback and LAN timings are not rounded to zero).

use std::time::Duration;

/// The RTO before the first RTT sample (libudx and RFC 6298 use one second).
const INITIAL_RTO: Duration = Duration::from_secs(1);
/// Lower bound of the RTO. libudx uses 1 s; we follow Linux TCP's 200 ms so a tail loss on a
/// fast path costs a fifth of the time (timing is local policy, not part of the wire format).
const MIN_RTO: Duration = Duration::from_millis(200);
/// Upper bound of the RTO (libudx: 30 s).
const MAX_RTO: Duration = Duration::from_secs(30);

/// Smoothed RTT, variance and minimum, updated from acks of packets sent once.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    min_rtt: Duration,
}

impl Default for RttEstimator {
    fn default() -> Self {
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            min_rtt: Duration::MAX,
        }
    }
}

impl RttEstimator {
    /// Feeds one sample (Karn: only for packets that were never retransmitted).
    pub fn on_sample(&mut self, rtt: Duration) {
        self.min_rtt = self.min_rtt.min(rtt);
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let delta = rtt.abs_diff(srtt);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// Smoothed RTT, if any sample was taken.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// RTT variation (RFC 6298's RTTVAR).
    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// Smallest RTT seen (`Duration::MAX` before the first sample).
    pub fn min_rtt(&self) -> Duration {
        self.min_rtt
    }

    /// Retransmission timeout before backoff.
    pub fn rto(&self) -> Duration {
        match self.srtt {
            None => INITIAL_RTO,
            Some(srtt) => (srtt + self.rttvar * 4).clamp(MIN_RTO, MAX_RTO),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_rfc6298() {
        let mut r = RttEstimator::default();
        assert_eq!(r.rto(), INITIAL_RTO);
        r.on_sample(Duration::from_millis(100));
        assert_eq!(r.srtt(), Some(Duration::from_millis(100)));
        assert_eq!(r.rto(), Duration::from_millis(300));
        r.on_sample(Duration::from_millis(20));
        assert_eq!(r.srtt(), Some(Duration::from_millis(90)));
        assert_eq!(r.min_rtt(), Duration::from_millis(20));
        for _ in 0..50 {
            r.on_sample(Duration::from_micros(50));
        }
        assert_eq!(r.rto(), MIN_RTO);
    }
}
