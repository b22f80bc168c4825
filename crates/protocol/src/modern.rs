//! The 2026-07-28 vocabulary a server side needs: the per-request `_meta` envelope, the routing
//! headers and their value encoding, the header/body cross-check, result types and caching
//! fields. Pure: the gateway's modern front calls these, and they are unit-tested here.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use crate::{method, version};

/// `_meta` key: the revision of this request (required).
pub const META_PROTOCOL_VERSION: &str = version::MODERN_ENVELOPE_KEY;
/// `_meta` key: the capabilities of this request's client (required, `{}` for none).
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// `_meta` key: the client's `Implementation` (optional).
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
/// `_meta` key: the log level this request opts in to (optional; absent = no logs).
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
/// `_meta` key on results: the server's `Implementation`.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// `_meta` key on listen frames: the listen request's id.
pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// Header: the revision, equal to the envelope's.
pub const HEADER_PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// Header: the body's `method`.
pub const HEADER_METHOD: &str = "mcp-method";
/// Header: the body's `params.name` or `params.uri` (name-bearing methods).
pub const HEADER_NAME: &str = "mcp-name";
/// Header prefix: a `tools/call` argument annotated `x-mcp-header`.
pub const HEADER_PARAM_PREFIX: &str = "mcp-param-";
/// tether's own header: the gateway-issued correlation key a modern client may echo to keep
/// its upstream binding (SEP-2567 leaves the carrier to the gateway).
pub const HEADER_CORRELATION_KEY: &str = "tether-correlation-key";

/// `resultType` of a final result.
pub const RESULT_COMPLETE: &str = "complete";
/// `resultType` of a result that asks the client for input first.
pub const RESULT_INPUT_REQUIRED: &str = "input_required";

/// Methods whose results carry `ttlMs` and `cacheScope`.
pub const CACHEABLE_METHODS: [&str; 6] = [
    method::TOOLS_LIST,
    "prompts/list",
    "resources/list",
    method::RESOURCES_TEMPLATES_LIST,
    method::RESOURCES_READ,
    method::SERVER_DISCOVER,
];

/// Methods that may answer `input_required`.
pub const INPUT_REQUIRED_METHODS: [&str; 3] = [method::TOOLS_CALL, method::PROMPTS_GET, method::RESOURCES_READ];

/// Handshake-era methods a 2026-07-28 request may not use.
pub const REMOVED_METHODS: [&str; 5] = [
    method::INITIALIZE,
    method::PING,
    method::LOGGING_SET_LEVEL,
    method::RESOURCES_SUBSCRIBE,
    method::RESOURCES_UNSUBSCRIBE,
];

/// The log levels, least severe first.
pub const LOG_LEVELS: [&str; 8] = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];

/// The rank of a log level (`debug` = 0), `None` for an unknown one.
pub fn log_rank(level: &str) -> Option<usize> {
    LOG_LEVELS.iter().position(|l| *l == level)
}

/// Whether a body claims the modern era: its `params._meta` carries the envelope's version key
/// (the key alone is the signal), and it is not `initialize`.
pub fn claims_modern(method_name: Option<&str>, params: Option<&str>) -> bool {
    // The substring test keeps the handshake era's hot path to one scan; only a body that
    // names the key is parsed, so that a tool argument quoting it is not taken for an envelope.
    method_name != Some(method::INITIALIZE)
        && params.is_some_and(|p| {
            p.contains(META_PROTOCOL_VERSION)
                && serde_json::from_str::<Value>(p)
                    .ok()
                    .is_some_and(|v| v.get("_meta").and_then(|m| m.get(META_PROTOCOL_VERSION)).is_some())
        })
}

/// The envelope of one request, as the client sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The requested revision.
    pub version: String,
    /// The client's capabilities for this request.
    pub capabilities: Value,
    /// The client's `Implementation`, when given.
    pub client_info: Option<Value>,
    /// The log level this request opts in to.
    pub log_level: Option<String>,
}

/// Why an envelope is unusable (answered with -32602).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// `params` or `params._meta` is not an object.
    #[error("params._meta must be an object carrying the 2026-07-28 envelope")]
    NoMeta,
    /// A required key is missing or of the wrong type.
    #[error("params._meta[{0:?}] is missing or not valid")]
    Missing(&'static str),
}

