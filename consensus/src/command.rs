//! Commands carried in the Raft log and what applying them yields.
//!
//! Invariant: a command holds everything its application needs (ids,
//! timestamps, sizes), so applying it reads no clock, no randomness and no
//! I/O, and every node computes the same result.

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

/// Why a setting was refused.
pub fn validate_settings(settings: &Settings) -> Result<(), String> {
    if !(1..=7).contains(&settings.voters) || settings.voters.is_multiple_of(2) {
        return Err(format!(
            "voters must be 1, 3, 5 or 7 (got {})",
            settings.voters
        ));
    }
    if settings.dead_voter_after_ms < 1_000 || settings.lost_after_ms < 1_000 {
        return Err("dead-voter and lost-after periods must be at least 1000 ms".into());
    }
    Ok(())
}

/// A state-machine command. New kinds of cluster state add variants here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Command {
    CreateVm {
        spec: VmSpec,
        created_at_unix_ms: u64,
    },
    SetVmDesiredState {
        name: String,
        desired_state: DesiredState,
    },
    DeleteVm {
        name: String,
    },
    /// Records (or updates) the address a member serves on.
    SetNodeAddress {
        node_id: u64,
        address: String,
    },
    /// A node's agent describes its host.
    SetHostFacts {
        node_id: u64,
        facts: HostFacts,
    },
    /// The scheduler places a VM on a node (or takes it off: `None`).
    AssignVm {
        name: String,
        node_id: Option<u64>,
        /// Why (shown in events).
        #[serde(default)]
        reason: String,
    },
    /// The scheduler found no node for a pending VM.
    MarkUnplaceable {
        name: String,
        reason: String,
    },
    /// The VM's node has been dead past the VM's grace period.
    MarkVmLost {
        name: String,
        node_id: u64,
        reason: String,
        /// Take it off the node so it is placed elsewhere.
        replace: bool,
    },
    /// Creates or deletes members NAME-1..N of a replica group so exactly
    /// `replicas` exist; new ones copy `template` (named after the group).
    /// Unconditional: kept for entries already in logs; the services
    /// propose [`Command::CreateGroup`] and [`Command::ScaleGroup`], whose
    /// conditions apply decides.
    SetReplicas {
        template: VmSpec,
        replicas: u32,
        /// Desired state of new members.
        start: bool,
        created_at_unix_ms: u64,
    },
    /// Creates replica group `template.name` with members NAME-1..N, all
    /// copies of `template`. Refused if a VM or a group of that name
    /// exists when it applies (of two racing creates, one wins).
    CreateGroup {
        template: VmSpec,
        replicas: u32,
        /// Desired state of the members.
        start: bool,
        created_at_unix_ms: u64,
    },
    /// Resizes replica group `group` to `replicas` (0 deletes it), new
    /// members copying an existing member as the group holds it when this
    /// applies. Refused if the group is gone by then.
    ScaleGroup {
        group: String,
        replicas: u32,
        /// Desired state of new members.
        start: bool,
        created_at_unix_ms: u64,
    },
    SetNodeEligibility {
        node_id: u64,
        eligible: bool,
    },
    /// Marks the node ineligible and evicts its VMs.
    DrainNode {
        node_id: u64,
        at_unix_ms: u64,
        deadline_unix_ms: u64,
    },
    /// Ends a drain (nothing left on the node, or the deadline passed:
    /// `force` then takes the remaining VMs off it).
    FinishDrain {
        node_id: u64,
        force: bool,
    },
    /// Replaces every setting (kept for entries already in logs; the
    /// services propose [`Command::UpdateSettings`]).
    SetSettings {
        settings: Settings,
    },
    /// Changes the settings the update names, merged into the settings
    /// as they are when it applies (never as a caller read them).
    UpdateSettings {
        update: SettingsUpdate,
    },
    /// A node that runs VMs without holding the raft log (a worker).
    RegisterWorker {
        node_id: u64,
        address: String,
    },
    /// Removes a worker's record (raft members leave by configuration
    /// change instead). Its VMs lose their assignment.
    UnregisterWorker {
        node_id: u64,
    },
    /// The node a VM is assigned to reports what it observes.
    ReportVm {
        name: String,
        node_id: u64,
        observed: VmObserved,
    },
    CreateToken {
        token: Token,
    },
    RevokeToken {
        accessor: String,
    },
    CreateRole {
        role: CustomRole,
    },
    CreateJoinToken {
        token: JoinToken,
    },
    /// A node holding the CA key spends a join token on a certificate for
    /// `node_id` (a new id) and the key hashing to `key_sha256`;
    /// `at_unix_ms` is that node's clock, against which the token's expiry
    /// is judged. Spending it again on the same id and key is accepted
    /// (the node asking again after losing the answer).
    UseJoinToken {
        accessor: String,
        node_id: u64,
        #[serde(default)]
        key_sha256: String,
        at_unix_ms: u64,
    },
    /// A join token is withdrawn, spent or not.
    RevokeJoinToken {
        accessor: String,
    },
    /// A voter holding the CA key issued node `node_id` the certificate
    /// `issued_sha256` for a renewal the node asked for presenting
    /// `presented_sha256`: both are added to the certificates the node is
    /// accepted with (which then hold only the pair if the bound is
    /// passed). Refused if `presented_sha256` is no longer accepted.
    AcceptNodeCertificate {
        node_id: u64,
        presented_sha256: String,
        issued_sha256: String,
    },
    /// Node `node_id` serves its renewed certificate `keep_sha256`: every
    /// other certificate naming it is refused from now on (a stolen old
    /// key is cut off). Refused unless `keep_sha256` is accepted.
    RetireNodeCertificates {
        node_id: u64,
        keep_sha256: String,
    },
    /// Node `node_id`, accepted so far with any certificate of the
    /// cluster CA naming it, is held from now on to `certificate_sha256`,
    /// the one it serves (a node pins itself once it is in the state, so
    /// a certificate made by hand later for its id is refused). Refused
    /// once the node is held to certificates already.
    PinNodeCertificate {
        node_id: u64,
        certificate_sha256: String,
    },
    /// Refused while a token has the role.
    DeleteRole {
        name: String,
    },
}

