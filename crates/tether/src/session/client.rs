//! What a client does with its session: requests, notifications, answers to server requests,
//! timeouts, streams, and the end of the session.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use tether_protocol::message::{numeric_id, raw_value};
use tether_protocol::{Message, method, params};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::warn;

use super::StreamKind;
use super::actor::{Command, Waiter};
use super::recovery::{self, Facts, Failure, Fate, Loss, Safety};
use super::routing::Settled;
use super::{Acceptance, Accepted, Pending, Reply, Session, Sink, next_gid, rewrite_param, state_change_of};
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
    /// Takes a client request. Its answer, and messages related to it, go to `sink` (numbered
    /// here when it has no number yet, and primed first when asked); `accepted` hears the
    /// gateway id once it went upstream, or why it could not.
    pub(super) async fn request(
        &mut self,
        msg: Message,
        mut sink: Sink,
        prime: bool,
        accepted: oneshot::Sender<Result<Accepted, GatewayError>>,
    ) {
        if sink.stream == 0 {
            sink.stream = self.open_stream();
        }
        let priming = prime.then(|| self.next_event_id(&sink));
        let accepted = Acceptance { tx: accepted, stream: sink.stream, priming };
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
            undelivered: 0,
            waits: 0,
            sending: false,
            ended_unread: false,
            accepted: Some(accepted),
        };
        self.dispatch(gid, pending, None).await;
    }

    /// Sends a request on the live binding, or has it wait for one. `stale` names a binding
    /// the request was lost with: it is replaced even if it still looks alive.
    pub(super) async fn dispatch(&mut self, gid: u64, mut p: Pending, stale: Option<u64>) {
        let Some(msg) = p.upstream_msg.clone() else { return };
        let up = match self.ready(stale, false) {
            Ok(Some(up)) => up,
            Ok(None) => {
                self.waiting.push(Waiter::Request { gid, p });
                return;
            }
            Err(e) => return self.refuse(p, e).await,
        };
        p.generation = up.generation();
        self.upstream_used = Instant::now();
        let accepted = p.accepted.take();
        self.routes.pending.insert(gid, p);
        if up.sends_at_once(&msg) {
            match up.send(&msg, Some(gid)).await {
                Ok(()) => {
                    if let Some(a) = accepted {
                        a.ok(gid);
                    }
                }
                Err(e) => self.send_failed(gid, up.generation(), e, accepted).await,
            }
            return;
        }
        self.send_from_task(&up, msg, gid, accepted);
    }

    /// Sends a request from a task: an HTTP upstream answers the POST's headers when it is
    /// ready, which the session never waits for. Until the task reports ([`Command::Sent`]),
    /// the send's outcome, not the binding's end, decides the request's fate.
    pub(super) fn send_from_task(&mut self, up: &Upstream, msg: Arc<Message>, gid: u64, accepted: Option<Acceptance>) {
        if let Some(p) = self.routes.pending.get_mut(&gid) {
            p.sending = true;
            p.ended_unread = false;
        }
        let reporter = self.reporter();
        let generation = up.generation();
        let up = up.clone();
        super::spawn(async move {
            let result = up.send(&msg, Some(gid)).await;
            if let Err(Command::Sent { accepted: Some(a), .. }) =
                reporter.send_or_return(Command::Sent { gid, generation, result, accepted }).await
            {
                a.err(GatewayError::SessionNotFound);
            }
        });
    }

    /// A send from a task is done. A request whose binding ended meanwhile is settled now:
    /// it reached the upstream, which is gone.
    pub(super) async fn sent(
        &mut self,
        gid: u64,
        generation: u64,
        result: Result<(), SendError>,
        accepted: Option<Acceptance>,
    ) {
        if let Err(error) = result {
            return self.send_failed(gid, generation, error, accepted).await;
        }
        if let Some(a) = accepted {
            a.ok(gid);
        }
        let gone = self.live().is_none_or(|u| u.generation() != generation);
        let Some(p) = self.routes.pending.get_mut(&gid) else { return };
        p.sending = false;
        if !gone {
            return;
        }
        let Some(p) = self.routes.pending.remove(&gid) else { return };
        // The binding's end may have said that the upstream never read it (a remote that
        // answered in another era, say).
        let loss = if p.ended_unread { Loss::NotDelivered } else { Loss::InFlight };
        match p.reply {
            Reply::Client(ref sink) => {
                let sink = sink.clone();
                let why = "the upstream connection was lost";
                if let Settled::Deliver(p) = self.lose(gid, p, sink.clone(), loss, Some(generation), why).await {
                    let err = self.failure(Failure::Restarted, why.into());
                    self.end_with(&sink, &p.client_id, &err).await;
                }
            }
            Reply::Internal(i) => {
                self.internal_in_flight = self.internal_in_flight.saturating_sub(1);
                self.internal_failed(i, "the upstream connection was lost").await;
            }
        }
    }

    /// A send failed: the recovery policy decides. A message the upstream provably never
    /// received is sent again after a revive; one that may have reached it is retried (a
    /// bounded number of times) when repeating it is safe, and otherwise ends with "upstream
    /// restarted".
    async fn send_failed(&mut self, gid: u64, generation: u64, err: SendError, accepted: Option<Acceptance>) {
        // Take the request back, unless the binding's death already decided its fate.
        let Some(mut p) = self.routes.pending.remove(&gid) else {
            if let Some(a) = accepted {
                a.ok(gid);
            }
            return;
        };
        p.accepted = accepted;
        if let Reply::Internal(_) = p.reply {
            self.internal_in_flight = self.internal_in_flight.saturating_sub(1);
            let Reply::Internal(i) = p.reply else { return };
            return self.internal_failed(i, &err.to_string()).await;
        }
        match &err {
            SendError::SessionLost => self.note_gone("upstream_session_lost"),
            SendError::Unreachable(_) | SendError::Interrupted(_) => self.note_gone("upstream_disconnected"),
            SendError::Refused { .. } => {}
        }
        let (loss, detail) = match err {
            SendError::Unreachable(d) => (Loss::Unreachable { tries: tries(p.undelivered) }, d),
            SendError::SessionLost => (Loss::SendSessionLost { tries: tries(p.undelivered) }, String::new()),
            SendError::Interrupted(d) => (Loss::Interrupted, d),
            SendError::Refused { status, detail } => {
                return self.refuse(p, GatewayError::UpstreamRefused { status, detail }).await;
            }
        };
        match recovery::decide(self.facts(&p), loss) {
            Fate::Resend => p.undelivered += 1,
            Fate::Retry => {
                p.attempts += 1;
                self.deps.stats.requests_retried.inc();
            }
            Fate::Fail(failure) => {
                let e = self.failure(failure, detail);
                return self.refuse(p, e).await;
            }
            // Not outcomes of a send.
            Fate::Reopen | Fate::LearnTools | Fate::Deliver => {
                let e = self.failure(Failure::Restarted, detail);
                return self.refuse(p, e).await;
            }
        }
        Box::pin(self.dispatch(gid, p, Some(generation))).await;
    }

    /// What the recovery policy needs to know about a request.
    pub(super) fn facts(&self, p: &Pending) -> Facts {
        let safety = if p.method == method::INITIALIZE {
            Safety::Initialize
        } else if p.retry_safe {
            Safety::Safe
        } else if p.method == method::TOOLS_CALL && !self.list_digests.contains_key("tools") {
            Safety::UnknownTool
        } else {
            Safety::Unsafe
        };
        Facts { safety, attempts: p.attempts, closed: self.closed }
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
        self.deps.config.retry_tools.iter().any(|t| t == name.as_ref()) || self.safe_tools.contains(name.as_ref())
    }

    /// Sends a message that is not a request, without waiting for an HTTP upstream.
    pub(super) async fn send_quiet(&self, up: &Upstream, msg: Message) {
        if up.sends_at_once(&msg) {
            if let Err(e) = up.send(&msg, None).await {
                tracing::debug!(error = %e, "message not delivered upstream");
            }
            return;
        }
        let up = up.clone();
        super::spawn(async move {
            if let Err(e) = up.send(&msg, None).await {
                tracing::debug!(error = %e, "message not delivered upstream");
            }
        });
    }

    /// Forwards a client notification.
    pub(super) async fn notify(&mut self, msg: Message, done: oneshot::Sender<Result<(), GatewayError>>) {
        self.note_activity(false);
        let mut msg = msg;
        if msg.is(method::NOTIFICATION_CANCELLED) {
            if let Some(gid) = self.cancel_by_client_id(&msg) {
                rewrite_param(&mut msg, "requestId", &numeric_id(gid));
                if let Some(up) = self.live().cloned() {
                    self.send_quiet(&up, msg).await;
                }
            }
            let _ = done.send(Ok(()));
            return;
        }
        match self.ready(None, true) {
            Ok(Some(up)) => self.send_notification(&up, msg, done).await,
            Ok(None) => self.waiting.push(Waiter::Notify { msg, done }),
            Err(e) => {
                let _ = done.send(Err(e));
            }
        }
    }

    /// Sends a client notification on a live binding; `done` hears a refusal.
    pub(super) async fn send_notification(
        &self,
        up: &Upstream,
        msg: Message,
        done: oneshot::Sender<Result<(), GatewayError>>,
    ) {
        let at_once = up.sends_at_once(&msg);
        let send = {
            let up = up.clone();
            async move {
                let r = match up.send(&msg, None).await {
                    Ok(()) => Ok(()),
                    Err(SendError::Refused { status, detail }) => Err(GatewayError::UpstreamRefused { status, detail }),
                    Err(e) => {
                        // Lost with the connection; the revive replays what matters (initialized).
                        tracing::debug!(error = %e, "notification not delivered");
                        Ok(())
                    }
                };
                let _ = done.send(r);
            }
        };
        if at_once {
            send.await;
        } else {
            super::spawn(send);
        }
    }

    /// Forwards the client's answer to a server→client request, to the upstream's original id.
    pub(super) async fn answer(&mut self, msg: Message) {
        self.note_activity(false);
        let key = msg.id().map(|i| i.get().to_owned()).unwrap_or_default();
        let Some(sr) = self.routes.server_requests.remove(&key) else {
            tracing::debug!(id = %key, "answer to an unknown server request; dropped");
            return;
        };
        let Some(up) = self.live().filter(|u| u.generation() == sr.generation).cloned() else {
            tracing::debug!("answer for an upstream that has since restarted; dropped");
            return;
        };
        let mut msg = msg;
        msg.set_id(sr.upstream_id);
        self.send_quiet(&up, msg).await;
    }

    /// Ends a request that ran out of time: the upstream is told to cancel it, and the client
    /// gets the error on the request's own stream. False if the answer won the race.
    pub(super) async fn time_out(&mut self, gid: u64) -> bool {
        if let Some(p) = self.routes.pending.remove(&gid) {
            self.end_overdue(p).await;
            return true;
        }
        let Some(i) = self.waiting.iter().position(|w| matches!(w, Waiter::Request { gid: g, .. } if *g == gid)) else {
            return false;
        };
        if let Waiter::Request { p, .. } = self.waiting.remove(i) {
            self.end_overdue(p).await;
        }
        true
    }

    async fn end_overdue(&mut self, p: Pending) {
        if let Some(up) = self.live().cloned() {
            let params = raw_value(&serde_json::json!({ "requestId": p.seq, "reason": "timed out" }));
            self.send_quiet(&up, Message::notification(method::NOTIFICATION_CANCELLED, Some(&params))).await;
        }
        let secs = self.deps.config.request_timeout.as_secs();
        warn!(method = %p.method, timeout_s = secs, "request timed out");
        self.deps.stats.requests_timed_out.inc();
        if matches!(p.reply, Reply::Client(_)) {
            self.refuse(p, GatewayError::UpstreamTimeout(secs)).await;
        }
    }

    /// Opens the client's standalone stream (replacing an older one) and returns what was
    /// queued for it.
    pub(super) fn attach_standalone(&mut self, sink: Sink) -> Vec<Bytes> {
        self.routes.standalone = Some(sink);
        let backlog: Vec<Bytes> = self.routes.backlog.drain(..).collect();
        if let Some(up) = self.live() {
            up.open_standalone();
        }
        self.publish();
        backlog
    }

    /// Forgets the standalone stream `stream`, if it is still the current one.
    pub(super) fn detach_standalone(&mut self, stream: u64) {
        if self.routes.standalone.as_ref().is_some_and(|s| s.stream == stream) {
            self.routes.standalone = None;
            // The stream was activity until now: the TTL counts from its close.
            self.stream_activity(0);
            self.publish();
        }
    }

    /// Ends client requests older than the request timeout (for streams that have no
    /// per-request timer: legacy SSE).
    pub(super) async fn expire_overdue(&mut self) {
        let timeout = self.deps.config.request_timeout;
        let gids: Vec<u64> = self
            .routes
            .pending
            .iter()
            .filter(|(_, p)| matches!(p.reply, Reply::Client(_)) && p.started.elapsed() >= timeout)
            .map(|(g, _)| *g)
            .collect();
        for g in gids {
            if let Some(p) = self.routes.pending.remove(&g) {
                self.end_overdue(p).await;
            }
        }
    }

    /// Moves a request still waiting for its answer onto a new stream (a client resuming its
    /// POST stream with `Last-Event-ID`). False if no such request is waiting here.
    pub(super) fn reattach_request(&mut self, stream: u64, sink: Sink) -> bool {
        let is_it =
            |p: &Pending| matches!(&p.reply, Reply::Client(s) if s.stream == stream && s.kind == StreamKind::Request);
        let found = self.routes.pending.values_mut().find(|p| is_it(p)).or_else(|| {
            self.waiting.iter_mut().find_map(|w| match w {
                Waiter::Request { p, .. } if is_it(p) => Some(p),
                _ => None,
            })
        });
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

    /// Whether the binding is live, unused for `idle`, with nothing in flight and no client
    /// stream waiting for server messages.
    pub(super) fn upstream_idle_for(&self, idle: std::time::Duration) -> bool {
        self.live().is_some()
            && self.upstream_used.elapsed() >= idle
            && self.routes.standalone.is_none()
            && self.routes.pending.is_empty()
            && self.waiting.is_empty()
    }

    /// A number for a new client stream: unique in the process (a hibernated session that
    /// wakes must not reuse the numbers, and so the keys, of its earlier streams).
    pub(super) fn open_stream(&mut self) -> u64 {
        self.streams_opened += 1;
        super::next_stream_number()
    }

    /// Whether the session may hibernate: no binding, no stream, nothing in flight or
    /// waiting, and no client activity for `after`.
    pub(super) fn may_hibernate(&self, after: std::time::Duration) -> bool {
        matches!(self.binding, super::Binding::None)
            && self.routes.standalone.is_none()
            && self.routes.pending.is_empty()
            && self.waiting.is_empty()
            && self.routes.server_requests.is_empty()
            && super::record::now_ms().saturating_sub(self.record.last_active) >= after.as_millis() as u64
    }

    /// Client requests waiting for their answer.
    pub(super) fn pending_requests(&self) -> usize {
        self.routes.pending.values().filter(|p| matches!(p.reply, Reply::Client(_))).count()
            + self.waiting.iter().filter(|w| matches!(w, Waiter::Request { .. })).count()
    }

    /// Ends the session's live side: pending requests get an error (`moved`: the session lives
    /// on elsewhere, so "may or may not have run"), streams end; the binding is handed back to
    /// be closed. The record is closed by the manager (unless `moved`).
    pub(super) async fn shutdown(&mut self, moved: bool) -> Option<Upstream> {
        self.closed = true;
        self.routes.standalone = None;
        self.routes.server_requests.clear();
        let why = if moved {
            GatewayError::UpstreamRestarted(
                "the session moved to another replica while the request was in flight".into(),
            )
        } else {
            GatewayError::SessionNotFound
        };
        for (_, p) in self.routes.pending.take_all() {
            if let Reply::Client(sink) = p.reply {
                self.end_with(&sink, &p.client_id, &why).await;
            }
        }
        self.internal_in_flight = 0;
        for w in std::mem::take(&mut self.waiting) {
            self.settle(w, &why).await;
        }
        let up = self.retire(false);
        self.publish();
        up
    }

    /// Lets the binding go but keeps the session (idle reap, gateway shutdown); the caller
    /// closes what it gets. What was in flight on it settles when its end is reported.
    pub(super) fn release(&mut self, cause: &'static str) -> Option<Upstream> {
        let up = self.retire(true)?;
        self.note_gone(cause);
        self.publish();
        Some(up)
    }

    fn cancel_by_client_id(&mut self, msg: &Message) -> Option<u64> {
        let request_id = params::cancelled_request_id(msg.params()?)?;
        let gid = self
            .routes
            .pending
            .iter()
            .find(|(_, p2)| matches!(p2.reply, Reply::Client(_)) && p2.client_id.get() == request_id.get())
            .map(|(g, _)| *g)?;
        // Dropping the pending entry ends the client's stream for it: a cancelled request
        // gets no answer.
        self.routes.pending.remove(&gid);
        Some(gid)
    }
}

/// A count as the recovery policy reads it (it stops well before 255).
fn tries(n: u32) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}
