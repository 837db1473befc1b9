//! gRPC services. Every request passes [`Authorize`], the one place where
//! the caller's identity is established; services that only cluster nodes
//! may use ask for it with [`require_node`].
//!
//! Invariant: with TLS on, a request carries `Caller::Node(id)` exactly
//! when its connection presented a certificate of the cluster CA naming
//! node `id` (rustls checked the chain during the handshake; the id is
//! read only from the certificate); any other request reaches a service
//! only with a token the cluster holds, as `Caller::Client`. With
//! security off every request is `Caller::Unverified`.

pub mod acl;
pub mod cluster;
pub mod feed;
pub mod lease;
pub mod node;
pub mod raft;
pub mod rules;
pub mod vm;
pub(crate) mod vm_node;

pub use vm_node::VmNode;

use tonic::{Request, Status};

use blixard_consensus::audit::{Actor, AuditContext};
use blixard_consensus::TokenRole;

use crate::handle::ClusterHandle;
use crate::tokens;

/// Who is calling, as the transport proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A cluster node, by its certificate.
    Node(u64),
    /// A client that presented a valid token (by its accessor).
    Client { accessor: String, role: TokenRole },
    /// Security is off: nothing was proven.
    Unverified,
}

/// The interceptor every RPC passes through.
#[derive(Clone)]
pub struct Authorize {
    pub tls: bool,
    /// Where the tokens are (this node's copy of the state).
    pub state: ClusterHandle,
}

/// The gRPC path of a request (`/blixard.v1.Vm/Create`), recorded by
/// [`record_path`] before [`Authorize`] runs (tonic's interceptors do not
/// see the URI).
#[derive(Debug, Clone)]
pub struct RpcPath(pub String);

/// Puts the request's [`RpcPath`] where the interceptor finds it.
pub fn record_path<B>(
    mut request: tonic::codegen::http::Request<B>,
) -> tonic::codegen::http::Request<B> {
    let path = RpcPath(request.uri().path().to_string());
    request.extensions_mut().insert(path);
    request
}

impl tonic::service::Interceptor for Authorize {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = match (self.tls, certificate_node(&request)) {
            (false, _) => Caller::Unverified,
            (true, Some(node)) => Caller::Node(node),
            (true, None) => self.client(&request).inspect_err(|status| {
                // Refusals are logged where they happen (they leave no
                // record in the audit trail).
                tracing::warn!(
                    path = request.extensions().get::<RpcPath>().map_or("", |p| p.0.as_str()),
                    from = ?request.remote_addr(),
                    code = ?status.code(),
                    "refused a request: {}",
                    status.message()
                );
            })?,
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

impl Authorize {
    /// A request without a node certificate: the RPC's rule decides, with
    /// the bearer token's role for client RPCs.
    #[allow(clippy::result_large_err)]
    fn client(&self, request: &Request<()>) -> Result<Caller, Status> {
        let path = request
            .extensions()
            .get::<RpcPath>()
            .map_or("", |path| path.0.as_str());
        let permission = match rules::rule(path) {
            Some(rules::Rule::Client(permission)) => permission,
            Some(rules::Rule::Peer) => {
                return Err(Status::permission_denied(format!(
                    "{path} is for cluster nodes only: present a node certificate of the \
                     cluster CA (a token is not enough)"
                )))
            }
            None => {
                return Err(Status::permission_denied(format!(
                    "no access rule for {:?}",
                    blixard_api::validate::echo(path)
                )))
            }
        };
        let (accessor, role) = self.token(request)?;
        if !rules::allows(role, permission) {
            return Err(Status::permission_denied(format!(
                "token {accessor} ({}) may not {}: {path} needs a token that may",
                role.as_str(),
                permission.as_str()
            )));
        }
        Ok(Caller::Client { accessor, role })
    }

    /// The accessor and role of the request's bearer token, or
    /// `Unauthenticated`.
    #[allow(clippy::result_large_err)]
    fn token(&self, request: &Request<()>) -> Result<(String, TokenRole), Status> {
        let Some(value) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "this cluster needs a token: give --token or set BLIXARD_TOKEN (the founding \
                 node wrote the first one to DATA_DIR/management-token)",
            ));
        };
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer TOKEN`"))?;
        let hash = tokens::hash(secret);
        let token = self.state.read_state(|state| {
            state.token_by_secret_hash(&hash).map(|t| {
                (
                    t.accessor.clone(),
                    t.role,
                    t.is_valid_at(vm_node::now_unix_ms()),
                )
            })
        });
        match token {
            Some((accessor, role, true)) => Ok((accessor, role)),
            Some((accessor, _, false)) => Err(Status::unauthenticated(format!(
                "token {accessor} has expired"
            ))),
            None => Err(Status::unauthenticated(
                "the token is not valid here (unknown or revoked)",
            )),
        }
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

/// Who made `request`, for the audit trail of the change it asks for.
pub fn audit_context<T>(request: &Request<T>) -> AuditContext {
    let actor = match request.extensions().get::<Caller>() {
        Some(Caller::Node(node_id)) => Actor::Node { node_id: *node_id },
        Some(Caller::Client { accessor, .. }) => Actor::Token {
            accessor: accessor.clone(),
        },
        Some(Caller::Unverified) | None => Actor::Anonymous,
    };
    AuditContext {
        actor,
        at_unix_ms: vm_node::now_unix_ms(),
        from: request
            .remote_addr()
            .map(|address| address.to_string())
            .unwrap_or_default(),
        relayed_by: None,
    }
}

/// Whether the caller may read secrets in VM specs (`vm:read-secrets`):
/// nodes and a cluster with security off may; a client only if its token
/// allows it. A request no interceptor marked may not (simulations, which
/// run no interceptor, run insecure).
pub fn reads_secrets<T>(request: &Request<T>) -> bool {
    match request.extensions().get::<Caller>() {
        Some(Caller::Node(_) | Caller::Unverified) => true,
        Some(Caller::Client { role, .. }) => rules::allows(*role, rules::Permission::VmReadSecrets),
        None => cfg!(madsim),
    }
}

/// For RPCs only cluster nodes may make: the calling node's id (`None`
/// with security off), or `PermissionDenied` naming `what`.
#[allow(clippy::result_large_err)]
pub fn require_node<T>(request: &Request<T>, what: &str) -> Result<Option<u64>, Status> {
    // madsim-tonic runs no layers, so no interceptor put a caller there;
    // simulations run insecure. Outside them a missing caller is refused.
    #[cfg(madsim)]
    let unverified = Some(&Caller::Unverified);
    #[cfg(not(madsim))]
    let unverified = None;
    match request.extensions().get::<Caller>().or(unverified) {
        Some(Caller::Node(id)) => Ok(Some(*id)),
        Some(Caller::Unverified) => Ok(None),
        Some(Caller::Client { .. }) | None => Err(Status::permission_denied(format!(
            "{what} is for cluster nodes only: present a node certificate of the cluster CA"
        ))),
    }
}
