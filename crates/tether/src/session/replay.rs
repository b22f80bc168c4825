//! What a revive replays on a fresh upstream connection, and what the client is told about
//! afterwards: pure decisions over the session record, without I/O. The session carries the
//! steps out (`revive.rs`).

use std::hash::{Hash, Hasher};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::record::SessionState;

/// The list kinds whose changes a client is told about.
pub use tether_protocol::method::LIST_KINDS;

/// One step of rebuilding a session's upstream side, in order.
#[derive(Debug, Clone)]
pub enum Step {
    /// `initialize` with the client's stored params; its answer must keep the version.
    Initialize(Box<RawValue>),
    /// `notifications/initialized`.
    Initialized,
    /// `logging/setLevel` to the level the client set.
    SetLevel(String),
    /// `resources/subscribe` to one URI the client subscribed to.
    Subscribe(String),
}

impl PartialEq for Step {
    fn eq(&self, other: &Step) -> bool {
        match (self, other) {
            (Step::Initialize(a), Step::Initialize(b)) => a.get() == b.get(),
            (Step::SetLevel(a), Step::SetLevel(b)) | (Step::Subscribe(a), Step::Subscribe(b)) => a == b,
            (Step::Initialized, Step::Initialized) => true,
            _ => false,
        }
    }
}

/// The steps that rebuild a session: nothing for a session that never completed a handshake.
/// (Whether the upstream's standalone stream is opened is decided when they are done: the
/// client may open its own GET stream meanwhile.)
pub fn plan(client_init: Option<&RawValue>, state: &SessionState) -> Vec<Step> {
    let Some(params) = client_init else { return Vec::new() };
    let mut steps = vec![Step::Initialize(params.to_owned()), Step::Initialized];
    steps.extend(state.log_level.iter().cloned().map(Step::SetLevel));
    steps.extend(state.subscriptions.iter().cloned().map(Step::Subscribe));
    steps
}

/// The protocol version the revived connection speaks, or the two versions when the server
/// now negotiates a different one than the session did (the session cannot go on).
pub fn version_after(was: Option<&str>, now: Option<&str>) -> Result<Option<String>, (String, String)> {
    match (was, now) {
        (Some(was), Some(now)) if was != now => Err((was.to_owned(), now.to_owned())),
        _ => Ok(now.or(was).map(str::to_owned)),
    }
}

/// What to do about one list kind after a revive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListCheck {
    /// Nothing: the server does not declare `listChanged` for it, or the client never saw it.
    Skip,
    /// Tell the client: the server's capabilities changed.
    Announce,
    /// Fetch the list again and tell the client if its digest differs from this one.
    Compare(u64),
}

/// Decides, for one list kind, whether the client hears about a change across a revive.
/// `before`/`after` are the upstream's `initialize` results; `seen` the digest of the list
/// the client last fetched.
pub fn list_check(before: Option<&RawValue>, after: Option<&RawValue>, kind: &str, seen: Option<u64>) -> ListCheck {
    if !declares_list_changed(after, kind) {
        return ListCheck::Skip;
    }
    if capabilities_digest(before) != capabilities_digest(after) {
        return ListCheck::Announce;
    }
    seen.map_or(ListCheck::Skip, ListCheck::Compare)
}

/// A stable digest of some JSON text.
pub fn digest(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn capabilities_digest(init: Option<&RawValue>) -> Option<u64> {
    #[derive(Deserialize)]
    struct R<'a> {
        #[serde(borrow)]
        capabilities: Option<&'a RawValue>,
    }
    let r: R<'_> = serde_json::from_str(init?.get()).ok()?;
    r.capabilities.map(|c| digest(c.get()))
}

fn declares_list_changed(init: Option<&RawValue>, kind: &str) -> bool {
    let Some(init) = init else { return false };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(init.get()) else { return false };
    v["capabilities"][kind]["listChanged"].as_bool() == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("json")
    }

    #[test]
    fn the_plan_replays_the_handshake_then_the_state_in_order() {
        let mut state = SessionState::default();
        assert!(plan(None, &state).is_empty(), "never initialized: nothing to replay");
        let init = raw(r#"{"protocolVersion":"2025-11-25"}"#);
        assert_eq!(plan(Some(&init), &state), vec![Step::Initialize(init.clone()), Step::Initialized]);
        state.log_level = Some("debug".into());
        state.subscriptions.insert("file:///b".into());
        state.subscriptions.insert("file:///a".into());
        assert_eq!(
            plan(Some(&init), &state),
            vec![
                Step::Initialize(init.clone()),
                Step::Initialized,
                Step::SetLevel("debug".into()),
                Step::Subscribe("file:///a".into()),
                Step::Subscribe("file:///b".into()),
            ]
        );
    }

    #[test]
    fn a_changed_version_ends_the_session_a_missing_one_keeps_the_old() {
        let v = |s: &str| Some(s.to_owned());
        assert_eq!(version_after(Some("a"), Some("a")), Ok(v("a")));
        assert_eq!(version_after(Some("a"), None), Ok(v("a")));
        assert_eq!(version_after(None, Some("b")), Ok(v("b")));
        assert_eq!(version_after(None, None), Ok(None));
        assert_eq!(version_after(Some("a"), Some("b")), Err(("a".into(), "b".into())));
    }

    #[test]
    fn list_changed_table() {
        let declares = raw(r#"{"capabilities":{"tools":{"listChanged":true}}}"#);
        let declares_more = raw(r#"{"capabilities":{"tools":{"listChanged":true},"logging":{}}}"#);
        let silent = raw(r#"{"capabilities":{"tools":{}}}"#);
        // (before, after, seen) → expected, for the kind "tools".
        type Case<'a> = (Option<&'a RawValue>, Option<&'a RawValue>, Option<u64>, ListCheck);
        let cases: [Case<'_>; 8] = [
            (Some(&declares), Some(&declares), Some(7), ListCheck::Compare(7)),
            (Some(&declares), Some(&declares), None, ListCheck::Skip),
            (Some(&declares), Some(&declares_more), Some(7), ListCheck::Announce),
            (Some(&declares), Some(&declares_more), None, ListCheck::Announce),
            (Some(&declares), Some(&silent), Some(7), ListCheck::Skip),
            (Some(&silent), Some(&declares), None, ListCheck::Announce),
            (None, Some(&declares), Some(7), ListCheck::Announce),
            (Some(&declares), None, Some(7), ListCheck::Skip),
        ];
        for (i, (before, after, seen, want)) in cases.into_iter().enumerate() {
            assert_eq!(list_check(before, after, "tools", seen), want, "case {i}");
        }
        assert_eq!(list_check(Some(&declares), Some(&declares), "prompts", Some(1)), ListCheck::Skip);
    }
}
