//! The transports facing MCP clients: Streamable HTTP at `/mcp` and legacy HTTP+SSE at `/sse`
//! and `/messages/`. They validate what arrives, hand messages to the session layer and stream
//! what comes back. [`error_response`] is the only place an error becomes an HTTP answer.

mod front_door;
mod guard;
mod legacy_sse;
pub mod listener;
mod metered;
pub mod modern;
mod stream;
mod streamable;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::auth::Authenticator;
use crate::error::{Fault, GatewayError};
use crate::session::Manager;

pub use front_door::{Caller, SessionRef};
pub use guard::FrontConfig;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The sessions.
    pub manager: Arc<Manager>,
    /// Client-facing checks and limits.
    pub front: Arc<FrontConfig>,
    /// Cancelled when the gateway shuts down: standalone streams end with a retry hint.
    pub shutdown: CancellationToken,
    /// Cancelled when the drain deadline passes: request streams end too.
    pub hard_stop: CancellationToken,
    /// Checks credentials; `None` when the endpoint is open.
    pub auth: Option<Arc<Authenticator>>,
    /// The 2026-07-28 front's bindings, sealed states and listen hubs.
    pub modern: Arc<modern::Front>,
    /// Cluster mode: which replica serves a session; `None` on a single tether.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The `Mcp-Session-Id` a request names.
pub fn session_id(h: &axum::http::HeaderMap) -> Option<&str> {
    guard::session_id(h)
}

/// Reads a request body within the front's size and time limits.
pub async fn read_body(
    body: axum::body::Body,
    h: &axum::http::HeaderMap,
    front: &FrontConfig,
) -> Result<bytes::Bytes, GatewayError> {
    guard::body(body, h, front.max_body, front.body_timeout).await
}

/// The client-facing HTTP routes.
pub fn router(state: AppState) -> Router {
    let legacy_post = post(legacy_sse::post);
    let stats = state.manager.deps().stats.clone();
    Router::new()
        .route(
            "/mcp",
            get(streamable::get).post(streamable::post).delete(streamable::delete).fallback(method_not_allowed),
        )
        .route("/messages/", legacy_post.clone().fallback(method_not_allowed))
        .route("/messages", legacy_post.clone().fallback(method_not_allowed))
        .route("/message", legacy_post.fallback(method_not_allowed))
        // Cluster mode: a session another replica owns is served there (one decision, here).
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::cluster::hop::layer))
        .route("/sse", get(legacy_sse::get).fallback(method_not_allowed))
        // Every MCP endpoint above, and none below, is behind the front door.
        .layer(axum::middleware::from_fn_with_state(state.clone(), front_door::front_door))
        .route(crate::auth::METADATA_PATH, get(front_door::metadata))
        .route(&format!("{}/mcp", crate::auth::METADATA_PATH), get(front_door::metadata))
        .layer(axum::middleware::from_fn_with_state(stats, metered::count_sse_streams))
        .with_state(state)
}

async fn method_not_allowed() -> Response {
    let mut r = error_response(&GatewayError::MethodNotAllowed, None);
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
    r
}

/// The HTTP answer for an error, with a JSON-RPC error body echoing `id` when known.
pub fn error_response(err: &GatewayError, id: Option<&RawValue>) -> Response {
    let wire = err.wire();
    match wire.fault {
        Fault::Downstream => debug!(status = wire.status.as_u16(), error = %err, "request refused"),
        Fault::Upstream => warn!(status = wire.status.as_u16(), error = %err, "upstream failure"),
        Fault::Internal => error!(status = wire.status.as_u16(), error = %err, "internal failure"),
    }
    let mut r = json_response(wire.status, err.to_message(id).to_bytes());
    if let Some(s) = err.retry_after() {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

#[cfg(test)]
mod store_error_tests {
    use super::*;

    #[test]
    fn an_unreachable_store_is_a_503_with_retry_after_never_a_404() {
        let r = error_response(&GatewayError::Store("postgres: connection refused".into()), None);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("2"));
        let r = error_response(&GatewayError::SessionNotFound, None);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }
}
