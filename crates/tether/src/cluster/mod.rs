//! Cluster mode's policy: which replica serves a session, and what the others do with its
//! requests. The store keeps the contract (leases with fencing epochs, decided by the store's
//! clock: `store/cluster.rs`); this module decides when to claim, forward and self-fence.
//!
//! - The replica that creates a session, or serves it first after its lease ran out, claims
//!   its lease. A renewer renews every held lease in one store call each third of the TTL,
//!   independent of calls; a lease not renewed in time is given up here first (the local
//!   copy of the session is evicted, its child stopped), before the store lets another
//!   replica take it.
//! - A request for a session whose live lease another registered replica holds is forwarded
//!   to that replica over the internal hop ([`hop`]). A failed hop alone does not prove the
//!   owner dead: the lease is looked up again, and only once it has run out is it claimed
//!   here, the session then revived from its stored record by replay.
//!
//! Not here: tailing the shared event log from a replica that does not own the session (a
//! client's stream is served by the owner, through the hop).

mod fenced;
pub mod hop;
mod lease;

pub use fenced::FencedStore;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::app::Board;
use crate::config::ClusterConfig;
use crate::error::GatewayError;
use crate::session::Manager;
use crate::stats::Stats;
use crate::store::cluster::{Claim, ClusterStore, ReplicaId};

/// How many claim locks sessions are spread over.
const CLAIM_STRIPES: usize = 64;

/// The claim lock of `session`.
fn stripe(session: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(session) as usize % CLAIM_STRIPES
}

/// Sessions whose owner is remembered at most (then the memory starts over).
const MAX_OWNERS_CACHED: usize = 10_000;

/// Where a request for a session goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This replica holds the lease: serve here.
    Local,
    /// Another replica holds a live lease: forward to its hop address.
    Forward {
        /// The owner's advertised hop address.
        addr: String,
        /// The lease's epoch, as read.
        epoch: u64,
        /// When the lease runs out, as read (unless renewed): a replica that finds the owner
        /// gone claims the session then.
        expires: Instant,
    },
}

/// A session's owner as last read: its hop address, the lease's epoch, until when the entry is
/// used without reading the store again, and when the lease runs out unless renewed.
#[derive(Debug, Clone)]
struct Owner {
    addr: String,
    epoch: u64,
    good_until: Instant,
    expires: Instant,
}

/// A lease held here.
#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: u64,
    /// When the claim (or the last renewal that kept it) was sent: the store's lease runs
    /// at least `ttl` from then.
    since: Instant,
    /// When its claim was answered: a renewal sent later lists it, if it is still ours.
    claimed: Instant,
}

/// The leases this replica holds, shared by [`Cluster`] (which claims, renews and fences them)
/// and [`FencedStore`] (which carries their epochs on the session layer's writes).
#[derive(Clone, Default)]
pub struct Leases(Arc<Mutex<HashMap<String, Held>>>);

impl Leases {
    /// The epoch of `session`'s lease if this replica holds it (the store decides whether it
    /// is still live).
    fn epoch(&self, session: &str) -> Option<u64> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(session).map(|h| h.epoch)
    }
}

/// This replica's side of cluster mode.
pub struct Cluster {
    store: Arc<dyn ClusterStore>,
    me: ReplicaId,
    ttl: Duration,
    config: ClusterConfig,
    manager: Arc<Manager>,
    board: Board,
    held: Leases,
    /// Owners recently looked up (hop address, epoch, good until): a forward skips the store
    /// read while the lease it saw is surely live. A failed forward forgets the entry.
    owners: Mutex<HashMap<String, Owner>>,
    /// One claim at a time per session here: two requests for a session whose lease ran out
    /// (a call and its client's stream reconnecting) must not both claim it and drop each
    /// other's copy. Striped by session id, so that the sessions of a dead replica are claimed
    /// at once rather than one after another.
    claiming: Vec<tokio::sync::Mutex<()>>,
    http: reqwest::Client,
    stats: Arc<Stats>,
}

