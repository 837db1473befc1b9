//! The cluster's certificates, and the TLS settings built from them.
//!
//! Invariants:
//! - A node certificate is signed by the cluster CA and names the node in
//!   exactly one URI SAN, `spiffe://blixard/node/ID`; that SAN is the only
//!   place a peer's node id is ever read from ([`node_id_of`]).
//! - Every certificate the CA signs carries the DNS name [`SERVER_NAME`]
//!   and `node-ID.blixard` ([`node_server_name`]); clients verify one of
//!   those names rather than an address, so a node keeps its certificate
//!   when it moves to a new address, and a node dialling a known peer
//!   checks it reached that peer.
//! - Private keys (and gossip keys) are written 0600 and never overwritten
//!   by these helpers.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::identity::{self, GOSSIP_KEY_FILE};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The name every node certificate holds and every client checks.
pub const SERVER_NAME: &str = "blixard";
const NODE_URI_PREFIX: &str = "spiffe://blixard/node/";

/// File names in a TLS directory (`blixard tls ...`, `DATA_DIR/tls`).
pub const CA_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const NODE_CERT_FILE: &str = "node.pem";
pub const NODE_KEY_FILE: &str = "node-key.pem";

/// Why certificates could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen refused the parameters or the key.
    #[error("certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A PEM file holds no certificate, or not one Blixard made.
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// A certificate, key or signature another node presented was refused.
    #[error("{reason}")]
    Rejected { reason: String },
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    // Never print a private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey").finish_non_exhaustive()
    }
}

/// Creates a new cluster CA named after the cluster.
pub fn create_ca(cluster_name: &str) -> Result<CertifiedKey, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        format!("Blixard cluster CA ({cluster_name})"),
    );
    params.distinguished_name = name;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues the certificate of node `node_id` (server and client use).
pub fn issue_node_cert(ca: &CertifiedKey, node_id: u64) -> Result<CertifiedKey, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let cert = node_params(node_id)?.signed_by(&key, &issuer)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A new key for a node and a signing request for it (PEM), as a node
/// joining with a join token makes them: the key never leaves the node.
pub fn create_node_csr() -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    Ok((node_csr_for(&key)?, key.serialize_pem()))
}

/// A signing request for the key in `key_pem` (a node asking again for
/// the certificate of a key it already made).
pub fn create_node_csr_for(key_pem: &str) -> Result<String, TlsError> {
    node_csr_for(&KeyPair::from_pem(key_pem)?)
}

fn node_csr_for(key: &KeyPair) -> Result<String, TlsError> {
    let request = CertificateParams::new(Vec::<String>::new())?.serialize_request(key)?;
    Ok(request.pem()?)
}

/// A certificate signed for a node's signing request.
#[derive(Debug)]
pub struct SignedNode {
    pub cert_pem: String,
    /// SHA-256 of the certified key (SubjectPublicKeyInfo DER), hex: what
    /// a join token is spent on.
    pub key_sha256: String,
}

/// Signs the key in `csr_pem` (whose signature proves its holder has the
/// key) as node `node_id`'s certificate. Only the key is taken from the
/// request: the names, usages and lifetime are the CA's to set.
pub fn sign_node_csr(
    ca: &CertifiedKey,
    node_id: u64,
    csr_pem: &str,
) -> Result<SignedNode, TlsError> {
    let request = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let cert_pem = node_params(node_id)?
        .signed_by(&request.public_key, &issuer)?
        .pem();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&request.public_key);
    Ok(SignedNode {
        cert_pem,
        key_sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, &spki)),
    })
}

/// What every node certificate says (see the module invariants).
fn node_params(node_id: u64) -> Result<CertificateParams, TlsError> {
    let mut params =
        CertificateParams::new(vec![SERVER_NAME.to_string(), node_server_name(node_id)])?;
    params.subject_alt_names.push(SanType::URI(
        format!("{NODE_URI_PREFIX}{node_id}").try_into()?,
    ));
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("blixard node {node_id}"));
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

/// SHA-256 of the (first) certificate in `cert_pem`, over its DER, hex:
/// what `openssl x509 -fingerprint -sha256` shows, without the colons.
pub fn fingerprint_sha256(cert_pem: &str) -> Result<String, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let invalid = |reason: String| TlsError::Rejected { reason };
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .ok_or_else(|| invalid("no certificate in the PEM text".into()))?
        .map_err(|e| invalid(format!("certificate PEM: {e}")))?;
    Ok(fingerprint_sha256_der(der.as_ref()))
}

/// SHA-256 of a certificate's DER, hex.
pub fn fingerprint_sha256_der(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// The TLS server name only node `node_id`'s certificate holds.
pub fn node_server_name(node_id: u64) -> String {
    format!("node-{node_id}.{SERVER_NAME}")
}

/// The node id a certificate (DER) names, if it names exactly one.
pub fn node_id_of(cert_der: &[u8]) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let names = cert.subject_alternative_name().ok()??;
    let mut ids = names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(NODE_URI_PREFIX),
            _ => None,
        });
    let id = ids.next()?.parse::<u64>().ok().filter(|id| *id != 0)?;
    ids.next().is_none().then_some(id)
}

