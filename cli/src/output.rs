//! Printing results as a table (for people) or JSON/YAML (for scripts).

use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};
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
        OutputFormat::Yaml => print!("{}", serde_yaml_ng::to_string(value)?),
    }
    Ok(())
}

/// A table with a header row in the house style.
pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    // Dynamic: on a terminal, wrap cells so the table fits its width.
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    table
}

/// A spinner on stderr with elapsed time; indicatif draws nothing when
/// stderr is not a terminal, so piped output stays clean.
pub fn spinner(message: &str) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
        .expect("the template is valid");
    let spinner = indicatif::ProgressBar::new_spinner().with_style(style);
    spinner.set_message(message.to_string());
    spinner.enable_steady_tick(std::time::Duration::from_millis(100));
    spinner
}

/// A progress bar on stderr for `total` steps (hidden when not a terminal).
pub fn bar(total: u64, message: &str) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
        .expect("the template is valid");
    let bar = indicatif::ProgressBar::new(total).with_style(style);
    bar.set_message(message.to_string());
    bar
}
