//! `tether check-config`: the effective configuration as TOML — the same keys a config file
//! takes, every default filled in — with secrets redacted. Feeding the output back as a file
//! gives the same configuration, save the redacted secrets.

use std::time::Duration;

use super::{Config, FileConfig, LogFormat};
use crate::upstream::UpstreamSpec;

/// What a redacted secret prints as.
pub const REDACTED: &str = "***";

impl Config {
    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let (upstream, upstream_sse, command) = match &self.upstream {
            UpstreamSpec::Streamable { url } => (Some(redact_url(url)), None, None),
            UpstreamSpec::Sse { url } => (None, Some(redact_url(url)), None),
            UpstreamSpec::Stdio { command } => (None, None, Some(command.clone())),
            #[cfg(test)]
            UpstreamSpec::Fake(_) => (None, None, None),
        };
        let s = &self.session;
        // Every key, so that a key added to the file format without a line here fails to build.
        let file = FileConfig {
            listen: Some(self.listen.to_string()),
            store: Some(self.store.describe()),
            store_namespace: Some(self.store.namespace().to_owned()),
            upstream,
            upstream_sse,
            upstream_protocol: Some(s.upstream.protocol.as_str().into()),
            command,
            allow_origin: Some(self.front.allowed_origins.clone()),
            allow_host: Some(self.front.allowed_hosts.clone()),
            session_ttl: Some(duration(s.ttl)),
            request_timeout: Some(duration(s.request_timeout)),
            keepalive: Some(duration(s.keepalive)),
            upstream_idle: Some(duration(s.upstream_idle)),
            hibernate_after: Some(duration(s.hibernate_after)),
            event_retention: Some(s.retention.per_stream),
            event_max_age: Some(duration(Duration::from_millis(s.retention.max_age_ms))),
            event_finished_streams: Some(s.retention.finished_streams),
            event_commit_window: Some(duration(self.store.commit_window())),
            retry_tools: Some(s.retry_tools.clone()),
            restart_max_failures: Some(s.restart.max_failures),
            restart_window: Some(duration(s.restart.window)),
            restart_cooldown: Some(duration(s.restart.cooldown)),
            max_body: Some(self.front.max_body),
            body_timeout: Some(duration(self.front.body_timeout)),
            header_timeout: Some(duration(self.front.header_timeout)),
            max_connections: Some(self.front.max_connections),
            max_sessions: Some(s.max_sessions),
            stdio_spare: Some(s.upstream.supervisor.spares.want()),
            log_level: Some(self.log_level.clone()),
            log_format: Some(match self.log_format {
                LogFormat::Plain => "plain".into(),
                LogFormat::Json => "json".into(),
            }),
            admin_listen: Some(self.admin.listen.to_string()),
            admin_token: match (&self.admin.token, &self.admin.token_file) {
                (Some(_), None) => Some(REDACTED.into()),
                _ => None,
            },
            admin_token_file: self.admin.token_file.clone(),
            auth_token_file: self.auth.token_file.clone(),
            auth_jwks: self.auth.jwks.as_ref().map(|j| redact_url(&j.describe())),
            auth_issuer: self.auth.issuer.clone(),
            auth_audience: Some(self.auth.audience.clone()),
            auth_authorization_server: Some(self.auth.authorization_servers.clone()),
            auth_resource: self.auth.resource.clone(),
            // Header values and child environment values may be secrets: only names are shown.
            upstream_header: Some(
                s.upstream.headers.keys().map(|name| format!("{name}: {REDACTED}")).collect::<Vec<_>>(),
            ),
            forward_auth: Some(s.upstream.forward_auth),
            standby: Some(self.standby),
            cluster_listen: self.cluster.as_ref().map(|c| c.listen.to_string()),
            cluster_advertise: self.cluster.as_ref().map(|c| c.advertise.clone()),
            // The path only: the secret itself is never printed.
            cluster_secret_file: self.cluster.as_ref().and_then(|c| c.secret_file.clone()),
            lease_ttl: Some(duration(self.lease_ttl)),
            env: Some(s.upstream.env.iter().map(|(k, _)| format!("{k}={REDACTED}")).collect()),
        };
        let mut out = String::from("# tether: the effective configuration (secrets redacted)\n");
        if self.admin.token.is_none() {
            out.push_str(&format!(
                "# admin_token: none configured; `tether serve` generates one at start into {}\n",
                self.store.state_dir().join(crate::admin::token::TOKEN_FILE).display()
            ));
        }
        match toml::to_string(&file) {
            Ok(t) => out.push_str(&t),
            Err(e) => out.push_str(&format!("# cannot print as TOML: {e}\n")),
        }
        out
    }
}

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A URL with its password, if any, replaced.
fn redact_url(url: &str) -> String {
    crate::store::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::super::ServeArgs;
    use super::*;

    #[test]
    fn the_output_is_a_config_file_for_the_same_config_without_secrets() {
        let a = ServeArgs {
            upstream: Some("https://user:hunter2@example.com/mcp".into()),
            admin_token: Some("s3cret-token".into()),
            session_ttl: Some("2h".into()),
            store: Some("memory".into()),
            ..ServeArgs::default()
        };
        let c = Config::load(&a).expect("valid");
        let text = c.to_redacted_toml();
        assert!(!text.contains("s3cret-token"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("admin_token = \"***\""), "{text}");
        assert!(text.contains("session_ttl = \"2h\""), "{text}");

        // Upstream credentials show their names only.
        let a = ServeArgs {
            upstream: Some("https://example.com/mcp".into()),
            upstream_header: vec!["Authorization: Bearer up-secret".into(), "X-Team: blue".into()],
            store: Some("memory".into()),
            ..ServeArgs::default()
        };
        let t = Config::load(&a).expect("valid").to_redacted_toml();
        assert!(!t.contains("up-secret") && t.contains("authorization: ***"), "{t}");
        let a = ServeArgs { command: vec!["srv".into()], env: vec!["API_KEY=k3y".into()], ..ServeArgs::default() };
        let t = Config::load(&a).expect("valid").to_redacted_toml();
        assert!(!t.contains("k3y") && t.contains("API_KEY=***"), "{t}");

        // Read back, with the secrets given again, it is the same configuration.
        let dir = std::env::temp_dir().join(format!("tether-effective-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("effective.toml");
        let restored = text.replace("\"***\"", "\"s3cret-token\"").replace("user:***@", "user:hunter2@");
        std::fs::write(&path, restored).expect("write");
        let again = Config::load(&ServeArgs { config: Some(path), ..ServeArgs::default() }).expect("valid");
        assert_eq!(again.to_redacted_toml(), text);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_store_password_is_redacted_and_the_namespace_shown() {
        let a = ServeArgs {
            store: Some("postgres://app:pg-s3cret@db.internal:5432/tether".into()),
            store_namespace: Some("blue".into()),
            cluster_listen: Some("127.0.0.1:7070".into()),
            command: vec!["srv".into()],
            ..ServeArgs::default()
        };
        let t = Config::load(&a).expect("valid").to_redacted_toml();
        assert!(!t.contains("pg-s3cret"), "{t}");
        assert!(t.contains("store = \"postgres://app:***@db.internal:5432/tether\""), "{t}");
        assert!(t.contains("store_namespace = \"blue\""), "{t}");
        let bad = ServeArgs { store_namespace: Some("Blue-1".into()), ..a };
        let e = Config::load(&bad).expect_err("refused").to_string();
        assert!(e.contains("store_namespace"), "{e}");
    }
}
