//! The default backend: one SQLite file in WAL mode, inspectable with `sqlite3`.
//!
//! Writes are group-committed (`group_commit.rs`): records and state changes are committed
//! before their caller hears back, many callers sharing one commit; SSE events are committed
//! within the commit window after they were handed over (`--event-commit-window`; `0` commits
//! each before it is sent). Checkpoints (copying the WAL into the database, with its fsyncs)
//! run on a second connection in a thread of their own, so a commit never waits for one.
//! [`SessionStore::shutdown`] commits what waits, checkpoints and closes the file, so a clean
//! stop leaves no `-wal` beside it. The schema is versioned with `PRAGMA user_version`; a file
//! from a newer tether, a corrupt file or an unreadable one stops startup with an error naming
//! the file and the fix.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

pub use super::group_commit::EVICT_BATCH;
use super::group_commit::{DeferError, EventRow, Job, Shared, lock};
use crate::session::record::{CloseReason, SessionRecord, SessionState, Transport, intern};
use crate::session::store::{
    Activity, EventStore, RecordFilter, Replay, Retention, SessionStore, StoreError, StoredEvent,
};

/// Schema migrations; entry `i` takes the file from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE sessions (
        id               TEXT PRIMARY KEY,
        transport        TEXT NOT NULL,
        protocol_version TEXT,
        client_init      TEXT,
        upstream_init    TEXT,
        state            TEXT NOT NULL,
        principal        TEXT,
        created_at       INTEGER NOT NULL,
        last_active      INTEGER NOT NULL,
        requests         INTEGER NOT NULL DEFAULT 0,
        tool_calls       INTEGER NOT NULL DEFAULT 0,
        closed_at        INTEGER,
        close_reason     TEXT
    );
    CREATE INDEX sessions_open ON sessions (closed_at, created_at, id);
    CREATE TABLE events (
        session_id TEXT NOT NULL,
        stream     TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        data       BLOB NOT NULL,
        fin        INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (session_id, stream, seq)
    ) WITHOUT ROWID;
    CREATE INDEX events_age ON events (created_at);
    CREATE TABLE event_floors (
        session_id TEXT NOT NULL,
        stream     TEXT NOT NULL,
        floor      INTEGER NOT NULL,
        PRIMARY KEY (session_id, stream)
    ) WITHOUT ROWID;
",
    "
    -- Kept up on every insert and eviction for prune's age cut alone, which scans the table
    -- anyway (its per-stream cap does): a third of the time per event in a bare-loop replay.
    DROP INDEX IF EXISTS events_age;
",
    "
    -- Events ordered by stream first: stream keys rise with time across sessions, so a commit's
    -- new rows share a few pages at the end of the table instead of dirtying a page per session
    -- (each dirty page is a 4 KiB WAL frame: with 100 busy sessions, writing them was 40 % of
    -- the commit thread's time). A session's rows are deleted in batches (`forget`).
    CREATE TABLE events_by_stream (
        session_id TEXT NOT NULL,
        stream     TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        data       BLOB NOT NULL,
        fin        INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (stream, session_id, seq)
    ) WITHOUT ROWID;
    INSERT INTO events_by_stream SELECT session_id, stream, seq, data, fin, created_at FROM events;
    DROP TABLE events;
    ALTER TABLE events_by_stream RENAME TO events;
",
];

/// Adds a session's activity (`touch`, `touch_many`).
const TOUCH: &str = "UPDATE sessions SET last_active = MAX(last_active, ?2), requests = requests + ?3,
     tool_calls = tool_calls + ?4 WHERE id = ?1";

/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// WAL pages after which a commit checkpoints by itself: a backstop should the checkpointer
/// fall behind (SQLite's own default is 1000).
const AUTOCHECKPOINT_BACKSTOP: u32 = 16_000;

/// Cached prepared statements on the main connection (the store runs about 25 distinct ones).
const STATEMENT_CACHE: usize = 64;

/// The SQLite backend.
pub struct SqliteStore {
    shared: Arc<Shared>,
    path: PathBuf,
    /// The checkpointer and the committer: told to stop (the sender dropped, the store
    /// closed), then joined, so that the file is closed last by the main connection.
    threads: Mutex<Option<Threads>>,
}

