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

pub mod backoff;
pub mod inspect;
pub mod manager;
pub mod record;
pub mod store;

mod actor;
mod breaker;
mod client;
mod handle;
pub mod recovery;
pub mod replay;
mod revive;
mod routing;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
pub use tether_protocol::event_id::{StreamKey, event_id, parse_event_id};
use tether_protocol::message::raw_value;
use tether_protocol::{Kind, Message, event_id, method, params};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, warn};

use crate::error::GatewayError;
use crate::stats::{RequestProbe, Stats};
use crate::upstream::{Upstream, UpstreamEvent, UpstreamOptions, UpstreamSpec};
use record::{SessionRecord, SessionState, Transport, now_ms};
use store::{Activity, Retention, Store};

pub use breaker::RestartPolicy;
pub use handle::{SessionHandle, Snapshot};
pub use manager::Manager;

use breaker::Breaker;

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
    /// How long an upstream binding may sit unused before it is released (the session stays).
    pub upstream_idle: Duration,
    /// How long a session without binding, streams or requests stays in memory before it
    /// hibernates: its task ends and its record waits in the store for the next request.
    pub hibernate_after: Duration,
    /// Restart backoff and crash-loop breaker.
    pub restart: RestartPolicy,
    /// Tools whose calls may be retried after an upstream restart, besides annotated ones.
    pub retry_tools: Vec<String>,
    /// How long stored SSE events are kept.
    pub retention: Retention,
    /// How many times a request waits for an away upstream to come back (`None`: until the
    /// request's deadline).
    pub reconnect_attempts: Option<u32>,
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
            upstream_idle: Duration::from_secs(600),
            hibernate_after: Duration::from_secs(600),
            restart: RestartPolicy::default(),
            retry_tools: Vec::new(),
            retention: Retention::default(),
            reconnect_attempts: None,
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
    /// Where records and events live.
    pub store: Arc<dyn Store>,
    /// One HTTP client for every upstream connection (pooling).
    pub http: reqwest::Client,
    /// Tunables.
    pub config: SessionConfig,
    /// Counters.
    pub stats: Arc<Stats>,
}

/// One message for a client stream.
#[derive(Debug)]
pub struct Outbound {
    /// Its SSE event id, when the stream is resumable (the event is then already stored).
    pub id: Option<String>,
    /// Its position in the session's event sequence.
    pub seq: u64,
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
    /// What kind of stream it is.
    pub kind: StreamKind,
    /// Records the outcome of the one request whose answer this sink carries (metrics).
    probe: Option<Arc<RequestProbe>>,
    /// The client's id of the request a request stream answers, hex-encoded JSON: part of the
    /// stream key, so a resume after a restart can still answer that request.
    request: Option<Arc<str>>,
}

/// The kinds of client stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// A POST answered with plain JSON: the answer only.
    Json,
    /// A POST answered with SSE: the answer and related messages; resumable.
    Request,
    /// The Streamable HTTP GET stream; resumable.
    Standalone,
    /// A legacy HTTP+SSE stream: everything, no ids.
    Legacy,
}

impl Sink {
    /// A sink and the receiving end its stream reads. Stream number 0: the session numbers it
    /// when a request opens it ([`SessionHandle::open_request`]).
    pub fn channel(stream: u64, kind: StreamKind) -> (Sink, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(64);
        (Sink { tx, stream, kind, probe: None, request: None }, rx)
    }

    /// This sink, answering the request with the client's id `id` (request streams).
    pub fn for_request(mut self, id: Option<&RawValue>) -> Sink {
        self.request = id.map(|i| Arc::from(event_id::request_hex(i)));
        self
    }

    /// This sink, answering the request named by an earlier stream key.
    pub fn for_request_key(mut self, key: &StreamKey) -> Sink {
        self.request = key.request_hex.clone();
        self
    }

    /// This sink, for one request: its answer (the message marked `fin`) settles `probe`.
    pub fn probed(mut self, probe: Arc<RequestProbe>) -> Sink {
        self.probe = Some(probe);
        self
    }

