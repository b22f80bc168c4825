//! Client sessions: records owned by the gateway, with the upstream connection as a cache.
//!
//! A [`Session`] routes messages between one client and its upstream binding. Requests get
//! gateway-unique ids on the upstream leg; answers find their way back by that id; server→client
//! requests get client-facing ids and their answers go back to the upstream's original id. When
//! the binding is missing or dead, the next use revives it — one revive at a time — by
//! replaying `initialize`, `notifications/initialized` and the session state.
//!
//! It owns no HTTP and no processes: the downstream layer hands it messages and [`Sink`]s, the
//! upstream layer hands it [`UpstreamEvent`]s.

pub mod manager;
pub mod record;
pub mod store;

mod routing;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tether_protocol::message::{numeric_id, raw_value};
use tether_protocol::{Kind, Message};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::error::GatewayError;
use crate::upstream::{ConnectContext, SendError, Upstream, UpstreamOptions, UpstreamSpec};
use record::{SessionRecord, SessionState, Transport, now_ms};
use store::{Activity, SessionStore};

pub use manager::Manager;

/// Tunables of the session layer.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Idle time after which a client session expires.
    pub ttl: Duration,
    /// How long one request may take upstream before it ends with an error.
    pub request_timeout: Duration,
    /// How often idle SSE streams get a keep-alive comment.
    pub keepalive: Duration,
    /// The reconnection delay announced to clients in `retry`.
    pub retry_hint: Duration,
    /// How long a POST waits for its answer before switching to an SSE response.
    pub sse_after: Duration,
    /// Messages kept for a standalone stream that is not open yet.
    pub backlog: usize,
    /// The most live sessions at once.
    pub max_sessions: usize,
    /// Upstream tunables.
    pub upstream: UpstreamOptions,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ttl: Duration::from_secs(24 * 3600),
            request_timeout: Duration::from_secs(300),
            keepalive: Duration::from_secs(15),
            retry_hint: Duration::from_secs(1),
            sse_after: Duration::from_millis(500),
            backlog: 256,
            max_sessions: 10_000,
            upstream: UpstreamOptions::default(),
        }
    }
}

/// What every session shares.
pub struct Deps {
    /// The upstream to connect to.
    pub spec: UpstreamSpec,
    /// Where records live.
    pub store: Arc<dyn SessionStore>,
    /// One HTTP client for every upstream connection (pooling).
    pub http: reqwest::Client,
    /// Tunables.
    pub config: SessionConfig,
}

/// One message for a client stream.
#[derive(Debug)]
pub struct Outbound {
    /// The JSON-RPC message.
    pub data: Bytes,
    /// Whether it answers the request the stream was opened for (the stream may then end).
    pub fin: bool,
    /// The HTTP status to use if this answer goes out as a plain JSON response.
    pub status: Option<u16>,
}

/// Where messages for a client go: a POST response stream, the GET stream, or a legacy SSE
/// stream.
#[derive(Clone, Debug)]
pub struct Sink {
    tx: mpsc::Sender<Outbound>,
    /// The stream number within the session (part of its event ids).
    pub stream: u64,
    /// Whether the stream can carry messages other than the answer (SSE).
    pub sse: bool,
}

impl Sink {
    /// A sink and the receiving end its stream reads.
    pub fn channel(stream: u64, sse: bool) -> (Sink, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(64);
        (Sink { tx, stream, sse }, rx)
    }

    async fn deliver(&self, out: Outbound) -> bool {
        self.tx.send_timeout(out, Duration::from_secs(5)).await.is_ok()
    }
}

enum Reply {
    Client(Sink),
    Internal(oneshot::Sender<Message>),
}

enum StateChange {
    SetLevel(String),
    Subscribe(String),
    Unsubscribe(String),
}

struct Pending {
    client_id: Box<RawValue>,
    method: String,
    reply: Reply,
    generation: u64,
    progress_token: Option<String>,
    state_change: Option<StateChange>,
    init_params: Option<Box<RawValue>>,
    seq: u64,
    started: Instant,
}

struct ServerRequest {
    upstream_id: Box<RawValue>,
    generation: u64,
}

