//! Durability: sessions and stream events survive tether itself being killed (-9) or stopped
//! (SIGTERM) and started again on the same SQLite store. Runs the real binary.

mod harness;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use harness::{Client, Front, SseStream, within};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

struct Tether {
    child: Child,
    port: u16,
    log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn temp_dir(name: &str) -> PathBuf {
    let d =
        std::env::temp_dir().join(format!("tether-durable-{name}-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&d).expect("dir");
    d
}

impl Tether {
    /// Starts `tether serve` on `port` with the SQLite store in `dir`, fronting tether-echo.
    async fn start(dir: &Path, port: u16, extra: &[&str]) -> Tether {
        let log = dir.join(format!("tether-{}.log", rand::random::<u32>()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--store")
            .arg(format!("sqlite://{}", dir.join("sessions.db").display()))
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .args(extra)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_tether-echo"))
            .env("XDG_STATE_HOME", dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true);
        let child = cmd.spawn().expect("spawn tether");
        let t = Tether { child, port, log };
        within(async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        t
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    async fn kill9(mut self) -> String {
        harness::kill9(self.pid());
        within(self.child.wait()).await.expect("reaped");
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn sigterm(mut self) -> (std::process::ExitStatus, String) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), nix::sys::signal::Signal::SIGTERM);
        let status = within(self.child.wait()).await.expect("exits");
        (status, std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

fn text_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text result in {answer}")).to_owned()
}

#[tokio::test]
async fn a_session_survives_kill_9_of_tether() {
    let dir = temp_dir("kill");
    let port = free_port();
    let t = Tether::start(&dir, port, &[]).await;
    let mut c = Client::for_base(t.base(), Front::Streamable);
    c.connect().await;
    let sid = c.session.clone();
    assert!(c.request("logging/setLevel", json!({"level": "debug"})).await.answer["result"].is_object());
    assert!(c.request("resources/subscribe", json!({"uri": "echo://counter"})).await.answer["result"].is_object());

    let log = t.kill9().await;
    assert!(log.contains("session created"), "{log}");
    let t = Tether::start(&dir, port, &[]).await;

    let r = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "after restart"}})).await;
    assert_eq!(text_of(&r.answer), "after restart", "served on the old session id, no re-initialize");
    assert_eq!(c.session, sid);
    let r = c.request("tools/call", json!({"name": "log", "arguments": {}})).await;
    assert_eq!(text_of(&r.answer), "logged at debug", "the log level was replayed");
    let r = c.request("tools/call", json!({"name": "bump", "arguments": {}})).await;
    assert!(r.related.iter().any(|m| m["method"] == "notifications/resources/updated"), "subscription replayed");

    let (status, log) = t.sigterm().await;
    assert!(status.success(), "{log}");
    assert!(log.contains("recovered sessions from the store") && log.contains("live_sessions=1"), "{log}");
    assert!(log.contains("session revived"), "{log}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn expired_and_closed_sessions_are_404_after_a_restart() {
    let dir = temp_dir("closed");
    let port = free_port();
    let t = Tether::start(&dir, port, &["--session-ttl", "1s"]).await;
    let mut closed = Client::for_base(t.base(), Front::Streamable);
    closed.connect().await;
    assert_eq!(closed.close().await, reqwest::StatusCode::OK);
    let mut idle = Client::for_base(t.base(), Front::Streamable);
    idle.connect().await;
    t.kill9().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t = Tether::start(&dir, port, &["--session-ttl", "1s"]).await;
    assert_eq!(closed.request("tools/list", json!({})).await.status, reqwest::StatusCode::NOT_FOUND);
    assert_eq!(idle.request("tools/list", json!({})).await.status, reqwest::StatusCode::NOT_FOUND);
    t.kill9().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_get_stream_resumes_across_a_restart_with_nothing_lost_or_doubled() {
    let dir = temp_dir("resume");
    let port = free_port();
    let t = Tether::start(&dir, port, &[]).await;
    let mut c = Client::for_base(t.base(), Front::Streamable);
    c.connect().await;
    let mut stream = c.open_stream().await;
    let n = 20;
    c.request("tools/call", json!({"name": "burst", "arguments": {"count": n, "ms": 2}})).await;
    let mut ids = Vec::new();
    for i in 1..=n {
        let m = stream.next_message().await.expect("burst message");
        assert_eq!(m["params"]["data"], i);
        ids.push(stream.ids.last().expect("an id").clone());
    }
    drop(stream);
    t.kill9().await;
    let t = Tether::start(&dir, port, &[]).await;

    // The client saw only the first 7 (say): resuming after the 7th delivers 8..=20 exactly.
    let mut resumed = c.resume_stream(Some(&ids[6])).await;
    for i in 8..=n {
        let m = resumed.next_message().await.expect("replayed message");
        assert_eq!(m["params"]["data"], i, "in order, none missing");
    }
    assert_eq!(&resumed.ids[..], &ids[7..], "the same ids: nothing doubled, nothing new");
    // The resumed stream is the live standalone stream again.
    c.request("tools/call", json!({"name": "later", "arguments": {"ms": 10, "message": "live"}})).await;
    let m = resumed.next_message().await.expect("live message");
    assert_eq!(m["params"]["data"], "live");
    t.kill9().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_cursor_older_than_retention_resumes_from_now() {
    let dir = temp_dir("old");
    let port = free_port();
    let t = Tether::start(&dir, port, &[]).await;
    let mut c = Client::for_base(t.base(), Front::Streamable);
    c.connect().await;
    let mut s = c.resume_stream(Some("deadbeef.g99-12")).await;
    c.request("tools/call", json!({"name": "later", "arguments": {"ms": 10, "message": "fresh"}})).await;
    assert_eq!(s.next_message().await.expect("live")["params"]["data"], "fresh");
    let log = t.kill9().await;
    assert!(log.contains("older than retention"), "{log}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A POST stream cut mid-request is resumed with GET + Last-Event-ID and delivers the answer.
#[tokio::test]
async fn a_cut_post_stream_is_resumed_and_gets_its_answer() {
    let dir = temp_dir("post");
    let port = free_port();
    let t = Tether::start(&dir, port, &[]).await;
    let mut c = Client::for_base(t.base(), Front::Streamable);
    c.connect().await;
    let resp = c.post(&json!({"jsonrpc": "2.0", "id": 42, "method": "tools/call", "params": {"name": "work", "arguments": {"ms": 600}}})).await;
    let mut s = SseStream::new(resp);
    let priming = s.next_event().await.expect("priming");
    let cursor = priming.id.expect("priming id");
    drop(s); // the connection drops before the answer
    let mut s = c.resume_stream(Some(&cursor)).await;
    let answer = s.next_message().await.expect("the answer");
    assert_eq!(answer["id"], 42);
    assert_eq!(text_of(&answer), "slept 600 ms");
    assert!(s.next_event().await.is_none(), "the resumed request stream ends after its answer");

    // Resuming again after the answer: it is replayed from the store, then the stream ends.
    let mut s = c.resume_stream(Some(&cursor)).await;
    assert_eq!(s.next_message().await.expect("replayed answer")["id"], 42);
    assert!(s.next_event().await.is_none());
    t.kill9().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Answered request streams are kept for resumption only within the per-session window
/// (`--event-finished-streams`): the oldest one's events go when a newer one is answered, so
/// a busy session does not keep every answer for the whole retention age.
#[tokio::test]
async fn answered_streams_beyond_the_window_are_dropped() {
    let dir = temp_dir("window");
    let port = free_port();
    let t = Tether::start(&dir, port, &["--event-finished-streams", "2"]).await;
    let mut c = Client::for_base(t.base(), Front::Streamable);
    c.connect().await;
    let mut cursors = Vec::new();
    for id in 1..=3 {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": format!("m{id}")}}});
        let mut s = SseStream::new(c.post(&body).await);
        let priming = s.next_event().await.expect("priming").id.expect("priming id");
        let answer = s.next_event().await.expect("answer");
        // Positions order a stream: the answer must come after the priming event even when
        // the upstream answers before the POST handler has written anything.
        let seq = |id: &str| id.rsplit_once('-').and_then(|(_, n)| n.parse::<u64>().ok()).expect("seq");
        assert!(seq(answer.id.as_deref().expect("answer id")) > seq(&priming), "answer after priming");
        let answer: Value = serde_json::from_str(&answer.data).expect("json");
        assert_eq!(answer["id"], id);
        cursors.push(priming);
    }
    let mut oldest = c.resume_stream(Some(&cursors[0])).await;
    assert!(oldest.next_message().await.is_none(), "the oldest answered stream is no longer kept");
    for (i, cursor) in cursors.iter().enumerate().skip(1) {
        let mut s = c.resume_stream(Some(cursor)).await;
        let answer = s.next_message().await.expect("a kept answer is replayed");
        assert_eq!(answer["id"], i + 1);
        assert_eq!(text_of(&answer), format!("m{}", i + 1));
    }
    t.kill9().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A request in flight when tether is killed cannot be answered by the new tether; a client
/// resuming its stream gets the documented error at once instead of waiting out its timeout.
#[tokio::test]
async fn a_request_lost_with_a_killed_tether_is_answered_on_resume() {
    let dir = temp_dir("lost");
    let port = free_port();
    let t = Tether::start(&dir, port, &[]).await;
    let mut c = Client::for_base(t.base(), Front::Streamable);
    c.connect().await;
    let resp = c.post(&json!({"jsonrpc": "2.0", "id": "call-7", "method": "tools/call", "params": {"name": "work", "arguments": {"ms": 5000}}})).await;
    let mut s = SseStream::new(resp);
    let cursor = s.next_event().await.expect("priming").id.expect("priming id");
    t.kill9().await;
    let t = Tether::start(&dir, port, &[]).await;
    let mut resumed = c.resume_stream(Some(&cursor)).await;
    let answer = resumed.next_message().await.expect("an answer");
    assert_eq!(answer["id"], "call-7");
    assert_eq!(answer["error"]["code"], -32011, "{answer}");
    assert_eq!(answer["error"]["data"]["reason"], "upstream_restarted");
    assert!(resumed.next_event().await.is_none(), "then the stream ends");
    t.kill9().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGTERM: in-flight requests complete, open streams end with a retry hint, the store is
/// flushed, children are stopped, and the session is valid for the next start.
#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_keeps_sessions() {
    let dir = temp_dir("term");
    let port = free_port();
    let t = Tether::start(&dir, port, &[]).await;
    let mut c = Client::for_base(t.base(), Front::Streamable);
    c.connect().await;
    let mut get = c.open_stream().await;
    let mut other = c.same_session();
    let in_flight = tokio::spawn(async move {
        other.request("tools/call", json!({"name": "work", "arguments": {"ms": 800}})).await.answer
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let child_pids: Vec<u32> = std::fs::read_to_string(format!("/proc/{}/task/{}/children", t.pid(), t.pid()))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let (status, log) = t.sigterm().await;
    let answer = within(in_flight).await.expect("task");
    assert_eq!(text_of(&answer), "slept 800 ms", "the in-flight request completed during the drain");
    assert!(status.success(), "{log}");
    // The GET stream ended with a retry hint.
    while get.next_event().await.is_some() {}
    assert!(get.retry.is_some(), "a retry hint before the stream ended");
    for pid in child_pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "child {pid} stopped");
    }
    let conn = rusqlite::Connection::open(dir.join("sessions.db")).expect("open store");
    let (closed, requests): (Option<i64>, i64) = conn
        .query_row(
            "SELECT closed_at, requests FROM sessions WHERE id = ?1",
            [c.session.as_deref().expect("sid")],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the record");
    assert!(closed.is_none(), "the session stays valid");
    assert!(requests >= 2, "activity was flushed ({requests})");
    let t = Tether::start(&dir, port, &[]).await;
    let r = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "next start"}})).await;
    assert_eq!(text_of(&r.answer), "next start");
    t.kill9().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_corrupt_store_stops_startup_with_a_clear_error() {
    let dir = temp_dir("corrupt");
    let db = dir.join("sessions.db");
    std::fs::write(&db, b"garbage ".repeat(1000)).expect("write");
    let out = within(
        Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--store"])
            .arg(format!("sqlite://{}", db.display()))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_tether-echo"))
            .env("XDG_STATE_HOME", &dir)
            .output(),
    )
    .await
    .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&db.display().to_string()) && err.contains("mv "), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
