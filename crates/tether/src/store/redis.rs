//! The Redis backend: records, events and the cluster primitives in one Redis server (not
//! Redis Cluster), every key under `NAMESPACE:` (layout in `docs/stores.md`). Each write is one
//! command, an atomic pipeline or a Lua script (`redis_scripts.rs`), acknowledged before it
//! returns; durability is Redis's own (use AOF; asynchronous replication can lose acknowledged
//! writes on failover). Closed records expire after [`CLOSED_RECORD_TTL`]; event lists are
//! bounded per stream. Wake-ups are PUBLISHed by the append script and read on a dedicated
//! RESP3 connection that reconnects when it dies.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::broadcast;

use super::cluster::{Claim, ClusterStore, Lease, ReplicaId, ReplicaInfo, WAKE_BUFFER, Wake, check_namespace};
use super::redis_scripts as lua;
use crate::session::record::{CloseReason, SessionRecord, SessionState, Transport, intern};
use crate::session::store::{
    Activity, EventStore, RecordFilter, Replay, Retention, SessionStore, StoreError, StoredEvent,
};

/// How long a closed record stays readable (listing closed sessions, a late client's 404 with
/// its reason) before Redis drops it.
pub const CLOSED_RECORD_TTL: Duration = Duration::from_secs(24 * 3600);

/// Events kept per stream at append time (retention may keep fewer at prune time).
const MAX_PER_STREAM: usize = 1000;

/// How long one command may take before it fails as unavailable.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Scripts {
    update_fields: Script,
    touch: Script,
    close: Script,
    append: Script,
    replay: Script,
    prune_session: Script,
    forget: Script,
    claim: Script,
    renew_all: Script,
    release: Script,
    release_all: Script,
    lease: Script,
    set_state_fenced: Script,
    register: Script,
    heartbeat: Script,
    replicas: Script,
    deregister: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            update_fields: Script::new(lua::UPDATE_FIELDS),
            touch: Script::new(lua::TOUCH),
            close: Script::new(lua::CLOSE),
            append: Script::new(lua::APPEND),
            replay: Script::new(lua::REPLAY),
            prune_session: Script::new(lua::PRUNE_SESSION),
            forget: Script::new(lua::FORGET),
            claim: Script::new(lua::CLAIM),
            renew_all: Script::new(lua::RENEW_ALL),
            release: Script::new(lua::RELEASE),
            release_all: Script::new(lua::RELEASE_ALL),
            lease: Script::new(lua::LEASE),
            set_state_fenced: Script::new(lua::SET_STATE_FENCED),
            register: Script::new(&lua::register()),
            heartbeat: Script::new(&lua::heartbeat()),
            replicas: Script::new(&lua::replicas()),
            deregister: Script::new(lua::DEREGISTER),
        }
    }
}

/// The Redis backend.
pub struct RedisStore {
    conn: ConnectionManager,
    /// `NAMESPACE:`.
    p: String,
    scripts: Scripts,
    wake: broadcast::Sender<Wake>,
    subscriber: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn rd(e: redis::RedisError) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

/// One record's fields as stored, with `None` deleting the field.
fn record_fields(r: &SessionRecord) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("id", Some(r.id.clone())),
        ("transport", Some(r.transport.as_str().to_owned())),
        ("protocol_version", r.protocol_version.clone()),
        ("client_init", r.client_init.as_ref().map(|v| v.get().to_owned())),
        ("upstream_init", r.upstream_init.as_ref().map(|v| v.get().to_owned())),
        ("state", Some(super::postgres::state_json(&r.state))),
        ("principal", r.principal.clone()),
        ("created_at", Some(r.created_at.to_string())),
        ("last_active", Some(r.last_active.to_string())),
        ("requests", Some(r.requests.to_string())),
        ("tool_calls", Some(r.tool_calls.to_string())),
        ("closed_at", r.closed_at.map(|v| v.to_string())),
        ("close_reason", r.close_reason.map(|c| c.as_str().to_owned())),
    ]
}

