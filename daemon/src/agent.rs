//! `blixard agent`: opens the node's data, runs the raft loop and serves
//! gRPC until shut down.
//!
//! Invariants: one process owns a data directory at a time (file lock);
//! a node whose data directory holds raft state restarts from it and
//! ignores `--join`; a first start with `--join` changes nothing on disk
//! until a join address has answered.

use std::fs::File;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blixard_api::pb;
use blixard_api::pb::cluster_client::ClusterClient;
use blixard_consensus::{DataIdentity, LogStore, RaftConfig, RaftNode, DATA_FORMAT_VERSION};
use blixard_membership::{GossipSecurity, Membership, MembershipConfig, NodeInfo, NodeRole};
use tokio::sync::watch;

use blixard_nodeagent::{accel, launcher, Launcher, NodeAgent, Settings, VmUser};

use crate::config::Config;
use crate::controllers;
use crate::data_dir::{self, Start};
use crate::handle::ClusterHandle;
use crate::mirror::{self, Mirror};
use crate::security::NodeTls;
use crate::services::{
    self, cluster::ClusterService, feed::FeedService, node::NodeService, raft::RaftService,
    vm::VmService,
};
use crate::shutdown::{Shutdown, TaskGroup};
use crate::tokens;
use crate::transport::{GrpcTransport, RAFT_MESSAGE_BYTES_MAX};
use crate::Error;

const JOIN_PROBE_TIMEOUT_MS: u64 = 3_000;
const JOIN_ATTEMPTS_MAX: u32 = 60;
const JOIN_RETRY_DELAY_MS: u64 = 500;
const JOIN_PROBE_ATTEMPTS_MAX: u32 = 6;
/// A connection that answers no HTTP/2 ping for this long after one was
/// sent every interval is closed.
const HTTP2_KEEPALIVE_INTERVAL_MS: u64 = 20_000;
const HTTP2_KEEPALIVE_TIMEOUT_MS: u64 = 10_000;
/// Concurrent streams (calls) on one connection at most; a client past it
/// waits for one to end (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const STREAMS_PER_CONNECTION_MAX: u32 = 128;
/// A fencing check's interval plus a reconcile round (see `fencing.rs`).
const FENCE_SLACK_MS: u64 = 1_500;

/// Holds the data directory's lock for the life of the agent.
struct DataDirLock {
    _file: File,
}

fn lock_data_dir(dir: &Path) -> Result<DataDirLock, Error> {
    let io_error = |source| Error::DataDir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io_error)?;
    let file = File::create(dir.join("LOCK")).map_err(io_error)?;
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::DataDirLocked {
            path: dir.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(io_error(source)),
    }
}

fn raft_config(config: &Config) -> RaftConfig {
    let consensus = &config.consensus;
    let tick_ms = consensus.heartbeat_interval_ms;
    let election_ticks = (consensus.election_timeout_ms / tick_ms) as usize;
    let election_ticks_max = consensus
        .election_timeout_max_ms
        .map_or(2 * election_ticks, |max_ms| {
            ((max_ms / tick_ms) as usize).max(election_ticks + 1)
        });
    RaftConfig {
        node_id: config.cluster.node_id,
        address: config.api.bind.clone(),
        tick_interval_ms: tick_ms,
        election_ticks,
        heartbeat_ticks: 1,
        election_ticks_max,
        snapshot_threshold_entries: consensus.snapshot_threshold,
        request_timeout_ms: consensus.request_timeout_ms,
        initial_settings: config.initial_settings(),
        initial_tokens: Vec::new(),
    }
}

