//! The Postgres backend: records and events shared by several replicas, in one schema per
//! `--store-namespace`. Every write commits before it returns (Postgres is the durable cluster
//! store; there is no commit window here). Migrations are versioned in `schema_version` and
//! applied at start under an advisory lock, so replicas starting at once migrate once. The
//! cluster primitives (leases, registry, fenced writes, LISTEN/NOTIFY wake-ups) are in
//! `postgres_cluster.rs`; this file owns the connection pool, the schema and the
//! [`SessionStore`]/[`EventStore`] contract.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::broadcast;
use tokio_postgres::NoTls;

use super::cluster::{WAKE_BUFFER, Wake, check_namespace};
use crate::session::record::{CloseReason, SessionRecord, SessionState, Transport, intern};
use crate::session::store::{
    Activity, EventStore, RecordFilter, Replay, Retention, SessionStore, StoreError, StoredEvent,
};

/// Schema migrations; entry `i` takes the schema from version `i` to `i + 1`. Run with the
/// namespace as the search path.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE sessions (
        id               TEXT PRIMARY KEY,
        transport        TEXT NOT NULL,
        protocol_version TEXT,
        client_init      TEXT,
        upstream_init    TEXT,
        state            TEXT NOT NULL,
        principal        TEXT,
        created_at       BIGINT NOT NULL,
        last_active      BIGINT NOT NULL,
        requests         BIGINT NOT NULL DEFAULT 0,
        tool_calls       BIGINT NOT NULL DEFAULT 0,
        closed_at        BIGINT,
        close_reason     TEXT
    );
    CREATE INDEX sessions_order ON sessions (created_at, id);
    CREATE TABLE events (
        session_id TEXT NOT NULL,
        stream     TEXT NOT NULL,
        seq        BIGINT NOT NULL,
        data       BYTEA NOT NULL,
        fin        BOOLEAN NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (session_id, stream, seq)
    );
    CREATE INDEX events_age ON events (created_at);
    CREATE TABLE event_floors (
        session_id TEXT NOT NULL,
        stream     TEXT NOT NULL,
        floor      BIGINT NOT NULL,
        PRIMARY KEY (session_id, stream)
    );
    CREATE TABLE replicas (
        id           TEXT PRIMARY KEY,
        incarnation  TEXT NOT NULL,
        addr         TEXT NOT NULL,
        heartbeat_at TIMESTAMPTZ NOT NULL
    );
    -- A released lease keeps its row (owner NULL) so that the epoch never goes back.
    CREATE TABLE leases (
        session_id  TEXT PRIMARY KEY,
        owner       TEXT,
        incarnation TEXT,
        epoch       BIGINT NOT NULL,
        expires_at  TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX leases_owner ON leases (owner, incarnation);
"];

/// Connections in the pool.
const POOL_SIZE: usize = 16;

/// How long one store operation may take before it fails as unavailable (the session layer
/// turns that into a 503 with `Retry-After`): a partitioned server must not hang requests.
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting (or waiting for a pooled connection) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The Postgres backend.
pub struct PostgresStore {
    pub(super) pool: Pool,
    /// The NOTIFY channel of this namespace.
    pub(super) channel: String,
    pub(super) wake: broadcast::Sender<Wake>,
    /// The LISTEN task, aborted when the store is dropped or shut down.
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://USER@HOST:PORT/DB`), creates and migrates the schema
    /// `namespace`, and starts listening for wake-ups.
    pub async fn open(url: &str, namespace: &str) -> anyhow::Result<PostgresStore> {
        check_namespace(namespace).map_err(anyhow::Error::msg)?;
        let shown = super::redact_url(url);
        let mut cfg: tokio_postgres::Config =
            url.parse().with_context(|| format!("the store URL {shown} is not a valid Postgres URL"))?;
        cfg.connect_timeout(CONNECT_TIMEOUT);
        // A connection stuck in a transaction (its task cancelled mid-way) must not hold locks
        // for long: the server ends it.
        cfg.options(format!("-c search_path={namespace} -c idle_in_transaction_session_timeout=15000"));
        if cfg.get_application_name().is_none() {
            cfg.application_name("tether");
        }
        let mgr = Manager::from_config(cfg.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(mgr)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .context("building the Postgres pool")?;
        migrate(&pool, namespace).await.with_context(|| format!("preparing the Postgres store {shown}"))?;
        let wake = broadcast::channel(WAKE_BUFFER).0;
        let channel = format!("{namespace}_wake");
        let mut listen_cfg = cfg;
        listen_cfg.application_name(format!("tether-listen:{namespace}"));
        let (listening, ready) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(super::postgres_cluster::listen(listen_cfg, channel.clone(), wake.clone(), listening));
        if tokio::time::timeout(CONNECT_TIMEOUT, ready).await.is_err() {
            tracing::warn!("the Postgres wake-up listener is not up yet; tailers poll until it is");
        }
        Ok(PostgresStore { pool, channel, wake, listener: Mutex::new(Some(task)) })
    }

    /// A pooled connection.
    pub(super) async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Backend(format!("postgres: {e}")))
    }

    fn stop_listener(&self) {
        if let Some(t) = self.listener.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            t.abort();
        }
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.stop_listener();
    }
}

