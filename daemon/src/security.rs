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
        /// On nodes holding the CA key: what join tokens are exchanged for.
        issuer: Option<Issuer>,
    },
}

/// What a node holding the CA key hands a new node for a join token.
#[derive(Clone)]
pub struct Issuer {
    pub ca: CertifiedKey,
    /// The gossip key file's text.
    pub gossip_keys: String,
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
                 --node-id {} --out {}` (and the CA once with `blixard tls ca create --out CA_DIR`; \
                 a CA directory made before gossip keys needs one: `openssl rand -hex 32 > \
                 CA_DIR/gossip.key`, then copy it to every node), or set [security] insecure = \
                 true for a throwaway cluster",
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
        let issuer = match (files.ca_key.exists(), files.ca_key_required) {
            (false, false) => None,
            _ => Some(Issuer {
                ca: CertifiedKey {
                    cert_pem: ca_pem.clone(),
                    key_pem: tls::read(&files.ca_key).map_err(tls_error)?,
                },
                gossip_keys: tls::read(&files.gossip_key).map_err(tls_error)?,
            }),
        };
        if issuer.is_some() {
            tracing::info!(
                ca_key = %files.ca_key.display(),
                "this node holds the CA key: it issues certificates for join tokens"
            );
        }
        Ok(Self::Tls {
            ca_pem,
            node,
            gossip,
            issuer,
        })
    }

    /// The certificate issuer, on nodes holding the CA key.
    pub fn issuer(&self) -> Option<Issuer> {
        match self {
            Self::Insecure => None,
            Self::Tls { issuer, .. } => issuer.clone(),
        }
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

/// On a first start with a join token and no certificate: gets this
/// node's certificate (and the cluster's gossip keys) from a node of its
/// `join` list holding the CA key, for a signing request of a key made
/// here (the key never leaves this node). The CA certificate must already
/// be in place: it is how this node knows it reached the cluster.
#[cfg(not(madsim))]
pub async fn obtain_certificate(config: &Config) -> Result<(), Error> {
    let files = config.tls_files();
    let Some(join_token) = &config.cluster.join_token else {
        return Ok(());
    };
    if config.security.insecure || files.cert.exists() {
        return Ok(());
    }
    let failed = |detail: String| Error::Tls { detail };
    if config.cluster.join.is_empty() {
        return Err(failed(
            "a join token is spent through a --join address; give one".into(),
        ));
    }
    let ca_pem = tls::read(&files.ca).map_err(|e| {
        failed(format!(
            "{e}: copy the cluster's ca.pem there (it is public) so this node can check the \
             node it joins through"
        ))
    })?;
    let write = |path: &std::path::Path, text: &str, mode| {
        tls::write_new(path, text, mode).map_err(|e| failed(e.to_string()))
    };
    // The key is kept before it is asked for, so a node whose answer was
    // lost (or that was stopped) asks again for the same key, which the
    // spent token still allows; a key file that does not parse belongs to
    // no certificate and is replaced.
    let pending = std::fs::read_to_string(&files.key)
        .ok()
        .and_then(|key_pem| tls::create_node_csr_for(&key_pem).ok());
    let csr_pem = match pending {
        Some(csr_pem) => csr_pem,
        None => {
            let (csr_pem, key_pem) = tls::create_node_csr().map_err(|e| failed(e.to_string()))?;
            let _ = std::fs::remove_file(&files.key);
            write(&files.key, &key_pem, 0o600)?;
            csr_pem
        }
    };
    let mut last_error = String::from("no join address answered");
    for address in &config.cluster.join {
        let endpoint = match Security::client(&ca_pem).endpoint(address) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                last_error = format!("{address}: {e}");
                continue;
            }
        };
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => {
                last_error = format!("{address}: {e}");
                continue;
            }
        };
        let issued = blixard_api::pb::cluster_client::ClusterClient::new(channel)
            .issue_certificate(blixard_api::pb::IssueCertificateRequest {
                join_token: join_token.clone(),
                node_id: config.cluster.node_id,
                csr_pem: csr_pem.clone(),
            })
            .await;
        let issued = match issued {
            Ok(issued) => issued.into_inner(),
            Err(status) => {
                last_error = format!("{address}: {}", status.message());
                // The token is spent or refused: other addresses cannot help.
                if status.code() == tonic::Code::Unauthenticated
                    || status.code() == tonic::Code::InvalidArgument
                {
                    break;
                }
                continue;
            }
        };
        let named = tls::node_id_of_pem(&files.cert, &issued.cert_pem)
            .map_err(|e| failed(e.to_string()))?;
        if named != config.cluster.node_id || issued.ca_pem.trim() != ca_pem.trim() {
            return Err(failed(format!(
                "{address} issued a certificate for node {named} or under another CA"
            )));
        }
        identity::parse_gossip_keys(&files.gossip_key, &issued.gossip_keys)
            .map_err(|e| failed(e.to_string()))?;
        if !files.gossip_key.exists() {
            write(&files.gossip_key, &issued.gossip_keys, 0o600)?;
        }
        // Last: its presence says the others are in place.
        write(&files.cert, &issued.cert_pem, 0o644)?;
        tracing::info!(%address, cert = %files.cert.display(), "got this node's certificate for the join token");
        return Ok(());
    }
    Err(failed(format!(
        "could not get a certificate for the join token: {last_error}"
    )))
}
