//! The upstream binding as a cache: connecting, reviving by replay (one revive at a time per
//! session, in a task of its own, paced by the restart policy), telling the client what changed
//! across a revive, and tether's own requests on the upstream leg.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tether_protocol::message::{numeric_id, raw_value};
use tether_protocol::{Message, method, params};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::actor::{Command, Waiter};
use super::breaker::Verdict;
use super::record::{CloseReason, SessionState, Transport, now_ms};
use super::recovery::{self, Failure, Fate, Loss};
use super::replay::{self, LIST_KINDS, ListCheck, Step, digest};
use super::{Binding, Deps, Internal, Pending, Reply, Session, next_gid};
use crate::error::GatewayError;
use crate::upstream::credentials::ForwardedAuth;
use crate::upstream::{ConnectContext, Origin, Upstream, UpstreamEvent};

/// How long one of tether's own requests may take.
pub(super) fn internal_timeout(config: &super::SessionConfig) -> Duration {
    config.request_timeout.min(Duration::from_secs(60))
}

/// What a revive task reports.
pub(crate) struct Revived {
    generation: u64,
    cause: &'static str,
    started: Instant,
    /// The upstream's `initialize` result before the revive (`None`: a first connection).
    before: Option<Arc<RawValue>>,
    /// The new binding, or why there is none and whether the replay (not the start) failed.
    outcome: Result<Connected, (GatewayError, bool)>,
}

/// A new binding, replayed.
struct Connected {
    up: Upstream,
    events: mpsc::Receiver<UpstreamEvent>,
    /// Its events that came while the replay ran, other than the replay's own answers.
    early: Vec<UpstreamEvent>,
    /// The upstream's `initialize` result on this binding, when the replay initialized it.
    upstream_init: Option<Box<RawValue>>,
}

/// Everything a revive task needs, taken from the session when it starts.
struct Job {
    deps: Arc<Deps>,
    id: String,
    transport: Transport,
    forwarded: ForwardedAuth,
    stopping: CancellationToken,
    generation: u64,
    cause: &'static str,
    /// The binding it replaces, closed first.
    old: Option<Upstream>,
    delay: Duration,
    hurry: oneshot::Receiver<()>,
    client_init: Option<Arc<RawValue>>,
    upstream_init: Option<Arc<RawValue>>,
    state: SessionState,
    protocol_version: Option<String>,
    standalone: bool,
}

impl Session {
    /// The live binding for new work; `Ok(None)` when one is being made (the work waits in
    /// `waiting`). `stale` names a generation the caller saw fail: it is replaced even if it
    /// still looks alive. `paced: false` cuts a revive's backoff short for an HTTP upstream (a
    /// request that paces its own retries, so that a server that is back is used at once); a
    /// stdio child always waits it out: restarting a crashing command is what it paces.
    pub(super) fn ready(&mut self, stale: Option<u64>, paced: bool) -> Result<Option<Upstream>, GatewayError> {
        if self.closed {
            return Err(GatewayError::SessionNotFound);
        }
        match &mut self.binding {
            Binding::Up { up, .. } if up.is_alive() && Some(up.generation()) != stale => {
                return Ok(Some(up.clone()));
            }
            Binding::Reviving { hurry, .. } => {
                if !paced
                    && !self.deps.spec.crash_loops()
                    && let Some(h) = hurry.take()
                {
                    let _ = h.send(());
                }
                return Ok(None);
            }
            _ => {}
        }
        if self.stopping.is_cancelled() {
            return Err(GatewayError::ShuttingDown);
        }
        let policy = self.deps.config.restart;
        match self.breaker.verdict(&policy, Instant::now(), rand::random()) {
            Verdict::Open(left) => Err(GatewayError::CrashLoop { retry_after_s: left.as_secs().max(1) }),
            Verdict::Attempt(delay) => {
                let delay = if paced || self.deps.spec.crash_loops() { delay } else { Duration::ZERO };
                self.start_revive(delay);
                Ok(None)
            }
        }
    }

