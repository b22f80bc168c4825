//! A stdio child as an upstream: one actor per child.
//!
//! The child runs in its own process group. tether makes the stdin pipe itself and keeps a
//! second handle on its read end, read only once the child is gone: what is still in the pipe
//! then is exactly what the child never read, so those requests are provably undelivered and
//! can be sent again safely. A writer task owns stdin, a reader task turns
//! stdout lines into messages (a line that is not JSON is logged and skipped; a line over the
//! message limit is discarded, and the request it answered gets an error), stderr lines go
//! to the log under the session's span (each cut to 4 KiB, both rate-limited), and a reaper
//! task owns the process: it reports the exit and, on close, runs "close stdin → wait → kill
//! the group". Every child's fate is reported to the command's [`Supervisor`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use tether_protocol::Message;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::process::Child;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tracing::{Instrument, debug, info, warn};

use super::lines::{BoundedLines, Frame, response_id};
use super::spare::Started;
use super::supervisor::{ChildOutcome, LogLimiter, LogVerdict, Supervisor};
use super::{ConnectContext, ConnectError, Origin, QuitReason, SendError, UpstreamEvent};

/// The handle to one supervised child.
pub struct Handle {
    stdin: Mutex<Option<mpsc::Sender<Line>>>,
    alive: Arc<AtomicBool>,
    pid: u32,
    close_tx: Mutex<Option<oneshot::Sender<()>>>,
    exited: Mutex<Option<oneshot::Receiver<()>>>,
}

impl Handle {
    /// Starts the command and the tasks that own its pipes.
    pub fn spawn(command: &[String], ctx: ConnectContext) -> Result<Handle, ConnectError> {
        Handle::spawn_gated(command, ctx, None)
    }

    /// [`Handle::spawn`], with `gate` seeing the child's messages before the session does.
    pub fn spawn_gated(
        command: &[String],
        ctx: ConnectContext,
        gate: Option<Arc<Gate>>,
    ) -> Result<Handle, ConnectError> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| ConnectError::Spawn { command: String::new(), reason: "empty command".into() })?;
        let supervisor = ctx.options.supervisor.clone();
        if let Err(left) = supervisor.admit() {
            return Err(ConnectError::BackingOff { command: program.clone(), retry_after_s: left.as_secs().max(1) });
        }
        let spawn_err = |e: std::io::Error| ConnectError::Spawn { command: program.clone(), reason: e.to_string() };
        let started = match supervisor.spares.take() {
            Some(s) => {
                supervisor.spares_taken_total.inc();
                s
            }
            None => Started::start(program, args, &ctx.options.env).map_err(spawn_err)?,
        };
        if supervisor.spares.want() > 0 {
            // The next session's child starts now, off this session's path.
            let (sup, program, args, env) =
                (supervisor.clone(), program.clone(), args.to_vec(), ctx.options.env.clone());
            tokio::spawn(async move { sup.spares.fill(&program, &args, &env) });
        }
        let Started { mut child, stdin_write, unread } = started;
        let pid = child.id().unwrap_or(0);
        let span = tracing::info_span!("upstream", session_id = %ctx.session_id, upstream = "stdio", pid);
        let alive = Arc::new(AtomicBool::new(true));
        let answered = Arc::new(AtomicBool::new(false));

        let (stdin_tx, stdin_rx) = mpsc::channel::<Line>(64);
        let stop_writer = Arc::new(Notify::new());
        let stdin = pipe::Sender::from_owned_fd(stdin_write).map_err(spawn_err)?;
        let writer = Some(tokio::spawn(
            write_stdin(stdin, stdin_rx, alive.clone(), stop_writer.clone()).instrument(span.clone()),
        ));
        let reader = child.stdout.take().map(|stdout| {
            let events = ctx.events.clone();
            let reader = StdoutReader {
                events,
                gate: gate.clone(),
                max: ctx.options.max_message,
                supervisor: supervisor.clone(),
                answered: answered.clone(),
                log: LogLimiter::default(),
            };
            tokio::spawn(reader.run(stdout).instrument(span.clone()))
        });
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(log_stderr(stderr, supervisor.clone()).instrument(span.clone()));
        }
        let (close_tx, close_rx) = oneshot::channel();
        let (exited_tx, exited_rx) = oneshot::channel();
        let reaper = Reaper {
            alive: alive.clone(),
            pid,
            grace: ctx.options.close_grace,
            writer,
            stop_writer,
            unread: Some(unread),
            answered,
            supervisor,
            gate,
        };
        tokio::spawn(reaper.run(child, reader, close_rx, ctx.events, exited_tx).instrument(span));
        Ok(Handle {
            stdin: Mutex::new(Some(stdin_tx)),
            alive,
            pid,
            close_tx: Mutex::new(Some(close_tx)),
            exited: Mutex::new(Some(exited_rx)),
        })
    }

    /// Writes one message as a line on the child's stdin; `gid` names a request.
    pub async fn send(&self, msg: &Message, gid: Option<u64>) -> Result<(), SendError> {
        if !self.is_alive() {
            return Err(SendError::Unreachable("the stdio child has exited".into()));
        }
        let tx = self.stdin.lock().await.clone();
        let Some(tx) = tx else {
            return Err(SendError::Unreachable("the stdio child is closing".into()));
        };
        let mut line = msg.to_bytes();
        line.push(b'\n');
        tx.send(Line { gid, bytes: line })
            .await
            .map_err(|_| SendError::Unreachable("the stdio child's stdin is closed".into()))
    }

    /// Whether the child is still running.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// The child's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Closes stdin, waits for the exit for the grace period, then kills the process group.
    pub async fn close(&self) {
        self.stdin.lock().await.take();
        if let Some(tx) = self.close_tx.lock().await.take() {
            let _ = tx.send(());
        }
        let exited = self.exited.lock().await.take();
        if let Some(rx) = exited {
            let _ = rx.await;
        }
    }
}