    /// This sink, taking over the probe of the sink it replaces (a resumed request stream).
    pub fn inherit_probe(mut self, from: &Sink) -> Sink {
        self.probe = from.probe.clone();
        self
    }

    /// Whether the stream can carry messages other than the answer.
    pub fn sse(&self) -> bool {
        self.kind != StreamKind::Json
    }

    /// Whether its events get ids and are stored for `Last-Event-ID` resumption.
    pub fn resumable(&self) -> bool {
        matches!(self.kind, StreamKind::Request | StreamKind::Standalone)
    }

    /// The key its events are stored under.
    pub fn key(&self) -> String {
        let request = if self.kind == StreamKind::Request { self.request.as_deref() } else { None };
        event_id::stream_key(instance(), self.stream, self.kind == StreamKind::Standalone, request)
    }

    async fn deliver(&self, out: Outbound) -> bool {
        if out.fin
            && let Some(p) = &self.probe
        {
            p.answered(&out.data);
        }
        self.tx.send_timeout(out, Duration::from_secs(5)).await.is_ok()
    }
}

/// Who waits for the answer of a request on the upstream leg.
enum Reply {
    /// A client request: the answer goes to its stream.
    Client(Sink),
    /// One of tether's own requests: the answer continues what the session was doing.
    Internal(Internal),
}

/// What the session does with the answer to one of its own requests (the actor never waits).
enum Internal {
    /// A `tools/list` after a revive: decides whether the held `tools/call` is retried.
    LearnTools { gid: u64, call: Box<Pending> },
    /// A list compared with what the client saw before a revive: `list_changed` if it differs.
    ListCheck { kind: &'static str, seen: u64 },
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
    /// The request as sent upstream, kept to send it again after a revive.
    upstream_msg: Option<Arc<Message>>,
    /// Whether repeating it is harmless.
    retry_safe: bool,
    /// How many times it was sent again after it may have reached the upstream.
    attempts: u8,
    /// How many times it was sent again because it provably never reached the upstream.
    undelivered: u32,
    /// How many times it waited for an away upstream to come back.
    waits: u32,
    /// A task is sending it (an HTTP upstream): the send's outcome decides its fate.
    sending: bool,
    /// Its binding ended while a task was sending it, saying the upstream never got it.
    ended_unread: bool,
    /// The caller waiting to hear that the request went upstream (or why it cannot).
    accepted: Option<Acceptance>,
}

/// What the caller of a request hears once it went upstream.
#[derive(Debug)]
pub struct Accepted {
    /// The gateway id (the caller times the request out with it).
    pub gid: u64,
    /// The stream number of the request's sink.
    pub stream: u64,
    /// The priming event id of the request's stream, when one was asked for.
    pub priming: Option<String>,
}

/// The caller of a request, waiting for [`Accepted`] or the reason it cannot go upstream.
struct Acceptance {
    tx: oneshot::Sender<Result<Accepted, GatewayError>>,
    stream: u64,
    priming: Option<String>,
}

impl Acceptance {
    fn ok(self, gid: u64) {
        let _ = self.tx.send(Ok(Accepted { gid, stream: self.stream, priming: self.priming }));
    }

    fn err(self, e: GatewayError) {
        let _ = self.tx.send(Err(e));
    }
}

struct ServerRequest {
    upstream_id: Box<RawValue>,
    generation: u64,
}

#[derive(Default)]
struct Routes {
    pending: PendingMap,
    server_requests: HashMap<String, ServerRequest>,
    standalone: Option<Sink>,
    backlog: VecDeque<Bytes>,
    /// Keys of the answered request streams whose events are retained, oldest first.
    finished: VecDeque<String>,
}

/// The requests in flight upstream. A map that becomes empty gives its table back: most
/// sessions are idle most of the time, and an emptied `HashMap` would otherwise keep room for
/// its peak (several hundred bytes a session for nothing).
#[derive(Default)]
struct PendingMap(HashMap<u64, Pending>);

impl PendingMap {
    fn remove(&mut self, gid: &u64) -> Option<Pending> {
        let p = self.0.remove(gid);
        if self.0.is_empty() && self.0.capacity() > 0 {
            self.0 = HashMap::new();
        }
        p
    }

