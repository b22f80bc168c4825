//! What each dashboard page shows, gathered from the session registry, the counters, the store
//! (through the data plane, with its deadline) and the sample rings — as plain data, so the
//! HTML renderer and the JSON API (`GET /admin/overview`) read the same thing.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::samples::{Point, SessionEvent};
use crate::admin::health::UpstreamCounts;
use crate::admin::{AdminError, AdminState};
use crate::session::record::{SessionRecord, now_ms};
use crate::session::store::RecordFilter;
use crate::session::{SessionHandle, instance};
use crate::stats::{MethodClass, Outcome};

/// The most sessions one list page shows.
pub const LIST_LIMIT: usize = 200;
/// Events shown on a session's page.
const DETAIL_EVENTS: usize = 20;
/// In-flight requests shown on a session's page.
const DETAIL_IN_FLIGHT: usize = 50;

/// One replica of the gateway: this process alone on a memory or SQLite store; on a shared
/// store every tether of the namespace's registry (the one serving, the standbys).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replica {
    /// The replica's id (this process's instance tag; on a shared store its MCP address and
    /// the start of its incarnation).
    pub id: String,
    /// `single replica` on a store of one process; else `serving`, `standby` or `gone`.
    pub role: &'static str,
    /// Sessions live on it (known for this process only).
    pub sessions: Option<usize>,
    /// Whether it refuses new sessions (this process), or has not heartbeated lately (others).
    pub draining: bool,
    /// This process.
    pub this: bool,
    /// Milliseconds since its last heartbeat (shared stores).
    pub heartbeat_age_ms: Option<u64>,
}

/// The overview page.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub version: &'static str,
    pub uptime_seconds: u64,
    pub draining: bool,
    pub sessions_active: usize,
    pub sessions_total: u64,
    pub sessions_closed: u64,
    pub sessions_expired: u64,
    pub tool_calls: u64,
    pub upstream_kind: &'static str,
    pub upstreams: UpstreamTotals,
    /// Ended client requests by outcome class, and tether's own recovery counters.
    pub errors: Vec<(&'static str, u64)>,
    pub store: StoreHealth,
    pub replicas: Vec<Replica>,
    pub log_filter: Option<String>,
    #[serde(skip)]
    pub points: Vec<Point>,
}

/// Upstream children or connections, by state, and what happened to them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTotals {
    pub alive: u64,
    pub restarting: u64,
    pub broken: u64,
    pub idle: u64,
    pub revives: u64,
    pub revive_failures: u64,
    pub losses: u64,
    pub crash_loops: u64,
    pub reaped: u64,
}

/// The store as last checked by the sampler.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreHealth {
    pub backend: &'static str,
    /// None until the first check.
    pub ok: Option<bool>,
    pub error: Option<String>,
    pub write_errors: u64,
}

/// Gathers the overview. Reads only memory: the store's health comes from the sampler.
pub fn overview(state: &AdminState) -> Overview {
    let m = state.manager();
    let s = &m.deps().stats;
    let c = UpstreamCounts::of(m);
    let mut errors: Vec<(&'static str, u64)> = Outcome::ALL
        .iter()
        .filter(|o| **o != Outcome::Ok)
        .map(|o| (o.as_str(), MethodClass::ALL.iter().map(|c| s.requests.count(*c, *o)).sum()))
        .collect();
    errors.push(("interrupted (upstream restarted)", s.requests_interrupted.get()));
    errors.push(("retried after a revive", s.requests_retried.get()));
    let (ok, error) = match state.dashboard().store_health() {
        None => (None, None),
        Some(Ok(())) => (Some(true), None),
        Some(Err(e)) => (Some(false), Some(e)),
    };
    Overview {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.0.started.elapsed().as_secs(),
        draining: m.is_draining(),
        sessions_active: m.live_count(),
        sessions_total: s.sessions_created.get() + s.sessions_resumed.get(),
        sessions_closed: s.sessions_closed.get(),
        sessions_expired: s.sessions_expired.get(),
        tool_calls: s.tool_calls.get(),
        upstream_kind: m.deps().spec.kind(),
        upstreams: UpstreamTotals {
            alive: c.alive,
            restarting: c.restarting,
            broken: c.broken,
            idle: c.idle,
            revives: s.revives.get(),
            revive_failures: s.revive_failures.get(),
            losses: s.upstream_losses.get(),
            crash_loops: s.crash_loops.get(),
            reaped: s.upstream_reaped.get(),
        },
        errors,
        store: StoreHealth {
            backend: m.deps().store.name(),
            ok,
            error,
            write_errors: crate::stats::StoreOp::ALL.iter().map(|op| s.store.errors(*op)).sum(),
        },
        replicas: replicas(state),
        log_filter: state.0.log.as_ref().map(|l| l.filter()),
        points: state.dashboard().samples.points(),
    }
}

/// The replicas: this one alone, or the shared store's registry as last read.
fn replicas(state: &AdminState) -> Vec<Replica> {
    let m = state.manager();
    let Some(rows) = state.replica_rows() else {
        return vec![Replica {
            id: instance().to_owned(),
            role: "single replica",
            sessions: Some(m.live_count()),
            draining: m.is_draining(),
            this: true,
            heartbeat_age_ms: None,
        }];
    };
    rows.into_iter()
        .map(|r| Replica {
            id: format!("{} ({})", r.id, r.incarnation.get(..8).unwrap_or(&r.incarnation)),
            role: r.role,
            sessions: r.this.then(|| m.live_count()),
            draining: if r.this { m.is_draining() } else { r.role == "gone" },
            this: r.this,
            heartbeat_age_ms: Some(r.heartbeat_age_ms),
        })
        .collect()
}

/// The filter of the sessions page.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct ListFilter {
    /// A substring of the id, client name or version.
    #[serde(default)]
    pub q: String,
    /// `streamable-http`, `sse`, `stdio`, or empty for any.
    #[serde(default)]
    pub transport: String,
    /// `active` (default), `closed` or `all`.
    #[serde(default)]
    pub state: String,
}

