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
//!
//! Invariant: at most [`PEER_CONNECTIONS_MAX`] handshaken connections
//! from nodes (a certificate the cluster CA signed for a node id; at most
//! [`PEER_CONNECTIONS_PER_NODE_MAX`] per node id) and at most
//! [`CLIENT_CONNECTIONS_MAX`] from clients are open at once, at most
//! [`CLIENT_CONNECTIONS_PER_ADDRESS_MAX`] of those from one IP address;
//! a connection past a bound is closed once its handshake is done. Peers
//! and clients count separately, so clients holding connections open
//! never shut raft out (nor the other way round). (A removed node's
//! certificate is let in, within its node's bound, so that each call can
//! be refused saying why: `services::certificate_refusal`.)
//!
//! Invariant: a connection with no call in flight for its idle timeout is
//! closed ([`crate::idle`]).

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

#[cfg(not(madsim))]
use crate::bounds::{source_of, KeyedCounts, KeyedSlot, RareLog};
#[cfg(not(madsim))]
use crate::idle::{Activity, Tracked};
use crate::Error;
#[cfg(not(madsim))]
use std::future::Future as _;

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
/// Open connections from other nodes at most: a voter is connected to by
/// every worker it feeds and every peer it forwards for.
pub const PEER_CONNECTIONS_MAX: usize = 1024;
/// Open connections made with one node's certificate at most: a node
/// needs a few (raft, its feed, forwarded calls, probes).
pub const PEER_CONNECTIONS_PER_NODE_MAX: usize = 16;
/// Open connections from clients at most.
pub const CLIENT_CONNECTIONS_MAX: usize = 4096;
/// Open connections from clients at one IP address (an IPv6 /64) at most.
pub const CLIENT_CONNECTIONS_PER_ADDRESS_MAX: usize = 256;

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
    idle: Duration,
) -> ReceiverStream<Result<Counted<TlsStream<TcpStream>>, std::io::Error>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (accepted, incoming) = tokio::sync::mpsc::channel(ACCEPTED_QUEUED_MAX);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
    let per_address = KeyedCounts::new(HANDSHAKES_PER_ADDRESS_MAX);
    let limits = ConnectionLimits::new();
    let refusals = Arc::new(RareLog::new());
    tokio::spawn(async move {
        let full = RareLog::new();
        loop {
            let (stream, from) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        full.warn(format_args!(
                            "accepting a connection failed ({e}); retrying"
                        ));
                        tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                        continue;
                    }
                },
                () = accepted.closed() => return,
            };
            let Ok(slot) = handshakes.clone().try_acquire_owned() else {
                full.warn(format_args!(
                    "{HANDSHAKES_MAX} TLS handshakes in flight; closed a connection from {from}"
                ));
                continue;
            };
            let Some(address_slot) = per_address.take(source_of(from.ip())) else {
                full.warn(format_args!(
                    "{HANDSHAKES_PER_ADDRESS_MAX} TLS handshakes in flight from {}; closed one",
                    from.ip()
                ));
                continue;
            };
            // Small raft messages must not wait for a delayed ACK.
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let accepted = accepted.clone();
            let limits = limits.clone();
            let refusals = refusals.clone();
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
                        let peer = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|cert| blixard_api::tls::node_id_of(cert.as_ref()));
                        match limits.admit(from.ip(), peer) {
                            Ok(slot) => {
                                let stream = Counted::new(stream, slot, idle);
                                let _ = accepted.send(Ok(stream)).await;
                            }
                            Err(full) => refusals
                                .warn(format_args!("closed a connection from {from}: {full}")),
                        }
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

/// Plain (insecure) connections, counted as clients: without
/// certificates nothing tells a peer from a client.
#[cfg(not(madsim))]
pub fn plain_incoming(
    listener: TcpListener,
    idle: Duration,
) -> impl tokio_stream::Stream<Item = Result<Counted<TcpStream>, std::io::Error>> {
    use tokio_stream::StreamExt as _;
    let limits = ConnectionLimits::new();
    let refusals = RareLog::new();
    tonic::transport::server::TcpIncoming::from(listener)
        // Without it Nagle holds small raft messages back for a delayed
        // ACK (~40 ms); `serve_with_incoming` ignores the builder's.
        .with_nodelay(Some(true))
        .filter_map(move |accepted| match accepted {
            Ok(stream) => {
                let from = stream.peer_addr().map(|a| a.ip()).ok()?;
                match limits.admit(from, None) {
                    Ok(slot) => Some(Ok(Counted::new(stream, slot, idle))),
                    Err(full) => {
                        refusals.warn(format_args!("closed a connection from {from}: {full}"));
                        None
                    }
                }
            }
            Err(e) => Some(Err(e)),
        })
}