/// One line for the child, and the request it carries.
struct Line {
    gid: Option<u64>,
    bytes: Vec<u8>,
}

/// Owns stdin. Returns the requests that never reached the child: the one whose write failed
/// and everything still queued when the child died.
async fn write_stdin(
    mut stdin: pipe::Sender,
    mut rx: mpsc::Receiver<Line>,
    alive: Arc<AtomicBool>,
    stop: Arc<Notify>,
) -> Vec<u64> {
    let mut undelivered = Vec::new();
    loop {
        let line = tokio::select! {
            l = rx.recv() => l,
            _ = stop.notified() => None,
        };
        let Some(line) = line else { break };
        // The pipe never breaks (tether holds its read end too), but it may fill up once the
        // child is gone: the reaper's stop ends a write that cannot finish.
        let written = tokio::select! {
            r = stdin.write_all(&line.bytes) => r.map_err(|e| e.to_string()),
            _ = stop.notified() => Err("the child is gone".into()),
        };
        if let Err(e) = written {
            debug!(error = %e, "stdin write failed");
            alive.store(false, Ordering::Release);
            undelivered.extend(line.gid);
            break;
        }
    }
    rx.close();
    while let Ok(line) = rx.try_recv() {
        undelivered.extend(line.gid);
    }
    // Dropping stdin closes it: the child's cue to exit.
    undelivered
}

/// The initial read buffer of a child's stdout and stderr.
const READ_BUFFER: usize = 1024;

/// The longest stderr line logged; the rest of a longer one is counted, not kept.
const STDERR_LINE_MAX: usize = 4096;

/// Of a stdout line over the message limit, the bytes kept to find the request it answered.
const LONG_LINE_HEAD: usize = 4096;

/// Turns a child's stdout into messages.
struct StdoutReader {
    events: mpsc::Sender<UpstreamEvent>,
    gate: Option<Arc<Gate>>,
    max: usize,
    supervisor: Arc<Supervisor>,
    answered: Arc<AtomicBool>,
    log: LogLimiter,
}

