//! JWT bearer tokens checked against a JWKS (`--auth-jwks URL|FILE`), with the issuer and
//! audience required. Only RS256, ES256 and EdDSA are accepted: `alg: none` does not parse,
//! and HMAC is refused before any key is looked at (a public key must never be used as an HMAC
//! secret). Each key is used only with the one algorithm its type allows.
//!
//! The key set is cached and refreshed every [`REFRESH`]; a token naming an unknown `kid`
//! (the issuer rotated its keys) makes one refresh at once, at most one per [`FORCED_GAP`],
//! however many such tokens arrive.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Principal;

/// How often the key set is fetched again.
const REFRESH: Duration = Duration::from_secs(300);
/// The least time between two refreshes forced by unknown `kid`s.
const FORCED_GAP: Duration = Duration::from_secs(10);
/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_S: u64 = 60;
/// The largest key set accepted.
const MAX_JWKS: usize = 1 << 20;

/// Where the key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// An `https://` (or `http://`) URL.
    Url(String),
    /// A file holding the JWKS JSON.
    File(PathBuf),
}

impl JwksSource {
    /// A URL when it looks like one, else a file path.
    pub fn parse(text: &str) -> JwksSource {
        if text.starts_with("https://") || text.starts_with("http://") {
            JwksSource::Url(text.to_owned())
        } else {
            JwksSource::File(PathBuf::from(text))
        }
    }

    /// As configured.
    pub fn describe(&self) -> String {
        match self {
            JwksSource::Url(u) => u.clone(),
            JwksSource::File(p) => p.display().to_string(),
        }
    }
}

/// Why a JWT was refused (logged; the client only learns "invalid token").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a JWT, or a header that does not parse (including `alg: none`).
    #[error("malformed token")]
    Malformed,
    /// An algorithm other than RS256, ES256 and EdDSA (HMAC among them).
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(Algorithm),
    /// No key for the token's `kid`, even after a refresh.
    #[error("no key with this kid")]
    UnknownKey,
    /// Signature, expiry, issuer, audience or a required claim.
    #[error("{0}")]
    Claims(String),
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The claims read from a token. Typed, so a claim of the wrong type fails to parse rather
/// than being skipped.
#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
}

/// Checks JWTs for one issuer and audience.
pub struct JwtVerifier {
    source: JwksSource,
    http: reqwest::Client,
    validation_base: Validation,
    keys: RwLock<Arc<Vec<Key>>>,
    /// When the last forced refresh ran; held while one runs, so concurrent unknown kids share it.
    forced: tokio::sync::Mutex<Option<Instant>>,
}

