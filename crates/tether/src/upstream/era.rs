//! Which MCP era a Streamable HTTP upstream is spoken to in, decided for each connection.
//!
//! A session always speaks the handshake era to its upstream connection; this connection
//! carries it either as is ([`super::streamable`]) or translated to 2026-07-28
//! ([`super::modern`]). With `--upstream-protocol auto` (the default) the connection's
//! `initialize` is the probe: it goes out in the era the gateway last saw the server speak
//! (the handshake era when it knows nothing), and
//!
//! * a refusal of `initialize` with -32022 naming only 2026-07-28 (a modern-only server) makes
//!   the connection speak 2026-07-28 and send it again as `server/discover`;
//! * a `server/discover` that the server does not understand (a handshake-era server answers
//!   -32601, "not initialized", a 4xx…) makes it speak the handshake era and send `initialize`.
//!
//! So a server that serves both eras keeps being spoken to in the handshake era (no
//! translation), and a server that changes era across a restart is followed on the next
//! connection: every revive makes a new connection, which probes again. The verdict is cached
//! per URL ([`EraCache`], shared by the gateway's sessions) with an expiry, so that reviving a
//! modern-only server does not cost a refused `initialize` each time; a verdict that proves
//! wrong is probed again at once, on that connection. A server that is merely down teaches
//! nothing and leaves the verdict as it was.
//!
//! A 2026-07-28 client's request that the modern front forwarded as is, because the connection
//! spoke 2026-07-28 when it was sent, may reach a connection that speaks the handshake era now
//! (sent again after a revive to a server that changed era): it goes out without its envelope,
//! and a retry that continues the former server's `input_required` round is answered with a
//! clear error, since no one can continue it ([`for_handshake`]).
//!
//! A session whose client speaks 2026-07-28 (a modern binding, [`ConnectContext::prefer_modern`])
//! probes the other way round in `auto`: `server/discover` first, whatever the cache says, so
//! that its requests reach a server of both eras as the client sent them; it teaches the cache
//! only a handshake-era verdict (that the server serves 2026-07-28 too says nothing about what
//! the handshake-era sessions should speak to it).
//!
//! `handshake` and `modern` fix the era; a server that refuses it is a clear error
//! ([`SendError::Refused`], HTTP 502 to the client) naming the flag that fixes it, never its
//! -32022 passed on as a successful answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tether_protocol::message::{numeric_id, raw_value};
use tether_protocol::{Kind, Message, method};

use tracing::info;

use super::modern::{self, Discovered};
use super::streamable::{self, Sent};
use super::{ConnectContext, Origin, SendError, UpstreamEvent};
use crate::clock::Instant;

/// How long an era verdict is trusted before the next connection probes from scratch.
pub const VERDICT_TTL: Duration = Duration::from_secs(600);
/// The most upstream URLs whose verdicts are remembered (a gateway has one upstream).
const MAX_VERDICTS: usize = 64;

/// `--upstream-protocol`: the era an HTTP upstream is spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// Probe on each connection (the handshake era when the server serves it).
    #[default]
    Auto,
    /// Always the handshake era (`initialize`, upstream sessions).
    Handshake,
    /// Always 2026-07-28, translated from the session's handshake-era traffic.
    Modern,
}

impl UpstreamProtocol {
    /// Parses the configuration value.
    pub fn parse(text: &str) -> Result<UpstreamProtocol, String> {
        match text.trim() {
            "auto" => Ok(UpstreamProtocol::Auto),
            "handshake" => Ok(UpstreamProtocol::Handshake),
            "modern" => Ok(UpstreamProtocol::Modern),
            other => Err(format!("{other:?}: use `auto`, `handshake` or `modern`")),
        }
    }

    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Auto => "auto",
            UpstreamProtocol::Handshake => "handshake",
            UpstreamProtocol::Modern => "modern",
        }
    }
}

