//! Session tests against the scripted fake upstream ([`crate::upstream::fake`]), with paused
//! tokio time: crashes at chosen points, the recovery policy carried out, deadlines, TTL, idle
//! reaping, backoff and the breaker. They run in milliseconds.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tether_protocol::Message;
use tether_protocol::error_code;
use tokio::sync::mpsc;

use super::record::Transport;
use super::{Deps, Manager, Outbound, SessionConfig, SessionHandle, Sink, StreamKind};
use crate::error::GatewayError;
use crate::stats::Stats;
use crate::store::memory::MemoryStore;
use crate::upstream::fake::{Act, Script};
use crate::upstream::{SendError, UpstreamSpec};

fn manager(script: &Script, tune: impl FnOnce(&mut SessionConfig)) -> Arc<Manager> {
    let mut config = SessionConfig::default();
    tune(&mut config);
    Manager::new(Deps {
        spec: UpstreamSpec::Fake(script.clone()),
        store: Arc::new(MemoryStore::new()),
        http: reqwest::Client::new(),
        config,
        stats: Arc::new(Stats::default()),
    })
}

fn request(id: u64, method: &str, params: Value) -> Message {
    let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
    Message::parse(body.to_string().as_bytes()).expect("a valid request")
}

/// Sends a request on its own SSE stream; returns what the stream carried: the messages before
/// the answer, and the answer.
async fn call(s: &SessionHandle, id: u64, method: &str, params: Value) -> (Vec<Value>, Value) {
    let (sink, mut rx) = Sink::channel(s.next_stream().await, StreamKind::Request);
    if let Err(e) = s.request(request(id, method, params), sink).await {
        return (Vec::new(), serde_json::from_slice(&e.to_message(None).to_bytes()).expect("json"));
    }
    answer(&mut rx).await
}

async fn answer(rx: &mut mpsc::Receiver<Outbound>) -> (Vec<Value>, Value) {
    let mut before = Vec::new();
    loop {
        let out = tokio::time::timeout(Duration::from_secs(600), rx.recv())
            .await
            .expect("an answer within the (paused) deadline")
            .expect("the stream stays open until its answer");
        let v: Value = serde_json::from_slice(&out.data).expect("json");
        if out.fin {
            return (before, v);
        }
        before.push(v);
    }
}

/// An initialized session.
async fn initialized(m: &Arc<Manager>) -> SessionHandle {
    let s = m.create(Transport::StreamableHttp).await.expect("a session");
    let params =
        json!({ "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": { "name": "t", "version": "0" } });
    let (_, init) = call(&s, 0, "initialize", params).await;
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25", "{init}");
    s
}

fn tool(name: &str) -> Value {
    json!({ "name": name, "arguments": {} })
}

fn crash_on(tool_name: &'static str, conn: u64, act: Act) -> impl Fn(&str, &Value, u64) -> Option<Act> {
    move |m, p, c| (m == "tools/call" && p["name"] == tool_name && c == conn).then(|| act.clone())
}

#[tokio::test(start_paused = true)]
async fn a_request_the_upstream_never_read_is_sent_again_whatever_it_is() {
    let script = Script::default().on(crash_on("write", 1, Act::CrashBeforeRead));
    let m = manager(&script, |_| {});
    let s = initialized(&m).await;
    let (_, a) = call(&s, 1, "tools/call", tool("write")).await;
    assert_eq!(a["result"]["echo"], "tools/call", "{a}");
    assert_eq!(a["id"], 1);
    assert_eq!(script.received("tools/call"), 1, "run once, on the revived upstream");
    assert_eq!(script.received("initialize"), 2, "the handshake was replayed");
    assert_eq!(s.revive_count(), 1);
}