fn record_from_hash(h: &HashMap<String, String>) -> Result<SessionRecord, StoreError> {
    let bad = |what: &str| StoreError::Backend(format!("redis: a stored record is unreadable ({what})"));
    let num = |k: &str| h.get(k).map(|v| v.parse::<u64>().map_err(|_| bad(k))).transpose();
    let raw = |k: &str| {
        h.get(k)
            .map(|t| serde_json::value::RawValue::from_string(t.clone()).map_err(|_| bad(k)).map(|v| intern(&v)))
            .transpose()
    };
    Ok(SessionRecord {
        id: h.get("id").cloned().ok_or_else(|| bad("id"))?,
        transport: Transport::from_label(h.get("transport").map_or("", String::as_str)),
        protocol_version: h.get("protocol_version").cloned(),
        client_init: raw("client_init")?,
        upstream_init: raw("upstream_init")?,
        state: serde_json::from_str(h.get("state").map_or("{}", String::as_str)).map_err(|_| bad("state"))?,
        principal: h.get("principal").cloned(),
        created_at: num("created_at")?.unwrap_or(0),
        last_active: num("last_active")?.unwrap_or(0),
        requests: num("requests")?.unwrap_or(0),
        tool_calls: num("tool_calls")?.unwrap_or(0),
        closed_at: num("closed_at")?,
        close_reason: h
            .get("close_reason")
            .and_then(|s| serde_json::from_value::<CloseReason>(serde_json::Value::String(s.clone())).ok()),
    })
}

/// The order key of a record: `(created_at, id)` as one string, so that a sorted set with
/// equal scores orders records like the SQL backends do.
fn order_member(created_at: u64, id: &str) -> String {
    format!("{created_at:020}:{id}")
}

/// An event as a sorted-set member: `SEQ:CREATED_MS:FIN:` then the data, raw.
fn event_member(seq: u64, data: &[u8], fin: bool) -> Vec<u8> {
    let mut m = format!("{seq}:{}:{}:", crate::session::record::now_ms(), u8::from(fin)).into_bytes();
    m.extend_from_slice(data);
    m
}

fn event_from_member(m: &[u8]) -> Option<StoredEvent> {
    let mut parts = m.splitn(4, |b| *b == b':');
    let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let _created = parts.next()?;
    let fin = parts.next()? == b"1";
    Some(StoredEvent { seq, data: Bytes::copy_from_slice(parts.next()?), fin })
}

fn lease_from(value: &str, pttl: &str) -> Option<Lease> {
    let mut it = value.split('\n');
    let (id, incarnation, epoch) = (it.next()?, it.next()?, it.next()?.parse().ok()?);
    Some(Lease {
        owner: ReplicaId { id: id.to_owned(), incarnation: incarnation.to_owned() },
        epoch,
        left_ms: pttl.parse::<i64>().unwrap_or(0).max(0) as u64,
    })
}

impl RedisStore {
    /// Connects to `url` (`redis://HOST:PORT[/N]`) and starts the wake-up subscriber; keys go
    /// under `namespace:`.
    pub async fn open(url: &str, namespace: &str) -> anyhow::Result<RedisStore> {
        check_namespace(namespace).map_err(anyhow::Error::msg)?;
        let shown = super::redact_url(url);
        let client = redis::Client::open(url).with_context(|| format!("the store URL {shown} is not a Redis URL"))?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(2);
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_connection_manager_with_config(cfg))
            .await
            .map_err(|_| anyhow::anyhow!("no answer in time"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("connecting to the Redis store {shown}"))?;
        let _: () = redis::cmd("PING").query_async(&mut conn).await.with_context(|| format!("pinging {shown}"))?;
        let wake = broadcast::channel(WAKE_BUFFER).0;
        let p = format!("{namespace}:");
        let (listening, ready) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(super::redis_subscriber::run(client, format!("{p}wake"), wake.clone(), listening));
        if tokio::time::timeout(CONNECT_TIMEOUT, ready).await.is_err() {
            tracing::warn!("the Redis wake-up subscriber is not up yet; tailers poll until it is");
        }
        Ok(RedisStore { conn, p, scripts: Scripts::new(), wake, subscriber: Mutex::new(Some(task)) })
    }

