//! The tests' child processes: netlab's runner (stdout lines to wait on, output to the test's
//! stderr, stdin held open, killed and reaped on drop), with failures turned into panics that
//! say what did not happen.

use std::process::{Command, ExitStatus};
use std::time::Duration;

use netlab::LabProcess;

pub struct ChildProcess(LabProcess);

impl ChildProcess {
    pub fn spawn(cmd: Command, name: &str) -> ChildProcess {
        ChildProcess(LabProcess::spawn(name, cmd).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Waits for a stdout line for which `pick` returns something, up to `timeout`.
    pub fn wait_for<T>(&mut self, timeout: Duration, pick: impl FnMut(&str) -> Option<T>) -> T {
        self.0
            .wait_for(timeout, pick)
            .unwrap_or_else(|e| panic!("{e}; its output is above"))
    }

    /// Waits for the process to exit by itself, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.0.wait_exit(timeout).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    pub fn drain_lines(&mut self) -> Vec<String> {
        self.0.drain_lines()
    }

    pub fn terminate(&self) {
        self.0.terminate()
    }

    /// Sends `signal`, a name kill(1) knows (`STOP` and `CONT` stand for a laptop's lid).
    pub fn signal(&self, signal: &str) {
        kill(self.pid(), signal);
    }

    pub fn pid(&self) -> u32 {
        self.0.pid()
    }
}

/// Sends `signal` (a name kill(1) knows) to process `pid`.
pub fn kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{signal} {pid} failed");
}
