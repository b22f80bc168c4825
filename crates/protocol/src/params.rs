//! The few params and results the gateway reads, read without parsing the rest: the
//! negotiated version, progress tokens, the id a `notifications/cancelled` names, the log level
//! or URI of a state change, a tool call's name, and the tools annotated safe to repeat.

use serde::Deserialize;
use serde_json::value::RawValue;

/// `protocolVersion` of an `initialize` result (or params).
pub fn protocol_version(result: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct R {
        #[serde(rename = "protocolVersion")]
        protocol_version: Option<String>,
    }
    serde_json::from_str::<R>(result.get()).ok()?.protocol_version
}

/// A request's `_meta.progressToken`, as raw JSON text.
pub fn request_progress_token(params: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct P<'a> {
        #[serde(rename = "_meta", borrow)]
        meta: Option<M<'a>>,
    }
    #[derive(Deserialize)]
    struct M<'a> {
        #[serde(rename = "progressToken", borrow)]
        token: Option<&'a RawValue>,
    }
    // Most requests carry none: skip the parse.
    if !params.get().contains("progressToken") {
        return None;
    }
    let p: P<'_> = serde_json::from_str(params.get()).ok()?;
    Some(p.meta?.token?.get().to_owned())
}

/// A `notifications/progress`' `progressToken`, as raw JSON text.
pub fn notification_progress_token(params: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct P<'a> {
        #[serde(rename = "progressToken", borrow)]
        token: &'a RawValue,
    }
    serde_json::from_str::<P<'_>>(params.get()).ok().map(|p| p.token.get().to_owned())
}

/// The `requestId` a `notifications/cancelled` names, as raw JSON.
pub fn cancelled_request_id(params: &RawValue) -> Option<&RawValue> {
    #[derive(Deserialize)]
    struct P<'a> {
        #[serde(rename = "requestId", borrow)]
        id: &'a RawValue,
    }
    serde_json::from_str::<P<'_>>(params.get()).ok().map(|p| p.id)
}

/// `level` of `logging/setLevel` params.
pub fn log_level(params: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct P {
        level: Option<String>,
    }
    serde_json::from_str::<P>(params.get()).ok()?.level
}

/// `uri` of `resources/subscribe` / `resources/unsubscribe` / `resources/read` params.
pub fn uri(params: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct P {
        uri: Option<String>,
    }
    serde_json::from_str::<P>(params.get()).ok()?.uri
}

/// `name` of `tools/call` (or `prompts/get`) params.
pub fn call_name(params: &RawValue) -> Option<std::borrow::Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Call<'a> {
        #[serde(borrow)]
        name: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Call<'_>>(params.get()).ok().map(|c| c.name)
}

/// Tools annotated `readOnlyHint` or `idempotentHint` in a `tools/list` result.
pub fn safe_tools(result: &RawValue) -> Vec<String> {
    #[derive(Deserialize)]
    struct List {
        #[serde(default)]
        tools: Vec<Tool>,
    }
    #[derive(Deserialize)]
    struct Tool {
        name: String,
        #[serde(default)]
        annotations: Option<Annotations>,
    }
    #[derive(Deserialize)]
    struct Annotations {
        #[serde(rename = "readOnlyHint", default)]
        read_only: Option<bool>,
        #[serde(rename = "idempotentHint", default)]
        idempotent: Option<bool>,
    }
    let Ok(list) = serde_json::from_str::<List>(result.get()) else { return Vec::new() };
    list.tools
        .into_iter()
        .filter(|t| t.annotations.as_ref().is_some_and(|a| a.read_only == Some(true) || a.idempotent == Some(true)))
        .map(|t| t.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("json")
    }

    #[test]
    fn annotated_tools_are_safe_to_retry() {
        let r = raw(
            r#"{"tools":[{"name":"a","annotations":{"readOnlyHint":true}},{"name":"b","annotations":{"idempotentHint":true,"destructiveHint":false}},{"name":"c","annotations":{"readOnlyHint":false}},{"name":"d"}],"nextCursor":"x"}"#,
        );
        assert_eq!(safe_tools(&r), vec!["a", "b"]);
        assert!(safe_tools(&raw("{}")).is_empty());
    }

    #[test]
    fn params_the_gateway_reads() {
        assert_eq!(protocol_version(&raw(r#"{"protocolVersion":"2025-11-25","x":1}"#)).as_deref(), Some("2025-11-25"));
        assert_eq!(request_progress_token(&raw(r#"{"_meta":{"progressToken":"t1"}}"#)).as_deref(), Some("\"t1\""));
        assert_eq!(request_progress_token(&raw(r#"{"_meta":{}}"#)), None);
        assert_eq!(notification_progress_token(&raw(r#"{"progressToken":7,"progress":1}"#)).as_deref(), Some("7"));
        assert_eq!(cancelled_request_id(&raw(r#"{"requestId":"a","reason":"x"}"#)).map(RawValue::get), Some("\"a\""));
        assert_eq!(log_level(&raw(r#"{"level":"debug"}"#)).as_deref(), Some("debug"));
        assert_eq!(uri(&raw(r#"{"uri":"file:///a"}"#)).as_deref(), Some("file:///a"));
        assert_eq!(call_name(&raw(r#"{"name":"echo","arguments":{}}"#)).as_deref(), Some("echo"));
        assert_eq!(call_name(&raw(r#"{"arguments":{}}"#)), None);
    }
}
