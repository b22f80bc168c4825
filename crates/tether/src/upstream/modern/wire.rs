//! The 2026-07-28 wire shapes the modern upstream needs, as pure functions: the per-request
//! `_meta` envelope, the routing headers and their value encoding, `x-mcp-header` discovery in
//! tool schemas, and the translation of results back to the handshake era. No I/O.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use tether_protocol::message::raw_value;
use tether_protocol::{Message, error_code, method as m, version};

/// The revision this connection speaks to the remote.
pub const MODERN_VERSION: &str = "2026-07-28";

// The envelope's keys, named once in `tether_protocol::modern`.
use tether_protocol::modern::{
    META_CLIENT_CAPABILITIES as META_CAPABILITIES, META_CLIENT_INFO, META_LOG_LEVEL,
    META_PROTOCOL_VERSION as META_VERSION,
};
pub(super) use tether_protocol::modern::{META_SERVER_INFO, META_SUBSCRIPTION_ID as META_SUBSCRIPTION};

use tether_protocol::modern::{
    HEADER_METHOD as METHOD_HEADER, HEADER_NAME as NAME_HEADER, HEADER_PARAM_PREFIX as PARAM_HEADER_PREFIX,
    HEADER_PROTOCOL_VERSION as VERSION_HEADER,
};

/// Result fields that exist only in the modern revision.
const MODERN_RESULT_FIELDS: [&str; 3] = ["resultType", "ttlMs", "cacheScope"];
/// `_meta` stamps that exist only in the modern revision.
const MODERN_META_KEYS: [&str; 2] = [META_SERVER_INFO, META_SUBSCRIPTION];

/// What the client said about itself in `initialize`, sent with every request.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientProfile {
    /// The client's capabilities (`{}` when it declared none).
    pub capabilities: Value,
    /// The client's `clientInfo`, if it sent one.
    pub client_info: Option<Value>,
}

impl Default for ClientProfile {
    fn default() -> Self {
        ClientProfile { capabilities: json!({}), client_info: None }
    }
}

impl ClientProfile {
    /// The profile in the client's `initialize` params.
    pub fn from_initialize(params: &Value) -> ClientProfile {
        let capabilities = match params.get("capabilities") {
            Some(c @ Value::Object(_)) => c.clone(),
            _ => json!({}),
        };
        ClientProfile { capabilities, client_info: params.get("clientInfo").filter(|v| v.is_object()).cloned() }
    }
}

/// One tool argument that is mirrored into an `Mcp-Param-<header>` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderParam {
    /// The header token (after `Mcp-Param-`).
    pub header: String,
    /// The chain of `properties` keys leading to the argument.
    pub path: Vec<String>,
}

/// The client's params with the 2026-07-28 envelope merged into `_meta` (which keeps what the
/// client put there, a progress token say).
pub fn with_envelope(params: &Value, profile: &ClientProfile, log_level: Option<&str>) -> Value {
    let mut params = match params {
        Value::Object(o) => Value::Object(o.clone()),
        _ => json!({}),
    };
    let meta = params.as_object_mut().map(|p| p.entry("_meta").or_insert_with(|| json!({})));
    if let Some(meta) = meta {
        if !meta.is_object() {
            *meta = json!({});
        }
        if let Some(m) = meta.as_object_mut() {
            m.insert(META_VERSION.into(), Value::String(MODERN_VERSION.into()));
            m.insert(META_CAPABILITIES.into(), profile.capabilities.clone());
            match &profile.client_info {
                Some(info) => m.insert(META_CLIENT_INFO.into(), info.clone()),
                None => m.remove(META_CLIENT_INFO),
            };
            match log_level {
                Some(level) => m.insert(META_LOG_LEVEL.into(), Value::String(level.into())),
                None => m.remove(META_LOG_LEVEL),
            };
        }
    }
    params
}

