//! What a node proves where TLS does not reach. Gossip travels over UDP,
//! so every datagram is sealed with the cluster's gossip key, and what a
//! node gossips about itself is signed with its certificate's key.
//!
//! Invariants:
//! - A gossip key file holds 1 to [`GOSSIP_KEYS_MAX`] keys of exactly
//!   [`GOSSIP_KEY_LEN`] bytes, one per line as hex. The first key seals
//!   and every key opens, so keys rotate without a partition.
//! - [`NodeVerifier`] accepts a certificate only when the cluster CA issued
//!   it, it is valid now and it allows client use. It reads the node id
//!   only through [`tls::node_id_of`], the same place TLS reads it.

use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING,
};
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};

use crate::tls::{self, CertifiedKey, TlsError};

/// The gossip key file in a TLS directory.
pub const GOSSIP_KEY_FILE: &str = "gossip.key";
/// ChaCha20-Poly1305 keys are 256 bits.
pub const GOSSIP_KEY_LEN: usize = 32;
/// Enough for a rotation in progress (old, new, next) with room to spare.
pub const GOSSIP_KEYS_MAX: usize = 8;

pub type GossipKey = [u8; GOSSIP_KEY_LEN];

/// Signature algorithms a node certificate's key may use (what rcgen
/// makes by default, and the other keys rustls accepts from a node).
const SIGNATURE_ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
];

/// A new random gossip key as one line of the key file.
pub fn create_gossip_key() -> Result<String, TlsError> {
    let mut key = [0u8; GOSSIP_KEY_LEN];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| rejected("the system random generator failed"))?;
    Ok(format!("{}\n", hex::encode(key)))
}

/// The keys in a gossip key file's text (`path` only names it in errors).
pub fn parse_gossip_keys(path: &Path, text: &str) -> Result<Vec<GossipKey>, TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut key = [0u8; GOSSIP_KEY_LEN];
        hex::decode_to_slice(line, &mut key).map_err(|_| {
            invalid(format!(
                "line {}: a gossip key is {} hex digits (make one with `blixard tls ca create`)",
                index + 1,
                GOSSIP_KEY_LEN * 2
            ))
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(invalid("holds no gossip key".into()));
    }
    if keys.len() > GOSSIP_KEYS_MAX {
        return Err(invalid(format!(
            "holds {} keys; at most {GOSSIP_KEYS_MAX}",
            keys.len()
        )));
    }
    Ok(keys)
}

/// Reads a gossip key file.
pub fn read_gossip_keys(path: &Path) -> Result<Vec<GossipKey>, TlsError> {
    parse_gossip_keys(path, &tls::read(path)?)
}

/// Signs with a node's certificate key.
pub struct NodeSigner {
    cert_der: Vec<u8>,
    key: SigningKey,
    rng: SystemRandom,
}

enum SigningKey {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl NodeSigner {
    /// The signer for `node`'s certificate and key (ECDSA P-256 or P-384,
    /// or Ed25519).
    pub fn new(node: &CertifiedKey) -> Result<Self, TlsError> {
        let cert_der = pem_certificate(&node.cert_pem)?;
        let pkcs8 = rcgen::KeyPair::from_pem(&node.key_pem)?.serialize_der();
        let rng = SystemRandom::new();
        let key = if let Ok(key) =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng)
        {
            SigningKey::Ecdsa(key)
        } else if let Ok(key) =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &pkcs8, &rng)
        {
            SigningKey::Ecdsa(key)
        } else if let Ok(key) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8) {
            SigningKey::Ed25519(key)
        } else {
            return Err(rejected(
                "the node key is neither ECDSA P-256/P-384 nor Ed25519",
            ));
        };
        Ok(Self { cert_der, key, rng })
    }

    /// The node's certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, TlsError> {
        match &self.key {
            SigningKey::Ecdsa(key) => key
                .sign(&self.rng, message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| rejected("signing failed")),
            SigningKey::Ed25519(key) => Ok(key.sign(message).as_ref().to_vec()),
        }
    }
}

/// Checks node certificates and their signatures against the cluster CA.
pub struct NodeVerifier {
    ca_der: Vec<u8>,
}

impl NodeVerifier {
    pub fn new(ca_pem: &str) -> Result<Self, TlsError> {
        Ok(Self {
            ca_der: pem_certificate(ca_pem)?,
        })
    }

