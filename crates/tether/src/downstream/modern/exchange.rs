//! One 2026-07-28 request served by a handshake-era binding: forwarded under a gateway-unique
//! id, answered as JSON (or as an SSE stream once a progress or log notification comes first),
//! its result made modern. A server→client request the upstream makes meanwhile ends the round
//! with `input_required`: the upstream leg is parked here, and the client's retry, with
//! `inputResponses` and the sealed `requestState`, answers it and continues. The client closing
//! the response (or the request's connection) cancels the request upstream.
//!
//! When the binding's upstream connection speaks 2026-07-28 itself, the request is forwarded
//! as the client sent it (envelope, `inputResponses`, `requestState`) and the server's answer
//! comes back as it gave it, `input_required` rounds included, keyed and batched by the server:
//! the client's retry carries the server's `requestState`, which tether cannot open and need
//! not, and goes through the binding as a fresh request. It still travels through the binding,
//! so a restart of the upstream is healed and a request that never reached it is sent again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tether_protocol::message::{raw_value, string_id};
use tether_protocol::modern::{self, Envelope};
use tether_protocol::{Kind, Message, error_code, method, params as wire_params, sse};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use super::Front;
use super::seal::Claims;
use crate::downstream::guard::Accept;
use crate::downstream::stream::sse_response;
use crate::downstream::{AppState, json_response};
use crate::error::GatewayError;
use crate::session::record::now_ms;
use crate::session::{Outbound, SessionHandle, Sink, StreamKind};
use crate::stats::{Outcome, RequestProbe};
use crate::upstream::era::Era;

/// The most upstream legs parked at once, waiting for a client's retry.
const MAX_PARKED: usize = 1024;
/// How long a parked leg waits for the retry (the `requestState`'s lifetime).
const ROUND_TTL: Duration = Duration::from_secs(600);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Upstream legs waiting for the client's `inputResponses`.
#[derive(Default)]
pub struct Parked {
    rounds: Mutex<HashMap<u64, Round>>,
}

struct Round {
    session: SessionHandle,
    rx: mpsc::Receiver<Outbound>,
    gid: u64,
    /// The id the request carries upstream (gateway-unique).
    unique: Box<RawValue>,
    /// The client-facing id of the upstream's request being waited on.
    asked: Box<RawValue>,
    /// Its key in `inputRequests`.
    key: String,
}

impl Parked {
    fn take(&self, handle: u64) -> Option<Round> {
        self.rounds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&handle)
    }

    fn put(&self, handle: u64, round: Round) -> Result<(), Round> {
        let mut r = self.rounds.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.len() >= MAX_PARKED {
            return Err(round);
        }
        r.insert(handle, round);
        Ok(())
    }
}

