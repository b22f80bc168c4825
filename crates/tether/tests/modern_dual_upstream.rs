//! A 2026-07-28 client through `tether serve --upstream` in front of a server of both eras: the
//! project's dual-era fixture (`tests/peers/fixture-v2.mjs`, TypeScript SDK v2 2.4.0) over
//! Streamable HTTP. A modern client's binding speaks 2026-07-28 to it (`--upstream-protocol
//! auto` probes the client's era first), so its requests reach the server as the client sent
//! them: the server's own `input_required` round (its key, its `requestState` if any) comes back
//! unchanged and the client's retry completes it. The server is served in both of its legacy
//! modes (`FIXTURE_LEGACY=stateless` and `sessions`), which must not matter to a modern client.
//! The server is SIGKILLed and restarted on its port between calls and while it is down (a call
//! made then completes once it is back), and its rounds are still its own after the revive.
//! Driven with raw HTTP.
//! Logs: `target/peer-logs/modern-dual/run-<pid>/`.

mod peer_support;

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use peer_support::*;
use serde_json::{Value, json};
use tokio::process::Command;

const V: &str = "2026-07-28";
const STEP: Duration = Duration::from_secs(30);

fn request(id: u64, method: &str, params: Value) -> Value {
    request_with(id, method, params, json!({"elicitation": {}}))
}

