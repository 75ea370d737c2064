//! A process started inside the lab (or anywhere a test needs one): its stdout lines can be
//! waited for (the line a daemon prints when it is ready), all of its output goes to stderr
//! with its name, and dropping it kills it. Its stdin stays open while this handle lives, so a
//! child that watches stdin (the Node fixtures do) exits by itself if the test process dies.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::LabError;

pub struct LabProcess {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    _stdin: Option<ChildStdin>,
}

impl LabProcess {
    /// Starts `cmd` (usually from [`crate::Lab::exec`]) with its output captured. `name` labels
    /// its log lines.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<LabProcess, LabError> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LabError::Spawn {
                command: format!("{cmd:?}"),
                source,
            })?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            forward(out, name.to_string(), Some(tx));
        }
        if let Some(err) = child.stderr.take() {
            forward(err, name.to_string(), None);
        }
        Ok(LabProcess {
            name: name.to_string(),
            _stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    /// Waits up to `timeout` for a stdout line for which `pick` returns something.
    pub fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = pick(&line) {
                        return Ok(v);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(LabError::NotReady {
                        name: self.name.clone(),
                        timeout,
                    })
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self
                        .child
                        .wait()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string());
                    return Err(LabError::ExitedEarly {
                        name: self.name.clone(),
                        status,
                    });
                }
            }
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(LabError::NotReady {
                    name: format!("{} (to exit)", self.name),
                    timeout,
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stdout lines printed so far that nobody waited for.
    pub fn drain_lines(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>, LabError> {
        Ok(self.child.try_wait()?)
    }

    /// Sends SIGTERM, the polite stop a service manager sends.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        // Killing an exited child fails harmlessly; waiting reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a child's output lines to stderr (and stdout lines to `tx` too). Ends with the pipe.
/// eprintln!, not a log macro: a test's harness captures it per test (threads inherit the
/// capture) and shows it when that test fails, with no subscriber to set up.
fn forward(pipe: impl Read + Send + 'static, name: String, tx: Option<mpsc::Sender<String>>) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{name}] {line}");
            if let Some(tx) = &tx {
                let _ = tx.send(line);
            }
        }
    });
}
