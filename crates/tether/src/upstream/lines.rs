//! Newline-delimited framing of a child's stdout and stderr that survives any line.
//!
//! tokio-util's `LinesCodec` is not enough here: after a line over its limit `FramedRead` ends
//! the stream (a child that ignores the resulting EPIPE then wedges its session), and it fails
//! on bytes that are not UTF-8. [`BoundedLines`] never fails: a line over the limit is
//! discarded as it arrives (memory stays at the limit) and reported as [`Frame::Long`] with its
//! first and last bytes, which is enough to name the request it answered.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// How many bytes at the end of a discarded line are kept (to find an `"id"` written last).
const TAIL: usize = 64;

/// One line of output.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole line within the limit, without its newline.
    Line(BytesMut),
    /// A line over the limit, discarded.
    Long {
        /// Its first bytes (up to the decoder's `keep`).
        head: Bytes,
        /// Its last bytes (up to 64).
        tail: Vec<u8>,
        /// Its whole length in bytes.
        len: usize,
    },
}

/// Splits bytes into lines of at most `max` bytes; longer ones become [`Frame::Long`].
#[derive(Debug)]
pub struct BoundedLines {
    max: usize,
    keep: usize,
    /// Bytes of the buffer already searched for a newline.
    scanned: usize,
    /// The line being discarded.
    long: Option<(Bytes, Vec<u8>, usize)>,
}

impl BoundedLines {
    /// Lines up to `max` bytes; of a longer one the first `keep` bytes are kept.
    pub fn new(max: usize, keep: usize) -> BoundedLines {
        BoundedLines { max, keep: keep.min(max), scanned: 0, long: None }
    }

    fn push_tail(tail: &mut Vec<u8>, bytes: &[u8]) {
        let take = bytes.len().min(TAIL);
        tail.extend_from_slice(&bytes[bytes.len() - take..]);
        if tail.len() > TAIL {
            tail.drain(..tail.len() - TAIL);
        }
    }
}

impl Decoder for BoundedLines {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        if let Some((_, tail, len)) = &mut self.long {
            return Ok(match buf.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    Self::push_tail(tail, &buf[..i]);
                    *len += i;
                    buf.advance(i + 1);
                    self.long.take().map(|(head, tail, len)| Frame::Long { head, tail, len })
                }
                None => {
                    Self::push_tail(tail, buf);
                    *len += buf.len();
                    buf.clear();
                    None
                }
            });
        }
        let from = self.scanned.min(buf.len());
        if let Some(off) = buf[from..].iter().position(|b| *b == b'\n') {
            let i = from + off;
            self.scanned = 0;
            if i > self.max {
                let head = Bytes::copy_from_slice(&buf[..self.keep]);
                let mut tail = Vec::new();
                Self::push_tail(&mut tail, &buf[..i]);
                buf.advance(i + 1);
                return Ok(Some(Frame::Long { head, tail, len: i }));
            }
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            return Ok(Some(Frame::Line(line)));
        }
        if buf.len() > self.max {
            let head = Bytes::copy_from_slice(&buf[..self.keep]);
            let mut tail = Vec::new();
            Self::push_tail(&mut tail, buf);
            self.long = Some((head, tail, buf.len()));
            self.scanned = 0;
            buf.clear();
            return Ok(None);
        }
        self.scanned = buf.len();
        Ok(None)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if let Some((head, tail, len)) = self.long.take() {
            return Ok(Some(Frame::Long { head, tail, len }));
        }
        self.scanned = 0;
        if buf.is_empty() { Ok(None) } else { Ok(Some(Frame::Line(buf.split()))) }
    }
}

/// The numeric `id` of a JSON-RPC response from the first and last bytes of its line: a
/// top-level `"id"` member near the start (the usual order), or as the last member. `None`
/// when neither shows one (a notification, or an id in the discarded middle).
pub fn response_id(head: &[u8], tail: &[u8]) -> Option<u64> {
    id_in_head(head).or_else(|| id_at_end(tail))
}

