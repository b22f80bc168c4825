//! Liveness (`/healthz`), readiness (`/readyz`) and deep health (`/health/deep`).
//!
//! Ready means a new session would work: the gateway is serving and not draining, the store
//! answers, and the upstream can be started — a stdio command resolves to an executable, an
//! HTTP upstream accepts a TCP connection. The upstream check is cached briefly, so a probe
//! every second does not become a connection every second.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{AdminState, json_response};
use crate::session::Manager;
use crate::session::inspect::UpstreamState;
use crate::upstream::UpstreamSpec;

/// How long an upstream check result is reused.
const UPSTREAM_CHECK_TTL: Duration = Duration::from_secs(5);

/// How long a TCP connect to an HTTP upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The cached upstream check.
#[derive(Default)]
pub struct Readiness {
    upstream: Mutex<Option<(Instant, Result<(), String>)>>,
}

/// GET /healthz: the process is alive and its admin runtime answers.
pub async fn live() -> Response {
    json_response(StatusCode::OK, &json!({ "status": "ok" }))
}

/// GET /readyz: 200 when a new session would work, else 503 naming the failed checks.
pub async fn ready(State(state): State<AdminState>) -> Response {
    let serving = !state.0.stopping.is_cancelled();
    let draining = state.manager().is_draining();
    let store = store_status(&state).await;
    let upstream = upstream_status(&state).await;
    let ok = serving && !draining && store.is_ok() && upstream.is_ok();
    let body = json!({
        "ready": ok,
        "checks": {
            "listeners": { "ok": serving },
            "draining": { "ok": !draining },
            "store": check(&store),
            "upstream": check(&upstream),
        }
    });
    json_response(if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}

/// GET /health/deep: sessions, upstreams, the store, version and uptime, as JSON. Always 200;
/// `status` says `ok`, `degraded` (the store fails or an upstream is crash-looping) or
/// `draining`.
pub async fn deep(State(state): State<AdminState>) -> Response {
    let m = state.manager();
    let stats = &m.deps().stats;
    let live = m.live();
    let now = crate::session::record::now_ms();
    let counts = UpstreamCounts::of(m);
    let ended = stats.sessions_closed.get() + stats.sessions_expired.get();
    let live_ms: u64 = live.iter().map(|s| now.saturating_sub(s.record().created_at)).sum();
    let lived = ended + live.len() as u64;
    let avg = if lived == 0 { 0.0 } else { (stats.ended_session_ms.get() + live_ms) as f64 / lived as f64 / 1000.0 };
    let store = store_status(&state).await;
    let sup = &m.deps().config.upstream.supervisor;
    let backoff = sup.backing_off();
    let status = if m.is_draining() {
        "draining"
    } else if store.is_err() || counts.broken > 0 || backoff.is_some() {
        "degraded"
    } else {
        "ok"
    };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": state.0.started.elapsed().as_secs_f64(),
        "draining": m.is_draining(),
        "sessions": {
            "total": stats.sessions_created.get() + stats.sessions_resumed.get(),
            "active": live.len(),
            "created": stats.sessions_created.get(),
            "resumed": stats.sessions_resumed.get(),
            "closed": stats.sessions_closed.get(),
            "expired": stats.sessions_expired.get(),
            "avgDurationSeconds": avg,
            "totalToolCalls": stats.tool_calls.get(),
        },
        "upstreams": {
            "kind": m.deps().spec.kind(),
            "alive": counts.alive,
            "restarting": counts.restarting,
            "broken": counts.broken,
            "idle": counts.idle,
            "revives": stats.revives.get(),
            "reviveFailures": stats.revive_failures.get(),
            "crashLoops": stats.crash_loops.get() + sup.backoffs_total.get(),
            "command": {
                "backingOff": backoff.is_some(),
                "retryInSeconds": backoff.map(|d| d.as_secs_f64()),
                "quickExitsInRow": sup.quick_exits_in_row(),
                "quickExits": sup.quick_exits_total.get(),
            },
        },
        "store": match &store {
            Ok(()) => json!({ "backend": m.deps().store.name(), "status": "ok" }),
            Err(e) => json!({ "backend": m.deps().store.name(), "status": "error", "error": e }),
        },
    });
    json_response(StatusCode::OK, &body)
}

