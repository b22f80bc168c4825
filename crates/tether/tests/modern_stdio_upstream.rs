//! A stdio upstream spoken to in MCP 2026-07-28 through `tether serve -- COMMAND`.
//!
//! * The dual-era fixture (`tests/peers/fixture-v2.mjs stdio`, TypeScript SDK v2 `serveStdio`)
//!   in front of a 2026-07-28 client: with `--upstream-protocol auto` the client's binding
//!   probes the child with `server/discover` and speaks its era, so the server's own batched
//!   `input_required` round (its keys, its `requestState`) reaches the client unchanged. The
//!   child is SIGKILLed between calls; tether starts a new one and the next calls work, rounds
//!   still the server's.
//! * The modern-only `tests/peers/modern_server.py --stdio` (Python SDK, 2026-07-28 only) with
//!   `--upstream-protocol modern` and `auto`, to a handshake-era client (raw HTTP: `initialize`
//!   answered from `server/discover`, a tool called, its elicitation asked of the client as a
//!   server→client request and the answer taken back) and to a 2026-07-28 client (a call, and
//!   the server's own elicitation round).
//! * A handshake-era server that exits on any request before `initialize` (the misbehaving
//!   server's mode for it), in front of a 2026-07-28 client with `auto`: the probe's child
//!   exits, a new child is started in the handshake era, and the client is served (translated).
//! * A request the modern-only child never read (it sat in the stdin pipe of a stopped child
//!   when the child was killed) is sent again on the new child, though its tool is not safe to
//!   repeat: the unread-stdin accounting works through the 2026-07-28 wire ids.
//!
//! Driven with raw HTTP. Logs: `target/peer-logs/modern-stdio/run-<pid>/`.

mod peer_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use peer_support::*;
use serde_json::{Value, json};

const V: &str = "2026-07-28";
const STEP: Duration = Duration::from_secs(30);

/// A 2026-07-28 request whose envelope declares `caps`.
fn modern_request(id: u64, method: &str, mut params: Value, caps: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": V,
        "io.modelcontextprotocol/clientCapabilities": caps,
        "io.modelcontextprotocol/clientInfo": {"name": "raw-stdio-test", "version": "1"}
    });
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// Every JSON-RPC message of an SSE body, or the JSON body.
fn messages(text: &str) -> Vec<Value> {
    let sse: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .collect();
    if sse.is_empty() { serde_json::from_str(text).into_iter().collect() } else { sse }
}

/// POSTs `body` with `headers`; the status, the `Mcp-Session-Id` answered, and the messages.
async fn post_raw(
    url: &str,
    headers: &[(&str, String)],
    body: &Value,
) -> Result<(u16, Option<String>, Vec<Value>), String> {
    let method = body["method"].as_str().unwrap_or("an answer").to_owned();
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let send = async {
        let resp = req.body(body.to_string()).send().await.map_err(|e| format!("{method}: {e}"))?;
        let status = resp.status().as_u16();
        let session = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let text = resp.text().await.map_err(|e| format!("{method} body: {e}"))?;
        Ok::<_, String>((status, session, messages(&text)))
    };
    tokio::time::timeout(STEP, send).await.map_err(|_| format!("{method}: no answer in {STEP:?}"))?
}

/// POSTs one 2026-07-28 request with the headers a conforming client sends; its answer.
async fn post_modern(url: &str, body: &Value) -> Result<(u16, Value), String> {
    let method = body["method"].as_str().unwrap_or_default().to_owned();
    let mut headers = vec![("mcp-protocol-version", V.to_owned()), ("mcp-method", method.clone())];
    if let Some(name) = body["params"]["name"].as_str() {
        headers.push(("mcp-name", name.to_owned()));
    }
    let (status, _, msgs) = post_raw(url, &headers, body).await?;
    let answer = msgs.into_iter().rfind(|m| m.get("id").is_some() && m.get("method").is_none());
    Ok((status, answer.ok_or_else(|| format!("{method}: no JSON-RPC answer"))?))
}