impl Cluster {
    /// Cluster mode on `store` as `me`, serving `manager`'s sessions.
    pub fn new(
        store: Arc<dyn ClusterStore>,
        me: ReplicaId,
        config: ClusterConfig,
        manager: Arc<Manager>,
        board: Board,
        leases: Leases,
    ) -> anyhow::Result<Arc<Cluster>> {
        // No overall timeout: a forwarded call or stream lasts as long as the owner's answer.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()?;
        let stats = manager.deps().stats.clone();
        Ok(Arc::new(Cluster {
            store,
            me,
            ttl: config.lease_ttl,
            config,
            manager,
            board,
            held: leases,
            owners: Mutex::new(HashMap::new()),
            claiming: (0..CLAIM_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            http,
            stats,
        }))
    }

    /// Who this replica is.
    pub fn me(&self) -> &ReplicaId {
        &self.me
    }

    /// How many session leases this replica holds.
    pub fn leases_held(&self) -> usize {
        self.lock().len()
    }

    /// `session`'s lease as the store has it, for the admin: owner, epoch, time left, and
    /// whether this replica holds it.
    pub async fn lease_view(&self, session: &str) -> Result<Option<serde_json::Value>, GatewayError> {
        let lease = self.store.lease(session).await.map_err(store_error)?;
        Ok(lease.map(|l| {
            serde_json::json!({
                "owner": l.owner.id,
                "incarnation": l.owner.incarnation,
                "epoch": l.epoch,
                "leftMs": l.left_ms,
                "here": l.owner == self.me && l.left_ms > 0,
            })
        }))
    }

    /// Starts the renewer; it stops with `stop`.
    pub fn spawn_renewer(self: &Arc<Self>, stop: CancellationToken) {
        tokio::spawn(lease::renew(self.clone(), stop));
    }

    /// How long before the store's expiry a lease is given up here: a renewal's round trip
    /// and the replicas' clock rates may differ a little.
    fn margin(&self) -> Duration {
        (self.ttl / 10).max(Duration::from_millis(200))
    }

    /// The epoch of `session`'s lease, if this replica holds it and it is surely live.
    pub fn held_epoch(&self, session: &str) -> Option<u64> {
        let held = self.lock().get(session).copied()?;
        (held.since.elapsed() + self.margin() < self.ttl).then_some(held.epoch)
    }

    fn hold(&self, session: &str, epoch: u64, since: Instant) {
        let n = {
            let mut held = self.lock();
            // `claimed` is when the claim is known made (after the store answered): a renewal
            // sent before then may not list it, and must not count it lost.
            held.insert(session.to_owned(), Held { epoch, since, claimed: Instant::now() });
            held.len()
        };
        self.stats.cluster.leases_held.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Claims a session this replica just created.
    pub async fn claim_new(&self, session: &str) {
        let since = Instant::now();
        match self.store.claim(session, &self.me, self.ttl).await {
            Ok(Claim::Won { epoch }) => {
                self.stats.cluster.claims.inc();
                self.hold(session, epoch, since);
            }
            Ok(Claim::Held(l)) => {
                warn!(session_id = %session, owner = %l.owner.id, "a new session's lease is held elsewhere")
            }
            Err(e) => warn!(session_id = %session, error = %e, "claiming a new session's lease failed"),
        }
    }

    /// Where a request for `session` goes now. Waits (at most about one TTL) while the lease
    /// is held by a replica that is not registered (an earlier life of a restarted one).
    pub async fn route(&self, session: &str) -> Result<Route, GatewayError> {
        // Not an id tether issues (32 hex digits): the handler answers 404, no store read.
        if self.held_epoch(session).is_some() || session.len() != 32 || !session.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Ok(Route::Local);
        }
        if let Some(o) = self.owners_lock().get(session).cloned()
            && Instant::now() < o.good_until
        {
            return Ok(Route::Forward { addr: o.addr, epoch: o.epoch, expires: o.expires });
        }
        let deadline = Instant::now() + self.ttl + Duration::from_secs(1);
        loop {
            let lease = self.store.lease(session).await.map_err(store_error)?;
            match &lease {
                Some(l) if l.left_ms > 0 && l.owner != self.me => {
                    if let Some(addr) = self.address_of(&l.owner).await? {
                        let now = Instant::now();
                        let left = Duration::from_millis(l.left_ms);
                        let o = Owner {
                            addr,
                            epoch: l.epoch,
                            good_until: now + left.min(self.ttl / 3),
                            expires: now + left,
                        };
                        let mut owners = self.owners_lock();
                        if owners.len() >= MAX_OWNERS_CACHED {
                            owners.clear();
                        }
                        owners.insert(session.to_owned(), o.clone());
                        return Ok(Route::Forward { addr: o.addr, epoch: o.epoch, expires: o.expires });
                    }
                    if Instant::now() >= deadline {
                        return Err(GatewayError::OwnerUnreachable(format!("{} is not registered", l.owner.id)));
                    }
                    tokio::time::sleep(Duration::from_millis(l.left_ms.clamp(50, 500))).await;
                    continue;
                }
                _ => {}
            }
            // Free, run out, or ours (then the claim renews it and keeps the epoch). A session
            // that is not open in the store is not claimed: the handler answers 404 for it.
            if lease.is_none() {
                match self.store.get(session).await.map_err(store_error)? {
                    Some(r) if r.closed_at.is_none() => {}
                    _ => return Ok(Route::Local),
                }
            }
            let _one = self.claiming[stripe(session)].lock().await;
            if self.held_epoch(session).is_some() {
                return Ok(Route::Local);
            }
            let since = Instant::now();
            match self.store.claim(session, &self.me, self.ttl).await.map_err(store_error)? {
                Claim::Won { epoch } => {
                    // Redis forgets a lease that ran out; the epoch it keeps says one was held.
                    let taken_from = lease.filter(|l| l.owner != self.me).map(|l| l.owner.id);
                    // A copy of the session still here is from before another replica served
                    // it: its state may be stale. It is dropped; the record is replayed.
                    if self.manager.evict(session).await {
                        info!(session_id = %session, "stale local copy of the session dropped");
                    }
                    self.stats.cluster.claims.inc();
                    if taken_from.is_some() || epoch > 1 {
                        self.stats.cluster.takeovers.inc();
                        let from = taken_from.as_deref().unwrap_or("an earlier owner");
                        info!(session_id = %session, from = %from, epoch, "session lease taken over");
                    }
                    self.hold(session, epoch, since);
                    return Ok(Route::Local);
                }
                // Another replica claimed it meanwhile: look again (and forward to it).
                Claim::Held(_) => continue,
            }
        }
    }

    /// The hop address of a registered replica, `None` if it is not registered.
    async fn address_of(&self, owner: &ReplicaId) -> Result<Option<String>, GatewayError> {
        if let Some(rows) = self.board.rows()
            && let Some(r) = rows.iter().find(|r| r.id == owner.id && r.incarnation == owner.incarnation)
        {
            return Ok(Some(r.address.clone()));
        }
        // Not on the board yet (it started since the last read): ask the store.
        let all = self.store.replicas().await.map_err(store_error)?;
        Ok(all.into_iter().find(|r| r.replica == *owner).map(|r| r.addr))
    }

    /// Ends a session on an operator's word wherever it lives: on its owner, asked over the
    /// hop, when another live replica owns it; here otherwise (its lease then given back).
    /// False when no open session has this id.
    pub async fn terminate(&self, session: &str) -> Result<bool, GatewayError> {
        let lease = self.store.lease(session).await.map_err(store_error)?;
        if let Some(l) = lease.filter(|l| l.left_ms > 0 && l.owner != self.me)
            && let Some(addr) = self.address_of(&l.owner).await?
        {
            let mut rb = self.http.post(format!("http://{addr}{}{session}", hop::TERMINATE_PATH));
            if let Some(s) = &self.config.secret {
                rb = rb.header(hop::SECRET_HEADER, s.expose());
            }
            match rb.send().await {
                Ok(r) if r.status().is_success() => return Ok(true),
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => return Ok(false),
                Ok(r) => return Err(GatewayError::OwnerUnreachable(format!("the owner answered {}", r.status()))),
                // Not proof that it is dead: its lease will tell, and the record is closed here.
                Err(e) => {
                    warn!(session_id = %session, error = %e, "the owner did not take the terminate; closing the record")
                }
            }
        }
        self.terminate_here(session).await
    }

    /// The owner's side of [`terminate`](Cluster::terminate): ends the session here.
    pub async fn terminate_here(&self, session: &str) -> Result<bool, GatewayError> {
        let ended = self.manager.terminate(session).await.map_err(store_error)?;
        self.release(session).await;
        Ok(ended)
    }

    /// Gives `session`'s lease back (the session ended here).
    pub async fn release(&self, session: &str) {
        let n = {
            let mut held = self.lock();
            held.remove(session);
            held.len()
        };
        self.stats.cluster.leases_held.set(i64::try_from(n).unwrap_or(i64::MAX));
        if let Err(e) = self.store.release(session, &self.me).await {
            warn!(session_id = %session, error = %e, "releasing a session lease failed; it runs out");
        }
    }

    /// Gives every lease back at once (a drain): other replicas take the sessions over on
    /// their next request instead of waiting out the TTL.
    pub async fn release_all(&self) {
        self.lock().clear();
        self.stats.cluster.leases_held.set(0);
        match self.store.release_all(&self.me).await {
            Ok(n) => info!(leases = n, "session leases released"),
            Err(e) => warn!(error = %e, "releasing the session leases failed; they run out"),
        }
    }

    /// Drops the local copy of sessions whose lease is lost (self-fence): their children stop.
    async fn fence(&self, sessions: Vec<String>) {
        for id in sessions {
            // Claimed again here meanwhile (a request came for it as this replica woke up,
            // and its lease was free): the copy serving it now is not stopped. The claim lock
            // keeps a claim from slipping between the look and the eviction.
            let _one = self.claiming[stripe(&id)].lock().await;
            if self.lock().contains_key(&id) {
                continue;
            }
            self.stats.cluster.fenced.inc();
            warn!(session_id = %id, "session lease lost: the local copy is stopped (fenced)");
            self.manager.evict(&id).await;
        }
    }

    /// Forgets where `session` was forwarded (the forward failed, or the owner moved).
    pub fn forget_owner(&self, session: &str) {
        self.owners_lock().remove(session);
    }

    fn owners_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Owner>> {
        self.owners.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn store_error(e: crate::session::store::StoreError) -> GatewayError {
    warn!(error = %e, "the cluster store failed");
    GatewayError::Store(e.to_string())
}
