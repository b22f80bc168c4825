//! Checks on what arrives before it reaches a session: `Origin` and `Host` (DNS rebinding),
//! `Content-Type`, `Accept`, `MCP-Protocol-Version`, and the body size.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures_util::StreamExt;
use tether_protocol::version::{self, Era};

use crate::error::GatewayError;

/// Client-facing checks and limits.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// Origins allowed besides localhost ones (`*` allows any).
    pub allowed_origins: Vec<String>,
    /// Host names allowed besides localhost ones.
    pub allowed_hosts: Vec<String>,
    /// Whether `Host` is checked (on a loopback listener, or when hosts are configured).
    pub check_host: bool,
    /// The largest request body.
    pub max_body: usize,
    /// How long a client may take to send a whole request body.
    pub body_timeout: Duration,
    /// How long a connection may take to send a request head, counted from when the server
    /// starts waiting for it: a fresh connection's first request, and a keep-alive connection's
    /// next one (so it is the keep-alive idle limit too).
    pub header_timeout: Duration,
    /// The most client connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for FrontConfig {
    fn default() -> Self {
        FrontConfig {
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            check_host: true,
            max_body: 4 << 20,
            body_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(30),
            max_connections: 20_000,
        }
    }
}

const LOOPBACK_NAMES: [&str; 4] = ["localhost", "127.0.0.1", "[::1]", "::1"];

/// What the client accepts for a POST answer.
#[derive(Debug, Clone, Copy)]
pub struct Accept {
    /// `application/json`.
    pub json: bool,
    /// `text/event-stream`.
    pub sse: bool,
}

impl FrontConfig {
    /// Refuses browser pages from foreign origins and requests naming a foreign host.
    pub fn check_origin_and_host(&self, h: &HeaderMap) -> Result<(), GatewayError> {
        if let Some(origin) = h.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let allowed = self.allowed_origins.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
                || origin_host(origin).is_some_and(|host| LOOPBACK_NAMES.contains(&host.as_str()));
            if !allowed {
                return Err(GatewayError::ForbiddenOrigin(origin.chars().take(100).collect()));
            }
        }
        if self.check_host {
            let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
            let name = strip_port(host).to_ascii_lowercase();
            let allowed = LOOPBACK_NAMES.contains(&name.as_str())
                || self.allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(&name) || a.eq_ignore_ascii_case(host));
            if !allowed {
                return Err(GatewayError::ForbiddenHost(host.chars().take(100).collect()));
            }
        }
        Ok(())
    }
}

fn origin_host(origin: &str) -> Option<String> {
    let rest = origin.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    Some(strip_port(authority).to_ascii_lowercase())
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// `Content-Type` must be JSON.
pub fn content_type(h: &HeaderMap) -> Result<(), GatewayError> {
    let ct = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") { Ok(()) } else { Err(GatewayError::UnsupportedMediaType) }
}

/// What a POST may be answered with, from `Accept`.
pub fn accept_for_post(h: &HeaderMap) -> Result<Accept, GatewayError> {
    let Some(accept) = h.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Err(GatewayError::NotAcceptable(
            "Not Acceptable: Accept must list application/json and text/event-stream",
        ));
    };
    let mut a = Accept { json: false, sse: false };
    for part in accept.split(',') {
        let mime = part.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match mime.as_str() {
            "application/json" | "application/*" => a.json = true,
            "text/event-stream" | "text/*" => a.sse = true,
            "*/*" => {
                a.json = true;
                a.sse = true;
            }
            _ => {}
        }
    }
    if !a.json && !a.sse {
        return Err(GatewayError::NotAcceptable(
            "Not Acceptable: Accept must list application/json and text/event-stream",
        ));
    }
    Ok(a)
}

/// A GET stream needs `text/event-stream`.
pub fn accept_for_stream(h: &HeaderMap) -> Result<(), GatewayError> {
    let accept = h.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.contains("text/event-stream") || accept.contains("*/*") || accept.contains("text/*") {
        Ok(())
    } else {
        Err(GatewayError::NotAcceptable("Not Acceptable: Accept must list text/event-stream"))
    }
}

