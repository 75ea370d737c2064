//! What share and connect tell programs and people while they run: `--json` prints each engine
//! [`Event`] as one JSON object per line on stdout (the schema is docs/json.md); on a terminal,
//! a status line on stderr shows the peers, the open connections and the traffic, redrawn
//! every second.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use p2p_socket::{Event, Events, Totals};
use serde_json::{json, Value};
use tokio::sync::broadcast::{self, error::RecvError};

/// The version of the JSON lines' schema, in every line: a consumer checks it once it reads a
/// line, and a change that would break one raises it (docs/json.md).
pub const JSON_VERSION: u32 = 1;

/// How often the status line is redrawn.
const REDRAW: Duration = Duration::from_secs(1);

/// Where the events of a run go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// JSON lines on stdout.
    Json,
    /// A live status line on stderr.
    Status,
    /// Nowhere: logs only.
    Logs,
}

impl Output {
    /// `--json` wins; otherwise a status line where stderr is a terminal a person watches.
    pub fn choose(json: bool, quiet: bool) -> Output {
        if json {
            Output::Json
        } else if !quiet && std::io::stderr().is_terminal() {
            Output::Status
        } else {
            Output::Logs
        }
    }

    /// Starts reporting what `events` say (subscribed now, so call it before starting the
    /// share or connect). The task ends with the process.
    pub fn report(self, events: &Events) {
        self.report_with(events, json!({}));
    }

    /// [`Output::report`], with `listening`'s fields added to the JSON `listening` event (what
    /// the CLI knows beyond the engine: the connection string of a share).
    pub fn report_with(self, events: &Events, listening: Value) {
        let receiver = events.subscribe();
        match self {
            Output::Json => {
                tokio::spawn(print_json(receiver, listening));
            }
            Output::Status => {
                tokio::spawn(show_status(receiver, events.clone()));
            }
            Output::Logs => {}
        }
    }
}

