//! Who may use the MCP endpoint: bearer credentials — static tokens from a file ([`tokens`]) or
//! JWTs checked against a JWKS ([`jwt`]) — the [`Principal`] they name, and what a client
//! without them is told: 401 with `WWW-Authenticate: Bearer resource_metadata="…"`, and the
//! Protected Resource Metadata document (RFC 9728).
//!
//! It owns no sessions: the downstream layer binds each session to the principal's
//! fingerprint and answers another principal as if the session did not exist.

pub mod jwt;
mod principal;
pub mod tokens;

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::{HeaderMap, header};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use jwt::{JwksSource, JwtVerifier};
pub use principal::{Principal, Source, name_of, remember};
pub use tokens::TokenFile;

/// The path of the Protected Resource Metadata document.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// Authentication settings; all empty means the endpoint is open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// A file of `name:token` lines.
    pub token_file: Option<PathBuf>,
    /// Where the JWT signing keys come from.
    pub jwks: Option<JwksSource>,
    /// The `iss` JWTs must carry.
    pub issuer: Option<String>,
    /// The `aud` values JWTs may carry (one must match).
    pub audience: Vec<String>,
    /// Authorization servers named in the metadata document (default: the issuer).
    pub authorization_servers: Vec<String>,
    /// The public URL of the MCP endpoint, as clients reach it (default: from `Host`).
    pub resource: Option<String>,
}

impl AuthConfig {
    /// Whether requests need credentials.
    pub fn enabled(&self) -> bool {
        self.token_file.is_some() || self.jwks.is_some()
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    #[error("no bearer token")]
    Missing,
    /// A credential that is not valid; the reason is for the log only.
    #[error("invalid bearer token: {0}")]
    Invalid(String),
}

/// Checks credentials against the configured token file and JWKS.
pub struct Authenticator {
    tokens: Option<Arc<TokenFile>>,
    jwt: Option<Arc<JwtVerifier>>,
    config: AuthConfig,
}

impl Authenticator {
    /// Loads the token file and the key set, and starts their reloading until `stop`. `None`
    /// when authentication is off.
    pub async fn start(config: &AuthConfig, stop: CancellationToken) -> anyhow::Result<Option<Arc<Authenticator>>> {
        if !config.enabled() {
            return Ok(None);
        }
        let tokens = match &config.token_file {
            Some(path) => {
                let f = Arc::new(TokenFile::open(path).map_err(|e| anyhow::anyhow!("auth_token_file: {e}"))?);
                tracing::info!(path = %path.display(), tokens = f.len(), "auth token file loaded");
                f.watch(stop.clone());
                Some(f)
            }
            None => None,
        };
        let jwt = match (&config.jwks, &config.issuer) {
            (Some(source), Some(issuer)) => {
                let v = JwtVerifier::new(source.clone(), issuer, &config.audience)
                    .await
                    .map_err(|e| anyhow::anyhow!("auth_jwks: {e}"))?;
                let v = Arc::new(v);
                v.spawn_refresh(stop);
                Some(v)
            }
            (Some(_), None) => anyhow::bail!("auth_jwks needs auth_issuer"),
            (None, _) => None,
        };
        Ok(Some(Arc::new(Authenticator { tokens, jwt, config: config.clone() })))
    }

    /// The principal of the request's bearer credential.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let token = bearer(headers)?;
        if let Some(p) = self.tokens.as_ref().and_then(|t| t.check(token)) {
            return Ok(p);
        }
        match &self.jwt {
            // A compact JWS has three parts; anything else is not worth parsing.
            Some(v) if token.bytes().filter(|b| *b == b'.').count() == 2 => {
                v.verify(token).await.map_err(|e| AuthError::Invalid(e.to_string()))
            }
            _ => Err(AuthError::Invalid("unknown token".into())),
        }
    }

    /// The URL of the MCP endpoint as this request reached it.
    fn resource(&self, headers: &HeaderMap) -> String {
        if let Some(r) = &self.config.resource {
            return r.clone();
        }
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
        format!("http://{host}/mcp")
    }

