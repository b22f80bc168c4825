//! Streamable HTTP at `/mcp` (2025-03-26 … 2025-11-25): POST carries client messages and is
//! answered with JSON or an SSE stream; GET opens the standalone stream; DELETE ends the
//! session. A request carrying the 2026-07-28 envelope goes to `super::modern`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use std::time::Duration;
use tether_protocol::method;
use tether_protocol::{Kind, Message};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, info, warn};

use super::front_door::SessionRef;
use super::guard::{self, Accept};
use super::stream::{End, Pump, sse_response};
use super::{AppState, error_response, json_response};
use crate::error::GatewayError;
use crate::session::record::{CloseReason, Transport};
use crate::session::store::Replay;
use crate::session::{Outbound, SessionHandle, Sink, StreamKind, event_id, parse_event_id, parse_stream_key};
use crate::stats::{Outcome, RequestProbe};

const SESSION_HEADER: &str = "mcp-session-id";

/// POST /mcp
pub async fn post(State(app): State<AppState>, sref: SessionRef, headers: HeaderMap, body: Body) -> Response {
    let probe = app.manager.deps().stats.probe();
    match post_inner(&app, &sref, &headers, body, &probe).await {
        Ok(r) => r,
        Err((e, id)) => {
            probe.failed(&e);
            error_response(&e, id.as_deref())
        }
    }
}

type Failed = (GatewayError, Option<Box<RawValue>>);

async fn post_inner(
    app: &AppState,
    sref: &SessionRef,
    headers: &HeaderMap,
    body: Body,
    probe: &Arc<RequestProbe>,
) -> Result<Response, Failed> {
    let no_id = |e: GatewayError| (e, None);
    guard::content_type(headers).map_err(no_id)?;
    let accept = guard::accept_for_post(headers).map_err(no_id)?;
    let bytes = guard::body(body, headers, app.front.max_body, app.front.body_timeout).await.map_err(no_id)?;
    let msg = Message::parse(&bytes).map_err(|e| no_id(e.into()))?;
    probe.classify(&msg);
    let id = msg.id().map(ToOwned::to_owned);
    let with_id = |e: GatewayError| (e, id.clone());

    // Classified per request, body first: the 2026-07-28 envelope makes it modern.
    if super::modern::is_modern(&msg, headers) {
        return super::modern::post(app, sref, headers, msg, accept, probe).await;
    }
    if sref.id(Transport::StreamableHttp).is_none() {
        if msg.kind() == Kind::Request && msg.is(method::INITIALIZE) {
            return initialize(app, sref, msg, accept, probe).await.map_err(with_id);
        }
        return Err(with_id(GatewayError::MissingSessionId));
    }
    if msg.kind() == Kind::Request && msg.is(method::INITIALIZE) {
        // A client starting over while still holding an old id gets a new session.
        return initialize(app, sref, msg, accept, probe).await.map_err(with_id);
    }
    guard::protocol_version(headers).map_err(with_id)?;
    let session = sref.resolve(app, Transport::StreamableHttp).await.map_err(with_id)?;
    match msg.kind() {
        Kind::Request => Ok(forward(app, session, msg, accept, probe).await),
        Kind::Notification => {
            session.notify(msg).await.map_err(with_id)?;
            probe.settle(Outcome::Ok);
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Kind::Response | Kind::Error => {
            session.answer(msg).await.map_err(with_id)?;
            probe.settle(Outcome::Ok);
            Ok(StatusCode::ACCEPTED.into_response())
        }
    }
}

/// `initialize` opens a session: tether issues the id and starts the upstream side.
async fn initialize(
    app: &AppState,
    sref: &SessionRef,
    msg: Message,
    accept: Accept,
    probe: &Arc<RequestProbe>,
) -> Result<Response, GatewayError> {
    let session = sref.create(app, Transport::StreamableHttp).await?;
    let span = tracing::info_span!("request", session_id = %session.id(), method = method::INITIALIZE);
    // Numbered by the session when the request reaches it.
    let (sink, mut rx) = Sink::channel(0, StreamKind::Json);
    let sink = sink.probed(probe.clone());
    let answer = async {
        let gid = session.request(msg, sink).await?;
        let deadline = Instant::now() + session.config().request_timeout;
        answer_of(&session, &mut rx, gid, deadline)
            .await
            .ok_or_else(|| GatewayError::UpstreamUnavailable("the session ended during initialize".into()))
    }
    .instrument(span)
    .await;
    let out = match answer {
        Ok(o) => o,
        Err(e) => {
            app.manager.close(session.id(), CloseReason::UpstreamFailed).await;
            return Err(e);
        }
    };
    let ok = Message::parse(&out.data).is_ok_and(|m| m.kind() == Kind::Response);
    if !ok {
        // The upstream refused or could not start: no session is left behind.
        app.manager.close(session.id(), CloseReason::UpstreamFailed).await;
        let status = StatusCode::from_u16(out.status.unwrap_or(200)).unwrap_or(StatusCode::OK);
        return Ok(json_response(status, out.data.to_vec()));
    }
    let sid = HeaderValue::from_str(session.id()).map_err(|_| GatewayError::Store("bad session id".into()))?;
    if accept.json {
        let mut r = json_response(StatusCode::OK, out.data.to_vec());
        r.headers_mut().insert(SESSION_HEADER, sid);
        return Ok(r);
    }
    // A client that accepts only SSE gets the answer as a one-event stream.
    let (tx, resp) = sse_response(Some((SESSION_HEADER, session.id().to_owned())));
    let pump = pump(app, &session, tx, false);
    tokio::spawn(async move {
        pump.event(None, &out.data).await;
    });
    Ok(resp)
}

/// Waits for the answer on a JSON stream; at the deadline the request is timed out and its
/// error becomes the answer.
async fn answer_of(
    session: &SessionHandle,
    rx: &mut mpsc::Receiver<Outbound>,
    gid: u64,
    deadline: Instant,
) -> Option<Outbound> {
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(o)) if o.fin => return Some(o),
            Ok(Some(_)) => continue,
            Ok(None) => return None,
            Err(_) => {
                session.time_out(gid).await;
                return tokio::time::timeout(Duration::from_secs(1), rx.recv()).await.ok().flatten();
            }
        }
    }
}

