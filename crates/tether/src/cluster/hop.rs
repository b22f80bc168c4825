//! The internal hop between replicas: the forward decision on `/mcp` (one layer, [`layer`]),
//! the forwarding client, and the hop listener that owners serve forwarded requests on
//! ([`router`]).
//!
//! A forwarded request is the client's — method, path, body and the headers that matter to
//! MCP (`Mcp-Session-Id`, `Last-Event-ID`, `Accept`, `MCP-Protocol-Version`, `Content-Type`,
//! `Authorization`, `Host`) — plus the hop's secret, the principal's fingerprint and the
//! lease epoch the sender read. The owner's answer (status, headers, SSE body) streams back
//! as it comes, with no timeout of the hop's own; a client that goes away drops the hop's
//! connection, which the owner sees as its client going away.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tether_protocol::method;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Cluster, Route};
use crate::config::ClusterSecret;
use crate::downstream::{AppState, Caller, error_response};
use crate::error::GatewayError;

/// The hop's secret.
pub const SECRET_HEADER: &str = "tether-hop-secret";
/// The fingerprint of the principal the sending replica authenticated.
pub const PRINCIPAL_HEADER: &str = "tether-hop-principal";
/// The lease epoch the sending replica read.
pub const EPOCH_HEADER: &str = "tether-hop-epoch";
/// The sending replica's id.
pub const FROM_HEADER: &str = "tether-hop-from";
/// On a 421 from a replica that no longer owns the session: look again.
pub const MOVED_HEADER: &str = "tether-hop-moved";

/// The client headers a forward carries (besides every `Mcp-*` header).
const CARRIED: [HeaderName; 5] = [
    header::ACCEPT,
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    header::HOST,
    HeaderName::from_static("last-event-id"),
];

/// Hop-by-hop headers of an answer, not copied back.
const HOP_BY_HOP: [HeaderName; 4] =
    [header::CONNECTION, header::TRANSFER_ENCODING, header::CONTENT_LENGTH, HeaderName::from_static("keep-alive")];

/// The hop's route by which a replica asks a session's owner to terminate it (admin).
pub const TERMINATE_PATH: &str = "/cluster/terminate/";

/// Marks a request that arrived over the hop (authenticated by the secret).
#[derive(Debug, Clone, Copy)]
pub struct Hopped;

