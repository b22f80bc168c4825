//! [`SessionHandle`]: what callers (downstream, bridge, admin, the manager's map) hold of a
//! session. A cheap clone naming one session; every call goes to the session, which alone holds
//! its state. Callers never see [`Session`] itself, so the session's inside can become one task
//! owning its state (issue 11, `docs/actor-plan.md`) without touching them again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tether_protocol::Message;

use super::inspect::{LastError, UpstreamState};
use super::record::{SessionRecord, Transport};
use super::store::Replay;
use super::{Session, SessionConfig, Sink};
use crate::error::GatewayError;
use crate::upstream::credentials::ForwardedAuth;

/// One session, as its callers hold it.
#[derive(Clone)]
pub struct SessionHandle {
    session: Arc<Session>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle").field("id", &self.id()).finish()
    }
}

/// What an operator sees of a live session, taken at once (the admin API and the dashboard).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The record as the session sees it now.
    pub record: SessionRecord,
    /// The state of the upstream binding.
    pub upstream_state: UpstreamState,
    /// Whether the binding is live.
    pub alive: bool,
    /// The stdio child's pid, for a live child.
    pub pid: Option<u32>,
    /// The upstream's own session id, for a live Streamable HTTP binding.
    pub upstream_session: Option<String>,
    /// The generation of the current binding.
    pub generation: Option<u64>,
    /// How many times the upstream side was rebuilt.
    pub revives: u64,
    /// When (Unix ms) and why the upstream side was last revived.
    pub last_revive: Option<(u64, &'static str)>,
    /// The last upstream failure.
    pub last_error: Option<LastError>,
    /// How long the crash-loop breaker stays open (if it is).
    pub breaker_open_for: Option<Duration>,
    /// Failures since the last successful start.
    pub consecutive_failures: u32,
    /// Client streams opened in this process.
    pub streams_opened: u64,
    /// Whether the standalone stream is open.
    pub standalone_open: bool,
    /// Client requests waiting for their answer.
    pub pending_requests: usize,
    /// The oldest client requests in flight (method, age), oldest first, at most
    /// [`Snapshot::IN_FLIGHT`].
    pub in_flight: Vec<(String, Duration)>,
}

impl Snapshot {
    /// The most requests in flight a snapshot lists.
    pub const IN_FLIGHT: usize = 50;
}

impl SessionHandle {
    pub(super) fn new(session: Arc<Session>) -> SessionHandle {
        SessionHandle { session }
    }

    /// The session behind the handle (the session layer's own use: the manager's reaper,
    /// activity writer and shutdown).
    pub(super) fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// tether's id for the session.
    pub fn id(&self) -> &str {
        self.session.id()
    }

    /// The client-facing transport.
    pub fn transport(&self) -> Transport {
        self.session.transport()
    }

