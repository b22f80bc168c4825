//! Recognising a lost session and a restarted upstream in what a server answers: JSON-RPC
//! error objects, and HTTP statuses with their bodies (servers disagree on how to say it).

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error_code;

/// Whether a JSON-RPC error object says the session is unknown (`-32001`, or a `-32600` /
/// `-32000` whose message says "session").
pub fn is_session_error(error: Option<&RawValue>) -> bool {
    #[derive(Deserialize)]
    struct E {
        code: i64,
        #[serde(default)]
        message: String,
    }
    let Some(e) = error.and_then(|e| serde_json::from_str::<E>(e.get()).ok()) else { return false };
    let says_session = e.message.to_ascii_lowercase().contains("session");
    e.code == error_code::SESSION_NOT_FOUND
        || ((e.code == error_code::INVALID_REQUEST || e.code == error_code::SERVER_ERROR) && says_session)
}

/// Whether a JSON-RPC error object says the upstream restarted with the request in flight (a
/// gateway's `-32011`, `data.reason: "upstream_restarted"`).
pub fn is_restart_error(error: Option<&RawValue>) -> bool {
    let Some(e) = error.and_then(|e| serde_json::from_str::<serde_json::Value>(e.get()).ok()) else { return false };
    e["code"] == error_code::UPSTREAM_RESTARTED && e["data"]["reason"] == "upstream_restarted"
}

/// Whether an HTTP answer means "your session is gone": a 404 for a request that carried a
/// session id, or a 400 whose body says the session is missing, invalid or unknown (what
/// server-everything and many TypeScript servers answer), or a -32001 error.
pub fn is_session_lost(status: u16, had_session: bool, body: &[u8]) -> bool {
    if status == 404 && had_session {
        return true;
    }
    if status != 400 && status != 404 {
        return false;
    }
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("session") || text.contains("\"code\":-32001")
}

/// How a lost session is classified in logs and error data.
pub fn session_loss_class(status: u16, body: &[u8]) -> &'static str {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    match status {
        _ if text.contains("expired") => "session_expired",
        409 => "session_conflict",
        404 => "session_terminated",
        _ => "session_invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("json")
    }

    #[test]
    fn session_errors_are_recognised() {
        assert!(is_session_error(Some(&raw(r#"{"code":-32001,"message":"Session not found"}"#))));
        assert!(is_session_error(Some(&raw(r#"{"code":-32600,"message":"Invalid or expired session"}"#))));
        assert!(!is_session_error(Some(&raw(r#"{"code":-32600,"message":"bad request"}"#))));
        assert!(!is_session_error(Some(&raw(r#"{"code":-32602,"message":"session param missing"}"#))));
        assert!(!is_session_error(None));
    }

    #[test]
    fn restart_errors_need_the_reason() {
        assert!(is_restart_error(Some(&raw(
            r#"{"code":-32011,"message":"x","data":{"reason":"upstream_restarted"}}"#
        ))));
        assert!(!is_restart_error(Some(&raw(r#"{"code":-32011,"message":"x"}"#))));
        assert!(!is_restart_error(Some(&raw(r#"{"code":-32000,"data":{"reason":"upstream_restarted"}}"#))));
    }

    #[test]
    fn lost_sessions_are_classified() {
        assert_eq!(session_loss_class(404, b""), "session_terminated");
        assert_eq!(session_loss_class(400, b"Session expired"), "session_expired");
        assert_eq!(session_loss_class(409, b"conflict"), "session_conflict");
        assert_eq!(session_loss_class(400, b"Bad Request: No valid session ID provided"), "session_invalid");
    }
}