    /// The metadata document's URL, for `WWW-Authenticate`.
    pub fn metadata_url(&self, headers: &HeaderMap) -> String {
        let resource = self.resource(headers);
        match reqwest::Url::parse(&resource) {
            Ok(u) => format!("{}{METADATA_PATH}", u.origin().ascii_serialization()),
            Err(_) => METADATA_PATH.to_owned(),
        }
    }

    /// The `WWW-Authenticate` value answering `err` (RFC 6750 and RFC 9728).
    pub fn challenge(&self, headers: &HeaderMap, err: &AuthError) -> String {
        let url = self.metadata_url(headers).replace('"', "%22");
        match err {
            AuthError::Missing => format!("Bearer resource_metadata=\"{url}\""),
            AuthError::Invalid(_) => format!(
                "Bearer resource_metadata=\"{url}\", error=\"invalid_token\", error_description=\"The access token is invalid or expired\""
            ),
        }
    }

    /// The Protected Resource Metadata document (RFC 9728).
    pub fn metadata(&self, headers: &HeaderMap) -> Value {
        let servers = if self.config.authorization_servers.is_empty() {
            self.config.issuer.iter().cloned().collect::<Vec<_>>()
        } else {
            self.config.authorization_servers.clone()
        };
        let mut doc = json!({
            "resource": self.resource(headers),
            "bearer_methods_supported": ["header"],
            "resource_name": "tether",
        });
        if !servers.is_empty() {
            doc["authorization_servers"] = json!(servers);
        }
        if self.jwt.is_some() {
            doc["resource_signing_alg_values_supported"] = json!(["RS256", "ES256", "EdDSA"]);
        }
        doc
    }
}

/// The token of an `Authorization: Bearer …` header (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(AuthError::Missing);
    };
    let value = value.to_str().map_err(|_| AuthError::Invalid("not ASCII".into()))?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Invalid("not a bearer credential".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Invalid("not a bearer credential".into()));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Invalid("empty token".into()));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(a));
        }
        h
    }

    #[test]
    fn the_bearer_scheme_is_required() {
        assert_eq!(bearer(&headers(None)), Err(AuthError::Missing));
        assert_eq!(bearer(&headers(Some("Bearer abc"))), Ok("abc"));
        assert_eq!(bearer(&headers(Some("bearer abc"))), Ok("abc"));
        assert!(matches!(bearer(&headers(Some("Basic abc"))), Err(AuthError::Invalid(_))));
        assert!(matches!(bearer(&headers(Some("Bearer "))), Err(AuthError::Invalid(_))));
    }

    #[tokio::test]
    async fn challenges_point_at_the_metadata() {
        let dir = std::env::temp_dir().join(format!("tether-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("tokens");
        std::fs::write(&path, "alice:tok-a\n").expect("write");
        let stop = CancellationToken::new();
        let config = AuthConfig { token_file: Some(path), ..AuthConfig::default() };
        let a = Authenticator::start(&config, stop.clone()).await.expect("starts").expect("on");
        let h = headers(None);
        assert_eq!(
            a.challenge(&h, &AuthError::Missing),
            "Bearer resource_metadata=\"http://127.0.0.1:8080/.well-known/oauth-protected-resource\""
        );
        assert!(a.challenge(&h, &AuthError::Invalid("x".into())).contains("error=\"invalid_token\""));
        assert_eq!(a.metadata(&h)["resource"], "http://127.0.0.1:8080/mcp");
        assert!(a.metadata(&h).get("authorization_servers").is_none());
        assert_eq!(a.authenticate(&headers(Some("Bearer tok-a"))).await.expect("valid").name(), "alice");
        assert!(matches!(a.authenticate(&headers(Some("Bearer tok-b"))).await, Err(AuthError::Invalid(_))));
        stop.cancel();
        let _ = std::fs::remove_dir_all(dir);
    }
}
