//! `tether bridge` keeps its own limits while the remote is down: `--timeout`,
//! `--retry-attempts` and `--retry-delay` behave as the README says. The remote is the real
//! server-everything over streamableHttp; the bridge initializes against it, then the remote is
//! killed and kept down, and one `tools/call` is made per case:
//!
//! | flags | the call ends with | connection attempts |
//! |---|---|---|
//! | `--timeout 3s --retry-attempts 2 --retry-delay 200ms` | `transport_error` (-32010), before the timeout | 3 |
//! | `--timeout 3s` | `session_timeout` (-32012), at the timeout | unbounded |
//! | `--retry-attempts 3` | `transport_error`, after 0.5 + 1 + 2 s of waits | 4 |
//! | `--retry-attempts 0` | `transport_error`, at once | 1 |
//!
//! and, once the remote is back after failed calls, the next call uses it at once (no backoff
//! left over from the failures). Attempts are counted from the bridge's debug log (`a request
//! found the upstream away`, one per attempt of a request that found the remote down). Each case prints its elapsed time; the bounds
//! asserted are generous (a call ends before twice its limit), never a speed.
//!
//! Logs: `target/peer-logs/bridge-limits/<case>/`.

mod peer_support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use peer_support::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};

/// Bound on reads when nothing should take long.
const READ: Duration = Duration::from_secs(30);

struct Bridge {
    _proc: Proc,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
    next_id: u64,
}

impl Bridge {
    async fn start(port: u16, flags: &[&str], dir: &Path) -> Bridge {
        let log = dir.join("bridge.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
        cmd.args(["bridge", &format!("http://127.0.0.1:{port}/mcp"), "--transport", "streamable-http"])
            .args(flags)
            .args(["--log-level", "info,tether=debug", "--log-file"])
            .arg(&log)
            .env_remove("RUST_LOG")
            .env("NO_PROXY", "127.0.0.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(dir.join("bridge.err")).expect("bridge.err"))
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn the bridge");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Bridge { _proc: Proc { name: "bridge", child }, stdin, lines, log, next_id: 0 }
    }

    /// Sends a request and reads up to its answer (bounded by `wait`).
    async fn call(&mut self, method: &str, params: Value, wait: Duration) -> Option<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write");
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line()).await.ok()?.expect("read")?;
            let v: Value = serde_json::from_str(&line).expect("a JSON line");
            if v["id"] == json!(id) && v.get("method").is_none() {
                return Some(v);
            }
        }
    }

    async fn initialize(&mut self) {
        let init = json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "limits", "version": "1"}});
        let a = self.call("initialize", init, READ).await.expect("an answer to initialize");
        assert!(a["result"].is_object(), "initialize: {a}");
        self.stdin.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n").await.expect("write");
    }

    /// Attempts of requests that found the remote down, from the log so far.
    fn failed_attempts(&self) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().filter(|l| l.contains("a request found the upstream away")).count()
    }
}

struct Remote {
    proc: Option<Proc>,
    port: u16,
    dir: PathBuf,
    node: PathBuf,
    everything: PathBuf,
}

impl Remote {
    async fn start(&mut self) {
        let log = self.dir.join("remote.log");
        let mut cmd = Command::new(&self.node);
        cmd.arg(&self.everything).arg("streamableHttp").env("PORT", self.port.to_string());
        self.proc = Some(Proc::spawn("server-everything", &mut cmd, &log, &log).expect("spawn server-everything"));
        let up = tokio::time::timeout(READ, async {
            while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(up.is_ok(), "server-everything listens within {READ:?}");
    }

    async fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            if let Some(pid) = p.child.id() {
                signal(pid as i32, Signal::SIGKILL);
            }
            let _ = tokio::time::timeout(READ, p.child.wait()).await;
        }
    }
}

/// What one call against the down remote did.
struct Outcome {
    answer: Option<Value>,
    elapsed: Duration,
    attempts: usize,
}

impl Outcome {
    fn code(&self) -> Option<i64> {
        self.answer.as_ref().and_then(|a| a["error"]["code"].as_i64())
    }
    fn class(&self) -> &str {
        self.answer.as_ref().and_then(|a| a["error"]["data"]["class"].as_str()).unwrap_or("")
    }
}

async fn echo(b: &mut Bridge, wait: Duration) -> Outcome {
    let before = b.failed_attempts();
    let t = Instant::now();
    let answer = b.call("tools/call", json!({"name": "echo", "arguments": {"message": "hi"}}), wait).await;
    let elapsed = t.elapsed();
    // The log is written by another process: give its last line a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Outcome { answer, elapsed, attempts: b.failed_attempts() - before }
}

