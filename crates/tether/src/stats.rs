//! Process-wide counters, cheap to bump from any task, read by health and metrics. Labels are a
//! closed set; no session id ever becomes a label.

use std::sync::atomic::{AtomicU64, Ordering};

/// One counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything tether counts.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sessions created.
    pub sessions_created: Counter,
    /// Sessions closed by the client or an operator.
    pub sessions_closed: Counter,
    /// Sessions expired by the TTL.
    pub sessions_expired: Counter,
    /// Sessions loaded from the store after not being live here.
    pub sessions_resumed: Counter,
    /// Upstream sides rebuilt by replay.
    pub revives: Counter,
    /// Revives that failed.
    pub revive_failures: Counter,
    /// Upstream connections that died on their own (child exit, session lost, disconnect).
    pub upstream_losses: Counter,
    /// Upstream connections reaped when idle.
    pub upstream_reaped: Counter,
    /// Times a crash-loop breaker opened.
    pub crash_loops: Counter,
    /// In-flight requests retried after a revive.
    pub requests_retried: Counter,
    /// In-flight requests ended with "upstream restarted".
    pub requests_interrupted: Counter,
    /// Requests ended by the request timeout.
    pub requests_timed_out: Counter,
}