/// Where to start gossiping: what the join addresses report, plus the
/// gossip addresses recorded in this node's copy of the cluster state.
async fn gossip_seeds(config: &Config, store: &LogStore) -> Vec<String> {
    let mut seeds = Vec::new();
    for address in &config.cluster.join {
        match connect_cluster(address, None).await {
            Ok(mut client) => match client.status(pb::StatusRequest {}).await {
                Ok(status) => {
                    let status = status.into_inner();
                    seeds.push(status.gossip_address);
                    seeds.extend(status.gossip_seeds);
                }
                Err(status) => {
                    tracing::debug!(%address, error = status.message(), "no gossip seeds from join address")
                }
            },
            Err(error) => tracing::debug!(%address, %error, "no gossip seeds from join address"),
        }
    }
    if let Ok(state) = store.load_state() {
        seeds.extend(
            state
                .nodes
                .values()
                .filter(|n| n.node_id != config.cluster.node_id)
                .filter_map(|n| n.host.as_ref())
                .map(|h| h.gossip_address.clone()),
        );
    }
    let own = config.gossip_bind_addr().to_string();
    seeds.retain(|seed| !seed.is_empty() && *seed != own);
    seeds.sort();
    seeds.dedup();
    seeds
}

async fn start_membership(
    config: &Config,
    cluster_id: &str,
    store: &LogStore,
    security: Option<GossipSecurity>,
) -> Result<Membership, Error> {
    let gossip_bind = config.gossip_bind_addr();
    let membership_config = MembershipConfig {
        node_id: config.cluster.node_id,
        cluster_name: config.cluster.name.clone(),
        cluster_id: cluster_id.to_string(),
        gossip_bind,
        gossip_advertise: gossip_bind,
        seeds: gossip_seeds(config, store).await,
        gossip_interval_ms: config.membership.gossip_interval_ms,
        phi_threshold: config.membership.phi_threshold,
        dead_node_forget_after_ms: config.membership.dead_node_forget_after_ms,
        security,
    };
    tracing::info!(gossip = %gossip_bind, seeds = ?membership_config.seeds, "starting gossip");
    // Resources are filled in by the facts loop within a second.
    let info = NodeInfo {
        node_id: config.cluster.node_id,
        api_address: config.api.bind.clone(),
        role: NodeRole::Worker,
        vcpus_total: 0,
        memory_mib_total: 0,
        memory_mib_free: 0,
        disk_mib_free: 0,
        hypervisors: Vec::new(),
        accel: String::new(),
        labels: config.cluster.labels.clone(),
        vms_running: 0,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    Ok(Membership::start(membership_config, &info).await?)
}

/// A client of the node at `address` (only node `node_id`'s certificate
/// accepted there, when given).
async fn connect_cluster(
    address: &str,
    node_id: Option<u64>,
) -> Result<ClusterClient<tonic::transport::Channel>, String> {
    let endpoint = blixard_api::connect::installed()
        .endpoint_for(address, node_id)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(JOIN_PROBE_TIMEOUT_MS))
        .timeout(Duration::from_millis(JOIN_PROBE_TIMEOUT_MS));
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    Ok(ClusterClient::new(channel))
}

/// What the join addresses said.
enum Probe {
    /// One answered for the cluster with this id.
    Cluster(String),
    /// None answered; why, per address.
    NoAnswer(String),
}

