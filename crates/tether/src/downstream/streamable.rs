//! Streamable HTTP at `/mcp` (2025-03-26 … 2025-11-25): POST carries client messages and is
//! answered with JSON or an SSE stream; GET opens the standalone stream; DELETE ends the
//! session. A 2026-07-28 request is answered so that the client falls back to `initialize`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use tether_protocol::version::{self, MODERN_ENVELOPE_KEY};
use tether_protocol::{Kind, Message, error_code};
use tokio::time::Instant;
use tracing::Instrument;

use super::guard::{self, Accept};
use super::stream::{End, Pump, sse_response};
use super::{AppState, error_response, json_response};
use crate::error::GatewayError;
use crate::session::record::{CloseReason, Transport};
use crate::session::{Session, Sink};

const SESSION_HEADER: &str = "mcp-session-id";

/// POST /mcp
pub async fn post(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match post_inner(&app, &headers, body).await {
        Ok(r) => r,
        Err((e, id)) => error_response(&e, id.as_deref()),
    }
}

type Failed = (GatewayError, Option<Box<RawValue>>);

async fn post_inner(app: &AppState, headers: &HeaderMap, body: Body) -> Result<Response, Failed> {
    let no_id = |e: GatewayError| (e, None);
    app.front.check_origin_and_host(headers).map_err(no_id)?;
    guard::content_type(headers).map_err(no_id)?;
    let accept = guard::accept_for_post(headers).map_err(no_id)?;
    let bytes = guard::body(body, headers, app.front.max_body).await.map_err(no_id)?;
    let msg = Message::parse(&bytes).map_err(|e| no_id(e.into()))?;
    let id = msg.id().map(ToOwned::to_owned);
    let with_id = |e: GatewayError| (e, id.clone());

    let Some(sid) = guard::session_id(headers) else {
        if let Some(requested) = modern_request(&msg, headers) {
            return Err(with_id(GatewayError::ModernNotServed { requested }));
        }
        if msg.kind() == Kind::Request && msg.is("initialize") {
            return initialize(app, msg, accept).await.map_err(with_id);
        }
        return Err(with_id(GatewayError::MissingSessionId));
    };
    if msg.kind() == Kind::Request && msg.is("initialize") {
        // A client starting over while still holding an old id gets a new session.
        return initialize(app, msg, accept).await.map_err(with_id);
    }
    guard::protocol_version(headers).map_err(with_id)?;
    let session = app.manager.get(sid).await.map_err(with_id)?;
    if session.transport() != Transport::StreamableHttp {
        return Err(with_id(GatewayError::SessionNotFound));
    }
    match msg.kind() {
        Kind::Request => Ok(forward(app, session, msg, accept).await),
        Kind::Notification => {
            session.notify(msg).await.map_err(with_id)?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Kind::Response | Kind::Error => {
            session.answer(msg).await.map_err(with_id)?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
    }
}

/// The revision a 2026-07-28 (or later) request asks for: from its `_meta` envelope, or from a
/// modern `MCP-Protocol-Version` header on a request that is not `initialize`.
fn modern_request(msg: &Message, headers: &HeaderMap) -> Option<String> {
    #[derive(Deserialize)]
    struct P {
        #[serde(rename = "_meta")]
        meta: Option<serde_json::Map<String, serde_json::Value>>,
    }
    if msg.is("initialize") {
        return None;
    }
    if let Some(params) = msg.params()
        && params.get().contains(MODERN_ENVELOPE_KEY)
        && let Ok(p) = serde_json::from_str::<P>(params.get())
        && let Some(v) = p.meta.as_ref().and_then(|m| m.get(MODERN_ENVELOPE_KEY))
    {
        return Some(v.as_str().unwrap_or("").to_owned());
    }
    let header = headers.get("mcp-protocol-version").and_then(|v| v.to_str().ok())?;
    (version::era(header) != Some(version::Era::Handshake)).then(|| header.to_owned())
}

/// `initialize` opens a session: tether issues the id and starts the upstream side.
async fn initialize(app: &AppState, msg: Message, accept: Accept) -> Result<Response, GatewayError> {
    let session = app.manager.create(Transport::StreamableHttp).await?;
    let span = tracing::info_span!("request", session_id = %session.id(), method = "initialize");
    let stream = session.next_stream();
    let (sink, mut rx) = Sink::channel(stream, false);
    let answer = async {
        let gid = session.request(msg, sink).await?;
        let deadline = Instant::now() + session.config().request_timeout;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(o)) if o.fin => return Ok(o),
                Ok(Some(_)) => continue,
                Ok(None) => {
                    return Err(GatewayError::UpstreamUnavailable("the session ended during initialize".into()));
                }
                Err(_) => {
                    session.time_out(gid).await;
                    return Err(GatewayError::UpstreamTimeout(session.config().request_timeout.as_secs()));
                }
            }
        }
    }
    .instrument(span)
    .await;
    let failed = |e: GatewayError| async {
        app.manager.close(session.id(), CloseReason::UpstreamFailed).await;
        e
    };
    let out = match answer {
        Ok(o) => o,
        Err(e) => return Err(failed(e).await),
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
    let (tx, resp) = sse_response(Some((SESSION_HEADER, session.id().to_owned())));
    let pump = Pump {
        session: session.clone(),
        stream,
        legacy: false,
        keepalive: session.config().keepalive,
        shutdown: app.shutdown.clone(),
        out: tx,
    };
    tokio::spawn(async move {
        pump.message(&out.data).await;
    });
    Ok(resp)
}

