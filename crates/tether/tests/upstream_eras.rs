//! The upstream's MCP era, with real peers: `tether serve --upstream URL` in front of a server
//! that speaks ONLY 2026-07-28 (`tests/peers/modern_server.py`, the official Python SDK), the
//! `--upstream-protocol` flag forced each way, and a remote that changes era across restarts on
//! the same port (server-everything `streamableHttp`, handshake only ⇄ the modern-only server),
//! followed by both `tether serve` and `tether bridge`.
//!
//! * `serve_modern_python_client` / `serve_modern_typescript_client` — the official Python SDK
//!   (mcp==2.3.0, `mode="legacy"`) and TypeScript SDK 1.x clients over Streamable HTTP
//!   (`tests/peers/modern_bridge_client.{py,mjs} --url`): handshake, tools/list with the
//!   `x-mcp-header` annotation, tools/call with `Mcp-Param-*`, resources/read, the log level, a
//!   subscription update, an elicitation round trip; then the remote is SIGKILLed and restarted
//!   at the kill points `between`, `during` (a safe call in flight succeeds), `during-unsafe`
//!   (-32011 `upstream_restarted`) and `down` (a call made while it is down completes once it is
//!   back). tether must log the era switch for the first connection.
//! * `forced_eras_are_clear_errors` — `--upstream-protocol modern` in front of the modern server
//!   works; `handshake` in front of it, and `modern` in front of server-everything, answer the
//!   client's `initialize` with HTTP 502 naming the flag, never the upstream's -32022 as a
//!   success.
//! * `serve_follows_an_era_flip` / `bridge_follows_an_era_flip` — one client session (raw
//!   JSON-RPC over HTTP; raw JSON lines on the bridge's stdio) calls `echo` while the remote on
//!   one port is server-everything, then the modern server, then server-everything again.
//! * `serve_modern_client_across_an_era_flip` — a 2026-07-28 client (raw HTTP) in front of the
//!   modern server gets the server's own `input_required` round; the remote then comes back as
//!   server-everything before the retry, which must get HTTP 400 `invalid_request_state` (the
//!   round cannot be continued), not hang; a fresh call is then served in the handshake era.
//!
//! Peers come from `scripts/setup-peers` (`TETHER_PEERS`); when they are missing the tests fail.
//! Logs: `target/peer-logs/upstream-eras/run-<pid>/<test>/`.

mod peer_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use peer_support::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const DRIVER_TIMEOUT: Duration = Duration::from_secs(300);
const KILL_POINTS: [&str; 4] = ["between", "during", "during-unsafe", "down"];
const DOWN_FOR: Duration = Duration::from_millis(1500);
/// Bound on one raw request (reconnections behind it included).
const CALL_TIMEOUT: Duration = Duration::from_secs(40);

fn paths(test: &str) -> (Peers, PathBuf) {
    let logs = run_logs(Some("upstream-eras")).join(test);
    let p = peers(logs.clone(), &[]);
    (p, logs)
}

fn modern_server(p: &Peers) -> PathBuf {
    p.workspace.join("tests/peers/modern_server.py")
}

/// Which server a [`Remote`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Era {
    /// server-everything `streamableHttp` (TypeScript SDK 1.x): handshake era only.
    Handshake,
    /// `tests/peers/modern_server.py`: 2026-07-28 only.
    Modern,
}

/// A remote on one fixed port, restartable on it in either era.
struct Remote {
    node: PathBuf,
    everything: PathBuf,
    python: PathBuf,
    modern: PathBuf,
    srv: PortServer,
}

impl Remote {
    fn new(p: &Peers, dir: &Path, port: u16) -> Remote {
        Remote {
            node: p.node.clone(),
            everything: p.everything.clone(),
            python: p.python.clone(),
            modern: modern_server(p),
            srv: PortServer::new("remote", dir, "remote", port),
        }
    }

    fn url(&self) -> String {
        self.srv.url()
    }

