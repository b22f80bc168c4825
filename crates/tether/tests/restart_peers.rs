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

mod peer_support;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use peer_support::*;
use tokio::process::Command;

/// How many times tether is killed and restarted in one run (the driver's `--restarts`).
const RESTARTS: usize = 2;
/// The driver's own deadline for the whole scenario (seconds); a normal run takes 10–20 s.
const SCENARIO_TIMEOUT_S: u64 = 240;
/// Our bound on one whole driver run: its deadline plus its watchdog slack plus ours.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(SCENARIO_TIMEOUT_S + 60);
/// How long the killed tether's upstream child may take to exit on the EOF on its stdin.
const ORPHAN_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The driver's `--scenario restart` against tether on `tether_port`.
fn driver_command(driver: Driver, peers: &Peers, tether_port: u16, upstream: Upstream) -> Command {
    let url = format!("http://127.0.0.1:{tether_port}/mcp");
    let restarts = RESTARTS.to_string();
    let args = ["--url", &url, "--scenario", "restart", "--restarts", &restarts, "--upstream-kind", upstream.kind()];
    driver.command(peers, &args, SCENARIO_TIMEOUT_S)
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
    let peers = peers(run_logs(Some("restart")), &[Need::Fixture]);
    let dir = peers.logs.join(upstream.name()).join(driver.name());
    let label = format!("restart: {} upstream, {} driver", upstream.name(), driver.name());
    let one = run_one(&peers, upstream, driver, &dir);
    run_in_slot(&label, &dir, "create the peer log dir", one, diagnose).await;
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
    let (proc, port) =
        on_free_port("tether", "tether", async |port| Ok(start_tether(&args, dir, 1, port).await)).await?;
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
    let mut cmd = driver_command(driver, peers, port, upstream);
    let mut run = DriverRun::spawn(&mut cmd, driver.name(), dir, DRIVER_TIMEOUT)?;

    let mut problems: Vec<String> = Vec::new();
    while let Some(name) = run.next_kill_point(&mut problems, &mut harness).await {
        let action = tethers.restart(&mut harness);
        if let Err(e) = at_kill_point(&name, "killing and restarting tether", action).await {
            problems.push(e);
            break;
        }
        if let Err(e) = run.go(&name, &mut harness).await {
            problems.push(e);
            break;
        }
    }
    let (status, end) = run.finish(&mut problems).await;
    harness.note("the driver is done");

    let summary = end.check(status, DRIVER_TIMEOUT, &mut problems);
    let (output, kill_points) = (end.output, end.kill_points);
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
    let how = Readiness { taken: &PORT_TAKEN[..3], port: None, new_only: false, poll: Duration::from_millis(10) };
    wait_ready(&mut proc, &log, &marker, how).await?;
    Ok(proc)
}

/// The failure report for one run: the reason, then the tails of its logs.
fn diagnose(label: &str, dir: &Path, reason: &str) -> String {
    let mut files: Vec<PathBuf> = ["harness.log", "driver.err", "driver.out"].iter().map(|n| dir.join(n)).collect();
    files.extend((1..=RESTARTS + 1).map(|n| dir.join(format!("tether.{n}.log"))));
    report(label, dir, reason, &files, false)
}
