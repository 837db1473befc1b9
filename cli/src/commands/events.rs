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

/// Prints one line per event (JSON: one object per line; YAML: one
/// document each) so the output can be piped and followed.
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
                "{:>8}  {:<17} {}",
                view.revision, view.kind, view.message
            )?,
            OutputFormat::Json => writeln!(stdout, "{}", serde_json::to_string(&view)?)?,
            OutputFormat::Yaml => write!(stdout, "---\n{}", serde_yaml_ng::to_string(&view)?)?,
        }
        stdout.flush()?;
    }
    Ok(())
}
