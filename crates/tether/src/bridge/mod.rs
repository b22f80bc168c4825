//! `tether bridge URL`: the client-side half. A local stdio-only client launches it as its
//! server; it speaks to a remote MCP server over Streamable HTTP or legacy SSE and never drops
//! the stdio pipe. It is the gateway's session machinery with a stdio front: one session whose
//! upstream is the remote, so losing the remote session (404, a 400 that says so, a dropped
//! connection) is healed by the same replay of `initialize` and session state, and in-flight
//! requests follow the same safety policy.
//!
//! A remote that speaks only MCP 2026-07-28 (the stateless modern era) is bridged too: with
//! `--protocol auto` (the default) the era is decided for each connection to the remote, as
//! `tether serve` decides it for its HTTP upstreams ([`crate::upstream::era`]): the client's
//! `initialize` goes to the remote in the era last seen, and a refusal that names the other
//! era switches that connection to it. A remote restarted in the other era is followed when the
//! session revives. `--protocol handshake|modern` fixes the era. The client keeps speaking the
//! handshake era either way.

mod args;
mod probe;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tether_protocol::method;
use tether_protocol::{Kind, Message, error_code};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};

pub use args::{BridgeArgs, BridgeConfig, ProtocolChoice, TransportChoice};

use crate::error::GatewayError;
use crate::session::backoff::Backoff;
use crate::session::record::Transport;
use crate::session::{Deps, Manager, SessionConfig, SessionHandle, Sink, StreamKind};
use crate::stats::Stats;
use crate::store::MemoryStore;
use crate::upstream::UpstreamSpec;
use crate::upstream::era::UpstreamProtocol;
use crate::upstream::lines::{BoundedLines, Frame};

/// The largest line accepted from the local client.
const MAX_LINE: usize = 16 << 20;

/// The bridge's one session, made when the client initializes.
struct Live {
    manager: Arc<Manager>,
    session: SessionHandle,
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
    info!(url = %bridge.config.url, transport = ?bridge.config.transport, protocol = ?bridge.config.protocol, "tether bridge ready on stdio");

