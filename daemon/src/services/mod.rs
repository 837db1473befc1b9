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
pub mod pages;
pub mod raft;
pub mod rules;
pub mod streams;
pub mod vm;
pub(crate) mod vm_node;

pub use vm_node::VmNode;

use tonic::{Request, Status};

use blixard_consensus::audit::{Actor, AuditContext};
use blixard_consensus::{ClusterState, TokenRole};

use crate::bounds::RareLog;
use crate::handle::{ClusterHandle, Requester};
use crate::tokens;

/// Who is calling, as the transport proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A cluster node, by its certificate.
    Node(u64),
    /// A client that presented a valid token (by its accessor), directly
    /// or through a node that forwarded its request (`relayed_by`).
    Client {
        accessor: String,
        role: TokenRole,
        /// Whether the role allows `vm:read-secrets` (resolved when the
        /// request was let in).
        reads_secrets: bool,
        relayed_by: Option<u64>,
    },
    /// Security is off: nothing was proven.
    Unverified,
    /// Security is on and the caller proved nothing: only RPCs carrying
    /// their own credential (a join token) let it in.
    Anonymous,
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

/// The certificate a node's request came with, by its SHA-256 (lowercase
/// hex of the DER), for services that record or recheck it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedCertificate {
    pub node_id: u64,
    pub sha256: String,
}

impl tonic::service::Interceptor for Authorize {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = match (self.tls, presented_certificate(&request)) {
            (false, _) => Ok(Caller::Unverified),
            (true, Some(presented)) => {
                let caller = self.node(&request, &presented);
                request.extensions_mut().insert(presented);
                caller
            }
            (true, None) => self.client(&request),
        };
        let caller = caller.inspect_err(|status| log_refusal(&request, status))?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// Why `state` refuses node `presented.node_id`'s certificate, if it does
/// (see [`ClusterState::node_certificate_accepted`]).
pub(crate) fn certificate_refusal(
    state: &ClusterState,
    presented: &PresentedCertificate,
) -> Option<Status> {
    let node = presented.node_id;
    if state.node_certificate_accepted(node, &presented.sha256) {
        return None;
    }
    Some(Status::permission_denied(
        match state.removed_nodes.contains(&node) {
            true => format!(
                "node {node} was removed from the cluster: its certificate is no longer \
                 accepted (a node joins again only under a new node id)"
            ),
            false => format!(
                "node {node}'s certificate {}… is not the one the cluster holds it to (the \
                 one it served since it joined, or its latest renewal): a certificate replaced \
                 by a renewal or made for its id by hand is refused (restart the node if it \
                 still holds an old certificate)",
                &presented.sha256[..16]
            ),
        },
    ))
}

/// Refusals are logged where they happen (they leave no record in the
/// audit trail), at a bounded rate with the count since, so a flood of
/// bad requests cannot fill the disk.
static REFUSALS: RareLog = RareLog::new();

fn log_refusal(request: &Request<()>, status: &Status) {
    note_refusal(rpc_path(request), request.remote_addr(), status);
}

/// Logs a refusal a service made itself (see [`log_refusal`]).
pub(super) fn note_refusal(path: &str, from: Option<std::net::SocketAddr>, status: &Status) {
    if let Some(unlogged) = REFUSALS.due() {
        tracing::warn!(
            path,
            from = ?from,
            code = ?status.code(),
            refused_since_last_report = unlogged,
            "refused a request: {}",
            status.message()
        );
    }
}

fn rpc_path<T>(request: &Request<T>) -> &str {
    request
        .extensions()
        .get::<RpcPath>()
        .map_or("", |path| path.0.as_str())
}

/// The rule of the request's RPC; a path without one is refused.
#[allow(clippy::result_large_err)]
fn rule_of(request: &Request<()>) -> Result<rules::Rule, Status> {
    let path = rpc_path(request);
    rules::rule(path).ok_or_else(|| {
        Status::permission_denied(format!(
            "no access rule for {:?}",
            blixard_api::validate::echo(path)
        ))
    })
}

impl Authorize {
    /// A request with a node certificate: peer RPCs are the node's own;
    /// a client RPC the node forwards for a client carries that client's
    /// token and is judged as that client; without one a node only reads.
    #[allow(clippy::result_large_err)]
    fn node(
        &self,
        request: &Request<()>,
        presented: &PresentedCertificate,
    ) -> Result<Caller, Status> {
        if let Some(refusal) = self.state.read_state(|s| certificate_refusal(s, presented)) {
            return Err(refusal);
        }
        let node = presented.node_id;
        let permission = match rule_of(request)? {
            rules::Rule::Peer | rules::Rule::JoinToken => return Ok(Caller::Node(node)),
            rules::Rule::Client(permission) => permission,
        };
        if request.metadata().get(AUTHORIZATION).is_some() {
            return match self.client(request)? {
                Caller::Client {
                    accessor,
                    role,
                    reads_secrets,
                    ..
                } => Ok(Caller::Client {
                    accessor,
                    role,
                    reads_secrets,
                    relayed_by: Some(node),
                }),
                other => Ok(other),
            };
        }
        if permission.is_read() {
            return Ok(Caller::Node(node));
        }
        Err(Status::permission_denied(format!(
            "{} needs {}: a node forwards it only with the client's token (a node \
             certificate alone only reads)",
            rpc_path(request),
            permission.as_str()
        )))
    }

