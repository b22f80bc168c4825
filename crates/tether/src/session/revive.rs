//! The upstream binding as a cache: connecting, reviving by replay (one at a time per
//! session, paced by the restart policy), telling the client what changed across a revive, and
//! tether's own requests on the upstream leg.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::value::RawValue;
use tether_protocol::message::{numeric_id, raw_value};
use tether_protocol::{Message, method, params};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

use super::breaker::Verdict;
use super::record::{CloseReason, now_ms};
use super::replay::{self, LIST_KINDS, ListCheck, Step, digest};
use super::{Pending, Reply, Session, lock, next_gid};
use crate::error::GatewayError;
use crate::upstream::{ConnectContext, Origin, Upstream};

impl Session {
    pub(super) fn current(&self) -> Option<Upstream> {
        lock(&self.current).clone()
    }

    /// The live upstream binding, connecting or reviving it when missing or dead. `stale`
    /// names a generation the caller saw fail: it is replaced even if it still looks alive.
    pub(super) async fn upstream(self: &Arc<Self>, stale: Option<u64>) -> Result<Upstream, GatewayError> {
        self.upstream_paced(stale, true).await
    }

    /// [`Session::upstream`]; `paced: false` skips the backoff wait for an HTTP upstream (a
    /// request that paces its own retries, so that a server that is back is used at once).
    /// A stdio child always waits it out: restarting a crashing command is what it paces.
    pub(super) async fn upstream_paced(
        self: &Arc<Self>,
        stale: Option<u64>,
        paced: bool,
    ) -> Result<Upstream, GatewayError> {
        if stale.is_none()
            && let Some(u) = self.current()
            && u.is_alive()
        {
            return Ok(u);
        }
        let mut slot = loop {
            let slot = self.binding.lock().await;
            if let Some(u) = slot.as_ref()
                && u.is_alive()
                && Some(u.generation()) != stale
            {
                return Ok(u.clone());
            }
            if self.is_closed() {
                return Err(GatewayError::SessionNotFound);
            }
            if self.stopping.is_cancelled() {
                return Err(GatewayError::ShuttingDown);
            }
            let policy = self.deps.config.restart;
            let verdict = lock(&self.breaker).verdict(&policy, tokio::time::Instant::now(), rand::random());
            match verdict {
                Verdict::Open(left) => {
                    return Err(GatewayError::CrashLoop { retry_after_s: left.as_secs().max(1) });
                }
                // The backoff is waited out without the binding lock, so that an unpaced
                // request is not held behind a background revive's wait; then look again.
                Verdict::Attempt(delay) if !delay.is_zero() && (paced || self.deps.spec.crash_loops()) => {
                    drop(slot);
                    tokio::time::sleep(delay).await;
                }
                Verdict::Attempt(_) => break slot,
            }
        };
        // What took the binding away (a crash, a lost upstream session, an idle reap, a
        // gateway restart) decides the label; a revive that failed keeps the first cause.
        let cause = match slot.take() {
            Some(old) => {
                old.close().await;
                // A dead binding whose end was not reported yet.
                let fallback = if self.deps.spec.crash_loops() { "upstream_crashed" } else { "upstream_lost" };
                self.gone_cause(fallback)
            }
            None if self.generations.load(Ordering::Relaxed) > 0 => self.gone_cause("upstream_lost"),
            None if lock(&self.record).upstream_init.is_some() => self.gone_cause("gateway_restart"),
            None => "first_use",
        };
        let started = Instant::now();
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(256);
        let ctx = ConnectContext {
            session_id: self.id.clone(),
            events: tx,
            options: self.deps.config.upstream.clone(),
            http: self.deps.http.clone(),
            forwarded: self.forwarded_auth().clone(),
            prefer_modern: self.transport() == super::record::Transport::Modern,
        };
        let up = match Upstream::connect(&self.deps.spec, generation, ctx).await {
            Ok(u) => u,
            Err(e) => {
                self.note_error(format_args!("starting the upstream failed: {e}"));
                self.start_failed();
                return Err(GatewayError::from(e));
            }
        };
        tokio::spawn(self.clone().route_events(generation, rx));
        let before = lock(&self.record).upstream_init.clone();
        if before.is_some() {
            if let Err(e) = self.replay_state(&up).await {
                warn!(session_id = %self.id, upstream = self.deps.spec.kind(), cause, error = %e, "revive failed");
                self.note_error(format_args!("revive failed ({cause}): {e}"));
                self.deps.stats.revive_failures.inc();
                up.close().await;
                if let GatewayError::VersionChanged { .. } = e {
                    self.close_from_within(CloseReason::UpstreamFailed);
                } else {
                    self.start_failed();
                }
                return Err(e);
            }
            self.deps.stats.revives.inc();
            self.revives.fetch_add(1, Ordering::Relaxed);
            self.note_revived(cause);
            info!(
                session_id = %self.id,
                upstream = self.deps.spec.kind(),
                cause,
                generation,
                duration_ms = started.elapsed().as_millis() as u64,
                "session revived"
            );
            let me = self.clone();
            let up2 = up.clone();
            tokio::spawn(async move { me.announce_changes(&up2, before.as_deref()).await });
        }
        lock(&self.breaker).success();
        *slot = Some(up.clone());
        *lock(&self.current) = Some(up.clone());
        Ok(up)
    }

