//! Records and events in process memory: lost with the process. For tests and ephemeral use.
//! It also implements the cluster primitives for one process (leases expire by tokio time), so
//! the cluster contract runs against it too.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use tokio::sync::broadcast;

use super::cluster::{Claim, ClusterStore, Lease, ReplicaId, ReplicaInfo, WAKE_BUFFER, Wake};
use crate::clock::Instant;
use crate::session::record::{CloseReason, SessionRecord, SessionState};
use crate::session::store::{
    Activity, EventStore, RecordFilter, Replay, Retention, SessionStore, StoreError, StoredEvent,
};

/// Events kept per stream in memory (the retention limit is applied at prune time too).
const MAX_PER_STREAM: usize = 1000;

#[derive(Default)]
struct StreamLog {
    /// Events with their append time, oldest first.
    events: VecDeque<(u64, StoredEvent)>,
    /// The highest seq dropped by retention: a cursor below it cannot be resumed.
    floor: u64,
}

#[derive(Default)]
struct Inner {
    /// Boxed: the table then holds pointers, so its growth slack costs 8 bytes a slot, not a
    /// whole record.
    records: HashMap<String, Box<SessionRecord>>,
    events: HashMap<(String, String), StreamLog>,
    /// Live or expired leases by session, until released.
    leases: HashMap<String, MemLease>,
    /// The last epoch of every session ever claimed: epochs never go back, even after a release.
    epochs: HashMap<String, u64>,
    /// Registered replicas by id: incarnation, address, last heartbeat.
    replicas: HashMap<String, (ReplicaId, String, Instant)>,
}

struct MemLease {
    owner: ReplicaId,
    epoch: u64,
    until: Instant,
}

impl MemLease {
    fn view(&self, now: Instant) -> Lease {
        Lease {
            owner: self.owner.clone(),
            epoch: self.epoch,
            left_ms: self.until.saturating_duration_since(now).as_millis() as u64,
        }
    }
}

impl Inner {
    fn push(&mut self, session: &str, stream: &str, seq: u64, data: &[u8], fin: bool) {
        let now = crate::session::record::now_ms();
        let log = self.events.entry((session.to_owned(), stream.to_owned())).or_default();
        log.events.push_back((now, StoredEvent { seq, data: Bytes::copy_from_slice(data), fin }));
        while log.events.len() > MAX_PER_STREAM {
            if let Some((_, e)) = log.events.pop_front() {
                log.floor = e.seq;
            }
        }
    }
}

