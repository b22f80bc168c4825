//! Wiring: builds the store, the session manager and the routes from a [`Config`], serves them
//! on injected listeners (MCP, and the admin on its own thread), and runs the one shutdown
//! sequence: readiness off, stop accepting, end open streams with a retry hint, drain with a
//! deadline, flush the store, close every upstream, close the store, then stop the admin.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{AdminServer, AdminState, AdminToken};
use crate::config::Config;
use crate::downstream::{self, AppState};
use crate::session::{Deps, Manager};
use crate::stats::Stats;
use crate::store::timed::TimedStore;
use crate::telemetry::LogControl;

mod replicas;
mod standby;

pub use replicas::{Board, ReplicaRow};

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// The sockets a gateway serves on, bound by the caller (tests bind `127.0.0.1:0`).
pub struct Listeners {
    /// MCP clients.
    pub mcp: TcpListener,
    /// The admin listener; `None` serves no admin.
    pub admin: Option<TcpListener>,
}

/// A running gateway, for callers that need its address and sessions (tests, `main`).
pub struct Gateway {
    /// The bound client-facing address.
    pub addr: SocketAddr,
    /// The bound admin address, when an admin listener was given.
    pub admin_addr: Option<SocketAddr>,
    /// The session manager.
    pub manager: Arc<Manager>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
    admin: Option<AdminServer>,
    /// The generated admin token's file, claimed while this gateway runs.
    _token_file: Option<crate::admin::token::TokenFile>,
    _store_lock: Option<crate::store::lock::StoreLock>,
    namespace_lease: Option<crate::store::namespace::NamespaceLease>,
    registry: Option<replicas::Registry>,
}

impl Gateway {
    /// Starts serving MCP on `listener`, with no admin listener.
    pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<Gateway> {
        Gateway::start_with(config, Listeners { mcp: listener, admin: None }, None).await
    }

