//! The chitchat instance and the membership view read from it.
//!
//! Invariant: with [`GossipSecurity`], every datagram is sealed with the
//! cluster's gossip key ([`crate::sealed`]) and the view holds only records
//! their own node signed ([`crate::verify`]); without it (a cluster run
//! with security off) anyone who reaches the gossip port is believed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::{Transport, UdpTransport};
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion,
};

use crate::info::{NodeInfo, INFO_KEY};
use crate::sealed::{Keyring, SealedUdpTransport};
use crate::verify::{self, Identity, Verifier, CERT_KEY};
use crate::{Error, Unreadable};

/// Tunables of one node's gossip.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub node_id: u64,
    /// Nodes gossip only with nodes of the same cluster name and id.
    pub cluster_name: String,
    /// The id the cluster got when it was founded ("" where there is none,
    /// a benchmark's gossip alone): a node that founded a cluster of its
    /// own at a member's address is not heard as that member.
    pub cluster_id: String,
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
    /// Sealing and signing; `None` only when the cluster runs with
    /// security off.
    pub security: Option<GossipSecurity>,
}

/// What gossip is sealed and signed with.
#[derive(Clone)]
pub struct GossipSecurity {
    /// The cluster's gossip keys: the first seals, each opens.
    pub keys: Vec<[u8; 32]>,
    pub identity: Arc<dyn Identity>,
}

impl std::fmt::Debug for GossipSecurity {
    // Never print a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipSecurity")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
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
    pub info: Result<NodeInfo, Unreadable>,
}

/// A running gossip instance. Dropping it stops gossip.
pub struct Membership {
    handle: ChitchatHandle,
    node_id: u64,
    /// This incarnation, as signatures name it.
    chitchat_id: ChitchatId,
    gossip_address: SocketAddr,
    cluster_name: String,
    secured: Option<Secured>,
}

