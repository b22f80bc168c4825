//! What the cluster tests share (`cluster_serve.rs`, `cluster_proof.rs`): a replica (a `tether
//! serve` process on a shared store, with its MCP, hop and admin ports), the test's round-robin
//! balancer (which also records what it saw), and the drivers of the official clients.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::harness;
use crate::peer_support;
use crate::shared_stores::within;

pub const ADMIN: &str = "cluster-test-admin-token";
pub const LEASE_TTL: &str = "2s";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// One replica: a `tether serve` process with its MCP, hop and admin ports.
pub struct Replica {
    pub child: Child,
    pub port: u16,
    pub hop: u16,
    pub admin: u16,
    pub log: PathBuf,
}

impl Replica {
    pub async fn start(dir: &Path, store: &str, ns: &str, name: &str) -> Replica {
        Replica::start_with(dir, store, ns, name, &[]).await
    }

    /// Started on free ports. A port found free can be taken by another test before the
    /// replica binds it: then it starts again on others.
    pub async fn start_with(dir: &Path, store: &str, ns: &str, name: &str, extra: &[&str]) -> Replica {
        let mut last = String::new();
        for _ in 0..5 {
            let ports = (free_port(), free_port(), free_port());
            match Replica::try_start_on(dir, store, ns, name, extra, &[], ports).await {
                Ok(r) => return r,
                Err(said) => last = said,
            }
        }
        panic!("the replica could not find free ports: {last}");
    }

    /// Started on given (MCP, hop, admin) ports: a restart of a replica, as a balancer sees it
    /// (its ports may take a moment to be released by the process it replaces).
    pub async fn start_on(
        dir: &Path,
        store: &str,
        ns: &str,
        name: &str,
        extra: &[&str],
        ports: (u16, u16, u16),
    ) -> Replica {
        Replica::start_on_env(dir, store, ns, name, extra, &[], ports).await
    }

    /// [`Replica::start_on`] with variables added to its environment (and its children's).
    pub async fn start_on_env(
        dir: &Path,
        store: &str,
        ns: &str,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        ports: (u16, u16, u16),
    ) -> Replica {
        let mut last = String::new();
        for _ in 0..10 {
            match Replica::try_start_on(dir, store, ns, name, extra, env, ports).await {
                Ok(r) => return r,
                Err(said) => last = said,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the replica's ports stayed taken: {last}");
    }

    /// Starts a replica and waits until it serves; `Err` with its log when it exited because a
    /// port was taken.
    #[allow(clippy::too_many_arguments)]
    pub async fn try_start_on(
        dir: &Path,
        store: &str,
        ns: &str,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        (port, hop, admin): (u16, u16, u16),
    ) -> Result<Replica, String> {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--store", store, "--store-namespace", ns])
            .args(["--cluster-listen", &format!("127.0.0.1:{hop}")])
            .args(if extra.contains(&"--lease-ttl") { &[][..] } else { &["--lease-ttl", LEASE_TTL][..] })
            .args(["--admin-listen", &format!("127.0.0.1:{admin}"), "--admin-token", ADMIN])
            .args(extra)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_tether-echo"))
            .env("XDG_STATE_HOME", dir.join(name))
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tether");
        let mut r = Replica { child, port, hop, admin, log };
        within(async {
            while !r.said().contains("tether serving MCP") {
                if let Ok(Some(status)) = r.child.try_wait() {
                    let said = r.said();
                    assert!(
                        said.contains("Address already in use"),
                        "the replica exited ({status}) before serving: {said}"
                    );
                    return Err(said);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        })
        .await?;
        Ok(r)
    }

    pub fn said(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        let url = format!("http://127.0.0.1:{}{path}", self.admin);
        within(reqwest::Client::new().get(url).bearer_auth(ADMIN).send()).await.expect("admin answers")
    }

    /// The session as this replica's admin shows it.
    pub async fn session(&self, sid: &str) -> Value {
        let r = self.admin_get(&format!("/admin/sessions/{sid}")).await;
        assert_eq!(r.status(), reqwest::StatusCode::OK);
        serde_json::from_str(&r.text().await.expect("body")).expect("json")
    }

    /// The pid of the session's stdio child on this replica, if it runs here.
    pub async fn child_of(&self, sid: &str) -> Option<u64> {
        self.session(sid).await["upstream"]["pid"].as_u64()
    }

    /// A counter or gauge from this replica's /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.admin_get("/metrics").await.text().await.expect("metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the metrics"))
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().expect("running") as i32);
        nix::sys::signal::kill(pid, sig).expect("signal");
    }

    pub async fn kill9(mut self) -> String {
        harness::kill9(self.child.id().expect("running"));
        within(self.child.wait()).await.expect("reaped");
        self.said()
    }
}

pub fn text_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text result in {answer}")).to_owned()
}

pub fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A load balancer as the test writes it: every request goes to the next replica in turn
/// (no stickiness); a refused connection is sent to the one after. Answers stream through. It
/// keeps what it saw of every exchange ([`Seen`]), so a test can check what clients were told.
pub struct RoundRobin {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
    /// Every exchange, in the order the requests arrived.
    pub seen: Traffic,
}

/// What the balancer saw of one exchange.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When the request arrived.
    pub at: std::time::Instant,
    /// The HTTP method.
    pub method: String,
    /// The JSON-RPC method of a request or notification in the body.
    pub rpc: Option<String>,
    /// The JSON-RPC id of a request in the body.
    pub id: Option<Value>,
    /// The session the request names (`Mcp-Session-Id`).
    pub session: Option<String>,
    /// The session id an answer gave (`Mcp-Session-Id` on an `initialize`'s answer).
    pub given: Option<String>,
    /// The request's `Last-Event-ID`.
    pub last_event_id: Option<String>,
    /// The status the client got; `None` while no answer came.
    pub status: Option<u16>,
    /// When the answer's head came (or the balancer gave up).
    pub answered: Option<std::time::Instant>,
    /// The SSE event ids that went through to the client, in order.
    pub ids: Vec<String>,
    /// The answer's body broke off (the replica went away mid-answer).
    pub broken: bool,
    /// The replicas tried, and why the balancer answered 502 itself, if it did.
    pub tried: Vec<String>,
}

