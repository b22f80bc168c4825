//! A Streamable HTTP server as an upstream (handshake era).
//!
//! Each message is a POST. The upstream's `Mcp-Session-Id` lives here, in the binding, never in
//! front of the client. A POST answered with SSE is read by its own task; a stream that ends
//! before its response is resumed with `Last-Event-ID`. The standalone GET stream is opened on
//! request and reopened when it drops. Every way a server says "I forgot your session" — 404,
//! or a 400 that says so — becomes [`SendError::SessionLost`] or [`QuitReason::SessionLost`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use tether_protocol::method;
use tether_protocol::sse::Decoder;
use tether_protocol::{Kind, Message};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, warn};

use super::{ConnectContext, Origin, QuitReason, SendError, UpstreamEvent};

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

struct Shared {
    url: String,
    http: reqwest::Client,
    forwarded: super::credentials::ForwardedAuth,
    session: Mutex<Option<String>>,
    version: Mutex<Option<String>>,
    alive: AtomicBool,
    events: mpsc::Sender<UpstreamEvent>,
    max: usize,
    span: tracing::Span,
}

/// The handle to one upstream HTTP session.
pub struct Handle {
    shared: Arc<Shared>,
    standalone: Mutex<Option<JoinHandle<()>>>,
}

impl Handle {
    /// A connection-to-be: the upstream session starts with the first `initialize` POST.
    pub fn new(url: &str, ctx: ConnectContext) -> Handle {
        let span = tracing::info_span!("upstream", session_id = %ctx.session_id, upstream = "streamable-http");
        Handle {
            shared: Arc::new(Shared {
                url: url.to_owned(),
                http: ctx.http,
                forwarded: ctx.forwarded,
                session: Mutex::new(None),
                version: Mutex::new(None),
                alive: AtomicBool::new(true),
                events: ctx.events,
                max: ctx.options.max_message,
                span,
            }),
            standalone: Mutex::new(None),
        }
    }

    /// The upstream's `Mcp-Session-Id`, once it issued one (shown to operators).
    pub fn session_id(&self) -> Option<String> {
        self.shared.session_id()
    }

    /// Records the negotiated version for the `MCP-Protocol-Version` header.
    pub fn set_protocol_version(&self, version: &str) {
        if let Ok(mut v) = self.shared.version.lock() {
            *v = Some(version.to_owned());
        }
    }

    /// Forgets the upstream session: the next use starts a new one, and what it carried is
    /// settled.
    pub fn mark_lost(&self) {
        let shared = self.shared.clone();
        tokio::spawn(async move { shared.lost(QuitReason::SessionLost("session_invalid"), Vec::new()).await });
    }

    /// Whether the upstream session is still believed valid.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    /// POSTs one message. Returns once the upstream has accepted it (its status is known); a
    /// streamed answer is read in the background and reported as events. An `initialize` that
    /// a modern-only server refuses is a [`SendError::Refused`] saying so.
    pub async fn send(&self, msg: &Message, gid: Option<u64>) -> Result<(), SendError> {
        match self.send_probing(msg, gid).await? {
            Sent::Delivered => Ok(()),
            Sent::ModernOnly(answer) => Err(super::era::modern_only_refusal(&answer)),
        }
    }