struct Threads {
    stop_checkpointer: mpsc::Sender<()>,
    checkpointer: std::thread::JoinHandle<()>,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the file, checks it, migrates it, and starts the
    /// checkpointer. Every event is committed before it is sent (window 0).
    pub async fn open(path: &Path) -> anyhow::Result<SqliteStore> {
        SqliteStore::open_with_window(path, Duration::ZERO).await
    }

    /// Like [`SqliteStore::open`], with events committed within `window` after they are handed
    /// over (and sent); zero commits each before it is sent.
    pub async fn open_with_window(path: &Path, window: Duration) -> anyhow::Result<SqliteStore> {
        let path = path.to_owned();
        let p2 = path.clone();
        let conn = tokio::task::spawn_blocking(move || prepare(&p2)).await.context("opening the session store")??;
        let shared = Shared::new(conn, window);
        let (stop, stopped) = mpsc::channel::<()>();
        let p3 = path.clone();
        let checkpointer = std::thread::Builder::new()
            .name("tether-sqlite-ckpt".into())
            .spawn(move || checkpointer(&p3, stopped))
            .context("starting the session store checkpointer")?;
        let committer = if window.is_zero() {
            None
        } else {
            let s = shared.clone();
            Some(
                std::thread::Builder::new()
                    .name("tether-sqlite-commit".into())
                    .spawn(move || s.run_committer())
                    .context("starting the session store committer")?,
            )
        };
        let threads = Threads { stop_checkpointer: stop, checkpointer, committer };
        Ok(SqliteStore { shared, path, threads: Mutex::new(Some(threads)) })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The commit window of events.
    pub fn commit_window(&self) -> Duration {
        self.shared.window()
    }

    fn job<T: Send + 'static>(
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> (Job, oneshot::Receiver<Result<T, StoreError>>) {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let r = f(conn).map_err(backend);
            Box::new(move |commit: Result<(), StoreError>| {
                let _ = tx.send(commit.and(r));
            })
        });
        (job, rx)
    }

    /// Stores one event, deferred to the commit window when there is one, else committed before
    /// this returns; `evict` is gone to a replay from now on, its rows deleted in a batch.
    async fn append_event(
        &self,
        session: &str,
        stream: &str,
        seq: u64,
        data: &[u8],
        fin: bool,
        evict: Option<&str>,
    ) -> Result<(), StoreError> {
        if let Some(old) = evict {
            self.shared.evict(session, old);
        }
        let row = EventRow {
            session: session.to_owned(),
            stream: stream.to_owned(),
            seq,
            data: data.to_vec(),
            fin,
            created_at: crate::session::record::now_ms() as i64,
        };
        if self.shared.window().is_zero() {
            return self.call(move |c| row.insert(c)).await;
        }
        match self.shared.defer(row).map_err(|b| *b) {
            Ok(()) => Ok(()),
            Err((_, DeferError::Closed)) => Err(closed()),
            // Backpressure: this one commits before it returns, and takes the waiting ones along.
            Err((row, DeferError::Full)) => self.call(move |c| row.insert(c)).await,
        }
    }

    /// Runs a short job (a few rows), committed when this returns.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (job, rx) = Self::job(f);
        self.shared.submit(job);
        rx.await.map_err(|_| closed())?
    }

    /// Runs a job that may touch many rows on a blocking thread, waiting for the connection.
    async fn call_heavy<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call_blocking(f, false).await
    }

    /// [`SqliteStore::call_heavy`]; with `sweep`, the rows of every evicted stream and
    /// forgotten session go in the same transaction.
    async fn call_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        sweep: bool,
    ) -> Result<T, StoreError> {
        let (job, rx) = Self::job(f);
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.run_blocking(job, sweep))
            .await
            .map_err(|e| StoreError::Backend(format!("the session store job failed: {e}")))?;
        rx.await.map_err(|_| closed())?
    }

    /// Commits what waits, stops the threads, checkpoints and closes the file (the last
    /// connection to close removes the `-wal` and `-shm` files). Blocking; runs once.
    fn close_blocking(&self) -> Result<(), StoreError> {
        let Some(threads) = lock(&self.threads).take() else { return Ok(()) };
        // The checkpointer's connection closes first, so that the main one is the last.
        drop(threads.stop_checkpointer);
        let _ = threads.checkpointer.join();
        let conn = self.shared.close();
        if let Some(c) = threads.committer {
            let _ = c.join();
        }
        let Some(conn) = conn else { return Ok(()) };
        let checkpoint = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(backend);
        conn.close().map_err(|(_, e)| backend(e))?;
        checkpoint
    }
}