    // Not `LinesCodec`: after one line over the limit its stream ends, and the bridge with it.
    let mut lines = FramedRead::new(stdin, BoundedLines::new(MAX_LINE, 0));
    while let Some(line) = lines.next().await {
        let line = match line {
            Ok(Frame::Line(l)) => l,
            Ok(Frame::Long { .. }) => {
                bridge.reply(GatewayError::PayloadTooLarge { limit: MAX_LINE }.to_message(None)).await;
                continue;
            }
            Err(e) => {
                warn!(error = %e, "reading stdin failed");
                break;
            }
        };
        if line.trim_ascii().is_empty() {
            continue;
        }
        match Message::parse(line.trim_ascii()) {
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
            (Kind::Request, _) if msg.is(method::INITIALIZE) => self.initialize(msg).await,
            (Kind::Request, Some((session, sink))) => {
                let id = msg.id().map(ToOwned::to_owned);
                if let Err(e) = session.request(msg, sink).await {
                    self.reply(e.to_message(id.as_deref())).await;
                }
            }
            (Kind::Request, None) if msg.is(method::PING) => {
                let empty = serde_json::value::RawValue::from_string("{}".into()).ok();
                if let (Some(id), Some(empty)) = (msg.id(), empty) {
                    self.reply(Message::response(id, &empty)).await;
                }
            }
            (Kind::Request, None) => {
                let m = GatewayError::NotInitialized.to_message(msg.id());
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
        let backoff = Backoff { base: self.config.retry_delay, max: Duration::from_secs(30) };
        let id = msg.id().map(ToOwned::to_owned);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = match self.session().await {
                Ok((session, _)) => self.initialize_once(&session, msg.clone()).await,
                Err(e) => Err(e),
            };
            let err = match result {
                Ok(answer) => {
                    self.reply(answer).await;
                    return;
                }
                Err(e) => e,
            };
            let retryable = matches!(err, GatewayError::UpstreamUnavailable(_) | GatewayError::UpstreamRefused { .. });
            // Like a request: the first attempt and `--retry-attempts` retries.
            let attempts_left = self.config.retry_attempts.is_none_or(|n| attempt <= n);
            let delay = backoff.ceiling(attempt - 1);
            if !retryable || !attempts_left || Instant::now() + delay > deadline {
                warn!(error = %err, class = "transport_error", attempt, "could not reach the remote MCP server");
                self.reply(err.to_message(id.as_deref())).await;
                return;
            }
            warn!(error = %err, class = "transport_error", attempt, retry_in_ms = delay.as_millis() as u64, "the remote MCP server is not reachable yet; retrying");
            tokio::time::sleep(backoff.delay(attempt - 1, rand::random())).await;
        }
    }

    /// Sends the client's `initialize` through the session on a stream of its own and returns
    /// the answer (what else the remote sends meanwhile goes to the client). An answer saying
    /// the remote is unavailable is an error, so that it is retried.
    async fn initialize_once(&self, session: &SessionHandle, msg: Message) -> Result<Message, GatewayError> {
        let (sink, mut rx) = Sink::channel(0, StreamKind::Legacy);
        session.request(msg, sink).await?;
        // The session ends every request (its sweep enforces --timeout); this bound is a backstop.
        let backstop = self.config.timeout + Duration::from_secs(5);
        let answer = tokio::time::timeout(backstop, async {
            while let Some(o) = rx.recv().await {
                if !o.fin {
                    let _ = self.out.send(o.data).await;
                    continue;
                }
                return Message::parse(&o.data).ok();
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| GatewayError::UpstreamUnavailable("no answer to initialize".into()))?;
        let unavailable = answer.kind() == Kind::Error
            && answer.error_object().and_then(|e| serde_json::from_str::<serde_json::Value>(e.get()).ok()).is_some_and(
                |e| e["code"] == error_code::UPSTREAM_UNAVAILABLE && e["data"]["reason"] == "upstream_unavailable",
            );
        if unavailable {
            return Err(GatewayError::UpstreamUnavailable("the remote went away during initialize".into()));
        }
        Ok(answer)
    }

    /// The bridge's session, made on first use: the transport is resolved (probing when
    /// `auto`), then one session with a stdio-kind stream for everything the remote sends.
    async fn session(self: &Arc<Self>) -> Result<(SessionHandle, Sink), GatewayError> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref() {
            return Ok((l.session.clone(), l.sink.clone()));
        }
        let spec = match self.config.transport {
            TransportChoice::StreamableHttp => UpstreamSpec::Streamable { url: self.config.url.clone() },
            TransportChoice::Sse => UpstreamSpec::Sse { url: self.config.url.clone() },
            TransportChoice::Auto => probe::detect(&self.http, &self.config.url).await?,
        };
        let protocol = match self.config.protocol {
            ProtocolChoice::Auto => UpstreamProtocol::Auto,
            ProtocolChoice::Handshake => UpstreamProtocol::Handshake,
            ProtocolChoice::Modern => UpstreamProtocol::Modern,
        };
        if protocol == UpstreamProtocol::Modern && !matches!(spec, UpstreamSpec::Streamable { .. }) {
            return Err(GatewayError::UpstreamUnavailable(
                "--protocol modern, but the remote speaks legacy HTTP+SSE (2024-11-05)".into(),
            ));
        }
        let era = match protocol {
            UpstreamProtocol::Modern => "modern (2026-07-28)",
            UpstreamProtocol::Auto => "auto (decided on each connection)",
            UpstreamProtocol::Handshake => "handshake",
        };
        info!(upstream = spec.kind(), url = %self.config.url, era, "remote transport");
        let mut upstream = crate::session::SessionConfig::default().upstream;
        upstream.protocol = protocol;
        let session_config = SessionConfig {
            upstream,
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
        let (sink, rx) = Sink::channel(session.next_stream().await, StreamKind::Legacy);
        session.attach_standalone(sink.clone()).await;
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