/// Upstream bindings of the live sessions, by state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamCounts {
    /// Connected and alive.
    pub alive: u64,
    /// Lost or being rebuilt; the next use revives it.
    pub restarting: u64,
    /// The crash-loop breaker is open: restarts are refused for the cool-down.
    pub broken: u64,
    /// None yet, or released when idle.
    pub idle: u64,
}

impl UpstreamCounts {
    /// Counts the live sessions' upstreams.
    pub fn of(manager: &Manager) -> UpstreamCounts {
        let mut c = UpstreamCounts::default();
        for s in manager.live() {
            match s.upstream_state() {
                UpstreamState::Alive => c.alive += 1,
                UpstreamState::Restarting => c.restarting += 1,
                UpstreamState::Broken => c.broken += 1,
                UpstreamState::Idle => c.idle += 1,
            }
        }
        c
    }
}

async fn store_status(state: &AdminState) -> Result<(), String> {
    let store = state.manager().deps().store.clone();
    match state.on_data_plane(async move { store.ping().await }).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn upstream_status(state: &AdminState) -> Result<(), String> {
    // Not cached: it is a read of shared state, and readiness must flip as soon as it changes.
    if let Some(left) = state.manager().deps().config.upstream.supervisor.backing_off() {
        return Err(format!(
            "the upstream command keeps exiting before it answers; next start in {} s",
            left.as_secs().max(1)
        ));
    }
    let cached = {
        let g = state.0.readiness.upstream.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        g.as_ref().filter(|(at, _)| at.elapsed() < UPSTREAM_CHECK_TTL).map(|(_, r)| r.clone())
    };
    if let Some(r) = cached {
        return r;
    }
    let r = check_upstream(&state.manager().deps().spec).await;
    *state.0.readiness.upstream.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
        Some((Instant::now(), r.clone()));
    r
}

/// Whether the upstream can be started: the command resolves to an executable, or the HTTP
/// server accepts a connection.
pub async fn check_upstream(spec: &UpstreamSpec) -> Result<(), String> {
    match spec {
        UpstreamSpec::Stdio { command } => {
            let program = command.first().ok_or("no command")?;
            resolve_program(program).map(drop)
        }
        UpstreamSpec::Streamable { url } | UpstreamSpec::Sse { url } => {
            let u = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
            let host = u.host_str().ok_or("the upstream URL has no host")?.trim_matches(['[', ']']).to_owned();
            let port = u.port_or_known_default().ok_or("the upstream URL has no port")?;
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("cannot connect to {host}:{port}: {e}")),
                Err(_) => Err(format!("connecting to {host}:{port} timed out")),
            }
        }
        #[cfg(test)]
        UpstreamSpec::Fake(_) => Ok(()),
    }
}

/// Finds `program` as the child would be started: a path when it has a `/`, else on `PATH`.
pub fn resolve_program(program: &str) -> Result<PathBuf, String> {
    if program.contains('/') {
        let p = Path::new(program);
        return if is_executable(p) { Ok(p.to_owned()) } else { Err(format!("{program} is not an executable file")) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
        .ok_or_else(|| format!("{program} is not found on PATH"))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// One readiness check as JSON.
fn check(result: &Result<(), String>) -> Value {
    match result {
        Ok(()) => json!({ "ok": true }),
        Err(e) => json!({ "ok": false, "error": e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_like_the_child_would() {
        assert!(resolve_program("sh").is_ok(), "sh is on PATH");
        assert!(resolve_program("/bin/sh").is_ok());
        assert!(resolve_program("tether-no-such-program").expect_err("missing").contains("not found on PATH"));
        assert!(resolve_program("/etc/passwd").expect_err("not executable").contains("not an executable"));
    }

    #[tokio::test]
    async fn an_http_upstream_is_ready_when_it_accepts_connections() {
        let l = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpListener::bind("127.0.0.1:0"))
            .await
            .expect("in time")
            .expect("bind");
        let url = format!("http://{}/mcp", l.local_addr().expect("addr"));
        let ok = tokio::time::timeout(Duration::from_secs(5), check_upstream(&UpstreamSpec::Streamable { url }))
            .await
            .expect("in time");
        assert_eq!(ok, Ok(()));
        let port = l.local_addr().expect("addr").port();
        drop(l);
        let url = format!("http://127.0.0.1:{port}/mcp");
        let down = tokio::time::timeout(Duration::from_secs(5), check_upstream(&UpstreamSpec::Streamable { url }))
            .await
            .expect("in time");
        assert!(down.expect_err("refused").contains("cannot connect"));
    }
}
