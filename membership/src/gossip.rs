//! The chitchat instance and the membership view read from it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::UdpTransport;
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion,
};

use crate::info::{NodeInfo, INFO_KEY};
use crate::Error;

/// Tunables of one node's gossip.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub node_id: u64,
    /// Nodes gossip only with nodes of the same cluster name.
    pub cluster_name: String,
    pub gossip_bind: SocketAddr,
    /// Where peers reach this node (the bind address unless it is a
    /// wildcard).
    pub gossip_advertise: SocketAddr,
    /// `host:port` gossip addresses to start from.
    pub seeds: Vec<String>,
    pub gossip_interval_ms: u64,
    /// Phi-accrual threshold above which a silent node counts as dead.
    pub phi_threshold: f64,
    /// Dead nodes are forgotten (dropped from the view) after this long.
    pub dead_node_forget_after_ms: u64,
}

/// A node as this node's gossip sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub node_id: u64,
    pub gossip_address: SocketAddr,
    /// Start time (unix ms) of the incarnation seen; a restart raises it.
    pub generation: u64,
    pub alive: bool,
    /// The node's self-description, or why it could not be read.
    pub info: Result<NodeInfo, String>,
}

/// A running gossip instance. Dropping it stops gossip.
pub struct Membership {
    handle: ChitchatHandle,
    node_id: u64,
    gossip_address: SocketAddr,
    cluster_name: String,
}

