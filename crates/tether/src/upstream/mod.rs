//! Connections to the MCP server tether fronts: a closed set of kinds behind one handle.
//!
//! An [`Upstream`] is a cache entry of a session: it carries messages to the server and reports
//! everything the server sends, and its death, as [`UpstreamEvent`]s on a channel the session
//! reads. It knows nothing of clients, ids or replay; the session layer owns those.

pub mod credentials;
pub mod era;
#[cfg(test)]
pub mod fake;
pub(crate) mod lines;
pub mod modern;
pub mod spare;
pub mod sse;
pub mod stdio;
pub mod stdio_era;
pub mod streamable;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use tether_protocol::Message;
use tokio::sync::mpsc;

/// How to reach the upstream server, from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamSpec {
    /// A command started once per session, speaking newline-delimited JSON on stdio.
    Stdio {
        /// The program and its arguments.
        command: Vec<String>,
    },
    /// A Streamable HTTP endpoint.
    Streamable {
        /// The MCP endpoint URL.
        url: String,
    },
    /// A legacy HTTP+SSE server (2024-11-05): the URL of its SSE endpoint.
    Sse {
        /// The SSE endpoint URL.
        url: String,
    },
    /// An in-process scripted upstream (session tests).
    #[cfg(test)]
    Fake(fake::Script),
}

impl UpstreamSpec {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamSpec::Stdio { .. } => "stdio",
            UpstreamSpec::Streamable { .. } => "streamable-http",
            UpstreamSpec::Sse { .. } => "sse",
            #[cfg(test)]
            UpstreamSpec::Fake(_) => "fake",
        }
    }
}

impl UpstreamSpec {
    /// Whether failures to start count toward the crash-loop breaker: a stdio child that
    /// keeps dying is a crash loop; an HTTP server that is away (being restarted, say) is
    /// waited for with backoff instead.
    pub fn crash_loops(&self) -> bool {
        match self {
            UpstreamSpec::Stdio { .. } => true,
            UpstreamSpec::Streamable { .. } | UpstreamSpec::Sse { .. } => false,
            #[cfg(test)]
            UpstreamSpec::Fake(_) => true,
        }
    }
}

/// Where an upstream message came from, which tells the session where it belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// On the response stream of the request with this gateway id (Streamable HTTP only).
    Request(u64),
    /// On the standalone GET stream (Streamable HTTP).
    Standalone,
    /// On a channel that does not say (stdio, legacy SSE).
    Unrelated,
}

/// Why an upstream connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuitReason {
    /// The stdio child exited (with its status as text).
    Exited(String),
    /// The upstream forgot our session (404, or a 400 "no valid session"), with its class:
    /// `session_terminated`, `session_expired`, `session_invalid` or `session_conflict`.
    SessionLost(&'static str),
    /// A stream we depended on ended or the connection failed.
    Disconnected(String),
    /// tether closed it (session closed, idle reap, shutdown).
    Closed,
}

impl std::fmt::Display for QuitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuitReason::Exited(s) => write!(f, "exited ({s})"),
            QuitReason::SessionLost(class) => write!(f, "upstream session lost ({class})"),
            QuitReason::Disconnected(s) => write!(f, "disconnected ({s})"),
            QuitReason::Closed => f.write_str("closed"),
        }
    }
}

/// What an upstream reports to its session.
#[derive(Debug)]
pub enum UpstreamEvent {
    /// A message from the server.
    Message(Origin, Message),
    /// The connection is gone; nothing more will come from it. The gateway ids are of
    /// requests that provably never reached the server (safe to send again).
    Closed(QuitReason, Vec<u64>),
}

/// Why a message could not be handed to the upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Provably not delivered: the connection is down (safe to send again after a revive).
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The connection broke after the message went out: it may or may not have been processed.
    #[error("upstream connection interrupted: {0}")]
    Interrupted(String),
    /// The upstream answered that it does not know our session: the message was not processed.
    #[error("upstream session lost")]
    SessionLost,
    /// The upstream refused the message with an HTTP error and no JSON-RPC answer.
    #[error("upstream answered HTTP {status}: {detail}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// A short description.
        detail: String,
    },
}