    /// An operator's "refresh": drops the binding (even a healthy one) and revives the session
    /// by replay now, as after an upstream crash; requests in flight on the old binding settle
    /// as they would then. Returns the new generation, or `None` for a session that has not
    /// completed its handshake (there is nothing to replay).
    pub async fn refresh(self: &Arc<Self>) -> Result<Option<u64>, GatewayError> {
        if !self.has_bound() {
            return Ok(None);
        }
        info!(session_id = %self.id, upstream = self.deps.spec.kind(), "session refresh requested by an operator");
        // Generations start at 1, so 0 marks "no binding": `upstream` then revives at once.
        let stale = self.current().map_or(0, |u| u.generation());
        self.upstream(Some(stale)).await.map(|u| Some(u.generation()))
    }

    fn start_failed(&self) {
        let opened = {
            let mut b = lock(&self.breaker);
            let was = b.is_open(tokio::time::Instant::now());
            let trip = self.deps.spec.crash_loops();
            b.failure(&self.deps.config.restart, tokio::time::Instant::now(), trip);
            !was && b.is_open(tokio::time::Instant::now())
        };
        if opened {
            self.deps.stats.crash_loops.inc();
            warn!(session_id = %self.id, upstream = self.deps.spec.kind(), cooldown_s = self.deps.config.restart.cooldown.as_secs(), "upstream is crash-looping; refusing restarts for the cool-down");
        }
    }

    /// Counts a binding that died on its own toward the crash-loop breaker.
    pub(super) fn binding_died(&self) {
        self.deps.stats.upstream_losses.inc();
        self.start_failed();
    }

    /// Ends the session from inside (a revive that cannot continue it): the live side shuts
    /// down and the record is closed, outside the binding lock held here. The manager forgets
    /// the session when it next meets it closed: it holds handles, the session no pointer back.
    fn close_from_within(self: &Arc<Self>, reason: CloseReason) {
        self.closed.store(true, Ordering::Release);
        let me = self.clone();
        tokio::spawn(async move {
            me.shutdown().await;
            if let Err(e) = me.deps.store.close(&me.id, now_ms(), reason).await {
                warn!(session_id = %me.id, error = %e, "closing the session record failed");
            }
            if let Err(e) = me.deps.store.forget(&me.id).await {
                warn!(session_id = %me.id, error = %e, "dropping the session's stored events failed");
            }
        });
    }