    /// Lets the current binding go and returns it. With `settle`, the events it still has to
    /// report (its end, answers in flight) keep coming to the session, which settles what was
    /// in flight on it.
    pub(super) fn retire(&mut self, settle: bool) -> Option<Upstream> {
        let Binding::Up { up, events } = std::mem::replace(&mut self.binding, Binding::None) else {
            return None;
        };
        if settle && let Some(mut events) = events {
            let reporter = self.reporter();
            let generation = up.generation();
            super::spawn(async move {
                while let Some(event) = events.recv().await {
                    if !reporter.send(Command::Event { generation, event }).await {
                        return;
                    }
                }
            });
        }
        Some(up)
    }

    /// Starts the revive task for a new generation.
    fn start_revive(&mut self, delay: Duration) {
        // What took the binding away (a crash, a lost upstream session, an idle reap, a
        // gateway restart) decides the label; a revive that failed keeps the first cause.
        let old = self.retire(true);
        let cause = match &old {
            Some(_) => {
                // A dead binding whose end was not reported yet.
                let fallback = if self.deps.spec.crash_loops() { "upstream_crashed" } else { "upstream_lost" };
                self.gone_cause(fallback)
            }
            None if self.generations > 0 => self.gone_cause("upstream_lost"),
            None if self.has_bound() => self.gone_cause("gateway_restart"),
            None => "first_use",
        };
        self.generations += 1;
        let generation = self.generations;
        let (hurry_tx, hurry) = oneshot::channel();
        self.binding = Binding::Reviving { generation, hurry: Some(hurry_tx) };
        let job = Job {
            deps: self.deps.clone(),
            id: self.id.clone(),
            transport: self.shared.transport,
            forwarded: self.shared.forwarded.clone(),
            stopping: self.stopping.clone(),
            generation,
            cause,
            old,
            delay,
            hurry,
            client_init: self.record.client_init.clone(),
            upstream_init: self.record.upstream_init.clone(),
            state: self.record.state.clone(),
            protocol_version: self.record.protocol_version.clone(),
            standalone: self.routes.standalone.is_some(),
        };
        let reporter = self.reporter();
        super::spawn(async move {
            let revived = job.run().await;
            if let Err(Command::Revived(r)) = reporter.send_or_return(Command::Revived(revived)).await
                && let Ok(c) = r.outcome
            {
                // The session is gone: so is what was built for it.
                c.up.close().await;
            }
        });
        self.publish();
    }

    /// A revive task's outcome: the binding goes into service and what waited for it goes
    /// upstream; or what waited ends (or waits on, for an upstream that is away).
    pub(super) async fn revived(&mut self, r: Revived) {
        let current = matches!(self.binding, Binding::Reviving { generation, .. } if generation == r.generation);
        if !current || self.closed {
            if let Ok(c) = r.outcome {
                super::spawn(async move { c.up.close().await });
            }
            return;
        }
        let c = match r.outcome {
            Ok(c) if self.stopping.is_cancelled() => {
                super::spawn(async move { c.up.close().await });
                self.binding = Binding::None;
                return self.settle_waiting(GatewayError::ShuttingDown, false).await;
            }
            Ok(c) => c,
            Err((e, in_replay)) => {
                self.binding = Binding::None;
                self.lost = true;
                if in_replay {
                    warn!(upstream = self.deps.spec.kind(), cause = r.cause, error = %e, "revive failed");
                    self.note_error(format_args!("revive failed ({}): {e}", r.cause));
                    self.deps.stats.revive_failures.inc();
                } else if !matches!(e, GatewayError::ShuttingDown) {
                    self.note_error(format_args!("starting the upstream failed: {e}"));
                }
                if let GatewayError::VersionChanged { .. } = e {
                    self.close_from_within(CloseReason::UpstreamFailed);
                } else if !matches!(e, GatewayError::ShuttingDown) {
                    self.start_failed();
                }
                self.publish();
                return self.settle_waiting(e, true).await;
            }
        };
        let generation = r.generation;
        if let Some(init) = c.upstream_init.as_deref() {
            self.record.upstream_init = Some(super::record::intern(init));
        }
        self.binding = Binding::Up { up: c.up.clone(), events: Some(c.events) };
        self.lost = false;
        self.breaker.success();
        if r.before.is_some() {
            self.deps.stats.revives.inc();
            self.revives += 1;
            self.note_revived(r.cause);
            info!(
                upstream = self.deps.spec.kind(),
                cause = r.cause,
                generation,
                duration_ms = r.started.elapsed().as_millis() as u64,
                "session revived"
            );
        }
        self.publish();
        for ev in c.early {
            self.on_event(generation, ev).await;
        }
        if r.before.is_some() {
            self.announce_changes(r.before.as_deref()).await;
        }
        for w in std::mem::take(&mut self.waiting) {
            self.resume(w).await;
        }
    }

