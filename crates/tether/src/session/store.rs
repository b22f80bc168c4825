//! What the session layer needs from persistence: [`SessionStore`] for records and
//! [`EventStore`] for the SSE events clients may resume from. Backends live in `crate::store`
//! and pass one contract suite (`tests/store_contract.rs`).
//!
//! Creating a record and changing its state are written synchronously; activity (last_active,
//! counters) may be written behind by a backend that batches. An event may be sent before it is
//! committed: a backend with a commit window commits it within that window, and reads after an
//! append see it.

use async_trait::async_trait;

use super::record::{CloseReason, SessionRecord, SessionState};

/// A store failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (or cannot be reached): a 503 with `Retry-After`, never a 404.
    #[error("session store: {0}")]
    Backend(String),
    /// A write carried a fencing epoch that is no longer the session's current lease (another
    /// replica took the session over, or this one's lease expired): the write was not made.
    #[error("session store: stale fencing epoch {epoch} for session {session}")]
    Fenced {
        /// The session.
        session: String,
        /// The epoch the write carried.
        epoch: u64,
    },
}

/// Which records [`SessionStore::list`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFilter {
    /// Not closed.
    Open,
    /// Closed (by the client, an operator, the TTL or a failure).
    Closed,
    /// Both.
    All,
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
    /// Adds the activity of several sessions (the activity writer's batch). Backends that commit
    /// write it in one transaction instead of one each; this default touches them in turn,
    /// every one even when one fails, and returns the first error.
    async fn touch_many(&self, batch: &[(String, Activity)]) -> Result<(), StoreError> {
        let mut first = Ok(());
        for (id, a) in batch {
            if let Err(e) = self.touch(id, *a).await
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
    /// Loads a record, closed or not.
    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Marks a record closed.
    async fn close(&self, id: &str, at: u64, reason: CloseReason) -> Result<(), StoreError>;
    /// Open records, oldest first, after `after` (an id) for paging.
    async fn list_open(&self, after: Option<&str>, limit: usize) -> Result<Vec<SessionRecord>, StoreError>;
    /// Records in `filter`, oldest first (by creation, then id), after the record `after` (an
    /// id of any record) for paging. Backends that keep closed records override this; the
    /// default lists open ones only.
    async fn list(
        &self,
        filter: RecordFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        match filter {
            RecordFilter::Open => self.list_open(after, limit).await,
            RecordFilter::Closed | RecordFilter::All => {
                Err(StoreError::Backend(format!("the {} store cannot list closed sessions", self.name())))
            }
        }
    }
    /// How many records are open and were active at or after `active_since` (Unix ms).
    async fn count_open(&self, active_since: u64) -> Result<u64, StoreError>;
    /// Flushes anything written behind.
    async fn flush(&self) -> Result<(), StoreError>;
    /// Commits everything pending and releases the backend (SQLite: checkpoints and closes the
    /// file, leaving no `-wal`). Calls after it fail. The default flushes.
    async fn shutdown(&self) -> Result<(), StoreError> {
        self.flush().await
    }
    /// Checks that the backend answers (readiness).
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// A short name for logs.
    fn name(&self) -> &'static str;
}

/// One stored SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its position in the stream.
    pub seq: u64,
    /// The JSON-RPC message.
    pub data: bytes::Bytes,
    /// Whether it answered the request its stream was opened for.
    pub fin: bool,
}

/// What a replay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// The events after the cursor, oldest first (possibly none).
    Events(Vec<StoredEvent>),
    /// The cursor is unknown or older than retention: resume from now.
    Gone,
}

/// Retention limits for stored events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events kept per stream.
    pub per_stream: usize,
    /// Events older than this many milliseconds are dropped.
    pub max_age_ms: u64,
    /// Answered request streams kept per session for resumption: when one more is answered,
    /// the oldest one's events go. A busy session would otherwise keep every answer it was
    /// ever sent for `max_age_ms`.
    pub finished_streams: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { per_stream: 1000, max_age_ms: 3_600_000, finished_streams: 32 }
    }
}

/// Persistence of SSE events for `Last-Event-ID` resumption.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Stores one event of `stream` in `session`. `seq` is unique in the stream and rises. The
    /// event may be sent once this returns; it is committed by then, or, with a commit window,
    /// within the window (a crash may lose the window's events). Replays after this returns
    /// include it.
    async fn append(&self, session: &str, stream: &str, seq: u64, data: &[u8], fin: bool) -> Result<(), StoreError>;
    /// Like [`append`](EventStore::append), and drops every event of `evict`, a stream of the
    /// same session that fell out of retention: once this returns its replay is
    /// [`Replay::Gone`]. A backend may delete its rows later, with others (SQLite: in batches).
    async fn append_evicting(
        &self,
        session: &str,
        stream: &str,
        seq: u64,
        data: &[u8],
        fin: bool,
        evict: &str,
    ) -> Result<(), StoreError>;
    /// The events of `stream` after `after_seq`, at most `limit`; [`Replay::Gone`] when the
    /// stream is unknown or `after_seq` is older than what is retained.
    async fn replay(&self, session: &str, stream: &str, after_seq: u64, limit: usize) -> Result<Replay, StoreError>;
    /// Drops events beyond retention.
    async fn prune(&self, retention: Retention, now_ms: u64) -> Result<u64, StoreError>;
    /// Drops every event of a session.
    async fn forget(&self, session: &str) -> Result<(), StoreError>;
}

/// A backend that keeps both records and events.
pub trait Store: SessionStore + EventStore {}

impl<T: SessionStore + EventStore> Store for T {}