    /// Rebuilds the upstream side of an initialized session on a fresh connection, following
    /// the replay plan.
    async fn replay_state(self: &Arc<Self>, up: &Upstream) -> Result<(), GatewayError> {
        let (steps, was) = {
            let r = lock(&self.record);
            (replay::plan(r.client_init.as_deref(), &r.state), r.protocol_version.clone())
        };
        if steps.is_empty() {
            return Ok(());
        }
        for step in steps {
            match step {
                Step::Initialize(params) => {
                    let answer = self.internal_request(up, method::INITIALIZE, Some(&params)).await?;
                    let result = answer.result().ok_or_else(|| {
                        GatewayError::UpstreamUnavailable("the upstream refused initialize on revive".into())
                    })?;
                    let now = params::protocol_version(result);
                    let version = replay::version_after(was.as_deref(), now.as_deref())
                        .map_err(|(was, now)| GatewayError::VersionChanged { was, now })?;
                    if let Some(v) = &version {
                        up.set_protocol_version(v);
                    }
                    lock(&self.record).upstream_init = Some(super::record::intern(result));
                }
                Step::Initialized => up
                    .send(&Message::notification(method::NOTIFICATION_INITIALIZED, None), None)
                    .await
                    .map_err(|e| GatewayError::UpstreamUnavailable(e.to_string()))?,
                Step::SetLevel(level) => {
                    let p = raw_value(&serde_json::json!({ "level": level }));
                    self.internal_request(up, method::LOGGING_SET_LEVEL, Some(&p)).await?;
                }
                Step::Subscribe(uri) => {
                    let p = raw_value(&serde_json::json!({ "uri": uri }));
                    self.internal_request(up, method::RESOURCES_SUBSCRIBE, Some(&p)).await?;
                }
            }
        }
        if lock(&self.routes).standalone.is_some() {
            up.open_standalone();
        }
        Ok(())
    }

    /// After a revive: if the server's capabilities or a list the client has seen changed,
    /// and the server declares `listChanged` for it, the client gets the `list_changed`.
    async fn announce_changes(self: &Arc<Self>, up: &Upstream, before: Option<&RawValue>) {
        let after = lock(&self.record).upstream_init.clone();
        for kind in LIST_KINDS {
            let seen = lock(&self.list_digests).get(kind).copied();
            let changed = match replay::list_check(before, after.as_deref(), kind, seen) {
                ListCheck::Skip => false,
                ListCheck::Announce => true,
                ListCheck::Compare(old) => match self.internal_request(up, &method::list_of(kind), None).await {
                    Ok(m) => m.result().is_some_and(|r| digest(r.get()) != old),
                    Err(_) => false,
                },
            };
            if changed {
                info!(session_id = %self.id, kind, "upstream list changed across the revive; telling the client");
                let note = Message::notification(&method::list_changed(kind), None);
                let target = self.target(Origin::Standalone, None);
                self.deliver(target, note).await;
            }
        }
    }

    /// Sends a request of tether's own and waits for its answer.
    pub(super) async fn internal_request(
        &self,
        up: &Upstream,
        method: &str,
        params: Option<&RawValue>,
    ) -> Result<Message, GatewayError> {
        let gid = next_gid();
        let (tx, rx) = oneshot::channel();
        self.insert_pending(gid, Pending::internal(method, tx, up.generation(), gid));
        if let Err(e) = up.send(&Message::request(gid, method, params), Some(gid)).await {
            lock(&self.routes).pending.remove(&gid);
            return Err(GatewayError::UpstreamUnavailable(e.to_string()));
        }
        let timeout = self.deps.config.request_timeout.min(Duration::from_secs(60));
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(_)) => Err(GatewayError::UpstreamUnavailable(format!("the upstream went away during {method}"))),
            Err(_) => {
                lock(&self.routes).pending.remove(&gid);
                Err(GatewayError::UpstreamUnavailable(format!("the upstream did not answer {method}")))
            }
        }
    }

    pub(super) fn insert_pending(&self, gid: u64, p: Pending) {
        lock(&self.routes).pending.insert(gid, p);
    }
}

impl Pending {
    fn internal(method: &str, tx: oneshot::Sender<Message>, generation: u64, gid: u64) -> Pending {
        Pending {
            client_id: numeric_id(gid),
            method: method.to_owned(),
            reply: Reply::Internal(tx),
            generation,
            progress_token: None,
            state_change: None,
            init_params: None,
            seq: gid,
            started: Instant::now(),
            upstream_msg: None,
            retry_safe: false,
            attempts: 0,
        }
    }
}
