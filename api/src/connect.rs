//! How this process reaches Blixard nodes: TLS against the cluster CA
//! (with a node certificate when the process is a node), or plain HTTP/2
//! where security was explicitly turned off.
//!
//! Invariant: every gRPC endpoint a Blixard process opens is built here,
//! from the [`Security`] installed for the process ([`install`]) or given
//! explicitly ([`Security::endpoint`]); so a node never talks to a peer
//! without its certificate, and a client never sends its token in the
//! clear to a cluster it verified as TLS. Under `--cfg madsim` the
//! simulated network carries no TLS, and only `Insecure` exists.
//!
//! A process that starts clusters one after another (`blixard-bench`)
//! installs each one's CA and token in turn; connections keep what they
//! were opened with.

use std::sync::RwLock;

use tonic::transport::{Channel, Endpoint};

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

    /// An endpoint for `address` (HOST:PORT), not yet connected, that
    /// accepts any node of the cluster.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, tonic::transport::Error> {
        self.endpoint_for(address, None)
    }

    /// An endpoint for `address` that, with `node`, accepts only that
    /// node's certificate: a peer dialled by id cannot be another node.
    pub fn endpoint_for(
        &self,
        address: &str,
        node: Option<u64>,
    ) -> Result<Endpoint, tonic::transport::Error> {
        // Under simulation there is no TLS, so nothing to pin.
        #[cfg(madsim)]
        let _ = node;
        match self {
            Self::Insecure => Endpoint::from_shared(format!("http://{address}")),
            #[cfg(not(madsim))]
            Self::Tls(config) => {
                let config = match node {
                    Some(node) => config
                        .as_ref()
                        .clone()
                        .domain_name(crate::tls::node_server_name(node)),
                    None => config.as_ref().clone(),
                };
                Endpoint::from_shared(format!("https://{address}"))?.tls_config(config)
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

static INSTALLED: RwLock<Security> = RwLock::new(Security::Insecure);

/// Sets what this process's connections prove and check from now on.
pub fn install(security: Security) {
    *INSTALLED.write().expect("security lock poisoned") = security;
}

/// The installed security (`Insecure` until one is installed).
pub fn installed() -> Security {
    INSTALLED.read().expect("security lock poisoned").clone()
}

/// An endpoint for `address` under the installed security.
pub fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
    installed().endpoint(address)
}

/// An endpoint for node `node` at `address` under the installed security.
pub fn endpoint_for(address: &str, node: u64) -> Result<Endpoint, tonic::transport::Error> {
    installed().endpoint_for(address, Some(node))
}

/// Adds `authorization: Bearer TOKEN` to every request (nothing without
/// a token).
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

/// A token that cannot travel in an HTTP header.
#[derive(Debug, thiserror::Error)]
#[error("the token must be printable ASCII")]
pub struct InvalidToken;

impl Bearer {
    pub fn new(token: Option<&str>) -> Result<Self, InvalidToken> {
        match token {
            None => Ok(Self(None)),
            Some(token) => format!("Bearer {token}")
                .parse()
                .map(|value| Self(Some(value)))
                .map_err(|_| InvalidToken),
        }
    }

    /// The process's token ([`install_token`]), if any.
    pub fn installed() -> Self {
        INSTALLED_TOKEN.read().expect("token lock poisoned").clone()
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A token would travel in plain text to a host other than this one.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to send the token in plain text to {address}: give the cluster CA \
     (--ca-file or BLIXARD_CA_FILE) so the connection is TLS"
)]
pub struct PlaintextToken {
    pub address: String,
}

/// Whether this process may send its token to `address`: over TLS, or in
/// plain text only to the loopback (a cluster with security off on this
/// machine), so a mistyped address or a missing CA file never hands the
/// token to whoever answers.
pub fn check_token_transport(address: &str) -> Result<(), PlaintextToken> {
    let has_token = INSTALLED_TOKEN
        .read()
        .expect("token lock poisoned")
        .0
        .is_some();
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match !has_token || installed().is_tls() || loopback {
        true => Ok(()),
        false => Err(PlaintextToken {
            address: address.to_string(),
        }),
    }
}

/// A channel whose requests carry a token.
pub type Connection = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

static INSTALLED_TOKEN: RwLock<Bearer> = RwLock::new(Bearer(None));

/// Sets the token this process's clients send from now on.
pub fn install_token(bearer: Bearer) {
    *INSTALLED_TOKEN.write().expect("token lock poisoned") = bearer;
}

/// `channel` with the process's token on every request.
pub fn with_token(channel: Channel) -> Connection {
    Connection::new(channel, Bearer::installed())
}

/// Why [`connect`] made no connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Invalid(#[from] crate::ValidationError),
    #[error("invalid address {address:?}: {detail}")]
    BadAddress { address: String, detail: String },
    #[error(transparent)]
    PlaintextToken(#[from] PlaintextToken),
    #[error("cannot reach {address}: {source}")]
    Unreachable {
        address: String,
        source: tonic::transport::Error,
    },
}

/// How long [`connect`] waits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect_ms: u64,
    /// Each request's deadline; `None` for streams that stay open.
    pub request_ms: Option<u64>,
}

/// A connection to `address` under the installed security, carrying the
/// installed token (refused where the token would travel in plain text:
/// see [`check_token_transport`]).
pub async fn connect(address: &str, timeouts: Timeouts) -> Result<Connection, ConnectError> {
    let bad = |detail: String| ConnectError::BadAddress {
        address: crate::validate::echo(address),
        detail,
    };
    crate::validate::address(address)?;
    check_token_transport(address)?;
    let mut endpoint = endpoint(address)
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(std::time::Duration::from_millis(timeouts.connect_ms));
    if let Some(request_ms) = timeouts.request_ms {
        endpoint = endpoint.timeout(std::time::Duration::from_millis(request_ms));
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| ConnectError::Unreachable {
            address: address.to_string(),
            source,
        })?;
    Ok(with_token(channel))
}