#[derive(Default)]
struct Routes {
    pending: HashMap<u64, Pending>,
    server_requests: HashMap<String, ServerRequest>,
    standalone: Option<Sink>,
    backlog: VecDeque<Bytes>,
}

/// Gateway-unique ids for the upstream leg, shared by all sessions.
static NEXT_GID: AtomicU64 = AtomicU64::new(1);

fn next_gid() -> u64 {
    NEXT_GID.fetch_add(1, Ordering::Relaxed)
}

/// A live client session.
pub struct Session {
    id: String,
    transport: Transport,
    record: Mutex<SessionRecord>,
    binding: tokio::sync::Mutex<Option<Upstream>>,
    current: Mutex<Option<Upstream>>,
    routes: Mutex<Routes>,
    deps: Arc<Deps>,
    generations: AtomicU64,
    streams: AtomicU64,
    events: AtomicU64,
    server_seq: AtomicU64,
    closed: AtomicBool,
    activity: Mutex<Activity>,
    revives: AtomicU64,
}

impl Session {
    /// A live session for a record (new, or loaded from the store).
    pub fn new(record: SessionRecord, deps: Arc<Deps>) -> Arc<Session> {
        Arc::new(Session {
            id: record.id.clone(),
            transport: record.transport,
            record: Mutex::new(record),
            binding: tokio::sync::Mutex::new(None),
            current: Mutex::new(None),
            routes: Mutex::new(Routes::default()),
            deps,
            generations: AtomicU64::new(0),
            streams: AtomicU64::new(1),
            events: AtomicU64::new(0),
            server_seq: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            activity: Mutex::new(Activity::default()),
            revives: AtomicU64::new(0),
        })
    }

    /// tether's id for the session.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client-facing transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// A copy of the record as the session sees it now.
    pub fn record(&self) -> SessionRecord {
        lock(&self.record).clone()
    }

    /// The negotiated protocol version, once initialized.
    pub fn protocol_version(&self) -> Option<String> {
        lock(&self.record).protocol_version.clone()
    }

    /// How many times the upstream side was rebuilt.
    pub fn revive_count(&self) -> u64 {
        self.revives.load(Ordering::Relaxed)
    }