/// Asks the join addresses which cluster they serve before anything is
/// written, so a typo leaves the data directory untouched. Nodes started
/// together (one boot, one `systemctl start`) may come up before the node
/// they join through, so the probe keeps trying for a few seconds. A
/// first start under an id the cluster already counts as a raft member is
/// refused: that member's data is elsewhere or lost, and a member with an
/// empty log would forget the votes it gave.
async fn probe_join_addresses(join: &[String], node_id: u64) -> Result<Probe, Error> {
    let mut failures = Vec::new();
    for attempt in 0..JOIN_PROBE_ATTEMPTS_MAX {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(JOIN_RETRY_DELAY_MS)).await;
        }
        failures.clear();
        for address in join {
            let status = match connect_cluster(address, None).await {
                Ok(mut client) => match client.status(pb::StatusRequest {}).await {
                    Ok(status) => status.into_inner(),
                    Err(status) => {
                        failures.push(format!("{address}: {}", status.message()));
                        continue;
                    }
                },
                Err(error) => {
                    failures.push(format!("{address}: {error}"));
                    continue;
                }
            };
            if let Err(detail) = data_dir::check_cluster_id(&status.cluster_id) {
                failures.push(format!("{address}: {detail}"));
                continue;
            }
            // A node that knows no members yet (a worker not yet fed)
            // cannot say whether this id is one.
            if status.members.is_empty() {
                failures.push(format!("{address}: knows no raft members yet"));
                continue;
            }
            if status.members.iter().any(|m| m.node_id == node_id) {
                return Err(Error::Join {
                    detail: format!(
                        "node {node_id} is already a raft member of the cluster at {address} \
                         (cluster {}), but this data directory is new: if this node's data was \
                         lost, run `blixard cluster remove-node {node_id}` on a member and start \
                         this host as a new node id (README: Recovering a node)",
                        status.cluster_id
                    ),
                });
            }
            return Ok(Probe::Cluster(status.cluster_id));
        }
    }
    Ok(Probe::NoAnswer(failures.join("; ")))
}

/// Whose the data directory is, from what it holds (reads only).
fn look_at_data_dir(config: &Config) -> Result<Start, Error> {
    let dir = &config.cluster.data_dir;
    let recorded = data_dir::read_identity(dir)?;
    let store = data_dir::store_file(dir)?;
    data_dir::decide(
        dir,
        recorded.as_ref(),
        store,
        config.cluster.node_id,
        config.cluster.bootstrap,
        !config.cluster.join.is_empty(),
    )
}

/// Decides whose the data directory is and, on a first start, which
/// cluster it joins or founds (see `crate::data_dir`). Returns the
/// identity a first start records (`None` on a restart).
async fn settle_identity(config: &Config, start: Start) -> Result<Option<DataIdentity>, Error> {
    let node_id = config.cluster.node_id;
    let identity = |cluster_id, founder| DataIdentity {
        format_version: DATA_FORMAT_VERSION,
        cluster_id,
        node_id,
        founder,
    };
    Ok(match start {
        Start::Known(_) | Start::FromStore => None,
        Start::Bootstrap => Some(identity(data_dir::new_cluster_id(), true)),
        Start::Join => match probe_join_addresses(&config.cluster.join, node_id).await? {
            Probe::Cluster(id) => Some(identity(id, false)),
            Probe::NoAnswer(detail) => {
                return Err(Error::Join {
                    detail: format!("no join address answered ({detail})"),
                })
            }
        },
    })
}

/// Opens the store and holds it to the directory's identity: a first
/// start's identity is recorded in the transaction that creates the
/// store, then in the file beside it (so a start that dies in between
/// leaves a store that names its owner, never a file naming a store that
/// is not there); a lost file is restored from the store; a store that
/// names another owner is refused.
fn open_store(
    config: &Config,
    new: Option<DataIdentity>,
) -> Result<(LogStore, DataIdentity), Error> {
    let dir = &config.cluster.data_dir;
    let file = data_dir::read_identity(dir)?;
    let mut store = LogStore::open_as(dir, new.as_ref())?;
    let recorded = store.identity()?;
    let identity = data_dir::reconcile(dir, file.as_ref(), recorded.as_ref())?;
    data_dir::check_cluster_id(&identity.cluster_id).map_err(|e| Error::IdentityUnreadable {
        path: dir
            .join(blixard_consensus::STORE_FILE)
            .display()
            .to_string(),
        detail: e.to_string(),
    })?;
    if identity.node_id != config.cluster.node_id {
        return Err(Error::NotThisNode {
            path: dir.display().to_string(),
            recorded: identity.node_id,
            configured: config.cluster.node_id,
        });
    }
    if recorded.is_none() {
        store.record_identity(&identity)?;
    }
    if file.is_none() {
        if new.is_none() {
            tracing::warn!(path = %dir.display(), "identity.toml was missing; restored from the store");
        }
        data_dir::write_identity(dir, &identity)?;
    }
    Ok((store, identity))
}

