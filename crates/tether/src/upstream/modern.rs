//! A server spoken to in MCP 2026-07-28 (the stateless "modern era"), over Streamable HTTP or a
//! stdio child (`modern/transport.rs`), as an upstream for a handshake-era session.
//!
//! The session layer keeps talking handshake era: it sends `initialize`, `notifications/initialized`,
//! `logging/setLevel`, `resources/subscribe`, and expects server→client requests for sampling,
//! elicitation and roots. This connection translates:
//!
//! * `initialize` is answered here from the remote's `server/discover` result; the client's
//!   params become the per-request `_meta` envelope (version 2026-07-28, client capabilities and
//!   info) and `notifications/initialized` is swallowed;
//! * `logging/setLevel` and `ping` are answered here; the level rides every request as
//!   `io.modelcontextprotocol/logLevel`;
//! * `resources/subscribe`/`unsubscribe` are answered here and kept as the filter of one
//!   `subscriptions/listen` stream (re-opened when the filter changes or the stream drops), whose
//!   notifications reach the client as unsolicited ones;
//! * every request is a POST with the envelope and the headers the revision requires
//!   (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*` learnt from `x-mcp-header`
//!   in `tools/list` results);
//! * an `input_required` result becomes server→client requests on the client's stream, and the
//!   request is retried with the answers (`inputResponses`, `requestState`);
//! * results lose the fields a handshake-era client does not know (`resultType`, `ttlMs`,
//!   `cacheScope`, the `_meta` stamps).
//!
//! A request that already carries the envelope is a 2026-07-28 client's, forwarded by the
//! modern front: it goes out as the client sent it (its envelope, `inputResponses` and
//! `requestState`) and its answer comes back as the server gave it, `input_required` included
//! (the client answers the server's rounds itself).
//!
//! It owns no session state beyond that translation: ids, retries and revives stay in the
//! session layer. HTTP plumbing (SSE reading, error classification) is shared with
//! [`super::streamable`]; over stdio, `initialize` and friends are translated the same way,
//! without the HTTP headers, and the child is [`super::stdio`]'s (see `modern/transport.rs`).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tether_protocol::message::{numeric_id, raw_value};
use tether_protocol::{Kind, Message, method as m};
use tokio::sync::{oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{Instrument, debug, info, warn};

mod input;
mod listen;
mod transport;
pub(crate) mod wire;

use listen::{Dedup, Filter, listen};
use transport::{Pending, StdioWire, Transport};

pub use wire::{
    ClientProfile, HeaderParam, MODERN_VERSION, continues_round, encode_header_value, header_params, initialize_result,
    is_enveloped, refuses_handshake, request_headers, strip_modern_fields, with_envelope,
};

use super::streamable::{SseMessages, content_type, describe, post_error};
use super::{ConnectContext, Origin, QuitReason, SendError, UpstreamEvent};
use crate::error::GatewayError;

/// The most `input_required` rounds one request may take (the TypeScript SDK's shim uses 8).
const MAX_ROUNDS: u32 = 8;
/// How many `tools/list` pages are read to learn the `x-mcp-header` parameters after a -32020.
const RELIST_PAGES: usize = 10;
/// The JSON-RPC code of a header/body mismatch in 2026-07-28.
const HEADER_MISMATCH: i64 = -32020;

#[derive(Default)]
struct State {
    profile: Option<ClientProfile>,
    log_level: Option<String>,
    /// `x-mcp-header` arguments by tool name, from `tools/list` results.
    header_params: HashMap<String, Vec<HeaderParam>>,
    /// The server's capabilities from `server/discover`.
    server_caps: Value,
    subscriptions: BTreeSet<String>,
    /// Waiting `input_required` questions, by the JSON text of the id they went out with.
    inputs: HashMap<String, oneshot::Sender<Message>>,
    /// Requests in flight, by gateway id (a cancel aborts the POST, which cancels it upstream).
    exchanges: HashMap<u64, AbortHandle>,
}

struct Shared {
    transport: Transport,
    events: tokio::sync::mpsc::Sender<UpstreamEvent>,
    alive: AtomicBool,
    /// While a probe decides whether this connection is used at all, its end is not reported
    /// (the session never hears of a connection it did not get).
    hushed: AtomicBool,
    max: usize,
    span: tracing::Span,
    state: Mutex<State>,
    filter: watch::Sender<Filter>,
    /// The filter a listen stream serves (acknowledged), or that the remote serves none of.
    served: watch::Sender<Option<Filter>>,
    /// Recent listen notifications, so that a hand-over between two streams delivers once.
    dedup: Mutex<Dedup>,
    wire_ids: AtomicU64,
}

/// The handle to one modern remote (a cache entry, like an upstream HTTP session).
pub struct Handle {
    shared: Arc<Shared>,
    listen: Mutex<Option<JoinHandle<()>>>,
}

/// Why an answer could not be read.
enum ReadFailure {
    /// The connection broke: the request may or may not have run.
    Broken(String),
    /// An HTTP error without a JSON-RPC answer.
    Refused { status: u16, detail: String },
    /// What a handshake-era server answers a request without its session (a 400/404 about a
    /// missing session, or "not initialized"): the remote does not speak 2026-07-28 (any more).
    NotModern(String),
}

impl Handle {
    /// A connection-to-be: nothing is sent before the session's `initialize`.
    pub fn new(url: &str, ctx: ConnectContext) -> Handle {
        let span = tracing::info_span!("upstream", session_id = %ctx.session_id, upstream = "modern-http");
        let transport =
            Transport::Http { url: url.to_owned(), http: ctx.http.clone(), forwarded: ctx.forwarded.clone() };
        Handle::with_transport(transport, span, ctx)
    }

    /// Starts a stdio child spoken to in 2026-07-28 (nothing is written before the session's
    /// `initialize`, which becomes `server/discover`).
    pub fn over_stdio(command: &[String], ctx: ConnectContext) -> Result<Handle, super::ConnectError> {
        let (wire, events) = StdioWire::spawn(command, &ctx)?;
        let span =
            tracing::info_span!("upstream", session_id = %ctx.session_id, upstream = "modern-stdio", pid = wire.pid());
        let handle = Handle::with_transport(Transport::Stdio(wire.clone()), span, ctx);
        transport::start_demux(wire, &handle.shared, events);
        Ok(handle)
    }

    fn with_transport(transport: Transport, span: tracing::Span, ctx: ConnectContext) -> Handle {
        Handle {
            shared: Arc::new(Shared {
                transport,
                events: ctx.events,
                alive: AtomicBool::new(true),
                hushed: AtomicBool::new(false),
                max: ctx.options.max_message,
                span,
                state: Mutex::new(State::default()),
                filter: watch::Sender::new(Filter::default()),
                served: watch::Sender::new(None),
                dedup: Mutex::new(Dedup::default()),
                wire_ids: AtomicU64::new(1),
            }),
            listen: Mutex::new(None),
        }
    }

    /// Whether the connection is still usable.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
            && match &self.shared.transport {
                Transport::Stdio(w) => w.is_alive(),
                Transport::Http { .. } => true,
            }
    }

    /// Gives the connection up: the session revives a new one (which discovers again).
    pub fn mark_lost(&self) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            shared.lost(QuitReason::Disconnected("marked lost".into()), Vec::new()).await;
            if let Transport::Stdio(w) = &shared.transport {
                w.close().await;
            }
        });
    }

    /// The child's process id, over stdio.
    pub fn pid(&self) -> Option<u32> {
        match &self.shared.transport {
            Transport::Stdio(w) => Some(w.pid()),
            Transport::Http { .. } => None,
        }
    }

    /// Starts the listen stream for the change notifications the server offers (the client's
    /// standalone stream is open).
    pub fn open_standalone(&self) {
        let Ok(mut slot) = self.listen.lock() else { return };
        if slot.as_ref().is_some_and(|t| !t.is_finished()) || !self.is_alive() {
            return;
        }
        self.shared.refresh_filter();
        let shared = self.shared.clone();
        let span = shared.span.clone();
        *slot = Some(tokio::spawn(listen(shared).instrument(span)));
    }

    /// Stops the listen stream and drops the requests in flight.
    fn stop(&self) {
        if let Ok(mut slot) = self.listen.lock()
            && let Some(t) = slot.take()
        {
            t.abort();
        }
        self.shared.alive.store(false, Ordering::Release);
        self.shared.drop_waiters();
    }

    /// Ends the connection: the listen stream and requests in flight are dropped.
    pub async fn close(&self) {
        self.stop();
        if let Transport::Stdio(w) = &self.shared.transport {
            w.close().await;
        }
        let _ = self.shared.events.send(UpstreamEvent::Closed(QuitReason::Closed, Vec::new())).await;
    }

    /// Whether the end of this connection is reported to the session (not while a probe
    /// decides whether it is used); a connection that ended while hushed is reported on unhush.
    pub(super) async fn hush(&self, on: bool) {
        self.shared.hushed.store(on, Ordering::Release);
        if !on && !self.shared.alive.load(Ordering::Acquire) {
            let reason = QuitReason::Disconnected("the upstream ended right after answering the probe".into());
            let _ = self.shared.events.send(UpstreamEvent::Closed(reason, Vec::new())).await;
        }
    }

    /// Ends a connection the session never heard of (a probe that found no 2026-07-28
    /// server): nothing is reported.
    pub(super) async fn discard(&self) {
        self.stop();
        if let Transport::Stdio(w) = &self.shared.transport {
            // Off the caller's path: its successor need not wait for the grace.
            let w = w.clone();
            tokio::spawn(async move { w.close().await });
        }
    }

    /// Hands one handshake-era message to the remote, translated.
    pub async fn send(&self, msg: &Message, gid: Option<u64>) -> Result<(), SendError> {
        if !self.is_alive() {
            return Err(SendError::Unreachable("the modern upstream connection has ended".into()));
        }
        match msg.kind() {
            Kind::Request => {
                let Some(gid) = gid else {
                    return Err(SendError::Refused { status: 0, detail: "a request without a gateway id".into() });
                };
                self.request(msg, gid).await
            }
            Kind::Notification => {
                self.notification(msg);
                Ok(())
            }
            Kind::Response | Kind::Error => {
                self.shared.input_answer(msg.clone());
                Ok(())
            }
        }
    }

    fn notification(&self, msg: &Message) {
        if msg.is(m::NOTIFICATION_CANCELLED) {
            // Over HTTP, closing the request's stream is the cancel.
            let gid = msg
                .params()
                .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
                .and_then(|p| p.get("requestId").and_then(Value::as_u64));
            if let Some(gid) = gid
                && let Some(h) = self.shared.state().exchanges.remove(&gid)
            {
                h.abort();
            }
            return;
        }
        // `notifications/initialized`, roots/list_changed and client progress do not exist at
        // 2026-07-28: nothing to send.
        debug!(method = msg.method().unwrap_or(""), "client notification has no 2026-07-28 equivalent; dropped");
    }

    async fn request(&self, msg: &Message, gid: u64) -> Result<(), SendError> {
        let shared = &self.shared;
        let method = msg.method().unwrap_or_default().to_owned();
        let params: Value = match msg.params() {
            Some(p) => serde_json::from_str(p.get()).unwrap_or(Value::Null),
            None => Value::Null,
        };
        let forwarded = is_enveloped(&params);
        match method.as_str() {
            // A modern client's request is the server's to answer, whatever it is.
            _ if forwarded => {}
            m::INITIALIZE => {
                return match self.initialize(&params, gid).await? {
                    Discovered::Served => Ok(()),
                    Discovered::NotModern(why) => Err(super::era::not_modern_refusal(&why)),
                };
            }
            m::PING => {
                shared.answer(gid, json!({})).await;
                return Ok(());
            }
            m::LOGGING_SET_LEVEL => {
                if let Some(level) = params.get("level").and_then(Value::as_str) {
                    shared.state().log_level = Some(level.to_owned());
                }
                shared.answer(gid, json!({})).await;
                return Ok(());
            }
            m::RESOURCES_SUBSCRIBE | m::RESOURCES_UNSUBSCRIBE => {
                if let Some(uri) = params.get("uri").and_then(Value::as_str) {
                    let mut st = shared.state();
                    if method == m::RESOURCES_SUBSCRIBE {
                        st.subscriptions.insert(uri.to_owned());
                    } else {
                        st.subscriptions.remove(uri);
                    }
                }
                shared.refresh_filter();
                self.open_standalone();
                // Answered once a listen stream serves the new set: an update the client
                // causes right after its subscribe must reach it.
                let shared = shared.clone();
                let span = shared.span.clone();
                tokio::spawn(
                    async move {
                        shared.wait_served().await;
                        shared.answer(gid, json!({})).await;
                    }
                    .instrument(span),
                );
                return Ok(());
            }
            _ => {}
        }
        let exchange = Exchange { gid, method, params, forwarded };
        let resp = shared.post_request(&exchange, &exchange.params).await?;
        // A refusal without a JSON-RPC answer is the sender's to report, like the other kinds.
        let resp = match resp {
            Pending::Http(r)
                if !r.status().is_success() && !content_type(r.headers()).starts_with("application/json") =>
            {
                let status = r.status().as_u16();
                let body = r.bytes().await.unwrap_or_default();
                return Err(SendError::Refused {
                    status,
                    detail: String::from_utf8_lossy(&body).chars().take(200).collect(),
                });
            }
            other => other,
        };
        let shared2 = shared.clone();
        let task =
            tokio::spawn(async move { shared2.run_exchange(exchange, resp).await }.instrument(shared.span.clone()));
        shared.state().exchanges.insert(gid, task.abort_handle());
        Ok(())
    }

    /// Answers the handshake-era `initialize` message `msg` from `server/discover`, or says
    /// that the server does not speak 2026-07-28 (nothing is delivered then: the caller may
    /// speak to it in the handshake era instead, [`super::era`]).
    pub(super) async fn initialize_probe(&self, msg: &Message, gid: u64) -> Result<Discovered, SendError> {
        if !self.is_alive() {
            return Err(SendError::Unreachable("the modern upstream connection has ended".into()));
        }
        let params: Value = msg.params().and_then(|p| serde_json::from_str(p.get()).ok()).unwrap_or(Value::Null);
        self.initialize(&params, gid).await
    }

    /// Answers `initialize` from `server/discover`, and keeps the client's profile for the
    /// envelope of every later request.
    async fn initialize(&self, params: &Value, gid: u64) -> Result<Discovered, SendError> {
        let shared = &self.shared;
        shared.state().profile = Some(ClientProfile::from_initialize(params));
        let exchange = Exchange { gid, method: m::SERVER_DISCOVER.into(), params: json!({}), forwarded: false };
        let resp = shared.post_request(&exchange, &exchange.params).await?;
        let answer = match shared.read_answer(resp, gid).await {
            Ok(a) => a,
            // Discovery has no effect: a broken answer is as good as none.
            Err(ReadFailure::Broken(d)) => return Err(SendError::Unreachable(d)),
            // Authentication, or a server that is failing, says nothing about its era (the
            // probe rules of the TypeScript SDK): an error, not a verdict.
            Err(ReadFailure::Refused { status, detail }) if matches!(status, 401 | 403) || status >= 500 => {
                return Err(SendError::Refused { status, detail });
            }
            Err(ReadFailure::Refused { status, detail }) => {
                return Ok(Discovered::NotModern(format!("HTTP {status}: {detail}")));
            }
            Err(ReadFailure::NotModern(why)) => return Ok(Discovered::NotModern(why)),
        };
        let Some(result) = answer.result().and_then(|r| serde_json::from_str::<Value>(r.get()).ok()) else {
            // A handshake-era server refuses discovery (-32601, "not initialized", a missing
            // session…): whatever the code, it is not a 2026-07-28 server.
            return Ok(Discovered::NotModern(wire::describe_error(&answer)));
        };
        if !wire::lists_modern(&result) {
            return Ok(Discovered::NotModern("its server/discover result lists no 2026-07-28 revision".into()));
        }
        let requested = params.get("protocolVersion").and_then(Value::as_str);
        let init = initialize_result(&result, requested);
        shared.state().server_caps = init.get("capabilities").cloned().unwrap_or_else(|| json!({}));
        shared.refresh_filter();
        info!(
            protocol_version = init["protocolVersion"].as_str().unwrap_or(""),
            remote = %shared.transport.describe(),
            "modern remote discovered; serving the client's handshake from server/discover"
        );
        shared.answer(gid, init).await;
        Ok(Discovered::Served)
    }
}