/// The hop listener's routes: the MCP routes behind the secret's check.
pub fn router(app: AppState, secret: Option<ClusterSecret>) -> Router {
    let cluster = app.cluster.clone();
    let terminate = axum::routing::post(move |axum::extract::Path(id): axum::extract::Path<String>| {
        let cluster = cluster.clone();
        async move {
            let Some(cluster) = cluster else { return StatusCode::NOT_FOUND.into_response() };
            match cluster.terminate_here(&id).await {
                Ok(true) => StatusCode::OK.into_response(),
                Ok(false) => StatusCode::NOT_FOUND.into_response(),
                Err(e) => error_response(&e, None),
            }
        }
    });
    let routes = crate::downstream::router(app).route(&format!("{TERMINATE_PATH}{{id}}"), terminate);
    routes.layer(axum::middleware::from_fn(move |mut req: Request, next: Next| {
        let secret = secret.clone();
        async move {
            if let Some(s) = &secret {
                let given = req.headers().get(SECRET_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
                if !bool::from(given.ct_eq(s.expose().as_bytes())) {
                    warn!(path = %req.uri().path(), "a hop request without the cluster secret refused");
                    return StatusCode::UNAUTHORIZED.into_response();
                }
            }
            req.extensions_mut().insert(Hopped);
            next.run(req).await
        }
    }))
}

/// The forward decision on `/mcp` and the legacy POST endpoints, after the front door: a
/// request naming a session this replica does not own goes to its owner; a session ended here
/// gives its lease back. (A new session is claimed where it is created, `SessionRef::create`.)
pub async fn layer(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(cluster) = app.cluster.clone() else { return next.run(req).await };
    // No session named: a new one, created (and claimed) here.
    let Some(sid) = named_session(&req) else { return next.run(req).await };
    let is_delete = req.method() == Method::DELETE;
    if req.extensions().get::<Hopped>().is_some() {
        return serve_forwarded(&cluster, &sid, is_delete, req, next).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match crate::downstream::read_body(body, &parts.headers, &app.front).await {
        Ok(b) => b,
        Err(e) => return error_response(&e, None),
    };
    // After one TTL and a margin, a dead owner's lease has run out and is claimed here.
    let deadline = Instant::now() + cluster.ttl * 2 + Duration::from_secs(1);
    loop {
        match cluster.route(&sid).await {
            Err(e) => return error_response(&e, None),
            Ok(Route::Local) => {
                let resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
                if is_delete && resp.status().is_success() {
                    cluster.release(&sid).await;
                }
                return resp;
            }
            Ok(Route::Forward { addr, epoch, expires }) => {
                // A relayed stream ends when this replica stops, like its own: a standalone
                // stream at the start of the drain, a request's at the drain deadline.
                let ends = if parts.method == Method::GET { app.shutdown.clone() } else { app.hard_stop.clone() };
                match cluster.forward(&sid, &addr, epoch, &parts, bytes.clone(), ends).await {
                    Ok(resp) => return resp,
                    Err(failed) => {
                        cluster.forget_owner(&sid);
                        cluster.stats.cluster.forward_failures.inc();
                        let why = failed.why();
                        debug!(session_id = %sid, owner = %addr, reason = %why, "forward failed; looking the owner up again");
                        // The owner may have taken the request (and sent it upstream) before it
                        // went silent: a tool call is not sent again, lest it run twice. It may
                        // or may not have run, as after an upstream restart.
                        if let ForwardFailed::MaybeDelivered(_) = &failed
                            && let Some(id) = unsafe_call(&bytes)
                        {
                            warn!(session_id = %sid, owner = %addr, reason = %why, "a forwarded tool call may have reached its owner before it failed; not sent again");
                            let e = GatewayError::UpstreamRestarted(
                                "the replica owning the session failed while the request was in flight".into(),
                            );
                            return error_response(&e, Some(&id));
                        }
                        if Instant::now() >= deadline {
                            return error_response(&GatewayError::OwnerUnreachable(why), None);
                        }
                        // Looked up again in a moment, or as the lease runs out if that is
                        // sooner: a dead owner's sessions are claimed without delay.
                        let lapse = expires.saturating_duration_since(Instant::now()) + Duration::from_millis(5);
                        tokio::time::sleep(lapse.clamp(Duration::from_millis(5), Duration::from_millis(100))).await;
                    }
                }
            }
        }
    }
}

/// Why a forward failed: the owner provably did not take the request (it refused the
/// connection, or answered that it no longer owns the session), or it may have.
#[derive(Debug)]
enum ForwardFailed {
    NotDelivered(String),
    MaybeDelivered(String),
}

impl ForwardFailed {
    fn why(&self) -> String {
        match self {
            ForwardFailed::NotDelivered(w) | ForwardFailed::MaybeDelivered(w) => w.clone(),
        }
    }
}

/// The id of a `tools/call` request in `body`: a call whose repetition may not be harmless
/// (the annotations that could tell are the owner's to know).
fn unsafe_call(body: &[u8]) -> Option<Box<serde_json::value::RawValue>> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        method: Option<&'a str>,
        id: Option<Box<serde_json::value::RawValue>>,
    }
    let msg: Envelope<'_> = serde_json::from_slice(body).ok()?;
    (msg.method == Some(method::TOOLS_CALL)).then_some(msg.id).flatten()
}

/// The session a request names: `Mcp-Session-Id`, or on the legacy POST endpoints the
/// `session_id` (or `sessionId`) query parameter.
fn named_session(req: &Request) -> Option<String> {
    if let Some(id) = crate::downstream::session_id(req.headers()) {
        return Some(id.to_owned());
    }
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "session_id" || k == "sessionId").then(|| v.to_owned())
    })
}

