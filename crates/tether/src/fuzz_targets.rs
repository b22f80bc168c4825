//! The fuzz targets of the gateway crate (run by `cargo test`, longer by `scripts/fuzz`), on the
//! harness of [`tether_protocol::fuzzing`]: SSE event ids and stream keys (what a client sends
//! back in `Last-Event-ID`), and the 2026-07-28 envelope and header codec.

use axum::http::{HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;
use tether_protocol::Message;
use tether_protocol::fuzzing::fuzz;

use crate::session::{event_id, parse_event_id, parse_stream_key, stream_key};
use crate::upstream::modern::wire;

/// Any `Last-Event-ID` parses without panicking; what parses re-encodes to itself; a stream key
/// tether makes reads back as its own; a request id found in a key is JSON.
fn event_ids(input: &[u8]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(input);
    if let Some((key, seq)) = parse_event_id(&text) {
        let again = event_id(key, seq);
        prop_assert_eq!(parse_event_id(&again), Some((key, seq)));
        let k = parse_stream_key(key);
        if let Some(id) = k.request_id() {
            prop_assert!(serde_json::from_str::<Value>(id.get()).is_ok());
        }
    }
    let k = parse_stream_key(&text);
    let _ = k.request_id();
    let n = input.iter().fold(0u64, |a, b| a.wrapping_mul(257).wrapping_add(u64::from(*b)));
    let standalone = input.first().is_some_and(|b| b & 1 == 1);
    let key = stream_key(n, standalone);
    let back = parse_stream_key(&key);
    prop_assert_eq!(back.local, Some(n));
    prop_assert_eq!(back.standalone, standalone);
    let id = event_id(&key, n);
    prop_assert_eq!(parse_event_id(&id), Some((key.as_str(), n)));
    Ok(())
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().take_while(|c| *c != b'=') {
        acc = (acc << 6) | ALPHABET.iter().position(|a| *a == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Header values are valid HTTP and decode back to the text; headers built from any tool schema
/// and arguments are valid HTTP; the envelope is always an object carrying the version; the
/// stripping of modern fields is idempotent; nothing panics on any JSON.
fn wire_codec(input: &[u8]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(input);
    let enc = wire::encode_header_value(&text);
    prop_assert!(HeaderValue::from_str(&enc).is_ok(), "not a header value: {:?}", enc);
    match enc.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")) {
        Some(b64) => prop_assert_eq!(base64_decode(b64), Some(text.as_bytes().to_vec())),
        None => prop_assert_eq!(&enc, &text),
    }
    if let Ok(m) = Message::parse(input) {
        let _ = wire::refuses_handshake(&m);
    }
    let Ok(v) = serde_json::from_slice::<Value>(input) else { return Ok(()) };
    if let Ok(hps) = wire::header_params(&v) {
        let params = serde_json::json!({"name": text, "arguments": v});
        for (name, value) in wire::request_headers("tools/call", &params, &hps) {
            prop_assert!(HeaderName::from_bytes(name.as_bytes()).is_ok(), "header name {:?}", name);
            prop_assert!(HeaderValue::from_str(&value).is_ok(), "header value {:?}", value);
        }
    }
    let profile = wire::ClientProfile::from_initialize(&v);
    let env = wire::with_envelope(&v, &profile, Some("debug"));
    prop_assert_eq!(env["_meta"]["io.modelcontextprotocol/protocolVersion"].as_str(), Some(wire::MODERN_VERSION));
    let mut once = v.clone();
    wire::strip_modern_fields(&mut once);
    let mut twice = once.clone();
    wire::strip_modern_fields(&mut twice);
    prop_assert_eq!(&once, &twice);
    if let Some(o) = once.as_object() {
        prop_assert!(!o.contains_key("resultType") && !o.contains_key("ttlMs") && !o.contains_key("cacheScope"));
    }
    let init = wire::initialize_result(&v, v.get("protocolVersion").and_then(Value::as_str));
    prop_assert!(init["serverInfo"].is_object() && init["capabilities"].is_object());
    Ok(())
}

#[test]
fn fuzz_event_ids_and_stream_keys() {
    fuzz("event_id", event_ids);
}

#[test]
fn fuzz_modern_wire_codec() {
    fuzz("wire", wire_codec);
}