fn pump(app: &AppState, session: &SessionHandle, out: mpsc::Sender<Bytes>, request_stream: bool) -> Pump {
    Pump {
        session: session.clone(),
        legacy: false,
        keepalive: session.config().keepalive,
        // Request streams run to their answer during a drain; standalone streams end at once.
        stop: if request_stream { app.hard_stop.clone() } else { app.shutdown.clone() },
        out,
        replayed_upto: 0,
    }
}

/// Forwards a request and answers with its response: as an SSE stream when the client accepts
/// one (related notifications and server requests then travel with it), else as JSON.
async fn forward(
    app: &AppState,
    session: SessionHandle,
    msg: Message,
    accept: Accept,
    probe: &Arc<RequestProbe>,
) -> Response {
    let method = msg.method().unwrap_or_default().to_owned();
    let client_id = msg.id().map(ToOwned::to_owned);
    let span = tracing::info_span!(
        "request",
        session_id = %session.id(),
        method = %method,
        request_id = %client_id.as_deref().map(RawValue::get).unwrap_or(""),
    );
    let kind = if accept.sse { StreamKind::Request } else { StreamKind::Json };
    // Numbered by the session, which takes the priming event id before the request goes
    // upstream: a fast answer is emitted while this handler still runs, and its position must
    // come after the priming event's, or a client resuming from the priming id would never
    // get it.
    let (sink, mut rx) = Sink::channel(0, kind);
    let sink = sink.for_request(client_id.as_deref());
    let sink = sink.probed(probe.clone());
    let (gid, priming) = match session.open_request(msg, sink, accept.sse).instrument(span.clone()).await {
        Ok(a) => (a.gid, a.priming.unwrap_or_default()),
        Err(e) => {
            probe.failed(&e);
            return error_response(&e, client_id.as_deref());
        }
    };
    let deadline = Instant::now() + session.config().request_timeout;

    if !accept.sse {
        return match answer_of(&session, &mut rx, gid, deadline).instrument(span).await {
            Some(o) => json_response(StatusCode::OK, o.data.to_vec()),
            None => cancelled(client_id.as_deref()),
        };
    }

    let (tx, resp) = sse_response(None);
    let pump = pump(app, &session, tx, true);
    // The priming event is in the body before the response is returned, so that it leaves in
    // the same write as the headers. Written by the task below, it could follow them a moment
    // later, and a stream cut in between is one the client sees open but cannot resume: it has
    // no event id, and the TypeScript SDK resumes a POST's stream only after one (its call then
    // waits out its own timeout). The channel is new and empty: this send does not wait.
    if !pump.prime(&priming).await {
        return resp;
    }
    tokio::spawn(
        async move {
            if pump.run(&mut rx, true, Some(deadline)).await == End::Deadline && session.time_out(gid).await {
                pump.run(&mut rx, true, Some(Instant::now() + Duration::from_secs(1))).await;
            }
        }
        .instrument(span),
    );
    resp
}

