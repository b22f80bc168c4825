//! SSE event ids and the stream keys inside them: `<stream key>-<seq>`, where a stream key is
//! `<instance>.<n>[.<request id hex>]` for a request stream and `<instance>.g<n>` for a
//! standalone one. The instance tag keeps keys of streams opened after a restart apart; the
//! request id (its JSON text, hex-encoded) lets a resume after a restart still answer it.

use std::sync::Arc;

use serde_json::value::RawValue;

/// The key under which a stream's events are stored.
pub fn stream_key(instance: &str, stream: u64, standalone: bool, request_hex: Option<&str>) -> String {
    let mut key = format!("{instance}.{}{stream}", if standalone { "g" } else { "" });
    if let (false, Some(r)) = (standalone, request_hex) {
        key.push('.');
        key.push_str(r);
    }
    key
}

/// What a stream key says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamKey {
    /// A standalone (GET) stream, rather than a request stream.
    pub standalone: bool,
    /// Its stream number, when it belongs to the instance that reads it.
    pub local: Option<u64>,
    /// For a request stream: the client's request id, hex-encoded JSON.
    pub request_hex: Option<Arc<str>>,
}

impl StreamKey {
    /// The client's id of the request a request stream answered.
    pub fn request_id(&self) -> Option<Box<RawValue>> {
        let bytes = unhex(self.request_hex.as_deref()?)?;
        RawValue::from_string(String::from_utf8(bytes).ok()?).ok()
    }
}

/// Reads a stream key; `instance` is the reader's own tag (another instance's stream has no
/// local number).
pub fn parse_stream_key(key: &str, instance: &str) -> StreamKey {
    let mut parts = key.split('.');
    let (Some(inst), Some(n)) = (parts.next(), parts.next()) else { return StreamKey::default() };
    let (standalone, n) = match n.strip_prefix('g') {
        Some(rest) => (true, rest),
        None => (false, n),
    };
    StreamKey {
        standalone,
        local: if inst == instance { n.parse().ok() } else { None },
        request_hex: parts.next().filter(|h| !standalone && !h.is_empty()).map(Arc::from),
    }
}

/// The hex form of a request id's JSON text, as stream keys carry it.
pub fn request_hex(id: &RawValue) -> String {
    id.get().bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// An SSE event id: `<stream key>-<seq>`.
pub fn event_id(key: &str, seq: u64) -> String {
    format!("{key}-{seq}")
}

/// Splits an event id into its stream key and seq.
pub fn parse_event_id(id: &str) -> Option<(&str, u64)> {
    let (key, seq) = id.trim().rsplit_once('-')?;
    Some((key, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_round_trip_with_the_request_id() {
        let id = RawValue::from_string(r#""req-1 \"x\"""#.to_owned()).expect("json");
        let key = stream_key("0000cafe", 7, false, Some(&request_hex(&id)));
        let parsed = parse_stream_key(&key, "0000cafe");
        assert!(!parsed.standalone);
        assert_eq!(parsed.local, Some(7));
        assert_eq!(parsed.request_id().map(|r| r.get().to_owned()), Some(id.get().to_owned()));
        let g = stream_key("0000cafe", 3, true, Some("31"));
        assert_eq!(g, "0000cafe.g3", "a standalone stream answers no request");
        let parsed = parse_stream_key(&g, "0000cafe");
        assert!(parsed.standalone && parsed.request_id().is_none() && parsed.local == Some(3));
        assert_eq!(parse_stream_key("0000beef.12.3132", "0000cafe").local, None, "another instance's stream");
        assert_eq!(
            parse_stream_key("0000beef.12.3132", "0000cafe").request_id().map(|r| r.get().to_owned()),
            Some("12".into())
        );
        assert_eq!(parse_stream_key("garbage", "0000cafe"), StreamKey::default());
        assert!(parse_stream_key("0000cafe.1.313", "0000cafe").request_id().is_none(), "odd hex");
        assert_eq!(parse_event_id(&event_id(&key, 42)).map(|(k, s)| (k.to_owned(), s)), Some((key, 42)));
        assert_eq!(parse_event_id("no-seq-x"), None);
    }
}