/// Asks the cluster to add this node, retrying while it elects a leader.
async fn request_join(config: &Config, cluster_id: &str) -> Result<String, Error> {
    let request = pb::JoinRequest {
        node_id: config.cluster.node_id,
        address: config.api.bind.clone(),
        cluster_id: cluster_id.to_string(),
    };
    let join_at = |address: String, node_id: Option<u64>| {
        let request = request.clone();
        async move {
            match connect_cluster(&address, node_id).await {
                Ok(mut client) => client.join(request).await.map_err(|s| {
                    let text = |key| {
                        s.metadata()
                            .get(key)
                            .and_then(|v| v.to_str().ok())
                            .map(String::from)
                    };
                    let via = text(crate::services::cluster::JOIN_VIA)
                        .filter(|v| blixard_api::validate::address(v).is_ok() && *v != address)
                        .map(|via| {
                            let id = text(crate::services::cluster::JOIN_VIA_NODE)
                                .and_then(|id| id.parse::<u64>().ok());
                            (via, id)
                        });
                    (s.code(), format!("{address}: {}", s.message()), via)
                }),
                Err(error) => Err((
                    tonic::Code::Unavailable,
                    format!("{address}: {error}"),
                    None,
                )),
            }
        }
    };
    let mut last_error = String::new();
    for _ in 0..JOIN_ATTEMPTS_MAX {
        for address in &config.cluster.join {
            let mut outcome = join_at(address.clone(), None).await;
            // A worker names the voter it follows (and its id, whose
            // certificate alone is accepted there): ask that one, once.
            if let Err((tonic::Code::FailedPrecondition, _, Some((via, id)))) = &outcome {
                let (via, id) = (via.clone(), *id);
                outcome = join_at(via.clone(), id).await.map_err(|(code, detail, _)| {
                    (code, format!("{address} named voter {via}; {detail}"), None)
                });
            }
            let outcome = outcome.map_err(|(code, detail, _)| (code, detail));
            match outcome {
                Ok(response) => return Ok(response.into_inner().role),
                // A removed id, another cluster's node: asking again
                // changes nothing.
                Err((
                    tonic::Code::AlreadyExists
                    | tonic::Code::InvalidArgument
                    | tonic::Code::PermissionDenied,
                    detail,
                )) => {
                    return Err(Error::Join { detail });
                }
                Err((_, detail)) => last_error = detail,
            }
        }
        tokio::time::sleep(Duration::from_millis(JOIN_RETRY_DELAY_MS)).await;
    }
    Err(Error::Join {
        detail: format!("gave up after {JOIN_ATTEMPTS_MAX} attempts; last error: {last_error}"),
    })
}

/// The connection bounds (`crate::listener`) assume the descriptors to
/// hold them. systemd starts a service with a soft limit of 1024 and a
/// hard one far above it, so the soft limit is raised to the hard one (as
/// Go's runtime does); a hard limit below the bounds is logged.
#[cfg(not(madsim))]
fn raise_open_files_limit() {
    use crate::listener::{CLIENT_CONNECTIONS_MAX, PEER_CONNECTIONS_MAX};
    // VMs' consoles and control sockets, the store, logs.
    const OTHER_FILES_MAX: u64 = 4096;
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let mut open_files_max = soft;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        open_files_max = hard;
    }
    let needed = (PEER_CONNECTIONS_MAX + CLIENT_CONNECTIONS_MAX) as u64 + OTHER_FILES_MAX;
    if open_files_max < needed {
        tracing::warn!(
            open_files_max,
            needed,
            "the open-files limit is below what the connection limits need; raise it \
             (systemd: LimitNOFILE) or connections past it fail to be accepted"
        );
    }
}