/// The era a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// 2024-11-05 … 2025-11-25 with `initialize`.
    Handshake,
    /// 2026-07-28.
    Modern,
}

impl Era {
    /// A label for logs, metrics and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Era::Handshake => "handshake",
            Era::Modern => "modern",
        }
    }
}

/// The last era each upstream URL was seen to speak, with when; shared by every connection of
/// a gateway (one per [`UpstreamOptions`]).
#[derive(Debug, Default)]
pub struct EraCache {
    verdicts: Mutex<HashMap<String, (Era, Instant)>>,
}

impl EraCache {
    /// The verdict for `url`, if it is younger than [`VERDICT_TTL`].
    pub fn get(&self, url: &str) -> Option<Era> {
        let v = self.verdicts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        v.get(url).filter(|(_, at)| at.elapsed() < VERDICT_TTL).map(|(era, _)| *era)
    }

    /// Records that `url` was just seen speaking `era`.
    pub fn set(&self, url: &str, era: Era) {
        let mut v = self.verdicts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if v.len() >= MAX_VERDICTS && !v.contains_key(url) {
            v.retain(|_, (_, at)| at.elapsed() < VERDICT_TTL);
            if v.len() >= MAX_VERDICTS {
                v.clear();
            }
        }
        v.insert(url.to_owned(), (era, Instant::now()));
    }
}

/// The error for a fixed handshake era that a modern-only server refused.
pub(super) fn modern_only_refusal(answer: &Message) -> SendError {
    SendError::Refused {
        status: 400,
        detail: format!(
            "the upstream speaks only MCP 2026-07-28 and refused the initialize handshake ({}); \
             serve it with --upstream-protocol auto or modern",
            modern::wire::describe_error(answer)
        ),
    }
}

/// The error for a fixed modern era that a server which does not speak it refused.
pub(super) fn not_modern_refusal(why: &str) -> SendError {
    SendError::Refused {
        status: 400,
        detail: format!(
            "the upstream does not speak MCP 2026-07-28 (server/discover: {why}); \
             serve it with --upstream-protocol auto or handshake"
        ),
    }
}

#[derive(Clone)]
enum Current {
    Handshake(Arc<streamable::Handle>),
    Modern(Arc<modern::Handle>),
}

/// One connection to a Streamable HTTP upstream, in the era its probe chose.
pub struct Handle {
    url: String,
    /// What a connection needs to make the handle of either era.
    parts: ConnectContext,
    current: Mutex<Current>,
}

impl Handle {
    /// A connection-to-be, in the configured era or the one last seen for this URL.
    pub fn new(url: &str, ctx: ConnectContext) -> Handle {
        let era = match ctx.options.protocol {
            UpstreamProtocol::Handshake => Era::Handshake,
            UpstreamProtocol::Modern => Era::Modern,
            UpstreamProtocol::Auto if ctx.prefer_modern => Era::Modern,
            UpstreamProtocol::Auto => ctx.options.eras.get(url).unwrap_or(Era::Handshake),
        };
        let parts = ctx;
        let current = Mutex::new(make(url, era, &parts));
        Handle { url: url.to_owned(), parts, current }
    }

