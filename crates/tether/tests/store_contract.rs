//! The store contract: one suite, run against every backend (memory, a real SQLite file with
//! events committed before they are sent and with a commit window, Postgres and Redis, each
//! test of a shared store in its own namespace, dropped afterwards). The cluster primitives
//! (`cluster_contract.rs`) run against memory, Postgres and Redis. Then what only SQLite has:
//! the commit window's promises (committed within the window without further calls, records
//! never wait, a bound on what waits) and a clean close that leaves no `-wal`.

mod shared_stores;

use std::sync::Arc;

use bytes::Bytes;
use shared_stores::{Cleanup, postgres, redis};
use tether::session::record::{CloseReason, SessionRecord, SessionState, Transport, now_ms};
use tether::session::store::{Activity, EventStore, Replay, Retention, SessionStore, Store};
use tether::store::{MemoryStore, SqliteStore};

fn raw(s: &str) -> std::sync::Arc<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(s.to_owned()).expect("json").into()
}

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("tether-contract-{}-{name}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join("sessions.db")
}

async fn records_round_trip(store: Arc<dyn Store>) {
    let mut r = SessionRecord::new(Transport::StreamableHttp);
    store.create(&r).await.expect("create");
    let got = store.get(&r.id).await.expect("get").expect("present");
    assert_eq!(got.id, r.id);
    assert_eq!(got.transport, Transport::StreamableHttp);
    assert!(got.client_init.is_none() && got.closed_at.is_none());

    r.protocol_version = Some("2025-11-25".into());
    r.client_init = Some(raw(
        r#"{"protocolVersion":"2025-11-25","capabilities":{"x-vendor":{"k":[1,2]}},"clientInfo":{"name":"c"}}"#,
    ));
    r.upstream_init = Some(raw(r#"{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"s"}}"#));
    store.set_handshake(&r).await.expect("handshake");
    let state = SessionState {
        log_level: Some("debug".into()),
        subscriptions: ["a://1".to_owned(), "b://2".to_owned()].into(),
    };
    store.set_state(&r.id, &state).await.expect("state");
    store.touch(&r.id, Activity { last_active: r.last_active + 5, requests: 3, tool_calls: 2 }).await.expect("touch");
    store.touch(&r.id, Activity { last_active: r.last_active + 1, requests: 1, tool_calls: 0 }).await.expect("touch");
    store.flush().await.expect("flush");

    let got = store.get(&r.id).await.expect("get").expect("present");
    assert_eq!(got.protocol_version.as_deref(), Some("2025-11-25"));
    assert_eq!(
        got.client_init.as_ref().map(|v| v.get()),
        r.client_init.as_ref().map(|v| v.get()),
        "params kept byte for byte"
    );
    assert_eq!(got.upstream_init.as_ref().map(|v| v.get()), r.upstream_init.as_ref().map(|v| v.get()));
    assert_eq!(got.state, state);
    assert_eq!(got.requests, 4);
    assert_eq!(got.tool_calls, 2);
    assert_eq!(got.last_active, r.last_active + 5, "last_active never goes back");

    store.close(&r.id, now_ms(), CloseReason::Expired).await.expect("close");
    store.close(&r.id, now_ms() + 1000, CloseReason::Terminated).await.expect("close twice");
    let got = store.get(&r.id).await.expect("get").expect("present");
    assert_eq!(got.close_reason, Some(CloseReason::Expired), "the first close wins");
    assert!(store.get("0123456789abcdef0123456789abcdef").await.expect("get").is_none());
}

async fn listing_pages_open_sessions(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut r = SessionRecord::new(Transport::LegacySse);
        r.created_at = 1_000 + i;
        r.last_active = 1_000 + i;
        store.create(&r).await.expect("create");
        ids.push(r.id);
    }
    store.close(&ids[2], now_ms(), CloseReason::ClientClosed).await.expect("close");
    let page1 = store.list_open(None, 2).await.expect("list");
    let page2 = store.list_open(Some(&page1[1].id), 10).await.expect("list");
    let got: Vec<&str> = page1.iter().chain(&page2).map(|r| r.id.as_str()).collect();
    assert_eq!(got, vec![ids[0].as_str(), ids[1].as_str(), ids[3].as_str(), ids[4].as_str()]);
    assert_eq!(page1[0].transport, Transport::LegacySse);
    assert_eq!(store.count_open(1_003).await.expect("count"), 2);
    assert_eq!(store.count_open(0).await.expect("count"), 4);
}

async fn events_replay_after_a_cursor(store: Arc<dyn Store>) {
    let s = "0123456789abcdef0123456789abcdef";
    for seq in [3u64, 5, 9] {
        store.append(s, "i.1", seq, format!("{{\"n\":{seq}}}").as_bytes(), seq == 9).await.expect("append");
    }
    store.append(s, "i.g2", 4, b"{}", false).await.expect("append");
    let Replay::Events(ev) = store.replay(s, "i.1", 3, 100).await.expect("replay") else { panic!("gone") };
    assert_eq!(ev.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 9]);
    assert_eq!(ev[0].data, Bytes::from_static(b"{\"n\":5}"));
    assert!(!ev[0].fin && ev[1].fin);
    let Replay::Events(ev) = store.replay(s, "i.1", 1, 100).await.expect("replay") else { panic!("gone") };
    assert_eq!(ev.len(), 3, "a priming cursor before the first event replays everything");
    let Replay::Events(ev) = store.replay(s, "i.1", 9, 100).await.expect("replay") else { panic!("gone") };
    assert!(ev.is_empty(), "nothing missed");
    assert_eq!(store.replay(s, "i.7", 0, 100).await.expect("replay"), Replay::Gone, "unknown stream");
    let Replay::Events(ev) = store.replay(s, "i.1", 0, 2).await.expect("replay") else { panic!("gone") };
    assert_eq!(ev.len(), 2, "bounded");

    store.forget(s).await.expect("forget");
    assert_eq!(store.replay(s, "i.1", 3, 100).await.expect("replay"), Replay::Gone);
}

