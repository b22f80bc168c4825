//! The fuzz targets of the wire crate (run by `cargo test`, longer by `scripts/fuzz`): the
//! envelope parser and the SSE decoder, each with properties beyond "does not panic".

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;

use crate::fuzzing::{chunks, fuzz};
use crate::sse::{Decoder, encode};
use crate::{Kind, Message, error_code};

/// Parsing never panics; a parsed message re-encodes to bytes that parse to the same envelope
/// and re-encode identically; what tether routes by (`method`, `id`) is what any JSON parser
/// sees, whatever it does with repeated keys; errors carry one of the two codes.
fn envelope(input: &[u8]) -> Result<(), TestCaseError> {
    match Message::parse(input) {
        Ok(m) => {
            let bytes = m.to_bytes();
            let again = Message::parse(&bytes)
                .map_err(|e| TestCaseError::fail(format!("re-encoded message does not parse: {e}")))?;
            prop_assert_eq!(again.kind(), m.kind());
            prop_assert_eq!(again.method(), m.method());
            prop_assert_eq!(again.id().map(|i| i.get()), m.id().map(|i| i.get()));
            prop_assert_eq!(again.to_bytes(), bytes.clone(), "re-encoding is stable");
            // serde_json's Value keeps the last of repeated keys; tether must agree with it.
            // (A number serde_json cannot hold as a Value, 1e400 say, is still valid raw JSON.)
            let Ok(v) = serde_json::from_slice::<Value>(input) else { return Ok(()) };
            prop_assert_eq!(v.get("method").and_then(Value::as_str), m.method());
            let id = v.get("id").map(|i| i.to_string());
            let ours = m.id().and_then(|i| serde_json::from_str::<Value>(i.get()).ok()).map(|v| v.to_string());
            prop_assert_eq!(id, ours);
            if m.kind() == Kind::Request {
                prop_assert!(m.id().is_some_and(|i| i.get() != "null"));
            }
        }
        Err(e) => {
            prop_assert!(e.code() == error_code::PARSE_ERROR || e.code() == error_code::INVALID_REQUEST);
        }
    }
    Ok(())
}

/// The decoder gives the same events however the input is cut into chunks, and never holds
/// more than its limit.
fn sse_chunking(input: &[u8]) -> Result<(), TestCaseError> {
    const MAX: usize = 512;
    let whole = Decoder::new(MAX).feed(input);
    // Cut points derived from the input itself, so the case is reproducible from it.
    let cuts: Vec<u8> = input.iter().rev().take(16).map(|b| b.wrapping_mul(31).wrapping_add(7)).collect();
    let mut d = Decoder::new(MAX);
    let mut events = Vec::new();
    let mut failed = false;
    for c in chunks(input, &cuts) {
        match d.feed(c) {
            Ok(evs) => events.extend(evs),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    match whole {
        Ok(all) => {
            prop_assert!(!failed, "chunked decoding failed where whole decoding did not");
            prop_assert_eq!(all.clone(), events);
            for ev in &all {
                prop_assert!(ev.data.len() <= MAX * 3, "an event over the limit: {} bytes", ev.data.len());
            }
        }
        Err(_) => prop_assert!(failed, "whole decoding failed where chunked decoding did not"),
    }
    Ok(())
}

/// Whatever data tether encodes comes back from the decoder (line breaks normalized to `\n`),
/// with its id.
fn sse_round_trip(input: &[u8]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(input);
    let (id_part, data) = text.split_at(text.char_indices().nth(8).map_or(text.len(), |(i, _)| i));
    let id: String = id_part.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').collect();
    let mut out = Vec::new();
    encode(&mut out, Some(&id), None, data.as_bytes());
    let evs = Decoder::new(1 << 20).feed(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(evs.len(), 1);
    prop_assert_eq!(evs[0].data.clone(), data.replace("\r\n", "\n").replace('\r', "\n"));
    prop_assert_eq!(evs[0].id.clone(), Some(id));
    Ok(())
}

#[test]
fn fuzz_envelope() {
    fuzz("envelope", envelope);
}

#[test]
fn fuzz_sse_decoder() {
    fuzz("sse", |input| {
        sse_chunking(input)?;
        sse_round_trip(input)
    });
}
