//! Healing: a client session survives its upstream dying — a stdio child killed between and
//! during calls, an HTTP or SSE upstream restarting and forgetting its sessions, a crash loop,
//! idle reaping — with the session state replayed, and every in-flight request ending as
//! documented. The same with the official SDK clients and real servers is in `heal_peers.rs`.

mod harness;

use std::time::Duration;

use harness::{Client, Front, config, echo_command, eventually, kill9, only_child, start, within};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tether::config::Config;
use tether::upstream::UpstreamSpec;

fn text_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text result in {answer}")).to_owned()
}

async fn call(c: &mut Client, tool: &str, args: Value) -> Value {
    c.request("tools/call", json!({"name": tool, "arguments": args})).await.answer
}

/// Sets the state a revive must replay: a log level and a subscription.
async fn set_state(c: &mut Client) {
    assert!(c.request("logging/setLevel", json!({"level": "debug"})).await.answer["result"].is_object());
    assert!(c.request("resources/subscribe", json!({"uri": "echo://counter"})).await.answer["result"].is_object());
    assert_eq!(text_of(&call(c, "log", json!({})).await), "logged at debug");
}

/// The state survived: the level still holds and the subscription still delivers updates.
async fn assert_state_replayed(c: &mut Client) {
    assert_eq!(text_of(&call(c, "log", json!({})).await), "logged at debug", "the log level was replayed");
    let r = c.request("tools/call", json!({"name": "bump", "arguments": {}})).await;
    assert!(
        r.related.iter().any(|m| m["method"] == "notifications/resources/updated"),
        "the subscription was replayed: {:?}",
        r.related
    );
}

fn stdio_config() -> Config {
    config(UpstreamSpec::Stdio { command: echo_command() })
}

#[tokio::test]
async fn a_killed_stdio_child_is_revived_between_calls() {
    let gw = start(stdio_config()).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let sid = c.session.clone();
    set_state(&mut c).await;
    let pid = only_child(&gw);
    kill9(pid);
    eventually("the child's death is noticed", || !gw.manager.live()[0].upstream_alive()).await;

    assert_eq!(text_of(&call(&mut c, "echo", json!({"message": "after"})).await), "after");
    assert_eq!(c.session, sid, "same session throughout");
    assert_state_replayed(&mut c).await;
    let session = &gw.manager.live()[0];
    assert_eq!(session.revive_count(), 1);
    assert_ne!(only_child(&gw), pid, "a new child");
    gw.shutdown().await;
}

/// Whether a process runs (a zombie has exited).
fn runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

#[tokio::test]
async fn a_spare_child_serves_the_next_session_and_the_next_revive() {
    let mut cfg = stdio_config();
    let supervisor = std::sync::Arc::new(tether::upstream::supervisor::Supervisor::with_spares(1));
    cfg.session.upstream.supervisor = supervisor.clone();
    let gw = start(cfg).await;
    let spares = &supervisor.spares;
    eventually("a spare is started with the gateway", || spares.ready() == 1).await;
    let first = spares.pids()[0];

    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    set_state(&mut c).await;
    assert_eq!(only_child(&gw), first, "the session took the started child");
    eventually("another spare is started", || spares.pids().first().is_some_and(|p| *p != first)).await;
    let second = spares.pids()[0];

    kill9(first);
    eventually("the child's death is noticed", || !gw.manager.live()[0].upstream_alive()).await;
    assert_eq!(text_of(&call(&mut c, "echo", json!({"message": "after"})).await), "after");
    assert_state_replayed(&mut c).await;
    assert_eq!(only_child(&gw), second, "the revive took the spare");
    assert_eq!(supervisor.spares_taken_total.get(), 2);
    eventually("a third spare is started", || spares.ready() == 1).await;
    let third = spares.pids()[0];

    gw.shutdown().await;
    eventually("the waiting spare is killed at shutdown", || !runs(third)).await;
    eventually("the session's child is closed at shutdown", || !runs(second)).await;
}

