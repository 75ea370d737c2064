//! The config file: defaults for any flag, per command and per named profile, so a long-running
//! share (its allow list, relay, bootstrap nodes) lives in a file instead of a shell history.
//!
//! The file holds flags, not a second schema: every key is the long name of a flag of the command
//! being run, and the file's values are turned into those flags ahead of the command line's. So
//! the config can never drift from the CLI: a new flag is configurable the day it exists, and a
//! key that is not a flag is an error that lists the ones that are.
//!
//! ```toml
//! bootstrap = "203.0.113.7:49737"       # flags of every command
//!
//! [share]                               # defaults of `p2p-socket share`
//! relay = "<relay key>"
//!
//! [profiles.web]                        # `p2p-socket share --profile web`
//! port = 8080
//! ```
//!
//! Precedence, strongest first: the command line, the flag's environment variable, the profile,
//! the command's table, the file's top level. TOML has one namespace per table, so the file's
//! top level holds either the flag `bootstrap = "host:port"` or the command's table
//! `[bootstrap]`; a file that needs both sets the flag in each command's table instead.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command};

/// Where the config file is looked for when `--config` does not say.
pub const CONFIG_ENV: &str = "P2P_SOCKET_CONFIG";

/// Files larger than this are not configs; reading one whole would only waste memory.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A config file that cannot be used, and why: each says which file and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` or the environment cannot be read.
    #[error("cannot read the config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Larger than any config.
    #[error("the config file {path} is over {MAX_CONFIG_BYTES} bytes; is it the right file?")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not TOML.
    #[error("the config file {path} is not valid TOML")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What the parser saw.
        #[source]
        source: toml::de::Error,
    },
    /// A key that is no flag of the command.
    #[error(
        "{path}: `{key}` in {table} is not a flag of `{command}`; the keys it takes are: {valid}"
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Where in the file (`the top level`, `[share]`, `[profiles.web]`).
        table: String,
        /// The command it was checked against.
        command: String,
        /// Every key that would be accepted there.
        valid: String,
    },
    /// A value of the wrong kind for its flag.
    #[error("{path}: `{key}` in {table} must be {expected}")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Where in the file.
        table: String,
        /// What would do.
        expected: &'static str,
    },
    /// `--profile NAME` with no `[profiles.NAME]`.
    #[error("no profile `{name}` in {path}; it has: {available}")]
    NoProfile {
        /// The name asked for.
        name: String,
        /// The file, or where it was looked for.
        path: PathBuf,
        /// The profiles the file has.
        available: String,
    },
}

/// The platform's place for this tool's config: `~/.config/p2p-socket/config.toml` on Linux,
/// `~/Library/Application Support/p2p-socket/config.toml` on macOS, `%APPDATA%` on Windows.
pub fn default_path() -> Option<PathBuf> {
    dirs::config_dir().map(|dir| dir.join("p2p-socket").join("config.toml"))
}

/// The command line `args` (program name first) with the config file's flags put in: the file
/// named by `--config` (or [`CONFIG_ENV`]), else the default one if it exists, else none.
/// `cli` is the command's definition, the single source of what a key may be.
pub fn expand(cli: &Command, args: Vec<OsString>) -> Result<Vec<OsString>, ConfigError> {
    let scan = Scan::of(cli, &args);
    let explicit = scan
        .config
        .clone()
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
    let path = match explicit {
        Some(path) => path,
        None => match default_path().filter(|p| p.is_file()) {
            Some(path) => path,
            None if scan.profile.is_some() => {
                return Err(ConfigError::NoProfile {
                    name: scan.profile.unwrap_or_default(),
                    path: default_path().unwrap_or_else(|| PathBuf::from("config.toml")),
                    available: "(there is no config file)".into(),
                })
            }
            None => return Ok(args),
        },
    };
    let table = read(&path)?;
    let Some(at) = scan.subcommand else {
        return Ok(args);
    };
    let name = args[at].to_string_lossy().into_owned();
    let Some(sub) = cli.find_subcommand(&name) else {
        return Ok(args);
    };
    let flags = Flags {
        path: &path,
        command: sub,
        globals: cli,
        given: &args[at + 1..],
        before: &args[1..at],
    }
    .collect(&table, scan.profile.as_deref())?;
    let mut expanded = args[..=at].to_vec();
    expanded.extend(flags);
    expanded.extend_from_slice(&args[at + 1..]);
    Ok(expanded)
}

fn read(path: &Path) -> Result<toml::Table, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    text.parse().map_err(|source| ConfigError::Syntax {
        path: path.to_owned(),
        source,
    })
}