/// Prints one JSON line on stdout, at once (a program waits for it).
pub fn print_json_line(mut line: Value) {
    line["version"] = json!(JSON_VERSION);
    let mut out = std::io::stdout().lock();
    // A closed stdout (the reading program went away) is not a reason to stop the tunnel.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// An event as docs/json.md describes it.
pub fn event_json(event: &Event) -> Value {
    match event {
        Event::Listening { key, local } => {
            json!({"event": "listening", "key": key.to_string(), "local": local})
        }
        Event::ConnectionOpened {
            id,
            key,
            path,
            peer,
        } => json!({
            "event": "connection_opened",
            "id": id,
            "key": key.to_string(),
            "path": path.to_string(),
            "peer": peer.map(|a| a.to_string()),
        }),
        Event::ConnectionFailed { id, reason } => {
            json!({"event": "connection_failed", "id": id, "reason": reason})
        }
        Event::Reconnecting {
            id,
            attempt,
            delay,
            reason,
        } => json!({
            "event": "reconnecting",
            "id": id,
            "attempt": attempt,
            "delay_ms": delay.as_millis() as u64,
            "reason": reason,
        }),
        Event::Reconnected {
            id,
            failed_attempts,
        } => json!({"event": "reconnected", "id": id, "failed_attempts": failed_attempts}),
        Event::PeerRefused { key } => {
            json!({"event": "peer_refused", "key": key.to_string()})
        }
        Event::ConnectionClosed {
            id,
            bytes_in,
            bytes_out,
            error,
        } => json!({
            "event": "connection_closed",
            "id": id,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "error": error,
        }),
        Event::SharerReached {
            key,
            path,
            peer,
            multiplexed,
            took,
        } => json!({
            "event": "sharer_reached",
            "key": key.to_string(),
            "path": path.to_string(),
            "peer": peer.map(|a| a.to_string()),
            "multiplexed": multiplexed,
            "took_ms": took.as_millis() as u64,
        }),
        Event::SharerUnreachable { key, reason } => {
            json!({"event": "sharer_unreachable", "key": key.to_string(), "reason": reason})
        }
        other => json!({"event": "other", "debug": format!("{other:?}")}),
    }
}

async fn print_json(mut receiver: broadcast::Receiver<Event>, listening: Value) {
    loop {
        match receiver.recv().await {
            Ok(event) => {
                let mut line = event_json(&event);
                if let (Event::Listening { .. }, Some(extra)) = (&event, listening.as_object()) {
                    for (k, v) in extra {
                        line[k] = v.clone();
                    }
                }
                print_json_line(line)
            }
            Err(RecvError::Lagged(missed)) => {
                print_json_line(json!({"event": "lagged", "missed": missed}))
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Whether the status line is on screen: a log line clears it first (see [`LogWriter`]).
static STATUS_SHOWN: AtomicBool = AtomicBool::new(false);

/// The tracing writer: stderr, clearing the status line before a log line so the two never
/// share a row (the status comes back at the next redraw).
pub struct LogWriter;

pub struct LogLine;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine
    }
}

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        if STATUS_SHOWN.swap(false, Ordering::Relaxed) {
            err.write_all(b"\r\x1b[2K")?;
        }
        err.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// One open connection as the status line shows it.
struct Open {
    key: String,
    path: String,
    peer: String,
}

/// What the status line knows.
#[derive(Default)]
struct Status {
    open: BTreeMap<u64, Open>,
    closed: u64,
    failed: u64,
    /// The last retry while the sharer is out of reach: its number, pause and reason.
    reconnecting: Option<(u32, Duration, String)>,
}

impl Status {
    fn apply(&mut self, event: Event) {
        match event {
            Event::ConnectionOpened {
                id,
                key,
                path,
                peer,
            } => {
                self.reconnecting = None;
                let key = key.to_string();
                self.open.insert(
                    id,
                    Open {
                        key: key[..8].to_string(),
                        path: path.to_string(),
                        peer: peer.map(|a| a.to_string()).unwrap_or_else(|| "?".into()),
                    },
                );
            }
            Event::ConnectionClosed { id, .. } => {
                self.open.remove(&id);
                self.closed += 1;
            }
            Event::ConnectionFailed { .. } => self.failed += 1,
            Event::Reconnecting {
                attempt,
                delay,
                reason,
                ..
            } => self.reconnecting = Some((attempt, delay, reason)),
            Event::Reconnected { .. } => self.reconnecting = None,
            _ => {}
        }
    }

    /// The line: peers (grouped by key, path and address), connections, traffic and its rate.
    fn line(&self, totals: Totals, rate: (f64, f64)) -> String {
        let mut peers: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
        for o in self.open.values() {
            *peers
                .entry((o.key.as_str(), o.path.as_str(), o.peer.as_str()))
                .or_default() += 1;
        }
        let peers = if peers.is_empty() {
            "no peers".to_string()
        } else {
            peers
                .iter()
                .map(|((key, path, peer), n)| format!("{key}… {path} {peer} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Said first: while the sharer is out of reach, that is what a person needs to see.
        let reconnecting = match &self.reconnecting {
            Some((attempt, delay, reason)) => format!(
                "reconnecting (attempt {attempt}, next in {:.1} s): {reason} | ",
                delay.as_secs_f64()
            ),
            None => String::new(),
        };
        let mut line = format!(
            "{reconnecting}{} open, {} closed{} | in {} ({}/s) out {} ({}/s) | {peers}",
            self.open.len(),
            self.closed,
            if self.failed > 0 {
                format!(", {} failed", self.failed)
            } else {
                String::new()
            },
            bytes(totals.bytes_in as f64),
            bytes(rate.0),
            bytes(totals.bytes_out as f64),
            bytes(rate.1),
        );
        // A line longer than the terminal wraps, and clearing it then leaves its first rows.
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or(100)
            .saturating_sub(1);
        if line.chars().count() > width {
            line = line.chars().take(width.saturating_sub(1)).collect();
            line.push('…');
        }
        line
    }
}

fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

async fn show_status(mut receiver: broadcast::Receiver<Event>, events: Events) {
    let mut status = Status::default();
    // Not at once: the lines start prints (the key, the command for the peer) come first.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + REDRAW, REDRAW);
    let mut last = (Instant::now(), events.totals());
    loop {
        tokio::select! {
            event = receiver.recv() => match event {
                Ok(event) => status.apply(event),
                // Missed events only blur the counts until connections close.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                let now = (Instant::now(), events.totals());
                let secs = now.0.duration_since(last.0).as_secs_f64().max(0.001);
                let rate = (
                    (now.1.bytes_in - last.1.bytes_in) as f64 / secs,
                    (now.1.bytes_out - last.1.bytes_out) as f64 / secs,
                );
                last = now;
                let line = status.line(now.1, rate);
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
                STATUS_SHOWN.store(true, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(0.0), "0 B");
        assert_eq!(bytes(999.0), "999 B");
        assert_eq!(bytes(1_500.0), "1.5 kB");
        assert_eq!(bytes(2_000_000.0), "2.0 MB");
    }

    #[test]
    fn the_line_counts_peers_connections_and_traffic() {
        let key: p2p_socket::PublicKey = "ab".repeat(32).parse().unwrap();
        let mut status = Status::default();
        for id in 1..=3 {
            status.apply(Event::ConnectionOpened {
                id,
                key,
                path: p2p_socket::Path::Punched,
                peer: Some("127.0.0.1:5000".parse().unwrap()),
            });
        }
        status.apply(Event::ConnectionClosed {
            id: 2,
            bytes_in: 1,
            bytes_out: 2,
            error: None,
        });
        let line = status.line(
            Totals {
                bytes_in: 1_000,
                bytes_out: 20,
            },
            (500.0, 0.0),
        );
        assert!(line.starts_with("2 open, 1 closed | in 1.0 kB (500 B/s) out 20 B (0 B/s)"));
        assert!(
            line.contains("abababab… punched 127.0.0.1:5000 ×2"),
            "{line}"
        );
    }

    #[test]
    fn the_line_says_reconnecting_until_the_sharer_is_back() {
        let mut status = Status::default();
        status.apply(Event::Reconnecting {
            id: 4,
            attempt: 3,
            delay: Duration::from_secs(2),
            reason: "no peer is sharing this key".into(),
        });
        let line = status.line(Totals::default(), (0.0, 0.0));
        assert!(
            line.starts_with(
                "reconnecting (attempt 3, next in 2.0 s): no peer is sharing this key | 0 open"
            ),
            "{line}"
        );
        status.apply(Event::Reconnected {
            id: 4,
            failed_attempts: 3,
        });
        let line = status.line(Totals::default(), (0.0, 0.0));
        assert!(line.starts_with("0 open"), "{line}");
    }
}
