//! The era matrix with real peers: SDK clients of both eras through `tether serve`, in front of
//! upstreams of both eras, one test per client × upstream cell. Clients: the official Python SDK
//! (`mcp==2.3.0`) pinned to 2026-07-28, in `auto` mode (which must get 2026-07-28 through
//! tether, not a downgrade) and in `legacy` (handshake-era) mode, and the TypeScript SDK v2
//! (`@modelcontextprotocol/client` 2.4.0) pinned and `auto`; drivers
//! `tests/peers/modern_front_client.{py,mjs}`. Upstreams: server-everything over stdio
//! (handshake era only), the dual-era fixture `tests/peers/fixture-v2.mjs` (with
//! `FIXTURE_EXTRAS=1`) over stdio and over Streamable HTTP, and the modern-only
//! `tests/peers/modern_server.py` over Streamable HTTP and over stdio (`--stdio`). tether runs
//! with `--upstream-protocol auto`: a stdio child is spoken to in 2026-07-28 for a modern
//! client's binding when it answers `server/discover`, and for a handshake-era client only when
//! it refuses `initialize` as a modern-only server.
//!
//! Each driver lists and calls tools, completes an elicitation (an `input_required` round for a
//! modern client, a server→client request for a legacy one: the SDK answers either), checks the
//! log level, receives a resource update, and at its kill points this test kills the upstream —
//! a stdio child is SIGKILLed (tether revives it), an HTTP server is SIGKILLed and started again
//! on its port: with nothing in flight (`between`) and during a read-only, idempotent call
//! (`during`, retried on the revived upstream). A check a driver cannot ask of an upstream is
//! printed as a skip and reported here, never counted as passed.
//! Logs: `target/peer-logs/modern-front/<upstream>/<client>/`.

mod peer_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use peer_support::*;
use tokio::process::Command;

const SCENARIO_TIMEOUT_S: u64 = 240;
const DRIVER_TIMEOUT: Duration = Duration::from_secs(SCENARIO_TIMEOUT_S + 60);
const KILL_POINTS: [&str; 2] = ["between", "during"];

/// The client side of a cell: which SDK, in which mode.
#[derive(Clone, Copy, Debug)]
enum Client {
    PyPinned,
    PyAuto,
    PyLegacy,
    TsPinned,
    TsAuto,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::PyPinned => "py-2026-07-28",
            Client::PyAuto => "py-auto",
            Client::PyLegacy => "py-legacy",
            Client::TsPinned => "ts-pinned",
            Client::TsAuto => "ts-auto",
        }
    }
}

/// The upstream side of a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Up {
    /// server-everything over stdio: handshake era only.
    EverythingStdio,
    /// fixture-v2 over stdio: both eras (a modern client's binding speaks 2026-07-28 to it).
    FixtureStdio,
    /// fixture-v2 over Streamable HTTP: both eras.
    FixtureHttp,
    /// modern_server.py over Streamable HTTP: 2026-07-28 only.
    ModernHttp,
    /// modern_server.py over stdio: 2026-07-28 only.
    ModernStdio,
}

impl Up {
    fn name(self) -> &'static str {
        match self {
            Up::EverythingStdio => "everything-stdio",
            Up::FixtureStdio => "fixture-stdio",
            Up::FixtureHttp => "fixture-http",
            Up::ModernHttp => "modern-http",
            Up::ModernStdio => "modern-stdio",
        }
    }

    /// The driver's `--upstream` profile.
    fn profile(self) -> &'static str {
        match self {
            Up::EverythingStdio => "everything",
            Up::FixtureStdio | Up::FixtureHttp => "fixture",
            Up::ModernHttp | Up::ModernStdio => "modern",
        }
    }
}

macro_rules! cells {
    ($($name:ident: $up:ident, $client:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            run(Up::$up, Client::$client).await;
        }
    )*};
}

cells! {
    everything_stdio_python_pinned_2026: EverythingStdio, PyPinned;
    everything_stdio_python_auto_gets_2026: EverythingStdio, PyAuto;
    everything_stdio_python_legacy: EverythingStdio, PyLegacy;
    everything_stdio_typescript_v2_pinned_2026: EverythingStdio, TsPinned;
    everything_stdio_typescript_v2_auto_gets_2026: EverythingStdio, TsAuto;
    fixture_stdio_python_pinned_2026: FixtureStdio, PyPinned;
    fixture_stdio_python_auto_gets_2026: FixtureStdio, PyAuto;
    fixture_stdio_python_legacy: FixtureStdio, PyLegacy;
    fixture_stdio_typescript_v2_pinned_2026: FixtureStdio, TsPinned;
    fixture_stdio_typescript_v2_auto_gets_2026: FixtureStdio, TsAuto;
    fixture_http_python_pinned_2026: FixtureHttp, PyPinned;
    fixture_http_python_auto_gets_2026: FixtureHttp, PyAuto;
    fixture_http_python_legacy: FixtureHttp, PyLegacy;
    fixture_http_typescript_v2_pinned_2026: FixtureHttp, TsPinned;
    fixture_http_typescript_v2_auto_gets_2026: FixtureHttp, TsAuto;
    modern_http_python_pinned_2026: ModernHttp, PyPinned;
    modern_http_python_auto_gets_2026: ModernHttp, PyAuto;
    modern_http_python_legacy: ModernHttp, PyLegacy;
    modern_http_typescript_v2_pinned_2026: ModernHttp, TsPinned;
    modern_http_typescript_v2_auto_gets_2026: ModernHttp, TsAuto;
    modern_stdio_python_pinned_2026: ModernStdio, PyPinned;
    modern_stdio_python_auto_gets_2026: ModernStdio, PyAuto;
    modern_stdio_python_legacy: ModernStdio, PyLegacy;
    modern_stdio_typescript_v2_pinned_2026: ModernStdio, TsPinned;
    modern_stdio_typescript_v2_auto_gets_2026: ModernStdio, TsAuto;
}

