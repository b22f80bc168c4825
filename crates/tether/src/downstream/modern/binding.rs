//! Which tether session serves a 2026-07-28 client: found by a correlation key (SEP-2567) —
//! the authenticated principal when there is one, else the gateway-issued key the client
//! echoes (`Tether-Correlation-Key`, which is the binding's session id), else a digest of the
//! envelope (capabilities and clientInfo), so that clients alike share one binding.
//!
//! A binding is an ordinary session (transport `modern-http`): its record, with the
//! `initialize` tether made for it, is in the store, and it is revived and replayed like any
//! other. The key → session index is memory; after a restart it is rebuilt from the store's
//! open records on first use, since every key can be recomputed from a record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tether_protocol::message::raw_value;
use tether_protocol::modern::{Envelope, HEADER_CORRELATION_KEY};
use tether_protocol::{Kind, Message, method, version};
use tracing::{info, warn};

use crate::downstream::{AppState, Caller};
use crate::error::GatewayError;
use crate::session::record::{CloseReason, SessionRecord, Transport};
use crate::session::{SessionHandle, Sink, StreamKind};

/// How a binding was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The authenticated principal's fingerprint.
    Principal,
    /// The key tether issued, echoed by the client.
    Issued,
    /// The digest of the request's envelope.
    Envelope,
}

impl KeyKind {
    /// The label in logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Principal => "principal",
            KeyKind::Issued => "issued",
            KeyKind::Envelope => "envelope",
        }
    }
}

/// The most keys kept in the index (each names one session; sessions are capped too).
const MAX_KEYS: usize = 65_536;

