//! Counts open SSE response streams for `/metrics`: a layer that wraps every `text/event-stream`
//! response body with a guard, so the gauge falls when the body ends or the client goes away,
//! whichever transport or handler opened it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;

use crate::stats::Stats;

/// Holds the gauge up while its stream lives.
struct Open(Arc<Stats>);

impl Open {
    fn new(stats: Arc<Stats>) -> Open {
        stats.sse_streams_open.inc();
        Open(stats)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.sse_streams_open.dec();
    }
}

/// The layer function: passes requests through and guards SSE bodies.
pub async fn count_sse_streams(State(stats): State<Arc<Stats>>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let is_sse =
        resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !is_sse {
        return resp;
    }
    let open = Open::new(stats);
    let (parts, body) = resp.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &open;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}
