//! What an operator can see of a live session without changing it: the state of its upstream
//! binding, its streams and its last upstream failure. Read by the admin API and metrics.

use tokio::time::Instant;

use super::handle::Snapshot;
use super::record::{SessionRecord, now_ms};
use super::{Binding, Session};
use crate::upstream::{QuitReason, Upstream};

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
    pub(super) gone: Option<&'static str>,
    /// The last revive: when (Unix ms) and why.
    pub(super) last: Option<(u64, &'static str)>,
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

/// What a session shows its handles without being asked: published by its task when it
/// changes, read by the sync getters that metrics, the reaper's filters and tests call.
#[derive(Clone)]
pub(crate) struct View {
    /// The record (activity as of the last publication).
    pub record: SessionRecord,
    /// The current binding, live or dead.
    pub current: Option<Upstream>,
    /// A revive is under way.
    pub reviving: bool,
    /// The last revive failed.
    pub lost: bool,
    /// Until when the crash-loop breaker refuses restarts.
    pub breaker_open_until: Option<Instant>,
    /// How many times the upstream side was rebuilt.
    pub revives: u64,
    /// When (Unix ms) the upstream side was last revived, and why.
    pub last_revive: Option<(u64, &'static str)>,
    /// The last upstream failure.
    pub last_error: Option<LastError>,
    /// Whether a standalone stream is open.
    pub standalone: bool,
    /// Whether the session has ended.
    pub closed: bool,
}

impl View {
    /// The longest activity goes unshown to handles.
    pub const ACTIVITY_STEP_MS: u64 = 250;

    /// What a new session shows.
    pub fn of(record: &SessionRecord) -> View {
        View {
            record: record.clone(),
            current: None,
            reviving: false,
            lost: false,
            breaker_open_until: None,
            revives: 0,
            last_revive: None,
            last_error: None,
            standalone: false,
            closed: false,
        }
    }

    /// The state of the upstream binding.
    pub fn upstream_state(&self) -> UpstreamState {
        if self.breaker_open_until.is_some_and(|t| Instant::now() < t) {
            return UpstreamState::Broken;
        }
        if self.current.as_ref().is_some_and(Upstream::is_alive) {
            return UpstreamState::Alive;
        }
        // A dead binding still in place is replaced on next use.
        if self.reviving || self.lost || self.current.is_some() {
            return UpstreamState::Restarting;
        }
        UpstreamState::Idle
    }
}

impl Session {
    /// Shows handles the session as it is now.
    pub(super) fn publish(&mut self) {
        let now = Instant::now();
        let breaker_open_until = self.breaker.open_for(now).map(|d| now + d);
        self.shown_active = self.record.last_active;
        let record = self.record.clone();
        let current = self.current().cloned();
        let reviving = matches!(self.binding, Binding::Reviving { .. });
        let (lost, revives, last_revive) = (self.lost, self.revives, self.revive_cause.last);
        let last_error = self.last_error.clone();
        let (standalone, closed) = (self.routes.standalone.is_some(), self.closed);
        self.view.send_modify(|v| {
            *v = View {
                record,
                current,
                reviving,
                lost,
                breaker_open_until,
                revives,
                last_revive,
                last_error,
                standalone,
                closed,
            }
        });
    }

    /// Shows handles the latest activity, unless it was shown less than a step ago (a quarter
    /// of a second, or a twentieth of the TTL): a publication wakes every reader's shard, too
    /// much for every request. [`SessionHandle::record_now`] asks for the exact record.
    pub(super) fn publish_activity(&mut self) {
        let step = (self.deps.config.ttl.as_millis() as u64 / 20).clamp(1, View::ACTIVITY_STEP_MS);
        if self.record.last_active.saturating_sub(self.shown_active) < step {
            return;
        }
        self.shown_active = self.record.last_active;
        let (last_active, requests, tool_calls) =
            (self.record.last_active, self.record.requests, self.record.tool_calls);
        self.view.send_modify(|v| {
            v.record.last_active = last_active;
            v.record.requests = requests;
            v.record.tool_calls = tool_calls;
        });
    }

    /// Remembers why the binding went away, unless an earlier cause is still unresolved (a
    /// revive that failed keeps the cause of the loss it was repairing).
    pub(super) fn note_gone(&mut self, cause: &'static str) {
        self.revive_cause.gone.get_or_insert(cause);
    }

    /// The cause of the revive about to happen: what took the binding away, else `fallback`.
    pub(super) fn gone_cause(&self, fallback: &'static str) -> &'static str {
        self.revive_cause.gone.unwrap_or(fallback)
    }

    /// A revive succeeded: the cause is resolved.
    pub(super) fn note_revived(&mut self, cause: &'static str) {
        self.revive_cause.gone = None;
        self.revive_cause.last = Some((now_ms(), cause));
    }

    /// Remembers an upstream failure for the admin API.
    pub(super) fn note_error(&mut self, message: impl std::fmt::Display) {
        self.last_error = Some(LastError { at_ms: now_ms(), message: message.to_string() });
    }

    /// Everything an operator sees of the session, at once.
    pub(super) fn snapshot(&mut self) -> Snapshot {
        let now = Instant::now();
        self.publish();
        let view = self.view.borrow().clone();
        let live = self.live();
        let mut in_flight: Vec<(String, std::time::Duration)> = self
            .routes
            .pending
            .values()
            .filter(|p| matches!(p.reply, super::Reply::Client(_)))
            .map(|p| (p.method.clone(), now.duration_since(p.started)))
            .collect();
        in_flight.sort_by_key(|p| std::cmp::Reverse(p.1));
        in_flight.truncate(Snapshot::IN_FLIGHT);
        Snapshot {
            record: self.record.clone(),
            upstream_state: view.upstream_state(),
            alive: live.is_some(),
            pid: live.and_then(Upstream::pid),
            upstream_session: live.and_then(Upstream::upstream_session),
            generation: self.current().map(Upstream::generation),
            revives: self.revives,
            last_revive: self.revive_cause.last,
            last_error: self.last_error.clone(),
            breaker_open_for: self.breaker.open_for(now),
            consecutive_failures: self.breaker.consecutive_failures(),
            streams_opened: self.streams_opened,
            standalone_open: self.routes.standalone.is_some(),
            pending_requests: self.pending_requests(),
            in_flight,
        }
    }
}