/// Runs the agent until `shutdown` completes. Returns an error if start-up
/// fails or the raft loop stops on a storage failure.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    run_with_launcher(config, None, shutdown).await
}

/// [`run`], with the node agent's hypervisors run by `launcher` instead of
/// the one `[agent] supervision` names (the simulation runs simulated
/// hypervisors; everything else is the same).
pub async fn run_with_launcher(
    config: Config,
    launcher: Option<Arc<dyn Launcher>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    #[cfg(not(madsim))]
    raise_open_files_limit();
    // Before the certificates are read: a directory started as another
    // node is named as such, not as a certificate of the wrong node.
    let start = look_at_data_dir(&config)?;
    // A VM user that does not exist stops the node now, not its first VM.
    let vm_user = match (&config.agent.vm_user, config.agent.enabled) {
        (Some(name), true) => Some(
            VmUser::resolve(name, std::path::Path::new(accel::KVM_DEVICE)).map_err(|e| {
                Error::InvalidConfig {
                    detail: e.to_string(),
                }
            })?,
        ),
        _ => None,
    };
    #[cfg(not(madsim))]
    crate::security::obtain_certificate(&config).await?;
    let node_tls = NodeTls::load(&config)?;
    // Every connection this node opens, from the join probe on, proves it
    // is this node (a simulation runs several nodes in one process; they
    // are all insecure, so what each installs is the same).
    blixard_api::connect::install(node_tls.dial());
    let data_dir = config.cluster.data_dir.clone();
    let new_identity = settle_identity(&config, start).await?;
    let _lock = lock_data_dir(&data_dir)?;
    let (store, identity) = open_store(&config, new_identity)?;
    let cluster_id = identity.cluster_id.clone();
    let membership =
        Arc::new(start_membership(&config, &cluster_id, &store, node_tls.gossip()).await?);
    let initialized = store.is_initialized();
    // Only the founder founds, on its first start or on the next one if
    // that died before the raft state was written; a worker's store (no
    // raft state, ever) or an unfinished join never founds, whatever the
    // flags say.
    let bootstrap = !initialized && identity.founder;
    if !initialized && !bootstrap && config.cluster.join.is_empty() {
        return Err(Error::NothingToJoin {
            path: data_dir.display().to_string(),
            what: "holds no raft state (a worker's, or a join that did not finish)",
        });
    }
    if initialized && !config.cluster.join.is_empty() {
        tracing::info!("data directory holds raft state; ignoring join addresses");
    }
    let mut raft_config = raft_config(&config);
    if bootstrap && !initialized {
        // The founding node makes the first (management) token; its
        // operator reads the secret from the file and makes the others.
        let management = tokens::generate(
            "management",
            blixard_consensus::TokenRole::Admin,
            blixard_api::unix_ms_now(),
            None,
        );
        let path = tokens::write_management_token(&data_dir, &management.secret)?;
        tracing::info!(path = %path.display(), "wrote the management token");
        raft_config.initial_tokens.push(management.token);
    }
    let (node, raft_handle) = RaftNode::new(
        raft_config,
        store,
        bootstrap,
        GrpcTransport::new(config.api.bind.clone(), cluster_id.clone()),
    )?;
    let mirror = Arc::new(Mirror::default());
    let handle = ClusterHandle::new(
        raft_handle.clone(),
        mirror.clone(),
        Duration::from_millis(config.consensus.request_timeout_ms),
        cluster_id.clone(),
    );
    node_tls.judge_gossip_by(handle.clone());
    let renewed = node_tls
        .renewal()
        .map_or_else(Default::default, |renewal| renewal.renewed.clone());
    let certificate = node_tls.renewal().map(|renewal| renewal.live.clone());
    tracing::info!(
        node_id = config.cluster.node_id,
        bind = %config.api.bind,
        data_dir = %data_dir.display(),
        bootstrapped = bootstrap && !initialized,
        "blixard agent starting"
    );

    let mut tasks = TaskGroup::default();
    {
        let join = config.cluster.join.clone();
        let own = config.api.bind.clone();
        let state_source = mirror.clone();
        // Raft members as the last feeder named them, each dialled as
        // itself (a worker's certificate cannot pose as a voter and feed
        // a forged state); then the join addresses, whose ids are unknown.
        let candidates = move || {
            let mut feeders: Vec<mirror::Feeder> = state_source
                .upstream()
                .members
                .into_iter()
                .map(|m| mirror::Feeder {
                    address: m.address,
                    node_id: Some(m.node_id),
                })
                .collect();
            feeders.extend(join.iter().map(|address| mirror::Feeder {
                address: address.clone(),
                node_id: None,
            }));
            let mut seen = std::collections::HashSet::new();
            feeders.retain(|f| {
                f.address != own && !f.address.is_empty() && seen.insert(f.address.clone())
            });
            feeders
        };
        let sync = mirror::run(
            mirror.clone(),
            raft_handle.clone(),
            cluster_id.clone(),
            candidates,
            tasks.shutdown(),
        );
        tasks.spawn("mirror", sync);
    }
    let server = tokio::spawn(serve(
        config.clone(),
        cluster_id.clone(),
        node_tls,
        handle.clone(),
        membership.clone(),
        tasks.shutdown(),
    ));
    let leader = controllers::leader::run(
        handle.clone(),
        membership.clone(),
        controllers::scheduler::Params {
            vcpu_overcommit: config.scheduler.vcpu_overcommit,
        },
        tasks.shutdown(),
    );
    tasks.spawn("leader controllers", leader);
    let (accel_tx, accel_rx) = watch::channel(None);
    let facts = controllers::facts::run(
        handle.clone(),
        membership.clone(),
        controllers::facts::Identity {
            node_id: config.cluster.node_id,
            api_address: config.api.bind.clone(),
            gossip_address: membership.gossip_address().to_string(),
            labels: config.cluster.labels.clone(),
            data_dir: data_dir.clone(),
            // What failover must wait for: the fence, one fencing check,
            // then a stop that may take its whole timeout.
            fence_after_ms: config.failover.fence_after_ms
                + config.agent.stop_timeout_ms
                + FENCE_SLACK_MS,
        },
        accel_rx,
        renewed,
        certificate,
        tasks.shutdown(),
    );
    tasks.spawn("facts", facts);
    if config.agent.enabled {
        let agent = start_node_agent(
            config.clone(),
            vm_user,
            launcher,
            handle.clone(),
            accel_tx,
            tasks.shutdown(),
        );
        tasks.spawn("node agent", agent);
    } else {
        let _ = accel_tx.send(Some(String::new()));
    }
    let raft = spawn_raft_loop(node, tasks.shutdown())?;

    if !initialized && !bootstrap {
        match request_join(&config, &cluster_id).await {
            Ok(role) => tracing::info!(%role, "joined the cluster"),
            Err(error) => {
                stop_node(tasks, &membership, raft, server).await;
                return Err(error);
            }
        }
    }

    tokio::pin!(shutdown);
    let mut raft = raft;
    let mut server = server;
    let outcome = tokio::select! {
        _ = &mut shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
        result = &mut raft => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Error::from(error)),
            Err(join_error) => panic!("raft loop panicked: {join_error}"),
        },
        result = &mut server => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error),
            Err(join_error) => panic!("gRPC server panicked: {join_error}"),
        },
    };
    stop_node(tasks, &membership, raft, server).await;
    outcome
}

