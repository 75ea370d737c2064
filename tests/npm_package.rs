//! The npm packages as a user gets them: `npm/build.sh` packs the launcher (`p2p-socket`) and
//! this platform's binary package (`@p2p-socket/<platform>`) around the binary cargo built for
//! this test, npm installs both from the tarballs into an empty folder with no registry at all,
//! and `npx p2p-socket` runs the binary through the launcher.

use test_support as support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use support::process::ChildProcess;

/// npm and node start slowly on a loaded 2-core machine; none of this needs the network.
const NPM: Duration = Duration::from_secs(180);
/// The demo runs a private DHT, a share and a connect: well under a second on loopback, plus
/// the seconds npx takes to start on a busy machine.
const DEMO: Duration = Duration::from_secs(120);

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An empty folder with the two packages installed from their tarballs, removed on drop.
struct Installed {
    root: PathBuf,
    app: PathBuf,
}

impl Installed {
    fn new(name: &str) -> Installed {
        require_npm();
        let root = std::env::temp_dir().join(format!(
            "p2p-socket-npm-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let app = root.join("app");
        std::fs::create_dir_all(&app).expect("create the test's install folder");
        let installed = Installed { root, app };
        // A user config of our own: nothing from this machine's ~/.npmrc (a registry, a token).
        std::fs::write(installed.root.join("npmrc"), "").expect("write an empty npmrc");
        std::fs::write(
            installed.app.join("package.json"),
            r#"{ "name": "npm-package-test", "version": "1.0.0", "private": true }"#,
        )
        .expect("write the install folder's package.json");

        let tarballs = installed.pack();
        let mut install = installed.npm("npm");
        install.arg("install").args(&tarballs);
        let status = run(install, "npm install", NPM);
        assert!(
            status.success(),
            "npm install of {tarballs:?} with no registry failed ({status}); its output is above"
        );
        installed.check_binary_came_from_the_tarball();
        installed
    }

    /// `npm/build.sh` around the binary of this test build; returns the two tarballs.
    fn pack(&self) -> Vec<PathBuf> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("npm/build.sh");
        let out = self.root.join("packs");
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_p2p-socket"))
            .arg("--out")
            .arg(&out);
        let mut p = ChildProcess::spawn(cmd, "npm/build.sh");
        let mut tarballs = Vec::new();
        let started = Instant::now();
        while tarballs.len() < 2 {
            let left = NPM.saturating_sub(started.elapsed());
            tarballs.push(p.wait_for(left, |line| {
                line.ends_with(".tgz").then(|| PathBuf::from(line))
            }));
        }
        let status = p.wait_exit(NPM);
        assert!(status.success(), "npm/build.sh failed ({status})");
        tarballs
    }

    /// npm or npx in the install folder, kept away from any registry: offline, with an empty
    /// cache of its own (so nothing can come from a cache either) and a registry address
    /// nothing listens on. Install scripts are off, since the packages must not need any.
    fn npm(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.app)
            .env("npm_config_offline", "true")
            .env("npm_config_cache", self.root.join("cache"))
            .env("npm_config_userconfig", self.root.join("npmrc"))
            .env("npm_config_registry", "http://127.0.0.1:9/")
            .env("npm_config_ignore_scripts", "true")
            .env("npm_config_audit", "false")
            .env("npm_config_fund", "false")
            .env("npm_config_update_notifier", "false")
            .env_remove("P2P_SOCKET_BINARY")
            .env_remove("P2P_SOCKET_BOOTSTRAP");
        cmd
    }

    /// `npx p2p-socket ARGS`, as the user types it.
    fn npx(&self, args: &[&str]) -> Command {
        let mut cmd = self.npm("npx");
        cmd.arg("p2p-socket").args(args);
        cmd
    }

    /// The launcher's optional dependency was satisfied by the platform tarball, not fetched:
    /// the lockfile records where each package came from.
    fn check_binary_came_from_the_tarball(&self) {
        let platform = platform_package();
        let lock = std::fs::read_to_string(self.app.join("package-lock.json"))
            .expect("npm install writes package-lock.json");
        let lock: serde_json::Value = serde_json::from_str(&lock).expect("package-lock.json");
        let entry = &lock["packages"][format!("node_modules/{platform}")];
        let resolved = entry["resolved"].as_str().unwrap_or_default();
        assert!(
            resolved.starts_with("file:") && resolved.ends_with(".tgz"),
            "{platform} should come from its local tarball, but the lockfile has {entry}"
        );
        assert_eq!(entry["version"], VERSION, "{platform}'s version");
        let binary = self
            .app
            .join("node_modules")
            .join(&platform)
            .join("bin/p2p-socket");
        assert!(binary.is_file(), "{} is missing", binary.display());
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn require_npm() {
    for tool in ["node", "npm", "npx"] {
        let found = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "`{tool}` is not installed: the npm packaging test needs Node.js 18 or later with npm \
             (.ci/run installs them; on Debian/Ubuntu `apt-get install nodejs npm`)"
        );
    }
}

/// The platform package npm picks on this machine, as npm names platforms.
fn platform_package() -> String {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        "windows" => "win32",
        other => other,
    };
    let cpu = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("@p2p-socket/{os}-{cpu}")
}

