//! The admin keys: `admin_listen`, and the token from `admin_token` or `admin_token_file`.
//! A non-loopback admin address without a token is refused here, before anything binds.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{ConfigError, FileConfig, ServeArgs};
use crate::admin::AdminToken;

/// Where the admin listener binds, and the token its API requires.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The admin listen address.
    pub listen: SocketAddr,
    /// The configured token; `None` on loopback means one is generated at start.
    pub token: Option<AdminToken>,
    /// The file the token was read from, when it was.
    pub token_file: Option<PathBuf>,
}

impl AdminConfig {
    /// Loopback, with the given token (for tests and embedding).
    pub fn loopback(token: AdminToken) -> AdminConfig {
        AdminConfig { listen: SocketAddr::from(([127, 0, 0, 1], 9090)), token: Some(token), token_file: None }
    }
}

pub(super) fn load(
    args: &ServeArgs,
    file: &FileConfig,
    file_name: &str,
    mcp_listen: SocketAddr,
) -> Result<AdminConfig, ConfigError> {
    let flag = "flag or environment".to_owned();
    let (listen_src, listen_text) = match (&args.admin_listen, &file.admin_listen) {
        (Some(v), _) => (flag.clone(), v.clone()),
        (None, Some(v)) => (file_name.to_owned(), v.clone()),
        (None, None) => (String::from("default"), "127.0.0.1:9090".to_owned()),
    };
    let invalid = |key: &'static str, source_name: &str, reason: String| ConfigError::Invalid {
        key,
        source_name: source_name.to_owned(),
        reason,
    };
    let listen: SocketAddr = listen_text
        .parse()
        .map_err(|e: std::net::AddrParseError| invalid("admin_listen", &listen_src, format!("{listen_text:?}: {e}")))?;
    if listen.port() != 0 && listen == mcp_listen {
        return Err(invalid("admin_listen", &listen_src, format!("{listen} is also `listen`: use another port")));
    }

    // The highest layer that names a token wins; one layer naming both is a mistake.
    let layers = [
        (&args.admin_token, &args.admin_token_file, flag.as_str()),
        (&file.admin_token, &file.admin_token_file, file_name),
    ];
    let mut token = None;
    let mut token_file = None;
    for (text, path, source_name) in layers {
        match (text, path) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "admin_token",
                    source_name,
                    "give `admin_token` or `admin_token_file`, not both".into(),
                ));
            }
            (Some(t), None) => {
                token = Some(AdminToken::new(t).map_err(|r| invalid("admin_token", source_name, r.into()))?);
            }
            (None, Some(p)) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| invalid("admin_token_file", source_name, format!("{}: {e}", p.display())))?;
                let t = AdminToken::new(&text)
                    .map_err(|r| invalid("admin_token_file", source_name, format!("{}: {r}", p.display())))?;
                token = Some(t);
                token_file = Some(p.clone());
            }
            (None, None) => continue,
        }
        break;
    }
    if token.is_none() && !listen.ip().is_loopback() {
        return Err(ConfigError::AdminTokenRequired { listen });
    }
    Ok(AdminConfig { listen, token, token_file })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs { command: vec!["server".into()], ..ServeArgs::default() }
    }

    #[test]
    fn the_admin_defaults_to_loopback_without_a_configured_token() {
        let c = Config::load(&args()).expect("valid");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
        assert!(c.admin.token.is_none(), "generated at start, not at load");
    }

    #[test]
    fn a_non_loopback_admin_needs_a_token() {
        let mut a = args();
        a.admin_listen = Some("0.0.0.0:9090".into());
        let e = Config::load(&a).expect_err("refused");
        assert!(matches!(e, ConfigError::AdminTokenRequired { .. }), "{e}");
        assert!(e.to_string().contains("admin_token"), "{e}");
        a.admin_token = Some("t0ken".into());
        let c = Config::load(&a).expect("valid with a token");
        assert!(c.admin.token.expect("token").matches(b"t0ken"));
    }

    #[test]
    fn the_token_comes_from_a_file_trimmed_and_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("tether-admin-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("token");
        std::fs::write(&path, "from-file\n").expect("write");
        let mut a = args();
        a.admin_token_file = Some(path.clone());
        let c = Config::load(&a).expect("valid");
        assert!(c.admin.token.expect("token").matches(b"from-file"));
        assert_eq!(c.admin.token_file.as_deref(), Some(path.as_path()));

        a.admin_token = Some("also".into());
        let e = Config::load(&a).expect_err("both").to_string();
        assert!(e.contains("`admin_token`"), "{e}");

        let mut a = args();
        a.admin_token_file = Some(dir.join("missing"));
        let e = Config::load(&a).expect_err("missing file").to_string();
        assert!(e.contains("`admin_token_file`"), "{e}");

        let mut a = args();
        a.admin_listen = Some("nowhere".into());
        assert!(Config::load(&a).expect_err("bad addr").to_string().contains("`admin_listen`"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
