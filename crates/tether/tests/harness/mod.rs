//! Test harness: a gateway on 127.0.0.1:0 in front of an upstream, and clients that speak the
//! MCP wire by hand (Streamable HTTP and legacy SSE) so tests can see every status and event.
//! Every await goes through [`within`]: a bug fails the test, it does not hang it.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tether::Gateway;
use tether::admin::AdminToken;
use tether::config::{AdminConfig, Config, LogFormat, StoreSpec};
use tether::downstream::FrontConfig;
use tether::session::SessionConfig;
use tether::upstream::UpstreamSpec;
use tether_protocol::sse::Decoder;

/// The default bound on any single await in tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("timed out: the operation hung")
}

/// The `tether-echo` server that ships with the workspace.
pub fn echo_command() -> Vec<String> {
    vec![env!("CARGO_BIN_EXE_tether-echo").to_owned()]
}

/// A config for tests: loopback, short timeouts.
pub fn config(upstream: UpstreamSpec) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        store: StoreSpec::Memory,
        upstream,
        front: FrontConfig::default(),
        session: SessionConfig { request_timeout: Duration::from_secs(10), ..SessionConfig::default() },
        log_level: "warn".into(),
        log_format: LogFormat::Plain,
        admin: AdminConfig::loopback(AdminToken::new(ADMIN_TOKEN).expect("a valid token")),
        auth: Default::default(),
        standby: false,
        cluster: None,
        lease_ttl: Duration::from_secs(15),
    }
}

