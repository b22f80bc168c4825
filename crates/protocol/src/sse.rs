//! Server-Sent Events framing: an encoder for the streams tether serves and an incremental
//! decoder for the streams it reads from upstreams.
//!
//! Written here rather than taken from a crate because both halves must be pure and
//! synchronous (fuzzed, shared by the gateway and the bridge, fed from any byte source) and must
//! surface what stream crates hide: events with empty data (the 2025-11-25 priming event carries
//! only an `id`) and the `retry` field.

/// One decoded event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event` field (`None` means the default type, `message`).
    pub event: Option<String>,
    /// The data lines joined with `\n`.
    pub data: String,
    /// The `id` field, if this event carried one.
    pub id: Option<String>,
    /// The `retry` field in milliseconds, if this event carried one.
    pub retry: Option<u64>,
}

/// Appends one event to `out`. `data` may contain line breaks; each line becomes a `data:` line.
pub fn encode(out: &mut Vec<u8>, id: Option<&str>, event: Option<&str>, data: &[u8]) {
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    let mut rest = data;
    loop {
        let cut = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        out.extend_from_slice(b"data: ");
        match cut {
            Some(i) => {
                out.extend_from_slice(&rest[..i]);
                out.push(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
            None => {
                out.extend_from_slice(rest);
                out.push(b'\n');
                break;
            }
        }
    }
    out.push(b'\n');
}

/// Appends a priming event: an id, a `retry` hint and empty data (SEP-1699).
pub fn encode_priming(out: &mut Vec<u8>, id: &str, retry_ms: u64) {
    out.extend_from_slice(format!("id: {id}\nretry: {retry_ms}\ndata: \n\n").as_bytes());
}

/// Appends a bare `retry` hint, sent before a stream is closed on purpose.
pub fn encode_retry(out: &mut Vec<u8>, retry_ms: u64) {
    out.extend_from_slice(format!("retry: {retry_ms}\n\n").as_bytes());
}

/// The keep-alive comment sent on idle streams.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// Why decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A single line or event grew past the decoder's limit.
    #[error("an SSE event exceeds {0} bytes")]
    TooLarge(usize),
}

/// An incremental decoder: feed it chunks as they arrive, take events as they complete.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    pending: Event,
    has_data: bool,
    has_fields: bool,
    max: usize,
    started: bool,
    after_cr: bool,
}

impl Decoder {
    /// A decoder that refuses events larger than `max` bytes.
    pub fn new(max: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            pending: Event::default(),
            has_data: false,
            has_fields: false,
            max,
            started: false,
            after_cr: false,
        }
    }

    /// Feeds a chunk and returns the events it completed, in order.
    ///
    /// Events with only an `id` or `retry` (no data) are returned too, with empty data, so that
    /// the caller can track the last event id and the reconnection delay.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, DecodeError> {
        let mut events = Vec::new();
        for &b in chunk {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.buf);
                    let line = match (self.started, line.strip_prefix(b"\xEF\xBB\xBF")) {
                        (false, Some(rest)) => rest.to_vec(),
                        _ => line,
                    };
                    self.started = true;
                    self.line(&line, &mut events);
                }
                _ => {
                    self.buf.push(b);
                    if self.buf.len() + self.pending.data.len() > self.max {
                        return Err(DecodeError::TooLarge(self.max));
                    }
                }
            }
        }
        Ok(events)
    }

    fn line(&mut self, line: &[u8], events: &mut Vec<Event>) {
        if line.is_empty() {
            if self.has_fields {
                let mut ev = std::mem::take(&mut self.pending);
                if self.has_data && ev.data.ends_with('\n') {
                    ev.data.pop();
                }
                events.push(ev);
            }
            self.has_data = false;
            self.has_fields = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"data" => {
                self.pending.data.push_str(&value);
                self.pending.data.push('\n');
                self.has_data = true;
                self.has_fields = true;
            }
            b"event" => {
                self.pending.event = Some(value.into_owned());
                self.has_fields = true;
            }
            b"id" if !value.contains('\0') => {
                self.pending.id = Some(value.into_owned());
                self.has_fields = true;
            }
            b"retry" => {
                if let Ok(ms) = value.parse() {
                    self.pending.retry = Some(ms);
                    self.has_fields = true;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], chunk: usize) -> Vec<Event> {
        let mut d = Decoder::new(1 << 20);
        input.chunks(chunk).flat_map(|c| d.feed(c).expect("fits")).collect()
    }

    #[test]
    fn encoded_events_decode_back_in_any_chunking() {
        let mut out = Vec::new();
        encode_priming(&mut out, "s1-0", 3000);
        encode(&mut out, Some("s1-1"), None, br#"{"a":1}"#);
        out.extend_from_slice(KEEP_ALIVE);
        encode(&mut out, None, Some("endpoint"), b"/messages/?session_id=x");
        encode(&mut out, Some("s1-2"), None, b"{\n  \"pretty\": true\r\n}");
        for chunk in [1, 2, 3, 7, out.len()] {
            let evs = decode_all(&out, chunk);
            assert_eq!(evs.len(), 4, "chunk {chunk}");
            assert_eq!(evs[0], Event { id: Some("s1-0".into()), retry: Some(3000), ..Event::default() });
            assert_eq!(evs[1].data, r#"{"a":1}"#);
            assert_eq!(evs[1].id.as_deref(), Some("s1-1"));
            assert_eq!(evs[2].event.as_deref(), Some("endpoint"));
            assert_eq!(evs[3].data, "{\n  \"pretty\": true\n}");
        }
    }

    #[test]
    fn handles_cr_lf_bom_and_fields_without_space() {
        let evs = decode_all(b"\xEF\xBB\xBFid:7\r\ndata:x\r\n\r\ndata\r\r", 1);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].id.as_deref(), Some("7"));
        assert_eq!(evs[0].data, "x");
        assert_eq!(evs[1].data, "");
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut d = Decoder::new(16);
        assert_eq!(d.feed(b"data: 0123456789abcdefghij"), Err(DecodeError::TooLarge(16)));
    }
}
