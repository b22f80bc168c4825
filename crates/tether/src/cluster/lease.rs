//! The renewer: every third of the lease TTL, one store call renews every lease this replica
//! holds, whatever its sessions are doing (a call longer than the TTL keeps its lease). A lease
//! the store no longer lists as ours, or that could not be renewed before it runs out here, is
//! fenced: the local copy of its session stops (its child with it) before another replica can
//! claim it by the store's clock.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Cluster;

pub(super) async fn renew(cluster: Arc<Cluster>, stop: CancellationToken) {
    let every = cluster.ttl / 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let sent = Instant::now();
        let lost = match cluster.store.renew_all(&cluster.me, cluster.ttl).await {
            Ok(still) => {
                let still: HashSet<String> = still.into_iter().collect();
                let mut held = cluster.lock();
                // A lease claimed while the renewal ran may not be in its answer, and is not
                // lost: only those whose claim was answered before the renewal was sent count.
                let lost: Vec<String> = held
                    .iter()
                    .filter(|(id, h)| h.claimed < sent && !still.contains(*id))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in &lost {
                    held.remove(id);
                }
                for (id, h) in held.iter_mut() {
                    if still.contains(id) {
                        h.since = h.since.max(sent);
                    }
                }
                cluster.stats.cluster.leases_held.set(i64::try_from(held.len()).unwrap_or(i64::MAX));
                lost
            }
            Err(e) => {
                warn!(error = %e, "renewing the session leases failed; retrying");
                // Those that would run out before the next try are given up now.
                let mut held = cluster.lock();
                let horizon = every + cluster.margin();
                let lost: Vec<String> = held
                    .iter()
                    .filter(|(_, h)| h.since.elapsed() + horizon >= cluster.ttl)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in &lost {
                    held.remove(id);
                }
                cluster.stats.cluster.leases_held.set(i64::try_from(held.len()).unwrap_or(i64::MAX));
                lost
            }
        };
        if !lost.is_empty() {
            cluster.fence(lost).await;
        }
        // Sessions that ended here without a DELETE (expired, terminated, their upstream
        // failed) give their lease back; one claimed moments ago may not be loaded yet.
        let ended: Vec<String> = cluster
            .lock()
            .iter()
            .filter(|(id, h)| h.claimed + every < sent && cluster.manager.live_session(id).is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ended {
            cluster.release(&id).await;
        }
    }
}