    fn take_all(&mut self) -> Vec<(u64, Pending)> {
        std::mem::take(&mut self.0).into_iter().collect()
    }
}

impl std::ops::Deref for PendingMap {
    type Target = HashMap<u64, Pending>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for PendingMap {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// This process's tag in stream keys: streams opened after a restart never reuse a key.
pub fn instance() -> &'static str {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| format!("{:08x}", rand::random::<u32>()))
}

/// The key under which a stream's events are stored: `<instance>.<n>` for a request stream,
/// `<instance>.g<n>` for a standalone one.
pub fn stream_key(stream: u64, standalone: bool) -> String {
    event_id::stream_key(instance(), stream, standalone, None)
}

/// Reads a stream key of this process or another one.
pub fn parse_stream_key(key: &str) -> StreamKey {
    event_id::parse_stream_key(key, instance())
}

/// Spawns one of a session's tasks, in the session's span.
fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) {
    tokio::spawn(task.in_current_span());
}

/// Client stream numbers, unique in the process (part of stream keys and event ids).
static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

fn next_stream_number() -> u64 {
    NEXT_STREAM.fetch_add(1, Ordering::Relaxed)
}

/// Gateway-unique ids for the upstream leg, shared by all sessions.
static NEXT_GID: AtomicU64 = AtomicU64::new(1);

pub(super) fn next_gid() -> u64 {
    NEXT_GID.fetch_add(1, Ordering::Relaxed)
}

/// What a session's handles and its task share, fixed for its life.
pub(crate) struct Shared {
    id: String,
    transport: Transport,
    created_at: u64,
    principal: Option<String>,
    deps: Arc<Deps>,
    /// The client's credential for upstream requests (`--forward-auth`); memory only. A slot
    /// the downstream fills and the upstream connection reads, not session state.
    forwarded: crate::upstream::credentials::ForwardedAuth,
}

/// A client session's state, owned by its one task (`actor.rs`): nothing else touches it, so
/// it holds no lock. Handlers reach it through a [`SessionHandle`]'s commands.
pub(crate) struct Session {
    shared: Arc<Shared>,
    id: String,
    record: SessionRecord,
    binding: Binding,
    routes: Routes,
    deps: Arc<Deps>,
    generations: u64,
    /// Client streams this task opened.
    streams_opened: u64,
    events: u64,
    server_seq: u64,
    closed: bool,
    activity: Activity,
    revives: u64,
    breaker: Breaker,
    /// Tools the upstream annotated read-only or idempotent, from `tools/list` answers.
    safe_tools: HashSet<String>,
    /// Digests of the list answers the client has seen, by kind.
    list_digests: HashMap<&'static str, u64>,
    /// When a message last went upstream.
    upstream_used: Instant,
    /// Cancelled when the gateway stops: no upstream is started any more.
    stopping: CancellationToken,
    /// The last upstream failure, for the admin API.
    last_error: Option<inspect::LastError>,
    /// Why the binding is gone (the cause the next revive is logged with) and the last revive.
    revive_cause: inspect::ReviveCause,
    /// Work waiting for a binding: requests, notifications, refreshes.
    waiting: Vec<actor::Waiter>,
    /// When waiting requests try an away upstream again.
    retry_at: Option<Instant>,
    /// The session's own inbox, for the tasks it spawns (revives, HTTP sends, a let-go
    /// binding's events). Weak: the loop ends when every handle and task is gone.
    inbox: mpsc::WeakSender<Box<actor::Command>>,
    /// tether's own requests in flight (their deadlines wake the loop).
    internal_in_flight: usize,
    /// The last revive failed: no binding, and the next use tries again.
    lost: bool,
    /// The task ended to hibernate (not closed: the record stays open in the store).
    hibernated: bool,
    /// The activity time handles were last shown (`inspect::View`).
    shown_active: u64,

