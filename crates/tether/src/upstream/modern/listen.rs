//! The one `subscriptions/listen` stream a modern connection keeps for the client: which
//! notifications it asks for ([`Filter`]), re-opening it when that changes or it drops, and
//! the hand-over between two streams without a gap or a duplicate.
//!
//! A stream cannot change its filter, so a new subscription means a new stream. The new one is
//! opened (and acknowledged) while the old one still reads, the old one reads on for a short
//! grace, and a notification seen on both during the overlap reaches the client once. Whoever
//! changed the filter can wait until a stream serves it ([`Shared::wait_served`]), so that a
//! `resources/subscribe` answered to the client is already in force upstream.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderValue};
use serde_json::{Map, Value, json};
use tether_protocol::message::raw_value;
use tether_protocol::{Kind, Message, method};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, warn};

use super::super::Origin;
use super::super::streamable::{SseMessages, content_type, describe};
use super::Shared;
use super::transport::{ListenStream, Transport};
use super::wire::strip_notification_meta;

/// How long a new listen stream may take to be acknowledged before it counts as failed.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// How long a replaced stream keeps reading after its successor was acknowledged: a
/// notification the server wrote to it just before it registered the new one is still on the
/// way (two connections are not ordered).
const GRACE: Duration = Duration::from_millis(500);
/// How long a notification from one stream may cancel the same one from the other stream.
const DEDUP_WINDOW: Duration = Duration::from_secs(2);
/// At most this many recent notifications are remembered for de-duplication.
const DEDUP_MAX: usize = 256;
/// The first pause before re-opening a stream that failed; doubled up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);

/// What the listen stream asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Filter {
    pub(super) tools: bool,
    pub(super) prompts: bool,
    pub(super) resources: bool,
    pub(super) uris: BTreeSet<String>,
}

impl Filter {
    pub(super) fn is_empty(&self) -> bool {
        !self.tools && !self.prompts && !self.resources && self.uris.is_empty()
    }

    pub(super) fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.tools {
            m.insert("toolsListChanged".into(), Value::Bool(true));
        }
        if self.prompts {
            m.insert("promptsListChanged".into(), Value::Bool(true));
        }
        if self.resources {
            m.insert("resourcesListChanged".into(), Value::Bool(true));
        }
        if !self.uris.is_empty() {
            m.insert("resourceSubscriptions".into(), self.uris.iter().cloned().collect());
        }
        Value::Object(m)
    }
}

/// Notifications delivered lately, by the stream that brought them, so that the same one
/// arriving on the other stream of an overlap is dropped. Each delivered notification cancels
/// at most one copy from another stream.
#[derive(Default)]
pub(super) struct Dedup {
    recent: VecDeque<(u64, String, Instant)>,
}

impl Dedup {
    /// Whether the notification `text` from stream `stream` should reach the client.
    pub(super) fn admit(&mut self, stream: u64, text: String, now: Instant) -> bool {
        while self.recent.front().is_some_and(|(_, _, at)| now.duration_since(*at) > DEDUP_WINDOW)
            || self.recent.len() >= DEDUP_MAX
        {
            self.recent.pop_front();
        }
        if let Some(i) = self.recent.iter().position(|(s, t, _)| *s != stream && *t == text) {
            self.recent.remove(i);
            return false;
        }
        self.recent.push_back((stream, text, now));
        true
    }

    /// Forgets every notification: the next stream overlaps none that brought them.
    pub(super) fn clear(&mut self) {
        self.recent.clear();
    }
}

/// Why a listen stream could not be opened.
enum OpenFailure {
    /// The remote does not serve `subscriptions/listen` (404, 405): retrying will not help.
    NotServed,
    /// Anything else: retried with backoff.
    Failed,
}

impl Shared {
    /// Waits (a bounded time) until a listen stream serves the current filter, or the remote
    /// said it serves none.
    pub(super) async fn wait_served(&self) {
        let wanted = self.filter.borrow().clone();
        let mut served = self.served.subscribe();
        let waited = tokio::time::timeout(ACK_WAIT, served.wait_for(|s| s.as_ref() == Some(&wanted))).await;
        if waited.is_err() && self.alive.load(Ordering::Acquire) {
            warn!("no subscriptions/listen stream serves the new subscriptions yet; answering anyway");
        }
    }