async fn retention_bounds_streams(store: Arc<dyn Store>) {
    let s = "fedcba9876543210fedcba9876543210";
    for seq in 1..=10u64 {
        store.append(s, "i.1", seq, b"{}", false).await.expect("append");
    }
    let dropped = store.prune(Retention { per_stream: 4, ..Retention::default() }, now_ms()).await.expect("prune");
    assert_eq!(dropped, 6);
    assert_eq!(store.replay(s, "i.1", 2, 100).await.expect("replay"), Replay::Gone, "older than retention");
    let Replay::Events(ev) = store.replay(s, "i.1", 6, 100).await.expect("replay") else { panic!("gone") };
    assert_eq!(ev.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![7, 8, 9, 10]);
    // By age: everything is older than "now + 2h - 1h".
    store.prune(Retention { per_stream: 100, ..Retention::default() }, now_ms() + 7_200_000).await.expect("prune");
    assert_eq!(store.replay(s, "i.1", 6, 100).await.expect("replay"), Replay::Gone);
}

async fn evicting_drops_a_finished_stream_in_the_same_write(store: Arc<dyn Store>) {
    let s = "00112233445566778899aabbccddeeff";
    store.append(s, "i.1", 1, b"{\"a\":1}", true).await.expect("append");
    store.append(s, "i.2", 2, b"{\"a\":2}", true).await.expect("append");
    store.append_evicting(s, "i.3", 3, b"{\"a\":3}", true, "i.1").await.expect("append");
    assert_eq!(store.replay(s, "i.1", 0, 100).await.expect("replay"), Replay::Gone, "evicted");
    for (stream, seq) in [("i.2", 2), ("i.3", 3)] {
        let Replay::Events(ev) = store.replay(s, stream, 0, 100).await.expect("replay") else {
            panic!("{stream} gone")
        };
        assert_eq!(ev.iter().map(|e| (e.seq, e.fin)).collect::<Vec<_>>(), vec![(seq, true)], "{stream} kept");
    }
    // Evicting a stream that is not there is not an error.
    store.append_evicting(s, "i.4", 4, b"{}", true, "i.1").await.expect("append");
}

