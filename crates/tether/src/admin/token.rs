//! The admin API's bearer token: a secret that is never printed, compared in constant time,
//! and — when the operator configured none — generated at start and written to a file only the
//! owner can read.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use subtle::ConstantTimeEq;

/// The file name of a generated token, in the state directory.
pub const TOKEN_FILE: &str = "admin.token";

/// The lock a running tether holds on its state directory's token file.
const LOCK_FILE: &str = "admin.token.lock";

/// A bearer token. `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Arc<str>);

impl AdminToken {
    /// A token from configuration: surrounding whitespace (a file's trailing newline) is
    /// dropped; it must be non-empty visible ASCII, as an `Authorization` header can carry it.
    pub fn new(text: &str) -> Result<AdminToken, &'static str> {
        let t = text.trim();
        if t.is_empty() {
            return Err("the admin token is empty");
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the admin token must be visible ASCII without spaces");
        }
        Ok(AdminToken(t.into()))
    }

    /// 256 random bits, as 64 hex digits.
    pub fn generate() -> AdminToken {
        let bytes: [u8; 32] = rand::random();
        AdminToken(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>().into())
    }

    /// Whether `presented` is this token. The comparison takes the same time wherever the
    /// first difference is (only the length can show).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }

    /// The secret itself, for writing the token file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl std::fmt::Display for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Writes `token` to `dir/admin.token`, readable and writable by the owner only (0600, in a
/// 0700 directory it creates when missing). The file is replaced whole: a reader sees the old
/// token or the new one, never a mix.
pub fn write_token_file(dir: &Path, token: &AdminToken) -> std::io::Result<PathBuf> {
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let path = dir.join(TOKEN_FILE);
    let tmp = dir.join(format!(".{TOKEN_FILE}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        // The mode above is filtered by the umask; set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(token.expose().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// A generated token's file, claimed by this process: while this value lives, no other tether
/// writes a token into the same directory (an advisory lock, released by the kernel even on
/// `kill -9`).
#[derive(Debug)]
pub struct TokenFile {
    /// Where the token is.
    pub path: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Why a token file could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another running tether holds the directory.
    #[error(
        "another running tether generated the admin token in {0}; give this one its own state directory \
         (--store sqlite://OTHER_DIR/sessions.db, or XDG_STATE_HOME) or a token (--admin-token-file)"
    )]
    Taken(PathBuf),
    /// The file system refused.
    #[error("cannot write the admin token into {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Claims `dir` for this process and writes `token` to `dir/admin.token` (see
/// [`write_token_file`]). Refused while another process holds the same directory, so two
/// tethers never overwrite each other's token.
pub fn claim_token_file(dir: &Path, token: &AdminToken) -> Result<TokenFile, ClaimError> {
    let io = |e| ClaimError::Io(dir.to_owned(), e);
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    }
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))
        .map_err(io)?;
    let lock = match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Err(ClaimError::Taken(dir.to_owned())),
        Err((_, e)) => return Err(io(e.into())),
    };
    let path = write_token_file(dir, token).map_err(io)?;
    Ok(TokenFile { path, _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_secret_and_compared_whole() {
        let t = AdminToken::new("s3cret\n").expect("valid");
        assert_eq!(format!("{t} {t:?}"), "*** AdminToken(***)");
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b"s3cret2"));
        assert!(!t.matches(b"S3cret"));
        assert!(AdminToken::new("  ").is_err());
        assert!(AdminToken::new("two words").is_err());
        let g = AdminToken::generate();
        assert_eq!(g.expose().len(), 64);
        assert_ne!(g, AdminToken::generate());
    }

    #[test]
    fn a_generated_token_file_is_private() {
        let dir = std::env::temp_dir().join(format!("tether-token-{}", std::process::id())).join("state");
        let _ = std::fs::remove_dir_all(&dir);
        let t = AdminToken::generate();
        let path = write_token_file(&dir, &t).expect("written");
        assert_eq!(std::fs::read_to_string(&path).expect("read").trim(), t.expose());
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(&dir).expect("meta").permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        // A second start replaces it.
        let t2 = AdminToken::generate();
        write_token_file(&dir, &t2).expect("rewritten");
        assert_eq!(std::fs::read_to_string(&path).expect("read").trim(), t2.expose());
        let _ = std::fs::remove_dir_all(dir.parent().expect("parent"));
    }

    #[test]
    fn a_claimed_directory_is_not_overwritten_and_others_are_separate() {
        let root = std::env::temp_dir().join(format!("tether-claim-{}-{}", std::process::id(), rand::random::<u32>()));
        let (a, b) = (root.join("a"), root.join("b"));
        let (ta, tb) = (AdminToken::generate(), AdminToken::generate());
        let fa = claim_token_file(&a, &ta).expect("a claimed");
        let fb = claim_token_file(&b, &tb).expect("b claimed");
        assert_ne!(fa.path, fb.path);
        let err = claim_token_file(&a, &AdminToken::generate()).expect_err("a is taken");
        assert!(matches!(err, ClaimError::Taken(_)), "{err}");
        assert!(err.to_string().contains(&a.display().to_string()), "names the directory: {err}");
        assert_eq!(std::fs::read_to_string(&fa.path).expect("read").trim(), ta.expose(), "not overwritten");
        assert_eq!(std::fs::read_to_string(&fb.path).expect("read").trim(), tb.expose());
        // Released with its holder: the next start takes the directory over.
        drop(fa);
        let t2 = AdminToken::generate();
        let fa = claim_token_file(&a, &t2).expect("free again");
        assert_eq!(std::fs::read_to_string(&fa.path).expect("read").trim(), t2.expose());
        let _ = std::fs::remove_dir_all(root);
    }
}