/// What `server/discover` said about a remote.
pub(super) enum Discovered {
    /// It speaks 2026-07-28: the client's `initialize` was answered.
    Served,
    /// It does not (what it answered instead); nothing was delivered.
    NotModern(String),
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.listen.lock()
            && let Some(t) = slot.take()
        {
            t.abort();
        }
    }
}

/// One client request on its way through the rounds.
struct Exchange {
    gid: u64,
    method: String,
    /// The client's params, without the envelope unless `forwarded`.
    params: Value,
    /// A modern client's request, envelope and all: sent and answered as is.
    forwarded: bool,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn drop_waiters(&self) {
        let mut st = self.state();
        st.inputs.clear();
        for (_, h) in st.exchanges.drain() {
            h.abort();
        }
    }

    /// Reports the connection dead, once, with the requests it never received.
    async fn lost(&self, reason: QuitReason, undelivered: Vec<u64>) {
        if self.alive.swap(false, Ordering::AcqRel) {
            self.drop_waiters();
            if !self.hushed.load(Ordering::Acquire) {
                let _ = self.events.send(UpstreamEvent::Closed(reason, undelivered)).await;
            }
        }
    }

    async fn deliver(&self, origin: Origin, msg: Message) {
        let _ = self.events.send(UpstreamEvent::Message(origin, msg)).await;
    }

