//! The authentication keys (`auth_*`) and the credentials tether gives its upstream
//! (`upstream_header`, `forward_auth`, `env`). Files are read here, so `check-config` finds a
//! bad token file or JWKS file before anything starts; errors never show a secret.

use super::{ConfigError, FileConfig, ServeArgs};
use crate::auth::{AuthConfig, JwksSource, TokenFile};
use crate::upstream::credentials::{parse_env, parse_headers};
use crate::upstream::{UpstreamOptions, UpstreamSpec};

/// Picks the flag (or environment) value, else the file's, and names where it came from.
fn layer<T: Clone>(flag: Option<&T>, file: Option<&T>, file_name: &str) -> (Option<T>, String) {
    match (flag, file) {
        (Some(v), _) => (Some(v.clone()), "flag or environment".to_owned()),
        (None, Some(v)) => (Some(v.clone()), file_name.to_owned()),
        (None, None) => (None, "default".to_owned()),
    }
}

fn list(flag: &[String], file: &Option<Vec<String>>, file_name: &str) -> (Vec<String>, String) {
    if flag.is_empty() {
        (file.clone().unwrap_or_default(), file_name.to_owned())
    } else {
        (flag.to_vec(), "flag or environment".to_owned())
    }
}

fn invalid(key: &'static str, source_name: String, reason: String) -> ConfigError {
    ConfigError::Invalid { key, source_name, reason }
}

fn url(key: &'static str, src: &str, text: &str) -> Result<String, ConfigError> {
    match reqwest::Url::parse(text) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(text.to_owned()),
        _ => Err(invalid(key, src.to_owned(), format!("{text:?} is not an http(s) URL"))),
    }
}

pub(super) fn load(args: &ServeArgs, file: &FileConfig, file_name: &str) -> Result<AuthConfig, ConfigError> {
    let (token_file, src) = layer(args.auth_token_file.as_ref(), file.auth_token_file.as_ref(), file_name);
    if let Some(path) = &token_file {
        let f = TokenFile::open(path).map_err(|e| invalid("auth_token_file", src.clone(), e))?;
        if f.is_empty() {
            return Err(invalid("auth_token_file", src, format!("{}: no `name:token` line", path.display())));
        }
    }
    let (jwks, jwks_src) = layer(args.auth_jwks.as_ref(), file.auth_jwks.as_ref(), file_name);
    let jwks = jwks.map(|t| JwksSource::parse(&t));
    if let Some(JwksSource::Url(u)) = &jwks {
        url("auth_jwks", &jwks_src, u)?;
    }
    if let Some(JwksSource::File(p)) = &jwks
        && !p.is_file()
    {
        return Err(invalid("auth_jwks", jwks_src, format!("{}: not a URL, nor a readable file", p.display())));
    }
    let (issuer, issuer_src) = layer(args.auth_issuer.as_ref(), file.auth_issuer.as_ref(), file_name);
    let (audience, audience_src) = list(&args.auth_audience, &file.auth_audience, file_name);
    match (&jwks, &issuer, audience.is_empty()) {
        (Some(_), None, _) => {
            return Err(invalid(
                "auth_issuer",
                jwks_src,
                "`auth_jwks` needs `auth_issuer` (the `iss` JWTs carry)".into(),
            ));
        }
        (Some(_), _, true) => {
            return Err(invalid(
                "auth_audience",
                jwks_src,
                "`auth_jwks` needs `auth_audience` (the `aud` JWTs for this server carry)".into(),
            ));
        }
        (None, Some(_), _) => {
            return Err(invalid("auth_issuer", issuer_src, "set `auth_jwks` too, or JWTs are not checked".into()));
        }
        (None, None, false) => {
            return Err(invalid("auth_audience", audience_src, "set `auth_jwks` too, or JWTs are not checked".into()));
        }
        _ => {}
    }
    let (servers, servers_src) = list(&args.auth_authorization_server, &file.auth_authorization_server, file_name);
    for s in &servers {
        url("auth_authorization_server", &servers_src, s)?;
    }
    let (resource, resource_src) = layer(args.auth_resource.as_ref(), file.auth_resource.as_ref(), file_name);
    if let Some(r) = &resource {
        url("auth_resource", &resource_src, r)?;
    }
    Ok(AuthConfig { token_file, jwks, issuer, audience, authorization_servers: servers, resource })
}

