//! Active/standby on a shared store (`--standby`; cluster mode, `crate::cluster`, is the other
//! way to run several tethers on one namespace). Two tethers on one Postgres schema or Redis
//! prefix without cluster mode would each serve the same session with a child of its own, and
//! neither would see the other's DELETE. So such a tether holds a lease on its namespace (the
//! store's lease primitive, the store's clock) for as long as it serves.
//!
//! A tether that starts while another holds the lease waits for it to expire (a tether killed
//! with -9 is replaced within [`TTL`]) and refuses to start if its holder keeps renewing — or,
//! started with `--standby`, waits for as long as it takes and then takes over (`app/standby.rs`
//! keeps its listeners meanwhile). A holder that loses the lease (stopped past the TTL, or cut off
//! from the store) stops serving.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::StoreSpec;
use super::cluster::{Claim, ClusterStore, ReplicaId};

/// The lease's key beside the sessions' leases (no session id has a colon).
const KEY: &str = "tether:namespace-owner";

/// How long the lease lasts without renewal: the longest a restarted tether waits for a killed
/// one's lease, and the longest a stopped holder keeps it.
pub const TTL: Duration = Duration::from_secs(5);

/// The held namespace lease; [`NamespaceLease::release`] gives it back at the end of a clean stop.
pub struct NamespaceLease {
    store: Arc<dyn ClusterStore>,
    me: ReplicaId,
    renew: JoinHandle<()>,
}

impl NamespaceLease {
    /// Takes the namespace of a shared store (`None` for memory and SQLite, which serve one
    /// process). `lost` is cancelled if the lease is lost later, which stops the gateway.
    pub async fn acquire(
        spec: &StoreSpec,
        store: Arc<dyn ClusterStore>,
        me: ReplicaId,
        lost: CancellationToken,
    ) -> anyhow::Result<NamespaceLease> {
        // A live holder renews every TTL/3, so its lease never runs out: past one TTL (and a
        // margin for the store's clock) it is alive, not a leftover of a killed tether.
        let give_up = Instant::now() + TTL + Duration::from_secs(1);
        loop {
            match store.claim(KEY, &me, TTL).await? {
                Claim::Won { .. } => break,
                Claim::Held(lease) if Instant::now() < give_up => {
                    info!(
                        owner = %lease.owner.id,
                        left_ms = lease.left_ms,
                        "waiting for the previous tether's lease on the store namespace to expire"
                    );
                    tokio::time::sleep(Duration::from_millis(lease.left_ms.clamp(100, 1000))).await;
                }
                Claim::Held(lease) => anyhow::bail!(
                    "another tether ({}) serves the store namespace {:?} of {}; several tethers on one \
                     namespace need cluster mode, which is not built yet: give each tether its own \
                     --store-namespace",
                    lease.owner.id,
                    spec.namespace(),
                    spec.describe()
                ),
            }
        }
        info!(namespace = spec.namespace(), "holding the store namespace");
        let renew = tokio::spawn(renew(store.clone(), me.clone(), lost));
        Ok(NamespaceLease { store, me, renew })
    }

    /// Waits as a standby until the namespace is free (its holder released it, or was killed
    /// and its lease ran out), then takes it. The store being unreachable meanwhile is waited
    /// out too.
    pub async fn take_when_free(
        spec: &StoreSpec,
        store: Arc<dyn ClusterStore>,
        me: ReplicaId,
        lost: CancellationToken,
    ) -> NamespaceLease {
        let mut holder: Option<String> = None;
        loop {
            match store.claim(KEY, &me, TTL).await {
                Ok(Claim::Won { .. }) => break,
                Ok(Claim::Held(lease)) => {
                    if holder.as_deref() != Some(lease.owner.id.as_str()) {
                        info!(owner = %lease.owner.id, "standing by: another tether serves the store namespace");
                        holder = Some(lease.owner.id.clone());
                    }
                    tokio::time::sleep(Duration::from_millis(lease.left_ms.clamp(100, (TTL / 3).as_millis() as u64)))
                        .await;
                }
                Err(e) => {
                    warn!(error = %e, "standing by: the store is unreachable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        info!(
            namespace = spec.namespace(),
            previous = holder.as_deref().unwrap_or("none"),
            "took over the store namespace"
        );
        let renew = tokio::spawn(renew(store.clone(), me.clone(), lost));
        NamespaceLease { store, me, renew }
    }

    /// Stops renewing and gives the lease back, so the next tether starts at once.
    pub async fn release(self) {
        self.renew.abort();
        if let Err(e) = self.store.release(KEY, &self.me).await {
            warn!(error = %e, "releasing the store namespace failed; it expires by itself");
        }
    }
}

/// Who holds the namespace now (`None`: nobody, or a lease that ran out).
pub async fn holder(store: &dyn ClusterStore) -> Result<Option<ReplicaId>, crate::session::store::StoreError> {
    Ok(store.lease(KEY).await?.filter(|l| l.left_ms > 0).map(|l| l.owner))
}

/// Renews every TTL/3; cancels `lost` when another tether holds the lease or the store could
/// not be reached for a whole TTL.
async fn renew(store: Arc<dyn ClusterStore>, me: ReplicaId, lost: CancellationToken) {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(TTL / 3).await;
        match store.claim(KEY, &me, TTL).await {
            Ok(Claim::Won { .. }) => renewed = Instant::now(),
            Ok(Claim::Held(lease)) => {
                error!(owner = %lease.owner.id, "another tether took the store namespace; stopping");
                lost.cancel();
                return;
            }
            Err(e) if renewed.elapsed() >= TTL => {
                error!(error = %e, "the store namespace's lease could not be renewed for its whole TTL; stopping");
                lost.cancel();
                return;
            }
            Err(e) => warn!(error = %e, "renewing the store namespace's lease failed; retrying"),
        }
    }
}
