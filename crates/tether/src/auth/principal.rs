//! Who a request is from: a [`Principal`] (a token's name, or a JWT's issuer and subject) and
//! its fingerprint, the key a session is bound to.
//!
//! The fingerprint, not the name, is what sessions store: it has a fixed length and a safe
//! alphabet whatever the issuer and subject hold, it keeps subjects (often e-mail addresses)
//! out of the store, and it is a pure function of the principal — any replica, before or after
//! a restart, computes the same key. That also makes it the correlation key of the 2026-07-28
//! era (SEP-2567: "the authenticated principal when there is one"): a modern front binds its
//! upstream to `Principal::key` and checks it with [`Principal::owns`], as sessions do here.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Where a principal comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A line `name:token` of the token file.
    Token,
    /// A JWT checked against the JWKS.
    Jwt,
}

/// An authenticated caller. Holds no credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    source: Source,
    name: String,
    key: String,
}

impl Principal {
    /// The principal of a static token: its name in the token file.
    pub fn token(name: &str) -> Principal {
        Principal { source: Source::Token, name: name.to_owned(), key: fingerprint(&["token", name]) }
    }

    /// The principal of a JWT: its issuer and subject.
    pub fn jwt(issuer: &str, subject: &str) -> Principal {
        Principal {
            source: Source::Jwt,
            name: format!("{issuer}#{subject}"),
            key: fingerprint(&["jwt", issuer, subject]),
        }
    }

    /// Where it comes from.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The readable name for logs: the token's name, or `issuer#subject`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fingerprint stored in a session record and compared on every use.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether something bound to `bound` (a session's stored fingerprint) is this
    /// principal's.
    pub fn owns(&self, bound: Option<&str>) -> bool {
        bound.is_some_and(|b| b.as_bytes().ct_eq(self.key.as_bytes()).into())
    }
}

/// The most names [`remember`] keeps.
const MAX_NAMES: usize = 10_000;

/// Names of the principals this process has authenticated, by fingerprint, so the admin API
/// can show who owns a session while the store keeps only fingerprints. One directory serves
/// every gateway in the process: a fingerprint means the same principal wherever it is
/// computed. Bounded: when full it starts over (a name missing only means the admin API shows
/// the fingerprint alone until that principal's next request).
fn directory() -> &'static RwLock<HashMap<String, String>> {
    static NAMES: OnceLock<RwLock<HashMap<String, String>>> = OnceLock::new();
    NAMES.get_or_init(|| RwLock::new(HashMap::new()))
}

/// Notes `p`'s name under its fingerprint.
pub fn remember(p: &Principal) {
    let known = directory().read().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(p.key());
    if !known {
        let mut names = directory().write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if names.len() >= MAX_NAMES {
            names.clear();
        }
        names.insert(p.key().to_owned(), p.name().to_owned());
    }
}

/// The name of the principal with this fingerprint, when this process has seen it.
pub fn name_of(key: &str) -> Option<String> {
    directory().read().unwrap_or_else(std::sync::PoisonError::into_inner).get(key).cloned()
}

/// `p1.` and 32 hex digits of SHA-256 over the parts, each length-prefixed so that no two
/// different principals hash the same input (`a`+`bc` vs `ab`+`c`).
fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"tether-principal-v1");
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut out = String::from("p1.");
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_and_tell_principals_apart() {
        let a = Principal::token("alice");
        assert_eq!(a.key(), Principal::token("alice").key());
        assert_eq!(a.key().len(), 35);
        assert!(a.key().starts_with("p1."));
        assert_ne!(a.key(), Principal::token("bob").key());
        // The same text as a token name and as a JWT subject are different principals.
        assert_ne!(Principal::jwt("https://idp", "alice").key(), a.key());
        assert_ne!(Principal::jwt("https://idp", "xalice").key(), Principal::jwt("https://idpx", "alice").key());
        assert!(a.owns(Some(Principal::token("alice").key())));
        assert!(!a.owns(Some(Principal::token("bob").key())));
        assert!(!a.owns(None));
        assert_eq!(Principal::jwt("https://idp", "u1").name(), "https://idp#u1");
        let carol = Principal::jwt("https://idp", "carol");
        remember(&carol);
        assert_eq!(name_of(carol.key()).as_deref(), Some("https://idp#carol"));
    }
}
