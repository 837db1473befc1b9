//! `blixard completions SHELL` and `blixard man`: generated from the clap
//! grammar, so they always list exactly the commands and flags there are.

use std::path::Path;

use clap::CommandFactory;
use serde::Serialize;

use crate::cli::{Cli, OutputFormat};
use crate::output;

pub fn script(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "blixard", &mut std::io::stdout());
    Ok(())
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct ManView {
    directory: String,
    pages: Vec<String>,
}

/// Writes `blixard.1` and one page per subcommand (`blixard-vm-create.1`).
pub fn man(out: &Path, format: OutputFormat) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    let mut command = Cli::command();
    command.build();
    clap_mangen::generate_to(command, out)
        .map_err(|e| anyhow::anyhow!("cannot write man pages into {}: {e}", out.display()))?;
    let mut pages: Vec<String> = std::fs::read_dir(out)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("blixard") && name.ends_with(".1"))
        .collect();
    pages.sort();
    let view = ManView {
        directory: out.display().to_string(),
        pages,
    };
    output::print(format, &view, |v| {
        let mut table = output::table(&["MAN PAGE"]);
        for page in &v.pages {
            table.add_row(vec![format!("{}/{page}", v.directory)]);
        }
        table
    })
}