/// What the config needs to know of the command line before clap sees it: which subcommand
/// runs, and the `--config` and `--profile` given.
struct Scan {
    subcommand: Option<usize>,
    config: Option<PathBuf>,
    profile: Option<String>,
}

impl Scan {
    fn of(cli: &Command, args: &[OsString]) -> Scan {
        let mut scan = Scan {
            subcommand: None,
            config: None,
            profile: None,
        };
        let mut i = 1;
        while i < args.len() {
            let arg = args[i].to_string_lossy();
            if let Some(long) = arg.strip_prefix("--") {
                let (name, inline) = match long.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_owned())),
                    None => (long, None),
                };
                let takes_value = find_long(cli, name).is_some_and(takes_value);
                let value = match inline {
                    Some(v) => Some(v),
                    None if takes_value => {
                        i += 1;
                        args.get(i).map(|v| v.to_string_lossy().into_owned())
                    }
                    None => None,
                };
                match name {
                    "config" => scan.config = value.map(PathBuf::from),
                    "profile" => scan.profile = value,
                    _ => {}
                }
            } else if !arg.starts_with('-') && scan.subcommand.is_none() {
                scan.subcommand = Some(i);
            }
            // Flags after the subcommand may be the globals too (`share --config x`).
            i += 1;
        }
        scan
    }
}

/// Collects the file's flags for one command, leaving out those the command line or the
/// environment already sets.
struct Flags<'a> {
    path: &'a Path,
    command: &'a Command,
    globals: &'a Command,
    /// The command line after the subcommand's name.
    given: &'a [OsString],
    /// The command line between the program and the subcommand (global flags).
    before: &'a [OsString],
}

