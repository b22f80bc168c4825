//! Supervision of the stdio command as a whole, across sessions, and the counters of what its
//! children write that tether cannot use.
//!
//! Each session has its own restart breaker, but a command that exits at once fails every new
//! session's first start, and a new session has no history: without a shared view every
//! `initialize` would spawn a process, forever. A child that exits on its own before it ever
//! wrote a JSON-RPC message is a *quick exit*; [`QUICK_EXITS_TO_BACK_OFF`] in a row (from any
//! sessions) stop spawning for a backoff that doubles while it goes on (1 s … 60 s). The first
//! child that answers ends it.

use super::spare::Spares;
use crate::stats::Counter;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

/// Quick exits in a row that stop spawning.
pub const QUICK_EXITS_TO_BACK_OFF: u32 = 5;
/// The first backoff.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest backoff.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What happened to one child, as far as the command's health goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildOutcome {
    /// It wrote a JSON-RPC message: the command works.
    Answered,
    /// It exited on its own before writing one.
    QuickExit,
}

#[derive(Debug, Default)]
struct State {
    quick_exits_in_row: u32,
    /// Backoffs in a row, for the doubling.
    backoffs: u32,
    open_until: Option<Instant>,
}

/// The shared view of one stdio command; one per gateway.
#[derive(Debug, Default)]
pub struct Supervisor {
    state: Mutex<State>,
    /// Times spawning was stopped for a backoff.
    pub backoffs_total: Counter,
    /// Children that exited before writing a message.
    pub quick_exits_total: Counter,
    /// Spawns refused during a backoff.
    pub spawns_refused_total: Counter,
    /// Stdout lines over the message limit, discarded.
    pub oversized_lines_total: Counter,
    /// Stdout lines that were not JSON-RPC messages, skipped.
    pub junk_lines_total: Counter,
    /// Stderr lines cut to the log's line limit.
    pub stderr_truncated_total: Counter,
    /// Stderr and junk stdout lines not logged because of the rate limit.
    pub log_lines_suppressed_total: Counter,
    /// Children started ahead of need (`--stdio-spare`).
    pub spares: Spares,
    /// Sessions that took a spare instead of starting a child.
    pub spares_taken_total: Counter,
}

impl Supervisor {
    /// A supervisor that keeps `spares` children started ahead of need.
    pub fn with_spares(spares: usize) -> Supervisor {
        Supervisor { spares: Spares::new(spares), ..Supervisor::default() }
    }

    /// `Err(time left)` while spawning is stopped.
    pub fn admit(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let state = self.lock();
        match state.open_until {
            Some(until) if until > now => {
                self.spawns_refused_total.inc();
                Err(until - now)
            }
            _ => Ok(()),
        }
    }

    /// Records how a child did.
    pub fn record(&self, outcome: ChildOutcome) {
        let mut s = self.lock();
        match outcome {
            ChildOutcome::Answered => {
                if s.backoffs > 0 {
                    info!("the upstream command answers again; spawning normally");
                }
                *s = State::default();
            }
            ChildOutcome::QuickExit => {
                self.quick_exits_total.inc();
                s.quick_exits_in_row = s.quick_exits_in_row.saturating_add(1);
                let open = s.open_until.is_some_and(|u| u > Instant::now());
                if s.quick_exits_in_row >= QUICK_EXITS_TO_BACK_OFF && !open {
                    let backoff = BACKOFF_BASE.saturating_mul(1 << s.backoffs.min(6)).min(BACKOFF_MAX);
                    s.backoffs = s.backoffs.saturating_add(1);
                    s.open_until = Some(Instant::now() + backoff);
                    self.backoffs_total.inc();
                    warn!(
                        quick_exits = s.quick_exits_in_row,
                        backoff_ms = backoff.as_millis() as u64,
                        "the upstream command keeps exiting before it answers; not starting it for the backoff"
                    );
                }
            }
        }
    }

    /// Whether spawning is stopped now, and for how much longer.
    pub fn backing_off(&self) -> Option<Duration> {
        let now = Instant::now();
        self.lock().open_until.filter(|u| *u > now).map(|u| u - now)
    }

    /// Quick exits since the command last answered.
    pub fn quick_exits_in_row(&self) -> u32 {
        self.lock().quick_exits_in_row
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A per-child limit on log lines: `PER_SECOND` lines in each second, then one summary line
/// saying how many were suppressed. Applied to stderr and to junk stdout separately.
#[derive(Debug)]
pub struct LogLimiter {
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

/// Log lines per second per child and stream.
pub const LOG_LINES_PER_SECOND: u32 = 20;

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter { window_start: Instant::now(), in_window: 0, suppressed: 0 }
    }
}

/// What to do with one log line.
#[derive(Debug, PartialEq, Eq)]
pub enum LogVerdict {
    /// Log it; first say that this many were suppressed before it (when non-zero).
    Log(u64),
    /// Drop it.
    Suppress,
}

impl LogLimiter {
    /// Decides about the next line.
    pub fn check(&mut self) -> LogVerdict {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.in_window = 0;
        }
        if self.in_window < LOG_LINES_PER_SECOND {
            self.in_window += 1;
            LogVerdict::Log(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            LogVerdict::Suppress
        }
    }

    /// Lines suppressed and not yet reported (say so when the stream ends).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn quick_exits_in_a_row_stop_spawning_with_a_doubling_backoff_and_an_answer_ends_it() {
        let s = Supervisor::default();
        for _ in 0..QUICK_EXITS_TO_BACK_OFF - 1 {
            s.record(ChildOutcome::QuickExit);
        }
        assert!(s.admit().is_ok());
        s.record(ChildOutcome::QuickExit);
        assert_eq!(s.admit(), Err(BACKOFF_BASE));
        tokio::time::advance(BACKOFF_BASE).await;
        assert!(s.admit().is_ok(), "one try after the backoff");
        s.record(ChildOutcome::QuickExit);
        assert_eq!(s.backing_off(), Some(BACKOFF_BASE * 2), "it doubles");
        assert_eq!(s.backoffs_total.get(), 2);
        tokio::time::advance(BACKOFF_BASE * 2).await;
        s.record(ChildOutcome::Answered);
        assert!(s.admit().is_ok());
        assert_eq!(s.quick_exits_in_row(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_log_limiter_lets_through_n_a_second_then_reports_what_it_dropped() {
        let mut l = LogLimiter::default();
        for _ in 0..LOG_LINES_PER_SECOND {
            assert_eq!(l.check(), LogVerdict::Log(0));
        }
        for _ in 0..100 {
            assert_eq!(l.check(), LogVerdict::Suppress);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(l.check(), LogVerdict::Log(100));
        assert_eq!(l.take_suppressed(), 0);
    }
}
