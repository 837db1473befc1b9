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

use crate::config::{Config, TlsFiles};
use crate::listener::LiveCertificate;
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
        /// The certificate served now, and how it is renewed.
        renewal: Arc<Renewal>,
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
        finish_renewal(&files).map_err(|e| Error::Tls {
            detail: format!(
                "finishing a certificate renewal a stop interrupted ({}): {e}",
                files.cert.display()
            ),
        })?;
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
        let gossip_identity =
            Arc::new(
                CertificateIdentity::new(&ca_pem, &node).map_err(|e| Error::Tls {
                    detail: format!("{}: {e}", files.cert.display()),
                })?,
            );
        let gossip = GossipSecurity {
            keys,
            identity: gossip_identity.clone(),
        };
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
        tracing::info!(
            ca_sha256 = %tls::fingerprint_sha256(&ca_pem).map_err(tls_error)?,
            "the cluster CA (clients pin it with `blixard tls trust --fingerprint`)"
        );
        let renewal = Arc::new(Renewal {
            node_id: config.cluster.node_id,
            ca_pem: ca_pem.clone(),
            files,
            live: Arc::new(LiveCertificate::new(&node, &ca_pem)?),
            gossip_identity,
            renewed: Arc::new(tokio::sync::Notify::new()),
            issuer: issuer.clone(),
            running: tokio::sync::Mutex::new(()),
        });
        Ok(Self::Tls {
            ca_pem,
            node,
            gossip,
            issuer,
            renewal,
        })
    }

    /// How this node's certificate is renewed (`None` with security off).
    pub fn renewal(&self) -> Option<Arc<Renewal>> {
        match self {
            Self::Insecure => None,
            Self::Tls { renewal, .. } => Some(renewal.clone()),
        }
    }

    /// The certificate issuer, on nodes holding the CA key.
    pub fn issuer(&self) -> Option<Issuer> {
        match self {
            Self::Insecure => None,
            Self::Tls { issuer, .. } => issuer.clone(),
        }
    }

    /// From now on gossip believes only the certificates `state` accepts
    /// (see `ClusterState::node_certificate_accepted`).
    pub fn judge_gossip_by(&self, state: crate::handle::ClusterHandle) {
        if let Self::Tls { renewal, .. } = self {
            // Set once per start; a second call changes nothing.
            let _ = renewal.gossip_identity.judge.set(state);
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

/// What a node renews its certificate with (`cluster rotate-certs`): a
/// new key, certified by a node holding the CA key, kept so a crash at
/// any point leaves the old pair or the new one, then served and dialled
/// with from the next connection on. Open connections keep the
/// certificate they were made with (it chains to the same CA).
pub struct Renewal {
    pub node_id: u64,
    pub ca_pem: String,
    pub files: TlsFiles,
    pub live: Arc<LiveCertificate>,
    /// What gossip signs with (swapped with `live`).
    gossip_identity: Arc<CertificateIdentity>,
    /// Notified after each renewal, so gossip carries the new certificate
    /// at once (before the old one is retired), not at its next tick.
    pub renewed: Arc<tokio::sync::Notify>,
    /// This node signs its own renewals when it holds the CA key.
    pub issuer: Option<Issuer>,
    /// One renewal of this node at a time.
    pub running: tokio::sync::Mutex<()>,
}

impl Renewal {
    /// Checks `node` is this node's certificate from the cluster CA for
    /// its key, keeps it, and serves and dials with it from now on.
    pub fn install(&self, node: &CertifiedKey) -> Result<(), Error> {
        let failed = |detail: String| Error::Tls { detail };
        let named = tls::node_id_of_pem(&self.files.cert, &node.cert_pem)
            .map_err(|e| failed(e.to_string()))?;
        if named != self.node_id {
            return Err(failed(format!(
                "the renewed certificate names node {named}, not this node {}",
                self.node_id
            )));
        }
        NodeVerifier::new(&self.ca_pem)
            .and_then(|verifier| verifier.node_id(NodeSigner::new(node)?.certificate_der()))
            .map_err(|e| failed(format!("the renewed certificate: {e}")))?;
        // Refuses a certificate that is not the key's before anything is kept.
        let served = LiveCertificate::new(node, &self.ca_pem)?;
        drop(served);
        keep_renewed(&self.files, node)
            .map_err(|e| failed(format!("keeping the renewed certificate: {e}")))?;
        self.live.swap(node)?;
        blixard_api::connect::install(Security::node(&self.ca_pem, node));
        self.gossip_identity
            .swap(node)
            .map_err(|e| failed(format!("gossip signing with the renewed certificate: {e}")))?;
        self.renewed.notify_one();
        Ok(())
    }
}

/// The file a renewed `path` is written to before it replaces `path`.
fn next_of(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".next");
    std::path::PathBuf::from(name)
}

fn write_synced(path: &std::path::Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

fn sync_dir_of(path: &std::path::Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// Replaces the node's key and certificate: both are written beside as
/// `.next` (the certificate through a `.partial` renamed last, the commit
/// point), then renamed over key first, certificate last. A crash before
/// the commit point leaves the old pair (the leftovers are removed at
/// start-up); after it, [`finish_renewal`] completes the renames.
fn keep_renewed(files: &TlsFiles, node: &CertifiedKey) -> std::io::Result<()> {
    let key_next = next_of(&files.key);
    let cert_next = next_of(&files.cert);
    let mut cert_partial = cert_next.clone().into_os_string();
    cert_partial.push(".partial");
    let cert_partial = std::path::PathBuf::from(cert_partial);
    // Whatever an earlier renewal left is finished (or dropped) first, so
    // this one's files are never paired with another's.
    finish_renewal(files)?;
    write_synced(&key_next, &node.key_pem, 0o600)?;
    write_synced(&cert_partial, &node.cert_pem, 0o644)?;
    sync_dir_of(&key_next)?;
    std::fs::rename(&cert_partial, &cert_next)?;
    sync_dir_of(&cert_next)?;
    finish_renewal(files)
}

/// Completes a renewal a crash interrupted after its commit point, or
/// drops one interrupted before it (see [`keep_renewed`]); nothing to do
/// otherwise. Runs at start-up before the certificates are read.
pub fn finish_renewal(files: &TlsFiles) -> std::io::Result<()> {
    let key_next = next_of(&files.key);
    let cert_next = next_of(&files.cert);
    if cert_next.exists() {
        if key_next.exists() {
            std::fs::rename(&key_next, &files.key)?;
            sync_dir_of(&files.key)?;
        }
        std::fs::rename(&cert_next, &files.cert)?;
        sync_dir_of(&files.cert)?;
        return Ok(());
    }
    let mut cert_partial = cert_next.into_os_string();
    cert_partial.push(".partial");
    for leftover in [key_next, std::path::PathBuf::from(cert_partial)] {
        if leftover.exists() {
            std::fs::remove_file(&leftover)?;
        }
    }
    Ok(())
}

/// Gossip sealed with `keys` and signed with `node`'s certificate, which
/// must be one the CA `ca_pem` issued and valid now.
pub fn gossip_security(
    ca_pem: &str,
    node: &CertifiedKey,
    keys: Vec<GossipKey>,
) -> Result<GossipSecurity, tls::TlsError> {
    Ok(GossipSecurity {
        keys,
        identity: Arc::new(CertificateIdentity::new(ca_pem, node)?),
    })
}

/// Gossip identity over the cluster's certificates: signs with this
/// node's current certificate (a renewal swaps it) and, once it has the
/// state, believes only certificates the state still accepts.
pub struct CertificateIdentity {
    signer: std::sync::RwLock<Arc<NodeSigner>>,
    verifier: NodeVerifier,
    /// This node's copy of the state, set once it exists (until then,
    /// every certificate of the CA counts, as it did before the state
    /// could say otherwise).
    judge: std::sync::OnceLock<crate::handle::ClusterHandle>,
}

impl CertificateIdentity {
    fn new(ca_pem: &str, node: &CertifiedKey) -> Result<Self, tls::TlsError> {
        let identity = Self {
            signer: std::sync::RwLock::new(Arc::new(NodeSigner::new(node)?)),
            verifier: NodeVerifier::new(ca_pem)?,
            judge: std::sync::OnceLock::new(),
        };
        identity.verifier.node_id(&identity.certificate_der())?;
        Ok(identity)
    }

    /// Signs with `node` from now on.
    fn swap(&self, node: &CertifiedKey) -> Result<(), tls::TlsError> {
        let signer = Arc::new(NodeSigner::new(node)?);
        *self
            .signer
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = signer;
        Ok(())
    }

    fn signer(&self) -> Arc<NodeSigner> {
        self.signer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Identity for CertificateIdentity {
    fn certificate_der(&self) -> Vec<u8> {
        self.signer().certificate_der().to_vec()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, IdentityError> {
        self.signer()
            .sign(message)
            .map_err(|e| IdentityError(e.to_string()))
    }

    fn certified_node(&self, certificate_der: &[u8]) -> Result<u64, IdentityError> {
        self.verifier
            .node_id(certificate_der)
            .map_err(|e| IdentityError(e.to_string()))
    }

    fn accepts(&self, node_id: u64, certificate_der: &[u8]) -> bool {
        self.judge.get().is_none_or(|state| {
            let sha256 = tls::fingerprint_sha256_der(certificate_der);
            state.read_state(|s| s.node_certificate_accepted(node_id, &sha256))
        })
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
    // Synced: a power cut must not leave an empty key (which would make
    // the node ask with another key, which the spent token refuses) or a
    // torn certificate (which would look like one already got).
    let write = |path: &std::path::Path, text: &str, mode| {
        write_synced(path, text, mode)
            .and_then(|()| sync_dir_of(path))
            .map_err(|e| failed(format!("{}: {e}", path.display())))
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
        // Last, whole or not at all: its presence says the others are in
        // place.
        let partial = next_of(&files.cert);
        write(&partial, &issued.cert_pem, 0o644)?;
        std::fs::rename(&partial, &files.cert)
            .and_then(|()| sync_dir_of(&files.cert))
            .map_err(|e| failed(format!("{}: {e}", files.cert.display())))?;
        tracing::info!(%address, cert = %files.cert.display(), "got this node's certificate for the join token");
        return Ok(());
    }
    Err(failed(format!(
        "could not get a certificate for the join token: {last_error}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("node.pem"),
            key: dir.join("node-key.pem"),
            gossip_key: dir.join("gossip.key"),
            ca_key: dir.join("ca-key.pem"),
            ca_key_required: false,
        }
    }

    fn pair(files: &TlsFiles) -> (String, String) {
        (
            std::fs::read_to_string(&files.cert).unwrap(),
            std::fs::read_to_string(&files.key).unwrap(),
        )
    }

    /// A renewal stopped at any step leaves the old pair or the new one,
    /// never a certificate with another's key.
    #[test]
    fn an_interrupted_renewal_keeps_a_whole_pair() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let old = ("old cert", "old key");
        let new = ("new cert", "new key");
        let reset = || {
            for path in std::fs::read_dir(dir.path()).unwrap() {
                std::fs::remove_file(path.unwrap().path()).unwrap();
            }
            std::fs::write(&files.cert, old.0).unwrap();
            std::fs::write(&files.key, old.1).unwrap();
        };
        let next =
            |path: &std::path::Path, text: &str| std::fs::write(next_of(path), text).unwrap();
        let partial = dir.path().join("node.pem.next.partial");
        // Stopped before the commit point: the old pair stays.
        reset();
        next(&files.key, new.1);
        std::fs::write(&partial, "new ce").unwrap();
        finish_renewal(&files).unwrap();
        assert_eq!(pair(&files), (old.0.into(), old.1.into()));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // After it, with no rename done, or the key's done: the new pair.
        for key_renamed in [false, true] {
            reset();
            next(&files.cert, new.0);
            match key_renamed {
                true => std::fs::write(&files.key, new.1).unwrap(),
                false => next(&files.key, new.1),
            }
            finish_renewal(&files).unwrap();
            assert_eq!(pair(&files), (new.0.into(), new.1.into()));
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        }
        // Nothing to finish: nothing changes.
        reset();
        finish_renewal(&files).unwrap();
        assert_eq!(pair(&files), (old.0.into(), old.1.into()));
        // A renewal after one that stopped past its commit point finishes
        // that one first, and never pairs its key with the other's
        // certificate.
        reset();
        next(&files.cert, "stale cert");
        let newest = CertifiedKey {
            cert_pem: "newest cert".into(),
            key_pem: "newest key".into(),
        };
        keep_renewed(&files, &newest).unwrap();
        assert_eq!(pair(&files), (newest.cert_pem, newest.key_pem));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
