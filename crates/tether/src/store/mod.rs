//! Session store backends: memory (ephemeral) and SQLite (the default, embedded, durable).
//! Each implements both [`SessionStore`] and [`EventStore`] and passes the contract suite.

pub mod lock;
pub mod memory;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

use crate::session::store::Store;

/// Which backend, from `--store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// In process memory.
    Memory,
    /// An SQLite file.
    Sqlite(PathBuf),
}

impl StoreSpec {
    /// Parses `memory` or an sqlx-style `sqlite://PATH` (`sqlite:///abs/path.db` is absolute;
    /// `sqlite://rel.db` is relative to the working directory).
    pub fn parse(text: &str) -> Result<StoreSpec, String> {
        if text == "memory" {
            return Ok(StoreSpec::Memory);
        }
        if let Some(rest) = text.strip_prefix("sqlite://").or_else(|| text.strip_prefix("sqlite:")) {
            let path = rest.split('?').next().unwrap_or("");
            if path.is_empty() {
                return Err("sqlite:// needs a file path, e.g. sqlite:///var/lib/tether/sessions.db".into());
            }
            return Ok(StoreSpec::Sqlite(PathBuf::from(path)));
        }
        Err(format!("{text:?}: use `memory` or `sqlite://PATH`"))
    }

    /// The default: a SQLite file in the platform's state directory.
    pub fn default_sqlite() -> StoreSpec {
        StoreSpec::Sqlite(state_dir().join("sessions.db"))
    }

    /// A short label.
    pub fn describe(&self) -> String {
        match self {
            StoreSpec::Memory => "memory".into(),
            StoreSpec::Sqlite(p) => format!("sqlite://{}", p.display()),
        }
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
        StoreSpec::Sqlite(path) => Arc::new(SqliteStore::open(path).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_like_sqlx() {
        assert_eq!(StoreSpec::parse("memory"), Ok(StoreSpec::Memory));
        assert_eq!(StoreSpec::parse("sqlite:///var/lib/t.db"), Ok(StoreSpec::Sqlite("/var/lib/t.db".into())));
        assert_eq!(StoreSpec::parse("sqlite://rel/t.db"), Ok(StoreSpec::Sqlite("rel/t.db".into())));
        assert_eq!(StoreSpec::parse("sqlite://t.db?mode=rwc"), Ok(StoreSpec::Sqlite("t.db".into())));
        assert!(StoreSpec::parse("sqlite://").is_err());
        assert!(StoreSpec::parse("redis://x").is_err());
    }
}