    /// The answer to the session's request `gid`, whatever id it had on the wire.
    async fn deliver_answer(&self, gid: u64, mut msg: Message) {
        msg.set_id(numeric_id(gid));
        self.deliver(Origin::Request(gid), msg).await;
    }

    async fn answer(&self, gid: u64, result: Value) {
        self.deliver(Origin::Request(gid), Message::response(&numeric_id(gid), &raw_value(&result))).await;
    }

    async fn fail(&self, gid: u64, e: GatewayError) {
        self.deliver(Origin::Request(gid), e.to_message(Some(&numeric_id(gid)))).await;
    }

    fn refresh_filter(&self) {
        let st = self.state();
        let caps = &st.server_caps;
        let uris = if caps["resources"]["subscribe"].as_bool() == Some(true) || !st.subscriptions.is_empty() {
            st.subscriptions.clone()
        } else {
            BTreeSet::new()
        };
        let filter = Filter {
            tools: caps["tools"]["listChanged"].as_bool() == Some(true),
            prompts: caps["prompts"]["listChanged"].as_bool() == Some(true),
            resources: caps["resources"]["listChanged"].as_bool() == Some(true),
            uris,
        };
        drop(st);
        self.filter.send_if_modified(|f| {
            let changed = *f != filter;
            *f = filter;
            changed
        });
    }