impl Envelope {
    /// Reads the envelope from a request's params.
    pub fn parse(params: &Value) -> Result<Envelope, EnvelopeError> {
        let meta = params.get("_meta").and_then(Value::as_object).ok_or(EnvelopeError::NoMeta)?;
        let version = meta
            .get(META_PROTOCOL_VERSION)
            .and_then(Value::as_str)
            .ok_or(EnvelopeError::Missing(META_PROTOCOL_VERSION))?
            .to_owned();
        let capabilities = meta
            .get(META_CLIENT_CAPABILITIES)
            .filter(|c| c.is_object())
            .cloned()
            .ok_or(EnvelopeError::Missing(META_CLIENT_CAPABILITIES))?;
        let client_info = meta.get(META_CLIENT_INFO).filter(|c| c.is_object()).cloned();
        let log_level = match meta.get(META_LOG_LEVEL) {
            None | Some(Value::Null) => None,
            Some(Value::String(l)) if log_rank(l).is_some() => Some(l.clone()),
            Some(_) => return Err(EnvelopeError::Missing(META_LOG_LEVEL)),
        };
        Ok(Envelope { version, capabilities, client_info, log_level })
    }

    /// Whether this request's client declared what a server→client request of `method` needs.
    pub fn allows(&self, method_name: &str, params: &Value) -> bool {
        let caps = &self.capabilities;
        match method_name {
            method::ELICITATION_CREATE => {
                let Some(e) = caps.get("elicitation") else { return false };
                // A bare `elicitation: {}` counts as form mode.
                match params.get("mode").and_then(Value::as_str) {
                    Some("url") => e.get("url").is_some(),
                    _ => e.get("form").is_some() || e.as_object().is_some_and(Map::is_empty),
                }
            }
            method::SAMPLING_CREATE_MESSAGE => {
                caps.get("sampling").is_some()
                    && (params.get("tools").is_none() || caps["sampling"].get("tools").is_some())
            }
            method::ROOTS_LIST => caps.get("roots").is_some(),
            _ => false,
        }
    }
}

/// The value `Mcp-Name` must carry for a request: `params.name` for `tools/call` and
/// `prompts/get`, `params.uri` for `resources/read`; `None` for other methods.
pub fn name_of<'a>(method_name: &str, params: &'a Value) -> Option<Option<&'a str>> {
    let key = match method_name {
        method::TOOLS_CALL | method::PROMPTS_GET => "name",
        method::RESOURCES_READ => "uri",
        _ => return None,
    };
    Some(params.get(key).and_then(Value::as_str))
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
    format!("=?base64?{}?=", STANDARD.encode(value.as_bytes()))
}

/// Decodes a header value; `None` when the base64 form is not canonical or not UTF-8.
pub fn decode_header_value(raw: &str) -> Option<String> {
    let Some(inner) = raw.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")) else {
        return Some(raw.to_owned());
    };
    let bytes = STANDARD.decode(inner).ok()?;
    // Only the canonical encoding is accepted: one value, one spelling.
    if STANDARD.encode(&bytes) != inner {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// A routing header that disagrees with the body (answered with -32020).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The header, lowercase.
    pub header: String,
    /// What the body says (empty when the body has nothing for it).
    pub body: String,
    /// What the header said, `None` when it was absent.
    pub sent: Option<String>,
}

/// Checks the routing headers against the body, in the spec's order: `MCP-Protocol-Version`,
/// `Mcp-Method`, then `Mcp-Name` for name-bearing methods. `header(name)` returns every value
/// the request carried for a (lowercase) header name; a repeated routing header is a mismatch.
pub fn check_headers<'h>(
    header: impl Fn(&str) -> Vec<&'h str>,
    method_name: &str,
    envelope_version: &str,
    params: &Value,
) -> Result<(), Mismatch> {
    let expect = |name: &str, body: &str, decode: bool| -> Result<(), Mismatch> {
        let values = header(name);
        let fail = |sent: Option<&str>| Mismatch {
            header: name.to_owned(),
            body: body.to_owned(),
            sent: sent.map(str::to_owned),
        };
        match values.as_slice() {
            [one] => {
                let v = if decode { decode_header_value(one) } else { Some((*one).to_owned()) };
                if v.as_deref() == Some(body) { Ok(()) } else { Err(fail(Some(one))) }
            }
            [] => Err(fail(None)),
            [first, ..] => Err(fail(Some(first))),
        }
    };
    expect(HEADER_PROTOCOL_VERSION, envelope_version, false)?;
    expect(HEADER_METHOD, method_name, false)?;
    if let Some(name) = name_of(method_name, params) {
        expect(HEADER_NAME, name.unwrap_or(""), true)?;
    }
    Ok(())
}

/// One tool argument mirrored into an `Mcp-Param-<header>` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderParam {
    /// The header token (after `Mcp-Param-`).
    pub header: String,
    /// The chain of `properties` keys leading to the argument.
    pub path: Vec<String>,
}

