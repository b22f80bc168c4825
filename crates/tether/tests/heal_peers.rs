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

mod peer_support;

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use peer_support::*;
use tokio::process::Command;

/// The driver's own deadline for the whole scenario (seconds); a normal run takes 7–15 s.
const SCENARIO_TIMEOUT_S: u64 = 240;
/// Our bound on one whole driver run: its deadline plus its watchdog slack plus ours.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(SCENARIO_TIMEOUT_S + 60);

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

/// The driver's `--scenario heal` against tether on `tether_port`.
fn driver_command(driver: Driver, peers: &Peers, tether_port: u16, upstream: Upstream) -> Command {
    let url = format!("http://127.0.0.1:{tether_port}/mcp");
    let args = ["--url", &url, "--scenario", "heal", "--upstream-kind", upstream.kind()];
    driver.command(peers, &args, SCENARIO_TIMEOUT_S)
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
    let peers = peers(peer_logs(Some("heal")), &[Need::Fixture]);
    let dir = peers.logs.join(upstream.name()).join(driver.name());
    let label = format!("heal: {} upstream, {} driver", upstream.name(), driver.name());
    let one = run_one(&peers, upstream, driver, &dir);
    run_in_slot(&label, &dir, "create the peer log dir", one, diagnose).await;
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
    let mut cmd = driver_command(driver, peers, tether_port, upstream);
    let mut run = DriverRun::spawn(&mut cmd, driver.name(), dir, DRIVER_TIMEOUT)?;

    let mut problems: Vec<String> = Vec::new();
    while let Some(name) = run.next_kill_point(&mut problems, &mut harness).await {
        let action = act(&mut target, tether_pid, peers, dir, &mut harness);
        if let Err(e) = at_kill_point(&name, "killing/restarting the upstream", action).await {
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
    let kill_points = end.kill_points;
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
        let how = Readiness { taken: &PORT_TAKEN, port: Some(port), new_only: true, poll: Duration::from_millis(50) };
        match wait_ready(&mut proc, &log, &marker, how).await {
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
    on_free_port("tether", "tether", async |port| {
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
        let how = Readiness { taken: &PORT_TAKEN, port: None, new_only: true, poll: Duration::from_millis(50) };
        Ok(wait_ready(&mut proc, &log, &marker, how).await.map(|()| proc))
    })
    .await
}

/// The failure report for one run: the reason, then the tails of its logs.
fn diagnose(label: &str, dir: &Path, reason: &str) -> String {
    let files: Vec<PathBuf> =
        ["harness.log", "driver.err", "driver.out", "tether.log", "upstream.log"].iter().map(|n| dir.join(n)).collect();
    report(label, dir, reason, &files, false)
}