impl Flags<'_> {
    fn collect(
        &self,
        file: &toml::Table,
        profile: Option<&str>,
    ) -> Result<Vec<OsString>, ConfigError> {
        let command = self.command.get_name();
        let profiles = file.get("profiles");
        // Stronger sources later: a key set twice keeps its last value.
        let mut layers: Vec<(String, &toml::Table)> = vec![("the top level".into(), file)];
        if let Some(section) = file.get(command) {
            layers.push((format!("[{command}]"), self.table(section, command)?));
        }
        if let Some(name) = profile {
            let found = profiles
                .and_then(|p| p.as_table())
                .and_then(|p| p.get(name));
            let Some(found) = found else {
                let available = profiles
                    .and_then(|p| p.as_table())
                    .map(|p| p.keys().cloned().collect::<Vec<_>>().join(", "))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "no [profiles.NAME] tables".into());
                return Err(ConfigError::NoProfile {
                    name: name.into(),
                    path: self.path.to_owned(),
                    available,
                });
            };
            let table_name = format!("[profiles.{name}]");
            layers.push((table_name.clone(), self.table(found, &table_name)?));
        }
        let mut chosen: Vec<(String, &Arg, &toml::Value, String)> = Vec::new();
        for (where_, table) in layers {
            for (key, value) in table {
                if where_ == "the top level" && self.is_section(key, value) {
                    continue;
                }
                let arg = self.arg(key, &where_)?;
                chosen.retain(|(k, ..)| k != arg.get_id().as_str());
                chosen.push((arg.get_id().to_string(), arg, value, where_.clone()));
            }
        }
        let mut out = Vec::new();
        for (_, arg, value, where_) in chosen {
            if self.set_elsewhere(arg) {
                continue;
            }
            self.render(arg, value, &where_, &mut out)?;
        }
        Ok(out)
    }

    /// Top-level keys that are tables of their own, not flags. `bootstrap` is both a command
    /// (`[bootstrap]`) and a flag of every command (`bootstrap = "host:port"`): the value's
    /// kind tells them apart.
    fn is_section(&self, key: &str, value: &toml::Value) -> bool {
        key == "profiles" || (value.is_table() && self.globals.find_subcommand(key).is_some())
    }

    fn table<'t>(
        &self,
        value: &'t toml::Value,
        where_: &str,
    ) -> Result<&'t toml::Table, ConfigError> {
        value.as_table().ok_or_else(|| ConfigError::BadValue {
            path: self.path.to_owned(),
            key: where_.trim_matches(['[', ']']).into(),
            table: "the file".into(),
            expected: "a table of flags",
        })
    }

    fn arg(&self, key: &str, where_: &str) -> Result<&Arg, ConfigError> {
        let long = key.replace('_', "-");
        let found = if is_reserved(&long) {
            None
        } else {
            find_long(self.command, &long)
                .or_else(|| find_long(self.globals, &long).filter(|a| a.is_global_set()))
        };
        found.ok_or_else(|| {
            let mut valid: Vec<String> = self
                .command
                .get_arguments()
                .chain(self.globals.get_arguments().filter(|a| a.is_global_set()))
                .filter_map(|a| a.get_long())
                .filter(|l| !is_reserved(l))
                .map(str::to_owned)
                .collect();
            valid.sort();
            valid.dedup();
            ConfigError::UnknownKey {
                path: self.path.to_owned(),
                key: key.into(),
                table: where_.into(),
                command: format!("{} {}", self.globals.get_name(), self.command.get_name()),
                valid: valid.join(", "),
            }
        })
    }

    /// The command line names the flag (in any spelling), or its environment variable is set:
    /// either beats the file.
    fn set_elsewhere(&self, arg: &Arg) -> bool {
        if arg
            .get_env()
            .is_some_and(|env| std::env::var_os(env).is_some())
        {
            return true;
        }
        let longs: Vec<&str> = arg
            .get_long()
            .into_iter()
            .chain(arg.get_all_aliases().unwrap_or_default())
            .collect();
        let shorts: Vec<char> = arg
            .get_short()
            .into_iter()
            .chain(arg.get_all_short_aliases().unwrap_or_default())
            .collect();
        self.before.iter().chain(self.given).any(|given| {
            let given = given.to_string_lossy();
            if let Some(long) = given.strip_prefix("--") {
                let name = long.split_once('=').map_or(long, |(n, _)| n);
                longs.contains(&name)
            } else if let Some(short) = given.strip_prefix('-') {
                // `-p 8080`, `-p8080`, `-vv`: the first letter names the flag.
                short.chars().next().is_some_and(|c| shorts.contains(&c))
            } else {
                false
            }
        })
    }

    fn render(
        &self,
        arg: &Arg,
        value: &toml::Value,
        where_: &str,
        out: &mut Vec<OsString>,
    ) -> Result<(), ConfigError> {
        let long = arg.get_long().unwrap_or_default();
        let bad = |expected| ConfigError::BadValue {
            path: self.path.to_owned(),
            key: long.into(),
            table: where_.into(),
            expected,
        };
        match arg.get_action() {
            ArgAction::SetTrue => match value.as_bool() {
                Some(true) => out.push(format!("--{long}").into()),
                Some(false) => {}
                None => return Err(bad("true or false")),
            },
            ArgAction::Count => {
                let n = value
                    .as_integer()
                    .filter(|n| (0..=8).contains(n))
                    .ok_or_else(|| bad("a count from 0 to 8"))?;
                out.extend((0..n).map(|_| OsString::from(format!("--{long}"))));
            }
            _ => {
                let many = matches!(arg.get_action(), ArgAction::Append)
                    || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
                let items: Vec<&toml::Value> = match value.as_array() {
                    Some(items) if many => items.iter().collect(),
                    Some(_) => return Err(bad("a single value, not a list")),
                    None => vec![value],
                };
                for item in items {
                    let text = match item {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(n) => n.to_string(),
                        toml::Value::Float(f) => f.to_string(),
                        toml::Value::Boolean(b) => b.to_string(),
                        _ => return Err(bad("a string, a number or a list of them")),
                    };
                    out.push(format!("--{long}={text}").into());
                }
            }
        }
        Ok(())
    }
}

/// Flags a config file cannot set: which config and profile to read, and the ones that only
/// print something.
fn is_reserved(long: &str) -> bool {
    matches!(long, "config" | "profile" | "help" | "version")
}

fn find_long<'c>(command: &'c Command, long: &str) -> Option<&'c Arg> {
    command.get_arguments().find(|a| {
        a.get_long() == Some(long) || a.get_all_aliases().unwrap_or_default().contains(&long)
    })
}