    /// Starts serving on `listeners`. `log`, when given, lets the admin API change the log
    /// filter. Without a configured admin token, one is generated into the state directory.
    pub async fn start_with(config: Config, listeners: Listeners, log: Option<LogControl>) -> anyhow::Result<Gateway> {
        // Stops the gateway when set; also set by a lost namespace lease.
        let stop = CancellationToken::new();
        // On a shared store: in cluster mode every replica serves (sessions are owned one by
        // one); otherwise one tether holds the namespace and a standby waits for it (holding no
        // listener meanwhile). Every tether on a shared namespace is in its replica registry.
        let mcp_addr = listeners.mcp.local_addr()?.to_string();
        // Cluster mode: the hop is bound first, and its address is what the registry lists.
        let hop_listener = match &config.cluster {
            Some(c) => Some(
                TcpListener::bind(c.listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on the cluster hop address {}: {e}", c.listen))?,
            ),
            None => None,
        };
        let advertise = config.cluster.as_ref().map_or(mcp_addr.clone(), |c| c.advertise.clone());
        let registry =
            replicas::Registry::start(&config.store, &mcp_addr, &advertise, config.cluster.is_some()).await?;
        let (listeners, namespace_lease) = match &registry {
            // Several replicas serve the namespace: sessions are owned one by one, by lease.
            Some(_) if config.cluster.is_some() => (listeners, None),
            Some(r) if config.standby => {
                let (l, lease) = standby::wait(&config.store, r, listeners, stop.clone()).await?;
                (l, Some(lease))
            }
            Some(r) => {
                let lease = crate::store::namespace::NamespaceLease::acquire(
                    &config.store,
                    r.store(),
                    r.me().clone(),
                    stop.clone(),
                )
                .await?;
                (listeners, Some(lease))
            }
            None => (listeners, None),
        };
        if let Some(r) = &registry {
            r.refresh().await;
        }
        let listener = listeners.mcp;
        let addr = listener.local_addr()?;
        // Claimed before the store is opened, and held until the gateway is gone.
        let store_lock = match &config.store {
            crate::store::StoreSpec::Sqlite { path, .. } => Some(crate::store::lock::StoreLock::acquire(path, addr)?),
            // Memory is private to the process; Postgres and Redis are shared on purpose.
            crate::store::StoreSpec::Memory
            | crate::store::StoreSpec::Postgres { .. }
            | crate::store::StoreSpec::Redis { .. } => None,
        };
        let store = crate::store::open(&config.store).await?;
        info!(store = %config.store.describe(), "session store opened");
        let since = crate::session::record::now_ms().saturating_sub(config.session.ttl.as_millis() as u64);
        let stored = match store.count_open(since).await {
            Ok(n) => {
                info!(live_sessions = n, "recovered sessions from the store");
                usize::try_from(n).unwrap_or(usize::MAX)
            }
            Err(e) => {
                warn!(error = %e, "counting stored sessions failed");
                0
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(config.session.upstream.connect_timeout)
            .pool_max_idle_per_host(64)
            // `--upstream-header`: on every request to an HTTP or SSE upstream.
            .default_headers(config.session.upstream.headers.clone())
            .build()?;
        let stats = Arc::new(Stats::default());
        // Cluster mode: the session layer's event and state writes carry the lease's epoch.
        let leases = crate::cluster::Leases::default();
        let store = match (&config.cluster, &registry) {
            (Some(_), Some(r)) => crate::cluster::FencedStore::wrap(store, r.store(), leases.clone(), stats.clone()),
            _ => store,
        };
        let store = TimedStore::wrap(store, stats.clone());
        let manager =
            Manager::new(Deps { spec: config.upstream.clone(), store, http, config: config.session.clone(), stats });
        // Sessions from before the restart count toward --max-sessions until they close.
        manager.expect_resumes(stored);
        let streams_end = CancellationToken::new();
        // Before anything serves: a token file or JWKS file that fails here stops the start.
        let auth = crate::auth::Authenticator::start(&config.auth, stop.clone()).await?;
        let cluster = match (&config.cluster, &registry) {
            (Some(c), Some(r)) => {
                let cluster = crate::cluster::Cluster::new(
                    r.store(),
                    r.me().clone(),
                    c.clone(),
                    manager.clone(),
                    r.board(),
                    leases,
                )?;
                cluster.spawn_renewer(stop.clone());
                info!(hop = %c.listen, advertise = %c.advertise, lease_ttl_ms = c.lease_ttl.as_millis() as u64, "cluster mode: serving with the other replicas of the namespace");
                Some(cluster)
            }
            _ => None,
        };
        let mut token_file = None;
        let admin = match listeners.admin {
            Some(l) => {
                let token = match config.admin.token.clone() {
                    Some(t) => t,
                    None => {
                        let (t, file) = generated_admin_token(&config.store.state_dir())?;
                        token_file = Some(file);
                        t
                    }
                };
                let board = registry.as_ref().map(replicas::Registry::board).unwrap_or_default();
                let state = AdminState::new(manager.clone(), token, log, stop.clone())
                    .with_replicas(board)
                    .with_cluster(cluster.clone());
                Some(AdminServer::start(l, state).await?)
            }
            None => None,
        };
        manager.spawn_background(stop.clone());
        let hard_stop = CancellationToken::new();
        let state = AppState {
            manager: manager.clone(),
            front: Arc::new(config.front.clone()),
            shutdown: streams_end.clone(),
            hard_stop: hard_stop.clone(),
            auth,
            modern: Default::default(),
            cluster: cluster.clone(),
        };
        let front = config.front.clone();
        let hop = match (hop_listener, &config.cluster) {
            (Some(l), Some(c)) => {
                let router = crate::cluster::hop::router(state.clone(), c.secret.clone());
                let (front, signal) = (front.clone(), stop.clone());
                Some(tokio::spawn(async move {
                    downstream::listener::serve(l, router, &front, signal.cancelled_owned()).await;
                }))
            }
            _ => None,
        };
        let router = downstream::router(state);
        if let crate::upstream::UpstreamSpec::Stdio { command } = &config.upstream
            && let Some((program, args)) = command.split_first()
            && config.session.upstream.supervisor.spares.want() > 0
        {
            // The first session's child is started already.
            let (sup, program, args, env) = (
                config.session.upstream.supervisor.clone(),
                program.clone(),
                args.to_vec(),
                config.session.upstream.env.clone(),
            );
            tokio::spawn(async move { sup.spares.fill(&program, &args, &env) });
        }
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
            let serve = downstream::listener::serve(listener, router, &front, async move {
                signal.cancelled().await;
                manager3.deps().config.upstream.supervisor.spares.drain();
                manager3.drain();
                streams_end.cancel();
            });
            tokio::pin!(serve);
            tokio::select! {
                _ = &mut serve => {}
                _ = async { stop2.cancelled().await; tokio::time::sleep(DRAIN_DEADLINE).await } => {
                    // Requests still running end their streams with a retry hint; their answers
                    // are stored as they come and a client that resumes gets them.
                    warn!(deadline_s = DRAIN_DEADLINE.as_secs(), "drain deadline passed; ending the remaining streams");
                    hard_stop.cancel();
                    let _ = tokio::time::timeout(Duration::from_secs(2), &mut serve).await;
                }
            }
            if let Some(hop) = hop {
                let _ = tokio::time::timeout(Duration::from_secs(2), hop).await;
            }
            manager2.shutdown().await;
            // Every upstream is closed: the sessions are free for the other replicas at once.
            if let Some(cluster) = &cluster {
                cluster.release_all().await;
            }
            // Last: commit what waits, checkpoint and close the store (no `-wal` left behind).
            if let Err(e) = manager2.deps().store.shutdown().await {
                warn!(error = %e, "closing the session store failed");
            }
            info!("tether stopped");
        });
        Ok(Gateway {
            addr,
            admin_addr: admin.as_ref().map(AdminServer::addr),
            manager,
            stop,
            done,
            admin,
            _token_file: token_file,
            _store_lock: store_lock,
            namespace_lease,
            registry,
        })
    }

    /// Runs the shutdown sequence and waits for it. The admin answers (not ready) until the
    /// data plane has stopped.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.done.await;
        // After the last session is stopped: the next tether may take the namespace at once.
        if let Some(lease) = self.namespace_lease {
            lease.release().await;
        }
        if let Some(registry) = self.registry {
            registry.leave().await;
        }
        if let Some(admin) = self.admin {
            admin.stop().await;
        }
    }
}