/// A send from a task (HTTP) races the binding's end: the end, saying the request was never
/// read, comes first, while the send still counts as done. The request goes again; it is not
/// taken for one that may have run.
#[tokio::test(start_paused = true)]
async fn a_request_sent_from_a_task_that_its_bindings_end_calls_unread_is_sent_again() {
    let script = Script::default().sent_from_task().on(crash_on("write", 1, Act::EndUnread));
    let m = manager(&script, |_| {});
    let s = initialized(&m).await;
    let (_, a) = call(&s, 1, "tools/call", tool("write")).await;
    assert_eq!(a["result"]["echo"], "tools/call", "{a}");
    assert_eq!(script.log().iter().filter(|(c, x)| x == "tools/call" && *c == 2).count(), 1, "{:?}", script.log());
    assert_eq!(script.received("tools/list"), 0, "no annotations needed: it never ran");
    assert_eq!(m.deps().stats.requests_interrupted.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_unsafe_call_that_may_have_run_ends_with_upstream_restarted() {
    let script = Script::default().on(crash_on("write", 1, Act::CrashAfterRead));
    let m = manager(&script, |_| {});
    let s = initialized(&m).await;
    call(&s, 1, "tools/list", json!({})).await;
    let (_, a) = call(&s, 2, "tools/call", tool("write")).await;
    assert_eq!(a["error"]["code"], error_code::UPSTREAM_RESTARTED, "{a}");
    assert_eq!(a["error"]["data"]["reason"], "upstream_restarted");
    assert_eq!(a["id"], 2);
    assert_eq!(script.received("tools/call"), 1, "never repeated");
    assert_eq!(m.deps().stats.requests_interrupted.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_safe_call_is_retried_a_bounded_number_of_times() {
    let script =
        Script::default().on(|m, p, _| (m == "tools/call" && p["name"] == "read").then_some(Act::CrashAfterRead));
    let m = manager(&script, |_| {});
    let s = initialized(&m).await;
    call(&s, 1, "tools/list", json!({})).await;
    let (_, a) = call(&s, 2, "tools/call", tool("read")).await;
    assert_eq!(a["error"]["code"], error_code::UPSTREAM_RESTARTED, "{a}");
    let bound = usize::from(super::recovery::SAFE_RETRIES);
    assert_eq!(script.received("tools/call"), 1 + bound, "the first send and {bound} retries");
    assert_eq!(m.deps().stats.requests_retried.get(), bound as u64);
}

#[tokio::test(start_paused = true)]
async fn an_unannotated_tool_waits_for_the_revived_upstreams_annotations() {
    let script =
        Script::default().on(crash_on("read", 1, Act::CrashAfterRead)).on(crash_on("write", 2, Act::CrashAfterRead));
    let m = manager(&script, |_| {});
    let s = initialized(&m).await;
    // No tools/list yet: whether `read` is safe is learnt from the revived upstream.
    let (_, a) = call(&s, 1, "tools/call", tool("read")).await;
    assert_eq!(a["result"]["echo"], "tools/call", "read-only: retried; {a}");
    assert_eq!(script.received("tools/list"), 1);
    let (_, b) = call(&s, 2, "tools/call", tool("write")).await;
    assert_eq!(b["error"]["code"], error_code::UPSTREAM_RESTARTED, "not annotated: {b}");
    assert_eq!(script.received("tools/call"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_crash_mid_stream_keeps_what_was_streamed_and_retries_a_safe_call() {
    let script = Script::default().on(crash_on("read", 1, Act::CrashMidStream(2)));
    let m = manager(&script, |_| {});
    let s = initialized(&m).await;
    call(&s, 1, "tools/list", json!({})).await;
    let params = json!({ "name": "read", "arguments": {}, "_meta": { "progressToken": "p1" } });
    let (before, a) = call(&s, 2, "tools/call", params).await;
    assert_eq!(before.len(), 2, "both progress notifications reached the request's stream: {before:?}");
    assert!(before.iter().all(|n| n["method"] == "notifications/progress" && n["params"]["progressToken"] == "p1"));
    assert_eq!(a["result"]["echo"], "tools/call", "{a}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_upstream_meets_the_request_deadline() {
    let script = Script::default().on(|m, _, _| (m == "tools/call").then_some(Act::Silence));
    let m = manager(&script, |c| c.request_timeout = Duration::from_secs(30));
    let s = initialized(&m).await;
    let (sink, mut rx) = Sink::channel(s.next_stream().await, StreamKind::Request);
    s.request(request(1, "tools/call", tool("write")), sink).await.expect("sent");
    tokio::time::advance(Duration::from_secs(29)).await;
    s.expire_overdue().await;
    assert!(rx.try_recv().is_err(), "not overdue yet");
    tokio::time::advance(Duration::from_secs(2)).await;
    s.expire_overdue().await;
    let (_, a) = answer(&mut rx).await;
    assert_eq!(a["error"]["code"], error_code::UPSTREAM_TIMEOUT, "{a}");
    assert_eq!(script.received("notifications/cancelled"), 1, "the upstream is told to stop");
}

#[tokio::test(start_paused = true)]
async fn a_delayed_answer_arrives_after_its_delay() {
    let script = Script::default()
        .on(|m, _, _| (m == "prompts/get").then(|| Act::Answer(Duration::from_secs(5), json!({ "late": true }))));
    let m = manager(&script, |_| {});
    let s = initialized(&m).await;
    let started = tokio::time::Instant::now();
    let (_, a) = call(&s, 1, "prompts/get", json!({ "name": "x" })).await;
    assert_eq!(a["result"]["late"], true, "{a}");
    assert!(started.elapsed() >= Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn sessions_expire_on_tokio_time() {
    let script = Script::default();
    let m = manager(&script, |c| c.ttl = Duration::from_secs(3600));
    let s = initialized(&m).await;
    let id = s.id().to_owned();
    tokio::time::advance(Duration::from_secs(3000)).await;
    assert!(m.get(&id).await.is_ok(), "within the TTL");
    tokio::time::advance(Duration::from_secs(3601)).await;
    assert!(matches!(m.get(&id).await, Err(GatewayError::SessionNotFound)), "expired");
    assert!(s.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_idle_upstream_is_released_and_revived_on_next_use() {
    let script = Script::default();
    let m = manager(&script, |c| c.upstream_idle = Duration::from_secs(60));
    let s = initialized(&m).await;
    tokio::time::advance(Duration::from_secs(59)).await;
    m.reap_idle_upstreams().await;
    assert!(s.upstream_alive(), "not idle long enough");
    tokio::time::advance(Duration::from_secs(2)).await;
    m.reap_idle_upstreams().await;
    assert!(!s.upstream_alive(), "released");
    let (_, a) = call(&s, 1, "tools/list", json!({})).await;
    assert!(a["result"]["tools"].is_array(), "{a}");
    assert_eq!(script.connects(), 2);
    assert_eq!(script.received("initialize"), 2, "the handshake was replayed");
    assert_eq!(script.received("notifications/initialized"), 1, "replayed (the client sent none here)");
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_opens_the_breaker_until_the_cooldown_ends() {
    let script = Script::default().on(crash_on("write", 1, Act::CrashAfterRead));
    let m = manager(&script, |c| {
        c.restart.max_failures = 3;
        c.restart.cooldown = Duration::from_secs(30);
        c.request_timeout = Duration::from_secs(60);
    });
    let s = initialized(&m).await;
    call(&s, 1, "tools/list", json!({})).await;
    // The child dies with the call (failure 1), then refuses to start (failures 2 and 3).
    script.refuse_next(2);
    let (_, a) = call(&s, 2, "tools/call", tool("write")).await;
    assert_eq!(a["error"]["code"], error_code::UPSTREAM_RESTARTED, "{a}");
    let started = tokio::time::Instant::now();
    let (_, b) = call(&s, 3, "tools/list", json!({})).await;
    assert_eq!(b["error"]["data"]["reason"], "crash_loop", "{b}");
    assert!(started.elapsed() >= Duration::from_millis(50), "the second consecutive restart backed off");
    assert_eq!(m.deps().stats.crash_loops.get(), 1);
    let (_, c) = call(&s, 4, "tools/list", json!({})).await;
    assert_eq!(c["error"]["data"]["reason"], "crash_loop", "still open: {c}");
    tokio::time::advance(Duration::from_secs(31)).await;
    let (_, d) = call(&s, 5, "tools/list", json!({})).await;
    assert!(d["result"]["tools"].is_array(), "half-open, and the upstream starts again: {d}");
}

#[tokio::test(start_paused = true)]
async fn a_version_change_on_revive_closes_the_session_from_within() {
    let script = Script::default().on(crash_on("write", 1, Act::CrashAfterRead)).on(|m, _, conn| {
        (m == "initialize" && conn > 1)
            .then(|| Act::Answer(Duration::ZERO, json!({ "protocolVersion": "2025-06-18", "capabilities": {} })))
    });
    let m = manager(&script, |_| {});
    let s = initialized(&m).await;
    let id = s.id().to_owned();
    call(&s, 1, "tools/list", json!({})).await;
    call(&s, 2, "tools/call", tool("write")).await;
    let (_, a) = call(&s, 3, "tools/list", json!({})).await;
    assert_eq!(a["error"]["data"]["reason"], "protocol_version_changed", "{a}");
    assert!(s.is_closed());
    assert_eq!(m.live_count(), 0, "no longer counted as live");
    assert!(matches!(m.get(&id).await, Err(GatewayError::SessionNotFound)));
    let stored = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r = m.deps().store.get(&id).await.expect("store").expect("record");
            if r.closed_at.is_some() {
                return r;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the record is closed");
    assert_eq!(stored.close_reason, Some(super::record::CloseReason::UpstreamFailed));
    assert_eq!(m.deps().stats.sessions_closed.get(), 1, "its end is counted once");
}

#[tokio::test(start_paused = true)]
async fn a_forgotten_session_is_reopened_once_then_its_error_goes_through() {
    let forgot = || Act::Error(error_code::SESSION_NOT_FOUND, "Session not found", None);
    let script = Script::default()
        .on(move |m, p, c| (m == "tools/call" && p["name"] == "write" && c == 1).then(forgot))
        .on(move |m, p, _| (m == "tools/call" && p["name"] == "lost").then(forgot));
    let m = manager(&script, |_| {});
    let s = initialized(&m).await;
    let (_, a) = call(&s, 1, "tools/call", tool("write")).await;
    assert_eq!(a["result"]["echo"], "tools/call", "not run the first time, so sent again: {a}");
    assert_eq!(script.connects(), 2);
    let (_, b) = call(&s, 2, "tools/call", tool("lost")).await;
    assert_eq!(b["error"]["code"], error_code::SESSION_NOT_FOUND, "once only: {b}");
    assert_eq!(script.received("tools/call"), 4);
}

#[tokio::test(start_paused = true)]
async fn a_remote_gateways_restart_error_is_retried_only_when_safe() {
    let restarted =
        || Act::Error(error_code::UPSTREAM_RESTARTED, "restarted", Some(json!({ "reason": "upstream_restarted" })));
    let script = Script::default().on(move |m, _, _| (m == "tools/call").then(restarted)).on(move |m, _, _| {
        static ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        (m == "prompts/get" && !ONCE.swap(true, std::sync::atomic::Ordering::Relaxed)).then(restarted)
    });
    let m = manager(&script, |_| {});
    let s = initialized(&m).await;
    call(&s, 1, "tools/list", json!({})).await;
    let (_, a) = call(&s, 2, "prompts/get", json!({ "name": "p" })).await;
    assert_eq!(a["result"]["echo"], "prompts/get", "safe: retried: {a}");
    let (_, b) = call(&s, 3, "tools/call", tool("write")).await;
    assert_eq!(b["error"]["code"], error_code::UPSTREAM_RESTARTED, "unsafe: passed through: {b}");
    assert_eq!(script.received("tools/call"), 1);
    assert_eq!(script.connects(), 1, "the local upstream never went away");
}

#[tokio::test(start_paused = true)]
async fn failed_sends_follow_the_policy() {
    let script = Script::default()
        .on(|m, p, c| {
            (m == "tools/call" && p["name"] == "write" && c == 1)
                .then(|| Act::FailSend(SendError::Unreachable("down".into())))
        })
        .on(|m, p, _| {
            (m == "tools/call" && p["name"] == "down").then(|| Act::FailSend(SendError::Unreachable("down".into())))
        })
        .on(|m, p, c| {
            (m == "tools/call" && p["name"] == "read" && c == 2)
                .then(|| Act::FailSend(SendError::Interrupted("reset".into())))
        })
        .on(|m, p, _| {
            (m == "tools/call" && p["name"] == "cut").then(|| Act::FailSend(SendError::Interrupted("reset".into())))
        });
    let m = manager(&script, |c| c.reconnect_attempts = Some(0));
    let s = initialized(&m).await;
    call(&s, 1, "tools/list", json!({})).await;
    let (_, a) = call(&s, 2, "tools/call", tool("write")).await;
    assert_eq!(a["result"]["echo"], "tools/call", "undelivered: sent again on a new connection: {a}");
    let (_, b) = call(&s, 3, "tools/call", tool("read")).await;
    assert_eq!(b["result"]["echo"], "tools/call", "interrupted but safe: retried: {b}");
    let (_, c) = call(&s, 4, "tools/call", tool("cut")).await;
    assert_eq!(c["error"]["code"], error_code::UPSTREAM_RESTARTED, "interrupted and unsafe: {c}");
    let (_, d) = call(&s, 5, "tools/call", tool("down")).await;
    assert_eq!(d["error"]["data"]["reason"], "upstream_unavailable", "undelivered three times: {d}");
}

#[tokio::test(start_paused = true)]
async fn a_crash_with_several_requests_in_flight_settles_each_by_the_policy() {
    let script = Script::default().on(crash_on("write", 1, Act::CrashAfterRead)).on(|m, _, c| {
        (m == "prompts/get" && c == 1).then(|| Act::Answer(Duration::from_secs(10), json!({ "late": true })))
    });
    let m = manager(&script, |_| {});
    let s = initialized(&m).await;
    call(&s, 1, "tools/list", json!({})).await;
    // A safe request waits on the first upstream when an unsafe call crashes it.
    let (sink, mut safe_rx) = Sink::channel(s.next_stream().await, StreamKind::Request);
    s.request(request(2, "prompts/get", json!({ "name": "p" })), sink).await.expect("sent");
    let (_, unsafe_answer) = call(&s, 3, "tools/call", tool("write")).await;
    assert_eq!(unsafe_answer["error"]["code"], error_code::UPSTREAM_RESTARTED, "{unsafe_answer}");
    let (_, safe_answer) = answer(&mut safe_rx).await;
    assert_eq!(safe_answer["result"]["echo"], "prompts/get", "retried on the revived upstream: {safe_answer}");
    assert_eq!(safe_answer["id"], 2);
    assert_eq!(script.received("prompts/get"), 2);
    assert_eq!(script.received("tools/call"), 1, "the unsafe call is never repeated");
    assert_eq!(s.revive_count(), 1, "one revive serves both");
}

#[tokio::test(start_paused = true)]
async fn a_change_notification_from_stdio_goes_to_the_standalone_stream_not_the_call_in_flight() {
    let notify = |tool_name: &'static str, name: &'static str, params: Value| {
        move |m: &str, p: &Value, _: u64| {
            (m == "tools/call" && p["name"] == tool_name)
                .then(|| Act::NotifyThenAnswer(name, params.clone(), json!({ "content": [] })))
        }
    };
    let script = Script::default()
        .on(notify("bump", "notifications/resources/updated", json!({ "uri": "test://a" })))
        .on(notify("log", "notifications/message", json!({ "level": "info", "data": "x" })));
    let m = manager(&script, |_| {});
    let s = initialized(&m).await;
    let (standalone, mut standalone_rx) = Sink::channel(s.next_stream().await, StreamKind::Standalone);
    drop(s.attach_standalone(standalone).await);
    let (before, a) = call(&s, 1, "tools/call", tool("bump")).await;
    assert!(a["result"].is_object(), "{a}");
    assert!(before.is_empty(), "the update is about the session, not the call: {before:?}");
    let out = tokio::time::timeout(Duration::from_secs(5), standalone_rx.recv())
        .await
        .expect("the update on the standalone stream")
        .expect("the standalone stream stays open");
    let v: Value = serde_json::from_slice(&out.data).expect("json");
    assert_eq!(v["method"], "notifications/resources/updated", "{v}");
    assert_eq!(v["params"]["uri"], "test://a", "{v}");
    // Anything else from stdio still goes to the request in flight, as it may well be its.
    let (before, _) = call(&s, 2, "tools/call", tool("log")).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["method"], "notifications/message", "{before:?}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_session_hibernates_and_its_next_request_wakes_it() {
    let script = Script::default();
    let m = manager(&script, |c| {
        c.upstream_idle = Duration::from_secs(60);
        c.hibernate_after = Duration::from_secs(120);
    });
    let s = initialized(&m).await;
    let id = s.id().to_owned();
    let before = s.next_stream().await;
    // Held (a request or a stream holds its handle): it stays.
    tokio::time::advance(Duration::from_secs(121)).await;
    m.reap_idle_upstreams().await;
    assert!(!s.upstream_alive(), "the upstream was reaped");
    m.reap_idle_upstreams().await;
    assert_eq!(m.live_count(), 1, "a held session does not hibernate");
    drop(s);
    m.reap_idle_upstreams().await;
    assert_eq!(m.live_count(), 0, "hibernated");
    assert_eq!(m.deps().stats.sessions_hibernated.get(), 1);
    // Its client's next request wakes it: no 404, no new handshake from the client.
    let s = m.get(&id).await.expect("woken, not 404");
    assert_eq!(m.deps().stats.sessions_woken.get(), 1);
    let (_, a) = call(&s, 1, "tools/list", json!({})).await;
    assert!(a["result"]["tools"].is_array(), "{a}");
    assert_eq!(script.received("initialize"), 2, "the handshake was replayed upstream");
    assert_eq!(s.last_revive().map(|(_, cause)| cause), Some("upstream_reaped"));
    assert!(s.next_stream().await > before, "stream numbers are not reused after waking");
}

#[tokio::test(start_paused = true)]
async fn a_session_with_a_live_upstream_or_recent_activity_does_not_hibernate() {
    let script = Script::default();
    let m = manager(&script, |c| {
        c.upstream_idle = Duration::from_secs(600);
        c.hibernate_after = Duration::from_secs(60);
    });
    let s = initialized(&m).await;
    drop(s);
    tokio::time::advance(Duration::from_secs(61)).await;
    m.reap_idle_upstreams().await;
    assert_eq!(m.live_count(), 1, "its upstream is still bound");
    let m2 = manager(&script, |c| {
        c.upstream_idle = Duration::from_secs(10);
        c.hibernate_after = Duration::from_secs(60);
    });
    let s = initialized(&m2).await;
    let id = s.id().to_owned();
    drop(s);
    tokio::time::advance(Duration::from_secs(11)).await;
    m2.reap_idle_upstreams().await;
    assert_eq!(m2.live_count(), 1, "idle for less than hibernate_after");
    let s = m2.get(&id).await.expect("live");
    let (_, a) = call(&s, 2, "tools/list", json!({})).await;
    assert!(a["result"]["tools"].is_array(), "{a}");
    drop(s);
    tokio::time::advance(Duration::from_secs(59)).await;
    m2.reap_idle_upstreams().await;
    assert_eq!(m2.live_count(), 1, "the call was activity");
    tokio::time::advance(Duration::from_secs(2)).await;
    m2.reap_idle_upstreams().await;
    assert_eq!(m2.live_count(), 0, "now it hibernates");
}