/// A request whose envelope declares `caps`.
fn request_with(id: u64, method: &str, mut params: Value, caps: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": V,
        "io.modelcontextprotocol/clientCapabilities": caps,
        "io.modelcontextprotocol/clientInfo": {"name": "raw-dual-test", "version": "1"}
    });
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// POSTs one modern request (with the headers a conforming client sends) and reads its answer,
/// the last JSON-RPC message of an SSE body or the JSON body.
async fn post(url: &str, body: &Value) -> Result<(u16, Value), String> {
    let method = body["method"].as_str().unwrap_or_default();
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", V)
        .header("mcp-method", method);
    if let Some(name) = body["params"]["name"].as_str() {
        req = req.header("mcp-name", name);
    }
    let send = async {
        let resp = req.body(body.to_string()).send().await.map_err(|e| format!("{method}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| format!("{method} body: {e}"))?;
        Ok::<_, String>((status, text))
    };
    let (status, text) =
        tokio::time::timeout(STEP, send).await.map_err(|_| format!("{method}: no answer in {STEP:?}"))??;
    let json = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .rfind(|m| m.get("id").is_some())
        .or_else(|| serde_json::from_str(&text).ok())
        .ok_or_else(|| format!("{method}: no JSON-RPC answer in {text:?}"))?;
    Ok((status, json))
}

/// The fixture (with `legacy` as its FIXTURE_LEGACY) and tether in front of it; runs `steps`
/// against tether's /mcp, then stops both.
/// `extra` are more flags for `tether serve`.
async fn through_tether(
    name: &str,
    legacy: &str,
    extra: &[&str],
    steps: impl AsyncFnOnce(String) -> Result<(), String>,
) {
    let dir = run_logs(Some("modern-dual")).join(name);
    std::fs::create_dir_all(&dir).expect("log folder");
    let p = peers(dir.clone(), &[]);
    let fixture = p.workspace.join("tests/peers/fixture-v2.mjs");
    assert!(fixture.exists(), "no dual-era fixture at {}", fixture.display());
    let log = dir.join("fixture-v2.log");
    let (mut upstream, port) = on_free_port("fixture-v2", "the dual-era fixture", async |port| {
        let mut cmd = Command::new(&p.node);
        cmd.arg(&fixture).arg("http").env("PORT", port.to_string()).env("FIXTURE_QUIET", "1");
        cmd.env("FIXTURE_LEGACY", legacy);
        let mut proc = Proc::spawn("fixture-v2", &mut cmd, &log, &log)?;
        let marker = format!("listening on http://127.0.0.1:{port}/mcp");
        let how =
            Readiness { taken: &["EADDRINUSE"], port: Some(port), new_only: false, poll: Duration::from_millis(50) };
        Ok(wait_ready(&mut proc, &log, &marker, how).await.map(|()| proc))
    })
    .await
    .expect("fixture-v2");
    let mut args = vec!["--upstream".to_owned(), format!("http://127.0.0.1:{port}/mcp")];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let (mut tether, tport) = start_tether(&p, &args, &dir).await.expect("tether");
    let outcome = steps(format!("http://127.0.0.1:{tport}/mcp")).await;
    let stop_t = tether.terminate(Duration::from_secs(20)).await;
    let stop_u = upstream.terminate(Duration::from_secs(10)).await;
    if let Err(e) = outcome {
        panic!("{e}\n{}", report(name, &dir, "a step failed", &[dir.join("tether.log"), log], true));
    }
    stop_t.expect("tether stops");
    stop_u.expect("fixture stops");
}

async fn simple_call(url: &str) -> Result<(), String> {
    let (status, v) =
        post(url, &request(1, "tools/call", json!({"name": "test_simple_text", "arguments": {}}))).await?;
    if status != 200 || v["result"]["content"][0]["text"] != "This is a simple text response for testing." {
        return Err(format!("test_simple_text: HTTP {status} {v}"));
    }
    if v["result"]["resultType"] != "complete" {
        return Err(format!("test_simple_text: not a complete 2026-07-28 result: {v}"));
    }
    Ok(())
}

#[tokio::test]
async fn a_sessionless_dual_era_upstream_serves_a_modern_client() {
    through_tether("stateless", "stateless", &[], async |url| simple_call(&url).await).await;
}

/// Spoken to in the handshake era (the flag forces it), the server must not see the envelope:
/// its sessionless handler would take the request for a 2026-07-28 one whose header says
/// 2025-11-25 (-32020).
#[tokio::test]
async fn the_envelope_does_not_reach_a_dual_era_upstream_spoken_to_in_the_handshake_era() {
    let forced = ["--upstream-protocol", "handshake"];
    through_tether("stateless-handshake", "stateless", &forced, async |url| simple_call(&url).await).await;
}

#[tokio::test]
async fn an_elicitation_of_a_dual_era_upstream_is_the_servers_own_round() {
    through_tether("sessions", "sessions", &[], async |url| {
        simple_call(&url).await?;
        let call = json!({"name": "test_input_required_result_elicitation", "arguments": {}});
        let (status, v) = post(&url, &request(2, "tools/call", call.clone())).await?;
        let r = &v["result"];
        if status != 200 || r["resultType"] != "input_required" {
            return Err(format!("elicitation round 1: HTTP {status} {v}"));
        }
        let inputs = r["inputRequests"].as_object().ok_or(format!("no inputRequests: {v}"))?;
        let (key, asked) = inputs.iter().next().ok_or(format!("empty inputRequests: {v}"))?;
        // The server's key (fixture-v2), not one tether made up for a round of its own.
        if inputs.len() != 1
            || key != "user_name"
            || asked["method"] != "elicitation/create"
            || asked["params"]["message"] != "What is your name?"
        {
            return Err(format!("elicitation round 1 asked: {v}"));
        }
        let mut retry = call;
        retry["inputResponses"] = json!({ key.clone(): {"action": "accept", "content": {"name": "Ada"}} });
        if let Some(state) = r.get("requestState") {
            retry["requestState"] = state.clone();
        }
        let (status, v) = post(&url, &request(3, "tools/call", retry)).await?;
        if status != 200 || v["result"]["content"][0]["text"] != "Hello, Ada!" {
            return Err(format!("elicitation round 2: HTTP {status} {v}"));
        }
        Ok(())
    })
    .await;
}

/// The server's batched round (an elicitation, a sampling request and a roots request at once,
/// with its `requestState`) reaches the client in one `input_required` result with the server's
/// keys, and the retry with all three answers completes the call.
#[tokio::test]
async fn a_batched_round_of_a_dual_era_upstream_reaches_the_client_whole() {
    through_tether("batched", "sessions", &[], async |url| {
        let caps = json!({"elicitation": {}, "sampling": {}, "roots": {}});
        let call = json!({"name": "test_input_required_result_multiple_inputs", "arguments": {}});
        let (status, v) = post(&url, &request_with(1, "tools/call", call.clone(), caps.clone())).await?;
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
        let (status, v) = post(&url, &request_with(2, "tools/call", retry, caps)).await?;
        if status != 200 || v["result"]["content"][0]["text"] != "All inputs received: name=Ada, roots=1" {
            return Err(format!("round 2: HTTP {status} {v}"));
        }
        Ok(())
    })
    .await;
}

/// Spoken to in the handshake era, the server's elicitation is tether's own round: a key of
/// tether's, one request, a sealed `requestState` that a forged one does not pass for (400,
/// `invalid_request_state`), and the genuine retry completes the call.
#[tokio::test]
async fn a_handshake_era_binding_keeps_tethers_sealed_rounds() {
    let forced = ["--upstream-protocol", "handshake"];
    through_tether("sessions-handshake", "sessions", &forced, async |url| {
        let call = json!({"name": "test_input_required_result_elicitation", "arguments": {}});
        let (status, v) = post(&url, &request(1, "tools/call", call.clone())).await?;
        let r = &v["result"];
        let inputs = r["inputRequests"].as_object().ok_or(format!("round 1: HTTP {status} {v}"))?;
        let (key, state) = match (inputs.keys().next(), r["requestState"].as_str()) {
            (Some(k), Some(s)) if inputs.len() == 1 && k != "user_name" => (k.clone(), s.to_owned()),
            _ => return Err(format!("round 1 is not tether's: {v}")),
        };
        let answer = json!({ key.clone(): {"action": "accept", "content": {"name": "Ada"}} });
        let mut forged = call.clone();
        forged["inputResponses"] = answer.clone();
        forged["requestState"] = json!(format!("{state}x"));
        let (status, v) = post(&url, &request(2, "tools/call", forged)).await?;
        if status != 400 || v["error"]["code"] != -32602 || v["error"]["data"]["reason"] != "invalid_request_state" {
            return Err(format!("a forged requestState: HTTP {status} {v}"));
        }
        let mut retry = call;
        retry["inputResponses"] = answer;
        retry["requestState"] = json!(state);
        let (status, v) = post(&url, &request(3, "tools/call", retry)).await?;
        if status != 200 || v["result"]["content"][0]["text"] != "Hello, Ada!" {
            return Err(format!("round 2: HTTP {status} {v}"));
        }
        Ok(())
    })
    .await;
}

/// fixture-v2 (sessions mode) on `port`, its `n`-th instance: waits while the port is still
/// held by the instance before it.
async fn fixture_on(p: &Peers, dir: &Path, port: u16, n: usize) -> Result<Result<Proc, Ready>, String> {
    let log = dir.join(format!("fixture-v2.{n}.log"));
    let mut cmd = Command::new(&p.node);
    cmd.arg(p.workspace.join("tests/peers/fixture-v2.mjs")).arg("http");
    cmd.env("PORT", port.to_string()).env("FIXTURE_QUIET", "1").env("FIXTURE_LEGACY", "sessions");
    let mut proc = Proc::spawn("fixture-v2", &mut cmd, &log, &log)?;
    let marker = format!("listening on http://127.0.0.1:{port}/mcp");
    let how = Readiness { taken: &["EADDRINUSE"], port: Some(port), new_only: false, poll: Duration::from_millis(50) };
    Ok(wait_ready(&mut proc, &log, &marker, how).await.map(|()| proc))
}

async fn restart_fixture(p: &Peers, dir: &Path, port: u16, n: usize) -> Result<Proc, String> {
    for _ in 0..40 {
        match fixture_on(p, dir, port, n).await? {
            Ok(proc) => return Ok(proc),
            Err(Ready::PortTaken(_)) => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(Ready::Failed(e)) => return Err(format!("fixture-v2 #{n} did not start: {e}")),
        }
    }
    Err(format!("fixture-v2 #{n} could not listen on port {port}"))
}

async fn sigkill(proc: &mut Proc) -> Result<(), String> {
    let pid = proc.child.id().ok_or("the fixture had already exited")? as i32;
    signal(pid, Signal::SIGKILL);
    tokio::time::timeout(DEATH_TIMEOUT, proc.child.wait())
        .await
        .map_err(|_| "the fixture did not die after SIGKILL".to_owned())?
        .map_err(|e| format!("waiting for the fixture: {e}"))?;
    Ok(())
}

/// The server's batched round, checked to be the server's (its keys).
async fn servers_round(url: &str, id: u64) -> Result<(), String> {
    let caps = json!({"elicitation": {}, "sampling": {}, "roots": {}});
    let call = json!({"name": "test_input_required_result_multiple_inputs", "arguments": {}});
    let (status, v) = post(url, &request_with(id, "tools/call", call, caps)).await?;
    let keys = v["result"]["inputRequests"].as_object().map(|o| o.len());
    if status != 200 || keys != Some(3) || v["result"]["inputRequests"].get("user_name").is_none() {
        return Err(format!("the server's round: HTTP {status} {v}"));
    }
    Ok(())
}

#[tokio::test]
async fn a_modern_client_is_served_across_restarts_of_a_dual_era_upstream() {
    let dir = run_logs(Some("modern-dual")).join("restarts");
    std::fs::create_dir_all(&dir).expect("log folder");
    let p = peers(dir.clone(), &[]);
    let (first, port) =
        on_free_port("fixture-v2", "the dual-era fixture", async |port| fixture_on(&p, &dir, port, 1).await)
            .await
            .expect("fixture-v2");
    let args = vec![
        "--upstream".to_owned(),
        format!("http://127.0.0.1:{port}/mcp"),
        "--restart-max-failures".to_owned(),
        "50".to_owned(),
    ];
    let (mut tether, tport) = start_tether(&p, &args, &dir).await.expect("tether");
    let url = format!("http://127.0.0.1:{tport}/mcp");
    let mut current = Some(first);
    let steps = async {
        simple_call(&url).await?;
        servers_round(&url, 2).await?;
        // Between calls.
        sigkill(current.as_mut().ok_or("no fixture")?).await?;
        current = Some(restart_fixture(&p, &dir, port, 2).await?);
        simple_call(&url).await.map_err(|e| format!("after a restart between calls: {e}"))?;
        servers_round(&url, 3).await.map_err(|e| format!("after a restart between calls: {e}"))?;
        // While it is down: the call waits for it (it never reached the server).
        sigkill(current.as_mut().ok_or("no fixture")?).await?;
        let call = tokio::spawn({
            let url = url.clone();
            async move { simple_call(&url).await }
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        current = Some(restart_fixture(&p, &dir, port, 3).await?);
        let done = tokio::time::timeout(STEP, call)
            .await
            .map_err(|_| format!("the call made while down: no answer in {STEP:?}"))?;
        done.map_err(|e| format!("the call made while down: {e}"))?
            .map_err(|e| format!("the call made while down: {e}"))?;
        servers_round(&url, 4).await.map_err(|e| format!("after a restart while down: {e}"))
    };
    let outcome: Result<(), String> = steps.await;
    let stop_t = tether.terminate(Duration::from_secs(20)).await;
    if let Some(mut f) = current {
        let _ = f.terminate(Duration::from_secs(10)).await;
    }
    if let Err(e) = outcome {
        let logs: Vec<_> = [dir.join("tether.log")]
            .into_iter()
            .chain((1..=3).map(|n| dir.join(format!("fixture-v2.{n}.log"))))
            .collect();
        panic!("{e}\n{}", report("restarts", &dir, "a step failed", &logs, true));
    }
    stop_t.expect("tether stops");
}