    /// Passes one notification of listen stream `stream` to the client, unless the other
    /// stream of an overlap already brought it.
    async fn deliver_listened(&self, stream: u64, m: Message) {
        let m = strip_notification_meta(m);
        let text = String::from_utf8_lossy(&m.to_bytes()).into_owned();
        let admit =
            self.dedup.lock().unwrap_or_else(std::sync::PoisonError::into_inner).admit(stream, text, Instant::now());
        if admit {
            self.deliver(Origin::Standalone, m).await;
        } else {
            debug!(stream, "a notification seen on both listen streams of a hand-over; delivered once");
        }
    }

    /// After the listen stream was lost and re-opened: what the client watches may have
    /// changed meanwhile.
    async fn announce_possible_changes(&self, filter: &Filter) {
        for uri in &filter.uris {
            let n =
                Message::notification(method::NOTIFICATION_RESOURCES_UPDATED, Some(&raw_value(&json!({ "uri": uri }))));
            self.deliver(Origin::Standalone, n).await;
        }
        for (on, kind) in [(filter.tools, "tools"), (filter.prompts, "prompts"), (filter.resources, "resources")] {
            if on {
                self.deliver(
                    Origin::Standalone,
                    Message::notification(&format!("notifications/{kind}/list_changed"), None),
                )
                .await;
            }
        }
    }

    /// Sends `subscriptions/listen` for `filter` and reads up to its acknowledgement.
    async fn open_listen(&self, filter: &Filter) -> Result<ListenStream, OpenFailure> {
        let method = method::SUBSCRIPTIONS_LISTEN;
        let (params, mut headers) = self.build(method, &json!({ "notifications": filter.to_json() }), false);
        let mut events = match &self.transport {
            Transport::Http { url, http, .. } => {
                headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream, application/json"));
                let wire_id = format!("tether-listen-{}", self.wire_ids.fetch_add(1, Ordering::Relaxed));
                let body = json!({"jsonrpc": "2.0", "id": wire_id, "method": method, "params": params});
                let opened = http.post(url).headers(headers).body(body.to_string()).send().await;
                let resp = match opened {
                    Ok(r) if r.status().is_success() && content_type(r.headers()).starts_with("text/event-stream") => r,
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.bytes().await.unwrap_or_default();
                        let body: String = String::from_utf8_lossy(&body).chars().take(200).collect();
                        warn!(status, body = %body, "the remote refused subscriptions/listen");
                        return Err(if status == 404 || status == 405 {
                            OpenFailure::NotServed
                        } else {
                            OpenFailure::Failed
                        });
                    }
                    Err(e) => {
                        debug!(error = %describe(&e), "subscriptions/listen could not be opened; retrying");
                        return Err(OpenFailure::Failed);
                    }
                };
                ListenStream::Http(SseMessages::new(resp, self.max))
            }
            Transport::Stdio(w) => match w.listen(&params).await {
                Ok(waiter) => ListenStream::Stdio(waiter),
                Err(e) => {
                    debug!(error = %e, "subscriptions/listen could not be sent; retrying");
                    return Err(OpenFailure::Failed);
                }
            },
        };
        let acked = tokio::time::timeout(ACK_WAIT, async {
            while let Some(m) = events.next().await {
                match m.kind() {
                    Kind::Notification if m.is(method::NOTIFICATION_SUBSCRIPTIONS_ACKNOWLEDGED) => return Some(true),
                    // The ack comes first; anything else before it is not ours to pass on.
                    Kind::Error if super::error_code_of(&m) == Some(tether_protocol::error_code::METHOD_NOT_FOUND) => {
                        return None;
                    }
                    Kind::Response | Kind::Error => return Some(false),
                    _ => {}
                }
            }
            Some(false)
        })
        .await;
        match acked {
            Ok(Some(true)) => Ok(events),
            // A stdio server without listens says so in-band.
            Ok(None) => Err(OpenFailure::NotServed),
            _ => {
                debug!("a subscriptions/listen stream ended or stalled before its acknowledgement");
                Err(OpenFailure::Failed)
            }
        }
    }
}

