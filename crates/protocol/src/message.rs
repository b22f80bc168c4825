//! The JSON-RPC envelope, parsed no deeper than routing needs.
//!
//! A [`Message`] keeps the top-level members of the object in order, each value as raw JSON.
//! Only `id` and `method` are interpreted; `params`, `result`, `error` and any member a future
//! revision adds travel byte for byte. Re-encoding writes the members back as they came, so a
//! message with a rewritten id costs one copy and no re-serialisation of its payload.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::error_code;

/// What kind of JSON-RPC message an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`: expects a response.
    Request,
    /// Has `method` and no `id`.
    Notification,
    /// Has `id` and `result`.
    Response,
    /// Has `id` (possibly null) and `error`.
    Error,
}

/// Why a body is not one JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// A JSON array: a batch, which no current revision allows.
    #[error("batches are not supported")]
    Batch,
    /// JSON, but not a JSON-RPC 2.0 message object.
    #[error("not a JSON-RPC 2.0 message: {0}")]
    Invalid(&'static str),
}

impl ParseError {
    /// The JSON-RPC code this error is answered with.
    pub fn code(&self) -> i64 {
        match self {
            ParseError::Json(_) => error_code::PARSE_ERROR,
            ParseError::Batch | ParseError::Invalid(_) => error_code::INVALID_REQUEST,
        }
    }
}

/// One JSON-RPC message with its payload kept raw.
#[derive(Clone)]
pub struct Message {
    members: Vec<(String, Box<RawValue>)>,
    kind: Kind,
    method: Option<String>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("kind", &self.kind)
            .field("method", &self.method)
            .field("id", &self.id().map(RawValue::get))
            .finish()
    }
}

