//! Printing results as a table (for people) or JSON/YAML (for scripts).

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::Serialize;

use crate::cli::OutputFormat;

/// Prints `value` in `format`; `table` builds the human view.
pub fn print<T: Serialize>(
    format: OutputFormat,
    value: &T,
    table: impl FnOnce(&T) -> Table,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Table => println!("{}", table(value)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(value)?),
        OutputFormat::Yaml => print!("{}", serde_yaml::to_string(value)?),
    }
    Ok(())
}

/// A table with a header row in the house style.
pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(header.to_vec());
    table
}