/// The node id of the first certificate in a PEM file's text, once it is
/// known to hold every name peers check (`blixard`, `node-ID.blixard`).
pub fn node_id_of_pem(path: &Path, pem_text: &str) -> Result<u64, TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .map_err(|_| invalid("no PEM certificate in it".into()))?;
    let node_id = node_id_of(&pem.contents)
        .ok_or_else(|| invalid("not a Blixard node certificate (no node id)".into()))?;
    let names = dns_names(&pem.contents);
    for wanted in [SERVER_NAME.to_string(), node_server_name(node_id)] {
        if !names.contains(&wanted) {
            return Err(invalid(format!(
                "lacks the name {wanted:?} peers check; issue it again with `blixard tls cert create`"
            )));
        }
    }
    Ok(node_id)
}

fn dns_names(cert_der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return Vec::new();
    };
    let Ok(Some(names)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect()
}

/// Reads a PEM file, naming it in the error.
pub fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `text` to a new file (never over an existing one), with `mode`.
pub fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(io)
}

/// Writes a CA into `dir` (`ca.pem`, `ca-key.pem`), with a new gossip key
/// for its cluster (`gossip.key`).
pub fn write_ca(dir: &Path, ca: &CertifiedKey) -> Result<(), TlsError> {
    write_new(&dir.join(CA_FILE), &ca.cert_pem, 0o644)?;
    write_new(&dir.join(CA_KEY_FILE), &ca.key_pem, 0o600)?;
    write_new(
        &dir.join(GOSSIP_KEY_FILE),
        &identity::create_gossip_key()?,
        0o600,
    )
}

/// Reads the CA written by [`write_ca`].
pub fn read_ca(dir: &Path) -> Result<CertifiedKey, TlsError> {
    Ok(CertifiedKey {
        cert_pem: read(&dir.join(CA_FILE))?,
        key_pem: read(&dir.join(CA_KEY_FILE))?,
    })
}

/// Writes what a node needs into `dir`: the CA certificate (not its key),
/// the cluster's gossip keys (the text of the CA directory's `gossip.key`),
/// the node's certificate and key.
pub fn write_node(
    dir: &Path,
    ca: &CertifiedKey,
    gossip_keys: &str,
    node: &CertifiedKey,
) -> Result<(), TlsError> {
    identity::parse_gossip_keys(&dir.join(GOSSIP_KEY_FILE), gossip_keys)?;
    write_new(&dir.join(CA_FILE), &ca.cert_pem, 0o644)?;
    write_new(&dir.join(GOSSIP_KEY_FILE), gossip_keys, 0o600)?;
    write_new(&dir.join(NODE_CERT_FILE), &node.cert_pem, 0o644)?;
    write_new(&dir.join(NODE_KEY_FILE), &node.key_pem, 0o600)
}

/// The text of a CA directory's gossip key file.
pub fn read_gossip_key_text(ca_dir: &Path) -> Result<String, TlsError> {
    read(&ca_dir.join(GOSSIP_KEY_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem_text: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
            .unwrap()
            .1
            .contents
    }

    #[test]
    fn node_certificates_carry_exactly_their_node_id() {
        let ca = create_ca("test").unwrap();
        let node = issue_node_cert(&ca, 7).unwrap();
        assert_eq!(node_id_of(&der(&node.cert_pem)), Some(7));
        let path = Path::new("node.pem");
        assert_eq!(node_id_of_pem(path, &node.cert_pem).unwrap(), 7);
        assert!(node_id_of_pem(path, &ca.cert_pem).is_err());
        assert_eq!(node_id_of(&der(&ca.cert_pem)), None, "the CA is no node");
        assert_eq!(node_id_of(b"garbage"), None);
        assert!(!format!("{node:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_signing_request_gets_the_cas_names_not_its_own() {
        let ca = create_ca("test").unwrap();
        let (csr, key_pem) = create_node_csr().unwrap();
        let signed = sign_node_csr(&ca, 9, &csr).unwrap();
        let cert_pem = signed.cert_pem;
        assert_eq!(node_id_of_pem(Path::new("node.pem"), &cert_pem).unwrap(), 9);
        // Asking again for the same key names the same key; another key
        // another.
        let again = sign_node_csr(&ca, 9, &create_node_csr_for(&key_pem).unwrap()).unwrap();
        assert_eq!(again.key_sha256, signed.key_sha256);
        assert_eq!(signed.key_sha256.len(), 64);
        let (other, _) = create_node_csr().unwrap();
        assert_ne!(
            sign_node_csr(&ca, 9, &other).unwrap().key_sha256,
            signed.key_sha256
        );
        assert!(key_pem.contains("PRIVATE KEY") && !cert_pem.contains("PRIVATE"));
        // The certificate carries the requester's key.
        let node = CertifiedKey { cert_pem, key_pem };
        let signer = crate::identity::NodeSigner::new(&node).unwrap();
        let verifier = crate::identity::NodeVerifier::new(&ca.cert_pem).unwrap();
        let signature = signer.sign(b"m").unwrap();
        verifier
            .check_signature(signer.certificate_der(), b"m", &signature)
            .unwrap();
        assert!(sign_node_csr(&ca, 9, "not a request").is_err());
    }

    #[test]
    fn keys_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca("test").unwrap();
        write_ca(dir.path(), &ca).unwrap();
        for secret in [CA_KEY_FILE, GOSSIP_KEY_FILE] {
            let key = dir.path().join(secret);
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{secret}");
        }
        assert!(write_ca(dir.path(), &create_ca("other").unwrap()).is_err());
        assert_eq!(read_ca(dir.path()).unwrap().cert_pem, ca.cert_pem);
    }
}
