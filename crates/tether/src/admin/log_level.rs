//! `GET` and `PUT /admin/log-level`: the live log filter, in `RUST_LOG` syntax, changed without a
//! restart through the subscriber's reload handle.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::{AdminError, AdminState, json_response};
use crate::telemetry::{LogControl, LogFilterError};

/// The body of `PUT /admin/log-level`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFilter {
    filter: String,
}

fn control(state: &AdminState) -> Result<&LogControl, AdminError> {
    state.0.log.as_ref().ok_or_else(|| AdminError::Unavailable("log control is not available in this process".into()))
}

/// GET /admin/log-level
pub async fn show(State(state): State<AdminState>) -> Result<Response, AdminError> {
    let log = control(&state)?;
    Ok(json_response(StatusCode::OK, &json!({ "filter": log.filter() })))
}

/// PUT /admin/log-level with `{"filter": "debug"}`; 400 when the body or the filter is bad.
pub async fn set(State(state): State<AdminState>, body: Bytes) -> Result<Response, AdminError> {
    let req: SetFilter = serde_json::from_slice(&body)
        .map_err(|e| AdminError::BadRequest(format!("expected {{\"filter\": \"<RUST_LOG filter>\"}}: {e}")))?;
    let log = control(&state)?;
    log.set(&req.filter).map_err(|e| match e {
        LogFilterError::Invalid { .. } => AdminError::BadRequest(e.to_string()),
        LogFilterError::Unavailable => AdminError::Unavailable(e.to_string()),
    })?;
    info!(filter = %req.filter, "log filter changed");
    Ok(json_response(StatusCode::OK, &json!({ "filter": log.filter() })))
}
