//! Session store backends: memory (ephemeral) and SQLite (the default, embedded, durable).
//! Each implements both [`SessionStore`] and [`EventStore`] and passes the contract suite;
//! `timed` wraps whichever is chosen to time its writes for `/metrics`.

mod group_commit;
pub mod lock;
pub mod memory;
pub mod sqlite;
pub mod timed;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

use crate::session::store::Store;

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
}

/// The default commit window: a crash loses at most this much of the events already sent,
/// and one commit carries every event of the window.
pub const DEFAULT_COMMIT_WINDOW: Duration = Duration::from_millis(5);

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
            return Ok(StoreSpec::Sqlite { path: PathBuf::from(path), commit_window: DEFAULT_COMMIT_WINDOW });
        }
        Err(format!("{text:?}: use `memory` or `sqlite://PATH`"))
    }

    /// The default: a SQLite file in the platform's state directory.
    pub fn default_sqlite() -> StoreSpec {
        StoreSpec::Sqlite { path: state_dir().join("sessions.db"), commit_window: DEFAULT_COMMIT_WINDOW }
    }

    /// The same store with events committed within `window` (no effect on `memory`).
    pub fn with_commit_window(self, window: Duration) -> StoreSpec {
        match self {
            StoreSpec::Sqlite { path, .. } => StoreSpec::Sqlite { path, commit_window: window },
            StoreSpec::Memory => StoreSpec::Memory,
        }
    }

    /// The commit window of events; the default for a store that commits nothing.
    pub fn commit_window(&self) -> Duration {
        match self {
            StoreSpec::Sqlite { commit_window, .. } => *commit_window,
            StoreSpec::Memory => DEFAULT_COMMIT_WINDOW,
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
            StoreSpec::Memory => state_dir(),
        }
    }

    /// A short label.
    pub fn describe(&self) -> String {
        match self {
            StoreSpec::Memory => "memory".into(),
            StoreSpec::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
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
        StoreSpec::Sqlite { path, commit_window } => {
            Arc::new(SqliteStore::open_with_window(path, *commit_window).await?)
        }
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
        assert!(StoreSpec::parse("redis://x").is_err());
    }
}