/// The in-memory backend.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    wake: broadcast::Sender<Wake>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore { inner: Mutex::default(), wake: broadcast::channel(WAKE_BUFFER).0 }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Checks `epoch` against the live lease of `session`.
    fn fence(m: &Inner, session: &str, epoch: u64) -> Result<(), StoreError> {
        match m.leases.get(session) {
            Some(l) if l.epoch == epoch && l.until > Instant::now() => Ok(()),
            _ => Err(StoreError::Fenced { session: session.to_owned(), epoch }),
        }
    }

    fn woke(&self, session: &str, stream: &str) {
        // No receiver is not an error: nobody tails.
        let _ = self.wake.send(Wake::Stream { session: session.to_owned(), stream: stream.to_owned() });
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Result<T, StoreError> {
        let mut g = self.inner.lock().map_err(|_| StoreError::Backend("poisoned".into()))?;
        Ok(f(&mut g))
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.with(|m| {
            m.records.insert(record.id.clone(), Box::new(record.clone()));
        })
    }

    async fn set_handshake(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.with(|m| {
            if let Some(r) = m.records.get_mut(&record.id) {
                r.protocol_version.clone_from(&record.protocol_version);
                r.client_init.clone_from(&record.client_init);
                r.upstream_init.clone_from(&record.upstream_init);
            }
        })
    }

    async fn set_state(&self, id: &str, state: &SessionState) -> Result<(), StoreError> {
        self.with(|m| {
            if let Some(r) = m.records.get_mut(id) {
                r.state = state.clone();
            }
        })
    }

    async fn touch(&self, id: &str, a: Activity) -> Result<(), StoreError> {
        self.with(|m| {
            if let Some(r) = m.records.get_mut(id) {
                r.last_active = r.last_active.max(a.last_active);
                r.requests += a.requests;
                r.tool_calls += a.tool_calls;
            }
        })
    }

    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.with(|m| m.records.get(id).map(|r| SessionRecord::clone(r)))
    }

    async fn close(&self, id: &str, at: u64, reason: CloseReason) -> Result<(), StoreError> {
        self.with(|m| {
            if let Some(r) = m.records.get_mut(id)
                && r.closed_at.is_none()
            {
                r.closed_at = Some(at);
                r.close_reason = Some(reason);
            }
        })
    }

    async fn list_open(&self, after: Option<&str>, limit: usize) -> Result<Vec<SessionRecord>, StoreError> {
        self.with(|m| {
            let mut open: Vec<_> =
                m.records.values().filter(|r| r.closed_at.is_none()).map(|r| SessionRecord::clone(r)).collect();
            open.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            let start = match after {
                Some(a) => open.iter().position(|r| r.id == a).map_or(0, |i| i + 1),
                None => 0,
            };
            open.into_iter().skip(start).take(limit).collect()
        })
    }

    async fn list(
        &self,
        filter: RecordFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        self.with(|m| {
            let from = after.and_then(|a| m.records.get(a)).map(|r| (r.created_at, r.id.clone()));
            let mut found: Vec<_> = m
                .records
                .values()
                .filter(|r| match filter {
                    RecordFilter::Open => r.closed_at.is_none(),
                    RecordFilter::Closed => r.closed_at.is_some(),
                    RecordFilter::All => true,
                })
                .filter(|r| from.as_ref().is_none_or(|(c, id)| (r.created_at, &r.id) > (*c, id)))
                .map(|r| SessionRecord::clone(r))
                .collect();
            found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            found.truncate(limit);
            found
        })
    }

    async fn count_open(&self, active_since: u64) -> Result<u64, StoreError> {
        self.with(|m| {
            m.records.values().filter(|r| r.closed_at.is_none() && r.last_active >= active_since).count() as u64
        })
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append(&self, session: &str, stream: &str, seq: u64, data: &[u8], fin: bool) -> Result<(), StoreError> {
        self.with(|m| m.push(session, stream, seq, data, fin))?;
        self.woke(session, stream);
        Ok(())
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
        self.with(|m| {
            m.push(session, stream, seq, data, fin);
            m.events.remove(&(session.to_owned(), evict.to_owned()));
        })?;
        self.woke(session, stream);
        Ok(())
    }

    async fn replay(&self, session: &str, stream: &str, after_seq: u64, limit: usize) -> Result<Replay, StoreError> {
        self.with(|m| match m.events.get(&(session.to_owned(), stream.to_owned())) {
            Some(log) if after_seq >= log.floor => Replay::Events(
                log.events.iter().filter(|(_, e)| e.seq > after_seq).take(limit).map(|(_, e)| e.clone()).collect(),
            ),
            _ => Replay::Gone,
        })
    }

    async fn prune(&self, retention: Retention, now_ms: u64) -> Result<u64, StoreError> {
        self.with(|m| {
            let mut dropped = 0u64;
            for log in m.events.values_mut() {
                while log.events.front().is_some_and(|(t, _)| now_ms.saturating_sub(*t) > retention.max_age_ms)
                    || log.events.len() > retention.per_stream
                {
                    if let Some((_, e)) = log.events.pop_front() {
                        log.floor = e.seq;
                        dropped += 1;
                    }
                }
            }
            m.events.retain(|_, log| !log.events.is_empty());
            dropped
        })
    }

    async fn forget(&self, session: &str) -> Result<(), StoreError> {
        self.with(|m| m.events.retain(|(s, _), _| s != session))
    }
}

