//! Cluster mode end to end: several `tether serve` processes on one shared store (Postgres,
//! then Redis; each test in its own namespace), each with its internal hop on loopback and a
//! short lease TTL. A session created on one replica is served there only — its stdio child
//! runs on that replica, as the admin APIs show — while clients reach it through any replica;
//! when its owner is killed (-9), the next call through another replica is served there after
//! the lease runs out, with the same session id and its state replayed; a DELETE through any
//! replica ends it on its owner.

mod cluster_support;
mod harness;
mod peer_support;
mod shared_stores;

use std::time::Duration;

use cluster_support::{ADMIN, LEASE_TTL, PyDriver, Replica, RoundRobin, pid_alive, text_of};
use harness::{Client, Front};
use serde_json::{Value, json};
use shared_stores::{Cleanup, within};

/// Two replicas: created on A, called through B (forwarded, including a stream), then A is
/// killed and B takes the session over once the lease runs out.
async fn forward_then_take_over(store: &str, ns: &str) {
    let dir = std::env::temp_dir().join(format!("tether-cluster-{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let a = Replica::start(&dir, store, ns, "a").await;
    let b = Replica::start(&dir, store, ns, "b").await;

    let mut c = Client::for_base(a.base(), Front::Streamable);
    c.connect().await;
    let sid = c.session.clone().expect("a session id");
    assert!(c.request("logging/setLevel", json!({"level": "debug"})).await.answer["result"].is_object());
    let child = a.child_of(&sid).await.expect("the child runs on the replica that created the session");

    c.base = b.base();
    let r = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "via b"}})).await;
    assert_eq!(text_of(&r.answer), "via b");
    let r = c.request("tools/call", json!({"name": "log", "arguments": {}})).await;
    assert_eq!(text_of(&r.answer), "logged at debug", "served by A's child, which has A's state");
    // A stream opened through B is A's, relayed as it comes.
    let mut stream = c.open_stream().await;
    c.request("tools/call", json!({"name": "burst", "arguments": {"count": 3, "ms": 2}})).await;
    for i in 1..=3 {
        let m = stream.next_message().await.expect("a burst message through the hop");
        assert_eq!(m["params"]["data"], i);
    }
    // Each event has an id: the owner stored it, its write fenced by its lease's epoch.
    assert!(stream.ids.len() >= 3, "{:?}", stream.ids);
    drop(stream);
    assert_eq!(a.metric("tether_cluster_fenced_writes_total").await, 0.0, "the owner's writes are all made");
    assert_eq!(b.child_of(&sid).await, None, "no child on B");
    assert_eq!(b.session(&sid).await["session"]["live"], false, "B holds no copy of the session");
    assert_eq!(a.child_of(&sid).await, Some(child), "one child, on A, throughout");
    assert!(b.metric("tether_cluster_forwards_total").await >= 4.0);
    assert_eq!(a.metric("tether_cluster_leases_held").await, 1.0);
    // Both admins tell who owns it, with which epoch.
    let (on_a, on_b) = (a.session(&sid).await["lease"].clone(), b.session(&sid).await["lease"].clone());
    assert_eq!((on_a["owner"].as_str(), on_a["here"].as_bool()), (Some(&*format!("127.0.0.1:{}", a.port)), Some(true)));
    assert_eq!(
        (on_b["owner"].clone(), on_b["epoch"].clone(), on_b["here"].as_bool()),
        (on_a["owner"].clone(), on_a["epoch"].clone(), Some(false))
    );
    assert!(on_a["leftMs"].as_u64().is_some_and(|ms| ms > 0), "{on_a}");
    // The registry is read every heartbeat: B shows up on A's board within one.
    let rows = within(async {
        loop {
            let v: Value =
                serde_json::from_str(&a.admin_get("/admin/replicas").await.text().await.expect("body")).expect("json");
            let rows = v["replicas"].as_array().cloned().unwrap_or_default();
            if rows.len() == 2 {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(rows.iter().filter(|r| r["role"] == "serving").count(), 2, "both serve: {rows:?}");
    let this = rows.iter().find(|r| r["this"] == true).unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(
        (this["leasesHeld"].as_u64(), this["address"].as_str()),
        (Some(1), Some(&*format!("127.0.0.1:{}", a.hop)))
    );

    let said = a.kill9().await;
    assert!(said.contains("cluster mode"), "{said}");
    let r = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "after a died"}})).await;
    assert_eq!(text_of(&r.answer), "after a died", "served by B once A's lease ran out");
    assert_eq!(c.session.as_deref(), Some(&*sid), "the same session: no re-initialize");
    let r = c.request("tools/call", json!({"name": "log", "arguments": {}})).await;
    assert_eq!(text_of(&r.answer), "logged at debug", "B revived it by replaying its stored state");
    let now = b.child_of(&sid).await.expect("the child runs on B now");
    assert_ne!(now, child);
    assert!(b.metric("tether_cluster_takeovers_total").await >= 1.0);
    assert_eq!(b.metric("tether_cluster_leases_held").await, 1.0);
    let now = b.session(&sid).await["lease"].clone();
    assert_eq!(now["here"].as_bool(), Some(true), "{now}");
    assert!(now["epoch"].as_u64() > on_a["epoch"].as_u64(), "a new owner, a higher epoch: {now} {on_a}");
    b.kill9().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Three replicas: the session lives on A only while B and C serve its calls; a DELETE
