//! The operators' web dashboard, served by the admin listener at `/` and under `/ui/`: a login
//! form (the admin token, exchanged for a cookie), server-rendered pages — overview, sessions,
//! one session, upstreams — kept live by an event stream that sends re-rendered fragments, and
//! actions that call the JSON API under `/admin/` with the login's CSRF token.
//!
//! No front-end toolchain and nothing from a CDN: the script and the style sheet are embedded
//! in the binary, the plots are inline SVG drawn here. It owns no data: it reads what the admin
//! API reads, plus the bounded sample rings in [`samples`].

pub mod html;
pub mod login;
pub mod samples;
pub mod view;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{AdminError, AdminState, json_response};
use login::Logins;
use samples::Samples;
use view::ListFilter;

/// The most live-update streams open at once (each re-renders its page every second).
pub const MAX_STREAMS: usize = 16;
/// How often a live page is re-rendered.
const LIVE_TICK: Duration = Duration::from_secs(1);
/// A comment is sent on an otherwise quiet stream this often, so proxies keep it open.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often the sampler checks the store.
const STORE_CHECK_EVERY: u32 = 5;

const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The dashboard's own state, part of the admin state.
pub struct Dashboard {
    /// Logged-in browsers.
    pub logins: Logins,
    /// The sample rings.
    pub samples: Samples,
    streams: Arc<Semaphore>,
    store_health: Mutex<Option<Result<(), String>>>,
    /// Cancelled when the admin listener stops: live streams end.
    closing: CancellationToken,
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard {
            logins: Logins::default(),
            samples: Samples::default(),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            store_health: Mutex::new(None),
            closing: CancellationToken::new(),
        }
    }
}

impl Dashboard {
    /// The store's health at the sampler's last check (None before the first).
    pub fn store_health(&self) -> Option<Result<(), String>> {
        self.store_health.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Ends the live streams (the admin listener is stopping).
    pub fn close(&self) {
        self.closing.cancel();
    }
}

/// Samples the counters and sessions every second, and the store every few, until `stop`.
/// Runs on the admin runtime.
pub async fn run_sampler(state: AdminState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(samples::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u32 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        state.dashboard().samples.tick(state.manager());
        if n.is_multiple_of(STORE_CHECK_EVERY) {
            let store = state.manager().deps().store.clone();
            let health = match state.on_data_plane(async move { store.ping().await }).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            *state.dashboard().store_health.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(health);
        }
        n = n.wrapping_add(1);
    }
}

/// The dashboard's routes.
pub fn router() -> Router<AdminState> {
    Router::new()
        .route("/", get(overview_page))
        .route("/ui/login", get(login_page).post(login_submit))
        .route("/ui/logout", post(logout))
        .route("/ui/sessions", get(sessions_page))
        .route("/ui/sessions/{id}", get(session_page))
        .route("/ui/upstreams", get(upstreams_page))
        .route("/ui/events", get(events))
        .route("/ui/static/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/ui/static/app.css", get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }))
        .layer(middleware::from_fn(security_headers))
}

/// GET /admin/overview: the overview as JSON (what the dashboard's first page shows).
pub async fn overview_json(State(state): State<AdminState>) -> Response {
    let o = view::overview(&state);
    json_response(StatusCode::OK, &serde_json::to_value(&o).unwrap_or_default())
}

/// Headers every dashboard answer carries: a strict content security policy (no inline
/// script or style, nothing from elsewhere), no framing, no caching, no referrer to other sites.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // `same-origin`, not `no-referrer`: with the latter a browser sends `Origin: null` on form
    // posts, which the origin check must refuse.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    r
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let cache = HeaderValue::from_static("private, max-age=300");
    ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type)), (header::CACHE_CONTROL, cache)], body)
        .into_response()
}

fn html_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))], body).into_response()
}

/// Where a page request without a login goes.
fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

/// An error shown as a page.
fn error_page(e: AdminError) -> Response {
    let status = match &e {
        AdminError::NotFound(_) => StatusCode::NOT_FOUND,
        AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>tether · error</title><link rel="stylesheet" href="/ui/static/app.css"></head><body><main><h1>{}</h1><p class="error">{}</p><p><a href="/">Overview</a></p></main></body></html>"#,
        status.as_u16(),
        html::esc(&e.to_string())
    );
    html_response(status, body)
}