/// Many writers at once (the SQLite store group-commits them): every write is committed and
/// every writer hears back.
async fn concurrent_writes_all_commit(store: Arc<dyn Store>) {
    let s = "0123456789abcdeffedcba9876543210";
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..200u64 {
        let store = store.clone();
        tasks.spawn(async move {
            let stream = format!("i.{n}");
            for seq in 1..=5u64 {
                store.append(s, &stream, n * 10 + seq, b"{}", seq == 5).await.expect("append");
            }
        });
    }
    let joined = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(r) = tasks.join_next().await {
            r.expect("writer");
        }
    })
    .await;
    assert!(joined.is_ok(), "a writer never heard back");
    for n in 0..200u64 {
        let Replay::Events(ev) = store.replay(s, &format!("i.{n}"), 0, 100).await.expect("replay") else {
            panic!("stream {n} gone")
        };
        assert_eq!(ev.len(), 5, "stream {n}");
    }
}

async fn activity_of_many_sessions_is_written_at_once(store: Arc<dyn Store>) {
    let records: Vec<SessionRecord> = (0..3).map(|_| SessionRecord::new(Transport::StreamableHttp)).collect();
    for r in &records {
        store.create(r).await.expect("create");
    }
    let at = now_ms() + 1000;
    let batch: Vec<(String, Activity)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.clone(), Activity { last_active: at, requests: i as u64 + 1, tool_calls: 1 }))
        .collect();
    store.touch_many(&batch).await.expect("touch_many");
    store.touch_many(&batch[..1]).await.expect("touch_many");
    store.touch_many(&[]).await.expect("an empty batch");
    for (i, r) in records.iter().enumerate() {
        let got = store.get(&r.id).await.expect("get").expect("stored");
        let again = u64::from(i == 0);
        assert_eq!(got.requests, (i as u64 + 1) * (1 + again), "session {i}");
        assert_eq!(got.tool_calls, 1 + again);
        assert_eq!(got.last_active, at);
    }
}

/// Each test body runs with its store, bounded in time, and the namespace of a shared store
/// is dropped when the test ends (pass or fail).
macro_rules! backends {
    ($($backend:ident => $make:expr;)*) => {$(
        mod $backend {
            use super::*;
            async fn run<F: std::future::Future<Output = ()>>(f: impl FnOnce(Arc<dyn Store>) -> F) {
                let (store, _cleanup): (Arc<dyn Store>, Cleanup) = $make;
                shared_stores::within(f(store)).await
            }
            #[tokio::test]
            async fn records_round_trip() { run(super::records_round_trip).await }
            #[tokio::test]
            async fn listing_pages_open_sessions() { run(super::listing_pages_open_sessions).await }
            #[tokio::test]
            async fn events_replay_after_a_cursor() { run(super::events_replay_after_a_cursor).await }
            #[tokio::test]
            async fn retention_bounds_streams() { run(super::retention_bounds_streams).await }
            #[tokio::test]
            async fn evicting_drops_a_finished_stream_in_the_same_write() {
                run(super::evicting_drops_a_finished_stream_in_the_same_write).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_writes_all_commit() { run(super::concurrent_writes_all_commit).await }
            #[tokio::test]
            async fn activity_of_many_sessions_is_written_at_once() {
                run(super::activity_of_many_sessions_is_written_at_once).await
            }
        }
    )*};
}

backends! {
    memory => (Arc::new(MemoryStore::new()), Cleanup::None);
    sqlite => (Arc::new(SqliteStore::open(&temp_db("c")).await.expect("open sqlite")), Cleanup::None);
    sqlite_window => (Arc::new(
        SqliteStore::open_with_window(&temp_db("w"), std::time::Duration::from_millis(5)).await.expect("open sqlite")
    ), Cleanup::None);
    postgres => { let (s, c) = postgres().await; (s as Arc<dyn Store>, c) };
    redis => { let (s, c) = redis().await; (s as Arc<dyn Store>, c) };
}

#[tokio::test]
async fn sqlite_survives_reopening_and_is_a_real_file() {
    let path = temp_db("reopen");
    let r = SessionRecord::new(Transport::StreamableHttp);
    {
        let store = SqliteStore::open(&path).await.expect("open");
        store.create(&r).await.expect("create");
        store.append(&r.id, "x.1", 1, b"{\"a\":1}", true).await.expect("append");
    }
    let store = SqliteStore::open(&path).await.expect("reopen");
    assert!(store.get(&r.id).await.expect("get").is_some());
    let Replay::Events(ev) = store.replay(&r.id, "x.1", 0, 10).await.expect("replay") else { panic!("gone") };
    assert_eq!(ev.len(), 1);
    // WAL mode, versioned schema.
    let conn = rusqlite::Connection::open(&path).expect("sqlite3 can read it");
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("mode");
    assert_eq!(mode, "wal");
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
    assert_eq!(version, 3);
    // Version 2 dropped the index on the events' age (kept up on every insert for prune alone).
    let age_index: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'events_age'", [], |r| r.get(0))
        .expect("schema");
    assert_eq!(age_index, 0);
}

#[tokio::test]
async fn a_corrupt_or_foreign_file_stops_startup_with_the_fix() {
    let path = temp_db("corrupt");
    std::fs::write(&path, b"this is not a database, it is a text file that happens to be here ".repeat(100))
        .expect("write");
    let err = SqliteStore::open(&path).await.err().expect("refused").to_string();
    assert!(err.contains(&path.display().to_string()), "names the file: {err}");
    assert!(err.contains("mv "), "says the fix: {err}");

    let newer = temp_db("newer");
    rusqlite::Connection::open(&newer).expect("open").execute_batch("PRAGMA user_version = 99;").expect("set");
    let err = SqliteStore::open(&newer).await.err().expect("refused").to_string();
    assert!(err.contains("newer"), "{err}");
}

/// Rows of `events` for `session` as another connection sees them (what a crash would keep).
fn committed_events(path: &std::path::Path, session: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).expect("a second connection");
    conn.query_row("SELECT COUNT(*) FROM events WHERE session_id = ?1", [session], |r| r.get(0)).expect("count")
}