async fn run(up: Up, client: Client) {
    let peers = peers(peer_logs(Some("modern-front")), &[]);
    let dir = peers.logs.join(up.name()).join(client.name());
    let label = format!("era matrix: {} client, {} upstream", client.name(), up.name());
    let one = run_one(&peers, up, client, &dir);
    run_in_slot(&label, &dir, "create the peer log dir", one, diagnose).await;
}

async fn run_one(peers: &Peers, up: Up, client: Client, dir: &Path) -> Result<String, String> {
    let mut harness = Harness::open(dir)?;
    let mut common: Vec<String> =
        vec!["--store".into(), "memory".into(), "--request-timeout".into(), format!("{REQUEST_TIMEOUT_S}s")];
    let mut remote = None;
    match up {
        Up::EverythingStdio => {
            common.extend(["--".into(), path_arg(&peers.node), path_arg(&peers.everything), "stdio".into()]);
        }
        Up::FixtureStdio => {
            // `env` execs the fixture, so the stdio child tether spawned is the fixture itself.
            common.extend(["--".into(), "env".into(), "FIXTURE_EXTRAS=1".into(), path_arg(&peers.node)]);
            common.extend([path_arg(&fixture_v2(peers)), "stdio".into()]);
        }
        Up::ModernStdio => {
            let script = peers.workspace.join("tests/peers/modern_server.py");
            common.extend(["--".into(), path_arg(&peers.python), path_arg(&script), "--stdio".into()]);
        }
        Up::FixtureHttp | Up::ModernHttp => {
            let mut r = Remote::new(peers, up, dir, free_port()?);
            r.start().await?;
            harness.note(&format!("{} upstream on {}", up.name(), r.url()));
            // Each kill costs the binding and at least one refused reconnect: give the breaker room.
            common.extend(["--upstream".into(), r.url(), "--restart-max-failures".into(), "50".into()]);
            remote = Some(r);
        }
    }
    let (mut tether, port) = start_tether(peers, &common, dir).await?;
    let tether_pid = tether.child.id().ok_or("tether has no pid")? as i32;
    harness.note(&format!("tether pid {tether_pid} on port {port}"));
    let (program, script, mode) = match client {
        Client::PyPinned => (&peers.python, "tests/peers/modern_front_client.py", "2026-07-28"),
        Client::PyAuto => (&peers.python, "tests/peers/modern_front_client.py", "auto"),
        Client::PyLegacy => (&peers.python, "tests/peers/modern_front_client.py", "legacy"),
        Client::TsPinned => (&peers.node, "tests/peers/modern_front_client.mjs", "pin"),
        Client::TsAuto => (&peers.node, "tests/peers/modern_front_client.mjs", "auto"),
    };
    let mut cmd = Command::new(program);
    cmd.arg(peers.workspace.join(script))
        .args(["--url", &format!("http://127.0.0.1:{port}/mcp"), "--mode", mode, "--upstream", up.profile()])
        .args(["--request-timeout", &REQUEST_TIMEOUT_S.to_string()])
        .args(["--step-timeout", &STEP_TIMEOUT_S.to_string()])
        .args(["--kill-timeout", &DRIVER_KILL_TIMEOUT_S.to_string()])
        .args(["--scenario-timeout", &SCENARIO_TIMEOUT_S.to_string()])
        .current_dir(&peers.workspace)
        .env("PYTHONUNBUFFERED", "1");
    let mut run = DriverRun::spawn(&mut cmd, client.name(), dir, DRIVER_TIMEOUT)?;
    let mut problems = Vec::new();
    while let Some(name) = run.next_kill_point(&mut problems, &mut harness).await {
        let acted = match remote.as_mut() {
            None => at_kill_point(&name, "killing the stdio child", kill_child(tether_pid, &mut harness)).await,
            Some(r) => {
                at_kill_point(&name, "killing and restarting the upstream", async {
                    r.kill().await?;
                    harness.note(&format!("SIGKILLed upstream {}", r.srv.instance));
                    r.start().await?;
                    harness.note(&format!("upstream {} serving again", r.srv.instance));
                    Ok(())
                })
                .await
            }
        };
        if let Err(e) = acted {
            problems.push(e);
            break;
        }
        if let Err(e) = run.go(&name, &mut harness).await {
            problems.push(e);
            break;
        }
    }
    let (status, end) = run.finish(&mut problems).await;
    let summary = end.check(status, DRIVER_TIMEOUT, &mut problems);
    let failing = failing_checks(&end.output, 3000);
    if !failing.is_empty() {
        problems.push(failing);
    }
    if end.kill_points != KILL_POINTS {
        problems.push(format!("the driver's kill points were {:?}, expected {KILL_POINTS:?}", end.kill_points));
    }
    let log = fs::read_to_string(dir.join("tether.log")).unwrap_or_default();
    let revived = log.lines().filter(|l| l.contains("session revived")).count();
    // A killed stdio child always costs the binding; a stateless HTTP upstream restarted between
    // two requests may cost nothing, so only the stdio cells count revives.
    if remote.is_none() && revived < KILL_POINTS.len() {
        problems.push(format!("tether logged {revived} `session revived` for {} kills", KILL_POINTS.len()));
    }
    if let Some(s) = tether.exited() {
        problems.push(format!("tether exited during the run: {s}"));
    }
    if problems.is_empty()
        && let Err(e) = tether.terminate(SHUTDOWN_TIMEOUT).await
    {
        problems.push(format!("after a passing run: {e}"));
    }
    // The HTTP upstreams are test fixtures: how they end is no part of the test.
    if let Some(mut r) = remote
        && let Err(e) = r.kill().await
    {
        problems.push(format!("the upstream did not stop: {e}"));
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    let skipped = skips(&end.output);
    let skipped = if skipped.is_empty() { String::new() } else { format!("\n  SKIPPED (not passed): {skipped}") };
    Ok(format!("{summary}; {revived} revives{skipped}"))
}

/// The driver's `{"skip", "reason"}` lines, as one line.
fn skips(output: &[String]) -> String {
    output
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some(format!("{} ({})", v.get("skip")?.as_str()?, v.get("reason")?.as_str().unwrap_or(""))))
        .collect::<Vec<_>>()
        .join("; ")
}

