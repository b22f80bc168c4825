//! One process per SQLite store: an exclusive `flock` on a file beside the database, holding
//! the owner's pid and listen address so that a second tether can say who has it.
//!
//! Two gateways on one file would each serve the same sessions with their own upstream child,
//! and a DELETE on one would not be seen by the other. Until replicas share a store properly,
//! the second is refused at start. The kernel drops the lock when the owner exits, even by
//! `kill -9`, so a crash never leaves the store locked.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Held for as long as the store is in use; dropping it releases the store.
#[derive(Debug)]
pub struct StoreLock {
    _file: Flock<File>,
    path: PathBuf,
}

/// Why the store could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "the session store {db} is in use by another tether ({holder}); a SQLite store belongs to one process: \
         stop that one, or give this one its own --store"
    )]
    Held {
        /// The database.
        db: String,
        /// Who holds it, as its lock file says.
        holder: String,
    },
    /// The lock file cannot be used.
    #[error("cannot lock the session store through {path}: {reason}")]
    Io {
        /// The lock file.
        path: String,
        /// The OS error.
        reason: String,
    },
}

impl StoreLock {
    /// The lock file of `db`: `sessions.db` → `sessions.db.lock`.
    pub fn path_for(db: &Path) -> PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Claims the store at `db` for this process, serving on `listen`.
    pub fn acquire(db: &Path, listen: SocketAddr) -> Result<StoreLock, LockError> {
        let path = Self::path_for(db);
        let io = |e: &dyn std::fmt::Display| LockError::Io { path: path.display().to_string(), reason: e.to_string() };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
        }
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| io(&e))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(", ");
                let holder = if holder.is_empty() { "holder unknown".to_owned() } else { holder };
                return Err(LockError::Held { db: db.display().to_string(), holder });
            }
            Err((_, e)) => return Err(io(&e)),
        };
        let record = format!("pid {}\nlistening on {listen}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(record.as_bytes()))
            .and_then(|()| file.flush())
            .map_err(|e| io(&e))?;
        Ok(StoreLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_naming_the_holder_and_a_released_store_is_claimed_again() {
        let dir = std::env::temp_dir().join(format!("tether-lock-{}", std::process::id()));
        let db = dir.join("sessions.db");
        let first = StoreLock::acquire(&db, "127.0.0.1:8080".parse().expect("addr")).expect("free");
        assert_eq!(first.path(), dir.join("sessions.db.lock"));
        // flock locks belong to the open file, so a second open in the same process conflicts.
        let e = StoreLock::acquire(&db, "127.0.0.1:8081".parse().expect("addr")).expect_err("held").to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains("listening on 127.0.0.1:8080"), "{e}");
        assert!(e.contains(&db.display().to_string()), "{e}");
        drop(first);
        let again = StoreLock::acquire(&db, "127.0.0.1:8081".parse().expect("addr")).expect("released");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
