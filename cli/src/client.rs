//! Connecting to a node's gRPC API, with the bearer token (if any) on
//! every request.
//!
//! Invariant: the token is set once, before the first request, from the
//! resolved connection settings (`settings.rs`); a failure to connect is
//! classified as "cluster unavailable" (exit 4).

use blixard_api::connect::{self, Bearer, ConnectError, Timeouts};
use blixard_api::pages;
use blixard_api::pb::{
    self, acl_client::AclClient, cluster_client::ClusterClient, node_client::NodeClient,
    vm_client::VmClient,
};

use crate::exit::{self, Exit, StatusError};

const CONNECT_TIMEOUT_MS: u64 = 3_000;
const REQUEST_TIMEOUT_MS: u64 = 30_000;

/// Sets the token every request carries (`authorization: Bearer TOKEN`).
pub fn set_token(token: Option<&str>) -> anyhow::Result<()> {
    let bearer = Bearer::new(token).map_err(|e| exit::error(Exit::Usage, e.to_string()))?;
    connect::install_token(bearer);
    Ok(())
}

/// Connects over TLS, trusting the cluster CA in `ca_file`, from here on
/// (without one: plain text, for clusters with security off).
pub fn set_ca_file(ca_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let Some(path) = ca_file else {
        return Ok(());
    };
    let ca_pem =
        blixard_api::tls::read(path).map_err(|e| exit::error(Exit::Usage, e.to_string()))?;
    blixard_api::connect::install(blixard_api::connect::Security::client(&ca_pem));
    Ok(())
}

/// A connection whose requests carry the token.
pub type Conn = connect::Connection;

async fn conn(addr: &str) -> anyhow::Result<Conn> {
    let timeouts = Timeouts {
        connect_ms: CONNECT_TIMEOUT_MS,
        request_ms: Some(REQUEST_TIMEOUT_MS),
    };
    connect::connect(addr, timeouts)
        .await
        .map_err(|error| match error {
            ConnectError::Unreachable { address, source } => exit::error(
                Exit::Unavailable,
                format!(
                    "cannot reach blixard at {address} ({source}); is the agent running? (set \
                     --addr or BLIXARD_ADDR; a cluster with TLS needs --ca-file or \
                     BLIXARD_CA_FILE)"
                ),
            ),
            error => exit::error(Exit::Usage, error.to_string()),
        })
}

pub async fn cluster(addr: &str) -> anyhow::Result<ClusterClient<Conn>> {
    Ok(ClusterClient::new(conn(addr).await?))
}

pub async fn node(addr: &str) -> anyhow::Result<NodeClient<Conn>> {
    Ok(NodeClient::new(conn(addr).await?))
}

pub async fn vm(addr: &str) -> anyhow::Result<VmClient<Conn>> {
    Ok(VmClient::new(conn(addr).await?))
}

pub async fn acl(addr: &str) -> anyhow::Result<AclClient<Conn>> {
    Ok(AclClient::new(conn(addr).await?))
}

/// Every VM (only group `group`'s members unless it is empty), page by
/// page.
pub async fn list_vms(client: &VmClient<Conn>, group: &str) -> anyhow::Result<pb::ListVmsResponse> {
    pages::all_vms(group, |request| {
        let mut client = client.clone();
        async move { client.list(request).await }
    })
    .await
    .map_err(status_error)
}

/// Every node, page by page.
pub async fn list_nodes(client: &NodeClient<Conn>) -> anyhow::Result<pb::ListNodesResponse> {
    pages::all_nodes(|request| {
        let mut client = client.clone();
        async move { client.list(request).await }
    })
    .await
    .map_err(status_error)
}

/// Turns a gRPC status into an error that reads well on a terminal and
/// keeps its code for the exit status.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(StatusError(status))
}
