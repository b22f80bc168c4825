//! What both floor systems share: the listener (TCP_NODELAY, as tether sets it) and the SSE
//! answer. Deliberately minimal: these programs are yardsticks, not gateways.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The session id both floors hand out: they keep no sessions.
pub const SESSION: &str = "floor";

/// Serves `app` on the address in the first argument, with TCP_NODELAY on every connection.
pub async fn serve(app: Router) {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8090".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind the listen address");
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app.into_make_service()).await.expect("serve");
}

/// One JSON-RPC message as a one-event SSE answer, with the session id on it.
pub fn sse(data: &[u8]) -> Response {
    let mut body = Vec::with_capacity(data.len() + 16);
    body.extend_from_slice(b"event: message\ndata: ");
    body.extend_from_slice(data);
    body.extend_from_slice(b"\n\n");
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert("mcp-session-id", HeaderValue::from_static(SESSION));
    r
}

/// The answer to a notification.
pub fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}