    /// The body and headers of one POST for `method` with `params` (the envelope is added
    /// unless the client's is `forwarded`).
    fn build(&self, method: &str, params: &Value, forwarded: bool) -> (Value, HeaderMap) {
        let (profile, level, header_params) = {
            let st = self.state();
            let tool = if method == m::TOOLS_CALL { params.get("name").and_then(Value::as_str) } else { None };
            (
                st.profile.clone().unwrap_or_default(),
                st.log_level.clone(),
                tool.and_then(|t| st.header_params.get(t).cloned()).unwrap_or_default(),
            )
        };
        let params = if forwarded { params.clone() } else { with_envelope(params, &profile, level.as_deref()) };
        let mut headers = match &self.transport {
            Transport::Http { forwarded, .. } => forwarded.headers(),
            Transport::Stdio(_) => HeaderMap::new(),
        };
        headers.insert(ACCEPT, HeaderValue::from_static("application/json, text/event-stream"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in request_headers(method, &params, &header_params) {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
                headers.insert(n, v);
            }
        }
        (params, headers)
    }

    /// POSTs one round of `exchange` with `params`. A failure is only reported: the session
    /// replaces this connection (discovering again, waiting for an away remote) and sends again.
    async fn post_request(&self, exchange: &Exchange, params: &Value) -> Result<Pending, SendError> {
        let (params, headers) = self.build(&exchange.method, params, exchange.forwarded);
        match &self.transport {
            Transport::Http { url, http, .. } => {
                let wire_id = self.wire_ids.fetch_add(1, Ordering::Relaxed);
                let body = json!({"jsonrpc": "2.0", "id": wire_id, "method": exchange.method, "params": params});
                let resp = http.post(url).headers(headers).body(body.to_string()).send().await;
                resp.map(Pending::Http).map_err(|e| post_error(&e))
            }
            Transport::Stdio(w) => {
                w.request(Some(exchange.gid), &exchange.method, &params, 4).await.map(Pending::Stdio)
            }
        }
    }

    /// Reads the final answer of one POST; request-related notifications on an SSE answer are
    /// passed on to the request's stream.
    async fn read_answer(&self, pending: Pending, gid: u64) -> Result<Message, ReadFailure> {
        let resp = match pending {
            Pending::Http(resp) => resp,
            Pending::Stdio(mut waiter) => {
                return match waiter.next().await {
                    Some(m) => Ok(m),
                    None => Err(ReadFailure::Broken("the stdio child ended before its answer".into())),
                };
            }
        };
        let status = resp.status();
        let ctype = content_type(resp.headers());
        if status.is_success() && ctype.starts_with("text/event-stream") {
            let mut events = SseMessages::new(resp, self.max);
            while let Some(m) = events.next().await {
                match m.kind() {
                    Kind::Response | Kind::Error => return Ok(m),
                    Kind::Notification => self.deliver(Origin::Request(gid), m).await,
                    Kind::Request => warn!("a 2026-07-28 server sent a request on a response stream; dropped"),
                }
            }
            return Err(ReadFailure::Broken("the response stream ended before its answer".into()));
        }
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(ReadFailure::Broken(format!("reading the response body failed: {}", describe(&e)))),
        };
        if wire::handshake_session_refusal(status.as_u16(), &body) {
            let detail: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(ReadFailure::NotModern(format!("HTTP {}: {detail}", status.as_u16())));
        }
        match Message::parse(&body) {
            Ok(m) if matches!(m.kind(), Kind::Response | Kind::Error) => Ok(m),
            _ => Err(ReadFailure::Refused {
                status: status.as_u16(),
                detail: String::from_utf8_lossy(&body).chars().take(200).collect(),
            }),
        }
    }

