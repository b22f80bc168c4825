//! Session lifetime and limits across what happens to a session: `--max-sessions` kept across a
//! gateway restart (stored sessions count until they close or expire), an open GET stream as
//! activity (the TTL counts from its close), and the cause each revive is recorded with (a
//! crash, an idle reap, a lost upstream session, a gateway restart). Real gateways on loopback
//! in front of `tether-echo`; a real SQLite file where a restart is involved.

mod harness;

use std::path::PathBuf;
use std::time::Duration;

use harness::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tether::Gateway;
use tether::config::{Config, StoreSpec};
use tether::upstream::UpstreamSpec;

fn stdio_config() -> Config {
    config(UpstreamSpec::Stdio { command: echo_command() })
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

async fn echo(c: &mut Client, message: &str) -> Exchange {
    c.request("tools/call", json!({"name": "echo", "arguments": {"message": message}})).await
}

fn text_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"].as_str().unwrap_or_default().to_owned()
}

/// An `initialize` on a new session: its status and answer.
async fn try_initialize(gw: &Gateway) -> (StatusCode, Value) {
    let mut c = Client::new(gw, Front::Streamable);
    let init = c.request("initialize", init_params()).await;
    (init.status, init.answer)
}

/// `--max-sessions 3` with 3 sessions open in the store: after a restart, a new `initialize`
/// is still refused (503, -32013, reason `too_many_sessions`), the 3 stored sessions come back,
/// never more than 3 are live, and a session that closes makes room.
#[tokio::test]
async fn max_sessions_holds_across_a_restart() {
    let dir = temp_dir("max-sessions");
    let cfg = || {
        let mut c = stdio_config();
        c.store =
            StoreSpec::Sqlite { path: dir.join("sessions.db"), commit_window: tether::store::DEFAULT_COMMIT_WINDOW };
        c.session.max_sessions = 3;
        c
    };
    let gw = start(cfg()).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::new(&gw, Front::Streamable);
        c.connect().await;
        clients.push(c);
    }
    let (status, answer) = try_initialize(&gw).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a 4th session before the restart: {answer}");

    let gw = restart(gw, cfg()).await;
    assert_eq!(gw.manager.live_count(), 0, "stored sessions come back lazily");
    let (status, answer) = try_initialize(&gw).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a new session while 3 wait in the store: {answer}");
    assert_eq!(answer["error"]["code"], -32013, "{answer}");
    assert_eq!(answer["error"]["data"]["reason"], "too_many_sessions", "{answer}");
    for (n, c) in clients.iter_mut().enumerate() {
        let r = echo(c, &format!("back {n}")).await;
        assert_eq!(text_of(&r.answer), format!("back {n}"), "stored session {n} resumes: {}", r.answer);
    }
    assert_eq!(gw.manager.live_count(), 3);
    let (status, _) = try_initialize(&gw).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "still full with the 3 resumed");
    assert_eq!(gw.manager.live_count(), 3, "never more live sessions than --max-sessions");

    assert_eq!(clients[0].close().await, StatusCode::OK);
    let (status, answer) = try_initialize(&gw).await;
    assert_eq!(status, StatusCode::OK, "a closed session makes room: {answer}");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stored session that expires without coming back stops counting toward the cap.
#[tokio::test]
async fn stored_sessions_that_expire_stop_counting() {
    let dir = temp_dir("max-sessions-expire");
    let cfg = || {
        let mut c = stdio_config();
        c.store =
            StoreSpec::Sqlite { path: dir.join("sessions.db"), commit_window: tether::store::DEFAULT_COMMIT_WINDOW };
        c.session.max_sessions = 1;
        c.session.ttl = Duration::from_millis(1500);
        c
    };
    let gw = start(cfg()).await;
    Client::new(&gw, Front::Streamable).connect().await;
    let gw = restart(gw, cfg()).await;
    let (status, _) = try_initialize(&gw).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "the stored session holds the only place");
    let mut room = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if try_initialize(&gw).await.0 == StatusCode::OK {
            room = true;
            break;
        }
    }
    assert!(room, "the stored session expired and a new one was let in");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A session whose client holds its GET stream open does not expire, however long the stream
