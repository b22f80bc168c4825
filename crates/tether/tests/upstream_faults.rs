//! A stdio upstream that misbehaves: an answer over the message limit, a flood of stderr in one
//! line, megabytes of junk on stdout (all from `tests/peers/misbehaving_server.py`, which
//! ignores EPIPE), and a command that exits at once. Nothing wedges a session, memory and logs
//! stay bounded, and a command that cannot start is backed off and reported.

mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use harness::{Client, Front, JSON_POST, config, init_params, raw_post, start, within};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tether::upstream::UpstreamSpec;
use tether::{Gateway, Listeners};
use tokio::io::AsyncReadExt;

fn misbehaving_command() -> Vec<String> {
    vec!["python3".into(), concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/peers/misbehaving_server.py").into()]
}

#[tokio::test]
async fn an_answer_over_the_message_limit_gets_an_error_and_the_session_goes_on() {
    let mut c = config(UpstreamSpec::Stdio { command: misbehaving_command() });
    // Long enough that waiting for it would fail the test's own 20 s bound.
    c.session.request_timeout = Duration::from_secs(120);
    let gw = start(c).await;
    let mut client = Client::new(&gw, Front::Streamable);
    client.connect().await;
    let pid = harness::only_child(&gw);
    for tool in ["huge", "huge_id_last"] {
        let r = client.request("tools/call", json!({"name": tool, "arguments": {}})).await;
        let err = &r.answer["error"];
        assert_eq!(err["data"]["reason"], "upstream_message_too_large", "{tool}: {}", r.answer);
        assert_eq!(err["code"], -32603, "{tool}");
        assert_eq!(err["data"]["limit"], 16 << 20);
        assert!(err["data"]["size"].as_u64().unwrap_or(0) > 17 << 20, "{err}");
    }
    let r = client.request("tools/call", json!({"name": "echo", "arguments": {"message": "after"}})).await;
    assert_eq!(r.answer["result"]["content"][0]["text"], "after", "the session is not wedged: {}", r.answer);
    assert_eq!(harness::only_child(&gw), pid, "the same child serves on");
    let sup = &gw.manager.deps().config.upstream.supervisor;
    assert_eq!(sup.oversized_lines_total.get(), 2);
    gw.shutdown().await;
}

/// `tether serve` as its own process (so its RSS and its log output can be measured), with the
/// misbehaving server upstream.
struct Process {
    child: tokio::process::Child,
    base: String,
    admin: String,
    log_bytes: Arc<AtomicU64>,
}

impl Process {
    async fn start() -> Process {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--store", "memory"])
            .args(["--admin-token", "test-admin-token", "--log-level", "info", "--"])
            .args(misbehaving_command())
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("tether starts");
        let mut stderr = child.stderr.take().expect("stderr");
        let log_bytes = Arc::new(AtomicU64::new(0));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<(String, String)>();
        let counted = log_bytes.clone();
        tokio::spawn(async move {
            let mut addr_tx = Some(addr_tx);
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                counted.fetch_add(n as u64, Ordering::Relaxed);
                if addr_tx.is_some() {
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    let after = |marker: &str, end: &str| {
                        let rest = &text[text.find(marker)? + marker.len()..];
                        Some(rest[..rest.find(end)?].to_owned())
                    };
                    if let (Some(mcp), Some(admin)) =
                        (after("serving MCP at http://", "/mcp"), after("admin listening at http://", " "))
                    {
                        let _ = addr_tx.take().map(|tx| tx.send((mcp, admin)));
                    }
                }
            }
        });
        let (mcp, admin) = within(addr_rx).await.expect("tether logs its addresses");
        Process { child, base: format!("http://{mcp}"), admin: format!("http://{admin}"), log_bytes }
    }

    fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }
}