fn fixture_v2(p: &Peers) -> PathBuf {
    p.workspace.join("tests/peers/fixture-v2.mjs")
}

/// An HTTP upstream on one fixed port, restartable on it.
struct Remote {
    up: Up,
    node: PathBuf,
    python: PathBuf,
    script: PathBuf,
    srv: PortServer,
}

impl Remote {
    fn new(p: &Peers, up: Up, dir: &Path, port: u16) -> Remote {
        let script = match up {
            Up::ModernHttp => p.workspace.join("tests/peers/modern_server.py"),
            _ => fixture_v2(p),
        };
        let srv = PortServer::new("upstream", dir, "upstream", port);
        Remote { up, node: p.node.clone(), python: p.python.clone(), script, srv }
    }

    fn url(&self) -> String {
        self.srv.url()
    }

    /// Starts it (again) on its port.
    async fn start(&mut self) -> Result<(), String> {
        let (modern, node, python, script) =
            (self.up == Up::ModernHttp, self.node.clone(), self.python.clone(), self.script.clone());
        self.srv
            .start(|port| {
                if modern {
                    let mut c = Command::new(&python);
                    c.arg(&script).args(["--port", port]).env("PYTHONUNBUFFERED", "1");
                    (c, format!("modern server ready on port {port}"))
                } else {
                    let mut c = Command::new(&node);
                    c.arg(&script).arg("http").env("PORT", port).env("FIXTURE_EXTRAS", "1");
                    (c, format!("listening on http://127.0.0.1:{port}/mcp"))
                }
            })
            .await
    }

    async fn kill(&mut self) -> Result<(), String> {
        self.srv.kill().await
    }
}

/// SIGKILLs the one live child of tether (the binding's stdio upstream) and waits for its death.
async fn kill_child(tether_pid: i32, harness: &mut Harness) -> Result<(), String> {
    let t = Instant::now();
    let child = loop {
        let kids = alive(&descendants(tether_pid))
            .into_iter()
            .filter(|(p, _)| proc_parent(*p) == Some(tether_pid))
            .collect::<Vec<_>>();
        match kids.as_slice() {
            [one] => break *one,
            _ if t.elapsed() > Duration::from_secs(10) => {
                return Err(format!("expected one live child of tether, found {}", kids.len()));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    harness.note(&format!("SIGKILL stdio child {} ({})", child.0, cmdline(child.0)));
    signal(child.0, Signal::SIGKILL);
    while alive(&[child]).len() == 1 {
        if t.elapsed() > Duration::from_secs(20) {
            return Err(format!("the stdio child {} did not die", child.0));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
fn proc_parent(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command (which may contain spaces) start after the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn diagnose(label: &str, dir: &Path, reason: &str) -> String {
    let mut files: Vec<PathBuf> =
        ["harness.log", "driver.err", "driver.out", "tether.log"].iter().map(|n| dir.join(n)).collect();
    files.extend((1..=3).map(|n| dir.join(format!("upstream.{n}.log"))));
    report(label, dir, reason, &files, false)
}