/// Polls `f` until it holds; fails after 10 s (a bound against hanging, not a speed check).
async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test]
async fn with_window_zero_an_event_is_committed_before_append_returns() {
    let path = temp_db("w0");
    let store = SqliteStore::open_with_window(&path, std::time::Duration::ZERO).await.expect("open");
    let s = "0123456789abcdef0123456789abcd00";
    for seq in 1..=3u64 {
        store.append(s, "i.1", seq, b"{}", seq == 3).await.expect("append");
        assert_eq!(committed_events(&path, s), seq as i64, "event {seq} committed when append returned");
    }
}

#[tokio::test]
async fn a_deferred_event_is_committed_within_the_window_without_another_call() {
    let path = temp_db("wdefer");
    let store = SqliteStore::open_with_window(&path, std::time::Duration::from_millis(20)).await.expect("open");
    let s = "0123456789abcdef0123456789abcd01";
    store.append(s, "i.1", 1, b"{\"n\":1}", false).await.expect("append");
    store.append_evicting(s, "i.2", 2, b"{\"n\":2}", true, "i.0").await.expect("append");
    // The process reads its own events at once (a resume in this process misses nothing)...
    let Replay::Events(ev) = store.replay(s, "i.2", 0, 10).await.expect("replay") else { panic!("gone") };
    assert_eq!(ev.len(), 1);
    // ...and the committer makes them durable with no further call.
    let s2 = "0123456789abcdef0123456789abcd02";
    store.append(s2, "i.1", 1, b"{}", true).await.expect("append");
    assert!(eventually(|| committed_events(&path, s2) == 1).await, "the committer never committed the event");
    assert_eq!(committed_events(&path, s), 2);
}

