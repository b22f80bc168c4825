//! How a modern connection reaches its server: a POST per request to a Streamable HTTP
//! endpoint, or one stdio child whose single channel carries every request, answer and listen.
//!
//! The translation in [`super`] only needs two things of it: "send one request and read its
//! answer" ([`Pending`]) and "open a listen and read its notifications" ([`ListenStream`]).
//! Over stdio ([`StdioWire`]) a demultiplexer task reads the child's stdout: answers go to the
//! request with their wire id, listen notifications to the listen named by their
//! `subscriptionId` (the listen request's id), request-scoped notifications (progress, logs)
//! to the session as stdio always sends them. Dropping a [`Pending`] or [`ListenStream`] that
//! has not ended sends `notifications/cancelled` for it, which is cancellation on stdio. The
//! child management (process group, unread-stdin accounting, supervisor, stderr) is
//! [`super::super::stdio`]'s; when the child is gone, the requests it never read are reported
//! to the session by their gateway ids so that it sends them again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde_json::{Value, json};
use tether_protocol::message::raw_value;
use tether_protocol::{Kind, Message, method};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, warn};

use super::super::stdio;
use super::super::streamable::SseMessages;
use super::super::{ConnectContext, ConnectError, Origin, SendError, UpstreamEvent};
use super::Shared;
use super::wire::META_SUBSCRIPTION;

/// How many notifications of one listen may wait for its reader before the next is dropped.
const LISTEN_BACKLOG: usize = 256;

/// Where a modern connection sends its requests.
pub(super) enum Transport {
    /// POSTs to a Streamable HTTP endpoint.
    Http { url: String, http: reqwest::Client, forwarded: super::super::credentials::ForwardedAuth },
    /// Lines on one stdio child.
    Stdio(Arc<StdioWire>),
}

impl Transport {
    /// The remote, for logs.
    pub(super) fn describe(&self) -> String {
        match self {
            Transport::Http { url, .. } => url.clone(),
            Transport::Stdio(w) => format!("stdio child {}", w.child.pid()),
        }
    }
}

/// A request sent, its answer to come.
pub(super) enum Pending {
    Http(reqwest::Response),
    Stdio(Waiter),
}

/// An open listen, its notifications to come.
pub(super) enum ListenStream {
    Http(SseMessages),
    Stdio(Waiter),
}

impl ListenStream {
    /// The next message of the stream; `None` when it ended.
    pub(super) async fn next(&mut self) -> Option<Message> {
        match self {
            ListenStream::Http(events) => events.next().await,
            ListenStream::Stdio(w) => w.next().await,
        }
    }
}

/// What came back for one request on the stdio channel, in order. Dropped before its answer,
/// it cancels the request.
pub(super) struct Waiter {
    wire: Arc<StdioWire>,
    id: u64,
    rx: mpsc::Receiver<Message>,
}

impl Waiter {
    /// The next message for this request; `None` when the child is gone.
    pub(super) async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Still routed: not answered yet, so the child is told to stop (a listen ends this way).
        if self.wire.routes().remove(&self.id).is_some() && self.wire.child.is_alive() {
            let wire = self.wire.clone();
            let cancel = Message::notification(
                method::NOTIFICATION_CANCELLED,
                Some(&raw_value(&json!({"requestId": self.id, "reason": "cancelled by the client"}))),
            );
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = wire.child.send(&cancel, None).await;
                });
            }
        }
    }
}

/// Where the messages of one request in flight go.
struct Route {
    /// The session's request it serves (`None` for a listen).
    gid: Option<u64>,
    tx: mpsc::Sender<Message>,
}

/// One stdio child spoken to in 2026-07-28, shared by the requests in flight on it.
pub(crate) struct StdioWire {
    child: stdio::Handle,
    routes: Mutex<HashMap<u64, Route>>,
    ids: AtomicU64,
}