#[tokio::test]
async fn a_200_mb_stderr_line_and_50_mb_of_junk_stdout_keep_memory_and_logs_bounded() {
    let p = Process::start().await;
    let mut client = Client::for_base(p.base.clone(), Front::Streamable);
    client.connect().await;
    let r = client.request("tools/call", json!({"name": "echo", "arguments": {"message": "warm"}})).await;
    assert_eq!(r.answer["result"]["content"][0]["text"], "warm");
    let before = p.rss_kib();

    let r = client.request("tools/call", json!({"name": "stderr_flood", "arguments": {"mb": 200}})).await;
    assert_eq!(r.answer["result"]["content"][0]["text"], "flooded", "{}", r.answer);
    let after = p.rss_kib();
    // Reading the whole line into memory, as before, raised it by ~300 MB.
    assert!(after < before + 32 * 1024, "RSS grew from {before} KiB to {after} KiB on a 200 MB stderr line");

    let logged = p.log_bytes.load(Ordering::Relaxed);
    let r = client.request("tools/call", json!({"name": "junk", "arguments": {"mb": 50}})).await;
    assert_eq!(r.answer["result"]["content"][0]["text"], "junked", "{}", r.answer);
    // Let the log writer catch up, then measure what the 51,200 junk lines cost in logs: one
    // WARN line each (28.7 MB) before; a rate-limited few now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let junk_logs = p.log_bytes.load(Ordering::Relaxed) - logged;
    assert!(junk_logs < 256 * 1024, "50 MB of junk stdout wrote {junk_logs} bytes of logs");
    let r = client.request("tools/call", json!({"name": "echo", "arguments": {"message": "still"}})).await;
    assert_eq!(r.answer["result"]["content"][0]["text"], "still");
    let metrics = within(reqwest::get(format!("{}/metrics", p.admin))).await.expect("metrics");
    let text = within(metrics.text()).await.expect("body");
    let suppressed = metric(&text, "tether_upstream_log_lines_suppressed_total");
    assert!(suppressed > 50_000.0 - 1000.0, "suppressed {suppressed}\n{text}");
    assert_eq!(metric(&text, "tether_upstream_stderr_truncated_total"), 1.0);
    assert_eq!(metric(&text, "tether_upstream_junk_lines_total"), 51_200.0);
    eprintln!(
        "RSS {before} KiB -> {after} KiB over a 200 MB stderr line; 50 MB of junk stdout: {junk_logs} bytes of logs, \
         {suppressed} lines suppressed"
    );
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test]
async fn a_command_that_exits_at_once_is_backed_off_and_reported() {
    let mut c = config(UpstreamSpec::Stdio { command: vec!["sh".into(), "-c".into(), "exit 1".into()] });
    c.session.request_timeout = Duration::from_secs(5);
    let mcp = within(tokio::net::TcpListener::bind("127.0.0.1:0")).await.expect("bind");
    let admin = within(tokio::net::TcpListener::bind("127.0.0.1:0")).await.expect("bind");
    let gw = within(Gateway::start_with(c, Listeners { mcp, admin: Some(admin) }, None)).await.expect("starts");
    let admin = format!("http://{}", gw.admin_addr.expect("admin"));
    let sup = gw.manager.deps().config.upstream.supervisor.clone();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init_params()}).to_string();
    let mut attempts = 0;
    while sup.backing_off().is_none() {
        attempts += 1;
        assert!(attempts <= 20, "no backoff after {attempts} initializes of a command that exits at once");
        let (status, v) = raw_post(&gw, &JSON_POST, init.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    }
    let spawned = sup.quick_exits_total.get();
    assert!(spawned >= 5, "{spawned}");

    // Now a new session is refused at once, without starting a process.
    let (status, v) = raw_post(&gw, &JSON_POST, init.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["data"]["reason"], "crash_loop", "{v}");
    assert!(v["error"]["data"]["retry_after_s"].as_u64().is_some_and(|s| s >= 1), "{v}");
    assert_eq!(sup.quick_exits_total.get(), spawned, "no process was started");
    assert!(sup.spawns_refused_total.get() >= 1);

    let http = reqwest::Client::new();
    let ready = within(http.get(format!("{admin}/readyz")).send()).await.expect("readyz");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready: Value = serde_json::from_str(&within(ready.text()).await.expect("body")).expect("json");
    assert_eq!(ready["checks"]["upstream"]["ok"], false, "{ready}");
    assert!(ready["checks"]["upstream"]["error"].as_str().unwrap_or("").contains("keeps exiting"), "{ready}");
    let deep = within(within(http.get(format!("{admin}/health/deep")).send()).await.expect("deep").text()).await;
    let deep: Value = serde_json::from_str(&deep.expect("body")).expect("json");
    assert_eq!(deep["status"], "degraded", "{deep}");
    assert!(deep["upstreams"]["crashLoops"].as_u64().is_some_and(|n| n >= 1), "{deep}");
    assert_eq!(deep["upstreams"]["command"]["backingOff"], true, "{deep}");
    let text =
        within(within(http.get(format!("{admin}/metrics")).send()).await.expect("metrics").text()).await.expect("body");
    assert_eq!(metric(&text, "tether_upstream_command_backoff"), 1.0, "{text}");
    assert!(metric(&text, "tether_upstream_crash_loops_total") >= 1.0);
    assert!(metric(&text, "tether_upstream_spawns_refused_total") >= 1.0);
    gw.shutdown().await;
}
