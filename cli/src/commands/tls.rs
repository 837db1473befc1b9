//! `blixard tls ca create` and `blixard tls cert create`: the cluster CA
//! and node certificates, as `nomad tls` makes them. The files land where
//! an agent looks by default (`DATA_DIR/tls`) when `--out` says so.

use std::path::{Path, PathBuf};

use blixard_api::identity::GOSSIP_KEY_FILE;
use blixard_api::tls;
use serde::Serialize;

use crate::cli::{OutputFormat, TlsCaCommand, TlsCertCommand, TlsCommand};
use crate::exit::{self, Exit};
use crate::output;

/// The files a `tls` command wrote.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Written {
    pub files: Vec<PathBuf>,
}

/// A CA's fingerprint.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Fingerprint {
    pub ca_file: PathBuf,
    /// SHA-256 of the CA certificate (DER), hex.
    pub ca_sha256: String,
}

pub fn run(command: TlsCommand, format: OutputFormat) -> anyhow::Result<()> {
    let written = match command {
        TlsCommand::Ca(TlsCaCommand::Create { out, name }) => create_ca(&out, &name)?,
        TlsCommand::Ca(TlsCaCommand::Fingerprint { ca_dir }) => {
            let ca_file = ca_dir.join(tls::CA_FILE);
            let ca_pem = tls::read(&ca_file).map_err(failed)?;
            let shown = Fingerprint {
                ca_sha256: tls::fingerprint_sha256(&ca_pem).map_err(failed)?,
                ca_file,
            };
            return output::print(format, &shown, |shown| {
                let mut table = output::table(&["CA", "SHA-256"]);
                table.add_row(vec![
                    shown.ca_file.display().to_string(),
                    shown.ca_sha256.clone(),
                ]);
                table
            });
        }
        TlsCommand::Trust { .. } => {
            return Err(exit::error(
                Exit::Usage,
                "`tls trust` talks to a node: it runs with the cluster commands",
            ))
        }
        TlsCommand::Cert(TlsCertCommand::Create {
            ca_dir,
            node_id,
            out,
        }) => create_node(&ca_dir, node_id, &out)?,
    };
    output::print(format, &written, |written| {
        let mut table = output::table(&["WRITTEN"]);
        for file in &written.files {
            table.add_row(vec![file.display().to_string()]);
        }
        table
    })
}

fn failed(error: tls::TlsError) -> anyhow::Error {
    let exit = match &error {
        tls::TlsError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
            Exit::Usage
        }
        tls::TlsError::Invalid { .. } => Exit::Usage,
        _ => Exit::Failed,
    };
    exit::error(exit, error.to_string())
}

/// Writes a new CA into `out`.
pub fn create_ca(out: &Path, name: &str) -> anyhow::Result<Written> {
    let ca = tls::create_ca(name).map_err(failed)?;
    tls::write_ca(out, &ca).map_err(failed)?;
    Ok(Written {
        files: [tls::CA_FILE, tls::CA_KEY_FILE, GOSSIP_KEY_FILE]
            .iter()
            .map(|name| out.join(name))
            .collect(),
    })
}

/// Writes node `node_id`'s certificate, key, the CA certificate and the
/// cluster's gossip keys into `out`.
pub fn create_node(ca_dir: &Path, node_id: u64, out: &Path) -> anyhow::Result<Written> {
    blixard_api::validate::node_id(node_id)?;
    let ca = tls::read_ca(ca_dir).map_err(failed)?;
    let gossip_keys = tls::read_gossip_key_text(ca_dir).map_err(failed)?;
    let node = tls::issue_node_cert(&ca, node_id).map_err(failed)?;
    tls::write_node(out, &ca, &gossip_keys, &node).map_err(failed)?;
    Ok(Written {
        files: [
            tls::CA_FILE,
            GOSSIP_KEY_FILE,
            tls::NODE_CERT_FILE,
            tls::NODE_KEY_FILE,
        ]
        .iter()
        .map(|name| out.join(name))
        .collect(),
    })
}