/// A Postgres error as a store error.
pub(super) fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(format!("postgres: {e}"))
}

/// Commits `tx` when `done` is Ok, else rolls it back before the connection goes back to the
/// pool (awaited: a transaction left open would keep its row locks and block the next claim).
pub(super) async fn finish(
    tx: deadpool_postgres::Transaction<'_>,
    done: Result<(), StoreError>,
) -> Result<(), StoreError> {
    match done {
        Ok(()) => tx.commit().await.map_err(pg),
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// Runs one store operation with [`OP_TIMEOUT`].
pub(super) async fn within<T>(op: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(OP_TIMEOUT, op)
        .await
        .unwrap_or_else(|_| Err(StoreError::Backend("postgres: no answer in time".into())))
}

/// Creates the schema and applies the migrations it lacks, under a transaction-scoped advisory
/// lock keyed by the namespace: replicas starting at once wait for each other, and the second
/// finds nothing to do. A schema newer than this tether stops startup.
async fn migrate(pool: &Pool, ns: &str) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("connecting")?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&format!("tether-migrate:{ns}")]).await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{ns}\"; SET LOCAL search_path TO \"{ns}\";
         CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);"
    ))
    .await?;
    let version: i32 = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[]).await?.get(0);
    let version = usize::try_from(version).unwrap_or(0);
    if version > MIGRATIONS.len() {
        anyhow::bail!(
            "schema \"{ns}\" has version {version}, newer than this tether understands ({}); run a newer tether or use another --store-namespace",
            MIGRATIONS.len()
        );
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.batch_execute(m).await.with_context(|| format!("migrating schema \"{ns}\" to version {}", i + 1))?;
    }
    tx.execute("DELETE FROM schema_version", &[]).await?;
    tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&(MIGRATIONS.len() as i32)]).await?;
    tx.commit().await?;
    Ok(())
}

const RECORD_COLUMNS: &str = "id, transport, protocol_version, client_init, upstream_init, state, principal, \
     created_at, last_active, requests, tool_calls, closed_at, close_reason";

fn record_from_row(r: &tokio_postgres::Row) -> Result<SessionRecord, StoreError> {
    let bad = |e: String| StoreError::Backend(format!("postgres: a stored record is unreadable: {e}"));
    let raw = |s: Option<String>| -> Result<Option<std::sync::Arc<serde_json::value::RawValue>>, StoreError> {
        s.map(|t| serde_json::value::RawValue::from_string(t).map_err(|e| bad(e.to_string())).map(|v| intern(&v)))
            .transpose()
    };
    let transport: String = r.try_get("transport").map_err(pg)?;
    let state: String = r.try_get("state").map_err(pg)?;
    let reason: Option<String> = r.try_get("close_reason").map_err(pg)?;
    Ok(SessionRecord {
        id: r.try_get("id").map_err(pg)?,
        transport: Transport::from_label(&transport),
        protocol_version: r.try_get("protocol_version").map_err(pg)?,
        client_init: raw(r.try_get("client_init").map_err(pg)?)?,
        upstream_init: raw(r.try_get("upstream_init").map_err(pg)?)?,
        state: serde_json::from_str::<SessionState>(&state).map_err(|e| bad(e.to_string()))?,
        principal: r.try_get("principal").map_err(pg)?,
        created_at: r.try_get::<_, i64>("created_at").map_err(pg)? as u64,
        last_active: r.try_get::<_, i64>("last_active").map_err(pg)? as u64,
        requests: r.try_get::<_, i64>("requests").map_err(pg)? as u64,
        tool_calls: r.try_get::<_, i64>("tool_calls").map_err(pg)? as u64,
        closed_at: r.try_get::<_, Option<i64>>("closed_at").map_err(pg)?.map(|v| v as u64),
        close_reason: reason.and_then(|s| serde_json::from_value(serde_json::Value::String(s)).ok()),
    })
}

pub(super) fn state_json(state: &SessionState) -> String {
    serde_json::to_string(state).unwrap_or_else(|_| "{}".into())
}