impl Membership {
    /// Binds the gossip socket and starts gossiping `info`.
    pub async fn start(config: MembershipConfig, info: &NodeInfo) -> Result<Self, Error> {
        assert_eq!(config.node_id, info.node_id, "gossip info of another node");
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let chitchat_id = ChitchatId::new(
            config.node_id.to_string(),
            generation,
            config.gossip_advertise,
        );
        let interval = Duration::from_millis(config.gossip_interval_ms.max(10));
        let failure_detector_config = FailureDetectorConfig {
            phi_threshold: config.phi_threshold,
            sampling_window_size: 1_000,
            // Gaps longer than this are not learned as normal heartbeat
            // intervals (a pause must not teach the detector patience).
            max_interval: interval * 20,
            initial_interval: interval * 2,
            dead_node_grace_period: Duration::from_millis(config.dead_node_forget_after_ms),
        };
        let chitchat_config = ChitchatConfig {
            chitchat_id,
            cluster_id: config.cluster_name.clone(),
            gossip_interval: interval,
            listen_addr: config.gossip_bind,
            seed_nodes: config.seeds.clone(),
            failure_detector_config,
            marked_for_deletion_grace_period: Duration::from_secs(3_600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V1,
        };
        let handle = spawn_chitchat(
            chitchat_config,
            vec![(INFO_KEY.to_string(), info.encode())],
            &UdpTransport,
        )
        .await
        .map_err(|e| Error::Bind {
            address: config.gossip_bind.to_string(),
            detail: format!("{e:#}"),
        })?;
        Ok(Self {
            handle,
            node_id: config.node_id,
            gossip_address: config.gossip_advertise,
            cluster_name: config.cluster_name,
        })
    }

    pub fn gossip_address(&self) -> SocketAddr {
        self.gossip_address
    }

    /// The cluster this node gossips within.
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// Replaces this node's advertised info (a no-op if unchanged).
    pub async fn publish(&self, info: &NodeInfo) {
        assert_eq!(self.node_id, info.node_id, "gossip info of another node");
        let encoded = info.encode();
        self.handle
            .with_chitchat(|chitchat| {
                let own = chitchat.self_node_state();
                if own.get(INFO_KEY) != Some(encoded.as_str()) {
                    own.set(INFO_KEY, &encoded);
                }
            })
            .await;
    }

    /// Gossips once with `address` (e.g. a member not seen in gossip yet).
    pub fn gossip_to(&self, address: SocketAddr) {
        if let Err(error) = self.handle.gossip(address) {
            tracing::debug!(%error, %address, "gossip stopped");
        }
    }

    /// Every node seen, one entry per node id (its latest generation),
    /// ordered by node id.
    pub async fn members(&self) -> Vec<Member> {
        let mut latest: BTreeMap<u64, Member> = BTreeMap::new();
        self.handle
            .with_chitchat(|chitchat| {
                let live: Vec<ChitchatId> = chitchat.live_nodes().cloned().collect();
                for (id, state) in chitchat.node_states() {
                    let Ok(node_id) = id.node_id.parse::<u64>() else {
                        tracing::debug!(id = %id.node_id, "ignoring gossip member with a foreign id");
                        continue;
                    };
                    let info = match state.get(INFO_KEY) {
                        Some(value) => NodeInfo::decode(value).and_then(|info| {
                            if info.node_id == node_id {
                                Ok(info)
                            } else {
                                Err(format!(
                                    "node info claims node id {} but gossips as {node_id}",
                                    info.node_id
                                ))
                            }
                        }),
                        None => Err("no node info gossiped yet".to_string()),
                    };
                    let member = Member {
                        node_id,
                        gossip_address: id.gossip_advertise_addr,
                        generation: id.generation_id,
                        alive: live.contains(id),
                        info,
                    };
                    match latest.get(&node_id) {
                        Some(seen) if seen.generation >= member.generation => {}
                        _ => {
                            latest.insert(node_id, member);
                        }
                    }
                }
            })
            .await;
        latest.into_values().collect()
    }

    /// Asks gossip to stop (peers will see this node go silent).
    pub fn stop(&self) {
        if let Err(error) = self.handle.initiate_shutdown() {
            tracing::debug!(%error, "gossip already stopped");
        }
    }

    /// Stops gossiping and waits for it; peers will see this node go silent.
    pub async fn shutdown(self) {
        if let Err(error) = self.handle.shutdown().await {
            tracing::debug!(%error, "gossip shut down with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(node_id: u64) -> NodeInfo {
        NodeInfo {
            node_id,
            api_address: format!("127.0.0.1:{}", 7000 + node_id),
            role: crate::NodeRole::Worker,
            vcpus_total: 2,
            memory_mib_total: 1024,
            memory_mib_free: 512,
            disk_mib_free: 10_000,
            hypervisors: vec!["qemu".into()],
            accel: "tcg".into(),
            labels: BTreeMap::from([("zone".into(), format!("z{node_id}"))]),
            vms_running: 0,
            version: "test".into(),
        }
    }

    fn free_udp_address() -> SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    }

    async fn start(node_id: u64, address: SocketAddr, seeds: Vec<String>) -> Membership {
        let config = MembershipConfig {
            node_id,
            cluster_name: "test".into(),
            gossip_bind: address,
            gossip_advertise: address,
            seeds,
            gossip_interval_ms: 50,
            phi_threshold: 8.0,
            dead_node_forget_after_ms: 60_000,
        };
        Membership::start(config, &info(node_id)).await.unwrap()
    }

    async fn wait_for(
        membership: &Membership,
        what: &str,
        done: impl Fn(&[Member]) -> bool,
    ) -> Vec<Member> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let members = membership.members().await;
            if done(&members) {
                return members;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; members: {members:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn nodes_learn_each_other_and_notice_a_departure() {
        let seed = free_udp_address();
        let a = start(1, seed, Vec::new()).await;
        let b = start(2, free_udp_address(), vec![seed.to_string()]).await;
        let c = start(3, free_udp_address(), vec![seed.to_string()]).await;
        let members = wait_for(&c, "all three alive", |m| {
            m.len() == 3 && m.iter().all(|m| m.alive && m.info.is_ok())
        })
        .await;
        let labels: Vec<_> = members
            .iter()
            .map(|m| m.info.as_ref().unwrap().labels["zone"].clone())
            .collect();
        assert_eq!(labels, ["z1", "z2", "z3"]);

        let mut changed = info(2);
        changed.vms_running = 4;
        b.publish(&changed).await;
        wait_for(&a, "b's update", |m| {
            m.iter()
                .any(|m| m.node_id == 2 && m.info.as_ref().is_ok_and(|i| i.vms_running == 4))
        })
        .await;

        b.shutdown().await;
        wait_for(&a, "b dead", |m| {
            m.iter().any(|m| m.node_id == 2 && !m.alive)
        })
        .await;
        let members = a.members().await;
        assert!(members.iter().filter(|m| m.node_id != 2).all(|m| m.alive));
        c.shutdown().await;
    }

    #[tokio::test]
    async fn an_undecodable_record_is_shown_with_its_error() {
        let seed = free_udp_address();
        let a = start(1, seed, Vec::new()).await;
        let b = start(2, free_udp_address(), vec![seed.to_string()]).await;
        b.handle
            .with_chitchat(|c| c.self_node_state().set(INFO_KEY, "{not json"))
            .await;
        let members = wait_for(&a, "b's broken record", |m| {
            m.iter().any(|m| m.node_id == 2 && m.info.is_err())
        })
        .await;
        let error = members[1].info.as_ref().unwrap_err();
        assert!(error.contains("undecodable node info"), "{error}");
    }
}