    /// Drives one request to its final answer: reads it, answers `input_required` rounds with
    /// the client's help, re-learns tool headers once on a header mismatch, and hands the
    /// translated answer to the session.
    async fn run_exchange(self: Arc<Self>, exchange: Exchange, first: Pending) {
        let gid = exchange.gid;
        let mut resp = first;
        let mut round = 0u32;
        let mut relisted = false;
        loop {
            let answer = match self.read_answer(resp, gid).await {
                Ok(a) => a,
                Err(ReadFailure::Broken(d)) => {
                    // No resumption at 2026-07-28: the session decides whether to send it again.
                    self.fail(gid, GatewayError::UpstreamRestarted(d)).await;
                    break;
                }
                Err(ReadFailure::Refused { status, detail }) => {
                    self.fail(gid, GatewayError::UpstreamRefused { status, detail }).await;
                    break;
                }
                Err(ReadFailure::NotModern(why)) => {
                    // Restarted in the handshake era: the request did not run. The session
                    // sends it again on a new connection, which probes the era again.
                    warn!(reason = %why, "the remote no longer speaks 2026-07-28");
                    // Not from this task: ending the connection aborts its exchanges, this one too.
                    self.state().exchanges.remove(&gid);
                    let me = self.clone();
                    tokio::spawn(async move { me.lost(QuitReason::SessionLost("session_invalid"), vec![gid]).await });
                    break;
                }
            };
            let mut next_params = exchange.params.clone();
            match answer.result().and_then(|r| serde_json::from_str::<Value>(r.get()).ok()) {
                None => {
                    if error_code_of(&answer) == Some(HEADER_MISMATCH) && exchange.method == m::TOOLS_CALL && !relisted
                    {
                        // Our view of the tool's `x-mcp-header` arguments is stale: list again, once.
                        relisted = true;
                        self.relist_tools(gid).await;
                    } else {
                        self.deliver_answer(gid, answer).await;
                        break;
                    }
                }
                Some(result)
                    if !exchange.forwarded
                        && result.get("resultType").and_then(Value::as_str) == Some("input_required") =>
                {
                    round += 1;
                    if round > MAX_ROUNDS {
                        let why = format!("the server asked for input more than {MAX_ROUNDS} times");
                        self.input_failed(&exchange, &why).await;
                        break;
                    }
                    match self.ask_client(gid, round, &result).await {
                        Ok(responses) => {
                            if let Some(obj) = next_params.as_object_mut() {
                                if let Some(r) = responses {
                                    obj.insert("inputResponses".into(), r);
                                }
                                if let Some(s) = result.get("requestState") {
                                    obj.insert("requestState".into(), s.clone());
                                }
                            }
                        }
                        Err(why) => {
                            self.input_failed(&exchange, &why).await;
                            break;
                        }
                    }
                }
                Some(result) if exchange.forwarded => {
                    if exchange.method == m::TOOLS_LIST {
                        // Learnt for the headers of later calls; the client sees the list as is.
                        self.learn_tools(&mut result.clone());
                    }
                    self.answer(gid, result).await;
                    break;
                }
                Some(mut result) => {
                    if exchange.method == m::TOOLS_LIST {
                        self.learn_tools(&mut result);
                    }
                    strip_modern_fields(&mut result);
                    self.answer(gid, result).await;
                    break;
                }
            }
            resp = match self.post_request(&exchange, &next_params).await {
                Ok(r) => r,
                Err(e) => {
                    self.fail(gid, GatewayError::UpstreamRestarted(e.to_string())).await;
                    break;
                }
            };
        }
        self.state().exchanges.remove(&gid);
    }

