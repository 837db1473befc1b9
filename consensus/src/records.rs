//! The cluster's records: VMs, nodes, tokens, roles, settings, as the
//! state holds them and commands carry them.
//!
//! Invariant: a record is plain data (no clock, no I/O), serialized the
//! same on every node, so the state a command yields is the same
//! everywhere.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::placement::{FailoverPolicy, Placement};

/// How a VM obtains its `microvm-run` runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerSource {
    /// Blixard writes a qemu `-M microvm` runner for this kernel and initramfs.
    Kernel {
        kernel_path: String,
        initrd_path: String,
        cmdline: String,
        /// TCP forwards from 127.0.0.1 on the VM's node into the guest.
        #[serde(default)]
        ports: Vec<PortForward>,
    },
    /// `nix build FLAKE#nixosConfigurations.NAME.config.microvm.declaredRunner`.
    Flake { flake_ref: String },
}

/// A TCP port forwarded from the host's loopback into the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    pub host_port: u16,
    pub guest_port: u16,
}

/// What the operator wants a VM to be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Stopped,
    Running,
}

/// The operator's definition of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub runner: RunnerSource,
    /// Run only on this node (`--node`); otherwise the scheduler places it.
    #[serde(default)]
    pub pinned_node: Option<u64>,
    #[serde(default)]
    pub placement: Placement,
    #[serde(default)]
    pub failover: FailoverPolicy,
    /// The replica group (`vm create NAME --replicas N` makes NAME-1..N).
    #[serde(default)]
    pub group: Option<String>,
    /// The platform document managing the VM (`blixard apply`).
    #[serde(default)]
    pub platform: Option<String>,
}

/// Where a VM is in its life, as its node last reported (or the scheduler
/// decided, for `Pending` and `Scheduled`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmPhase {
    /// Wants to run; no node assigned yet.
    Pending,
    /// Assigned to a node that has not started it yet.
    Scheduled,
    Starting,
    Running,
    Stopping,
    #[default]
    Stopped,
    /// See `VmObserved::reason`.
    Failed,
    /// Its node died; see `VmObserved::reason`. Placed again unless its
    /// failover policy says not to replace it.
    Lost,
}

impl VmPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            VmPhase::Pending => "pending",
            VmPhase::Scheduled => "scheduled",
            VmPhase::Starting => "starting",
            VmPhase::Running => "running",
            VmPhase::Stopping => "stopping",
            VmPhase::Stopped => "stopped",
            VmPhase::Failed => "failed",
            VmPhase::Lost => "lost",
        }
    }
}

#[cfg(test)]
impl VmSpec {
    /// A small flake VM named `name`, for the crate's unit tests.
    pub(crate) fn for_tests(name: &str) -> Self {
        VmSpec {
            name: name.into(),
            vcpus: 1,
            memory_mib: 128,
            runner: RunnerSource::Flake {
                flake_ref: "/etc/vms#x".into(),
            },
            pinned_node: None,
            placement: Default::default(),
            failover: Default::default(),
            group: None,
            platform: None,
        }
    }
}

/// What the node running a VM observed, reported through the leader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmObserved {
    pub phase: VmPhase,
    /// The node that reported (or was assigned, for `Scheduled`).
    pub node: Option<u64>,
    /// Hypervisor process id on `node`.
    pub pid: Option<u32>,
    /// Milliseconds from spawning the hypervisor to the guest running.
    pub boot_ms: Option<u64>,
    /// How the hypervisor last exited, e.g. "exit code 1" or "signal 9".
    pub exit_status: Option<String>,
    /// Times the agent restarted the VM after it died unasked.
    pub restarts: u32,
    /// Why the VM failed (empty otherwise).
    pub reason: String,
    /// When the node observed this, stamped by the node.
    pub observed_at_unix_ms: u64,
}

/// A VM as the cluster state holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub spec: VmSpec,
    pub desired_state: DesiredState,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub created_at_unix_ms: u64,
    /// The node that should run the VM (set by the scheduler).
    #[serde(default)]
    pub assigned_node: Option<u64>,
    #[serde(default)]
    pub observed: VmObserved,
    /// Set by a drain: the node stops the VM, then it is placed elsewhere
    /// (never running in two places).
    #[serde(default)]
    pub evicting: bool,
}

