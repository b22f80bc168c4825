//! Exponential backoff with jitter: the one schedule behind upstream restarts (the breaker)
//! and the bridge's connection retries. Pure arithmetic; the caller sleeps.

use std::time::Duration;

/// base · 2ⁿ, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub base: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `n` (0 for the first), without jitter.
    pub fn ceiling(&self, n: u32) -> Duration {
        self.base.saturating_mul(1u32 << n.min(16)).min(self.max)
    }

    /// The delay before retry number `n`, spread by `jitter` in [0, 1) over the upper half of
    /// [`Backoff::ceiling`], so that many clients retrying at once do not line up.
    pub fn delay(&self, n: u32, jitter: f64) -> Duration {
        self.ceiling(n).mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// The delay before retry number `n`, spread by `jitter` in [0, 1) over 75–125 % of
    /// base · 2ⁿ and then capped: a request pacing its own retries (it must not come in much
    /// later than the schedule says, nor all at once with others).
    pub fn around(&self, n: u32, jitter: f64) -> Duration {
        self.base.saturating_mul(1u32 << n.min(16)).mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0)).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_jitters_within_the_upper_half() {
        let b = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(1) };
        let ceilings: Vec<u128> = (0..6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1), "no overflow");
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(1, 7.0), Duration::from_millis(200), "jitter is clamped");
        assert_eq!(b.around(1, 0.0), Duration::from_millis(150));
        assert_eq!(b.around(2, 1.0), Duration::from_millis(500));
        assert_eq!(b.around(20, 0.0), Duration::from_secs(1), "capped after the spread");
    }
}
