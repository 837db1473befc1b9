//! The agent's configuration: `/etc/blixard/config.toml` overlaid by flags.
//!
//! Invariant: a `Config` that `validate` accepted has a non-zero node id, a
//! data directory, a HOST:PORT bind address, join addresses that parse, and
//! raft timings where the election timeout spans several heartbeats.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use blixard_nodeagent::{AccelMode, RestartPolicy, Supervision};
use serde::Deserialize;

use crate::Error;

/// The file format. Unknown keys are errors so typos do not pass silently.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub consensus: ConsensusSection,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub membership: MembershipSection,
    #[serde(default)]
    pub failover: FailoverSection,
    #[serde(default)]
    pub autopilot: AutopilotSection,
    #[serde(default)]
    pub scheduler: SchedulerSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub security: SecuritySection,
}

/// The node's certificates (`blixard tls cert create` writes them). Each
/// path defaults to its file in `DATA_DIR/tls/`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The cluster CA's certificate: peers and servers must chain to it.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This node's certificate, naming its node id.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// This node's private key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The cluster's gossip keys (one per line; the first seals).
    #[serde(default)]
    pub gossip_key_file: Option<PathBuf>,
    /// The CA's private key, on the voters that issue certificates for
    /// join tokens (default: `DATA_DIR/tls/ca-key.pem` if it is there).
    #[serde(default)]
    pub ca_key_file: Option<PathBuf>,
}

/// Where a node's certificates and keys are (see [`Config::tls_files`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub gossip_key: PathBuf,
    pub ca_key: PathBuf,
    /// `ca_key` was configured, so it must be there.
    pub ca_key_required: bool,
}

/// Turning security off takes this, and the node says so at every start.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecuritySection {
    /// Plain-text gRPC with no peer authentication: anyone who reaches the
    /// port can change the cluster. For throwaway clusters only.
    #[serde(default)]
    pub insecure: bool,
}

/// Gossip (chitchat over UDP).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MembershipSection {
    /// UDP address to gossip on; default: the gRPC bind address (same
    /// host and port number, UDP instead of TCP).
    #[serde(default)]
    pub gossip_bind: Option<String>,
    #[serde(default = "default_gossip_interval_ms")]
    pub gossip_interval_ms: u64,
    /// Phi-accrual threshold: higher tolerates longer silences before a
    /// node counts as dead.
    #[serde(default = "default_phi_threshold")]
    pub phi_threshold: f64,
    /// Dead nodes drop out of gossip's view after this long.
    #[serde(default = "default_dead_node_forget_after_ms")]
    pub dead_node_forget_after_ms: u64,
}

fn default_gossip_interval_ms() -> u64 {
    500
}
fn default_phi_threshold() -> f64 {
    8.0
}
fn default_dead_node_forget_after_ms() -> u64 {
    24 * 3600 * 1000
}

impl Default for MembershipSection {
    fn default() -> Self {
        Self {
            gossip_bind: None,
            gossip_interval_ms: default_gossip_interval_ms(),
            phi_threshold: default_phi_threshold(),
            dead_node_forget_after_ms: default_dead_node_forget_after_ms(),
        }
    }
}

/// What happens when nodes die or lose contact.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FailoverSection {
    /// This node stops its VMs after failing to reach a raft quorum for
    /// this long (fencing). The cluster waits at least this plus a margin
    /// before placing them elsewhere.
    #[serde(default = "default_fence_after_ms")]
    pub fence_after_ms: u64,
    /// Cluster default for a VM's grace before it counts as lost (used
    /// when this node bootstraps a cluster; `cluster settings` changes it).
    #[serde(default = "default_lost_after_ms")]
    pub lost_after_ms: u64,
    /// Cluster default: start lost VMs elsewhere (bootstrap only, as above).
    #[serde(default = "default_true")]
    pub replace_lost: bool,
}

fn default_fence_after_ms() -> u64 {
    10_000
}
fn default_lost_after_ms() -> u64 {
    15_000
}

impl Default for FailoverSection {
    fn default() -> Self {
        Self {
            fence_after_ms: default_fence_after_ms(),
            lost_after_ms: default_lost_after_ms(),
            replace_lost: true,
        }
    }
}