#[tokio::test]
async fn records_never_wait_for_the_window_and_take_earlier_events_along() {
    let path = temp_db("wrecord");
    // A window far longer than the test: whatever is committed was committed by a record write.
    let store = SqliteStore::open_with_window(&path, std::time::Duration::from_secs(3600)).await.expect("open");
    let r = SessionRecord::new(Transport::StreamableHttp);
    store.append(&r.id, "i.1", 1, b"{}", false).await.expect("append");
    store.create(&r).await.expect("create");
    let conn = rusqlite::Connection::open(&path).expect("a second connection");
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM sessions WHERE id = ?1", [&r.id], |r| r.get(0)).expect("count");
    assert_eq!(n, 1, "the record is committed when create returns");
    assert_eq!(committed_events(&path, &r.id), 1, "an event sent before a record write is committed with it");
    let state = SessionState { log_level: Some("debug".into()), subscriptions: Default::default() };
    store.append(&r.id, "i.1", 2, b"{}", false).await.expect("append");
    store.set_state(&r.id, &state).await.expect("state");
    let stored: String =
        conn.query_row("SELECT state FROM sessions WHERE id = ?1", [&r.id], |r| r.get(0)).expect("state");
    assert!(stored.contains("debug"), "the state change is committed when set_state returns: {stored}");
    assert_eq!(committed_events(&path, &r.id), 2);
}

#[tokio::test]
async fn what_waits_for_a_window_is_bounded() {
    let path = temp_db("wbound");
    let store = SqliteStore::open_with_window(&path, std::time::Duration::from_secs(3600)).await.expect("open");
    let s = "0123456789abcdef0123456789abcd03";
    for seq in 1..=10_000u64 {
        store.append(s, "i.1", seq, b"{}", false).await.expect("append");
    }
    // Past the bound (8,192 waiting), an append commits by itself and takes the others along.
    assert!(committed_events(&path, s) >= 8_192, "events waited in memory past the bound");
    store.flush().await.expect("flush");
    assert_eq!(committed_events(&path, s), 10_000, "flush commits what waits");
}

#[tokio::test]
async fn shutdown_commits_what_waits_checkpoints_and_leaves_no_wal() {
    let path = temp_db("wclose");
    let wal = path.with_file_name("sessions.db-wal");
    let shm = path.with_file_name("sessions.db-shm");
    let store = SqliteStore::open_with_window(&path, std::time::Duration::from_secs(3600)).await.expect("open");
    let r = SessionRecord::new(Transport::StreamableHttp);
    store.create(&r).await.expect("create");
    store.append(&r.id, "i.1", 1, b"{\"a\":1}", true).await.expect("append");
    assert!(wal.exists(), "WAL mode writes a -wal while open");
    store.shutdown().await.expect("shutdown");
    assert!(!wal.exists() && !shm.exists(), "a clean close leaves no -wal or -shm");
    assert!(store.append(&r.id, "i.1", 2, b"{}", true).await.is_err(), "a closed store refuses writes");
    assert!(store.get(&r.id).await.is_err(), "a closed store refuses reads");
    store.shutdown().await.expect("shutdown twice is harmless");
    drop(store);
    let store = SqliteStore::open(&path).await.expect("reopen");
    let Replay::Events(ev) = store.replay(&r.id, "i.1", 0, 10).await.expect("replay") else { panic!("gone") };
    assert_eq!(ev.len(), 1, "the deferred event was committed at shutdown");
}

#[tokio::test]
async fn a_store_dropped_without_shutdown_still_commits_what_waits() {
    let path = temp_db("wdrop");
    let s = "0123456789abcdef0123456789abcd04";
    {
        let store = SqliteStore::open_with_window(&path, std::time::Duration::from_secs(3600)).await.expect("open");
        store.append(s, "i.1", 1, b"{}", true).await.expect("append");
    }
    assert_eq!(committed_events(&path, s), 1);
    assert!(!path.with_file_name("sessions.db-wal").exists(), "closed like a shutdown");
}

/// Rows of `events` of every session, as another connection sees them.
fn committed_rows(path: &std::path::Path) -> usize {
    let conn = rusqlite::Connection::open(path).expect("a second connection");
    conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0)).expect("count") as usize
}

/// A bound on a store call (against hanging, not a speed check).
async fn t<T>(f: impl std::future::Future<Output = T>) -> Result<T, tokio::time::error::Elapsed> {
    tokio::time::timeout(std::time::Duration::from_secs(30), f).await
}