impl StdioWire {
    /// Starts the child; its events go to the returned channel, for [`demux`].
    pub(super) fn spawn(
        command: &[String],
        ctx: &ConnectContext,
    ) -> Result<(Arc<StdioWire>, mpsc::Receiver<UpstreamEvent>), ConnectError> {
        let (tx, rx) = mpsc::channel(256);
        let child_ctx = ConnectContext { events: tx, ..ctx.clone() };
        let child = stdio::Handle::spawn(command, child_ctx)?;
        Ok((Arc::new(StdioWire { child, routes: Mutex::default(), ids: AtomicU64::new(1) }), rx))
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Route>> {
        self.routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The child's process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Whether the child runs.
    pub(super) fn is_alive(&self) -> bool {
        self.child.is_alive()
    }

    /// Writes one request (`gid`: the session's request it serves) and returns what will
    /// read its answer. A failed write was provably not delivered.
    pub(super) async fn request(
        self: &Arc<Self>,
        gid: Option<u64>,
        method: &str,
        params: &Value,
        backlog: usize,
    ) -> Result<Waiter, SendError> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(backlog);
        self.routes().insert(id, Route { gid, tx });
        let waiter = Waiter { wire: self.clone(), id, rx };
        let msg = Message::request(id, method, Some(&raw_value(params)));
        // The wire id names the line for the unread-stdin accounting, mapped back in `demux`.
        if let Err(e) = self.child.send(&msg, Some(id)).await {
            self.routes().remove(&id);
            return Err(e);
        }
        Ok(waiter)
    }

    /// Opens a listen: a request whose notifications come until it is cancelled.
    pub(super) async fn listen(self: &Arc<Self>, params: &Value) -> Result<Waiter, SendError> {
        self.request(None, method::SUBSCRIPTIONS_LISTEN, params, LISTEN_BACKLOG).await
    }

    /// Ends the child: stdin closed, a grace, the group killed.
    pub(super) async fn close(&self) {
        self.child.close().await;
    }

    /// Passes one message from the child where it belongs.
    fn route(&self, msg: Message) -> Option<Message> {
        match msg.kind() {
            Kind::Response | Kind::Error => {
                let Some(id) = msg.numeric_id() else {
                    debug!("an answer with an id tether never sent; dropped");
                    return None;
                };
                // Answered: nothing more comes for it, and dropping its waiter cancels nothing.
                match self.routes().remove(&id) {
                    Some(route) => {
                        let _ = route.tx.try_send(msg);
                    }
                    None => debug!(id, "an answer to a request no longer waited for; dropped"),
                }
                None
            }
            Kind::Notification => {
                let sub = msg
                    .params()
                    .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
                    .and_then(|p| p.get("_meta").and_then(|m| m.get(META_SUBSCRIPTION)).and_then(Value::as_u64));
                match sub {
                    Some(id) => {
                        let routes = self.routes();
                        match routes.get(&id) {
                            Some(route) => {
                                if route.tx.try_send(msg).is_err() {
                                    warn!(listen = id, "a listen's reader is behind; a notification was dropped");
                                }
                            }
                            None => debug!(listen = id, "a notification of a listen no longer open; dropped"),
                        }
                        None
                    }
                    // Request-scoped (progress, logs): the session places them, as on any stdio.
                    None => Some(msg),
                }
            }
            Kind::Request => {
                warn!(method = msg.method().unwrap_or(""), "a 2026-07-28 stdio server sent a request; dropped");
                None
            }
        }
    }

    /// The child is gone: the gateway ids of the requests it never read (by their wire ids).
    fn unread_gids(&self, unread: &[u64]) -> Vec<u64> {
        let routes = self.routes();
        let mut gids: Vec<u64> = unread.iter().filter_map(|id| routes.get(id).and_then(|r| r.gid)).collect();
        gids.sort_unstable();
        gids.dedup();
        gids
    }
}

/// Reads the child's events for the connection until the child is gone, then reports that
/// once, with the requests to send again.
pub(super) async fn demux(wire: Arc<StdioWire>, shared: Weak<Shared>, mut events: mpsc::Receiver<UpstreamEvent>) {
    while let Some(event) = events.recv().await {
        let Some(shared) = shared.upgrade() else { return };
        match event {
            UpstreamEvent::Message(_, msg) => {
                if let Some(msg) = wire.route(msg) {
                    shared.deliver(Origin::Unrelated, msg).await;
                }
            }
            UpstreamEvent::Closed(reason, unread) => {
                // Reported (which aborts the requests in flight) before their waiters hear of
                // it: a request to send again must not be answered with an error first.
                let gids = wire.unread_gids(&unread);
                shared.lost(reason, gids).await;
                wire.routes().clear();
                return;
            }
        }
    }
}

/// Starts [`demux`] for a connection.
pub(super) fn start_demux(wire: Arc<StdioWire>, shared: &Arc<Shared>, events: mpsc::Receiver<UpstreamEvent>) {
    let span = shared.span.clone();
    tokio::spawn(demux(wire, Arc::downgrade(shared), events).instrument(span));
}