#[tokio::test]
async fn in_flight_calls_end_as_documented_when_the_child_dies() {
    let gw = start(stdio_config()).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    // Unsafe (unannotated) work in flight: an error that says it may or may not have run.
    let mut other = c.same_session();
    let unsafe_call = tokio::spawn(async move { call(&mut other, "work", json!({"ms": 3000})).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill9(only_child(&gw));
    let answer = within(unsafe_call).await.expect("task");
    assert_eq!(answer["error"]["code"], -32011, "{answer}");
    assert_eq!(answer["error"]["data"]["reason"], "upstream_restarted");
    assert!(answer["error"]["message"].as_str().expect("message").contains("may or may not have run"));

    // A tool annotated idempotent is retried after the revive and succeeds.
    let mut other = c.same_session();
    let safe_call = tokio::spawn(async move { call(&mut other, "sleep", json!({"ms": 1500})).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill9(only_child(&gw));
    let answer = within(safe_call).await.expect("task");
    assert_eq!(text_of(&answer), "slept 1500 ms", "retried after the revive: {answer}");

    // The session goes on.
    assert_eq!(text_of(&call(&mut c, "echo", json!({"message": "still"})).await), "still");
    gw.shutdown().await;
}

/// An HTTP (or SSE) upstream that restarts forgets every session: the next call finds out
/// (404, or the stream ends) and the session is revived by replay.
#[tokio::test]
async fn an_upstream_server_restart_is_healed() {
    for (kind, path) in [("streamable", "/mcp"), ("sse", "/sse")] {
        let inner = start(stdio_config()).await;
        let url = format!("http://{}{path}", inner.addr);
        let spec = if kind == "sse" { UpstreamSpec::Sse { url } } else { UpstreamSpec::Streamable { url } };
        let gw = start(config(spec)).await;
        let mut c = Client::new(&gw, Front::Streamable);
        c.connect().await;
        let sid = c.session.clone();
        set_state(&mut c).await;

        let inner = harness::restart(inner, stdio_config()).await;
        assert_eq!(inner.manager.live_count(), 0, "the upstream forgot its sessions");
        assert_eq!(text_of(&call(&mut c, "echo", json!({"message": kind})).await), kind, "{kind}");
        assert_eq!(c.session, sid);
        assert_state_replayed(&mut c).await;
        assert_eq!(gw.manager.live()[0].revive_count(), 1, "{kind}");
        inner.shutdown().await;
        gw.shutdown().await;
    }
}

/// A client listening on its GET stream gets the upstream back at once, and keeps receiving.
#[tokio::test]
async fn an_open_stream_gets_its_upstream_back_at_once() {
    let gw = start(stdio_config()).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let mut stream = c.open_stream().await;
    let pid = only_child(&gw);
    kill9(pid);
    eventually("a new child without any request", || gw.manager.live()[0].upstream_pid().is_some_and(|p| p != pid))
        .await;
    call(&mut c, "later", json!({"ms": 20, "message": "after revive"})).await;
    let m = stream.next_message().await.expect("a message on the GET stream");
    assert_eq!(m["params"]["data"], "after revive");
    gw.shutdown().await;
}

/// An upstream that keeps dying opens the breaker: 503 with a clear reason, no restart storm;
/// once it is fixed and the cool-down passed, the same session works again.
#[tokio::test]
async fn a_crash_loop_is_refused_then_recovers_on_the_same_session() {
    let dir = std::env::temp_dir().join(format!("tether-crashloop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let broken = dir.join("broken");
    let script =
        format!("if [ -e '{}' ]; then echo broken >&2; exit 3; fi; exec '{}'", broken.display(), echo_command()[0]);
    let mut cfg = config(UpstreamSpec::Stdio { command: vec!["sh".into(), "-c".into(), script] });
    cfg.session.restart.max_failures = 3;
    cfg.session.restart.window = Duration::from_secs(30);
    cfg.session.restart.cooldown = Duration::from_millis(1500);
    cfg.session.restart.backoff_base = Duration::from_millis(10);
    let gw = start(cfg).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    set_state(&mut c).await;

    std::fs::write(&broken, b"").expect("break the upstream");
    kill9(only_child(&gw));
    eventually("the child's death is noticed", || !gw.manager.live()[0].upstream_alive()).await;
    let mut saw_crash_loop = false;
    for _ in 0..10 {
        let r = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "x"}})).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.answer);
        assert_eq!(r.answer["error"]["code"], -32010);
        if r.answer["error"]["data"]["reason"] == "crash_loop" {
            assert!(r.answer["error"]["message"].as_str().expect("msg").contains("crash-looping"));
            saw_crash_loop = true;
            break;
        }
    }
    assert!(saw_crash_loop, "the breaker opened");

    std::fs::remove_file(&broken).expect("fix the upstream");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(text_of(&call(&mut c, "echo", json!({"message": "fixed"})).await), "fixed");
    assert_state_replayed(&mut c).await;
    let _ = std::fs::remove_dir_all(&dir);
    gw.shutdown().await;
}

/// An idle upstream is released; the session stays, and the next call revives it with its state.
#[tokio::test]
async fn an_idle_upstream_is_reaped_and_comes_back_on_next_use() {
    let mut cfg = stdio_config();
    cfg.session.upstream_idle = Duration::from_millis(300);
    let gw = start(cfg).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    set_state(&mut c).await;
    let pid = only_child(&gw);
    eventually("the idle child is stopped", || !std::path::Path::new(&format!("/proc/{pid}")).exists()).await;
    assert_eq!(gw.manager.live_count(), 1, "the session itself stays");
    assert_state_replayed(&mut c).await;
    assert_eq!(gw.manager.live()[0].revive_count(), 1);
    gw.shutdown().await;
}

/// The client-session TTL is separate: an idle session expires and is then answered 404.
#[tokio::test]
async fn an_expired_session_is_404() {
    let mut cfg = stdio_config();
    cfg.session.ttl = Duration::from_millis(400);
    let gw = start(cfg).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(text_of(&call(&mut c, "echo", json!({"message": "alive"})).await), "alive", "in use, it stays");
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = c.request("tools/list", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    gw.shutdown().await;
}

/// Chaos: several sessions make 500+ calls while their children are killed at random. Every
/// safe call succeeds, every unsafe call either succeeds or ends with "upstream restarted",
/// and nothing hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_random_kills_under_load() {
    let mut cfg = stdio_config();
    cfg.session.restart.max_failures = 10_000; // random kills are not a crash loop
    let gw = start(cfg).await;
    let sessions: u32 = 4;
    // At least this many calls per session, and on until the killer has killed this many
    // children (however fast the calls go), within a bound.
    let calls_per_session = 150;
    let min_kills = 12;
    let kills = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let started = tokio::time::Instant::now();
    let mut clients = Vec::new();
    for _ in 0..sessions {
        let mut c = Client::new(&gw, Front::Streamable);
        c.connect().await;
        c.request("tools/list", json!({})).await;
        clients.push(c);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let killer = {
        let stop = stop.clone();
        let manager = gw.manager.clone();
        let killed = kills.clone();
        tokio::spawn(async move {
            // Safe calls are retried: the same session is not hit again until a retry
            // has had time to finish, even on a loaded machine.
            let mut last_kill: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
            while !stop.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(rand::random_range(40..120))).await;
                let live = manager.live();
                if live.is_empty() {
                    continue;
                }
                let s = &live[rand::random_range(0..live.len())];
                if last_kill.get(s.id()).is_some_and(|t| t.elapsed() < Duration::from_millis(750)) {
                    continue;
                }
                if let Some(pid) = s.upstream_pid() {
                    kill9(pid);
                    last_kill.insert(s.id().to_owned(), tokio::time::Instant::now());
                    killed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    let mut tasks = Vec::new();
    for mut c in clients {
        let kills = kills.clone();
        tasks.push(tokio::spawn(async move {
            let mut counts = [0u32; 5]; // safe ok, unsafe ok, unsafe restarted, safe failed, other
            let mut i = 0u32;
            while i < calls_per_session
                || (kills.load(std::sync::atomic::Ordering::Relaxed) < min_kills
                    && started.elapsed() < Duration::from_secs(60))
            {
                i += 1;
                let (tool, args, safe) = match i % 3 {
                    0 => ("echo", json!({"message": format!("m{i}")}), true),
                    1 => ("sleep", json!({"ms": 5}), true),
                    _ => ("work", json!({"ms": 15}), false),
                };
                let a = call(&mut c, tool, args).await;
                match (safe, a.get("result").is_some(), a["error"]["data"]["reason"].as_str()) {
                    (true, true, _) => counts[0] += 1,
                    (false, true, _) => counts[1] += 1,
                    (false, false, Some("upstream_restarted")) => counts[2] += 1,
                    (true, false, _) => {
                        eprintln!("safe call failed: {a}");
                        counts[3] += 1
                    }
                    _ => {
                        eprintln!("unexpected answer: {a}");
                        counts[4] += 1
                    }
                }
            }
            counts
        }));
    }
    let mut total = [0u32; 5];
    for t in tasks {
        let counts = tokio::time::timeout(Duration::from_secs(120), t).await.expect("no call hangs").expect("task");
        for (a, b) in total.iter_mut().zip(counts) {
            *a += b;
        }
    }
    stop.cancel();
    within(killer).await.expect("killer");
    let kills = kills.load(std::sync::atomic::Ordering::Relaxed);
    let made = total.iter().sum::<u32>();
    eprintln!(
        "chaos: {made} calls, {kills} kills, {} revives: safe ok {}, unsafe ok {}, unsafe upstream_restarted {}, safe failed {}, other {}",
        gw.manager.live().iter().map(|s| s.revive_count()).sum::<u64>(),
        total[0],
        total[1],
        total[2],
        total[3],
        total[4]
    );
    assert!(kills >= min_kills, "the chaos happened ({kills} kills)");
    assert_eq!(total[3], 0, "every safe call succeeded");
    assert_eq!(total[4], 0, "every failure was the documented one");
    assert!(made >= sessions * calls_per_session, "every client made its calls ({made})");
    gw.shutdown().await;
}

/// A request the child never read (it sat in the stdin pipe when the child died) provably did
/// not run: it is sent again on the revived child even when it is not safe to repeat.
#[tokio::test]
async fn a_request_the_child_never_read_is_sent_again() {
    let gw = start(stdio_config()).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    for round in 0..3 {
        let pid = only_child(&gw);
        // A stopped child reads nothing: the request waits in the pipe when it is killed.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGSTOP);
        eventually("the child is stopped", || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
        })
        .await;
        let mut other = c.same_session();
        let pending = tokio::spawn(async move { call(&mut other, "work", json!({"ms": 5})).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        kill9(pid);
        let answer = within(pending).await.expect("task");
        assert_eq!(text_of(&answer), "slept 5 ms", "round {round}: {answer}");
    }
    gw.shutdown().await;
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tether-heal-{name}-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&d).expect("dir");
    d
}

fn echo_with_env(vars: &[(&str, &std::path::Path)]) -> Config {
    let mut script = String::new();
    for (k, v) in vars {
        script.push_str(&format!("{k}='{}' ", v.display()));
    }
    script.push_str(&format!("exec '{}'", echo_command()[0]));
    config(UpstreamSpec::Stdio { command: vec!["sh".into(), "-c".into(), script] })
}

/// The server's tool list changed across the revive: the client is told with `list_changed`.
#[tokio::test]
async fn a_changed_tool_list_after_a_revive_is_announced() {
    let dir = temp_dir("listchanged");
    let extra = dir.join("extra-tool");
    let gw = start(echo_with_env(&[("TETHER_ECHO_EXTRA_TOOL_FILE", &extra)])).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let tools = c.request("tools/list", json!({})).await;
    assert!(!tools.answer.to_string().contains("upgraded_tool"));
    let mut stream = c.open_stream().await;

    std::fs::write(&extra, "upgraded_tool").expect("upgrade the server");
    kill9(only_child(&gw));
    let m = stream.next_message().await.expect("a notification");
    assert_eq!(m["method"], "notifications/tools/list_changed", "{m}");
    let tools = c.request("tools/list", json!({})).await;
    assert!(tools.answer.to_string().contains("upgraded_tool"));
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A revived server that negotiates another protocol version cannot continue the session: the
/// client gets a clear error, and then 404 so that it starts over.
#[tokio::test]
async fn a_protocol_version_change_on_revive_closes_the_session() {
    let dir = temp_dir("version");
    let forced = dir.join("version");
    let gw = start(echo_with_env(&[("TETHER_ECHO_VERSION_FILE", &forced)])).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    std::fs::write(&forced, "2025-06-18").expect("downgrade the server");
    kill9(only_child(&gw));
    eventually("the child's death is noticed", || gw.manager.live().iter().all(|s| !s.upstream_alive())).await;
    let r = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "x"}})).await;
    assert_eq!(r.answer["error"]["data"]["reason"], "protocol_version_changed", "{}", r.answer);
    assert_eq!(r.answer["error"]["data"]["was"], "2025-11-25");
    assert_eq!(r.answer["error"]["data"]["now"], "2025-06-18");
    eventually("the session is closed", || gw.manager.live_count() == 0).await;
    assert_eq!(c.request("tools/list", json!({})).await.status, StatusCode::NOT_FOUND);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// No request hangs: one the upstream never answers ends with the timeout error, and the
/// upstream is told to cancel it.
#[tokio::test]
async fn a_request_that_outlives_the_timeout_ends_with_a_clear_error() {
    let mut cfg = stdio_config();
    cfg.session.request_timeout = Duration::from_millis(400);
    let gw = start(cfg).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let r = c.request("tools/call", json!({"name": "work", "arguments": {"ms": 3000}})).await;
    assert_eq!(r.answer["error"]["code"], -32012, "{}", r.answer);
    assert_eq!(r.answer["error"]["data"]["reason"], "upstream_timeout");
    let mut legacy = Client::new(&gw, Front::LegacySse);
    legacy.connect().await;
    let r = legacy.request("tools/call", json!({"name": "work", "arguments": {"ms": 3000}})).await;
    assert_eq!(r.answer["error"]["code"], -32012, "legacy: {}", r.answer);
    // The session goes on.
    assert_eq!(text_of(&call(&mut c, "echo", json!({"message": "ok"})).await), "ok");
    gw.shutdown().await;
}

/// A stdout line that is not JSON is logged and skipped, not fatal.
#[tokio::test]
async fn stdout_noise_from_the_child_is_skipped() {
    let script = format!("echo 'starting up, not JSON'; echo '{{broken'; echo '[1,2]'; exec '{}'", echo_command()[0]);
    let gw = start(config(UpstreamSpec::Stdio { command: vec!["sh".into(), "-c".into(), script] })).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    assert_eq!(text_of(&call(&mut c, "echo", json!({"message": "clean"})).await), "clean");
    gw.shutdown().await;
}

/// A gateway whose child (tether-echo under `sh`) left a `sleep` in its process group, an
/// initialized client, and the grandchild's pid.
async fn with_grandchild(dir: &std::path::Path) -> (tether::Gateway, Client, u32) {
    let pidfile = dir.join("grandchild.pid");
    let script = format!("sleep 300 & echo $! > '{}'; exec '{}'", pidfile.display(), echo_command()[0]);
    let gw = start(config(UpstreamSpec::Stdio { command: vec!["sh".into(), "-c".into(), script] })).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let grandchild: u32 = std::fs::read_to_string(&pidfile).expect("pid file").trim().parse().expect("pid");
    (gw, c, grandchild)
}

/// Closing a session stops the child's whole process group, grandchildren included.
#[tokio::test]
async fn closing_a_session_kills_the_childs_process_group() {
    let dir = temp_dir("pgroup");
    let (gw, mut c, grandchild) = with_grandchild(&dir).await;
    assert!(std::path::Path::new(&format!("/proc/{grandchild}")).exists());
    assert_eq!(c.close().await, StatusCode::OK);
    eventually("the grandchild is gone", || !runs(grandchild)).await;
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A child that dies on its own takes its group with it: the grandchild it left is killed
/// (before the child is reaped, so the group id is still the child's), and the session revives.
#[tokio::test]
async fn a_crashed_childs_grandchildren_are_killed_with_it() {
    let dir = temp_dir("pgroup-crash");
    let (gw, mut c, grandchild) = with_grandchild(&dir).await;
    assert!(runs(grandchild));
    kill9(only_child(&gw));
    eventually("the grandchild is gone with its parent", || !runs(grandchild)).await;
    assert_eq!(text_of(&call(&mut c, "echo", json!({"message": "again"})).await), "again");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Paused time: the idle reaper releases the upstream once `upstream_idle` has passed without
/// use, not before; the session stays and the next call revives it.
#[tokio::test]
async fn idle_reaping_follows_the_clock() {
    let mut cfg = stdio_config();
    cfg.session.upstream_idle = Duration::from_secs(600);
    // Hibernation (also 10 min by default) would take the idle session out of memory too;
    // this test is about the upstream's reaper alone.
    cfg.session.hibernate_after = Duration::from_secs(3600);
    let gw = start(cfg).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    set_state(&mut c).await;
    let pid = only_child(&gw);
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(570)).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(gw.manager.live()[0].upstream_alive(), "still there after 9.5 min");
    tokio::time::advance(Duration::from_secs(61)).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    tokio::time::resume();
    eventually("the idle child is stopped", || !std::path::Path::new(&format!("/proc/{pid}")).exists()).await;
    assert_eq!(gw.manager.live_count(), 1, "the session stays");
    assert_state_replayed(&mut c).await;
    gw.shutdown().await;
}