#[tokio::test]
async fn evicted_streams_are_gone_at_once_and_their_rows_go_in_bounded_batches() {
    use tether::store::sqlite::EVICT_BATCH;
    const KEPT: usize = 2;
    for window in [std::time::Duration::ZERO, std::time::Duration::from_millis(5)] {
        let path = temp_db("evict");
        let store = SqliteStore::open_with_window(&path, window).await.expect("open");
        let s = "0123456789abcdef0123456789abcd05";
        let streams = 2 * EVICT_BATCH + 50;
        for n in 1..=streams {
            let key = format!("i.{n}");
            let data = format!("{{\"n\":{n}}}");
            if n > KEPT {
                let old = format!("i.{}", n - KEPT);
                t(store.append_evicting(s, &key, 1, data.as_bytes(), true, &old)).await.expect("t").expect("append");
                let gone = t(store.replay(s, &old, 0, 10)).await.expect("t").expect("replay");
                assert_eq!(gone, Replay::Gone, "{old} is gone once the append that evicted it returned");
            } else {
                t(store.append(s, &key, 1, data.as_bytes(), true)).await.expect("t").expect("append");
            }
            if n % 25 == 0 {
                t(store.flush()).await.expect("t").expect("flush");
                let rows = committed_rows(&path);
                // The kept streams, plus at most one batch waiting (and the one being taken).
                assert!(rows <= KEPT + EVICT_BATCH + 1, "{rows} rows after {n} streams: the bound holds");
            }
        }
        for n in streams - KEPT + 1..=streams {
            let Replay::Events(ev) = t(store.replay(s, &format!("i.{n}"), 0, 10)).await.expect("t").expect("replay")
            else {
                panic!("a kept stream is replayed")
            };
            assert_eq!(ev.len(), 1);
        }
        assert!(committed_rows(&path) > KEPT, "some evicted rows wait for their batch (else nothing is batched)");
        t(store.shutdown()).await.expect("t").expect("shutdown");
        assert_eq!(committed_rows(&path), KEPT, "a clean stop deletes the evicted rows that waited");
    }
}

/// A file of schema version 2 (events ordered by session) is migrated at open: its events are
/// kept and replayed, and the table is ordered by stream from then on.
#[tokio::test]
async fn a_version_2_file_is_migrated_with_its_events() {
    let path = temp_db("v2");
    let s = "0123456789abcdef0123456789abcd07";
    {
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch(
            "CREATE TABLE sessions (id TEXT PRIMARY KEY, transport TEXT NOT NULL, protocol_version TEXT,
                 client_init TEXT, upstream_init TEXT, state TEXT NOT NULL, principal TEXT,
                 created_at INTEGER NOT NULL, last_active INTEGER NOT NULL,
                 requests INTEGER NOT NULL DEFAULT 0, tool_calls INTEGER NOT NULL DEFAULT 0,
                 closed_at INTEGER, close_reason TEXT);
             CREATE INDEX sessions_open ON sessions (closed_at, created_at, id);
             CREATE TABLE events (session_id TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
                 data BLOB NOT NULL, fin INTEGER NOT NULL, created_at INTEGER NOT NULL,
                 PRIMARY KEY (session_id, stream, seq)) WITHOUT ROWID;
             CREATE TABLE event_floors (session_id TEXT NOT NULL, stream TEXT NOT NULL, floor INTEGER NOT NULL,
                 PRIMARY KEY (session_id, stream)) WITHOUT ROWID;
             PRAGMA user_version = 2;",
        )
        .expect("a version 2 file");
        let mut add = conn.prepare("INSERT INTO events VALUES (?1, 'old.1', ?2, ?3, ?4, 0)").expect("insert");
        for seq in 1..=3i64 {
            add.execute(rusqlite::params![s, seq, format!("{{\"n\":{seq}}}").into_bytes(), seq == 3]).expect("row");
        }
    }
    let store = SqliteStore::open(&path).await.expect("migrated");
    let Replay::Events(ev) = t(store.replay(s, "old.1", 1, 10)).await.expect("t").expect("replay") else {
        panic!("the migrated stream is gone")
    };
    assert_eq!(ev.iter().map(|e| (e.seq, e.fin)).collect::<Vec<_>>(), vec![(2, false), (3, true)]);
    assert_eq!(ev[0].data, Bytes::from_static(b"{\"n\":2}"));
    t(store.shutdown()).await.expect("t").expect("shutdown");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
    let sql: String = conn
        .query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'", [], |r| r.get(0))
        .expect("schema");
    assert_eq!(version, 3);
    assert!(sql.contains("PRIMARY KEY (stream, session_id, seq)"), "{sql}");
}

