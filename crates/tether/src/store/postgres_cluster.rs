//! The cluster primitives on Postgres: the replica registry, ownership leases whose expiry is
//! the server's `now()`, writes fenced by epoch in the same transaction, and the LISTEN task
//! that turns NOTIFY into wake-ups and comes back after its connection dies.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::{broadcast, oneshot};
use tokio_postgres::{AsyncMessage, NoTls};

use super::cluster::{Claim, ClusterStore, Lease, ReplicaId, ReplicaInfo, Wake, parse_wake};
use super::postgres::{PostgresStore, finish, insert_event, pg, state_json, within};
use crate::session::record::SessionState;
use crate::session::store::StoreError;

/// How long the listener waits before reconnecting, at most.
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

fn ms(ttl: Duration) -> f64 {
    ttl.as_millis() as f64
}

/// The row of a lease as `Lease`; `None` when released.
fn lease_from_row(r: &tokio_postgres::Row) -> Option<Lease> {
    let owner: Option<String> = r.get(0);
    let incarnation: Option<String> = r.get(1);
    Some(Lease {
        owner: ReplicaId { id: owner?, incarnation: incarnation? },
        epoch: r.get::<_, i64>(2) as u64,
        left_ms: r.get::<_, i64>(3).max(0) as u64,
    })
}

const LEASE_COLUMNS: &str =
    "owner, incarnation, epoch, (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::BIGINT AS left_ms";

/// Locks the lease row of `session` for the transaction (a claim waits for the write) if
/// `epoch` is its current, unexpired epoch; else the write is fenced.
async fn check_fence(tx: &deadpool_postgres::Transaction<'_>, session: &str, epoch: u64) -> Result<(), StoreError> {
    let live = tx
        .query_opt(
            "SELECT 1 FROM leases WHERE session_id = $1 AND epoch = $2 AND owner IS NOT NULL AND expires_at > now()
             FOR SHARE",
            &[&session, &(epoch as i64)],
        )
        .await
        .map_err(pg)?;
    match live {
        Some(_) => Ok(()),
        None => Err(StoreError::Fenced { session: session.to_owned(), epoch }),
    }
}

#[async_trait]
impl ClusterStore for PostgresStore {
    async fn register(&self, me: &ReplicaId, addr: &str) -> Result<(), StoreError> {
        within(async {
            self.conn()
                .await?
                .execute(
                    "INSERT INTO replicas (id, incarnation, addr, heartbeat_at) VALUES ($1, $2, $3, now())
                     ON CONFLICT (id) DO UPDATE SET incarnation = excluded.incarnation, addr = excluded.addr,
                         heartbeat_at = excluded.heartbeat_at",
                    &[&me.id, &me.incarnation, &addr],
                )
                .await
                .map(drop)
                .map_err(pg)
        })
        .await
    }

    async fn heartbeat(&self, me: &ReplicaId) -> Result<bool, StoreError> {
        within(async {
            let n = self
                .conn()
                .await?
                .execute(
                    "UPDATE replicas SET heartbeat_at = now() WHERE id = $1 AND incarnation = $2",
                    &[&me.id, &me.incarnation],
                )
                .await
                .map_err(pg)?;
            Ok(n > 0)
        })
        .await
    }

    async fn replicas(&self) -> Result<Vec<ReplicaInfo>, StoreError> {
        within(async {
            let rows = self
                .conn()
                .await?
                .query(
                    "SELECT id, incarnation, addr,
                         (EXTRACT(EPOCH FROM (now() - heartbeat_at)) * 1000)::BIGINT FROM replicas ORDER BY id",
                    &[],
                )
                .await
                .map_err(pg)?;
            Ok(rows
                .iter()
                .map(|r| ReplicaInfo {
                    replica: ReplicaId { id: r.get(0), incarnation: r.get(1) },
                    addr: r.get(2),
                    heartbeat_age_ms: r.get::<_, i64>(3).max(0) as u64,
                })
                .collect())
        })
        .await
    }

    async fn deregister(&self, me: &ReplicaId) -> Result<(), StoreError> {
        within(async {
            self.conn()
                .await?
                .execute("DELETE FROM replicas WHERE id = $1 AND incarnation = $2", &[&me.id, &me.incarnation])
                .await
                .map(drop)
                .map_err(pg)
        })
        .await
    }

    async fn claim(&self, session: &str, me: &ReplicaId, ttl: Duration) -> Result<Claim, StoreError> {
        within(async {
            let c = self.conn().await?;
            // One statement: the row lock makes concurrent claims take turns, and the server's
            // now() decides expiry. The same owner renews and keeps its epoch; a new one raises it.
            let claim = c
                .prepare_cached(
                    "INSERT INTO leases (session_id, owner, incarnation, epoch, expires_at)
                         VALUES ($1, $2, $3, 1, now() + $4::FLOAT8 * INTERVAL '1 millisecond')
                     ON CONFLICT (session_id) DO UPDATE SET
                         epoch = CASE WHEN leases.owner = excluded.owner AND leases.incarnation = excluded.incarnation
                                      THEN leases.epoch ELSE leases.epoch + 1 END,
                         owner = excluded.owner, incarnation = excluded.incarnation, expires_at = excluded.expires_at
                     WHERE (leases.owner = excluded.owner AND leases.incarnation = excluded.incarnation)
                         OR leases.owner IS NULL OR leases.expires_at <= now()
                     RETURNING epoch",
                )
                .await
                .map_err(pg)?;
            // A holder may release between the failed claim and the look-up: try again then.
            for _ in 0..3 {
                if let Some(row) =
                    c.query_opt(&claim, &[&session, &me.id, &me.incarnation, &ms(ttl)]).await.map_err(pg)?
                {
                    return Ok(Claim::Won { epoch: row.get::<_, i64>(0) as u64 });
                }
                let held = c
                    .query_opt(&format!("SELECT {LEASE_COLUMNS} FROM leases WHERE session_id = $1"), &[&session])
                    .await
                    .map_err(pg)?;
                if let Some(lease) = held.as_ref().and_then(lease_from_row) {
                    return Ok(Claim::Held(lease));
                }
            }
            Err(StoreError::Backend("postgres: the lease kept changing during the claim".into()))
        })
        .await
    }

