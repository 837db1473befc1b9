//! How this process reaches Blixard nodes: TLS against the cluster CA
//! (with a node certificate when the process is a node), or plain HTTP/2
//! where security was explicitly turned off.
//!
//! Invariant: every gRPC endpoint a Blixard process opens is built here,
//! from one [`Security`] installed at start-up ([`install`]) or given
//! explicitly ([`Security::endpoint`]); so a node never talks to a peer
//! without its certificate, and a client never sends its token in the
//! clear to a cluster it verified as TLS. Under `--cfg madsim` the
//! simulated network carries no TLS, and only `Insecure` exists.

use std::sync::OnceLock;

use tonic::transport::Endpoint;

use crate::tls::CertifiedKey;

/// What a connection proves and checks.
#[derive(Debug, Clone, Default)]
pub enum Security {
    /// Plain HTTP/2: `[security] insecure = true` on the nodes, or a client
    /// given no CA certificate.
    #[default]
    Insecure,
    /// TLS: the server must hold a certificate of the cluster CA naming
    /// [`crate::tls::SERVER_NAME`]; with a node identity, this process
    /// proves it is that node.
    #[cfg(not(madsim))]
    Tls(Box<tonic::transport::ClientTlsConfig>),
}

impl Security {
    /// A client that trusts the cluster CA `ca_pem` and proves nothing
    /// (it authenticates with a token).
    #[cfg(not(madsim))]
    pub fn client(ca_pem: &str) -> Self {
        Self::Tls(Box::new(client_config(ca_pem)))
    }

    /// A node of the cluster: trusts the CA and presents its certificate.
    #[cfg(not(madsim))]
    pub fn node(ca_pem: &str, node: &CertifiedKey) -> Self {
        let identity = tonic::transport::Identity::from_pem(&node.cert_pem, &node.key_pem);
        Self::Tls(Box::new(client_config(ca_pem).identity(identity)))
    }

    /// Under simulation nodes speak plain text.
    #[cfg(madsim)]
    pub fn node(_ca_pem: &str, _node: &CertifiedKey) -> Self {
        Self::Insecure
    }

    /// An endpoint for `address` (HOST:PORT), not yet connected.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, tonic::transport::Error> {
        match self {
            Self::Insecure => Endpoint::from_shared(format!("http://{address}")),
            #[cfg(not(madsim))]
            Self::Tls(config) => {
                Endpoint::from_shared(format!("https://{address}"))?.tls_config(*config.clone())
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Self::Insecure)
    }
}

#[cfg(not(madsim))]
fn client_config(ca_pem: &str) -> tonic::transport::ClientTlsConfig {
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .domain_name(crate::tls::SERVER_NAME)
}

/// The TLS a node serves with: its certificate, and the CA that peers'
/// certificates must chain to. Client certificates are optional (clients
/// authenticate with tokens); the services that only peers may call
/// check for one ([`crate::identity`]).
#[cfg(not(madsim))]
pub fn server_config(ca_pem: &str, node: &CertifiedKey) -> tonic::transport::ServerTlsConfig {
    tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &node.cert_pem,
            &node.key_pem,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca_pem))
        .client_auth_optional(true)
}

static INSTALLED: OnceLock<Security> = OnceLock::new();

/// Sets the process's security once, at start-up; later calls change
/// nothing and return false.
pub fn install(security: Security) -> bool {
    INSTALLED.set(security).is_ok()
}

/// The installed security (`Insecure` until one is installed).
pub fn installed() -> &'static Security {
    static INSECURE: Security = Security::Insecure;
    INSTALLED.get().unwrap_or(&INSECURE)
}

/// An endpoint for `address` under the installed security.
pub fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
    installed().endpoint(address)
}
