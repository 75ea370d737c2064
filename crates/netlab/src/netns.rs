//! Network namespaces through `ip netns`, and running code or commands inside one.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;

use crate::error::LabError;

/// `ip netns add` makes /run/netns a shared mount the first time; two threads doing that at
/// once can trip over each other, so creation and deletion in this process take turns.
static NETNS_CHANGE: Mutex<()> = Mutex::new(());

/// A command that runs `program` inside network namespace `netns` (`ip netns exec`). The
/// program replaces `ip` (no extra process), so the child's pid is the program's.
pub fn exec(netns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]).arg(program);
    cmd
}

/// Runs `f` on a new thread that lives in network namespace `netns`, and returns what it
/// returns. Sockets `f` creates stay in that namespace wherever they are used afterwards, so
/// this is how a test opens a listener or a client connection inside a home.
pub fn in_netns<T, F>(netns: &str, f: F) -> Result<T, LabError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = open(netns)?;
    let name = netns.to_string();
    thread::Builder::new()
        .name(format!("netns {netns}"))
        .spawn(move || {
            enter(&ns, &name)?;
            Ok(f())
        })?
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Opens the handle of a named namespace, for [`enter`].
pub(crate) fn open(netns: &str) -> Result<File, LabError> {
    File::open(format!("/run/netns/{netns}")).map_err(|source| LabError::EnterNetns {
        netns: netns.to_string(),
        source,
    })
}

/// Moves the calling thread (only it) into the namespace `ns` refers to.
pub(crate) fn enter(ns: &File, name: &str) -> Result<(), LabError> {
    // SAFETY: setns on a valid open namespace fd; it changes only the calling thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(LabError::EnterNetns {
            netns: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs a command to completion; its stdout on success, its stderr in the error otherwise.
pub(crate) fn run(cmd: &mut Command) -> Result<String, LabError> {
    run_with_input(cmd, None)
}

pub(crate) fn run_with_input(cmd: &mut Command, input: Option<&str>) -> Result<String, LabError> {
    let command = describe(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| missing_tool(cmd, source))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(LabError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn missing_tool(cmd: &Command, source: io::Error) -> LabError {
    if source.kind() == io::ErrorKind::NotFound && cmd.get_program() == "ip" {
        return LabError::MissingTool {
            tool: "ip",
            package: "iproute2",
        };
    }
    LabError::Spawn {
        command: describe(cmd),
        source,
    }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ip ARGS...`
pub(crate) fn ip(args: &[&str]) -> Result<(), LabError> {
    run(Command::new("ip").args(args)).map(drop)
}

/// `ip -n NETNS ARGS...`: an `ip` command acting inside a namespace.
pub(crate) fn ip_in(netns: &str, args: &[&str]) -> Result<(), LabError> {
    run(Command::new("ip").args(["-n", netns]).args(args)).map(drop)
}

/// Loads an iptables-restore ruleset into a namespace, replacing the tables it names.
pub(crate) fn iptables_restore(netns: &str, rules: &str) -> Result<(), LabError> {
    // `ip netns exec` on a missing program fails inside `ip`, so look for the tool first to
    // say plainly what to install.
    if !tool_on_path("iptables-restore") {
        return Err(LabError::MissingTool {
            tool: "iptables",
            package: "iptables",
        });
    }
    run_with_input(&mut exec(netns, "iptables-restore"), Some(rules)).map(drop)
}

pub(crate) fn tool_on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false)
}

/// Sets a sysctl under /proc/sys/net as seen from inside `netns` (those are per namespace).
pub(crate) fn sysctl(netns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_string();
    in_netns(netns, move || std::fs::write(&path, value))??;
    Ok(())
}

pub(crate) fn add(netns: &str) -> Result<(), LabError> {
    let _turn = NETNS_CHANGE.lock().unwrap_or_else(|p| p.into_inner());
    ip(&["netns", "add", netns])
}

pub(crate) fn delete(netns: &str) -> Result<(), LabError> {
    let _turn = NETNS_CHANGE.lock().unwrap_or_else(|p| p.into_inner());
    ip(&["netns", "delete", netns])
}

/// The names of all named network namespaces on the machine.
pub(crate) fn list() -> Result<Vec<String>, LabError> {
    // `ip netns list` prints "name (id: N)" once a namespace has an id; the name comes first.
    Ok(run(Command::new("ip").args(["netns", "list"]))?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect())
}

/// Kills (SIGKILL) every process still inside `netns`, except this one: a namespace's
/// processes keep it alive after its name is deleted, and a lab must leave nothing behind.
pub(crate) fn kill_all_in(netns: &str) -> Result<usize, LabError> {
    let own = std::process::id();
    let pids: Vec<i32> = run(Command::new("ip").args(["netns", "pids", netns]))?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p: &i32| p as u32 != own && p > 1)
        .collect();
    for &pid in &pids {
        // SAFETY: sending a signal to a pid has no memory-safety concerns.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    Ok(pids.len())
}

/// Ends every process left inside the namespaces (started by the user of the lab and not
/// stopped), so that deleting the names really frees the namespaces.
pub(crate) fn teardown(namespaces: &[String]) {
    for ns in namespaces {
        if let Err(e) = kill_all_in(ns) {
            tracing::warn!("could not stop the processes in {ns}: {e}");
        }
    }
}
