//! The cluster keys: `cluster_listen` (the internal hop between replicas), `cluster_advertise`,
//! `cluster_secret_file` and `lease_ttl`. A shared store serves several replicas only with a
//! hop to forward on, so `cluster_listen` is required there, unless the tether is a `--standby`
//! (one serves the namespace, the others wait: no hop). A hop reachable from other hosts
//! needs a secret.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, FileConfig, ServeArgs};
use crate::store::StoreSpec;

/// Shortest lease: renewals run every third of it, and a store round trip must fit.
const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

/// The internal hop's shared secret (never printed).
#[derive(Clone)]
pub struct ClusterSecret(String);

impl ClusterSecret {
    /// The secret's text, for the hop's header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(***)")
    }
}

/// Cluster mode: several replicas on one shared store.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Where the internal hop listens.
    pub listen: SocketAddr,
    /// What other replicas dial (`HOST:PORT`).
    pub advertise: String,
    /// The hop's secret; `None` only on loopback.
    pub secret: Option<ClusterSecret>,
    /// The file the secret was read from.
    pub secret_file: Option<PathBuf>,
    /// How long a session's lease lasts without renewal.
    pub lease_ttl: Duration,
}

/// The cluster part of the configuration: `None` outside cluster mode; the lease TTL (shown
/// by `check-config` either way).
pub(super) fn load(
    args: &ServeArgs,
    file: &FileConfig,
    file_name: &str,
    store: &StoreSpec,
    standby: bool,
    others: &[(&'static str, SocketAddr)],
) -> Result<(Option<ClusterConfig>, Duration), ConfigError> {
    let src = |flag_set: bool| if flag_set { "flag or environment".to_owned() } else { file_name.to_owned() };
    let invalid = |key: &'static str, flag_set: bool, reason: String| ConfigError::Invalid {
        key,
        source_name: src(flag_set),
        reason,
    };
    let ttl_text = args.lease_ttl.clone().or(file.lease_ttl.clone()).unwrap_or_else(|| "15s".into());
    let lease_ttl = humantime::parse_duration(&ttl_text)
        .map_err(|e| invalid("lease_ttl", args.lease_ttl.is_some(), format!("{ttl_text:?}: {e} (use e.g. 15s)")))?;
    if lease_ttl < MIN_LEASE_TTL {
        return Err(invalid("lease_ttl", args.lease_ttl.is_some(), "at least 1s".into()));
    }

    let listen_set = args.cluster_listen.is_some();
    let Some(listen_text) = args.cluster_listen.clone().or(file.cluster_listen.clone()) else {
        if store.is_shared() && !standby {
            return Err(invalid(
                "cluster_listen",
                false,
                "several replicas on a shared store forward to each other: give `cluster_listen` \
                 (--cluster-listen ADDR, e.g. 127.0.0.1:7070), or run a `standby`"
                    .into(),
            ));
        }
        for (key, set) in [
            ("cluster_advertise", args.cluster_advertise.is_some() || file.cluster_advertise.is_some()),
            ("cluster_secret_file", args.cluster_secret_file.is_some() || file.cluster_secret_file.is_some()),
        ] {
            if set {
                return Err(invalid(key, true, "only with `cluster_listen`".into()));
            }
        }
        return Ok((None, lease_ttl));
    };
    if !store.is_shared() {
        return Err(invalid(
            "cluster_listen",
            listen_set,
            "cluster mode needs a shared store: use a postgres:// or redis:// `store`".into(),
        ));
    }
    if standby {
        return Err(invalid(
            "cluster_listen",
            listen_set,
            "a `standby` waits while one tether serves; cluster replicas all serve: choose one".into(),
        ));
    }
    let listen: SocketAddr = listen_text.parse().map_err(|e: std::net::AddrParseError| {
        invalid("cluster_listen", listen_set, format!("{listen_text:?}: {e}"))
    })?;
    for (key, other) in others {
        if listen.port() != 0 && listen == *other {
            return Err(invalid("cluster_listen", listen_set, format!("{listen} is also `{key}`: use another port")));
        }
    }

    let advertise_set = args.cluster_advertise.is_some();
    let advertise = match args.cluster_advertise.clone().or(file.cluster_advertise.clone()) {
        Some(a) => {
            check_host_port(&a).map_err(|r| invalid("cluster_advertise", advertise_set, r))?;
            a
        }
        None if listen.ip().is_unspecified() => {
            return Err(invalid(
                "cluster_advertise",
                false,
                format!(
                    "`cluster_listen` {listen} is not an address other replicas can dial: give `cluster_advertise` HOST:PORT"
                ),
            ));
        }
        None => listen.to_string(),
    };

    let secret_set = args.cluster_secret_file.is_some();
    let secret_file = args.cluster_secret_file.clone().or(file.cluster_secret_file.clone());
    let secret = match &secret_file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| invalid("cluster_secret_file", secret_set, format!("{}: {e}", p.display())))?;
            let text = text.trim();
            if text.len() < 16 {
                return Err(invalid(
                    "cluster_secret_file",
                    secret_set,
                    format!("{}: the secret needs at least 16 characters", p.display()),
                ));
            }
            Some(ClusterSecret(text.to_owned()))
        }
        None if !listen.ip().is_loopback() => {
            return Err(invalid(
                "cluster_secret_file",
                false,
                format!(
                    "`cluster_listen` {listen} is not a loopback address, so the hop needs a secret: give `cluster_secret_file`"
                ),
            ));
        }
        None => None,
    };
    Ok((Some(ClusterConfig { listen, advertise, secret, secret_file, lease_ttl }), lease_ttl))
}