/// A forwarded request, on the replica it was sent to: served if this replica owns the
/// session (claiming it if its lease ran out meanwhile); 421 "moved" if another does.
async fn serve_forwarded(cluster: &Cluster, sid: &str, is_delete: bool, req: Request, next: Next) -> Response {
    let caller = req.extensions().get::<Caller>().cloned().unwrap_or_default();
    let named = req.headers().get(PRINCIPAL_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    let key = caller.key().unwrap_or_default();
    if !bool::from(named.as_bytes().ct_eq(key.as_bytes())) {
        warn!(session_id = %sid, "a forwarded request's principal does not match its credentials");
        return error_response(&GatewayError::SessionNotFound, None);
    }
    match cluster.route(sid).await {
        Ok(Route::Local) => {
            let resp = next.run(req).await;
            if is_delete && resp.status().is_success() {
                cluster.release(sid).await;
            }
            resp
        }
        Ok(Route::Forward { .. }) => {
            let mut r = StatusCode::MISDIRECTED_REQUEST.into_response();
            r.headers_mut().insert(MOVED_HEADER, HeaderValue::from_static("1"));
            r
        }
        Err(e) => error_response(&e, None),
    }
}

impl Cluster {
    /// Resolves once `session`'s lease of `epoch` is no longer live (checked every half TTL;
    /// a store that does not answer proves nothing).
    async fn lapsed(&self, session: &str, epoch: u64) {
        loop {
            tokio::time::sleep(self.ttl / 2).await;
            match self.store.lease(session).await {
                Ok(Some(l)) if l.epoch == epoch && l.left_ms > 0 => {}
                Ok(_) => return,
                Err(_) => {}
            }
        }
    }

    /// Sends the request to the owner at `addr`; its answer, streaming. `Err` when it did
    /// not answer (or answered "moved"): the caller looks the owner up again.
    async fn forward(
        &self,
        session: &str,
        addr: &str,
        epoch: u64,
        parts: &axum::http::request::Parts,
        body: bytes::Bytes,
        ends: tokio_util::sync::CancellationToken,
    ) -> Result<Response, ForwardFailed> {
        let caller = parts.extensions.get::<Caller>().cloned().unwrap_or_default();
        let path = parts.uri.path_and_query().map_or("/mcp", |p| p.as_str());
        let mut rb = self.http.request(parts.method.clone(), format!("http://{addr}{path}"));
        for (name, value) in &parts.headers {
            if CARRIED.contains(name) || name.as_str().starts_with("mcp-") {
                rb = rb.header(name, value);
            }
        }
        if let Some(s) = &self.config.secret {
            rb = rb.header(SECRET_HEADER, s.expose());
        }
        rb = rb
            .header(PRINCIPAL_HEADER, caller.key().unwrap_or_default())
            .header(EPOCH_HEADER, epoch.to_string())
            .header(FROM_HEADER, &self.me.id)
            .body(body);
        let started = Instant::now();
        // No timeout on the answer, but an owner whose lease runs out while we wait for it
        // (stopped, or cut off from the store) will not answer: its session is claimed instead.
        let resp = tokio::select! {
            r = rb.send() => r.map_err(|e| {
                if e.is_connect() { ForwardFailed::NotDelivered(e.to_string()) } else { ForwardFailed::MaybeDelivered(e.to_string()) }
            })?,
            () = self.lapsed(session, epoch) => {
                return Err(ForwardFailed::MaybeDelivered("the owner's lease ran out while it was asked".into()));
            }
        };
        if resp.status() == StatusCode::MISDIRECTED_REQUEST && resp.headers().contains_key(MOVED_HEADER) {
            return Err(ForwardFailed::NotDelivered("the replica no longer owns the session".into()));
        }
        self.stats.cluster.forwards.inc();
        self.stats.cluster.forward_latency.observe(started.elapsed());
        let mut out = Response::builder().status(resp.status());
        if let Some(h) = out.headers_mut() {
            for (name, value) in resp.headers() {
                if !HOP_BY_HOP.contains(name) {
                    h.append(name, value.clone());
                }
            }
        }
        let body = futures_util::StreamExt::take_until(resp.bytes_stream(), ends.cancelled_owned());
        out.body(Body::from_stream(body)).map_err(|e| ForwardFailed::MaybeDelivered(e.to_string()))
    }
}