    /// [`Handle::send`], except that an `initialize` refused the way a modern-only server
    /// refuses it (-32022 naming only 2026-07-28 revisions) is returned, not delivered: the
    /// caller may speak to the server in the modern era instead ([`super::era`]).
    pub(super) async fn send_probing(&self, msg: &Message, gid: Option<u64>) -> Result<Sent, SendError> {
        let shared = &self.shared;
        if !self.is_alive() {
            return Err(SendError::Unreachable("the upstream session has ended".into()));
        }
        let had_session = shared.session_id().is_some();
        let resp = shared
            .http
            .post(&shared.url)
            .headers(shared.headers("application/json, text/event-stream"))
            .header(CONTENT_TYPE, "application/json")
            .body(msg.to_bytes())
            .send()
            .await
            .map_err(|e| post_error(&e));
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let undelivered =
                    if matches!(e, SendError::Unreachable(_)) { gid.into_iter().collect() } else { Vec::new() };
                shared.lost(QuitReason::Disconnected(e.to_string()), undelivered).await;
                return Err(e);
            }
        };
        let status = resp.status();
        if msg.is(method::INITIALIZE)
            && let Some(sid) = resp.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok())
            && let Ok(mut s) = shared.session.lock()
        {
            *s = Some(sid.to_owned());
        }
        let content_type = content_type(resp.headers());
        if status.is_success() {
            let origin = gid.map(Origin::Request).unwrap_or(Origin::Unrelated);
            if content_type.starts_with("text/event-stream") {
                let shared2 = shared.clone();
                let task = read_sse(shared2, resp, origin, gid);
                tokio::spawn(task.instrument(shared.span.clone()));
            } else if content_type.starts_with("application/json") {
                let body = match resp.bytes().await {
                    Ok(b) => b,
                    Err(e) => {
                        let e = SendError::Interrupted(format!("reading the response body failed: {e}"));
                        shared.lost(QuitReason::Disconnected(e.to_string()), Vec::new()).await;
                        return Err(e);
                    }
                };
                if let Some(refusal) = modern_refusal(msg, &body) {
                    return Ok(Sent::ModernOnly(refusal));
                }
                if !body.is_empty() {
                    shared.deliver_body(origin, &body).await;
                }
            }
            return Ok(Sent::Delivered);
        }
        let body = resp.bytes().await.unwrap_or_default();
        if is_session_lost(status.as_u16(), had_session, &body) {
            // The upstream refused it without running it: it may be sent again.
            let class = session_loss_class(status.as_u16(), &body);
            shared.lost(QuitReason::SessionLost(class), gid.into_iter().collect()).await;
            return Err(SendError::SessionLost);
        }
        if let Some(refusal) = modern_refusal(msg, &body) {
            return Ok(Sent::ModernOnly(refusal));
        }
        if had_session && Message::parse(&body).is_ok_and(|m| super::modern::refuses_handshake(&m)) {
            // The server was restarted as a modern-only one: our session is gone with the era.
            // Nothing ran; the next connection probes again ([`super::era`]).
            shared.lost(QuitReason::SessionLost("session_invalid"), gid.into_iter().collect()).await;
            return Err(SendError::SessionLost);
        }
        // An HTTP error that carries a JSON-RPC error for this request is the upstream's answer.
        if let Ok(answer) = Message::parse(&body)
            && answer.kind() == Kind::Error
            && gid.is_some()
            && answer.numeric_id() == gid
        {
            shared.deliver(Origin::Unrelated, answer).await;
            return Ok(Sent::Delivered);
        }
        Err(SendError::Refused {
            status: status.as_u16(),
            detail: String::from_utf8_lossy(&body).chars().take(200).collect(),
        })
    }

    /// Opens (once) the standalone GET stream for server-initiated messages.
    pub fn open_standalone(&self) {
        let Ok(mut slot) = self.standalone.lock() else {
            return;
        };
        if slot.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let shared = self.shared.clone();
        let span = shared.span.clone();
        *slot = Some(tokio::spawn(standalone(shared).instrument(span)));
    }

    /// Ends the upstream session with a DELETE.
    pub async fn close(&self) {
        if let Ok(mut slot) = self.standalone.lock()
            && let Some(t) = slot.take()
        {
            t.abort();
        }
        let shared = &self.shared;
        let was_alive = shared.alive.swap(false, Ordering::AcqRel);
        if was_alive && shared.session_id().is_some() {
            let req = shared.http.delete(&shared.url).headers(shared.headers("application/json"));
            if let Err(e) = tokio::time::timeout(Duration::from_secs(5), req.send()).await {
                debug!(error = %e, "upstream DELETE timed out");
            }
        }
        let _ = shared.events.send(UpstreamEvent::Closed(QuitReason::Closed, Vec::new())).await;
    }
}

impl Shared {
    fn session_id(&self) -> Option<String> {
        self.session.lock().ok().and_then(|s| s.clone())
    }

    fn headers(&self, accept: &'static str) -> HeaderMap {
        let mut h = self.forwarded.headers();
        h.insert(ACCEPT, HeaderValue::from_static(accept));
        if let Some(sid) = self.session_id()
            && let Ok(v) = HeaderValue::from_str(&sid)
        {
            h.insert(SESSION_HEADER, v);
        }
        if let Some(ver) = self.version.lock().ok().and_then(|v| v.clone())
            && let Ok(v) = HeaderValue::from_str(&ver)
        {
            h.insert(VERSION_HEADER, v);
        }
        h
    }

