//! `tether bridge --protocol modern` and the `subscriptions/listen` stream it keeps for the
//! client's subscriptions, against a small scripted 2026-07-28 remote. The real remote
//! (`tests/peers/modern_server.py`, in `bridge_modern`) cannot be made slow at registering a
//! listen, nor made to change a resource in the instant between two listen streams, which are
//! the faults here:
//!
//! * `a_subscription_is_in_force_when_its_answer_arrives` — the remote registers a listen 400 ms
//!   after it was asked; an update the client causes right after its `resources/subscribe` was
//!   answered must still reach it.
//! * `a_changed_subscription_set_loses_and_doubles_nothing` — a second subscription re-opens
//!   the listen stream; the remote changes the first resource just before it registers the new
//!   stream (only the old one can carry that) and once more while both are open (both carry it):
//!   the client gets exactly two updates.
//! * `an_update_after_the_listen_stream_was_lost_is_not_taken_for_a_copy` — the remote ends the
//!   listen stream right after a change; the bridge re-opens it, and a second change (the same
//!   notification, soon after) still reaches the client: a stream that overlapped no other
//!   carries no copies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;

/// How long the scripted remote takes to register a listen stream.
const REGISTER_DELAY: Duration = Duration::from_millis(400);
/// Bound on every read from the bridge.
const READ: Duration = Duration::from_secs(20);

type Tx = mpsc::UnboundedSender<Result<String, std::io::Error>>;
/// One registered listen stream: the URIs it watches and where its frames go.
type Listener = (Vec<String>, Tx);

#[derive(Clone, Default)]
struct Remote {
    /// Registered listen streams.
    listeners: Arc<Mutex<Vec<Listener>>>,
    /// What the remote does when a listen for a second set arrives.
    change_during_handover: bool,
}

fn frame(v: &Value) -> Result<String, std::io::Error> {
    Ok(format!("event: message\ndata: {v}\n\n"))
}

fn updated(uri: &str) -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}})
}

impl Remote {
    /// Ends every open listen stream, as a remote that restarted does.
    fn end_listens(&self) {
        self.listeners.lock().expect("lock").clear();
    }

    /// Sends an update of `uri` to every open listen stream that watches it.
    fn change(&self, uri: &str) {
        let mut l = self.listeners.lock().expect("lock");
        l.retain(|(_, tx)| !tx.is_closed());
        for (uris, tx) in l.iter() {
            if uris.iter().any(|u| u == uri) {
                let _ = tx.send(frame(&updated(uri)));
            }
        }
    }
}

async fn mcp(State(remote): State<Remote>, body: String) -> Response {
    let req: Value = serde_json::from_str(&body).unwrap_or_default();
    let id = req["id"].clone();
    let json_answer = |result: Value| {
        ([(CONTENT_TYPE, "application/json")], json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
            .into_response()
    };
    match req["method"].as_str().unwrap_or_default() {
        "server/discover" => json_answer(json!({
            "supportedVersions": ["2026-07-28"],
            "capabilities": {"resources": {"subscribe": true}},
            "serverInfo": {"name": "scripted-modern", "version": "1"},
        })),
        "subscriptions/listen" => {
            let uris: Vec<String> = req["params"]["notifications"]["resourceSubscriptions"]
                .as_array()
                .map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            let (tx, rx) = mpsc::unbounded_channel();
            let r = remote.clone();
            tokio::spawn(async move {
                let second_set = uris.len() > 1;
                if second_set && r.change_during_handover {
                    // A change before the new stream exists: only the old one can carry it.
                    r.change("test://a");
                }
                tokio::time::sleep(REGISTER_DELAY).await;
                r.listeners.lock().expect("lock").push((uris, tx.clone()));
                if second_set && r.change_during_handover {
                    // A change while both streams are open: both carry it.
                    r.change("test://a");
                }
                let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                    "params": {"notifications": {}}});
                let _ = tx.send(frame(&ack));
            });
            let stream = tokio_stream_from(rx);
            ([(CONTENT_TYPE, "text/event-stream")], Body::from_stream(stream)).into_response()
        }
        "tools/call" => {
            let uri = req["params"]["arguments"]["uri"].as_str().unwrap_or("test://a").to_owned();
            remote.change(&uri);
            json_answer(json!({"content": [{"type": "text", "text": "changed"}]}))
        }
        _ => json_answer(json!({})),
    }
}