/// One change of the cluster state, as workers replay it: every accepted
/// command and every membership change that touched the state advances
/// the revision by exactly one, so a worker holding revision `r` that
/// applies the transition of revision `r + 1` holds exactly the state the
/// voters held at `r + 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "transition")]
pub enum Transition {
    Command {
        command: Box<Command>,
        /// Who asked, for the audit trail (absent for the cluster's own
        /// decisions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audit: Option<Box<crate::audit::Audit>>,
    },
    MemberAdded {
        node_id: u64,
        address: String,
    },
    MemberRemoved {
        node_id: u64,
    },
}

impl Command {
    /// The command's name as it is encoded (`create_vm`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateVm { .. } => "create_vm",
            Command::SetVmDesiredState { .. } => "set_vm_desired_state",
            Command::DeleteVm { .. } => "delete_vm",
            Command::SetNodeAddress { .. } => "set_node_address",
            Command::SetHostFacts { .. } => "set_host_facts",
            Command::AssignVm { .. } => "assign_vm",
            Command::MarkUnplaceable { .. } => "mark_unplaceable",
            Command::MarkVmLost { .. } => "mark_vm_lost",
            Command::SetReplicas { .. } => "set_replicas",
            Command::CreateGroup { .. } => "create_group",
            Command::ScaleGroup { .. } => "scale_group",
            Command::SetNodeEligibility { .. } => "set_node_eligibility",
            Command::DrainNode { .. } => "drain_node",
            Command::FinishDrain { .. } => "finish_drain",
            Command::SetSettings { .. } => "set_settings",
            Command::UpdateSettings { .. } => "update_settings",
            Command::RegisterWorker { .. } => "register_worker",
            Command::UnregisterWorker { .. } => "unregister_worker",
            Command::ReportVm { .. } => "report_vm",
            Command::CreateToken { .. } => "create_token",
            Command::RevokeToken { .. } => "revoke_token",
            Command::CreateRole { .. } => "create_role",
            Command::CreateJoinToken { .. } => "create_join_token",
            Command::UseJoinToken { .. } => "use_join_token",
            Command::RevokeJoinToken { .. } => "revoke_join_token",
            Command::AcceptNodeCertificate { .. } => "accept_node_certificate",
            Command::RetireNodeCertificates { .. } => "retire_node_certificates",
            Command::PinNodeCertificate { .. } => "pin_node_certificate",
            Command::DeleteRole { .. } => "delete_role",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("commands always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, crate::Error> {
        serde_json::from_slice(bytes).map_err(|e| crate::Error::Corrupt {
            what: "command",
            detail: e.to_string(),
        })
    }
}

