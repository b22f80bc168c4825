//! The `requestState` tether hands a 2026-07-28 client with an `input_required` result: an
//! AEAD-sealed (ChaCha20-Poly1305) claim naming the parked upstream request, bound to the
//! request's digest, the principal and an expiry. The key is random per process: a parked
//! request does not outlive the process that holds its upstream leg, so neither does its state.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "t1.";

/// What a sealed state says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The parked exchange.
    pub handle: u64,
    /// Digest of the request it belongs to (method and params, without the round's fields).
    pub digest: String,
    /// The principal's fingerprint, empty when authentication is off.
    pub principal: String,
    /// Unix milliseconds after which it is refused.
    pub expires_ms: u64,
}

/// Seals and opens states with one key.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Default for Sealer {
    fn default() -> Self {
        let key: [u8; 32] = rand::random();
        Sealer { cipher: ChaCha20Poly1305::new(&Key::from(key)) }
    }
}

impl Sealer {
    /// The sealed text of `claims`.
    pub fn seal(&self, claims: &Claims) -> String {
        let nonce: [u8; 12] = rand::random();
        let plain = serde_json::to_vec(claims).unwrap_or_default();
        // Encryption with a valid key and nonce cannot fail for inputs of this size.
        let sealed = self.cipher.encrypt(&Nonce::from(nonce), plain.as_slice()).unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(sealed);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// The claims of a state this process sealed, if it matches `digest` and `principal` and
    /// has not expired at `now_ms`.
    pub fn open(&self, text: &str, digest: &str, principal: &str, now_ms: u64) -> Option<Claims> {
        let bytes = URL_SAFE_NO_PAD.decode(text.strip_prefix(PREFIX)?).ok()?;
        if bytes.len() < 12 + 16 {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().ok()?;
        let plain = self.cipher.decrypt(&Nonce::from(nonce), sealed).ok()?;
        let claims: Claims = serde_json::from_slice(&plain).ok()?;
        (claims.digest == digest && claims.principal == principal && now_ms <= claims.expires_ms).then_some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims { handle: 7, digest: "d".into(), principal: "p1.x".into(), expires_ms: 1000 }
    }

    #[test]
    fn a_state_opens_only_for_its_request_principal_and_time() {
        let s = Sealer::default();
        let text = s.seal(&claims());
        assert_eq!(s.open(&text, "d", "p1.x", 999), Some(claims()));
        assert_eq!(s.open(&text, "other", "p1.x", 999), None, "another request");
        assert_eq!(s.open(&text, "d", "p1.y", 999), None, "another principal");
        assert_eq!(s.open(&text, "d", "p1.x", 1001), None, "expired");
        assert_eq!(Sealer::default().open(&text, "d", "p1.x", 999), None, "another process");
    }

    #[test]
    fn forged_or_tampered_states_are_refused() {
        let s = Sealer::default();
        let text = s.seal(&claims());
        let mut bytes = URL_SAFE_NO_PAD.decode(&text[PREFIX.len()..]).expect("b64");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        assert_eq!(s.open(&tampered, "d", "p1.x", 0), None);
        for forged in ["", "t1.", "t1.AAAA", "{\"handle\":7}", "v1.abc"] {
            assert_eq!(s.open(forged, "d", "p1.x", 0), None, "{forged}");
        }
    }
}