fn check_host_port(text: &str) -> Result<(), String> {
    let (host, port) = text.rsplit_once(':').ok_or_else(|| format!("{text:?}: use HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|_| format!("{text:?}: the port is not a number"))?;
    if host.is_empty() || port == 0 || host.contains('/') {
        return Err(format!("{text:?}: use HOST:PORT"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn shared(cmd: &str) -> ServeArgs {
        ServeArgs {
            command: vec![cmd.into()],
            store: Some("postgres://postgres@127.0.0.1:5432/test".into()),
            ..ServeArgs::default()
        }
    }

    fn err(a: &ServeArgs) -> String {
        Config::load(a).expect_err("invalid").to_string()
    }

    #[test]
    fn a_shared_store_needs_a_hop_unless_standby() {
        let a = shared("x");
        assert!(err(&a).contains("`cluster_listen`"), "{}", err(&a));
        let c = Config::load(&ServeArgs { standby: true, ..shared("x") }).expect("standby");
        assert!(c.cluster.is_none());
        let c = Config::load(&ServeArgs { cluster_listen: Some("127.0.0.1:7070".into()), ..shared("x") }).expect("ok");
        let cl = c.cluster.expect("cluster");
        assert_eq!(cl.advertise, "127.0.0.1:7070", "advertised as listened by default");
        assert_eq!(cl.lease_ttl, Duration::from_secs(15));
        assert!(cl.secret.is_none(), "loopback needs no secret");
        let both = ServeArgs { cluster_listen: Some("127.0.0.1:7070".into()), standby: true, ..shared("x") };
        assert!(err(&both).contains("`cluster_listen`"));
        let sqlite = ServeArgs {
            cluster_listen: Some("127.0.0.1:7070".into()),
            command: vec!["x".into()],
            ..Default::default()
        };
        assert!(err(&sqlite).contains("shared store"), "{}", err(&sqlite));
    }

    #[test]
    fn a_hop_off_loopback_needs_a_secret_and_a_dialable_address() {
        let open = ServeArgs { cluster_listen: Some("0.0.0.0:7070".into()), ..shared("x") };
        assert!(err(&open).contains("`cluster_advertise`"), "{}", err(&open));
        let open = ServeArgs { cluster_advertise: Some("tether-1:7070".into()), ..open };
        assert!(err(&open).contains("`cluster_secret_file`"), "{}", err(&open));
        let dir = std::env::temp_dir().join(format!("tether-cluster-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("secret");
        std::fs::write(&path, "short\n").expect("write");
        let with = ServeArgs { cluster_secret_file: Some(path.clone()), ..open };
        assert!(err(&with).contains("16 characters"), "{}", err(&with));
        std::fs::write(&path, "a-secret-of-enough-length\n").expect("write");
        let c = Config::load(&with).expect("valid");
        let cl = c.cluster.as_ref().expect("cluster");
        assert_eq!(cl.secret.as_ref().map(ClusterSecret::expose), Some("a-secret-of-enough-length"));
        let text = c.to_redacted_toml();
        assert!(!text.contains("a-secret-of-enough-length"), "{text}");
        assert!(text.contains("cluster_listen = \"0.0.0.0:7070\"") && text.contains("cluster_advertise"), "{text}");
        assert!(text.contains("lease_ttl = \"15s\""), "{text}");
        let bad = ServeArgs { cluster_advertise: Some("nope".into()), ..with.clone() };
        assert!(err(&bad).contains("`cluster_advertise`"));
        let bad = ServeArgs { lease_ttl: Some("200ms".into()), ..with };
        assert!(err(&bad).contains("`lease_ttl`"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_hop_does_not_share_a_port() {
        let a = ServeArgs {
            listen: Some("127.0.0.1:7070".into()),
            cluster_listen: Some("127.0.0.1:7070".into()),
            ..shared("x")
        };
        assert!(err(&a).contains("also `listen`"), "{}", err(&a));
    }
}
