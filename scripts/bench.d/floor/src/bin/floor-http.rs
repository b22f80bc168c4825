//! Bare HTTP floor: every request is answered with a canned SSE result after reading its id.
//! What an MCP endpoint costs with no upstream at all: HTTP parsing, one small JSON read, one
//! SSE write.

use axum::Router;
use axum::body::Bytes;
use axum::response::Response;
use axum::routing::post;
use serde_json::value::RawValue;

#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    method: Option<&'a str>,
}

async fn mcp(body: Bytes) -> Response {
    let Ok(env) = serde_json::from_slice::<Envelope<'_>>(&body) else { return tether_bench_floor::accepted() };
    let Some(id) = env.id else { return tether_bench_floor::accepted() };
    let result = if env.method == Some("initialize") {
        r#"{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"floor-http","version":"0"}}"#
    } else {
        r#"{"content":[{"type":"text","text":"hello"}]}"#
    };
    let msg = format!(r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#, id.get());
    tether_bench_floor::sse(msg.as_bytes())
}

#[tokio::main]
async fn main() {
    tether_bench_floor::serve(Router::new().route("/mcp", post(mcp))).await;
}
