//! Where upstream messages go: answers to the request they answer, server→client requests and
//! notifications to the stream they belong to, and what a dead connection leaves behind.

use bytes::Bytes;
use serde_json::value::RawValue;
use tether_protocol::message::{numeric_id, string_id};
use tether_protocol::{Kind, Message, method, params, session_error};
use tracing::{debug, info, warn};

use super::actor::Waiter;
use super::record::intern;
use super::recovery::{self, Failure, Fate, Loss};
use super::{Binding, Internal, Pending, Reply, ServerRequest, Session, Sink, StateChange, is_answer, rewrite_param};
use crate::upstream::{Origin, QuitReason, UpstreamEvent};

/// `notifications/resources/updated` and the `notifications/*/list_changed` family.
fn is_change_notification(msg: &Message) -> bool {
    msg.method().is_some_and(|m| {
        m == method::NOTIFICATION_RESOURCES_UPDATED || (m.starts_with("notifications/") && m.ends_with("/list_changed"))
    })
}

/// What the loss path did with a request.
pub(super) enum Settled {
    /// It goes upstream again (after a revive, or once the tools are known).
    Again,
    /// It ended with an error on its stream.
    Ended,
    /// The upstream's own answer goes to the client.
    Deliver(Box<Pending>),
}

impl Session {
    /// One event of binding `generation` (the current one, or one the session let go of).
    pub(super) async fn on_event(&mut self, generation: u64, ev: UpstreamEvent) {
        match ev {
            UpstreamEvent::Message(origin, msg) => self.route(generation, origin, msg).await,
            UpstreamEvent::Closed(reason, undelivered) => {
                if let Binding::Up { up, events } = &mut self.binding
                    && up.generation() == generation
                {
                    *events = None;
                }
                self.on_closed(generation, reason, &undelivered).await;
            }
        }
    }

