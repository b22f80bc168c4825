//! One validated [`Config`], built from flags, `TETHER_*` environment variables and a TOML
//! file, in that order of precedence. Errors name the exact key and where it came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::downstream::FrontConfig;
use crate::session::store::Retention;
use crate::session::{RestartPolicy, SessionConfig};
use crate::upstream::UpstreamSpec;
use crate::upstream::era::UpstreamProtocol;

mod admin;
mod auth;
mod cluster;
mod effective;

pub use crate::auth::AuthConfig;
pub use admin::AdminConfig;
pub use cluster::{ClusterConfig, ClusterSecret};

/// `tether serve` flags. Every flag also reads `TETHER_<NAME>` and the TOML key of the same
/// name (with `_` for `-`).
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Address to serve MCP clients on [default: 127.0.0.1:8080]
    #[arg(long, env = "TETHER_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// TOML config file
    #[arg(long, env = "TETHER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Session store: `sqlite://PATH`, `memory`, `postgres://USER@HOST:PORT/DB` or
    /// `redis://HOST:PORT[/N]` [default: sqlite in $XDG_STATE_HOME/tether/sessions.db]
    #[arg(long, env = "TETHER_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// With a Postgres or Redis store: the schema / key prefix, so that several deployments
    /// share one server [default: tether]
    #[arg(long, env = "TETHER_STORE_NAMESPACE", value_name = "NAME")]
    pub store_namespace: Option<String>,
    /// With a Postgres or Redis store: wait as a standby while another tether serves the
    /// namespace, and take it over (its sessions included) when that tether stops or dies,
    /// instead of refusing to start. Until then nothing listens on the MCP address, and the
    /// admin listener answers /healthz 200 and /readyz 503
    #[arg(long, env = "TETHER_STANDBY")]
    pub standby: bool,
    /// With a Postgres or Redis store: the address of the internal hop, where other replicas
    /// forward the requests of the sessions this one owns (required with a shared store,
    /// unless --standby)
    #[arg(long, env = "TETHER_CLUSTER_LISTEN", value_name = "ADDR")]
    pub cluster_listen: Option<String>,
    /// The address other replicas dial for the hop [default: the --cluster-listen address]
    #[arg(long, env = "TETHER_CLUSTER_ADVERTISE", value_name = "HOST:PORT")]
    pub cluster_advertise: Option<String>,
    /// A file holding the hop's shared secret (at least 16 characters; required when
    /// --cluster-listen is not a loopback address)
    #[arg(long, env = "TETHER_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// How long a replica's ownership of a session lasts without renewal: a killed replica's
    /// sessions move to another after at most this long [default: 15s]
    #[arg(long, env = "TETHER_LEASE_TTL", value_name = "DURATION")]
    pub lease_ttl: Option<String>,
    /// A Streamable HTTP upstream (its MCP endpoint URL)
    #[arg(long, env = "TETHER_UPSTREAM", value_name = "URL", conflicts_with_all = ["upstream_sse", "command"])]
    pub upstream: Option<String>,
    /// A legacy HTTP+SSE upstream (its SSE endpoint URL)
    #[arg(long, env = "TETHER_UPSTREAM_SSE", value_name = "URL", conflicts_with = "command")]
    pub upstream_sse: Option<String>,
    /// The era the HTTP or stdio upstream is spoken to in: `auto` (HTTP: probed on each
    /// connection, the initialize handshake when the server serves it, else MCP 2026-07-28;
    /// stdio: the handshake era, except for a 2026-07-28 client when the command answers
    /// server/discover), `handshake` or `modern` [default: auto]
    #[arg(long, env = "TETHER_UPSTREAM_PROTOCOL", value_name = "ERA")]
    pub upstream_protocol: Option<String>,
    /// Extra allowed Origin (repeatable; localhost origins are always allowed; `*` allows any)
    #[arg(long = "allow-origin", env = "TETHER_ALLOW_ORIGIN", value_name = "ORIGIN", value_delimiter = ',')]
    pub allow_origin: Vec<String>,
    /// Extra allowed Host name (repeatable; checked on loopback listeners and when set)
    #[arg(long = "allow-host", env = "TETHER_ALLOW_HOST", value_name = "HOST", value_delimiter = ',')]
    pub allow_host: Vec<String>,
    /// Idle time after which a client session expires [default: 24h]
    #[arg(long, env = "TETHER_SESSION_TTL", value_name = "DURATION")]
    pub session_ttl: Option<String>,
    /// How long one request may take upstream [default: 5m]
    #[arg(long, env = "TETHER_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// Keep-alive comment interval on idle SSE streams [default: 15s]
    #[arg(long, env = "TETHER_KEEPALIVE", value_name = "DURATION")]
    pub keepalive: Option<String>,
    /// Release an upstream binding unused this long; the next use revives it [default: 10m]
    #[arg(long, env = "TETHER_UPSTREAM_IDLE", value_name = "DURATION")]
    pub upstream_idle: Option<String>,
    /// A session with no upstream, no stream and nothing in flight this long rests in the
    /// store (its memory is given back) until its client's next request wakes it [default: 10m]
    #[arg(long, env = "TETHER_HIBERNATE_AFTER", value_name = "DURATION")]
    pub hibernate_after: Option<String>,
    /// Tools whose calls may be retried after an upstream restart, besides those annotated
    /// readOnlyHint or idempotentHint (repeatable, or comma-separated)
    #[arg(long = "retry-tools", env = "TETHER_RETRY_TOOLS", value_name = "TOOL", value_delimiter = ',')]
    pub retry_tools: Vec<String>,
    /// Upstream failures within --restart-window that open the crash-loop breaker [default: 5]
    #[arg(long, env = "TETHER_RESTART_MAX_FAILURES", value_name = "N")]
    pub restart_max_failures: Option<usize>,
    /// The window failures are counted in [default: 60s]
    #[arg(long, env = "TETHER_RESTART_WINDOW", value_name = "DURATION")]
    pub restart_window: Option<String>,
    /// How long an open breaker refuses restarts (requests get 503) [default: 30s]
    #[arg(long, env = "TETHER_RESTART_COOLDOWN", value_name = "DURATION")]
    pub restart_cooldown: Option<String>,
    /// Stored SSE events kept per stream for Last-Event-ID resumption [default: 1000]
    #[arg(long, env = "TETHER_EVENT_RETENTION", value_name = "N")]
    pub event_retention: Option<usize>,
    /// Stored SSE events older than this are dropped [default: 1h]
    #[arg(long, env = "TETHER_EVENT_MAX_AGE", value_name = "DURATION")]
    pub event_max_age: Option<String>,
    /// Answered request streams kept per session for Last-Event-ID resumption; older ones are
    /// dropped as new ones are answered [default: 32]
    #[arg(long, env = "TETHER_EVENT_FINISHED_STREAMS", value_name = "N")]
    pub event_finished_streams: Option<usize>,
    /// With the SQLite store, how long an SSE event may wait for its commit after it was sent:
    /// one commit carries the window's events, and a crash can lose at most the window; `0`
    /// commits every event before it is sent [default: 5ms]
    #[arg(long, env = "TETHER_EVENT_COMMIT_WINDOW", value_name = "DURATION")]
    pub event_commit_window: Option<String>,
    /// Largest request body in bytes [default: 4194304]
    #[arg(long, env = "TETHER_MAX_BODY", value_name = "BYTES")]
    pub max_body: Option<usize>,
    /// How long a client may take to send a whole request body (then 408) [default: 30s]
    #[arg(long, env = "TETHER_BODY_TIMEOUT", value_name = "DURATION")]
    pub body_timeout: Option<String>,
    /// How long a connection may take to send a request head, counted from when tether waits
    /// for it: also how long an idle keep-alive connection stays open [default: 30s]
    #[arg(long, env = "TETHER_HEADER_TIMEOUT", value_name = "DURATION")]
    pub header_timeout: Option<String>,
    /// Most client connections served at once; more wait in the listen backlog [default: 20000]
    #[arg(long, env = "TETHER_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most live sessions [default: 10000]
    #[arg(long, env = "TETHER_MAX_SESSIONS", value_name = "N")]
    pub max_sessions: Option<usize>,
    /// With a stdio upstream: children kept started ahead of need, so that a new session or a
    /// revive does not wait for the command to start (at most 8) [default: 0]
    #[arg(long, env = "TETHER_STDIO_SPARE", value_name = "N")]
    pub stdio_spare: Option<usize>,
    /// Log filter (RUST_LOG syntax) [default: info]
    #[arg(long, env = "TETHER_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format: plain or json [default: plain]
    #[arg(long, env = "TETHER_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Address of the admin listener: health, metrics, the session API [default: 127.0.0.1:9090]
    #[arg(long, env = "TETHER_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Bearer token of the admin API (prefer the environment or a file: flags show in `ps`).
    /// Without one, a loopback admin generates a token into admin.token in the state directory
    /// (the SQLite store's directory; with `memory`, $XDG_STATE_HOME/tether)
    #[arg(long, env = "TETHER_ADMIN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A file holding the admin API's bearer token
    #[arg(long, env = "TETHER_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Require a bearer token from this file of `name:token` lines (the name is the principal);
    /// re-read on SIGHUP and when it changes
    #[arg(long, env = "TETHER_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Require a JWT signed by a key of this JWKS (a URL, or a file); needs --auth-issuer and
    /// --auth-audience
    #[arg(long, env = "TETHER_AUTH_JWKS", value_name = "URL|FILE")]
    pub auth_jwks: Option<String>,
    /// The `iss` a JWT must carry
    #[arg(long, env = "TETHER_AUTH_ISSUER", value_name = "ISSUER")]
    pub auth_issuer: Option<String>,
    /// An `aud` a JWT may carry (repeatable, or comma-separated; one must match)
    #[arg(long, env = "TETHER_AUTH_AUDIENCE", value_name = "AUDIENCE", value_delimiter = ',')]
    pub auth_audience: Vec<String>,
    /// An authorization server named in the protected resource metadata (repeatable)
    /// [default: the issuer]
    #[arg(long, env = "TETHER_AUTH_AUTHORIZATION_SERVER", value_name = "URL", value_delimiter = ',')]
    pub auth_authorization_server: Vec<String>,
    /// The public URL of the MCP endpoint, as clients reach it (for the metadata document)
    /// [default: http://HOST/mcp from the request]
    #[arg(long, env = "TETHER_AUTH_RESOURCE", value_name = "URL")]
    pub auth_resource: Option<String>,
    /// A header for every request to an HTTP or SSE upstream, as 'Name: value'; `${VAR}` in the
    /// value is read from the environment (repeatable; newline-separated in the environment)
    #[arg(
        long = "upstream-header",
        env = "TETHER_UPSTREAM_HEADER",
        value_name = "'NAME: VALUE'",
        value_delimiter = '\n',
        hide_env_values = true
    )]
    pub upstream_header: Vec<String>,
    /// Send each client's own Authorization header to the HTTP or SSE upstream (off: client
    /// credentials never leave tether)
    #[arg(long, env = "TETHER_FORWARD_AUTH")]
    pub forward_auth: bool,
    /// An environment variable for the stdio upstream, as KEY=VALUE; `${VAR}` is expanded
    /// (repeatable; newline-separated in the environment)
    #[arg(long = "env", env = "TETHER_ENV", value_name = "KEY=VALUE", value_delimiter = '\n', hide_env_values = true)]
    pub env: Vec<String>,
    /// The stdio upstream: a command and its arguments, after `--`
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The TOML file's shape: the same keys as the flags.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct FileConfig {
    listen: Option<String>,
    store: Option<String>,
    store_namespace: Option<String>,
    standby: Option<bool>,
    cluster_listen: Option<String>,
    cluster_advertise: Option<String>,
    cluster_secret_file: Option<PathBuf>,
    lease_ttl: Option<String>,
    upstream: Option<String>,
    upstream_sse: Option<String>,
    upstream_protocol: Option<String>,
    command: Option<Vec<String>>,
    allow_origin: Option<Vec<String>>,
    allow_host: Option<Vec<String>>,
    session_ttl: Option<String>,
    request_timeout: Option<String>,
    keepalive: Option<String>,
    upstream_idle: Option<String>,
    hibernate_after: Option<String>,
    event_retention: Option<usize>,
    event_max_age: Option<String>,
    event_finished_streams: Option<usize>,
    event_commit_window: Option<String>,
    retry_tools: Option<Vec<String>>,
    restart_max_failures: Option<usize>,
    restart_window: Option<String>,
    restart_cooldown: Option<String>,
    max_body: Option<usize>,
    body_timeout: Option<String>,
    header_timeout: Option<String>,
    max_connections: Option<usize>,
    max_sessions: Option<usize>,
    stdio_spare: Option<usize>,
    log_level: Option<String>,
    log_format: Option<String>,
    admin_listen: Option<String>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    auth_token_file: Option<PathBuf>,
    auth_jwks: Option<String>,
    auth_issuer: Option<String>,
    auth_audience: Option<Vec<String>>,
    auth_authorization_server: Option<Vec<String>>,
    auth_resource: Option<String>,
    upstream_header: Option<Vec<String>>,
    forward_auth: Option<bool>,
    env: Option<Vec<String>>,
}

