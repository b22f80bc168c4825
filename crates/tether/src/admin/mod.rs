//! The admin listener: liveness, readiness and deep health, Prometheus metrics, and the
//! token-protected session API under `/admin/`, and the operators' web dashboard at `/` (see
//! [`dashboard`]). It is not the data plane.
//!
//! It runs on its own thread with its own small runtime (as linkerd2-proxy's admin does), so it
//! answers while the data plane is saturated. The rule that keeps that true: the admin runtime
//! only reads atomics and in-memory maps; anything that touches the store or changes a session
//! is handed to the data plane's runtime ([`AdminState::on_data_plane`]) with a deadline, so a
//! stuck data plane shows up as a 503 here, never as a hung admin.

pub mod dashboard;
pub mod health;
pub mod log_level;
pub mod metrics;
pub mod sessions;
pub mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::session::Manager;
use crate::telemetry::LogControl;
pub use token::AdminToken;

/// How long the admin waits for the data plane to run something for it.
const DATA_PLANE_DEADLINE: Duration = Duration::from_secs(5);

/// How long in-flight admin requests get to finish at shutdown.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Everything the admin handlers read.
#[derive(Clone)]
pub struct AdminState(Arc<Inner>);

struct Inner {
    manager: Arc<Manager>,
    token: AdminToken,
    log: Option<LogControl>,
    data_plane: tokio::runtime::Handle,
    stopping: CancellationToken,
    started: Instant,
    readiness: health::Readiness,
    registry: prometheus_client::registry::Registry,
    dashboard: dashboard::Dashboard,
    /// The shared store's replica registry, as last read (empty: one process).
    replicas: crate::app::Board,
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl AdminState {
    /// The admin's view of a gateway. Must be called on the data plane's runtime; `stopping`
    /// is cancelled when the gateway starts shutting down (readiness goes false).
    pub fn new(
        manager: Arc<Manager>,
        token: AdminToken,
        log: Option<LogControl>,
        stopping: CancellationToken,
    ) -> AdminState {
        let registry = metrics::registry(manager.clone());
        AdminState(Arc::new(Inner {
            manager,
            token,
            log,
            data_plane: tokio::runtime::Handle::current(),
            stopping,
            started: Instant::now(),
            readiness: health::Readiness::default(),
            registry,
            dashboard: dashboard::Dashboard::default(),
            replicas: crate::app::Board::default(),
            cluster: None,
        }))
    }

    /// With the replica registry of a shared store (set before the admin serves).
    pub fn with_replicas(mut self, board: crate::app::Board) -> AdminState {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.replicas = board;
        }
        self
    }

    /// In cluster mode: session details show their lease (set before the admin serves).
    pub fn with_cluster(mut self, cluster: Option<Arc<crate::cluster::Cluster>>) -> AdminState {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.cluster = cluster;
        }
        self
    }

    /// Cluster mode's side of this replica, if on.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.0.cluster.as_ref()
    }

    /// The replicas as the registry last listed them (`None`: a store of one process).
    pub fn replica_rows(&self) -> Option<Vec<crate::app::ReplicaRow>> {
        self.0.replicas.rows()
    }

    fn manager(&self) -> &Arc<Manager> {
        &self.0.manager
    }

    fn dashboard(&self) -> &dashboard::Dashboard {
        &self.0.dashboard
    }

    /// Runs `f` on the data plane's runtime and waits for it, at most [`DATA_PLANE_DEADLINE`].
    pub async fn on_data_plane<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, AdminError> {
        let task = self.0.data_plane.spawn(f);
        match tokio::time::timeout(DATA_PLANE_DEADLINE, task).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(AdminError::Internal(format!("the task failed: {e}"))),
            Err(_) => Err(AdminError::Unavailable("the gateway did not answer in time".into())),
        }
    }
}

/// An admin request that failed. [`AdminError::into_response`] is the one place these become
/// HTTP answers.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No `Authorization` header.
    #[error("this endpoint needs a bearer token")]
    MissingToken,
    /// An `Authorization` header with another scheme than `Bearer`.
    #[error("use the Bearer authorization scheme")]
    WrongScheme,
    /// A bearer token that is not the admin token.
    #[error("the bearer token is not valid")]
    WrongToken,
    /// Nothing here, or no such session.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the resource's state (a session already closed).
    #[error("{0}")]
    Conflict(String),
    /// A dashboard request without its CSRF token, or from a foreign origin.
    #[error("{0}")]
    Forbidden(String),
    /// A malformed request: names what is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// A dependency is not available now (the store, the data plane, log control).
    #[error("{0}")]
    Unavailable(String),
    /// A bug.
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        use AdminError as E;
        let (status, code) = match &self {
            E::MissingToken | E::WrongScheme => (StatusCode::UNAUTHORIZED, "unauthorized"),
            E::WrongToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
            E::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            E::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            E::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            E::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => info!(error = %self, "admin request refused"),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::INTERNAL_SERVER_ERROR => {
                warn!(status = status.as_u16(), error = %self, "admin request failed")
            }
            _ => {}
        }
        let mut r = json_response(status, &json!({ "error": { "code": code, "message": self.to_string() } }));
        if status == StatusCode::UNAUTHORIZED {
            let challenge = match self {
                E::WrongToken => r#"Bearer realm="tether-admin", error="invalid_token""#,
                _ => r#"Bearer realm="tether-admin""#,
            };
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        r
    }
}