/// Stops what [`run`] started: gossip first (peers see the node leave),
/// then every task of the group (the node agent stops its VMs if
/// configured to), then the raft loop and the gRPC server, which saw the
/// same signal. A handle already awaited in `run` is finished and skipped.
async fn stop_node<R, S>(
    tasks: TaskGroup,
    membership: &Membership,
    raft: tokio::task::JoinHandle<R>,
    server: tokio::task::JoinHandle<S>,
) {
    membership.stop();
    tasks.stop().await;
    if !raft.is_finished() {
        let _ = raft.await;
    }
    if !server.is_finished() {
        let _ = server.await;
    }
}

/// Runs the raft loop until `stop`. On a real host it gets a thread of its
/// own: it blocks in fsync, and on a shared runtime worker that would
/// stall the network tasks queued behind it. (The simulation has no
/// threads; there it is a task like any other.)
fn spawn_raft_loop<T: blixard_consensus::Transport>(
    node: RaftNode<T>,
    mut stop: Shutdown,
) -> Result<tokio::task::JoinHandle<blixard_consensus::Result<()>>, Error> {
    let stopped = async move { stop.stopped().await };
    #[cfg(madsim)]
    {
        Ok(tokio::spawn(node.run(stopped)))
    }
    #[cfg(not(madsim))]
    {
        let thread_error = |e: &dyn std::fmt::Display| Error::RaftThread {
            detail: e.to_string(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| thread_error(&e))?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || {
                let _ = done_tx.send(runtime.block_on(node.run(stopped)));
            })
            .map_err(|e| thread_error(&e))?;
        Ok(tokio::spawn(async move {
            done_rx.await.expect("the raft thread panicked")
        }))
    }
}

