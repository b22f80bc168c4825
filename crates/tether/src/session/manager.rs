//! The registry of live sessions: lookup (loading a record from the store when the session is
//! not live here), creation, closing, the TTL reaper and the write-behind of activity.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::record::{CloseReason, SessionRecord, Transport, now_ms};
use super::store::StoreError;
use super::{Deps, Session, SessionHandle};
use crate::error::GatewayError;

/// Idle upstreams closed at once by the reaper.
const REAP_AT_ONCE: usize = 64;

/// Sessions whose activity goes in one store write.
const ACTIVITY_CHUNK: usize = 256;

/// Owns every live session.
pub struct Manager {
    sessions: RwLock<HashMap<String, SessionHandle>>,
    deps: Arc<Deps>,
    draining: AtomicBool,
    /// Cancelled when the gateway stops; every session holds a clone.
    stopping: CancellationToken,
    /// Open, unexpired sessions in the store that are not live here (from before a restart, or
    /// hibernated): they count toward `max_sessions`, since their clients may come back at any
    /// time.
    dormant: AtomicUsize,
    /// Sessions that hibernated here (their revive on waking is labelled as an idle reap).
    hibernated: Mutex<HashSet<String>>,
}

impl Manager {
    /// A manager over `deps`.
    pub fn new(deps: Deps) -> Arc<Manager> {
        Arc::new(Manager {
            sessions: RwLock::new(HashMap::new()),
            deps: Arc::new(deps),
            draining: AtomicBool::new(false),
            stopping: CancellationToken::new(),
            dormant: AtomicUsize::new(0),
            hibernated: Mutex::new(HashSet::new()),
        })
    }

    /// What the sessions share.
    pub fn deps(&self) -> &Deps {
        &self.deps
    }

    /// Creates a session and stores its record.
    pub async fn create(self: &Arc<Self>, transport: Transport) -> Result<SessionHandle, GatewayError> {
        self.create_for(transport, None).await
    }

    /// Creates a session bound to `principal` (a fingerprint; `None` when authentication is
    /// off) and stores its record.
    pub async fn create_for(
        self: &Arc<Self>,
        transport: Transport,
        principal: Option<String>,
    ) -> Result<SessionHandle, GatewayError> {
        if self.draining.load(Ordering::Acquire) {
            return Err(GatewayError::ShuttingDown);
        }
        let max = self.deps.config.max_sessions;
        if self.live_count() + self.dormant.load(Ordering::Acquire) >= max {
            return Err(GatewayError::TooManySessions(max));
        }
        let record = SessionRecord { principal, ..SessionRecord::new(transport) };
        self.deps.store.create(&record).await.map_err(|e| {
            warn!(error = %e, "creating a session record failed");
            GatewayError::Store(e.to_string())
        })?;
        let session = Session::spawn(record, self.deps.clone(), self.stopping.clone(), None);
        self.write().insert(session.id().to_owned(), session.clone());
        self.deps.stats.sessions_created.inc();
        info!(session_id = %session.id(), transport = transport.as_str(), "session created");
        Ok(session)
    }

    /// The live session with this id. A session not live in this process is loaded from the
    /// store; an unknown, closed or expired one is [`GatewayError::SessionNotFound`].
    pub async fn get(self: &Arc<Self>, id: &str) -> Result<SessionHandle, GatewayError> {
        let live = self.read().get(id).cloned();
        if let Some(s) = live {
            if s.is_closed() {
                self.forget_closed(id);
                return Err(GatewayError::SessionNotFound);
            }
            if self.session_expired(&s) {
                self.close(id, CloseReason::Expired).await;
                return Err(GatewayError::SessionNotFound);
            }
            return Ok(s);
        }
        if !looks_like_id(id) {
            return Err(GatewayError::SessionNotFound);
        }
        let record = self.deps.store.get(id).await.map_err(|e| {
            warn!(error = %e, "loading a session record failed");
            GatewayError::Store(e.to_string())
        })?;
        let Some(record) = record.filter(|r| r.closed_at.is_none()) else {
            return Err(GatewayError::SessionNotFound);
        };
        if self.expired(record.last_active) {
            if let Err(e) = self.close_stored(&record, CloseReason::Expired).await {
                warn!(session_id = %id, error = %e, "closing the session record failed");
            }
            return Err(GatewayError::SessionNotFound);
        }
        let max = self.deps.config.max_sessions;
        let session = {
            let mut live = self.write();
            if let Some(s) = live.get(id) {
                return Ok(s.clone());
            }
            // Only when the cap was lowered across a restart can the resumed outnumber it.
            if live.len() >= max {
                return Err(GatewayError::TooManySessions(max));
            }
            // A session that hibernated here lost its binding to the idle reaper.
            let woken = lock(&self.hibernated).remove(id);
            let gone = woken.then_some("upstream_reaped");
            let session = Session::spawn(record, self.deps.clone(), self.stopping.clone(), gone);
            live.insert(id.to_owned(), session.clone());
            (session, woken)
        };
        let (session, woken) = session;
        self.settle_dormant(1);
        if woken {
            self.deps.stats.sessions_woken.inc();
            debug!(session_id = %id, "session woken");
        } else {
            self.deps.stats.sessions_resumed.inc();
            info!(session_id = %id, "session resumed from the store");
        }
        Ok(session)
    }

