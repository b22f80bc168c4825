//! The real-peer matrix: the official MCP SDK clients, through a real `tether serve`, in front of
//! the real `@modelcontextprotocol/server-everything`, on every upstream transport tether has.
//!
//! Upstreams (one `#[test]` each): server-everything over stdio (tether spawns it), over
//! Streamable HTTP (`--upstream`), and over legacy SSE (`--upstream-sse`). Clients (run one after
//! the other inside each test, each against a fresh server-everything and a fresh tether): the
//! Python SDK driver (`tests/peers/py_client.py`, mcp==2.3.0) in `legacy` and `auto` modes over
//! Streamable HTTP and over legacy SSE, and the TypeScript SDK driver
//! (`tests/peers/ts_client.mjs`) over Streamable HTTP and over legacy SSE. 3 × 5 = 15 runs. Each
//! driver runs all its checks (tools, sampling, elicitation, progress, logging, subscribe) in
//! one invocation and must exit 0 with a final `N passed, 0 failed` line; afterwards tether
//! must still be running, and must then stop on SIGTERM with status 0 and leave no process of
//! its own behind.
//!
//! Peers: installed by `scripts/setup-peers` into `<workspace>/.peers`, or wherever
//! `TETHER_PEERS` points (a relative path is taken from the workspace root). When they are
//! missing the tests fail (they never skip silently).
//!
//! Logs: every process writes to `target/peer-logs/run-<test pid>/<upstream>/<client>/`
//! (folders of test processes that ended over a day ago are removed) (server-everything's
//! stdout+stderr in `everything.log`, tether's in `tether.log` — for the stdio upstream
//! server-everything's stderr is in there too, as tether logs it —, the driver's JSON lines in
//! `driver.out` and its stderr in `driver.err`; tether's `$XDG_STATE_HOME` — its default
//! sqlite session store, its admin token — is `state/` there). A failure's panic message
//! carries the driver's failing checks and the tails of those files.
//!
//! Isolation: each tether gets its own state folder and its admin listener on a free port
//! (`TETHER_ADMIN_LISTEN=127.0.0.1:0`; the default 127.0.0.1:9090 can only be had by one
//! tether per host), and `TETHER_{LISTEN,CONFIG,STORE,UPSTREAM,UPSTREAM_SSE}` from the
//! caller's environment are ignored.
//!
//! Concurrency: at most `TETHER_PEERS_JOBS` (default 2) runs at once across the three tests.
//! Every process is killed when its guard drops (SIGTERM, then SIGKILL after a grace period,
//! including the processes it started itself), so a panicking test leaves nothing behind.

mod peer_support;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use peer_support::*;
use tokio::process::Command;

/// Per-check deadline handed to the drivers (their own watchdog is derived from it).
const CHECK_TIMEOUT_S: u64 = 30;
/// Bound on one whole driver run: 6 checks that all hit their deadline, plus slack. A normal
/// run takes 6–10 s.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(6 * (CHECK_TIMEOUT_S + 10) + 30);

// ---------------------------------------------------------------------------------------------
// The matrix

#[derive(Clone, Copy, Debug)]
enum Upstream {
    Stdio,
    StreamableHttp,
    Sse,
}