fn cancelled(id: Option<&RawValue>) -> Response {
    let e = GatewayError::RequestCancelled;
    json_response(e.wire().status, e.to_message(id).to_bytes())
}

/// GET /mcp — the standalone stream for server-initiated messages, or, with `Last-Event-ID`,
/// the resumption of an earlier stream: a request stream still waiting continues here; a
/// finished one is replayed and ends; the standalone stream is replayed and continues. A
/// cursor older than retention resumes from now, with a warning.
pub async fn get(State(app): State<AppState>, sref: SessionRef, headers: HeaderMap) -> Response {
    if super::modern::header_is_modern(&headers) {
        return modern_not_allowed();
    }
    let session = match stream_session(&app, &sref, &headers).await {
        Ok(s) => s,
        Err(e) => return error_response(&e, None),
    };
    let span = tracing::info_span!("stream", session_id = %session.id());
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(last) = last {
        return resume(&app, session, &last).instrument(span).await;
    }
    let _entered = span.enter();
    fresh_standalone(&app, session).await
}

/// Runs a standalone stream: priming, the backlog, then live messages.
async fn standalone(
    pump: Pump,
    sink: Sink,
    mut rx: mpsc::Receiver<Outbound>,
    backlog: Vec<Bytes>,
    priming: Option<String>,
) {
    let session = pump.session.clone();
    let ok = match &priming {
        Some(id) => pump.prime(id).await,
        None => true,
    };
    if ok {
        // Queued while no stream was open: delivered now as stored, id-bearing events, while
        // the stream is read (a backlog longer than the stream's buffer must not wait on it).
        let backlog = async {
            for m in backlog {
                if !session.emit(&sink, m, false, None).await {
                    break;
                }
            }
        };
        tokio::join!(backlog, pump.run(&mut rx, false, None));
    }
    session.detach_standalone(sink.stream);
}