/// A bridge with `flags` in front of server-everything, initialized, then the remote killed.
async fn bridge_with_remote_down(case: &str, flags: &[&str]) -> (Bridge, Remote) {
    let dir = peer_logs(Some("bridge-limits")).join(case);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("log dir");
    let p = peers(dir.clone(), &[]);
    let port = free_port().expect("a free port");
    let mut remote = Remote { proc: None, port, dir: dir.clone(), node: p.node, everything: p.everything };
    remote.start().await;
    let mut b = Bridge::start(port, flags, &dir).await;
    b.initialize().await;
    let ok = b.call("tools/call", json!({"name": "echo", "arguments": {"message": "up"}}), READ).await;
    assert!(ok.as_ref().is_some_and(|a| a["result"].is_object()), "a call while the remote is up: {ok:?}");
    remote.kill().await;
    (b, remote)
}

fn report(case: &str, o: &Outcome) {
    eprintln!(
        "bridge-limits {case}: {:.2} s, {} failed attempts, answer {}",
        o.elapsed.as_secs_f64(),
        o.attempts,
        o.answer.as_ref().map_or("none".into(), |a| a["error"].to_string())
    );
}

#[tokio::test]
async fn attempts_and_delay_bound_a_call_before_its_timeout() {
    let (mut b, _remote) =
        bridge_with_remote_down("attempts-2", &["--timeout", "3s", "--retry-attempts", "2", "--retry-delay", "200ms"])
            .await;
    let o = echo(&mut b, Duration::from_secs(6)).await;
    report("--timeout 3s --retry-attempts 2 --retry-delay 200ms", &o);
    assert_eq!(o.code(), Some(-32010), "{:?}", o.answer);
    assert_eq!(o.class(), "transport_error", "{:?}", o.answer);
    assert_eq!(o.attempts, 3, "the first attempt and 2 retries");
}

#[tokio::test]
async fn a_call_ends_by_its_timeout_with_the_session_timeout_class() {
    let (mut b, _remote) = bridge_with_remote_down("timeout-3s", &["--timeout", "3s"]).await;
    let o = echo(&mut b, Duration::from_secs(6)).await;
    report("--timeout 3s", &o);
    assert_eq!(o.code(), Some(-32012), "{:?}", o.answer);
    assert_eq!(o.class(), "session_timeout", "{:?}", o.answer);
    assert!(o.elapsed >= Duration::from_millis(2700), "it waited for the remote up to its timeout: {:?}", o.elapsed);
    assert!(o.attempts >= 2, "unlimited attempts until the timeout: {}", o.attempts);
}

#[tokio::test]
async fn retry_attempts_count_as_documented() {
    let (mut b, _remote) = bridge_with_remote_down("attempts-3", &["--retry-attempts", "3"]).await;
    let o = echo(&mut b, Duration::from_secs(60)).await;
    report("--retry-attempts 3", &o);
    assert_eq!(o.class(), "transport_error", "{:?}", o.answer);
    assert_eq!(o.attempts, 4, "the first attempt and 3 retries");
}

#[tokio::test]
async fn zero_retry_attempts_means_no_retry() {
    let (mut b, _remote) = bridge_with_remote_down("attempts-0", &["--retry-attempts", "0"]).await;
    let o = echo(&mut b, Duration::from_secs(60)).await;
    report("--retry-attempts 0", &o);
    assert_eq!(o.class(), "transport_error", "{:?}", o.answer);
    assert_eq!(o.attempts, 1, "one attempt, no retry");
}

#[tokio::test]
async fn a_remote_that_is_back_is_used_at_once() {
    let (mut b, mut remote) = bridge_with_remote_down("back", &["--timeout", "4s", "--retry-delay", "3s"]).await;
    let down = echo(&mut b, Duration::from_secs(8)).await;
    report("--timeout 4s --retry-delay 3s, remote down", &down);
    assert!(down.answer.as_ref().is_some_and(|a| a.get("error").is_some()), "{:?}", down.answer);
    remote.start().await;
    let o = echo(&mut b, Duration::from_secs(8)).await;
    report("--timeout 4s --retry-delay 3s, remote back", &o);
    assert!(o.answer.as_ref().is_some_and(|a| a["result"].is_object()), "{:?}", o.answer);
    assert_eq!(o.attempts, 0, "no attempt found the remote down");
    // Generous: the backoff the failures built up is at least the 3 s retry delay.
    assert!(o.elapsed < Duration::from_secs(3), "no backoff left over from the failures: {:?}", o.elapsed);
    remote.kill().await;
}