/// A cluster member as the cluster state holds it (its raft role lives in
/// the raft configuration, not here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: u64,
    pub address: String,
    /// Facts the node reported about its host (absent until then).
    #[serde(default)]
    pub host: Option<HostFacts>,
    /// Whether the scheduler may place VMs here.
    #[serde(default = "eligible_by_default")]
    pub eligible: bool,
    /// Set while `node drain` moves VMs away.
    #[serde(default)]
    pub drain: Option<Drain>,
    /// The SHA-256 fingerprints (lowercase hex of the DER) of the
    /// certificates this node is accepted with. Empty: any certificate of
    /// the cluster CA naming it (until the node pins the one it serves,
    /// a moment after it joins, or for a node of an older version). At
    /// most [`NODE_CERTIFICATES_MAX`]: during a renewal, the one it had
    /// and the one (or, after a signer's retry, ones) it was issued; one
    /// once it serves the new one.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub certificates_sha256: BTreeSet<String>,
}

/// Certificates a node is accepted with at once (see
/// [`NodeRecord::certificates_sha256`]).
pub const NODE_CERTIFICATES_MAX: usize = 4;

fn eligible_by_default() -> bool {
    true
}

/// An ongoing drain of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub started_at_unix_ms: u64,
    /// After this the remaining VMs are taken off the node without waiting
    /// for it to stop them.
    pub deadline_unix_ms: u64,
}

/// A host's capacity and hypervisor acceleration, reported by its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub memory_mib_total: u64,
    pub vcpus_total: u32,
    /// "kvm", "tcg", or "" where no node agent runs.
    pub accel: String,
    /// Operator-set labels (`--label zone=a`), matched by placement rules.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where the node gossips, so restarted peers can find it again.
    #[serde(default)]
    pub gossip_address: String,
    /// Within this long of losing the quorum the node has stopped its VMs
    /// (its fencing period plus its stop timeout).
    #[serde(default)]
    pub fence_after_ms: u64,
}

/// A client token. The cluster keeps only the SHA-256 of its secret, so
/// the state (which every node and every snapshot holds) gives no token
/// away; the secret is shown once, when the token is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Public id (hex), for listing and revoking.
    pub accessor: String,
    /// What the operator called it (`ci`, `alice`).
    pub name: String,
    /// SHA-256 of the secret, lowercase hex.
    pub secret_sha256: String,
    pub created_at_unix_ms: u64,
    /// What the token may do.
    pub role: TokenRole,
    /// After this the token is refused (never, when absent).
    #[serde(default)]
    pub expires_at_unix_ms: Option<u64>,
}

/// A one-time token a new node presents to get its certificate (`cluster
/// join-token create`); only its hash is kept. Once spent it names the
/// node and key it was spent on, so that node (and only it) can ask again
/// if the answer was lost, until the token expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub accessor: String,
    /// SHA-256 of the secret, lowercase hex.
    pub secret_sha256: String,
    pub created_at_unix_ms: u64,
    pub expires_at_unix_ms: u64,
    #[serde(default)]
    pub spent: Option<JoinTokenUse>,
}

/// The certificate a join token was spent on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenUse {
    pub node_id: u64,
    /// SHA-256 of the certified public key (SubjectPublicKeyInfo DER),
    /// lowercase hex.
    pub key_sha256: String,
}

/// The longest a join token may live.
pub const JOIN_TOKEN_TTL_MS_MAX: u64 = 7 * 24 * 3600 * 1000;

impl Token {
    /// Whether the token is still good at `now_unix_ms` (a node's clock).
    pub fn is_valid_at(&self, now_unix_ms: u64) -> bool {
        self.expires_at_unix_ms
            .is_none_or(|expires| now_unix_ms < expires)
    }
}

/// A token's role: one of the built-in ones, from most to least
/// powerful, or one the cluster's admins made (`acl role create`).
/// Stored as its name, so tokens made before custom roles read the same.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TokenRole {
    /// Everything, tokens and cluster membership and settings included.
    Admin,
    /// VMs and nodes (create, start, drain, ...), and reading everything
    /// but the audit trail.
    Operator,
    /// Reading only (command-line secrets redacted).
    Viewer,
    /// A role in `ClusterState::roles`, by name.
    Custom(String),
}

impl TokenRole {
    pub const BUILT_IN: [TokenRole; 3] = [TokenRole::Admin, TokenRole::Operator, TokenRole::Viewer];

    pub fn as_str(&self) -> &str {
        match self {
            TokenRole::Admin => "admin",
            TokenRole::Operator => "operator",
            TokenRole::Viewer => "viewer",
            TokenRole::Custom(name) => name,
        }
    }

    /// The role named `text`: a built-in one, or else a custom one (which
    /// must exist where it is used).
    pub fn named(text: &str) -> Self {
        Self::BUILT_IN
            .into_iter()
            .find(|role| role.as_str() == text)
            .unwrap_or_else(|| TokenRole::Custom(text.to_string()))
    }

