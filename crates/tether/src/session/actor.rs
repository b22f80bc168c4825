//! The session's task: one loop owns the session's state and takes, one at a time, the
//! commands of its handles, the events of its upstream binding, and the reports of the tasks it
//! spawns (a revive, an HTTP send, the events of a binding it let go). Nothing else touches the
//! state, so there is no lock; what must never wait (a revive, an HTTP upstream's POST) runs in
//! a task of its own and reports back here.

use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tether_protocol::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::handle::Snapshot;
use super::record::SessionRecord;
use super::revive::Revived;
use super::store::Activity;
use super::{Acceptance, Accepted, Binding, Internal, Pending, Session, Sink};
use crate::error::GatewayError;
use crate::upstream::{SendError, Upstream, UpstreamEvent};

/// Commands waiting in a session's inbox before senders wait.
pub(super) const INBOX: usize = 64;

/// The session's inbox. Commands are boxed, so that the channel's first block (allocated with
/// every session, idle or not) stays a few hundred bytes.
pub(super) type Inbox = mpsc::Sender<Box<Command>>;

/// What a session is asked to do.
pub(crate) enum Command {
    /// A client request; `accepted` hears once it went upstream (or why it cannot), its
    /// answer goes to `sink`. A sink numbered 0 gets the session's next stream number; with
    /// `prime`, its stream's priming event id is taken before the request goes upstream.
    Request { msg: Message, sink: Sink, prime: bool, accepted: oneshot::Sender<Result<Accepted, GatewayError>> },
    /// A client notification.
    Notify { msg: Message, done: oneshot::Sender<Result<(), GatewayError>> },
    /// The client's answer to a server→client request.
    Answer { msg: Message },
    /// A request ran out of time (false: its answer won the race).
    TimeOut { gid: u64, reply: oneshot::Sender<bool> },
    /// Ends client requests older than the request timeout.
    ExpireOverdue,
    /// A new stream number.
    NextStream { reply: oneshot::Sender<u64> },
    /// A fresh, unstored event id on a sink's stream (priming events).
    EventId { sink: Sink, reply: oneshot::Sender<String> },
    /// One message for a client stream.
    Emit { sink: Sink, data: Bytes, fin: bool, status: Option<u16>, reply: oneshot::Sender<bool> },
    /// Opens the standalone stream; the reply is what was queued for it.
    AttachStandalone { sink: Sink, reply: oneshot::Sender<Vec<Bytes>> },
    /// Forgets the standalone stream `stream` if it is still the current one.
    DetachStandalone { stream: u64 },
    /// The standalone stream's sink.
    StandaloneSink { reply: oneshot::Sender<Option<Sink>> },
    /// Moves a waiting request onto a resumed stream.
    Reattach { stream: u64, sink: Sink, reply: oneshot::Sender<bool> },
    /// An operator's refresh.
    Refresh { reply: oneshot::Sender<Result<Option<u64>, GatewayError>> },
    /// Everything an operator sees.
    Inspect { reply: oneshot::Sender<Snapshot> },
    /// Client requests waiting for their answer.
    PendingCount { reply: oneshot::Sender<usize> },
    /// The record as it is now.
    Record { reply: oneshot::Sender<SessionRecord> },
    /// The activity not yet written; an open standalone stream counts as activity when the
    /// last is `refresh_ms` old.
    TakeActivity { refresh_ms: u64, reply: oneshot::Sender<Option<Activity>> },
    /// Lets the binding go if it is unused for `idle` and nothing waits on it; the caller
    /// closes what it gets.
    ReleaseIfIdle { idle: Duration, reply: oneshot::Sender<Option<Upstream>> },
    /// Lets the binding go (gateway shutdown); the caller closes it.
    Release { reply: oneshot::Sender<Option<Upstream>> },
    /// Ends the session's live side; the caller closes the binding it gets. `moved`: the
    /// session lives on elsewhere (cluster mode), so what was in flight may or may not have run.
    Shutdown { moved: bool, reply: oneshot::Sender<Option<Upstream>> },
    /// Hibernates the session if it has had no binding, stream or request for `after`: the
    /// reply carries its unwritten activity and the manager's decision channel, which the task
    /// waits on (nothing else runs meanwhile); `true` ends the task.
    Hibernate { after: Duration, reply: oneshot::Sender<Option<(Activity, oneshot::Sender<bool>)>> },
    /// A revive task's outcome.
    Revived(Revived),
    /// How a request the session sent from a task (an HTTP upstream's POST) went.
    Sent { gid: u64, generation: u64, result: Result<(), SendError>, accepted: Option<Acceptance> },
    /// An event of a binding the session has let go of (it settles what was in flight there).
    Event { generation: u64, event: UpstreamEvent },
}

