//! Session store backends: memory (ephemeral), SQLite (the default, embedded, durable), and
//! Postgres and Redis (shared by several replicas). Each implements both [`SessionStore`] and
//! [`EventStore`] and passes the contract suite; memory, Postgres and Redis also implement the
//! cluster primitives ([`cluster::ClusterStore`]). `timed` wraps whichever is chosen to time its
//! writes for `/metrics`.
//!
//! [`SessionStore`]: crate::session::store::SessionStore
//! [`EventStore`]: crate::session::store::EventStore

pub mod cluster;
mod group_commit;
pub mod lock;
pub mod memory;
pub mod namespace;
pub mod postgres;
mod postgres_cluster;
pub mod redis;
mod redis_scripts;
mod redis_subscriber;
pub mod sqlite;
pub mod timed;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use cluster::ClusterStore;
pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use redis::RedisStore;
pub use sqlite::SqliteStore;

use crate::session::store::Store;

/// The default `--store-namespace`.
pub const DEFAULT_NAMESPACE: &str = "tether";

/// Which backend, from `--store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// In process memory.
    Memory,
    /// An SQLite file, and how long an event may wait for its commit once sent.
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The commit window of events (`--event-commit-window`); zero commits before sending.
        commit_window: Duration,
    },
    /// A Postgres database shared by replicas; its tables live in the schema `namespace`.
    Postgres {
        /// `postgres://USER@HOST:PORT/DB`.
        url: String,
        /// The schema (`--store-namespace`).
        namespace: String,
    },
    /// A Redis server shared by replicas; its keys start with `namespace:`.
    Redis {
        /// `redis://HOST:PORT[/N]`.
        url: String,
        /// The key prefix (`--store-namespace`).
        namespace: String,
    },
}

/// The default commit window: a crash loses at most this much of the events already sent,
/// and one commit carries every event of the window.
pub const DEFAULT_COMMIT_WINDOW: Duration = Duration::from_millis(5);

impl StoreSpec {
    /// Parses `memory`, an sqlx-style `sqlite://PATH` (`sqlite:///abs/path.db` is absolute;
    /// `sqlite://rel.db` is relative to the working directory), `postgres://…` or `redis://…`
    /// (namespace [`DEFAULT_NAMESPACE`]; see [`StoreSpec::with_namespace`]).
    pub fn parse(text: &str) -> Result<StoreSpec, String> {
        if text == "memory" {
            return Ok(StoreSpec::Memory);
        }
        let namespace = DEFAULT_NAMESPACE.to_owned();
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            text.parse::<tokio_postgres::Config>()
                .map_err(|e| format!("{}: not a Postgres URL: {e}", redact_url(text)))?;
            return Ok(StoreSpec::Postgres { url: text.to_owned(), namespace });
        }
        if text.starts_with("redis://") {
            ::redis::Client::open(text).map_err(|e| format!("{}: not a Redis URL: {e}", redact_url(text)))?;
            return Ok(StoreSpec::Redis { url: text.to_owned(), namespace });
        }
        if let Some(rest) = text.strip_prefix("sqlite://").or_else(|| text.strip_prefix("sqlite:")) {
            let path = rest.split('?').next().unwrap_or("");
            if path.is_empty() {
                return Err("sqlite:// needs a file path, e.g. sqlite:///var/lib/tether/sessions.db".into());
            }
            return Ok(StoreSpec::Sqlite { path: PathBuf::from(path), commit_window: DEFAULT_COMMIT_WINDOW });
        }
        Err(format!(
            "{:?}: use `memory`, `sqlite://PATH`, `postgres://USER@HOST:PORT/DB` or `redis://HOST:PORT[/N]`",
            redact_url(text)
        ))
    }

    /// The same store in `namespace` (a Postgres schema, a Redis key prefix; no effect on the
    /// others), checked.
    pub fn with_namespace(self, ns: &str) -> Result<StoreSpec, String> {
        cluster::check_namespace(ns)?;
        let namespace = ns.to_owned();
        Ok(match self {
            StoreSpec::Postgres { url, .. } => StoreSpec::Postgres { url, namespace },
            StoreSpec::Redis { url, .. } => StoreSpec::Redis { url, namespace },
            other => other,
        })
    }

    /// The namespace of a shared store; [`DEFAULT_NAMESPACE`] for the others.
    pub fn namespace(&self) -> &str {
        match self {
            StoreSpec::Postgres { namespace, .. } | StoreSpec::Redis { namespace, .. } => namespace,
            _ => DEFAULT_NAMESPACE,
        }
    }

    /// Whether several replicas can share this store.
    pub fn is_shared(&self) -> bool {
        matches!(self, StoreSpec::Postgres { .. } | StoreSpec::Redis { .. })
    }

    /// The default: a SQLite file in the platform's state directory.
    pub fn default_sqlite() -> StoreSpec {
        StoreSpec::Sqlite { path: state_dir().join("sessions.db"), commit_window: DEFAULT_COMMIT_WINDOW }
    }

    /// The same store with events committed within `window` (no effect on `memory`).
    pub fn with_commit_window(self, window: Duration) -> StoreSpec {
        match self {
            StoreSpec::Sqlite { path, .. } => StoreSpec::Sqlite { path, commit_window: window },
            other => other,
        }
    }

    /// The commit window of events; the default for a store that commits nothing.
    pub fn commit_window(&self) -> Duration {
        match self {
            StoreSpec::Sqlite { commit_window, .. } => *commit_window,
            _ => DEFAULT_COMMIT_WINDOW,
        }
    }

    /// This tether's state directory: the SQLite file's directory, else [`state_dir`]. A
    /// generated admin token goes there, so tethers with their own stores keep their own.
    pub fn state_dir(&self) -> PathBuf {
        match self {
            StoreSpec::Sqlite { path, .. } => match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            },
            _ => state_dir(),
        }
    }

    /// A short label, a password in a URL redacted.
    pub fn describe(&self) -> String {
        match self {
            StoreSpec::Memory => "memory".into(),
            StoreSpec::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            StoreSpec::Postgres { url, .. } | StoreSpec::Redis { url, .. } => redact_url(url),
        }
    }
}