impl Drop for SqliteStore {
    /// A store dropped without [`SessionStore::shutdown`] still commits what waits and closes.
    fn drop(&mut self) {
        if let Err(e) = self.close_blocking() {
            tracing::warn!(error = %e, "closing the session store failed");
        }
    }
}

/// What a caller hears once the store is closed (or, should it happen, a job was dropped).
fn closed() -> StoreError {
    StoreError::Backend("the session store is closed".into())
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Opens, checks and migrates the file.
fn prepare(path: &Path) -> anyhow::Result<Connection> {
    let shown = path.display();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the directory of the session store {shown}; choose another path with --store sqlite://PATH"))?;
    }
    let fix = format!(
        "move it aside (mv {shown} {shown}.broken) to start with an empty store, or point --store at another file"
    );
    let conn = Connection::open(path)
        .with_context(|| format!("cannot open the session store {shown}: check its permissions, or {fix}"))?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .with_context(|| format!("the session store {shown} is not a readable SQLite database; {fix}"))?;
    if check != "ok" {
        anyhow::bail!("the session store {shown} is corrupt ({check}); {fix}");
    }
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; \
         PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_BACKSTOP};"
    ))
    .with_context(|| format!("cannot configure the session store {shown}; {fix}"))?;
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        anyhow::bail!(
            "the session store {shown} has schema version {version}, newer than this tether understands ({}); run a newer tether or {fix}",
            MIGRATIONS.len()
        );
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
        conn.execute_batch(&format!("BEGIN; {m} PRAGMA user_version = {}; COMMIT;", i + 1))
            .with_context(|| format!("migrating the session store {shown} to version {}", i + 1))?;
    }
    // Room for every statement the store runs (rusqlite keeps 16): one evicted from the cache
    // is parsed again on its next use.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Copies the WAL into the database every [`CHECKPOINT_EVERY`] until the store is dropped.
/// PASSIVE: it never blocks the writer, and what it cannot copy now waits for the next round.
fn checkpointer(path: &Path, stop: mpsc::Receiver<()>) {
    let conn = match Connection::open(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "the session store checkpointer could not open the file; commits checkpoint by themselves");
            return;
        }
    };
    let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "checkpoint failed; retrying next round");
        }
    }
}

/// Runs a statement from the connection's statement cache: the per-request ones are parsed
/// once, not on every call.
fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// Reads one row with a cached statement.
fn row<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(p, f)
}

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    let json_err = |e: serde_json::Error| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
    let raw = |s: Option<String>| -> rusqlite::Result<Option<std::sync::Arc<serde_json::value::RawValue>>> {
        s.map(|t| serde_json::value::RawValue::from_string(t).map_err(json_err).map(|v| intern(&v))).transpose()
    };
    let transport: String = r.get("transport")?;
    let state: String = r.get("state")?;
    let reason: Option<String> = r.get("close_reason")?;
    Ok(SessionRecord {
        id: r.get("id")?,
        transport: Transport::from_label(&transport),
        protocol_version: r.get("protocol_version")?,
        client_init: raw(r.get("client_init")?)?,
        upstream_init: raw(r.get("upstream_init")?)?,
        state: serde_json::from_str::<SessionState>(&state).map_err(json_err)?,
        principal: r.get("principal")?,
        created_at: r.get::<_, i64>("created_at")? as u64,
        last_active: r.get::<_, i64>("last_active")? as u64,
        requests: r.get::<_, i64>("requests")? as u64,
        tool_calls: r.get::<_, i64>("tool_calls")? as u64,
        closed_at: r.get::<_, Option<i64>>("closed_at")?.map(|v| v as u64),
        close_reason: reason.and_then(|s| serde_json::from_value(serde_json::Value::String(s)).ok()),
    })
}