    fn current(&self) -> Current {
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The era this connection speaks now.
    pub fn era(&self) -> Era {
        match self.current() {
            Current::Handshake(_) => Era::Handshake,
            Current::Modern(_) => Era::Modern,
        }
    }

    /// Hands one message to the server; `initialize` decides the era first.
    pub async fn send(&self, msg: &Message, gid: Option<u64>) -> Result<(), SendError> {
        if msg.kind() == Kind::Request
            && msg.is(method::INITIALIZE)
            && let Some(gid) = gid
        {
            return self.initialize(msg, gid).await;
        }
        match self.current() {
            Current::Handshake(h) => match for_handshake(msg, gid) {
                None => h.send(msg, gid).await,
                Some(Ok(stripped)) => h.send(&stripped, gid).await,
                Some(Err(answer)) => {
                    info!(session_id = %self.parts.session_id, url = %self.url, "a 2026-07-28 retry reached an upstream that now speaks the handshake era; its requestState is stale");
                    let origin = gid.map_or(Origin::Unrelated, Origin::Request);
                    let _ = self.parts.events.send(UpstreamEvent::Message(origin, answer)).await;
                    Ok(())
                }
            },
            Current::Modern(h) => h.send(msg, gid).await,
        }
    }

    /// Sends `initialize` in the current era; a refusal that names the other era switches to
    /// it once (in `auto`) and sends again. A connection that cannot be made is an error as
    /// is, and teaches nothing about the era.
    async fn initialize(&self, msg: &Message, gid: u64) -> Result<(), SendError> {
        let auto = self.parts.options.protocol == UpstreamProtocol::Auto;
        let mut switched = false;
        loop {
            let refusal = match self.current() {
                Current::Handshake(h) => match h.send_probing(msg, Some(gid)).await? {
                    Sent::Delivered => break self.learn(Era::Handshake),
                    Sent::ModernOnly(answer) => modern_only_refusal(&answer),
                },
                Current::Modern(h) => match h.initialize_probe(msg, gid).await? {
                    Discovered::Served => break self.learn(Era::Modern),
                    Discovered::NotModern(why) => not_modern_refusal(&why),
                },
            };
            if !auto || switched {
                return Err(refusal);
            }
            switched = true;
            let next = match self.era() {
                Era::Handshake => {
                    info!(session_id = %self.parts.session_id, era = "modern", url = %self.url, "the upstream refused the initialize handshake naming only 2026-07-28; switching to the modern era");
                    Era::Modern
                }
                Era::Modern => {
                    info!(session_id = %self.parts.session_id, era = "handshake", url = %self.url, error = %refusal, "the upstream does not speak 2026-07-28; switching to the handshake era");
                    Era::Handshake
                }
            };
            // The refused handle set nothing up (no upstream session, no stream): dropped
            // without `close`, so that the session hears of no ending.
            *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                make(&self.url, next, &self.parts);
        }
    }

    fn learn(&self, era: Era) -> Result<(), SendError> {
        if self.parts.options.protocol == UpstreamProtocol::Auto && !(self.parts.prefer_modern && era == Era::Modern) {
            self.parts.options.eras.set(&self.url, era);
        }
        Ok(())
    }

    /// Records the negotiated version (handshake era: the `MCP-Protocol-Version` header).
    pub fn set_protocol_version(&self, version: &str) {
        if let Current::Handshake(h) = self.current() {
            h.set_protocol_version(version);
        }
    }

    /// Opens the stream for server-initiated messages (a GET stream, or a listen).
    pub fn open_standalone(&self) {
        match self.current() {
            Current::Handshake(h) => h.open_standalone(),
            Current::Modern(h) => h.open_standalone(),
        }
    }

    /// Whether the connection is still usable.
    pub fn is_alive(&self) -> bool {
        match self.current() {
            Current::Handshake(h) => h.is_alive(),
            Current::Modern(h) => h.is_alive(),
        }
    }

    /// Gives the connection up.
    pub fn mark_lost(&self) {
        match self.current() {
            Current::Handshake(h) => h.mark_lost(),
            Current::Modern(h) => h.mark_lost(),
        }
    }

    /// The upstream's own session id (handshake era only).
    pub fn session_id(&self) -> Option<String> {
        match self.current() {
            Current::Handshake(h) => h.session_id(),
            Current::Modern(_) => None,
        }
    }

    /// Ends the connection.
    pub async fn close(&self) {
        match self.current() {
            Current::Handshake(h) => h.close().await,
            Current::Modern(h) => h.close().await,
        }
    }
}

/// What becomes of a request on a handshake-era connection: `None` for an ordinary one; a
/// 2026-07-28 client's forwarded request without its envelope; or, for a retry that continues
/// an `input_required` round of the server as it was, the answer that says so (the error of a
/// stale `requestState`: -32602, reason `invalid_request_state`).
pub(super) fn for_handshake(msg: &Message, gid: Option<u64>) -> Option<Result<Message, Message>> {
    if msg.kind() != Kind::Request
        || !tether_protocol::modern::claims_modern(msg.method(), msg.params().map(|p| p.get()))
    {
        return None;
    }
    let mut params: Value = serde_json::from_str(msg.params()?.get()).ok()?;
    if modern::continues_round(&params) {
        let id = gid.map(numeric_id).or_else(|| msg.id().map(ToOwned::to_owned));
        return Some(Err(crate::error::GatewayError::RoundOrphaned.to_message(id.as_deref())));
    }
    tether_protocol::modern::strip_envelope(&mut params);
    let mut stripped = msg.clone();
    stripped.set_params(raw_value(&params));
    Some(Ok(stripped))
}

fn make(url: &str, era: Era, parts: &ConnectContext) -> Current {
    match era {
        Era::Handshake => Current::Handshake(Arc::new(streamable::Handle::new(url, parts.clone()))),
        Era::Modern => Current::Modern(Arc::new(modern::Handle::new(url, parts.clone()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_flag_values_parse_and_name_themselves() {
        for p in [UpstreamProtocol::Auto, UpstreamProtocol::Handshake, UpstreamProtocol::Modern] {
            assert_eq!(UpstreamProtocol::parse(p.as_str()), Ok(p));
        }
        assert!(UpstreamProtocol::parse("2026").expect_err("bad").contains("auto"));
    }

    #[test]
    fn a_forwarded_request_on_a_handshake_era_connection_loses_its_envelope_or_is_refused() {
        let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "progressToken": 7});
        let call = |extra: Value| {
            let mut p = json!({"name": "greet", "arguments": {}, "_meta": meta});
            if let (Some(o), Some(e)) = (p.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            Message::request(5, "tools/call", Some(&raw_value(&p)))
        };
        let plain = Message::request(5, "tools/call", Some(&raw_value(&json!({"name": "greet"}))));
        assert!(for_handshake(&plain, Some(5)).is_none(), "a handshake-era request goes as it is");
        let Some(Ok(stripped)) = for_handshake(&call(json!({})), Some(5)) else { panic!("stripped") };
        let p: Value = serde_json::from_str(stripped.params().expect("params").get()).expect("json");
        assert_eq!(p, json!({"name": "greet", "arguments": {}, "_meta": {"progressToken": 7}}));
        for extra in [json!({"requestState": "s"}), json!({"inputResponses": {"k": {}}})] {
            let Some(Err(answer)) = for_handshake(&call(extra), Some(5)) else { panic!("refused") };
            let e: Value = serde_json::from_str(answer.error_object().expect("error").get()).expect("json");
            assert_eq!(
                (e["code"].as_i64(), e["data"]["reason"].as_str()),
                (Some(-32602), Some("invalid_request_state"))
            );
            assert_eq!(answer.id().map(|i| i.get().to_owned()).as_deref(), Some("5"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn verdicts_expire_and_stay_bounded() {
        let cache = EraCache::default();
        cache.set("http://a/mcp", Era::Modern);
        assert_eq!(cache.get("http://a/mcp"), Some(Era::Modern));
        assert_eq!(cache.get("http://b/mcp"), None);
        tokio::time::advance(VERDICT_TTL + Duration::from_secs(1)).await;
        assert_eq!(cache.get("http://a/mcp"), None, "an old verdict is probed again");
        for n in 0..MAX_VERDICTS * 2 {
            cache.set(&format!("http://{n}/mcp"), Era::Handshake);
        }
        assert!(cache.verdicts.lock().expect("lock").len() <= MAX_VERDICTS);
    }
}
