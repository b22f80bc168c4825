//! `subscriptions/listen` on a handshake-era binding: the binding's standalone stream is read
//! once (a hub) and fanned out to every listen of it; each listen gets the acknowledgement of
//! what the upstream can deliver, then the change notifications it asked for, stamped with its
//! id. Resource subscriptions become `resources/subscribe` on the binding (recorded, so a
//! revive replays them) and last as long as a listen of the binding asks for them: when a
//! listen ends, the binding's recorded subscriptions that no open listen holds are
//! unsubscribed (which also clears those left from before a tether restart). A gateway
//! shutting down keeps them: the clients listen again after the restart.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tether_protocol::message::raw_value;
use tether_protocol::modern::{self, RESULT_COMPLETE};
use tether_protocol::{Kind, Message, method, sse};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::Front;
use crate::downstream::AppState;
use crate::downstream::stream::sse_response;
use crate::error::GatewayError;
use crate::session::{SessionHandle, Sink, StreamKind};

/// Messages a hub holds for a slow listen before it skips ahead.
const HUB_BUFFER: usize = 256;
/// The most URIs one listen may subscribe to.
const MAX_URIS: usize = 256;

/// One fan-out per binding, and the resource URIs its open listens hold.
#[derive(Default)]
pub struct Hubs {
    /// Held while a hub is looked up or opened (an await: the session is asked for a stream).
    map: tokio::sync::Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
    /// Binding id → URI → open listens that asked for it.
    held: Mutex<HashMap<String, HashMap<String, usize>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Hubs {
    fn hold(&self, session: &str, uris: &BTreeSet<String>) {
        let mut held = lock(&self.held);
        let counts = held.entry(session.to_owned()).or_default();
        for u in uris {
            *counts.entry(u.clone()).or_default() += 1;
        }
    }

    fn is_held(&self, session: &str, uri: &str) -> bool {
        lock(&self.held).get(session).is_some_and(|c| c.contains_key(uri))
    }

    /// Lets go of a listen's URIs; the ones no open listen of the binding holds now.
    fn release(&self, session: &str, uris: &BTreeSet<String>) -> BTreeSet<String> {
        let mut held = lock(&self.held);
        let Some(counts) = held.get_mut(session) else { return BTreeSet::new() };
        for u in uris {
            if let Some(n) = counts.get_mut(u) {
                *n = n.saturating_sub(1);
            }
        }
        counts.retain(|_, n| *n > 0);
        let still: BTreeSet<String> = counts.keys().cloned().collect();
        if counts.is_empty() {
            held.remove(session);
        }
        still
    }

    async fn subscribe(&self, session: &SessionHandle) -> broadcast::Receiver<Bytes> {
        let mut map = self.map.lock().await;
        if let Some(tx) = map.get(session.id())
            && tx.receiver_count() > 0
            && session.has_standalone()
        {
            return tx.subscribe();
        }
        let (btx, brx) = broadcast::channel(HUB_BUFFER);
        map.insert(session.id().to_owned(), btx.clone());
        let (sink, mut srx) = Sink::channel(session.next_stream().await, StreamKind::Legacy);
        let stream = sink.stream;
        // Whatever queued while nobody listened is old news: listens carry what happens next.
        drop(session.attach_standalone(sink).await);
        let session = session.clone();
        tokio::spawn(async move {
            while let Some(o) = srx.recv().await {
                if btx.send(o.data).is_err() {
                    break;
                }
            }
            session.detach_standalone(stream);
        });
        brx
    }
}

/// Opens a listen stream.
pub async fn open(
    app: &AppState,
    front: &Arc<Front>,
    session: SessionHandle,
    msg: &Message,
    params: &Value,
) -> Result<Response, GatewayError> {
    let filter = params
        .get("notifications")
        .and_then(Value::as_object)
        .ok_or_else(|| GatewayError::InvalidEnvelope("params.notifications must be an object".into()))?;
    let init: Value =
        session.record().upstream_init.and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or(Value::Null);
    let caps = &init["capabilities"];
    let mut honored = Map::new();
    let mut wanted = BTreeSet::new();
    for (flag, kind) in
        [("toolsListChanged", "tools"), ("promptsListChanged", "prompts"), ("resourcesListChanged", "resources")]
    {
        if filter.get(flag) == Some(&Value::Bool(true)) && caps[kind]["listChanged"] == Value::Bool(true) {
            honored.insert(flag.into(), Value::Bool(true));
            wanted.insert(method::list_changed(kind));
        }
    }
    let mut uris = BTreeSet::new();
    if caps["resources"]["subscribe"] == Value::Bool(true) {
        let asked = filter.get("resourceSubscriptions").and_then(Value::as_array).cloned().unwrap_or_default();
        let recorded = session.record().state.subscriptions;
        for uri in asked.iter().filter_map(Value::as_str).take(MAX_URIS) {
            if recorded.contains(uri) || subscribe(&session, uri).await {
                uris.insert(uri.to_owned());
            }
        }
    }
    // Held from here: the guard lets go when the listen's task ends, however it ends.
    front.hubs.hold(session.id(), &uris);
    let held = Held { front: front.clone(), session: session.clone(), uris: uris.clone(), keep: false };
    if filter.contains_key("resourceSubscriptions") {
        honored.insert("resourceSubscriptions".into(), json!(uris));
    }
    let listen_id: Value = msg.id().and_then(|i| serde_json::from_str(i.get()).ok()).unwrap_or(Value::Null);
    let mut rx = front.hubs.subscribe(&session).await;
    let (tx, resp) = sse_response(None);
    let keepalive = session.config().keepalive;
    let stop = app.shutdown.clone();
    tokio::spawn(async move {
        // The whole guard moves into the task (a closure would capture only the field it sets).
        let mut held = held;
        let frame = |m: &str, mut p: Value| {
            modern::stamp_subscription(&mut p, &listen_id);
            let mut buf = Vec::new();
            sse::encode(&mut buf, None, None, &Message::notification(m, Some(&raw_value(&p))).to_bytes());
            Bytes::from(buf)
        };
        let ack = frame(method::NOTIFICATION_SUBSCRIPTIONS_ACKNOWLEDGED, json!({ "notifications": honored }));
        if tx.send(ack).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Ok(data) => {
                        let Ok(m) = Message::parse(&data) else { continue };
                        if m.kind() != Kind::Notification {
                            continue;
                        }
                        let name = m.method().unwrap_or_default();
                        let p: Value = m.params().and_then(|p| serde_json::from_str(p.get()).ok()).unwrap_or(json!({}));
                        let keep = wanted.contains(name)
                            || (name == method::NOTIFICATION_RESOURCES_UPDATED
                                && p["uri"].as_str().is_some_and(|u| uris.contains(u)));
                        if keep && tx.send(frame(name, p)).await.is_err() {
                            return;
                        }
                        tick.reset();
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    // The binding's stream ended (the session closed): an abrupt end, so the
                    // client listens again and refetches.
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    if tx.send(Bytes::from_static(sse::KEEP_ALIVE)).await.is_err() {
                        return;
                    }
                }
                _ = stop.cancelled() => {
                    held.keep = true;
                    let mut meta = Map::new();
                    meta.insert(modern::META_SUBSCRIPTION_ID.into(), listen_id.clone());
                    let result = json!({ "resultType": RESULT_COMPLETE, "_meta": meta });
                    let id = raw_value(&listen_id);
                    let mut buf = Vec::new();
                    sse::encode(&mut buf, None, None, &Message::response(&id, &raw_value(&result)).to_bytes());
                    let _ = tx.send(Bytes::from(buf)).await;
                    return;
                }
                () = tx.closed() => return,
            }
        }
    });
    Ok(resp)
}