    async fn deliver(&self, origin: Origin, msg: Message) {
        let _ = self.events.send(UpstreamEvent::Message(origin, msg)).await;
    }

    async fn deliver_body(&self, origin: Origin, body: &[u8]) {
        match Message::parse(body) {
            Ok(m) => self.deliver(origin, m).await,
            Err(e) => {
                warn!(error = %e, "upstream answered with a body that is not a JSON-RPC message")
            }
        }
    }

    /// Reports the upstream session dead, once, with the requests it never received.
    async fn lost(&self, reason: QuitReason, undelivered: Vec<u64>) {
        if self.alive.swap(false, Ordering::AcqRel) {
            let _ = self.events.send(UpstreamEvent::Closed(reason, undelivered)).await;
        }
    }
}

/// What became of a message [`Handle::send_probing`] sent.
pub(super) enum Sent {
    /// The upstream took it; its answer, if any, comes as events.
    Delivered,
    /// The upstream refused `initialize` as a modern-only server does (its answer).
    ModernOnly(Message),
}

/// The upstream's answer to `msg` when `msg` is `initialize` and the answer is a modern-only
/// server's refusal (-32022 naming only 2026-07-28 revisions, with or without our id).
fn modern_refusal(msg: &Message, body: &[u8]) -> Option<Message> {
    if !msg.is(method::INITIALIZE) {
        return None;
    }
    Message::parse(body).ok().filter(super::modern::refuses_handshake)
}

/// Reads one SSE response stream; resumes it with `Last-Event-ID` if it ends before the
/// response to `gid` was seen.
async fn read_sse(shared: Arc<Shared>, resp: reqwest::Response, origin: Origin, gid: Option<u64>) {
    let mut resp = resp;
    let mut attempts = 0u32;
    loop {
        let outcome = pump(&shared, resp, origin, gid).await;
        if outcome.done || gid.is_none() || !shared.alive.load(Ordering::Acquire) {
            return;
        }
        let Some(last_id) = outcome.last_event_id else {
            // Nothing to resume from: the request's fate is unknown. The session's timeout ends it.
            debug!("upstream response stream ended before its response, with no event id");
            return;
        };
        attempts += 1;
        if attempts > 5 {
            warn!("upstream response stream could not be resumed");
            return;
        }
        tokio::time::sleep(Duration::from_millis(outcome.retry_ms.unwrap_or(500).min(10_000))).await;
        let mut headers = shared.headers("text/event-stream");
        if let Ok(v) = HeaderValue::from_str(&last_id) {
            headers.insert("last-event-id", v);
        }
        match shared.http.get(&shared.url).headers(headers).send().await {
            Ok(r) if r.status().is_success() => resp = r,
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.bytes().await.unwrap_or_default();
                if is_session_lost(status, shared.session_id().is_some(), &body) {
                    shared.lost(QuitReason::SessionLost(session_loss_class(status, &body)), Vec::new()).await;
                }
                return;
            }
            Err(e) => {
                shared.lost(QuitReason::Disconnected(describe(&e)), Vec::new()).await;
                return;
            }
        }
    }
}

struct PumpOutcome {
    done: bool,
    last_event_id: Option<String>,
    retry_ms: Option<u64>,
}

async fn pump(shared: &Shared, resp: reqwest::Response, origin: Origin, gid: Option<u64>) -> PumpOutcome {
    let mut events = SseMessages::new(resp, shared.max);
    let mut done = false;
    while let Some(m) = events.next().await {
        let is_answer = matches!(m.kind(), Kind::Response | Kind::Error) && gid.is_some() && m.numeric_id() == gid;
        shared.deliver(origin, m).await;
        if is_answer {
            done = true;
            break;
        }
    }
    PumpOutcome { done, last_event_id: events.last_event_id, retry_ms: events.retry_ms }
}

/// The JSON-RPC messages of an SSE response (events named `message` or unnamed), one at a
/// time. Events that are not JSON-RPC are skipped; a stream that breaks the SSE framing ends.
pub(super) struct SseMessages {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    decoder: Decoder,
    ready: std::collections::VecDeque<Message>,
    /// The last event id seen (for `Last-Event-ID`).
    pub(super) last_event_id: Option<String>,
    /// The last `retry` hint seen.
    pub(super) retry_ms: Option<u64>,
}

