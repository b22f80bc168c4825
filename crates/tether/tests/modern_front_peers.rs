//! Real 2026-07-28 clients through `tether serve` in front of a handshake-era upstream: the
//! official Python SDK (`mcp==2.3.0`, `tests/peers/modern_front_client.py`) and TypeScript SDK v2
//! (`@modelcontextprotocol/client` 2.4.0, `tests/peers/modern_front_client.mjs`), each pinned to
//! 2026-07-28 and in `auto` mode (which must get 2026-07-28 through tether, not a downgrade), in
//! front of server-everything over stdio. The driver lists and calls tools, completes an
//! elicitation as an `input_required` round, receives a resource update on
//! `subscriptions/listen`, and at its kill points this test SIGKILLs the stdio child: with
//! nothing in flight (`between`) and during a read-only call (`during`, retried on the revived
//! upstream). Logs: `target/peer-logs/modern-front/<py|ts>/<pinned|auto>/`.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_pinned_2026_through_serve_to_stdio_server_everything() {
    run(Driver::Py, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_auto_gets_2026_through_serve_to_stdio_server_everything() {
    run(Driver::Py, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_v2_pinned_2026_through_serve_to_stdio_server_everything() {
    run(Driver::Ts, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_v2_auto_gets_2026_through_serve_to_stdio_server_everything() {
    run(Driver::Ts, true).await;
}

async fn run(driver: Driver, auto: bool) {
    let peers = peers(peer_logs(Some("modern-front")), &[]);
    let dir = peers.logs.join(driver.name()).join(if auto { "auto" } else { "pinned" });
    let label =
        format!("modern front: {} {}, stdio server-everything", driver.name(), if auto { "auto" } else { "pinned" });
    let one = run_one(&peers, driver, auto, &dir);
    run_in_slot(&label, &dir, "create the peer log dir", one, diagnose).await;
}

async fn run_one(peers: &Peers, driver: Driver, auto: bool, dir: &Path) -> Result<String, String> {
    let mut harness = Harness::open(dir)?;
    let args: Vec<String> = vec![
        "--store".into(),
        "memory".into(),
        "--request-timeout".into(),
        format!("{REQUEST_TIMEOUT_S}s"),
        "--".into(),
        path_arg(&peers.node),
        path_arg(&peers.everything),
        "stdio".into(),
    ];
    let (mut tether, port) = start_tether(peers, &args, dir).await?;
    let tether_pid = tether.child.id().ok_or("tether has no pid")? as i32;
    harness.note(&format!("tether pid {tether_pid} on port {port}"));
    let (program, script, mode) = match driver {
        Driver::Py => (&peers.python, "tests/peers/modern_front_client.py", if auto { "auto" } else { "2026-07-28" }),
        Driver::Ts => (&peers.node, "tests/peers/modern_front_client.mjs", if auto { "auto" } else { "pin" }),
    };
    let mut cmd = Command::new(program);
    cmd.arg(peers.workspace.join(script))
        .args(["--url", &format!("http://127.0.0.1:{port}/mcp"), "--mode", mode])
        .args(["--request-timeout", &REQUEST_TIMEOUT_S.to_string()])
        .args(["--step-timeout", &STEP_TIMEOUT_S.to_string()])
        .args(["--kill-timeout", &DRIVER_KILL_TIMEOUT_S.to_string()])
        .args(["--scenario-timeout", &SCENARIO_TIMEOUT_S.to_string()])
        .current_dir(&peers.workspace)
        .env("PYTHONUNBUFFERED", "1");
    let mut run = DriverRun::spawn(&mut cmd, driver.name(), dir, DRIVER_TIMEOUT)?;
    let mut problems = Vec::new();
    while let Some(name) = run.next_kill_point(&mut problems, &mut harness).await {
        if let Err(e) = at_kill_point(&name, "killing the stdio child", kill_child(tether_pid, &mut harness)).await {
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
    if revived < KILL_POINTS.len() {
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
    if problems.is_empty() { Ok(format!("{summary}; {revived} revives")) } else { Err(problems.join("\n")) }
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
    let files: Vec<PathBuf> =
        ["harness.log", "driver.err", "driver.out", "tether.log"].iter().map(|n| dir.join(n)).collect();
    report(label, dir, reason, &files, false)
}