    /// A request without a node certificate: the RPC's rule decides, with
    /// the bearer token's role for client RPCs.
    #[allow(clippy::result_large_err)]
    fn client(&self, request: &Request<()>) -> Result<Caller, Status> {
        let path = rpc_path(request);
        let permission = match rule_of(request)? {
            rules::Rule::Client(permission) => permission,
            rules::Rule::Peer => {
                return Err(Status::permission_denied(format!(
                    "{path} is for cluster nodes only: present a node certificate of the \
                     cluster CA (a token is not enough)"
                )))
            }
            rules::Rule::JoinToken => return Ok(Caller::Anonymous),
        };
        let hash = bearer_hash(request.metadata())?;
        self.require_fresh_tokens()?;
        self.state
            .read_state(|state| token_verdict(state, &hash, permission, path))
    }
}

/// How long a worker may go without a voter confirming its copy of the
/// state before it stops judging tokens by that copy (a token revoked
/// meanwhile would still pass).
pub const TOKENS_STALE_AFTER_MS: u64 = 5_000;

impl Authorize {
    /// On a worker: `Unavailable` unless a voter confirmed its copy of
    /// the state (and so its tokens) within [`TOKENS_STALE_AFTER_MS`].
    #[allow(clippy::result_large_err)]
    fn require_fresh_tokens(&self) -> Result<(), Status> {
        if self.state.is_member() {
            return Ok(());
        }
        let stale_after = std::time::Duration::from_millis(TOKENS_STALE_AFTER_MS);
        match self.state.mirror().unconfirmed_for() {
            Some(age) if age <= stale_after => Ok(()),
            age => Err(Status::unavailable(format!(
                "this worker {} so it cannot check tokens; retry through a voter",
                match age {
                    Some(age) => format!("has not heard from the voters for {} s,", age.as_secs()),
                    None => "has not heard from the voters yet,".to_string(),
                }
            ))),
        }
    }
}

/// The metadata key of a client's bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// The hash of the bearer token in `metadata`, or `Unauthenticated`.
#[allow(clippy::result_large_err)]
pub fn bearer_hash(metadata: &tonic::metadata::MetadataMap) -> Result<String, Status> {
    let Some(value) = metadata.get(AUTHORIZATION) else {
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
    Ok(tokens::hash(secret))
}

/// The client whose token's secret hashes to `secret_sha256`, if `state`
/// holds the token, it has not expired (else `Unauthenticated`) and its
/// role allows `permission` for `what` (else `PermissionDenied`).
#[allow(clippy::result_large_err)]
pub fn token_verdict(
    state: &ClusterState,
    secret_sha256: &str,
    permission: rules::Permission,
    what: &str,
) -> Result<Caller, Status> {
    let token = match state.token_by_secret_hash(secret_sha256) {
        Some(t) if t.is_valid_at(blixard_api::unix_ms_now()) => t,
        Some(t) => {
            return Err(Status::unauthenticated(format!(
                "token {} has expired",
                t.accessor
            )))
        }
        None => {
            return Err(Status::unauthenticated(
                "the token is not valid here (unknown or revoked)",
            ))
        }
    };
    if !state.role_allows(&token.role, permission) {
        return Err(Status::permission_denied(format!(
            "token {} ({}) may not {}: {what} needs a token that may",
            token.accessor,
            token.role.as_str(),
            permission.as_str()
        )));
    }
    Ok(Caller::Client {
        accessor: token.accessor.clone(),
        role: token.role.clone(),
        reads_secrets: state.role_allows(&token.role, rules::Permission::VmReadSecrets),
        relayed_by: None,
    })
}

#[cfg(not(madsim))]
fn presented_certificate(request: &Request<()>) -> Option<PresentedCertificate> {
    let certs = request.peer_certs()?;
    let certificate = certs.first()?;
    Some(PresentedCertificate {
        node_id: blixard_api::tls::node_id_of(certificate)?,
        sha256: blixard_api::tls::fingerprint_sha256_der(certificate.as_ref()),
    })
}

#[cfg(madsim)]
fn presented_certificate(_request: &Request<()>) -> Option<PresentedCertificate> {
    None
}

/// Who made `request`: for the audit trail of the change it asks for,
/// and the client's token for a worker to hand on with it.
pub fn requester<T>(request: &Request<T>) -> Requester {
    Requester {
        audit: audit_context(request),
        authorization: request.metadata().get(AUTHORIZATION).cloned(),
    }
}

fn audit_context<T>(request: &Request<T>) -> AuditContext {
    let actor = match request.extensions().get::<Caller>() {
        Some(Caller::Node(node_id)) => Actor::Node { node_id: *node_id },
        Some(Caller::Client { accessor, .. }) => Actor::Token {
            accessor: accessor.clone(),
        },
        Some(Caller::Unverified | Caller::Anonymous) | None => Actor::Anonymous,
    };
    let relayed_by = match request.extensions().get::<Caller>() {
        Some(Caller::Client { relayed_by, .. }) => *relayed_by,
        _ => None,
    };
    AuditContext {
        actor,
        at_unix_ms: blixard_api::unix_ms_now(),
        from: request
            .remote_addr()
            .map(|address| address.to_string())
            .unwrap_or_default(),
        relayed_by,
    }
}

/// Whether the caller may read secrets in VM specs (`vm:read-secrets`):
/// nodes and a cluster with security off may; a client only if its token
/// allows it. A request no interceptor marked may not (simulations, which
/// run no interceptor, run insecure).
pub fn reads_secrets<T>(request: &Request<T>) -> bool {
    match request.extensions().get::<Caller>() {
        Some(Caller::Node(_) | Caller::Unverified) => true,
        Some(Caller::Client { reads_secrets, .. }) => *reads_secrets,
        Some(Caller::Anonymous) => false,
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
        Some(Caller::Client { .. } | Caller::Anonymous) | None => {
            Err(Status::permission_denied(format!(
                "{what} is for cluster nodes only: present a node certificate of the cluster CA"
            )))
        }
    }
}

/// Refuses a peer (`who`) whose data directory belongs to another cluster
/// than `own`: a founding node whose directory was wiped, or a node
/// pointed at the wrong cluster, must never be stepped, fed or joined.
#[allow(clippy::result_large_err)]
pub fn same_cluster(own: &str, theirs: &str, who: &str) -> Result<(), Status> {
    if own == theirs {
        return Ok(());
    }
    // Anyone can send these, as often as they like.
    static FOREIGN: RareLog = RareLog::new();
    let theirs = blixard_api::validate::echo(theirs);
    if let Some(unlogged) = FOREIGN.due() {
        tracing::warn!(%who, cluster_id = %theirs, refused_since_last_report = unlogged, "refused a node of another cluster");
    }
    Err(Status::permission_denied(format!(
        "this node belongs to cluster {own}; the {who} belongs to cluster {theirs:?} (README: \
         Recovering a node)"
    )))
}
