//! The one clock. Durations, deadlines and timers use tokio time (`tokio::time::Instant`), so
//! that tests with paused time drive every timeout, TTL, backoff and reaper; wall-clock
//! milliseconds for records and metrics come from [`now_ms`] here, which is the wall clock
//! read once at start plus tokio time since — the same paused clock in tests. The
//! workspace's `clippy.toml` forbids `SystemTime::now` and `std::time::Instant::now` elsewhere.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use tokio::time::Instant;

/// The wall clock and tokio's clock, read together at the first use.
fn base() -> &'static (u64, Instant) {
    static BASE: OnceLock<(u64, Instant)> = OnceLock::new();
    BASE.get_or_init(|| {
        #[allow(clippy::disallowed_methods)] // the one read of the wall clock
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        (wall, Instant::now())
    })
}

/// Milliseconds since the Unix epoch, advancing with tokio time.
pub fn now_ms() -> u64 {
    let (wall, at) = base();
    let now = Instant::now();
    // Earlier than the base only in tests, where each runtime has its own paused clock:
    // differences within one runtime stay exact.
    match now.checked_duration_since(*at) {
        Some(d) => wall + d.as_millis() as u64,
        None => wall.saturating_sub(at.duration_since(now).as_millis() as u64),
    }
}

/// Seconds since the Unix epoch, for metrics.
pub fn now_secs_f64() -> f64 {
    Duration::from_millis(now_ms()).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wall_clock_ms_follow_paused_time() {
        let before = now_ms();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let after = now_ms();
        assert!(after - before >= 3_600_000, "{before} -> {after}");
        assert!(after - before < 3_601_000, "{before} -> {after}");
    }
}