    /// Carries out work that waited for a binding.
    async fn resume(&mut self, w: Waiter) {
        match w {
            Waiter::Request { gid, p } => self.dispatch(gid, p, None).await,
            Waiter::Notify { msg, done } => match self.ready(None, true) {
                Ok(Some(up)) => self.send_notification(&up, msg, done).await,
                Ok(None) => self.waiting.push(Waiter::Notify { msg, done }),
                Err(e) => {
                    let _ = done.send(Err(e));
                }
            },
            Waiter::Refresh(reply) => {
                let _ = reply.send(Ok(self.live().map(Upstream::generation)));
            }
            Waiter::Internal { method, params, cont } => self.internal(method, params, cont, None).await,
            Waiter::Standalone => {}
        }
    }

    /// No binding came: what waited ends with `e` — except requests of a session an upstream
    /// served before, when the upstream is away (`count`: this was an attempt for them): they
    /// wait for it, with backoff, at most `reconnect_attempts` times and never past their
    /// deadline.
    pub(super) async fn settle_waiting(&mut self, e: GatewayError, count: bool) {
        let mut next: Option<Instant> = None;
        for w in std::mem::take(&mut self.waiting) {
            match w {
                Waiter::Request { gid, mut p }
                    if count && self.has_bound() && matches!(e, GatewayError::UpstreamUnavailable(_)) =>
                {
                    p.waits += 1;
                    tracing::debug!(error = %e, attempt = p.waits, "a request found the upstream away");
                    if self.deps.config.reconnect_attempts.is_some_and(|n| p.waits > n) {
                        self.refuse(p, e.clone()).await;
                        continue;
                    }
                    let at = Instant::now() + self.deps.config.restart.retry_delay(p.waits, rand::random());
                    next = Some(next.map_or(at, |n| n.min(at)));
                    self.waiting.push(Waiter::Request { gid, p });
                }
                w => self.settle(w, &e).await,
            }
        }
        if next.is_some() {
            self.retry_at = next;
        }
    }

    /// Ends one piece of waiting work with `e`.
    pub(super) async fn settle(&mut self, w: Waiter, e: &GatewayError) {
        match w {
            Waiter::Request { p, .. } => self.refuse(p, e.clone()).await,
            Waiter::Notify { done, .. } => {
                let _ = done.send(Err(e.clone()));
            }
            Waiter::Refresh(reply) => {
                let _ = reply.send(Err(e.clone()));
            }
            Waiter::Internal { cont, .. } => self.internal_failed(cont, &e.to_string()).await,
            Waiter::Standalone => {
                warn!(error = %e, "restarting the upstream for an open stream failed; the next request retries");
            }
        }
    }