    /// The config the session runs with.
    pub fn config(&self) -> &SessionConfig {
        &self.deps.config
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// A new stream number for a client stream of this session.
    pub fn next_stream(&self) -> u64 {
        self.streams.fetch_add(1, Ordering::Relaxed)
    }

    /// The next SSE event id for a stream: unique across the session's streams, and naming the
    /// stream it belongs to.
    pub fn next_event_id(&self, stream: u64) -> String {
        format!("{stream}-{}", self.events.fetch_add(1, Ordering::Relaxed))
    }

    /// Milliseconds since the Unix epoch of the last client activity.
    pub fn last_active(&self) -> u64 {
        lock(&self.record).last_active
    }

    fn current(&self) -> Option<Upstream> {
        lock(&self.current).clone()
    }

    /// The live upstream binding, connecting or reviving it when missing or dead. `stale`
    /// names a generation the caller saw fail: it is replaced even if it still looks alive.
    async fn upstream(self: &Arc<Self>, stale: Option<u64>) -> Result<Upstream, GatewayError> {
        if stale.is_none()
            && let Some(u) = self.current()
            && u.is_alive()
        {
            return Ok(u);
        }
        let mut slot = self.binding.lock().await;
        if let Some(u) = slot.as_ref()
            && u.is_alive()
            && Some(u.generation()) != stale
        {
            return Ok(u.clone());
        }
        if self.is_closed() {
            return Err(GatewayError::SessionNotFound);
        }
        let cause = match slot.take() {
            Some(old) => {
                old.close().await;
                "upstream_lost"
            }
            None if self.generations.load(Ordering::Relaxed) > 0 => "upstream_reaped",
            None => "first_use",
        };
        let started = Instant::now();
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(256);
        let ctx = ConnectContext {
            session_id: self.id.clone(),
            events: tx,
            options: self.deps.config.upstream.clone(),
            http: self.deps.http.clone(),
        };
        let up = Upstream::connect(&self.deps.spec, generation, ctx)
            .await
            .map_err(|e| GatewayError::UpstreamUnavailable(e.to_string()))?;
        tokio::spawn(self.clone().route_events(generation, rx));
        let replay = lock(&self.record).upstream_init.is_some();
        if replay {
            if let Err(e) = self.replay(&up).await {
                warn!(session_id = %self.id, upstream = self.deps.spec.kind(), cause, error = %e, "revive failed");
                up.close().await;
                return Err(e);
            }
            self.revives.fetch_add(1, Ordering::Relaxed);
            info!(
                session_id = %self.id,
                upstream = self.deps.spec.kind(),
                cause,
                generation,
                duration_ms = started.elapsed().as_millis() as u64,
                "session revived"
            );
        }
        *slot = Some(up.clone());
        *lock(&self.current) = Some(up.clone());
        Ok(up)
    }

    /// Rebuilds the upstream side of an initialized session on a fresh connection.
    async fn replay(self: &Arc<Self>, up: &Upstream) -> Result<(), GatewayError> {
        let (params, was, state) = {
            let r = lock(&self.record);
            (r.client_init.clone(), r.protocol_version.clone(), r.state.clone())
        };
        let Some(params) = params else { return Ok(()) };
        let answer = self.internal_request(up, "initialize", Some(&params)).await?;
        let result = answer
            .result()
            .ok_or_else(|| GatewayError::UpstreamUnavailable("the upstream refused initialize on revive".into()))?;
        let now = protocol_version_of(result);
        if let (Some(was), Some(now)) = (&was, &now)
            && was != now
        {
            return Err(GatewayError::VersionChanged { was: was.clone(), now: now.clone() });
        }
        if let Some(v) = now.as_deref().or(was.as_deref()) {
            up.set_protocol_version(v);
        }
        {
            let mut r = lock(&self.record);
            r.upstream_init = Some(result.to_owned());
        }
        up.send(&Message::notification("notifications/initialized", None), None)
            .await
            .map_err(|e| GatewayError::UpstreamUnavailable(e.to_string()))?;
        if let Some(level) = &state.log_level {
            let p = raw_value(&serde_json::json!({ "level": level }));
            self.internal_request(up, "logging/setLevel", Some(&p)).await?;
        }
        for uri in &state.subscriptions {
            let p = raw_value(&serde_json::json!({ "uri": uri }));
            self.internal_request(up, "resources/subscribe", Some(&p)).await?;
        }
        if lock(&self.routes).standalone.is_some() {
            up.open_standalone();
        }
        Ok(())
    }

    /// Sends a request of tether's own and waits for its answer.
    async fn internal_request(
        &self,
        up: &Upstream,
        method: &str,
        params: Option<&RawValue>,
    ) -> Result<Message, GatewayError> {
        let gid = next_gid();
        let (tx, rx) = oneshot::channel();
        self.insert_pending(
            gid,
            Pending {
                client_id: numeric_id(gid),
                method: method.to_owned(),
                reply: Reply::Internal(tx),
                generation: up.generation(),
                progress_token: None,
                state_change: None,
                init_params: None,
                seq: gid,
                started: Instant::now(),
            },
        );
        if let Err(e) = up.send(&Message::request(gid, method, params), Some(gid)).await {
            lock(&self.routes).pending.remove(&gid);
            return Err(GatewayError::UpstreamUnavailable(e.to_string()));
        }
        let timeout = self.deps.config.request_timeout.min(Duration::from_secs(60));
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(_)) => Err(GatewayError::UpstreamUnavailable(format!("the upstream went away during {method}"))),
            Err(_) => {
                lock(&self.routes).pending.remove(&gid);
                Err(GatewayError::UpstreamUnavailable(format!("the upstream did not answer {method}")))
            }
        }
    }

    fn insert_pending(&self, gid: u64, p: Pending) {
        lock(&self.routes).pending.insert(gid, p);
    }

    /// Forwards a client request. Its answer, and messages related to it, go to `sink`.
    /// Returns the gateway id, which the caller uses to time the request out.
    pub async fn request(self: &Arc<Self>, msg: Message, sink: Sink) -> Result<u64, GatewayError> {
        let method = msg.method().unwrap_or_default().to_owned();
        let client_id = msg.id().map(ToOwned::to_owned).unwrap_or_else(|| numeric_id(0));
        let gid = next_gid();
        self.note_activity(method == "tools/call");
        let progress_token = msg.params().and_then(progress_token_of_request);
        let state_change = msg.params().and_then(|p| state_change_of(&method, p));
        let init_params = if method == "initialize" { msg.params().map(ToOwned::to_owned) } else { None };
        let mut upstream_msg = msg;
        upstream_msg.set_id(numeric_id(gid));
        let mut stale = None;
        let mut last_error = String::new();
        let mut pending = Some(Pending {
            client_id,
            method,
            reply: Reply::Client(sink),
            generation: 0,
            progress_token,
            state_change,
            init_params,
            seq: gid,
            started: Instant::now(),
        });
        // A message the upstream provably never received is sent again on a revived binding.
        for _ in 0..2 {
            let up = self.upstream(stale).await?;
            let Some(mut p) = pending.take() else { break };
            p.generation = up.generation();
            self.insert_pending(gid, p);
            match up.send(&upstream_msg, Some(gid)).await {
                Ok(()) => return Ok(gid),
                Err(e @ (SendError::Unreachable(_) | SendError::SessionLost)) => {
                    pending = lock(&self.routes).pending.remove(&gid);
                    if pending.is_none() {
                        // The upstream died and its death already answered the request.
                        return Ok(gid);
                    }
                    last_error = e.to_string();
                    stale = Some(up.generation());
                }
                Err(SendError::Refused { status, detail }) => {
                    lock(&self.routes).pending.remove(&gid);
                    return Err(GatewayError::UpstreamRefused { status, detail });
                }
            }
        }
        Err(GatewayError::UpstreamUnavailable(last_error))
    }

    /// Forwards a client notification.
    pub async fn notify(self: &Arc<Self>, msg: Message) -> Result<(), GatewayError> {
        self.note_activity(false);
        let mut msg = msg;
        if msg.is("notifications/cancelled") {
            let Some(gid) = self.cancel_by_client_id(&msg) else {
                return Ok(());
            };
            rewrite_param(&mut msg, "requestId", &numeric_id(gid));
            if let Some(up) = self.current().filter(Upstream::is_alive) {
                let _ = up.send(&msg, None).await;
            }
            return Ok(());
        }
        let up = self.upstream(None).await?;
        match up.send(&msg, None).await {
            Ok(()) => Ok(()),
            Err(SendError::Refused { status, detail }) => Err(GatewayError::UpstreamRefused { status, detail }),
            Err(e) => {
                // Lost with the connection; the revive replays what matters (initialized).
                tracing::debug!(session_id = %self.id, error = %e, "notification not delivered");
                Ok(())
            }
        }
    }

    /// Forwards the client's answer to a server→client request, to the upstream's original id.
    pub async fn answer(self: &Arc<Self>, msg: Message) -> Result<(), GatewayError> {
        self.note_activity(false);
        let key = msg.id().map(|i| i.get().to_owned()).unwrap_or_default();
        let Some(sr) = lock(&self.routes).server_requests.remove(&key) else {
            tracing::debug!(session_id = %self.id, id = %key, "answer to an unknown server request; dropped");
            return Ok(());
        };
        let Some(up) = self.current().filter(|u| u.generation() == sr.generation && u.is_alive()) else {
            tracing::debug!(session_id = %self.id, "answer for an upstream that has since restarted; dropped");
            return Ok(());
        };
        let mut msg = msg;
        msg.set_id(sr.upstream_id);
        if let Err(e) = up.send(&msg, None).await {
            tracing::debug!(session_id = %self.id, error = %e, "answer not delivered");
        }
        Ok(())
    }

    /// Ends a request that ran out of time: the upstream is told to cancel it, and the client
    /// gets the returned error (or nothing, if the answer won the race).
    pub async fn time_out(&self, gid: u64) -> Option<Message> {
        let p = lock(&self.routes).pending.remove(&gid)?;
        if let Some(up) = self.current().filter(Upstream::is_alive) {
            let params = raw_value(&serde_json::json!({ "requestId": gid, "reason": "timed out" }));
            let _ = up.send(&Message::notification("notifications/cancelled", Some(&params)), None).await;
        }
        let secs = self.deps.config.request_timeout.as_secs();
        warn!(session_id = %self.id, method = %p.method, timeout_s = secs, "request timed out");
        Some(GatewayError::UpstreamTimeout(secs).to_message(Some(&p.client_id)))
    }

    /// Opens the client's standalone stream (replacing an older one) and returns what was
    /// queued for it.
    pub fn attach_standalone(&self, sink: Sink) -> Vec<Bytes> {
        let backlog: Vec<Bytes> = {
            let mut r = lock(&self.routes);
            r.standalone = Some(sink);
            r.backlog.drain(..).collect()
        };
        if let Some(up) = self.current().filter(Upstream::is_alive) {
            up.open_standalone();
        }
        backlog
    }

    /// Forgets the standalone stream `stream`, if it is still the current one.
    pub fn detach_standalone(&self, stream: u64) {
        let mut r = lock(&self.routes);
        if r.standalone.as_ref().is_some_and(|s| s.stream == stream) {
            r.standalone = None;
        }
    }

    /// The standalone stream's sink (a legacy session's only stream).
    pub fn standalone_sink(&self) -> Option<Sink> {
        lock(&self.routes).standalone.clone()
    }

    /// Writes one message to a sink.
    pub async fn send_to(&self, sink: &Sink, data: Bytes) -> bool {
        sink.deliver(Outbound { data, fin: true, status: None }).await
    }

    /// Ends client requests older than the request timeout and returns their errors (for
    /// streams that have no per-request timer: legacy SSE).
    pub fn expire_overdue(&self) -> Vec<Bytes> {
        let timeout = self.deps.config.request_timeout;
        let overdue: Vec<Pending> = {
            let mut r = lock(&self.routes);
            let gids: Vec<u64> = r
                .pending
                .iter()
                .filter(|(_, p)| matches!(p.reply, Reply::Client(_)) && p.started.elapsed() >= timeout)
                .map(|(g, _)| *g)
                .collect();
            gids.iter().filter_map(|g| r.pending.remove(g)).collect()
        };
        if overdue.is_empty() {
            return Vec::new();
        }
        let up = self.current().filter(Upstream::is_alive);
        overdue
            .iter()
            .map(|p| {
                if let Some(up) = up.clone() {
                    let params = raw_value(&serde_json::json!({ "requestId": p.seq, "reason": "timed out" }));
                    tokio::spawn(async move {
                        let _ = up.send(&Message::notification("notifications/cancelled", Some(&params)), None).await;
                    });
                }
                warn!(session_id = %self.id, method = %p.method, "request timed out");
                let err = GatewayError::UpstreamTimeout(timeout.as_secs()).to_message(Some(&p.client_id));
                Bytes::from(err.to_bytes())
            })
            .collect()
    }

    /// Whether a standalone stream is open.
    pub fn has_standalone(&self) -> bool {
        lock(&self.routes).standalone.is_some()
    }

    /// Ends the session's live side: pending requests get an error, streams end, the upstream
    /// closes. The record is closed by the manager.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let pending: Vec<Pending> = {
            let mut r = lock(&self.routes);
            r.standalone = None;
            r.server_requests.clear();
            r.pending.drain().map(|(_, p)| p).collect()
        };
        for p in pending {
            if let Reply::Client(sink) = p.reply {
                let err = GatewayError::SessionNotFound.to_message(Some(&p.client_id));
                sink.deliver(Outbound { data: err.to_bytes().into(), fin: true, status: Some(404) }).await;
            }
        }
        let up = self.binding.lock().await.take();
        lock(&self.current).take();
        if let Some(up) = up {
            up.close().await;
        }
    }

    /// Closes the upstream binding but keeps the session (idle reap, gateway shutdown).
    pub async fn release_upstream(&self) {
        let up = self.binding.lock().await.take();
        lock(&self.current).take();
        if let Some(up) = up {
            up.close().await;
        }
    }

    /// Whether an upstream binding is live.
    pub fn upstream_alive(&self) -> bool {
        self.current().is_some_and(|u| u.is_alive())
    }

    /// The stdio child's pid, if the binding is a live child.
    pub fn upstream_pid(&self) -> Option<u32> {
        self.current().filter(Upstream::is_alive).and_then(|u| u.pid())
    }

    fn note_activity(&self, tool_call: bool) {
        let now = now_ms();
        {
            let mut r = lock(&self.record);
            r.last_active = now;
            r.requests += 1;
            r.tool_calls += u64::from(tool_call);
        }
        let mut a = lock(&self.activity);
        a.last_active = now;
        a.requests += 1;
        a.tool_calls += u64::from(tool_call);
    }

    /// Takes the activity not yet written to the store.
    pub fn take_activity(&self) -> Option<Activity> {
        let mut a = lock(&self.activity);
        if a.requests == 0 && a.last_active == 0 {
            return None;
        }
        Some(std::mem::take(&mut *a))
    }

    fn cancel_by_client_id(&self, msg: &Message) -> Option<u64> {
        #[derive(Deserialize)]
        struct P<'a> {
            #[serde(rename = "requestId", borrow)]
            request_id: &'a RawValue,
        }
        let params = msg.params()?;
        let p: P<'_> = serde_json::from_str(params.get()).ok()?;
        let mut r = lock(&self.routes);
        let gid = r
            .pending
            .iter()
            .find(|(_, p2)| matches!(p2.reply, Reply::Client(_)) && p2.client_id.get() == p.request_id.get())
            .map(|(g, _)| *g)?;
        // Dropping the pending entry ends the client's stream for it: a cancelled request
        // gets no answer.
        r.pending.remove(&gid);
        Some(gid)
    }

    async fn store_state(&self, state: SessionState) {
        if let Err(e) = self.deps.store.set_state(&self.id, &state).await {
            warn!(session_id = %self.id, error = %e, "storing session state failed");
        }
    }

    async fn store_handshake(&self) {
        let rec = self.record();
        if let Err(e) = self.deps.store.set_handshake(&rec).await {
            warn!(session_id = %self.id, error = %e, "storing the handshake failed");
        }
    }
}