pub use crate::store::StoreSpec;

pub use crate::telemetry::LogFormat;

/// The validated configuration of `tether serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client-facing listen address.
    pub listen: SocketAddr,
    /// Session store.
    pub store: StoreSpec,
    /// The upstream.
    pub upstream: UpstreamSpec,
    /// Client-facing checks and limits.
    pub front: FrontConfig,
    /// Session tunables.
    pub session: SessionConfig,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// The admin listener and its token.
    pub admin: AdminConfig,
    /// Who may use the MCP endpoint.
    pub auth: AuthConfig,
    /// Wait for the shared store's namespace instead of refusing it (`--standby`).
    pub standby: bool,
    /// Cluster mode (several replicas on a shared store); `None` otherwise.
    pub cluster: Option<ClusterConfig>,
    /// How long a session's lease lasts without renewal (used in cluster mode).
    pub lease_ttl: std::time::Duration,
}

/// A configuration error, naming the key and its source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is malformed.
    #[error("invalid value for `{key}` ({source_name}): {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Flag, environment or file.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// The file cannot be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// No upstream was given.
    #[error("no upstream: give a command after `--`, or --upstream URL, or --upstream-sse URL")]
    NoUpstream,
    /// More than one upstream was given.
    #[error("more than one upstream: use only one of `--upstream`, `--upstream-sse` and a command")]
    TwoUpstreams,
    /// The admin listener is reachable from other hosts but has no token.
    #[error(
        "`admin_listen` {listen} is not a loopback address, so the admin API needs a token: set `admin_token` \
         (--admin-token or TETHER_ADMIN_TOKEN) or `admin_token_file` (--admin-token-file)"
    )]
    AdminTokenRequired {
        /// The admin address.
        listen: SocketAddr,
    },
}

