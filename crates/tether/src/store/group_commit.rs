//! Group commit for the SQLite store: the one connection, the jobs waiting for it, and the
//! events sent before their commit (the commit window). It owns when things are committed; what
//! is written (SQL) stays in `sqlite.rs`.
//!
//! Written here because no crate does group commit for a synchronous connection. Two paths:
//!
//! - **Jobs** (records, state changes, reads, events when the window is 0) are committed before
//!   their caller hears back, by flat combining: a caller queues its job, then tries the
//!   connection's lock; whoever holds it runs everything queued in one transaction, then looks
//!   again. With one request at a time the caller commits on its own thread — no hand-off to a
//!   writer thread and back, which cost more than the commit — and under load one commit carries
//!   many jobs. They never wait for a window.
//! - **Deferred events** (window > 0) are only queued: the caller sends the event at once, and
//!   it is committed with the next transaction that runs — a job's, or the committer thread's,
//!   which runs one at most one window after the oldest deferred event. Every transaction
//!   inserts the deferred events first, so a read (a `Last-Event-ID` replay) sees every event
//!   sent before it, and a record written after an event is never durable without it.

// The committer is a plain OS thread outside the runtime, and its window is real time: std
// time is the right clock here, not the session layer's tokio time.
#![allow(clippy::disallowed_methods)]

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use crate::session::store::StoreError;

/// The most jobs in one group commit.
const MAX_BATCH: usize = 1024;

/// Deferred events after which an append commits by itself instead of returning at once: the
/// bound on what waits in memory should the disk stall.
const MAX_DEFERRED: usize = 8192;

/// What a job's caller hears once the transaction ends.
pub(super) type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A unit of work run inside a group commit.
pub(super) type Job = Box<dyn FnOnce(&Connection) -> Done + Send>;

/// Evicted streams whose rows are deleted together, in the transaction that finds this many
/// waiting (and at close). Deleting each in the commit of the event that evicted it dirtied
/// more pages per commit (half the time per event in a bare-loop replay of 100 sessions, see
/// BENCHMARKS.md); until their batch runs, a replay of one answers it is gone, as if deleted.
pub const EVICT_BATCH: usize = 256;

/// Sessions forgotten (closed) whose rows are not deleted yet, after which a transaction
/// deletes them all in one pass over the table (the table is ordered by stream, not session,
/// so each deletion is a scan: one per batch, not one per session). [`SqliteStore::prune`]
/// takes the rest every minute.
///
/// [`SqliteStore::prune`]: super::sqlite::SqliteStore
pub const FORGET_BATCH: usize = 1024;

/// One SSE event to insert.
pub(super) struct EventRow {
    pub session: String,
    pub stream: String,
    pub seq: u64,
    pub data: Vec<u8>,
    pub fin: bool,
    pub created_at: i64,
}

const INSERT_EVENT: &str =
    "INSERT OR REPLACE INTO events (session_id, stream, seq, data, fin, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

impl EventRow {
    /// Inserts the event (replacing one at the same position).
    pub fn insert(&self, c: &Connection) -> rusqlite::Result<()> {
        self.insert_with(&mut c.prepare_cached(INSERT_EVENT)?)
    }

    fn insert_with(&self, st: &mut rusqlite::CachedStatement<'_>) -> rusqlite::Result<()> {
        st.execute(params![self.session, self.stream, self.seq as i64, self.data, self.fin, self.created_at]).map(drop)
    }
}

/// Drops every row of the forgotten `sessions`, in one pass over each table.
fn delete_sessions(c: &Connection, sessions: &[String]) -> rusqlite::Result<()> {
    c.prepare_cached("CREATE TEMP TABLE IF NOT EXISTS forgotten (id TEXT PRIMARY KEY) WITHOUT ROWID")?.execute([])?;
    c.prepare_cached("DELETE FROM temp.forgotten")?.execute([])?;
    let mut add = c.prepare_cached("INSERT OR IGNORE INTO temp.forgotten (id) VALUES (?1)")?;
    for id in sessions {
        add.execute([id])?;
    }
    c.prepare_cached("DELETE FROM events WHERE session_id IN (SELECT id FROM temp.forgotten)")?.execute([])?;
    c.prepare_cached("DELETE FROM event_floors WHERE session_id IN (SELECT id FROM temp.forgotten)")?.execute([])?;
    Ok(())
}

