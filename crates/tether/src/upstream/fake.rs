//! An in-process upstream for session tests (`#[cfg(test)]` only): scripted answers, delays,
//! and a crash at a chosen point — before the request is read, after it is read, or in the
//! middle of its stream. It reports to the session exactly as a real binding does
//! ([`UpstreamEvent`]s), and runs on tokio time, so tests with paused time drive it.
//!
//! Real peers cannot crash on cue; this can. Everything else is tested against real peers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tether_protocol::message::raw_value;
use tether_protocol::{Kind, Message, method};
use tokio::sync::mpsc;

use super::{ConnectContext, ConnectError, Origin, QuitReason, SendError, UpstreamEvent};

/// What the fake does with one request.
#[derive(Debug, Clone)]
pub enum Act {
    /// Answer with this result after this delay.
    Answer(Duration, Value),
    /// Answer with a JSON-RPC error: code, message, data.
    Error(i64, &'static str, Option<Value>),
    /// Refuse the message at the send: the session sees this [`SendError`].
    FailSend(SendError),
    /// Die before reading the line: the request provably never reached the server.
    CrashBeforeRead,
    /// Read the line, then die: it may or may not have run.
    CrashAfterRead,
    /// Send this many progress notifications (for the request's progress token), then die.
    CrashMidStream(u32),
    /// Accept the send, but end the connection saying the request was never read, as an HTTP
    /// remote found to speak another era does after its POST was answered.
    EndUnread,
    /// Never answer.
    Silence,
    /// Send this notification (method, params), as a stdio server does with no word of what it
    /// relates to, then answer with this result.
    NotifyThenAnswer(&'static str, Value, Value),
}

type Rule = Box<dyn Fn(&str, &Value, u64) -> Option<Act> + Send + Sync>;

/// The script every connection of one test follows, and what the connections saw.
#[derive(Clone)]
pub struct Script {
    inner: Arc<Inner>,
}

struct Inner {
    /// Rules in order; the first that returns an act wins. Default: answer at once.
    rules: Mutex<Vec<Rule>>,
    /// Requests received: (connection number, method).
    log: Mutex<Vec<(u64, String)>>,
    connects: AtomicU64,
    /// Connection attempts that fail (from the front), for breaker tests.
    refuse: Mutex<VecDeque<bool>>,
    /// Requests are sent from a task, as over HTTP ([`crate::upstream::Upstream::sends_at_once`]).
    from_task: AtomicBool,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Script({} connects)", self.connects())
    }
}

impl PartialEq for Script {
    fn eq(&self, other: &Script) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for Script {}

impl Default for Script {
    fn default() -> Self {
        Script {
            inner: Arc::new(Inner {
                rules: Mutex::new(Vec::new()),
                log: Mutex::new(Vec::new()),
                connects: AtomicU64::new(0),
                refuse: Mutex::new(VecDeque::new()),
                from_task: AtomicBool::new(false),
            }),
        }
    }
}

impl Script {
    /// Adds a rule: `rule(method, params, connection number)` returns the act, or `None` to
    /// leave the request to later rules (or the default answer).
    pub fn on(self, rule: impl Fn(&str, &Value, u64) -> Option<Act> + Send + Sync + 'static) -> Script {
        lock(&self.inner.rules).push(Box::new(rule));
        self
    }

    /// Requests are sent from a task, as an HTTP upstream's are.
    pub fn sent_from_task(self) -> Script {
        self.inner.from_task.store(true, Ordering::Relaxed);
        self
    }

    /// The next `n` connection attempts fail.
    pub fn refuse_next(&self, n: usize) {
        lock(&self.inner.refuse).extend(std::iter::repeat_n(true, n));
    }

    /// How many connections were made.
    pub fn connects(&self) -> u64 {
        self.inner.connects.load(Ordering::Relaxed)
    }

    /// How many times a method was received, over all connections.
    pub fn received(&self, m: &str) -> usize {
        lock(&self.inner.log).iter().filter(|(_, x)| x == m).count()
    }

    /// The methods received, in order, with their connection numbers.
    pub fn log(&self) -> Vec<(u64, String)> {
        lock(&self.inner.log).clone()
    }