/// Why an upstream could not be started.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The stdio command could not be spawned.
    #[error("cannot start `{command}`: {reason}")]
    Spawn {
        /// The program.
        command: String,
        /// The OS error.
        reason: String,
    },
    /// The stdio command keeps exiting before it answers: it is not started for a while.
    #[error("`{command}` keeps exiting before it answers; not starting it again for {retry_after_s} s")]
    BackingOff {
        /// The program.
        command: String,
        /// Seconds until it is tried again.
        retry_after_s: u64,
    },
    /// The HTTP/SSE upstream could not be reached or answered wrongly.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// Tunables shared by every kind of upstream.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// The largest message accepted from the upstream.
    pub max_message: usize,
    /// How long a stdio child gets to exit after its stdin is closed, before it is killed.
    pub close_grace: Duration,
    /// How long to wait for a connection or the legacy `endpoint` event.
    pub connect_timeout: Duration,
    /// The era a Streamable HTTP or stdio upstream is spoken to in (`--upstream-protocol`):
    /// probed per connection, or fixed; 2026-07-28 translates the session's handshake-era
    /// traffic ([`era`], [`stdio_era`], [`modern`]).
    pub protocol: era::UpstreamProtocol,
    /// The eras the gateway's upstreams were last seen to speak, shared by every connection
    /// made with these options.
    pub eras: Arc<era::EraCache>,
    /// Headers for every request to an HTTP or SSE upstream (`--upstream-header`).
    pub headers: reqwest::header::HeaderMap,
    /// Forward each client's own `Authorization` to the upstream (`--forward-auth`).
    pub forward_auth: bool,
    /// Extra environment of stdio children (`--env`).
    pub env: Vec<(String, String)>,
    /// The stdio command's health across sessions, shared by every connection made with these
    /// options (one per gateway).
    pub supervisor: Arc<supervisor::Supervisor>,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            max_message: 16 << 20,
            close_grace: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            protocol: era::UpstreamProtocol::Auto,
            eras: Arc::default(),
            headers: reqwest::header::HeaderMap::new(),
            forward_auth: false,
            env: Vec::new(),
            supervisor: Arc::default(),
        }
    }
}

/// Everything a connection needs to report back.
#[derive(Clone)]
pub struct ConnectContext {
    /// The client session this connection serves (for log fields).
    pub session_id: String,
    /// Where to report messages and death.
    pub events: mpsc::Sender<UpstreamEvent>,
    /// Tunables.
    pub options: UpstreamOptions,
    /// Shared HTTP client.
    pub http: reqwest::Client,
    /// The client's credential, for upstream requests when `forward_auth` is on.
    pub forwarded: credentials::ForwardedAuth,
    /// The session's client speaks 2026-07-28 (a modern binding): with `--upstream-protocol
    /// auto`, an HTTP connection probes that era first, so that a server serving both eras is
    /// spoken to in the client's ([`era`]).
    pub prefer_modern: bool,
}

enum Kind {
    Stdio(stdio_era::Handle),
    Http(era::Handle),
    Sse(sse::Handle),
    #[cfg(test)]
    Fake(fake::Handle),
}

/// A live connection to the upstream, cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    kind: Arc<Kind>,
    generation: u64,
}

impl Upstream {
    /// Opens a connection of the configured kind.
    pub async fn connect(spec: &UpstreamSpec, generation: u64, ctx: ConnectContext) -> Result<Upstream, ConnectError> {
        let kind = match spec {
            UpstreamSpec::Stdio { command } => Kind::Stdio(stdio_era::Handle::spawn(command, ctx)?),
            UpstreamSpec::Streamable { url } => Kind::Http(era::Handle::new(url, ctx)),
            UpstreamSpec::Sse { url } => Kind::Sse(sse::Handle::connect(url, ctx).await?),
            #[cfg(test)]
            UpstreamSpec::Fake(script) => Kind::Fake(fake::Handle::connect(script, ctx)?),
        };
        Ok(Upstream { kind: Arc::new(kind), generation })
    }