    /// Remembers the `x-mcp-header` arguments of listed tools, and drops tools whose
    /// annotations are invalid (as an HTTP client must).
    fn learn_tools(&self, result: &mut Value) {
        let Some(tools) = result.get_mut("tools").and_then(Value::as_array_mut) else { return };
        let mut learned = Vec::new();
        tools.retain(|t| {
            let name = t.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            match header_params(t.get("inputSchema").unwrap_or(&Value::Null)) {
                Ok(params) => {
                    learned.push((name, params));
                    true
                }
                Err(why) => {
                    warn!(tool = %name, reason = %why, "the remote lists a tool with an invalid x-mcp-header; hidden");
                    false
                }
            }
        });
        let mut st = self.state();
        for (name, params) in learned {
            if params.is_empty() {
                st.header_params.remove(&name);
            } else {
                st.header_params.insert(name, params);
            }
        }
    }

    /// Lists the tools (a few pages) to learn their `x-mcp-header` arguments.
    async fn relist_tools(&self, gid: u64) {
        let mut cursor: Option<String> = None;
        for _ in 0..RELIST_PAGES {
            let params = match &cursor {
                Some(c) => json!({ "cursor": c }),
                None => json!({}),
            };
            let exchange = Exchange { gid, method: m::TOOLS_LIST.into(), params, forwarded: false };
            let Ok(resp) = self.post_request(&exchange, &exchange.params).await else { return };
            let Ok(answer) = self.read_answer(resp, gid).await else { return };
            let Some(mut result) = answer.result().and_then(|r| serde_json::from_str::<Value>(r.get()).ok()) else {
                return;
            };
            self.learn_tools(&mut result);
            cursor = result.get("nextCursor").and_then(Value::as_str).map(str::to_owned);
            if cursor.is_none() {
                return;
            }
        }
    }
}

pub(super) fn error_code_of(m: &Message) -> Option<i64> {
    let e: Value = serde_json::from_str(m.error_object()?.get()).ok()?;
    e.get("code").and_then(Value::as_i64)
}