/// Forwards a request and answers with its response: as an SSE stream when the client accepts
/// one (related notifications and server requests then travel with it), else as JSON.
async fn forward(app: &AppState, session: Arc<Session>, msg: Message, accept: Accept) -> Response {
    let method = msg.method().unwrap_or_default().to_owned();
    let client_id = msg.id().map(ToOwned::to_owned);
    let span = tracing::info_span!(
        "request",
        session_id = %session.id(),
        method = %method,
        request_id = %client_id.as_deref().map(RawValue::get).unwrap_or(""),
    );
    let stream = session.next_stream();
    let (sink, mut rx) = Sink::channel(stream, accept.sse);
    let gid = match session.request(msg, sink).instrument(span.clone()).await {
        Ok(g) => g,
        Err(e) => return error_response(&e, client_id.as_deref()),
    };
    let deadline = Instant::now() + session.config().request_timeout;

    if !accept.sse {
        let answer = async {
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(o)) if o.fin => return Some(o.data.to_vec()),
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(_) => return session.time_out(gid).await.map(|m| m.to_bytes()),
                }
            }
        }
        .instrument(span)
        .await;
        return match answer {
            Some(body) => json_response(StatusCode::OK, body),
            None => cancelled(client_id.as_deref()),
        };
    }

    let (tx, resp) = sse_response(None);
    let pump = Pump {
        session: session.clone(),
        stream,
        legacy: false,
        keepalive: session.config().keepalive,
        shutdown: app.shutdown.clone(),
        out: tx,
    };
    tokio::spawn(
        async move {
            if !pump.prime().await {
                return;
            }
            if pump.run(&mut rx, true, Some(deadline), None).await == End::Deadline
                && let Some(err) = session.time_out(gid).await
            {
                pump.message(&err.to_bytes()).await;
            }
        }
        .instrument(span),
    );
    resp
}

fn cancelled(id: Option<&RawValue>) -> Response {
    let m = Message::error(id, error_code::REQUEST_CANCELLED, "Request cancelled", None);
    json_response(StatusCode::OK, m.to_bytes())
}

/// GET /mcp — the standalone stream for server-initiated messages.
pub async fn get(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let session = match stream_session(&app, &headers).await {
        Ok(s) => s,
        Err(e) => return error_response(&e, None),
    };
    let stream = session.next_stream();
    let (sink, mut rx) = Sink::channel(stream, true);
    let backlog = session.attach_standalone(sink);
    let (tx, resp) = sse_response(None);
    let pump = Pump {
        session: session.clone(),
        stream,
        legacy: false,
        keepalive: session.config().keepalive,
        shutdown: app.shutdown.clone(),
        out: tx,
    };
    let span = tracing::info_span!("stream", session_id = %session.id(), stream);
    tokio::spawn(
        async move {
            if !pump.prime().await {
                session.detach_standalone(stream);
                return;
            }
            for m in backlog {
                if !pump.message(&m).await {
                    session.detach_standalone(stream);
                    return;
                }
            }
            pump.run(&mut rx, false, None, None).await;
            session.detach_standalone(stream);
        }
        .instrument(span),
    );
    resp
}

async fn stream_session(app: &AppState, headers: &HeaderMap) -> Result<Arc<Session>, GatewayError> {
    app.front.check_origin_and_host(headers)?;
    guard::accept_for_stream(headers)?;
    let sid = guard::session_id(headers).ok_or(GatewayError::MissingSessionId)?;
    guard::protocol_version(headers)?;
    let session = app.manager.get(sid).await?;
    if session.transport() != Transport::StreamableHttp {
        return Err(GatewayError::SessionNotFound);
    }
    Ok(session)
}

/// DELETE /mcp — the client ends its session; the upstream side closes with it.
pub async fn delete(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let run = async {
        app.front.check_origin_and_host(&headers)?;
        let sid = guard::session_id(&headers).ok_or(GatewayError::MissingSessionId)?;
        let session = app.manager.get(sid).await?;
        if session.transport() != Transport::StreamableHttp {
            return Err(GatewayError::SessionNotFound);
        }
        app.manager.close(sid, CloseReason::ClientClosed).await;
        Ok(StatusCode::OK.into_response())
    };
    run.await.unwrap_or_else(|e| error_response(&e, None))
}
