//! `blixard events [--follow]`.

use std::io::Write;

use blixard_api::pb;
use serde::Serialize;

use crate::cli::OutputFormat;
use crate::client::{self, status_error};

#[derive(Serialize, schemars::JsonSchema)]
pub struct EventView {
    revision: u64,
    at_unix_ms: u64,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    vm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<u64>,
    message: String,
}

/// Prints one line per event (a table with its header; JSON: one object
/// per line; YAML: one document each) so the output can be piped and
/// followed.
pub async fn run(
    addr: &str,
    format: OutputFormat,
    follow: bool,
    recent: u32,
) -> anyhow::Result<()> {
    let mut stream = client::cluster(addr)
        .await?
        .events(pb::EventsRequest {
            follow,
            recent_max: recent,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if format == OutputFormat::Table {
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "{:>8}  {:<20}  {:<17} MESSAGE",
            "REVISION", "TIME", "KIND"
        )?;
        stdout.flush()?;
    }
    while let Some(event) = stream.message().await.map_err(status_error)? {
        let view = EventView {
            revision: event.revision,
            at_unix_ms: event.at_unix_ms,
            kind: event.kind,
            vm: (!event.vm.is_empty()).then_some(event.vm),
            node_id: (event.node_id != 0).then_some(event.node_id),
            message: event.message,
        };
        let mut stdout = std::io::stdout().lock();
        match format {
            OutputFormat::Table => writeln!(
                stdout,
                "{:>8}  {:<20}  {:<17} {}",
                view.revision,
                time_text(view.at_unix_ms),
                view.kind,
                view.message
            )?,
            OutputFormat::Json => writeln!(stdout, "{}", serde_json::to_string(&view)?)?,
            OutputFormat::Yaml => write!(stdout, "---\n{}", serde_yaml_ng::to_string(&view)?)?,
        }
        stdout.flush()?;
    }
    Ok(())
}

/// When an event happened, in UTC to the second (`-`: not known).
fn time_text(at_unix_ms: u64) -> String {
    match at_unix_ms {
        0 => "-".into(),
        at => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(at),
        )
        .to_string(),
    }
}