/// Which connection bound was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("{PEER_CONNECTIONS_MAX} node connections open")]
    Peers,
    #[error("{PEER_CONNECTIONS_PER_NODE_MAX} connections open with node {0}'s certificate")]
    PeersAsNode(u64),
    #[error("{CLIENT_CONNECTIONS_MAX} client connections open")]
    Clients,
    #[error("{CLIENT_CONNECTIONS_PER_ADDRESS_MAX} client connections open from this address")]
    ClientsFromAddress,
}

/// The open-connection bounds of one listener (see the module invariant).
#[cfg(not(madsim))]
#[derive(Debug, Clone)]
struct ConnectionLimits {
    peers: Arc<tokio::sync::Semaphore>,
    per_node: KeyedCounts<u64>,
    clients: Arc<tokio::sync::Semaphore>,
    client_addresses: KeyedCounts<std::net::IpAddr>,
}

#[cfg(not(madsim))]
impl ConnectionLimits {
    fn new() -> Self {
        Self {
            peers: Arc::new(tokio::sync::Semaphore::new(PEER_CONNECTIONS_MAX)),
            per_node: KeyedCounts::new(PEER_CONNECTIONS_PER_NODE_MAX),
            clients: Arc::new(tokio::sync::Semaphore::new(CLIENT_CONNECTIONS_MAX)),
            client_addresses: KeyedCounts::new(CLIENT_CONNECTIONS_PER_ADDRESS_MAX),
        }
    }

    /// A slot for a connection from `from`, made with node `peer`'s
    /// certificate if it showed one.
    fn admit(&self, from: std::net::IpAddr, peer: Option<u64>) -> Result<ConnectionSlot, Full> {
        if let Some(node_id) = peer {
            // Per node id first: one certificate (a leaked or a removed
            // node's) cannot take every node's slots.
            let node = self
                .per_node
                .take(node_id)
                .ok_or(Full::PeersAsNode(node_id))?;
            let permit = self
                .peers
                .clone()
                .try_acquire_owned()
                .map_err(|_| Full::Peers)?;
            return Ok(ConnectionSlot {
                _permit: permit,
                _node: Some(node),
                _address: None,
            });
        }
        let address = self
            .client_addresses
            .take(source_of(from))
            .ok_or(Full::ClientsFromAddress)?;
        let permit = self
            .clients
            .clone()
            .try_acquire_owned()
            .map_err(|_| Full::Clients)?;
        Ok(ConnectionSlot {
            _permit: permit,
            _node: None,
            _address: Some(address),
        })
    }
}

/// An open connection's place under the bounds, given back when the
/// connection is dropped.
#[cfg(not(madsim))]
#[derive(Debug)]
pub struct ConnectionSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _node: Option<KeyedSlot<u64>>,
    _address: Option<KeyedSlot<std::net::IpAddr>>,
}

/// A connection holding its [`ConnectionSlot`] for as long as it is open,
/// closed once it has held no call for `idle`; reads and writes go
/// straight through.
#[cfg(not(madsim))]
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    _slot: ConnectionSlot,
    activity: Arc<Activity>,
    idle: Duration,
    /// When to look at `activity` next.
    idle_check: std::pin::Pin<Box<tokio::time::Sleep>>,
}

#[cfg(not(madsim))]
impl<S> Counted<S> {
    fn new(inner: S, slot: ConnectionSlot, idle: Duration) -> Self {
        Self {
            inner,
            _slot: slot,
            activity: Activity::new(),
            idle,
            idle_check: Box::pin(tokio::time::sleep(idle)),
        }
    }

    /// Whether the connection has been idle too long; otherwise the next
    /// look is scheduled (and its wake-up registered with `cx`).
    fn idle_too_long(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        while self.idle_check.as_mut().poll(cx).is_ready() {
            let now = tokio::time::Instant::now();
            let next = match self.activity.idle_deadline(self.idle) {
                Some(deadline) if deadline <= now => return true,
                Some(deadline) => deadline,
                // A call in flight: it is not idle for at least `idle`.
                None => now + self.idle,
            };
            self.idle_check.as_mut().reset(next);
        }
        false
    }
}

