//! `--standby`: a tether that waits while another serves its shared store's namespace, and
//! takes over when that one stops or dies (its lease released, or run out after a kill -9).
//!
//! While it waits nothing listens on the MCP address, so a load balancer's connection is
//! refused and goes to the serving tether; the admin listener answers `/healthz` 200 (the
//! process is fine: do not restart it) and `/readyz` 503 `standby` (do not send it traffic).
//! Once the namespace is taken both addresses are bound again and the gateway starts as any
//! tether does, recovering the sessions from the store. It does not serve anything itself.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Listeners;
use super::replicas::Registry;
use crate::store::StoreSpec;
use crate::store::namespace::NamespaceLease;

/// Stands by until the namespace is free, then takes it; the listeners to serve on.
pub async fn wait(
    spec: &StoreSpec,
    registry: &Registry,
    listeners: Listeners,
    lost: CancellationToken,
) -> anyhow::Result<(Listeners, NamespaceLease)> {
    let mcp_addr = listeners.mcp.local_addr()?;
    drop(listeners.mcp);
    let admin_addr = listeners.admin.as_ref().map(TcpListener::local_addr).transpose()?;
    let taken = CancellationToken::new();
    let admin = listeners.admin.map(|l| {
        let router = Router::new()
            .route("/healthz", get(|| async { answer(StatusCode::OK, json!({"status": "standby"})) }))
            .fallback(|| async {
                answer(StatusCode::SERVICE_UNAVAILABLE, json!({"status": "standby", "ready": false}))
            });
        let stop = taken.clone();
        tokio::spawn(async move {
            let _ = axum::serve(l, router).with_graceful_shutdown(stop.cancelled_owned()).await;
        })
    });
    info!(listen = %mcp_addr, "standby: not listening until this tether takes the store namespace");
    let lease = NamespaceLease::take_when_free(spec, registry.store(), registry.me().clone(), lost).await;
    taken.cancel();
    if let Some(task) = admin {
        let _ = task.await;
    }
    let mcp = rebind(mcp_addr).await?;
    let admin = match admin_addr {
        Some(a) => Some(rebind(a).await?),
        None => None,
    };
    Ok((Listeners { mcp, admin }, lease))
}

fn answer(status: StatusCode, body: serde_json::Value) -> impl axum::response::IntoResponse {
    (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body.to_string())
}

/// Binds `addr` again (tokio's listeners set SO_REUSEADDR; a moment's retry covers a socket
/// that is still being closed).
async fn rebind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if tries < 50 => {
                tries += 1;
                if tries == 1 {
                    warn!(%addr, error = %e, "binding the address again after the standby; retrying");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => anyhow::bail!("cannot listen on {addr} after taking over: {e}"),
        }
    }
}