    /// Requests waiting for an away upstream try again.
    pub(super) async fn retry_waiting(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        match self.ready(None, false) {
            Ok(Some(_)) => {
                for w in std::mem::take(&mut self.waiting) {
                    self.resume(w).await;
                }
            }
            Ok(None) => {}
            Err(e) => self.settle_waiting(e, true).await,
        }
    }

    /// An operator's "refresh": drops the binding (even a healthy one) and revives the session
    /// by replay now, as after an upstream crash; requests in flight on the old binding settle
    /// as they would then. Answers the new generation, or `None` for a session that has not
    /// completed its handshake (there is nothing to replay).
    pub(super) fn refresh(&mut self, reply: oneshot::Sender<Result<Option<u64>, GatewayError>>) {
        if !self.has_bound() {
            let _ = reply.send(Ok(None));
            return;
        }
        info!(upstream = self.deps.spec.kind(), "session refresh requested by an operator");
        // Generations start at 1, so 0 marks "no binding": a revive starts at once.
        let stale = self.current().map_or(0, Upstream::generation);
        match self.ready(Some(stale), true) {
            Ok(Some(up)) => {
                let _ = reply.send(Ok(Some(up.generation())));
            }
            Ok(None) => self.waiting.push(Waiter::Refresh(reply)),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    pub(super) fn start_failed(&mut self) {
        let now = Instant::now();
        let was = self.breaker.is_open(now);
        let trip = self.deps.spec.crash_loops();
        self.breaker.failure(&self.deps.config.restart, now, trip);
        if !was && self.breaker.is_open(now) {
            self.deps.stats.crash_loops.inc();
            warn!(
                upstream = self.deps.spec.kind(),
                cooldown_s = self.deps.config.restart.cooldown.as_secs(),
                "upstream is crash-looping; refusing restarts for the cool-down"
            );
        }
    }

    /// Counts a binding that died on its own toward the crash-loop breaker.
    pub(super) fn binding_died(&mut self) {
        self.deps.stats.upstream_losses.inc();
        self.start_failed();
    }

    /// Ends the session from inside (a revive that cannot continue it): the record is closed,
    /// and the loop ends once the current input is handled. The manager forgets the session
    /// when it next meets it closed: it holds handles, the session no pointer back.
    fn close_from_within(&mut self, reason: CloseReason) {
        self.closed = true;
        let store = self.deps.store.clone();
        let id = self.id.clone();
        super::spawn(async move {
            if let Err(e) = store.close(&id, now_ms(), reason).await {
                warn!(error = %e, "closing the session record failed");
            }
            if let Err(e) = store.forget(&id).await {
                warn!(error = %e, "dropping the session's stored events failed");
            }
        });
    }

    /// After a revive: if the server's capabilities or a list the client has seen changed,
    /// and the server declares `listChanged` for it, the client gets the `list_changed`.
    async fn announce_changes(&mut self, before: Option<&RawValue>) {
        let after = self.record.upstream_init.clone();
        for kind in LIST_KINDS {
            let seen = self.list_digests.get(kind).copied();
            match replay::list_check(before, after.as_deref(), kind, seen) {
                ListCheck::Skip => {}
                ListCheck::Announce => self.announce(kind).await,
                ListCheck::Compare(old) => {
                    self.internal(method::list_of(kind), None, Internal::ListCheck { kind, seen: old }, None).await;
                }
            }
        }
    }

    async fn announce(&mut self, kind: &str) {
        info!(kind, "upstream list changed across the revive; telling the client");
        let note = Message::notification(&method::list_changed(kind), None);
        let target = self.target(Origin::Standalone, None);
        self.deliver(target, note).await;
    }

    /// Sends a request of tether's own; its answer continues with `cont`.
    pub(super) async fn internal(
        &mut self,
        method: String,
        params: Option<Box<RawValue>>,
        cont: Internal,
        stale: Option<u64>,
    ) {
        let up = match self.ready(stale, true) {
            Ok(Some(up)) => up,
            Ok(None) => {
                self.waiting.push(Waiter::Internal { method, params, cont });
                return;
            }
            Err(e) => return self.internal_failed(cont, &e.to_string()).await,
        };
        let gid = next_gid();
        self.routes.pending.insert(gid, Pending::internal(&method, cont, up.generation(), gid));
        self.internal_in_flight += 1;
        let msg = Message::request(gid, &method, params.as_deref());
        if up.sends_at_once(&msg) {
            if let Err(error) = up.send(&msg, Some(gid)).await {
                self.sent(gid, up.generation(), Err(error), None).await;
            }
            return;
        }
        self.send_from_task(&up, Arc::new(msg), gid, None);
    }

    /// The answer to one of tether's own requests.
    pub(super) async fn internal_answered(&mut self, i: Internal, msg: Message) {
        match i {
            Internal::LearnTools { gid, mut call } => {
                self.learn_from_list(method::TOOLS_LIST, &msg);
                let params = call.upstream_msg.as_ref().and_then(|m| m.params().map(ToOwned::to_owned));
                call.retry_safe = self.is_retry_safe(&call.method, params.as_deref());
                if recovery::decide(self.facts(&call), Loss::InFlight) == Fate::Retry {
                    call.attempts += 1;
                    self.deps.stats.requests_retried.inc();
                    return Box::pin(self.dispatch(gid, *call, None)).await;
                }
                let err = self.failure(Failure::Restarted, "the upstream restarted".into());
                self.refuse(*call, err).await;
            }
            Internal::ListCheck { kind, seen } => {
                if msg.result().is_some_and(|r| digest(r.get()) != seen) {
                    self.announce(kind).await;
                }
            }
        }
    }

    /// One of tether's own requests got no answer.
    pub(super) async fn internal_failed(&mut self, i: Internal, reason: &str) {
        match i {
            Internal::ListCheck { .. } => {}
            Internal::LearnTools { call, .. } => {
                let err = self.failure(Failure::Restarted, reason.to_owned());
                self.refuse(*call, err).await;
            }
        }
    }

    /// tether's own requests past their time end.
    pub(super) async fn expire_internal(&mut self, now: Instant) {
        if self.internal_in_flight == 0 {
            return;
        }
        let limit = internal_timeout(&self.deps.config);
        let overdue: Vec<u64> = self
            .routes
            .pending
            .iter()
            .filter(|(_, p)| matches!(p.reply, Reply::Internal(_)) && p.started + limit <= now)
            .map(|(g, _)| *g)
            .collect();
        for g in overdue {
            if let Some(p) = self.routes.pending.remove(&g) {
                self.internal_in_flight = self.internal_in_flight.saturating_sub(1);
                if let Reply::Internal(i) = p.reply {
                    self.internal_failed(i, &format!("the upstream did not answer {}", p.method)).await;
                }
            }
        }
    }
}

impl Job {
    /// Waits out the backoff, closes the old binding, connects, and replays the session state.
    async fn run(mut self) -> Revived {
        let started = Instant::now();
        let before = self.upstream_init.clone();
        let outcome = self.connect().await;
        Revived { generation: self.generation, cause: self.cause, started, before, outcome }
    }

    async fn connect(&mut self) -> Result<Connected, (GatewayError, bool)> {
        if !self.delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(self.delay) => {}
                _ = &mut self.hurry => {}
                () = self.stopping.cancelled() => {}
            }
        }
        if let Some(old) = self.old.take() {
            old.close().await;
        }
        if self.stopping.is_cancelled() {
            return Err((GatewayError::ShuttingDown, false));
        }
        let (tx, events) = mpsc::channel(256);
        let ctx = ConnectContext {
            session_id: self.id.clone(),
            events: tx,
            options: self.deps.config.upstream.clone(),
            http: self.deps.http.clone(),
            forwarded: self.forwarded.clone(),
            prefer_modern: self.transport == Transport::Modern,
        };
        let up = Upstream::connect(&self.deps.spec, self.generation, ctx)
            .await
            .map_err(|e| (GatewayError::from(e), false))?;
        let mut c = Connected { up, events, early: Vec::new(), upstream_init: None };
        if self.upstream_init.is_some()
            && let Err(e) = self.replay(&mut c).await
        {
            c.up.close().await;
            return Err((e, true));
        }
        Ok(c)
    }

