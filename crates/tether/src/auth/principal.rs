//! Who a request is from: a [`Principal`] (a token's name, or a JWT's issuer and subject) and
//! its fingerprint, the key a session is bound to.
//!
//! The fingerprint, not the name, is what sessions store: it has a fixed length and a safe
//! alphabet whatever the issuer and subject hold, it keeps subjects (often e-mail addresses)
//! out of the store, and it is a pure function of the principal — any replica, before or after
//! a restart, computes the same key. That also makes it the correlation key of the 2026-07-28
//! era (SEP-2567: "the authenticated principal when there is one"): a modern front binds its
//! upstream to `Principal::key` and checks it with [`Principal::owns`], as sessions do here.

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
    }
}
