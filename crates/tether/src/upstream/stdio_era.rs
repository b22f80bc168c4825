//! Which MCP era a stdio child is spoken to in (`--upstream-protocol` for a command).
//!
//! * `handshake`: the child is a [`stdio`] upstream, as it always was.
//! * `modern`: the child is spoken to in 2026-07-28 only, through the translation of
//!   [`modern`] over its stdio channel; a child that does not answer `server/discover` is a
//!   clear error naming the flag.
//! * `auto` (the default): a session of a handshake-era client gets a [`stdio`] upstream with
//!   no probe at all (a Python stdio server pins the era of its connection on the first
//!   request, a discover included, and some legacy servers exit on any request before
//!   `initialize`): its `initialize` goes out as always, and only a refusal of it with -32022
//!   naming 2026-07-28 alone (a modern-only server) is kept from the session: that child is
//!   ended and a new one is spoken to in 2026-07-28, its `initialize` answered from
//!   `server/discover`. The watch is a [`stdio::Gate`] in the child's reader: everything else
//!   the child says reaches the session as directly as without it.
//!   A modern client's binding ([`ConnectContext::prefer_modern`]) starts the
//!   child in 2026-07-28 and its `initialize` becomes `server/discover`, with
//!   `connect_timeout` to answer. A discover result that lists 2026-07-28 keeps it; anything
//!   else (an error, no answer in time, the child exiting) ends that child, unreported, and
//!   starts a new one in the handshake era, once per connection, which gets the `initialize`
//!   as it is: a child that saw a probe is never asked to be anything else.
//!
//! A revive makes a new connection, which probes again.

use std::sync::{Arc, Mutex};

use tether_protocol::{Kind, Message, method};
use tokio::sync::oneshot;
use tracing::info;

use super::era::{self, Era, UpstreamProtocol};
use super::modern::{self, Discovered};
use super::stdio;
use super::{ConnectContext, ConnectError, Origin, SendError, UpstreamEvent};

#[derive(Clone)]
enum Current {
    /// A handshake-era child; with a gate when a modern-only refusal of `initialize` is
    /// watched for (`auto`, a handshake-era client).
    Handshake(Arc<stdio::Handle>, Option<Arc<stdio::Gate>>),
    Modern(Arc<modern::Handle>),
}

/// One stdio child, in the era chosen for it.
pub struct Handle {
    command: Vec<String>,
    ctx: ConnectContext,
    current: Mutex<Current>,
}

impl Handle {
    /// Starts the child in the configured era (or the one `auto` tries first).
    pub fn spawn(command: &[String], ctx: ConnectContext) -> Result<Handle, ConnectError> {
        let modern = match ctx.options.protocol {
            UpstreamProtocol::Handshake => false,
            UpstreamProtocol::Modern => true,
            UpstreamProtocol::Auto => ctx.prefer_modern,
        };
        let current = if modern {
            Current::Modern(Arc::new(modern::Handle::over_stdio(command, ctx.clone())?))
        } else if ctx.options.protocol == UpstreamProtocol::Auto {
            // In the reader, not a relay task: the session's messages take no extra hop.
            let gate = Arc::new(stdio::Gate::new(modern::refuses_handshake));
            let child = stdio::Handle::spawn_gated(command, ctx.clone(), Some(gate.clone()))?;
            Current::Handshake(Arc::new(child), Some(gate))
        } else {
            Current::Handshake(Arc::new(stdio::Handle::spawn(command, ctx.clone())?), None)
        };
        Ok(Handle { command: command.to_vec(), ctx, current: Mutex::new(current) })
    }