impl SseMessages {
    /// Reads `resp`, refusing events over `max` bytes.
    pub(super) fn new(resp: reqwest::Response, max: usize) -> SseMessages {
        SseMessages {
            body: Box::pin(resp.bytes_stream()),
            decoder: Decoder::new(max),
            ready: std::collections::VecDeque::new(),
            last_event_id: None,
            retry_ms: None,
        }
    }

    /// The next message, or `None` when the stream has ended (or broke).
    pub(super) async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Some(m);
            }
            let Ok(chunk) = self.body.next().await? else { return None };
            let events = match self.decoder.feed(&chunk) {
                Ok(e) => e,
                Err(e) => {
                    warn!(error = %e, "upstream SSE stream refused");
                    return None;
                }
            };
            for ev in events {
                if ev.id.is_some() {
                    self.last_event_id = ev.id.clone();
                }
                if ev.retry.is_some() {
                    self.retry_ms = ev.retry;
                }
                if ev.data.is_empty() || ev.event.as_deref().is_some_and(|e| e != "message") {
                    continue;
                }
                match Message::parse(ev.data.as_bytes()) {
                    Ok(m) => self.ready.push_back(m),
                    Err(e) => warn!(error = %e, "upstream SSE event is not a JSON-RPC message; skipped"),
                }
            }
        }
    }
}

/// Keeps the standalone GET stream open while the upstream session lives.
async fn standalone(shared: Arc<Shared>) {
    let mut last_id: Option<String> = None;
    let mut delay = Duration::from_millis(500);
    while shared.alive.load(Ordering::Acquire) {
        let mut headers = shared.headers("text/event-stream");
        if let Some(id) = &last_id
            && let Ok(v) = HeaderValue::from_str(id)
        {
            headers.insert("last-event-id", v);
        }
        match shared.http.get(&shared.url).headers(headers).send().await {
            Ok(r) if r.status().is_success() => {
                let outcome = pump(&shared, r, Origin::Standalone, None).await;
                if outcome.last_event_id.is_some() {
                    last_id = outcome.last_event_id;
                }
                if let Some(ms) = outcome.retry_ms {
                    delay = Duration::from_millis(ms.min(30_000));
                }
            }
            Ok(r) if r.status().as_u16() == 405 || (r.status().as_u16() == 404 && shared.session_id().is_none()) => {
                // 405, or a stateless server (no session) that has no such route.
                debug!(status = r.status().as_u16(), "upstream offers no standalone stream");
                return;
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.bytes().await.unwrap_or_default();
                if is_session_lost(status, shared.session_id().is_some(), &body) {
                    shared.lost(QuitReason::SessionLost(session_loss_class(status, &body)), Vec::new()).await;
                    return;
                }
                // 409: another GET stream is open upstream; back off and try again.
                debug!(status, "upstream refused the standalone stream");
            }
            Err(e) => {
                shared.lost(QuitReason::Disconnected(describe(&e)), Vec::new()).await;
                return;
            }
        }
        tokio::time::sleep(delay).await;
    }
}

/// The response's `Content-Type`, lowercased (empty when absent).
pub(super) fn content_type(h: &HeaderMap) -> String {
    h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase()
}

pub use tether_protocol::session_error::{is_session_lost, session_loss_class};

/// How a failed POST is reported: a connection that could not be made provably delivered
/// nothing; any other failure may have happened after the message went out.
pub(super) fn post_error(e: &reqwest::Error) -> SendError {
    if e.is_connect() { SendError::Unreachable(describe(e)) } else { SendError::Interrupted(describe(e)) }
}

/// A reqwest error with its chain of causes, for logs and error details.
pub(super) fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::is_session_lost;

    #[test]
    fn every_session_loss_signal_is_recognised() {
        assert!(is_session_lost(404, true, b""));
        assert!(!is_session_lost(404, false, b"not found"));
        assert!(is_session_lost(400, true, br#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: No valid session ID provided"},"id":null}"#));
        assert!(is_session_lost(404, true, br#"{"error":{"code":-32001,"message":"Session not found"}}"#));
        assert!(is_session_lost(400, true, br#"{"error":{"code":-32600,"message":"Session terminated"}}"#));
        assert!(!is_session_lost(400, true, br#"{"error":{"code":-32602,"message":"bad params"}}"#));
        assert!(!is_session_lost(500, true, b"session"));
    }
}