/// What applying an accepted command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The state revision after the command.
    pub revision: u64,
    /// The VM the command touched, as it is now (`None` after a delete).
    pub vm: Option<VmRecord>,
}

/// Why the state machine refused a command. Refusal changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Rejection {
    #[error("a VM named {name:?} already exists")]
    VmExists { name: String },
    #[error("no VM named {name:?}")]
    VmNotFound { name: String },
    #[error("undecodable command: {detail}")]
    Undecodable { detail: String },
    #[error("membership change refused: {detail}")]
    ConfChange { detail: String },
    #[error("VM {name:?} is assigned to node {assigned:?}, not node {node_id}")]
    NotAssigned {
        name: String,
        node_id: u64,
        assigned: Option<u64>,
    },
    #[error("no member with node id {node_id}")]
    NoSuchNode { node_id: u64 },
    #[error("no replica group named {group:?}")]
    NoSuchGroup { group: String },
    #[error(
        "a VM or replica group named {name:?} already exists; use `vm scale` to resize a group"
    )]
    GroupExists { name: String },
    #[error("no token with accessor {accessor:?}")]
    NoSuchToken { accessor: String },
    #[error("{detail}")]
    Invalid { detail: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_the_encoded_tags() {
        let command = Command::UnregisterWorker { node_id: 4 };
        let encoded: serde_json::Value = serde_json::from_slice(&command.encode()).unwrap();
        assert_eq!(encoded["type"], command.kind());
    }
}

/// Something that happened to the cluster, for `events` and the TUI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub vm: Option<String>,
    pub node_id: Option<u64>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    VmCreated,
    VmDeleted,
    VmPlaced,
    VmUnplaceable,
    VmStarting,
    VmRunning,
    VmStopped,
    VmRestarted,
    VmFailed,
    VmLost,
    VmEvicted,
    NodeJoined,
    NodeRemoved,
    NodeEligibility,
    DrainStarted,
    DrainFinished,
    SettingsChanged,
    TokenCreated,
    TokenRevoked,
    RoleCreated,
    RoleDeleted,
    JoinTokenCreated,
    JoinTokenUsed,
    JoinTokenRevoked,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::VmCreated => "vm_created",
            EventKind::VmDeleted => "vm_deleted",
            EventKind::VmPlaced => "vm_placed",
            EventKind::VmUnplaceable => "vm_unplaceable",
            EventKind::VmStarting => "vm_starting",
            EventKind::VmRunning => "vm_running",
            EventKind::VmStopped => "vm_stopped",
            EventKind::VmRestarted => "vm_restarted",
            EventKind::VmFailed => "vm_failed",
            EventKind::VmLost => "vm_lost",
            EventKind::VmEvicted => "vm_evicted",
            EventKind::NodeJoined => "node_joined",
            EventKind::NodeRemoved => "node_removed",
            EventKind::NodeEligibility => "node_eligibility",
            EventKind::DrainStarted => "drain_started",
            EventKind::DrainFinished => "drain_finished",
            EventKind::SettingsChanged => "settings_changed",
            EventKind::TokenCreated => "token_created",
            EventKind::TokenRevoked => "token_revoked",
            EventKind::RoleCreated => "role_created",
            EventKind::RoleDeleted => "role_deleted",
            EventKind::JoinTokenCreated => "join_token_created",
            EventKind::JoinTokenUsed => "join_token_used",
            EventKind::JoinTokenRevoked => "join_token_revoked",
        }
    }
}

/// A change to the VM table, in the order it was applied (for watchers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmChange {
    Added(VmRecord),
    Modified(VmRecord),
    Deleted(VmRecord),
}

/// Identifies who proposed an entry so only that node answers the client.
/// Stored in the raft entry's `context`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalTag {
    pub proposer: u64,
    pub request_id: u64,
}

impl ProposalTag {
    /// Bytes of an encoded tag; an entry's context may go on after them
    /// (see [`crate::audit::AuditContext`]).
    pub const ENCODED_LEN: usize = 16;

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(16);
        bytes.extend_from_slice(&self.proposer.to_be_bytes());
        bytes.extend_from_slice(&self.request_id.to_be_bytes());
        bytes
    }

    /// `None` for entries raft-rs made itself (empty context).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let proposer = u64::from_be_bytes(bytes.get(0..8)?.try_into().ok()?);
        let request_id = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Self {
            proposer,
            request_id,
        })
    }
}