/// The key → session index.
#[derive(Default)]
pub struct Bindings {
    keys: Mutex<HashMap<String, String>>,
    /// The index is rebuilt from the store once, before the first binding is made.
    loaded: tokio::sync::OnceCell<()>,
    /// One creation at a time per key, so that two first requests with one key make one
    /// binding, while clients with other keys are bound meanwhile.
    creating: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The key of a record of a modern binding (what [`Bindings::bind`] would look it up by).
pub fn key_of(record: &SessionRecord) -> Option<String> {
    if record.transport != Transport::Modern {
        return None;
    }
    if let Some(p) = &record.principal {
        return Some(format!("p:{p}"));
    }
    let init: Value = serde_json::from_str(record.client_init.as_ref()?.get()).ok()?;
    Some(envelope_key(init.get("capabilities").unwrap_or(&Value::Null), init.get("clientInfo")))
}

fn envelope_key(capabilities: &Value, client_info: Option<&Value>) -> String {
    // serde_json's maps are ordered by key: equal envelopes serialize equally.
    let text = json!({ "c": capabilities, "i": client_info }).to_string();
    format!("e:{:x}", Sha256::digest(text.as_bytes()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Bindings {
    /// The binding for this request, made (with its upstream `initialize`) if there is none.
    pub async fn bind(
        &self,
        app: &AppState,
        caller: &Caller,
        env: &Envelope,
        headers: &HeaderMap,
    ) -> Result<(SessionHandle, KeyKind), GatewayError> {
        let (key, kind) = match caller.key() {
            Some(p) => (format!("p:{p}"), KeyKind::Principal),
            None => {
                let issued = headers.get(HEADER_CORRELATION_KEY).and_then(|v| v.to_str().ok());
                if let Some(id) = issued
                    && let Ok(s) = app.manager.get(id).await
                    && s.transport() == Transport::Modern
                    && caller.may_use(s.principal().as_deref())
                    && s.has_bound()
                {
                    return Ok((s, KeyKind::Issued));
                }
                (envelope_key(&env.capabilities, env.client_info.as_ref()), KeyKind::Envelope)
            }
        };
        if let Some(s) = self.lookup(app, &key).await {
            return Ok((s, kind));
        }
        self.loaded.get_or_init(|| self.load(app)).await;
        let gate = lock(&self.creating).entry(key.clone()).or_default().clone();
        let _creating = gate.lock().await;
        let made = self.create(app, caller, env, key.clone(), kind).await;
        {
            let mut creating = lock(&self.creating);
            // The last waiter for this key takes the gate away (the map holds one reference,
            // this request another).
            if creating.get(&key).is_some_and(|g| Arc::strong_count(g) <= 2) {
                creating.remove(&key);
            }
        }
        made
    }

    /// The binding for `key` made now, unless a request with the same key made it meanwhile.
    async fn create(
        &self,
        app: &AppState,
        caller: &Caller,
        env: &Envelope,
        key: String,
        kind: KeyKind,
    ) -> Result<(SessionHandle, KeyKind), GatewayError> {
        if let Some(s) = self.lookup(app, &key).await {
            return Ok((s, kind));
        }
        let session = app.manager.create_for(Transport::Modern, caller.key()).await?;
        let mut capabilities = env.capabilities.clone();
        if kind == KeyKind::Principal
            && let Some(c) = capabilities.as_object_mut()
        {
            // One binding serves every request of the principal, whatever each declares: the
            // upstream may ask for what any of them could answer; each request is checked.
            c.entry("elicitation").or_insert_with(|| json!({}));
            c.entry("sampling").or_insert_with(|| json!({}));
        }
        let client_info =
            env.client_info.clone().unwrap_or_else(|| json!({"name": "tether", "version": env!("CARGO_PKG_VERSION")}));
        let params = json!({
            "protocolVersion": version::LATEST_HANDSHAKE,
            "capabilities": capabilities,
            "clientInfo": client_info,
        });
        if let Err(e) = initialize(&session, &params).await {
            app.manager.close(session.id(), CloseReason::UpstreamFailed).await;
            return Err(e);
        }
        info!(session_id = %session.id(), correlation = kind.as_str(), "modern client bound to a new upstream session");
        let mut keys = lock(&self.keys);
        if keys.len() >= MAX_KEYS {
            keys.clear();
        }
        keys.insert(key, session.id().to_owned());
        Ok((session, kind))
    }

    async fn lookup(&self, app: &AppState, key: &str) -> Option<SessionHandle> {
        let id = lock(&self.keys).get(key).cloned()?;
        match app.manager.get(&id).await {
            Ok(s) if s.has_bound() => Some(s),
            _ => {
                lock(&self.keys).remove(key);
                None
            }
        }
    }

    /// Rebuilds the index from the open records (after a restart).
    async fn load(&self, app: &AppState) {
        let store = &app.manager.deps().store;
        let mut after: Option<String> = None;
        let cap = app.manager.deps().config.max_sessions;
        let mut seen = 0;
        loop {
            let page = match store.list_open(after.as_deref(), 500).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "listing sessions for the modern bindings failed");
                    return;
                }
            };
            let Some(last) = page.last() else { return };
            after = Some(last.id.clone());
            seen += page.len();
            let mut keys = lock(&self.keys);
            for r in &page {
                if let Some(k) = key_of(r) {
                    keys.insert(k, r.id.clone());
                }
            }
            if seen >= cap.max(500) {
                return;
            }
        }
    }
}

/// Opens the upstream side of a new binding: `initialize` (recorded by the session, so that a
/// revive replays it) and `notifications/initialized`.
async fn initialize(session: &SessionHandle, params: &Value) -> Result<(), GatewayError> {
    let (sink, mut rx) = Sink::channel(0, StreamKind::Json);
    let msg = Message::request(0, method::INITIALIZE, Some(&raw_value(params)));
    let gid = session.request(msg, sink).await?;
    let timeout = session.config().request_timeout;
    let answer = loop {
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(o)) if o.fin => break Message::parse(&o.data).ok(),
            Ok(Some(_)) => continue,
            Ok(None) => break None,
            Err(_) => {
                session.time_out(gid).await;
                return Err(GatewayError::UpstreamTimeout(timeout.as_secs()));
            }
        }
    };
    match answer {
        Some(m) if m.kind() == Kind::Response => {}
        Some(m) => {
            let detail = m.error_object().map(|e| e.get().to_owned()).unwrap_or_default();
            return Err(GatewayError::UpstreamUnavailable(format!("the upstream refused initialize: {detail}")));
        }
        None => return Err(GatewayError::UpstreamUnavailable("the session ended during initialize".into())),
    }
    session.notify(Message::notification(method::NOTIFICATION_INITIALIZED, None)).await
}