    /// Which connection this is for the session; a revive makes a new generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Hands one message to the server. `gid` is the gateway id when the message is a request.
    pub async fn send(&self, msg: &Message, gid: Option<u64>) -> Result<(), SendError> {
        match &*self.kind {
            Kind::Stdio(h) => h.send(msg, gid).await,
            Kind::Http(h) => h.send(msg, gid).await,
            Kind::Sse(h) => h.send(msg, gid).await,
            #[cfg(test)]
            Kind::Fake(h) => h.send(msg, gid).await,
        }
    }

    /// Whether [`Upstream::send`] of `msg` returns as soon as the message is handed over (a
    /// handshake-era child's stdin), so that a session may wait for it; otherwise (an HTTP
    /// POST's response, a probe of the child's era) the session sends from a task.
    pub fn sends_at_once(&self, msg: &Message) -> bool {
        match &*self.kind {
            Kind::Stdio(h) => h.sends_at_once(msg),
            Kind::Http(_) | Kind::Sse(_) => false,
            #[cfg(test)]
            Kind::Fake(h) => h.sends_at_once(),
        }
    }

    /// Tells the connection the negotiated protocol version (sent as `MCP-Protocol-Version`).
    pub fn set_protocol_version(&self, version: &str) {
        if let Kind::Http(h) = &*self.kind {
            h.set_protocol_version(version);
        }
    }

    /// Opens the upstream's standalone stream for server-initiated messages, where it has one.
    pub fn open_standalone(&self) {
        match &*self.kind {
            Kind::Http(h) => h.open_standalone(),
            Kind::Stdio(h) => h.open_standalone(),
            Kind::Sse(_) => {}
            #[cfg(test)]
            Kind::Fake(_) => {}
        }
    }

    /// Whether the connection is still usable.
    pub fn is_alive(&self) -> bool {
        match &*self.kind {
            Kind::Stdio(h) => h.is_alive(),
            Kind::Http(h) => h.is_alive(),
            Kind::Sse(h) => h.is_alive(),
            #[cfg(test)]
            Kind::Fake(h) => h.is_alive(),
        }
    }

    /// Marks the connection unusable (the upstream said it lost our session in-band).
    pub fn mark_lost(&self) {
        match &*self.kind {
            Kind::Stdio(h) => h.mark_lost(),
            #[cfg(test)]
            Kind::Fake(_) => {}
            Kind::Http(h) => h.mark_lost(),
            Kind::Sse(h) => h.mark_lost(),
        }
    }

    /// The child's process id, for a stdio upstream.
    pub fn pid(&self) -> Option<u32> {
        match &*self.kind {
            Kind::Stdio(h) => Some(h.pid()),
            _ => None,
        }
    }

    /// The upstream's own session id, for a Streamable HTTP upstream that issued one.
    pub fn upstream_session(&self) -> Option<String> {
        match &*self.kind {
            Kind::Http(h) => h.session_id(),
            _ => None,
        }
    }

    /// The era an upstream connection speaks: `None` for a stdio child spoken to in the
    /// handshake era and for legacy SSE (handshake era only).
    pub fn era(&self) -> Option<era::Era> {
        match &*self.kind {
            Kind::Http(h) => Some(h.era()),
            Kind::Stdio(h) => Some(h.era()).filter(|e| *e == era::Era::Modern),
            _ => None,
        }
    }

    /// Ends the connection: a child gets "close stdin, wait, kill the group"; an HTTP session
    /// gets a DELETE.
    pub async fn close(&self) {
        match &*self.kind {
            Kind::Stdio(h) => h.close().await,
            Kind::Http(h) => h.close().await,
            Kind::Sse(h) => h.close(),
            #[cfg(test)]
            Kind::Fake(h) => h.close().await,
        }
    }
}
