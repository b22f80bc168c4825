//! The replica registry of a shared store's namespace: every tether on it — the one serving and
//! any `--standby` — registers (its MCP address, a random incarnation), heartbeats every third
//! of the namespace lease's TTL, and deregisters at a clean stop. The registry task keeps a
//! board of what the store lists, read by the admin API (`/admin/replicas`) and the dashboard
//! without touching the store. Which one serves is the namespace lease's holder.
//!
//! A tether killed with -9 stays listed with a growing heartbeat age (`gone` after one lease
//! TTL, three missed beats) until the serving tether removes it, [`FORGET_AFTER`] later.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::store::StoreSpec;
use crate::store::cluster::{ClusterStore, ReplicaId};
use crate::store::namespace;

/// A replica not heard from for this long is deregistered by the serving one.
pub const FORGET_AFTER: Duration = Duration::from_secs(300);

/// One row of the board.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaRow {
    /// The replica's id (its MCP address).
    pub id: String,
    /// Random per start: a restarted replica is a new incarnation.
    pub incarnation: String,
    /// Where it serves MCP (in cluster mode: its hop address, which other replicas dial).
    pub address: String,
    /// Milliseconds since its last heartbeat, by the store's clock.
    pub heartbeat_age_ms: u64,
    /// `serving` (it holds the namespace), `standby` (heartbeating, waiting) or `gone` (no
    /// heartbeat for a lease TTL, three missed beats).
    pub role: &'static str,
    /// This process.
    pub this: bool,
    /// Cluster mode: the session leases it holds (known for this process only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leases_held: Option<u64>,
}

/// What the registry task last read, shared with the admin.
#[derive(Debug, Clone, Default)]
pub struct Board(Arc<Mutex<Option<Vec<ReplicaRow>>>>);

impl Board {
    /// The rows, or `None` when there is no registry (memory and SQLite stores).
    pub fn rows(&self) -> Option<Vec<ReplicaRow>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set(&self, rows: Vec<ReplicaRow>) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(rows);
    }
}

/// This tether's registration.
pub struct Registry {
    store: Arc<dyn ClusterStore>,
    me: ReplicaId,
    board: Board,
    task: JoinHandle<()>,
    cluster: bool,
}

impl Registry {
    /// Registers this tether as `id` (its MCP address) reachable at `addr` (its MCP address,
    /// or in cluster mode its hop address); `None` for stores that serve one process. In
    /// cluster mode every live replica serves.
    pub async fn start(spec: &StoreSpec, id: &str, addr: &str, cluster: bool) -> anyhow::Result<Option<Registry>> {
        if !spec.is_shared() {
            return Ok(None);
        }
        let Some(store) = crate::store::open_cluster(spec).await? else { return Ok(None) };
        let me = ReplicaId::new(id);
        store.register(&me, addr).await?;
        let board = Board::default();
        refresh(store.as_ref(), &me, &board, cluster).await;
        let task = tokio::spawn(beat(store.clone(), me.clone(), addr.to_owned(), board.clone(), cluster));
        Ok(Some(Registry { store, me, board, task, cluster }))
    }

    /// Who this tether is in the store (also the namespace lease's holder id).
    pub fn me(&self) -> &ReplicaId {
        &self.me
    }

    /// The store's cluster side, shared with the namespace lease.
    pub fn store(&self) -> Arc<dyn ClusterStore> {
        self.store.clone()
    }

    /// Reads the registry into the board now (after this tether took the namespace).
    pub async fn refresh(&self) {
        refresh(self.store.as_ref(), &self.me, &self.board, self.cluster).await;
    }

    /// The board the admin reads.
    pub fn board(&self) -> Board {
        self.board.clone()
    }

    /// Stops heartbeating and deregisters (a clean stop). A registry dropped without it (a
    /// standby stopped while it waited) stops heartbeating, shows as `gone` and is forgotten.
    pub async fn leave(self) {
        self.task.abort();
        if let Err(e) = self.store.deregister(&self.me).await {
            warn!(error = %e, "deregistering from the replica registry failed; the entry ages out");
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn beat(store: Arc<dyn ClusterStore>, me: ReplicaId, addr: String, board: Board, cluster: bool) {
    loop {
        tokio::time::sleep(namespace::TTL / 3).await;
        match store.heartbeat(&me).await {
            Ok(true) => {}
            // Removed (as gone, while this process was stopped): register again.
            Ok(false) => {
                if let Err(e) = store.register(&me, &addr).await {
                    warn!(error = %e, "registering again in the replica registry failed");
                }
            }
            Err(e) => warn!(error = %e, "the replica registry's heartbeat failed; retrying"),
        }
        refresh(store.as_ref(), &me, &board, cluster).await;
    }
}

/// Reads the registry and the namespace's holder into the board; the serving tether forgets
/// replicas silent for [`FORGET_AFTER`].
async fn refresh(store: &dyn ClusterStore, me: &ReplicaId, board: &Board, cluster: bool) {
    let (Ok(all), Ok(holder)) = (store.replicas().await, namespace::holder(store).await) else { return };
    // In cluster mode every replica forgets the silent ones (the deregistration is idempotent).
    let serving = cluster || holder.as_ref() == Some(me);
    let gone_after = namespace::TTL.as_millis() as u64;
    let mut rows = Vec::with_capacity(all.len());
    for r in all {
        if serving && r.heartbeat_age_ms > FORGET_AFTER.as_millis() as u64 && r.replica != *me {
            let _ = store.deregister(&r.replica).await;
            continue;
        }
        let role = if holder.as_ref() == Some(&r.replica) {
            "serving"
        } else if r.heartbeat_age_ms > gone_after {
            "gone"
        } else if cluster {
            "serving"
        } else {
            "standby"
        };
        rows.push(ReplicaRow {
            this: r.replica == *me,
            id: r.replica.id,
            incarnation: r.replica.incarnation,
            address: r.addr,
            heartbeat_age_ms: r.heartbeat_age_ms,
            role,
            leases_held: None,
        });
    }
    rows.sort_by(|a, b| {
        (a.role != "serving", &a.id, &a.incarnation).cmp(&(b.role != "serving", &b.id, &b.incarnation))
    });
    board.set(rows);
}
