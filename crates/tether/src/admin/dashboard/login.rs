//! Dashboard logins: the admin token is typed once into a form and exchanged for a random
//! login id in an `HttpOnly`, `SameSite=Strict` cookie, mapped here to its CSRF token and
//! expiry. The token itself never becomes a cookie. The map is bounded (the oldest login is
//! dropped first) and every login expires.
//!
//! What a request that changes something must show besides the cookie: the login's CSRF token
//! in a header (or form field), and — when the browser sends one — an `Origin` equal to the
//! admin listener's own.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::Instant;

use axum::http::{HeaderMap, HeaderValue, header};
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const COOKIE: &str = "tether_admin";
/// The header the dashboard's script sends the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a login lasts.
pub const LOGIN_TTL: Duration = Duration::from_secs(8 * 3600);
/// The most logins kept at once.
pub const MAX_LOGINS: usize = 64;
/// Wrong tokens accepted per [`FAILURE_WINDOW`] before every login is refused for a while: a
/// configured token may be weak, and a guess must cost more than a request.
pub const MAX_FAILURES: usize = 10;
/// The window wrong tokens are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// One logged-in browser.
#[derive(Clone)]
pub struct Login {
    /// The random id in the cookie.
    pub id: String,
    /// What a state-changing request must carry besides the cookie.
    pub csrf: String,
    expires: Instant,
}

/// The logins of this admin listener.
#[derive(Default)]
pub struct Logins(Mutex<HashMap<String, Login>>, Mutex<VecDeque<Instant>>);

impl Logins {
    /// Whether a login may be tried now; if not, how long until one may. While too many wrong
    /// tokens were sent recently no token is even compared, so a guess teaches nothing.
    pub fn may_try(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut f = self.1.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while f.front().is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW) {
            f.pop_front();
        }
        match f.front() {
            Some(oldest) if f.len() >= MAX_FAILURES => Err(FAILURE_WINDOW - now.duration_since(*oldest)),
            _ => Ok(()),
        }
    }

    /// Counts a wrong token (the count is bounded by [`MAX_FAILURES`]).
    pub fn failed(&self) {
        let mut f = self.1.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if f.len() >= MAX_FAILURES {
            f.pop_front();
        }
        f.push_back(Instant::now());
    }

    /// A new login; the oldest one goes when the map is full.
    pub fn create(&self) -> Login {
        let now = Instant::now();
        let login = Login { id: random_hex(), csrf: random_hex(), expires: now + LOGIN_TTL };
        let mut m = self.lock();
        m.retain(|_, l| l.expires > now);
        while m.len() >= MAX_LOGINS {
            let oldest = m.values().min_by_key(|l| l.expires).map(|l| l.id.clone());
            match oldest {
                Some(id) => m.remove(&id),
                None => break,
            };
        }
        m.insert(login.id.clone(), login.clone());
        login
    }

    /// The unexpired login named by the request's cookie.
    pub fn of(&self, headers: &HeaderMap) -> Option<Login> {
        let id = cookie_value(headers, COOKIE)?;
        let mut m = self.lock();
        let login = m.get(id)?.clone();
        if login.expires <= Instant::now() {
            m.remove(id);
            return None;
        }
        Some(login)
    }

    /// Whether this login is still valid (a live page's stream ends when it is not).
    pub fn is_valid(&self, id: &str) -> bool {
        self.lock().get(id).is_some_and(|l| l.expires > Instant::now())
    }

    /// Ends a login.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// How many logins are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Login>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The `Set-Cookie` value that stores a login: not readable by scripts, never sent by another
/// site's request, gone when the login expires.
pub fn set_cookie(login: &Login) -> HeaderValue {
    let v = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", login.id, LOGIN_TTL.as_secs());
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("tether_admin=; Path=/; Max-Age=0"))
}

/// The `Set-Cookie` value that removes the login cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("tether_admin=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether `presented` is the login's CSRF token (constant time).
pub fn csrf_matches(login: &Login, presented: &str) -> bool {
    login.csrf.as_bytes().ct_eq(presented.as_bytes()).into()
}

/// A state-changing request's `Origin`, when the browser sent one, must be this listener's own
/// (`http://` + its `Host`). Non-browser clients send none.
pub fn origin_ok(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    origin.to_str().is_ok_and(|o| o == format!("http://{host}") || o == format!("https://{host}"))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// 256 random bits as 64 hex digits.
fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn a_login_is_found_by_its_cookie_only() {
        let logins = Logins::default();
        let l = logins.create();
        assert_ne!(l.id, l.csrf);
        let h = headers(&[(header::COOKIE, &format!("other=1; {COOKIE}={}", l.id))]);
        assert_eq!(logins.of(&h).map(|x| x.id), Some(l.id.clone()));
        assert!(logins.of(&headers(&[(header::COOKIE, "tether_admin=nope")])).is_none());
        assert!(logins.of(&HeaderMap::new()).is_none());
        logins.remove(&l.id);
        assert!(logins.of(&h).is_none(), "a removed login is gone");
    }

    #[test]
    fn logins_are_bounded() {
        let logins = Logins::default();
        let first = logins.create();
        for _ in 0..MAX_LOGINS + 10 {
            logins.create();
        }
        assert_eq!(logins.len(), MAX_LOGINS);
        assert!(!logins.is_valid(&first.id), "the oldest login went first");
    }

    #[test]
    fn too_many_wrong_tokens_close_the_door_for_a_while() {
        let logins = Logins::default();
        for _ in 0..MAX_FAILURES - 1 {
            logins.failed();
            assert!(logins.may_try().is_ok());
        }
        logins.failed();
        let wait = logins.may_try().expect_err("closed");
        assert!(wait <= FAILURE_WINDOW && wait > Duration::ZERO);
        assert_eq!(logins.1.lock().expect("lock").len(), MAX_FAILURES, "bounded");
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let l = Logins::default().create();
        let c = set_cookie(&l);
        let c = c.to_str().expect("ascii");
        assert!(c.starts_with(&format!("{COOKIE}={}", l.id)));
        assert!(c.contains("; HttpOnly") && c.contains("; SameSite=Strict") && c.contains("; Path=/"));
        assert!(!c.contains(&l.csrf));
    }

    #[test]
    fn origins_must_be_our_own() {
        assert!(origin_ok(&headers(&[(header::HOST, "127.0.0.1:9090")])), "no Origin: not a browser");
        assert!(origin_ok(&headers(&[(header::HOST, "127.0.0.1:9090"), (header::ORIGIN, "http://127.0.0.1:9090")])));
        assert!(!origin_ok(&headers(&[(header::HOST, "127.0.0.1:9090"), (header::ORIGIN, "http://evil.example")])));
        assert!(!origin_ok(&headers(&[(header::HOST, "127.0.0.1:9090"), (header::ORIGIN, "null")])));
        assert!(!origin_ok(&headers(&[(header::ORIGIN, "http://127.0.0.1:9090")])), "no Host");
    }
}
