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

mod peer_support;

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use peer_support::*;
use tokio::process::Command;

/// The bridge's --timeout: the longest one request may take, reconnections included. Below the
/// driver's request timeout, so that a request the bridge gives up on ends with its error.
const BRIDGE_TIMEOUT: &str = "20s";
/// The driver's own deadline for the whole scenario (seconds); a normal run takes 40–70 s.
const SCENARIO_TIMEOUT_S: u64 = 300;
/// Our bound on one whole driver run: its deadline plus its watchdog slack plus ours.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(SCENARIO_TIMEOUT_S + 60);
/// How long the remote stays down at the `down` and `during-down` kill points after `go`.
const DOWN_FOR: Duration = Duration::from_millis(1500);
/// How long the bridge may take to exit after the driver ends (the SDKs close its stdin, wait
/// 2 s, then SIGTERM it).
const BRIDGE_EXIT_TIMEOUT: Duration = Duration::from_secs(8);
/// Bound on one conformance scenario run (the suite's own client timeout is 60 s).
const CONFORMANCE_TIMEOUT: Duration = Duration::from_secs(120);
const CONFORMANCE_CLIENT_TIMEOUT_MS: u64 = 60_000;
/// How often a restart on the same port is retried.
const SAME_PORT_ATTEMPTS: usize = 40;
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

/// The driver's `--scenario bridge`, over stdio to the bridge that `bridge_command` starts.
fn driver_command(driver: Driver, peers: &Peers, bridge_command: &str) -> Command {
    let args = ["--transport", "stdio", "--command", bridge_command, "--scenario", "bridge"];
    let mut cmd = driver.command(peers, &args, SCENARIO_TIMEOUT_S);
    clean_env(&mut cmd);
    cmd
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
    let peers = peers(run_logs(Some("bridge")), &[Need::Conformance, Need::BridgeHarness]);
    let dir = peers.logs.join(remote.name()).join(driver.name());
    let label = format!("bridge: {} remote, {} driver", remote.name(), driver.name());
    let one = run_one(&peers, remote, driver, &dir);
    run_in_slot(&label, &dir, "create the peer log dir", one, diagnose).await;
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
    let mut cmd = driver_command(driver, peers, &bridge_command);
    let mut run = DriverRun::spawn(&mut cmd, driver.name(), dir, DRIVER_TIMEOUT)?;
    let driver_pid = run.proc.child.id().ok_or("the driver has no pid")? as i32;
    // The bridge process the SDK spawned, once found; a guard kills it should it outlive the driver.
    let mut bridge: Option<(i32, u64)> = None;
    let mut bridge_guard = Strays(Vec::new());

    let mut problems: Vec<String> = Vec::new();
    while let Some(name) = run.next_kill_point(&mut problems, &mut harness).await {
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
        let acted = at_kill_point(&name, "killing/restarting the remote", async {
            remote.kill(&mut harness).await?;
            if down {
                send_go(&mut run.stdin).await.map_err(|e| format!("writing `go` to the driver failed: {e}"))?;
                harness.note(&format!("wrote go after kill-point {name:?}; the remote stays down {DOWN_FOR:?}"));
                tokio::time::sleep(DOWN_FOR).await;
            }
            remote.start_again(&mut harness).await?;
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
    harness.note(&format!("the driver ended: {status:?}"));

    let summary = end.check(status, DRIVER_TIMEOUT, &mut problems);
    let failing = failing_checks(&end.output, 4000);
    if !failing.is_empty() {
        problems.push(failing);
    }
    let kill_points = end.kill_points;
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

/// The live `tether bridge` process for `url` below the driver.
fn find_bridge(driver_pid: i32, url: &str) -> Option<(i32, u64)> {
    descendants(driver_pid).into_iter().find(|(p, _)| {
        let c = cmdline(*p);
        c.contains(" bridge ") && c.contains(url)
    })
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
        let name = if self.kind == Remote::Everything { "server-everything" } else { "tether" };
        let mut proc = Proc::spawn(name, &mut cmd, &log, &log).map_err(Ready::Failed)?;
        let how =
            Readiness { taken: &PORT_TAKEN, port: Some(self.port), new_only: true, poll: Duration::from_millis(20) };
        wait_ready(&mut proc, &log, &marker, how).await?;
        Ok(proc)
    }
}

// ---------------------------------------------------------------------------------------------
// Conformance

/// Runs the conformance suite's client scenario `scenario` with `tests/peers/bridge_harness.py`
/// (which spawns `tether bridge <URL>`) as the client under test.
async fn conformance(scenario: &str) {
    let peers = peers(run_logs(Some("bridge")), &[Need::Conformance, Need::BridgeHarness]);
    let dir = peers.logs.join("conformance").join(scenario);
    let label = format!("bridge conformance: client scenario {scenario}");
    let one = conformance_one(&peers, scenario, &dir);
    run_in_slot(&label, &dir, "create the conformance log dir", one, diagnose).await;
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
    let mut proc =
        Proc::spawn("conformance suite", &mut cmd, &log, &log).map_err(|e| format!("spawn the suite: {e}"))?;
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
        let dir = run_logs(Some("bridge")).join("message-order");
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
// Diagnostics

/// The failure report for one run: the reason, then the tails of its logs.
fn diagnose(label: &str, dir: &Path, reason: &str) -> String {
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
    report(label, dir, reason, &files, true)
}