impl Config {
    /// Builds and validates the config from flags (which already include the environment)
    /// and the optional file.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let (file, file_name) = match &args.config {
            Some(p) => (read_file(p)?, format!("{}", p.display())),
            None => (FileConfig::default(), String::new()),
        };
        let src = |flag_set: bool| {
            if flag_set { "flag or environment".to_owned() } else { file_name.clone() }
        };
        macro_rules! pick {
            ($field:ident) => {
                (args.$field.is_some(), args.$field.clone().or(file.$field.clone()))
            };
        }

        let (set, listen) = pick!(listen);
        let listen_text = listen.unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen_text.parse().map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
            key: "listen",
            source_name: src(set),
            reason: format!("{listen_text:?}: {e}"),
        })?;

        let (set, store) = pick!(store);
        let store = match store.as_deref() {
            None => StoreSpec::default_sqlite(),
            Some(text) => StoreSpec::parse(text).map_err(|reason| ConfigError::Invalid {
                key: "store",
                source_name: src(set),
                reason,
            })?,
        };
        let (set, namespace) = pick!(store_namespace);
        let store = store
            .with_namespace(namespace.as_deref().unwrap_or(crate::store::DEFAULT_NAMESPACE))
            .map_err(|reason| ConfigError::Invalid { key: "store_namespace", source_name: src(set), reason })?;
        let standby = args.standby || file.standby.unwrap_or(false);
        if standby && !store.is_shared() {
            return Err(ConfigError::Invalid {
                key: "standby",
                source_name: src(args.standby),
                reason: "a standby waits for a shared store's namespace: use a postgres:// or redis:// `store`".into(),
            });
        }

        let command =
            if args.command.is_empty() { file.command.clone().unwrap_or_default() } else { args.command.clone() };
        let (_, http) = pick!(upstream);
        let (_, sse) = pick!(upstream_sse);
        let upstream = match (http, sse, command.is_empty()) {
            (Some(url), None, true) => UpstreamSpec::Streamable { url: check_url("upstream", &url)? },
            (None, Some(url), true) => UpstreamSpec::Sse { url: check_url("upstream_sse", &url)? },
            (None, None, false) => UpstreamSpec::Stdio { command },
            (None, None, true) => return Err(ConfigError::NoUpstream),
            _ => return Err(ConfigError::TwoUpstreams),
        };

        let duration = |key: &'static str, flag: &Option<String>, file_v: &Option<String>, default: &str| {
            let text = flag.clone().or(file_v.clone()).unwrap_or_else(|| default.to_owned());
            humantime::parse_duration(&text).map_err(|e| ConfigError::Invalid {
                key,
                source_name: src(flag.is_some()),
                reason: format!("{text:?}: {e} (use e.g. 30s, 10m, 24h)"),
            })
        };
        let ttl = duration("session_ttl", &args.session_ttl, &file.session_ttl, "24h")?;
        let request_timeout = duration("request_timeout", &args.request_timeout, &file.request_timeout, "5m")?;
        let keepalive = duration("keepalive", &args.keepalive, &file.keepalive, "15s")?;
        let upstream_idle = duration("upstream_idle", &args.upstream_idle, &file.upstream_idle, "10m")?;
        let hibernate_after = duration("hibernate_after", &args.hibernate_after, &file.hibernate_after, "10m")?;
        let restart_window = duration("restart_window", &args.restart_window, &file.restart_window, "60s")?;
        let restart_cooldown = duration("restart_cooldown", &args.restart_cooldown, &file.restart_cooldown, "30s")?;
        let body_timeout = duration("body_timeout", &args.body_timeout, &file.body_timeout, "30s")?;
        let header_timeout = duration("header_timeout", &args.header_timeout, &file.header_timeout, "30s")?;
        for (key, d, flag) in [
            ("body_timeout", body_timeout, &args.body_timeout),
            ("header_timeout", header_timeout, &args.header_timeout),
            ("session_ttl", ttl, &args.session_ttl),
            ("request_timeout", request_timeout, &args.request_timeout),
            ("keepalive", keepalive, &args.keepalive),
            ("upstream_idle", upstream_idle, &args.upstream_idle),
            ("hibernate_after", hibernate_after, &args.hibernate_after),
            ("restart_window", restart_window, &args.restart_window),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid {
                    key,
                    source_name: src(flag.is_some()),
                    reason: "must be more than 0".into(),
                });
            }
        }
        let event_max_age = duration("event_max_age", &args.event_max_age, &file.event_max_age, "1h")?;
        // "0" alone is a valid window (commit before send); humantime wants a unit.
        let window_text = args.event_commit_window.clone().or(file.event_commit_window.clone());
        let commit_window = match window_text.as_deref().map(str::trim) {
            Some("0") => std::time::Duration::ZERO,
            _ => duration("event_commit_window", &args.event_commit_window, &file.event_commit_window, "5ms")?,
        };
        if commit_window > std::time::Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "event_commit_window",
                source_name: src(args.event_commit_window.is_some()),
                reason: "at most 1s: a crash loses the events of one window".into(),
            });
        }
        let store = store.with_commit_window(commit_window);
        let retention = Retention {
            per_stream: args.event_retention.or(file.event_retention).unwrap_or(1000).max(1),
            max_age_ms: event_max_age.as_millis() as u64,
            finished_streams: args.event_finished_streams.or(file.event_finished_streams).unwrap_or(32).max(1),
        };
        let max_failures = args.restart_max_failures.or(file.restart_max_failures).unwrap_or(5);
        if max_failures == 0 {
            return Err(ConfigError::Invalid {
                key: "restart_max_failures",
                source_name: src(args.restart_max_failures.is_some()),
                reason: "must be at least 1".into(),
            });
        }
        let restart = RestartPolicy {
            max_failures,
            window: restart_window,
            cooldown: restart_cooldown,
            ..RestartPolicy::default()
        };
        let retry_tools = if args.retry_tools.is_empty() {
            file.retry_tools.clone().unwrap_or_default()
        } else {
            args.retry_tools.clone()
        };
        let max_body = args.max_body.or(file.max_body).unwrap_or(4 << 20);
        let max_sessions = args.max_sessions.or(file.max_sessions).unwrap_or(10_000);
        let max_connections = args.max_connections.or(file.max_connections).unwrap_or(20_000);
        if max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "max_connections",
                source_name: src(args.max_connections.is_some()),
                reason: "must be at least 1".into(),
            });
        }

        let allow_origin = if args.allow_origin.is_empty() {
            file.allow_origin.clone().unwrap_or_default()
        } else {
            args.allow_origin.clone()
        };
        let allow_host = if args.allow_host.is_empty() {
            file.allow_host.clone().unwrap_or_default()
        } else {
            args.allow_host.clone()
        };
        let front = FrontConfig {
            check_host: listen.ip().is_loopback() || !allow_host.is_empty(),
            allowed_origins: allow_origin,
            allowed_hosts: allow_host,
            max_body,
            body_timeout,
            header_timeout,
            max_connections,
        };

        let (set, log_format) = pick!(log_format);
        let log_format = match log_format.as_deref().unwrap_or("plain") {
            "plain" => LogFormat::Plain,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::Invalid {
                    key: "log_format",
                    source_name: src(set),
                    reason: format!("{other:?}: use `plain` or `json`"),
                });
            }
        };
        let (set, log_level) = pick!(log_level);
        let log_level = log_level.unwrap_or_else(|| "info".into());
        if let Err(e) = crate::telemetry::parse_filter(&log_level) {
            return Err(ConfigError::Invalid { key: "log_level", source_name: src(set), reason: e.to_string() });
        }
        let admin = admin::load(args, &file, &file_name, listen)?;
        let (cluster, lease_ttl) = cluster::load(
            args,
            &file,
            &file_name,
            &store,
            standby,
            &[("listen", listen), ("admin_listen", admin.listen)],
        )?;
        let auth = auth::load(args, &file, &file_name)?;
        let mut upstream_options = auth::upstream_options(args, &file, &file_name, &upstream)?;
        let (set, protocol) = pick!(upstream_protocol);
        if let Some(text) = protocol {
            let invalid = |reason| ConfigError::Invalid { key: "upstream_protocol", source_name: src(set), reason };
            let protocol = UpstreamProtocol::parse(&text).map_err(invalid)?;
            if protocol == UpstreamProtocol::Modern && matches!(upstream, UpstreamSpec::Sse { .. }) {
                return Err(invalid(
                    "`modern` (MCP 2026-07-28) is spoken to Streamable HTTP and stdio upstreams, not legacy SSE".into(),
                ));
            }
            upstream_options.protocol = protocol;
        }
        let stdio_spare = args.stdio_spare.or(file.stdio_spare).unwrap_or(0);
        if stdio_spare > 0 {
            let invalid = |reason: String| ConfigError::Invalid {
                key: "stdio_spare",
                source_name: src(args.stdio_spare.is_some()),
                reason,
            };
            if !matches!(upstream, UpstreamSpec::Stdio { .. }) {
                return Err(invalid("spare children are for a stdio upstream (a command)".into()));
            }
            if stdio_spare > crate::upstream::spare::MAX_SPARES {
                return Err(invalid(format!("at most {}", crate::upstream::spare::MAX_SPARES)));
            }
            upstream_options.supervisor =
                std::sync::Arc::new(crate::upstream::supervisor::Supervisor::with_spares(stdio_spare));
        }

        Ok(Config {
            listen,
            store,
            upstream,
            front,
            session: SessionConfig {
                ttl,
                request_timeout,
                keepalive,
                max_sessions,
                upstream_idle,
                hibernate_after,
                restart,
                retry_tools,
                retention,
                upstream: upstream_options,
                ..SessionConfig::default()
            },
            log_level,
            log_format,
            admin,
            auth,
            standby,
            cluster,
            lease_ttl,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::File { path: path.display().to_string(), reason: e.to_string() })?;
    toml::from_str(&text).map_err(|e| ConfigError::File { path: path.display().to_string(), reason: e.to_string() })
}

