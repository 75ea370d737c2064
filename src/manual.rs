//! Shell completions and man pages, generated from the CLI definition itself so they cannot
//! fall behind a flag.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::Command;
use clap_complete::Shell;

/// Writes the completion script for `shell` to `out`.
pub fn completions(mut cli: Command, shell: Shell, out: &mut impl Write) {
    let name = cli.get_name().to_owned();
    clap_complete::generate(shell, &mut cli, name, out);
}

/// The man page of the whole command to `out`, or, with `dir`, a page per command into it
/// (`p2p-socket.1`, `p2p-socket-share.1`, ...), as packagers install them.
pub fn man(cli: Command, dir: Option<&Path>, out: &mut impl Write) -> Result<()> {
    match dir {
        None => clap_mangen::Man::new(cli)
            .render(out)
            .context("cannot write the man page"),
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cli, dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            writeln!(out, "Wrote the man pages into {}", dir.display())?;
            Ok(())
        }
    }
}
