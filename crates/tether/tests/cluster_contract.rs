//! The cluster primitives' contract, run against memory (one process), Postgres and Redis
//! (each test in its own namespace): ownership leases with fencing epochs whose expiry the
//! store's clock decides, bulk renewal and release, writes refused on a stale epoch, the
//! replica registry, and tail wake-ups that resume after their connection is killed.

mod shared_stores;

use std::sync::Arc;
use std::time::Duration;

use shared_stores::{Cleanup, kill_pg_listener, kill_redis_subscriber, within};
use tether::session::record::{SessionRecord, SessionState, Transport};
use tether::session::store::{Replay, StoreError};
use tether::store::cluster::{Claim, ClusterStore, ReplicaId, Wake};
use tether::store::{MemoryStore, PostgresStore, RedisStore};

const LONG: Duration = Duration::from_secs(30);

fn won(c: Claim) -> u64 {
    match c {
        Claim::Won { epoch } => epoch,
        Claim::Held(l) => panic!("expected to win, held by {l:?}"),
    }
}

/// Claims `session` for `me` until it wins (the previous lease expiring by the store's clock);
/// fails after 10 s.
async fn claim_when_expired(store: &dyn ClusterStore, session: &str, me: &ReplicaId) -> u64 {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Claim::Won { epoch } = store.claim(session, me, LONG).await.expect("claim") {
            return epoch;
        }
        assert!(tokio::time::Instant::now() < end, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn is_fenced(r: Result<(), StoreError>) -> bool {
    matches!(r, Err(StoreError::Fenced { .. }))
}

async fn leases_fence_stale_owners(store: Arc<dyn ClusterStore>) {
    let (a, b) = (ReplicaId::new("a"), ReplicaId::new("b"));
    let rec = SessionRecord::new(Transport::StreamableHttp);
    let s = rec.id.as_str();
    store.create(&rec).await.expect("create");

    let e1 = won(store.claim(s, &a, LONG).await.expect("claim"));
    match store.claim(s, &b, LONG).await.expect("claim") {
        Claim::Held(l) => {
            assert_eq!((l.owner.clone(), l.epoch), (a.clone(), e1), "b is told who holds it");
            assert!(l.left_ms > 0 && l.left_ms <= LONG.as_millis() as u64, "{l:?}");
        }
        Claim::Won { .. } => panic!("two owners at once"),
    }
    assert_eq!(won(store.claim(s, &a, LONG).await.expect("reclaim")), e1, "the owner renews, same epoch");
    store.append_fenced(s, "i.1", 1, b"{\"n\":1}", false, None, e1).await.expect("owner writes");
    let st = SessionState { log_level: Some("debug".into()), subscriptions: Default::default() };
    store.set_state_fenced(s, &st, e1).await.expect("owner sets state");

    // A restarted `a` is another incarnation: it does not hold the lease.
    assert!(matches!(store.claim(s, &ReplicaId::new("a"), LONG).await.expect("claim"), Claim::Held(_)));

    // Released, then claimed by b for a short time: the epoch rises and a's writes are refused.
    assert!(store.release(s, &a).await.expect("release"));
    assert!(!store.release(s, &a).await.expect("release twice"), "nothing left to release");
    let e2 = won(store.claim(s, &b, Duration::from_millis(300)).await.expect("claim"));
    assert!(e2 > e1, "a new owner gets a higher epoch ({e1} then {e2})");
    assert!(is_fenced(store.append_fenced(s, "i.1", 2, b"{\"n\":2}", false, None, e1).await), "stale epoch");
    let other = SessionState { log_level: Some("error".into()), subscriptions: Default::default() };
    assert!(is_fenced(store.set_state_fenced(s, &other, e1).await), "stale epoch");

    // b's short lease expires by the store's clock; a takes over with a higher epoch.
    let e3 = claim_when_expired(store.as_ref(), s, &a).await;
    assert!(e3 > e2, "{e2} then {e3}");
    assert!(is_fenced(store.append_fenced(s, "i.1", 3, b"{\"n\":3}", false, None, e2).await), "expired owner");
    store.append_fenced(s, "i.1", 4, b"{\"n\":4}", true, None, e3).await.expect("the new owner writes");
    let lease = store.lease(s).await.expect("lease").expect("held");
    assert_eq!((lease.owner, lease.epoch), (a.clone(), e3));

    let Replay::Events(ev) = store.replay(s, "i.1", 0, 10).await.expect("replay") else { panic!("gone") };
    assert_eq!(ev.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 4], "no fenced write was stored");
    let got = store.get(s).await.expect("get").expect("record");
    assert_eq!(got.state, st, "the fenced state write was not made");

    // Fenced appends can evict a finished stream like plain ones.
    store.append_fenced(s, "i.2", 5, b"{}", true, Some("i.1"), e3).await.expect("evicting write");
    assert_eq!(store.replay(s, "i.1", 0, 10).await.expect("replay"), Replay::Gone);
    // A session nobody ever claimed refuses fenced writes.
    assert!(is_fenced(store.append_fenced("ffffffffffffffffffffffffffffffff", "i.1", 1, b"{}", true, None, 1).await));
}

async fn leases_renew_and_release_in_bulk(store: Arc<dyn ClusterStore>) {
    let (a, b) = (ReplicaId::new("a"), ReplicaId::new("b"));
    let short = Duration::from_millis(400);
    let mut mine: Vec<String> = (0..3).map(|_| tether::session::record::new_session_id()).collect();
    mine.sort();
    for s in &mine {
        won(store.claim(s, &a, short).await.expect("claim"));
    }
    let theirs = tether::session::record::new_session_id();
    won(store.claim(&theirs, &b, LONG).await.expect("claim"));
    assert_eq!(store.renew_all(&a, LONG).await.expect("renew"), mine, "one call renews all of a's leases");
    // Past the first TTL the renewed leases still hold.
    tokio::time::sleep(short * 2).await;
    for s in &mine {
        assert!(matches!(store.claim(s, &b, LONG).await.expect("claim"), Claim::Held(_)), "renewed lease lost");
    }
    // A lease left to expire is lost: not renewed, and claimable.
    let lapsed = tether::session::record::new_session_id();
    won(store.claim(&lapsed, &a, Duration::from_millis(100)).await.expect("claim"));
    claim_when_expired(store.as_ref(), &lapsed, &b).await;
    assert_eq!(store.renew_all(&a, LONG).await.expect("renew"), mine, "the lost lease is not renewed");

    assert_eq!(store.release_all(&a).await.expect("release all"), 3);
    assert!(store.renew_all(&a, LONG).await.expect("renew").is_empty());
    for s in &mine {
        assert!(store.lease(s).await.expect("lease").is_none(), "released at once");
        won(store.claim(s, &b, LONG).await.expect("claimable at once"));
    }
    assert_eq!(store.renew_all(&b, LONG).await.expect("renew").len(), 5);
}

async fn the_registry_lists_live_incarnations(store: Arc<dyn ClusterStore>) {
    let a = ReplicaId::new("replica-a");
    let b = ReplicaId::new("replica-b");
    store.register(&a, "10.0.0.1:7000").await.expect("register");
    store.register(&b, "10.0.0.2:7000").await.expect("register");
    assert!(store.heartbeat(&a).await.expect("heartbeat"));
    let all = store.replicas().await.expect("list");
    assert_eq!(
        all.iter().map(|r| (r.replica.clone(), r.addr.as_str())).collect::<Vec<_>>(),
        vec![(a.clone(), "10.0.0.1:7000"), (b.clone(), "10.0.0.2:7000")]
    );
    assert!(all.iter().all(|r| r.heartbeat_age_ms < 60_000), "{all:?}");

    // A restart of a is a new incarnation: the old one's heartbeat is refused.
    let a2 = ReplicaId::new("replica-a");
    store.register(&a2, "10.0.0.1:7001").await.expect("register");
    assert!(!store.heartbeat(&a).await.expect("heartbeat"), "the old incarnation is gone");
    assert!(store.heartbeat(&a2).await.expect("heartbeat"));
    store.deregister(&a).await.expect("a stale deregister is harmless");
    store.deregister(&b).await.expect("deregister");
    let all = store.replicas().await.expect("list");
    assert_eq!(
        all.iter().map(|r| (r.replica.clone(), r.addr.as_str())).collect::<Vec<_>>(),
        vec![(a2.clone(), "10.0.0.1:7001")]
    );
}

/// Waits for a wake-up of `session`/`stream` (skipping others); fails after 10 s.
async fn woken(rx: &mut tokio::sync::broadcast::Receiver<Wake>, session: &str, stream: &str) {
    let want = Wake::Stream { session: session.into(), stream: stream.into() };
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Ok(w) if w == want => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("wake-ups ended: {e}"),
            }
        }
    })
    .await
    .expect("no wake-up");
}