fn check_url(key: &'static str, url: &str) -> Result<String, ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(url.to_owned()),
        Ok(u) => Err(ConfigError::Invalid {
            key,
            source_name: "flag, environment or file".into(),
            reason: format!("scheme {:?} is not http or https", u.scheme()),
        }),
        Err(e) => Err(ConfigError::Invalid {
            key,
            source_name: "flag, environment or file".into(),
            reason: format!("{url:?}: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn args(cmd: &[&str]) -> ServeArgs {
        ServeArgs { command: cmd.iter().map(|s| s.to_string()).collect(), ..ServeArgs::default() }
    }

    #[test]
    fn defaults_are_safe() {
        let c = Config::load(&args(&["server"])).expect("valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.front.check_host);
        assert_eq!(c.front.max_body, 4 << 20);
        assert_eq!(c.front.header_timeout, Duration::from_secs(30));
        assert_eq!(c.front.body_timeout, Duration::from_secs(30));
        assert_eq!(c.front.max_connections, 20_000);
        assert_eq!(c.session.ttl, Duration::from_secs(86400));
        assert_eq!(c.session.keepalive, Duration::from_secs(15));
        assert_eq!(c.upstream, UpstreamSpec::Stdio { command: vec!["server".into()] });
    }

    #[test]
    fn errors_name_the_key() {
        let mut a = args(&["x"]);
        a.session_ttl = Some("forever".into());
        let e = Config::load(&a).expect_err("invalid").to_string();
        assert!(e.contains("`session_ttl`"), "{e}");
        let mut a = args(&["x"]);
        a.listen = Some("nope".into());
        assert!(Config::load(&a).expect_err("invalid").to_string().contains("`listen`"));
        assert!(matches!(Config::load(&args(&[])), Err(ConfigError::NoUpstream)));
        let mut a = args(&["x"]);
        a.upstream = Some("http://127.0.0.1:1/mcp".into());
        assert!(matches!(Config::load(&a), Err(ConfigError::TwoUpstreams)));
        let a = ServeArgs { upstream: Some("ftp://x".into()), ..ServeArgs::default() };
        assert!(Config::load(&a).expect_err("invalid").to_string().contains("`upstream`"));
    }

    #[test]
    fn a_standby_needs_a_shared_store() {
        let mut a = args(&["server"]);
        assert!(!Config::load(&a).expect("valid").standby);
        a.standby = true;
        let e = Config::load(&a).expect_err("sqlite").to_string();
        assert!(e.contains("`standby`") && e.contains("postgres://"), "{e}");
        a.store = Some("postgres://postgres@127.0.0.1:5432/test".into());
        let c = Config::load(&a).expect("valid");
        assert!(c.standby);
        assert!(c.cluster.is_none(), "a standby has no hop");
        assert!(c.to_redacted_toml().contains("standby = true"));
    }

    #[test]
    fn stdio_spares_are_off_by_default_bounded_and_for_a_command() {
        assert_eq!(Config::load(&args(&["server"])).expect("valid").session.upstream.supervisor.spares.want(), 0);
        let mut a = args(&["server"]);
        a.stdio_spare = Some(2);
        let c = Config::load(&a).expect("valid");
        assert_eq!(c.session.upstream.supervisor.spares.want(), 2);
        assert!(c.to_redacted_toml().contains("stdio_spare = 2"));
        a.stdio_spare = Some(9);
        let e = Config::load(&a).expect_err("too many").to_string();
        assert!(e.contains("`stdio_spare`") && e.contains("at most 8"), "{e}");
        let a =
            ServeArgs { upstream: Some("http://127.0.0.1:1/mcp".into()), stdio_spare: Some(1), ..ServeArgs::default() };
        let e = Config::load(&a).expect_err("http").to_string();
        assert!(e.contains("`stdio_spare`") && e.contains("stdio"), "{e}");
    }

    #[test]
    fn the_upstream_protocol_is_auto_by_default_and_modern_needs_http_or_stdio() {
        let http = |p: Option<&str>| ServeArgs {
            upstream: Some("http://127.0.0.1:1/mcp".into()),
            upstream_protocol: p.map(Into::into),
            ..ServeArgs::default()
        };
        assert_eq!(Config::load(&http(None)).expect("valid").session.upstream.protocol, UpstreamProtocol::Auto);
        for p in [UpstreamProtocol::Handshake, UpstreamProtocol::Modern, UpstreamProtocol::Auto] {
            let c = Config::load(&http(Some(p.as_str()))).expect("valid");
            assert_eq!(c.session.upstream.protocol, p);
            assert!(c.to_redacted_toml().contains(&format!("upstream_protocol = \"{}\"", p.as_str())));
        }
        let e = Config::load(&http(Some("2026-07-28"))).expect_err("bad value").to_string();
        assert!(e.contains("`upstream_protocol`"), "{e}");
        let mut a = args(&["server"]);
        a.upstream_protocol = Some("modern".into());
        assert_eq!(Config::load(&a).expect("modern stdio").session.upstream.protocol, UpstreamProtocol::Modern);
        let sse = ServeArgs {
            upstream_sse: Some("http://127.0.0.1:1/sse".into()),
            upstream_protocol: Some("modern".into()),
            ..ServeArgs::default()
        };
        let e = Config::load(&sse).expect_err("modern sse").to_string();
        assert!(e.contains("`upstream_protocol`") && e.contains("legacy SSE"), "{e}");
    }

    #[test]
    fn the_event_commit_window_is_a_store_setting_with_zero_allowed() {
        let c = Config::load(&args(&["x"])).expect("valid");
        assert_eq!(c.store.commit_window(), Duration::from_millis(5), "a few ms by default");
        for (text, want) in [("0", Duration::ZERO), ("0s", Duration::ZERO), ("20ms", Duration::from_millis(20))] {
            let mut a = args(&["x"]);
            a.store = Some("sqlite:///tmp/t.db".into());
            a.event_commit_window = Some(text.into());
            assert_eq!(Config::load(&a).expect("valid").store.commit_window(), want, "{text}");
        }
        for bad in ["2s", "soon"] {
            let mut a = args(&["x"]);
            a.event_commit_window = Some(bad.into());
            let e = Config::load(&a).expect_err("invalid").to_string();
            assert!(e.contains("`event_commit_window`"), "{e}");
        }
        let dir = std::env::temp_dir().join(format!("tether-config-window-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("tether.toml");
        std::fs::write(&path, "command = [\"x\"]\nevent_commit_window = \"0\"\n").expect("write");
        let c = Config::load(&ServeArgs { config: Some(path), ..ServeArgs::default() }).expect("valid");
        assert_eq!(c.store.commit_window(), Duration::ZERO, "the TOML key");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_file_fills_what_flags_leave_out() {
        let dir = std::env::temp_dir().join(format!("tether-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("tether.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nupstream = \"http://127.0.0.1:3001/mcp\"\nsession_ttl = \"2h\"\n",
        )
        .expect("write");
        let mut a = ServeArgs { config: Some(path.clone()), ..ServeArgs::default() };
        a.session_ttl = Some("1h".into());
        let c = Config::load(&a).expect("valid");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.session.ttl, Duration::from_secs(3600), "the flag wins over the file");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nbogus = 1\n").expect("write");
        let e = Config::load(&ServeArgs { config: Some(path), ..ServeArgs::default() })
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
