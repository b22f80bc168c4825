//! Restart policy for an upstream binding: the first restart after a failure is immediate,
//! later ones back off exponentially with jitter, and a crash-loop breaker that stops trying for a cool-down after too many failures in a
//! window. Pure state over `tokio::time::Instant`, so paused-time tests drive it.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::backoff::Backoff;

/// Restart policy settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The delay before the second consecutive attempt (the first one does not wait: a server
    /// that crashed once is most likely fine when started again, and every millisecond of the
    /// restart is a millisecond the client waits).
    pub backoff_base: Duration,
    /// The largest backoff delay.
    pub backoff_max: Duration,
    /// Failures within `window` that open the breaker.
    pub max_failures: usize,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long the breaker stays open.
    pub cooldown: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_failures: 5,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
        }
    }
}

impl RestartPolicy {
    /// The wait before retry `n` (1-based) of a request that found its upstream away:
    /// `backoff_base`, doubling, with jitter (`jitter` in [0, 1) spreads it over 75–125 %),
    /// capped at `backoff_max`.
    pub fn retry_delay(&self, n: u32, jitter: f64) -> Duration {
        self.backoff().around(n.saturating_sub(1), jitter)
    }

    /// The one backoff schedule, with these settings.
    fn backoff(&self) -> Backoff {
        Backoff { base: self.backoff_base, max: self.backoff_max }
    }
}

/// What the breaker says about the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead, after waiting this long (zero when there were no recent failures).
    Attempt(Duration),
    /// Too many failures: refuse until this much time has passed.
    Open(Duration),
}

/// Failure history of one binding.
#[derive(Debug, Default)]
pub struct Breaker {
    failures: VecDeque<Instant>,
    consecutive: u32,
    open_until: Option<Instant>,
    last_failure: Option<Instant>,
}

impl Breaker {
    /// Records a failed start or a crash. Only failures that `trip` count toward opening the
    /// breaker; every failure lengthens the backoff.
    pub fn failure(&mut self, policy: &RestartPolicy, now: Instant, trip: bool) {
        self.consecutive = self.consecutive.saturating_add(1);
        self.last_failure = Some(now);
        if !trip {
            return;
        }
        self.failures.push_back(now);
        while self.failures.front().is_some_and(|t| now.duration_since(*t) > policy.window) {
            self.failures.pop_front();
        }
        if self.failures.len() >= policy.max_failures {
            self.open_until = Some(now + policy.cooldown);
            self.failures.clear();
        }
    }

    /// Records a successful start: backoff starts over.
    pub fn success(&mut self) {
        self.consecutive = 0;
    }

    /// Whether the breaker is open now.
    pub fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|t| now < t)
    }

    /// How long the breaker stays open from `now`, if it is open (shown to operators).
    pub fn open_for(&self, now: Instant) -> Option<Duration> {
        self.open_until.filter(|t| now < *t).map(|t| t - now)
    }

    /// Failures since the last successful start.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }

    /// Decides the next attempt. `jitter` in [0, 1) spreads restarts of many sessions.
    pub fn verdict(&mut self, policy: &RestartPolicy, now: Instant, jitter: f64) -> Verdict {
        if let Some(t) = self.open_until {
            if now < t {
                return Verdict::Open(t - now);
            }
            // Half-open: one attempt is allowed; the history starts over.
            self.open_until = None;
            return Verdict::Attempt(Duration::ZERO);
        }
        if self.consecutive <= 1 {
            return Verdict::Attempt(Duration::ZERO);
        }
        let delay = policy.backoff().delay(self.consecutive - 2, jitter);
        let since = self.last_failure.map_or(Duration::MAX, |t| now.duration_since(t));
        Verdict::Attempt(delay.saturating_sub(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            max_failures: 3,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_is_capped_and_counts_from_the_failure() {
        let p = policy();
        let mut b = Breaker::default();
        assert_eq!(b.verdict(&p, Instant::now(), 1.0), Verdict::Attempt(Duration::ZERO));
        let mut seen = Vec::new();
        for _ in 0..6 {
            b.failure(&p, Instant::now(), true);
            match b.verdict(&p, Instant::now(), 1.0) {
                Verdict::Attempt(d) => seen.push(d.as_millis()),
                Verdict::Open(_) => seen.push(0),
            }
            // Wait out the window so the breaker does not open.
            tokio::time::advance(Duration::from_secs(11)).await;
        }
        assert_eq!(seen, vec![0, 100, 200, 400, 800, 1600]);
        // Time already passed since the failure counts against the delay.
        b.failure(&p, Instant::now(), true);
        assert_eq!(b.verdict(&p, Instant::now(), 1.0), Verdict::Attempt(Duration::from_secs(2)), "capped");
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(b.verdict(&p, Instant::now(), 1.0), Verdict::Attempt(Duration::from_millis(500)));
        b.success();
        assert_eq!(b.verdict(&p, Instant::now(), 1.0), Verdict::Attempt(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_spreads_within_the_upper_half() {
        let p = policy();
        let mut b = Breaker::default();
        // Three in a row (not tripping: the breaker is not under test here): 2 × base.
        for _ in 0..3 {
            b.failure(&p, Instant::now(), false);
        }
        let lo = b.verdict(&p, Instant::now(), 0.0);
        let hi = b.verdict(&p, Instant::now(), 0.999);
        assert_eq!(lo, Verdict::Attempt(Duration::from_millis(100)));
        assert!(matches!(hi, Verdict::Attempt(d) if d > Duration::from_millis(190) && d <= Duration::from_millis(200)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_after_n_failures_in_the_window_and_half_opens_after_cooldown() {
        let p = policy();
        let mut b = Breaker::default();
        for _ in 0..3 {
            assert!(!b.is_open(Instant::now()));
            b.failure(&p, Instant::now(), true);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert!(b.is_open(Instant::now()));
        assert_eq!(b.verdict(&p, Instant::now(), 0.5), Verdict::Open(Duration::from_secs(29)));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(b.verdict(&p, Instant::now(), 0.5), Verdict::Attempt(Duration::ZERO), "half-open");
        assert!(!b.is_open(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_that_do_not_trip_only_back_off() {
        let p = policy();
        let mut b = Breaker::default();
        for _ in 0..10 {
            b.failure(&p, Instant::now(), false);
        }
        assert!(!b.is_open(Instant::now()));
        assert_eq!(b.verdict(&p, Instant::now(), 1.0), Verdict::Attempt(Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_open_it() {
        let p = policy();
        let mut b = Breaker::default();
        for _ in 0..10 {
            b.failure(&p, Instant::now(), true);
            tokio::time::advance(Duration::from_secs(6)).await;
        }
        assert!(!b.is_open(Instant::now()));
    }

    #[test]
    fn a_request_retry_delay_doubles_from_the_base_within_its_jitter() {
        let p = RestartPolicy { backoff_base: Duration::from_millis(200), ..policy() };
        assert_eq!(p.retry_delay(1, 0.5), Duration::from_millis(200));
        assert_eq!(p.retry_delay(2, 0.5), Duration::from_millis(400));
        assert_eq!(p.retry_delay(3, 0.0), Duration::from_millis(600), "75 % of 800 ms");
        assert_eq!(p.retry_delay(4, 1.0), Duration::from_millis(2000), "125 % of 1.6 s");
        assert_eq!(p.retry_delay(40, 0.5), Duration::from_secs(2), "capped");
    }
}
