//! The 2026-07-28 front of `/mcp`: a request whose body carries the `_meta` envelope is
//! validated as the revision says (envelope, routing headers, version), then served from a
//! handshake-era binding ([`binding`]): `server/discover` from its `initialize` result, other
//! requests forwarded with their results made modern, the upstream's server→client requests
//! turned into `input_required` rounds with a sealed `requestState` ([`seal`]), and
//! `subscriptions/listen` carried on the binding's standalone stream ([`listen`]).
//! When the binding's upstream connection itself speaks 2026-07-28, requests go to it as the
//! client sent them and its answers, `input_required` rounds included, come back as it gave
//! them ([`exchange`]); the binding still carries them, for its revives and replays.
//!
//! It does not own sessions or the upstream; the handshake era on the same endpoint is
//! `super::streamable`.

mod binding;
mod exchange;
mod listen;
mod seal;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tether_protocol::modern::{self, Envelope, HEADER_CORRELATION_KEY, HeaderParam};
use tether_protocol::{Kind, Message, method, version};
use tracing::Instrument;

use super::front_door::SessionRef;
use super::guard::Accept;
use super::{AppState, json_response};
use crate::error::GatewayError;
use crate::session::record::{SessionRecord, Transport};
use crate::stats::{Outcome, RequestProbe};

pub use binding::KeyKind;

/// What the modern front keeps across requests.
#[derive(Default)]
pub struct Front {
    bindings: binding::Bindings,
    sealer: seal::Sealer,
    parked: exchange::Parked,
    hubs: listen::Hubs,
    /// `x-mcp-header` arguments per binding and tool, learnt from `tools/list` answers.
    tool_headers: Mutex<HashMap<String, HashMap<String, Vec<HeaderParam>>>>,
}

/// The most bindings whose tool headers are remembered.
const MAX_TOOL_HEADER_SESSIONS: usize = 4096;

/// The client's era of a stored session, for the admin API.
pub fn era_of(r: &SessionRecord) -> &'static str {
    match r.transport {
        Transport::Modern => "modern",
        _ => "handshake",
    }
}

/// How a modern client's binding is found (`principal` or `envelope`; the issued key, which is
/// the session id, finds either), `None` for other sessions.
pub fn correlation_of(r: &SessionRecord) -> Option<&'static str> {
    (r.transport == Transport::Modern)
        .then(|| if r.principal.is_some() { KeyKind::Principal } else { KeyKind::Envelope }.as_str())
}

/// Whether a request to `/mcp` is of the modern era: its body claims the envelope, or its
/// `MCP-Protocol-Version` header names a modern revision and it carries no session (so a
/// request of that revision whose envelope is missing or broken is refused as the revision
/// says, -32602, and an `initialize` carrying the envelope is a removed method).
pub fn is_modern(msg: &Message, headers: &HeaderMap) -> bool {
    if modern::claims_modern(msg.method(), msg.params().map(|p| p.get())) {
        return true;
    }
    let sessionless = !headers.contains_key("mcp-session-id");
    match msg.kind() {
        // A notification has no envelope in this revision: its header says.
        Kind::Notification => header_is_modern(headers),
        // An `initialize` is the handshake unless it carries the envelope too (an `auto`
        // client's fallback handshake may name its preferred revision in the header).
        Kind::Request => {
            sessionless
                && header_names_modern(headers)
                && (msg.method() != Some(method::INITIALIZE)
                    || msg.params().is_some_and(|p| p.get().contains(modern::META_PROTOCOL_VERSION)))
        }
        _ => false,
    }
}

/// Whether `MCP-Protocol-Version` names a revision of the modern era (not merely an unknown
/// one: an unknown version with no envelope stays with the handshake era's checks).
fn header_names_modern(headers: &HeaderMap) -> bool {
    headers
        .get(modern::HEADER_PROTOCOL_VERSION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| version::era(v) == Some(version::Era::Modern))
}

/// Whether `MCP-Protocol-Version` names a revision that is not of the handshake era (GET and
/// DELETE from such a client are 405).
pub fn header_is_modern(headers: &HeaderMap) -> bool {
    headers
        .get(modern::HEADER_PROTOCOL_VERSION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| version::era(v) != Some(version::Era::Handshake))
}

type Failed = (GatewayError, Option<Box<serde_json::value::RawValue>>);

