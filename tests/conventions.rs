//! What a command-line tool is expected to have, checked on the real binary: shell completions
//! and man pages from the CLI definition, a config file whose flags the command line overrides,
//! documented exit codes, and service files (systemd, Docker) whose commands the binary accepts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use test_support as support;

use support::cli::{bin, LocalDht, READY};
use support::net::{exchange, Behaviour, Service};
use support::process::ChildProcess;

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run p2p-socket")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scratch directory of this test's own, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "p2p-socket-conventions-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn completions_cover_every_shell_and_command() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for word in ["share", "connect", "relay", "bootstrap", "key-derivation"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let out = run(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    assert!(
        text(&out.stderr).contains("bash"),
        "names the shells it knows"
    );
}

#[test]
fn man_pages_are_generated_from_the_cli() {
    let out = run(&["man"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH p2p-socket"),
        "{page}"
    );
    assert!(
        page.contains("share") && page.contains("Exit codes"),
        "{page}"
    );

    let dir = Scratch::new("man");
    let out = run(&["man", "--out-dir", dir.0.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for page in ["p2p-socket.1", "p2p-socket-share.1", "p2p-socket-connect.1"] {
        let body = std::fs::read_to_string(dir.0.join(page))
            .unwrap_or_else(|e| panic!("{page} was not written: {e}"));
        assert!(body.contains(".TH"), "{page} is not a man page");
    }
}

#[test]
fn exit_codes_are_the_documented_ones() {
    let help = text(&run(&["--help"]).stdout);
    assert!(help.contains("Exit codes:"), "--help documents them");

    let out = run(&["share", "--no-such-flag"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad flag: {}",
        text(&out.stderr)
    );

    // A failure at run time: the identity file named is not there.
    let out = run(&[
        "share",
        "--port",
        "8080",
        "--identity",
        "/nonexistent/p2p-socket-identity.json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("create-id"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_bad_config_file_is_a_usage_error_that_names_the_key_and_the_file() {
    let dir = Scratch::new("bad");
    let config = dir.write("config.toml", "[share]\nprot = 8080\n");
    let out = run(&["share", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("`prot`") && err.contains("config.toml"),
        "{err}"
    );
    assert!(err.contains("port"), "lists the keys it takes: {err}");

    let out = run(&["share", "--config", "/nonexistent/p2p.toml", "--port", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("/nonexistent/p2p.toml"));

    let config = dir.write("empty.toml", "");
    let out = run(&[
        "share",
        "--config",
        config.to_str().unwrap(),
        "--profile",
        "web",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no profile `web`"),
        "{}",
        text(&out.stderr)
    );
}

/// Starts `p2p-socket share` with exactly `args` (no --bootstrap added) and returns it with the
/// line it printed about what it shares and its key.
fn share_with(args: &[&str], env: &[(&str, &str)]) -> (ChildProcess, String, String) {
    let mut cmd = bin();
    cmd.arg("share").args(args).envs(env.iter().copied());
    let mut share = ChildProcess::spawn(cmd, "share");
    let sharing = share.wait_for(READY, |l| l.starts_with("Sharing ").then(|| l.to_owned()));
    let key = share.wait_for(READY, |l| {
        let l = l.trim();
        (l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit())).then(|| l.to_owned())
    });
    (share, sharing, key)
}

#[test]
fn a_profile_runs_a_share_and_the_command_line_overrides_it() {
    let dht = LocalDht::start(1);
    let service = Service::start(Behaviour::Echo);
    let dir = Scratch::new("profile");
    let config = dir.write(
        "config.toml",
        &format!(
            "bootstrap = \"{}\"\n[share]\nhost = \"127.0.0.1\"\nport = 1\n[profiles.web]\nport = {}\n",
            dht.bootstrap,
            service.port()
        ),
    );
    let config = config.to_str().unwrap();

    // The profile's port, and the bootstrap node from the top level: the share works end to
    // end through a connect that got its bootstrap node on the command line.
    let (mut share, sharing, key) = share_with(&["--config", config, "--profile", "web"], &[]);
    assert_eq!(
        sharing,
        format!("Sharing 127.0.0.1:{}. Key:", service.port())
    );
    let mut connect = bin();
    connect.args(["connect", "--key", &key, "--bootstrap", &dht.bootstrap]);
    let mut connect = ChildProcess::spawn(connect, "connect");
    let listening = connect.wait_for(READY, |l| {
        l.strip_prefix("Listening on ").map(|a| a.trim().to_owned())
    });
    let tcp = std::net::TcpStream::connect(listening).unwrap();
    let tally = exchange(tcp, 64 * 1024, 7).unwrap();
    assert_eq!(tally.received, 64 * 1024, "the echo came back whole");
    share.terminate();
    share.wait_exit(READY);

    // The command line beats the profile, in its short spelling too.
    let (mut share, sharing, _) =
        share_with(&["--config", config, "--profile", "web", "-p", "7"], &[]);
    assert_eq!(sharing, "Sharing 127.0.0.1:7. Key:");
    share.terminate();
    share.wait_exit(READY);

    // The config named by the environment, and the default place (XDG_CONFIG_HOME) is found.
    let (mut share, sharing, _) =
        share_with(&["--profile", "web"], &[("P2P_SOCKET_CONFIG", config)]);
    assert_eq!(
        sharing,
        format!("Sharing 127.0.0.1:{}. Key:", service.port())
    );
    share.terminate();
    share.wait_exit(READY);
    let home = dir.0.join("xdg");
    std::fs::create_dir_all(home.join("p2p-socket")).unwrap();
    std::fs::copy(config, home.join("p2p-socket/config.toml")).unwrap();
    let (mut share, sharing, _) = share_with(
        &["--profile", "web"],
        &[("XDG_CONFIG_HOME", home.to_str().unwrap())],
    );
    assert_eq!(
        sharing,
        format!("Sharing 127.0.0.1:{}. Key:", service.port())
    );
    share.terminate();
    share.wait_exit(READY);
}

/// The command lines in `contrib/` (systemd units, the Dockerfile's examples), with their
/// placeholders filled in.
fn service_command_lines(root: &Path, config: &str) -> Vec<(String, Vec<String>)> {
    let mut lines = Vec::new();
    let systemd = root.join("contrib/systemd");
    let mut units: Vec<_> = std::fs::read_dir(&systemd)
        .expect("contrib/systemd exists")
        .map(|e| e.unwrap().path())
        .collect();
    units.sort();
    for unit in units {
        let body = std::fs::read_to_string(&unit).unwrap();
        for line in body.lines() {
            if let Some(cmd) = line.strip_prefix("ExecStart=") {
                let words: Vec<String> = cmd
                    .replace("%i", "web")
                    .replace("/etc/p2p-socket/config.toml", config)
                    .split_whitespace()
                    .skip(1)
                    .map(String::from)
                    .collect();
                lines.push((unit.display().to_string(), words));
            }
        }
    }
    let dockerfile = root.join("contrib/docker/Dockerfile");
    let body = std::fs::read_to_string(&dockerfile).expect("contrib/docker/Dockerfile exists");
    for line in body.lines() {
        if let Some((_, args)) = line.split_once(" p2p-socket ") {
            if line.trim_start().starts_with("#   docker run") {
                let words = args.split_whitespace().map(String::from).collect();
                lines.push((dockerfile.display().to_string(), words));
            }
        }
    }
    lines
}

#[test]
fn the_service_files_run_commands_the_binary_accepts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = Scratch::new("contrib");
    let config = dir.write("config.toml", "[profiles.web]\nport = 8080\n");
    let lines = service_command_lines(root, config.to_str().unwrap());
    assert!(lines.len() >= 6, "found only {lines:?}");
    for (file, words) in lines {
        // clap stops at the first bad flag before it gets to --help: exit 0 means every flag
        // and subcommand of the line exists.
        let out: Output = Command::new(support::cli::binary())
            .env("XDG_CONFIG_HOME", "/nonexistent/p2p-socket-tests")
            .args(&words)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: `p2p-socket {}` is rejected: {}",
            words.join(" "),
            text(&out.stderr)
        );
    }
}
