//! [`SessionHandle`]: what callers (downstream, bridge, admin, the manager's map) hold of a
//! session. A cheap clone naming one session; every call is a command to the session's task,
//! which alone holds its state, or a read of what the task last published.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tether_protocol::Message;
use tokio::sync::{mpsc, oneshot, watch};

use super::actor::{Command, Inbox};
use super::inspect::{LastError, UpstreamState, View};
use super::record::{SessionRecord, Transport};
use super::store::{Activity, Replay};
use super::{Accepted, SessionConfig, Shared, Sink, event_id};
use crate::error::GatewayError;
use crate::upstream::Upstream;
use crate::upstream::credentials::ForwardedAuth;

/// One session, as its callers hold it: the session's inbox, and what it shows without being
/// asked.
#[derive(Clone)]
pub struct SessionHandle {
    shared: Arc<Shared>,
    tx: Inbox,
    view: watch::Receiver<View>,
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
    pub(super) fn new(shared: Arc<Shared>, tx: Inbox, view: watch::Receiver<View>) -> SessionHandle {
        SessionHandle { shared, tx, view }
    }

    /// Asks the session something; `None` when it has ended.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Box::new(make(tx))).await.ok()?;
        rx.await.ok()
    }

    /// Tells the session something, without waiting for it.
    async fn tell(&self, cmd: Command) {
        let _ = self.tx.send(Box::new(cmd)).await;
    }

    /// tether's id for the session.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The client-facing transport.
    pub fn transport(&self) -> Transport {
        self.shared.transport
    }

    /// The config the session runs with.
    pub fn config(&self) -> &SessionConfig {
        &self.shared.deps.config
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.view.borrow().closed
    }

    /// The slot holding the client's credential for upstream requests (`--forward-auth`).
    pub fn forwarded_auth(&self) -> &ForwardedAuth {
        &self.shared.forwarded
    }

    /// Whether the session completed a handshake, so an upstream has served it before.
    pub fn has_bound(&self) -> bool {
        self.view.borrow().record.upstream_init.is_some()
    }

    /// The principal the session is bound to (a fingerprint, see `crate::auth`), if any.
    pub fn principal(&self) -> Option<String> {
        self.shared.principal.clone()
    }

    /// When the session was created (Unix ms).
    pub fn created_at(&self) -> u64 {
        self.shared.created_at
    }

    /// The negotiated protocol version, once initialized.
    pub fn protocol_version(&self) -> Option<String> {
        self.view.borrow().record.protocol_version.clone()
    }

    /// A copy of the record as the session last showed it (its activity up to a quarter of a
    /// second old).
    pub fn record(&self) -> SessionRecord {
        self.view.borrow().record.clone()
    }

    /// The record as it is now (an ended session: as it last showed it).
    pub async fn record_now(&self) -> SessionRecord {
        match self.ask(|reply| Command::Record { reply }).await {
            Some(r) => r,
            None => self.record(),
        }
    }

    /// Milliseconds since the Unix epoch of the last client activity (up to a quarter of a
    /// second old).
    pub fn last_active(&self) -> u64 {
        self.view.borrow().record.last_active
    }

    /// Forwards a client request; its answer, and messages related to it, go to `sink`.
    /// Returns the gateway id once it went upstream, which the caller uses to time it out.
    pub async fn request(&self, msg: Message, sink: Sink) -> Result<u64, GatewayError> {
        self.open_request(msg, sink, false).await.map(|a| a.gid)
    }

    /// Forwards a client request on a new stream, in one exchange with the session: a sink
    /// numbered 0 is numbered by the session, and with `prime` the stream's priming event id
    /// is taken before the request goes upstream (so that any answer comes after it).
    pub async fn open_request(&self, msg: Message, sink: Sink, prime: bool) -> Result<Accepted, GatewayError> {
        self.ask(|accepted| Command::Request { msg, sink, prime, accepted })
            .await
            .unwrap_or(Err(GatewayError::SessionNotFound))
    }

    /// Forwards a client notification.
    pub async fn notify(&self, msg: Message) -> Result<(), GatewayError> {
        self.ask(|done| Command::Notify { msg, done }).await.unwrap_or(Err(GatewayError::SessionNotFound))
    }

    /// Forwards the client's answer to a server→client request.
    pub async fn answer(&self, msg: Message) -> Result<(), GatewayError> {
        if self.tx.send(Box::new(Command::Answer { msg })).await.is_err() {
            return Err(GatewayError::SessionNotFound);
        }
        Ok(())
    }

    /// Ends a request that ran out of time. False if the answer won the race.
    pub async fn time_out(&self, gid: u64) -> bool {
        self.ask(|reply| Command::TimeOut { gid, reply }).await.unwrap_or(false)
    }

    /// Ends client requests older than the request timeout (streams without a per-request
    /// timer: legacy SSE, the bridge).
    pub async fn expire_overdue(&self) {
        self.tell(Command::ExpireOverdue).await;
    }

    /// A new stream number for a client stream of this session.
    pub async fn next_stream(&self) -> u64 {
        self.ask(|reply| Command::NextStream { reply }).await.unwrap_or(0)
    }

    /// A fresh event id on a sink's stream that is not stored (priming events).
    pub async fn next_event_id(&self, sink: &Sink) -> String {
        let sink = sink.clone();
        let key = sink.key();
        self.ask(|reply| Command::EventId { sink, reply }).await.unwrap_or_else(|| event_id(&key, 0))
    }

    /// Sends one message to a client stream (stored first on a resumable one).
    pub async fn emit(&self, sink: &Sink, data: Bytes, fin: bool, status: Option<u16>) -> bool {
        let sink = sink.clone();
        self.ask(|reply| Command::Emit { sink, data, fin, status, reply }).await.unwrap_or(false)
    }

    /// Writes one message to a sink.
    pub async fn send_to(&self, sink: &Sink, data: Bytes) -> bool {
        self.emit(sink, data, true, None).await
    }

    /// Opens the client's standalone stream (replacing an older one) and returns what was
    /// queued for it.
    pub async fn attach_standalone(&self, sink: Sink) -> Vec<Bytes> {
        self.ask(|reply| Command::AttachStandalone { sink, reply }).await.unwrap_or_default()
    }

    /// Forgets the standalone stream `stream`, if it is still the current one. Callable where
    /// nothing can wait (a stream's end): a full inbox hands it to a task.
    pub fn detach_standalone(&self, stream: u64) {
        if let Err(mpsc::error::TrySendError::Full(cmd)) =
            self.tx.try_send(Box::new(Command::DetachStandalone { stream }))
        {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }

    /// The standalone stream's sink (a legacy session's only stream).
    pub async fn standalone_sink(&self) -> Option<Sink> {
        self.ask(|reply| Command::StandaloneSink { reply }).await.flatten()
    }

    /// Moves a request still waiting for its answer onto a new stream (a resume with
    /// `Last-Event-ID`). False if no such request is waiting here.
    pub async fn reattach_request(&self, stream: u64, sink: Sink) -> bool {
        self.ask(|reply| Command::Reattach { stream, sink, reply }).await.unwrap_or(false)
    }

    /// The stored events of a stream after `after_seq`.
    pub async fn replay(&self, key: &str, after_seq: u64) -> Result<Replay, GatewayError> {
        let limit = self.config().retention.per_stream;
        self.shared
            .deps
            .store
            .replay(self.id(), key, after_seq, limit)
            .await
            .map_err(|e| GatewayError::Store(e.to_string()))
    }

    /// An operator's "refresh": the binding is rebuilt by replay now. The new generation, or
    /// `None` for a session that has not completed its handshake.
    pub async fn refresh(&self) -> Result<Option<u64>, GatewayError> {
        self.ask(|reply| Command::Refresh { reply }).await.unwrap_or(Err(GatewayError::SessionNotFound))
    }

    /// Whether a standalone stream is open.
    pub fn has_standalone(&self) -> bool {
        self.view.borrow().standalone
    }

    /// The state of the upstream binding.
    pub fn upstream_state(&self) -> UpstreamState {
        self.view.borrow().upstream_state()
    }

    fn current(&self) -> Option<Upstream> {
        self.view.borrow().current.clone()
    }

    /// Whether an upstream binding is live.
    pub fn upstream_alive(&self) -> bool {
        self.current().is_some_and(|u| u.is_alive())
    }

    /// The era the current upstream connection speaks (`None`: stdio, legacy SSE, or none yet).
    pub fn upstream_era(&self) -> Option<crate::upstream::era::Era> {
        self.current().and_then(|u| u.era())
    }

    /// How many times the upstream side was rebuilt.
    pub fn revive_count(&self) -> u64 {
        self.view.borrow().revives
    }

    /// The stdio child's pid, if the binding is a live child.
    pub fn upstream_pid(&self) -> Option<u32> {
        self.current().filter(Upstream::is_alive).and_then(|u| u.pid())
    }

    /// When (Unix ms) the upstream side was last revived, and why.
    pub fn last_revive(&self) -> Option<(u64, &'static str)> {
        self.view.borrow().last_revive
    }

    /// Client requests waiting for their answer.
    pub async fn pending_requests(&self) -> usize {
        self.ask(|reply| Command::PendingCount { reply }).await.unwrap_or(0)
    }

    /// The last upstream failure, if any.
    pub fn last_error(&self) -> Option<LastError> {
        self.view.borrow().last_error.clone()
    }

    /// Everything an operator sees of the session, at once (of an ended session, what it
    /// showed last).
    pub async fn inspect(&self) -> Snapshot {
        if let Some(s) = self.ask(|reply| Command::Inspect { reply }).await {
            return s;
        }
        let v = self.view.borrow().clone();
        Snapshot {
            upstream_state: v.upstream_state(),
            record: v.record,
            alive: false,
            pid: None,
            upstream_session: None,
            generation: None,
            revives: v.revives,
            last_revive: v.last_revive,
            last_error: v.last_error,
            breaker_open_for: None,
            consecutive_failures: 0,
            streams_opened: 0,
            standalone_open: false,
            pending_requests: 0,
            in_flight: Vec::new(),
        }
    }

    /// The activity not yet written to the store; an open standalone stream counts as
    /// activity once the last is `refresh_ms` old.
    pub(super) async fn take_activity(&self, refresh_ms: u64) -> Option<Activity> {
        self.ask(|reply| Command::TakeActivity { refresh_ms, reply }).await.flatten()
    }

    /// Closes the binding if it sat unused for `idle` with nothing waiting on it; true if it
    /// did.
    pub(super) async fn release_if_idle(&self, idle: Duration) -> bool {
        match self.ask(|reply| Command::ReleaseIfIdle { idle, reply }).await.flatten() {
            Some(up) => {
                up.close().await;
                true
            }
            None => false,
        }
    }

    /// Asks the session to hibernate if it had no binding, stream or request for `after`; the
    /// caller decides on the channel it gets (the session's task waits for it).
    pub(super) async fn hibernate(&self, after: Duration) -> Option<(Activity, oneshot::Sender<bool>)> {
        self.ask(|reply| Command::Hibernate { after, reply }).await.flatten()
    }

    /// Whether `other` names the same session task.
    pub(super) fn is(&self, other: &SessionHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// How many hold the session: its handles and its task.
    pub(super) fn holders(&self) -> usize {
        Arc::strong_count(&self.shared)
    }

    /// Whether nothing waits in the session's inbox.
    pub(super) fn inbox_is_empty(&self) -> bool {
        self.tx.capacity() == self.tx.max_capacity()
    }

    /// Closes the binding but keeps the session (gateway shutdown).
    pub(super) async fn release_upstream(&self) {
        if let Some(up) = self.ask(|reply| Command::Release { reply }).await.flatten() {
            up.close().await;
        }
    }

    /// Ends the session's live side: pending requests get an error, streams end, the upstream
    /// closes. The record is closed by the manager.
    pub(super) async fn shutdown(&self) {
        self.shut(false).await;
    }

    /// Drops the live side of a session that lives on elsewhere (cluster mode): its pending
    /// requests end with "may or may not have run", not "session not found".
    pub(super) async fn shutdown_moved(&self) {
        self.shut(true).await;
    }

    async fn shut(&self, moved: bool) {
        if let Some(up) = self.ask(|reply| Command::Shutdown { moved, reply }).await.flatten() {
            up.close().await;
        }
    }
}