/// The admin token of gateways from [`config`].
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Stops `old` and starts a gateway with `config` on the same address (a gateway restart as a
/// client sees it: same URL, same session ids).
pub async fn restart(old: Gateway, config: Config) -> Gateway {
    let addr = old.addr;
    old.shutdown().await;
    let listener = within(async {
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => return l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    within(Gateway::start(config, listener)).await.expect("restart")
}

/// A gateway serving `config` on an ephemeral loopback port. `TETHER_TEST_LOG` (a filter)
/// shows the gateway's logs.
pub async fn start(config: Config) -> Gateway {
    if let Ok(filter) = std::env::var("TETHER_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
    let listener = within(tokio::net::TcpListener::bind("127.0.0.1:0")).await.expect("bind");
    within(Gateway::start(config, listener)).await.expect("gateway starts")
}

/// A gateway in front of `tether-echo` over stdio.
pub async fn echo_gateway() -> Gateway {
    start(config(UpstreamSpec::Stdio { command: echo_command() })).await
}

/// The client-facing transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    Streamable,
    LegacySse,
}

/// The `initialize` params a test client sends.
pub fn init_params() -> Value {
    json!({
        "protocolVersion": "2025-11-25",
        "capabilities": {"sampling": {}, "x-vendor-extension": {"kept": true}},
        "clientInfo": {"name": "tether-tests", "version": "1"}
    })
}

/// What a request brought back: its answer and what came before it on its stream.
#[derive(Debug)]
pub struct Exchange {
    pub status: StatusCode,
    pub answer: Value,
    pub related: Vec<Value>,
}

/// An MCP client over Streamable HTTP or legacy SSE.
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub front: Front,
    pub session: Option<String>,
    next_id: u64,
    legacy: Option<LegacyStream>,
}

struct LegacyStream {
    post_url: String,
    events: SseStream,
    /// Messages read while waiting for something else.
    seen: Vec<Value>,
}

impl Client {
    /// A client of `gw` over `front`; not yet initialized.
    pub fn new(gw: &Gateway, front: Front) -> Client {
        Client::for_base(format!("http://{}", gw.addr), front)
    }

    /// A client of the gateway at `base` (`http://host:port`).
    pub fn for_base(base: String, front: Front) -> Client {
        Client { http: reqwest::Client::new(), base, front, session: None, next_id: 1, legacy: None }
    }

    /// Another client on the same Streamable HTTP session (for concurrent requests).
    pub fn same_session(&self) -> Client {
        Client {
            http: self.http.clone(),
            base: self.base.clone(),
            front: self.front,
            session: self.session.clone(),
            next_id: self.next_id + 1_000_000,
            legacy: None,
        }
    }

    /// The handshake: `initialize` then `notifications/initialized`.
    pub async fn connect(&mut self) -> Value {
        if self.front == Front::LegacySse {
            let resp = within(self.http.get(format!("{}/sse", self.base)).header("accept", "text/event-stream").send())
                .await
                .expect("GET /sse");
            assert_eq!(resp.status(), StatusCode::OK);
            let mut events = SseStream::new(resp);
            let endpoint = events.next_event().await.expect("endpoint event");
            assert_eq!(endpoint.event.as_deref(), Some("endpoint"));
            let post_url = format!("{}{}", self.base, endpoint.data);
            self.session = post_url.split("session_id=").nth(1).map(str::to_owned);
            self.legacy = Some(LegacyStream { post_url, events, seen: Vec::new() });
        }
        let init = self.request("initialize", init_params()).await;
        let ok = if self.front == Front::LegacySse { StatusCode::ACCEPTED } else { StatusCode::OK };
        assert_eq!(init.status, ok, "initialize: {:?}", init.answer);
        let result = init.answer["result"].clone();
        assert!(result.is_object(), "initialize failed: {}", init.answer);
        let st = self.notify("notifications/initialized", None).await;
        assert_eq!(st, StatusCode::ACCEPTED);
        result
    }

    /// POSTs a body with the session headers; returns the raw response.
    pub async fn post(&self, body: &Value) -> reqwest::Response {
        let url = match &self.legacy {
            Some(l) => l.post_url.clone(),
            None => format!("{}/mcp", self.base),
        };
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_string());
        if self.front == Front::Streamable
            && let Some(s) = &self.session
        {
            req = req.header("mcp-session-id", s).header("mcp-protocol-version", "2025-11-25");
        }
        within(req.send()).await.expect("POST")
    }

    /// Sends a request and waits for its answer, collecting what came before it.
    pub async fn request(&mut self, method: &str, params: Value) -> Exchange {
        let id = self.next_id;
        self.next_id += 1;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let resp = self.post(&body).await;
        let status = resp.status();
        if self.front == Front::LegacySse && status == StatusCode::ACCEPTED {
            let legacy = self.legacy.as_mut().expect("legacy stream");
            let mut related = std::mem::take(&mut legacy.seen);
            loop {
                let m = legacy.events.next_message().await.expect("the SSE stream ended");
                if m.get("id") == Some(&json!(id)) && m.get("method").is_none() {
                    return Exchange { status, answer: m, related };
                }
                related.push(m);
            }
        }
        if self.front == Front::Streamable
            && let Some(sid) = resp.headers().get("mcp-session-id")
        {
            self.session = Some(sid.to_str().expect("ascii").to_owned());
        }
        let is_sse = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
        if !is_sse {
            let text = within(resp.text()).await.expect("body");
            let answer = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return Exchange { status, answer, related: Vec::new() };
        }
        let mut events = SseStream::new(resp);
        let mut related = Vec::new();
        loop {
            let m = events.next_message().await.expect("the response stream ended before its answer");
            if m.get("id") == Some(&json!(id)) && m.get("method").is_none() {
                return Exchange { status, answer: m, related };
            }
            related.push(m);
        }
    }

    /// Sends a notification (or a response to a server request); returns the HTTP status.
    pub async fn notify(&self, method: &str, params: Option<Value>) -> StatusCode {
        let mut body = json!({"jsonrpc": "2.0", "method": method});
        if let Some(p) = params {
            body["params"] = p;
        }
        self.post(&body).await.status()
    }

    /// Reads the next message from the legacy stream (or the given standalone stream).
    pub async fn next_legacy_message(&mut self) -> Option<Value> {
        self.legacy.as_mut()?.events.next_message().await
    }

    /// Opens the standalone GET stream (Streamable HTTP).
    pub async fn open_stream(&self) -> SseStream {
        self.resume_stream(None).await
    }

    /// Opens a GET stream, resuming after `last_event_id` when given.
    pub async fn resume_stream(&self, last_event_id: Option<&str>) -> SseStream {
        let mut req = self
            .http
            .get(format!("{}/mcp", self.base))
            .header("accept", "text/event-stream")
            .header("mcp-session-id", self.session.as_deref().expect("session"));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = within(req.send()).await.expect("GET /mcp");
        assert_eq!(resp.status(), StatusCode::OK);
        SseStream::new(resp)
    }

    /// Ends the session (DELETE, or dropping the legacy stream).
    pub async fn close(&mut self) -> StatusCode {
        if self.front == Front::LegacySse {
            self.legacy = None;
            return StatusCode::OK;
        }
        let resp = within(
            self.http
                .delete(format!("{}/mcp", self.base))
                .header("mcp-session-id", self.session.as_deref().expect("session"))
                .send(),
        )
        .await
        .expect("DELETE");
        resp.status()
    }
}

/// An SSE response being read.
pub struct SseStream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send + Sync>>,
    decoder: Decoder,
    queue: std::collections::VecDeque<tether_protocol::sse::Event>,
    /// Every event id seen, in order.
    pub ids: Vec<String>,
    /// The last `retry` hint seen.
    pub retry: Option<u64>,
}