/// Drops the rows of evicted streams (session, stream).
fn delete_streams(c: &Connection, streams: &[(String, String)]) -> rusqlite::Result<()> {
    let mut events = c.prepare_cached("DELETE FROM events WHERE session_id = ?1 AND stream = ?2")?;
    let mut floors = c.prepare_cached("DELETE FROM event_floors WHERE session_id = ?1 AND stream = ?2")?;
    for (session, stream) in streams {
        events.execute(params![session, stream])?;
        floors.execute(params![session, stream])?;
    }
    Ok(())
}

/// Events sent but not yet committed.
#[derive(Default)]
struct Deferred {
    events: Vec<EventRow>,
    /// When the oldest of `events` was queued.
    since: Option<Instant>,
    /// The store is closing: nothing more is deferred, the committer stops.
    closed: bool,
}

/// The connection (`None` once the store is closed), queued jobs and deferred events.
pub(super) struct Shared {
    conn: Mutex<Option<Connection>>,
    queue: Mutex<Vec<Job>>,
    deferred: Mutex<Deferred>,
    /// Streams evicted whose rows are not deleted yet (at most about [`EVICT_BATCH`]).
    evicted: Mutex<HashSet<(String, String)>>,
    /// Sessions forgotten whose rows are not deleted yet (at most about [`FORGET_BATCH`]).
    forgotten: Mutex<HashSet<String>>,
    /// Wakes the committer when the first event is deferred, and when the store closes.
    wake: Condvar,
    window: Duration,
}

/// Why a deferred event could not be queued.
pub(super) enum DeferError {
    /// The store is closed.
    Closed,
    /// Too many events wait: commit now (the caller runs a job, which takes them along).
    Full,
}

impl Shared {
    /// Shares `conn`; events are deferred for up to `window` (zero: never deferred).
    pub fn new(conn: Connection, window: Duration) -> Arc<Shared> {
        Arc::new(Shared {
            conn: Mutex::new(Some(conn)),
            queue: Mutex::new(Vec::new()),
            deferred: Mutex::new(Deferred::default()),
            evicted: Mutex::new(HashSet::new()),
            forgotten: Mutex::new(HashSet::new()),
            wake: Condvar::new(),
            window,
        })
    }

    /// The commit window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Queues `job` and runs the queue if the connection is free; if it is not, its holder
    /// runs the job before it lets go. A job submitted after [`Shared::close`] is dropped,
    /// which its caller hears as a lost job.
    pub fn submit(&self, job: Job) {
        lock(&self.queue).push(job);
        self.combine(None);
    }

    /// Runs `job` now on this thread (which may block on the connection), then whatever was
    /// queued meanwhile. For jobs that touch many rows, called from a blocking thread. With
    /// `sweep`, every evicted stream and forgotten session waiting is deleted too.
    pub fn run_blocking(&self, job: Job, sweep: bool) {
        let conn = lock(&self.conn);
        if let Some(c) = conn.as_ref() {
            self.run_batch(c, vec![job], sweep);
        }
        self.combine(Some(conn));
    }

    /// Evicts `stream` of `session`: from now on it is gone to a replay, and its rows are
    /// deleted with the next batch of evictions.
    pub fn evict(&self, session: &str, stream: &str) {
        lock(&self.evicted).insert((session.to_owned(), stream.to_owned()));
    }

    /// Forgets `session`: from now on its streams are gone to a replay, and its rows are
    /// deleted with the next batch of forgotten sessions.
    pub fn forget(&self, session: &str) {
        lock(&self.forgotten).insert(session.to_owned());
    }

    /// Whether `stream` of `session` was evicted, or `session` forgotten, and the rows wait for
    /// their batch. Asked from a job (holding the connection), so that a batch is either taken
    /// and deleted, or still here.
    pub fn is_gone(&self, session: &str, stream: &str) -> bool {
        if lock(&self.forgotten).contains(session) {
            return true;
        }
        let e = lock(&self.evicted);
        !e.is_empty() && e.contains(&(session.to_owned(), stream.to_owned()))
    }

