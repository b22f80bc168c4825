//! JSON-RPC and MCP error codes, and the codes tether itself answers with.
//!
//! tether's own codes sit in the implementation-defined range −32000…−32019 (the 2026-07-28
//! revision reserves −32020 and below for the spec); `error.data.reason` carries a stable,
//! machine-readable reason next to each.

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object (also: batches, which tether does not accept).
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist or is not available.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal JSON-RPC error.
pub const INTERNAL_ERROR: i64 = -32603;
/// Generic server error; what many SDKs answer for "no valid session".
pub const SERVER_ERROR: i64 = -32000;
/// The TypeScript SDK's "Session not found".
pub const SESSION_NOT_FOUND: i64 = -32001;
/// 2026-07-28: the protocol version is not supported (data: `supported`, `requested`).
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
/// The request was cancelled (Python SDK).
pub const REQUEST_CANCELLED: i64 = -32800;

/// tether: the upstream server could not be reached or started.
pub const UPSTREAM_UNAVAILABLE: i64 = -32010;
/// tether: the upstream restarted while the request was in flight; it may or may not have run.
pub const UPSTREAM_RESTARTED: i64 = -32011;
/// tether: the upstream did not answer within the request timeout.
pub const UPSTREAM_TIMEOUT: i64 = -32012;
/// tether: the gateway is shutting down or refusing new work.
pub const GATEWAY_UNAVAILABLE: i64 = -32013;
/// 2026-07-28: an `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` or `Mcp-Param-*` header
/// disagrees with the body, or is missing (data: `header`, `body`).
pub const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28: the server needs a client capability this request did not declare (data:
/// `requiredCapabilities`).
pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
/// Retired by 2026-07-28 ("resource not found"): answered as [`INVALID_PARAMS`] to modern clients.
pub const RESOURCE_NOT_FOUND: i64 = -32002;