    async fn route(&mut self, generation: u64, origin: Origin, mut msg: Message) {
        if is_answer(&msg) {
            return self.route_answer(msg).await;
        }
        if msg.kind() == Kind::Request {
            if msg.is(method::PING) {
                // The gateway holds the connection, so the gateway answers the upstream's pings.
                return self.answer_ping(generation, &msg).await;
            }
            self.server_seq += 1;
            let client_id = format!("tether-{}", self.server_seq);
            let upstream_id = msg.id().map(ToOwned::to_owned).unwrap_or_else(|| numeric_id(0));
            self.routes.server_requests.insert(format!("\"{client_id}\""), ServerRequest { upstream_id, generation });
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
                let client_id = self
                    .routes
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

    async fn route_answer(&mut self, msg: Message) {
        let Some(gid) = msg.numeric_id() else {
            debug!("upstream answer with an id tether did not issue; dropped");
            return;
        };
        let Some(p) = self.routes.pending.remove(&gid) else {
            debug!(gid, "answer to a request no longer waiting; dropped");
            return;
        };
        let sink = match p.reply {
            Reply::Internal(i) => {
                self.internal_in_flight = self.internal_in_flight.saturating_sub(1);
                return self.internal_answered(i, msg).await;
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
    async fn answer_client(&mut self, p: Pending, sink: Sink, mut msg: Message) {
        if msg.kind() == Kind::Response {
            self.apply_success(&p, &msg).await;
            self.learn_from_list(&p.method, &msg);
        }
        msg.set_id(p.client_id);
        if !self.emit(&sink, Bytes::from(msg.to_bytes()), true, None).await {
            debug!(method = %p.method, "the client's stream closed before its answer");
        }
    }

    /// Remembers what list answers say: which tools are safe to retry, and a digest of each
    /// list for telling the client about changes across a revive.
    pub(super) fn learn_from_list(&mut self, list_method: &str, msg: &Message) {
        let Some(kind) = method::list_kind(list_method) else { return };
        let Some(kind) = super::replay::LIST_KINDS.iter().find(|k| **k == kind) else { return };
        let Some(result) = msg.result() else { return };
        self.list_digests.insert(kind, super::replay::digest(result.get()));
        if *kind == "tools" {
            let safe = params::safe_tools(result);
            self.safe_tools.extend(safe);
        }
    }

    /// Records what a successful answer changes in the session: the handshake, the log level,
    /// subscriptions.
    async fn apply_success(&mut self, p: &Pending, msg: &Message) {
        if p.method == method::INITIALIZE {
            let result = msg.result().map(ToOwned::to_owned);
            let version = msg.result().and_then(params::protocol_version);
            {
                let r = &mut self.record;
                r.client_init = p.init_params.as_deref().map(intern);
                r.upstream_init = result.as_deref().map(intern);
                r.protocol_version.clone_from(&version);
            }
            if let Some(up) = self.current() {
                if let Some(v) = &version {
                    up.set_protocol_version(v);
                }
                // A legacy SSE client's one stream is open before the upstream session exists.
                if self.routes.standalone.is_some() {
                    up.open_standalone();
                }
            }
            self.publish();
            self.store_handshake().await;
            info!(protocol_version = ?version, "session initialized");
            return;
        }
        let Some(change) = &p.state_change else {
            return;
        };
        let r = &mut self.record;
        match change {
            StateChange::SetLevel(l) => r.state.log_level = Some(l.clone()),
            StateChange::Subscribe(u) => {
                r.state.subscriptions.insert(u.clone());
            }
            StateChange::Unsubscribe(u) => {
                r.state.subscriptions.remove(u);
            }
        }
        let state = r.state.clone();
        self.publish();
        self.store_state(state).await;
    }

    async fn answer_ping(&mut self, generation: u64, msg: &Message) {
        let Some(id) = msg.id() else { return };
        if let Some(up) = self.current().filter(|u| u.generation() == generation).cloned() {
            let empty = RawValue::from_string("{}".to_owned()).ok();
            if let Some(empty) = empty {
                self.send_quiet(&up, Message::response(id, &empty)).await;
            }
        }
    }

    /// Picks the stream for a message that is not an answer. A message on a request's own
    /// upstream stream, or carrying a request's progress token, goes with that request; other
    /// messages from a channel that does not say (stdio) go to the newest request still
    /// waiting, since servers emit them while serving it; then the standalone stream.
    pub(super) fn target(&self, origin: Origin, progress_token: Option<&str>) -> Option<Sink> {
        let r = &self.routes;
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

    pub(super) async fn deliver(&mut self, target: Option<Sink>, msg: Message) {
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
        let r = &mut self.routes;
        if r.backlog.len() >= self.deps.config.backlog {
            r.backlog.pop_front();
            warn!("no client stream for server messages; the oldest queued one was dropped");
        }
        r.backlog.push_back(data);
    }

    /// A binding ended: every request it carried ends too, with an error saying so, unless
    /// repeating it is safe, in which case it is sent again on a revived binding. A session
    /// whose client listens on a standalone stream is revived at once.
    async fn on_closed(&mut self, generation: u64, reason: QuitReason, undelivered: &[u64]) {
        self.routes.server_requests.retain(|_, sr| sr.generation != generation);
        // A request a task is still sending is settled by the send's outcome (`Session::sent`),
        // which must know whether the binding's end said it was never read.
        for (gid, p) in self.routes.pending.iter_mut() {
            if p.generation == generation && p.sending && undelivered.contains(gid) {
                p.ended_unread = true;
            }
        }
        let gids: Vec<u64> = self
            .routes
            .pending
            .iter()
            .filter(|(_, p)| p.generation == generation && !p.sending)
            .map(|(g, _)| *g)
            .collect();
        let orphans: Vec<(u64, Pending)> =
            gids.iter().filter_map(|g| self.routes.pending.remove(g).map(|p| (*g, p))).collect();
        let unexpected = reason != QuitReason::Closed;
        // A binding whose revive failed was never in service: its failure is counted there.
        let was_serving = self.current().is_some_and(|u| u.generation() == generation);
        if unexpected && was_serving {
            self.binding_died();
            self.note_gone(super::inspect::loss_cause(&reason));
        }
        if unexpected {
            info!(upstream = self.deps.spec.kind(), generation, reason = %reason, in_flight = orphans.len(), "upstream connection lost");
            self.note_error(format_args!("upstream connection lost: {reason}"));
        }
        let mut retried = false;
        for (gid, p) in orphans {
            let sink = match p.reply {
                Reply::Client(ref sink) => sink.clone(),
                Reply::Internal(i) => {
                    self.internal_in_flight = self.internal_in_flight.saturating_sub(1);
                    self.internal_failed(i, &format!("the upstream went away: {reason}")).await;
                    continue;
                }
            };
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
        if unexpected && !retried && self.routes.standalone.is_some() && !self.closed {
            match self.ready(Some(generation), true) {
                Ok(Some(_)) => {}
                Ok(None) => self.waiting.push(Waiter::Standalone),
                Err(e) => {
                    warn!(error = %e, "restarting the upstream for an open stream failed; the next request retries");
                }
            }
        }
        self.publish();
    }

    /// The one loss path for a request whose binding died with it, or whose answer says the
    /// upstream did not serve it: the recovery policy decides, and its fate is carried out.
    /// `stale` names the binding it was lost with, when that binding is gone; `detail` is what
    /// a failure says.
    pub(super) async fn lose(
        &mut self,
        gid: u64,
        mut p: Pending,
        sink: Sink,
        loss: Loss,
        stale: Option<u64>,
        detail: &str,
    ) -> Settled {
        match recovery::decide(self.facts(&p), loss) {
            Fate::Resend => Box::pin(self.dispatch(gid, p, stale)).await,
            Fate::Retry => {
                if loss == Loss::RemoteRestarted {
                    info!(method = %p.method, class = "transport_error", retry = true, "upstream restarted with the request in flight");
                }
                p.attempts += 1;
                self.deps.stats.requests_retried.inc();
                Box::pin(self.dispatch(gid, p, stale)).await;
            }
            Fate::Reopen => {
                let Some(up) = self.current() else { return Settled::Deliver(Box::new(p)) };
                // The upstream did not process it: it forgot our session. Revive and send again.
                info!(method = %p.method, "upstream answered with a session error; reviving");
                p.attempts += 1;
                let generation = p.generation;
                up.mark_lost();
                Box::pin(self.dispatch(gid, p, Some(generation))).await;
            }
            // The tool's annotations are not known yet: learn them from the revived upstream,
            // then decide.
            Fate::LearnTools => {
                let stale = stale.unwrap_or(p.generation);
                let cont = Internal::LearnTools { gid, call: Box::new(p) };
                Box::pin(self.internal(method::TOOLS_LIST.to_owned(), None, cont, Some(stale))).await;
            }
            Fate::Deliver => {
                if loss == Loss::RemoteRestarted {
                    info!(method = %p.method, class = "transport_error", retry = false, "upstream restarted with the request in flight");
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
}