    fn c(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn rec(&self, id: &str) -> String {
        format!("{}rec:{id}", self.p)
    }

    fn order(&self, which: &str) -> String {
        format!("{}order:{which}", self.p)
    }

    fn ev_prefix(&self, session: &str) -> String {
        format!("{}ev:{session}:", self.p)
    }

    fn floors(&self, session: &str) -> String {
        format!("{}floor:{session}", self.p)
    }

    fn streams(&self, session: &str) -> String {
        format!("{}streams:{session}", self.p)
    }

    fn held(&self, me: &ReplicaId) -> String {
        format!("{}held:{}:{}", self.p, me.id, me.incarnation)
    }

    fn lease_key(&self, session: &str) -> String {
        format!("{}lease:{session}", self.p)
    }

    #[allow(clippy::too_many_arguments)]
    async fn append_event(
        &self,
        session: &str,
        stream: &str,
        seq: u64,
        data: &[u8],
        fin: bool,
        evict: Option<&str>,
        epoch: Option<u64>,
    ) -> Result<(), StoreError> {
        let pre = self.ev_prefix(session);
        let made: i64 = self
            .scripts
            .append
            .key(format!("{pre}{stream}"))
            .key(self.floors(session))
            .key(self.streams(session))
            .key(format!("{}event_sessions", self.p))
            .key(format!("{pre}{}", evict.unwrap_or("")))
            .key(self.lease_key(session))
            .arg(seq)
            .arg(event_member(seq, data, fin))
            .arg(stream)
            .arg(session)
            .arg(format!("{}wake", self.p))
            .arg(evict.unwrap_or(""))
            .arg(MAX_PER_STREAM)
            .arg(epoch.map(|e| e.to_string()).unwrap_or_default())
            .invoke_async(&mut self.c())
            .await
            .map_err(rd)?;
        match (made, epoch) {
            (0, Some(epoch)) => Err(StoreError::Fenced { session: session.to_owned(), epoch }),
            _ => Ok(()),
        }
    }

    async fn update_fields(&self, id: &str, fields: &[(&str, Option<String>)]) -> Result<(), StoreError> {
        let mut inv = self.scripts.update_fields.key(self.rec(id));
        for (k, v) in fields {
            inv.arg(*k).arg(if v.is_some() { "1" } else { "0" }).arg(v.as_deref().unwrap_or(""));
        }
        let _: i64 = inv.invoke_async(&mut self.c()).await.map_err(rd)?;
        Ok(())
    }

    fn stop_subscriber(&self) {
        if let Some(t) = self.subscriber.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            t.abort();
        }
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop_subscriber();
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, r: &SessionRecord) -> Result<(), StoreError> {
        let member = order_member(r.created_at, &r.id);
        let mut fields: Vec<(&str, String)> =
            record_fields(r).into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
        fields.push(("order", member.clone()));
        let mut pipe = redis::pipe();
        pipe.atomic().hset_multiple(self.rec(&r.id), &fields).ignore();
        pipe.zadd(self.order("all"), &member, 0).ignore();
        if r.closed_at.is_some() {
            pipe.zadd(self.order("closed"), &member, 0).ignore();
            pipe.pexpire(self.rec(&r.id), CLOSED_RECORD_TTL.as_millis() as i64).ignore();
        } else {
            pipe.zadd(self.order("open"), &member, 0).ignore();
            pipe.zadd(format!("{}active", self.p), &r.id, r.last_active).ignore();
        }
        pipe.query_async::<()>(&mut self.c()).await.map_err(rd)
    }

    async fn set_handshake(&self, r: &SessionRecord) -> Result<(), StoreError> {
        let all = record_fields(r);
        let fields: Vec<_> = all
            .into_iter()
            .filter(|(k, _)| matches!(*k, "protocol_version" | "client_init" | "upstream_init"))
            .collect();
        self.update_fields(&r.id, &fields).await
    }

    async fn set_state(&self, id: &str, state: &SessionState) -> Result<(), StoreError> {
        self.update_fields(id, &[("state", Some(super::postgres::state_json(state)))]).await
    }