    /// Rebuilds the upstream side of an initialized session on a fresh connection, following
    /// the replay plan.
    async fn replay(&self, c: &mut Connected) -> Result<(), GatewayError> {
        let steps = replay::plan(self.client_init.as_deref(), &self.state);
        for step in steps {
            match step {
                Step::Initialize(params) => {
                    let answer = self.ask(c, method::INITIALIZE, Some(&params)).await?;
                    let result = answer.result().ok_or_else(|| {
                        GatewayError::UpstreamUnavailable("the upstream refused initialize on revive".into())
                    })?;
                    let now = params::protocol_version(result);
                    let version = replay::version_after(self.protocol_version.as_deref(), now.as_deref())
                        .map_err(|(was, now)| GatewayError::VersionChanged { was, now })?;
                    if let Some(v) = &version {
                        c.up.set_protocol_version(v);
                    }
                    c.upstream_init = Some(result.to_owned());
                }
                Step::Initialized => {
                    c.up.send(&Message::notification(method::NOTIFICATION_INITIALIZED, None), None)
                        .await
                        .map_err(|e| GatewayError::UpstreamUnavailable(e.to_string()))?
                }
                Step::SetLevel(level) => {
                    let p = raw_value(&serde_json::json!({ "level": level }));
                    self.ask(c, method::LOGGING_SET_LEVEL, Some(&p)).await?;
                }
                Step::Subscribe(uri) => {
                    let p = raw_value(&serde_json::json!({ "uri": uri }));
                    self.ask(c, method::RESOURCES_SUBSCRIBE, Some(&p)).await?;
                }
            }
        }
        if self.standalone {
            c.up.open_standalone();
        }
        Ok(())
    }