#[cfg(not(madsim))]
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Counted<S> {
    type ConnectInfo = Tracked<S::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        Tracked {
            info: self.inner.connect_info(),
            activity: self.activity.clone(),
        }
    }
}

#[cfg(not(madsim))]
impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        // hyper always has a read pending, so this is where the idle
        // check's timer wakes the connection; an end of input closes it.
        // Only when nothing arrived: a request already on its way is read.
        let read = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if read.is_pending() && self.idle_too_long(cx) {
            tracing::debug!("closed a connection idle for {:?}", self.idle);
            return std::task::Poll::Ready(Ok(()));
        }
        read
    }
}

#[cfg(not(madsim))]
impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
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

    /// A CA, node 1's certificate served live, and a listener on
    /// 127.0.0.1 with the address and the connections it hands over.
    async fn listening() -> (
        CertifiedKey,
        CertifiedKey,
        Arc<LiveCertificate>,
        std::net::SocketAddr,
        ReceiverStream<Result<Counted<TlsStream<TcpStream>>, std::io::Error>>,
    ) {
        let ca = tls::create_ca("test").unwrap();
        let one = tls::issue_node_cert(&ca, 1).unwrap();
        let live = Arc::new(LiveCertificate::new(&one, &ca.cert_pem).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let config = live.server_config(&ca.cert_pem).unwrap();
        let incoming = tls_incoming(listener, config, Duration::from_secs(300));
        (ca, one, live, address, incoming)
    }

    /// A client's handshake to the listener: the certificates it was shown.
    async fn handshake(address: std::net::SocketAddr, ca_pem: &str) -> Vec<Vec<u8>> {
        connect(address, "127.0.0.1", ca_pem, None)
            .await
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
        let (ca, one, live, address, mut incoming) = listening().await;
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

    /// A handshaken connection from `from`, with `client` as its
    /// certificate if given.
    async fn connect(
        address: std::net::SocketAddr,
        from: &str,
        ca_pem: &str,
        client: Option<&CertifiedKey>,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match client {
            Some(node) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(node.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let tcp = socket.connect(address).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME).unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap()
    }

    /// Whether the listener closed `stream` (it sends nothing to a
    /// connection it keeps, so a read ends only on a close).
    async fn closed_by_listener(stream: &mut tokio_rustls::client::TlsStream<TcpStream>) -> bool {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// Goal: clients holding connections open from one address are held
    /// to their bound; the listener keeps taking clients from elsewhere
    /// and nodes (their own bound), and a slot given back is taken again.
    /// Method: the per-address bound of held client connections from
    /// 127.0.0.2; one more from there is closed; a client from 127.0.0.1
    /// and a node from 127.0.0.2 are served; one held connection is closed
    /// and the next from 127.0.0.2 is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_from_one_address_are_bounded_and_shut_nobody_else_out() {
        // The test plays the server: it holds what the listener hands over.
        let (ca, _, _, address, mut incoming) = listening().await;
        let mut served = Vec::new();
        let mut serve = async |count: usize, served: &mut Vec<_>| {
            use tokio_stream::StreamExt;
            for _ in 0..count {
                let next = tokio::time::timeout(Duration::from_secs(20), incoming.next())
                    .await
                    .expect("the listener handed over no connection");
                served.push(next.unwrap().unwrap());
            }
        };
        let mut held = Vec::new();
        for _ in 0..CLIENT_CONNECTIONS_PER_ADDRESS_MAX {
            held.push(connect(address, "127.0.0.2", &ca.cert_pem, None).await);
            serve(1, &mut served).await;
        }
        let mut over = connect(address, "127.0.0.2", &ca.cert_pem, None).await;
        assert!(
            closed_by_listener(&mut over).await,
            "a connection past the bound was kept"
        );

        let _elsewhere = connect(address, "127.0.0.1", &ca.cert_pem, None).await;
        serve(1, &mut served).await;
        let node = tls::issue_node_cert(&ca, 2).unwrap();
        let _peer = connect(address, "127.0.0.2", &ca.cert_pem, Some(&node)).await;
        serve(1, &mut served).await;

        // A connection the server drops gives its slot back.
        served.remove(0);
        let _again = connect(address, "127.0.0.2", &ca.cert_pem, None).await;
        serve(1, &mut served).await;
        drop(held);
    }
}