async fn login_page(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if state.dashboard().logins.of(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    html_response(StatusCode::OK, html::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// POST /ui/login: the admin token, from the form, for a login cookie.
async fn login_submit(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    if !login::origin_ok(&headers) {
        return html_response(StatusCode::FORBIDDEN, html::login(Some("This form must be sent from this page.")));
    }
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        return html_response(StatusCode::BAD_REQUEST, html::login(Some("Enter the admin token.")));
    };
    let logins = &state.dashboard().logins;
    if let Err(wait) = logins.may_try() {
        let mut r = html_response(
            StatusCode::TOO_MANY_REQUESTS,
            html::login(Some("Too many wrong tokens: wait a minute before trying again.")),
        );
        let secs = wait.as_secs().max(1).to_string();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    if !state.0.token.matches(form.token.trim().as_bytes()) {
        logins.failed();
        info!("dashboard login refused: wrong token");
        return html_response(StatusCode::UNAUTHORIZED, html::login(Some("That is not the admin token.")));
    }
    let l = state.dashboard().logins.create();
    info!(logins = state.dashboard().logins.len(), "dashboard login");
    let mut r = Redirect::to("/").into_response();
    r.headers_mut().insert(header::SET_COOKIE, login::set_cookie(&l));
    r
}

#[derive(Deserialize)]
struct LogoutForm {
    csrf: String,
}

/// POST /ui/logout: ends the login (CSRF-checked: a foreign page cannot log an operator out).
async fn logout(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(l) = state.dashboard().logins.of(&headers) else { return Redirect::to("/ui/login").into_response() };
    let form = serde_urlencoded::from_bytes::<LogoutForm>(&body).ok();
    if !login::origin_ok(&headers) || !form.is_some_and(|f| login::csrf_matches(&l, &f.csrf)) {
        return AdminError::Forbidden("missing or wrong CSRF token".into()).into_response();
    }
    state.dashboard().logins.remove(&l.id);
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut().insert(header::SET_COOKIE, login::clear_cookie());
    r
}

async fn overview_page(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let Some(l) = state.dashboard().logins.of(&headers) else { return to_login() };
    let body = html::overview_body(&view::overview(&state));
    html_response(StatusCode::OK, html::page("Overview", "overview", &l.csrf, "/ui/events?view=overview", &body))
}

async fn sessions_page(
    State(state): State<AdminState>,
    headers: HeaderMap,
    filter: Result<Query<ListFilter>, QueryRejection>,
) -> Response {
    let Some(l) = state.dashboard().logins.of(&headers) else { return to_login() };
    let Ok(Query(filter)) = filter else { return error_page(AdminError::BadRequest("bad filter".into())) };
    let (rows, cut) = match view::sessions(&state, &filter).await {
        Ok(v) => v,
        Err(e) => return error_page(e),
    };
    let events = format!(
        "/ui/events?view=sessions&q={}&transport={}&state={}",
        html::url_encode(&filter.q),
        html::url_encode(&filter.transport),
        html::url_encode(&filter.state)
    );
    let body = html::sessions_body(&filter, &html::sessions_table(&rows, cut));
    html_response(StatusCode::OK, html::page("Sessions", "sessions", &l.csrf, &events, &body))
}

async fn session_page(State(state): State<AdminState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(l) = state.dashboard().logins.of(&headers) else { return to_login() };
    let d = match view::detail(&state, &id).await {
        Ok(d) => d,
        Err(e) => return error_page(e),
    };
    let body = format!(
        "{}\n{}",
        html::session_actions(&d.record.id, d.record.closed_at.is_none()),
        html::section("session-detail", &html::session_detail(&d))
    );
    let events = format!("/ui/events?view=session&id={}", html::url_encode(&id));
    let title = format!("Session {}", id.get(..12).unwrap_or(&id));
    html_response(StatusCode::OK, html::page(&title, "sessions", &l.csrf, &events, &body))
}

async fn upstreams_page(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let Some(l) = state.dashboard().logins.of(&headers) else { return to_login() };
    let body = html::section("upstream-table", &upstreams_fragment(&state).await);
    html_response(StatusCode::OK, html::page("Upstreams", "upstreams", &l.csrf, "/ui/events?view=upstreams", &body))
}

async fn upstreams_fragment(state: &AdminState) -> String {
    let p = state.manager().deps().config.restart;
    let policy = format!(
        "{} upstream. The first restart after a failure is immediate, later ones back off (up to {}); {} failures within {} open the crash-loop breaker for a {} cool-down.",
        state.manager().deps().spec.kind(),
        html::ago(p.backoff_max),
        p.max_failures,
        html::ago(p.window),
        html::ago(p.cooldown),
    );
    html::upstreams_table(&view::upstreams(state).await, &policy)
}

/// The query of the live-update stream: which page, and its filter.
#[derive(Deserialize, Default)]
struct LiveQuery {
    #[serde(default)]
    view: String,
    #[serde(default)]
    id: String,
    #[serde(flatten)]
    filter: ListFilter,
}

/// The live fragments of one page, rendered now.
async fn fragments(state: &AdminState, q: &LiveQuery) -> Result<Vec<(&'static str, String)>, AdminError> {
    match q.view.as_str() {
        "overview" => Ok(html::overview_fragments(&view::overview(state))),
        "sessions" => {
            let (rows, cut) = view::sessions(state, &q.filter).await?;
            Ok(vec![("session-table", html::sessions_table(&rows, cut))])
        }
        "session" => Ok(vec![("session-detail", html::session_detail(&view::detail(state, &q.id).await?))]),
        "upstreams" => Ok(vec![("upstream-table", upstreams_fragment(state).await)]),
        other => Err(AdminError::BadRequest(format!("view {other:?}: use overview, sessions, session or upstreams"))),
    }
}

/// GET /ui/events: Server-Sent Events that keep a page live. Each second the page's fragments
/// are rendered again and those that changed are sent as `fragment` events (`<id>\n<html>`);
/// a quiet stream gets a keep-alive comment. At most [`MAX_STREAMS`] are open; a stream ends
/// when its login does (`logout` event), or when the admin listener stops.
async fn events(
    State(state): State<AdminState>,
    headers: HeaderMap,
    query: Result<Query<LiveQuery>, QueryRejection>,
) -> Result<Response, AdminError> {
    let Some(l) = state.dashboard().logins.of(&headers) else {
        return Err(AdminError::MissingToken);
    };
    let Query(q) = query.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let permit = state
        .dashboard()
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| AdminError::Unavailable(format!("too many live pages open (at most {MAX_STREAMS})")))?;
    // Render once before answering: a bad view is a 400, not a stream of errors.
    let first = fragments(&state, &q).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let closing = state.dashboard().closing.clone();
    let stopping = state.0.stopping.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut sent: HashMap<&'static str, String> = HashMap::new();
        let mut quiet_since = Instant::now();
        let mut batch = Some(Ok(first));
        let _ = tx.send(Bytes::from_static(b"retry: 2000\n\n")).await;
        let mut tick = tokio::time::interval(LIVE_TICK);
        tick.tick().await;
        loop {
            if !state.dashboard().logins.is_valid(&l.id) {
                let _ = tx.send(Bytes::from_static(b"event: logout\ndata: \n\n")).await;
                return;
            }
            match batch.take() {
                Some(Ok(frags)) => {
                    for (id, html) in frags {
                        if sent.get(id) == Some(&html) {
                            continue;
                        }
                        if tx.send(frame("fragment", &format!("{id}\n{html}"))).await.is_err() {
                            return;
                        }
                        sent.insert(id, html);
                        quiet_since = Instant::now();
                    }
                }
                Some(Err(AdminError::NotFound(m))) => {
                    let _ = tx.send(frame("gone", &m)).await;
                    return;
                }
                // A slow store or data plane: the page keeps what it shows and tries again.
                Some(Err(_)) | None => {}
            }
            if quiet_since.elapsed() >= KEEPALIVE {
                if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                    return;
                }
                quiet_since = Instant::now();
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = tx.closed() => return,
                _ = closing.cancelled() => return,
                _ = stopping.cancelled() => return,
            }
            batch = Some(fragments(&state, &q).await);
        }
    });
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx)) },
        );
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// One SSE event; every line of `data` becomes a `data:` line (a bare CR would end a line in
/// SSE, so it is dropped).
fn frame(event: &str, data: &str) -> Bytes {
    let mut out = format!("event: {event}\n");
    for line in data.replace('\r', "").split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_multi_line_html_in_one_event() {
        let f = frame("fragment", "cards\n<p>a\r\nb</p>");
        assert_eq!(&f[..], b"event: fragment\ndata: cards\ndata: <p>a\ndata: b</p>\n\n");
    }

    #[test]
    fn assets_are_small_and_self_contained() {
        assert!(APP_JS.len() + APP_CSS.len() < 16 * 1024, "the embedded assets stay small");
        for a in [APP_JS, APP_CSS] {
            assert!(!a.contains("http://") && !a.contains("https://"), "nothing is loaded from elsewhere");
        }
    }
}