    /// Ends a session: its upstream closes and its record is marked closed.
    pub async fn close(&self, id: &str, reason: CloseReason) -> bool {
        let session = self.write().remove(id);
        let Some(session) = session else { return false };
        if let Some(a) = session.take_activity(u64::MAX).await {
            let _ = self.deps.store.touch(id, a).await;
        }
        session.shutdown().await;
        if let Err(e) = self.deps.store.close(id, now_ms(), reason).await {
            warn!(session_id = %id, error = %e, "closing the session record failed");
        }
        if let Err(e) = self.deps.store.forget(id).await {
            warn!(session_id = %id, error = %e, "dropping the session's stored events failed");
        }
        self.count_end(id, session.created_at(), reason);
        true
    }

    /// Drops this process's copy of a session without touching its record (cluster mode:
    /// another replica owns it now, or this one lost its lease): its upstream closes, its
    /// pending requests end with `-32011` (they may or may not have run). The next use here
    /// loads it from the store again.
    pub async fn evict(&self, id: &str) -> bool {
        let session = self.write().remove(id);
        let Some(session) = session else { return false };
        session.shutdown_moved().await;
        true
    }

    /// Forgets a session that closed itself (its record is already closed), if it is still
    /// here, and counts its end.
    fn forget_closed(&self, id: &str) {
        let removed = {
            let mut sessions = self.write();
            match sessions.get(id) {
                Some(s) if s.is_closed() => sessions.remove(id),
                _ => None,
            }
        };
        if let Some(s) = removed {
            self.count_end(id, s.created_at(), CloseReason::UpstreamFailed);
        }
    }

    /// Closes a record that is open in the store but not live here (another replica's, or
    /// from before a restart).
    async fn close_stored(&self, record: &SessionRecord, reason: CloseReason) -> Result<(), StoreError> {
        self.deps.store.close(&record.id, now_ms(), reason).await?;
        lock(&self.hibernated).remove(&record.id);
        self.settle_dormant(1);
        if let Err(e) = self.deps.store.forget(&record.id).await {
            warn!(session_id = %record.id, error = %e, "dropping the session's stored events failed");
        }
        self.count_end(&record.id, record.created_at, reason);
        Ok(())
    }

    /// Counts and logs the end of a session: one line per lifecycle event.
    fn count_end(&self, id: &str, created_at: u64, reason: CloseReason) {
        let stats = &self.deps.stats;
        stats.ended_session_ms.inc_by(now_ms().saturating_sub(created_at));
        match reason {
            CloseReason::Expired => {
                stats.sessions_expired.inc();
                info!(session_id = %id, "session expired");
            }
            CloseReason::Terminated => {
                stats.sessions_closed.inc();
                info!(session_id = %id, "session terminated");
            }
            CloseReason::ClientClosed | CloseReason::UpstreamFailed => {
                stats.sessions_closed.inc();
                info!(session_id = %id, reason = reason.as_str(), "session closed");
            }
        }
    }

