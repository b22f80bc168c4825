//! Where session records live: the [`SessionStore`] trait and the in-memory store.
//!
//! Creating a record and changing its state are written synchronously; activity (last_active,
//! counters) may be written behind by a backend that batches. Durable backends (SQLite, then
//! Redis and Postgres) implement the same trait and pass the same contract tests.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::record::{CloseReason, SessionRecord, SessionState};

/// A store failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend failed.
    #[error("session store: {0}")]
    Backend(String),
}

/// Activity to record for a session, written behind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Activity {
    /// Unix milliseconds of the latest activity.
    pub last_active: u64,
    /// Requests served since the last write.
    pub requests: u64,
    /// `tools/call` requests since the last write.
    pub tool_calls: u64,
}

/// Persistence of session records.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a new record.
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError>;
    /// Records the outcome of the handshake: version, the client's params, the upstream result.
    async fn set_handshake(&self, record: &SessionRecord) -> Result<(), StoreError>;
    /// Replaces the replayable state.
    async fn set_state(&self, id: &str, state: &SessionState) -> Result<(), StoreError>;
    /// Adds activity (may be batched by the backend).
    async fn touch(&self, id: &str, activity: Activity) -> Result<(), StoreError>;
    /// Loads a record, closed or not.
    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Marks a record closed.
    async fn close(&self, id: &str, at: u64, reason: CloseReason) -> Result<(), StoreError>;
    /// Open records, oldest first, after `after` (an id) for paging.
    async fn list_open(&self, after: Option<&str>, limit: usize) -> Result<Vec<SessionRecord>, StoreError>;
    /// Flushes anything written behind.
    async fn flush(&self) -> Result<(), StoreError>;
    /// A short name for logs.
    fn name(&self) -> &'static str;
}

/// Records in process memory: lost with the process.
#[derive(Default)]
pub struct MemoryStore {
    records: Mutex<HashMap<String, SessionRecord>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, SessionRecord>) -> T) -> Result<T, StoreError> {
        let mut g = self.records.lock().map_err(|_| StoreError::Backend("poisoned".into()))?;
        Ok(f(&mut g))
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.with(|m| {
            m.insert(record.id.clone(), record.clone());
        })
    }

    async fn set_handshake(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.with(|m| {
            if let Some(r) = m.get_mut(&record.id) {
                r.protocol_version.clone_from(&record.protocol_version);
                r.client_init.clone_from(&record.client_init);
                r.upstream_init.clone_from(&record.upstream_init);
            }
        })
    }

    async fn set_state(&self, id: &str, state: &SessionState) -> Result<(), StoreError> {
        self.with(|m| {
            if let Some(r) = m.get_mut(id) {
                r.state = state.clone();
            }
        })
    }

    async fn touch(&self, id: &str, a: Activity) -> Result<(), StoreError> {
        self.with(|m| {
            if let Some(r) = m.get_mut(id) {
                r.last_active = r.last_active.max(a.last_active);
                r.requests += a.requests;
                r.tool_calls += a.tool_calls;
            }
        })
    }

    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.with(|m| m.get(id).cloned())
    }

    async fn close(&self, id: &str, at: u64, reason: CloseReason) -> Result<(), StoreError> {
        self.with(|m| {
            if let Some(r) = m.get_mut(id)
                && r.closed_at.is_none()
            {
                r.closed_at = Some(at);
                r.close_reason = Some(reason);
            }
        })
    }

    async fn list_open(&self, after: Option<&str>, limit: usize) -> Result<Vec<SessionRecord>, StoreError> {
        self.with(|m| {
            let mut open: Vec<_> = m.values().filter(|r| r.closed_at.is_none()).cloned().collect();
            open.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            let start = match after {
                Some(a) => open.iter().position(|r| r.id == a).map_or(0, |i| i + 1),
                None => 0,
            };
            open.into_iter().skip(start).take(limit).collect()
        })
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
