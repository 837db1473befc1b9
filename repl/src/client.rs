//! Connecting to a node's gRPC API.

use std::time::Duration;

use anyhow::Context;
use blixard_api::pb::{
    cluster_client::ClusterClient, node_client::NodeClient, vm_client::VmClient,
};
use tonic::transport::{Channel, Endpoint};

const CONNECT_TIMEOUT_MS: u64 = 3_000;
const REQUEST_TIMEOUT_MS: u64 = 30_000;

pub async fn channel(addr: &str) -> anyhow::Result<Channel> {
    blixard_api::validate::address(addr)?;
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("invalid address {addr:?}"))?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS));
    endpoint.connect().await.with_context(|| {
        format!(
            "cannot reach blixard at {addr}; is the agent running? (set --addr or BLIXARD_ADDR)"
        )
    })
}

pub async fn cluster(addr: &str) -> anyhow::Result<ClusterClient<Channel>> {
    Ok(ClusterClient::new(channel(addr).await?))
}

pub async fn node(addr: &str) -> anyhow::Result<NodeClient<Channel>> {
    Ok(NodeClient::new(channel(addr).await?))
}

pub async fn vm(addr: &str) -> anyhow::Result<VmClient<Channel>> {
    Ok(VmClient::new(channel(addr).await?))
}

/// Turns a gRPC status into an error that reads well on a terminal.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}
