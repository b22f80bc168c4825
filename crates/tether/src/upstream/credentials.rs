//! What tether presents to an upstream on its own behalf: headers from configuration
//! (`--upstream-header` for `tether serve`, `--header` for the bridge, with `${VAR}` read from
//! the environment), the environment of stdio children (`--env`), and — only when the operator
//! asks with `--forward-auth` — the client's own `Authorization`, held per session in memory.

use std::sync::{Arc, Mutex};

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

/// Parses `Name: value` lines into headers; `${VAR}` in a value is replaced by the environment
/// variable. Values are marked sensitive (never printed by `Debug`). Errors name `flag`.
pub fn parse_headers(flag: &str, lines: &[String]) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for h in lines {
        let (name, value) = h.split_once(':').ok_or_else(|| format!("{flag} {h:?}: use 'Name: value'"))?;
        let value = expand_env(value.trim()).map_err(|e| format!("{flag} {name}: {e}"))?;
        let name = HeaderName::try_from(name.trim()).map_err(|e| format!("{flag} {name:?}: {e}"))?;
        let mut value = HeaderValue::try_from(value).map_err(|e| format!("{flag} {name}: {e}"))?;
        value.set_sensitive(true);
        headers.append(name, value);
    }
    Ok(headers)
}

/// Replaces every `${NAME}` with the environment variable NAME; an unset one is an error.
pub fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
        let name = &after[..end];
        let value = std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `KEY=VALUE` pairs for a stdio child's environment (`${VAR}` expanded, as in headers).
pub fn parse_env(flag: &str, pairs: &[String]) -> Result<Vec<(String, String)>, String> {
    pairs
        .iter()
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| format!("{flag} {:?}: use KEY=VALUE", first_part(p)))?;
            if k.is_empty() || k.contains('\0') || v.contains('\0') {
                return Err(format!("{flag} {:?}: use KEY=VALUE with a non-empty KEY", first_part(p)));
            }
            Ok((k.to_owned(), expand_env(v).map_err(|e| format!("{flag} {k}: {e}"))?))
        })
        .collect()
}

/// The key part of a pair, for an error message that must not show a value.
fn first_part(p: &str) -> &str {
    p.split('=').next().unwrap_or("")
}

/// The client's `Authorization` for one session's upstream requests (`--forward-auth`): the
/// latest value the client presented, never stored, cheap to clone into each connection.
#[derive(Clone, Default)]
pub struct ForwardedAuth(Arc<Mutex<Option<HeaderValue>>>);

impl ForwardedAuth {
    /// Remembers the client's latest credential (a refreshed token replaces the older one).
    pub fn set(&self, value: &HeaderValue) {
        let mut v = value.clone();
        v.set_sensitive(true);
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(v);
        }
    }

    /// Adds the credential to an upstream request's headers, when there is one. It replaces
    /// an `Authorization` from `--upstream-header` (the client's own wins when forwarding).
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(v) = self.0.lock().ok().and_then(|s| s.clone()) {
            headers.insert(AUTHORIZATION, v);
        }
    }

    /// The headers to add to a request built without a header map.
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        self.apply(&mut h);
        h
    }
}

impl std::fmt::Debug for ForwardedAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwardedAuth(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_is_expanded_in_header_values() {
        // PATH is set in any environment a test runs in.
        let path = std::env::var("PATH").expect("PATH");
        assert_eq!(expand_env("Bearer ${PATH}").expect("expands"), format!("Bearer {path}"));
        assert_eq!(expand_env("plain").expect("no vars"), "plain");
        assert!(expand_env("${TETHER_SURELY_UNSET_VARIABLE_123}").is_err());
        assert!(expand_env("${OPEN").is_err());
    }

    #[test]
    fn headers_and_env_pairs_are_parsed_with_the_flag_named() {
        let h = parse_headers("--upstream-header", &["X-Team: a".into(), "Authorization: Bearer ${PATH}".into()])
            .expect("valid");
        assert_eq!(h.len(), 2);
        assert!(h["authorization"].is_sensitive());
        assert!(
            parse_headers("--upstream-header", &["NoColon".into()]).expect_err("bad").contains("--upstream-header")
        );
        let e = parse_env("--env", &["A=1".into(), "B=x=y".into()]).expect("valid");
        assert_eq!(e, vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]);
        let err = parse_env("--env", &["=secret".into()]).expect_err("no key");
        assert!(err.contains("--env") && !err.contains("secret"), "{err}");
        assert!(parse_env("--env", &["NOVALUE".into()]).is_err());
    }

    #[test]
    fn a_forwarded_credential_replaces_the_configured_one() {
        let f = ForwardedAuth::default();
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer configured"));
        f.apply(&mut h);
        assert_eq!(h[AUTHORIZATION], "Bearer configured", "nothing forwarded yet");
        f.set(&HeaderValue::from_static("Bearer client"));
        f.apply(&mut h);
        assert_eq!(h[AUTHORIZATION], "Bearer client");
        assert_eq!(format!("{f:?}"), "ForwardedAuth(***)");
    }
}