/// Scans the opening of a JSON object for a top-level `"id": <digits>`, tracking strings and
/// nesting so that an `"id"` inside `result` or a string is not taken for it.
fn id_in_head(head: &[u8]) -> Option<u64> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < head.len() {
        match head[i] {
            b'"' => {
                let start = i + 1;
                i = start;
                while i < head.len() && head[i] != b'"' {
                    i += if head[i] == b'\\' { 2 } else { 1 };
                }
                if i >= head.len() {
                    return None;
                }
                let key = &head[start..i];
                i += 1;
                if depth == 1 && key == b"id" {
                    let rest = skip_ws(&head[i..]);
                    if let Some(rest) = rest.strip_prefix(b":") {
                        return leading_number(skip_ws(rest));
                    }
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// `"id": <digits> }` at the very end of a line.
fn id_at_end(tail: &[u8]) -> Option<u64> {
    let t = trim_end(tail).strip_suffix(b"}")?;
    let t = trim_end(t);
    let digits = t.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let (before, number) = t.split_at(t.len() - digits);
    let before = trim_end(before).strip_suffix(b":")?;
    if !trim_end(before).ends_with(b"\"id\"") {
        return None;
    }
    std::str::from_utf8(number).ok()?.parse().ok()
}

fn skip_ws(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

fn trim_end(b: &[u8]) -> &[u8] {
    let n = b.iter().rev().take_while(|c| c.is_ascii_whitespace()).count();
    &b[..b.len() - n]
}

fn leading_number(b: &[u8]) -> Option<u64> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    let after = b.get(n).copied();
    // A number cut off by the end of the head is not trusted.
    if n == 0 || !matches!(after, Some(b',' | b'}' | b' ' | b'\t' | b'\r' | b'\n')) {
        return None;
    }
    std::str::from_utf8(&b[..n]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[&[u8]], max: usize, keep: usize) -> Vec<Frame> {
        let mut d = BoundedLines::new(max, keep);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in input {
            buf.extend_from_slice(chunk);
            while let Some(f) = d.decode(&mut buf).expect("never fails") {
                out.push(f);
            }
            assert!(buf.len() <= max + chunk.len(), "the buffer stays bounded");
        }
        while let Some(f) = d.decode_eof(&mut buf).expect("never fails") {
            out.push(f);
        }
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Line(BytesMut::from(s.as_bytes()))
    }

    #[test]
    fn lines_within_the_limit_pass_and_a_long_one_is_skipped_not_the_end() {
        let out = frames(&[b"ab\ncdefghij", b"klmnop\nq", b"r\n\xff\xfe\nlast"], 8, 3);
        assert_eq!(out.len(), 5, "{out:?}");
        assert_eq!(out[0], line("ab"));
        assert_eq!(out[1], Frame::Long { head: Bytes::from_static(b"cde"), tail: b"cdefghijklmnop".to_vec(), len: 14 });
        assert_eq!(out[2], line("qr"));
        assert_eq!(out[3], Frame::Line(BytesMut::from(&b"\xff\xfe"[..])), "not UTF-8 is not an error");
        assert_eq!(out[4], line("last"));
    }

    #[test]
    fn a_long_line_in_one_chunk_and_at_eof() {
        let out = frames(&[b"0123456789\nok\n0123456789"], 4, 2);
        assert!(matches!(&out[0], Frame::Long { len: 10, .. }), "{out:?}");
        assert_eq!(out[1], line("ok"));
        assert!(matches!(&out[2], Frame::Long { len: 10, .. }), "{out:?}");
    }

    #[test]
    fn the_id_of_a_discarded_response_is_found_at_either_end() {
        assert_eq!(response_id(br#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"te"#, b""), Some(42));
        assert_eq!(response_id(br#"{"result":{"id":7,"x":"y"#, br#"xxxx"}},"jsonrpc":"2.0","id":9}"#), Some(9));
        assert_eq!(response_id(br#"{"result":{"id":7,"x":"y"#, br#"xx"}, "id" : 12 } "#), Some(12));
        assert_eq!(response_id(br#"{"result":"\"id\":5,","#, br#"x"}}"#), None, "an id in a string is not it");
        assert_eq!(response_id(br#"{"result":{"id":7},"a":"#, br#"{"id":3}}"#), None, "nested");
        assert_eq!(response_id(br#"{"jsonrpc":"2.0","id":12"#, b"zz"), None, "a cut-off number");
        assert_eq!(response_id(br#"{"jsonrpc":"2.0","id":"s-1","result":"#, b"\"}"), None, "not ours");
    }
}