/// Voter management (bootstrap defaults; `cluster autopilot` changes them).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AutopilotSection {
    #[serde(default = "default_voters")]
    pub voters: u32,
    #[serde(default = "default_dead_voter_after_ms")]
    pub dead_voter_after_ms: u64,
}

fn default_voters() -> u32 {
    3
}
fn default_dead_voter_after_ms() -> u64 {
    15_000
}

impl Default for AutopilotSection {
    fn default() -> Self {
        Self {
            voters: default_voters(),
            dead_voter_after_ms: default_dead_voter_after_ms(),
        }
    }
}

/// Placement tunables (the leader's apply).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSection {
    /// vCPUs handed out per host core.
    #[serde(default = "default_vcpu_overcommit")]
    pub vcpu_overcommit: u32,
}

fn default_vcpu_overcommit() -> u32 {
    4
}

impl Default for SchedulerSection {
    fn default() -> Self {
        Self {
            vcpu_overcommit: default_vcpu_overcommit(),
        }
    }
}

/// The node agent that runs the VMs assigned to this node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Run VMs on this node (a node can be a pure voter).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// One directory per VM (microvm.nix uses /var/lib/microvms); default
    /// `DATA_DIR/vms`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// "auto" probes KVM once at start-up and falls back to TCG.
    #[serde(default)]
    pub accel: AccelMode,
    #[serde(default = "default_qemu")]
    pub qemu: String,
    #[serde(default = "default_nix")]
    pub nix: String,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// "child" (the agent runs `microvm-run`) or "systemd" (microvm.nix's
    /// `microvm@NAME` units; set `state_dir = "/var/lib/microvms"`).
    #[serde(default)]
    pub supervision: Supervision,
    #[serde(default = "default_systemctl")]
    pub systemctl: String,
    #[serde(default = "default_stop_timeout_ms")]
    pub stop_timeout_ms: u64,
    #[serde(default = "default_boot_timeout_ms")]
    pub boot_timeout_ms: u64,
    #[serde(default = "default_console_log_bytes_max")]
    pub console_log_bytes_max: u64,
    /// Stop this node's VMs when the agent shuts down cleanly (they are
    /// always left running, for adoption, when it crashes).
    #[serde(default)]
    pub stop_vms_on_shutdown: bool,
    /// Run hypervisors as this unprivileged user (with `/dev/kvm`'s group
    /// and nothing else) instead of the agent's; Blixard's qemu runner
    /// only, under supervision = "child".
    #[serde(default)]
    pub vm_user: Option<String>,
}

