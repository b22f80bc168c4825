//! MCP protocol revisions and the era each belongs to.

/// Revisions that open a session with `initialize` (the handshake era), oldest first.
pub const HANDSHAKE_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// Stateless revisions (the modern era).
pub const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];

/// The newest handshake revision.
pub const LATEST_HANDSHAKE: &str = "2025-11-25";

/// What a Streamable HTTP server assumes when `MCP-Protocol-Version` is absent.
pub const DEFAULT_HTTP_VERSION: &str = "2025-03-26";

/// The `_meta` key that marks a 2026-07-28 request envelope.
pub const MODERN_ENVELOPE_KEY: &str = "io.modelcontextprotocol/protocolVersion";

/// Which family a revision belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// 2024-11-05 … 2025-11-25: `initialize`, sessions, server→client requests.
    Handshake,
    /// 2026-07-28 and later: a self-contained envelope per request.
    Modern,
}

/// The era of a known revision, or `None` for an unknown string.
pub fn era(version: &str) -> Option<Era> {
    if HANDSHAKE_VERSIONS.contains(&version) {
        Some(Era::Handshake)
    } else if MODERN_VERSIONS.contains(&version) {
        Some(Era::Modern)
    } else {
        None
    }
}

/// Whether streams of this revision start with a priming event and a `retry` hint (SEP-1699).
///
/// Revisions are ISO dates, so string order is date order.
pub fn primes_streams(version: &str) -> bool {
    version >= "2025-11-25"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eras_are_told_apart() {
        assert_eq!(era("2024-11-05"), Some(Era::Handshake));
        assert_eq!(era("2025-11-25"), Some(Era::Handshake));
        assert_eq!(era("2026-07-28"), Some(Era::Modern));
        assert_eq!(era("2027-01-01"), None);
        assert_eq!(era(""), None);
    }

    #[test]
    fn priming_starts_with_2025_11_25() {
        assert!(!primes_streams("2025-06-18"));
        assert!(primes_streams("2025-11-25"));
        assert!(primes_streams("2026-07-28"));
    }
}
