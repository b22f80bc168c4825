//! A legacy HTTP+SSE server (2024-11-05) as an upstream.
//!
//! Connecting opens `GET <url>` and waits for the `endpoint` event, which names the URL that
//! takes POSTs (resolved against the SSE URL; servers use `/message?sessionId=` or
//! `/messages/?session_id=`). Every server message arrives on that one stream; when it ends,
//! the upstream session is gone (the legacy transport cannot resume).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use tether_protocol::Message;
use tether_protocol::sse::Decoder;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{Instrument, warn};

use super::{ConnectContext, ConnectError, Origin, QuitReason, SendError, UpstreamEvent};

/// The handle to one legacy SSE session.
pub struct Handle {
    http: reqwest::Client,
    forwarded: super::credentials::ForwardedAuth,
    post_url: String,
    alive: Arc<AtomicBool>,
    reader: JoinHandle<()>,
    events: mpsc::Sender<UpstreamEvent>,
}

impl Handle {
    /// Opens the SSE stream and waits for the `endpoint` event.
    pub async fn connect(url: &str, ctx: ConnectContext) -> Result<Handle, ConnectError> {
        let fail = |reason: String| ConnectError::Connect { url: url.to_owned(), reason };
        let base = reqwest::Url::parse(url).map_err(|e| fail(e.to_string()))?;
        let resp = tokio::time::timeout(
            ctx.options.connect_timeout,
            ctx.http.get(base.clone()).headers(ctx.forwarded.headers()).header(ACCEPT, "text/event-stream").send(),
        )
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status().as_u16())));
        }
        let alive = Arc::new(AtomicBool::new(true));
        let (endpoint_tx, endpoint_rx) = oneshot::channel();
        let span = tracing::info_span!("upstream", session_id = %ctx.session_id, upstream = "sse");
        let events = ctx.events.clone();
        let reader = tokio::spawn(
            read_stream(resp, ctx.events, alive.clone(), ctx.options.max_message, endpoint_tx).instrument(span),
        );
        let endpoint = tokio::time::timeout(ctx.options.connect_timeout, endpoint_rx)
            .await
            .map_err(|_| fail("no `endpoint` event".into()))?
            .map_err(|_| fail("the stream ended before the `endpoint` event".into()))?;
        let post_url = base.join(endpoint.trim()).map_err(|e| fail(format!("bad endpoint: {e}")))?;
        Ok(Handle { http: ctx.http, forwarded: ctx.forwarded, post_url: post_url.to_string(), alive, reader, events })
    }

    /// Reports the session dead, once, with the requests it never received.
    async fn lost(&self, reason: QuitReason, undelivered: Vec<u64>) {
        if self.alive.swap(false, Ordering::AcqRel) {
            self.reader.abort();
            let _ = self.events.send(UpstreamEvent::Closed(reason, undelivered)).await;
        }
    }

    /// POSTs one message to the endpoint; answers arrive on the stream.
    pub async fn send(&self, msg: &Message, gid: Option<u64>) -> Result<(), SendError> {
        if !self.is_alive() {
            return Err(SendError::Unreachable("the upstream SSE stream has ended".into()));
        }
        let resp = self
            .http
            .post(&self.post_url)
            .headers(self.forwarded.headers())
            .header(CONTENT_TYPE, "application/json")
            .body(msg.to_bytes())
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                self.lost(QuitReason::Disconnected(e.to_string()), gid.into_iter().collect()).await;
                return Err(SendError::Unreachable(e.to_string()));
            }
            Err(e) => {
                self.lost(QuitReason::Disconnected(e.to_string()), Vec::new()).await;
                return Err(SendError::Interrupted(e.to_string()));
            }
        };
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(());
        }
        let body = resp.bytes().await.unwrap_or_default();
        if super::streamable::is_session_lost(status, true, &body) {
            let class = super::streamable::session_loss_class(status, &body);
            self.lost(QuitReason::SessionLost(class), gid.into_iter().collect()).await;
            return Err(SendError::SessionLost);
        }
        Err(SendError::Refused { status, detail: String::from_utf8_lossy(&body).chars().take(200).collect() })
    }

    /// Forgets the upstream session: the next use starts a new one, and what it carried is
    /// settled.
    pub fn mark_lost(&self) {
        if self.alive.swap(false, Ordering::AcqRel) {
            self.reader.abort();
            let events = self.events.clone();
            tokio::spawn(async move {
                let _ =
                    events.send(UpstreamEvent::Closed(QuitReason::SessionLost("session_invalid"), Vec::new())).await;
            });
        }
    }

    /// Whether the stream is still open.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Drops the stream, which ends the upstream session.
    pub fn close(&self) {
        self.alive.store(false, Ordering::Release);
        self.reader.abort();
    }
}

async fn read_stream(
    resp: reqwest::Response,
    events: mpsc::Sender<UpstreamEvent>,
    alive: Arc<AtomicBool>,
    max: usize,
    endpoint_tx: oneshot::Sender<String>,
) {
    let mut endpoint_tx = Some(endpoint_tx);
    let mut decoder = Decoder::new(max);
    let mut body = resp.bytes_stream();
    let reason = loop {
        let chunk = match body.next().await {
            Some(Ok(c)) => c,
            Some(Err(e)) => break QuitReason::Disconnected(e.to_string()),
            None => break QuitReason::Disconnected("the SSE stream ended".into()),
        };
        let evs = match decoder.feed(&chunk) {
            Ok(e) => e,
            Err(e) => break QuitReason::Disconnected(e.to_string()),
        };
        for ev in evs {
            match ev.event.as_deref() {
                Some("endpoint") => {
                    if let Some(tx) = endpoint_tx.take() {
                        let _ = tx.send(ev.data);
                    }
                }
                None | Some("message") if !ev.data.is_empty() => match Message::parse(ev.data.as_bytes()) {
                    Ok(m) => {
                        let _ = events.send(UpstreamEvent::Message(Origin::Unrelated, m)).await;
                    }
                    Err(e) => {
                        warn!(error = %e, "upstream SSE event is not a JSON-RPC message; skipped")
                    }
                },
                _ => {}
            }
        }
    };
    if alive.swap(false, Ordering::AcqRel) {
        let _ = events.send(UpstreamEvent::Closed(reason, Vec::new())).await;
    }
}
