//! The node's TLS listener: accepts TCP connections and runs their TLS
//! handshakes off the accept loop, with the certificate that is current
//! when each handshake starts ([`LiveCertificate`]), so a renewed
//! certificate is served without a restart.
//!
//! Invariant: at most [`HANDSHAKES_MAX`] handshakes run at once, at most
//! [`HANDSHAKES_PER_ADDRESS_MAX`] from one IP address, and each gets
//! [`HANDSHAKE_TIMEOUT_MS`]; a connection past a bound is accepted and
//! closed at once, so the loop never stops accepting and one flooding
//! address cannot crowd out the rest. An accept error (the process out of
//! file descriptors) is logged at most once a second and retried after a
//! pause, never spun on.

use std::sync::{Arc, RwLock};
#[cfg(not(madsim))]
use std::time::Duration;

use blixard_api::tls::CertifiedKey;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
#[cfg(not(madsim))]
use tokio::net::{TcpListener, TcpStream};
#[cfg(not(madsim))]
use tokio_rustls::server::TlsStream;
#[cfg(not(madsim))]
use tokio_stream::wrappers::ReceiverStream;

use crate::Error;

#[cfg(not(madsim))]
/// TLS handshakes in flight at most.
pub const HANDSHAKES_MAX: usize = 256;
#[cfg(not(madsim))]
/// TLS handshakes in flight from one IP address at most.
pub const HANDSHAKES_PER_ADDRESS_MAX: usize = 64;
#[cfg(not(madsim))]
/// A handshake not done by then is dropped.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 3_000;
#[cfg(not(madsim))]
/// The pause after a failed accept (out of descriptors, say).
const ACCEPT_RETRY_MS: u64 = 100;
#[cfg(not(madsim))]
/// Established connections queued for the server at most.
const ACCEPTED_QUEUED_MAX: usize = 64;

/// The certificate this node serves with, followed by the cluster CA's
/// (so a client can pin the CA on first use: `blixard tls trust`);
/// [`LiveCertificate::swap`] replaces it for every handshake after.
#[derive(Debug)]
pub struct LiveCertificate {
    ca_chain: Vec<CertificateDer<'static>>,
    current: RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl LiveCertificate {
    pub fn new(node: &CertifiedKey, ca_pem: &str) -> Result<Self, Error> {
        let ca_chain = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls {
                detail: format!("CA certificate: {e}"),
            })?;
        let current = RwLock::new(Arc::new(rustls_key(node, &ca_chain)?));
        Ok(Self { ca_chain, current })
    }

    /// Serves `node` from the next handshake on.
    pub fn swap(&self, node: &CertifiedKey) -> Result<(), Error> {
        let key = Arc::new(rustls_key(node, &self.ca_chain)?);
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = key;
        Ok(())
    }

    /// The SHA-256 of the certificate served now (lowercase hex of DER).
    pub fn current_sha256(&self) -> String {
        let current = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        blixard_api::tls::fingerprint_sha256_der(current.cert[0].as_ref())
    }

    /// The TLS a node serves: its current certificate, and the CA that
    /// peers' certificates must chain to. Client certificates are optional
    /// (clients authenticate with tokens); the services only peers may call
    /// check for one (`blixard_api::identity`).
    pub fn server_config(self: &Arc<Self>, ca_pem: &str) -> Result<rustls::ServerConfig, Error> {
        let tls = |detail: String| Error::Tls { detail };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| tls(format!("CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| tls(format!("CA certificate: {e}")))?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| tls(format!("client certificate verifier: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for LiveCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        )
    }
}

fn rustls_key(
    node: &CertifiedKey,
    ca_chain: &[CertificateDer<'static>],
) -> Result<rustls::sign::CertifiedKey, Error> {
    let tls = |detail: String| Error::Tls { detail };
    let mut chain = CertificateDer::pem_slice_iter(node.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(format!("node certificate: {e}")))?;
    chain.extend(ca_chain.iter().cloned());
    let key = PrivateKeyDer::from_pem_slice(node.key_pem.as_bytes())
        .map_err(|e| tls(format!("node key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| tls(format!("node key: {e}")))?;
    let key = rustls::sign::CertifiedKey::new(chain, signing);
    key.keys_match()
        .map_err(|e| tls(format!("node certificate and key: {e}")))?;
    Ok(key)
}

/// Accepted, handshaken connections from `listener` (see the module
/// invariant); ends when the server stops taking them. (The simulated
/// network carries no TLS.)
#[cfg(not(madsim))]
pub fn tls_incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (accepted, incoming) = tokio::sync::mpsc::channel(ACCEPTED_QUEUED_MAX);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
    let per_address = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        std::net::IpAddr,
        usize,
    >::new()));
    tokio::spawn(async move {
        let mut last_logged: Option<std::time::Instant> = None;
        let mut log_at_most_each_second = |message: std::fmt::Arguments<'_>| {
            if last_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                tracing::warn!("{message}");
                last_logged = Some(std::time::Instant::now());
            }
        };
        loop {
            let (stream, from) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        log_at_most_each_second(format_args!(
                            "accepting a connection failed ({e}); retrying"
                        ));
                        tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                        continue;
                    }
                },
                () = accepted.closed() => return,
            };
            let Ok(slot) = handshakes.clone().try_acquire_owned() else {
                log_at_most_each_second(format_args!(
                    "{HANDSHAKES_MAX} TLS handshakes in flight; closed a connection from {from}"
                ));
                continue;
            };
            let Some(address_slot) = AddressSlot::take(&per_address, source_of(from.ip())) else {
                log_at_most_each_second(format_args!(
                    "{HANDSHAKES_PER_ADDRESS_MAX} TLS handshakes in flight from {}; closed one",
                    from.ip()
                ));
                continue;
            };
            // Small raft messages must not wait for a delayed ACK.
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(
                    Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
                    acceptor.accept(stream),
                )
                .await;
                // The slots are held until the server took the connection,
                // so connections waiting for it are bounded too.
                match handshake {
                    Ok(Ok(stream)) => {
                        let _ = accepted.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%from, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%from, "TLS handshake timed out"),
                }
                drop((slot, address_slot));
            });
        }
    });
    ReceiverStream::new(incoming)
}

