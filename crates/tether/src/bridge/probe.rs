//! Telling a Streamable HTTP endpoint from a legacy HTTP+SSE one (`--transport auto`).
//!
//! A `GET` with `Accept: text/event-stream` and no session: a legacy server opens its stream
//! and names its POST endpoint in an `endpoint` event; a Streamable HTTP server answers 4xx
//! (no session) or opens a stream without that event.

use std::time::Duration;

use futures_util::StreamExt;
use tether_protocol::sse::Decoder;

use crate::error::GatewayError;
use crate::upstream::UpstreamSpec;

/// Probes `url` once. A connection failure is an error (the caller retries); any HTTP answer
/// decides.
pub async fn detect(http: &reqwest::Client, url: &str) -> Result<UpstreamSpec, GatewayError> {
    let resp =
        tokio::time::timeout(Duration::from_secs(10), http.get(url).header("accept", "text/event-stream").send())
            .await
            .map_err(|_| GatewayError::UpstreamUnavailable(format!("{url}: no answer to the transport probe")))?
            .map_err(|e| GatewayError::UpstreamUnavailable(format!("{url}: {e}")))?;
    let is_sse = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if resp.status().is_success() && is_sse && first_event_is_endpoint(resp).await {
        return Ok(UpstreamSpec::Sse { url: url.to_owned() });
    }
    Ok(UpstreamSpec::Streamable { url: url.to_owned() })
}

async fn first_event_is_endpoint(resp: reqwest::Response) -> bool {
    let mut body = resp.bytes_stream();
    let mut decoder = Decoder::new(64 * 1024);
    let read = async {
        while let Some(Ok(chunk)) = body.next().await {
            let Ok(events) = decoder.feed(&chunk) else { return false };
            // The first event decides: a legacy server's is `endpoint`; anything else (a
            // Streamable HTTP server's priming event, say) is not.
            if let Some(e) = events.into_iter().next() {
                return e.event.as_deref() == Some("endpoint");
            }
        }
        false
    };
    tokio::time::timeout(Duration::from_secs(3), read).await.unwrap_or(false)
}
