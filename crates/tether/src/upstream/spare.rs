//! Stdio children started ahead of need (`--stdio-spare N`): a new session, or a revive after a
//! crash, takes a child whose command has already started instead of waiting for it to start
//! (a Node server takes a few hundred milliseconds to load before it reads its first line).
//!
//! A spare is only a started process with its pipes: nothing is written to it until a session
//! takes it, so it has seen no `initialize` and belongs to no one. It is taken only while it
//! still runs; one that exited (a command that fails at once) is dropped and a fresh child is
//! started the ordinary way, so the supervisor's quick-exit accounting sees every real start.
//! A spare that is never taken is killed with its process group when the pool is drained
//! (gateway shutdown) or dropped.
//!
//! It does not own running sessions' children: once taken, `stdio.rs` wires and reaps it.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::Mutex;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tracing::{debug, warn};

/// The most spares a gateway keeps.
pub const MAX_SPARES: usize = 8;

/// A started child and the pipes tether keeps for it (see `stdio.rs` for why stdin is a pipe
/// tether makes, with a second handle on its read end).
pub struct Started {
    pub child: Child,
    pub stdin_write: OwnedFd,
    pub unread: OwnedFd,
}

impl Started {
    /// Starts `command` in its own process group with piped stdout and stderr.
    pub fn start(program: &str, args: &[String], env: &[(String, String)]) -> std::io::Result<Started> {
        let (stdin_read, stdin_write) = std::io::pipe()?;
        let unread = OwnedFd::from(stdin_read.try_clone()?);
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(OwnedFd::from(stdin_read)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn()?;
        Ok(Started { child, stdin_write: OwnedFd::from(stdin_write), unread })
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn kill(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0) {
            // The whole group: a wrapper (npx, a shell) may have started the server as its child.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.start_kill();
        // Reap it in the background so that it does not stay a zombie.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = self.child.wait().await;
            });
        }
    }
}

/// The spares of the gateway's one stdio command.
#[derive(Default)]
pub struct Spares {
    want: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    ready: Vec<Started>,
    /// Set by [`Spares::drain`]: no spare is started after shutdown began.
    closed: bool,
}

impl std::fmt::Debug for Spares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spares").field("want", &self.want).field("ready", &self.ready()).finish()
    }
}

impl Spares {
    /// A pool that keeps `want` children started (at most [`MAX_SPARES`]).
    pub fn new(want: usize) -> Spares {
        Spares { want: want.min(MAX_SPARES), state: Mutex::default() }
    }

    /// How many spares the pool keeps.
    pub fn want(&self) -> usize {
        self.want
    }

    /// How many are started and waiting.
    pub fn ready(&self) -> usize {
        self.lock().ready.len()
    }

    /// The process ids of the waiting spares (for the admin view and tests).
    pub fn pids(&self) -> Vec<u32> {
        self.lock().ready.iter().filter_map(|s| s.child.id()).collect()
    }

    /// A started child that still runs, if there is one.
    pub fn take(&self) -> Option<Started> {
        let mut state = self.lock();
        while let Some(mut s) = state.ready.pop() {
            if s.running() {
                return Some(s);
            }
            debug!("a spare stdio child had exited before it was used; dropping it");
            drop(state);
            s.kill();
            state = self.lock();
        }
        None
    }

    /// Starts children until `want` are waiting. A start that fails is logged and left: the
    /// session that needs a child then starts one itself and reports the error.
    pub fn fill(&self, program: &str, args: &[String], env: &[(String, String)]) {
        loop {
            {
                let state = self.lock();
                if state.closed || state.ready.len() >= self.want {
                    return;
                }
            }
            match Started::start(program, args, env) {
                Ok(s) => {
                    let mut state = self.lock();
                    if state.closed || state.ready.len() >= self.want {
                        drop(state);
                        s.kill();
                        return;
                    }
                    state.ready.push(s);
                }
                Err(e) => {
                    warn!(command = program, error = %e, "starting a spare stdio child failed");
                    return;
                }
            }
        }
    }

    /// Kills every waiting spare and starts no more (shutdown).
    pub fn drain(&self) {
        let ready = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.ready)
        };
        for s in ready {
            s.kill();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        self.drain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sh(script: &str) -> (String, Vec<String>) {
        ("sh".into(), vec!["-c".into(), script.into()])
    }

    fn alive(pid: u32) -> bool {
        // A zombie (state Z) has exited; only its entry is left until it is reaped.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    }

    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let ok = tokio::time::timeout(Duration::from_secs(20), async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(ok.is_ok(), "timed out waiting until {what}");
    }

    #[tokio::test]
    async fn a_pool_keeps_what_it_wants_and_gives_running_children() {
        let (program, args) = sh("exec sleep 60");
        let spares = Spares::new(2);
        spares.fill(&program, &args, &[]);
        let pids = spares.pids();
        assert_eq!(pids.len(), 2);
        assert!(pids.iter().all(|p| alive(*p)));
        let taken = spares.take().expect("a running spare");
        let pid = taken.child.id().expect("pid");
        assert!(pids.contains(&pid));
        assert_eq!(spares.ready(), 1);
        spares.fill(&program, &args, &[]);
        assert_eq!(spares.ready(), 2, "filled up again, not past `want`");
        let left = spares.pids();
        spares.drain();
        assert_eq!(spares.ready(), 0);
        wait_until("the drained spares are gone", || left.iter().all(|p| !alive(*p))).await;
        spares.fill(&program, &args, &[]);
        assert_eq!(spares.ready(), 0, "no spare starts after a drain");
        taken.kill();
        wait_until("the taken child is gone", || !alive(pid)).await;
    }

    #[tokio::test]
    async fn a_spare_that_exited_is_not_handed_out() {
        let (program, args) = sh("exit 3");
        let spares = Spares::new(1);
        spares.fill(&program, &args, &[]);
        let pids = spares.pids();
        assert_eq!(pids.len(), 1);
        // Exited (a zombie until `take` looks at it).
        wait_until("the spare exited", || !alive(pids[0])).await;
        assert!(spares.take().is_none(), "an exited spare is dropped, not used");
        assert_eq!(spares.ready(), 0);
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_leaves_the_pool_empty() {
        let spares = Spares::new(1);
        spares.fill("/nonexistent/tether-test-command", &[], &[]);
        assert_eq!(spares.ready(), 0);
        assert!(spares.take().is_none());
    }

    #[test]
    fn the_pool_is_bounded() {
        assert_eq!(Spares::new(1000).want(), MAX_SPARES);
    }
}