fn run(cmd: Command, name: &str, timeout: Duration) -> ExitStatus {
    ChildProcess::spawn(cmd, name).wait_exit(timeout)
}

#[test]
fn npx_runs_the_binary_from_the_packed_packages() {
    let installed = Installed::new("npx");

    let mut version = ChildProcess::spawn(installed.npx(&["--version"]), "npx p2p-socket");
    let said = version.wait_for(NPM, |line| {
        line.starts_with("p2p-socket").then(|| line.to_string())
    });
    assert_eq!(said, format!("p2p-socket {VERSION}"));
    let status = version.wait_exit(NPM);
    assert_eq!(status.code(), Some(0), "npx p2p-socket --version: {status}");

    let started = Instant::now();
    let mut demo = ChildProcess::spawn(installed.npx(&["demo"]), "npx p2p-socket demo");
    demo.wait_for(DEMO, |line| {
        line.contains("The tunnel works.").then_some(())
    });
    let status = demo.wait_exit(DEMO);
    assert_eq!(status.code(), Some(0), "npx p2p-socket demo: {status}");
    eprintln!("npx p2p-socket demo took {:?}", started.elapsed());

    // A usage error exits 2 (clap's code), which only a forwarded exit code carries out.
    let status = run(
        installed.npx(&["--no-such-option"]),
        "npx p2p-socket --no-such-option",
        NPM,
    );
    assert_eq!(
        status.code(),
        Some(2),
        "npx p2p-socket --no-such-option: {status}"
    );
}

/// On a platform without a package the launcher says which platforms have one and what to do.
/// That is decided before any package is looked for, so the launcher's source will do.
#[test]
fn the_launcher_explains_a_platform_without_a_binary() {
    require_npm();
    let launcher = Path::new(env!("CARGO_MANIFEST_DIR")).join("npm/p2p-socket/bin/p2p-socket.js");
    // Node as if on an OS we ship nothing for; stderr joins stdout so its lines can be read.
    let script = format!(
        "Object.defineProperty(process, 'platform', {{ value: 'sunos' }}); require({:?})",
        launcher.display().to_string()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exec node -e \"$0\" 2>&1", &script])
        .env_remove("P2P_SOCKET_BINARY");
    let mut p = ChildProcess::spawn(cmd, "launcher on sunos");
    let said = p.wait_for(NPM, |line| {
        line.starts_with("p2p-socket:").then(|| line.to_string())
    });
    for wanted in [
        "no prebuilt binary for sunos-",
        "linux-x64",
        "P2P_SOCKET_BINARY",
    ] {
        assert!(said.contains(wanted), "{wanted:?} missing from: {said}");
    }
    let status = p.wait_exit(NPM);
    assert_eq!(status.code(), Some(1), "launcher on sunos: {status}");
}

/// The launcher passes a SIGTERM on to the binary and waits for it to shut down cleanly; when
/// the binary dies of a signal, so does the launcher.
#[test]
fn the_launcher_forwards_signals_and_dies_of_the_binarys() {
    let installed = Installed::new("signals");
    let launcher = installed.app.join("node_modules/.bin/p2p-socket");
    let start = || {
        let mut cmd = installed.npm(launcher.to_str().expect("a UTF-8 temp path"));
        cmd.args(["bootstrap", "--host", "127.0.0.1", "--port", "0"]);
        let mut p = ChildProcess::spawn(cmd, "launcher");
        p.wait_for(NPM, |l| {
            l.starts_with("Bootstrap node running on").then_some(())
        });
        let binary = Binary(child_of(p.pid()));
        (p, binary)
    };

    // SIGTERM to the launcher alone: the binary gets it, closes its node and exits 0.
    let (mut p, binary) = start();
    p.terminate();
    let status = p.wait_exit(NPM);
    assert_eq!(status.code(), Some(0), "launcher after SIGTERM: {status}");
    assert!(
        !binary.is_running(),
        "the binary (pid {}) outlived its launcher",
        binary.0
    );

    // The binary killed: the launcher reports the same death to whoever started it.
    let (mut p, binary) = start();
    assert!(binary.kill(), "kill -KILL {}", binary.0);
    let status = p.wait_exit(NPM);
    assert_eq!(
        status.signal(),
        Some(9),
        "launcher after its binary was killed: {status}"
    );
}

/// The launcher's binary, by pid. A launcher that fails to pass a signal on leaves it running
/// without a parent, so a failing test kills it here.
struct Binary(u32);

impl Binary {
    fn is_running(&self) -> bool {
        // Still ours, not a new process that got the pid after the binary was reaped.
        std::fs::read(format!("/proc/{}/cmdline", self.0))
            .is_ok_and(|cmd| cmd.windows(10).any(|w| w == b"p2p-socket"))
    }

    /// SIGKILL; whether `kill` could send it.
    fn kill(&self) -> bool {
        Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill();
        }
    }
}

/// The one child process of `parent` (the launcher's binary), from /proc.
fn child_of(parent: u32) -> u32 {
    let deadline = Instant::now() + NPM;
    loop {
        let children: Vec<u32> = std::fs::read_dir("/proc")
            .expect("read /proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|pid| parent_of(*pid) == Some(parent))
            .collect();
        match children[..] {
            [one] => return one,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => panic!("the launcher (pid {parent}) should run one binary, it runs {children:?}"),
        }
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces: fields resume after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