    /// One request of the replay: sent on the new binding, its answer read from the binding's
    /// own events (the session does not see them until the replay is done).
    async fn ask(&self, c: &mut Connected, method: &str, params: Option<&RawValue>) -> Result<Message, GatewayError> {
        let gid = next_gid();
        c.up.send(&Message::request(gid, method, params), Some(gid))
            .await
            .map_err(|e| GatewayError::UpstreamUnavailable(e.to_string()))?;
        let deadline = Instant::now() + internal_timeout(&self.deps.config);
        loop {
            let ev = tokio::time::timeout_at(deadline, c.events.recv())
                .await
                .map_err(|_| GatewayError::UpstreamUnavailable(format!("the upstream did not answer {method}")))?;
            match ev {
                Some(UpstreamEvent::Message(_, m)) if super::is_answer(&m) && m.numeric_id() == Some(gid) => {
                    return Ok(m);
                }
                Some(UpstreamEvent::Closed(..)) | None => {
                    return Err(GatewayError::UpstreamUnavailable(format!("the upstream went away during {method}")));
                }
                Some(other) => c.early.push(other),
            }
        }
    }
}

impl Pending {
    fn internal(method: &str, cont: Internal, generation: u64, gid: u64) -> Pending {
        Pending {
            client_id: numeric_id(gid),
            method: method.to_owned(),
            reply: Reply::Internal(cont),
            generation,
            progress_token: None,
            state_change: None,
            init_params: None,
            seq: gid,
            started: Instant::now(),
            upstream_msg: None,
            retry_safe: false,
            attempts: 0,
            undelivered: 0,
            waits: 0,
            sending: false,
            ended_unread: false,
            accepted: None,
        }
    }
}
