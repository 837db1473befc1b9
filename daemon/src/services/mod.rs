//! gRPC services. Every request passes [`Authorize`], the one place where
//! the caller's identity is established; services that only cluster nodes
//! may use ask for it with [`require_node`].
//!
//! Invariant: with TLS on, a request carries `Caller::Node(id)` exactly
//! when its connection presented a certificate of the cluster CA naming
//! node `id` (rustls checked the chain during the handshake; the id is
//! read only from the certificate), and `Caller::Client` otherwise. With
//! security off every request is `Caller::Unverified`.

pub mod cluster;
pub mod feed;
pub mod node;
pub mod raft;
pub mod vm;
pub(crate) mod vm_node;

pub use vm_node::VmNode;

use tonic::{Request, Status};

/// Who is calling, as the transport proved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A cluster node, by its certificate.
    Node(u64),
    /// Anyone else (clients authenticate with tokens).
    Client,
    /// Security is off: nothing was proven.
    Unverified,
}

/// The interceptor every RPC passes through.
#[derive(Debug, Clone, Copy)]
pub struct Authorize {
    pub tls: bool,
}

impl tonic::service::Interceptor for Authorize {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = match self.tls {
            false => Caller::Unverified,
            true => certificate_node(&request).map_or(Caller::Client, Caller::Node),
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(not(madsim))]
fn certificate_node(request: &Request<()>) -> Option<u64> {
    let certs = request.peer_certs()?;
    blixard_api::tls::node_id_of(certs.first()?)
}

#[cfg(madsim)]
fn certificate_node(_request: &Request<()>) -> Option<u64> {
    None
}

/// For RPCs only cluster nodes may make: the calling node's id (`None`
/// with security off), or `PermissionDenied` naming `what`.
#[allow(clippy::result_large_err)]
pub fn require_node<T>(request: &Request<T>, what: &str) -> Result<Option<u64>, Status> {
    match request.extensions().get::<Caller>() {
        Some(Caller::Node(id)) => Ok(Some(*id)),
        Some(Caller::Unverified) => Ok(None),
        Some(Caller::Client) | None => Err(Status::permission_denied(format!(
            "{what} is for cluster nodes only: present a node certificate of the cluster CA"
        ))),
    }
}