/// tether in front of `command` (with `extra` flags); runs `steps` against its /mcp with
/// tether's pid, then stops it.
async fn through_tether(
    name: &str,
    extra: &[&str],
    command: impl FnOnce(&Peers) -> Vec<String>,
    steps: impl AsyncFnOnce(String, i32) -> Result<(), String>,
) {
    let dir = run_logs(Some("modern-stdio")).join(name);
    std::fs::create_dir_all(&dir).expect("log folder");
    let p = peers(dir.clone(), &[]);
    let mut args: Vec<String> = vec!["--store".into(), "memory".into(), "--restart-max-failures".into(), "50".into()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args.push("--".into());
    args.extend(command(&p));
    let (mut tether, port) = start_tether(&p, &args, &dir).await.expect("tether");
    let pid = tether.child.id().expect("tether pid") as i32;
    let outcome = steps(format!("http://127.0.0.1:{port}/mcp"), pid).await;
    let stopped = tether.terminate(SHUTDOWN_TIMEOUT).await;
    if let Err(e) = outcome {
        panic!("{e}\n{}", report(name, &dir, "a step failed", &[dir.join("tether.log")], true));
    }
    stopped.expect("tether stops");
}

fn fixture_v2(p: &Peers) -> Vec<String> {
    // `env` execs node, so the child tether spawns is the fixture itself.
    let script: PathBuf = p.workspace.join("tests/peers/fixture-v2.mjs");
    vec!["env".into(), "FIXTURE_QUIET=1".into(), path_arg(&p.node), path_arg(&script), "stdio".into()]
}

fn modern_only(p: &Peers) -> Vec<String> {
    let script = p.workspace.join("tests/peers/modern_server.py");
    vec![path_arg(&p.python), path_arg(&script), "--stdio".into()]
}

/// The one live child of tether, waited for (bounded) while another is still there (a probe's).
async fn the_child(tether: i32) -> Result<i32, String> {
    let t = Instant::now();
    loop {
        let kids: Vec<i32> =
            alive(&descendants(tether)).into_iter().map(|(p, _)| p).filter(|p| parent_of(*p) == Some(tether)).collect();
        match kids.as_slice() {
            [one] => return Ok(*one),
            _ if t.elapsed() > Duration::from_secs(10) => {
                return Err(format!("expected one live child of tether, found {kids:?}"));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// SIGKILLs tether's stdio child and waits for it to be gone.
async fn kill_child(tether: i32) -> Result<i32, String> {
    let child = the_child(tether).await?;
    let entry = proc_stat(child).ok_or("the child vanished")?;
    signal(child, Signal::SIGKILL);
    let t = Instant::now();
    while !alive(&[entry]).is_empty() {
        if t.elapsed() > DEATH_TIMEOUT {
            return Err(format!("the stdio child {child} did not die"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(child)
}

/// The capabilities of every request of the fixture test: one binding, so one child.
fn fixture_caps() -> Value {
    json!({"elicitation": {}, "sampling": {}, "roots": {}})
}

async fn fixture_simple_call(url: &str, id: u64) -> Result<(), String> {
    let call = json!({"name": "test_simple_text", "arguments": {}});
    let (status, v) = post_modern(url, &modern_request(id, "tools/call", call, fixture_caps())).await?;
    if status != 200 || v["result"]["content"][0]["text"] != "This is a simple text response for testing." {
        return Err(format!("test_simple_text: HTTP {status} {v}"));
    }
    if v["result"]["resultType"] != "complete" {
        return Err(format!("test_simple_text: not a complete 2026-07-28 result: {v}"));
    }
    Ok(())
}

/// The server's batched round (elicitation, sampling, roots at once, with its requestState)
/// reaches the client whole with the server's keys, and the retry completes the call.
async fn fixture_batched_round(url: &str, id: u64) -> Result<(), String> {
    let caps = fixture_caps();
    let call = json!({"name": "test_input_required_result_multiple_inputs", "arguments": {}});
    let (status, v) = post_modern(url, &modern_request(id, "tools/call", call.clone(), caps.clone())).await?;
    let r = &v["result"];
    if status != 200 || r["resultType"] != "input_required" {
        return Err(format!("round 1: HTTP {status} {v}"));
    }
    let inputs = r["inputRequests"].as_object().ok_or(format!("no inputRequests: {v}"))?;
    let mut keys: Vec<&str> = inputs.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["client_roots", "greeting", "user_name"]
        || inputs["user_name"]["method"] != "elicitation/create"
        || inputs["greeting"]["method"] != "sampling/createMessage"
        || inputs["client_roots"]["method"] != "roots/list"
    {
        return Err(format!("round 1 is not the server's batch: {v}"));
    }
    let state = r["requestState"].as_str().ok_or(format!("no requestState: {v}"))?;
    let mut retry = call;
    retry["requestState"] = json!(state);
    retry["inputResponses"] = json!({
        "user_name": {"action": "accept", "content": {"name": "Ada"}},
        "greeting": {"role": "assistant", "content": {"type": "text", "text": "Hello!"}, "model": "m",
            "stopReason": "endTurn"},
        "client_roots": {"roots": [{"uri": "file:///tmp/a", "name": "a"}]}
    });
    let (status, v) = post_modern(url, &modern_request(id + 1, "tools/call", retry, caps)).await?;
    if status != 200 || v["result"]["content"][0]["text"] != "All inputs received: name=Ada, roots=1" {
        return Err(format!("round 2: HTTP {status} {v}"));
    }
    Ok(())
}

#[tokio::test]
async fn a_modern_client_gets_the_dual_era_stdio_servers_own_rounds_across_a_killed_child() {
    through_tether("fixture-v2", &[], fixture_v2, async |url, tether| {
        fixture_simple_call(&url, 1).await?;
        fixture_batched_round(&url, 2).await?;
        let first = kill_child(tether).await?;
        fixture_simple_call(&url, 10).await.map_err(|e| format!("after the child was killed: {e}"))?;
        fixture_batched_round(&url, 11).await.map_err(|e| format!("after the child was killed: {e}"))?;
        let second = the_child(tether).await?;
        if second == first {
            return Err(format!("the killed child {first} is still tether's child"));
        }
        Ok(())
    })
    .await;
}

/// A 2026-07-28 client of the modern-only server: a call, and the server's own elicitation
/// round (its key), completed by the retry.
async fn modern_client_of_modern_only(url: &str) -> Result<(), String> {
    let call = json!({"name": "echo", "arguments": {"message": "hi"}});
    let (status, v) = post_modern(url, &modern_request(1, "tools/call", call, json!({}))).await?;
    if status != 200 || v["result"]["content"][0]["text"] != "Echo: hi" {
        return Err(format!("echo: HTTP {status} {v}"));
    }
    let caps = json!({"elicitation": {}});
    let greet = json!({"name": "greet", "arguments": {}});
    let (status, v) = post_modern(url, &modern_request(2, "tools/call", greet.clone(), caps.clone())).await?;
    let r = &v["result"];
    let inputs = r["inputRequests"].as_object().ok_or(format!("greet round 1: HTTP {status} {v}"))?;
    let Some((key, asked)) = inputs.iter().next() else { return Err(format!("greet: nothing asked: {v}")) };
    if status != 200 || r["resultType"] != "input_required" || asked["method"] != "elicitation/create" {
        return Err(format!("greet round 1: HTTP {status} {v}"));
    }
    let mut retry = greet;
    retry["inputResponses"] = json!({ key.clone(): {"action": "accept", "content": {"name": "Ada"}} });
    if let Some(state) = r.get("requestState") {
        retry["requestState"] = state.clone();
    }
    let (status, v) = post_modern(url, &modern_request(3, "tools/call", retry, caps)).await?;
    if status != 200 || v["result"]["content"][0]["text"] != "Hello, Ada!" {
        return Err(format!("greet round 2: HTTP {status} {v}"));
    }
    Ok(())
}

/// A handshake-era client (2025-11-25, raw HTTP with a session) of the modern-only server:
/// `initialize` is answered (from `server/discover`), a call works, and the server's
/// elicitation reaches the client as a server→client request whose answer completes the call.
async fn handshake_client_of_modern_only(url: &str) -> Result<(), String> {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {"elicitation": {}},
        "clientInfo": {"name": "raw-legacy", "version": "1"}
    }});
    let (status, session, msgs) = post_raw(url, &[], &init).await?;
    let answer = msgs.iter().find(|m| m["id"] == 1).cloned().unwrap_or(Value::Null);
    let session = session.ok_or(format!("initialize: no session (HTTP {status} {answer})"))?;
    if status != 200 || answer["result"]["protocolVersion"] != "2025-11-25" {
        return Err(format!("initialize: HTTP {status} {answer}"));
    }
    if answer["result"]["serverInfo"]["name"] != "modern-test-server" {
        return Err(format!("initialize is not the server's: {answer}"));
    }
    let headers = [("mcp-session-id", session), ("mcp-protocol-version", "2025-11-25".to_owned())];
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, _) = post_raw(url, &headers, &initialized).await?;
    if status != 202 {
        return Err(format!("notifications/initialized: HTTP {status}"));
    }
    let echo = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "hi"}}});
    let (status, _, msgs) = post_raw(url, &headers, &echo).await?;
    let answer = msgs.iter().find(|m| m["id"] == 2).cloned().unwrap_or(Value::Null);
    if status != 200 || answer["result"]["content"][0]["text"] != "Echo: hi" {
        return Err(format!("echo: HTTP {status} {answer}"));
    }
    // The answer to the elicitation is POSTed while the call's stream waits for it.
    let greet =
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "greet", "arguments": {}}});
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in &headers {
        req = req.header(*k, v);
    }
    let mut resp = tokio::time::timeout(STEP, req.body(greet.to_string()).send())
        .await
        .map_err(|_| "greet: no answer".to_owned())?
        .map_err(|e| format!("greet: {e}"))?;
    let mut text = String::new();
    let t = Instant::now();
    let mut answered = false;
    loop {
        let chunk = tokio::time::timeout(STEP, resp.chunk())
            .await
            .map_err(|_| format!("greet: the stream stalled; so far {text:?}"))?
            .map_err(|e| format!("greet stream: {e}"))?;
        let Some(chunk) = chunk else { break };
        text.push_str(&String::from_utf8_lossy(&chunk));
        let msgs = messages(&text);
        if !answered && let Some(ask) = msgs.iter().find(|m| m["method"] == "elicitation/create") {
            let reply =
                json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "accept", "content": {"name": "Ada"}}});
            let (status, _, _) = post_raw(url, &headers, &reply).await?;
            if status != 202 {
                return Err(format!("the elicitation answer: HTTP {status}"));
            }
            answered = true;
        }
        if msgs.iter().any(|m| m["id"] == 3) || t.elapsed() > STEP {
            break;
        }
    }
    let answer = messages(&text).into_iter().find(|m| m["id"] == 3).unwrap_or(Value::Null);
    if !answered || answer["result"]["content"][0]["text"] != "Hello, Ada!" {
        return Err(format!("greet (asked: {answered}): {answer}; stream {text:?}"));
    }
    Ok(())
}

