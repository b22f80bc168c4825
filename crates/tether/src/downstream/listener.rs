//! The client-facing accept loop: a cap on open connections, the request-head timeout (which is
//! also the keep-alive idle limit), and graceful shutdown. Request bodies are timed where they
//! are read ([`super::guard::body`]).
//!
//! `axum::serve` has neither a connection cap nor a head timeout, so connections are served
//! here one by one with hyper's HTTP/1 builder, as `axum::serve` does inside.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::FrontConfig;

/// How long to pause accepting after an accept error (out of file descriptors, mostly): the
/// error would repeat at once in a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` resolves, then lets open connections finish
/// their requests and returns once every connection has closed.
pub async fn serve(listener: TcpListener, router: Router, front: &FrontConfig, shutdown: impl Future<Output = ()>) {
    let max = front.max_connections.clamp(1, u32::MAX as usize);
    let permits = Arc::new(Semaphore::new(max));
    let stop = CancellationToken::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(front.header_timeout).keep_alive(true);
    tokio::pin!(shutdown);
    let mut at_cap_logged = false;
    loop {
        // Past the cap, connections wait in the kernel's listen backlog until one closes.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !at_cap_logged {
                    warn!(max_connections = max, "connection limit reached; new connections wait");
                    at_cap_logged = true;
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = &mut shutdown => break,
                }
            }
        };
        if permits.available_permits() > max / 10 {
            at_cap_logged = false;
        }
        let (tcp, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        spawn_connection(tcp, permit, &router, &http, &stop);
    }
    // Connections the kernel completed before the drain began are served like the others:
    // their clients sent their requests to a replica that was still up. (Accepted directly:
    // the runtime may not have seen the socket readable yet.)
    if let Ok(std_listener) = listener.into_std() {
        while let Ok(permit) = permits.clone().try_acquire_owned() {
            let Ok((tcp, _peer)) = std_listener.accept() else { break };
            match tcp.set_nonblocking(true).and_then(|()| TcpStream::from_std(tcp)) {
                Ok(tcp) => spawn_connection(tcp, permit, &router, &http, &stop),
                Err(e) => debug!(error = %e, "a connection accepted at the drain was dropped"),
            }
        }
        // Closed now, not when the drain is over: a connection the kernel would complete into
        // the backlog meanwhile is never served, only reset at the end, with its request lost.
        // Refused, it goes elsewhere (a balancer tries the next replica).
        drop(std_listener);
    }
    stop.cancel();
    // Every connection holds a permit: having them all back means every connection closed.
    let _ = permits.acquire_many(max as u32).await;
}

/// How long a connection accepted just before a drain has to send its first request, which is
/// then served; past it the connection closes (it was opened and left idle).
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Serves one connection until it closes, or until `stop` (then gracefully: a request in
/// progress finishes, and one that has not begun yet on a new connection gets a moment to).
fn spawn_connection(
    tcp: TcpStream,
    permit: OwnedSemaphorePermit,
    router: &Router,
    http: &http1::Builder,
    stop: &CancellationToken,
) {
    // Small SSE events must not wait for Nagle and the peer's delayed ACK (~40 ms).
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(error = %e, "TCP_NODELAY not set");
    }
    // Set by the connection's first request, which also wakes a drain waiting for it.
    let started = Arc::new(AtomicBool::new(false));
    let first = Arc::new(Notify::new());
    let inner = TowerToHyperService::new(router.clone());
    let (seen, woken) = (started.clone(), first.clone());
    let service = hyper::service::service_fn(move |req| {
        if !seen.swap(true, Ordering::Relaxed) {
            woken.notify_one();
        }
        inner.call(req)
    });
    let conn = http.serve_connection(TokioIo::new(tcp), service);
    let stop = stop.clone();
    tokio::spawn(async move {
        let _permit = permit;
        tokio::pin!(conn);
        let mut done = tokio::select! {
            r = conn.as_mut() => Some(r),
            _ = stop.cancelled() => None,
        };
        // Its client connected while this replica was up and its request may be on the way:
        // closing the connection now would lose it (hyper closes a connection that is idle).
        if done.is_none() && !started.load(Ordering::Relaxed) {
            done = tokio::select! {
                r = conn.as_mut() => Some(r),
                // A request that began since the look above left its permit: no wait then.
                () = first.notified() => None,
                () = tokio::time::sleep(FIRST_REQUEST_GRACE) => None,
            };
        }
        let result = match done {
            Some(r) => r,
            None => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            // Timeouts, resets and cut-off requests: the client's business, not an error.
            debug!(error = %e, "client connection ended");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_once_shutdown_and_connections_are_done() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let front = FrontConfig { max_connections: 2, ..FrontConfig::default() };
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move { serve(listener, Router::new(), &front, s.cancelled_owned()).await });
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("serve returns").expect("join");
    }
}
