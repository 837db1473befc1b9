//! What this node proves to its peers and checks of them, decided once at
//! start-up from `[tls]` and `[security]`.
//!
//! Invariant: a node serves and dials TLS with a certificate of the
//! cluster CA that names its own node id, or, only when `[security]
//! insecure = true` says so, plain text (logged loudly at every start).
//! A node never starts half-secured: missing or mismatched certificates
//! stop it with a message saying what to create.

use blixard_api::connect::Security;
use blixard_api::tls::{self, CertifiedKey};

use crate::config::Config;
use crate::Error;

/// The node's transport security.
#[derive(Clone)]
pub enum NodeTls {
    Insecure,
    Tls { ca_pem: String, node: CertifiedKey },
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
        let (ca_file, cert_file, key_file) = config.tls_files();
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
        let ca_pem = tls::read(&ca_file).map_err(tls_error)?;
        let node = CertifiedKey {
            cert_pem: tls::read(&cert_file).map_err(tls_error)?,
            key_pem: tls::read(&key_file).map_err(tls_error)?,
        };
        let named = tls::node_id_of_pem(&cert_file, &node.cert_pem).map_err(tls_error)?;
        if named != config.cluster.node_id {
            return Err(Error::Tls {
                detail: format!(
                    "{} is the certificate of node {named}, but this is node {}",
                    cert_file.display(),
                    config.cluster.node_id
                ),
            });
        }
        Ok(Self::Tls { ca_pem, node })
    }

    /// What this node dials its peers with.
    pub fn dial(&self) -> Security {
        match self {
            Self::Insecure => Security::Insecure,
            Self::Tls { ca_pem, node } => Security::node(ca_pem, node),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls { .. })
    }
}