#[async_trait]
impl ClusterStore for MemoryStore {
    async fn register(&self, me: &ReplicaId, addr: &str) -> Result<(), StoreError> {
        self.with(|m| {
            m.replicas.insert(me.id.clone(), (me.clone(), addr.to_owned(), Instant::now()));
        })
    }

    async fn heartbeat(&self, me: &ReplicaId) -> Result<bool, StoreError> {
        self.with(|m| match m.replicas.get_mut(&me.id) {
            Some((r, _, at)) if r == me => {
                *at = Instant::now();
                true
            }
            _ => false,
        })
    }

    async fn replicas(&self) -> Result<Vec<ReplicaInfo>, StoreError> {
        self.with(|m| {
            let now = Instant::now();
            let mut all: Vec<_> = m
                .replicas
                .values()
                .map(|(r, addr, at)| ReplicaInfo {
                    replica: r.clone(),
                    addr: addr.clone(),
                    heartbeat_age_ms: now.saturating_duration_since(*at).as_millis() as u64,
                })
                .collect();
            all.sort_by(|a, b| a.replica.id.cmp(&b.replica.id));
            all
        })
    }

    async fn deregister(&self, me: &ReplicaId) -> Result<(), StoreError> {
        self.with(|m| {
            if m.replicas.get(&me.id).is_some_and(|(r, _, _)| r == me) {
                m.replicas.remove(&me.id);
            }
        })
    }

    async fn claim(&self, session: &str, me: &ReplicaId, ttl: Duration) -> Result<Claim, StoreError> {
        self.with(|m| {
            let now = Instant::now();
            if let Some(l) = m.leases.get_mut(session) {
                if l.owner == *me {
                    l.until = now + ttl;
                    return Claim::Won { epoch: l.epoch };
                }
                if l.until > now {
                    return Claim::Held(l.view(now));
                }
            }
            let epoch = m.epochs.entry(session.to_owned()).or_default();
            *epoch += 1;
            let epoch = *epoch;
            m.leases.insert(session.to_owned(), MemLease { owner: me.clone(), epoch, until: now + ttl });
            Claim::Won { epoch }
        })
    }

    async fn renew_all(&self, me: &ReplicaId, ttl: Duration) -> Result<Vec<String>, StoreError> {
        self.with(|m| {
            let now = Instant::now();
            let mut held: Vec<String> = m
                .leases
                .iter_mut()
                .filter(|(_, l)| l.owner == *me && l.until > now)
                .map(|(s, l)| {
                    l.until = now + ttl;
                    s.clone()
                })
                .collect();
            held.sort();
            held
        })
    }

    async fn release(&self, session: &str, me: &ReplicaId) -> Result<bool, StoreError> {
        self.with(|m| {
            if m.leases.get(session).is_some_and(|l| l.owner == *me) {
                m.leases.remove(session);
                true
            } else {
                false
            }
        })
    }

    async fn release_all(&self, me: &ReplicaId) -> Result<u64, StoreError> {
        self.with(|m| {
            let before = m.leases.len();
            m.leases.retain(|_, l| l.owner != *me);
            (before - m.leases.len()) as u64
        })
    }

    async fn lease(&self, session: &str) -> Result<Option<Lease>, StoreError> {
        self.with(|m| m.leases.get(session).map(|l| l.view(Instant::now())))
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
        self.with(|m| {
            Self::fence(m, session, epoch)?;
            m.push(session, stream, seq, data, fin);
            if let Some(e) = evict {
                m.events.remove(&(session.to_owned(), e.to_owned()));
            }
            Ok(())
        })??;
        self.woke(session, stream);
        Ok(())
    }

    async fn set_state_fenced(&self, id: &str, state: &SessionState, epoch: u64) -> Result<(), StoreError> {
        self.with(|m| {
            Self::fence(m, id, epoch)?;
            if let Some(r) = m.records.get_mut(id) {
                r.state = state.clone();
            }
            Ok(())
        })?
    }

    fn wakeups(&self) -> broadcast::Receiver<Wake> {
        self.wake.subscribe()
    }
}
