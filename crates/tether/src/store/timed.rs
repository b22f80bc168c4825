//! A store wrapper that times every write ([`StoreOp`]) and counts replayed events, for
//! `/metrics`. It changes no behaviour: every call goes to the inner store as it came.

use std::future::Future;
use std::sync::Arc;
use tokio::time::Instant;

use async_trait::async_trait;

use crate::session::record::{CloseReason, SessionRecord, SessionState};
use crate::session::store::{Activity, EventStore, RecordFilter, Replay, Retention, SessionStore, Store, StoreError};
use crate::stats::{Stats, StoreOp};

/// Times the writes of `inner`.
pub struct TimedStore {
    inner: Arc<dyn Store>,
    stats: Arc<Stats>,
}

impl TimedStore {
    /// Wraps `inner`, recording into `stats`.
    pub fn wrap(inner: Arc<dyn Store>, stats: Arc<Stats>) -> Arc<dyn Store> {
        Arc::new(TimedStore { inner, stats })
    }

    async fn timed<T>(&self, op: StoreOp, f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let started = Instant::now();
        let r = f.await;
        self.stats.store.record(op, started.elapsed(), r.is_ok());
        r
    }
}

#[async_trait]
impl SessionStore for TimedStore {
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.timed(StoreOp::Create, self.inner.create(record)).await
    }

    async fn set_handshake(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.timed(StoreOp::Handshake, self.inner.set_handshake(record)).await
    }

    async fn set_state(&self, id: &str, state: &SessionState) -> Result<(), StoreError> {
        self.timed(StoreOp::State, self.inner.set_state(id, state)).await
    }

    async fn touch(&self, id: &str, activity: Activity) -> Result<(), StoreError> {
        self.timed(StoreOp::Touch, self.inner.touch(id, activity)).await
    }

    async fn touch_many(&self, batch: &[(String, Activity)]) -> Result<(), StoreError> {
        self.timed(StoreOp::Touch, self.inner.touch_many(batch)).await
    }

    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.inner.get(id).await
    }

    async fn close(&self, id: &str, at: u64, reason: CloseReason) -> Result<(), StoreError> {
        self.timed(StoreOp::Close, self.inner.close(id, at, reason)).await
    }

    async fn list_open(&self, after: Option<&str>, limit: usize) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.list_open(after, limit).await
    }

    async fn list(
        &self,
        filter: RecordFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.list(filter, after, limit).await
    }

    async fn count_open(&self, active_since: u64) -> Result<u64, StoreError> {
        self.inner.count_open(active_since).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.timed(StoreOp::Flush, self.inner.flush()).await
    }

    async fn shutdown(&self) -> Result<(), StoreError> {
        self.inner.shutdown().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

#[async_trait]
impl EventStore for TimedStore {
    async fn append(&self, session: &str, stream: &str, seq: u64, data: &[u8], fin: bool) -> Result<(), StoreError> {
        self.timed(StoreOp::EventAppend, self.inner.append(session, stream, seq, data, fin)).await
    }

    async fn append_evicting(
        &self,
        session: &str,
        stream: &str,
        seq: u64,
        data: &[u8],
        fin: bool,
        evict: &str,
    ) -> Result<(), StoreError> {
        self.timed(StoreOp::EventAppend, self.inner.append_evicting(session, stream, seq, data, fin, evict)).await
    }

    async fn replay(&self, session: &str, stream: &str, after_seq: u64, limit: usize) -> Result<Replay, StoreError> {
        let r = self.inner.replay(session, stream, after_seq, limit).await;
        if let Ok(Replay::Events(events)) = &r {
            self.stats.events_replayed.inc_by(events.len() as u64);
        }
        r
    }

    async fn prune(&self, retention: Retention, now_ms: u64) -> Result<u64, StoreError> {
        self.timed(StoreOp::EventPrune, self.inner.prune(retention, now_ms)).await
    }

    async fn forget(&self, session: &str) -> Result<(), StoreError> {
        self.timed(StoreOp::EventForget, self.inner.forget(session)).await
    }
}