fn tokio_stream_from(
    mut rx: mpsc::UnboundedReceiver<Result<String, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<String, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct Bridge {
    _child: tokio::process::Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    updates: Vec<String>,
}

impl Bridge {
    async fn start(remote: Remote) -> Bridge {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let app = axum::Router::new().route("/mcp", post(mcp)).with_state(remote);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["bridge", &format!("http://127.0.0.1:{port}/mcp"), "--protocol", "modern"])
            .args(["--timeout", "15s", "--log-level", "warn"])
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the bridge");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut b = Bridge { _child: child, stdin, lines, next_id: 0, updates: Vec::new() };
        let init =
            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}});
        b.call("initialize", init).await;
        b.write(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        b
    }

    async fn write(&mut self, v: &Value) {
        self.stdin.write_all(format!("{v}\n").as_bytes()).await.expect("write to the bridge");
    }

    /// Handles one line from the bridge; returns it.
    async fn read(&mut self, wait: Duration) -> Option<Value> {
        let line = tokio::time::timeout(wait, self.lines.next_line()).await.ok()?.expect("read").expect("open");
        let v: Value = serde_json::from_str(&line).expect("a JSON line");
        if v["method"] == "notifications/resources/updated" {
            self.updates.push(v["params"]["uri"].as_str().unwrap_or_default().to_owned());
        }
        Some(v)
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
        loop {
            let v = self.read(READ).await.unwrap_or_else(|| panic!("no answer to {method} within {READ:?}"));
            if v["id"] == json!(id) && v.get("method").is_none() {
                return v;
            }
        }
    }

    /// Reads until `n` updates of `uri` arrived (or `READ` passed); returns how many arrived.
    async fn until_updates(&mut self, uri: &str, n: usize) -> usize {
        let count = |b: &Bridge| b.updates.iter().filter(|u| *u == uri).count();
        let deadline = tokio::time::Instant::now() + READ;
        while count(self) < n && tokio::time::Instant::now() < deadline {
            self.read(deadline - tokio::time::Instant::now()).await;
        }
        count(self)
    }

    /// Reads until `n` updates of `uri` arrived (or `READ` passed), then a moment more so that
    /// a duplicate would show; returns how many arrived.
    async fn updates_of(&mut self, uri: &str, n: usize) -> usize {
        self.until_updates(uri, n).await;
        while self.read(Duration::from_millis(1500)).await.is_some() {}
        self.updates.iter().filter(|u| *u == uri).count()
    }
}

#[tokio::test]
async fn a_subscription_is_in_force_when_its_answer_arrives() {
    let mut b = Bridge::start(Remote::default()).await;
    let sub = b.call("resources/subscribe", json!({"uri": "test://a"})).await;
    assert_eq!(sub["result"], json!({}), "{sub}");
    let called = b.call("tools/call", json!({"name": "bump", "arguments": {"uri": "test://a"}})).await;
    assert_eq!(called["result"]["content"][0]["text"], "changed", "{called}");
    assert_eq!(
        b.updates_of("test://a", 1).await,
        1,
        "the update caused right after subscribing reached the client once"
    );
}

#[tokio::test]
async fn a_changed_subscription_set_loses_and_doubles_nothing() {
    let mut b = Bridge::start(Remote { change_during_handover: true, ..Remote::default() }).await;
    b.call("resources/subscribe", json!({"uri": "test://a"})).await;
    let sub = b.call("resources/subscribe", json!({"uri": "test://b"})).await;
    assert_eq!(sub["result"], json!({}), "{sub}");
    assert_eq!(
        b.updates_of("test://a", 2).await,
        2,
        "one change before the new listen stream existed, one while both were open: two updates"
    );
    b.call("tools/call", json!({"name": "bump", "arguments": {"uri": "test://b"}})).await;
    assert_eq!(b.updates_of("test://b", 1).await, 1, "the new subscription is served");
}

#[tokio::test]
async fn an_update_after_the_listen_stream_was_lost_is_not_taken_for_a_copy() {
    let remote = Remote::default();
    let mut b = Bridge::start(remote.clone()).await;
    b.call("resources/subscribe", json!({"uri": "test://a"})).await;
    b.call("tools/call", json!({"name": "bump", "arguments": {"uri": "test://a"}})).await;
    assert_eq!(b.until_updates("test://a", 1).await, 1, "the first change reached the client");
    // The remote loses the stream (as one that restarted does); the bridge re-opens it and says
    // that what the client watches may have changed meanwhile.
    remote.end_listens();
    assert_eq!(b.until_updates("test://a", 2).await, 2, "the re-opened stream announced a possible change");
    // A new change, soon after the first: the same notification text, on a stream that
    // overlapped no other. It is not a copy of the first.
    b.call("tools/call", json!({"name": "bump", "arguments": {"uri": "test://a"}})).await;
    assert_eq!(
        b.updates_of("test://a", 3).await,
        3,
        "the change after the re-open reached the client (once), though the one before the loss said the same"
    );
}