/// through C ends it on A (its child stops) and every replica answers 404 after; so does an
/// operator's terminate on B's admin.
async fn delete_through_another_replica(store: &str, ns: &str) {
    let dir = std::env::temp_dir().join(format!("tether-cluster-{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let a = Replica::start(&dir, store, ns, "a").await;
    let b = Replica::start(&dir, store, ns, "b").await;
    let c3 = Replica::start(&dir, store, ns, "c").await;

    let mut c = Client::for_base(a.base(), Front::Streamable);
    c.connect().await;
    let sid = c.session.clone().expect("a session id");
    let child = a.child_of(&sid).await.expect("a child on A");
    for (r, name) in [(&b, "b"), (&c3, "c"), (&a, "a")] {
        c.base = r.base();
        let said = format!("through {name}");
        let ans = c.request("tools/call", json!({"name": "echo", "arguments": {"message": said}})).await;
        assert_eq!(text_of(&ans.answer), said);
    }
    assert_eq!((b.child_of(&sid).await, c3.child_of(&sid).await), (None, None), "children on B or C");
    assert_eq!(a.child_of(&sid).await, Some(child));

    c.base = c3.base();
    assert_eq!(c.close().await, reqwest::StatusCode::OK, "DELETE through C");
    let on_a = a.session(&sid).await;
    assert_eq!(on_a["session"]["state"], "closed", "{on_a}");
    within(async {
        while pid_alive(child) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(a.metric("tether_cluster_leases_held").await, 0.0, "the lease was given back");
    for r in [&a, &b, &c3] {
        let mut again = Client::for_base(r.base(), Front::Streamable);
        again.session = Some(sid.clone());
        let st = again.request("tools/list", json!({})).await.status;
        assert_eq!(st, reqwest::StatusCode::NOT_FOUND, "the session is gone on {}", r.base());
        again.session = Some("not-a-session-id;drop".into());
        let st = again.request("tools/list", json!({})).await.status;
        assert!(st == reqwest::StatusCode::NOT_FOUND || st == reqwest::StatusCode::BAD_REQUEST, "{st}");
    }

    // An operator's terminate on B's admin ends a session A owns, on A.
    let mut d = Client::for_base(a.base(), Front::Streamable);
    d.connect().await;
    let sid = d.session.clone().expect("a session id");
    let child = a.child_of(&sid).await.expect("a child on A");
    let url = format!("http://127.0.0.1:{}/admin/sessions/{sid}", b.admin);
    let r = within(reqwest::Client::new().delete(url).bearer_auth(ADMIN).send()).await.expect("admin answers");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    within(async {
        while pid_alive(child) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(a.session(&sid).await["session"]["live"], false);
    d.base = c3.base();
    assert_eq!(d.request("tools/list", json!({})).await.status, reqwest::StatusCode::NOT_FOUND);
    for r in [a, b, c3] {
        r.kill9().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A scenario as two tests, `NAME::postgres` and `NAME::redis`, each in its own namespace.
macro_rules! on_both_stores {
    ($name:ident, $prefix:literal, $scenario:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn postgres() {
                let ns = shared_stores::namespace($prefix);
                let _cleanup = Cleanup::Postgres(ns.clone());
                within($scenario(&shared_stores::pg_url(), &ns)).await;
            }

            #[tokio::test]
            async fn redis() {
                let ns = shared_stores::namespace($prefix);
                let _cleanup = Cleanup::Redis(ns.clone());
                within($scenario(&shared_stores::redis_url(), &ns)).await;
            }
        }
    };
}

on_both_stores!(two_replicas_forward_then_take_over, "cl2", forward_then_take_over);

on_both_stores!(three_replicas_delete_anywhere, "cl3", delete_through_another_replica);

/// The official Python client (`tests/peers/py_session.py`) keeps one session through a
/// per-request round-robin balancer in front of two replicas: its calls land on both and are
/// all served by the owner's one child; the owner is killed (-9), and its next calls are served
/// by the other replica, on the same session — never a 404, never a second session.
async fn python_client_through_a_balancer(store: &str, ns: &str) {
    let dir = std::env::temp_dir().join(format!("tether-cluster-{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let peers = peer_support::peers(dir.clone(), &[]);
    let a = Replica::start(&dir, store, ns, "a").await;
    let b = Replica::start(&dir, store, ns, "b").await;
    let lb = RoundRobin::start(vec![a.base(), b.base()]).await;

    let mut py = PyDriver::start(&peers, &dir, &lb.url(), "cluster-client").await;

    let mut calls = Vec::new();
    for i in 0..6 {
        calls.push(py.call(&format!("before-{i}")).await);
    }
    let listed = a.admin_get("/admin/sessions?state=all").await.text().await.expect("list");
    let listed: Value = serde_json::from_str(&listed).expect("json");
    let sessions = listed["sessions"].as_array().cloned().unwrap_or_default();
    assert_eq!(sessions.len(), 1, "one session: {listed}");
    let sid = sessions[0]["id"].as_str().expect("id").to_owned();
    let (on_a, on_b) = (a.child_of(&sid).await, b.child_of(&sid).await);
    assert!(on_a.is_some() != on_b.is_some(), "one child, on one replica: {on_a:?} {on_b:?}");
    let (owner, other) = if on_a.is_some() { (a, b) } else { (b, a) };
    assert!(other.metric("tether_cluster_forwards_total").await >= 1.0, "calls landed on the other replica");

    owner.kill9().await;
    for i in 0..4 {
        calls.push(py.call(&format!("after-{i}")).await);
    }
    for (i, c) in calls.iter().enumerate() {
        let want = if i < 6 { format!("before-{i}") } else { format!("after-{}", i - 6) };
        assert_eq!((c["ok"].as_bool(), c["text"].as_str()), (Some(true), Some(&*want)), "{c}");
        let statuses = c["statuses"].as_array().cloned().unwrap_or_default();
        assert!(statuses.iter().all(|s| s != 404), "never a 404: {c}");
    }
    assert!(other.child_of(&sid).await.is_some(), "the session's child runs on the survivor");
    let listed = other.admin_get("/admin/sessions?state=all").await.text().await.expect("list");
    let listed: Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed["sessions"].as_array().map(Vec::len), Some(1), "no second session: {listed}");

    py.quit().await;
    other.kill9().await;
    let _ = std::fs::remove_dir_all(dir);
}

on_both_stores!(python_client_through_a_balancer, "clpy", python_client_through_a_balancer);

/// The owner is stopped (SIGSTOP) past its lease: a tool call through the other replica,
/// forwarded to it, is not left hanging — once the lease runs out it ends with `-32011` (the
/// owner may have taken it before it stopped: it is not sent again, lest it run twice), and the
/// next call is served by the other replica, which claimed the session. When the owner runs
/// again (SIGCONT) it finds its lease lost and stops its copy of the session and its child
/// (self-fence); what it receives is forwarded to the new owner.
async fn a_stopped_owner_is_fenced(store: &str, ns: &str) {
    use nix::sys::signal::Signal;
    let dir = std::env::temp_dir().join(format!("tether-cluster-{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let a = Replica::start(&dir, store, ns, "a").await;
    let b = Replica::start(&dir, store, ns, "b").await;
    let mut c = Client::for_base(a.base(), Front::Streamable);
    c.connect().await;
    let sid = c.session.clone().expect("a session id");
    assert!(c.request("logging/setLevel", json!({"level": "debug"})).await.answer["result"].is_object());
    let first = a.child_of(&sid).await.expect("a child on A");

    a.signal(Signal::SIGSTOP);
    c.base = b.base();
    let r = c.request("tools/call", json!({"name": "log", "arguments": {}})).await;
    assert_eq!(r.answer["error"]["code"], -32011, "may or may not have run on A: {}", r.answer);
    let r = c.request("tools/call", json!({"name": "log", "arguments": {}})).await;
    assert_eq!(text_of(&r.answer), "logged at debug", "served by B, its state replayed");
    let second = b.child_of(&sid).await.expect("a child on B");
    a.signal(Signal::SIGCONT);
    within(async {
        while pid_alive(first) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(a.metric("tether_cluster_fenced_total").await >= 1.0);
    assert_eq!(a.session(&sid).await["session"]["live"], false, "A dropped its copy");
    c.base = a.base();
    let r = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "through a again"}})).await;
    assert_eq!(text_of(&r.answer), "through a again");
    assert_eq!((a.child_of(&sid).await, b.child_of(&sid).await), (None, Some(second)), "one child, on B");
    for r in [a, b] {
        r.kill9().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

on_both_stores!(a_stopped_owner_is_fenced, "clstop", a_stopped_owner_is_fenced);

/// With `--cluster-secret-file`, the hop refuses a request without the secret, and replicas
/// forward with it. A SIGTERM drains: the replica gives its leases back as it stops, and the
/// other serves the session next (no lease to wait out: the TTL here is long).
async fn secret_and_drain(store: &str, ns: &str) {
    let dir = std::env::temp_dir().join(format!("tether-cluster-{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let secret = dir.join("hop.secret");
    std::fs::write(&secret, "a-cluster-secret-for-the-test\n").expect("secret");
    let secret = secret.to_str().expect("utf-8 path");
    let flags = ["--cluster-secret-file", secret, "--lease-ttl", "40s"];
    let mut a = Replica::start_with(&dir, store, ns, "a", &flags).await;
    let b = Replica::start_with(&dir, store, ns, "b", &flags).await;

    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": harness::init_params()});
    let direct = within(
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/mcp", a.hop))
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(init.to_string())
            .send(),
    )
    .await
    .expect("the hop answers");
    assert_eq!(direct.status(), reqwest::StatusCode::UNAUTHORIZED, "no secret, no hop");

    let mut c = Client::for_base(a.base(), Front::Streamable);
    c.connect().await;
    let sid = c.session.clone().expect("a session id");
    c.base = b.base();
    let r = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "with the secret"}})).await;
    assert_eq!(text_of(&r.answer), "with the secret");
    assert!(b.metric("tether_cluster_forwards_total").await >= 1.0);

    a.signal(nix::sys::signal::Signal::SIGTERM);
    let status = within(a.child.wait()).await.expect("reaped");
    assert!(status.success(), "{}", a.said());
    assert!(a.said().contains("session leases released leases=1"), "{}", a.said());
    let r = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "after the drain"}})).await;
    assert_eq!(text_of(&r.answer), "after the drain");
    assert_eq!(c.session.as_deref(), Some(&*sid));
    assert!(b.child_of(&sid).await.is_some(), "B serves it now");
    assert!(b.metric("tether_cluster_takeovers_total").await >= 1.0);
    b.kill9().await;
    let _ = std::fs::remove_dir_all(dir);
}

on_both_stores!(secret_and_drain, "cldrain", secret_and_drain);

/// The forward hop's cost, printed (not asserted): `cargo test -p tether --test cluster_serve
/// hop_cost -- --ignored --nocapture`. Sequential `echo` calls on one session, through its
/// owner and through the other replica, on Postgres.
#[tokio::test]
#[ignore]
#[allow(clippy::print_stdout)] // the measurement is the output
async fn hop_cost() {
    let ns = shared_stores::namespace("clbench");
    let _cleanup = Cleanup::Postgres(ns.clone());
    let dir = std::env::temp_dir().join(format!("tether-cluster-{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let a = Replica::start(&dir, &shared_stores::pg_url(), &ns, "a").await;
    let b = Replica::start(&dir, &shared_stores::pg_url(), &ns, "b").await;
    let mut c = Client::for_base(a.base(), Front::Streamable);
    c.connect().await;
    let run = async |c: &mut Client, base: String| -> (f64, f64) {
        c.base = base;
        for _ in 0..50 {
            c.request("tools/call", json!({"name": "echo", "arguments": {"message": "warm"}})).await;
        }
        let mut took = Vec::new();
        for _ in 0..500 {
            let t = std::time::Instant::now();
            c.request("tools/call", json!({"name": "echo", "arguments": {"message": "x"}})).await;
            took.push(t.elapsed().as_secs_f64() * 1e3);
        }
        took.sort_by(f64::total_cmp);
        (took[took.len() / 2], took[took.len() * 99 / 100])
    };
    let local = run(&mut c, a.base()).await;
    let forwarded = run(&mut c, b.base()).await;
    println!("local     p50 {:.2} ms  p99 {:.2} ms", local.0, local.1);
    println!("forwarded p50 {:.2} ms  p99 {:.2} ms", forwarded.0, forwarded.1);
    // Takeover: from the owner's kill -9 to the first answer through the other replica.
    let killed = std::time::Instant::now();
    a.kill9().await;
    c.request("tools/call", json!({"name": "echo", "arguments": {"message": "x"}})).await;
    println!("takeover after kill -9: {:.0} ms (lease TTL {LEASE_TTL})", killed.elapsed().as_secs_f64() * 1e3);
    b.kill9().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A session that expires on its owner (no DELETE) gives its lease back, and every replica
/// answers 404 for it.
async fn an_expired_session_gives_its_lease_back(store: &str, ns: &str) {
    let dir = std::env::temp_dir().join(format!("tether-cluster-{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let flags = ["--session-ttl", "1s"];
    let a = Replica::start_with(&dir, store, ns, "a", &flags).await;
    let b = Replica::start_with(&dir, store, ns, "b", &flags).await;
    let mut c = Client::for_base(a.base(), Front::Streamable);
    c.connect().await;
    let sid = c.session.clone().expect("a session id");
    assert_eq!(a.metric("tether_cluster_leases_held").await, 1.0);
    within(async {
        while a.metric("tether_cluster_leases_held").await > 0.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(a.session(&sid).await["lease"].is_null() || a.session(&sid).await["lease"]["here"] == false);
    for r in [&b, &a] {
        c.base = r.base();
        assert_eq!(c.request("tools/list", json!({})).await.status, reqwest::StatusCode::NOT_FOUND);
    }
    for r in [a, b] {
        r.kill9().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

on_both_stores!(an_expired_session_gives_its_lease_back, "clexp", an_expired_session_gives_its_lease_back);

/// A rolling restart behind the balancer: each of three replicas in turn gets SIGTERM (it
/// drains and gives its leases back) and starts again on the same ports, while the official
/// Python client keeps calling on one session — never a 404, never a second session, and one
/// child for it at the end.
async fn a_rolling_restart(store: &str, ns: &str) {
    let dir = std::env::temp_dir().join(format!("tether-cluster-{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let peers = peer_support::peers(dir.clone(), &[]);
    let mut replicas = Vec::new();
    for name in ["a", "b", "c"] {
        replicas.push(Replica::start(&dir, store, ns, name).await);
    }
    let lb = RoundRobin::start(replicas.iter().map(Replica::base).collect()).await;
    let mut py = PyDriver::start(&peers, &dir, &lb.url(), "rolling-client").await;
    let mut calls = Vec::new();
    for round in 0..3 {
        let old = replicas.remove(0);
        let ports = (old.port, old.hop, old.admin);
        old.signal(nix::sys::signal::Signal::SIGTERM);
        let mut old = old;
        let status = within(old.child.wait()).await.expect("reaped");
        assert!(status.success(), "a clean stop: {}", old.said());
        for i in 0..3 {
            calls.push((format!("r{round}-{i}"), py.call(&format!("r{round}-{i}")).await));
        }
        let name = ["a", "b", "c"][round];
        replicas.push(Replica::start_on(&dir, store, ns, name, &[], ports).await);
    }
    for (want, c) in &calls {
        assert_eq!((c["ok"].as_bool(), c["text"].as_str()), (Some(true), Some(want.as_str())), "{c}");
        let statuses = c["statuses"].as_array().cloned().unwrap_or_default();
        assert!(statuses.iter().all(|s| s != 404), "never a 404: {c}");
    }
    let listed = replicas[0].admin_get("/admin/sessions?state=all").await.text().await.expect("list");
    let listed: Value = serde_json::from_str(&listed).expect("json");
    let sessions = listed["sessions"].as_array().cloned().unwrap_or_default();
    assert_eq!(sessions.len(), 1, "no second session: {listed}");
    let sid = sessions[0]["id"].as_str().expect("id").to_owned();
    let mut children = 0;
    for r in &replicas {
        children += usize::from(r.child_of(&sid).await.is_some());
    }
    assert_eq!(children, 1, "one child for the session");
    py.quit().await;
    for r in replicas {
        r.kill9().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

on_both_stores!(a_rolling_restart, "clroll", a_rolling_restart);
