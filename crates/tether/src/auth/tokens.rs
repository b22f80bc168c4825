//! Static bearer tokens from a file of `name:token` lines (`--auth-token-file`). The name is
//! the principal. The file is read again on SIGHUP and when it changes; a file that no longer
//! parses keeps the tokens in force and is reported with its line number, never its content.
//!
//! Only SHA-256 digests of the tokens are kept, and a presented token is compared with every
//! digest in constant time, so neither the match nor its position shows in the timing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Principal;

/// How often the file's metadata is checked for a change. Polling (not inotify) also sees a
/// file replaced by rename or a swapped symlink (editors, Kubernetes secret volumes).
const POLL: Duration = Duration::from_secs(1);

/// The tokens of one reading of the file.
#[derive(Default)]
struct Table {
    entries: Vec<([u8; 32], Principal)>,
}

/// The token file and the tokens it holds now.
pub struct TokenFile {
    path: PathBuf,
    table: RwLock<Arc<Table>>,
    seen: std::sync::Mutex<Option<Stamp>>,
}

/// What tells a changed file from an unchanged one without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: m.modified().ok(), len: m.len(), inode: m.ino() })
}

impl TokenFile {
    /// Reads the file; an unreadable or malformed file is an error naming the line.
    pub fn open(path: &Path) -> Result<TokenFile, String> {
        let seen = stamp(path);
        let table = read(path)?;
        Ok(TokenFile { path: path.to_owned(), table: RwLock::new(Arc::new(table)), seen: std::sync::Mutex::new(seen) })
    }

    /// How many tokens are in force.
    pub fn len(&self) -> usize {
        self.current().entries.len()
    }

    /// Whether no token is in force.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn current(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The principal whose token `presented` is.
    pub fn check(&self, presented: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let table = self.current();
        let mut found = None;
        // Every entry is compared, whatever matched before.
        for (d, p) in &table.entries {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(p.clone());
            }
        }
        found
    }

    /// Reads the file again; on error the tokens in force stay.
    pub fn reload(&self, why: &'static str) {
        *self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = stamp(&self.path);
        match read(&self.path) {
            Ok(t) => {
                let n = t.entries.len();
                *self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(t);
                info!(path = %self.path.display(), tokens = n, trigger = why, "auth token file reloaded");
            }
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, trigger = why, "auth token file not reloaded; the previous tokens stay in force");
            }
        }
    }

    /// Reloads on SIGHUP and when the file changes, until `stop`.
    pub fn watch(self: &Arc<Self>, stop: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hup = signal(SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = hangup => me.reload("sighup"),
                    _ = tick.tick() => {
                        let now = stamp(&me.path);
                        let changed = *me.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) != now;
                        if changed && now.is_some() {
                            me.reload("changed");
                        }
                    }
                }
            }
        });
    }
}

fn read(path: &Path) -> Result<Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses `name:token` lines; blank lines and `#` comments are skipped. Errors name the line,
/// never a token.
fn parse(text: &str) -> Result<Table, String> {
    let mut entries: Vec<([u8; 32], Principal)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, token)) = line.split_once(':') else {
            return Err(format!("line {n}: use `name:token`"));
        };
        let (name, token) = (name.trim(), token.trim());
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("line {n}: the name must be visible ASCII without spaces"));
        }
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("line {n} ({name}): the token must be non-empty visible ASCII without spaces"));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((_, other)) = entries.iter().find(|(d, _)| *d == digest) {
            return Err(format!("line {n} ({name}): the same token as {}; tokens must differ", other.name()));
        }
        entries.push((digest, Principal::token(name)));
    }
    Ok(Table { entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_principals_and_errors_never_show_tokens() {
        let t = parse("# ops\nalice:tok-a\n\n bob : tok-b \n").expect("valid");
        assert_eq!(t.entries.len(), 2);
        let e = parse("alice:tok-a\nbob tok-b\n").err().expect("no colon");
        assert!(e.contains("line 2") && !e.contains("tok-b"), "{e}");
        let e = parse("alice:same-secret\nbob:same-secret\n").err().expect("duplicate");
        assert!(e.contains("line 2") && e.contains("alice") && !e.contains("same-secret"), "{e}");
        assert!(parse("alice:\n").is_err());
        assert!(parse(":tok\n").is_err());
        assert!(parse("alice:two words\n").is_err());
    }

    #[test]
    fn a_token_names_its_principal_and_a_changed_file_is_seen() {
        let dir = std::env::temp_dir().join(format!("tether-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("tokens");
        std::fs::write(&path, "alice:tok-a\nbob:tok-b\n").expect("write");
        let f = TokenFile::open(&path).expect("valid");
        assert_eq!(f.check("tok-a").map(|p| p.name().to_owned()).as_deref(), Some("alice"));
        assert_eq!(f.check("tok-b").map(|p| p.name().to_owned()).as_deref(), Some("bob"));
        assert!(f.check("tok-").is_none());
        assert!(f.check("").is_none());
        std::fs::write(&path, "alice:tok-a2\n").expect("rewrite");
        f.reload("test");
        assert!(f.check("tok-a").is_none());
        assert!(f.check("tok-a2").is_some());
        // A broken file keeps what is in force.
        std::fs::write(&path, "garbage\n").expect("rewrite");
        f.reload("test");
        assert!(f.check("tok-a2").is_some());
        let _ = std::fs::remove_dir_all(dir);
    }
}