impl StdoutReader {
    async fn run(mut self, stdout: tokio::process::ChildStdout) {
        // Small to start with (the buffer grows for long lines): an idle child's 8 KiB default
        // buffers add up over thousands of sessions, and what they free when the child is
        // reaped stays as holes in the heap.
        let codec = BoundedLines::new(self.max, LONG_LINE_HEAD);
        let mut lines = FramedRead::with_capacity(stdout, codec, READ_BUFFER);
        while let Some(frame) = lines.next().await {
            let sent = match frame {
                Ok(Frame::Line(line)) => self.line(&line).await,
                Ok(Frame::Long { head, tail, len }) => self.oversized(&head, &tail, len).await,
                Err(e) => {
                    debug!(error = %e, "upstream stdout read failed");
                    return;
                }
            };
            if !sent {
                return;
            }
        }
        self.report_suppressed();
    }

    /// Handles one line; false when the session is gone.
    async fn line(&mut self, line: &[u8]) -> bool {
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            return true;
        }
        match Message::parse(trimmed) {
            Ok(msg) => {
                if !self.answered.swap(true, Ordering::AcqRel) {
                    self.supervisor.record(ChildOutcome::Answered);
                }
                if self.gate.as_ref().is_some_and(|g| !g.pass(&msg)) {
                    return true;
                }
                self.events.send(UpstreamEvent::Message(Origin::Unrelated, msg)).await.is_ok()
            }
            Err(e) => {
                self.supervisor.junk_lines_total.inc();
                if let Some(suppressed) = self.may_log() {
                    let preview = String::from_utf8_lossy(&trimmed[..trimmed.len().min(200)]);
                    warn!(error = %e, line = %preview, suppressed, "upstream wrote a line that is not a JSON-RPC message; skipped");
                }
                true
            }
        }
    }

    /// A line over the message limit was discarded: the request it answered, when its id shows
    /// at either end, gets an error now instead of waiting for its timeout.
    async fn oversized(&mut self, head: &[u8], tail: &[u8], len: usize) -> bool {
        self.supervisor.oversized_lines_total.inc();
        let id = response_id(head, tail);
        if let Some(suppressed) = self.may_log() {
            warn!(bytes = len, max = self.max, request = ?id, suppressed, "upstream stdout line over the message limit; discarded");
        }
        let Some(id) = id else { return true };
        let err = crate::error::GatewayError::UpstreamMessageTooLarge { limit: self.max, size: len };
        let msg = err.to_message(Some(&tether_protocol::message::numeric_id(id)));
        self.events.send(UpstreamEvent::Message(Origin::Unrelated, msg)).await.is_ok()
    }

    /// `Some(lines suppressed before this one)` when this line may be logged.
    fn may_log(&mut self) -> Option<u64> {
        match self.log.check() {
            LogVerdict::Log(n) => Some(n),
            LogVerdict::Suppress => {
                self.supervisor.log_lines_suppressed_total.inc();
                None
            }
        }
    }

    fn report_suppressed(&mut self) {
        let n = self.log.take_suppressed();
        if n > 0 {
            warn!(suppressed = n, "upstream stdout lines not logged (rate limit)");
        }
    }
}

async fn log_stderr(stderr: tokio::process::ChildStderr, supervisor: Arc<Supervisor>) {
    let codec = BoundedLines::new(STDERR_LINE_MAX, STDERR_LINE_MAX);
    let mut lines = FramedRead::with_capacity(stderr, codec, READ_BUFFER);
    let mut limit = LogLimiter::default();
    while let Some(Ok(frame)) = lines.next().await {
        let (text, truncated) = match &frame {
            Frame::Line(l) => (&l[..], 0),
            Frame::Long { head, len, .. } => {
                supervisor.stderr_truncated_total.inc();
                (&head[..], len - head.len())
            }
        };
        match limit.check() {
            LogVerdict::Log(suppressed) => {
                let line = String::from_utf8_lossy(text);
                let line = line.trim_end();
                match (truncated, suppressed) {
                    (0, 0) => info!(target: "tether::upstream::stderr", line = %line, "upstream stderr"),
                    _ => info!(
                        target: "tether::upstream::stderr",
                        line = %line,
                        truncated_bytes = truncated,
                        suppressed,
                        "upstream stderr"
                    ),
                }
            }
            LogVerdict::Suppress => {
                supervisor.log_lines_suppressed_total.inc();
            }
        }
    }
    let n = limit.take_suppressed();
    if n > 0 {
        info!(target: "tether::upstream::stderr", suppressed = n, "upstream stderr lines not logged (rate limit)");
    }
}