    /// Starts it (again) on its port in `era`.
    async fn start(&mut self, era: Era) -> Result<(), String> {
        let (node, everything, python, modern) =
            (self.node.clone(), self.everything.clone(), self.python.clone(), self.modern.clone());
        self.srv
            .start(|port| match era {
                Era::Modern => {
                    let mut c = Command::new(&python);
                    c.arg(&modern).args(["--port", port]).env("PYTHONUNBUFFERED", "1");
                    (c, format!("modern server ready on port {port}"))
                }
                Era::Handshake => {
                    let mut c = Command::new(&node);
                    c.arg(&everything).arg("streamableHttp").env("PORT", port);
                    (c, format!("on port {port}"))
                }
            })
            .await
    }

    async fn kill(&mut self) -> Result<(), String> {
        self.srv.kill().await
    }
}

fn diagnose(label: &str, dir: &Path, reason: &str) -> String {
    let mut files: Vec<PathBuf> =
        ["harness.log", "driver.err", "driver.out", "tether.log", "bridge.log"].iter().map(|n| dir.join(n)).collect();
    files.extend((1..=6).map(|n| dir.join(format!("remote.{n}.log"))));
    report(label, dir, reason, &files, true)
}

fn log_text(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// SDK clients through serve, in front of the modern-only server

#[derive(Clone, Copy)]
enum Client {
    Python,
    TypeScript,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_modern_python_client() {
    let (p, dir) = paths("serve-python");
    let label = "serve --upstream <modern-only server>, Python SDK client (legacy mode)";
    run_in_slot(label, &dir.clone(), "create the log dir", serve_scenario(p, dir, Client::Python), diagnose).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_modern_typescript_client() {
    let (p, dir) = paths("serve-typescript");
    let label = "serve --upstream <modern-only server>, TypeScript SDK 1.x client";
    run_in_slot(label, &dir.clone(), "create the log dir", serve_scenario(p, dir, Client::TypeScript), diagnose).await;
}

async fn serve_scenario(p: Peers, dir: PathBuf, client: Client) -> Result<String, String> {
    let mut harness = Harness::open(&dir)?;
    let mut remote = Remote::new(&p, &dir, free_port()?);
    remote.start(Era::Modern).await?;
    // Each kill costs the binding and at least one refused reconnect: give the breaker room.
    let args = vec!["--upstream".into(), remote.url(), "--restart-max-failures".into(), "50".into()];
    let (mut tether, port) = start_tether(&p, &args, &dir).await?;
    harness.note(&format!("modern server on {}, tether on port {port}", remote.url()));
    let url = format!("http://127.0.0.1:{port}/mcp");
    let (program, driver, what) = match client {
        Client::Python => (&p.python, p.workspace.join("tests/peers/modern_bridge_client.py"), "python"),
        Client::TypeScript => (&p.node, p.workspace.join("tests/peers/modern_bridge_client.mjs"), "node"),
    };
    let mut cmd = Command::new(program);
    cmd.arg(&driver)
        .args(["--url", &url])
        .args(["--request-timeout", "30", "--step-timeout", "60", "--kill-timeout", "90"])
        .current_dir(&p.workspace)
        .env("PYTHONUNBUFFERED", "1")
        .env("NO_PROXY", "127.0.0.1,localhost");
    let mut run = DriverRun::spawn(&mut cmd, what, &dir, DRIVER_TIMEOUT)?;
    let mut problems = Vec::new();
    while let Some(name) = run.next_kill_point(&mut problems, &mut harness).await {
        let down = name == "down";
        let acted = at_kill_point(&name, "killing/restarting the remote", async {
            remote.kill().await?;
            harness.note(&format!("SIGKILLed remote {}", remote.srv.instance));
            if down {
                send_go(&mut run.stdin).await.map_err(|e| format!("writing go: {e}"))?;
                tokio::time::sleep(DOWN_FOR).await;
            }
            remote.start(Era::Modern).await?;
            harness.note(&format!("remote {} serving again", remote.srv.instance));
            if !down {
                run.go(&name, &mut harness).await?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = acted {
            problems.push(e);
            break;
        }
    }
    let (status, end) = run.finish(&mut problems).await;
    let summary = end.check(status, DRIVER_TIMEOUT, &mut problems);
    let failing = failing_checks(&end.output, 4000);
    if !failing.is_empty() {
        problems.push(failing);
    }
    if end.kill_points != KILL_POINTS {
        problems.push(format!("the driver's kill points were {:?}, expected {KILL_POINTS:?}", end.kill_points));
    }
    let text = log_text(&dir, "tether.log");
    if !text.contains("switching to the modern era") {
        problems.push("tether did not log its switch to the modern era".into());
    }
    let discovered = text.matches("modern remote discovered").count();
    // A stateless remote restarted between two requests needs no new connection; one that is
    // down when a request is sent does (`down`), and that connection discovers it again.
    if discovered < 2 {
        problems.push(format!("tether discovered the remote {discovered} times; a reconnection should rediscover it"));
    }
    if let Err(e) = tether.terminate(SHUTDOWN_TIMEOUT).await {
        problems.push(format!("tether did not stop cleanly: {e}"));
    }
    if problems.is_empty() {
        Ok(format!("{summary}; remote started {} times", remote.srv.instance))
    } else {
        Err(problems.join("\n"))
    }
}

// ---------------------------------------------------------------------------------------------
// Raw JSON-RPC over HTTP

/// One POST to tether's MCP endpoint: the status, the session id it names, and the JSON-RPC
/// answer (read from JSON or from the SSE stream).
async fn post(
    http: &reqwest::Client,
    url: &str,
    sid: Option<&str>,
    body: Value,
) -> Result<(u16, Option<String>, Value), String> {
    let mut req = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(s) = sid {
        req = req.header("mcp-session-id", s).header("mcp-protocol-version", "2025-06-18");
    }
    answer_of(req, url, &body).await
}

/// Sends `req` (carrying `body`) and reads the status, the session id it names and the
/// JSON-RPC answer (from JSON or from the SSE stream), each step bounded.
async fn answer_of(
    req: reqwest::RequestBuilder,
    url: &str,
    body: &Value,
) -> Result<(u16, Option<String>, Value), String> {
    let resp = tokio::time::timeout(CALL_TIMEOUT, req.send())
        .await
        .map_err(|_| format!("no answer to {body} within {CALL_TIMEOUT:?}"))?
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status().as_u16();
    let sid = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let text = tokio::time::timeout(CALL_TIMEOUT, resp.text())
        .await
        .map_err(|_| "the answer's body did not end in time".to_owned())?
        .map_err(|e| format!("reading the answer: {e}"))?;
    let answer = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .chain(std::iter::once(text.as_str()))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("result").is_some() || v.get("error").is_some())
        .ok_or_else(|| format!("HTTP {status} without a JSON-RPC answer: {text:.300}"))?;
    Ok((status, sid, answer))
}

fn initialize_body(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
}

fn echo_body(id: u64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": message}}})
}

fn echo_text(answer: &Value) -> Option<&str> {
    answer["result"]["content"][0]["text"].as_str()
}

/// A raw client session through `tether serve`: initialize, initialized.
async fn open_session(http: &reqwest::Client, url: &str) -> Result<(String, Value), String> {
    let (status, sid, answer) = post(http, url, None, initialize_body(1)).await?;
    let sid = sid.ok_or_else(|| format!("initialize: HTTP {status}, no session id: {answer}"))?;
    if answer.get("result").is_none() {
        return Err(format!("initialize failed: HTTP {status} {answer}"));
    }
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let resp = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", &sid)
        .body(note.to_string())
        .send();
    let resp = tokio::time::timeout(CALL_TIMEOUT, resp).await.map_err(|_| "initialized: no answer")?;
    resp.map_err(|e| format!("initialized: {e}"))?;
    Ok((sid, answer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_eras_are_clear_errors() {
    let (p, dir) = paths("forced");
    run_in_slot("--upstream-protocol forced each way", &dir.clone(), "create the log dir", forced(p, dir), diagnose)
        .await;
}

async fn forced(p: Peers, dir: PathBuf) -> Result<String, String> {
    let mut harness = Harness::open(&dir)?;
    let http = reqwest::Client::builder().no_proxy().build().map_err(|e| e.to_string())?;
    let mut modern = Remote::new(&p, &dir, free_port()?);
    modern.start(Era::Modern).await?;
    let mut problems = Vec::new();

    // modern, in front of the modern server: served.
    let sub = dir.join("modern-modern");
    std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
    let args = vec!["--upstream".into(), modern.url(), "--upstream-protocol".into(), "modern".into()];
    let (mut tether, port) = start_tether(&p, &args, &sub).await?;
    let url = format!("http://127.0.0.1:{port}/mcp");
    match open_session(&http, &url).await {
        Ok((sid, init)) => {
            if init["result"]["serverInfo"]["name"] != "modern-test-server" {
                problems.push(format!("modern/modern: initialize answered {init}"));
            }
            let (_, _, answer) = post(&http, &url, Some(&sid), echo_body(2, "forced")).await?;
            if echo_text(&answer) != Some("Echo: forced") {
                problems.push(format!("modern/modern: echo answered {answer}"));
            }
        }
        Err(e) => problems.push(format!("modern/modern: {e}")),
    }
    if log_text(&sub, "tether.log").contains("switching to the") {
        problems.push("modern/modern: a fixed era switched".into());
    }
    tether.terminate(SHUTDOWN_TIMEOUT).await?;
    harness.note("modern in front of the modern server: checked");

    // handshake, in front of the modern server: a clear 502, not -32022.
    let sub = dir.join("handshake-modern");
    std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
    let args = vec![
        "--upstream".into(),
        modern.url(),
        "--upstream-protocol".into(),
        "handshake".into(),
        "--restart-max-failures".into(),
        "50".into(),
    ];
    let (mut tether, port) = start_tether(&p, &args, &sub).await?;
    let (status, _, answer) = post(&http, &format!("http://127.0.0.1:{port}/mcp"), None, initialize_body(1)).await?;
    let detail = answer["error"]["data"]["detail"].as_str().unwrap_or_default();
    if status != 502
        || answer["error"]["code"] == -32022
        || !detail.contains("speaks only MCP 2026-07-28")
        || !detail.contains("--upstream-protocol auto or modern")
    {
        problems.push(format!("handshake/modern: expected HTTP 502 naming the flag, got HTTP {status} {answer}"));
    }
    tether.terminate(SHUTDOWN_TIMEOUT).await?;
    modern.kill().await?;
    harness.note("handshake in front of the modern server: checked");

    // modern, in front of server-everything: a clear 502.
    let mut everything = Remote::new(&p, &dir, free_port()?);
    everything.srv.instance = 10;
    everything.start(Era::Handshake).await?;
    let sub = dir.join("modern-handshake");
    std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
    let args = vec!["--upstream".into(), everything.url(), "--upstream-protocol".into(), "modern".into()];
    let (mut tether, port) = start_tether(&p, &args, &sub).await?;
    let (status, _, answer) = post(&http, &format!("http://127.0.0.1:{port}/mcp"), None, initialize_body(1)).await?;
    let detail = answer["error"]["data"]["detail"].as_str().unwrap_or_default();
    if status != 502
        || !detail.contains("does not speak MCP 2026-07-28")
        || !detail.contains("--upstream-protocol auto or handshake")
    {
        problems.push(format!("modern/handshake: expected HTTP 502 naming the flag, got HTTP {status} {answer}"));
    }
    tether.terminate(SHUTDOWN_TIMEOUT).await?;
    everything.kill().await?;
    harness.note("modern in front of server-everything: checked");
    if problems.is_empty() { Ok("3 forced cases".into()) } else { Err(problems.join("\n")) }
}

// ---------------------------------------------------------------------------------------------
// A remote that changes era across restarts

const FLIPS: [Era; 3] = [Era::Handshake, Era::Modern, Era::Handshake];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_follows_an_era_flip() {
    let (p, dir) = paths("serve-flip");
    let label = "serve --upstream <handshake, then modern, then handshake on one port>";
    run_in_slot(label, &dir.clone(), "create the log dir", serve_flip(p, dir), diagnose).await;
}

async fn serve_flip(p: Peers, dir: PathBuf) -> Result<String, String> {
    let mut harness = Harness::open(&dir)?;
    let http = reqwest::Client::builder().no_proxy().build().map_err(|e| e.to_string())?;
    let mut remote = Remote::new(&p, &dir, free_port()?);
    remote.start(FLIPS[0]).await?;
    let args = vec!["--upstream".into(), remote.url(), "--restart-max-failures".into(), "50".into()];
    let (mut tether, port) = start_tether(&p, &args, &dir).await?;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let (sid, _) = open_session(&http, &url).await?;
    let mut problems = Vec::new();
    for (n, era) in FLIPS.iter().enumerate() {
        if n > 0 {
            remote.kill().await?;
            remote.start(*era).await?;
            harness.note(&format!("remote {} is {era:?}", remote.srv.instance));
        }
        let message = format!("flip {n} {era:?}");
        let (status, _, answer) = post(&http, &url, Some(&sid), echo_body(10 + n as u64, &message)).await?;
        if echo_text(&answer) != Some(format!("Echo: {message}").as_str()) {
            problems.push(format!("{era:?} (step {n}): HTTP {status} {answer}"));
        }
    }
    let text = log_text(&dir, "tether.log");
    for want in ["switching to the modern era", "switching to the handshake era"] {
        if !text.contains(want) {
            problems.push(format!("tether did not log {want:?}"));
        }
    }
    tether.terminate(SHUTDOWN_TIMEOUT).await?;
    if problems.is_empty() {
        Ok("handshake → modern → handshake, one session".into())
    } else {
        Err(problems.join("\n"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_follows_an_era_flip() {
    let (p, dir) = paths("bridge-flip");
    let label = "bridge <handshake, then modern, then handshake on one port>";
    run_in_slot(label, &dir.clone(), "create the log dir", bridge_flip(p, dir), diagnose).await;
}

async fn bridge_flip(p: Peers, dir: PathBuf) -> Result<String, String> {
    let mut harness = Harness::open(&dir)?;
    let mut remote = Remote::new(&p, &dir, free_port()?);
    remote.start(FLIPS[0]).await?;
    let log = dir.join("bridge.log");
    let mut cmd = Command::new(&p.tether);
    cmd.args(["bridge", &remote.url(), "--log-file", &path_arg(&log), "--timeout", "30s"])
        .env("NO_COLOR", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TETHER_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().map_err(|e| format!("spawning the bridge: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let mut ask = async |body: Value| -> Result<Value, String> {
        let id = body["id"].clone();
        stdin.write_all(format!("{body}\n").as_bytes()).await.map_err(|e| format!("writing: {e}"))?;
        if id.is_null() {
            return Ok(Value::Null); // a notification
        }
        tokio::time::timeout(CALL_TIMEOUT, async {
            while let Some(line) = lines.next_line().await.map_err(|e| format!("reading: {e}"))? {
                let v: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
                if v["id"] == id {
                    return Ok(v);
                }
            }
            Err("the bridge closed its stdout".to_owned())
        })
        .await
        .map_err(|_| format!("no answer to {body} within {CALL_TIMEOUT:?}"))?
    };
    let init = ask(initialize_body(1)).await?;
    if init.get("result").is_none() {
        return Err(format!("initialize: {init}"));
    }
    ask(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await?;
    let mut problems = Vec::new();
    for (n, era) in FLIPS.iter().enumerate() {
        if n > 0 {
            remote.kill().await?;
            remote.start(*era).await?;
            harness.note(&format!("remote {} is {era:?}", remote.srv.instance));
        }
        let message = format!("flip {n} {era:?}");
        let answer = ask(echo_body(10 + n as u64, &message)).await?;
        if echo_text(&answer) != Some(format!("Echo: {message}").as_str()) {
            problems.push(format!("{era:?} (step {n}): {answer}"));
        }
    }
    let _ = child.kill().await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    for want in ["switching to the modern era", "switching to the handshake era"] {
        if !text.contains(want) {
            problems.push(format!("the bridge did not log {want:?}"));
        }
    }
    if problems.is_empty() {
        Ok("handshake → modern → handshake, one bridge".into())
    } else {
        Err(problems.join("\n"))
    }
}

// ---------------------------------------------------------------------------------------------
// A 2026-07-28 client across an era flip

const MODERN_ENVELOPE: &str = "2026-07-28";

/// A 2026-07-28 request (its envelope declares elicitation).
fn modern_body(id: u64, mut params: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": MODERN_ENVELOPE,
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
        "io.modelcontextprotocol/clientInfo": {"name": "raw-modern", "version": "1"}
    });
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

/// POSTs one 2026-07-28 `tools/call` with the headers the revision requires.
async fn modern_post(http: &reqwest::Client, url: &str, body: &Value) -> Result<(u16, Value), String> {
    let name = body["params"]["name"].as_str().unwrap_or_default();
    let req = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", MODERN_ENVELOPE)
        .header("mcp-method", "tools/call")
        .header("mcp-name", name)
        .body(body.to_string());
    let (status, _, answer) = answer_of(req, url, body).await?;
    Ok((status, answer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_modern_client_across_an_era_flip() {
    let (p, dir) = paths("serve-modern-flip");
    let label = "serve --upstream <modern, then handshake on one port>, a 2026-07-28 client";
    run_in_slot(label, &dir.clone(), "create the log dir", serve_modern_flip(p, dir), diagnose).await;
}

async fn serve_modern_flip(p: Peers, dir: PathBuf) -> Result<String, String> {
    let mut harness = Harness::open(&dir)?;
    let http = reqwest::Client::builder().no_proxy().build().map_err(|e| e.to_string())?;
    let mut remote = Remote::new(&p, &dir, free_port()?);
    remote.start(Era::Modern).await?;
    let args = vec!["--upstream".into(), remote.url(), "--restart-max-failures".into(), "50".into()];
    let (mut tether, port) = start_tether(&p, &args, &dir).await?;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let greet = json!({"name": "greet", "arguments": {}});
    let (status, answer) = modern_post(&http, &url, &modern_body(1, greet.clone())).await?;
    let r = &answer["result"];
    let key = match r["inputRequests"].as_object() {
        Some(inputs) if status == 200 && r["resultType"] == "input_required" && inputs.len() == 1 => {
            inputs.keys().next().cloned().unwrap_or_default()
        }
        _ => return Err(format!("greet, round 1: HTTP {status} {answer}")),
    };
    // The modern upstream kind's own questions are named `tether-input-…`: the server's key
    // means the round came through as the server made it.
    if key.starts_with("tether-") {
        return Err(format!("greet, round 1 is tether's, not the server's: {answer}"));
    }
    remote.kill().await?;
    remote.start(Era::Handshake).await?;
    harness.note(&format!("remote {} is handshake-era", remote.srv.instance));
    let mut retry = greet;
    retry["inputResponses"] = json!({ key: {"action": "accept", "content": {"name": "Ada"}} });
    if let Some(state) = r.get("requestState") {
        retry["requestState"] = state.clone();
    }
    let mut problems = Vec::new();
    let (status, answer) = modern_post(&http, &url, &modern_body(2, retry)).await?;
    if status != 400
        || answer["error"]["code"] != -32602
        || answer["error"]["data"]["reason"] != "invalid_request_state"
    {
        problems.push(format!("the stale retry: HTTP {status} {answer}"));
    }
    let echo = json!({"name": "echo", "arguments": {"message": "after the flip"}});
    let (status, answer) = modern_post(&http, &url, &modern_body(3, echo)).await?;
    if status != 200
        || echo_text(&answer) != Some("Echo: after the flip")
        || answer["result"]["resultType"] != "complete"
    {
        problems.push(format!("a fresh call after the flip: HTTP {status} {answer}"));
    }
    tether.terminate(SHUTDOWN_TIMEOUT).await?;
    if problems.is_empty() {
        Ok("the server's round, then a clear error for its stale retry".into())
    } else {
        Err(problems.join("\n"))
    }
}
