//! Where upstream messages go: answers to the request they answer, server→client requests and
//! notifications to the stream they belong to, and what a dead connection leaves behind.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde_json::value::RawValue;
use tether_protocol::message::{numeric_id, string_id};
use tether_protocol::{Kind, Message, method, params, session_error};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::record::intern;
use super::recovery::{self, Failure, Fate, Loss};
use super::{Pending, Reply, ServerRequest, Session, Sink, StateChange, is_answer, lock, rewrite_param};
use crate::upstream::{Origin, QuitReason, UpstreamEvent};

/// `notifications/resources/updated` and the `notifications/*/list_changed` family.
fn is_change_notification(msg: &Message) -> bool {
    msg.method().is_some_and(|m| {
        m == method::NOTIFICATION_RESOURCES_UPDATED || (m.starts_with("notifications/") && m.ends_with("/list_changed"))
    })
}

/// What the loss path did with a request.
enum Settled {
    /// It goes upstream again (after a revive, or once the tools are known).
    Again,
    /// It ended with an error on its stream.
    Ended,
    /// The upstream's own answer goes to the client.
    Deliver(Box<Pending>),
}

impl Session {
    /// Reads one binding's events until it is gone.
    ///
    /// Boxed, because a binding's death may revive the session, which starts a new reader:
    /// the explicit `Send` future type breaks that cycle for the compiler.
    pub(super) fn route_events(
        self: Arc<Self>,
        generation: u64,
        mut rx: mpsc::Receiver<UpstreamEvent>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            while let Some(ev) = rx.recv().await {
                match ev {
                    UpstreamEvent::Message(origin, msg) => self.route(generation, origin, msg).await,
                    UpstreamEvent::Closed(reason, undelivered) => {
                        self.on_closed(generation, reason, &undelivered).await;
                        return;
                    }
                }
            }
        })
    }

    async fn route(self: &Arc<Self>, generation: u64, origin: Origin, mut msg: Message) {
        if is_answer(&msg) {
            return self.route_answer(msg).await;
        }
        if msg.kind() == Kind::Request {
            if msg.is(method::PING) {
                // The gateway holds the connection, so the gateway answers the upstream's pings.
                return self.answer_ping(generation, &msg).await;
            }
            let n = self.server_seq.fetch_add(1, Ordering::Relaxed) + 1;
            let client_id = format!("tether-{n}");
            let upstream_id = msg.id().map(ToOwned::to_owned).unwrap_or_else(|| numeric_id(0));
            lock(&self.routes)
                .server_requests
                .insert(format!("\"{client_id}\""), ServerRequest { upstream_id, generation });
            msg.set_id(string_id(&client_id));
            let target = self.target(origin, None);
            return self.deliver(target, msg).await;
        }
        // A notification.
        let mut by_token = None;
        if msg.is(method::NOTIFICATION_PROGRESS) {
            by_token = msg.params().and_then(params::notification_progress_token);
        } else if msg.is(method::NOTIFICATION_CANCELLED) {
            // The upstream cancels one of its own requests: name it by the client-facing id.
            if let Some(upstream_id) = msg.params().and_then(params::cancelled_request_id).map(|i| i.get().to_owned()) {
                let client_id = lock(&self.routes)
                    .server_requests
                    .iter()
                    .find(|(_, sr)| sr.generation == generation && sr.upstream_id.get() == upstream_id)
                    .map(|(k, _)| k.clone());
                match client_id.and_then(|k| RawValue::from_string(k).ok()) {
                    Some(id) => rewrite_param(&mut msg, "requestId", &id),
                    None => return,
                }
            }
        }
        // A change notification is about the session, not about whichever request is in flight:
        // from a channel that does not say (stdio, legacy SSE) it goes to the standalone stream
        // when the client has one (a 2026-07-28 client's `subscriptions/listen` reads only that),
        // else, as before, to the newest request's stream.
        let origin =
            if origin == Origin::Unrelated && is_change_notification(&msg) { Origin::Standalone } else { origin };
        let target = self.target(origin, by_token.as_deref());
        self.deliver(target, msg).await;
    }

    async fn route_answer(self: &Arc<Self>, msg: Message) {
        let Some(gid) = msg.numeric_id() else {
            debug!(session_id = %self.id, "upstream answer with an id tether did not issue; dropped");
            return;
        };
        let Some(p) = lock(&self.routes).pending.remove(&gid) else {
            debug!(session_id = %self.id, gid, "answer to a request no longer waiting; dropped");
            return;
        };
        let sink = match p.reply {
            Reply::Internal(tx) => {
                let _ = tx.send(msg);
                return;
            }
            Reply::Client(ref sink) => sink.clone(),
        };
        let loss = match msg.kind() {
            Kind::Error if session_error::is_session_error(msg.error_object()) => Some(Loss::SessionErrorAnswer),
            Kind::Error if session_error::is_restart_error(msg.error_object()) => Some(Loss::RemoteRestarted),
            _ => None,
        };
        if let Some(loss) = loss {
            // The upstream did not serve it (it forgot our session), or another gateway's
            // upstream restarted with it in flight: the one loss path decides.
            match self.lose(gid, p, sink.clone(), loss, None, "").await {
                Settled::Deliver(p) => return self.answer_client(*p, sink, msg).await,
                Settled::Again | Settled::Ended => return,
            }
        }
        self.answer_client(p, sink, msg).await
    }

    /// Gives the client the upstream's answer to its request, with the client's id, after
    /// recording what a successful one changes.
    async fn answer_client(&self, p: Pending, sink: Sink, mut msg: Message) {
        if msg.kind() == Kind::Response {
            self.apply_success(&p, &msg).await;
            self.learn_from_list(&p.method, &msg);
        }
        msg.set_id(p.client_id);
        if !self.emit(&sink, Bytes::from(msg.to_bytes()), true, None).await {
            debug!(session_id = %self.id, method = %p.method, "the client's stream closed before its answer");
        }
    }

    /// Remembers what list answers say: which tools are safe to retry, and a digest of each
    /// list for telling the client about changes across a revive.
    fn learn_from_list(&self, list_method: &str, msg: &Message) {
        let Some(kind) = method::list_kind(list_method) else { return };
        let Some(kind) = super::replay::LIST_KINDS.iter().find(|k| **k == kind) else { return };
        let Some(result) = msg.result() else { return };
        lock(&self.list_digests).insert(kind, super::replay::digest(result.get()));
        if *kind == "tools" {
            let safe = params::safe_tools(result);
            lock(&self.safe_tools).extend(safe);
        }
    }

    /// Records what a successful answer changes in the session: the handshake, the log level,
    /// subscriptions.
    async fn apply_success(&self, p: &Pending, msg: &Message) {
        if p.method == method::INITIALIZE {
            let result = msg.result().map(ToOwned::to_owned);
            let version = msg.result().and_then(params::protocol_version);
            {
                let mut r = lock(&self.record);
                r.client_init = p.init_params.as_deref().map(intern);
                r.upstream_init = result.as_deref().map(intern);
                r.protocol_version.clone_from(&version);
            }
            if let Some(up) = self.current() {
                if let Some(v) = &version {
                    up.set_protocol_version(v);
                }
                // A legacy SSE client's one stream is open before the upstream session exists.
                if self.has_standalone() {
                    up.open_standalone();
                }
            }
            self.store_handshake().await;
            info!(session_id = %self.id, protocol_version = ?version, "session initialized");
            return;
        }
        let Some(change) = &p.state_change else {
            return;
        };
        let state = {
            let mut r = lock(&self.record);
            match change {
                StateChange::SetLevel(l) => r.state.log_level = Some(l.clone()),
                StateChange::Subscribe(u) => {
                    r.state.subscriptions.insert(u.clone());
                }
                StateChange::Unsubscribe(u) => {
                    r.state.subscriptions.remove(u);
                }
            }
            r.state.clone()
        };
        self.store_state(state).await;
    }

    async fn answer_ping(&self, generation: u64, msg: &Message) {
        let Some(id) = msg.id() else { return };
        if let Some(up) = self.current().filter(|u| u.generation() == generation) {
            let empty = RawValue::from_string("{}".to_owned()).ok();
            if let Some(empty) = empty {
                let _ = up.send(&Message::response(id, &empty), None).await;
            }
        }
    }

    /// Picks the stream for a message that is not an answer. A message on a request's own
    /// upstream stream, or carrying a request's progress token, goes with that request; other
    /// messages from a channel that does not say (stdio) go to the newest request still
    /// waiting, since servers emit them while serving it; then the standalone stream.
    pub(super) fn target(&self, origin: Origin, progress_token: Option<&str>) -> Option<Sink> {
        let r = lock(&self.routes);
        let sse_sink = |p: &Pending| match &p.reply {
            Reply::Client(s) if s.sse() => Some(s.clone()),
            _ => None,
        };
        if let Some(token) = progress_token
            && let Some(s) =
                r.pending.values().filter(|p| p.progress_token.as_deref() == Some(token)).find_map(sse_sink)
        {
            return Some(s);
        }
        if let Origin::Request(gid) = origin
            && let Some(s) = r.pending.get(&gid).and_then(sse_sink)
        {
            return Some(s);
        }
        if origin == Origin::Standalone
            && let Some(s) = &r.standalone
        {
            return Some(s.clone());
        }
        let newest = r.pending.values().filter(|p| sse_sink(p).is_some()).max_by_key(|p| p.seq);
        if let Some(s) = newest.and_then(sse_sink) {
            return Some(s);
        }
        r.standalone.clone()
    }

    pub(super) async fn deliver(&self, target: Option<Sink>, msg: Message) {
        let data = Bytes::from(msg.to_bytes());
        if let Some(sink) = target {
            if self.emit(&sink, data.clone(), false, None).await {
                return;
            }
            self.detach_standalone(sink.stream);
            if sink.resumable() {
                // Stored under the stream the client had: a resume with Last-Event-ID gets it.
                return;
            }
        }
        let mut r = lock(&self.routes);
        if r.backlog.len() >= self.deps.config.backlog {
            r.backlog.pop_front();
            warn!(session_id = %self.id, "no client stream for server messages; the oldest queued one was dropped");
        }
        r.backlog.push_back(data);
    }

    /// A binding ended: every request it carried ends too, with an error saying so, unless
    /// repeating it is safe, in which case it is sent again on a revived binding. A session
    /// whose client listens on a standalone stream is revived at once.
    async fn on_closed(self: &Arc<Self>, generation: u64, reason: QuitReason, undelivered: &[u64]) {
        let orphans: Vec<(u64, Pending)> = {
            let mut r = lock(&self.routes);
            r.server_requests.retain(|_, sr| sr.generation != generation);
            let gids: Vec<u64> =
                r.pending.iter().filter(|(_, p)| p.generation == generation).map(|(g, _)| *g).collect();
            gids.iter().filter_map(|g| r.pending.remove(g).map(|p| (*g, p))).collect()
        };
        let unexpected = reason != QuitReason::Closed;
        // A binding whose revive failed was never in service: its failure is counted there.
        let was_serving = self.current().is_some_and(|u| u.generation() == generation);
        if unexpected && was_serving {
            self.binding_died();
            self.note_gone(super::inspect::loss_cause(&reason));
        }
        if unexpected {
            info!(session_id = %self.id, upstream = self.deps.spec.kind(), generation, reason = %reason, in_flight = orphans.len(), "upstream connection lost");
            self.note_error(format_args!("upstream connection lost: {reason}"));
        }
        let mut retried = false;
        for (gid, p) in orphans {
            let Reply::Client(sink) = &p.reply else { continue };
            let sink = sink.clone();
            let loss = if undelivered.contains(&gid) { Loss::NotDelivered } else { Loss::InFlight };
            match self.lose(gid, p, sink.clone(), loss, Some(generation), &reason.to_string()).await {
                Settled::Again => retried = true,
                Settled::Ended => {}
                // Not an outcome of a binding's death (there is no answer to pass on).
                Settled::Deliver(p) => {
                    let err = self.failure(Failure::Restarted, reason.to_string());
                    self.end_with(&sink, &p.client_id, &err).await;
                }
            }
        }
        if unexpected && !retried && self.has_standalone() && !self.is_closed() {
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.upstream(Some(generation)).await {
                    warn!(session_id = %me.id, error = %e, "restarting the upstream for an open stream failed; the next request retries");
                }
            });
        }
    }

    /// The one loss path for a request whose binding died with it, or whose answer says the
    /// upstream did not serve it: the recovery policy decides, and its fate is carried out.
    /// `stale` names the binding it was lost with, when that binding is gone; `detail` is what
    /// a failure says.
    async fn lose(
        self: &Arc<Self>,
        gid: u64,
        mut p: Pending,
        sink: Sink,
        loss: Loss,
        stale: Option<u64>,
        detail: &str,
    ) -> Settled {
        match recovery::decide(self.facts(&p), loss) {
            Fate::Resend => self.spawn_dispatch(gid, p, sink, stale),
            Fate::Retry => {
                if loss == Loss::RemoteRestarted {
                    info!(session_id = %self.id, method = %p.method, class = "transport_error", retry = true, "upstream restarted with the request in flight");
                }
                p.attempts += 1;
                self.deps.stats.requests_retried.inc();
                self.spawn_dispatch(gid, p, sink, stale);
            }
            Fate::Reopen => {
                let Some(up) = self.current() else { return Settled::Deliver(Box::new(p)) };
                // The upstream did not process it: it forgot our session. Revive and send again.
                info!(session_id = %self.id, method = %p.method, "upstream answered with a session error; reviving");
                p.attempts += 1;
                let generation = p.generation;
                up.mark_lost();
                self.spawn_dispatch(gid, p, sink, Some(generation));
            }
            // The tool's annotations are not known yet: learn them from the revived upstream.
            Fate::LearnTools => {
                let stale = stale.unwrap_or(p.generation);
                self.spawn_decide_after_revive(gid, p, sink, stale);
            }
            Fate::Deliver => {
                if loss == Loss::RemoteRestarted {
                    info!(session_id = %self.id, method = %p.method, class = "transport_error", retry = false, "upstream restarted with the request in flight");
                }
                return Settled::Deliver(Box::new(p));
            }
            Fate::Fail(failure) => {
                let err = self.failure(failure, detail.to_owned());
                self.end_with(&sink, &p.client_id, &err).await;
                return Settled::Ended;
            }
        }
        Settled::Again
    }

    /// For a `tools/call` whose tool annotations were never seen: revive, list the tools, and
    /// retry the call if its tool turns out read-only or idempotent; otherwise the client gets
    /// "upstream restarted".
    fn spawn_decide_after_revive(self: &Arc<Self>, gid: u64, mut p: Pending, sink: Sink, stale: u64) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut reason = String::from("the upstream restarted");
            match me.upstream(Some(stale)).await {
                Ok(up) => {
                    if let Ok(list) = me.internal_request(&up, method::TOOLS_LIST, None).await {
                        me.learn_from_list(method::TOOLS_LIST, &list);
                    }
                    let params = p.upstream_msg.as_ref().and_then(|m| m.params().map(ToOwned::to_owned));
                    p.retry_safe = me.is_retry_safe(&p.method, params.as_deref());
                    if recovery::decide(me.facts(&p), Loss::InFlight) == Fate::Retry {
                        p.attempts += 1;
                        me.deps.stats.requests_retried.inc();
                        let client_id = p.client_id.clone();
                        if let Err(e) = me.dispatch(gid, p, Some(stale)).await {
                            me.end_with(&sink, &client_id, &e).await;
                        }
                        return;
                    }
                }
                Err(e) => reason = e.to_string(),
            }
            let err = me.failure(Failure::Restarted, reason);
            me.end_with(&sink, &p.client_id, &err).await;
        });
    }

    /// Sends a request again on a revived binding, in the background; its client hears the
    /// outcome on `sink`.
    fn spawn_dispatch(self: &Arc<Self>, gid: u64, p: Pending, sink: Sink, stale: Option<u64>) {
        let me = self.clone();
        let client_id = p.client_id.clone();
        tokio::spawn(async move {
            if let Err(e) = me.dispatch(gid, p, stale).await {
                me.end_with(&sink, &client_id, &e).await;
            }
        });
    }
}
