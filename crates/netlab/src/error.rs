use std::io;
use std::time::Duration;

/// Everything that can go wrong building, using or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "network namespaces are not permitted here ({reason}). The NAT lab needs Linux, root \
         (CAP_SYS_ADMIN and CAP_NET_ADMIN) and a working `ip netns add`; run it as root, as CI does"
    )]
    NamespacesNotPermitted { reason: String },

    #[error("`{tool}` is not installed; the NAT lab needs it: apt-get install -y {package}")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },

    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    #[error("could not run `{command}`: {source}")]
    Spawn { command: String, source: io::Error },

    #[error("could not enter network namespace {netns}: {source}")]
    EnterNetns { netns: String, source: io::Error },

    #[error(
        "packets cannot be delayed in {netns}: the NFQUEUE delay line failed ({reason}). \
         This kernel cannot delay packets (it has no netem either); use loss only"
    )]
    DelayUnsupported { netns: String, reason: String },

    #[error("{name} printed no ready line within {timeout:?}; its output is in the log")]
    NotReady { name: String, timeout: Duration },

    #[error("{name} exited ({status}) before it printed its ready line; its output is in the log")]
    ExitedEarly { name: String, status: String },

    #[error(
        "no `{name}` binary next to this program (looked for {looked}); build it first, in the \
         same profile: `cargo build --bin {name}` (add --release for a release build)"
    )]
    BinaryNotBuilt { name: String, looked: String },

    #[error("invalid lab: {0}")]
    Spec(String),

    #[error("{0}")]
    Io(#[from] io::Error),
}
