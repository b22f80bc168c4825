//! `tether bridge` flags, and the validated [`BridgeConfig`] made from them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use reqwest::header::HeaderMap;

/// How to reach the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportChoice {
    /// Probe the URL: legacy SSE if it answers with an `endpoint` event, else Streamable HTTP.
    Auto,
    /// Streamable HTTP.
    StreamableHttp,
    /// Legacy HTTP+SSE (2024-11-05).
    Sse,
}

/// Which MCP era the remote speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolChoice {
    /// Decided on each connection to the remote: the `initialize` handshake when the remote
    /// serves it; a remote that refuses it with -32022 naming only 2026-07-28 is spoken to in
    /// the modern era (until a connection finds it speaking the handshake era again).
    Auto,
    /// The handshake era (2024-11-05 … 2025-11-25): `initialize`, remote sessions.
    Handshake,
    /// The modern era (2026-07-28): stateless requests with a per-request envelope.
    Modern,
}

/// `tether bridge` flags; each also reads a `TETHER_BRIDGE_*` environment variable.
#[derive(Debug, Clone, Args)]
pub struct BridgeArgs {
    /// The remote MCP endpoint, e.g. https://host/mcp (or its /sse endpoint)
    #[arg(value_name = "URL", env = "TETHER_BRIDGE_URL")]
    pub url: String,
    /// An HTTP header for every request to the remote, as 'Name: value'; `${VAR}` in the value
    /// is replaced by the environment variable (repeatable)
    #[arg(long = "header", short = 'H', value_name = "'NAME: VALUE'")]
    pub headers: Vec<String>,
    /// The remote transport
    #[arg(long, value_enum, default_value = "auto", env = "TETHER_BRIDGE_TRANSPORT")]
    pub transport: TransportChoice,
    /// The remote's MCP era
    #[arg(long, value_enum, default_value = "auto", env = "TETHER_BRIDGE_PROTOCOL")]
    pub protocol: ProtocolChoice,
    /// How long the first connection is retried before the client gets an error
    #[arg(long, default_value = "30s", value_name = "DURATION", env = "TETHER_BRIDGE_CONNECT_TIMEOUT")]
    pub connect_timeout: String,
    /// How many times a request that finds the remote away tries again, after --retry-delay,
    /// doubling (default: unlimited, until --timeout; 0: no retry)
    #[arg(long, value_name = "N", env = "TETHER_BRIDGE_RETRY_ATTEMPTS")]
    pub retry_attempts: Option<u32>,
    /// The first reconnection delay; it doubles, with jitter
    #[arg(long, default_value = "500ms", value_name = "DURATION", env = "TETHER_BRIDGE_RETRY_DELAY")]
    pub retry_delay: String,
    /// The longest one request may take, reconnections included
    #[arg(long, default_value = "5m", value_name = "DURATION", env = "TETHER_BRIDGE_TIMEOUT")]
    pub timeout: String,
    /// Write logs to this file instead of stderr (stdout carries the protocol)
    #[arg(long, value_name = "FILE", env = "TETHER_BRIDGE_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Log filter (RUST_LOG syntax)
    #[arg(long, default_value = "info", value_name = "FILTER", env = "TETHER_BRIDGE_LOG_LEVEL")]
    pub log_level: String,
}

/// The validated bridge configuration.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The remote endpoint.
    pub url: String,
    /// Headers sent with every request to the remote.
    pub headers: HeaderMap,
    /// The remote transport.
    pub transport: TransportChoice,
    /// The remote's era.
    pub protocol: ProtocolChoice,
    /// How long the first connection is retried.
    pub connect_timeout: Duration,
    /// Reconnection attempts per request (`None`: unlimited).
    pub retry_attempts: Option<u32>,
    /// The first reconnection delay.
    pub retry_delay: Duration,
    /// The per-request timeout.
    pub timeout: Duration,
}

impl BridgeArgs {
    /// Validates the flags; errors name the flag.
    pub fn config(&self) -> Result<BridgeConfig, String> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("URL {:?}: {e}", self.url))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!("URL {:?}: use http or https", self.url));
        }
        let dur = |flag: &str, text: &str| {
            humantime::parse_duration(text).map_err(|e| format!("--{flag} {text:?}: {e} (use e.g. 500ms, 30s, 5m)"))
        };
        if self.protocol == ProtocolChoice::Modern && self.transport == TransportChoice::Sse {
            return Err("--protocol modern needs Streamable HTTP: 2026-07-28 has no HTTP+SSE transport \
                        (use --transport auto or streamable-http)"
                .into());
        }
        let headers = crate::upstream::credentials::parse_headers("--header", &self.headers)?;
        Ok(BridgeConfig {
            url: self.url.clone(),
            headers,
            transport: self.transport,
            protocol: self.protocol,
            connect_timeout: dur("connect-timeout", &self.connect_timeout)?,
            retry_attempts: self.retry_attempts,
            retry_delay: dur("retry-delay", &self.retry_delay)?,
            timeout: dur("timeout", &self.timeout)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str, headers: &[&str]) -> BridgeArgs {
        BridgeArgs {
            url: url.into(),
            headers: headers.iter().map(|s| s.to_string()).collect(),
            transport: TransportChoice::Auto,
            protocol: ProtocolChoice::Auto,
            connect_timeout: "30s".into(),
            retry_attempts: None,
            retry_delay: "500ms".into(),
            timeout: "5m".into(),
            log_file: None,
            log_level: "info".into(),
        }
    }

    #[test]
    fn flags_are_validated_with_the_flag_named() {
        let c =
            args("http://127.0.0.1:1/mcp", &["X-Team: a", "Authorization: Bearer ${PATH}"]).config().expect("valid");
        assert_eq!(c.headers.len(), 2);
        assert!(c.headers["authorization"].is_sensitive());
        assert!(args("ftp://x/mcp", &[]).config().expect_err("scheme").contains("http"));
        assert!(args("http://x/mcp", &["NoColon"]).config().expect_err("header").contains("--header"));
        let mut a = args("http://x/mcp", &[]);
        a.timeout = "soon".into();
        assert!(a.config().expect_err("duration").contains("--timeout"));
        let mut a = args("http://x/mcp", &[]);
        (a.protocol, a.transport) = (ProtocolChoice::Modern, TransportChoice::Sse);
        assert!(a.config().expect_err("era").contains("--protocol"));
    }
}