async fn appends_wake_tailers(store: Arc<dyn ClusterStore>) {
    let mut rx = store.wakeups();
    let s = tether::session::record::new_session_id();
    store.append(&s, "i.1", 1, b"{}", false).await.expect("append");
    woken(&mut rx, &s, "i.1").await;
    store.append_evicting(&s, "g.2", 2, b"{}", false, "i.1").await.expect("append");
    woken(&mut rx, &s, "g.2").await;
    let e = won(store.claim(&s, &ReplicaId::new("a"), LONG).await.expect("claim"));
    store.append_fenced(&s, "i.3", 3, b"{}", true, None, e).await.expect("append");
    woken(&mut rx, &s, "i.3").await;
}

/// Kills the notify connection (`kill` returns how many it ended), then sees a `Wake::All`
/// (re-read everything: wake-ups may have been lost) and wake-ups again.
async fn wakeups_resume_after_the_connection_is_killed<F>(store: Arc<dyn ClusterStore>, kill: F)
where
    F: std::future::Future<Output = usize>,
{
    let mut rx = store.wakeups();
    let s = tether::session::record::new_session_id();
    store.append(&s, "i.1", 1, b"{}", false).await.expect("append");
    woken(&mut rx, &s, "i.1").await;
    assert!(kill.await >= 1, "the notify connection was not found");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Ok(Wake::All) => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("wake-ups ended: {e}"),
            }
        }
    })
    .await
    .expect("the listener never came back");
    store.append(&s, "i.1", 2, b"{}", true).await.expect("append");
    woken(&mut rx, &s, "i.1").await;
}

