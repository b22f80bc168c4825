//! A server on one fixed port that a test kills and starts again on that port (an HTTP upstream
//! or remote restarting), from a command the test builds for each start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Command;

use super::{DEATH_TIMEOUT, PORT_TAKEN, Proc, Readiness, Ready, signal, wait_ready};

/// Starts on a port that the last instance may still hold, before giving up.
pub const SAME_PORT_ATTEMPTS: usize = 40;

pub struct PortServer {
    /// What the server is, in messages (`modern server`, `upstream`).
    name: &'static str,
    /// Logs are `<dir>/<log>.<instance>.log`.
    dir: PathBuf,
    log: &'static str,
    pub port: u16,
    /// Instances started so far.
    pub instance: usize,
    current: Option<Proc>,
}

impl PortServer {
    pub fn new(name: &'static str, dir: &Path, log: &'static str, port: u16) -> PortServer {
        PortServer { name, dir: dir.to_owned(), log, port, instance: 0, current: None }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// The log of instance `n`.
    pub fn log_of(&self, n: usize) -> PathBuf {
        self.dir.join(format!("{}.{n}.log", self.log))
    }

    /// Starts it (again): `make` builds the command for the port and names the log line that
    /// says it is ready; retried while the port is still taken.
    pub async fn start(&mut self, make: impl Fn(&str) -> (Command, String)) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..SAME_PORT_ATTEMPTS {
            let n = self.instance + 1;
            let log = self.log_of(n);
            let (mut cmd, marker) = make(&self.port.to_string());
            cmd.env("NO_PROXY", "127.0.0.1,localhost");
            let started = match Proc::spawn(self.name, &mut cmd, &log, &log) {
                Ok(mut proc) => {
                    let how = Readiness {
                        taken: &PORT_TAKEN,
                        port: Some(self.port),
                        new_only: true,
                        poll: Duration::from_millis(20),
                    };
                    wait_ready(&mut proc, &log, &marker, how).await.map(|()| proc)
                }
                Err(e) => Err(Ready::Failed(e)),
            };
            match started {
                Ok(proc) => {
                    self.instance = n;
                    self.current = Some(proc);
                    return Ok(());
                }
                Err(Ready::PortTaken(e)) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(Ready::Failed(e)) => return Err(format!("the {} did not start: {e}", self.name)),
            }
        }
        Err(format!("the {} could not listen on port {}: {last}", self.name, self.port))
    }

    /// SIGKILLs the running instance and waits for its death.
    pub async fn kill(&mut self) -> Result<(), String> {
        let mut proc = self.current.take().ok_or_else(|| format!("no {} running", self.name))?;
        let pid = proc.child.id().ok_or_else(|| format!("the {} had already exited", self.name))? as i32;
        signal(pid, Signal::SIGKILL);
        tokio::time::timeout(DEATH_TIMEOUT, proc.child.wait())
            .await
            .map_err(|_| format!("the {} did not die after SIGKILL", self.name))?
            .map_err(|e| format!("waiting for the {}: {e}", self.name))?;
        Ok(())
    }
}
