//! `blixard tls trust`: pin a cluster's CA on first use, as ssh pins a
//! host key. A node presents its certificate followed by the CA's; the
//! operator confirms the CA's SHA-256 fingerprint (shown by `blixard tls
//! ca fingerprint` where the CA was made, and in every node's start-up
//! log), and it is kept as the CA file every later command trusts.
//!
//! Invariant: nothing is written unless the node proved it holds the key
//! of a certificate that chains to the presented CA, and the operator
//! confirmed that CA's fingerprint (interactively, or with
//! `--fingerprint`); a pinned CA is never silently replaced by another.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use blixard_api::tls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Serialize;

use crate::cli::OutputFormat;
use crate::exit::{self, Exit};
use crate::output;

const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// The CA a cluster presented and where it is now trusted from.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Trusted {
    /// The file later commands read (`--ca-file`, or by default).
    pub ca_file: PathBuf,
    /// SHA-256 of the CA certificate (DER), hex.
    pub ca_sha256: String,
    /// The node that presented it.
    pub node_id: u64,
}

/// A fingerprint as operators paste it: hex, any case, colons allowed.
fn normalized(fingerprint: &str) -> String {
    fingerprint
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase()
}

pub async fn run(
    addr: &str,
    fingerprint: Option<String>,
    out: Option<PathBuf>,
    format: OutputFormat,
) -> anyhow::Result<()> {
    blixard_api::validate::address(addr)?;
    let out = out
        .or_else(crate::settings::pinned_ca_file)
        .ok_or_else(|| exit::error(Exit::Usage, "no --out and no $HOME to keep the CA under"))?;
    let presented = presented_ca(addr).await?;
    let confirmed = match fingerprint {
        Some(expected) => normalized(&expected) == presented.ca_sha256,
        None if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() => {
            confirm(addr, &presented)?
        }
        None => {
            return Err(exit::error(
                Exit::Usage,
                format!(
                    "{addr} presents cluster CA sha256 {}; not a terminal, so pass --fingerprint \
                     (compare with `blixard tls ca fingerprint` where the CA was made, or a \
                     node's start-up log)",
                    presented.ca_sha256
                ),
            ))
        }
    };
    if !confirmed {
        return Err(exit::error(
            Exit::Unauthenticated,
            format!(
                "{addr} presents cluster CA sha256 {}, not the one confirmed; nothing written",
                presented.ca_sha256
            ),
        ));
    }
    keep(&out, &presented.ca_pem)?;
    let trusted = Trusted {
        ca_file: out,
        ca_sha256: presented.ca_sha256,
        node_id: presented.node_id,
    };
    output::print(format, &trusted, |t| {
        let mut table = output::table(&["TRUSTED CA", "SHA-256", "PRESENTED BY"]);
        table.add_row(vec![
            t.ca_file.display().to_string(),
            t.ca_sha256.clone(),
            format!("node {}", t.node_id),
        ]);
        table
    })
}

fn confirm(addr: &str, presented: &Presented) -> anyhow::Result<bool> {
    eprintln!(
        "{addr} is node {} of a cluster whose CA has SHA-256 fingerprint\n  {}\nCompare it with \
         `blixard tls ca fingerprint` where the CA was made. Trust it? [y/N] ",
        presented.node_id, presented.ca_sha256
    );
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| exit::error(Exit::Usage, format!("reading the answer: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Writes `ca_pem` to `out` (0644), or leaves an identical one; refuses
/// to replace a different one.
fn keep(out: &Path, ca_pem: &str) -> anyhow::Result<()> {
    match std::fs::read_to_string(out) {
        Ok(existing) if existing.trim() == ca_pem.trim() => return Ok(()),
        Ok(_) => {
            return Err(exit::error(
                Exit::Usage,
                format!(
                    "{} already trusts another CA; if the cluster's CA really changed, remove \
                     that file and run this again",
                    out.display()
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(exit::error(Exit::Usage, format!("{}: {e}", out.display()))),
    }
    tls::write_new(out, ca_pem, 0o644).map_err(|e| exit::error(Exit::Usage, e.to_string()))
}

/// What a node presented, checked to hang together.
struct Presented {
    ca_pem: String,
    ca_sha256: String,
    node_id: u64,
}

/// Connects to `addr`, completes a TLS handshake in which the node
/// proves it holds its certificate's key, and returns the CA it presented
/// after its certificate, once that certificate is checked to chain to it.
async fn presented_ca(addr: &str) -> anyhow::Result<Presented> {
    let unavailable = |detail: String| exit::error(Exit::Unavailable, detail);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unavailable(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CheckedAfterwards(provider)))
        .with_no_client_auth();
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| unavailable(format!("cannot reach {addr}: {e}")))?;
        let name = ServerName::try_from(tls::SERVER_NAME).expect("a valid DNS name");
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| {
                unavailable(format!(
                    "{addr}: no TLS handshake ({e}); is it a blixard node with security on?"
                ))
            })
    };
    let stream = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect)
        .await
        .map_err(|_| unavailable(format!("{addr}: no answer in {CONNECT_TIMEOUT_MS} ms")))??;
    let chain = stream.get_ref().1.peer_certificates().unwrap_or_default();
    let refused = |detail: String| exit::error(Exit::Unauthenticated, format!("{addr}: {detail}"));
    let (Some(leaf), Some(ca)) = (chain.first(), chain.get(1)) else {
        return Err(refused(
            "the node presented no CA certificate after its own (a version before `tls trust`?)"
                .into(),
        ));
    };
    let ca_pem = pem::encode_config(
        &pem::Pem::new("CERTIFICATE", ca.as_ref().to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    let node_id = blixard_api::identity::NodeVerifier::new(&ca_pem)
        .and_then(|verifier| verifier.node_id(leaf.as_ref()))
        .map_err(|e| {
            refused(format!(
                "its certificate does not chain to the CA it sent: {e}"
            ))
        })?;
    Ok(Presented {
        ca_sha256: tls::fingerprint_sha256_der(ca.as_ref()),
        ca_pem,
        node_id,
    })
}

/// Accepts any certificate during the handshake ([`presented_ca`] checks
/// the chain afterwards, against the CA the operator confirms), but still
/// checks the handshake signature: the node must hold its key.
#[derive(Debug)]
struct CheckedAfterwards(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for CheckedAfterwards {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_compare_as_operators_paste_them() {
        assert_eq!(normalized("AB:cd:01"), "abcd01");
        assert_eq!(normalized("abcd01"), "abcd01");
    }

    #[test]
    fn a_pinned_ca_is_never_replaced_by_another() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ca.pem");
        keep(&out, "one").unwrap();
        keep(&out, "one\n").unwrap();
        let error = keep(&out, "two").unwrap_err().to_string();
        assert!(error.contains("already trusts another CA"), "{error}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "one");
    }
}