/// One line of the sessions page.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub client: String,
    pub client_version: String,
    pub transport: &'static str,
    pub era: &'static str,
    pub protocol: String,
    pub state: String,
    pub age: Duration,
    pub idle: Duration,
    pub tool_calls: u64,
    pub revives: Option<u64>,
    pub last_error: Option<String>,
}

/// The sessions matching `filter`, most recently active first, at most [`LIST_LIMIT`]; and
/// whether more matched. For `active`, every session live here is considered (they are in
/// memory), then the first open records of the store that are not live here (sessions of
/// another replica or from before a restart); for `closed` and `all`, the store's first records.
pub async fn sessions(state: &AdminState, filter: &ListFilter) -> Result<(Vec<Row>, bool), AdminError> {
    let records = match filter.state.as_str() {
        "" | "active" => RecordFilter::Open,
        "closed" => RecordFilter::Closed,
        "all" => RecordFilter::All,
        other => return Err(AdminError::BadRequest(format!("state {other:?}: use active, closed or all"))),
    };
    let q = filter.q.to_lowercase();
    let matches = |row: &Row| {
        (filter.transport.is_empty() || row.transport == filter.transport)
            && (q.is_empty()
                || row.id.contains(&q)
                || row.client.to_lowercase().contains(&q)
                || row.client_version.to_lowercase().contains(&q))
    };
    let m = state.manager();
    let mut rows: Vec<Row> = Vec::new();
    if records == RecordFilter::Open {
        let mut live = m.live();
        if q.is_empty() {
            // Without a search only the most recently active can be shown: pick them before
            // building rows (which parses each clientInfo), so thousands of sessions stay cheap.
            live.retain(|s| filter.transport.is_empty() || s.transport().as_str() == filter.transport);
            live.sort_by_key(|s| std::cmp::Reverse(s.last_active()));
            live.truncate(LIST_LIMIT + 1);
        }
        rows.extend(live.iter().map(|s| row(&s.record(), Some(s))).filter(|r| matches(r)));
    }
    let store = m.deps().store.clone();
    let stored = state
        .on_data_plane(async move { store.list(records, None, LIST_LIMIT + 1).await })
        .await?
        .map_err(|e| AdminError::Unavailable(e.to_string()))?;
    let mut cut = stored.len() > LIST_LIMIT;
    for r in stored.iter().take(LIST_LIMIT) {
        let live = m.live_session(&r.id);
        if records == RecordFilter::Open && live.is_some() {
            continue; // listed above
        }
        let r = live.as_ref().map(|s| s.record()).unwrap_or_else(|| r.clone());
        let line = row(&r, live.as_ref());
        if matches(&line) {
            rows.push(line);
        }
    }
    rows.sort_by_key(|r| r.idle);
    cut |= rows.len() > LIST_LIMIT;
    rows.truncate(LIST_LIMIT);
    Ok((rows, cut))
}