/// A listen's hold on its URIs.
struct Held {
    front: Arc<Front>,
    session: SessionHandle,
    uris: BTreeSet<String>,
    /// The gateway is stopping: subscriptions stay for the clients that listen again.
    keep: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        let still = self.front.hubs.release(self.session.id(), &self.uris);
        if self.keep || self.session.is_closed() {
            return;
        }
        let stale: Vec<String> = self.session.record().state.subscriptions.difference(&still).cloned().collect();
        if stale.is_empty() {
            return;
        }
        let (session, front) = (self.session.clone(), self.front.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for uri in stale {
                    // A listen that opened meanwhile holds it again.
                    if !front.hubs.is_held(session.id(), &uri) {
                        call(&session, method::RESOURCES_UNSUBSCRIBE, &uri).await;
                    }
                }
            });
        }
    }
}

/// `resources/subscribe` on the binding; whether it succeeded.
async fn subscribe(session: &SessionHandle, uri: &str) -> bool {
    call(session, method::RESOURCES_SUBSCRIBE, uri).await
}

/// `resources/subscribe` or `unsubscribe` of `uri` on the binding; whether it succeeded.
async fn call(session: &SessionHandle, name: &str, uri: &str) -> bool {
    let (sink, mut rx) = Sink::channel(0, StreamKind::Json);
    let params = raw_value(&json!({ "uri": uri }));
    let Ok(gid) = session.request(Message::request(0, name, Some(&params)), sink).await else {
        return false;
    };
    let timeout = session.config().request_timeout.min(std::time::Duration::from_secs(30));
    match tokio::time::timeout(timeout, rx.recv()).await {
        Ok(Some(o)) => Message::parse(&o.data).is_ok_and(|m| m.kind() == Kind::Response),
        _ => {
            session.time_out(gid).await;
            false
        }
    }
}