    /// The node id `cert_der` proves: the cluster CA issued it for client
    /// use and it is valid now.
    pub fn node_id(&self, cert_der: &[u8]) -> Result<u64, TlsError> {
        let ca = CertificateDer::from(self.ca_der.as_slice());
        let anchor = webpki::anchor_from_trusted_cert(&ca)
            .map_err(|e| rejected(&format!("the cluster CA certificate: {e}")))?;
        let cert = CertificateDer::from(cert_der);
        let end_entity = webpki::EndEntityCert::try_from(&cert)
            .map_err(|e| rejected(&format!("not a certificate: {e}")))?;
        end_entity
            .verify_for_usage(
                SIGNATURE_ALGORITHMS,
                &[anchor],
                &[],
                UnixTime::now(),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| rejected(&format!("not a node certificate of this cluster: {e}")))?;
        tls::node_id_of(cert_der).ok_or_else(|| rejected("the certificate names no node"))
    }

    /// Checks that `cert_der`'s key signed `message`. (It does not check
    /// the certificate: see [`Self::node_id`].)
    pub fn check_signature(
        &self,
        cert_der: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), TlsError> {
        let cert = CertificateDer::from(cert_der);
        let end_entity = webpki::EndEntityCert::try_from(&cert)
            .map_err(|e| rejected(&format!("not a certificate: {e}")))?;
        SIGNATURE_ALGORITHMS
            .iter()
            .any(|algorithm| {
                end_entity
                    .verify_signature(*algorithm, message, signature)
                    .is_ok()
            })
            .then_some(())
            .ok_or_else(|| rejected("the signature does not match the certificate"))
    }
}

fn pem_certificate(pem_text: &str) -> Result<Vec<u8>, TlsError> {
    x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .map(|(_, pem)| pem.contents)
        .map_err(|_| rejected("no PEM certificate"))
}

fn rejected(reason: &str) -> TlsError {
    TlsError::Rejected {
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{create_ca, issue_node_cert};

    #[test]
    fn gossip_key_files_hold_one_to_eight_exact_keys() {
        let path = Path::new("gossip.key");
        let one = create_gossip_key().unwrap();
        let two = format!("# rotating\n{one}\n{}", create_gossip_key().unwrap());
        assert_eq!(parse_gossip_keys(path, &one).unwrap().len(), 1);
        let keys = parse_gossip_keys(path, &two).unwrap();
        assert_eq!(keys.len(), 2);
        assert_ne!(keys[0], keys[1], "keys are random");
        for bad in ["", "# only a comment\n", "abcd\n", &format!("{one}zz")] {
            let error = parse_gossip_keys(path, bad).unwrap_err().to_string();
            assert!(error.starts_with("gossip.key: "), "{error}");
        }
        let nine = (0..9).map(|_| one.clone()).collect::<String>();
        assert!(parse_gossip_keys(path, &nine)
            .unwrap_err()
            .to_string()
            .contains("at most 8"));
    }

    #[test]
    fn signatures_prove_the_node_the_cluster_ca_named() {
        let ca = create_ca("test").unwrap();
        let node = issue_node_cert(&ca, 3).unwrap();
        let signer = NodeSigner::new(&node).unwrap();
        let verifier = NodeVerifier::new(&ca.cert_pem).unwrap();
        let cert = signer.certificate_der();
        assert_eq!(verifier.node_id(cert).unwrap(), 3);
        let signature = signer.sign(b"node 3 says").unwrap();
        verifier
            .check_signature(cert, b"node 3 says", &signature)
            .unwrap();
        assert!(verifier
            .check_signature(cert, b"node 3 said", &signature)
            .is_err());

        // Another node's certificate cannot carry node 3's signature.
        let other = NodeSigner::new(&issue_node_cert(&ca, 4).unwrap()).unwrap();
        assert!(verifier
            .check_signature(other.certificate_der(), b"node 3 says", &signature)
            .is_err());

        // A certificate of another CA proves nothing here.
        let foreign_ca = create_ca("elsewhere").unwrap();
        let foreign = NodeSigner::new(&issue_node_cert(&foreign_ca, 3).unwrap()).unwrap();
        let error = verifier
            .node_id(foreign.certificate_der())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("not a node certificate of this cluster"),
            "{error}"
        );
        assert!(verifier.node_id(b"junk").is_err());
        // The CA's own certificate names no node.
        assert!(verifier
            .node_id(&pem_certificate(&ca.cert_pem).unwrap())
            .is_err());
    }
}