/// Inserts one event (replacing one at the same position), drops the evicted stream, and
/// notifies tailers, in the transaction `tx` (NOTIFY is delivered at commit).
pub(super) async fn insert_event(
    tx: &deadpool_postgres::Transaction<'_>,
    channel: &str,
    ev: (&str, &str, u64, &[u8], bool),
    evict: Option<&str>,
) -> Result<(), StoreError> {
    let (session, stream, seq, data, fin) = ev;
    let st = tx
        .prepare_cached(
            "INSERT INTO events (session_id, stream, seq, data, fin, created_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (session_id, stream, seq) DO UPDATE
                 SET data = excluded.data, fin = excluded.fin, created_at = excluded.created_at",
        )
        .await
        .map_err(pg)?;
    let now = crate::session::record::now_ms() as i64;
    tx.execute(&st, &[&session, &stream, &(seq as i64), &data, &fin, &now]).await.map_err(pg)?;
    if let Some(old) = evict {
        tx.execute("DELETE FROM events WHERE session_id = $1 AND stream = $2", &[&session, &old]).await.map_err(pg)?;
        tx.execute("DELETE FROM event_floors WHERE session_id = $1 AND stream = $2", &[&session, &old])
            .await
            .map_err(pg)?;
    }
    tx.execute("SELECT pg_notify($1, $2)", &[&channel, &format!("{session} {stream}")]).await.map_err(pg)?;
    Ok(())
}