impl SseStream {
    /// Wraps a response whose body is an SSE stream.
    pub fn new(resp: reqwest::Response) -> SseStream {
        SseStream {
            body: Box::pin(resp.bytes_stream()),
            decoder: Decoder::new(16 << 20),
            queue: Default::default(),
            ids: Vec::new(),
            retry: None,
        }
    }

    /// The next event, or `None` when the stream ends. Bounded by [`WAIT`] as a whole, so
    /// keep-alive comments cannot stretch a missing event into a hang.
    pub async fn next_event(&mut self) -> Option<tether_protocol::sse::Event> {
        within(self.next_event_unbounded()).await
    }

    async fn next_event_unbounded(&mut self) -> Option<tether_protocol::sse::Event> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                if let Some(id) = &e.id {
                    self.ids.push(id.clone());
                }
                if e.retry.is_some() {
                    self.retry = e.retry;
                }
                return Some(e);
            }
            let chunk = self.body.next().await?;
            let chunk = chunk.ok()?;
            if std::env::var_os("TETHER_TEST_TRACE_SSE").is_some() {
                eprintln!(
                    "chunk {} bytes: {:?}",
                    chunk.len(),
                    String::from_utf8_lossy(&chunk).chars().take(80).collect::<String>()
                );
            }
            self.queue.extend(self.decoder.feed(&chunk).expect("SSE decodes"));
        }
    }

    /// The next event that carries a JSON-RPC message.
    pub async fn next_message(&mut self) -> Option<Value> {
        loop {
            let e = self.next_event().await?;
            if e.data.is_empty() || e.event.as_deref() == Some("endpoint") {
                continue;
            }
            return Some(serde_json::from_str(&e.data).expect("event data is JSON"));
        }
    }
}

/// A raw POST to `/mcp` with the given headers and body.
pub async fn raw_post(gw: &Gateway, headers: &[(&str, &str)], body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().post(format!("http://{}/mcp", gw.addr)).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = within(req.send()).await.expect("POST");
    let status = resp.status();
    let text = within(resp.text()).await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The standard headers of a well-formed POST.
pub const JSON_POST: [(&str, &str); 2] =
    [("content-type", "application/json"), ("accept", "application/json, text/event-stream")];

/// Sends exactly `request` (an HTTP/1.1 request without a body framing surprise) over a raw
/// socket and returns the status code: for headers an HTTP client would add on its own.
pub async fn raw_http(gw: &Gateway, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = within(tokio::net::TcpStream::connect(gw.addr)).await.expect("connect");
    within(sock.write_all(request.as_bytes())).await.expect("write");
    let mut buf = vec![0u8; 1024];
    let n = within(sock.read(&mut buf)).await.expect("read");
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line")
}

/// Kills a process with SIGKILL.
pub fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
}

/// Waits until `cond` holds, polling; fails the test after [`WAIT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let ok = tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "timed out waiting for: {what}");
}

/// Waits until an async condition holds (a question to a session); fails after the harness's wait.
pub async fn eventually_async<F: std::future::Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let ok = tokio::time::timeout(WAIT, async {
        while !cond().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "timed out waiting for: {what}");
}

/// The pid of the stdio child of the gateway's only session.
pub fn only_child(gw: &Gateway) -> u32 {
    let live = gw.manager.live();
    assert_eq!(live.len(), 1, "one session");
    live[0].upstream_pid().expect("a live stdio child")
}