impl Upstream {
    fn name(self) -> &'static str {
        match self {
            Upstream::Stdio => "stdio",
            Upstream::StreamableHttp => "streamable-http",
            Upstream::Sse => "sse",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Client {
    PyLegacy,
    PyAuto,
    PySse,
    TsStreamableHttp,
    TsSse,
}

impl Client {
    const ALL: [Client; 5] = [Client::PyLegacy, Client::PyAuto, Client::PySse, Client::TsStreamableHttp, Client::TsSse];

    fn name(self) -> &'static str {
        match self {
            Client::PyLegacy => "py-streamable-http-legacy",
            Client::PyAuto => "py-streamable-http-auto",
            Client::PySse => "py-sse",
            Client::TsStreamableHttp => "ts-streamable-http",
            Client::TsSse => "ts-sse",
        }
    }

    fn command(self, peers: &Peers, tether_port: u16) -> Command {
        let mcp = format!("http://127.0.0.1:{tether_port}/mcp");
        let sse = format!("http://127.0.0.1:{tether_port}/sse");
        let check_timeout = CHECK_TIMEOUT_S.to_string();
        let (program, script, url, transport, mode) = match self {
            Client::PyLegacy => (&peers.python, &peers.py_client, mcp, "streamable-http", Some("legacy")),
            Client::PyAuto => (&peers.python, &peers.py_client, mcp, "streamable-http", Some("auto")),
            Client::PySse => (&peers.python, &peers.py_client, sse, "sse", Some("legacy")),
            Client::TsStreamableHttp => (&peers.node, &peers.ts_client, mcp, "streamable-http", None),
            Client::TsSse => (&peers.node, &peers.ts_client, sse, "sse", None),
        };
        let mut cmd = Command::new(program);
        cmd.arg(script).args(["--url", &url, "--transport", transport]).args(["--check-timeout", &check_timeout]);
        if let Some(mode) = mode {
            cmd.args(["--mode", mode]);
        }
        cmd.current_dir(&peers.workspace).env("PYTHONUNBUFFERED", "1");
        cmd
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_through_tether_stdio_upstream() {
    run_matrix(Upstream::Stdio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_through_tether_streamable_http_upstream() {
    run_matrix(Upstream::StreamableHttp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_through_tether_sse_upstream() {
    run_matrix(Upstream::Sse).await;
}

async fn run_matrix(upstream: Upstream) {
    let peers = peers(run_logs(None), &[]);
    let started = Instant::now();
    let mut failures = Vec::new();
    for client in Client::ALL {
        let _slot = slots().acquire().await.expect("the run-slot semaphore is never closed");
        let t = Instant::now();
        let dir = peers.logs.join(upstream.name()).join(client.name());
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the peer log dir");
        let label = format!("{} upstream, {} client", upstream.name(), client.name());
        match run_one(&peers, upstream, client, &dir).await {
            Ok(summary) => eprintln!("peers: ok   [{label}] {summary} ({:.1}s)", t.elapsed().as_secs_f64()),
            Err(reason) => {
                eprintln!("peers: FAIL [{label}] ({:.1}s): logs in {}", t.elapsed().as_secs_f64(), dir.display());
                failures.push(diagnose(&label, &dir, &reason));
            }
        }
    }
    eprintln!(
        "peers: {} upstream: {} of {} client runs passed in {:.1}s",
        upstream.name(),
        Client::ALL.len() - failures.len(),
        Client::ALL.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        panic!(
            "{} of {} client runs through tether ({} upstream) failed:\n\n{}",
            failures.len(),
            Client::ALL.len(),
            upstream.name(),
            failures.join("\n\n========================================\n\n")
        );
    }
}

/// One client driver through a fresh tether in front of a fresh server-everything. Returns the
/// driver's summary line, or why the run failed (the caller adds the log tails).
async fn run_one(peers: &Peers, upstream: Upstream, client: Client, dir: &Path) -> Result<String, String> {
    // Declared before tether so that it is dropped (killed) after it.
    let mut everything: Option<Proc> = None;
    let upstream_args: Vec<String> = match upstream {
        Upstream::Stdio => {
            vec!["--".into(), peers.node.display().to_string(), peers.everything.display().to_string(), "stdio".into()]
        }
        Upstream::StreamableHttp | Upstream::Sse => {
            let (mode, path, flag) = match upstream {
                Upstream::Sse => ("sse", "sse", "--upstream-sse"),
                _ => ("streamableHttp", "mcp", "--upstream"),
            };
            let (proc, port) = start_everything(peers, mode, dir).await?;
            everything = Some(proc);
            vec![flag.into(), format!("http://127.0.0.1:{port}/{path}")]
        }
    };
    let (mut tether, port) = start_tether(peers, &upstream_args, dir).await?;

    let out_path = dir.join("driver.out");
    let mut driver = Proc::spawn("driver", &mut client.command(peers, port), &out_path, &dir.join("driver.err"))?;
    let status = match tokio::time::timeout(DRIVER_TIMEOUT, driver.child.wait()).await {
        Ok(Ok(status)) => Some(status),
        Ok(Err(e)) => return Err(format!("waiting for the driver failed: {e}")),
        Err(_) => None,
    };
    drop(driver); // kills it if it timed out
    let output = fs::read_to_string(&out_path).unwrap_or_default();
    let summary = output.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_owned();
    let failing: Vec<&str> = output
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| v.get("ok") != Some(&serde_json::Value::Bool(true)))
                .unwrap_or(false)
        })
        .collect();

    let mut problems = Vec::new();
    match status {
        None => problems.push(format!("the driver did not finish within {}s and was killed", DRIVER_TIMEOUT.as_secs())),
        Some(s) if !s.success() => problems.push(format!("the driver exited with {s}")),
        Some(_) => {}
    }
    match parse_summary(&summary) {
        Some((passed, 0)) if passed > 0 => {}
        Some(_) => problems.push(format!("the driver's summary is {summary:?}")),
        None => problems.push(format!("the driver printed no `N passed, N failed` summary (last line: {summary:?})")),
    }
    if !failing.is_empty() {
        let mut s = String::from("failing checks:");
        for line in &failing {
            let _ = write!(s, "\n  {}", clip(line, 3000));
        }
        problems.push(s);
    }
    if let Some(status) = tether.exited() {
        problems.push(format!("tether exited during the run: {status}"));
    }
    if let Some(e) = everything.as_mut().and_then(Proc::exited) {
        problems.push(format!("server-everything exited during the run: {e}"));
    }
    if problems.is_empty() {
        // A clean run must also end cleanly: SIGTERM stops tether, with nothing left behind.
        if let Err(e) = tether.terminate(SHUTDOWN_TIMEOUT).await {
            problems.push(format!("after a passing run: {e}"));
        }
    }
    if problems.is_empty() { Ok(summary) } else { Err(problems.join("\n")) }
}

// ---------------------------------------------------------------------------------------------
// Starting the servers

/// Starts server-everything in `mode` (`streamableHttp` or `sse`) on a free port.
async fn start_everything(peers: &Peers, mode: &str, dir: &Path) -> Result<(Proc, u16), String> {
    let log = dir.join("everything.log");
    let what = format!("server-everything ({mode})");
    on_free_port("server-everything", &what, async |port| {
        let mut cmd = Command::new(&peers.node);
        cmd.arg(&peers.everything).arg(mode).env("PORT", port.to_string()).current_dir(&peers.workspace);
        let mut proc = Proc::spawn("server-everything", &mut cmd, &log, &log)?;
        // Both transports log "… on port N" once listening.
        let marker = format!("on port {port}");
        let taken = ["EADDRINUSE", "already in use"];
        let how = Readiness { taken: &taken, port: Some(port), new_only: false, poll: Duration::from_millis(100) };
        Ok(wait_ready(&mut proc, &log, &marker, how).await.map(|()| proc))
    })
    .await
}

/// The failure report for one run: the reason, then the tails of its logs.
fn diagnose(label: &str, dir: &Path, reason: &str) -> String {
    let files: Vec<PathBuf> =
        ["driver.err", "driver.out", "tether.log", "everything.log"].iter().map(|n| dir.join(n)).collect();
    report(label, dir, reason, &files, false)
}
