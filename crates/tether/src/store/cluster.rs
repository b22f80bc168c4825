//! The store primitives several replicas share: a replica registry, ownership leases with
//! fencing epochs, fenced writes and tail wake-ups. Implemented by Postgres, Redis and memory
//! (one process, for tests); SQLite is single-process and has none of this. It owns the
//! contract (what the store promises), not the policy (when to claim, forward or self-fence):
//! that is the session layer's.
//!
//! The STORE's clock decides every expiry (Postgres `now()`, Redis `TIME` and `PX`, memory
//! tokio time), so replicas with skewed clocks agree on who holds a lease.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::session::record::SessionState;
use crate::session::store::{Store, StoreError};

/// One replica: its id (stable across restarts, e.g. a hostname) plus a random incarnation
/// drawn at each start, so a restart inherits nothing from its previous life.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplicaId {
    /// The configured id.
    pub id: String,
    /// Random per start.
    pub incarnation: String,
}

impl ReplicaId {
    /// `id` with a fresh random incarnation.
    pub fn new(id: &str) -> ReplicaId {
        ReplicaId { id: id.to_owned(), incarnation: format!("{:016x}", rand::random::<u64>()) }
    }
}

/// A registered replica as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// Who.
    pub replica: ReplicaId,
    /// What other replicas dial for the internal hop (`HOST:PORT`).
    pub addr: String,
    /// Milliseconds since its last heartbeat, by the store's clock.
    pub heartbeat_age_ms: u64,
}

/// Who holds a session's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The owner.
    pub owner: ReplicaId,
    /// The fencing epoch: rises each time a new owner claims the session.
    pub epoch: u64,
    /// Milliseconds until it expires, by the store's clock (0: expired, claimable).
    pub left_ms: u64,
}

/// What a claim got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the lease (newly, with a higher epoch; or again, with the same one).
    Won {
        /// The epoch to carry on every write.
        epoch: u64,
    },
    /// Another replica holds a live lease.
    Held(Lease),
}

/// A tail wake-up: "these events may be new; re-read from your cursor". Carries no data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// An event was appended to `stream` of `session`.
    Stream {
        /// The session.
        session: String,
        /// The stream.
        stream: String,
    },
    /// Wake-ups may have been missed (the notify connection was re-established, or this
    /// receiver lagged): every tailer re-reads.
    All,
}

/// Wake-ups a receiver may lag behind before it is told [`Wake::All`] (a broadcast bound).
pub const WAKE_BUFFER: usize = 1024;

/// The cluster primitives. Every method may fail with [`StoreError::Backend`] when the store
/// is unreachable; the fenced writes fail with [`StoreError::Fenced`] on a stale epoch.
#[async_trait]
pub trait ClusterStore: Store {
    /// Registers (or re-registers) `me` at `addr`, heartbeat now.
    async fn register(&self, me: &ReplicaId, addr: &str) -> Result<(), StoreError>;
    /// Refreshes `me`'s heartbeat; `false` when `me` is not registered (another incarnation
    /// replaced it, or it was deregistered).
    async fn heartbeat(&self, me: &ReplicaId) -> Result<bool, StoreError>;
    /// Every registered replica, by id.
    async fn replicas(&self) -> Result<Vec<ReplicaInfo>, StoreError>;
    /// Removes `me` (a drain).
    async fn deregister(&self, me: &ReplicaId) -> Result<(), StoreError>;

    /// Claims `session` for `me` for `ttl`: won when there is no lease, it expired, or `me`
    /// holds it already (then it is renewed and the epoch stays); otherwise who holds it.
    async fn claim(&self, session: &str, me: &ReplicaId, ttl: Duration) -> Result<Claim, StoreError>;
    /// Renews every live lease `me` holds for `ttl`, in one call; returns the sessions still
    /// held. An expired lease is lost, claimed by another replica or not: it is not renewed
    /// (its owner should have self-fenced), and the next claim raises its epoch.
    async fn renew_all(&self, me: &ReplicaId, ttl: Duration) -> Result<Vec<String>, StoreError>;
    /// Releases `me`'s lease of `session` (made claimable at once); `false` if `me` did not hold it.
    async fn release(&self, session: &str, me: &ReplicaId) -> Result<bool, StoreError>;
    /// Releases every lease `me` holds (a drain); how many.
    async fn release_all(&self, me: &ReplicaId) -> Result<u64, StoreError>;
    /// The lease of `session`, if held and not released. An expired one is `None` or has
    /// `left_ms == 0` (Redis forgets it, Postgres and memory keep it until the next claim).
    async fn lease(&self, session: &str) -> Result<Option<Lease>, StoreError>;

    /// [`EventStore::append_evicting`](crate::session::store::EventStore::append_evicting)
    /// (with `evict` optional) made only if `epoch` is the session's current, unexpired lease,
    /// checked in the same atomic write; wakes the stream's tailers.
    #[allow(clippy::too_many_arguments)]
    async fn append_fenced(
        &self,
        session: &str,
        stream: &str,
        seq: u64,
        data: &[u8],
        fin: bool,
        evict: Option<&str>,
        epoch: u64,
    ) -> Result<(), StoreError>;
    /// [`SessionStore::set_state`](crate::session::store::SessionStore::set_state), fenced
    /// like [`append_fenced`](ClusterStore::append_fenced).
    async fn set_state_fenced(&self, id: &str, state: &SessionState, epoch: u64) -> Result<(), StoreError>;

    /// A receiver of wake-ups for appends by any replica (including this one). Wake-ups are
    /// hints: a tailer re-reads from its cursor, and keeps a slow safety poll.
    fn wakeups(&self) -> broadcast::Receiver<Wake>;
}

/// Parses a wake-up payload `SESSION STREAM` (session ids have no space).
pub(crate) fn parse_wake(payload: &str) -> Option<Wake> {
    let (session, stream) = payload.split_once(' ')?;
    Some(Wake::Stream { session: session.to_owned(), stream: stream.to_owned() })
}

/// Checks a namespace (`--store-namespace`): a Postgres schema and a Redis key prefix, so
/// lowercase letters, digits and `_`, starting with a letter, at most 48 characters.
pub fn check_namespace(ns: &str) -> Result<(), String> {
    let ok = !ns.is_empty()
        && ns.len() <= 48
        && ns.starts_with(|c: char| c.is_ascii_lowercase())
        && ns.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("store namespace {ns:?}: use 1-48 lowercase letters, digits or `_`, starting with a letter"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_safe_identifiers() {
        assert!(check_namespace("tether").is_ok());
        assert!(check_namespace("t_1").is_ok());
        for bad in ["", "1abc", "Tether", "a-b", "a;drop", &"a".repeat(49)] {
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wake_payloads_parse() {
        assert_eq!(parse_wake("abc i.1"), Some(Wake::Stream { session: "abc".into(), stream: "i.1".into() }));
        assert_eq!(parse_wake("nospace"), None);
    }
}
