//! Wiring: builds the store, the session manager and the routes from a [`Config`], serves them
//! on an injected listener, and runs the one shutdown sequence: stop accepting, end open
//! streams with a retry hint, drain with a deadline, flush the store, close every upstream.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, StoreSpec};
use crate::downstream::{self, AppState};
use crate::session::store::{MemoryStore, SessionStore};
use crate::session::{Deps, Manager};
use crate::stats::Stats;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// A running gateway, for callers that need its address and sessions (tests, `main`).
pub struct Gateway {
    /// The bound client-facing address.
    pub addr: SocketAddr,
    /// The session manager.
    pub manager: Arc<Manager>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Starts serving on `listener`.
    pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<Gateway> {
        let addr = listener.local_addr()?;
        let store: Arc<dyn SessionStore> = match &config.store {
            StoreSpec::Memory => Arc::new(MemoryStore::new()),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(config.session.upstream.connect_timeout)
            .pool_max_idle_per_host(64)
            .build()?;
        let stats = Arc::new(Stats::default());
        let manager =
            Manager::new(Deps { spec: config.upstream.clone(), store, http, config: config.session.clone(), stats });
        let stop = CancellationToken::new();
        let streams_end = CancellationToken::new();
        manager.spawn_background(stop.clone());
        let state =
            AppState { manager: manager.clone(), front: Arc::new(config.front.clone()), shutdown: streams_end.clone() };
        let router = downstream::router(state);
        info!(
            listen = %addr,
            upstream = config.upstream.kind(),
            store = manager.deps().store.name(),
            "tether serving MCP at http://{addr}/mcp (legacy SSE at /sse)"
        );
        let stop2 = stop.clone();
        let manager2 = manager.clone();
        let done = tokio::spawn(async move {
            let signal = stop2.clone();
            let manager3 = manager2.clone();
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                signal.cancelled().await;
                manager3.drain();
                streams_end.cancel();
            });
            let serve = async move {
                if let Err(e) = serve.await {
                    warn!(error = %e, "server error");
                }
            };
            tokio::pin!(serve);
            tokio::select! {
                _ = &mut serve => {}
                _ = async { stop2.cancelled().await; tokio::time::sleep(DRAIN_DEADLINE).await } => {
                    warn!(deadline_s = DRAIN_DEADLINE.as_secs(), "drain deadline passed; closing the remaining connections");
                }
            }
            manager2.shutdown().await;
            info!("tether stopped");
        });
        Ok(Gateway { addr, manager, stop, done })
    }

    /// Runs the shutdown sequence and waits for it.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }
}

/// Serves until `shutdown` resolves, then shuts down in order.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let gw = Gateway::start(config, listener).await?;
    shutdown.await;
    info!("shutting down");
    gw.shutdown().await;
    Ok(())
}
