//! The gateway's errors and the one place that turns them into wire output.
//!
//! Each error is tagged with who is at fault ([`Fault`]): the client (4xx, not retried), the
//! upstream (5xx or an in-band JSON-RPC error), or tether itself. [`GatewayError::wire`] is the
//! single exhaustive mapping to HTTP status + JSON-RPC error; nothing else invents statuses.

use axum::http::StatusCode;
use serde_json::{Value, json};
use tether_protocol::{Message, ParseError, error_code as code, version};

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something wrong.
    Downstream,
    /// The upstream server failed or went away.
    Upstream,
    /// tether itself.
    Internal,
}

/// Everything that can go wrong while serving a client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// The body is not one JSON-RPC message.
    #[error("{0}")]
    Parse(#[from] ParseError),
    /// The body is over the limit.
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The client ended the connection before the whole body arrived.
    #[error("the request body ended before its declared length: {0}")]
    BodyIncomplete(String),
    /// The client did not send the whole body in time.
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    /// `Content-Type` is not `application/json`.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// `Accept` admits neither JSON nor SSE.
    #[error("{0}")]
    NotAcceptable(&'static str),
    /// A browser page from a foreign origin.
    #[error("origin {0} is not allowed")]
    ForbiddenOrigin(String),
    /// A `Host` header that does not name this server (DNS rebinding).
    #[error("host {0} is not allowed")]
    ForbiddenHost(String),
    /// Authentication is on and the request has no valid bearer credential.
    #[error("Unauthorized: {0}")]
    Unauthorized(String),
    /// A request that needs a session came without `Mcp-Session-Id`.
    #[error("Bad Request: Mcp-Session-Id header is required")]
    MissingSessionId,
    /// The session id is unknown, expired or closed.
    #[error("Session not found")]
    SessionNotFound,
    /// `MCP-Protocol-Version` names a revision tether does not serve on this path.
    #[error("Unsupported protocol version: {0}")]
    UnsupportedVersion(String),
    /// 2026-07-28: the envelope names a revision tether does not serve.
    #[error("Unsupported protocol version: {requested}")]
    ModernVersionUnsupported {
        /// The revision the client asked for.
        requested: String,
    },
    /// 2026-07-28: a routing header disagrees with the body, or is missing.
    #[error("Header mismatch: {header} does not match the body")]
    HeaderMismatch {
        /// The header.
        header: String,
        /// What the body says.
        body: String,
    },
    /// 2026-07-28: the request's `_meta` envelope or params are unusable.
    #[error("Invalid params: {0}")]
    InvalidEnvelope(String),
    /// 2026-07-28: a method this revision does not have (or the server does not serve).
    #[error("Method not found: {0}")]
    ModernMethodNotFound(String),
    /// 2026-07-28: a `requestState` that was forged, tampered with, is another's or expired.
    #[error("Invalid or expired requestState")]
    InvalidRequestState,
    /// The HTTP method is not served on this path.
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// The legacy SSE POST came without a session query parameter.
    #[error("Bad Request: session_id query parameter is required")]
    MissingSessionQuery,
    /// The upstream could not be started or reached.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream keeps failing: restarts are refused until the cool-down ends.
    #[error("the upstream server is crash-looping; tether retries it in {retry_after_s} s")]
    CrashLoop {
        /// Seconds until the next attempt.
        retry_after_s: u64,
    },
    /// The upstream refused the message with an HTTP error and no JSON-RPC answer.
    #[error("upstream answered HTTP {status}")]
    UpstreamRefused {
        /// The upstream's status.
        status: u16,
        /// What it said.
        detail: String,
    },
    /// The upstream went away while the request was in flight; it may or may not have run.
    #[error("the upstream server restarted while this request was in flight; it may or may not have run")]
    UpstreamRestarted(String),
    /// The upstream's answer was over the message limit and was discarded.
    #[error("the upstream server's answer ({size} bytes) exceeds the {limit}-byte message limit")]
    UpstreamMessageTooLarge {
        /// The limit in bytes.
        limit: usize,
        /// The answer's size.
        size: usize,
    },
    /// The upstream did not answer in time.
    #[error("the upstream server did not answer within {0} s")]
    UpstreamTimeout(u64),
    /// After a revive the upstream negotiated another protocol version.
    #[error("the upstream now speaks protocol {now}, but this session negotiated {was}; start a new session")]
    VersionChanged {
        /// The session's version.
        was: String,
        /// What the revived upstream answered.
        now: String,
    },
    /// A client request that ended without an answer (its client cancelled it, or its stream
    /// closed before the answer).
    #[error("Request cancelled")]
    RequestCancelled,
    /// The bridge's client sent a request before `initialize`.
    #[error("Not initialized: send initialize first")]
    NotInitialized,
    /// A 2026-07-28 retry carried a round tether started on an upstream that has since come
    /// back in the handshake era.
    #[error(
        "Invalid or expired requestState: the upstream no longer speaks 2026-07-28, so the round it started cannot be continued; send the request again without inputResponses and requestState"
    )]
    RoundOrphaned,
    /// A request for input (an `input_required` round) could not be completed.
    #[error("{0}")]
    InputFailed(String),
    /// Told to the upstream for a client: the client's retry carried no answer to its request.
    #[error("the client gave no response")]
    NoInputResponse,
    /// Told to the upstream for a client: the client cannot answer this kind of request.
    #[error("the client did not declare this capability")]
    CapabilityNotDeclared,
    /// tether is shutting down or draining.
    #[error("tether is shutting down; retry shortly")]
    ShuttingDown,
    /// The session limit is reached.
    #[error("too many sessions (limit {0})")]
    TooManySessions(usize),
    /// The session store failed.
    #[error("session store unavailable")]
    Store(String),
    /// Cluster mode: the replica that owns the session cannot be reached, and its lease has
    /// not run out yet (a failed hop alone does not prove it dead).
    #[error("the replica serving this session is unreachable; retry shortly")]
    OwnerUnreachable(String),
}