    /// Ends a session on an operator's word, whether it is live here or only open in the
    /// store. False when no open session has this id.
    pub async fn terminate(&self, id: &str) -> Result<bool, StoreError> {
        if self.close(id, CloseReason::Terminated).await {
            return Ok(true);
        }
        match self.deps.store.get(id).await? {
            Some(r) if r.closed_at.is_none() => {
                self.close_stored(&r, CloseReason::Terminated).await?;
                // A request may have loaded it meanwhile: that copy ends too.
                let resumed = self.write().remove(id);
                if let Some(s) = resumed {
                    s.shutdown().await;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Closes every expired session now — live here, or open only in the store — and returns
    /// how many.
    pub async fn close_expired(&self) -> Result<usize, StoreError> {
        let mut closed = 0;
        for id in self.expired_live() {
            closed += usize::from(self.close(&id, CloseReason::Expired).await);
        }
        // Read every page first, then close: closing while paging would move the pages.
        let mut stale = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.deps.store.list_open(after.as_deref(), 500).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            let live = self.read();
            stale.extend(page.iter().filter(|r| self.expired(r.last_active) && !live.contains_key(&r.id)).cloned());
            if page.len() < 500 {
                break;
            }
        }
        for r in stale {
            self.close_stored(&r, CloseReason::Expired).await?;
            closed += 1;
        }
        Ok(closed)
    }

    fn expired_live(&self) -> Vec<String> {
        self.read().values().filter(|s| self.session_expired(s)).map(|s| s.id().to_owned()).collect()
    }

    /// A session whose client holds a standalone stream open is active: its TTL counts from
    /// the stream's close.
    fn session_expired(&self, s: &SessionHandle) -> bool {
        !s.has_standalone() && self.expired(s.last_active())
    }

    /// The session with this id if it is live here, without loading or expiring anything.
    pub fn live_session(&self, id: &str) -> Option<SessionHandle> {
        self.read().get(id).filter(|s| !s.is_closed()).cloned()
    }

    /// Counts the open, unexpired sessions in the store that are not live here (at start: all
    /// of them) toward `max_sessions`. The reaper recounts them as they expire.
    pub fn expect_resumes(&self, open_in_store: usize) {
        let dormant = self.recount_dormant(open_in_store);
        let max = self.deps.config.max_sessions;
        if dormant >= max {
            warn!(
                stored = dormant,
                max_sessions = max,
                "the store holds as many open sessions as --max-sessions: new sessions are refused until some close or expire"
            );
        }
    }

    fn recount_dormant(&self, open_in_store: usize) -> usize {
        let dormant = open_in_store.saturating_sub(self.live_count());
        self.dormant.store(dormant, Ordering::Release);
        dormant
    }

    /// `n` stored sessions were resumed or closed: they no longer wait in the store.
    fn settle_dormant(&self, n: usize) {
        let _ = self.dormant.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| Some(d.saturating_sub(n)));
    }

    /// Stored sessions counted toward `max_sessions` without being live here.
    pub fn dormant_count(&self) -> usize {
        self.dormant.load(Ordering::Acquire)
    }

    /// How many sessions are live in this process.
    pub fn live_count(&self) -> usize {
        self.read().values().filter(|s| !s.is_closed()).count()
    }

    /// Live sessions by client transport, in [`Transport::ALL`] order (metrics: the modern
    /// front's bindings are `modern-http`).
    pub fn live_by_transport(&self) -> [usize; Transport::ALL.len()] {
        let mut n = [0; Transport::ALL.len()];
        for s in self.read().values().filter(|s| !s.is_closed()) {
            n[s.transport() as usize] += 1;
        }
        n
    }

    /// The live sessions.
    pub fn live(&self) -> Vec<SessionHandle> {
        self.read().values().filter(|s| !s.is_closed()).cloned().collect()
    }

    /// Refuses new sessions from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether new sessions are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether the gateway is stopping: no upstream is started any more.
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    fn expired(&self, last_active: u64) -> bool {
        now_ms().saturating_sub(last_active) > self.deps.config.ttl.as_millis() as u64
    }

    /// Runs the reaper and the activity writer until `stop`.
    pub fn spawn_background(self: &Arc<Self>, stop: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            let reap_every = (me.deps.config.ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
            let mut reap = tokio::time::interval(reap_every);
            let mut flush = tokio::time::interval(Duration::from_secs(1));
            let idle_every =
                (me.deps.config.upstream_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
            let mut idle = tokio::time::interval(idle_every);
            let mut prune = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = prune.tick() => {
                        let retention = me.deps.config.retention;
                        if let Err(e) = me.deps.store.prune(retention, now_ms()).await {
                            warn!(error = %e, "pruning stored events failed");
                        }
                    }
                    _ = stop.cancelled() => return,
                    _ = reap.tick() => me.reap().await,
                    _ = flush.tick() => me.flush_activity().await,
                    _ = idle.tick() => me.reap_idle_upstreams().await,
                }
            }
        });
    }

    async fn reap(&self) {
        let closed: Vec<String> = self.read().iter().filter(|(_, s)| s.is_closed()).map(|(id, _)| id.clone()).collect();
        for id in closed {
            self.forget_closed(&id);
        }
        for id in self.expired_live() {
            self.close(&id, CloseReason::Expired).await;
        }
        if self.dormant.load(Ordering::Acquire) > 0 {
            // Stored sessions that expire without coming back stop counting.
            let since = now_ms().saturating_sub(self.deps.config.ttl.as_millis() as u64);
            match self.deps.store.count_open(since).await {
                Ok(n) => {
                    self.recount_dormant(usize::try_from(n).unwrap_or(usize::MAX));
                }
                Err(e) => warn!(error = %e, "counting stored sessions failed"),
            }
        }
    }

