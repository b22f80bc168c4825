//! The session API: list (by state, paged), inspect, terminate, clean up expired sessions, and
//! drain. Records come from the store — so sessions of another replica, or from before a
//! restart, are seen too — and live sessions add their upstream and stream state.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::{AdminError, AdminState, json_response};
use crate::error::GatewayError;
use crate::session::SessionHandle;
use crate::session::record::{SessionRecord, now_ms};
use crate::session::store::RecordFilter;

/// The default page size.
const DEFAULT_LIMIT: usize = 100;
/// The largest page.
const MAX_LIMIT: usize = 1000;

/// Query of `GET /admin/sessions`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `active` (default), `closed` or `all`.
    state: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<usize>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// GET /admin/sessions?state=active|closed|all&limit=N&cursor=C
pub async fn list(
    State(state): State<AdminState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, AdminError> {
    let Query(q) = query.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let filter = match q.state.as_deref().unwrap_or("active") {
        "active" => RecordFilter::Open,
        "closed" => RecordFilter::Closed,
        "all" => RecordFilter::All,
        other => return Err(AdminError::BadRequest(format!("state {other:?}: use active, closed or all"))),
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(AdminError::BadRequest(format!("limit {limit}: use 1 to {MAX_LIMIT}")));
    }
    let store = state.manager().deps().store.clone();
    let cursor = q.cursor.clone();
    // One more than asked tells whether there is a next page.
    let mut records = state
        .on_data_plane(async move { store.list(filter, cursor.as_deref(), limit + 1).await })
        .await?
        .map_err(|e| AdminError::Unavailable(e.to_string()))?;
    let more = records.len() > limit;
    records.truncate(limit);
    let next = if more { records.last().map(|r| r.id.clone()) } else { None };
    let mut sessions: Vec<Value> = Vec::with_capacity(records.len());
    for r in &records {
        let live = state.manager().live_session(&r.id);
        let now = match &live {
            Some(s) => Some(s.record_now().await),
            None => None,
        };
        sessions.push(summary(&state, now.as_ref().unwrap_or(r), live.as_ref()));
    }
    Ok(json_response(StatusCode::OK, &json!({ "sessions": sessions, "nextCursor": next })))
}

/// GET /admin/sessions/{id}: the record, and for a session live here its upstream, streams and
/// last error.
pub async fn show(State(state): State<AdminState>, Path(id): Path<String>) -> Result<Response, AdminError> {
    let live = state.manager().live_session(&id);
    let record = match &live {
        Some(s) => s.record_now().await,
        None => load(&state, &id).await?,
    };
    let snap = match &live {
        Some(s) => Some(s.inspect().await),
        None => None,
    };
    let upstream = snap.as_ref().map(|s| {
        json!({
            "kind": state.manager().deps().spec.kind(),
            "state": s.upstream_state.as_str(),
            "alive": s.alive,
            "pid": s.pid,
            "revives": s.revives,
            "lastRevive": s.last_revive.map(|(at_ms, cause)| json!({ "atMs": at_ms, "cause": cause })),
        })
    });
    let streams = snap.as_ref().map(|s| {
        json!({
            "opened": s.streams_opened,
            "standaloneOpen": s.standalone_open,
            "pendingRequests": s.pending_requests,
        })
    });
    let last_error =
        snap.as_ref().and_then(|s| s.last_error.as_ref()).map(|e| json!({ "atMs": e.at_ms, "message": e.message }));
    // Cluster mode: which replica owns it, with which epoch, for how long yet.
    let lease = match state.cluster().cloned() {
        Some(c) => {
            let sid = id.clone();
            match state.on_data_plane(async move { c.lease_view(&sid).await }).await? {
                Ok(v) => v,
                Err(e) => return Err(AdminError::Unavailable(e.to_string())),
            }
        }
        None => None,
    };
    let body = json!({
        "session": summary(&state, &record, live.as_ref()),
        "lease": lease,
        "record": record,
        "upstream": upstream,
        "streams": streams,
        "lastError": last_error,
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// DELETE /admin/sessions/{id}: ends the session; its upstream closes and the client's next
/// request gets 404.
pub async fn terminate(State(state): State<AdminState>, Path(id): Path<String>) -> Result<Response, AdminError> {
    let m = state.manager().clone();
    let id2 = id.clone();
    let ended = match state.cluster().cloned() {
        // Cluster mode: on the replica that owns it.
        Some(c) => state
            .on_data_plane(async move { c.terminate(&id2).await })
            .await?
            .map_err(|e| AdminError::Unavailable(e.to_string()))?,
        None => state
            .on_data_plane(async move { m.terminate(&id2).await })
            .await?
            .map_err(|e| AdminError::Unavailable(e.to_string()))?,
    };
    if !ended {
        // Not open: unknown (404) or already closed (409).
        let record = load(&state, &id).await?;
        return Err(AdminError::Conflict(format!(
            "session {} is already closed ({})",
            record.id,
            record.close_reason.map_or("closed", |r| r.as_str())
        )));
    }
    Ok(json_response(StatusCode::OK, &json!({ "id": id, "terminated": true })))
}

/// POST /admin/sessions/{id}/refresh: forces a revive by replay — the upstream binding is
/// dropped (a child is stopped, an HTTP session deleted) and rebuilt from the record, exactly
/// as after an upstream crash. A session open in the store but not live here is loaded first.
pub async fn refresh(State(state): State<AdminState>, Path(id): Path<String>) -> Result<Response, AdminError> {
    let m = state.manager().clone();
    let id2 = id.clone();
    let outcome = state
        .on_data_plane(async move {
            let s = m.get(&id2).await?;
            let generation = s.refresh().await?;
            Ok::<_, GatewayError>((generation, s.revive_count(), s.upstream_pid()))
        })
        .await?;
    match outcome {
        Ok((Some(generation), revives, pid)) => {
            info!(session_id = %id, generation, "session refreshed by an operator");
            Ok(json_response(
                StatusCode::OK,
                &json!({ "id": id, "refreshed": true, "generation": generation, "revives": revives, "pid": pid }),
            ))
        }
        Ok((None, _, _)) => Err(AdminError::Conflict(format!(
            "session {id} has not completed its handshake: there is nothing to replay"
        ))),
        Err(GatewayError::SessionNotFound) => Err(AdminError::NotFound(format!("no open session {id}"))),
        Err(e) => Err(AdminError::Unavailable(format!("the revive failed: {e}"))),
    }
}

/// POST /admin/sessions/cleanup: closes every expired session now; answers how many.
pub async fn cleanup(State(state): State<AdminState>) -> Result<Response, AdminError> {
    let m = state.manager().clone();
    let closed = state
        .on_data_plane(async move { m.close_expired().await })
        .await?
        .map_err(|e| AdminError::Unavailable(e.to_string()))?;
    info!(closed, "expired sessions cleaned up by an operator");
    Ok(json_response(StatusCode::OK, &json!({ "closed": closed })))
}

/// POST /admin/drain: new sessions are refused (503) and readiness goes false; live sessions
/// keep being served. For a rolling deploy.
pub async fn drain(State(state): State<AdminState>) -> Result<Response, AdminError> {
    let m = state.manager();
    if !m.is_draining() {
        m.drain();
        info!(active_sessions = m.live_count(), "draining: new sessions are refused");
    }
    Ok(json_response(StatusCode::OK, &json!({ "draining": true, "activeSessions": m.live_count() })))
}

/// A session's stored record, read on the data plane's runtime; 404 when there is none.
pub(super) async fn load(state: &AdminState, id: &str) -> Result<SessionRecord, AdminError> {
    let store = state.manager().deps().store.clone();
    let id2 = id.to_owned();
    state
        .on_data_plane(async move { store.get(&id2).await })
        .await?
        .map_err(|e| AdminError::Unavailable(e.to_string()))?
        .ok_or_else(|| AdminError::NotFound(format!("no session {id}")))
}

/// One line of the list: what an operator scans for.
fn summary(state: &AdminState, r: &SessionRecord, live: Option<&SessionHandle>) -> Value {
    let ttl_ms = state.manager().deps().config.ttl.as_millis() as u64;
    let client = r.client_init.as_ref().and_then(|p| {
        let v: Value = serde_json::from_str(p.get()).ok()?;
        let info = v.get("clientInfo")?;
        Some(json!({ "name": info.get("name"), "version": info.get("version") }))
    });
    json!({
        "id": r.id,
        "state": if r.closed_at.is_some() { "closed" } else { "active" },
        "expired": r.closed_at.is_none() && now_ms().saturating_sub(r.last_active) > ttl_ms,
        "transport": r.transport.as_str(),
        // The principal's fingerprint (see `crate::auth`); never a credential.
        "principal": r.principal,
        "principalName": r.principal.as_deref().and_then(crate::auth::name_of),
        "protocolVersion": r.protocol_version,
        // The client's era, and for a 2026-07-28 client how its binding is found.
        "era": crate::downstream::modern::era_of(r),
        "correlation": crate::downstream::modern::correlation_of(r),
        "client": client,
        "createdAtMs": r.created_at,
        "lastActiveMs": r.last_active,
        "closedAtMs": r.closed_at,
        "closeReason": r.close_reason.map(|c| c.as_str()),
        "requests": r.requests,
        "toolCalls": r.tool_calls,
        "live": live.is_some(),
        "upstream": live.map(|s| s.upstream_state().as_str()),
    })
}