/// Serves one modern POST.
pub async fn post(
    app: &AppState,
    sref: &SessionRef,
    headers: &HeaderMap,
    msg: Message,
    accept: Accept,
    probe: &Arc<RequestProbe>,
) -> Result<Response, Failed> {
    let id = msg.id().map(ToOwned::to_owned);
    let with_id = |e: GatewayError| (e, id.clone());
    match msg.kind() {
        Kind::Request => {}
        Kind::Notification => {
            // Nothing a client notifies means anything over HTTP in this revision (a cancel is
            // the closing of the request's stream): accepted and dropped.
            probe.settle(Outcome::Ok);
            return Ok(StatusCode::ACCEPTED.into_response());
        }
        Kind::Response | Kind::Error => {
            return Err(with_id(GatewayError::InvalidEnvelope("2026-07-28 clients post no responses".into())));
        }
    }
    let method_name = msg.method().unwrap_or_default().to_owned();
    if method_name == method::SUBSCRIPTIONS_LISTEN && !accept.sse {
        return Err(with_id(GatewayError::NotAcceptable(
            "Not Acceptable: subscriptions/listen needs Accept: text/event-stream",
        )));
    }
    let params: Value = msg.params().and_then(|p| serde_json::from_str(p.get()).ok()).unwrap_or(Value::Null);
    let env = Envelope::parse(&params).map_err(|e| with_id(GatewayError::InvalidEnvelope(e.to_string())))?;
    let values = |name: &str| -> Vec<&str> { headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect() };
    modern::check_headers(values, &method_name, &env.version, &params)
        .map_err(|m| with_id(GatewayError::HeaderMismatch { header: m.header, body: m.body }))?;
    if version::era(&env.version) != Some(version::Era::Modern) {
        return Err(with_id(GatewayError::ModernVersionUnsupported {
            requested: env.version.chars().take(40).collect(),
        }));
    }
    if modern::REMOVED_METHODS.contains(&method_name.as_str()) {
        return Err(with_id(GatewayError::ModernMethodNotFound(method_name)));
    }
    let front = app.modern.clone();
    let (session, kind) = front.bindings.bind(app, &sref.caller, &env, headers).await.map_err(with_id)?;
    if method_name == method::TOOLS_CALL {
        front.check_param_headers(session.id(), &params, values).map_err(with_id)?;
    }
    let span = tracing::info_span!(
        "request",
        session_id = %session.id(),
        method = %method_name,
        request_id = %id.as_deref().map(|i| i.get()).unwrap_or(""),
        era = "modern",
        correlation = kind.as_str(),
    );
    let mut resp = match method_name.as_str() {
        method::SERVER_DISCOVER => {
            let init: Value =
                session.record().upstream_init.and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or(Value::Null);
            let result = modern::discover_from_initialize(&init);
            let id = id.clone().unwrap_or_else(|| tether_protocol::message::numeric_id(0));
            probe.settle(Outcome::Ok);
            json_response(
                StatusCode::OK,
                Message::response(&id, &tether_protocol::message::raw_value(&result)).to_bytes(),
            )
        }
        method::SUBSCRIPTIONS_LISTEN => {
            listen::open(app, &front, session.clone(), &msg, &params).await.map_err(with_id)?
        }
        _ => {
            let principal = sref.caller.key().unwrap_or_default();
            exchange::run(app, &front, session.clone(), msg, params, env, accept, principal, probe.clone())
                .instrument(span)
                .await
                .map_err(with_id)?
        }
    };
    if kind != KeyKind::Principal
        && let Ok(v) = HeaderValue::from_str(session.id())
    {
        // The key the client may echo to keep this binding.
        resp.headers_mut().insert(HEADER_CORRELATION_KEY, v);
    }
    Ok(resp)
}

impl Front {
    fn learn_tools(&self, session_id: &str, result: &Value) {
        let Some(tools) = result.get("tools").and_then(Value::as_array) else { return };
        let mut learnt = HashMap::new();
        for t in tools {
            let Some(name) = t.get("name").and_then(Value::as_str) else { continue };
            let hp = t.get("inputSchema").map(modern::header_params).unwrap_or_default();
            if !hp.is_empty() {
                learnt.insert(name.to_owned(), hp);
            }
        }
        let mut map = self.tool_headers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_TOOL_HEADER_SESSIONS && !map.contains_key(session_id) {
            map.clear();
        }
        map.entry(session_id.to_owned()).or_default().extend(learnt);
    }

    /// `Mcp-Param-*` against the tool's schema as last listed; a tool not seen is let through
    /// (the schema cannot be resolved: fail open, as the SDKs do).
    fn check_param_headers<'h>(
        &self,
        session_id: &str,
        params: &Value,
        values: impl Fn(&str) -> Vec<&'h str>,
    ) -> Result<(), GatewayError> {
        let Some(name) = params.get("name").and_then(Value::as_str) else { return Ok(()) };
        let hp = {
            let map = self.tool_headers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match map.get(session_id).and_then(|t| t.get(name)) {
                Some(hp) => hp.clone(),
                None => return Ok(()),
            }
        };
        let args = params.get("arguments").cloned().unwrap_or(Value::Null);
        modern::check_param_headers(values, &hp, &args)
            .map_err(|m| GatewayError::HeaderMismatch { header: m.header, body: m.body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_api_tells_eras_and_key_kinds_apart() {
        let mut r = SessionRecord::new(Transport::StreamableHttp);
        assert_eq!((era_of(&r), correlation_of(&r)), ("handshake", None));
        r.transport = Transport::Modern;
        assert_eq!((era_of(&r), correlation_of(&r)), ("modern", Some("envelope")));
        r.principal = Some("p1.x".into());
        assert_eq!(correlation_of(&r), Some("principal"));
    }

    #[test]
    fn a_bindings_key_is_recomputed_from_its_record() {
        let mut r = SessionRecord::new(Transport::Modern);
        let params = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {"b": {}, "a": {}},
            "clientInfo": {"name": "c", "version": "1"}});
        r.client_init = Some(crate::session::record::intern(&tether_protocol::message::raw_value(&params)));
        let k = binding::key_of(&r).expect("a key");
        assert!(k.starts_with("e:"));
        r.principal = Some("p1.x".into());
        assert_eq!(binding::key_of(&r).as_deref(), Some("p:p1.x"));
        assert_eq!(binding::key_of(&SessionRecord::new(Transport::StreamableHttp)), None);
    }
}