    /// Releases upstream bindings unused for `upstream_idle`; their sessions stay, and the next
    /// use revives them. A session with a request in flight or an open standalone stream keeps
    /// its binding: the client is waiting for what the server may send.
    pub async fn reap_idle_upstreams(&self) {
        use futures_util::StreamExt;
        let idle = self.deps.config.upstream_idle;
        let sessions: Vec<SessionHandle> = self.read().values().filter(|s| s.upstream_alive()).cloned().collect();
        // Closed side by side (a child's close waits for its exit): after a burst of sessions,
        // one at a time could not keep up with the children the next burst starts.
        futures_util::stream::iter(sessions)
            .for_each_concurrent(REAP_AT_ONCE, |s| async move {
                if s.release_if_idle(idle).await {
                    info!(session_id = %s.id(), upstream = self.deps.spec.kind(), idle_s = idle.as_secs(), "idle upstream released");
                    self.deps.stats.upstream_reaped.inc();
                }
            })
            .await;
        self.hibernate_idle().await;
    }

    /// Hibernates the sessions that have had no binding, stream or request for
    /// `hibernate_after`: their tasks end, their records wait in the store, and the next
    /// request wakes them (as after a restart, without a 404). A session someone holds (a
    /// request, a stream, the bridge, a 2026-07-28 binding) stays.
    pub async fn hibernate_idle(&self) {
        let after = self.deps.config.hibernate_after;
        let after_ms = after.as_millis() as u64;
        let now = now_ms();
        let candidates: Vec<SessionHandle> = self
            .read()
            .values()
            .filter(|s| !s.upstream_alive() && !s.has_standalone() && now.saturating_sub(s.last_active()) >= after_ms)
            .cloned()
            .collect();
        for s in candidates {
            let Some((activity, decide)) = s.hibernate(after).await else { continue };
            // Decided under the map's lock, while the session's task waits: nobody else holds
            // the session (the map, this list and its task do) and nothing waits in its inbox,
            // so once it is out of the map nothing can reach it.
            let commit = {
                let mut live = self.write();
                let ours = live.get(s.id()).is_some_and(|h| h.is(&s));
                let alone = ours && s.holders() == 3 && s.inbox_is_empty();
                if alone {
                    live.remove(s.id());
                }
                alone
            };
            let _ = decide.send(commit);
            if !commit {
                continue;
            }
            if (activity.requests > 0 || activity.last_active > 0)
                && let Err(e) = self.deps.store.touch(s.id(), activity).await
            {
                warn!(session_id = %s.id(), error = %e, "writing a hibernating session's activity failed");
            }
            lock(&self.hibernated).insert(s.id().to_owned());
            self.dormant.fetch_add(1, Ordering::AcqRel);
            self.deps.stats.sessions_hibernated.inc();
            debug!(session_id = %s.id(), "session hibernated");
        }
    }

    /// Writes the activity gathered since the last call.
    pub async fn flush_activity(&self) {
        // The stored record of a session held by an open stream is kept fresh (every half TTL),
        // so that it is not taken for expired after a restart.
        let refresh_ms = (self.deps.config.ttl.as_millis() / 2) as u64;
        let mut batch = Vec::new();
        for s in self.live() {
            if let Some(a) = s.take_activity(refresh_ms).await {
                batch.push((s.id().to_owned(), a));
            }
        }
        // In chunks: one write (one commit on SQLite) each, small enough not to hold the store.
        for chunk in batch.chunks(ACTIVITY_CHUNK) {
            if let Err(e) = self.deps.store.touch_many(chunk).await {
                warn!(sessions = chunk.len(), error = %e, "writing session activity failed");
            }
        }
        if let Err(e) = self.deps.store.flush().await {
            warn!(error = %e, "flushing the session store failed");
        }
    }

    /// Gateway shutdown: every upstream closes, but sessions stay valid in the store for the
    /// next start.
    pub async fn shutdown(&self) {
        self.drain();
        self.stopping.cancel();
        self.flush_activity().await;
        let sessions = self.live();
        let closes = sessions.iter().map(SessionHandle::release_upstream);
        futures_util::future::join_all(closes).await;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, SessionHandle>> {
        self.sessions.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, SessionHandle>> {
        self.sessions.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Session ids tether issues are 32 hex digits; anything else is not worth a store lookup.
fn looks_like_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Locks a std mutex of the manager's, recovering from poisoning (every critical section
/// leaves the set consistent).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