    /// The config the session runs with.
    pub fn config(&self) -> &SessionConfig {
        self.session.config()
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    /// The slot holding the client's credential for upstream requests (`--forward-auth`).
    pub fn forwarded_auth(&self) -> &ForwardedAuth {
        self.session.forwarded_auth()
    }

    /// Whether the session completed a handshake, so an upstream has served it before.
    pub fn has_bound(&self) -> bool {
        self.session.has_bound()
    }

    /// The principal the session is bound to (a fingerprint, see `crate::auth`), if any.
    pub fn principal(&self) -> Option<String> {
        self.session.principal()
    }

    /// The negotiated protocol version, once initialized.
    pub fn protocol_version(&self) -> Option<String> {
        self.session.protocol_version()
    }

    /// A copy of the record as the session sees it now.
    pub fn record(&self) -> SessionRecord {
        self.session.record()
    }

    /// Milliseconds since the Unix epoch of the last client activity.
    pub fn last_active(&self) -> u64 {
        self.session.last_active()
    }

    /// Forwards a client request; its answer, and messages related to it, go to `sink`.
    /// Returns the gateway id, which the caller uses to time the request out.
    pub async fn request(&self, msg: Message, sink: Sink) -> Result<u64, GatewayError> {
        self.session.request(msg, sink).await
    }

    /// Forwards a client notification.
    pub async fn notify(&self, msg: Message) -> Result<(), GatewayError> {
        self.session.notify(msg).await
    }

    /// Forwards the client's answer to a server→client request.
    pub async fn answer(&self, msg: Message) -> Result<(), GatewayError> {
        self.session.answer(msg).await
    }

    /// Ends a request that ran out of time. False if the answer won the race.
    pub async fn time_out(&self, gid: u64) -> bool {
        self.session.time_out(gid).await
    }

    /// Ends client requests older than the request timeout (streams without a per-request
    /// timer: legacy SSE, the bridge).
    pub async fn expire_overdue(&self) {
        self.session.expire_overdue().await
    }

    /// A new stream number for a client stream of this session.
    pub fn next_stream(&self) -> u64 {
        self.session.next_stream()
    }

    /// A fresh event id on a sink's stream that is not stored (priming events).
    pub fn next_event_id(&self, sink: &Sink) -> String {
        self.session.next_event_id(sink)
    }

    /// Sends one message to a client stream (stored first on a resumable one).
    pub async fn emit(&self, sink: &Sink, data: Bytes, fin: bool, status: Option<u16>) -> bool {
        self.session.emit(sink, data, fin, status).await
    }

    /// Writes one message to a sink.
    pub async fn send_to(&self, sink: &Sink, data: Bytes) -> bool {
        self.session.send_to(sink, data).await
    }

    /// Opens the client's standalone stream (replacing an older one) and returns what was
    /// queued for it.
    pub fn attach_standalone(&self, sink: Sink) -> Vec<Bytes> {
        self.session.attach_standalone(sink)
    }

    /// Forgets the standalone stream `stream`, if it is still the current one.
    pub fn detach_standalone(&self, stream: u64) {
        self.session.detach_standalone(stream)
    }

    /// The standalone stream's sink (a legacy session's only stream).
    pub fn standalone_sink(&self) -> Option<Sink> {
        self.session.standalone_sink()
    }

    /// Moves a request still waiting for its answer onto a new stream (a resume with
    /// `Last-Event-ID`). False if no such request is waiting here.
    pub fn reattach_request(&self, stream: u64, sink: Sink) -> bool {
        self.session.reattach_request(stream, sink)
    }

    /// The stored events of a stream after `after_seq`.
    pub async fn replay(&self, key: &str, after_seq: u64) -> Result<Replay, GatewayError> {
        self.session.replay(key, after_seq).await
    }

    /// An operator's "refresh": the binding is rebuilt by replay now. The new generation, or
    /// `None` for a session that has not completed its handshake.
    pub async fn refresh(&self) -> Result<Option<u64>, GatewayError> {
        self.session.refresh().await
    }

    /// Whether a standalone stream is open.
    pub fn has_standalone(&self) -> bool {
        self.session.has_standalone()
    }

    /// The state of the upstream binding.
    pub fn upstream_state(&self) -> UpstreamState {
        self.session.upstream_state()
    }

    /// Whether an upstream binding is live.
    pub fn upstream_alive(&self) -> bool {
        self.session.upstream_alive()
    }

    /// The era the current upstream connection speaks (`None`: stdio, legacy SSE, or none yet).
    pub fn upstream_era(&self) -> Option<crate::upstream::era::Era> {
        self.session.upstream_era()
    }

    /// How many times the upstream side was rebuilt.
    pub fn revive_count(&self) -> u64 {
        self.session.revive_count()
    }

    /// The stdio child's pid, if the binding is a live child.
    pub fn upstream_pid(&self) -> Option<u32> {
        self.session.upstream_pid()
    }

    /// When (Unix ms) the upstream side was last revived, and why.
    pub fn last_revive(&self) -> Option<(u64, &'static str)> {
        self.session.last_revive()
    }

    /// Client requests waiting for their answer.
    pub fn pending_requests(&self) -> usize {
        self.session.pending_requests()
    }

    /// The last upstream failure, if any.
    pub fn last_error(&self) -> Option<LastError> {
        self.session.last_error()
    }

    /// Everything an operator sees of the session, at once.
    pub async fn inspect(&self) -> Snapshot {
        let s = &self.session;
        let (breaker_open_for, consecutive_failures) = s.breaker_status();
        Snapshot {
            record: s.record(),
            upstream_state: s.upstream_state(),
            alive: s.upstream_alive(),
            pid: s.upstream_pid(),
            upstream_session: s.upstream_session(),
            generation: s.generation(),
            revives: s.revive_count(),
            last_revive: s.last_revive(),
            last_error: s.last_error(),
            breaker_open_for,
            consecutive_failures,
            streams_opened: s.streams_opened(),
            standalone_open: s.has_standalone(),
            pending_requests: s.pending_requests(),
            in_flight: s.in_flight(Snapshot::IN_FLIGHT),
        }
    }
}