    /// What a built-in role allows (`None` for a custom role: ask the
    /// state, see `ClusterState::role_allows`).
    pub fn built_in_allows(&self, permission: Permission) -> Option<bool> {
        use Permission::*;
        Some(match self {
            TokenRole::Admin => true,
            // Whoever may write VMs reads them whole (an export applies
            // back unchanged).
            TokenRole::Operator => !matches!(permission, ClusterAdmin | AclAdmin | AuditRead),
            TokenRole::Viewer => matches!(permission, ClusterRead | VmRead | NodeRead),
            TokenRole::Custom(_) => return None,
        })
    }
}

impl Serialize for TokenRole {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TokenRole {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(TokenRole::named(&String::deserialize(deserializer)?))
    }
}

/// What a client RPC needs its token to allow, as `acl role create
/// --allow` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    #[serde(rename = "cluster:read")]
    ClusterRead,
    /// Membership and settings.
    #[serde(rename = "cluster:admin")]
    ClusterAdmin,
    #[serde(rename = "vm:read")]
    VmRead,
    /// Secret-looking values in VM command lines (`password=...`), which
    /// are redacted for tokens without it.
    #[serde(rename = "vm:read-secrets")]
    VmReadSecrets,
    #[serde(rename = "vm:write")]
    VmWrite,
    #[serde(rename = "node:read")]
    NodeRead,
    /// Eligibility and drains.
    #[serde(rename = "node:write")]
    NodeWrite,
    /// Tokens and roles.
    #[serde(rename = "acl:admin")]
    AclAdmin,
    /// The audit trail.
    #[serde(rename = "audit:read")]
    AuditRead,
}

impl Permission {
    pub const ALL: [Permission; 9] = [
        Permission::ClusterRead,
        Permission::ClusterAdmin,
        Permission::VmRead,
        Permission::VmReadSecrets,
        Permission::VmWrite,
        Permission::NodeRead,
        Permission::NodeWrite,
        Permission::AclAdmin,
        Permission::AuditRead,
    ];

    /// As refusals and `--allow` name it, e.g. `vm:write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ClusterRead => "cluster:read",
            Permission::ClusterAdmin => "cluster:admin",
            Permission::VmRead => "vm:read",
            Permission::VmReadSecrets => "vm:read-secrets",
            Permission::VmWrite => "vm:write",
            Permission::NodeRead => "node:read",
            Permission::NodeWrite => "node:write",
            Permission::AclAdmin => "acl:admin",
            Permission::AuditRead => "audit:read",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// Whether it only reads (a node certificate alone may do these).
    pub fn is_read(self) -> bool {
        matches!(
            self,
            Permission::ClusterRead | Permission::VmRead | Permission::NodeRead
        )
    }
}

/// A role an admin made: a name and what it allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomRole {
    pub name: String,
    pub permissions: std::collections::BTreeSet<Permission>,
    pub created_at_unix_ms: u64,
}

/// Cluster-wide settings, changed through the log like everything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// How many voters autopilot keeps.
    pub voters: u32,
    /// A voter dead (by gossip) this long is demoted and replaced.
    pub dead_voter_after_ms: u64,
    /// Default for `FailoverPolicy::lost_after_ms`.
    pub lost_after_ms: u64,
    /// Default for `FailoverPolicy::replace`.
    pub replace_lost: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            voters: 3,
            dead_voter_after_ms: 15_000,
            lost_after_ms: 15_000,
            replace_lost: true,
        }
    }
}

/// The settings an update names (the others stay as they are when it
/// applies, so two updates of different settings both take effect).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voters: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_voter_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_lost: Option<bool>,
}

impl SettingsUpdate {
    /// `settings` with this update's values in place.
    pub fn applied_to(&self, settings: &Settings) -> Settings {
        Settings {
            voters: self.voters.unwrap_or(settings.voters),
            dead_voter_after_ms: self
                .dead_voter_after_ms
                .unwrap_or(settings.dead_voter_after_ms),
            lost_after_ms: self.lost_after_ms.unwrap_or(settings.lost_after_ms),
            replace_lost: self.replace_lost.unwrap_or(settings.replace_lost),
        }
    }
}

/// A cluster setting out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("voters must be 1, 3, 5 or 7 (got {0})")]
    Voters(u32),
    #[error("dead-voter and lost-after periods must be at least {PERIOD_MS_MIN} ms")]
    PeriodTooShort,
}

/// The shortest dead-voter and lost-after periods.
pub const PERIOD_MS_MIN: u64 = 1_000;

/// Whether `settings` are within their ranges.
pub fn validate_settings(settings: &Settings) -> Result<(), SettingsError> {
    if !(1..=7).contains(&settings.voters) || settings.voters.is_multiple_of(2) {
        return Err(SettingsError::Voters(settings.voters));
    }
    if settings.dead_voter_after_ms < PERIOD_MS_MIN || settings.lost_after_ms < PERIOD_MS_MIN {
        return Err(SettingsError::PeriodTooShort);
    }
    Ok(())
}