fn default_true() -> bool {
    true
}
fn default_qemu() -> String {
    "qemu-system-x86_64".into()
}
fn default_systemctl() -> String {
    "systemctl".into()
}
fn default_nix() -> String {
    "nix".into()
}
fn default_stop_timeout_ms() -> u64 {
    10_000
}
fn default_boot_timeout_ms() -> u64 {
    30_000
}
fn default_console_log_bytes_max() -> u64 {
    4 * 1024 * 1024
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            enabled: true,
            state_dir: None,
            accel: AccelMode::default(),
            qemu: default_qemu(),
            nix: default_nix(),
            restart_policy: RestartPolicy::default(),
            supervision: Supervision::default(),
            systemctl: default_systemctl(),
            stop_timeout_ms: default_stop_timeout_ms(),
            boot_timeout_ms: default_boot_timeout_ms(),
            console_log_bytes_max: default_console_log_bytes_max(),
            stop_vms_on_shutdown: false,
            vm_user: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    #[serde(default)]
    pub node_id: u64,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Addresses of existing members to join through (first start only;
    /// later starts use them to find gossip peers).
    #[serde(default)]
    pub join: Vec<String>,
    /// Found a new cluster on the first start of an empty data directory
    /// (one node, once). With `join` too, the join addresses are asked
    /// first and a cluster that answers is joined, never founded beside.
    #[serde(default)]
    pub bootstrap: bool,
    /// Nodes gossip only with nodes of the same cluster name.
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// Labels matched by placement rules, e.g. `{ zone = "a" }`.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// A join token: a node without a certificate gets one with it
    /// through a `join` address on its first start.
    #[serde(default)]
    pub join_token: Option<String>,
}

fn default_cluster_name() -> String {
    "blixard".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsensusSection {
    #[serde(default = "default_election_timeout_ms")]
    pub election_timeout_ms: u64,
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Randomized election timeouts fall in
    /// `[election_timeout_ms, election_timeout_max_ms)`; default twice the
    /// timeout. Setting it one heartbeat above makes elections reproducible.
    #[serde(default)]
    pub election_timeout_max_ms: Option<u64>,
    #[serde(default = "default_snapshot_threshold")]
    pub snapshot_threshold: u64,
    /// How long a client request may wait for commit before failing.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// gRPC address this node serves clients and peers on.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// A connection with no call in flight this long is closed.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/blixard")
}
fn default_election_timeout_ms() -> u64 {
    1000
}
fn default_heartbeat_interval_ms() -> u64 {
    100
}
fn default_snapshot_threshold() -> u64 {
    10_000
}
fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    5 * 60 * 1000
}
/// Connection idle timeouts: from a second (shorter than a client's pause
/// between two calls of one command would be) to a day.
const IDLE_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 1_000..=86_400_000;
/// Longest election timeout: a minute (a cluster that takes longer to
/// notice a dead leader is down, not tuned).
const ELECTION_TIMEOUT_MS_MAX: u64 = 60_000;
/// Most entries between snapshots: the log a restart replays stays small.
const SNAPSHOT_THRESHOLD_MAX: u64 = 10_000_000;
/// Longest a client request waits for commit.
const REQUEST_TIMEOUT_MS_MAX: u64 = 600_000;
/// Longest a guest may take to boot: an hour.
const AGENT_TIMEOUT_MS_MAX: u64 = 3_600_000;
/// Largest console log kept per VM: 1 GiB.
const CONSOLE_LOG_BYTES_MAX: u64 = 1 << 30;

/// Refuses `value` outside `range`, naming the setting and the range.
fn within(name: &str, value: u64, range: std::ops::RangeInclusive<u64>) -> Result<(), Error> {
    if range.contains(&value) {
        return Ok(());
    }
    let detail = if *range.end() == u64::MAX {
        format!("{name} {value} must be at least {}", range.start())
    } else {
        format!(
            "{name} {value} must be between {} and {}",
            range.start(),
            range.end()
        )
    };
    Err(Error::InvalidConfig { detail })
}

/// Refuses a bind address peers could not use: the node advertises the
/// address it binds, so an unspecified IP (0.0.0.0, ::) or port 0 would
/// send every peer nowhere.
fn reachable(name: &str, address: &str) -> Result<(), Error> {
    let invalid = |detail: String| Err(Error::InvalidConfig { detail });
    let shown = format!("{:?}", blixard_api::validate::echo(address));
    let Ok(socket) = address.parse::<SocketAddr>() else {
        return invalid(format!("{name} {shown} is not an IP:PORT socket address"));
    };
    if socket.ip().is_unspecified() || socket.port() == 0 {
        return invalid(format!(
            "{name} {shown} is advertised to peers as this node's address: name one IP and \
             port of this host they can reach (not 0.0.0.0, :: or port 0)"
        ));
    }
    Ok(())
}

fn default_bind() -> String {
    blixard_api::DEFAULT_ADDR.to_string()
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            node_id: 0,
            data_dir: default_data_dir(),
            join: Vec::new(),
            bootstrap: false,
            name: default_cluster_name(),
            labels: Default::default(),
            join_token: None,
        }
    }
}

