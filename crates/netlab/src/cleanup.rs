//! Finding and removing labs left behind by a process that died without tearing its lab down
//! (killed by a timeout, SIGKILL, a crash in an abort-on-panic build).
//!
//! Every lab namespace is named `p2l<pid>x<n>-<role>`, with the pid of the process that made
//! it, so a lab is stale exactly when that process is gone.

use std::path::Path;

use crate::error::LabError;
use crate::netns;

/// The start of every lab namespace name.
pub const PREFIX: &str = "p2l";

/// Removes the namespaces (and the processes in them) of every lab whose creating process is
/// dead. Labs of live processes are left alone. Returns the names removed.
pub fn remove_stale_labs() -> Result<Vec<String>, LabError> {
    let stale: Vec<String> = netns::list()?
        .into_iter()
        .filter(|name| creator_pid(name).is_some_and(|pid| !alive(pid)))
        .collect();
    netns::teardown(&stale);
    let mut removed = Vec::new();
    for ns in stale {
        match netns::delete(&ns) {
            Ok(()) => removed.push(ns),
            Err(e) => tracing::warn!("could not delete stale namespace {ns}: {e}"),
        }
    }
    Ok(removed)
}

/// The pid in a lab namespace name, or None for a name that is not a lab's.
pub fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, rest) = rest.split_once('x')?;
    let (n, _role) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::creator_pid;

    #[test]
    fn only_lab_names_have_a_creator() {
        assert_eq!(creator_pid("p2l1234x0-inet"), Some(1234));
        assert_eq!(creator_pid("p2l77x12-h3r"), Some(77));
        assert_eq!(creator_pid("p2lx0-inet"), None);
        assert_eq!(creator_pid("p2l12x-inet"), None);
        assert_eq!(creator_pid("p2l12x0"), None);
        assert_eq!(creator_pid("docker-abc"), None);
        assert_eq!(creator_pid("p2l12a0-inet"), None);
    }
}