impl PostgresStore {
    async fn append_event(&self, ev: (&str, &str, u64, &[u8], bool), evict: Option<&str>) -> Result<(), StoreError> {
        within(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await.map_err(pg)?;
            let done = insert_event(&tx, &self.channel, ev, evict).await;
            finish(tx, done).await
        })
        .await
    }
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn create(&self, r: &SessionRecord) -> Result<(), StoreError> {
        within(async {
            let c = self.conn().await?;
            c.execute(
                &format!("INSERT INTO sessions ({RECORD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"),
                &[
                    &r.id,
                    &r.transport.as_str(),
                    &r.protocol_version,
                    &r.client_init.as_ref().map(|v| v.get()),
                    &r.upstream_init.as_ref().map(|v| v.get()),
                    &state_json(&r.state),
                    &r.principal,
                    &(r.created_at as i64),
                    &(r.last_active as i64),
                    &(r.requests as i64),
                    &(r.tool_calls as i64),
                    &r.closed_at.map(|v| v as i64),
                    &r.close_reason.map(CloseReason::as_str),
                ],
            )
            .await
            .map(drop)
            .map_err(pg)
        })
        .await
    }

    async fn set_handshake(&self, r: &SessionRecord) -> Result<(), StoreError> {
        within(async {
            let c = self.conn().await?;
            c.execute(
                "UPDATE sessions SET protocol_version = $2, client_init = $3, upstream_init = $4 WHERE id = $1",
                &[
                    &r.id,
                    &r.protocol_version,
                    &r.client_init.as_ref().map(|v| v.get()),
                    &r.upstream_init.as_ref().map(|v| v.get()),
                ],
            )
            .await
            .map(drop)
            .map_err(pg)
        })
        .await
    }

    async fn set_state(&self, id: &str, state: &SessionState) -> Result<(), StoreError> {
        within(async {
            let c = self.conn().await?;
            c.execute("UPDATE sessions SET state = $2 WHERE id = $1", &[&id, &state_json(state)])
                .await
                .map(drop)
                .map_err(pg)
        })
        .await
    }

    async fn touch(&self, id: &str, a: Activity) -> Result<(), StoreError> {
        within(async {
            let c = self.conn().await?;
            c.execute(
                "UPDATE sessions SET last_active = GREATEST(last_active, $2), requests = requests + $3,
                     tool_calls = tool_calls + $4 WHERE id = $1",
                &[&id, &(a.last_active as i64), &(a.requests as i64), &(a.tool_calls as i64)],
            )
            .await
            .map(drop)
            .map_err(pg)
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        within(async {
            let c = self.conn().await?;
            let row = c
                .query_opt(&format!("SELECT {RECORD_COLUMNS} FROM sessions WHERE id = $1"), &[&id])
                .await
                .map_err(pg)?;
            row.as_ref().map(record_from_row).transpose()
        })
        .await
    }

    async fn close(&self, id: &str, at: u64, reason: CloseReason) -> Result<(), StoreError> {
        within(async {
            let c = self.conn().await?;
            c.execute(
                "UPDATE sessions SET closed_at = $2, close_reason = $3 WHERE id = $1 AND closed_at IS NULL",
                &[&id, &(at as i64), &reason.as_str()],
            )
            .await
            .map(drop)
            .map_err(pg)
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
        within(async {
            let c = self.conn().await?;
            let (created, id) = match after {
                Some(a) => c
                    .query_opt("SELECT created_at, id FROM sessions WHERE id = $1", &[&a])
                    .await
                    .map_err(pg)?
                    .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
                    .unwrap_or((i64::MIN, String::new())),
                None => (i64::MIN, String::new()),
            };
            let state = match filter {
                RecordFilter::Open => "closed_at IS NULL AND",
                RecordFilter::Closed => "closed_at IS NOT NULL AND",
                RecordFilter::All => "",
            };
            let rows = c
                .query(
                    &format!(
                        "SELECT {RECORD_COLUMNS} FROM sessions WHERE {state} (created_at, id) > ($1, $2)
                         ORDER BY created_at, id LIMIT $3"
                    ),
                    &[&created, &id, &(limit as i64)],
                )
                .await
                .map_err(pg)?;
            rows.iter().map(record_from_row).collect()
        })
        .await
    }

    async fn count_open(&self, active_since: u64) -> Result<u64, StoreError> {
        within(async {
            let c = self.conn().await?;
            let row = c
                .query_one(
                    "SELECT COUNT(*) FROM sessions WHERE closed_at IS NULL AND last_active >= $1",
                    &[&(active_since as i64)],
                )
                .await
                .map_err(pg)?;
            Ok(row.get::<_, i64>(0) as u64)
        })
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write commits before it returns.
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), StoreError> {
        self.stop_listener();
        self.pool.close();
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        within(async { self.conn().await?.simple_query("SELECT 1").await.map(drop).map_err(pg) }).await
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(&self, session: &str, stream: &str, seq: u64, data: &[u8], fin: bool) -> Result<(), StoreError> {
        self.append_event((session, stream, seq, data, fin), None).await
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
        self.append_event((session, stream, seq, data, fin), Some(evict)).await
    }

    async fn replay(&self, session: &str, stream: &str, after_seq: u64, limit: usize) -> Result<Replay, StoreError> {
        within(async {
            let c = self.conn().await?;
            let floor: Option<i64> = c
                .query_opt("SELECT floor FROM event_floors WHERE session_id = $1 AND stream = $2", &[&session, &stream])
                .await
                .map_err(pg)?
                .map(|r| r.get(0));
            if floor.is_some_and(|f| (after_seq as i64) < f) {
                return Ok(Replay::Gone);
            }
            let st = c
                .prepare_cached(
                    "SELECT seq, data, fin FROM events WHERE session_id = $1 AND stream = $2 AND seq > $3
                     ORDER BY seq LIMIT $4",
                )
                .await
                .map_err(pg)?;
            let rows = c.query(&st, &[&session, &stream, &(after_seq as i64), &(limit as i64)]).await.map_err(pg)?;
            let events: Vec<StoredEvent> = rows
                .iter()
                .map(|r| StoredEvent {
                    seq: r.get::<_, i64>(0) as u64,
                    data: Bytes::from(r.get::<_, Vec<u8>>(1)),
                    fin: r.get(2),
                })
                .collect();
            if events.is_empty() && floor.is_none() {
                let known: bool = c
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM events WHERE session_id = $1 AND stream = $2)",
                        &[&session, &stream],
                    )
                    .await
                    .map_err(pg)?
                    .get(0);
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
        within(async {
            let c = self.conn().await?;
            // Data-modifying CTEs: the dropped rows raise their streams' floors in the same statement.
            let floors = "f AS (INSERT INTO event_floors (session_id, stream, floor)
                     SELECT session_id, stream, MAX(seq) FROM gone GROUP BY session_id, stream
                 ON CONFLICT (session_id, stream) DO UPDATE SET floor = GREATEST(event_floors.floor, excluded.floor))";
            let old: i64 = c
                .query_one(
                    &format!(
                        "WITH gone AS (DELETE FROM events WHERE created_at < $1 RETURNING session_id, stream, seq),
                         {floors} SELECT COUNT(*) FROM gone"
                    ),
                    &[&cutoff],
                )
                .await
                .map_err(pg)?
                .get(0);
            let excess: i64 = c
                .query_one(
                    &format!(
                        "WITH ranked AS (SELECT session_id, stream, seq,
                              ROW_NUMBER() OVER (PARTITION BY session_id, stream ORDER BY seq DESC) AS rn FROM events),
                         gone AS (DELETE FROM events e USING ranked r
                              WHERE e.session_id = r.session_id AND e.stream = r.stream AND e.seq = r.seq AND r.rn > $1
                              RETURNING e.session_id, e.stream, e.seq),
                         {floors} SELECT COUNT(*) FROM gone"
                    ),
                    &[&cap],
                )
                .await
                .map_err(pg)?
                .get(0);
            Ok((old + excess) as u64)
        })
        .await
    }

    async fn forget(&self, session: &str) -> Result<(), StoreError> {
        within(async {
            let c = self.conn().await?;
            c.execute("DELETE FROM events WHERE session_id = $1", &[&session]).await.map_err(pg)?;
            c.execute("DELETE FROM event_floors WHERE session_id = $1", &[&session]).await.map(drop).map_err(pg)
        })
        .await
    }
}