/// A stream that finishes and is evicted within one commit window (a busy session evicts a
/// stream every request) is never written: its deferred events are dropped, and its rows
/// committed before are deleted in the same transaction, so it is never half there.
#[tokio::test]
async fn a_stream_evicted_within_its_window_is_never_written() {
    let path = temp_db("evict-window");
    // A window no test outlasts: only flushes commit.
    let store = SqliteStore::open_with_window(&path, std::time::Duration::from_secs(3600)).await.expect("open");
    let s = "0123456789abcdef0123456789abcd08";
    t(store.append(s, "i.1", 1, b"{\"progress\":1}", false)).await.expect("t").expect("append");
    t(store.flush()).await.expect("t").expect("flush");
    assert_eq!(committed_rows(&path), 1, "the progress event is committed");
    t(store.append(s, "i.1", 2, b"{\"result\":1}", true)).await.expect("t").expect("append");
    t(store.append(s, "i.2", 3, b"{\"result\":2}", true)).await.expect("t").expect("append");
    t(store.append_evicting(s, "i.3", 4, b"{\"result\":3}", true, "i.1")).await.expect("t").expect("append");
    assert_eq!(t(store.replay(s, "i.1", 0, 10)).await.expect("t").expect("replay"), Replay::Gone);
    t(store.flush()).await.expect("t").expect("flush");
    let conn = rusqlite::Connection::open(&path).expect("a second connection");
    let mut st = conn.prepare("SELECT stream, seq FROM events ORDER BY seq").expect("select");
    let rows: Vec<(String, i64)> =
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("rows").collect::<Result<_, _>>().expect("rows");
    assert_eq!(rows, vec![("i.2".to_owned(), 3), ("i.3".to_owned(), 4)], "nothing of i.1 is left");
    for (stream, seq) in [("i.2", 3), ("i.3", 4)] {
        let Replay::Events(ev) = t(store.replay(s, stream, 0, 10)).await.expect("t").expect("replay") else {
            panic!("{stream} gone")
        };
        assert_eq!(ev.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![seq]);
    }
    t(store.shutdown()).await.expect("t").expect("shutdown");
}

/// A forgotten (closed) session's streams are gone at once; its rows are deleted by the next
/// prune, or at a clean stop, in batches (one pass over the table each), while other sessions'
/// rows stay.
#[tokio::test]
async fn a_forgotten_sessions_rows_go_with_the_next_prune_or_a_clean_stop() {
    let path = temp_db("forget");
    let store = SqliteStore::open(&path).await.expect("open");
    let (a, b, c) =
        ("0123456789abcdef0123456789abcd0a", "0123456789abcdef0123456789abcd0b", "0123456789abcdef0123456789abcd0c");
    for (n, s) in [a, b, c].into_iter().enumerate() {
        for seq in 1..=3u64 {
            t(store.append(s, &format!("i.{n}"), seq, b"{}", seq == 3)).await.expect("t").expect("append");
        }
    }
    t(store.forget(a)).await.expect("t").expect("forget");
    assert_eq!(t(store.replay(a, "i.0", 0, 10)).await.expect("t").expect("replay"), Replay::Gone);
    let kept = Retention { per_stream: 100, ..Retention::default() };
    t(store.prune(kept, now_ms())).await.expect("t").expect("prune");
    assert_eq!((committed_events(&path, a), committed_events(&path, b)), (0, 3), "a's rows went with the prune");
    t(store.forget(b)).await.expect("t").expect("forget");
    t(store.shutdown()).await.expect("t").expect("shutdown");
    let left = (committed_events(&path, a), committed_events(&path, b), committed_events(&path, c));
    assert_eq!(left, (0, 0, 3), "b's rows went at the clean stop; c's stay");
}
