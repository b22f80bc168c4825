//! What an operator can see of a live session without changing it: the state of its upstream
//! binding, its streams and its last upstream failure. Read by the admin API and metrics.

use std::sync::atomic::Ordering;

use super::record::now_ms;
use super::{Session, lock};
use crate::upstream::QuitReason;

/// The state of a session's upstream binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamState {
    /// Connected and alive.
    Alive,
    /// Lost, or being rebuilt right now; the next use revives it.
    Restarting,
    /// The crash-loop breaker is open: restarts are refused for the cool-down.
    Broken,
    /// No binding: never started, or released when idle.
    Idle,
}

impl UpstreamState {
    /// The label used in the admin API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamState::Alive => "alive",
            UpstreamState::Restarting => "restarting",
            UpstreamState::Broken => "broken",
            UpstreamState::Idle => "idle",
        }
    }
}

/// The last upstream failure of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// What happened, without secrets (the same text as the log line).
    pub message: String,
}

/// Why a session's binding went away, as logged with `session revived` (`cause`).
#[derive(Debug, Default)]
pub(super) struct ReviveCause {
    /// Set when the binding goes; taken by the revive that replaces it.
    gone: Option<&'static str>,
    /// The last revive: when (Unix ms) and why.
    last: Option<(u64, &'static str)>,
}

/// The cause label of a binding that ended on its own, by what ended it.
pub(super) fn loss_cause(reason: &QuitReason) -> &'static str {
    match reason {
        QuitReason::Exited(_) => "upstream_crashed",
        QuitReason::SessionLost(_) => "upstream_session_lost",
        QuitReason::Disconnected(_) => "upstream_disconnected",
        QuitReason::Closed => "upstream_closed",
    }
}

impl Session {
    /// Remembers why the binding went away, unless an earlier cause is still unresolved (a
    /// revive that failed keeps the cause of the loss it was repairing).
    pub(super) fn note_gone(&self, cause: &'static str) {
        lock(&self.revive_cause).gone.get_or_insert(cause);
    }

    /// The cause of the revive about to happen: what took the binding away, else `fallback`.
    pub(super) fn gone_cause(&self, fallback: &'static str) -> &'static str {
        lock(&self.revive_cause).gone.unwrap_or(fallback)
    }

    /// A revive succeeded: the cause is resolved.
    pub(super) fn note_revived(&self, cause: &'static str) {
        let mut c = lock(&self.revive_cause);
        c.gone = None;
        c.last = Some((now_ms(), cause));
    }

    /// When (Unix ms) the upstream side was last revived, and why.
    pub fn last_revive(&self) -> Option<(u64, &'static str)> {
        lock(&self.revive_cause).last
    }

    /// The state of the upstream binding.
    pub fn upstream_state(&self) -> UpstreamState {
        if lock(&self.breaker).is_open(tokio::time::Instant::now()) {
            return UpstreamState::Broken;
        }
        if self.upstream_alive() {
            return UpstreamState::Alive;
        }
        // The binding lock is held while a binding is (re)built; a dead binding still in place
        // is replaced on next use.
        let rebuilding = self.binding.try_lock().is_err();
        if rebuilding || self.current().is_some() {
            return UpstreamState::Restarting;
        }
        UpstreamState::Idle
    }

    /// The last upstream failure, if any.
    pub fn last_error(&self) -> Option<LastError> {
        lock(&self.last_error).clone()
    }

    /// Remembers an upstream failure for the admin API.
    pub(super) fn note_error(&self, message: impl std::fmt::Display) {
        *lock(&self.last_error) = Some(LastError { at_ms: now_ms(), message: message.to_string() });
    }

    /// How many client streams the session has opened in this process.
    pub fn streams_opened(&self) -> u64 {
        self.streams.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// The generation of the current binding (each revive makes a new one), if there is one.
    pub fn generation(&self) -> Option<u64> {
        self.current().map(|u| u.generation())
    }

    /// The era the current upstream connection speaks: `None` for stdio and legacy SSE
    /// (handshake era only) and before a first connection.
    pub fn upstream_era(&self) -> Option<crate::upstream::era::Era> {
        self.current().and_then(|u| u.era())
    }

    /// The upstream's own session id, for a Streamable HTTP binding.
    pub fn upstream_session(&self) -> Option<String> {
        self.current().filter(super::Upstream::is_alive).and_then(|u| u.upstream_session())
    }

    /// The crash-loop breaker: how long it stays open (if it is), and the failures since the
    /// last successful start.
    pub fn breaker_status(&self) -> (Option<std::time::Duration>, u32) {
        let b = lock(&self.breaker);
        (b.open_for(tokio::time::Instant::now()), b.consecutive_failures())
    }

    /// The client requests in flight: method and age, oldest first, at most `max`.
    pub fn in_flight(&self, max: usize) -> Vec<(String, std::time::Duration)> {
        let r = lock(&self.routes);
        let mut v: Vec<(String, std::time::Duration)> = r
            .pending
            .values()
            .filter(|p| matches!(p.reply, super::Reply::Client(_)))
            .map(|p| (p.method.clone(), p.started.elapsed()))
            .collect();
        v.sort_by_key(|p| std::cmp::Reverse(p.1));
        v.truncate(max);
        v
    }

    /// Client requests waiting for their answer.
    pub fn pending_requests(&self) -> usize {
        lock(&self.routes).pending.values().filter(|p| matches!(p.reply, super::Reply::Client(_))).count()
    }
}
