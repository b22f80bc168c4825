//! `tether serve --store postgres://…` and `--store redis://…` end to end, one replica: the
//! real binary in front of tether-echo, a client over HTTP, tether killed (-9) and started
//! again on the same store (its own namespace): the session, its replayed state and its
//! stream's events survive, like on SQLite (`durable.rs`).

mod harness;
mod shared_stores;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use harness::{Client, Front, within};
use serde_json::{Value, json};
use shared_stores::Cleanup;
use tokio::process::{Child, Command};

struct Tether {
    child: Child,
    port: u16,
    log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Tether {
    async fn start(dir: &std::path::Path, port: u16, store: &str, ns: &str) -> Tether {
        let log = dir.join(format!("tether-{}.log", rand::random::<u32>()));
        let child = Tether::command(dir, port, store, ns, &log).spawn().expect("spawn tether");
        let t = Tether { child, port, log };
        t.serving().await;
        t
    }

    /// Waits until it serves MCP (its log says so: a port that accepts may be a standby's,
    /// about to close).
    async fn serving(&self) {
        within(async {
            while !std::fs::read_to_string(&self.log).unwrap_or_default().contains("tether serving MCP") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    fn command(dir: &std::path::Path, port: u16, store: &str, ns: &str, log: &std::path::Path) -> Command {
        Tether::command_with(dir, port, store, ns, log, 0, &["--standby"])
    }

    /// The command with its admin listener on `admin_port` (0: any) and `extra` flags.
    fn command_with(
        dir: &std::path::Path,
        port: u16,
        store: &str,
        ns: &str,
        log: &std::path::Path,
        admin_port: u16,
        extra: &[&str],
    ) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--store")
            .arg(store)
            .arg("--store-namespace")
            .arg(ns)
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin_port}"))
            .args(extra)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_tether-echo"))
            .env("XDG_STATE_HOME", dir)
            .env_remove("TETHER_ADMIN_TOKEN")
            .env_remove("TETHER_ADMIN_TOKEN_FILE")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .kill_on_drop(true);
        cmd
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn kill9(mut self) -> String {
        harness::kill9(self.child.id().expect("running"));
        within(self.child.wait()).await.expect("reaped");
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn text_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text result in {answer}")).to_owned()
}

async fn a_session_and_its_stream_survive_a_restart(store: &str, ns: &str) {
    let dir = std::env::temp_dir().join(format!("tether-shared-{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let t = Tether::start(&dir, port, store, ns).await;
    let mut c = Client::for_base(t.base(), Front::Streamable);
    c.connect().await;
    let sid = c.session.clone();
    assert!(c.request("logging/setLevel", json!({"level": "debug"})).await.answer["result"].is_object());
    let mut stream = c.open_stream().await;
    c.request("tools/call", json!({"name": "burst", "arguments": {"count": 5, "ms": 2}})).await;
    let mut ids = Vec::new();
    for i in 1..=5 {
        let m = stream.next_message().await.expect("burst message");
        assert_eq!(m["params"]["data"], i);
        ids.push(stream.ids.last().expect("an id").clone());
    }
    drop(stream);
    let mut closed = Client::for_base(t.base(), Front::Streamable);
    closed.connect().await;
    assert_eq!(closed.close().await, reqwest::StatusCode::OK);

    let log = t.kill9().await;
    assert!(log.contains("session store opened"), "{log}");
    let t = Tether::start(&dir, port, store, ns).await;

    let r = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "after restart"}})).await;
    assert_eq!(text_of(&r.answer), "after restart", "served on the old session id, no re-initialize");
    assert_eq!(c.session, sid);
    let r = c.request("tools/call", json!({"name": "log", "arguments": {}})).await;
    assert_eq!(text_of(&r.answer), "logged at debug", "the log level was replayed from the store");
    // The client saw only the first two events: resuming after the 2nd delivers 3..=5.
    let mut resumed = c.resume_stream(Some(&ids[1])).await;
    for i in 3..=5 {
        let m = resumed.next_message().await.expect("replayed message");
        assert_eq!(m["params"]["data"], i, "in order, none missing");
    }
    assert_eq!(&resumed.ids[..], &ids[2..], "the same ids: nothing doubled");
    drop(resumed);
    assert_eq!(
        closed.request("tools/list", json!({})).await.status,
        reqwest::StatusCode::NOT_FOUND,
        "a session closed before the restart stays closed"
    );
    let log = t.kill9().await;
    assert!(log.contains("live_sessions=1"), "{log}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_sessions_survive_kill_9() {
    let ns = shared_stores::namespace("serve");
    let _cleanup = Cleanup::Postgres(ns.clone());
    shared_stores::within(a_session_and_its_stream_survive_a_restart(&shared_stores::pg_url(), &ns)).await;
}

#[tokio::test]
async fn redis_sessions_survive_kill_9() {
    let ns = shared_stores::namespace("serve");
    let _cleanup = Cleanup::Redis(ns.clone());
    shared_stores::within(a_session_and_its_stream_survive_a_restart(&shared_stores::redis_url(), &ns)).await;
}

/// The admin token of the tethers of the standby test.
const ADMIN: &str = "standby-test-admin-token";

/// `GET /admin/replicas`: its rows.
async fn replicas(port: u16) -> Vec<Value> {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/admin/replicas"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("admin answers");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let v: Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
    v["replicas"].as_array().cloned().unwrap_or_default()
}

/// `GET` of an admin path: its status and body.
async fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await.ok()?;
    Some((r.status().as_u16(), r.text().await.unwrap_or_default()))
}

/// `--standby`: a second tether waits while the first serves the namespace — nothing listens
/// on its MCP address, its admin says `/healthz` 200 and `/readyz` 503 — and a SIGTERM ends such a
/// wait cleanly; when the first is killed (-9), the standby takes the namespace once the lease
/// runs out and serves the first one's session, its state replayed, with no re-initialize.
async fn a_standby_takes_over(store: &str, ns: &str) {
    let dir = std::env::temp_dir().join(format!("tether-shared-{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (first_port, first_admin) = (free_port(), free_port());
    let first_log = dir.join("first.log");
    let auth = ["--admin-token", ADMIN];
    // The first is a standby too: the namespace is free, so it serves at once.
    let child =
        Tether::command_with(&dir, first_port, store, ns, &first_log, first_admin, &["--standby", auth[0], auth[1]])
            .spawn()
            .expect("spawn tether");
    let first = Tether { child, port: first_port, log: first_log };
    first.serving().await;
    let mut c = Client::for_base(first.base(), Front::Streamable);
    c.connect().await;
    let sid = c.session.clone();
    assert!(c.request("logging/setLevel", json!({"level": "debug"})).await.answer["result"].is_object());

    let (port, admin) = (free_port(), free_port());
    let log = dir.join("standby.log");
    let mut standby = Tether::command_with(&dir, port, store, ns, &log, admin, &["--standby", auth[0], auth[1]])
        .spawn()
        .expect("spawn tether");
    shared_stores::within(async {
        while !admin_get(admin, "/readyz").await.is_some_and(|(s, b)| s == 503 && b.contains("standby")) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(admin_get(admin, "/healthz").await.map(|(s, _)| s), Some(200), "a standby is healthy");
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "a standby does not listen for MCP");
    // Both are in the registry, as the serving tether's admin shows (read every heartbeat).
    let role_of = |rows: &[Value], p: u16| {
        rows.iter()
            .find(|r| r["address"] == format!("127.0.0.1:{p}"))
            .map(|r| (r["role"].as_str().unwrap_or_default().to_owned(), r["this"] == true))
    };
    let rows = shared_stores::within(async {
        loop {
            let rows = replicas(first_admin).await;
            if role_of(&rows, port).is_some() {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(role_of(&rows, first_port), Some(("serving".into(), true)), "{rows:?}");
    assert_eq!(role_of(&rows, port), Some(("standby".into(), false)), "{rows:?}");

    // A second standby, stopped while it waits.
    let other_log = dir.join("other-standby.log");
    let mut other =
        Tether::command_with(&dir, free_port(), store, ns, &other_log, 0, &["--standby"]).spawn().expect("spawn");
    shared_stores::within(async {
        while !std::fs::read_to_string(&other_log).unwrap_or_default().contains("standing by") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let pid = nix::unistd::Pid::from_raw(other.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = shared_stores::within(other.wait()).await.expect("reaped");
    assert!(status.success(), "a standby stops cleanly: {}", std::fs::read_to_string(&other_log).unwrap_or_default());

    let r = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "first"}})).await;
    assert_eq!(text_of(&r.answer), "first", "the first tether serves while the standby waits");
    first.kill9().await;
    shared_stores::within(async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    c.base = format!("http://127.0.0.1:{port}");
    let r = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "taken over"}})).await;
    assert_eq!(text_of(&r.answer), "taken over", "served by the standby");
    assert_eq!(c.session, sid, "the same session, no re-initialize");
    let r = c.request("tools/call", json!({"name": "log", "arguments": {}})).await;
    assert_eq!(text_of(&r.answer), "logged at debug", "its state replayed from the store");
    assert_eq!(admin_get(admin, "/readyz").await.map(|(s, _)| s), Some(200), "ready once it serves");
    let rows = replicas(admin).await;
    let now = rows.iter().find(|r| r["this"] == true).unwrap_or_else(|| panic!("this one is listed: {rows:?}"));
    assert_eq!((now["role"].as_str(), now["address"].as_str()), (Some("serving"), Some(&*format!("127.0.0.1:{port}"))));
    assert_eq!(rows.iter().filter(|r| r["role"] == "serving").count(), 1, "one serves: {rows:?}");

    harness::kill9(standby.id().expect("running"));
    shared_stores::within(standby.wait()).await.expect("reaped");
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(said.contains("standing by") && said.contains("took over the store namespace"), "{said}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_standby_takes_over() {
    let ns = shared_stores::namespace("standby");
    let _cleanup = Cleanup::Postgres(ns.clone());
    shared_stores::within(a_standby_takes_over(&shared_stores::pg_url(), &ns)).await;
}

#[tokio::test]
async fn redis_standby_takes_over() {
    let ns = shared_stores::namespace("standby");
    let _cleanup = Cleanup::Redis(ns.clone());
    shared_stores::within(a_standby_takes_over(&shared_stores::redis_url(), &ns)).await;
}