/// Locks a std mutex, recovering from poisoning: every critical section here leaves the data
/// consistent, so a panic elsewhere must not take the session down with it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn protocol_version_of(result: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct R {
        #[serde(rename = "protocolVersion")]
        protocol_version: Option<String>,
    }
    serde_json::from_str::<R>(result.get()).ok()?.protocol_version
}

fn progress_token_of_request(params: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct P<'a> {
        #[serde(rename = "_meta", borrow)]
        meta: Option<M<'a>>,
    }
    #[derive(Deserialize)]
    struct M<'a> {
        #[serde(rename = "progressToken", borrow)]
        token: Option<&'a RawValue>,
    }
    if !params.get().contains("progressToken") {
        return None;
    }
    let p: P<'_> = serde_json::from_str(params.get()).ok()?;
    Some(p.meta?.token?.get().to_owned())
}

fn state_change_of(method: &str, params: &RawValue) -> Option<StateChange> {
    #[derive(Deserialize)]
    struct P {
        level: Option<String>,
        uri: Option<String>,
    }
    let make: fn(String) -> StateChange = match method {
        "logging/setLevel" => StateChange::SetLevel,
        "resources/subscribe" => StateChange::Subscribe,
        "resources/unsubscribe" => StateChange::Unsubscribe,
        _ => return None,
    };
    let p: P = serde_json::from_str(params.get()).ok()?;
    p.level.or(p.uri).map(make)
}

fn rewrite_param(msg: &mut Message, key: &str, value: &RawValue) {
    let Some(params) = msg.params() else { return };
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(params.get()) else {
        return;
    };
    if let Some(obj) = v.as_object_mut()
        && let Ok(val) = serde_json::from_str(value.get())
    {
        obj.insert(key.to_owned(), val);
        msg.set_params(raw_value(&v));
    }
}

fn is_answer(m: &Message) -> bool {
    matches!(m.kind(), Kind::Response | Kind::Error)
}