async fn resume(app: &AppState, session: SessionHandle, last: &str) -> Response {
    let Some((key, after)) = parse_event_id(last) else {
        warn!(session_id = %session.id(), last_event_id = %last, "Last-Event-ID not issued by tether; resuming from now");
        return fresh_standalone(app, session).await;
    };
    let parsed = parse_stream_key(key);
    let (was_standalone, local) = (parsed.standalone, parsed.local);
    // A stream that lives in this process is attached before the replay, so that nothing
    // emitted meanwhile is missed; what both paths carry is written once (by position).
    let mut live = None;
    let mut backlog = Vec::new();
    if let Some(n) = local {
        if was_standalone {
            let (sink, rx) = Sink::channel(n, StreamKind::Standalone);
            backlog = session.attach_standalone(sink.clone()).await;
            live = Some((sink, rx));
        } else {
            let (sink, rx) = Sink::channel(n, StreamKind::Request);
            let sink = sink.for_request_key(&parsed);
            if session.reattach_request(n, sink.clone()).await {
                live = Some((sink, rx));
            }
        }
    }
    let events = match session.replay(key, after).await {
        Ok(Replay::Events(events)) => events,
        // A request stream whose answer has not come yet has stored nothing after its priming;
        // neither has one whose tether stopped before the answer came.
        Ok(Replay::Gone) if live.is_some() || (!was_standalone && parsed.request_id().is_some()) => Vec::new(),
        Ok(Replay::Gone) => {
            warn!(session_id = %session.id(), last_event_id = %last, "Last-Event-ID is older than retention; resuming from now");
            return fresh_standalone(app, session).await;
        }
        Err(e) => return error_response(&e, None),
    };
    info!(session_id = %session.id(), last_event_id = %last, replayed = events.len(), "stream resumed");
    let key = key.to_owned();
    let (tx, resp) = sse_response(None);
    let mut pump = pump(app, &session, tx, !was_standalone);
    if live.is_some() {
        pump.replayed_upto = events.last().map_or(after, |e| e.seq);
    }
    tokio::spawn(async move {
        for e in &events {
            if !pump.event(Some(&event_id(&key, e.seq)), &e.data).await {
                return;
            }
        }
        match live {
            Some((sink, rx)) if was_standalone => standalone(pump, sink, rx, backlog, None).await,
            Some((_, mut rx)) if !events.iter().any(|e| e.fin) => {
                let deadline = Instant::now() + session.config().request_timeout;
                pump.run(&mut rx, true, Some(deadline)).await;
            }
            Some(_) => {}
            // The standalone stream of an earlier run of tether continues as this run's.
            None if was_standalone => {
                let (sink, rx) = Sink::channel(session.next_stream().await, StreamKind::Standalone);
                let backlog = session.attach_standalone(sink.clone()).await;
                standalone(pump, sink, rx, backlog, None).await;
            }
            // A request stream of an earlier run whose answer never came (tether stopped first):
            // the request is answered now with the documented error, so the client does not
            // wait out its own timeout.
            None => {
                let unanswered = local.is_none() && !events.iter().any(|e| e.fin);
                if let Some(id) = parsed.request_id().filter(|_| unanswered) {
                    let err =
                        GatewayError::UpstreamRestarted("tether restarted while the request was in flight".into());
                    pump.event(None, &err.to_message(Some(&id)).to_bytes()).await;
                }
            }
        }
    });
    resp
}

async fn fresh_standalone(app: &AppState, session: SessionHandle) -> Response {
    let (sink, rx) = Sink::channel(session.next_stream().await, StreamKind::Standalone);
    // Before the stream is attached, so that everything it carries comes after it.
    let priming = session.next_event_id(&sink).await;
    let backlog = session.attach_standalone(sink.clone()).await;
    let (tx, resp) = sse_response(None);
    let pump = pump(app, &session, tx, false);
    tokio::spawn(standalone(pump, sink, rx, backlog, Some(priming)).in_current_span());
    resp
}

async fn stream_session(app: &AppState, sref: &SessionRef, headers: &HeaderMap) -> Result<SessionHandle, GatewayError> {
    guard::accept_for_stream(headers)?;
    sref.id(Transport::StreamableHttp).ok_or(GatewayError::MissingSessionId)?;
    guard::protocol_version(headers)?;
    sref.resolve(app, Transport::StreamableHttp).await
}

/// DELETE /mcp — the client ends its session; the upstream side closes with it.
pub async fn delete(State(app): State<AppState>, sref: SessionRef, headers: HeaderMap) -> Response {
    if super::modern::header_is_modern(&headers) {
        return modern_not_allowed();
    }
    let run = async {
        let session = sref.resolve(&app, Transport::StreamableHttp).await?;
        app.manager.close(session.id(), CloseReason::ClientClosed).await;
        Ok(StatusCode::OK.into_response())
    };
    run.await.unwrap_or_else(|e| error_response(&e, None))
}

/// GET and DELETE are not part of 2026-07-28: only POST is allowed to its clients.
fn modern_not_allowed() -> Response {
    let mut r = error_response(&GatewayError::MethodNotAllowed, None);
    r.headers_mut().insert(axum::http::header::ALLOW, HeaderValue::from_static("POST"));
    r
}