/// The exchanges a [`RoundRobin`] saw.
pub type Traffic = Arc<std::sync::Mutex<Vec<Seen>>>;

impl RoundRobin {
    pub async fn start(backends: Vec<String>) -> RoundRobin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let next = Arc::new(AtomicUsize::new(0));
        // No pooled connections: a connection to a replica that was killed is never reused, so
        // a refused connection is what tells a replica is down.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let seen = Traffic::default();
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (backends, next, http, log) = (backends.clone(), next.clone(), http.clone(), log.clone());
            async move { dispatch(&backends, &next, &http, &log, req).await }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        RoundRobin { addr, task, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// A copy of what it saw so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header(h: &axum::http::HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn dispatch(
    backends: &[String],
    next: &AtomicUsize,
    http: &reqwest::Client,
    log: &Traffic,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 8 << 20).await else {
        return axum::http::StatusCode::BAD_REQUEST.into_response();
    };
    let msg: Option<Value> = serde_json::from_slice(&body).ok();
    let entry = {
        let mut log = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        log.push(Seen {
            at: std::time::Instant::now(),
            method: parts.method.to_string(),
            rpc: msg.as_ref().and_then(|m| m["method"].as_str()).map(str::to_owned),
            id: msg
                .as_ref()
                .and_then(|m| m.get("id"))
                .filter(|_| msg.as_ref().is_some_and(|m| m.get("method").is_some()))
                .cloned(),
            session: header(&parts.headers, "mcp-session-id"),
            given: None,
            last_event_id: header(&parts.headers, "last-event-id"),
            status: None,
            answered: None,
            ids: Vec::new(),
            broken: false,
            tried: Vec::new(),
        });
        log.len() - 1
    };
    let note = |f: &dyn Fn(&mut Seen)| {
        let mut log = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut log[entry]);
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    // This request's turn, then the replicas after it (a refused connection goes to the next).
    let first = next.fetch_add(1, Ordering::Relaxed);
    for k in 0..backends.len() {
        let base = &backends[(first + k) % backends.len()];
        let mut rb = http.request(parts.method.clone(), format!("{base}{path}")).body(body.clone());
        for (name, value) in &parts.headers {
            if name != axum::http::header::HOST && name != axum::http::header::CONTENT_LENGTH {
                rb = rb.header(name, value);
            }
        }
        note(&|s| s.tried.push(base.clone()));
        match rb.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let given = header(resp.headers(), "mcp-session-id");
                note(&|s| {
                    s.status = Some(status);
                    s.answered = Some(std::time::Instant::now());
                    s.given.clone_from(&given);
                });
                let mut out = axum::response::Response::builder().status(resp.status());
                for (name, value) in resp.headers() {
                    if name != axum::http::header::TRANSFER_ENCODING && name != axum::http::header::CONTENT_LENGTH {
                        out = out.header(name, value);
                    }
                }
                // The SSE event ids going through, read line by line as they pass.
                let (log, mut line) = (log.clone(), Vec::<u8>::new());
                let body = futures_util::StreamExt::map(resp.bytes_stream(), move |chunk| {
                    let mut log = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    match &chunk {
                        Ok(bytes) => {
                            for &b in bytes.iter() {
                                if b != b'\n' {
                                    line.push(b);
                                    continue;
                                }
                                let text = String::from_utf8_lossy(&line);
                                if let Some(id) = text.trim_end_matches('\r').strip_prefix("id:") {
                                    log[entry].ids.push(id.trim_start().to_owned());
                                }
                                line.clear();
                            }
                        }
                        Err(_) => log[entry].broken = true,
                    }
                    chunk
                });
                return out
                    .body(axum::body::Body::from_stream(body))
                    .unwrap_or_else(|_| axum::http::StatusCode::BAD_GATEWAY.into_response());
            }
            // A replica that is down: the next one.
            Err(e) if e.is_connect() => continue,
            Err(e) => {
                let why = format!("{e:?}");
                note(&|s| s.tried.push(why.clone()));
                break;
            }
        }
    }
    note(&|s| {
        s.status = Some(502);
        s.answered = Some(std::time::Instant::now());
    });
    axum::http::StatusCode::BAD_GATEWAY.into_response()
}