    fn current(&self) -> Current {
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The era the child is spoken to in.
    pub fn era(&self) -> Era {
        match self.current() {
            Current::Handshake(..) => Era::Handshake,
            Current::Modern(_) => Era::Modern,
        }
    }

    /// Hands one message to the child; in 2026-07-28, `initialize` is the probe.
    pub async fn send(&self, msg: &Message, gid: Option<u64>) -> Result<(), SendError> {
        match self.current() {
            Current::Modern(h) => match gid {
                Some(gid) if msg.kind() == Kind::Request && msg.is(method::INITIALIZE) => {
                    self.initialize(&h, msg, gid).await
                }
                _ => h.send(msg, gid).await,
            },
            Current::Handshake(h, Some(gate)) => match gid {
                Some(gid) if msg.kind() == Kind::Request && msg.is(method::INITIALIZE) => {
                    self.initialize_watched(&h, &gate, msg, gid).await
                }
                _ => h.send(msg, gid).await,
            },
            Current::Handshake(h, None) if self.ctx.prefer_modern => match era::for_handshake(msg, gid) {
                None => h.send(msg, gid).await,
                Some(Ok(stripped)) => h.send(&stripped, gid).await,
                Some(Err(answer)) => {
                    let origin = gid.map_or(Origin::Unrelated, Origin::Request);
                    let _ = self.ctx.events.send(UpstreamEvent::Message(origin, answer)).await;
                    Ok(())
                }
            },
            Current::Handshake(h, None) => h.send(msg, gid).await,
        }
    }

    /// Whether [`Handle::send`] of `msg` only hands it to a handshake-era child's stdin.
    pub fn sends_at_once(&self, msg: &Message) -> bool {
        match self.current() {
            Current::Modern(_) => false,
            Current::Handshake(_, Some(_)) => !(msg.kind() == Kind::Request && msg.is(method::INITIALIZE)),
            Current::Handshake(_, None) => !self.ctx.prefer_modern,
        }
    }

    /// Sends `initialize` to a handshake-era child and waits (a bounded time) for its answer:
    /// a modern-only refusal ends that child and starts one spoken to in 2026-07-28.
    async fn initialize_watched(
        &self,
        h: &Arc<stdio::Handle>,
        gate: &Arc<stdio::Gate>,
        msg: &Message,
        gid: u64,
    ) -> Result<(), SendError> {
        let (tx, rx) = oneshot::channel();
        gate.arm(gid, tx);
        if let Err(e) = h.send(msg, Some(gid)).await {
            gate.disarm();
            return Err(e);
        }
        let refusal = match tokio::time::timeout(self.ctx.options.connect_timeout, rx).await {
            Ok(Ok(Some(refusal))) => refusal,
            // Answered (and passed on), or the child is gone (reported), or it is slow: its
            // answer will pass through whatever it is.
            _ => {
                gate.disarm();
                return Ok(());
            }
        };
        info!(session_id = %self.ctx.session_id, error = %modern::wire::describe_error(&refusal), "the stdio upstream speaks only 2026-07-28; starting it again in that era");
        gate.retire();
        let old = h.clone();
        tokio::spawn(async move { old.close().await });
        let child = Arc::new(
            modern::Handle::over_stdio(&self.command, self.ctx.clone())
                .map_err(|e| SendError::Unreachable(e.to_string()))?,
        );
        *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Current::Modern(child.clone());
        match child.initialize_probe(msg, gid).await? {
            Discovered::Served => Ok(()),
            Discovered::NotModern(why) => Err(era::not_modern_refusal(&why)),
        }
    }

    /// Answers `initialize` from `server/discover`; in `auto`, any other outcome falls back
    /// to a new child in the handshake era.
    async fn initialize(&self, h: &Arc<modern::Handle>, msg: &Message, gid: u64) -> Result<(), SendError> {
        let auto = self.ctx.options.protocol == UpstreamProtocol::Auto;
        if !auto {
            return match h.initialize_probe(msg, gid).await? {
                Discovered::Served => Ok(()),
                Discovered::NotModern(why) => Err(era::not_modern_refusal(&why)),
            };
        }
        h.hush(true).await;
        let waited = tokio::time::timeout(self.ctx.options.connect_timeout, h.initialize_probe(msg, gid)).await;
        let why = match waited {
            Ok(Ok(Discovered::Served)) => {
                h.hush(false).await;
                return Ok(());
            }
            Ok(Ok(Discovered::NotModern(why))) => why,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer to server/discover in time".into(),
        };
        info!(session_id = %self.ctx.session_id, reason = %why, "the stdio upstream does not speak 2026-07-28; starting it again in the handshake era");
        h.discard().await;
        let child = Arc::new(stdio::Handle::spawn(&self.command, self.ctx.clone()).map_err(|e| {
            // The session revives on an unreachable upstream, with its own backoff.
            SendError::Unreachable(e.to_string())
        })?);
        *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Current::Handshake(child.clone(), None);
        child.send(msg, Some(gid)).await
    }

    /// Starts the listen stream (2026-07-28); a handshake-era child needs none.
    pub fn open_standalone(&self) {
        if let Current::Modern(h) = self.current() {
            h.open_standalone();
        }
    }

    /// Whether the child runs.
    pub fn is_alive(&self) -> bool {
        match self.current() {
            Current::Handshake(h, _) => h.is_alive(),
            Current::Modern(h) => h.is_alive(),
        }
    }

    /// Gives the connection up (2026-07-28: the child is ended and a revive starts another).
    pub fn mark_lost(&self) {
        if let Current::Modern(h) = self.current() {
            h.mark_lost();
        }
    }

    /// The child's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        match self.current() {
            Current::Handshake(h, _) => h.pid(),
            Current::Modern(h) => h.pid().unwrap_or(0),
        }
    }

    /// Ends the child.
    pub async fn close(&self) {
        match self.current() {
            Current::Handshake(h, _) => h.close().await,
            Current::Modern(h) => h.close().await,
        }
    }
}