    /// What handles read without asking (`inspect::View`).
    view: tokio::sync::watch::Sender<inspect::View>,
}

/// The upstream binding as the session sees it.
enum Binding {
    /// None: never started, released when idle, or gone with a revive that failed.
    None,
    /// A connection, with the receiving end of its events while it is open. A dead one stays
    /// until it is replaced (the admin API shows it as restarting).
    Up { up: Upstream, events: Option<mpsc::Receiver<UpstreamEvent>> },
    /// A revive task is building generation `generation`; `hurry` cuts its backoff short.
    Reviving { generation: u64, hurry: Option<oneshot::Sender<()>> },
}

impl Session {
    /// Starts the task of a session for a record (new, or loaded from the store). `gone` is why
    /// it has no binding when it had one in this process (a hibernated session waking).
    pub fn spawn(
        record: SessionRecord,
        deps: Arc<Deps>,
        stopping: CancellationToken,
        gone: Option<&'static str>,
    ) -> SessionHandle {
        let shared = Arc::new(Shared {
            id: record.id.clone(),
            transport: record.transport,
            created_at: record.created_at,
            principal: record.principal.clone(),
            deps: deps.clone(),
            forwarded: Default::default(),
        });
        let (tx, rx) = mpsc::channel(actor::INBOX);
        let (view, view_rx) = tokio::sync::watch::channel(inspect::View::of(&record));
        let session = Session {
            shared: shared.clone(),
            id: record.id.clone(),
            record,
            binding: Binding::None,
            routes: Routes::default(),
            deps,
            generations: 0,
            streams_opened: 0,
            events: 0,
            server_seq: 0,
            closed: false,
            activity: Activity::default(),
            revives: 0,
            breaker: Breaker::default(),
            safe_tools: HashSet::new(),
            list_digests: HashMap::new(),
            upstream_used: Instant::now(),
            stopping,
            last_error: None,
            revive_cause: inspect::ReviveCause { gone, last: None },
            waiting: Vec::new(),
            retry_at: None,
            inbox: tx.downgrade(),
            internal_in_flight: 0,
            lost: false,
            hibernated: false,
            shown_active: 0,
            view,
        };
        // One span for the session's life: its task's logs, and those of the tasks it
        // spawns, carry its id.
        let span = tracing::info_span!("session", session_id = %shared.id);
        tokio::spawn(session.run(rx).instrument(span));
        SessionHandle::new(shared, tx, view_rx)
    }

    /// Whether the session completed a handshake, so an upstream has served it before.
    fn has_bound(&self) -> bool {
        self.record.upstream_init.is_some()
    }

    /// The current binding, live or dead.
    fn current(&self) -> Option<&Upstream> {
        match &self.binding {
            Binding::Up { up, .. } => Some(up),
            _ => None,
        }
    }

    /// The current binding, if it is alive.
    fn live(&self) -> Option<&Upstream> {
        self.current().filter(|u| u.is_alive())
    }

    /// A fresh event id on a sink's stream that is not stored (priming events).
    fn next_event_id(&mut self, sink: &Sink) -> String {
        self.events += 1;
        event_id(&sink.key(), self.events)
    }

    /// Sends one message to a client stream. On a resumable stream the event gets an id and is
    /// handed to the event store first, so it survives the stream (and tether) going away.
    async fn emit(&mut self, sink: &Sink, data: Bytes, fin: bool, status: Option<u16>) -> bool {
        self.events += 1;
        let seq = self.events;
        let mut id = None;
        if sink.resumable() {
            let key = sink.key();
            let evict = if fin && sink.kind == StreamKind::Request { self.finish_stream(&key) } else { None };
            let stored = match &evict {
                Some(old) => self.deps.store.append_evicting(&self.id, &key, seq, &data, fin, old).await,
                None => self.deps.store.append(&self.id, &key, seq, &data, fin).await,
            };
            match stored {
                Ok(()) => id = Some(event_id(&key, seq)),
                Err(e) => {
                    warn!(error = %e, "storing an SSE event failed; it is sent without an id")
                }
            }
        }
        sink.deliver(Outbound { id, seq, data, fin, status }).await
    }

    /// Ends a client request with an error. Its wire form and its HTTP status (for a plain
    /// JSON answer) come from the one error map, [`GatewayError::wire`].
    async fn end_with(&mut self, sink: &Sink, client_id: &RawValue, err: &GatewayError) -> bool {
        let data = Bytes::from(err.to_message(Some(client_id)).to_bytes());
        self.emit(sink, data, true, Some(err.wire().status.as_u16())).await
    }