/// The `Retry-After` of a 503 for an unreachable session store.
pub const STORE_RETRY_AFTER_S: u64 = 2;

/// How an error goes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Wire {
    /// The HTTP status when the error answers a whole HTTP request.
    pub status: StatusCode,
    /// The JSON-RPC error code.
    pub code: i64,
    /// `error.data`, with a machine-readable `reason` for tether's own errors.
    pub data: Option<Value>,
    /// Who is at fault.
    pub fault: Fault,
}

impl GatewayError {
    /// The one mapping from an error to HTTP status, JSON-RPC code and data.
    pub fn wire(&self) -> Wire {
        use GatewayError as E;
        let w = |status, code, data, fault| Wire { status, code, data, fault };
        let reason = |r: &str| Some(json!({ "reason": r }));
        match self {
            E::Parse(e) => w(StatusCode::BAD_REQUEST, e.code(), None, Fault::Downstream),
            E::PayloadTooLarge { .. } => {
                w(StatusCode::PAYLOAD_TOO_LARGE, code::INVALID_REQUEST, None, Fault::Downstream)
            }
            E::BodyIncomplete(_) => w(StatusCode::BAD_REQUEST, code::INVALID_REQUEST, None, Fault::Downstream),
            E::BodyTimeout(_) => w(StatusCode::REQUEST_TIMEOUT, code::INVALID_REQUEST, None, Fault::Downstream),
            E::UnsupportedMediaType => {
                w(StatusCode::UNSUPPORTED_MEDIA_TYPE, code::INVALID_REQUEST, None, Fault::Downstream)
            }
            E::NotAcceptable(_) => w(StatusCode::NOT_ACCEPTABLE, code::INVALID_REQUEST, None, Fault::Downstream),
            E::ForbiddenOrigin(_) | E::ForbiddenHost(_) => {
                w(StatusCode::FORBIDDEN, code::INVALID_REQUEST, None, Fault::Downstream)
            }
            E::Unauthorized(_) => {
                w(StatusCode::UNAUTHORIZED, code::INVALID_REQUEST, reason("unauthorized"), Fault::Downstream)
            }
            E::MissingSessionId | E::MissingSessionQuery => {
                w(StatusCode::BAD_REQUEST, code::INVALID_REQUEST, None, Fault::Downstream)
            }
            E::SessionNotFound => w(StatusCode::NOT_FOUND, code::SESSION_NOT_FOUND, None, Fault::Downstream),
            E::UnsupportedVersion(v) => w(
                StatusCode::BAD_REQUEST,
                code::INVALID_REQUEST,
                Some(json!({ "supported": version::HANDSHAKE_VERSIONS, "requested": v })),
                Fault::Downstream,
            ),
            E::ModernVersionUnsupported { requested } => {
                let mut supported: Vec<&str> = version::MODERN_VERSIONS.to_vec();
                supported.extend(version::HANDSHAKE_VERSIONS.iter().rev());
                w(
                    StatusCode::BAD_REQUEST,
                    code::UNSUPPORTED_PROTOCOL_VERSION,
                    Some(json!({ "supported": supported, "requested": requested })),
                    Fault::Downstream,
                )
            }
            E::HeaderMismatch { header, body } => w(
                StatusCode::BAD_REQUEST,
                code::HEADER_MISMATCH,
                Some(json!({ "mismatch": { "header": header, "body": body } })),
                Fault::Downstream,
            ),
            E::InvalidEnvelope(_) => w(StatusCode::BAD_REQUEST, code::INVALID_PARAMS, None, Fault::Downstream),
            E::ModernMethodNotFound(m) => {
                w(StatusCode::NOT_FOUND, code::METHOD_NOT_FOUND, Some(json!(m)), Fault::Downstream)
            }
            E::InvalidRequestState => {
                w(StatusCode::BAD_REQUEST, code::INVALID_PARAMS, reason("invalid_request_state"), Fault::Downstream)
            }
            E::MethodNotAllowed => w(StatusCode::METHOD_NOT_ALLOWED, code::INVALID_REQUEST, None, Fault::Downstream),
            E::UpstreamUnavailable(d) => w(
                StatusCode::SERVICE_UNAVAILABLE,
                code::UPSTREAM_UNAVAILABLE,
                Some(json!({ "reason": "upstream_unavailable", "class": "transport_error", "detail": d })),
                Fault::Upstream,
            ),
            E::CrashLoop { retry_after_s } => w(
                StatusCode::SERVICE_UNAVAILABLE,
                code::UPSTREAM_UNAVAILABLE,
                Some(json!({ "reason": "crash_loop", "class": "transport_error", "retry_after_s": retry_after_s })),
                Fault::Upstream,
            ),
            E::UpstreamRefused { status, detail } => w(
                StatusCode::BAD_GATEWAY,
                code::UPSTREAM_UNAVAILABLE,
                Some(json!({
                    "reason": "upstream_refused",
                    "class": if *status == 409 { "session_conflict" } else { "transport_error" },
                    "status": status,
                    "detail": detail
                })),
                Fault::Upstream,
            ),
            E::UpstreamRestarted(d) => w(
                StatusCode::OK,
                code::UPSTREAM_RESTARTED,
                Some(json!({ "reason": "upstream_restarted", "class": "transport_error", "detail": d })),
                Fault::Upstream,
            ),
            E::UpstreamMessageTooLarge { limit, size } => w(
                StatusCode::BAD_GATEWAY,
                code::INTERNAL_ERROR,
                Some(
                    json!({ "reason": "upstream_message_too_large", "class": "transport_error", "limit": limit, "size": size }),
                ),
                Fault::Upstream,
            ),
            E::UpstreamTimeout(_) => w(
                StatusCode::OK,
                code::UPSTREAM_TIMEOUT,
                Some(json!({ "reason": "upstream_timeout", "class": "session_timeout" })),
                Fault::Upstream,
            ),
            E::VersionChanged { was, now } => w(
                StatusCode::OK,
                code::UPSTREAM_UNAVAILABLE,
                Some(
                    json!({ "reason": "protocol_version_changed", "class": "session_invalid", "was": was, "now": now }),
                ),
                Fault::Upstream,
            ),
            E::RequestCancelled => w(StatusCode::OK, code::REQUEST_CANCELLED, None, Fault::Downstream),
            E::NotInitialized => w(StatusCode::BAD_REQUEST, code::INVALID_REQUEST, None, Fault::Downstream),
            E::RoundOrphaned => {
                w(StatusCode::BAD_REQUEST, code::INVALID_PARAMS, reason("invalid_request_state"), Fault::Downstream)
            }
            E::InputFailed(_) | E::NoInputResponse => w(StatusCode::OK, code::INTERNAL_ERROR, None, Fault::Downstream),
            E::CapabilityNotDeclared => w(StatusCode::OK, code::METHOD_NOT_FOUND, None, Fault::Downstream),
            E::ShuttingDown => {
                w(StatusCode::SERVICE_UNAVAILABLE, code::GATEWAY_UNAVAILABLE, reason("shutting_down"), Fault::Internal)
            }
            E::TooManySessions(_) => w(
                StatusCode::SERVICE_UNAVAILABLE,
                code::GATEWAY_UNAVAILABLE,
                reason("too_many_sessions"),
                Fault::Internal,
            ),
            E::Store(_) => {
                w(StatusCode::SERVICE_UNAVAILABLE, code::INTERNAL_ERROR, reason("store_unavailable"), Fault::Internal)
            }
            E::OwnerUnreachable(_) => w(
                StatusCode::SERVICE_UNAVAILABLE,
                code::GATEWAY_UNAVAILABLE,
                reason("owner_unreachable"),
                Fault::Internal,
            ),
        }
    }

    /// Seconds a client should wait before retrying (`Retry-After`), for errors that pass.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            // A store that cannot be reached is usually back soon (a failover, a restart).
            GatewayError::Store(_) | GatewayError::OwnerUnreachable(_) => Some(STORE_RETRY_AFTER_S),
            _ => None,
        }
    }

    /// The JSON-RPC error message answering the request `id` (or `null`).
    pub fn to_message(&self, id: Option<&serde_json::value::RawValue>) -> Message {
        let wire = self.wire();
        Message::error(id, wire.code, &self.to_string(), wire.data)
    }
}

impl From<crate::upstream::ConnectError> for GatewayError {
    fn from(e: crate::upstream::ConnectError) -> Self {
        match e {
            crate::upstream::ConnectError::BackingOff { retry_after_s, .. } => {
                GatewayError::CrashLoop { retry_after_s }
            }
            other => GatewayError::UpstreamUnavailable(other.to_string()),
        }
    }
}