pub(super) fn upstream_options(
    args: &ServeArgs,
    file: &FileConfig,
    file_name: &str,
    upstream: &UpstreamSpec,
) -> Result<UpstreamOptions, ConfigError> {
    let stdio = matches!(upstream, UpstreamSpec::Stdio { .. });
    let (header_lines, header_src) = list(&args.upstream_header, &file.upstream_header, file_name);
    let headers = parse_headers("upstream_header", &header_lines)
        .map_err(|e| invalid("upstream_header", header_src.clone(), e))?;
    if stdio && !headers.is_empty() {
        return Err(invalid(
            "upstream_header",
            header_src,
            "headers go to HTTP and SSE upstreams; a stdio upstream takes `env`".into(),
        ));
    }
    let forward_auth = args.forward_auth || file.forward_auth.unwrap_or(false);
    if stdio && forward_auth {
        let src = if args.forward_auth { "flag or environment".to_owned() } else { file_name.to_owned() };
        return Err(invalid("forward_auth", src, "a stdio upstream has no HTTP requests to carry it".into()));
    }
    let (env_pairs, env_src) = list(&args.env, &file.env, file_name);
    let env = parse_env("env", &env_pairs).map_err(|e| invalid("env", env_src.clone(), e))?;
    if !stdio && !env.is_empty() {
        return Err(invalid(
            "env",
            env_src,
            "`env` is for a stdio upstream; HTTP upstreams take `upstream_header`".into(),
        ));
    }
    Ok(UpstreamOptions { headers, forward_auth, env, ..UpstreamOptions::default() })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn http_args() -> ServeArgs {
        ServeArgs { upstream: Some("http://127.0.0.1:1/mcp".into()), ..ServeArgs::default() }
    }

    #[test]
    fn jwt_settings_come_together() {
        let mut a = http_args();
        a.auth_jwks = Some("https://idp.example.com/jwks.json".into());
        let e = Config::load(&a).expect_err("no issuer").to_string();
        assert!(e.contains("`auth_issuer`"), "{e}");
        a.auth_issuer = Some("https://idp.example.com".into());
        let e = Config::load(&a).expect_err("no audience").to_string();
        assert!(e.contains("`auth_audience`"), "{e}");
        a.auth_audience = vec!["tether".into()];
        let c = Config::load(&a).expect("valid");
        assert!(c.auth.enabled());
        assert_eq!(c.auth.jwks, Some(JwksSource::Url("https://idp.example.com/jwks.json".into())));
        let mut a = http_args();
        a.auth_issuer = Some("https://idp.example.com".into());
        assert!(Config::load(&a).expect_err("issuer alone").to_string().contains("`auth_issuer`"));
        let mut a = http_args();
        a.auth_jwks = Some("/surely/not/a/file.json".into());
        assert!(Config::load(&a).expect_err("missing file").to_string().contains("`auth_jwks`"));
    }

    #[test]
    fn upstream_credentials_fit_the_upstream_kind() {
        let mut a = http_args();
        a.upstream_header = vec!["Authorization: Bearer ${PATH}".into()];
        a.forward_auth = true;
        let c = Config::load(&a).expect("valid");
        assert!(c.session.upstream.forward_auth);
        assert!(c.session.upstream.headers["authorization"].is_sensitive());
        a.env = vec!["A=1".into()];
        assert!(Config::load(&a).expect_err("env on http").to_string().contains("`env`"));
        let mut s = ServeArgs { command: vec!["server".into()], env: vec!["A=1".into()], ..ServeArgs::default() };
        assert_eq!(Config::load(&s).expect("valid").session.upstream.env, vec![("A".into(), "1".into())]);
        s.upstream_header = vec!["X: y".into()];
        assert!(Config::load(&s).expect_err("header on stdio").to_string().contains("`upstream_header`"));
    }
}
