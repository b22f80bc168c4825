//! A stdio child as an upstream: one actor per child.
//!
//! The child runs in its own process group. A writer task owns stdin, a reader task turns
//! stdout lines into messages (a line that is not JSON is logged and skipped), stderr lines go
//! to the log under the session's span, and a reaper task owns the process: it reports the exit
//! and, on close, runs "close stdin → wait → kill the group".

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tether_protocol::Message;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tracing::{Instrument, debug, info, warn};

use super::{ConnectContext, ConnectError, Origin, QuitReason, SendError, UpstreamEvent};

/// The handle to one supervised child.
pub struct Handle {
    stdin: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    alive: Arc<AtomicBool>,
    pid: u32,
    close_tx: Mutex<Option<oneshot::Sender<()>>>,
    exited: Mutex<Option<oneshot::Receiver<()>>>,
}

impl Handle {
    /// Starts the command and the tasks that own its pipes.
    pub fn spawn(command: &[String], ctx: ConnectContext) -> Result<Handle, ConnectError> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| ConnectError::Spawn { command: String::new(), reason: "empty command".into() })?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child =
            cmd.spawn().map_err(|e| ConnectError::Spawn { command: program.clone(), reason: e.to_string() })?;
        let pid = child.id().unwrap_or(0);
        let span = tracing::info_span!("upstream", session_id = %ctx.session_id, upstream = "stdio", pid);
        let alive = Arc::new(AtomicBool::new(true));

        let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(64);
        if let Some(stdin) = child.stdin.take() {
            tokio::spawn(write_stdin(stdin, stdin_rx, alive.clone()).instrument(span.clone()));
        }
        let reader = child.stdout.take().map(|stdout| {
            let events = ctx.events.clone();
            let max = ctx.options.max_message;
            tokio::spawn(read_stdout(stdout, events, max).instrument(span.clone()))
        });
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(log_stderr(stderr).instrument(span.clone()));
        }
        let (close_tx, close_rx) = oneshot::channel();
        let (exited_tx, exited_rx) = oneshot::channel();
        let reaper = Reaper { alive: alive.clone(), pid, grace: ctx.options.close_grace };
        tokio::spawn(reaper.run(child, reader, close_rx, ctx.events, exited_tx).instrument(span));
        Ok(Handle {
            stdin: Mutex::new(Some(stdin_tx)),
            alive,
            pid,
            close_tx: Mutex::new(Some(close_tx)),
            exited: Mutex::new(Some(exited_rx)),
        })
    }

    /// Writes one message as a line on the child's stdin.
    pub async fn send(&self, msg: &Message) -> Result<(), SendError> {
        if !self.is_alive() {
            return Err(SendError::Unreachable("the stdio child has exited".into()));
        }
        let tx = self.stdin.lock().await.clone();
        let Some(tx) = tx else {
            return Err(SendError::Unreachable("the stdio child is closing".into()));
        };
        let mut line = msg.to_bytes();
        line.push(b'\n');
        tx.send(line).await.map_err(|_| SendError::Unreachable("the stdio child's stdin is closed".into()))
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

async fn write_stdin(mut stdin: tokio::process::ChildStdin, mut rx: mpsc::Receiver<Vec<u8>>, alive: Arc<AtomicBool>) {
    while let Some(line) = rx.recv().await {
        if let Err(e) = stdin.write_all(&line).await {
            // EPIPE: the child is gone; the reaper reports why.
            debug!(error = %e, "stdin write failed");
            alive.store(false, Ordering::Release);
            return;
        }
    }
    // Dropping stdin closes it: the child's cue to exit.
}

async fn read_stdout(stdout: tokio::process::ChildStdout, events: mpsc::Sender<UpstreamEvent>, max: usize) {
    let mut lines = FramedRead::new(stdout, LinesCodec::new_with_max_length(max));
    while let Some(line) = lines.next().await {
        let line = match line {
            Ok(l) => l,
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                warn!(max, "upstream stdout line too long, skipped");
                continue;
            }
            Err(LinesCodecError::Io(e)) => {
                debug!(error = %e, "upstream stdout read failed");
                return;
            }
        };
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        match Message::parse(trimmed.as_bytes()) {
            Ok(msg) => {
                if events.send(UpstreamEvent::Message(Origin::Unrelated, msg)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let preview: String = trimmed.chars().take(200).collect();
                warn!(error = %e, line = %preview, "upstream wrote a line that is not a JSON-RPC message; skipped");
            }
        }
    }
}

async fn log_stderr(stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        info!(target: "tether::upstream::stderr", line = %line, "upstream stderr");
    }
}

struct Reaper {
    alive: Arc<AtomicBool>,
    pid: u32,
    grace: std::time::Duration,
}

impl Reaper {
    async fn run(
        self,
        mut child: Child,
        reader: Option<tokio::task::JoinHandle<()>>,
        close_rx: oneshot::Receiver<()>,
        events: mpsc::Sender<UpstreamEvent>,
        exited_tx: oneshot::Sender<()>,
    ) {
        let reason = tokio::select! {
            status = child.wait() => QuitReason::Exited(describe(status)),
            _ = close_rx => {
                match tokio::time::timeout(self.grace, child.wait()).await {
                    Ok(_) => {}
                    Err(_) => {
                        debug!("child did not exit after stdin closed; killing its process group");
                        self.kill_group();
                        let _ = child.wait().await;
                    }
                }
                QuitReason::Closed
            }
        };
        // Whatever the child left behind in its group goes with it.
        self.kill_group();
        // Deliver what the child wrote before it died (often the last response) before saying
        // it is gone; a grandchild holding stdout open must not delay that for long.
        if let Some(reader) = reader {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), reader).await;
        }
        self.alive.store(false, Ordering::Release);
        if let QuitReason::Exited(ref s) = reason {
            info!(status = %s, "upstream child exited");
        }
        let _ = events.send(UpstreamEvent::Closed(reason)).await;
        let _ = exited_tx.send(());
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