struct Secured {
    identity: Arc<dyn Identity>,
    keyring: Arc<Keyring>,
    verifier: Mutex<Verifier>,
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
        let secured = config.security.as_ref().map(|security| Secured {
            identity: security.identity.clone(),
            keyring: Arc::new(Keyring::new(&security.keys, &config.cluster_name)),
            verifier: Mutex::new(Verifier::new(
                security.identity.clone(),
                config.cluster_name.clone(),
            )),
        });
        let mut key_values = Vec::new();
        if let Some(secured) = &secured {
            key_values.push((
                CERT_KEY.to_string(),
                hex::encode(secured.identity.certificate_der()),
            ));
        }
        key_values.push((
            INFO_KEY.to_string(),
            info_value(secured.as_ref(), &config.cluster_name, &chitchat_id, info)?,
        ));
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
            chitchat_id: chitchat_id.clone(),
            cluster_id: match config.cluster_id.as_str() {
                "" => config.cluster_name.clone(),
                id => format!("{}/{id}", config.cluster_name),
            },
            gossip_interval: interval,
            listen_addr: config.gossip_bind,
            seed_nodes: config.seeds.clone(),
            failure_detector_config,
            marked_for_deletion_grace_period: Duration::from_secs(3_600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V1,
        };
        let transport: Box<dyn Transport> = match &secured {
            Some(secured) => Box::new(SealedUdpTransport {
                keyring: secured.keyring.clone(),
            }),
            None => Box::new(UdpTransport),
        };
        let handle = spawn_chitchat(chitchat_config, key_values, transport.as_ref())
            .await
            .map_err(|e| Error::Bind {
                address: config.gossip_bind.to_string(),
                detail: format!("{e:#}"),
            })?;
        Ok(Self {
            handle,
            node_id: config.node_id,
            chitchat_id,
            gossip_address: config.gossip_advertise,
            cluster_name: config.cluster_name,
            secured,
        })
    }

    pub fn gossip_address(&self) -> SocketAddr {
        self.gossip_address
    }

    /// The cluster this node gossips within.
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// Gossip datagrams refused since start because no gossip key opened
    /// them (0 with security off).
    pub fn refused_datagrams(&self) -> u64 {
        self.secured
            .as_ref()
            .map_or(0, |secured| secured.keyring.refused())
    }

    /// Replaces this node's advertised info (a no-op if unchanged), and
    /// its certificate if a renewal replaced it (the info is then signed
    /// again with the new key).
    pub async fn publish(&self, info: &NodeInfo) {
        assert_eq!(self.node_id, info.node_id, "gossip info of another node");
        // Read before signing: a renewal in between leaves the two apart
        // until the next publish, which sees the certificate changed.
        let certificate = self
            .secured
            .as_ref()
            .map(|secured| hex::encode(secured.identity.certificate_der()));
        let encoded = match info_value(
            self.secured.as_ref(),
            &self.cluster_name,
            &self.chitchat_id,
            info,
        ) {
            Ok(encoded) => encoded,
            Err(error) => {
                // Peers keep the last info this node signed.
                tracing::error!(%error, "could not sign this node's gossip info");
                return;
            }
        };
        self.handle
            .with_chitchat(|chitchat| {
                let own = chitchat.self_node_state();
                let renewed = certificate
                    .as_deref()
                    .filter(|certificate| own.get(CERT_KEY) != Some(*certificate));
                if let Some(certificate) = renewed {
                    own.set(CERT_KEY, certificate);
                }
                // ECDSA signs differently each time: compare the info.
                let unchanged = renewed.is_none()
                    && own
                        .get(INFO_KEY)
                        .is_some_and(|current| verify::same_info(current, &encoded));
                if !unchanged {
                    own.set(INFO_KEY, &encoded);
                }
            })
            .await;
    }

    /// Every node seen, one entry per node id (its latest generation),
    /// ordered by node id.
    pub async fn members(&self) -> Vec<Member> {
        let mut latest: BTreeMap<u64, Member> = BTreeMap::new();
        self.handle
            .with_chitchat(|chitchat| {
                let live: Vec<ChitchatId> = chitchat.live_nodes().cloned().collect();
                let mut verifier = self.secured.as_ref().map(|secured| {
                    // Poisoned only by a panic inside `check`, which holds
                    // no half-made state worth refusing.
                    let mut verifier = secured
                        .verifier
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    let states = chitchat.node_states();
                    verifier.retain(|id| states.contains_key(id));
                    verifier
                });
                for (id, state) in chitchat.node_states() {
                    let Ok(node_id) = id.node_id.parse::<u64>() else {
                        tracing::debug!(id = %id.node_id, "ignoring gossip member with a foreign id");
                        continue;
                    };
                    if let Some(verifier) = verifier.as_mut() {
                        // Unverified records are not members at all: they
                        // may not stand in for, or outlive, a real node.
                        let Ok(info) =
                            verifier.check(id, node_id, state.get(CERT_KEY), state.get(INFO_KEY))
                        else {
                            continue;
                        };
                        let member = Member {
                            node_id,
                            gossip_address: id.gossip_advertise_addr,
                            generation: id.generation_id,
                            alive: live.contains(id),
                            info: Ok(info),
                        };
                        keep_latest(&mut latest, member);
                        continue;
                    }
                    let info = match state.get(INFO_KEY) {
                        Some(value) => NodeInfo::decode(value).and_then(|info| {
                            if info.node_id == node_id {
                                Ok(info)
                            } else {
                                Err(Unreadable::OtherNodesInfo {
                                    claims: info.node_id,
                                    node_id,
                                })
                            }
                        }),
                        None => Err(Unreadable::NoInfo),
                    };
                    let member = Member {
                        node_id,
                        gossip_address: id.gossip_advertise_addr,
                        generation: id.generation_id,
                        alive: live.contains(id),
                        info,
                    };
                    keep_latest(&mut latest, member);
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

/// Keeps `member` if it is the latest generation of its node seen so far.
fn keep_latest(latest: &mut BTreeMap<u64, Member>, member: Member) {
    match latest.get(&member.node_id) {
        Some(seen) if seen.generation >= member.generation => {}
        _ => {
            latest.insert(member.node_id, member);
        }
    }
}

/// The info value this node gossips: signed when secured.
fn info_value(
    secured: Option<&Secured>,
    cluster_name: &str,
    chitchat_id: &ChitchatId,
    info: &NodeInfo,
) -> Result<String, Error> {
    let json = info.encode();
    match secured {
        Some(secured) => {
            verify::sign_info(secured.identity.as_ref(), cluster_name, chitchat_id, &json).map_err(
                |e| Error::Sign {
                    detail: e.to_string(),
                },
            )
        }
        None => Ok(json),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn info(node_id: u64) -> NodeInfo {
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

    pub(crate) fn free_udp_address() -> SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    }

    async fn start(node_id: u64, address: SocketAddr, seeds: Vec<String>) -> Membership {
        start_with(node_id, address, seeds, None).await
    }

    pub(crate) async fn start_with(
        node_id: u64,
        address: SocketAddr,
        seeds: Vec<String>,
        security: Option<GossipSecurity>,
    ) -> Membership {
        let config = MembershipConfig {
            node_id,
            cluster_name: "test".into(),
            cluster_id: String::new(),
            gossip_bind: address,
            gossip_advertise: address,
            seeds,
            gossip_interval_ms: 50,
            phi_threshold: 8.0,
            dead_node_forget_after_ms: 60_000,
            security,
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
        assert!(matches!(error, Unreadable::UndecodableInfo(_)), "{error}");
    }
}

#[cfg(test)]
mod secured_tests {
    use super::tests::{free_udp_address, start_with};
    use super::*;
    use crate::verify::tests::FakeIdentity;

    const KEY: [u8; 32] = [7; 32];

    fn secured(keys: &[[u8; 32]], certified_as: u64) -> Option<GossipSecurity> {
        Some(GossipSecurity {
            keys: keys.to_vec(),
            identity: Arc::new(FakeIdentity::new(certified_as)),
        })
    }

    async fn start(
        node_id: u64,
        address: SocketAddr,
        seeds: &[SocketAddr],
        security: Option<GossipSecurity>,
    ) -> Membership {
        let seeds = seeds.iter().map(ToString::to_string).collect();
        start_with(node_id, address, seeds, security).await
    }

    async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !done().await {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn only_key_holders_are_heard_and_only_as_the_node_their_certificate_names() {
        let seed = free_udp_address();
        // Mid-rotation: a seals with the old key, b with the new one, and
        // each opens both.
        let new = [8; 32];
        let a = start(1, seed, &[], secured(&[KEY, new], 1)).await;
        let b = start(2, free_udp_address(), &[seed], secured(&[new, KEY], 2)).await;
        // No key: nothing it sends is read.
        let outsider = start(3, free_udp_address(), &[seed], None).await;
        // The wrong key: likewise.
        let stranger = start(4, free_udp_address(), &[seed], secured(&[[9; 32]], 4)).await;
        // A key holder whose certificate is node 5's, gossiping as node 2
        // (a newer generation) and as node 6.
        let impostor = start(2, free_udp_address(), &[seed], secured(&[KEY], 5)).await;
        let other = start(6, free_udp_address(), &[seed], secured(&[KEY], 5)).await;

        wait_until("a and b to see each other", async || {
            let seen = |m: &[Member]| m.iter().map(|m| m.node_id).collect::<Vec<_>>();
            seen(&a.members().await) == [1, 2] && seen(&b.members().await) == [1, 2]
        })
        .await;
        wait_until("the outsiders' datagrams to be refused", async || {
            a.refused_datagrams() > 0
        })
        .await;
        // Give the impostors many gossip rounds to get in.
        let rounds_done = a.refused_datagrams() + 40;
        wait_until("forty more refusals", async || {
            a.refused_datagrams() >= rounds_done
        })
        .await;
        let members = a.members().await;
        assert_eq!(
            members.iter().map(|m| m.node_id).collect::<Vec<_>>(),
            [1, 2],
            "{members:?}"
        );
        let two = members.iter().find(|m| m.node_id == 2).unwrap();
        assert_eq!(two.gossip_address, b.gossip_address(), "the real node 2");
        assert!(two.alive);
        for m in [outsider, stranger, impostor, other, b] {
            m.shutdown().await;
        }
        a.shutdown().await;
    }

    #[tokio::test]
    async fn a_renewed_certificate_is_gossiped_and_the_retired_one_stops_counting() {
        let seed = free_udp_address();
        let judge = Arc::new(FakeIdentity::new(1));
        let a = start(
            1,
            seed,
            &[],
            Some(GossipSecurity {
                keys: vec![KEY],
                identity: judge.clone(),
            }),
        )
        .await;
        let renewing = Arc::new(FakeIdentity::new(2));
        let b = start(
            2,
            free_udp_address(),
            &[seed],
            Some(GossipSecurity {
                keys: vec![KEY],
                identity: renewing.clone(),
            }),
        )
        .await;
        let lists_two = async |a: &Membership| a.members().await.iter().any(|m| m.node_id == 2);
        wait_until("a to see b", async || lists_two(&a).await).await;
        // The cluster retires b's first certificate: a stops believing it.
        judge
            .retired
            .lock()
            .unwrap()
            .push(renewing.certificate_der());
        wait_until("a to stop believing b's old record", async || {
            !lists_two(&a).await
        })
        .await;
        // b renews and publishes: its record is signed with the new one.
        renewing.renew(2, 1);
        let mut renewed_info = super::tests::info(2);
        renewed_info.vms_running = 5;
        b.publish(&renewed_info).await;
        wait_until("a to believe b's renewed record", async || {
            a.members()
                .await
                .iter()
                .any(|m| m.node_id == 2 && m.info.as_ref().is_ok_and(|i| i.vms_running == 5))
        })
        .await;
        b.shutdown().await;
        a.shutdown().await;
    }
}
