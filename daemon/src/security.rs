//! What this node proves to its peers and checks of them, decided once at
//! start-up from `[tls]` and `[security]`.
//!
//! Invariant: a node serves and dials TLS with a certificate of the
//! cluster CA that names its own node id, or, only when `[security]
//! insecure = true` says so, plain text (logged loudly at every start).
//! A node never starts half-secured: missing or mismatched certificates
//! or gossip keys stop it with a message saying what to create. With TLS,
//! gossip is sealed with the cluster's gossip key and signed with the node
//! certificate's key ([`NodeTls::gossip`]).

use std::sync::Arc;

use blixard_api::connect::Security;
use blixard_api::identity::{self, GossipKey, NodeSigner, NodeVerifier};
use blixard_api::tls::{self, CertifiedKey};
use blixard_membership::{GossipSecurity, Identity, IdentityError};

use crate::config::Config;
use crate::Error;

/// The node's transport security.
#[derive(Clone)]
pub enum NodeTls {
    Insecure,
    Tls {
        ca_pem: String,
        node: CertifiedKey,
        gossip: GossipSecurity,
    },
}

impl NodeTls {
    /// Reads and checks the node's certificates (see the module invariant).
    pub fn load(config: &Config) -> Result<Self, Error> {
        if config.security.insecure {
            tracing::warn!(
                "SECURITY IS OFF ([security] insecure = true): plain-text gRPC, no peer \
                 authentication; anyone who reaches {} can change this cluster",
                config.api.bind
            );
            return Ok(Self::Insecure);
        }
        let files = config.tls_files();
        let tls_error = |e: tls::TlsError| {
            Error::Tls {
            detail: format!(
                "{e}; create the node's certificates with `blixard tls cert create --ca-dir CA_DIR \
                 --node-id {} --out {}` (and the CA once with `blixard tls ca create --out CA_DIR`), \
                 or set [security] insecure = true for a throwaway cluster",
                config.cluster.node_id,
                config.cluster.data_dir.join("tls").display()
            ),
        }
        };
        let ca_pem = tls::read(&files.ca).map_err(tls_error)?;
        let node = CertifiedKey {
            cert_pem: tls::read(&files.cert).map_err(tls_error)?,
            key_pem: tls::read(&files.key).map_err(tls_error)?,
        };
        let named = tls::node_id_of_pem(&files.cert, &node.cert_pem).map_err(tls_error)?;
        if named != config.cluster.node_id {
            return Err(Error::Tls {
                detail: format!(
                    "{} is the certificate of node {named}, but this is node {}",
                    files.cert.display(),
                    config.cluster.node_id
                ),
            });
        }
        let keys = identity::read_gossip_keys(&files.gossip_key).map_err(tls_error)?;
        // A certificate the CA did not issue (or one expired) would be
        // refused by every peer's gossip: say so now, not by silence.
        let gossip = gossip_security(&ca_pem, &node, keys).map_err(|e| Error::Tls {
            detail: format!("{}: {e}", files.cert.display()),
        })?;
        Ok(Self::Tls {
            ca_pem,
            node,
            gossip,
        })
    }

    /// What gossip is sealed and signed with (`None` with security off).
    pub fn gossip(&self) -> Option<GossipSecurity> {
        match self {
            Self::Insecure => None,
            Self::Tls { gossip, .. } => Some(gossip.clone()),
        }
    }

    /// What this node dials its peers with.
    pub fn dial(&self) -> Security {
        match self {
            Self::Insecure => Security::Insecure,
            Self::Tls { ca_pem, node, .. } => Security::node(ca_pem, node),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls { .. })
    }
}

/// Gossip sealed with `keys` and signed with `node`'s certificate, which
/// must be one the CA `ca_pem` issued and valid now.
pub fn gossip_security(
    ca_pem: &str,
    node: &CertifiedKey,
    keys: Vec<GossipKey>,
) -> Result<GossipSecurity, tls::TlsError> {
    let certificates = CertificateIdentity {
        signer: NodeSigner::new(node)?,
        verifier: NodeVerifier::new(ca_pem)?,
    };
    certificates
        .verifier
        .node_id(certificates.signer.certificate_der())?;
    Ok(GossipSecurity {
        keys,
        identity: Arc::new(certificates),
    })
}

/// Gossip identity over the cluster's certificates.
struct CertificateIdentity {
    signer: NodeSigner,
    verifier: NodeVerifier,
}

impl Identity for CertificateIdentity {
    fn certificate_der(&self) -> &[u8] {
        self.signer.certificate_der()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, IdentityError> {
        self.signer
            .sign(message)
            .map_err(|e| IdentityError(e.to_string()))
    }

    fn certified_node(&self, certificate_der: &[u8]) -> Result<u64, IdentityError> {
        self.verifier
            .node_id(certificate_der)
            .map_err(|e| IdentityError(e.to_string()))
    }

    fn check_signature(
        &self,
        certificate_der: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), IdentityError> {
        self.verifier
            .check_signature(certificate_der, message, signature)
            .map_err(|e| IdentityError(e.to_string()))
    }
}
