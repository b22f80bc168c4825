//! What a client does with its session: requests, notifications, answers to server requests,
//! timeouts, streams, and the end of the session.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde_json::value::RawValue;
use tether_protocol::message::{numeric_id, raw_value};
use tether_protocol::{Message, method, params};
use tokio::time::Instant;
use tracing::warn;

use super::StreamKind;
use super::recovery::{self, Facts, Failure, Fate, Loss, Safety};
use super::store::Replay;
use super::{Pending, Reply, Session, Sink, lock, next_gid, rewrite_param, state_change_of};
use crate::error::GatewayError;
use crate::upstream::{SendError, Upstream};

/// Methods that only read, or set state to a value: repeating them is harmless.
const SAFE_METHODS: [&str; 9] = [
    method::PING,
    method::RESOURCES_READ,
    method::PROMPTS_GET,
    method::COMPLETION_COMPLETE,
    method::LOGGING_SET_LEVEL,
    method::RESOURCES_SUBSCRIBE,
    method::RESOURCES_UNSUBSCRIBE,
    method::TOOLS_LIST,
    method::RESOURCES_TEMPLATES_LIST,
];

impl Session {
    /// Forwards a client request. Its answer, and messages related to it, go to `sink`.
    /// Returns the gateway id, which the caller uses to time the request out.
    pub async fn request(self: &Arc<Self>, msg: Message, sink: Sink) -> Result<u64, GatewayError> {
        let method = msg.method().unwrap_or_default().to_owned();
        let client_id = msg.id().map(ToOwned::to_owned).unwrap_or_else(|| numeric_id(0));
        let gid = next_gid();
        self.note_activity(method == method::TOOLS_CALL);
        let progress_token = msg.params().and_then(params::request_progress_token);
        let state_change = msg.params().and_then(|p| state_change_of(&method, p));
        let init_params = if method == method::INITIALIZE { msg.params().map(ToOwned::to_owned) } else { None };
        let retry_safe = self.is_retry_safe(&method, msg.params());
        let mut upstream_msg = msg;
        upstream_msg.set_id(numeric_id(gid));
        let pending = Pending {
            client_id,
            method,
            reply: Reply::Client(sink),
            generation: 0,
            progress_token,
            state_change,
            init_params,
            seq: gid,
            started: Instant::now(),
            upstream_msg: Some(Arc::new(upstream_msg)),
            retry_safe,
            attempts: 0,
        };
        self.dispatch(gid, pending, None).await.map(|()| gid)
    }