    async fn renew_all(&self, me: &ReplicaId, ttl: Duration) -> Result<Vec<String>, StoreError> {
        within(async {
            let rows = self
                .conn()
                .await?
                .query(
                    "UPDATE leases SET expires_at = now() + $3::FLOAT8 * INTERVAL '1 millisecond'
                     WHERE owner = $1 AND incarnation = $2 AND expires_at > now() RETURNING session_id",
                    &[&me.id, &me.incarnation, &ms(ttl)],
                )
                .await
                .map_err(pg)?;
            let mut held: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            held.sort();
            Ok(held)
        })
        .await
    }

    async fn release(&self, session: &str, me: &ReplicaId) -> Result<bool, StoreError> {
        within(async {
            let n = self
                .conn()
                .await?
                .execute(
                    "UPDATE leases SET owner = NULL, incarnation = NULL, expires_at = now()
                     WHERE session_id = $1 AND owner = $2 AND incarnation = $3",
                    &[&session, &me.id, &me.incarnation],
                )
                .await
                .map_err(pg)?;
            Ok(n > 0)
        })
        .await
    }

    async fn release_all(&self, me: &ReplicaId) -> Result<u64, StoreError> {
        within(async {
            self.conn()
                .await?
                .execute(
                    "UPDATE leases SET owner = NULL, incarnation = NULL, expires_at = now()
                     WHERE owner = $1 AND incarnation = $2",
                    &[&me.id, &me.incarnation],
                )
                .await
                .map_err(pg)
        })
        .await
    }

    async fn lease(&self, session: &str) -> Result<Option<Lease>, StoreError> {
        within(async {
            let row = self
                .conn()
                .await?
                .query_opt(&format!("SELECT {LEASE_COLUMNS} FROM leases WHERE session_id = $1"), &[&session])
                .await
                .map_err(pg)?;
            Ok(row.as_ref().and_then(lease_from_row))
        })
        .await
    }

    async fn append_fenced(
        &self,
        session: &str,
        stream: &str,
        seq: u64,
        data: &[u8],
        fin: bool,
        evict: Option<&str>,
        epoch: u64,
    ) -> Result<(), StoreError> {
        within(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await.map_err(pg)?;
            let done = match check_fence(&tx, session, epoch).await {
                Ok(()) => insert_event(&tx, &self.channel, (session, stream, seq, data, fin), evict).await,
                Err(e) => Err(e),
            };
            finish(tx, done).await
        })
        .await
    }

    async fn set_state_fenced(&self, id: &str, state: &SessionState, epoch: u64) -> Result<(), StoreError> {
        within(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await.map_err(pg)?;
            let done = match check_fence(&tx, id, epoch).await {
                Ok(()) => tx
                    .execute("UPDATE sessions SET state = $2 WHERE id = $1", &[&id, &state_json(state)])
                    .await
                    .map(drop)
                    .map_err(pg),
                Err(e) => Err(e),
            };
            finish(tx, done).await
        })
        .await
    }

    fn wakeups(&self) -> broadcast::Receiver<Wake> {
        self.wake.subscribe()
    }
}

/// The LISTEN task: one dedicated connection (not pooled: a LISTEN belongs to its session)
/// forwarding every NOTIFY on `channel` as a [`Wake`]. When the connection dies it reconnects
/// with a capped backoff and then sends [`Wake::All`], since notifications sent meanwhile are
/// lost. `listening` is told once the first LISTEN is in place. Runs until aborted.
pub(super) async fn listen(
    cfg: tokio_postgres::Config,
    channel: String,
    wake: broadcast::Sender<Wake>,
    listening: oneshot::Sender<()>,
) {
    let mut listening = Some(listening);
    let mut backoff = Duration::from_millis(50);
    loop {
        match cfg.connect(NoTls).await {
            Ok((client, mut conn)) => {
                // The connection must be polled for LISTEN to complete, so its messages are
                // drained by a task of their own while the command runs.
                let w = wake.clone();
                let driver = tokio::spawn(async move {
                    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                if let Some(wk) = parse_wake(n.payload()) {
                                    let _ = w.send(wk);
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "the Postgres wake-up connection failed");
                                break;
                            }
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN \"{channel}\"")).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(50);
                        match listening.take() {
                            Some(l) => {
                                let _ = l.send(());
                            }
                            // A reconnect: what was notified in between is lost; everyone re-reads.
                            None => {
                                tracing::info!("the Postgres wake-up listener is back");
                                let _ = wake.send(Wake::All);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "LISTEN failed"),
                }
                let _ = driver.await;
                drop(client);
            }
            Err(e) => tracing::warn!(error = %e, "the Postgres wake-up listener cannot connect; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
    }
}