/// The `x-mcp-header` arguments of a tool's input schema, reached through `properties` chains
/// (invalid annotations are skipped: such a tool is the client's to drop).
pub fn header_params(schema: &Value) -> Vec<HeaderParam> {
    fn walk(schema: &Value, path: &mut Vec<String>, out: &mut Vec<HeaderParam>, depth: usize) {
        let Some(props) = schema.get("properties").and_then(Value::as_object) else { return };
        if depth > 16 {
            return;
        }
        for (key, sub) in props {
            path.push(key.clone());
            if let Some(h) = sub.get("x-mcp-header").and_then(Value::as_str) {
                out.push(HeaderParam { header: h.to_ascii_lowercase(), path: path.clone() });
            }
            walk(sub, path, out, depth + 1);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(schema, &mut Vec::new(), &mut out, 0);
    out
}

/// Checks `Mcp-Param-*` headers of a `tools/call` against its arguments: each annotated
/// argument that is present (and not null) must be mirrored, with an equal value (integers
/// compared numerically); absent arguments must have no header.
pub fn check_param_headers<'h>(
    header: impl Fn(&str) -> Vec<&'h str>,
    params: &[HeaderParam],
    arguments: &Value,
) -> Result<(), Mismatch> {
    for hp in params {
        let name = format!("{HEADER_PARAM_PREFIX}{}", hp.header);
        let value = hp.path.iter().try_fold(arguments, |node, key| node.get(key)).filter(|v| !v.is_null());
        let body = match value {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let sent = header(&name);
        let fail = |sent: Option<&str>| Mismatch {
            header: name.clone(),
            body: body.clone().unwrap_or_default(),
            sent: sent.map(str::to_owned),
        };
        match (&body, sent.as_slice()) {
            (None, []) => {}
            (None, [s, ..]) => return Err(fail(Some(s))),
            (Some(_), []) => return Err(fail(None)),
            (Some(b), [s]) => {
                let decoded = decode_header_value(s);
                let numeric_equal = value
                    .and_then(Value::as_i64)
                    .is_some_and(|n| decoded.as_deref().and_then(|d| d.trim().parse::<i64>().ok()) == Some(n));
                if decoded.as_deref() != Some(b.as_str()) && !numeric_equal {
                    return Err(fail(Some(s)));
                }
            }
            (Some(_), [s, ..]) => return Err(fail(Some(s))),
        }
    }
    Ok(())
}

/// Makes a handshake-era result a 2026-07-28 one: `resultType: "complete"` when absent, the
/// caching fields (`ttlMs: 0`, `cacheScope: "private"`, the SDKs' defaults) on cacheable
/// methods, and the server's identity in `_meta`.
pub fn complete_result(result: &mut Value, method_name: &str, server_info: Option<&Value>) {
    let Some(obj) = result.as_object_mut() else { return };
    obj.entry("resultType").or_insert_with(|| Value::String(RESULT_COMPLETE.into()));
    if CACHEABLE_METHODS.contains(&method_name) {
        obj.entry("ttlMs").or_insert(Value::from(0));
        obj.entry("cacheScope").or_insert_with(|| Value::String("private".into()));
    }
    if let Some(info) = server_info {
        let meta = obj.entry("_meta").or_insert_with(|| Value::Object(Map::new()));
        if let Some(m) = meta.as_object_mut() {
            m.entry(META_SERVER_INFO).or_insert_with(|| info.clone());
        }
    }
}

/// A `server/discover` result made from a handshake-era `initialize` result: the modern
/// revision plus the handshake ones, the upstream's capabilities, instructions and identity.
pub fn discover_from_initialize(init: &Value) -> Value {
    let mut supported: Vec<&str> = version::MODERN_VERSIONS.to_vec();
    supported.extend(version::HANDSHAKE_VERSIONS.iter().rev());
    let mut out = serde_json::json!({
        "supportedVersions": supported,
        "capabilities": init.get("capabilities").filter(|c| c.is_object()).cloned().unwrap_or_else(|| serde_json::json!({})),
    });
    if let Some(i) = init.get("instructions").filter(|i| i.is_string()) {
        out["instructions"] = i.clone();
    }
    complete_result(&mut out, method::SERVER_DISCOVER, init.get("serverInfo"));
    out
}

/// The prefix of the reserved `_meta` keys of the 2026-07-28 envelope.
pub const META_RESERVED_PREFIX: &str = "io.modelcontextprotocol/";

/// Takes the 2026-07-28 envelope out of a request's params before it goes to a handshake-era
/// session: its reserved `io.modelcontextprotocol/*` keys (the session's `initialize` already
/// carries their meaning), and `_meta` itself when nothing else is left in it. A server of
/// both eras would otherwise take the request for a modern one. Other `_meta` keys (e.g.
/// `progressToken`) stay. Says whether anything was removed.
pub fn strip_envelope(params: &mut Value) -> bool {
    let Some(obj) = params.as_object_mut() else { return false };
    let Some(meta) = obj.get_mut("_meta").and_then(Value::as_object_mut) else { return false };
    let before = meta.len();
    meta.retain(|k, _| !k.starts_with(META_RESERVED_PREFIX));
    let changed = meta.len() != before;
    if meta.is_empty() {
        obj.remove("_meta");
    }
    changed
}

/// Stamps a listen frame's params with the listen's id.
pub fn stamp_subscription(params: &mut Value, listen_id: &Value) {
    if !params.is_object() {
        *params = Value::Object(Map::new());
    }
    let Some(obj) = params.as_object_mut() else { return };
    let meta = obj.entry("_meta").or_insert_with(|| Value::Object(Map::new()));
    if let Some(m) = meta.as_object_mut() {
        m.insert(META_SUBSCRIPTION_ID.into(), listen_id.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Vec<&'static str> {
        let map: Vec<(&'static str, &'static str)> = pairs.to_vec();
        move |n: &str| map.iter().filter(|(k, _)| *k == n).map(|(_, v)| *v).collect()
    }

    #[test]
    fn the_envelope_is_read_and_required() {
        let p = json!({"_meta": {META_PROTOCOL_VERSION: "2026-07-28", META_CLIENT_CAPABILITIES: {"elicitation": {}},
            META_CLIENT_INFO: {"name": "c"}, META_LOG_LEVEL: "info"}});
        let e = Envelope::parse(&p).expect("envelope");
        assert_eq!(e.version, "2026-07-28");
        assert_eq!(e.log_level.as_deref(), Some("info"));
        assert!(e.allows(method::ELICITATION_CREATE, &json!({"message": "x"})));
        assert!(!e.allows(method::ELICITATION_CREATE, &json!({"mode": "url"})));
        assert!(!e.allows(method::SAMPLING_CREATE_MESSAGE, &json!({})));
        assert!(!e.allows(method::ROOTS_LIST, &json!({})));
        assert_eq!(Envelope::parse(&json!({})), Err(EnvelopeError::NoMeta));
        let no_caps = json!({"_meta": {META_PROTOCOL_VERSION: "2026-07-28"}});
        assert_eq!(Envelope::parse(&no_caps), Err(EnvelopeError::Missing(META_CLIENT_CAPABILITIES)));
        let bad_level =
            json!({"_meta": {META_PROTOCOL_VERSION: "x", META_CLIENT_CAPABILITIES: {}, META_LOG_LEVEL: "loud"}});
        assert!(Envelope::parse(&bad_level).is_err());
    }

    #[test]
    fn modern_claims_are_recognised_by_the_key() {
        assert!(claims_modern(
            Some("tools/list"),
            Some(r#"{"_meta":{"io.modelcontextprotocol/protocolVersion":"x"}}"#)
        ));
        assert!(!claims_modern(
            Some("initialize"),
            Some(r#"{"_meta":{"io.modelcontextprotocol/protocolVersion":"x"}}"#)
        ));
        assert!(!claims_modern(Some("tools/list"), Some("{}")));
        // The key quoted in a handshake-era tool argument is not an envelope.
        let quoted = r#"{"name":"echo","arguments":{"message":"io.modelcontextprotocol/protocolVersion"}}"#;
        assert!(!claims_modern(Some("tools/call"), Some(quoted)));
        assert!(!claims_modern(Some("tools/list"), None));
    }

    #[test]
    fn routing_headers_must_agree_with_the_body() {
        let p = json!({"name": "echo"});
        let ok = headers(&[("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"), ("mcp-name", "echo")]);
        assert_eq!(check_headers(ok, "tools/call", "2026-07-28", &p), Ok(()));
        let wrong =
            headers(&[("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/list"), ("mcp-name", "echo")]);
        assert_eq!(
            check_headers(wrong, "tools/call", "2026-07-28", &p).map_err(|m| m.header),
            Err("mcp-method".into())
        );
        let missing = headers(&[("mcp-protocol-version", "2026-07-28"), ("mcp-name", "echo")]);
        let m = check_headers(missing, "tools/call", "2026-07-28", &p).expect_err("missing");
        assert_eq!((m.header.as_str(), m.sent), ("mcp-method", None));
        let twice = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
            ("mcp-name", "echo"),
        ]);
        assert!(check_headers(twice, "tools/call", "2026-07-28", &p).is_err(), "a repeated routing header");
        let b64 = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "resources/read"),
            ("mcp-name", "=?base64?dGVzdDovL8O8?="),
        ]);
        assert_eq!(check_headers(b64, "resources/read", "2026-07-28", &json!({"uri": "test://ü"})), Ok(()));
        let version = headers(&[("mcp-protocol-version", "2025-11-25"), ("mcp-method", "tools/list")]);
        assert!(check_headers(version, "tools/list", "2026-07-28", &json!({})).is_err());
    }

    #[test]
    fn header_values_round_trip_and_only_canonically() {
        for v in ["plain 1", "日本", "=?base64?abc?=", " edge", "a\nb", ""] {
            assert_eq!(decode_header_value(&encode_header_value(v)).as_deref(), Some(v));
        }
        assert_eq!(encode_header_value("日本"), "=?base64?5pel5pys?=");
        assert_eq!(decode_header_value("=?base64?Zm9v?="), Some("foo".into()));
        assert_eq!(decode_header_value("=?base64?Zm9=?="), None, "non-canonical padding");
        assert_eq!(decode_header_value("=?base64?!!?="), None);
    }

    #[test]
    fn param_headers_mirror_annotated_arguments() {
        let schema = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "opts": {"type": "object", "properties": {"n": {"type": "integer", "x-mcp-header": "N"}}},
        }});
        let hp = header_params(&schema);
        assert_eq!(hp.len(), 2);
        let args = json!({"region": "eu", "opts": {"n": 7}});
        let ok = headers(&[("mcp-param-region", "eu"), ("mcp-param-n", "7")]);
        assert_eq!(check_param_headers(ok, &hp, &args), Ok(()));
        let missing = headers(&[("mcp-param-region", "eu")]);
        assert_eq!(check_param_headers(missing, &hp, &args).map_err(|m| m.header), Err("mcp-param-n".into()));
        let differs = headers(&[("mcp-param-region", "us"), ("mcp-param-n", "7")]);
        assert!(check_param_headers(differs, &hp, &args).is_err());
        let absent_arg = headers(&[("mcp-param-region", "eu")]);
        assert!(check_param_headers(absent_arg, &hp, &json!({})).is_err(), "a header for an absent argument");
        let none: HashMap<&str, &str> = HashMap::new();
        assert_eq!(check_param_headers(|n| none.get(n).copied().into_iter().collect(), &hp, &json!({})), Ok(()));
    }

    #[test]
    fn results_gain_the_modern_fields() {
        let mut r = json!({"tools": []});
        complete_result(&mut r, method::TOOLS_LIST, Some(&json!({"name": "s"})));
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["ttlMs"], 0);
        assert_eq!(r["cacheScope"], "private");
        assert_eq!(r["_meta"][META_SERVER_INFO]["name"], "s");
        let mut r = json!({"content": [], "resultType": "input_required"});
        complete_result(&mut r, method::TOOLS_CALL, None);
        assert_eq!(r, json!({"content": [], "resultType": "input_required"}));
        let d = discover_from_initialize(&json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
            "serverInfo": {"name": "up", "version": "1"}, "instructions": "hi"}));
        assert_eq!(d["supportedVersions"][0], "2026-07-28");
        assert!(d["supportedVersions"].as_array().is_some_and(|v| v.contains(&json!("2025-11-25"))));
        assert_eq!(d["capabilities"], json!({"tools": {}}));
        assert_eq!(d["instructions"], "hi");
        assert_eq!(d["ttlMs"], 0);
        assert_eq!(d["_meta"][META_SERVER_INFO]["name"], "up");
        let mut p = json!({"uri": "x"});
        stamp_subscription(&mut p, &json!("L1"));
        assert_eq!(p["_meta"][META_SUBSCRIPTION_ID], "L1");
    }

    #[test]
    fn strip_envelope_keeps_other_meta() {
        let mut p = serde_json::json!({
            "name": "t",
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "progressToken": 7}
        });
        assert!(strip_envelope(&mut p));
        assert_eq!(p, serde_json::json!({"name": "t", "_meta": {"progressToken": 7}}));
        let mut only = serde_json::json!({"_meta": {"io.modelcontextprotocol/clientCapabilities": {}}});
        assert!(strip_envelope(&mut only));
        assert_eq!(only, serde_json::json!({}));
        let mut none = serde_json::json!({"uri": "test://x"});
        assert!(!strip_envelope(&mut none));
        assert_eq!(none, serde_json::json!({"uri": "test://x"}));
    }
}