    /// Ends a request that cannot go on: the caller still waiting to hear that it went
    /// upstream hears the error (and picks the HTTP status); otherwise its stream does.
    async fn refuse(&mut self, mut p: Pending, err: GatewayError) {
        if let Some(a) = p.accepted.take() {
            a.err(err);
            return;
        }
        match p.reply {
            Reply::Client(sink) => {
                self.end_with(&sink, &p.client_id, &err).await;
            }
            Reply::Internal(i) => Box::pin(self.internal_failed(i, &err.to_string())).await,
        }
    }

    /// Notes an answered request stream; returns the one that falls out of retention.
    fn finish_stream(&mut self, key: &str) -> Option<String> {
        let cap = self.deps.config.retention.finished_streams.max(1);
        let r = &mut self.routes;
        if r.finished.back().is_some_and(|k| k == key) {
            return None;
        }
        r.finished.push_back(key.to_owned());
        if r.finished.len() > cap { r.finished.pop_front() } else { None }
    }

    fn note_activity(&mut self, tool_call: bool) {
        let now = now_ms();
        let r = &mut self.record;
        r.last_active = now;
        r.requests += 1;
        r.tool_calls += u64::from(tool_call);
        if tool_call {
            self.deps.stats.tool_calls.inc();
        }
        let a = &mut self.activity;
        a.last_active = now;
        a.requests += 1;
        a.tool_calls += u64::from(tool_call);
        self.publish_activity();
    }

    /// Counts an open (or just closed) standalone stream as activity, when the last activity
    /// is at least `older_than_ms` old.
    fn stream_activity(&mut self, older_than_ms: u64) {
        let now = now_ms();
        if now.saturating_sub(self.record.last_active) < older_than_ms {
            return;
        }
        self.record.last_active = now;
        self.activity.last_active = now;
        self.publish_activity();
    }

    /// Takes the activity not yet written to the store.
    fn take_activity(&mut self) -> Option<Activity> {
        let a = &mut self.activity;
        if a.requests == 0 && a.last_active == 0 {
            return None;
        }
        Some(std::mem::take(a))
    }

    async fn store_state(&self, state: SessionState) {
        if let Err(e) = self.deps.store.set_state(&self.id, &state).await {
            warn!(error = %e, "storing session state failed");
        }
    }

    async fn store_handshake(&self) {
        if let Err(e) = self.deps.store.set_handshake(&self.record).await {
            warn!(error = %e, "storing the handshake failed");
        }
    }
}

fn state_change_of(method: &str, params: &RawValue) -> Option<StateChange> {
    match method {
        method::LOGGING_SET_LEVEL => params::log_level(params).map(StateChange::SetLevel),
        method::RESOURCES_SUBSCRIBE => params::uri(params).map(StateChange::Subscribe),
        method::RESOURCES_UNSUBSCRIBE => params::uri(params).map(StateChange::Unsubscribe),
        _ => None,
    }
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

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn stream_keys_round_trip_with_the_request_id() {
        let id = RawValue::from_string(r#""req-1 \"x\"""#.to_owned()).expect("json");
        let (sink, _rx) = Sink::channel(7, StreamKind::Request);
        let key = sink.for_request(Some(&id)).key();
        let parsed = parse_stream_key(&key);
        assert!(!parsed.standalone);
        assert_eq!(parsed.local, Some(7));
        assert_eq!(parsed.request_id().map(|r| r.get().to_owned()), Some(id.get().to_owned()));
        let (g, _rx) = Sink::channel(3, StreamKind::Standalone);
        let parsed = parse_stream_key(&g.key());
        assert!(parsed.standalone && parsed.request_id().is_none());
        assert_eq!(parse_stream_key("0000beef.12.3132").local, None, "another process's stream");
        assert_eq!(parse_stream_key("0000beef.12.3132").request_id().map(|r| r.get().to_owned()), Some("12".into()));
        assert_eq!(parse_event_id(&event_id(&key, 42)).map(|(k, s)| (k.to_owned(), s)), Some((key, 42)));
    }
}