/// A token for an admin API that has none configured: random, written to a file only the
/// owner can read in this tether's state directory (claimed, so no other tether overwrites
/// it), whose path (never the token) is logged.
fn generated_admin_token(dir: &std::path::Path) -> anyhow::Result<(AdminToken, crate::admin::token::TokenFile)> {
    let token = AdminToken::generate();
    let file = crate::admin::token::claim_token_file(dir, &token)?;
    info!(path = %file.path.display(), "admin token generated; send it as `Authorization: Bearer <token>`");
    Ok((token, file))
}

/// Serves until `shutdown` resolves, then shuts down in order.
pub async fn run(
    config: Config,
    listeners: Listeners,
    log: Option<LogControl>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    // A standby may wait a long time in `start_with`: a signal meanwhile ends it.
    let gw = tokio::select! {
        gw = Gateway::start_with(config, listeners, log) => gw?,
        _ = &mut shutdown => {
            info!("stopped before serving");
            return Ok(());
        }
    };
    let stopping = gw.stop.clone();
    // The gateway stops itself only when it lost its store namespace (logged where it happened).
    let lost = tokio::select! {
        _ = shutdown => false,
        _ = stopping.cancelled() => true,
    };
    info!("shutting down");
    gw.shutdown().await;
    if lost {
        anyhow::bail!("stopped serving: another tether took the store namespace, or the store was unreachable");
    }
    Ok(())
}
