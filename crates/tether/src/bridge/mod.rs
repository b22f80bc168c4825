//! `tether bridge URL`: the client-side half. A local stdio-only client launches it as its
//! server; it speaks to a remote MCP server over Streamable HTTP or legacy SSE and never drops
//! the stdio pipe. It is the gateway's session machinery with a stdio front: one session whose
//! upstream is the remote, so losing the remote session (404, a 400 that says so, a dropped
//! connection) is healed by the same replay of `initialize` and session state, and in-flight
//! requests follow the same safety policy.

mod args;
mod probe;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tether_protocol::{Kind, Message, error_code};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tracing::{debug, info, warn};

pub use args::{BridgeArgs, BridgeConfig, TransportChoice};

use crate::error::GatewayError;
use crate::session::record::Transport;
use crate::session::{Deps, Manager, Session, SessionConfig, Sink, StreamKind};
use crate::stats::Stats;
use crate::store::MemoryStore;
use crate::upstream::UpstreamSpec;

/// The largest line accepted from the local client.
const MAX_LINE: usize = 16 << 20;

/// The bridge's one session, made when the client initializes.
struct Live {
    manager: Arc<Manager>,
    session: Arc<Session>,
    sink: Sink,
}

struct Bridge {
    config: BridgeConfig,
    http: reqwest::Client,
    out: mpsc::Sender<Bytes>,
    live: Mutex<Option<Live>>,
}