/// The top level of a body, as far as telling an object from a batch.
enum Top {
    Object(Vec<(String, Box<RawValue>)>),
    Array,
    Scalar,
}

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TopVisitor;
        impl<'de> Visitor<'de> for TopVisitor {
            type Value = Top;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
                let mut members = Vec::with_capacity(4);
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push((k, v));
                }
                Ok(Top::Object(members))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Top::Array)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Top, E> {
                Ok(Top::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Top, E> {
                Ok(Top::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Top, E> {
                Ok(Top::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Top, E> {
                Ok(Top::Scalar)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Top, E> {
                Ok(Top::Scalar)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Top, E> {
                Ok(Top::Scalar)
            }
        }
        d.deserialize_any(TopVisitor)
    }
}

/// The members tether interprets or routes by, each at most once, and the error naming it.
const ENVELOPE: [(&str, &str); 6] = [
    ("jsonrpc", "duplicate member \"jsonrpc\""),
    ("id", "duplicate member \"id\""),
    ("method", "duplicate member \"method\""),
    ("params", "duplicate member \"params\""),
    ("result", "duplicate member \"result\""),
    ("error", "duplicate member \"error\""),
];

fn raw(json: String) -> Box<RawValue> {
    // Only called with text produced by serde_json itself, which is always valid JSON.
    RawValue::from_string(json).unwrap_or_else(|_| null())
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

impl Message {
    /// Parses one message from a body or a line.
    pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
        let top: Top = serde_json::from_slice(bytes).map_err(|e| ParseError::Json(e.to_string()))?;
        let members = match top {
            Top::Object(m) => m,
            Top::Array => return Err(ParseError::Batch),
            Top::Scalar => return Err(ParseError::Invalid("the body is not an object")),
        };
        Self::from_members(members)
    }

    fn from_members(members: Vec<(String, Box<RawValue>)>) -> Result<Message, ParseError> {
        // serde_json keeps every repeated key, and the lookups below see only the first: a
        // repeated envelope member would let tether route one message while the upstream, whose
        // parser keeps the last, runs another (`{"method":"ping","method":"tools/call"}`).
        for (name, message) in ENVELOPE {
            if members.iter().filter(|(n, _)| n == name).nth(1).is_some() {
                return Err(ParseError::Invalid(message));
            }
        }
        let get = |k: &str| members.iter().find(|(n, _)| n == k).map(|(_, v)| &**v);
        match get("jsonrpc") {
            Some(v) if v.get() == "\"2.0\"" => {}
            _ => return Err(ParseError::Invalid("\"jsonrpc\" must be \"2.0\"")),
        }
        let method = match get("method") {
            Some(m) => Some(
                serde_json::from_str::<String>(m.get())
                    .map_err(|_| ParseError::Invalid("\"method\" must be a string"))?,
            ),
            None => None,
        };
        let id = get("id");
        if let Some(id) = id {
            let t = id.get().as_bytes().first().copied().unwrap_or(b' ');
            let valid = t == b'"' || t == b'-' || t.is_ascii_digit() || id.get() == "null";
            if !valid {
                return Err(ParseError::Invalid("\"id\" must be a string or a number"));
            }
        }
        let kind = match (&method, id) {
            (Some(_), Some(id)) if id.get() != "null" => Kind::Request,
            (Some(_), Some(_)) => return Err(ParseError::Invalid("a request id must not be null")),
            (Some(_), None) => Kind::Notification,
            (None, Some(_)) if get("result").is_some() => Kind::Response,
            (None, Some(_)) if get("error").is_some() => Kind::Error,
            (None, _) => {
                return Err(ParseError::Invalid("no \"method\", \"result\" or \"error\""));
            }
        };
        Ok(Message { members, kind, method })
    }

    /// A request with a numeric id.
    pub fn request(id: u64, method: &str, params: Option<&RawValue>) -> Message {
        let mut members = vec![
            ("jsonrpc".to_owned(), raw("\"2.0\"".to_owned())),
            ("id".to_owned(), raw(id.to_string())),
            ("method".to_owned(), raw(json_string(method))),
        ];
        if let Some(p) = params {
            members.push(("params".to_owned(), p.to_owned()));
        }
        Message { members, kind: Kind::Request, method: Some(method.to_owned()) }
    }

    /// A notification.
    pub fn notification(method: &str, params: Option<&RawValue>) -> Message {
        let mut members =
            vec![("jsonrpc".to_owned(), raw("\"2.0\"".to_owned())), ("method".to_owned(), raw(json_string(method)))];
        if let Some(p) = params {
            members.push(("params".to_owned(), p.to_owned()));
        }
        Message { members, kind: Kind::Notification, method: Some(method.to_owned()) }
    }

    /// A successful response to `id`.
    pub fn response(id: &RawValue, result: &RawValue) -> Message {
        Message {
            members: vec![
                ("jsonrpc".to_owned(), raw("\"2.0\"".to_owned())),
                ("id".to_owned(), id.to_owned()),
                ("result".to_owned(), result.to_owned()),
            ],
            kind: Kind::Response,
            method: None,
        }
    }

    /// An error response; `id` is `None` when the request's id could not be read.
    pub fn error(id: Option<&RawValue>, code: i64, message: &str, data: Option<serde_json::Value>) -> Message {
        let mut err = serde_json::json!({ "code": code, "message": message });
        if let Some(d) = data {
            err["data"] = d;
        }
        Message {
            members: vec![
                ("jsonrpc".to_owned(), raw("\"2.0\"".to_owned())),
                ("id".to_owned(), id.map(|i| i.to_owned()).unwrap_or_else(null)),
                ("error".to_owned(), raw(err.to_string())),
            ],
            kind: Kind::Error,
            method: None,
        }
    }

    fn member(&self, name: &str) -> Option<&RawValue> {
        self.members.iter().find(|(n, _)| n == name).map(|(_, v)| &**v)
    }

    /// The kind of message.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The method of a request or notification.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// The raw `id`, if any.
    pub fn id(&self) -> Option<&RawValue> {
        self.member("id")
    }

    /// The id as a number, when it is a non-negative integer (tether's own upstream ids).
    pub fn numeric_id(&self) -> Option<u64> {
        self.id().and_then(|i| i.get().trim().parse().ok())
    }

    /// The raw `params`, if any.
    pub fn params(&self) -> Option<&RawValue> {
        self.member("params")
    }

    /// The raw `result` of a response.
    pub fn result(&self) -> Option<&RawValue> {
        self.member("result")
    }

    /// The raw `error` of an error response.
    pub fn error_object(&self) -> Option<&RawValue> {
        self.member("error")
    }

    /// Whether this is a request or a notification with this method.
    pub fn is(&self, method: &str) -> bool {
        self.method.as_deref() == Some(method)
    }

    /// Replaces the id (used to rewrite ids between the client and upstream legs).
    pub fn set_id(&mut self, id: Box<RawValue>) {
        match self.members.iter_mut().find(|(n, _)| n == "id") {
            Some((_, v)) => *v = id,
            None => self.members.push(("id".to_owned(), id)),
        }
    }

    /// Replaces `params`.
    pub fn set_params(&mut self, params: Box<RawValue>) {
        match self.members.iter_mut().find(|(n, _)| n == "params") {
            Some((_, v)) => *v = params,
            None => self.members.push(("params".to_owned(), params)),
        }
    }

    /// The message as compact JSON bytes (payloads exactly as received).
    pub fn to_bytes(&self) -> Vec<u8> {
        let len: usize = self.members.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum();
        let mut out = Vec::with_capacity(len + 2);
        out.push(b'{');
        for (i, (k, v)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if k.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
                out.push(b'"');
                out.extend_from_slice(k.as_bytes());
                out.push(b'"');
            } else {
                out.extend_from_slice(json_string(k).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(v.get().as_bytes());
        }
        out.push(b'}');
        out
    }
}

/// A Rust string as a JSON string literal.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// A numeric id as raw JSON.
pub fn numeric_id(id: u64) -> Box<RawValue> {
    raw(id.to_string())
}

/// A string id as raw JSON.
pub fn string_id(id: &str) -> Box<RawValue> {
    raw(json_string(id))
}

/// Raw JSON from a `serde_json::Value`.
pub fn raw_value(v: &serde_json::Value) -> Box<RawValue> {
    raw(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_classified() {
        let m = |s: &str| Message::parse(s.as_bytes()).map(|m| m.kind());
        assert_eq!(m(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), Ok(Kind::Request));
        assert_eq!(m(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#), Ok(Kind::Notification));
        assert_eq!(m(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#), Ok(Kind::Response));
        assert_eq!(m(r#"{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"x"}}"#), Ok(Kind::Error));
    }

    #[test]
    fn bad_bodies_get_the_right_error() {
        let e = |s: &str| Message::parse(s.as_bytes()).err().map(|e| e.code());
        assert_eq!(e("{"), Some(error_code::PARSE_ERROR));
        assert_eq!(e("not json"), Some(error_code::PARSE_ERROR));
        assert_eq!(e(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#), Some(error_code::INVALID_REQUEST));
        assert_eq!(Message::parse(b"[]").err(), Some(ParseError::Batch));
        assert_eq!(e("42"), Some(error_code::INVALID_REQUEST));
        assert_eq!(e(r#"{"id":1,"method":"ping"}"#), Some(error_code::INVALID_REQUEST));
        assert_eq!(e(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#), Some(error_code::INVALID_REQUEST));
        assert_eq!(e(r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#), Some(error_code::INVALID_REQUEST));
        assert_eq!(e(r#"{"jsonrpc":"2.0","id":1,"method":7}"#), Some(error_code::INVALID_REQUEST));
        assert_eq!(e(r#"{"jsonrpc":"2.0","id":1}"#), Some(error_code::INVALID_REQUEST));
    }

    #[test]
    fn a_repeated_envelope_member_is_invalid() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"rm"}}"#,
            r#"{"id":41,"jsonrpc":"2.0","method":"ping","id":42}"#,
            r#"{"jsonrpc":"2.0","jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{},"params":{"a":1}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"a"},"error":{"code":2,"message":"b"}}"#,
        ] {
            let e = Message::parse(body.as_bytes()).expect_err(body);
            assert!(matches!(e, ParseError::Invalid(m) if m.starts_with("duplicate member")), "{body}: {e}");
            assert_eq!(e.code(), error_code::INVALID_REQUEST, "{body}");
        }
        // Repeated names inside the payload are the payload's business.
        let nested = r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":1,"a":2},"x":1,"x":2}"#;
        assert!(Message::parse(nested.as_bytes()).is_ok());
    }

    #[test]
    fn payload_and_unknown_members_pass_through_unchanged() {
        let body = r#"{"jsonrpc":"2.0","id":"c-1","method":"tools/call","params":{"name":"x","arguments":{"b":[1, 2.50,{"z":null}]},"_meta":{"vendor/extra":true}},"x-future":{"k":1}}"#;
        let mut m = Message::parse(body.as_bytes()).expect("valid");
        assert_eq!(m.method(), Some("tools/call"));
        m.set_id(numeric_id(7));
        let out = String::from_utf8(m.to_bytes()).expect("utf8");
        assert_eq!(out, body.replace(r#""c-1""#, "7"));
        assert_eq!(Message::parse(out.as_bytes()).expect("valid").numeric_id(), Some(7));
    }

    #[test]
    fn built_messages_round_trip() {
        let params = RawValue::from_string(r#"{"level":"debug"}"#.to_owned()).expect("json");
        let r = Message::request(3, "logging/setLevel", Some(&params));
        let back = Message::parse(&r.to_bytes()).expect("valid");
        assert_eq!(back.kind(), Kind::Request);
        assert_eq!(back.params().map(RawValue::get), Some(r#"{"level":"debug"}"#));
        let e = Message::error(None, -32600, "bad \"thing\"", Some(serde_json::json!({"reason": "x"})));
        let v: serde_json::Value = serde_json::from_slice(&e.to_bytes()).expect("json");
        assert_eq!(v["id"], serde_json::Value::Null);
        assert_eq!(v["error"]["message"], "bad \"thing\"");
        assert_eq!(v["error"]["data"]["reason"], "x");
    }
}