/// stays open; once the stream closes, the TTL counts from the close.
#[tokio::test]
async fn an_open_stream_keeps_its_session_alive() {
    let mut cfg = stdio_config();
    cfg.session.ttl = Duration::from_millis(1500);
    let gw = start(cfg).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let stream = c.open_stream().await;
    // Twice the TTL with only the stream open: the reaper runs every second meanwhile.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(gw.manager.live_count(), 1, "the session with an open stream was not reaped");
    drop(stream);
    eventually("the gateway sees the stream closed", || !gw.manager.live()[0].has_standalone()).await;
    // Well within the TTL of the close, and well past it since the last POST.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = echo(&mut c, "still here").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.answer);
    assert_eq!(text_of(&r.answer), "still here");
    // Idle without a stream, it expires as before.
    let mut gone = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if gw.manager.live_count() == 0 {
            gone = true;
            break;
        }
    }
    assert!(gone, "an idle session without a stream still expires");
    assert_eq!(echo(&mut c, "late").await.status, StatusCode::NOT_FOUND);
    gw.shutdown().await;
}

fn last_cause(gw: &Gateway) -> Option<&'static str> {
    gw.manager.live()[0].last_revive().map(|(_, cause)| cause)
}

/// A killed child is revived with cause `upstream_crashed` — also when the first revives fail
/// (the command keeps dying for a while), which used to be logged as `upstream_reaped`.
#[tokio::test]
async fn a_revive_after_a_crash_is_labelled_a_crash() {
    let dir = temp_dir("cause-crash");
    let broken = dir.join("broken");
    let script =
        format!("if [ -e '{}' ]; then echo broken >&2; exit 3; fi; exec '{}'", broken.display(), echo_command()[0]);
    let mut cfg = config(UpstreamSpec::Stdio { command: vec!["sh".into(), "-c".into(), script] });
    cfg.session.restart.max_failures = 50;
    cfg.session.restart.backoff_base = Duration::from_millis(10);
    // A call that cannot get its upstream back ends by its timeout.
    cfg.session.request_timeout = Duration::from_secs(2);
    let gw = start(cfg).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;

    kill9(only_child(&gw));
    eventually("the child's death is noticed", || !gw.manager.live()[0].upstream_alive()).await;
    assert_eq!(text_of(&echo(&mut c, "one").await.answer), "one");
    assert_eq!(last_cause(&gw), Some("upstream_crashed"));

    std::fs::write(&broken, b"").expect("break the upstream");
    kill9(only_child(&gw));
    eventually("the child's death is noticed", || !gw.manager.live()[0].upstream_alive()).await;
    let failed = echo(&mut c, "x").await;
    assert!(failed.answer["error"].is_object(), "revives that fail: {}", failed.answer);
    std::fs::remove_file(&broken).expect("fix the upstream");
    let mut answered = false;
    for _ in 0..20 {
        if text_of(&echo(&mut c, "two").await.answer) == "two" {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "the fixed upstream serves again");
    assert_eq!(last_cause(&gw), Some("upstream_crashed"), "the failed revives do not change why");
    assert_eq!(gw.manager.live()[0].revive_count(), 2);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// An idle reap is `upstream_reaped`; an HTTP upstream that forgot the session is
/// `upstream_session_lost`; a session resumed after a gateway restart is `gateway_restart`.
#[tokio::test]
async fn revive_causes_name_what_happened() {
    let mut cfg = stdio_config();
    cfg.session.upstream_idle = Duration::from_millis(300);
    let gw = start(cfg).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let pid = only_child(&gw);
    eventually("the idle child is stopped", || !std::path::Path::new(&format!("/proc/{pid}")).exists()).await;
    assert_eq!(text_of(&echo(&mut c, "after reap").await.answer), "after reap");
    assert_eq!(last_cause(&gw), Some("upstream_reaped"));
    gw.shutdown().await;

    let inner = start(stdio_config()).await;
    let url = format!("http://{}/mcp", inner.addr);
    let gw = start(config(UpstreamSpec::Streamable { url })).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let inner = restart(inner, stdio_config()).await;
    assert_eq!(text_of(&echo(&mut c, "after upstream restart").await.answer), "after upstream restart");
    assert_eq!(last_cause(&gw), Some("upstream_session_lost"));
    inner.shutdown().await;
    gw.shutdown().await;

    let dir = temp_dir("cause-restart");
    let cfg = || {
        let mut c = stdio_config();
        c.store =
            StoreSpec::Sqlite { path: dir.join("sessions.db"), commit_window: tether::store::DEFAULT_COMMIT_WINDOW };
        c
    };
    let gw = start(cfg()).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let gw = restart(gw, cfg()).await;
    assert_eq!(text_of(&echo(&mut c, "after gateway restart").await.answer), "after gateway restart");
    assert_eq!(last_cause(&gw), Some("gateway_restart"));
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