fn row(r: &SessionRecord, live: Option<&SessionHandle>) -> Row {
    let now = now_ms();
    let info = client_info(r);
    let text = |k: &str| info.as_ref().and_then(|i| i.get(k)).and_then(Value::as_str).unwrap_or("").to_owned();
    let state = match (r.closed_at, live) {
        (Some(_), _) => format!("closed ({})", r.close_reason.map_or("closed", |c| c.as_str())),
        (None, Some(s)) => format!("active, upstream {}", s.upstream_state().as_str()),
        (None, None) => "active, not live here".to_owned(),
    };
    Row {
        id: r.id.clone(),
        client: text("name"),
        client_version: text("version"),
        transport: r.transport.as_str(),
        // A modern client's binding speaks the handshake upstream: the client's era is shown.
        era: if r.transport == crate::session::record::Transport::Modern {
            "modern"
        } else {
            era(r.protocol_version.as_deref())
        },
        protocol: r.protocol_version.clone().unwrap_or_default(),
        state,
        age: Duration::from_millis(now.saturating_sub(r.created_at)),
        idle: Duration::from_millis(now.saturating_sub(r.last_active)),
        tool_calls: r.tool_calls,
        revives: live.map(|s| s.revive_count()),
        last_error: live.and_then(|s| s.last_error()).map(|e| e.message),
    }
}

/// The protocol era of a negotiated version.
pub fn era(version: Option<&str>) -> &'static str {
    match version {
        None => "",
        Some(v) if v >= "2026-07-28" => "modern",
        Some(_) => "handshake",
    }
}

/// The client's `clientInfo`, from its stored `initialize` params.
pub fn client_info(r: &SessionRecord) -> Option<Value> {
    field(r.client_init.as_deref(), "clientInfo")
}

/// A top-level field of raw JSON.
pub fn field(raw: Option<&serde_json::value::RawValue>, key: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(raw?.get()).ok()?;
    v.get(key).cloned()
}

/// The session page.
pub struct Detail {
    pub record: SessionRecord,
    pub row: Row,
    pub live: Option<LiveDetail>,
    pub events: Vec<SessionEvent>,
    /// Which replica owns the session.
    pub owner: String,
}

/// What only a session live here can tell.
pub struct LiveDetail {
    pub upstream_state: &'static str,
    pub pid: Option<u32>,
    pub upstream_session: Option<String>,
    pub generation: Option<u64>,
    pub revives: u64,
    pub in_flight: Vec<(String, Duration)>,
    pub breaker_open_for: Option<Duration>,
    pub consecutive_failures: u32,
    pub streams_opened: u64,
    pub standalone_open: bool,
}

/// Gathers one session's page.
pub async fn detail(state: &AdminState, id: &str) -> Result<Detail, AdminError> {
    let live = state.manager().live_session(id);
    let record = match &live {
        Some(s) => s.record_now().await,
        None => crate::admin::sessions::load(state, id).await?,
    };
    let row = row(&record, live.as_ref());
    let live_detail = match &live {
        Some(s) => {
            let snap = s.inspect().await;
            Some(LiveDetail {
                upstream_state: snap.upstream_state.as_str(),
                pid: snap.pid,
                upstream_session: snap.upstream_session,
                generation: snap.generation,
                revives: snap.revives,
                in_flight: snap.in_flight.into_iter().take(DETAIL_IN_FLIGHT).collect(),
                breaker_open_for: snap.breaker_open_for,
                consecutive_failures: snap.consecutive_failures,
                streams_opened: snap.streams_opened,
                standalone_open: snap.standalone_open,
            })
        }
        None => None,
    };
    let owner = match &live {
        Some(_) => format!("{} (this replica)", instance()),
        None => "none live: the next request revives it on the replica it reaches".to_owned(),
    };
    Ok(Detail { events: state.dashboard().samples.events_of(id, DETAIL_EVENTS), record, row, live: live_detail, owner })
}

/// One line of the upstreams page.
pub struct UpstreamRow {
    pub session: String,
    pub client: String,
    pub state: &'static str,
    pub pid: Option<u32>,
    pub upstream_session: Option<String>,
    pub generation: Option<u64>,
    pub revives: u64,
    pub breaker_open_for: Option<Duration>,
    pub consecutive_failures: u32,
}

/// The live sessions' upstream bindings, broken ones first, at most [`LIST_LIMIT`].
pub async fn upstreams(state: &AdminState) -> Vec<UpstreamRow> {
    let mut rows: Vec<UpstreamRow> = Vec::new();
    for s in state.manager().live() {
        let snap = s.inspect().await;
        let name = client_info(&snap.record)
            .and_then(|i| i.get("name").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        rows.push(UpstreamRow {
            session: s.id().to_owned(),
            client: name,
            state: snap.upstream_state.as_str(),
            pid: snap.pid,
            upstream_session: snap.upstream_session,
            generation: snap.generation,
            revives: snap.revives,
            breaker_open_for: snap.breaker_open_for,
            consecutive_failures: snap.consecutive_failures,
        });
    }
    rows.sort_by_key(|r| (r.breaker_open_for.is_none(), r.state != "restarting", std::cmp::Reverse(r.revives)));
    rows.truncate(LIST_LIMIT);
    rows
}