/// Probes acceleration (unless `launcher` knows it), then runs fencing and
/// the agent's reconciler until `stop`.
async fn start_node_agent(
    config: Config,
    vm_user: Option<VmUser>,
    launcher: Option<Arc<dyn Launcher>>,
    raft: ClusterHandle,
    accel_tx: watch::Sender<Option<String>>,
    stop: Shutdown,
) {
    let agent_config = &config.agent;
    let accel = match &launcher {
        Some(launcher) => launcher.accel(),
        None => accel::resolve(agent_config.accel, &agent_config.qemu).await,
    };
    tracing::info!(accel = accel.as_str(), "hypervisor acceleration");
    let _ = accel_tx.send(Some(accel.as_str().to_string()));
    let (fenced_tx, fenced_rx) = watch::channel(false);
    let fencing = tokio::spawn(controllers::fencing::run(
        raft.clone(),
        config.failover.fence_after_ms,
        fenced_tx,
        stop.clone(),
    ));
    let settings = Arc::new(Settings {
        state_root: config.vm_state_dir(),
        qemu_binary: agent_config.qemu.clone(),
        nix_binary: agent_config.nix.clone(),
        accel,
        restart_policy: agent_config.restart_policy,
        stop_timeout_ms: agent_config.stop_timeout_ms,
        boot_timeout_ms: agent_config.boot_timeout_ms,
        console_log_bytes_max: agent_config.console_log_bytes_max,
        supervision: agent_config.supervision,
        systemctl_binary: agent_config.systemctl.clone(),
        private_dirs: vec![config.cluster.data_dir.clone()],
        vm_user,
    });
    let launcher = launcher.unwrap_or_else(|| launcher::for_settings(settings.clone()));
    let (agent, reports) = NodeAgent::new(settings, launcher);
    controllers::reconciler::run(
        raft,
        config.cluster.node_id,
        agent,
        reports,
        fenced_rx,
        agent_config.stop_vms_on_shutdown,
        stop,
    )
    .await;
    let _ = fencing.await;
}

/// Counts each call on its connection so an idle one is closed
/// (`crate::idle`); the simulated network has no such connections.
#[cfg(not(madsim))]
fn track_calls() -> crate::idle::TrackCallsLayer {
    crate::idle::TrackCallsLayer
}
#[cfg(madsim)]
fn track_calls() -> tower::layer::util::Identity {
    tower::layer::util::Identity::new()
}