impl Default for ConsensusSection {
    fn default() -> Self {
        Self {
            election_timeout_ms: default_election_timeout_ms(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            election_timeout_max_ms: None,
            snapshot_threshold: default_snapshot_threshold(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            bind: default_bind(),
            idle_timeout_ms: default_idle_timeout_ms(),
        }
    }
}

/// Flags given on the command line; each one set wins over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub node_id: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub bind: Option<String>,
    pub join: Vec<String>,
    /// `--bootstrap`: set wins over the file; unset leaves the file's.
    pub bootstrap: bool,
    /// `--label KEY=VALUE`, added to (and overriding) the file's labels.
    pub labels: Vec<(String, String)>,
    pub gossip_bind: Option<String>,
    pub join_token: Option<String>,
}

impl Config {
    /// Parses TOML text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, Error> {
        toml::from_str(text).map_err(|e| Error::Config {
            origin: origin.to_string(),
            detail: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            origin: path.display().to_string(),
            detail: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn apply(&mut self, overrides: Overrides) {
        if let Some(node_id) = overrides.node_id {
            self.cluster.node_id = node_id;
        }
        if let Some(data_dir) = overrides.data_dir {
            self.cluster.data_dir = data_dir;
        }
        if let Some(bind) = overrides.bind {
            self.api.bind = bind;
        }
        if !overrides.join.is_empty() {
            self.cluster.join = overrides.join;
        }
        self.cluster.bootstrap |= overrides.bootstrap;
        self.cluster.labels.extend(overrides.labels);
        if overrides.gossip_bind.is_some() {
            self.membership.gossip_bind = overrides.gossip_bind;
        }
        if overrides.join_token.is_some() {
            self.cluster.join_token = overrides.join_token;
        }
    }

    /// The UDP address gossip binds (see `MembershipSection::gossip_bind`).
    pub fn gossip_bind_addr(&self) -> SocketAddr {
        match &self.membership.gossip_bind {
            Some(address) => address
                .parse()
                .expect("validate() checked the gossip address"),
            None => self.bind_addr(),
        }
    }

    /// See the module invariant.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |detail: String| Err(Error::InvalidConfig { detail });
        if self.cluster.node_id == 0 {
            return invalid(
                "cluster.node_id is missing or 0: give --node-id N or set node_id in [cluster]"
                    .into(),
            );
        }
        if self.cluster.data_dir.as_os_str().is_empty() {
            return invalid("cluster.data_dir is empty".into());
        }
        reachable("api.bind", &self.api.bind)?;
        for address in &self.cluster.join {
            blixard_api::validate::address(address).map_err(|e| Error::InvalidConfig {
                detail: format!("join: {e}"),
            })?;
        }
        if self.agent.vm_user.is_some() && self.agent.supervision == Supervision::Systemd {
            return invalid(
                "agent.vm_user is for supervision = \"child\"; under systemd the microvm@ \
                 unit names its user"
                    .into(),
            );
        }
        let consensus = &self.consensus;
        // Three heartbeats must fit in the longest election timeout.
        within(
            "consensus.heartbeat_interval_ms",
            consensus.heartbeat_interval_ms,
            1..=ELECTION_TIMEOUT_MS_MAX / 3,
        )?;
        if consensus.election_timeout_ms < 3 * consensus.heartbeat_interval_ms {
            return invalid(format!(
                "consensus.election_timeout_ms {} must be at least 3 heartbeats ({} ms)",
                consensus.election_timeout_ms,
                3 * consensus.heartbeat_interval_ms
            ));
        }
        // Upper bounds: a timeout of u64::MAX is a node that never elects
        // itself or a request that never fails, not a setting.
        within(
            "consensus.election_timeout_ms",
            consensus.election_timeout_ms,
            0..=ELECTION_TIMEOUT_MS_MAX,
        )?;
        if let Some(max_ms) = consensus.election_timeout_max_ms {
            if max_ms <= consensus.election_timeout_ms {
                return invalid(format!(
                    "consensus.election_timeout_max_ms {max_ms} must exceed election_timeout_ms {}",
                    consensus.election_timeout_ms
                ));
            }
            within(
                "consensus.election_timeout_max_ms",
                max_ms,
                0..=2 * ELECTION_TIMEOUT_MS_MAX,
            )?;
        }
        within(
            "consensus.snapshot_threshold",
            consensus.snapshot_threshold,
            2..=SNAPSHOT_THRESHOLD_MAX,
        )?;
        within(
            "agent.stop_timeout_ms",
            self.agent.stop_timeout_ms,
            2..=u64::MAX,
        )?;
        within(
            "agent.boot_timeout_ms",
            self.agent.boot_timeout_ms,
            1..=AGENT_TIMEOUT_MS_MAX,
        )?;
        within(
            "agent.console_log_bytes_max",
            self.agent.console_log_bytes_max,
            4096..=CONSOLE_LOG_BYTES_MAX,
        )?;
        within(
            "consensus.request_timeout_ms",
            consensus.request_timeout_ms,
            1..=REQUEST_TIMEOUT_MS_MAX,
        )?;
        within(
            "api.idle_timeout_ms",
            self.api.idle_timeout_ms,
            IDLE_TIMEOUT_MS_RANGE,
        )?;
        self.validate_cluster_features()
    }

    fn validate_cluster_features(&self) -> Result<(), Error> {
        let invalid = |detail: String| Err(Error::InvalidConfig { detail });
        if blixard_api::validate::vm_name(&self.cluster.name).is_err() {
            return invalid(format!(
                "cluster.name {:?} must be 1-63 lowercase letters, digits or '-'",
                self.cluster.name
            ));
        }
        if self.cluster.labels.len() > blixard_api::limits::LABELS_MAX {
            return invalid(format!(
                "cluster.labels: at most {} labels",
                blixard_api::limits::LABELS_MAX
            ));
        }
        for (key, value) in &self.cluster.labels {
            if let Err(error) = format!("{key}={value}").parse::<blixard_consensus::Rule>() {
                return invalid(format!("cluster.labels: {error}"));
            }
            // What the node reports must pass the state machine's checks.
            if let Err(error) = blixard_api::validate::label(key, value) {
                return invalid(format!("cluster.labels: {error}"));
            }
        }
        if let Some(address) = &self.membership.gossip_bind {
            reachable("membership.gossip_bind", address)?;
        }
        let membership = &self.membership;
        if !(10..=10_000).contains(&membership.gossip_interval_ms) {
            return invalid(format!(
                "membership.gossip_interval_ms {} must be between 10 and 10000",
                membership.gossip_interval_ms
            ));
        }
        if !(1.0..=64.0).contains(&membership.phi_threshold) {
            return invalid(format!(
                "membership.phi_threshold {} must be between 1 and 64",
                membership.phi_threshold
            ));
        }
        // The node reports its fence period plus its stop timeout; the
        // state machine takes at most a week of it.
        let period_ms_max = blixard_consensus::validate::PERIOD_MS_MAX / 2;
        if !(1_000..=period_ms_max).contains(&self.failover.fence_after_ms)
            || self.agent.stop_timeout_ms > period_ms_max
        {
            return invalid(format!(
                "failover.fence_after_ms {} must be between 1000 and {period_ms_max}, and \
                 agent.stop_timeout_ms {} at most {period_ms_max}",
                self.failover.fence_after_ms, self.agent.stop_timeout_ms
            ));
        }
        let settings = blixard_consensus::Command::SetSettings {
            settings: self.initial_settings(),
        };
        if let Err(rejection) = blixard_consensus::validate::command(&settings) {
            return invalid(format!("autopilot/failover: {rejection}"));
        }
        if self.scheduler.vcpu_overcommit == 0 || self.scheduler.vcpu_overcommit > 64 {
            return invalid(format!(
                "scheduler.vcpu_overcommit {} must be between 1 and 64",
                self.scheduler.vcpu_overcommit
            ));
        }
        Ok(())
    }

    /// The cluster settings a cluster bootstrapped by this node starts with.
    pub fn initial_settings(&self) -> blixard_consensus::Settings {
        blixard_consensus::Settings {
            voters: self.autopilot.voters,
            dead_voter_after_ms: self.autopilot.dead_voter_after_ms,
            lost_after_ms: self.failover.lost_after_ms,
            replace_lost: self.failover.replace_lost,
        }
    }

    /// Where the node's CA certificate, certificate and key are read from.
    pub fn tls_files(&self) -> TlsFiles {
        let dir = self.cluster.data_dir.join("tls");
        let or_default =
            |path: &Option<PathBuf>, name: &str| path.clone().unwrap_or_else(|| dir.join(name));
        use blixard_api::identity::GOSSIP_KEY_FILE;
        use blixard_api::tls::{CA_FILE, CA_KEY_FILE, NODE_CERT_FILE, NODE_KEY_FILE};
        TlsFiles {
            ca: or_default(&self.tls.ca_file, CA_FILE),
            cert: or_default(&self.tls.cert_file, NODE_CERT_FILE),
            key: or_default(&self.tls.key_file, NODE_KEY_FILE),
            gossip_key: or_default(&self.tls.gossip_key_file, GOSSIP_KEY_FILE),
            ca_key: or_default(&self.tls.ca_key_file, CA_KEY_FILE),
            ca_key_required: self.tls.ca_key_file.is_some(),
        }
    }

    /// Where VM state directories live.
    pub fn vm_state_dir(&self) -> PathBuf {
        self.agent
            .state_dir
            .clone()
            .unwrap_or_else(|| self.cluster.data_dir.join("vms"))
    }

    pub fn bind_addr(&self) -> SocketAddr {
        self.api
            .bind
            .parse()
            .expect("validate() checked the bind address")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sections_parse_and_flags_win() {
        let mut config = Config::parse(
            "[cluster]\nnode_id = 2\ndata_dir = \"/tmp/x\"\n[consensus]\nelection_timeout_ms = 500\nheartbeat_interval_ms = 50\nsnapshot_threshold = 100\n",
            "test",
        )
        .unwrap();
        assert_eq!(config.cluster.node_id, 2);
        assert_eq!(config.consensus.snapshot_threshold, 100);
        config.apply(Overrides {
            node_id: Some(3),
            bind: Some("127.0.0.1:9000".into()),
            ..Default::default()
        });
        assert_eq!(config.cluster.node_id, 3);
        config.validate().unwrap();
    }

    #[test]
    fn bad_files_name_the_problem() {
        let unknown = Config::parse("[cluster]\nnode_idd = 1\n", "f.toml").unwrap_err();
        assert!(unknown.to_string().contains("node_idd"), "{unknown}");
        let truncated = Config::parse("[cluster\nnode_id = 1", "f.toml").unwrap_err();
        assert!(truncated.to_string().contains("f.toml"), "{truncated}");
        let wrong_type = Config::parse("[cluster]\nnode_id = \"one\"\n", "f.toml").unwrap_err();
        assert!(wrong_type.to_string().contains("node_id"), "{wrong_type}");
    }

    #[test]
    fn validation_refuses_nonsense() {
        let mut config = Config::default();
        assert!(config.validate().is_err(), "node id 0 accepted");
        config.cluster.node_id = 1;
        config.validate().unwrap();
        config.consensus.election_timeout_ms = 100;
        assert!(config.validate().is_err());
        config.consensus.election_timeout_ms = 1000;
        config.api.bind = "nowhere".into();
        assert!(config.validate().is_err());
        for unreachable in ["0.0.0.0:7000", "[::]:7000", "127.0.0.1:0"] {
            config.api.bind = unreachable.into();
            let refused = config.validate().unwrap_err().to_string();
            assert!(refused.contains("advertised"), "{unreachable}: {refused}");
        }
        config.api.bind = "127.0.0.1:7000".into();
        config.membership.gossip_bind = Some("0.0.0.0:7000".into());
        assert!(config.validate().is_err());
        config.membership.gossip_bind = None;
        config.validate().unwrap();
        for (field, refused) in [
            ("election_timeout_ms", u64::MAX),
            ("request_timeout_ms", u64::MAX),
            ("snapshot_threshold", u64::MAX),
        ] {
            let mut bad = config.clone();
            match field {
                "election_timeout_ms" => bad.consensus.election_timeout_ms = refused,
                "request_timeout_ms" => bad.consensus.request_timeout_ms = refused,
                _ => bad.consensus.snapshot_threshold = refused,
            }
            let error = bad.validate().unwrap_err().to_string();
            assert!(error.contains(field), "{field}: {error}");
        }
        let mut bad = config.clone();
        bad.agent.console_log_bytes_max = u64::MAX;
        assert!(bad.validate().is_err());
        for refused in [0, 999, 86_400_001, u64::MAX] {
            let mut bad = config.clone();
            bad.api.idle_timeout_ms = refused;
            let error = bad.validate().unwrap_err().to_string();
            assert!(error.contains("api.idle_timeout_ms"), "{refused}: {error}");
        }
    }
}