/// A URL with its password, if any, replaced by `***` (for logs and `check-config`).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => url.to_owned(),
        // Unparsable: show the scheme only, since it may still hold a secret.
        Err(_) => url.split_once("://").map_or_else(|| "(unparsable URL)".to_owned(), |(s, _)| format!("{s}://…")),
    }
}

/// `$XDG_STATE_HOME/tether`, else `~/.local/state/tether`, else `./.tether`.
pub fn state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("tether");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/state/tether");
    }
    PathBuf::from(".tether")
}

/// Opens the configured backend. A SQLite file that cannot be opened, is corrupt, or has a
/// newer schema stops startup with an error that names the file and the fix.
pub async fn open(spec: &StoreSpec) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match spec {
        StoreSpec::Memory => Arc::new(MemoryStore::new()),
        StoreSpec::Sqlite { path, commit_window } => {
            Arc::new(SqliteStore::open_with_window(path, *commit_window).await?)
        }
        StoreSpec::Postgres { url, namespace } => Arc::new(PostgresStore::open(url, namespace).await?),
        StoreSpec::Redis { url, namespace } => Arc::new(RedisStore::open(url, namespace).await?),
    })
}

/// Opens a shared store (or memory) with its cluster primitives; `None` for SQLite, which
/// serves one process.
pub async fn open_cluster(spec: &StoreSpec) -> anyhow::Result<Option<Arc<dyn ClusterStore>>> {
    Ok(match spec {
        StoreSpec::Memory => Some(Arc::new(MemoryStore::new())),
        StoreSpec::Sqlite { .. } => None,
        StoreSpec::Postgres { url, namespace } => Some(Arc::new(PostgresStore::open(url, namespace).await?)),
        StoreSpec::Redis { url, namespace } => Some(Arc::new(RedisStore::open(url, namespace).await?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_like_sqlx() {
        assert_eq!(StoreSpec::parse("memory"), Ok(StoreSpec::Memory));
        let sqlite = |p: &str| StoreSpec::Sqlite { path: p.into(), commit_window: DEFAULT_COMMIT_WINDOW };
        assert_eq!(StoreSpec::parse("sqlite:///var/lib/t.db"), Ok(sqlite("/var/lib/t.db")));
        assert_eq!(StoreSpec::parse("sqlite://rel/t.db"), Ok(sqlite("rel/t.db")));
        assert_eq!(StoreSpec::parse("sqlite://t.db?mode=rwc"), Ok(sqlite("t.db")));
        assert!(StoreSpec::parse("sqlite://").is_err());
        assert!(StoreSpec::parse("mysql://x").is_err());
    }

    #[test]
    fn shared_store_urls_parse_with_a_namespace() {
        let pg = StoreSpec::parse("postgres://postgres@127.0.0.1:5432/test").expect("pg");
        assert_eq!(pg.namespace(), "tether");
        assert!(pg.is_shared());
        let pg = pg.with_namespace("blue").expect("ns");
        assert_eq!(
            pg,
            StoreSpec::Postgres { url: "postgres://postgres@127.0.0.1:5432/test".into(), namespace: "blue".into() }
        );
        let r = StoreSpec::parse("redis://127.0.0.1:6379/2").expect("redis").with_namespace("t2").expect("ns");
        assert_eq!(r.namespace(), "t2");
        assert!(StoreSpec::parse("memory").expect("m").with_namespace("Bad-Name").is_err());
    }

    #[test]
    fn a_password_in_a_store_url_is_never_shown() {
        let pg = StoreSpec::parse("postgres://app:hunter2@db:5432/test").expect("pg");
        assert!(!pg.describe().contains("hunter2"), "{}", pg.describe());
        assert!(pg.describe().contains("app:***@"), "{}", pg.describe());
        let r = StoreSpec::parse("redis://:hunter2@cache:6379/0").expect("redis");
        assert!(!r.describe().contains("hunter2"), "{}", r.describe());
        let e = StoreSpec::parse("mysql://u:hunter2@h/db").expect_err("unknown");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
