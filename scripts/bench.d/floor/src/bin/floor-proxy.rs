//! Minimal stdio proxy floor: one child for everyone, request ids rewritten to a counter, a
//! pending map of oneshots, one pipe round trip, the answer as SSE. No sessions, no healing,
//! no store: the least a stdio gateway can do.
//!
//! Usage: floor-proxy ADDR -- COMMAND [ARGS…]

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

type Pending = Arc<Mutex<HashMap<u64, (Box<RawValue>, oneshot::Sender<Vec<u8>>)>>>;

#[derive(Clone)]
struct Proxy {
    next: Arc<AtomicU64>,
    pending: Pending,
    to_child: mpsc::Sender<Vec<u8>>,
}

#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

async fn mcp(State(p): State<Proxy>, body: Bytes) -> Response {
    let Ok(env) = serde_json::from_slice::<Envelope<'_>>(&body) else { return tether_bench_floor::accepted() };
    let (Some(id), Some(method)) = (env.id, env.method) else {
        let _ = p.to_child.send([&body[..], b"\n"].concat()).await;
        return tether_bench_floor::accepted();
    };
    let gid = p.next.fetch_add(1, Ordering::Relaxed);
    let params = env.params.map(|v| format!(r#","params":{}"#, v.get())).unwrap_or_default();
    let line = format!("{{\"jsonrpc\":\"2.0\",\"id\":{gid},\"method\":{}{params}}}\n", method.get());
    let (tx, rx) = oneshot::channel();
    p.pending.lock().expect("pending").insert(gid, (id.to_owned(), tx));
    let _ = p.to_child.send(line.into_bytes()).await;
    match rx.await {
        Ok(answer) => tether_bench_floor::sse(&answer),
        Err(_) => tether_bench_floor::accepted(),
    }
}

/// Reads the child's answers and puts the client's id back in place of the counter.
async fn read_answers(stdout: tokio::process::ChildStdout, pending: Pending) {
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
        #[serde(borrow)]
        result: Option<&'a RawValue>,
        #[serde(borrow)]
        error: Option<&'a RawValue>,
    }
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(a) = serde_json::from_str::<Answer<'_>>(&line) else { continue };
        let Some(gid) = a.id.and_then(|i| i.get().parse::<u64>().ok()) else { continue };
        let Some((client_id, tx)) = pending.lock().expect("pending").remove(&gid) else { continue };
        let (key, value) = match (a.result, a.error) {
            (Some(r), _) => ("result", r),
            (None, Some(e)) => ("error", e),
            (None, None) => continue,
        };
        let msg = format!(r#"{{"jsonrpc":"2.0","id":{},"{key}":{}}}"#, client_id.get(), value.get());
        let _ = tx.send(msg.into_bytes());
    }
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    let (cmd, args) = argv.split_first().expect("usage: floor-proxy ADDR -- COMMAND [ARGS…]");
    let mut child = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the upstream");
    let mut stdin = child.stdin.take().expect("stdin");
    let (to_child, mut rx) = mpsc::channel::<Vec<u8>>(1024);
    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if stdin.write_all(&line).await.is_err() {
                break;
            }
        }
    });
    let pending = Pending::default();
    tokio::spawn(read_answers(child.stdout.take().expect("stdout"), pending.clone()));
    let proxy = Proxy { next: Arc::new(AtomicU64::new(1)), pending, to_child };
    tether_bench_floor::serve(Router::new().route("/mcp", post(mcp)).with_state(proxy)).await;
}