fn state_json(state: &SessionState) -> String {
    serde_json::to_string(state).unwrap_or_else(|_| "{}".into())
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.call(move |c| {
            exec(
                c,
                "INSERT INTO sessions (id, transport, protocol_version, client_init, upstream_init, state, principal,
                     created_at, last_active, requests, tool_calls, closed_at, close_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    r.id,
                    r.transport.as_str(),
                    r.protocol_version,
                    r.client_init.as_ref().map(|v| v.get()),
                    r.upstream_init.as_ref().map(|v| v.get()),
                    state_json(&r.state),
                    r.principal,
                    r.created_at as i64,
                    r.last_active as i64,
                    r.requests as i64,
                    r.tool_calls as i64,
                    r.closed_at.map(|v| v as i64),
                    r.close_reason.map(CloseReason::as_str),
                ],
            )
            .map(drop)
        })
        .await
    }

    async fn set_handshake(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.call(move |c| {
            exec(
                c,
                "UPDATE sessions SET protocol_version = ?2, client_init = ?3, upstream_init = ?4 WHERE id = ?1",
                params![
                    r.id,
                    r.protocol_version,
                    r.client_init.as_ref().map(|v| v.get()),
                    r.upstream_init.as_ref().map(|v| v.get())
                ],
            )
            .map(drop)
        })
        .await
    }

    async fn set_state(&self, id: &str, state: &SessionState) -> Result<(), StoreError> {
        let (id, state) = (id.to_owned(), state_json(state));
        self.call(move |c| exec(c, "UPDATE sessions SET state = ?2 WHERE id = ?1", params![id, state]).map(drop)).await
    }

    async fn touch(&self, id: &str, a: Activity) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            exec(c, TOUCH, params![id, a.last_active as i64, a.requests as i64, a.tool_calls as i64]).map(drop)
        })
        .await
    }

    async fn touch_many(&self, batch: &[(String, Activity)]) -> Result<(), StoreError> {
        // A job of many rows, run where it may block; one commit for the whole batch (a touch
        // each was a commit each: a hundred busy sessions made a hundred commits a second).
        let batch = batch.to_vec();
        self.call_heavy(move |c| {
            let mut st = c.prepare_cached(TOUCH)?;
            for (id, a) in &batch {
                st.execute(params![id, a.last_active as i64, a.requests as i64, a.tool_calls as i64])?;
            }
            Ok(())
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| row(c, "SELECT * FROM sessions WHERE id = ?1", [id], record_from_row).optional()).await
    }

    async fn close(&self, id: &str, at: u64, reason: CloseReason) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            exec(
                c,
                "UPDATE sessions SET closed_at = ?2, close_reason = ?3 WHERE id = ?1 AND closed_at IS NULL",
                params![id, at as i64, reason.as_str()],
            )
            .map(drop)
        })
        .await
    }

    async fn list_open(&self, after: Option<&str>, limit: usize) -> Result<Vec<SessionRecord>, StoreError> {
        self.list(RecordFilter::Open, after, limit).await
    }

    async fn list(
        &self,
        filter: RecordFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let after = after.map(str::to_owned);
        self.call_heavy(move |c| {
            let (created, id) = match &after {
                Some(a) => c
                    .query_row("SELECT created_at, id FROM sessions WHERE id = ?1", [a], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                    })
                    .optional()?
                    .unwrap_or((i64::MIN, String::new())),
                None => (i64::MIN, String::new()),
            };
            let state = match filter {
                RecordFilter::Open => "closed_at IS NULL AND",
                RecordFilter::Closed => "closed_at IS NOT NULL AND",
                RecordFilter::All => "",
            };
            let mut st = c.prepare_cached(&format!(
                "SELECT * FROM sessions WHERE {state} (created_at, id) > (?1, ?2) ORDER BY created_at, id LIMIT ?3"
            ))?;
            let rows = st.query_map(params![created, id, limit as i64], record_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn count_open(&self, active_since: u64) -> Result<u64, StoreError> {
        self.call_heavy(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM sessions WHERE closed_at IS NULL AND last_active >= ?1",
                [active_since as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
        })
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every job is committed before it answers; a no-op job waits for what is queued.
        self.call(|_| Ok(())).await
    }

    async fn shutdown(&self) -> Result<(), StoreError> {
        // A few milliseconds of blocking (the last commit, a checkpoint), once, at exit.
        self.close_blocking()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(&self, session: &str, stream: &str, seq: u64, data: &[u8], fin: bool) -> Result<(), StoreError> {
        self.append_event(session, stream, seq, data, fin, None).await
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
        self.append_event(session, stream, seq, data, fin, Some(evict)).await
    }

    async fn replay(&self, session: &str, stream: &str, after_seq: u64, limit: usize) -> Result<Replay, StoreError> {
        let (session, stream) = (session.to_owned(), stream.to_owned());
        let shared = self.shared.clone();
        self.call(move |c| {
            if shared.is_gone(&session, &stream) {
                return Ok(Replay::Gone);
            }
            let floor: Option<i64> = row(
                    c,
                    "SELECT floor FROM event_floors WHERE session_id = ?1 AND stream = ?2",
                    params![session, stream],
                    |r| r.get(0),
                )
                .optional()?;
            if floor.is_some_and(|f| (after_seq as i64) < f) {
                return Ok(Replay::Gone);
            }
            let mut st = c.prepare_cached(
                "SELECT seq, data, fin FROM events WHERE session_id = ?1 AND stream = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
            )?;
            let events: Vec<StoredEvent> = st
                .query_map(params![session, stream, after_seq as i64, limit as i64], |r| {
                    Ok(StoredEvent {
                        seq: r.get::<_, i64>(0)? as u64,
                        data: Bytes::from(r.get::<_, Vec<u8>>(1)?),
                        fin: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            if events.is_empty() && floor.is_none() {
                let known: bool = row(
                    c,
                    "SELECT EXISTS (SELECT 1 FROM events WHERE session_id = ?1 AND stream = ?2)",
                    params![session, stream],
                    |r| r.get(0),
                )?;
                if !known {
                    return Ok(Replay::Gone);
                }
            }
            Ok(Replay::Events(events))
        })
        .await
    }

    async fn prune(&self, retention: Retention, now_ms: u64) -> Result<u64, StoreError> {
        let cutoff = now_ms.saturating_sub(retention.max_age_ms) as i64;
        let cap = retention.per_stream as i64;
        self.call_blocking(move |c| {
            c.execute(
                "INSERT INTO event_floors (session_id, stream, floor)
                     SELECT session_id, stream, MAX(seq) FROM events WHERE created_at < ?1 GROUP BY stream, session_id
                 ON CONFLICT (session_id, stream) DO UPDATE SET floor = MAX(floor, excluded.floor)",
                [cutoff],
            )?;
            let mut dropped = c.execute("DELETE FROM events WHERE created_at < ?1", [cutoff])?;
            c.execute(
                "CREATE TEMP TABLE IF NOT EXISTS excess (session_id TEXT, stream TEXT, seq INTEGER);
                 ",
                [],
            )?;
            c.execute("DELETE FROM temp.excess", [])?;
            c.execute(
                "INSERT INTO temp.excess SELECT session_id, stream, seq FROM (
                     SELECT session_id, stream, seq,
                            ROW_NUMBER() OVER (PARTITION BY stream, session_id ORDER BY seq DESC) AS rn
                     FROM events) WHERE rn > ?1",
                [cap],
            )?;
            c.execute(
                "INSERT INTO event_floors (session_id, stream, floor)
                     SELECT session_id, stream, MAX(seq) FROM temp.excess GROUP BY stream, session_id
                 ON CONFLICT (session_id, stream) DO UPDATE SET floor = MAX(floor, excluded.floor)",
                [],
            )?;
            dropped += c.execute(
                "DELETE FROM events WHERE (session_id, stream, seq) IN (SELECT session_id, stream, seq FROM temp.excess)",
                [],
            )?;
            Ok(dropped as u64)
        }, true)
        .await
    }

    /// The rows go with the next batch of forgotten sessions ([`FORGET_BATCH`]) or the next
    /// prune, within a minute: the table is ordered by stream, so deleting a session's rows is
    /// a pass over it. A crash before then leaves them to the age cut.
    ///
    /// [`FORGET_BATCH`]: super::group_commit::FORGET_BATCH
    async fn forget(&self, session: &str) -> Result<(), StoreError> {
        self.shared.forget(session);
        Ok(())
    }
}