    async fn touch(&self, id: &str, a: Activity) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .touch
            .key(self.rec(id))
            .key(format!("{}active", self.p))
            .arg(id)
            .arg(a.last_active)
            .arg(a.requests)
            .arg(a.tool_calls)
            .invoke_async(&mut self.c())
            .await
            .map_err(rd)?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let h: HashMap<String, String> = self.c().hgetall(self.rec(id)).await.map_err(rd)?;
        if h.is_empty() { Ok(None) } else { record_from_hash(&h).map(Some) }
    }

    async fn close(&self, id: &str, at: u64, reason: CloseReason) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .close
            .key(self.rec(id))
            .key(self.order("open"))
            .key(self.order("closed"))
            .key(format!("{}active", self.p))
            .arg(id)
            .arg(at)
            .arg(reason.as_str())
            .arg(CLOSED_RECORD_TTL.as_millis() as u64)
            .invoke_async(&mut self.c())
            .await
            .map_err(rd)?;
        Ok(())
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
        let key = self.order(match filter {
            RecordFilter::Open => "open",
            RecordFilter::Closed => "closed",
            RecordFilter::All => "all",
        });
        let mut c = self.c();
        let mut from = match after {
            Some(a) => c.hget::<_, _, Option<String>>(self.rec(a), "order").await.map_err(rd)?,
            None => None,
        };
        let mut out = Vec::new();
        // Members whose record expired are dropped from the index as they are met.
        while out.len() < limit {
            let want = (limit - out.len()).min(500);
            let min = from.as_ref().map_or_else(|| "-".to_owned(), |m| format!("({m}"));
            let members: Vec<String> = redis::cmd("ZRANGE")
                .arg(&key)
                .arg(min)
                .arg("+")
                .arg("BYLEX")
                .arg("LIMIT")
                .arg(0)
                .arg(want)
                .query_async(&mut c)
                .await
                .map_err(rd)?;
            let Some(last) = members.last() else { break };
            from = Some(last.clone());
            let mut pipe = redis::pipe();
            for m in &members {
                pipe.hgetall(self.rec(m.split_once(':').map_or("", |(_, id)| id)));
            }
            let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut c).await.map_err(rd)?;
            for (m, h) in members.iter().zip(hashes) {
                if h.is_empty() {
                    let _: i64 = c.zrem(&key, m).await.map_err(rd)?;
                } else {
                    out.push(record_from_hash(&h)?);
                }
            }
            if members.len() < want {
                break;
            }
        }
        Ok(out)
    }

    async fn count_open(&self, active_since: u64) -> Result<u64, StoreError> {
        self.c().zcount(format!("{}active", self.p), active_since, "+inf").await.map_err(rd)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), StoreError> {
        self.stop_subscriber();
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING").query_async::<()>(&mut self.c()).await.map_err(rd)
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

#[async_trait]
impl EventStore for RedisStore {
    async fn append(&self, session: &str, stream: &str, seq: u64, data: &[u8], fin: bool) -> Result<(), StoreError> {
        self.append_event(session, stream, seq, data, fin, None, None).await
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
        self.append_event(session, stream, seq, data, fin, Some(evict), None).await
    }

    async fn replay(&self, session: &str, stream: &str, after_seq: u64, limit: usize) -> Result<Replay, StoreError> {
        let got: Vec<Vec<u8>> = self
            .scripts
            .replay
            .key(format!("{}{stream}", self.ev_prefix(session)))
            .key(self.floors(session))
            .arg(stream)
            .arg(after_seq)
            .arg(limit.min(i32::MAX as usize))
            .invoke_async(&mut self.c())
            .await
            .map_err(rd)?;
        if got.first().map(Vec::as_slice) != Some(b"ok") {
            return Ok(Replay::Gone);
        }
        Ok(Replay::Events(got[1..].iter().filter_map(|m| event_from_member(m)).collect()))
    }

    async fn prune(&self, retention: Retention, now_ms: u64) -> Result<u64, StoreError> {
        let cutoff = now_ms.saturating_sub(retention.max_age_ms);
        let mut c = self.c();
        let sessions: Vec<String> = c.smembers(format!("{}event_sessions", self.p)).await.map_err(rd)?;
        let mut dropped = 0u64;
        for s in sessions {
            let n: u64 = self
                .scripts
                .prune_session
                .key(self.streams(&s))
                .key(self.floors(&s))
                .arg(self.ev_prefix(&s))
                .arg(cutoff)
                .arg(retention.per_stream)
                .invoke_async(&mut c)
                .await
                .map_err(rd)?;
            dropped += n;
        }
        Ok(dropped)
    }

    async fn forget(&self, session: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .forget
            .key(self.streams(session))
            .key(self.floors(session))
            .key(format!("{}event_sessions", self.p))
            .arg(self.ev_prefix(session))
            .arg(session)
            .invoke_async(&mut self.c())
            .await
            .map_err(rd)?;
        Ok(())
    }
}

#[async_trait]
impl ClusterStore for RedisStore {
    async fn register(&self, me: &ReplicaId, addr: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .register
            .key(format!("{}replicas", self.p))
            .arg(&me.id)
            .arg(&me.incarnation)
            .arg(addr)
            .invoke_async(&mut self.c())
            .await
            .map_err(rd)?;
        Ok(())
    }

    async fn heartbeat(&self, me: &ReplicaId) -> Result<bool, StoreError> {
        let n: i64 = self
            .scripts
            .heartbeat
            .key(format!("{}replicas", self.p))
            .arg(&me.id)
            .arg(&me.incarnation)
            .invoke_async(&mut self.c())
            .await
            .map_err(rd)?;
        Ok(n == 1)
    }

    async fn replicas(&self) -> Result<Vec<ReplicaInfo>, StoreError> {
        let flat: Vec<String> =
            self.scripts.replicas.key(format!("{}replicas", self.p)).invoke_async(&mut self.c()).await.map_err(rd)?;
        let mut out: Vec<ReplicaInfo> = flat
            .chunks_exact(3)
            .filter_map(|c| {
                let mut v = c[1].split('\n');
                Some(ReplicaInfo {
                    replica: ReplicaId { id: c[0].clone(), incarnation: v.next()?.to_owned() },
                    addr: v.next()?.to_owned(),
                    heartbeat_age_ms: c[2].parse::<i64>().ok()?.max(0) as u64,
                })
            })
            .collect();
        out.sort_by(|a, b| a.replica.id.cmp(&b.replica.id));
        Ok(out)
    }

    async fn deregister(&self, me: &ReplicaId) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .deregister
            .key(format!("{}replicas", self.p))
            .arg(&me.id)
            .arg(&me.incarnation)
            .invoke_async(&mut self.c())
            .await
            .map_err(rd)?;
        Ok(())
    }

    async fn claim(&self, session: &str, me: &ReplicaId, ttl: Duration) -> Result<Claim, StoreError> {
        let got: Vec<String> = self
            .scripts
            .claim
            .key(self.lease_key(session))
            .key(format!("{}epoch:{session}", self.p))
            .key(self.held(me))
            .arg(&me.id)
            .arg(&me.incarnation)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(session)
            .invoke_async(&mut self.c())
            .await
            .map_err(rd)?;
        let bad = || StoreError::Backend("redis: an unreadable lease".into());
        match got.first().map(String::as_str) {
            Some("won") => Ok(Claim::Won { epoch: got.get(1).and_then(|e| e.parse().ok()).ok_or_else(bad)? }),
            Some("held") if got.len() == 5 => {
                let value = format!("{}\n{}\n{}", got[1], got[2], got[3]);
                lease_from(&value, &got[4]).map(Claim::Held).ok_or_else(bad)
            }
            _ => Err(bad()),
        }
    }

    async fn renew_all(&self, me: &ReplicaId, ttl: Duration) -> Result<Vec<String>, StoreError> {
        let mut held: Vec<String> = self
            .scripts
            .renew_all
            .key(self.held(me))
            .arg(&me.id)
            .arg(&me.incarnation)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(format!("{}lease:", self.p))
            .invoke_async(&mut self.c())
            .await
            .map_err(rd)?;
        held.sort();
        Ok(held)
    }

    async fn release(&self, session: &str, me: &ReplicaId) -> Result<bool, StoreError> {
        let n: i64 = self
            .scripts
            .release
            .key(self.lease_key(session))
            .key(self.held(me))
            .arg(&me.id)
            .arg(&me.incarnation)
            .arg(session)
            .invoke_async(&mut self.c())
            .await
            .map_err(rd)?;
        Ok(n == 1)
    }

    async fn release_all(&self, me: &ReplicaId) -> Result<u64, StoreError> {
        self.scripts
            .release_all
            .key(self.held(me))
            .arg(&me.id)
            .arg(&me.incarnation)
            .arg(format!("{}lease:", self.p))
            .invoke_async(&mut self.c())
            .await
            .map_err(rd)
    }

    async fn lease(&self, session: &str) -> Result<Option<Lease>, StoreError> {
        let got: Vec<String> =
            self.scripts.lease.key(self.lease_key(session)).invoke_async(&mut self.c()).await.map_err(rd)?;
        Ok(match got.as_slice() {
            [value, pttl] => lease_from(value, pttl),
            _ => None,
        })
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
        self.append_event(session, stream, seq, data, fin, evict, Some(epoch)).await
    }

    async fn set_state_fenced(&self, id: &str, state: &SessionState, epoch: u64) -> Result<(), StoreError> {
        let n: i64 = self
            .scripts
            .set_state_fenced
            .key(self.rec(id))
            .key(self.lease_key(id))
            .arg(super::postgres::state_json(state))
            .arg(epoch)
            .invoke_async(&mut self.c())
            .await
            .map_err(rd)?;
        if n == 1 { Ok(()) } else { Err(StoreError::Fenced { session: id.to_owned(), epoch }) }
    }

    fn wakeups(&self) -> broadcast::Receiver<Wake> {
        self.wake.subscribe()
    }
}
