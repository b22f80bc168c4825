//! Keys, JWTs and a JWKS server made inside the tests: RSA, P-256 and Ed25519 key pairs, their
//! public JWKs, tokens signed with them (and forged ones), and a tiny HTTP server that serves
//! a JWKS and counts how often it is fetched.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The issuer and audience the tests configure.
pub const ISSUER: &str = "https://idp.tether.test";
pub const AUDIENCE: &str = "tether-test";

/// A signing key and its public JWK.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

impl TestKey {
    /// A fresh RSA-2048 key (RS256).
    pub fn rsa(kid: &str) -> TestKey {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
        let der = key.to_pkcs1_der().expect("PKCS#1");
        let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be())});
        TestKey { kid: kid.into(), alg: Algorithm::RS256, encoding: EncodingKey::from_rsa_der(der.as_bytes()), jwk }
    }

    /// A fresh P-256 key (ES256).
    pub fn ec(kid: &str) -> TestKey {
        use p256::pkcs8::EncodePrivateKey;
        let sk = p256::ecdsa::SigningKey::random(&mut rsa::rand_core::OsRng);
        let der = sk.to_pkcs8_der().expect("PKCS#8");
        let point = sk.verifying_key().to_encoded_point(false);
        let jwk = json!({"kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
            "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y"))});
        TestKey { kid: kid.into(), alg: Algorithm::ES256, encoding: EncodingKey::from_ec_der(der.as_bytes()), jwk }
    }

    /// A fresh Ed25519 key (EdDSA).
    pub fn ed(kid: &str) -> TestKey {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let sk = ed25519_dalek::SigningKey::generate(&mut rsa::rand_core::OsRng);
        let der = sk.to_pkcs8_der().expect("PKCS#8");
        let jwk = json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "alg": "EdDSA",
            "x": b64(sk.verifying_key().as_bytes())});
        TestKey { kid: kid.into(), alg: Algorithm::EdDSA, encoding: EncodingKey::from_ed_der(der.as_bytes()), jwk }
    }

    /// A token with `claims`, signed by this key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).expect("signs")
    }

    /// A token signed by this key but naming another `kid`.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &self.encoding).expect("signs")
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// Claims a configured gateway accepts, for subject `sub`.
pub fn claims(sub: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now(), "exp": now() + 300})
}

/// An unsigned token (`alg: none`) with `claims`, naming `kid`.
pub fn alg_none(kid: &str, claims: &Value) -> String {
    let h = json!({"alg": "none", "typ": "JWT", "kid": kid});
    format!("{}.{}.", b64(h.to_string().as_bytes()), b64(claims.to_string().as_bytes()))
}

/// An HS256 token whose secret is a public key's published bytes (the classic confusion).
pub fn hmac_with_public_key(key: &TestKey, claims: &Value) -> String {
    let secret = key.jwk.to_string();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret.as_bytes())).expect("signs")
}

/// A token with its signature's last bytes changed.
pub fn tampered(token: &str) -> String {
    let (head, sig) = token.rsplit_once('.').expect("three parts");
    let mut sig = B64.decode(sig).expect("base64");
    let last = sig.len() - 1;
    sig[last] ^= 0x55;
    sig[0] ^= 0x55;
    format!("{head}.{}", B64.encode(sig))
}

/// A JWKS served over HTTP from the test, counting fetches.
#[derive(Clone)]
pub struct JwksServer {
    pub url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl JwksServer {
    /// Serves `keys` on 127.0.0.1 (ephemeral port) until the test's runtime ends.
    pub async fn start(keys: &[&TestKey]) -> JwksServer {
        let state = JwksServer {
            url: String::new(),
            keys: Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect())),
            fetches: Arc::new(AtomicUsize::new(0)),
            failing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        async fn jwks(
            State(s): State<JwksServer>,
        ) -> (axum::http::StatusCode, [(&'static str, &'static str); 1], String) {
            s.fetches.fetch_add(1, Ordering::SeqCst);
            if s.failing.load(Ordering::SeqCst) {
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, [("content-type", "text/plain")], "down".into());
            }
            let keys = s.keys.lock().expect("lock").clone();
            (axum::http::StatusCode::OK, [("content-type", "application/json")], json!({ "keys": keys }).to_string())
        }
        let app = axum::Router::new().route("/jwks.json", axum::routing::get(jwks)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer { url, ..state }
    }

    /// Adds a key (the issuer rotated in a new one).
    pub fn add(&self, key: &TestKey) {
        self.keys.lock().expect("lock").push(key.jwk.clone());
    }

    /// Makes the server answer 503 (or serve again).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// How many times the set was fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A JWKS document for a file.
pub fn jwks_json(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-{name}-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}