/// Reads one acknowledged listen stream until it ends. A final result (or error) ends it
/// gracefully; requests are not allowed on it.
async fn read_stream(shared: Arc<Shared>, stream: u64, mut events: ListenStream) {
    while let Some(m) = events.next().await {
        match m.kind() {
            Kind::Notification => shared.deliver_listened(stream, m).await,
            Kind::Response | Kind::Error => return,
            Kind::Request => {}
        }
    }
}

/// Keeps one `subscriptions/listen` stream open for the current filter while the connection
/// lives; re-opens it when the filter changes or the stream drops, each time opening the new
/// stream before letting the old one go. After a drop, the client is told that what it
/// watches may have changed (events are level triggers and are not replayed).
pub(super) async fn listen(shared: Arc<Shared>) {
    let mut filter_rx = shared.filter.subscribe();
    let mut delay = FIRST_DELAY;
    let mut lost = false;
    let mut streams = 0u64;
    // Dropped with this task (aborted when the connection ends), which stops its reader.
    let mut current: Option<Reader> = None;
    while shared.alive.load(Ordering::Acquire) {
        let filter = filter_rx.borrow_and_update().clone();
        if filter.is_empty() {
            current = None;
            shared.served.send_replace(Some(filter));
            if filter_rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let events = match shared.open_listen(&filter).await {
            Ok(events) => events,
            Err(OpenFailure::NotServed) => {
                // Waiting for another filter rather than retrying this one; nobody waits on it.
                shared.served.send_replace(Some(filter));
                if filter_rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Err(OpenFailure::Failed) => {
                lost = true;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_DELAY);
                continue;
            }
        };
        streams += 1;
        if current.is_none() {
            // No stream overlaps this one (the first, or the one after a loss): nothing it
            // brings is a copy of what came before, so nothing remembered may cancel it. A
            // remote that restarted sends the same update again for a new change, often within
            // the window.
            shared.dedup.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        }
        let reader = tokio::spawn(read_stream(shared.clone(), streams, events).instrument(shared.span.clone()));
        if let Some(old) = current.replace(Reader(reader)) {
            tokio::spawn(async move {
                tokio::time::sleep(GRACE).await;
                drop(old);
            });
        }
        delay = FIRST_DELAY;
        shared.served.send_replace(Some(filter.clone()));
        if std::mem::take(&mut lost) {
            shared.announce_possible_changes(&filter).await;
        }
        let Some(reader) = current.as_mut() else { return };
        tokio::select! {
            changed = filter_rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = &mut reader.0 => {
                debug!("the subscriptions/listen stream ended; re-opening it");
                current = None;
                lost = true;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_DELAY);
            }
        }
    }
}

/// The task reading one listen stream; dropping it closes the stream.
struct Reader(JoinHandle<()>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listen_filter_names_only_what_is_wanted() {
        let f = Filter { tools: true, prompts: false, resources: false, uris: ["a://1".to_owned()].into() };
        assert_eq!(f.to_json(), json!({"toolsListChanged": true, "resourceSubscriptions": ["a://1"]}));
        assert!(Filter::default().is_empty());
    }

    #[test]
    fn a_notification_on_both_streams_of_a_hand_over_is_delivered_once() {
        let now = Instant::now();
        let mut d = Dedup::default();
        let a = || r#"{"method":"notifications/resources/updated","params":{"uri":"a"}}"#.to_owned();
        assert!(d.admit(1, a(), now), "the first copy passes");
        assert!(!d.admit(2, a(), now), "its copy from the other stream is dropped");
        // Two real changes in a row on one stream both pass, and each cancels one copy only.
        assert!(d.admit(2, a(), now));
        assert!(d.admit(2, a(), now));
        assert!(!d.admit(1, a(), now));
        assert!(!d.admit(1, a(), now));
        assert!(d.admit(1, a(), now), "a third copy on stream 1 has no twin left on stream 2");
    }

    #[test]
    fn copies_are_matched_only_within_the_window() {
        let now = Instant::now();
        let mut d = Dedup::default();
        let a = "x".to_owned();
        assert!(d.admit(1, a.clone(), now));
        assert!(d.admit(2, a, now + DEDUP_WINDOW + Duration::from_millis(1)), "too late to be a copy");
    }
}