macro_rules! cluster_backends {
    ($($backend:ident => $make:expr;)*) => {$(
        mod $backend {
            use super::*;
            async fn run<F: std::future::Future<Output = ()>>(f: impl FnOnce(Arc<dyn ClusterStore>) -> F) {
                let (store, _cleanup): (Arc<dyn ClusterStore>, Cleanup) = $make;
                within(f(store)).await
            }
            #[tokio::test]
            async fn leases_fence_stale_owners() { run(super::leases_fence_stale_owners).await }
            #[tokio::test]
            async fn leases_renew_and_release_in_bulk() { run(super::leases_renew_and_release_in_bulk).await }
            #[tokio::test]
            async fn the_registry_lists_live_incarnations() { run(super::the_registry_lists_live_incarnations).await }
            #[tokio::test]
            async fn appends_wake_tailers() { run(super::appends_wake_tailers).await }
        }
    )*};
}

cluster_backends! {
    memory => (Arc::new(MemoryStore::new()), Cleanup::None);
    postgres => { let (s, c) = shared_stores::postgres().await; (s as Arc<dyn ClusterStore>, c) };
    redis => { let (s, c) = shared_stores::redis().await; (s as Arc<dyn ClusterStore>, c) };
}

#[tokio::test]
async fn postgres_wakeups_resume_after_pg_terminate_backend() {
    let ns = shared_stores::namespace("pgkill");
    let store = Arc::new(PostgresStore::open(&shared_stores::pg_url(), &ns).await.expect("open"));
    let _cleanup = Cleanup::Postgres(ns.clone());
    within(wakeups_resume_after_the_connection_is_killed(store, kill_pg_listener(&ns))).await;
}

#[tokio::test]
async fn redis_wakeups_resume_after_client_kill() {
    let ns = shared_stores::namespace("rdkill");
    let store = Arc::new(RedisStore::open(&shared_stores::redis_url(), &ns).await.expect("open"));
    let _cleanup = Cleanup::Redis(ns.clone());
    within(wakeups_resume_after_the_connection_is_killed(store, kill_redis_subscriber(&ns))).await;
}

#[tokio::test]
async fn replicas_starting_at_once_migrate_once() {
    let ns = shared_stores::namespace("pgmig");
    let _cleanup = Cleanup::Postgres(ns.clone());
    let url = shared_stores::pg_url();
    let opens = (0..4).map(|_| PostgresStore::open(&url, &ns));
    let stores = within(futures_util::future::join_all(opens)).await;
    assert!(
        stores.iter().all(Result::is_ok),
        "{:?}",
        stores.iter().filter_map(|r| r.as_ref().err()).collect::<Vec<_>>()
    );
    let version = within(shared_stores::pg_exec(&format!("SELECT version FROM \"{ns}\".schema_version"))).await;
    assert_eq!(version.expect("version"), vec!["1".to_owned()], "one schema-version row");
}

#[tokio::test]
async fn an_unreachable_store_stops_startup_with_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let err = within(PostgresStore::open(&format!("postgres://app:pw@127.0.0.1:{port}/test"), "tether"))
        .await
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(text.contains(&format!("127.0.0.1:{port}")) && !text.contains(":pw@"), "{text}");
    let err = within(RedisStore::open(&format!("redis://127.0.0.1:{port}"), "tether")).await.err().expect("refused");
    assert!(format!("{err:#}").contains(&format!("127.0.0.1:{port}")), "{err:#}");
}

#[tokio::test]
async fn redis_closed_records_expire_and_open_ones_do_not() {
    use tether::session::record::CloseReason;
    use tether::session::store::SessionStore;
    let ns = shared_stores::namespace("rdexp");
    let store = RedisStore::open(&shared_stores::redis_url(), &ns).await.expect("open");
    let _cleanup = Cleanup::Redis(ns.clone());
    let (open, closed) = (SessionRecord::new(Transport::StreamableHttp), SessionRecord::new(Transport::LegacySse));
    within(async {
        store.create(&open).await.expect("create");
        store.create(&closed).await.expect("create");
        store.close(&closed.id, tether::session::record::now_ms(), CloseReason::ClientClosed).await.expect("close");
        let client = ::redis::Client::open(shared_stores::redis_url()).expect("client");
        let mut c = client.get_multiplexed_async_connection().await.expect("connect");
        let ttl = |id: &str| ::redis::cmd("PTTL").arg(format!("{ns}:rec:{id}")).to_owned();
        let open_ttl: i64 = ttl(&open.id).query_async(&mut c).await.expect("pttl");
        let closed_ttl: i64 = ttl(&closed.id).query_async(&mut c).await.expect("pttl");
        assert_eq!(open_ttl, -1, "an open record never expires");
        assert!(
            closed_ttl > 0 && closed_ttl <= tether::store::redis::CLOSED_RECORD_TTL.as_millis() as i64,
            "{closed_ttl}"
        );
    })
    .await;
}