    /// Queues an event to be committed within the window; the caller may send it at once.
    pub fn defer(&self, row: EventRow) -> Result<(), Box<(EventRow, DeferError)>> {
        let mut d = lock(&self.deferred);
        if d.closed {
            return Err(Box::new((row, DeferError::Closed)));
        }
        if d.events.len() >= MAX_DEFERRED {
            return Err(Box::new((row, DeferError::Full)));
        }
        d.events.push(row);
        if d.since.is_none() {
            d.since = Some(Instant::now());
            drop(d);
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Runs queued jobs while there are any and the connection is free. With `held`, the
    /// caller already holds the connection.
    fn combine(&self, mut held: Option<MutexGuard<'_, Option<Connection>>>) {
        loop {
            let conn = match held.take() {
                Some(c) => c,
                None => match self.conn.try_lock() {
                    Ok(c) => c,
                    Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) => return,
                },
            };
            let batch = {
                let mut q = lock(&self.queue);
                let n = q.len().min(MAX_BATCH);
                q.drain(..n).collect::<Vec<_>>()
            };
            match conn.as_ref() {
                Some(c) if !batch.is_empty() => self.run_batch(c, batch, false),
                Some(_) => {}
                // Closed: the jobs are dropped, and their callers told so by their channels.
                None => drop(batch),
            }
            drop(conn);
            // A job queued after the drain whose submitter found the lock taken is ours to run
            // (looked at only once the lock is released, so that no job is left behind).
            if lock(&self.queue).is_empty() {
                return;
            }
        }
    }

    /// Runs the deferred events and `batch` in one transaction and tells each job the outcome
    /// of the commit. The deferred events are taken after the jobs were drained from the
    /// queue, so every event deferred before one of these jobs was submitted goes with it.
    /// The rows of evicted streams go too once [`EVICT_BATCH`] wait, those of forgotten
    /// sessions once [`FORGET_BATCH`] wait, and all of them with `sweep`.
    fn run_batch(&self, conn: &Connection, batch: Vec<Job>, sweep: bool) {
        let events = {
            let mut d = lock(&self.deferred);
            d.since = None;
            std::mem::take(&mut d.events)
        };
        let (events, mut evicted) = self.drop_gone(events, sweep);
        let forgotten: Vec<String> = {
            let mut f = lock(&self.forgotten);
            if f.len() >= FORGET_BATCH || (sweep && !f.is_empty()) { f.drain().collect() } else { Vec::new() }
        };
        if batch.is_empty() && events.is_empty() && evicted.is_empty() && forgotten.is_empty() {
            return;
        }
        let began = exec_cached(conn, "BEGIN IMMEDIATE");
        let mut unstored = 0usize;
        // One statement for the window's events (looked up in the cache once, not per event).
        let mut insert = (!events.is_empty()).then(|| conn.prepare_cached(INSERT_EVENT));
        for e in &events {
            let stored = match insert.as_mut() {
                Some(Ok(st)) => e.insert_with(st),
                Some(Err(_)) | None => e.insert(conn),
            };
            if let Err(err) = stored {
                unstored += 1;
                if unstored == 1 {
                    tracing::warn!(error = %err, "storing an SSE event that was already sent failed");
                }
            }
        }
        drop(insert); // back into the cache, for a job's own inserts
        if !evicted.is_empty()
            && let Err(err) = delete_streams(conn, &evicted)
        {
            // The jobs still commit; the streams stay gone to a replay, deleted with a later batch.
            tracing::warn!(error = %err, "deleting evicted SSE streams failed; retrying with the next batch");
            lock(&self.evicted).extend(std::mem::take(&mut evicted));
        }
        let mut forgotten = Some(forgotten).filter(|f| !f.is_empty());
        if let Some(f) = &forgotten
            && let Err(err) = delete_sessions(conn, f)
        {
            tracing::warn!(error = %err, "deleting the SSE events of closed sessions failed; retrying with the next batch");
            lock(&self.forgotten).extend(forgotten.take().unwrap_or_default());
        }
        let dones: Vec<Done> = batch.into_iter().map(|job| job(conn)).collect();
        let commit = match began {
            Ok(()) => exec_cached(conn, "COMMIT"),
            Err(e) => Err(e),
        };
        if let Err(e) = &commit {
            let _ = conn.execute_batch("ROLLBACK");
            lock(&self.evicted).extend(evicted);
            if let Some(f) = forgotten {
                lock(&self.forgotten).extend(f);
            }
            if !events.is_empty() {
                tracing::warn!(error = %e, events = events.len(), "committing SSE events that were already sent failed; a resume will not replay them");
            }
        } else if unstored > 0 {
            tracing::warn!(events = unstored, "SSE events already sent were not stored; a resume will not replay them");
        }
        for done in dones {
            done(commit.clone());
        }
    }

    /// The committer: commits deferred events at most one window after the oldest was queued,
    /// unless a job's transaction took them first. Ends when the store closes.
    pub fn run_committer(&self) {
        let mut d = lock(&self.deferred);
        loop {
            while d.since.is_none() && !d.closed {
                d = self.wake.wait(d).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if d.closed {
                return;
            }
            let deadline = d.since.map_or_else(Instant::now, |s| s + self.window);
            loop {
                let now = Instant::now();
                if now >= deadline || d.closed || d.since.is_none() {
                    break;
                }
                d = self.wake.wait_timeout(d, deadline - now).unwrap_or_else(std::sync::PoisonError::into_inner).0;
            }
            if d.closed || d.since.is_none() {
                continue;
            }
            drop(d);
            let conn = lock(&self.conn);
            if let Some(c) = conn.as_ref() {
                self.run_batch(c, Vec::new(), false);
            }
            self.combine(Some(conn));
            d = lock(&self.deferred);
        }
    }

    /// Splits what this transaction deletes from the evicted streams: all of them with `sweep`
    /// or once [`EVICT_BATCH`] wait, and in any case those with an event among `events`. Such
    /// an event is dropped, not inserted: its stream finished and was evicted within one
    /// window (a busy session evicts a stream every request), so its row would be deleted
    /// anyway; its stream's earlier rows are deleted in the same transaction, so the stream is
    /// never half there. Events of forgotten sessions are dropped too.
    fn drop_gone(&self, mut events: Vec<EventRow>, sweep: bool) -> (Vec<EventRow>, Vec<(String, String)>) {
        let mut e = lock(&self.evicted);
        let mut dropped = HashSet::new();
        if !e.is_empty() && !events.is_empty() {
            events.retain_mut(|row| {
                // The row's own strings make the key, and are put back: no allocation.
                let key = (std::mem::take(&mut row.session), std::mem::take(&mut row.stream));
                let gone = match e.take(&key) {
                    Some(k) => dropped.insert(k),
                    None => dropped.contains(&key),
                };
                (row.session, row.stream) = key;
                !gone
            });
        }
        let mut deleted: Vec<(String, String)> = dropped.into_iter().collect();
        if e.len() >= EVICT_BATCH || sweep {
            deleted.extend(e.drain());
        }
        drop(e);
        let f = lock(&self.forgotten);
        if !f.is_empty() {
            events.retain(|row| !f.contains(&row.session));
        }
        (events, deleted)
    }

    /// Stops deferring, commits what waits (deferred events and queued jobs), and hands the
    /// connection back for closing; `None` when already closed. Later jobs are dropped.
    pub fn close(&self) -> Option<Connection> {
        lock(&self.deferred).closed = true;
        self.wake.notify_all();
        let mut conn = lock(&self.conn);
        if let Some(c) = conn.as_ref() {
            let batch = std::mem::take(&mut *lock(&self.queue));
            self.run_batch(c, batch, true);
        }
        conn.take()
    }
}

/// Locks a std mutex, recovering from poisoning: a job that panicked leaves the connection
/// usable (its transaction is rolled back by the next BEGIN's failure path at worst).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs one statement that returns no rows, cached (BEGIN and COMMIT run for every batch).
fn exec_cached(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(drop).map_err(|e| StoreError::Backend(e.to_string()))
}