/// The official Python client's driver (`tests/peers/py_session.py`): one session, a call per
/// line asked for, a JSON line per answer.
pub struct PyDriver {
    child: Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: PathBuf,
}

impl PyDriver {
    /// Starts the driver against `url` and waits for its session.
    pub async fn start(peers: &peer_support::Peers, dir: &Path, url: &str, name: &str) -> PyDriver {
        let stderr = dir.join("py_session.stderr");
        let mut child = Command::new(&peers.python)
            .arg(peers.workspace.join("tests/peers/py_session.py"))
            .args(["--url", url, "--name", name, "--version", "1.0"])
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("the Python driver starts");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut py = PyDriver { child, stdin, lines, stderr };
        let ready = py.next().await;
        assert_eq!((ready["event"].as_str(), ready["ok"].as_bool()), (Some("ready"), Some(true)), "{ready}");
        py
    }

    pub async fn next(&mut self) -> Value {
        let line = within(self.lines.next_line()).await.expect("read").expect("the Python driver is still running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// One echo call with `text`; its outcome line.
    pub async fn call(&mut self, text: &str) -> Value {
        within(self.stdin.write_all(format!("call {text}\n").as_bytes())).await.expect("write");
        self.next().await
    }

    /// Ends the driver, which must exit cleanly.
    pub async fn quit(mut self) {
        within(self.stdin.write_all(b"quit\n")).await.expect("write");
        let status = within(self.child.wait()).await.expect("the driver exits");
        assert!(status.success(), "{}", std::fs::read_to_string(&self.stderr).unwrap_or_default());
    }
}

/// One line a [`LoopDriver`] printed, and when the test read it.
pub type Line = (std::time::Instant, Value);

/// The driver of several sessions of an official client calling in a loop
/// (`tests/peers/cluster_client.py`, `tests/peers/cluster_client.mjs`; one protocol): every
/// line it prints is kept, with when it was read.
pub struct LoopDriver {
    /// `py` or `ts`: the prefix of its sessions' keys.
    pub prefix: String,
    /// How many sessions it runs.
    pub sessions: usize,
    child: Child,
    stdin: tokio::process::ChildStdin,
    lines: Arc<std::sync::Mutex<Vec<Line>>>,
    reader: tokio::task::JoinHandle<()>,
    stderr: PathBuf,
}

impl LoopDriver {
    /// Starts `program script` against `url` with `sessions` sessions keyed `prefix<K>-<N>`.
    pub async fn start(
        program: &Path,
        script: &Path,
        dir: &Path,
        url: &str,
        sessions: usize,
        prefix: &str,
    ) -> LoopDriver {
        let stderr = dir.join(format!("{prefix}-driver.stderr"));
        let mut child = Command::new(program)
            .arg(script)
            .args(["--url", url, "--sessions", &sessions.to_string(), "--prefix", prefix])
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("the {prefix} driver starts: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = lines.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                let v =
                    serde_json::from_str(&line).unwrap_or_else(|_| serde_json::json!({"event": "noise", "line": line}));
                into.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((std::time::Instant::now(), v));
            }
        });
        LoopDriver { prefix: prefix.to_owned(), sessions, child, stdin, lines, reader, stderr }
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The lines of one kind of event so far.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.lines().into_iter().filter(|(_, v)| v["event"] == event).map(|(_, v)| v).collect()
    }

    /// What the driver wrote on stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (bounded) until every session is ready; their session ids, by session number.
    pub async fn ready(&self) -> Vec<String> {
        let wait = async {
            loop {
                let ready = self.events("ready");
                if let Some(failed) = self.events("closed").first() {
                    panic!("a {} session failed to start: {failed}\n{}", self.prefix, self.stderr());
                }
                if ready.len() == self.sessions {
                    let mut sids = vec![String::new(); self.sessions];
                    for r in ready {
                        let k = r["session"].as_u64().expect("session number") as usize;
                        sids[k] = r["sid"].as_str().expect("a session id").to_owned();
                    }
                    return sids;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("the {} sessions were not ready in 60 s\n{}", self.prefix, self.stderr()))
    }

    /// Lets every session finish its call and close; waits (bounded) for the driver to exit.
    pub async fn stop(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stdin.write_all(b"stop\n")).await;
        let status = tokio::time::timeout(Duration::from_secs(90), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the {} driver did not stop in 90 s\n{}", self.prefix, self.stderr()))
            .expect("wait");
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        assert!(status.success(), "the {} driver failed ({status})\n{}", self.prefix, self.stderr());
    }
}