/// What `stdio_era` watches for in a handshake-era child's output, seen by the reader before
/// the session: the answer to one `initialize`, kept from the session when `refused` says so
/// (a modern-only server's refusal), and nothing at all once the child is retired (replaced
/// by one spoken to in another era; its death is not the session's either). Idle it costs one
/// atomic load per message.
pub struct Gate {
    armed: AtomicBool,
    retired: AtomicBool,
    refused: fn(&Message) -> bool,
    watch: std::sync::Mutex<Option<(u64, oneshot::Sender<Option<Message>>)>>,
}

impl Gate {
    /// A gate that keeps from the session an answer for which `refused` holds.
    pub fn new(refused: fn(&Message) -> bool) -> Gate {
        Gate { armed: AtomicBool::new(false), retired: AtomicBool::new(false), refused, watch: Default::default() }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(u64, oneshot::Sender<Option<Message>>)>> {
        self.watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Watches for the answer to the request `gid`: `tx` gets it if it is refused (and the
    /// session does not), else `None` once it passed.
    pub fn arm(&self, gid: u64, tx: oneshot::Sender<Option<Message>>) {
        *self.slot() = Some((gid, tx));
        self.armed.store(true, Ordering::Release);
    }

    /// Stops watching.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Release);
        self.slot().take();
    }

    /// The child is replaced: nothing more of it reaches the session.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.disarm();
    }

    fn retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Whether `m` goes on to the session.
    fn pass(&self, m: &Message) -> bool {
        if self.retired() {
            return false;
        }
        if !self.armed.load(Ordering::Acquire)
            || !matches!(m.kind(), tether_protocol::Kind::Response | tether_protocol::Kind::Error)
        {
            return true;
        }
        let mut slot = self.slot();
        let Some((gid, _)) = slot.as_ref() else { return true };
        if m.numeric_id() != Some(*gid) {
            return true;
        }
        self.armed.store(false, Ordering::Release);
        let Some((_, tx)) = slot.take() else { return true };
        if (self.refused)(m) {
            let _ = tx.send(Some(m.clone()));
            return false;
        }
        let _ = tx.send(None);
        true
    }
}

struct Reaper {
    alive: Arc<AtomicBool>,
    pid: u32,
    grace: std::time::Duration,
    writer: Option<tokio::task::JoinHandle<Vec<u64>>>,
    stop_writer: Arc<Notify>,
    unread: Option<OwnedFd>,
    answered: Arc<AtomicBool>,
    supervisor: Arc<Supervisor>,
    gate: Option<Arc<Gate>>,
}

impl Reaper {
    async fn run(
        mut self,
        mut child: Child,
        reader: Option<tokio::task::JoinHandle<()>>,
        close_rx: oneshot::Receiver<()>,
        events: mpsc::Sender<UpstreamEvent>,
        exited_tx: oneshot::Sender<()>,
    ) {
        // The group is killed while the child is still unreaped: its zombie keeps the pid, so
        // the group id cannot have been given to another process group meanwhile (on a busy
        // host pids come round again within seconds: `kernel.pid_max` is often 32768). Nothing
        // polls `child.wait()` (which reaps) until the group is killed.
        let pid = Pid::from_raw(i32::try_from(self.pid).unwrap_or(0));
        let mut close_rx = close_rx;
        let reason = tokio::select! {
            watched = exited_unreaped(pid) => match watched {
                Ok(()) => {
                    // Whatever the child left behind in its group goes with it.
                    self.kill_group();
                    QuitReason::Exited(describe(child.wait().await))
                }
                Err(e) => {
                    debug!(error = %e, "watching the child's exit failed; waiting for it instead");
                    tokio::select! {
                        status = child.wait() => QuitReason::Exited(describe(status)),
                        _ = &mut close_rx => self.close(&mut child, pid).await,
                    }
                }
            },
            _ = &mut close_rx => self.close(&mut child, pid).await,
        };
        // Deliver what the child wrote before it died (often the last response) before saying
        // it is gone; a grandchild holding stdout open must not delay that for long.
        if let Some(reader) = reader {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), reader).await;
        }
        self.alive.store(false, Ordering::Release);
        self.stop_writer.notify_one();
        let undelivered = match self.writer {
            Some(w) => tokio::time::timeout(std::time::Duration::from_secs(1), w).await.ok().and_then(Result::ok),
            None => None,
        }
        .unwrap_or_default();
        let mut undelivered = undelivered;
        if let Some(fd) = self.unread.take() {
            undelivered.extend(unread_requests(fd));
        }
        self.alive.store(false, Ordering::Release);
        if let QuitReason::Exited(ref s) = reason {
            info!(status = %s, "upstream child exited");
            if !self.answered.load(Ordering::Acquire) {
                self.supervisor.record(ChildOutcome::QuickExit);
            }
        }
        if let Some(g) = &self.gate {
            // Whoever waits for an answer waits no more: there is none.
            g.disarm();
            if g.retired() {
                let _ = exited_tx.send(());
                return;
            }
        }
        let _ = events.send(UpstreamEvent::Closed(reason, undelivered)).await;
        let _ = exited_tx.send(());
    }

    /// "close stdin → wait → kill": stdin is closed by the handle; the child gets the grace
    /// to exit, then its group is killed (before the child is reaped) and it is reaped.
    async fn close(&self, child: &mut Child, pid: Pid) -> QuitReason {
        match tokio::time::timeout(self.grace, exited_unreaped(pid)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // No way to see the exit without reaping: the grace, then the group.
                let _ = tokio::time::timeout(self.grace, std::future::pending::<()>()).await;
            }
            Err(_) => debug!("child did not exit after stdin closed; killing its process group"),
        }
        self.kill_group();
        let _ = child.wait().await;
        QuitReason::Closed
    }

    fn kill_group(&self) {
        if let Ok(pid) = i32::try_from(self.pid)
            && pid > 0
        {
            // ESRCH (nothing left in the group) is the common, fine outcome.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Resolves once the child `pid` has exited, without reaping it (`waitid` with `WNOWAIT`,
/// looked at again on every SIGCHLD): until tokio reaps it, its pid and process group id are
/// still its own. Also resolves when the child was reaped already.
async fn exited_unreaped(pid: Pid) -> std::io::Result<()> {
    use nix::errno::Errno;
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    // Made before the first look, so that no SIGCHLD after it is missed.
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) | Err(Errno::ECHILD) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if sigchld.recv().await.is_none() {
            return Err(std::io::Error::other("the SIGCHLD stream ended"));
        }
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "unknown status".into(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}

/// The gateway ids of the requests still sitting unread in the child's stdin pipe.
fn unread_requests(fd: OwnedFd) -> Vec<u64> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use std::io::Read;
    if fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).is_err() {
        return Vec::new();
    }
    let mut file = std::fs::File::from(fd);
    let mut data = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break, // WouldBlock: the pipe is empty
        }
    }
    debug!(unread_bytes = data.len(), "stdin pipe drained after the child's exit");
    // A line the child had started reading is not whole here and does not parse: it counts as
    // delivered, the cautious side.
    data.split(|b| *b == b'\n')
        .filter_map(|line| Message::parse(line).ok())
        .filter(|m| m.kind() == tether_protocol::Kind::Request)
        .filter_map(|m| m.numeric_id())
        .collect()
}
