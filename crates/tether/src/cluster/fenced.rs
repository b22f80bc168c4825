//! The session layer's writes in cluster mode: an event append or a state write of a session
//! carries the epoch of this replica's lease, and the store makes it only while that lease is
//! the session's current, unexpired one (checked in the same atomic write). A replica that
//! lost a session — stalled past its lease, cut off, taken over — cannot overwrite what the new
//! owner writes: its write is refused, logged and counted (`tether_cluster_fenced_writes`).
//! Everything else goes to the store as it came.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::warn;

use super::Leases;
use crate::session::record::{CloseReason, SessionRecord, SessionState};
use crate::session::store::{Activity, EventStore, RecordFilter, Replay, Retention, SessionStore, Store, StoreError};
use crate::stats::Stats;
use crate::store::cluster::ClusterStore;

/// Fences the writes of `inner` by the leases held here.
pub struct FencedStore {
    inner: Arc<dyn Store>,
    cluster: Arc<dyn ClusterStore>,
    leases: Leases,
    stats: Arc<Stats>,
}

impl FencedStore {
    /// Wraps `inner`; fenced writes go through `cluster` (the same store's cluster side).
    pub fn wrap(
        inner: Arc<dyn Store>,
        cluster: Arc<dyn ClusterStore>,
        leases: Leases,
        stats: Arc<Stats>,
    ) -> Arc<dyn Store> {
        Arc::new(FencedStore { inner, cluster, leases, stats })
    }

    /// The epoch to write `session` with, or the refusal when this replica holds no lease.
    fn epoch(&self, session: &str) -> Result<u64, StoreError> {
        self.leases.epoch(session).ok_or_else(|| self.refused(session, 0))
    }

    fn refused(&self, session: &str, epoch: u64) -> StoreError {
        self.stats.cluster.fenced_writes.inc();
        warn!(session_id = %session, epoch, "a write of a session this replica no longer owns was refused");
        StoreError::Fenced { session: session.to_owned(), epoch }
    }

    fn counted(&self, r: Result<(), StoreError>) -> Result<(), StoreError> {
        match r {
            Err(StoreError::Fenced { session, epoch }) => Err(self.refused(&session, epoch)),
            other => other,
        }
    }
}

#[async_trait]
impl SessionStore for FencedStore {
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.inner.create(record).await
    }

    async fn set_handshake(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.inner.set_handshake(record).await
    }

    async fn set_state(&self, id: &str, state: &SessionState) -> Result<(), StoreError> {
        let epoch = self.epoch(id)?;
        self.counted(self.cluster.set_state_fenced(id, state, epoch).await)
    }

    async fn touch(&self, id: &str, activity: Activity) -> Result<(), StoreError> {
        self.inner.touch(id, activity).await
    }

    async fn touch_many(&self, batch: &[(String, Activity)]) -> Result<(), StoreError> {
        self.inner.touch_many(batch).await
    }

    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.inner.get(id).await
    }

    async fn close(&self, id: &str, at: u64, reason: CloseReason) -> Result<(), StoreError> {
        self.inner.close(id, at, reason).await
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
        self.inner.flush().await
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
impl EventStore for FencedStore {
    async fn append(&self, session: &str, stream: &str, seq: u64, data: &[u8], fin: bool) -> Result<(), StoreError> {
        let epoch = self.epoch(session)?;
        self.counted(self.cluster.append_fenced(session, stream, seq, data, fin, None, epoch).await)
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
        let epoch = self.epoch(session)?;
        self.counted(self.cluster.append_fenced(session, stream, seq, data, fin, Some(evict), epoch).await)
    }

    async fn replay(&self, session: &str, stream: &str, after_seq: u64, limit: usize) -> Result<Replay, StoreError> {
        self.inner.replay(session, stream, after_seq, limit).await
    }

    async fn prune(&self, retention: Retention, now_ms: u64) -> Result<u64, StoreError> {
        self.inner.prune(retention, now_ms).await
    }

    async fn forget(&self, session: &str) -> Result<(), StoreError> {
        self.inner.forget(session).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::cluster::{Claim, ReplicaId};
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn a_replica_that_lost_the_lease_cannot_write() {
        let store = Arc::new(MemoryStore::new());
        let stats = Arc::new(Stats::default());
        let (a, b) = (ReplicaId::new("a"), ReplicaId::new("b"));
        let s = "0123456789abcdef0123456789abcdef";
        store
            .create(&SessionRecord {
                id: s.into(),
                ..SessionRecord::new(crate::session::record::Transport::StreamableHttp)
            })
            .await
            .expect("create");
        let leases = Leases::default();
        let fenced = FencedStore::wrap(store.clone(), store.clone(), leases.clone(), stats.clone());

        assert!(
            matches!(fenced.append(s, "i.1", 1, b"{}", false).await, Err(StoreError::Fenced { .. })),
            "no lease, no write"
        );
        let Ok(Claim::Won { epoch }) = store.claim(s, &a, Duration::from_secs(30)).await else { panic!("a claims") };
        leases.0.lock().expect("lock").insert(
            s.into(),
            super::super::Held { epoch, since: tokio::time::Instant::now(), claimed: tokio::time::Instant::now() },
        );
        fenced.append(s, "i.1", 1, b"{}", false).await.expect("the owner writes");
        fenced.set_state(s, &SessionState::default()).await.expect("the owner writes its state");

        // a's lease is given up and b takes the session: a's next writes are refused.
        assert!(store.release(s, &a).await.expect("release"));
        assert!(matches!(store.claim(s, &b, Duration::from_secs(30)).await, Ok(Claim::Won { .. })));
        assert!(matches!(fenced.append(s, "i.1", 2, b"{}", false).await, Err(StoreError::Fenced { .. })));
        assert!(matches!(fenced.set_state(s, &SessionState::default()).await, Err(StoreError::Fenced { .. })));
        assert_eq!(stats.cluster.fenced_writes.get(), 3);
        match store.replay(s, "i.1", 0, 10).await.expect("replay") {
            Replay::Events(e) => assert_eq!(e.len(), 1, "only the owner's event"),
            Replay::Gone => panic!("the stream is there"),
        }
    }
}