    /// Sends a waiting request on a live binding. When the send fails, the recovery policy
    /// decides: a message the upstream provably never received is sent again after a revive;
    /// one that may have reached it is retried (a bounded number of times) when repeating it
    /// is safe, and otherwise ends with "upstream restarted".
    pub(super) async fn dispatch(
        self: &Arc<Self>,
        gid: u64,
        mut p: Pending,
        mut stale: Option<u64>,
    ) -> Result<(), GatewayError> {
        let Some(msg) = p.upstream_msg.clone() else { return Ok(()) };
        let mut undelivered = 0;
        let mut waits = 0u32;
        let deadline = p.started + self.deps.config.request_timeout;
        loop {
            let up = match self.upstream_paced(stale, false).await {
                Ok(up) => up,
                // An upstream that served this session before and is away now (a server being
                // restarted) is waited for, with backoff from the first retry delay, at most
                // `reconnect_attempts` times, and never past the request's deadline: a request
                // whose next attempt would come after it ends by its timeout.
                Err(GatewayError::UpstreamUnavailable(d)) if self.has_bound() => {
                    waits += 1;
                    tracing::debug!(session_id = %self.id, error = %d, attempt = waits, "a request found the upstream away");
                    if self.deps.config.reconnect_attempts.is_some_and(|n| waits > n) {
                        return Err(GatewayError::UpstreamUnavailable(d));
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    let delay = self.deps.config.restart.retry_delay(waits, rand::random());
                    if delay >= left {
                        tokio::time::sleep(left).await;
                        return Err(GatewayError::UpstreamTimeout(self.deps.config.request_timeout.as_secs()));
                    }
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            p.generation = up.generation();
            self.insert_pending(gid, p);
            *lock(&self.upstream_used) = tokio::time::Instant::now();
            let err = match up.send(&msg, Some(gid)).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            // Take the request back, unless the binding's death already decided its fate.
            let Some(back) = lock(&self.routes).pending.remove(&gid) else { return Ok(()) };
            p = back;
            stale = Some(up.generation());
            match &err {
                SendError::SessionLost => self.note_gone("upstream_session_lost"),
                SendError::Unreachable(_) | SendError::Interrupted(_) => self.note_gone("upstream_disconnected"),
                SendError::Refused { .. } => {}
            }
            let (loss, detail) = match err {
                SendError::Unreachable(d) => (Loss::Unreachable { tries: undelivered }, d),
                SendError::SessionLost => (Loss::SendSessionLost { tries: undelivered }, String::new()),
                SendError::Interrupted(d) => (Loss::Interrupted, d),
                SendError::Refused { status, detail } => return Err(GatewayError::UpstreamRefused { status, detail }),
            };
            match recovery::decide(self.facts(&p), loss) {
                Fate::Resend => undelivered += 1,
                Fate::Retry => {
                    p.attempts += 1;
                    self.deps.stats.requests_retried.inc();
                }
                Fate::Fail(failure) => return Err(self.failure(failure, detail)),
                // Not outcomes of a send.
                Fate::Reopen | Fate::LearnTools | Fate::Deliver => {
                    return Err(self.failure(Failure::Restarted, detail));
                }
            }
        }
    }

    /// What the recovery policy needs to know about a request.
    pub(super) fn facts(&self, p: &Pending) -> Facts {
        let safety = if p.method == method::INITIALIZE {
            Safety::Initialize
        } else if p.retry_safe {
            Safety::Safe
        } else if p.method == method::TOOLS_CALL && !lock(&self.list_digests).contains_key("tools") {
            Safety::UnknownTool
        } else {
            Safety::Unsafe
        };
        Facts { safety, attempts: p.attempts, closed: self.is_closed() }
    }

    /// The error a request ends with, counted.
    pub(super) fn failure(&self, failure: Failure, detail: String) -> GatewayError {
        match failure {
            Failure::Unavailable => GatewayError::UpstreamUnavailable(detail),
            Failure::KeepsLosingSession => {
                GatewayError::UpstreamUnavailable("the upstream keeps losing the session".into())
            }
            Failure::Restarted => {
                self.deps.stats.requests_interrupted.inc();
                GatewayError::UpstreamRestarted(detail)
            }
        }
    }

    /// Whether repeating this request is harmless: read-only methods, idempotent state
    /// changes, and `tools/call` of tools annotated read-only or idempotent, or allowed by the
    /// operator.
    pub(super) fn is_retry_safe(&self, method: &str, params: Option<&RawValue>) -> bool {
        if SAFE_METHODS.contains(&method) || method::list_kind(method).is_some() {
            return true;
        }
        if method != method::TOOLS_CALL {
            return false;
        }
        let Some(name) = params.and_then(params::call_name) else { return false };
        self.deps.config.retry_tools.iter().any(|t| t == name.as_ref())
            || lock(&self.safe_tools).contains(name.as_ref())
    }

    /// Forwards a client notification.
    pub async fn notify(self: &Arc<Self>, msg: Message) -> Result<(), GatewayError> {
        self.note_activity(false);
        let mut msg = msg;
        if msg.is(method::NOTIFICATION_CANCELLED) {
            let Some(gid) = self.cancel_by_client_id(&msg) else {
                return Ok(());
            };
            rewrite_param(&mut msg, "requestId", &numeric_id(gid));
            if let Some(up) = self.current().filter(Upstream::is_alive) {
                let _ = up.send(&msg, None).await;
            }
            return Ok(());
        }
        let up = self.upstream(None).await?;
        match up.send(&msg, None).await {
            Ok(()) => Ok(()),
            Err(SendError::Refused { status, detail }) => Err(GatewayError::UpstreamRefused { status, detail }),
            Err(e) => {
                // Lost with the connection; the revive replays what matters (initialized).
                tracing::debug!(session_id = %self.id, error = %e, "notification not delivered");
                Ok(())
            }
        }
    }

    /// Forwards the client's answer to a server→client request, to the upstream's original id.
    pub async fn answer(self: &Arc<Self>, msg: Message) -> Result<(), GatewayError> {
        self.note_activity(false);
        let key = msg.id().map(|i| i.get().to_owned()).unwrap_or_default();
        let Some(sr) = lock(&self.routes).server_requests.remove(&key) else {
            tracing::debug!(session_id = %self.id, id = %key, "answer to an unknown server request; dropped");
            return Ok(());
        };
        let Some(up) = self.current().filter(|u| u.generation() == sr.generation && u.is_alive()) else {
            tracing::debug!(session_id = %self.id, "answer for an upstream that has since restarted; dropped");
            return Ok(());
        };
        let mut msg = msg;
        msg.set_id(sr.upstream_id);
        if let Err(e) = up.send(&msg, None).await {
            tracing::debug!(session_id = %self.id, error = %e, "answer not delivered");
        }
        Ok(())
    }

    /// Ends a request that ran out of time: the upstream is told to cancel it, and the client
    /// gets the error on the request's own stream. False if the answer won the race.
    pub async fn time_out(&self, gid: u64) -> bool {
        let Some(p) = lock(&self.routes).pending.remove(&gid) else { return false };
        self.end_overdue(p).await;
        true
    }

    async fn end_overdue(&self, p: Pending) {
        if let Some(up) = self.current().filter(Upstream::is_alive) {
            let params = raw_value(&serde_json::json!({ "requestId": p.seq, "reason": "timed out" }));
            let _ = up.send(&Message::notification(method::NOTIFICATION_CANCELLED, Some(&params)), None).await;
        }
        let secs = self.deps.config.request_timeout.as_secs();
        warn!(session_id = %self.id, method = %p.method, timeout_s = secs, "request timed out");
        self.deps.stats.requests_timed_out.inc();
        if let Reply::Client(sink) = &p.reply {
            self.end_with(sink, &p.client_id, &GatewayError::UpstreamTimeout(secs)).await;
        }
    }

    /// Opens the client's standalone stream (replacing an older one) and returns what was
    /// queued for it.
    pub fn attach_standalone(&self, sink: Sink) -> Vec<Bytes> {
        let backlog: Vec<Bytes> = {
            let mut r = lock(&self.routes);
            r.standalone = Some(sink);
            r.backlog.drain(..).collect()
        };
        if let Some(up) = self.current().filter(Upstream::is_alive) {
            up.open_standalone();
        }
        backlog
    }

    /// Forgets the standalone stream `stream`, if it is still the current one.
    pub fn detach_standalone(&self, stream: u64) {
        let mut r = lock(&self.routes);
        if r.standalone.as_ref().is_some_and(|s| s.stream == stream) {
            r.standalone = None;
            drop(r);
            // The stream was activity until now: the TTL counts from its close.
            self.stream_activity(0);
        }
    }

    /// The standalone stream's sink (a legacy session's only stream).
    pub fn standalone_sink(&self) -> Option<Sink> {
        lock(&self.routes).standalone.clone()
    }

    /// Writes one message to a sink.
    pub async fn send_to(&self, sink: &Sink, data: Bytes) -> bool {
        self.emit(sink, data, true, None).await
    }

    /// Ends client requests older than the request timeout (for streams that have no
    /// per-request timer: legacy SSE).
    pub async fn expire_overdue(&self) {
        let timeout = self.deps.config.request_timeout;
        let overdue: Vec<Pending> = {
            let mut r = lock(&self.routes);
            let gids: Vec<u64> = r
                .pending
                .iter()
                .filter(|(_, p)| matches!(p.reply, Reply::Client(_)) && p.started.elapsed() >= timeout)
                .map(|(g, _)| *g)
                .collect();
            gids.iter().filter_map(|g| r.pending.remove(g)).collect()
        };
        for p in overdue {
            self.end_overdue(p).await;
        }
    }

    /// Moves a request still waiting for its answer onto a new stream (a client resuming its
    /// POST stream with `Last-Event-ID`). False if no such request is waiting here.
    pub fn reattach_request(&self, stream: u64, sink: Sink) -> bool {
        let mut r = lock(&self.routes);
        let found = r
            .pending
            .values_mut()
            .find(|p| matches!(&p.reply, Reply::Client(s) if s.stream == stream && s.kind == StreamKind::Request));
        match found {
            Some(p) => {
                // The request's metrics probe follows it to the new stream.
                let sink = match &p.reply {
                    Reply::Client(old) => sink.inherit_probe(old),
                    Reply::Internal(_) => sink,
                };
                p.reply = Reply::Client(sink);
                true
            }
            None => false,
        }
    }

    /// The stored events of a stream after `after_seq`.
    pub async fn replay(&self, key: &str, after_seq: u64) -> Result<Replay, GatewayError> {
        let limit = self.deps.config.retention.per_stream;
        self.deps.store.replay(&self.id, key, after_seq, limit).await.map_err(|e| GatewayError::Store(e.to_string()))
    }

    /// Whether the binding is live, unused for `idle`, with nothing in flight and no client
    /// stream waiting for server messages.
    pub fn upstream_idle_for(&self, idle: std::time::Duration) -> bool {
        let used = *lock(&self.upstream_used);
        self.upstream_alive()
            && used.elapsed() >= idle
            && !self.has_standalone()
            && lock(&self.routes).pending.is_empty()
    }

    /// Whether a standalone stream is open.
    pub fn has_standalone(&self) -> bool {
        lock(&self.routes).standalone.is_some()
    }

    /// Ends the session's live side: pending requests get an error, streams end, the upstream
    /// closes. The record is closed by the manager.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let pending: Vec<Pending> = {
            let mut r = lock(&self.routes);
            r.standalone = None;
            r.server_requests.clear();
            r.pending.take_all()
        };
        for p in pending {
            if let Reply::Client(sink) = p.reply {
                self.end_with(&sink, &p.client_id, &GatewayError::SessionNotFound).await;
            }
        }
        let up = self.binding.lock().await.take();
        lock(&self.current).take();
        if let Some(up) = up {
            up.close().await;
        }
    }

    /// Closes the upstream binding but keeps the session (idle reap, gateway shutdown).
    pub async fn release_upstream(&self) {
        let up = self.binding.lock().await.take();
        lock(&self.current).take();
        if let Some(up) = up {
            self.note_gone("upstream_reaped");
            up.close().await;
        }
    }

    /// Whether an upstream binding is live.
    pub fn upstream_alive(&self) -> bool {
        self.current().is_some_and(|u| u.is_alive())
    }

    /// The stdio child's pid, if the binding is a live child.
    pub fn upstream_pid(&self) -> Option<u32> {
        self.current().filter(Upstream::is_alive).and_then(|u| u.pid())
    }

    fn cancel_by_client_id(&self, msg: &Message) -> Option<u64> {
        let request_id = params::cancelled_request_id(msg.params()?)?;
        let mut r = lock(&self.routes);
        let gid = r
            .pending
            .iter()
            .find(|(_, p2)| matches!(p2.reply, Reply::Client(_)) && p2.client_id.get() == request_id.get())
            .map(|(g, _)| *g)?;
        // Dropping the pending entry ends the client's stream for it: a cancelled request
        // gets no answer.
        r.pending.remove(&gid);
        Some(gid)
    }
}