/// A JSON answer.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response()
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/sessions", get(sessions::list))
        .route("/sessions/cleanup", post(sessions::cleanup))
        .route("/sessions/{id}", get(sessions::show).delete(sessions::terminate))
        .route("/sessions/{id}/refresh", post(sessions::refresh))
        .route("/overview", get(dashboard::overview_json))
        .route("/replicas", get(replicas))
        .route("/drain", post(sessions::drain))
        .route("/log-level", get(log_level::show).put(log_level::set))
        .fallback(not_found)
        // `layer`, not `route_layer`: without the token, even the shape of the API stays hidden.
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/health/deep", get(health::deep))
        .route("/metrics", get(metrics::scrape))
        .nest("/admin", api)
        .merge(dashboard::router())
        .fallback(not_found)
        .with_state(state)
}

/// `GET /admin/replicas`: the shared store's replica registry (id, incarnation, address,
/// heartbeat age, role), or this process alone on a store of one process.
async fn replicas(State(state): State<AdminState>) -> Response {
    let mut rows = state.replica_rows().unwrap_or_else(|| {
        vec![crate::app::ReplicaRow {
            id: crate::session::instance().to_owned(),
            incarnation: String::new(),
            address: String::new(),
            heartbeat_age_ms: 0,
            role: "single replica",
            this: true,
            leases_held: None,
        }]
    });
    if let Some(c) = state.cluster() {
        for r in rows.iter_mut().filter(|r| r.this) {
            r.leases_held = Some(c.leases_held() as u64);
        }
    }
    json_response(StatusCode::OK, &serde_json::json!({ "replicas": rows }))
}

async fn not_found() -> AdminError {
    AdminError::NotFound("no such admin endpoint".into())
}

/// Lets a request through only with `Authorization: Bearer <the admin token>`, or — from the
/// dashboard — with a login cookie, plus for anything but a read its CSRF token in
/// `X-CSRF-Token` and, when the browser sends one, this listener's own `Origin`.
async fn require_token(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    if req.headers().get(header::AUTHORIZATION).is_none()
        && let Some(login) = state.dashboard().logins.of(req.headers())
    {
        if !req.method().is_safe() {
            let csrf = req.headers().get(dashboard::login::CSRF_HEADER).and_then(|v| v.to_str().ok());
            if !csrf.is_some_and(|c| dashboard::login::csrf_matches(&login, c)) {
                return AdminError::Forbidden("missing or wrong CSRF token".into()).into_response();
            }
            if !dashboard::login::origin_ok(req.headers()) {
                return AdminError::Forbidden("cross-origin request refused".into()).into_response();
            }
        }
        return next.run(req).await;
    }
    match check_bearer(req.headers().get(header::AUTHORIZATION), &state.0.token) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn check_bearer(value: Option<&HeaderValue>, token: &AdminToken) -> Result<(), AdminError> {
    let value = value.ok_or(AdminError::MissingToken)?.as_bytes();
    // The scheme is case-insensitive (RFC 9110); the token follows one or more spaces.
    let scheme_len = value.iter().position(|b| *b == b' ').ok_or(AdminError::WrongScheme)?;
    if !value[..scheme_len].eq_ignore_ascii_case(b"bearer") {
        return Err(AdminError::WrongScheme);
    }
    let presented = value[scheme_len..].trim_ascii();
    if token.matches(presented) { Ok(()) } else { Err(AdminError::WrongToken) }
}

/// The admin listener, serving on its own thread and runtime. Dropping it stops the thread.
pub struct AdminServer {
    addr: SocketAddr,
    stop: CancellationToken,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl AdminServer {
    /// Starts serving `state` on `listener` (bound by the caller, so tests can use port 0).
    pub async fn start(listener: TcpListener, state: AdminState) -> std::io::Result<AdminServer> {
        let listener = listener.into_std()?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let signal = stop.clone();
        std::thread::Builder::new().name("tether-admin".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let runtime = match runtime {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                tokio::spawn(dashboard::run_sampler(state.clone(), signal.clone()));
                let closing = state.clone();
                let stopped = signal.clone();
                tokio::spawn(async move {
                    stopped.cancelled().await;
                    closing.dashboard().close();
                });
                let serve =
                    axum::serve(listener, router(state)).with_graceful_shutdown(signal.clone().cancelled_owned());
                let serve = async move {
                    if let Err(e) = serve.await {
                        warn!(error = %e, "admin server error");
                    }
                };
                tokio::pin!(serve);
                tokio::select! {
                    _ = &mut serve => {}
                    _ = async { signal.cancelled().await; tokio::time::sleep(STOP_DEADLINE).await } => {}
                }
            });
            let _ = done_tx.send(());
        })?;
        ready_rx.await.map_err(|_| std::io::Error::other("the admin thread stopped while starting"))??;
        info!(admin = %addr, "admin listening at http://{addr} (dashboard at /; /healthz, /readyz, /health/deep, /metrics, /admin/)");
        Ok(AdminServer { addr, stop, done: Some(done) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread to finish.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(STOP_DEADLINE + Duration::from_secs(1), done).await;
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked_with_their_scheme() {
        let t = AdminToken::new("abc").expect("token");
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert!(check_bearer(Some(&h("Bearer abc")), &t).is_ok());
        assert!(check_bearer(Some(&h("bearer  abc")), &t).is_ok());
        assert!(matches!(check_bearer(None, &t), Err(AdminError::MissingToken)));
        assert!(matches!(check_bearer(Some(&h("Basic YWJj")), &t), Err(AdminError::WrongScheme)));
        assert!(matches!(check_bearer(Some(&h("abc")), &t), Err(AdminError::WrongScheme)));
        assert!(matches!(check_bearer(Some(&h("Bearer abd")), &t), Err(AdminError::WrongToken)));
        assert!(matches!(check_bearer(Some(&h("Bearer ")), &t), Err(AdminError::WrongToken)));
    }
}