    fn act(&self, method: &str, params: &Value, conn: u64) -> Act {
        let rules = lock(&self.inner.rules);
        rules.iter().find_map(|r| r(method, params, conn)).unwrap_or_else(|| default_answer(method, params))
    }
}

fn default_answer(m: &str, params: &Value) -> Act {
    let result = match m {
        method::INITIALIZE => json!({
            "protocolVersion": params["protocolVersion"].as_str().unwrap_or("2025-11-25"),
            "capabilities": { "tools": { "listChanged": true } },
            "serverInfo": { "name": "fake", "version": "0" }
        }),
        method::TOOLS_LIST => json!({ "tools": [
            { "name": "read", "annotations": { "readOnlyHint": true } },
            { "name": "write" }
        ] }),
        _ => json!({ "echo": m }),
    };
    Act::Answer(Duration::ZERO, result)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One live fake connection.
pub struct Handle {
    script: Script,
    conn: u64,
    alive: Arc<AtomicBool>,
    events: mpsc::Sender<UpstreamEvent>,
}

impl Handle {
    /// Connects (or fails, when the script says so).
    pub fn connect(script: &Script, ctx: ConnectContext) -> Result<Handle, ConnectError> {
        let conn = script.inner.connects.fetch_add(1, Ordering::Relaxed) + 1;
        if lock(&script.inner.refuse).pop_front().unwrap_or(false) {
            return Err(ConnectError::Spawn { command: "fake".into(), reason: "refused by the script".into() });
        }
        Ok(Handle { script: script.clone(), conn, alive: Arc::new(AtomicBool::new(true)), events: ctx.events })
    }

    /// Takes one message, as a server would.
    pub async fn send(&self, msg: &Message, gid: Option<u64>) -> Result<(), SendError> {
        if !self.is_alive() {
            return Err(SendError::Unreachable("fake upstream is gone".into()));
        }
        let Some(m) = msg.method().map(str::to_owned) else { return Ok(()) };
        if msg.kind() != Kind::Request {
            lock(&self.script.inner.log).push((self.conn, m));
            return Ok(());
        }
        let params: Value = msg.params().and_then(|p| serde_json::from_str(p.get()).ok()).unwrap_or(Value::Null);
        let act = self.script.act(&m, &params, self.conn);
        let Some(id) = msg.id().map(ToOwned::to_owned) else { return Ok(()) };
        if !matches!(act, Act::CrashBeforeRead | Act::FailSend(_) | Act::EndUnread) {
            lock(&self.script.inner.log).push((self.conn, m));
        }
        match act {
            Act::Answer(delay, result) => {
                let events = self.events.clone();
                let alive = self.alive.clone();
                tokio::spawn(async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if alive.load(Ordering::Acquire) {
                        let answer = Message::response(&id, &raw_value(&result));
                        let _ = events.send(UpstreamEvent::Message(Origin::Unrelated, answer)).await;
                    }
                });
            }
            Act::NotifyThenAnswer(name, note, result) => {
                let note = Message::notification(name, Some(&raw_value(&note)));
                let _ = self.events.send(UpstreamEvent::Message(Origin::Unrelated, note)).await;
                let answer = Message::response(&id, &raw_value(&result));
                let _ = self.events.send(UpstreamEvent::Message(Origin::Unrelated, answer)).await;
            }
            Act::Error(code, text, data) => {
                let answer = Message::error(Some(&id), code, text, data);
                let _ = self.events.send(UpstreamEvent::Message(Origin::Unrelated, answer)).await;
            }
            Act::CrashBeforeRead | Act::EndUnread => self.die(gid.into_iter().collect()).await,
            Act::CrashAfterRead => self.die(Vec::new()).await,
            Act::CrashMidStream(n) => {
                let token = params["_meta"]["progressToken"].clone();
                for i in 0..n {
                    let p = raw_value(&json!({ "progressToken": token, "progress": i }));
                    let note = Message::notification(method::NOTIFICATION_PROGRESS, Some(&p));
                    let _ = self.events.send(UpstreamEvent::Message(Origin::Unrelated, note)).await;
                }
                self.die(Vec::new()).await;
            }
            Act::FailSend(e) => return Err(e),
            Act::Silence => {}
        }
        Ok(())
    }

    async fn die(&self, undelivered: Vec<u64>) {
        if self.alive.swap(false, Ordering::AcqRel) {
            let reason = QuitReason::Exited("fake crash".into());
            let _ = self.events.send(UpstreamEvent::Closed(reason, undelivered)).await;
        }
    }

    /// Whether the session sends to it inline (a pipe) or from a task (HTTP).
    pub fn sends_at_once(&self) -> bool {
        !self.script.inner.from_task.load(Ordering::Relaxed)
    }

    /// Whether it has not died.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// tether closes it.
    pub async fn close(&self) {
        if self.alive.swap(false, Ordering::AcqRel) {
            let _ = self.events.send(UpstreamEvent::Closed(QuitReason::Closed, Vec::new())).await;
        }
    }
}