fn takes_value(arg: &Arg) -> bool {
    !matches!(
        arg.get_action(),
        ArgAction::SetTrue
            | ArgAction::SetFalse
            | ArgAction::Count
            | ArgAction::Help
            | ArgAction::HelpShort
            | ArgAction::HelpLong
            | ArgAction::Version
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    #[command(name = "t")]
    struct Cli {
        #[arg(long, global = true)]
        bootstrap: Option<String>,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[arg(long, global = true)]
        profile: Option<String>,
        #[arg(short, long, global = true, action = ArgAction::Count)]
        verbose: u8,
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Share {
            #[arg(short, long)]
            port: u16,
            #[arg(long)]
            allow: Vec<String>,
            #[arg(long)]
            udp: bool,
            #[arg(long, env = "T_CONFIG_TEST_RELAY")]
            relay: Option<String>,
        },
        Connect {
            #[arg(short, long)]
            key: String,
        },
        Bootstrap {
            #[arg(long)]
            port: u16,
        },
    }

    fn expand_with(file: &str, args: &[&str]) -> Result<Vec<String>, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "p2p-socket-config-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["t".into()];
        argv.extend(args.iter().map(OsString::from));
        argv.push("--config".into());
        argv.push(path.clone().into());
        let out = expand(&<Cli as clap::CommandFactory>::command(), argv);
        std::fs::remove_dir_all(&dir).unwrap();
        out.map(|v| {
            v.into_iter()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| !s.contains("config.toml") && s != "--config")
                .collect()
        })
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn layers_apply_weakest_first_and_the_command_line_wins() {
        let file = r#"
            bootstrap = "a:1"
            verbose = 2
            [share]
            port = 1
            allow = ["k1", "k2"]
            [profiles.web]
            port = 8080
            udp = true
        "#;
        let out = expand_with(file, &["share", "--profile", "web"]).unwrap();
        assert_eq!(
            out,
            [
                "t",
                "share",
                "--bootstrap=a:1",
                "--verbose",
                "--verbose",
                "--allow=k1",
                "--allow=k2",
                "--port=8080",
                "--udp",
                "--profile",
                "web"
            ]
        );
        // Given on the command line in any spelling: the file's value is left out.
        let out = expand_with(file, &["-v", "share", "-p9", "--allow=x"]).unwrap();
        assert_eq!(
            out,
            ["t", "-v", "share", "--bootstrap=a:1", "-p9", "--allow=x"]
        );
        let parsed = Cli::try_parse_from(out).unwrap();
        assert!(matches!(parsed.command, Sub::Share { port: 9, .. }));
    }

    #[test]
    fn unknown_keys_and_wrong_values_name_the_file_and_the_choices() {
        let err = expand_with("[share]\nprot = 1\n", &["share"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`prot` in [share]"), "{text}");
        assert!(text.contains("port"), "{text}");
        assert!(!text.contains("config,"), "{text}");
        let err = expand_with("[share]\nudp = \"yes\"\n", &["share"]).unwrap_err();
        assert!(err.to_string().contains("true or false"), "{err}");
        let err = expand_with("[share]\nport = [1, 2]\n", &["share"]).unwrap_err();
        assert!(err.to_string().contains("single value"), "{err}");
        let err = expand_with("[connect]\nport = 1\n", &["connect"]).unwrap_err();
        assert!(err.to_string().contains("`t connect`"), "{err}");
        let err = expand_with("share = 3\n", &["share"]).unwrap_err();
        assert!(err.to_string().contains("a table of flags"), "{err}");
        let err = expand_with("[share\n", &["share"]).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }

    #[test]
    fn a_missing_profile_lists_the_ones_there_are() {
        let err =
            expand_with("[profiles.db]\nport = 5432\n", &["share", "--profile=web"]).unwrap_err();
        assert!(err.to_string().contains("no profile `web`"), "{err}");
        assert!(err.to_string().contains("db"), "{err}");
    }

    #[test]
    fn the_environment_beats_the_file() {
        // A name only this test sets, so parallel tests cannot see it.
        std::env::set_var("T_CONFIG_TEST_RELAY", "from-env");
        let out = expand_with("[share]\nrelay = \"from-file\"\nport = 1\n", &["share"]).unwrap();
        std::env::remove_var("T_CONFIG_TEST_RELAY");
        assert_eq!(out, ["t", "share", "--port=1"]);
    }

    #[test]
    fn a_bootstrap_table_is_the_bootstrap_command_s() {
        let file = "[bootstrap]\nport = 3\nbootstrap = \"a:1\"\n";
        let out = expand_with(file, &["bootstrap"]).unwrap();
        assert_eq!(out, ["t", "bootstrap", "--bootstrap=a:1", "--port=3"]);
        let out = expand_with(file, &["connect", "-k", "k"]).unwrap();
        assert_eq!(out, ["t", "connect", "-k", "k"]);
    }

    #[test]
    fn other_commands_ignore_other_tables() {
        let out = expand_with("[share]\nport = 1\n[connect]\nkey = \"k\"\n", &["connect"]).unwrap();
        assert_eq!(out, ["t", "connect", "--key=k"]);
    }
}