/// Work waiting for a binding.
pub(super) enum Waiter {
    Request {
        gid: u64,
        p: Pending,
    },
    Notify {
        msg: Message,
        done: oneshot::Sender<Result<(), GatewayError>>,
    },
    Refresh(oneshot::Sender<Result<Option<u64>, GatewayError>>),
    Internal {
        method: String,
        params: Option<Box<RawValue>>,
        cont: Internal,
    },
    /// A revive for an open standalone stream: nothing more to do once it is back.
    Standalone,
}

enum Input {
    Command(Option<Box<Command>>),
    Event(u64, Option<UpstreamEvent>),
    Wake,
}

impl Session {
    /// The session's loop, until it is shut down or every handle is gone.
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Box<Command>>) {
        loop {
            let wake = self.next_wake();
            let input = {
                let events = match &mut self.binding {
                    Binding::Up { up, events: Some(rx) } => Some((up.generation(), rx)),
                    _ => None,
                };
                tokio::select! {
                    biased;
                    ev = async {
                        match events {
                            Some((g, rx)) => (g, rx.recv().await),
                            None => std::future::pending().await,
                        }
                    } => Input::Event(ev.0, ev.1),
                    cmd = rx.recv() => Input::Command(cmd),
                    () = async {
                        match wake {
                            Some(t) => tokio::time::sleep_until(t).await,
                            None => std::future::pending().await,
                        }
                    } => Input::Wake,
                }
            };
            match input {
                Input::Command(None) => break,
                Input::Command(Some(cmd)) => Box::pin(self.command(*cmd)).await,
                Input::Event(g, Some(ev)) => Box::pin(self.on_event(g, ev)).await,
                Input::Event(_, None) => {
                    if let Binding::Up { events, .. } = &mut self.binding {
                        *events = None;
                    }
                }
                Input::Wake => Box::pin(self.on_wake()).await,
            }
            if self.closed {
                break;
            }
        }
        if let Some(up) = self.retire(false) {
            super::spawn(async move { up.close().await });
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Request { msg, sink, prime, accepted } => self.request(msg, sink, prime, accepted).await,
            Command::Notify { msg, done } => self.notify(msg, done).await,
            Command::Answer { msg } => self.answer(msg).await,
            Command::TimeOut { gid, reply } => {
                let done = self.time_out(gid).await;
                let _ = reply.send(done);
            }
            Command::ExpireOverdue => self.expire_overdue().await,
            Command::NextStream { reply } => {
                let _ = reply.send(self.open_stream());
            }
            Command::EventId { sink, reply } => {
                let _ = reply.send(self.next_event_id(&sink));
            }
            Command::Emit { sink, data, fin, status, reply } => {
                let ok = self.emit(&sink, data, fin, status).await;
                let _ = reply.send(ok);
            }
            Command::AttachStandalone { sink, reply } => {
                let _ = reply.send(self.attach_standalone(sink));
            }
            Command::DetachStandalone { stream } => self.detach_standalone(stream),
            Command::StandaloneSink { reply } => {
                let _ = reply.send(self.routes.standalone.clone());
            }
            Command::Reattach { stream, sink, reply } => {
                let _ = reply.send(self.reattach_request(stream, sink));
            }
            Command::Refresh { reply } => self.refresh(reply),
            Command::Inspect { reply } => {
                let _ = reply.send(self.snapshot());
            }
            Command::PendingCount { reply } => {
                let _ = reply.send(self.pending_requests());
            }
            Command::Record { reply } => {
                let _ = reply.send(self.record.clone());
            }
            Command::TakeActivity { refresh_ms, reply } => {
                if self.routes.standalone.is_some() {
                    self.stream_activity(refresh_ms);
                }
                let _ = reply.send(self.take_activity());
            }
            Command::ReleaseIfIdle { idle, reply } => {
                let up = if self.upstream_idle_for(idle) { self.release("upstream_reaped") } else { None };
                let _ = reply.send(up);
            }
            Command::Release { reply } => {
                let _ = reply.send(self.release("upstream_reaped"));
            }
            Command::Shutdown { moved, reply } => {
                let up = self.shutdown(moved).await;
                let _ = reply.send(up);
            }
            Command::Hibernate { after, reply } => {
                if !self.may_hibernate(after) {
                    let _ = reply.send(None);
                    return;
                }
                let (decide, decision) = oneshot::channel();
                let activity = self.take_activity().unwrap_or_default();
                if reply.send(Some((activity, decide))).is_err() {
                    return;
                }
                if decision.await.unwrap_or(false) {
                    self.closed = true;
                    self.hibernated = true;
                } else {
                    // Not this time: the activity goes back to be written with the next batch.
                    self.activity = activity;
                }
            }
            Command::Revived(r) => self.revived(r).await,
            Command::Sent { gid, generation, result, accepted } => self.sent(gid, generation, result, accepted).await,
            Command::Event { generation, event } => self.on_event(generation, event).await,
        }
    }

    /// The next time the loop must look at the session without being asked: waiting requests
    /// retry an away upstream, or reach their deadline; tether's own requests time out.
    fn next_wake(&self) -> Option<Instant> {
        let mut at = self.retry_at;
        let timeout = self.deps.config.request_timeout;
        for w in &self.waiting {
            if let Waiter::Request { p, .. } = w {
                let d = p.started + timeout;
                at = Some(at.map_or(d, |a| a.min(d)));
            }
        }
        if self.internal_in_flight > 0 {
            let limit = super::revive::internal_timeout(&self.deps.config);
            for p in self.routes.pending.values() {
                if matches!(p.reply, super::Reply::Internal(_)) {
                    let d = p.started + limit;
                    at = Some(at.map_or(d, |a| a.min(d)));
                }
            }
        }
        at
    }

    async fn on_wake(&mut self) {
        let now = Instant::now();
        // Waiting requests past their deadline end with a timeout.
        let timeout = self.deps.config.request_timeout;
        let (overdue, keep): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| matches!(w, Waiter::Request { p, .. } if p.started + timeout <= now));
        self.waiting = keep;
        for w in overdue {
            if let Waiter::Request { p, .. } = w {
                self.refuse(p, GatewayError::UpstreamTimeout(timeout.as_secs())).await;
            }
        }
        self.expire_internal(now).await;
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.retry_waiting().await;
        }
    }

    /// Reports of this session's tasks come back through the inbox, unless the session is gone.
    pub(super) fn reporter(&self) -> Reporter {
        Reporter(self.inbox.clone())
    }
}

/// How a task the session spawned reports back.
#[derive(Clone)]
pub(super) struct Reporter(mpsc::WeakSender<Box<Command>>);

impl Reporter {
    /// Sends `cmd` to the session; false if it is gone.
    pub(super) async fn send(&self, cmd: Command) -> bool {
        self.send_or_return(cmd).await.is_ok()
    }

    /// Sends `cmd` to the session, or gives it back when the session is gone.
    pub(super) async fn send_or_return(&self, cmd: Command) -> Result<(), Command> {
        let Some(tx) = self.0.upgrade() else { return Err(cmd) };
        tx.send(Box::new(cmd)).await.map_err(|e| *e.0)
    }
}
