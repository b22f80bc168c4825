//! The shared stores of the tests: a Postgres store in a fresh schema and a Redis store under a
//! fresh key prefix, each dropped when its [`Cleanup`] goes, so tests run in parallel on one
//! server. The servers: `TETHER_TEST_POSTGRES` (default the local `test` database, trust auth)
//! and `TETHER_TEST_REDIS` (default the local Redis).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use tether::store::{PostgresStore, RedisStore};

/// The Postgres server of the tests.
pub fn pg_url() -> String {
    std::env::var("TETHER_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The Redis server of the tests.
pub fn redis_url() -> String {
    std::env::var("TETHER_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh namespace.
pub fn namespace(tag: &str) -> String {
    format!("t_{tag}_{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// Bounds a test body (a bug fails, it does not hang).
pub async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f).await.expect("the test took over 60 s")
}

/// Drops a namespace when it goes out of scope (on a thread of its own, since it may run in
/// an async test's unwinding).
pub enum Cleanup {
    /// Nothing to drop.
    None,
    /// A Postgres schema.
    Postgres(String),
    /// A Redis key prefix.
    Redis(String),
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (postgres, ns) = match self {
            Cleanup::Postgres(ns) => (true, std::mem::take(ns)),
            Cleanup::Redis(ns) => (false, std::mem::take(ns)),
            Cleanup::None => return,
        };
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                if postgres {
                    let _ = pg_exec(&format!("SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS \"{ns}\" CASCADE")).await;
                } else {
                    let _ = redis_drop_prefix(&ns).await;
                }
            })
        });
        let _ = done.join();
    }
}

/// Runs one statement on the test database; the rows of a query's first column as text.
pub async fn pg_exec(sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(conn);
    let rows = client.simple_query(sql).await?;
    drop(client);
    let _ = driver.await;
    Ok(rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect())
}

async fn redis_drop_prefix(ns: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(redis_url())?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{ns}:*")).query_async(&mut c).await?;
    for chunk in keys.chunks(500) {
        redis::cmd("DEL").arg(chunk).query_async::<()>(&mut c).await?;
    }
    Ok(())
}

/// A Postgres store in a fresh schema.
pub async fn postgres() -> (Arc<PostgresStore>, Cleanup) {
    let ns = namespace("pg");
    let store = PostgresStore::open(&pg_url(), &ns).await.expect("open postgres (is it on 127.0.0.1:5432?)");
    (Arc::new(store), Cleanup::Postgres(ns))
}

/// A Redis store under a fresh prefix.
pub async fn redis() -> (Arc<RedisStore>, Cleanup) {
    let ns = namespace("rd");
    let store = RedisStore::open(&redis_url(), &ns).await.expect("open redis (is it on 127.0.0.1:6379?)");
    (Arc::new(store), Cleanup::Redis(ns))
}

/// Kills the Postgres LISTEN connection of namespace `ns`; how many backends were ended.
pub async fn kill_pg_listener(ns: &str) -> usize {
    pg_exec(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'tether-listen:{ns}'"
    ))
    .await
    .expect("pg_terminate_backend")
    .len()
}

/// Kills the Redis subscriber connection of namespace `ns` (`CLIENT KILL ID`); how many.
pub async fn kill_redis_subscriber(ns: &str) -> usize {
    let client = redis::Client::open(redis_url()).expect("client");
    let mut c = client.get_multiplexed_async_connection().await.expect("connect");
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut c).await.expect("client list");
    let name = format!("name=tether-sub:{ns}:wake");
    let mut killed = 0;
    for line in list.lines().filter(|l| l.split(' ').any(|f| f == name)) {
        if let Some(id) = line.split(' ').find_map(|f| f.strip_prefix("id=")) {
            let n: i64 =
                redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async(&mut c).await.expect("client kill");
            killed += n as usize;
        }
    }
    killed
}