/// `MCP-Protocol-Version`, when present on a session request, must be a handshake revision.
pub fn protocol_version(h: &HeaderMap) -> Result<(), GatewayError> {
    match h.get("mcp-protocol-version").map(|v| v.to_str().unwrap_or("")) {
        None => Ok(()),
        Some(v) if version::era(v) == Some(Era::Handshake) => Ok(()),
        Some(v) => Err(GatewayError::UnsupportedVersion(v.chars().take(40).collect())),
    }
}

/// The `Mcp-Session-Id` header.
pub fn session_id(h: &HeaderMap) -> Option<&str> {
    h.get("mcp-session-id").and_then(|v| v.to_str().ok())
}

/// Reads the body, refusing more than `limit` bytes and a client slower than `timeout`.
pub async fn body(body: Body, h: &HeaderMap, limit: usize, timeout: Duration) -> Result<bytes::Bytes, GatewayError> {
    let declared = h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    // Read frame by frame rather than with `to_bytes`, whose one error cannot tell a body over
    // the limit (413) from one the client cut off (400).
    let read = async {
        let mut data = bytes::BytesMut::with_capacity(declared.unwrap_or(0));
        let mut frames = body.into_data_stream();
        while let Some(chunk) = frames.next().await {
            let chunk = chunk.map_err(|e| GatewayError::BodyIncomplete(e.to_string()))?;
            if data.len() + chunk.len() > limit {
                return Err(GatewayError::PayloadTooLarge { limit });
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data.freeze())
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| GatewayError::BodyTimeout(timeout.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn front() -> FrontConfig {
        FrontConfig {
            allowed_origins: vec!["https://app.example.com".into()],
            allowed_hosts: vec![],
            check_host: true,
            max_body: 1024,
            ..FrontConfig::default()
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn localhost_origins_and_hosts_pass_foreign_ones_do_not() {
        let f = front();
        assert!(f.check_origin_and_host(&headers(&[("host", "127.0.0.1:8080")])).is_ok());
        assert!(
            f.check_origin_and_host(&headers(&[("host", "localhost"), ("origin", "http://localhost:3000")])).is_ok()
        );
        assert!(f.check_origin_and_host(&headers(&[("host", "[::1]:9"), ("origin", "http://[::1]:9")])).is_ok());
        assert!(
            f.check_origin_and_host(&headers(&[("host", "localhost:1"), ("origin", "https://app.example.com")]))
                .is_ok()
        );
        assert!(matches!(
            f.check_origin_and_host(&headers(&[("host", "localhost:1"), ("origin", "http://evil.example.com")])),
            Err(GatewayError::ForbiddenOrigin(_))
        ));
        assert!(matches!(
            f.check_origin_and_host(&headers(&[("host", "evil.example.com")])),
            Err(GatewayError::ForbiddenHost(_))
        ));
        assert!(matches!(
            f.check_origin_and_host(&headers(&[("host", "localhost"), ("origin", "null")])),
            Err(GatewayError::ForbiddenOrigin(_))
        ));
    }

    #[test]
    fn accept_decides_the_answer_format() {
        let a = accept_for_post(&headers(&[("accept", "application/json, text/event-stream")])).expect("ok");
        assert!(a.json && a.sse);
        let a = accept_for_post(&headers(&[("accept", "application/json")])).expect("ok");
        assert!(a.json && !a.sse);
        assert!(accept_for_post(&headers(&[("accept", "text/html")])).is_err());
        assert!(accept_for_post(&HeaderMap::new()).is_err());
    }

    #[test]
    fn content_type_and_version_checks() {
        assert!(content_type(&headers(&[("content-type", "application/json; charset=utf-8")])).is_ok());
        assert!(content_type(&headers(&[("content-type", "text/plain")])).is_err());
        assert!(content_type(&HeaderMap::new()).is_err());
        assert!(protocol_version(&headers(&[("mcp-protocol-version", "2025-03-26")])).is_ok());
        assert!(protocol_version(&headers(&[("mcp-protocol-version", "1999-01-01")])).is_err());
        assert!(protocol_version(&headers(&[("mcp-protocol-version", "2026-07-28")])).is_err());
    }
}