/// Whether `params` already carry the 2026-07-28 envelope: a modern client's request that the
/// modern front forwards as the client sent it (sent as is, answered as is; [`super`]).
pub fn is_enveloped(params: &Value) -> bool {
    params.get("_meta").and_then(|m| m.get(META_VERSION)).is_some()
}

/// Whether `params` continue an `input_required` round (`inputResponses`, `requestState`): the
/// server that issued them is the only one that can go on with them.
pub fn continues_round(params: &Value) -> bool {
    params.get("inputResponses").is_some() || params.get("requestState").is_some()
}

/// The routing headers of one request: `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` (for
/// `tools/call`, `prompts/get`, `resources/read`) and `Mcp-Param-*` for the tool's
/// `x-mcp-header` arguments that are present. Values are encoded as the revision says.
pub fn request_headers(method: &str, params: &Value, header_params: &[HeaderParam]) -> Vec<(String, String)> {
    let mut out =
        vec![(VERSION_HEADER.to_owned(), MODERN_VERSION.to_owned()), (METHOD_HEADER.to_owned(), method.into())];
    let name = match method {
        m::TOOLS_CALL | m::PROMPTS_GET => params.get("name"),
        m::RESOURCES_READ => params.get("uri"),
        _ => None,
    };
    if let Some(name) = name.and_then(Value::as_str) {
        out.push((NAME_HEADER.to_owned(), encode_header_value(name)));
    }
    if method == m::TOOLS_CALL {
        let args = params.get("arguments").unwrap_or(&Value::Null);
        for hp in header_params {
            let value = hp.path.iter().try_fold(args, |node, key| node.get(key));
            let rendered = match value {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Bool(b)) => Some(b.to_string()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            if let Some(r) = rendered {
                out.push((format!("{PARAM_HEADER_PREFIX}{}", hp.header.to_ascii_lowercase()), encode_header_value(&r)));
            }
        }
    }
    out
}

/// A header value as 2026-07-28 sends it: plain printable ASCII without edge whitespace as is,
/// anything else (and anything that looks like the sentinel) as `=?base64?…?=`.
pub fn encode_header_value(value: &str) -> String {
    let printable = value.bytes().all(|b| (0x20..=0x7e).contains(&b));
    let trimmed = value.trim_matches(|c: char| c.is_ascii_whitespace()) == value;
    let sentinel = value.starts_with("=?base64?") && value.ends_with("?=");
    if printable && trimmed && !sentinel {
        return value.to_owned();
    }
    format!("=?base64?{}?=", base64(value.as_bytes()))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `x-mcp-header` arguments of a tool's input schema, reached through `properties` chains;
/// an error names the first invalid annotation.
pub fn header_params(schema: &Value) -> Result<Vec<HeaderParam>, String> {
    fn is_token(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    }
    fn walk(schema: &Value, path: &mut Vec<String>, out: &mut Vec<HeaderParam>) -> Result<(), String> {
        let Some(props) = schema.get("properties").and_then(Value::as_object) else { return Ok(()) };
        for (key, sub) in props {
            path.push(key.clone());
            if let Some(h) = sub.get("x-mcp-header") {
                let where_ = path.join(".");
                let header = h.as_str().ok_or_else(|| format!("{where_}: x-mcp-header is not a string"))?;
                if !is_token(header) {
                    return Err(format!("{where_}: x-mcp-header {header:?} is not an RFC 9110 token"));
                }
                match sub.get("type").and_then(Value::as_str) {
                    Some("string" | "integer" | "boolean") => {}
                    other => return Err(format!("{where_}: x-mcp-header on a property of type {other:?}")),
                }
                out.push(HeaderParam { header: header.to_owned(), path: path.clone() });
            }
            walk(sub, path, out)?;
            path.pop();
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(schema, &mut Vec::new(), &mut out)?;
    let mut seen = BTreeSet::new();
    for hp in &out {
        if !seen.insert(hp.header.to_ascii_lowercase()) {
            return Err(format!("x-mcp-header {:?} is used twice", hp.header));
        }
    }
    Ok(out)
}

/// Removes what a handshake-era client does not know from a 2026-07-28 result: `resultType`,
/// `ttlMs`, `cacheScope`, and the `_meta` stamps (an emptied `_meta` goes too).
pub fn strip_modern_fields(result: &mut Value) {
    let Some(obj) = result.as_object_mut() else { return };
    for f in MODERN_RESULT_FIELDS {
        obj.remove(f);
    }
    if let Some(meta) = obj.get_mut("_meta").and_then(Value::as_object_mut) {
        for k in MODERN_META_KEYS {
            meta.remove(k);
        }
        if meta.is_empty() {
            obj.remove("_meta");
        }
    }
}

/// A listen-stream notification without the modern-only `_meta` stamps.
pub(super) fn strip_notification_meta(mut m: Message) -> Message {
    let Some(params) = m.params() else { return m };
    let Ok(mut v) = serde_json::from_str::<Value>(params.get()) else { return m };
    strip_modern_fields(&mut v);
    m.set_params(raw_value(&v));
    m
}

/// The `initialize` result for a handshake-era client, made from a `server/discover` result.
/// The version is the client's when tether speaks it, else the newest handshake revision.
pub fn initialize_result(discover: &Value, requested: Option<&str>) -> Value {
    let version = match requested {
        Some(v) if version::HANDSHAKE_VERSIONS.contains(&v) => v,
        _ => version::LATEST_HANDSHAKE,
    };
    let server_info = discover
        .get("_meta")
        .and_then(|m| m.get(META_SERVER_INFO))
        .or_else(|| discover.get("serverInfo"))
        .filter(|v| v.is_object())
        .cloned()
        .unwrap_or_else(|| json!({"name": "unknown", "version": "0"}));
    let mut capabilities = discover.get("capabilities").filter(|c| c.is_object()).cloned().unwrap_or_else(|| json!({}));
    if let Some(c) = capabilities.as_object_mut() {
        // `logging/setLevel` is answered on this side (the level then rides every request as
        // the envelope's logLevel), so it works whether or not the 2026-07-28 server names
        // `logging`, which that revision no longer needs.
        c.entry("logging").or_insert_with(|| json!({}));
    }
    let mut out = json!({
        "protocolVersion": version,
        "capabilities": capabilities,
        "serverInfo": server_info,
    });
    if let Some(i) = discover.get("instructions").filter(|i| i.is_string()) {
        out["instructions"] = i.clone();
    }
    out
}

/// What an answer to the bridge's `initialize` probe says about the remote's era: `true` when
/// it refused with -32022 naming only modern revisions (a modern-only server).
pub fn refuses_handshake(answer: &Message) -> bool {
    let Some(e) = answer.error_object().and_then(|e| serde_json::from_str::<Value>(e.get()).ok()) else {
        return false;
    };
    if e.get("code").and_then(Value::as_i64) != Some(error_code::UNSUPPORTED_PROTOCOL_VERSION) {
        return false;
    }
    let supported: Vec<&str> =
        e["data"]["supported"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    !supported.is_empty() && supported.iter().all(|v| version::era(v) == Some(version::Era::Modern))
}

/// Whether a `server/discover` result names 2026-07-28 among its `supportedVersions` (a result
/// without the list is taken at its word).
pub fn lists_modern(discover: &Value) -> bool {
    match discover.get("supportedVersions").and_then(Value::as_array) {
        Some(list) => list.iter().any(|v| v.as_str() == Some(MODERN_VERSION)),
        None => discover.is_object(),
    }
}

/// Whether an HTTP error answer is a handshake-era server refusing a request that carries no
/// session of its (a 400/404 that talks of a session, or of not being initialized): proof that
/// the remote does not speak 2026-07-28. A modern server never speaks of sessions.
pub fn handshake_session_refusal(status: u16, body: &[u8]) -> bool {
    if status != 400 && status != 404 {
        return false;
    }
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    Message::parse(body).is_ok() && (text.contains("session") || text.contains("not initialized"))
}

/// A JSON-RPC error answer in a few words, for logs and error details.
pub fn describe_error(answer: &Message) -> String {
    let e: Value = answer.error_object().and_then(|e| serde_json::from_str(e.get()).ok()).unwrap_or(Value::Null);
    let code = e.get("code").and_then(Value::as_i64).map_or_else(|| "?".to_owned(), |c| c.to_string());
    let message: String = e.get("message").and_then(Value::as_str).unwrap_or("").chars().take(160).collect();
    format!("error {code} {message:?}")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn profile() -> ClientProfile {
        ClientProfile::from_initialize(&json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {"sampling": {}, "elicitation": {}},
            "clientInfo": {"name": "c", "version": "1"}
        }))
    }

    #[test]
    fn handshake_servers_are_told_from_modern_refusals() {
        let everything =
            br#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: Server not initialized"},"id":null}"#;
        let python =
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Bad Request: Missing session ID"}}"#;
        let mismatch = br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32020,"message":"Mcp-Name does not match"}}"#;
        assert!(handshake_session_refusal(400, everything));
        assert!(handshake_session_refusal(400, python));
        assert!(!handshake_session_refusal(400, mismatch));
        assert!(!handshake_session_refusal(500, python));
        assert!(!handshake_session_refusal(400, b"session"), "not JSON-RPC");
        assert!(lists_modern(&json!({"supportedVersions": ["2026-07-28"]})));
        assert!(!lists_modern(&json!({"supportedVersions": ["2025-11-25"]})));
    }

    #[test]
    fn the_envelope_carries_the_clients_profile_and_keeps_its_meta() {
        let p = with_envelope(&json!({"name": "echo", "_meta": {"progressToken": 7}}), &profile(), Some("debug"));
        let m = &p["_meta"];
        assert_eq!(m["progressToken"], 7);
        assert_eq!(m[META_VERSION], "2026-07-28");
        assert_eq!(m[META_CAPABILITIES], json!({"sampling": {}, "elicitation": {}}));
        assert_eq!(m[META_CLIENT_INFO], json!({"name": "c", "version": "1"}));
        assert_eq!(m[META_LOG_LEVEL], "debug");
        assert_eq!(p["name"], "echo");
        // No params at all still get an envelope; no level, no logLevel.
        let p = with_envelope(&Value::Null, &ClientProfile::from_initialize(&json!({})), None);
        assert_eq!(p["_meta"][META_CAPABILITIES], json!({}), "no capabilities is an empty object, never absent");
        assert!(p["_meta"].get(META_LOG_LEVEL).is_none());
        assert!(p["_meta"].get(META_CLIENT_INFO).is_none());
    }

    #[test]
    fn headers_name_the_method_the_target_and_the_declared_params() {
        let schema = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "opts": {"type": "object", "properties": {"dry": {"type": "boolean", "x-mcp-header": "Dry-Run"}}},
            "count": {"type": "integer", "x-mcp-header": "Count"},
            "text": {"type": "string"}
        }});
        let hp = header_params(&schema).expect("valid");
        assert_eq!(hp.len(), 3);
        let params = json!({"name": "deploy", "arguments": {"region": "  eu ", "opts": {"dry": true}, "text": "x"}});
        let h: HashMap<String, String> = request_headers("tools/call", &params, &hp).into_iter().collect();
        assert_eq!(h["mcp-protocol-version"], "2026-07-28");
        assert_eq!(h["mcp-method"], "tools/call");
        assert_eq!(h["mcp-name"], "deploy");
        assert_eq!(h["mcp-param-region"], "=?base64?ICBldSA=?=", "edge whitespace is base64-wrapped");
        assert_eq!(h["mcp-param-dry-run"], "true");
        assert!(!h.contains_key("mcp-param-count"), "an absent argument sends no header");
        let h: HashMap<String, String> =
            request_headers("resources/read", &json!({"uri": "test://ü"}), &[]).into_iter().collect();
        assert_eq!(h["mcp-name"], "=?base64?dGVzdDovL8O8?=");
        let h = request_headers("tools/list", &json!({}), &hp);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn header_values_are_encoded_as_the_revision_says() {
        assert_eq!(encode_header_value("plain-value 1"), "plain-value 1");
        assert_eq!(encode_header_value("日本"), "=?base64?5pel5pys?=");
        assert_eq!(encode_header_value("=?base64?abc?="), "=?base64?PT9iYXNlNjQ/YWJjPz0=?=");
        assert_eq!(encode_header_value("a\nb"), "=?base64?YQpi?=");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn invalid_header_annotations_are_refused() {
        let bad_type = json!({"properties": {"n": {"type": "number", "x-mcp-header": "N"}}});
        assert!(header_params(&bad_type).is_err());
        let bad_token = json!({"properties": {"n": {"type": "string", "x-mcp-header": "a b"}}});
        assert!(header_params(&bad_token).is_err());
        let twice = json!({"properties": {
            "a": {"type": "string", "x-mcp-header": "X"},
            "b": {"type": "string", "x-mcp-header": "x"}
        }});
        assert!(header_params(&twice).is_err());
        assert_eq!(header_params(&json!({"type": "object"})), Ok(vec![]));
    }

    #[test]
    fn modern_only_fields_are_stripped_from_results() {
        let mut r = json!({
            "tools": [], "resultType": "complete", "ttlMs": 0, "cacheScope": "private",
            "_meta": {META_SERVER_INFO: {"name": "s"}}
        });
        strip_modern_fields(&mut r);
        assert_eq!(r, json!({"tools": []}));
        let mut r = json!({"content": [], "resultType": "complete", "_meta": {"mine": 1, META_SERVER_INFO: {}}});
        strip_modern_fields(&mut r);
        assert_eq!(r, json!({"content": [], "_meta": {"mine": 1}}));
    }

    #[test]
    fn initialize_is_answered_from_discover() {
        let d = json!({
            "supportedVersions": ["2026-07-28"], "capabilities": {"tools": {"listChanged": true}},
            "instructions": "be kind", "ttlMs": 0, "cacheScope": "private", "resultType": "complete",
            "_meta": {META_SERVER_INFO: {"name": "modern", "version": "2"}}
        });
        let i = initialize_result(&d, Some("2025-06-18"));
        assert_eq!(
            i,
            json!({
                "protocolVersion": "2025-06-18", "capabilities": {"tools": {"listChanged": true}, "logging": {}},
                "serverInfo": {"name": "modern", "version": "2"}, "instructions": "be kind"
            })
        );
        assert_eq!(initialize_result(&d, Some("2026-07-28"))["protocolVersion"], version::LATEST_HANDSHAKE);
        assert_eq!(initialize_result(&json!({"serverInfo": {"name": "old"}}), None)["serverInfo"]["name"], "old");
    }

    #[test]
    fn only_a_refusal_naming_modern_versions_marks_a_modern_only_server() {
        let answer = |data: Value| {
            let m = json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32022, "message": "x", "data": data}});
            Message::parse(m.to_string().as_bytes()).expect("message")
        };
        assert!(refuses_handshake(&answer(json!({"supported": ["2026-07-28"], "requested": "2025-06-18"}))));
        assert!(!refuses_handshake(&answer(json!({"supported": ["2025-06-18", "2026-07-28"]}))));
        assert!(!refuses_handshake(&answer(json!({"supported": []}))));
        assert!(!refuses_handshake(&answer(json!(null))));
        let other = Message::parse(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"no"}}"#).expect("m");
        assert!(!refuses_handshake(&other));
    }
}