/// Whom a connection is counted against: its IPv4 address, or its IPv6
/// /64 (one host usually holds a whole /64).
#[cfg(not(madsim))]
fn source_of(address: std::net::IpAddr) -> std::net::IpAddr {
    match address {
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            std::net::IpAddr::V6(prefix.into())
        }
        std::net::IpAddr::V6(v6) => std::net::IpAddr::V4(v6.to_ipv4_mapped().expect("checked")),
        v4 => v4,
    }
}

/// One handshake counted against its source until dropped.
#[cfg(not(madsim))]
struct AddressSlot {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    address: std::net::IpAddr,
}

#[cfg(not(madsim))]
impl AddressSlot {
    fn take(
        counts: &Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
        address: std::net::IpAddr,
    ) -> Option<Self> {
        let mut held = counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(address).or_insert(0);
        if *count >= HANDSHAKES_PER_ADDRESS_MAX {
            return None;
        }
        *count += 1;
        Some(Self {
            counts: counts.clone(),
            address,
        })
    }
}

#[cfg(not(madsim))]
impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.address) {
            *count -= 1;
            // Addresses without a handshake in flight are forgotten, so the
            // map is bounded by the handshakes in flight.
            if *count == 0 {
                held.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_api::tls;

    #[test]
    fn a_swapped_certificate_is_served_from_then_on() {
        let ca = tls::create_ca("test").unwrap();
        let one = tls::issue_node_cert(&ca, 1).unwrap();
        let two = tls::issue_node_cert(&ca, 1).unwrap();
        let live = LiveCertificate::new(&one, &ca.cert_pem).unwrap();
        let served =
            |live: &LiveCertificate| live.current.read().unwrap().cert[0].as_ref().to_vec();
        let first = served(&live);
        live.swap(&two).unwrap();
        assert_ne!(served(&live), first);
        // A key that is not the certificate's is refused; the current one stays.
        let mismatched = CertifiedKey {
            cert_pem: one.cert_pem.clone(),
            key_pem: two.key_pem.clone(),
        };
        assert!(live.swap(&mismatched).is_err());
        assert_ne!(served(&live), first);
        assert!(Arc::new(live).server_config(&ca.cert_pem).is_ok());
    }

    /// A client's handshake to the listener: the certificates it was shown.
    async fn handshake(address: std::net::SocketAddr, ca_pem: &str) -> Vec<Vec<u8>> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(address).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME).unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        stream
            .get_ref()
            .1
            .peer_certificates()
            .unwrap()
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect()
    }

    /// Goal: one address flooding the listener with connections that
    /// never speak TLS neither stops it accepting nor delays another
    /// address's handshake; a swapped certificate is what the next
    /// handshake sees, with the CA after it. Method: more silent
    /// connections from 127.0.0.2 than the listener runs handshakes at
    /// once, then handshakes from 127.0.0.1.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_flood_from_one_address_does_not_stall_the_others() {
        use tokio_stream::StreamExt;
        let ca = tls::create_ca("test").unwrap();
        let one = tls::issue_node_cert(&ca, 1).unwrap();
        let live = Arc::new(LiveCertificate::new(&one, &ca.cert_pem).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut incoming = tls_incoming(listener, live.server_config(&ca.cert_pem).unwrap());
        let served = tokio::spawn(async move {
            let mut streams = Vec::new();
            while let Some(Ok(stream)) = incoming.next().await {
                streams.push(stream);
            }
        });
        let mut silent = Vec::new();
        for _ in 0..HANDSHAKES_MAX + 44 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            silent.push(socket.connect(address).await.unwrap());
        }
        let shown = tokio::time::timeout(
            Duration::from_millis(HANDSHAKE_TIMEOUT_MS / 2),
            handshake(address, &ca.cert_pem),
        )
        .await
        .expect("a handshake waited behind the silent connections");
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        let one_der = CertificateDer::from_pem_slice(one.cert_pem.as_bytes()).unwrap();
        assert_eq!(shown, vec![one_der.to_vec(), ca_der.to_vec()]);
        let two = tls::issue_node_cert(&ca, 1).unwrap();
        live.swap(&two).unwrap();
        let two_der = CertificateDer::from_pem_slice(two.cert_pem.as_bytes()).unwrap();
        assert_eq!(handshake(address, &ca.cert_pem).await[0], two_der.to_vec());
        drop(silent);
        served.abort();
    }

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64() {
        let one: std::net::IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let other: std::net::IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(source_of(one), source_of(other));
        assert_ne!(
            source_of(one),
            source_of("2001:db8:1:3::5".parse().unwrap())
        );
        let mapped: std::net::IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            source_of(mapped),
            "10.0.0.1".parse::<std::net::IpAddr>().unwrap()
        );
    }
}