/// The digest a `requestState` is bound to: the method and its params without the round's own
/// fields and the envelope (a retry sends the same request with a fresh envelope).
fn request_digest(method_name: &str, params: &Value) -> String {
    let mut p = params.clone();
    if let Some(o) = p.as_object_mut() {
        for k in ["_meta", "inputResponses", "requestState"] {
            o.remove(k);
        }
    }
    let text = json!({ "m": method_name, "p": p }).to_string();
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

struct Ctx {
    front: Arc<Front>,
    session: SessionHandle,
    method: String,
    client_id: Box<RawValue>,
    unique: Box<RawValue>,
    gid: u64,
    env: Envelope,
    accept: Accept,
    digest: String,
    principal: String,
    probe: Arc<RequestProbe>,
    /// Sent as the client sent it to an upstream of its own era: answered as the server answers.
    forwarded: bool,
    keepalive: Duration,
    stop: tokio_util::sync::CancellationToken,
}

/// Serves one request (a first round, or a retry that carries `inputResponses`).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    app: &AppState,
    front: &Arc<Front>,
    session: SessionHandle,
    msg: Message,
    params: Value,
    env: Envelope,
    accept: Accept,
    principal: String,
    probe: Arc<RequestProbe>,
) -> Result<Response, GatewayError> {
    let method_name = msg.method().unwrap_or_default().to_owned();
    let client_id = msg.id().map(ToOwned::to_owned).unwrap_or_else(|| tether_protocol::message::numeric_id(0));
    let digest = request_digest(&method_name, &params);
    let state = params.get("requestState");
    let responses = params.get("inputResponses");
    // Decided now, from the connection the binding has: one that changes era before the
    // request reaches it strips the envelope, or refuses a stale round (`upstream::era`).
    let forwarded = session.upstream_era() == Some(Era::Modern);
    let sealed = state.and_then(Value::as_str).and_then(|t| front.sealer.open(t, &digest, &principal, now_ms()));
    let continuing = state.is_some() || responses.is_some();
    let (session, rx, gid, unique, forwarded) = if let Some(claims) = sealed.filter(|_| continuing) {
        // A round tether started (the binding's upstream was of the handshake era then).
        let round = front.parked.take(claims.handle).ok_or(GatewayError::InvalidRequestState)?;
        let answer = match responses.and_then(|r| r.get(&round.key)) {
            Some(v) => Message::response(&round.asked, &raw_value(v)),
            None => GatewayError::NoInputResponse.to_message(Some(&round.asked)),
        };
        round.session.answer(answer).await?;
        (round.session, round.rx, round.gid, round.unique, false)
    } else if continuing && !forwarded {
        // Not one of tether's (forged, expired, another's), and no server of the client's era
        // behind the binding that could have issued it.
        return Err(GatewayError::InvalidRequestState);
    } else {
        let unique = string_id(&format!("tether-m-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)));
        let mut upstream = msg;
        if !forwarded {
            if let Some(level) = &env.log_level {
                apply_log_level(&session, level).await;
            }
            let mut stripped = params.clone();
            if modern::strip_envelope(&mut stripped) {
                let name = upstream.method().unwrap_or_default().to_owned();
                let raw = raw_value(&stripped);
                upstream = Message::request(0, &name, stripped.is_object().then_some(&raw));
            }
        }
        upstream.set_id(unique.clone());
        // A stream that carries related messages, but is not resumed (2026-07-28 has no
        // resumption): no event is stored for it.
        let (sink, rx) = Sink::channel(0, StreamKind::Legacy);
        let gid = session.request(upstream, sink.probed(probe.clone())).await?;
        (session, rx, gid, unique, forwarded)
    };
    let ctx = Ctx {
        front: front.clone(),
        keepalive: session.config().keepalive,
        session,
        method: method_name,
        client_id,
        unique,
        gid,
        env,
        accept,
        digest,
        principal,
        probe,
        forwarded,
        stop: app.hard_stop.clone(),
    };
    let (first_tx, first_rx) = oneshot::channel();
    tokio::spawn(drive(ctx, rx, first_tx));
    first_rx.await.map_err(|_| GatewayError::UpstreamUnavailable("the request ended without an answer".into()))
}

/// Sets the binding's log level when a request asks for more than it is set to; each request
/// then gets only what its own level admits.
async fn apply_log_level(session: &SessionHandle, level: &str) {
    let rec = session.record();
    let logs = rec
        .upstream_init
        .as_ref()
        .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
        .is_some_and(|i| i["capabilities"].get("logging").is_some());
    let current = rec.state.log_level.as_deref().and_then(modern::log_rank);
    let wanted = modern::log_rank(level);
    if !logs || matches!((current, wanted), (Some(c), Some(w)) if c <= w) {
        return;
    }
    let (sink, mut rx) = Sink::channel(0, StreamKind::Json);
    let params = raw_value(&json!({ "level": level }));
    let Ok(gid) = session.request(Message::request(0, method::LOGGING_SET_LEVEL, Some(&params)), sink).await else {
        return;
    };
    let timeout = session.config().request_timeout.min(Duration::from_secs(30));
    if !matches!(tokio::time::timeout(timeout, rx.recv()).await, Ok(Some(_))) {
        session.time_out(gid).await;
    }
}

enum Out {
    /// Nothing sent yet: the handler waits for the response.
    First(oneshot::Sender<Response>),
    /// An SSE stream is open.
    Stream(mpsc::Sender<Bytes>),
    Done,
}

async fn closed(out: &mut Out) {
    match out {
        Out::First(f) => f.closed().await,
        Out::Stream(tx) => tx.closed().await,
        Out::Done => std::future::pending().await,
    }
}

async fn drive(ctx: Ctx, mut rx: mpsc::Receiver<Outbound>, first: oneshot::Sender<Response>) {
    let mut out = Out::First(first);
    let mut deadline = Instant::now() + ctx.session.config().request_timeout;
    let mut timed_out = false;
    let mut keepalive = tokio::time::interval_at(Instant::now() + ctx.keepalive, ctx.keepalive);
    loop {
        tokio::select! {
            o = tokio::time::timeout_at(deadline, rx.recv()) => match o {
                Err(_) if !timed_out => {
                    timed_out = true;
                    ctx.session.time_out(ctx.gid).await;
                    deadline = Instant::now() + Duration::from_secs(2);
                }
                Err(_) | Ok(None) => {
                    let err = GatewayError::UpstreamUnavailable("the upstream session ended".into());
                    ctx.probe.failed(&err);
                    send_final(&mut out, err.to_message(Some(&ctx.client_id)).to_bytes(), err.wire().status).await;
                    return;
                }
                Ok(Some(o)) => {
                    if o.fin {
                        let status = o.status.and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::OK);
                        // A retry's own probe (the first round's settled with its `input_required`).
                        ctx.probe.answered(&o.data);
                        let bytes = finalize(&ctx, &o.data);
                        let status = error_status(&bytes).unwrap_or(status);
                        send_final(&mut out, bytes, status).await;
                        return;
                    }
                    let Ok(m) = Message::parse(&o.data) else { continue };
                    if m.kind() == Kind::Request {
                        if let Some(input) = input_request(&ctx, &m) {
                            return park(&ctx, &m, input, &mut out, rx).await;
                        }
                        refuse(&ctx, &m).await;
                        continue;
                    }
                    if forwardable(&ctx.env, &m) && ctx.accept.sse {
                        open_stream(&mut out);
                        if let Out::Stream(tx) = &out {
                            let mut buf = Vec::new();
                            sse::encode(&mut buf, None, None, &o.data);
                            let _ = tx.send(Bytes::from(buf)).await;
                            keepalive.reset();
                        }
                    }
                }
            },
            _ = keepalive.tick() => {
                if let Out::Stream(tx) = &out {
                    let _ = tx.send(Bytes::from_static(sse::KEEP_ALIVE)).await;
                }
            }
            _ = ctx.stop.cancelled() => {
                let err = GatewayError::ShuttingDown;
                send_final(&mut out, err.to_message(Some(&ctx.client_id)).to_bytes(), err.wire().status).await;
                return;
            }
            () = closed(&mut out) => {
                // The client closed the response: that is the cancellation in this revision.
                debug!(session_id = %ctx.session.id(), method = %ctx.method, "modern client went away; cancelling upstream");
                let id: Value = serde_json::from_str(ctx.unique.get()).unwrap_or(Value::Null);
                let params = raw_value(&json!({ "requestId": id, "reason": "the client closed the request" }));
                let _ = ctx.session.notify(Message::notification(method::NOTIFICATION_CANCELLED, Some(&params))).await;
                ctx.probe.settle(Outcome::Ok);
                return;
            }
        }
    }
}

/// Whether a notification goes to this request's client: progress always, a log message when
/// the request opted in at a level it meets; change notifications belong to listen streams.
fn forwardable(env: &Envelope, m: &Message) -> bool {
    if m.is(method::NOTIFICATION_PROGRESS) {
        return true;
    }
    if m.is(method::NOTIFICATION_MESSAGE) {
        let Some(want) = env.log_level.as_deref().and_then(modern::log_rank) else { return false };
        let level = m.params().and_then(wire_params::log_level).and_then(|l| modern::log_rank(&l));
        return level.is_some_and(|l| l >= want);
    }
    false
}

fn open_stream(out: &mut Out) {
    if let Out::First(_) = out
        && let Out::First(f) = std::mem::replace(out, Out::Done)
    {
        let (tx, resp) = sse_response(None);
        if f.send(resp).is_ok() {
            *out = Out::Stream(tx);
        }
    }
}

async fn send_final(out: &mut Out, bytes: Vec<u8>, status: StatusCode) {
    match std::mem::replace(out, Out::Done) {
        Out::First(f) => {
            let _ = f.send(json_response(status, bytes));
        }
        Out::Stream(tx) => {
            let mut buf = Vec::new();
            sse::encode(&mut buf, None, None, &bytes);
            let _ = tx.send(Bytes::from(buf)).await;
        }
        Out::Done => {}
    }
}

/// The upstream's final answer, made a 2026-07-28 one with the client's id.
fn finalize(ctx: &Ctx, data: &[u8]) -> Vec<u8> {
    let Ok(m) = Message::parse(data) else { return data.to_vec() };
    match m.kind() {
        Kind::Response => {
            let mut result: Value = m.result().and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or(json!({}));
            if ctx.method == method::TOOLS_LIST {
                ctx.front.learn_tools(ctx.session.id(), &result);
            }
            if ctx.forwarded && result.get("resultType").is_some() {
                // The server's own 2026-07-28 answer (an `input_required` one too), as it gave it.
                return Message::response(&ctx.client_id, &raw_value(&result)).to_bytes();
            }
            let init = ctx.session.record().upstream_init;
            let info = init
                .and_then(|i| serde_json::from_str::<Value>(i.get()).ok())
                .and_then(|i| i.get("serverInfo").cloned());
            modern::complete_result(&mut result, &ctx.method, info.as_ref());
            Message::response(&ctx.client_id, &raw_value(&result)).to_bytes()
        }
        _ => {
            let e: Value = m.error_object().and_then(|e| serde_json::from_str(e.get()).ok()).unwrap_or(json!({}));
            let mut code = e["code"].as_i64().unwrap_or(error_code::INTERNAL_ERROR);
            // Retired in 2026-07-28: "resource not found" is invalid params.
            if code == error_code::RESOURCE_NOT_FOUND && !ctx.forwarded {
                code = error_code::INVALID_PARAMS;
            }
            let message = e["message"].as_str().unwrap_or("error");
            Message::error(Some(&ctx.client_id), code, message, e.get("data").cloned()).to_bytes()
        }
    }
}

/// The HTTP status 2026-07-28 gives a final error answer: 404 for an unknown method, 400 for
/// a missing client capability (the upstream's handshake-era answer came with 200).
fn error_status(bytes: &[u8]) -> Option<StatusCode> {
    let m = Message::parse(bytes).ok().filter(|m| m.kind() == Kind::Error)?;
    let e: Value = m.error_object().and_then(|e| serde_json::from_str(e.get()).ok())?;
    match e["code"].as_i64()? {
        error_code::METHOD_NOT_FOUND => Some(StatusCode::NOT_FOUND),
        // A retry of a round the upstream can no longer continue (it changed era).
        error_code::INVALID_PARAMS if e["data"]["reason"] == "invalid_request_state" => Some(StatusCode::BAD_REQUEST),
        error_code::MISSING_REQUIRED_CLIENT_CAPABILITY => Some(StatusCode::BAD_REQUEST),
        _ => None,
    }
}

/// The embedded request for a server→client request, when this request may end with
/// `input_required` and its client declared the capability it needs.
fn input_request(ctx: &Ctx, m: &Message) -> Option<Value> {
    let name = m.method()?;
    let mut params: Value = m.params().and_then(|p| serde_json::from_str(p.get()).ok()).unwrap_or(json!({}));
    if !modern::INPUT_REQUIRED_METHODS.contains(&ctx.method.as_str()) || !ctx.env.allows(name, &params) {
        return None;
    }
    if let Some(o) = params.as_object_mut() {
        // Handshake-era only fields.
        o.remove("task");
    }
    Some(json!({ "method": name, "params": params }))
}

/// Tells the upstream this client cannot answer its request (what a client without the
/// capability answers).
async fn refuse(ctx: &Ctx, m: &Message) {
    let Some(id) = m.id() else { return };
    let e = GatewayError::CapabilityNotDeclared.to_message(Some(id));
    let _ = ctx.session.answer(e).await;
}

/// Ends the round with `input_required`, parking the upstream leg until the client's retry (or
/// the round's expiry, which cancels it upstream).
async fn park(ctx: &Ctx, m: &Message, input: Value, out: &mut Out, rx: mpsc::Receiver<Outbound>) {
    let Some(asked) = m.id().map(ToOwned::to_owned) else { return };
    let key = serde_json::from_str::<Value>(asked.get())
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| asked.get().to_owned());
    let handle: u64 = rand::random();
    let round =
        Round { session: ctx.session.clone(), rx, gid: ctx.gid, unique: ctx.unique.clone(), asked, key: key.clone() };
    if ctx.front.parked.put(handle, round).is_err() {
        refuse(ctx, m).await;
        let err = GatewayError::TooManySessions(MAX_PARKED);
        send_final(out, err.to_message(Some(&ctx.client_id)).to_bytes(), err.wire().status).await;
        return;
    }
    let claims = Claims {
        handle,
        digest: ctx.digest.clone(),
        principal: ctx.principal.clone(),
        expires_ms: now_ms() + ROUND_TTL.as_millis() as u64,
    };
    let result = json!({
        "resultType": modern::RESULT_INPUT_REQUIRED,
        "inputRequests": { key: input },
        "requestState": ctx.front.sealer.seal(&claims),
    });
    ctx.probe.settle(Outcome::Ok);
    send_final(out, Message::response(&ctx.client_id, &raw_value(&result)).to_bytes(), StatusCode::OK).await;
    let front = ctx.front.clone();
    tokio::spawn(async move {
        tokio::time::sleep(ROUND_TTL).await;
        if let Some(r) = front.parked.take(handle) {
            r.session.time_out(r.gid).await;
        }
    });
}