impl JwtVerifier {
    /// A verifier; the key set is fetched now (a failure is logged, and retried on use).
    pub async fn new(source: JwksSource, issuer: &str, audience: &[String]) -> Result<JwtVerifier, String> {
        // Its own client: the upstream client carries `--upstream-header` credentials, which
        // must never reach the identity provider.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let mut v = Validation::new(Algorithm::RS256);
        v.leeway = LEEWAY_S;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[issuer]);
        v.set_audience(audience);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let me = JwtVerifier {
            source,
            http,
            validation_base: v,
            keys: RwLock::new(Arc::new(Vec::new())),
            forced: tokio::sync::Mutex::new(None),
        };
        if let JwksSource::File(_) = me.source {
            // A key file that cannot be read is a configuration error, found at start.
            me.refresh().await?;
        } else if let Err(e) = me.refresh().await {
            warn!(jwks = %me.source.describe(), error = %e, "fetching the JWKS failed; retried on the next token");
        }
        Ok(me)
    }

    /// Refreshes the key set every [`REFRESH`] until `stop`.
    pub fn spawn_refresh(self: &Arc<Self>, stop: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + REFRESH, REFRESH);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        if let Err(e) = me.refresh().await {
                            warn!(jwks = %me.source.describe(), error = %e, "refreshing the JWKS failed; the cached keys stay");
                        }
                    }
                }
            }
        });
    }

    /// Fetches (or reads) the key set and replaces the cached one.
    async fn refresh(&self) -> Result<(), String> {
        let bytes = match &self.source {
            JwksSource::File(p) => tokio::fs::read(p).await.map_err(|e| format!("{}: {e}", p.display()))?,
            JwksSource::Url(u) => {
                let resp = self.http.get(u).send().await.map_err(|e| e.without_url().to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("HTTP {}", resp.status().as_u16()));
                }
                if resp.content_length().is_some_and(|n| n as usize > MAX_JWKS) {
                    return Err("the key set is too large".into());
                }
                let b = resp.bytes().await.map_err(|e| e.without_url().to_string())?;
                if b.len() > MAX_JWKS {
                    return Err("the key set is too large".into());
                }
                b.to_vec()
            }
        };
        let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| format!("not a JWKS: {e}"))?;
        let keys = usable_keys(&set);
        info!(jwks = %self.source.describe(), keys = keys.len(), "JWKS loaded");
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        Ok(())
    }

    fn cached(&self) -> Arc<Vec<Key>> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Checks `token`; its principal is its issuer and subject.
    pub async fn verify(&self, token: &str) -> Result<Principal, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA) {
            return Err(JwtError::Algorithm(header.alg));
        }
        let fits = |k: &Key| k.alg == header.alg && (header.kid.is_none() || k.kid == header.kid);
        let mut keys = self.cached();
        if !keys.iter().any(fits) {
            // A rotated key, or a key set that could not be fetched at start.
            self.forced_refresh().await;
            keys = self.cached();
        }
        let candidates: Vec<&Key> = keys.iter().filter(|k| fits(k)).take(8).collect();
        if candidates.is_empty() {
            return Err(JwtError::UnknownKey);
        }
        let mut validation = self.validation_base.clone();
        validation.algorithms = vec![header.alg];
        let mut last = JwtError::UnknownKey;
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(data) => return Ok(Principal::jwt(&data.claims.iss, &data.claims.sub)),
                Err(e) => last = JwtError::Claims(why(&e)),
            }
        }
        Err(last)
    }

    /// One refresh for an unknown `kid`, unless one ran within [`FORCED_GAP`]. Callers that
    /// arrive while it runs wait for it rather than starting their own.
    async fn forced_refresh(&self) {
        let mut last = self.forced.lock().await;
        if last.is_some_and(|t| t.elapsed() < FORCED_GAP) {
            debug!("unknown kid; the JWKS was refreshed moments ago");
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.refresh().await {
            warn!(jwks = %self.source.describe(), error = %e, "refreshing the JWKS for an unknown kid failed");
        }
    }
}

/// A short, fixed reason for a refused token: never the token, nor a claim's value.
fn why(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => "bad signature".into(),
        K::ExpiredSignature => "expired".into(),
        K::ImmatureSignature => "not valid yet".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::MissingRequiredClaim(c) => format!("missing claim {c}"),
        K::InvalidAlgorithm => "algorithm does not match the key".into(),
        K::Json(_) | K::Base64(_) | K::Utf8(_) | K::InvalidToken => "malformed claims".into(),
        _ => "invalid".into(),
    }
}

/// The keys of a set tether can use, each with the one algorithm it is used with. Symmetric
/// keys, unknown types and keys whose `alg` disagrees with their type are left out.
fn usable_keys(set: &JwkSet) -> Vec<Key> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
            _ => continue,
        };
        let declared = jwk.common.key_algorithm.map(|d| match d {
            KeyAlgorithm::RS256 => Some(Algorithm::RS256),
            KeyAlgorithm::ES256 => Some(Algorithm::ES256),
            KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
            _ => None,
        });
        if declared.is_some_and(|d| d != Some(alg)) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
        let kid = jwk.common.key_id.clone();
        if kid.as_ref().is_some_and(|k| !seen.insert(k.clone())) {
            continue;
        }
        out.push(Key { kid, alg, key });
    }
    out
}
