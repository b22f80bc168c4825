//! What every MCP endpoint does before its own work, written once: the `Origin`/`Host` check
//! and authentication, as one layer ([`front_door`]); and "the session this request names,
//! if it is the caller's", as one extractor ([`SessionRef`]).
//!
//! A session belongs to the principal that created it. Another principal naming its id is
//! answered exactly as for an unknown id (404), so a guessed or leaked id reveals nothing and
//! is worth nothing.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::{debug, warn};

use super::{AppState, error_response, guard};
use crate::auth::{AuthError, Principal};
use crate::error::GatewayError;
use crate::session::SessionHandle;
use crate::session::record::Transport;

/// Who is calling, as the front door established: `None` when authentication is off.
#[derive(Debug, Clone, Default)]
pub struct Caller(pub Option<Principal>);

impl Caller {
    /// The fingerprint a new session is bound to.
    pub fn key(&self) -> Option<String> {
        self.0.as_ref().map(|p| p.key().to_owned())
    }

    /// Whether a session bound to `bound` may be used by this caller: the same principal, or
    /// no principal on either side (authentication off, and the session made without it).
    pub fn may_use(&self, bound: Option<&str>) -> bool {
        match &self.0 {
            Some(p) => p.owns(bound),
            None => bound.is_none(),
        }
    }

    /// The principal's name for logs (never a credential).
    pub fn name(&self) -> &str {
        self.0.as_ref().map_or("", |p| p.name())
    }
}

/// The layer in front of every MCP endpoint: refuses foreign origins and hosts (403), then,
/// when authentication is on, requests without valid credentials (401, with the challenge
/// that points at the metadata document). The caller goes into the request's extensions.
pub async fn front_door(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    if let Err(e) = app.front.check_origin_and_host(req.headers()) {
        return error_response(&e, None);
    }
    let caller = match &app.auth {
        None => Caller(None),
        Some(auth) => match auth.authenticate(req.headers()).await {
            Ok(p) => {
                debug!(principal = %p.name(), "authenticated");
                crate::auth::remember(&p);
                Caller(Some(p))
            }
            Err(e) => {
                match &e {
                    AuthError::Missing => debug!("request without credentials refused"),
                    AuthError::Invalid(why) => warn!(reason = %why, path = %req.uri().path(), "credentials refused"),
                }
                let mut r = error_response(&GatewayError::Unauthorized(e.to_string()), None);
                if let Ok(v) = HeaderValue::from_str(&auth.challenge(req.headers(), &e)) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                return r;
            }
        },
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// GET /.well-known/oauth-protected-resource: the Protected Resource Metadata (RFC 9728).
/// Public, as the RFC intends; 404 when authentication is off.
pub async fn metadata(State(app): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    match &app.auth {
        Some(auth) => {
            let body = auth.metadata(&headers).to_string();
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                    (header::CACHE_CONTROL, HeaderValue::from_static("max-age=300")),
                ],
                body,
            )
                .into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The session a request names — `Mcp-Session-Id` on `/mcp`, `session_id` (or `sessionId`) in
/// the query of the legacy POST — and who is asking. [`SessionRef::resolve`] is the one place
/// a client-given id becomes a session.
pub struct SessionRef {
    header_id: Option<String>,
    query_id: Option<String>,
    /// Who is calling.
    pub caller: Caller,
    authorization: Option<HeaderValue>,
}

impl FromRequestParts<AppState> for SessionRef {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header_id = guard::session_id(&parts.headers).map(str::to_owned);
        let query_id = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .ok()
            .and_then(|Query(mut q)| q.remove("session_id").or_else(|| q.remove("sessionId")));
        let caller = parts.extensions.get::<Caller>().cloned().unwrap_or_default();
        let forward = state.manager.deps().config.upstream.forward_auth;
        let authorization = if forward { parts.headers.get(header::AUTHORIZATION).cloned() } else { None };
        Ok(SessionRef { header_id, query_id, caller, authorization })
    }
}

impl SessionRef {
    /// The id the client sent for `transport`'s endpoint.
    pub fn id(&self, transport: Transport) -> Option<&str> {
        match transport {
            Transport::LegacySse => self.query_id.as_deref(),
            Transport::StreamableHttp | Transport::Stdio | Transport::Modern => self.header_id.as_deref(),
        }
    }

    /// The named session, if it exists, was opened on `transport` and belongs to the caller;
    /// otherwise the error for a missing id, or 404 as for an unknown one.
    pub async fn resolve(&self, app: &AppState, transport: Transport) -> Result<SessionHandle, GatewayError> {
        let sid = self.id(transport).ok_or(match transport {
            Transport::LegacySse => GatewayError::MissingSessionQuery,
            Transport::StreamableHttp | Transport::Stdio | Transport::Modern => GatewayError::MissingSessionId,
        })?;
        let session = app.manager.get(sid).await?;
        if session.transport() != transport {
            return Err(GatewayError::SessionNotFound);
        }
        if !self.caller.may_use(session.principal().as_deref()) {
            warn!(session_id = %session.id(), principal = %self.caller.name(), "session of another principal refused");
            return Err(GatewayError::SessionNotFound);
        }
        self.adopt(&session);
        Ok(session)
    }

    /// Creates a session for the caller on `transport`.
    pub async fn create(&self, app: &AppState, transport: Transport) -> Result<SessionHandle, GatewayError> {
        let session = app.manager.create_for(transport, self.caller.key()).await?;
        // Cluster mode: the replica that creates a session owns it.
        if let Some(cluster) = &app.cluster {
            cluster.claim_new(session.id()).await;
        }
        if self.caller.0.is_some() {
            tracing::info!(session_id = %session.id(), principal = %self.caller.name(), "session bound to its principal");
        }
        self.adopt(&session);
        Ok(session)
    }

    /// With `--forward-auth`, the client's latest credential goes upstream with this session.
    fn adopt(&self, session: &SessionHandle) {
        if let Some(v) = &self.authorization {
            session.forwarded_auth().set(v);
        }
    }
}
