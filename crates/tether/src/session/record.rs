//! The durable session record: everything needed to rebuild the upstream side of a session
//! without the client's help.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// How many distinct `initialize` texts [`intern`] remembers.
const INTERNED: usize = 8;

/// A shared copy of `raw`: the same text as one interned lately, or a new one remembered in its
/// place. Sessions of one upstream get the same `initialize` result, and clients of one kind
/// send the same params; kept once, not in every session (a quarter of an idle session's heap).
pub fn intern(raw: &RawValue) -> Arc<RawValue> {
    static RECENT: Mutex<Vec<Arc<RawValue>>> = Mutex::new(Vec::new());
    let mut recent = RECENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(i) = recent.iter().position(|v| v.get() == raw.get()) {
        let v = recent.remove(i);
        recent.push(v.clone());
        return v;
    }
    let v: Arc<RawValue> = Arc::from(raw.to_owned());
    if recent.len() >= INTERNED {
        recent.remove(0);
    }
    recent.push(v.clone());
    v
}

/// (De)serializes an interned raw value as plain JSON.
mod shared_raw {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(v: &Option<Arc<RawValue>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_deref().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<RawValue>>, D::Error> {
        Ok(Option::<Box<RawValue>>::deserialize(d)?.map(|b| super::intern(&b)))
    }
}

/// Which client-facing transport a session was opened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Streamable HTTP (`/mcp`, `Mcp-Session-Id`).
    StreamableHttp,
    /// Legacy HTTP+SSE (`GET /sse` + `POST /messages/`).
    LegacySse,
    /// The bridge's stdio front (one local client).
    Stdio,
    /// 2026-07-28 clients on `/mcp`, sessionless: the binding their correlation key finds.
    Modern,
}

impl Transport {
    /// Every transport, in declaration order.
    pub const ALL: [Transport; 4] =
        [Transport::StreamableHttp, Transport::LegacySse, Transport::Stdio, Transport::Modern];

    /// The label used in logs, metrics and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamable-http",
            Transport::LegacySse => "sse",
            Transport::Stdio => "stdio",
            Transport::Modern => "modern-http",
        }
    }

    /// The transport a store's label names; an unknown label (a newer tether's) reads as
    /// Streamable HTTP, the most common front.
    pub fn from_label(label: &str) -> Transport {
        Transport::ALL.into_iter().find(|t| t.as_str() == label).unwrap_or(Transport::StreamableHttp)
    }
}

/// Session-scoped state the client set and a revive must replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// The level from the last successful `logging/setLevel`.
    pub log_level: Option<String>,
    /// URIs from successful `resources/subscribe` calls not since unsubscribed.
    pub subscriptions: BTreeSet<String>,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The client sent DELETE (or dropped its legacy SSE stream).
    ClientClosed,
    /// Idle longer than the session TTL.
    Expired,
    /// Ended by an operator.
    Terminated,
    /// The upstream could not serve it (for example a protocol version mismatch on revive).
    UpstreamFailed,
}

impl CloseReason {
    /// The label used in logs and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::Expired => "expired",
            CloseReason::Terminated => "terminated",
            CloseReason::UpstreamFailed => "upstream_failed",
        }
    }
}

/// One client session as the gateway owns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// tether's id for the session (128 random bits, hex).
    pub id: String,
    /// The client-facing transport.
    pub transport: Transport,
    /// The negotiated protocol version, once initialized.
    pub protocol_version: Option<String>,
    /// The client's `initialize` params, raw ([`intern`]ed).
    #[serde(with = "shared_raw")]
    pub client_init: Option<Arc<RawValue>>,
    /// The upstream's `initialize` result as last seen, raw ([`intern`]ed).
    #[serde(with = "shared_raw")]
    pub upstream_init: Option<Arc<RawValue>>,
    /// State to replay on revive.
    pub state: SessionState,
    /// The fingerprint of the principal that created the session (`crate::auth::Principal::key`),
    /// when the endpoint requires credentials; never a credential.
    pub principal: Option<String>,
    /// Unix milliseconds.
    pub created_at: u64,
    /// Unix milliseconds of the last client activity.
    pub last_active: u64,
    /// Client requests served.
    pub requests: u64,
    /// `tools/call` requests served.
    pub tool_calls: u64,
    /// Unix milliseconds when the session ended.
    pub closed_at: Option<u64>,
    /// Why it ended.
    pub close_reason: Option<CloseReason>,
}

impl SessionRecord {
    /// A fresh record with a new random id.
    pub fn new(transport: Transport) -> SessionRecord {
        let now = now_ms();
        SessionRecord {
            id: new_session_id(),
            transport,
            protocol_version: None,
            client_init: None,
            upstream_init: None,
            state: SessionState::default(),
            principal: None,
            created_at: now,
            last_active: now,
            requests: 0,
            tool_calls: 0,
            closed_at: None,
            close_reason: None,
        }
    }
}

/// 128 random bits as 32 lowercase hex digits: visible ASCII, as the spec asks.
pub fn new_session_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Milliseconds since the Unix epoch (from the one clock).
pub use crate::clock::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_128_bit_hex_and_distinct() {
        let a = new_session_id();
        let b = new_session_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