#[tokio::test]
async fn a_modern_only_stdio_server_with_the_modern_flag_serves_both_eras_of_clients() {
    let flags = ["--upstream-protocol", "modern"];
    through_tether("modern-only-modern", &flags, modern_only, async |url, _| {
        modern_client_of_modern_only(&url).await?;
        handshake_client_of_modern_only(&url).await
    })
    .await;
}

#[tokio::test]
async fn a_modern_only_stdio_server_in_auto_serves_both_eras_of_clients() {
    through_tether("modern-only-auto", &[], modern_only, async |url, _| {
        handshake_client_of_modern_only(&url).await?;
        modern_client_of_modern_only(&url).await
    })
    .await;
}

/// The admin listener's base URL, from tether's log.
async fn admin_url(log: &std::path::Path) -> Result<String, String> {
    tokio::time::timeout(STEP, async {
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(url) = text
                .lines()
                .find_map(|l| l.split("admin listening at ").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
            {
                return url.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .map_err(|_| "no admin address in tether's log".to_owned())
}

#[tokio::test]
async fn a_request_the_modern_child_never_read_is_sent_again() {
    let flags = ["--upstream-protocol", "modern"];
    through_tether("modern-only-unread", &flags, modern_only, async |url, tether| {
        let echo = json!({"name": "echo", "arguments": {"message": "hi"}});
        let (status, v) = post_modern(&url, &modern_request(1, "tools/call", echo, json!({}))).await?;
        if status != 200 || v["result"]["content"][0]["text"] != "Echo: hi" {
            return Err(format!("echo: HTTP {status} {v}"));
        }
        let child = the_child(tether).await?;
        // A stopped child reads nothing: the call waits in the pipe when it is killed.
        signal(child, Signal::SIGSTOP);
        let unsafe_call = json!({"name": "slow_unsafe", "arguments": {"seconds": 0}});
        let pending = tokio::spawn({
            let url = url.clone();
            async move { post_modern(&url, &modern_request(2, "tools/call", unsafe_call, json!({}))).await }
        });
        // The call is in tether (the in-flight gauge), then a moment for it to reach the
        // pipe (it is written as soon as tether has it); the log proves afterwards that the
        // session had it in flight when the child died.
        let log_path = run_logs(Some("modern-stdio")).join("modern-only-unread/tether.log");
        let metrics = admin_url(&log_path).await? + "/metrics";
        let waited = tokio::time::timeout(STEP, async {
            loop {
                let text = match reqwest::get(&metrics).await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                if text.lines().any(|l| l.starts_with("tether_requests_in_flight ") && !l.ends_with(" 0")) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        waited.map_err(|_| "the unsafe call never reached tether".to_owned())?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        kill_child(tether).await?;
        let (status, v) = tokio::time::timeout(STEP, pending)
            .await
            .map_err(|_| "the unread call: no answer".to_owned())?
            .map_err(|e| format!("the unread call: {e}"))??;
        let log = std::fs::read_to_string(run_logs(Some("modern-stdio")).join("modern-only-unread/tether.log"))
            .map_err(|e| format!("tether.log: {e}"))?;
        if !log.lines().any(|l| l.contains("upstream connection lost") && l.contains("in_flight=1")) {
            return Err("the call had not reached the child when it was killed: nothing was proved".into());
        }
        if status != 200 || v["result"]["content"][0]["text"] != "slow done" {
            return Err(format!("the unread call was not sent again: HTTP {status} {v}"));
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_server_that_exits_on_the_discover_probe_is_started_again_in_the_handshake_era() {
    let command = |p: &Peers| {
        let script = p.workspace.join("tests/peers/misbehaving_server.py");
        vec!["env".into(), "MISBEHAVE_EXIT_BEFORE_INIT=1".into(), path_arg(&p.python), path_arg(&script)]
    };
    through_tether("exits-on-discover", &[], command, async |url, tether| {
        for id in 1..=2 {
            let echo = json!({"name": "echo", "arguments": {"message": "hi"}});
            let (status, v) = post_modern(&url, &modern_request(id, "tools/call", echo, json!({}))).await?;
            if status != 200 || v["result"]["content"][0]["text"] != "hi" || v["result"]["resultType"] != "complete" {
                return Err(format!("echo {id}: HTTP {status} {v}"));
            }
        }
        the_child(tether).await?;
        let log = std::fs::read_to_string(run_logs(Some("modern-stdio")).join("exits-on-discover/tether.log"))
            .map_err(|e| format!("tether.log: {e}"))?;
        let fallbacks = log.lines().filter(|l| l.contains("does not speak 2026-07-28; starting it again")).count();
        if fallbacks != 1 {
            return Err(format!("{fallbacks} fallbacks to the handshake era logged, expected 1"));
        }
        Ok(())
    })
    .await;
}