async fn serve(
    config: Config,
    cluster_id: String,
    node_tls: NodeTls,
    raft: ClusterHandle,
    membership: Arc<Membership>,
    mut stop: Shutdown,
) -> Result<(), Error> {
    use pb::cluster_server::ClusterServer;
    use pb::node_server::NodeServer;
    use pb::raft_transport_server::RaftTransportServer;
    use pb::state_feed_server::StateFeedServer;
    use pb::vm_server::VmServer;
    let node_id = config.cluster.node_id;
    let raft_service = RaftTransportServer::new(RaftService {
        node_id,
        cluster_id: cluster_id.clone(),
        raft: raft.raft().clone(),
    })
    .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX);
    let feed_service = StateFeedServer::new(FeedService {
        cluster_id: cluster_id.clone(),
        raft: raft.raft().clone(),
    })
    .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
    let streams = services::streams::StreamSlots::default();
    let cluster_service = ClusterServer::new(ClusterService {
        cluster_id,
        streams: streams.clone(),
        raft: raft.clone(),
        membership: membership.clone(),
        join_lock: tokio::sync::Mutex::new(()),
        issuer: node_tls.issuer(),
        renewal: node_tls.renewal(),
    });
    let node_service = NodeServer::new(NodeService {
        raft: raft.clone(),
        membership,
    });
    let acl_service =
        pb::acl_server::AclServer::new(services::acl::AclService { raft: raft.clone() });
    let authorize = services::Authorize {
        tls: node_tls.is_tls(),
        state: raft.clone(),
    };
    let vm_service = VmServer::new(VmService {
        raft: raft.clone(),
        node: services::VmNode {
            raft,
            node_id,
            vm_state_dir: config.agent.enabled.then(|| config.vm_state_dir()),
        },
        streams,
    });
    // A peer that stops answering pings (a dead host, a cut network) is
    // dropped rather than holding its connection and streams for ever;
    // no connection carries more streams than a client needs, so one
    // connection cannot hold a node's memory in stalled streams.
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_millis(HTTP2_KEEPALIVE_INTERVAL_MS)))
        .http2_keepalive_timeout(Some(Duration::from_millis(HTTP2_KEEPALIVE_TIMEOUT_MS)))
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX);
    // TLS is this node's own listener's (`crate::listener`), so a renewed
    // certificate is served without a restart; the simulated network
    // carries none.
    #[cfg(not(madsim))]
    let tls_config = match &node_tls {
        NodeTls::Tls {
            ca_pem, renewal, ..
        } => Some(renewal.live.server_config(ca_pem)?),
        NodeTls::Insecure => None,
    };
    let router = server
        .layer(
            tower::ServiceBuilder::new()
                .layer(track_calls())
                .map_request(services::record_path::<tonic::body::Body>)
                .layer(tonic::service::InterceptorLayer::new(authorize)),
        )
        .add_service(raft_service)
        .add_service(feed_service)
        .add_service(cluster_service)
        .add_service(node_service)
        .add_service(acl_service)
        .add_service(vm_service);
    let bind = config.bind_addr();
    let stopped = async move {
        stop.stopped().await;
    };
    let serve_error = |e: &dyn std::fmt::Display| Error::Serve {
        bind: bind.to_string(),
        detail: e.to_string(),
    };
    #[cfg(not(madsim))]
    {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| serve_error(&e))?;
        let idle = Duration::from_millis(config.api.idle_timeout_ms);
        match tls_config {
            Some(tls_config) => router
                .serve_with_incoming_shutdown(
                    crate::listener::tls_incoming(listener, tls_config, idle),
                    stopped,
                )
                .await
                .map_err(|e| serve_error(&e)),
            None => router
                .serve_with_incoming_shutdown(
                    crate::listener::plain_incoming(listener, idle),
                    stopped,
                )
                .await
                .map_err(|e| serve_error(&e)),
        }
    }
    #[cfg(madsim)]
    {
        router
            .serve_with_shutdown(bind, stopped)
            .await
            .map_err(|e| serve_error(&e))
    }
}