/// Runs the bridge until the client closes stdin.
pub async fn run(
    config: BridgeConfig,
    stdin: impl AsyncRead + Unpin + Send + 'static,
    stdout: impl AsyncWrite + Unpin + Send + 'static,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .default_headers(config.headers.clone())
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let (out, out_rx) = mpsc::channel::<Bytes>(256);
    let writer = tokio::spawn(write_stdout(stdout, out_rx));
    let bridge = Arc::new(Bridge { config, http, out, live: Mutex::new(None) });
    info!(url = %bridge.config.url, transport = ?bridge.config.transport, "tether bridge ready on stdio");

    let mut lines = FramedRead::new(stdin, LinesCodec::new_with_max_length(MAX_LINE));
    while let Some(line) = lines.next().await {
        let line = match line {
            Ok(l) => l,
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                bridge.reply(GatewayError::PayloadTooLarge { limit: MAX_LINE }.to_message(None)).await;
                continue;
            }
            Err(LinesCodecError::Io(e)) => {
                warn!(error = %e, "reading stdin failed");
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match Message::parse(line.trim().as_bytes()) {
            // Notifications and answers go out in order (a request after `initialized` must not
            // overtake it); each request runs on its own, so a slow one never holds up the next.
            Ok(msg) if msg.kind() == Kind::Request => {
                let b = bridge.clone();
                tokio::spawn(async move { b.handle(msg).await });
            }
            Ok(msg) => bridge.handle(msg).await,
            Err(e) => bridge.reply(GatewayError::from(e).to_message(None)).await,
        }
    }
    info!("the client closed stdin; ending the remote session");
    if let Some(live) = bridge.live.lock().await.take() {
        live.manager.close(live.session.id(), crate::session::record::CloseReason::ClientClosed).await;
    }
    drop(bridge);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    Ok(())
}

async fn write_stdout(mut stdout: impl AsyncWrite + Unpin, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(line) = rx.recv().await {
        if stdout.write_all(&line).await.is_err() || stdout.write_all(b"\n").await.is_err() {
            return;
        }
        if stdout.flush().await.is_err() {
            return;
        }
    }
}

impl Bridge {
    async fn reply(&self, msg: Message) {
        let _ = self.out.send(Bytes::from(msg.to_bytes())).await;
    }

    async fn handle(self: &Arc<Self>, msg: Message) {
        let live = self.live.lock().await.as_ref().map(|l| (l.session.clone(), l.sink.clone()));
        match (msg.kind(), live) {
            (Kind::Request, _) if msg.is("initialize") => self.initialize(msg).await,
            (Kind::Request, Some((session, sink))) => {
                let id = msg.id().map(ToOwned::to_owned);
                if let Err(e) = session.request(msg, sink).await {
                    self.reply(e.to_message(id.as_deref())).await;
                }
            }
            (Kind::Request, None) if msg.is("ping") => {
                let empty = serde_json::value::RawValue::from_string("{}".into()).ok();
                if let (Some(id), Some(empty)) = (msg.id(), empty) {
                    self.reply(Message::response(id, &empty)).await;
                }
            }
            (Kind::Request, None) => {
                let m = Message::error(
                    msg.id(),
                    error_code::INVALID_REQUEST,
                    "Not initialized: send initialize first",
                    None,
                );
                self.reply(m).await;
            }
            (Kind::Notification, Some((session, _))) => {
                if let Err(e) = session.notify(msg).await {
                    debug!(error = %e, "notification not forwarded");
                }
            }
            (Kind::Response | Kind::Error, Some((session, _))) => {
                let _ = session.answer(msg).await;
            }
            (_, None) => debug!("a message before initialize; dropped"),
        }
    }

    /// The first `initialize` connects to the remote, retrying with backoff until
    /// `--connect-timeout`; the client keeps its pipe either way.
    async fn initialize(self: &Arc<Self>, msg: Message) {
        let deadline = Instant::now() + self.config.connect_timeout;
        let mut delay = self.config.retry_delay;
        let id = msg.id().map(ToOwned::to_owned);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = match self.session().await {
                Ok((session, sink)) => session.request(msg.clone(), sink).await.map(drop),
                Err(e) => Err(e),
            };
            let err = match result {
                Ok(()) => return,
                Err(e) => e,
            };
            let retryable = matches!(err, GatewayError::UpstreamUnavailable(_) | GatewayError::UpstreamRefused { .. });
            let attempts_left = self.config.retry_attempts.is_none_or(|n| attempt < n);
            if !retryable || !attempts_left || Instant::now() + delay > deadline {
                warn!(error = %err, class = "transport_error", attempt, "could not reach the remote MCP server");
                self.reply(err.to_message(id.as_deref())).await;
                return;
            }
            warn!(error = %err, class = "transport_error", attempt, retry_in_ms = delay.as_millis() as u64, "the remote MCP server is not reachable yet; retrying");
            tokio::time::sleep(jittered(delay)).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// The bridge's session, made on first use: the transport is resolved (probing when
    /// `auto`), then one session with a stdio-kind stream for everything the remote sends.
    async fn session(self: &Arc<Self>) -> Result<(Arc<Session>, Sink), GatewayError> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref() {
            return Ok((l.session.clone(), l.sink.clone()));
        }
        let spec = match self.config.transport {
            TransportChoice::StreamableHttp => UpstreamSpec::Streamable { url: self.config.url.clone() },
            TransportChoice::Sse => UpstreamSpec::Sse { url: self.config.url.clone() },
            TransportChoice::Auto => probe::detect(&self.http, &self.config.url).await?,
        };
        info!(upstream = spec.kind(), url = %self.config.url, "remote transport");
        let session_config = SessionConfig {
            request_timeout: self.config.timeout,
            ttl: Duration::from_secs(365 * 24 * 3600),
            upstream_idle: Duration::from_secs(365 * 24 * 3600),
            reconnect_attempts: self.config.retry_attempts,
            restart: crate::session::RestartPolicy {
                backoff_base: self.config.retry_delay,
                ..crate::session::RestartPolicy::default()
            },
            ..SessionConfig::default()
        };
        let manager = Manager::new(Deps {
            spec,
            store: Arc::new(MemoryStore::new()),
            http: self.http.clone(),
            config: session_config,
            stats: Arc::new(Stats::default()),
        });
        let session = manager.create(Transport::Stdio).await?;
        let (sink, rx) = Sink::channel(session.next_stream(), StreamKind::Legacy);
        session.attach_standalone(sink.clone());
        tokio::spawn(forward(rx, self.out.clone()));
        // Requests on the stdio stream have no per-request timer of their own: sweep.
        let s = session.clone();
        tokio::spawn(async move {
            while !s.is_closed() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                s.expire_overdue().await;
            }
        });
        *live = Some(Live { manager, session: session.clone(), sink: sink.clone() });
        Ok((session, sink))
    }
}

async fn forward(mut rx: mpsc::Receiver<crate::session::Outbound>, out: mpsc::Sender<Bytes>) {
    while let Some(o) = rx.recv().await {
        if out.send(o.data).await.is_err() {
            return;
        }
    }
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.75 + 0.5 * rand::random::<f64>())
}
