//! A child process that a test starts, waits for, and always reaps: its stdout lines go to a
//! channel so the test can wait for the line that says it is ready, its stderr goes to the test's
//! output with a prefix, and dropping it kills it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub struct ChildProcess {
    pub name: String,
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl ChildProcess {
    /// Starts `cmd` with stdin, stdout and stderr piped.
    pub fn spawn(mut cmd: Command, name: &str) -> ChildProcess {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        forward(stdout, format!("[{name} stdout]"), Some(tx));
        forward(stderr, format!("[{name}]"), None);
        ChildProcess {
            name: name.to_string(),
            child,
            lines,
        }
    }

    /// Waits for a stdout line for which `pick` returns something, up to `timeout`.
    pub fn wait_for<T>(&mut self, timeout: Duration, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = pick(&line) {
                        return v;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "{} printed no ready line within {timeout:?}; its stderr is above",
                        self.name
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!(
                        "{} exited ({status:?}) before it was ready; its stderr is above",
                        self.name
                    )
                }
            }
        }
    }

    /// Waits for the process to exit by itself, up to `timeout` (then kills it and panics).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("{} did not exit within {timeout:?}", self.name);
    }

    /// The stdout lines printed so far that nobody waited for.
    pub fn drain_lines(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Sends SIGTERM (the polite stop a service manager sends).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // Killing an exited child fails harmlessly; waiting reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies a child's output lines into the test's output with `prefix`; with `tx`, the lines go
/// there too (so the test can wait on them). Ends when the child closes the pipe.
fn forward(pipe: impl Read + Send + 'static, prefix: String, tx: Option<mpsc::Sender<String>>) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            eprintln!("{prefix} {line}");
            if let Some(tx) = &tx {
                let _ = tx.send(line);
            }
        }
    });
}
