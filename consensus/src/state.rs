//! The replicated cluster state and the pure function that advances it.
//!
//! Invariants: `revision` counts accepted state-changing commands and only
//! grows; every VM's `create_revision <= mod_revision <= revision`; a VM's
//! `assigned_node` names a member or is `None`; only the assigned node's
//! reports change a VM's observed state; an evicting VM keeps its node
//! until that node reports it stopped (so it never runs in two places); a
//! refused command changes nothing; a join token is spent on at most one
//! node id and key, and an id it was spent on is never spent on again;
//! once a node's certificate was renewed, the node is accepted only with
//! the certificates its record names, at most `NODE_CERTIFICATES_MAX`; a
//! new placement fits its node on the state it applies to (`fit`).
//! `apply` does no I/O and reads no clock, so every replica that applies
//! the same log holds the same state and tells the same events (they
//! depend only on the command and the state before it). The state keeps
//! the newest [`RECENT_EVENTS_MAX`] events, numbered and timed by their
//! entries, so a node that caught up by snapshot holds
//! the same events as one that applied every entry.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::audit::{Actor, Audit, AuditRecord, AUDIT_RECORDS_MAX};
use crate::fit::{self, Load, NodeFacts};

use crate::command::{
    Applied, Command, Event, EventKind, EventRecord, Rejection, Transition, VmChange,
    EVENT_PLACE_BITS,
};
use crate::records::{
    validate_settings, CustomRole, DesiredState, Drain, HostFacts, JoinToken, JoinTokenUse,
    NodeRecord, Permission, Settings, Token, TokenRole, VmObserved, VmPhase, VmRecord, VmSpec,
    NODE_CERTIFICATES_MAX,
};

/// A key of the state tables that a command touched; storage rewrites it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    Vm(String),
    Node(u64),
    Settings,
    Tokens,
    /// An audit record, by sequence number (added, or fallen off).
    Audit(u64),
    /// An event record, by sequence number (added, or fallen off).
    Event(u64),
    /// The set of removed node ids.
    Removed,
    /// The custom roles.
    Roles,
    /// The unspent join tokens.
    JoinTokens,
}

/// Everything the cluster agrees on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub revision: u64,
    /// Ordered by name so every replica lists VMs in the same order.
    pub vms: BTreeMap<String, VmRecord>,
    pub nodes: BTreeMap<u64, NodeRecord>,
    #[serde(default)]
    pub settings: Settings,
    /// Client tokens by accessor (secrets only as hashes).
    #[serde(default)]
    pub tokens: BTreeMap<String, Token>,
    /// The last accepted client changes, oldest first (see
    /// [`crate::audit`]).
    #[serde(default)]
    pub audit: VecDeque<AuditRecord>,
    /// Nodes removed from the cluster: their ids (and so their
    /// certificates) are never accepted again. One entry per removal of a
    /// node a voter once admitted, so it grows only as fast as nodes do.
    #[serde(default)]
    pub removed_nodes: BTreeSet<u64>,
    /// Roles admins made, by name (see `TokenRole::Custom`).
    #[serde(default)]
    pub roles: BTreeMap<String, CustomRole>,
    /// Join tokens, by accessor, until they expire (spent ones too, so
    /// their node can ask again for a lost certificate).
    #[serde(default)]
    pub join_tokens: BTreeMap<String, JoinToken>,
    /// Node ids a join token was spent on: each has a certificate out
    /// there, joined or not, so no other token is spent on it (and
    /// `UnregisterWorker` retires one that never joined).
    #[serde(default)]
    pub issued_node_ids: BTreeSet<u64>,
    /// The newest events, oldest first, at most [`RECENT_EVENTS_MAX`].
    #[serde(default)]
    pub events: VecDeque<EventRecord>,
}

/// Events the state keeps (for `events` without `--follow`, and the
/// dashboard's event view).
pub const RECENT_EVENTS_MAX: usize = 1024;

/// Why a join token may not be spent (see
/// [`ClusterState::join_token_spend`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenRefusal {
    #[error("the join token is not valid here (unknown, revoked or expired long ago)")]
    Unknown,
    #[error("the join token has expired; make a new one")]
    Expired,
    #[error("the join token is not valid here: it was spent on another node's certificate")]
    SpentElsewhere,
    #[error("node {0} is or was in the cluster (or has a certificate); a join token is for a new node id")]
    NodeIdTaken(u64),
}

/// Join tokens the cluster holds at most, spent or not (expired ones are
/// dropped whenever one is made).
pub const JOIN_TOKENS_MAX: usize = 256;

/// Custom roles the cluster holds at most.
pub const ROLES_MAX: usize = 256;

/// Tokens the cluster holds at most (each request scans them).
pub const TOKENS_MAX: usize = 1024;

/// The outcome of applying one command.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<Applied, Rejection>,
    pub touched: Vec<Touched>,
    /// VM changes in the order they happened (for watchers).
    pub vm_changes: Vec<VmChange>,
    /// What happened, for the event stream.
    pub events: Vec<Event>,
    /// `events` as the state recorded them (numbered and timed), once
    /// the entry was applied through [`ClusterState::apply_entry`] or
    /// [`ClusterState::replay`]: what subscribers are sent.
    pub recorded: Vec<EventRecord>,
}

impl Outcome {
    pub(crate) fn rejected(rejection: Rejection) -> Self {
        Self {
            result: Err(rejection),
            touched: Vec::new(),
            vm_changes: Vec::new(),
            events: Vec::new(),
            recorded: Vec::new(),
        }
    }

    /// A change applied at `revision` that wrote `touched` (and changed no
    /// VM).
    fn applied(revision: u64, touched: Vec<Touched>) -> Self {
        Self {
            result: Ok(Applied { revision, vm: None }),
            touched,
            vm_changes: Vec::new(),
            events: Vec::new(),
            recorded: Vec::new(),
        }
    }

    fn event(
        mut self,
        kind: EventKind,
        vm: Option<&str>,
        node_id: Option<u64>,
        message: String,
    ) -> Self {
        // A refused command did nothing, so nothing happened.
        if self.result.is_err() {
            return self;
        }
        self.events.push(Event {
            kind,
            vm: vm.map(str::to_string),
            node_id,
            message,
        });
        self
    }

    /// Folds a later outcome of the same command into this one.
    pub fn merge(&mut self, later: Outcome) {
        self.result = later.result;
        self.touched.extend(later.touched);
        self.vm_changes.extend(later.vm_changes);
        self.events.extend(later.events);
        self.recorded.extend(later.recorded);
    }
}

impl ClusterState {
    /// Applies one command (see the module invariants).
    pub fn apply(&mut self, command: Command) -> Outcome {
        let revision_before = self.revision;
        let outcome = match crate::validate::command(&command) {
            Ok(()) => self.apply_valid(command),
            Err(rejection) => Outcome::rejected(rejection),
        };
        match &outcome.result {
            Ok(applied) => {
                assert_eq!(applied.revision, revision_before + 1);
                for touched in &outcome.touched {
                    if let Touched::Node(node_id) = touched {
                        assert!(self.nodes.get(node_id).is_none_or(|node| {
                            node.certificates_sha256.len() <= NODE_CERTIFICATES_MAX
                        }));
                    }
                }
            }
            Err(_) => {
                assert_eq!(self.revision, revision_before);
                assert!(outcome.touched.is_empty() && outcome.events.is_empty());
            }
        }
        outcome
    }

    /// Applies a command whose values passed [`crate::validate::command`].
    fn apply_valid(&mut self, command: Command) -> Outcome {
        match command {
            Command::CreateVm {
                spec,
                created_at_unix_ms,
            } => self.create_vm(spec, created_at_unix_ms),
            Command::SetVmDesiredState {
                name,
                desired_state,
            } => self.update_vm(&name, |vm| {
                vm.desired_state = desired_state;
                match (desired_state, vm.assigned_node, vm.observed.phase) {
                    (DesiredState::Running, None, _) => vm.observed = pending(String::new()),
                    (DesiredState::Stopped, None, _) => vm.observed = VmObserved::default(),
                    _ => {}
                }
                Ok(())
            }),
            Command::DeleteVm { name } => self.delete_vm(&name),
            // Only a known node moves; new nodes arrive by configuration
            // change or as registered workers.
            Command::SetNodeAddress { node_id, address } => self.update_node(node_id, |node| {
                node.address = address;
                Ok(())
            }),
            Command::SetHostFacts { node_id, facts } => self.set_host_facts(node_id, facts),
            Command::AssignVm {
                name,
                node_id,
                reason,
                vcpu_overcommit,
                needs_agent,
            } => self.assign_vm(&name, node_id, reason, vcpu_overcommit, needs_agent),
            Command::MarkUnplaceable { name, reason } => self.mark_unplaceable(&name, reason),
            Command::MarkVmLost {
                name,
                node_id,
                reason,
                replace,
            } => self.mark_lost(&name, node_id, reason, replace),
            Command::ReportVm {
                name,
                node_id,
                observed,
            } => self.report_vm(&name, node_id, observed),
            Command::SetReplicas {
                template,
                replicas,
                start,
                created_at_unix_ms,
            } => self.set_replicas(template, replicas, start, created_at_unix_ms),
            Command::CreateGroup {
                template,
                replicas,
                start,
                created_at_unix_ms,
            } => {
                if self.vms.contains_key(&template.name) || self.has_group(&template.name) {
                    return Outcome::rejected(Rejection::GroupExists {
                        name: template.name,
                    });
                }
                self.set_replicas(template, replicas, start, created_at_unix_ms)
            }
            Command::ScaleGroup {
                group,
                replicas,
                start,
                created_at_unix_ms,
            } => {
                // The template is the group as it is now, never as a
                // caller read it (it may have been deleted and created
                // again from another one since).
                let Some(template) = self
                    .vms
                    .values()
                    .find(|vm| vm.spec.group.as_deref() == Some(group.as_str()))
                    .map(|vm| VmSpec {
                        name: group.clone(),
                        group: None,
                        ..vm.spec.clone()
                    })
                else {
                    return Outcome::rejected(Rejection::NoSuchGroup { group });
                };
                self.set_replicas(template, replicas, start, created_at_unix_ms)
            }
            Command::SetNodeEligibility { node_id, eligible } => self
                .update_node(node_id, |node| {
                    node.eligible = eligible;
                    Ok(())
                })
                .event(
                    EventKind::NodeEligibility,
                    None,
                    Some(node_id),
                    format!(
                        "node {node_id} is {}",
                        if eligible { "eligible" } else { "ineligible" }
                    ),
                ),
            Command::DrainNode {
                node_id,
                at_unix_ms,
                deadline_unix_ms,
            } => self.drain_node(node_id, at_unix_ms, deadline_unix_ms),
            Command::FinishDrain { node_id, force } => self.finish_drain(node_id, force),
            Command::SetSettings { settings } => self.set_settings(settings),
            Command::UpdateSettings { update } => {
                self.set_settings(update.applied_to(&self.settings))
            }
            Command::RegisterWorker { node_id, .. } if self.removed_nodes.contains(&node_id) => {
                Outcome::rejected(Rejection::Invalid {
                    detail: format!(
                        "node {node_id} was removed from the cluster; join with a new node id"
                    ),
                })
            }
            Command::RegisterWorker { node_id, address } => {
                // Registering again (a worker retrying its join) is a
                // no-op change; taking over another node's id is not.
                if let Some(known) = self.nodes.get(&node_id) {
                    if known.address != address {
                        return Outcome::rejected(Rejection::Invalid {
                            detail: format!(
                                "node {node_id} is already registered at {}",
                                known.address
                            ),
                        });
                    }
                }
                let new = !self.nodes.contains_key(&node_id);
                let outcome = self.set_node(node_id, address.clone());
                match new {
                    true => outcome.event(
                        EventKind::NodeJoined,
                        None,
                        Some(node_id),
                        format!("node {node_id} joined at {address} as a worker"),
                    ),
                    false => outcome,
                }
            }
            Command::UnregisterWorker { node_id } => {
                match (
                    self.nodes.contains_key(&node_id),
                    self.issued_node_ids.contains(&node_id)
                        && !self.removed_nodes.contains(&node_id),
                ) {
                    (true, _) => self.remove_member(node_id),
                    // A certificate was issued but its node never joined:
                    // retiring the id is what refuses that certificate.
                    (false, true) => self.retire_issued(node_id),
                    (false, false) => Outcome::rejected(Rejection::NoSuchNode { node_id }),
                }
            }
            Command::CreateToken { token } => self.create_token(token),
            Command::RevokeToken { accessor } => self.revoke_token(&accessor),
            Command::CreateRole { role } => self.create_role(role),
            Command::CreateJoinToken { token } => self.create_join_token(token),
            Command::UseJoinToken {
                accessor,
                node_id,
                key_sha256,
                at_unix_ms,
            } => self.use_join_token(&accessor, node_id, key_sha256, at_unix_ms),
            Command::RevokeJoinToken { accessor } => self.revoke_join_token(&accessor),
            Command::DeleteRole { name } => self.delete_role(&name),
            Command::AcceptNodeCertificate {
                node_id,
                presented_sha256,
                issued_sha256,
            } => self.update_node(node_id, |node| {
                if !node.certificates_sha256.is_empty()
                    && !node.certificates_sha256.contains(&presented_sha256)
                {
                    return Err(Rejection::Invalid {
                        detail: format!(
                            "node {node_id}'s certificate {}… was retired by a renewal: it \
                             renews nothing",
                            &presented_sha256[..16]
                        ),
                    });
                }
                // Added, not swapped in: two signers may both answer one
                // renewal (a retry after a timeout), and the node keeps
                // whichever reached it. At the bound it starts over from
                // the pair at hand.
                node.certificates_sha256.insert(presented_sha256.clone());
                node.certificates_sha256.insert(issued_sha256.clone());
                if node.certificates_sha256.len() > NODE_CERTIFICATES_MAX {
                    node.certificates_sha256 = BTreeSet::from([presented_sha256, issued_sha256]);
                }
                Ok(())
            }),
            Command::RetireNodeCertificates {
                node_id,
                keep_sha256,
            } => self.update_node(node_id, |node| {
                if !node.certificates_sha256.contains(&keep_sha256) {
                    return Err(Rejection::Invalid {
                        detail: format!(
                            "certificate {}… is not one node {node_id} was issued by its \
                             latest renewal",
                            &keep_sha256[..16]
                        ),
                    });
                }
                node.certificates_sha256 = BTreeSet::from([keep_sha256]);
                Ok(())
            }),
            Command::PinNodeCertificate {
                node_id,
                certificate_sha256,
            } => self.update_node(node_id, |node| {
                if !node.certificates_sha256.is_empty() {
                    return Err(Rejection::Invalid {
                        detail: format!(
                            "node {node_id} is held to its certificates already (a renewal \
                             changes them, nothing else)"
                        ),
                    });
                }
                node.certificates_sha256 = BTreeSet::from([certificate_sha256]);
                Ok(())
            }),
        }
    }

    /// Whether node `node_id` is accepted presenting the certificate
    /// whose SHA-256 is `certificate_sha256` (the CA having issued it for
    /// that id): never after its removal, and after a renewal only with
    /// the certificates the state names for it.
    pub fn node_certificate_accepted(&self, node_id: u64, certificate_sha256: &str) -> bool {
        !self.removed_nodes.contains(&node_id)
            && self.nodes.get(&node_id).is_none_or(|node| {
                node.certificates_sha256.is_empty()
                    || node.certificates_sha256.contains(certificate_sha256)
            })
    }

    /// The token whose secret hashes to `secret_sha256`.
    pub fn token_by_secret_hash(&self, secret_sha256: &str) -> Option<&Token> {
        self.tokens
            .values()
            .find(|token| token.secret_sha256 == secret_sha256)
    }

    /// Whether a token of `role` allows `permission` here: built-in
    /// roles by their fixed grants, custom ones by what the state holds
    /// (a role that does not exist allows nothing).
    pub fn role_allows(&self, role: &TokenRole, permission: Permission) -> bool {
        role.built_in_allows(permission).unwrap_or_else(|| {
            self.roles
                .get(role.as_str())
                .is_some_and(|custom| custom.permissions.contains(&permission))
        })
    }

    fn create_role(&mut self, role: CustomRole) -> Outcome {
        let refuse = |detail: String| Outcome::rejected(Rejection::Invalid { detail });
        if self.roles.contains_key(&role.name) {
            return refuse(format!("a role named {} exists", role.name));
        }
        if self.roles.len() >= ROLES_MAX {
            return refuse(format!(
                "the cluster holds {ROLES_MAX} roles; delete some first"
            ));
        }
        self.revision += 1;
        let allowed: Vec<&str> = role.permissions.iter().map(|p| p.as_str()).collect();
        let message = format!("role {} created: {}", role.name, allowed.join(", "));
        self.roles.insert(role.name.clone(), role);
        self.roles_changed()
            .event(EventKind::RoleCreated, None, None, message)
    }

    fn delete_role(&mut self, name: &str) -> Outcome {
        let refuse = |detail: String| Outcome::rejected(Rejection::Invalid { detail });
        if !self.roles.contains_key(name) {
            return refuse(format!("no role named {name}"));
        }
        let users: Vec<&str> = self
            .tokens
            .values()
            .filter(|t| t.role.as_str() == name)
            .map(|t| t.accessor.as_str())
            .collect();
        if !users.is_empty() {
            return refuse(format!(
                "role {name} is held by {} token(s) (e.g. {}); revoke them first",
                users.len(),
                users[0]
            ));
        }
        self.roles.remove(name);
        self.revision += 1;
        self.roles_changed().event(
            EventKind::RoleDeleted,
            None,
            None,
            format!("role {name} deleted"),
        )
    }

    fn create_join_token(&mut self, token: JoinToken) -> Outcome {
        let refuse = |detail: String| Outcome::rejected(Rejection::Invalid { detail });
        let taken = self
            .join_tokens
            .values()
            .any(|t| t.accessor == token.accessor || t.secret_sha256 == token.secret_sha256);
        if taken {
            return refuse("a join token with this accessor or secret exists".into());
        }
        // Judged by the maker's clock, as every node applies it.
        let live = self
            .join_tokens
            .values()
            .filter(|t| t.expires_at_unix_ms > token.created_at_unix_ms)
            .count();
        if live >= JOIN_TOKENS_MAX {
            return refuse(format!(
                "the cluster holds {JOIN_TOKENS_MAX} join tokens not yet expired; revoke some or wait"
            ));
        }
        self.join_tokens
            .retain(|_, t| t.expires_at_unix_ms > token.created_at_unix_ms);
        self.revision += 1;
        let message = format!("join token {} created", token.accessor);
        self.join_tokens.insert(token.accessor.clone(), token);
        self.join_tokens_changed()
            .event(EventKind::JoinTokenCreated, None, None, message)
    }

    /// Whether join token `accessor` may be spent on a certificate for
    /// `node_id` and the key hashing to `key_sha256` at `at_unix_ms`:
    /// `Ok(true)` for a first spend, `Ok(false)` for the same node asking
    /// again with the same key. The one rule both the signing node (before
    /// it signs) and `apply` (identically everywhere) go by.
    pub fn join_token_spend(
        &self,
        accessor: &str,
        node_id: u64,
        key_sha256: &str,
        at_unix_ms: u64,
    ) -> Result<bool, JoinTokenRefusal> {
        let token = self
            .join_tokens
            .get(accessor)
            .ok_or(JoinTokenRefusal::Unknown)?;
        if at_unix_ms >= token.expires_at_unix_ms {
            return Err(JoinTokenRefusal::Expired);
        }
        // A retired id gets nothing, not even the certificate it had.
        if self.removed_nodes.contains(&node_id) {
            return Err(JoinTokenRefusal::NodeIdTaken(node_id));
        }
        match &token.spent {
            Some(spent) if spent.node_id == node_id && spent.key_sha256 == key_sha256 => Ok(false),
            Some(_) => Err(JoinTokenRefusal::SpentElsewhere),
            None if self.nodes.contains_key(&node_id)
                || self.issued_node_ids.contains(&node_id) =>
            {
                Err(JoinTokenRefusal::NodeIdTaken(node_id))
            }
            None => Ok(true),
        }
    }

    fn use_join_token(
        &mut self,
        accessor: &str,
        node_id: u64,
        key_sha256: String,
        at_unix_ms: u64,
    ) -> Outcome {
        match self.join_token_spend(accessor, node_id, &key_sha256, at_unix_ms) {
            Err(refusal) => Outcome::rejected(Rejection::Invalid {
                detail: refusal.to_string(),
            }),
            // Asked again (every accepted command is a revision, and the
            // trail shows the second certificate).
            Ok(false) => {
                self.revision += 1;
                self.join_tokens_changed().event(
                    EventKind::JoinTokenUsed,
                    None,
                    Some(node_id),
                    format!(
                        "join token {accessor}: node {node_id} asked again for its certificate"
                    ),
                )
            }
            Ok(true) => {
                let token = self.join_tokens.get_mut(accessor).expect("checked above");
                token.spent = Some(JoinTokenUse {
                    node_id,
                    key_sha256,
                });
                self.issued_node_ids.insert(node_id);
                self.revision += 1;
                self.join_tokens_changed().event(
                    EventKind::JoinTokenUsed,
                    None,
                    Some(node_id),
                    format!("join token {accessor} spent on node {node_id}'s certificate"),
                )
            }
        }
    }

    fn revoke_join_token(&mut self, accessor: &str) -> Outcome {
        if self.join_tokens.remove(accessor).is_none() {
            return Outcome::rejected(Rejection::Invalid {
                detail: format!("no join token {accessor} (revoked, or expired and dropped)"),
            });
        }
        self.revision += 1;
        self.join_tokens_changed().event(
            EventKind::JoinTokenRevoked,
            None,
            None,
            format!("join token {accessor} revoked"),
        )
    }

    /// Retires `node_id`, which holds a certificate but never joined.
    fn retire_issued(&mut self, node_id: u64) -> Outcome {
        self.removed_nodes.insert(node_id);
        self.revision += 1;
        Outcome::applied(self.revision, vec![Touched::Removed]).event(
            EventKind::NodeRemoved,
            None,
            Some(node_id),
            format!("node {node_id}'s certificate was retired before it joined"),
        )
    }

    fn join_tokens_changed(&self) -> Outcome {
        Outcome::applied(self.revision, vec![Touched::JoinTokens])
    }

    fn roles_changed(&self) -> Outcome {
        Outcome::applied(self.revision, vec![Touched::Roles])
    }

    fn create_token(&mut self, token: Token) -> Outcome {
        let refuse = |detail: String| Outcome::rejected(Rejection::Invalid { detail });
        if let TokenRole::Custom(name) = &token.role {
            if !self.roles.contains_key(name) {
                return refuse(format!(
                    "no role named {name}: make it with `acl role create` (built in: admin, operator, viewer)"
                ));
            }
        }
        if self.tokens.contains_key(&token.accessor) {
            return refuse(format!("a token with accessor {} exists", token.accessor));
        }
        if self.token_by_secret_hash(&token.secret_sha256).is_some() {
            return refuse("a token with this secret exists".into());
        }
        if self.tokens.len() >= TOKENS_MAX {
            return refuse(format!(
                "the cluster holds {TOKENS_MAX} tokens; revoke some first"
            ));
        }
        self.revision += 1;
        let message = format!(
            "token {} ({}, {}) created",
            token.name,
            token.accessor,
            token.role.as_str()
        );
        self.tokens.insert(token.accessor.clone(), token);
        self.tokens_changed()
            .event(EventKind::TokenCreated, None, None, message)
    }

    fn revoke_token(&mut self, accessor: &str) -> Outcome {
        let Some(token) = self.tokens.get(accessor) else {
            return Outcome::rejected(Rejection::NoSuchToken {
                accessor: accessor.into(),
            });
        };
        // Without an admin token no one could make tokens again.
        let admins = self
            .tokens
            .values()
            .filter(|t| t.role == TokenRole::Admin)
            .count();
        if token.role == TokenRole::Admin && admins == 1 {
            return Outcome::rejected(Rejection::Invalid {
                detail: format!(
                    "token {accessor} is the last admin token; make another admin token first"
                ),
            });
        }
        let token = self.tokens.remove(accessor).expect("looked up above");
        self.revision += 1;
        let message = format!("token {} ({accessor}) revoked", token.name);
        self.tokens_changed()
            .event(EventKind::TokenRevoked, None, None, message)
    }

    fn tokens_changed(&self) -> Outcome {
        Outcome::applied(self.revision, vec![Touched::Tokens])
    }

    /// Applies a committed command and, when a client asked for it and it
    /// is accepted, records who did in the audit trail.
    pub fn apply_audited(&mut self, command: Command, audit: Option<&Audit>) -> Outcome {
        // The name the token had when it acted (a token may revoke itself).
        let token_name = audit.and_then(|audit| match &audit.context.actor {
            Actor::Token { accessor } => self.tokens.get(accessor).map(|t| t.name.clone()),
            _ => None,
        });
        let action = command.kind();
        let target = crate::audit::target(&command);
        let mut outcome = self.apply(command);
        if let (Ok(applied), Some(audit)) = (&outcome.result, audit) {
            let seq = self.audit.back().map_or(1, |last| last.seq + 1);
            self.audit.push_back(AuditRecord {
                seq,
                revision: applied.revision,
                at_unix_ms: audit.context.at_unix_ms,
                actor: audit.context.actor.clone(),
                token_name,
                via_node: audit.context.relayed_by.unwrap_or(audit.proposer),
                from: audit.context.from.clone(),
                action: action.to_string(),
                target,
            });
            outcome.touched.push(Touched::Audit(seq));
            while self.audit.len() > AUDIT_RECORDS_MAX {
                let dropped = self.audit.pop_front().expect("the trail is not empty");
                outcome.touched.push(Touched::Audit(dropped.seq));
            }
        }
        outcome
    }

    /// Replays one transition a voter applied (see [`Transition`]).
    pub fn replay(&mut self, transition: Transition) -> Outcome {
        match transition {
            Transition::Command {
                command,
                audit,
                at_unix_ms,
            } => self.apply_entry(*command, audit.as_deref(), at_unix_ms),
            Transition::MemberAdded {
                node_id,
                address,
                at_unix_ms,
            } => {
                let outcome = self.add_member(node_id, address);
                self.record_events(outcome, at_unix_ms)
            }
            Transition::MemberRemoved {
                node_id,
                at_unix_ms,
            } => {
                let outcome = self.remove_member(node_id);
                self.record_events(outcome, at_unix_ms)
            }
        }
    }

    /// Applies a committed entry's command: `audit` is who asked (a
    /// client's change), `at_unix_ms` when it was proposed. Its events are
    /// kept in the state (see [`ClusterState::record_events`]).
    pub fn apply_entry(
        &mut self,
        command: Command,
        audit: Option<&Audit>,
        at_unix_ms: Option<u64>,
    ) -> Outcome {
        let outcome = self.apply_audited(command, audit);
        self.record_events(outcome, at_unix_ms)
    }

    /// Numbers `outcome`'s events by its revision (see
    /// [`EventRecord::seq`]), times them `at_unix_ms` (an entry that does
    /// not say: the last event's time), keeps the newest
    /// [`RECENT_EVENTS_MAX`] and marks what changed for storage.
    pub fn record_events(&mut self, mut outcome: Outcome, at_unix_ms: Option<u64>) -> Outcome {
        let Ok(applied) = &outcome.result else {
            return outcome;
        };
        let revision = applied.revision;
        let at_unix_ms =
            at_unix_ms.unwrap_or_else(|| self.events.back().map_or(0, |last| last.at_unix_ms));
        for (place, event) in outcome.events.iter().enumerate() {
            let place = (place as u64).min((1 << EVENT_PLACE_BITS) - 1);
            let seq = (revision << EVENT_PLACE_BITS) | place;
            let record = EventRecord {
                seq,
                revision,
                at_unix_ms,
                event: event.clone(),
            };
            self.events.push_back(record.clone());
            outcome.recorded.push(record);
            outcome.touched.push(Touched::Event(seq));
            if self.events.len() > RECENT_EVENTS_MAX {
                let dropped = self.events.pop_front().expect("events are not empty");
                outcome.touched.push(Touched::Event(dropped.seq));
            }
        }
        outcome
    }

    /// A member was added by a committed configuration change.
    pub fn add_member(&mut self, node_id: u64, address: String) -> Outcome {
        let new = !self.nodes.contains_key(&node_id);
        let outcome = self.set_node(node_id, address.clone());
        match new {
            true => outcome.event(
                EventKind::NodeJoined,
                None,
                Some(node_id),
                format!("node {node_id} joined at {address}"),
            ),
            false => outcome,
        }
    }

    /// A member was removed by a committed configuration change. Its VMs
    /// lose their assignment so the scheduler can place them elsewhere.
    pub fn remove_member(&mut self, node_id: u64) -> Outcome {
        self.revision += 1;
        self.nodes.remove(&node_id);
        self.removed_nodes.insert(node_id);
        let mut outcome = Outcome::applied(
            self.revision,
            vec![Touched::Node(node_id), Touched::Removed],
        );
        let names: Vec<String> = self
            .vms
            .values()
            .filter(|vm| vm.assigned_node == Some(node_id))
            .map(|vm| vm.spec.name.clone())
            .collect();
        for name in names {
            let vm = self.vms.get_mut(&name).expect("listed above");
            unassign(vm, format!("node {node_id} was removed"));
            vm.mod_revision = self.revision;
            outcome.touched.push(Touched::Vm(name));
            outcome.vm_changes.push(VmChange::Modified(vm.clone()));
        }
        outcome.event(
            EventKind::NodeRemoved,
            None,
            Some(node_id),
            format!("node {node_id} was removed"),
        )
    }

    /// Whether replica group `group` has a member.
    fn has_group(&self, group: &str) -> bool {
        self.vms
            .values()
            .any(|vm| vm.spec.group.as_deref() == Some(group))
    }

    fn create_vm(&mut self, spec: VmSpec, created_at_unix_ms: u64) -> Outcome {
        if self.vms.contains_key(&spec.name) {
            return Outcome::rejected(Rejection::VmExists { name: spec.name });
        }
        if self.has_group(&spec.name) {
            return Outcome::rejected(Rejection::GroupExists { name: spec.name });
        }
        if let Some(node_id) = spec.pinned_node {
            if !self.nodes.contains_key(&node_id) {
                return Outcome::rejected(Rejection::NoSuchNode { node_id });
            }
        }
        self.revision += 1;
        let mut outcome = Outcome::applied(self.revision, Vec::new());
        let record = self.insert_vm(
            spec,
            DesiredState::Stopped,
            created_at_unix_ms,
            &mut outcome,
        );
        if let Ok(applied) = &mut outcome.result {
            applied.vm = Some(record);
        }
        outcome
    }

    /// Inserts a new VM at the current revision (the caller advanced it).
    fn insert_vm(
        &mut self,
        spec: VmSpec,
        desired_state: DesiredState,
        created_at_unix_ms: u64,
        outcome: &mut Outcome,
    ) -> VmRecord {
        let observed = match desired_state {
            DesiredState::Running => pending(String::new()),
            DesiredState::Stopped => VmObserved::default(),
        };
        let record = VmRecord {
            spec,
            desired_state,
            create_revision: self.revision,
            mod_revision: self.revision,
            created_at_unix_ms,
            assigned_node: None,
            observed,
            evicting: false,
        };
        let name = record.spec.name.clone();
        self.vms.insert(name.clone(), record.clone());
        outcome.touched.push(Touched::Vm(name.clone()));
        outcome.vm_changes.push(VmChange::Added(record.clone()));
        outcome.events.push(Event {
            kind: EventKind::VmCreated,
            vm: Some(name.clone()),
            node_id: None,
            message: format!("created VM {name}"),
        });
        record
    }

    fn set_replicas(
        &mut self,
        template: VmSpec,
        replicas: u32,
        start: bool,
        created_at_unix_ms: u64,
    ) -> Outcome {
        let group = template.name.clone();
        let members: Vec<String> = self
            .vms
            .values()
            .filter(|vm| vm.spec.group.as_deref() == Some(group.as_str()))
            .map(|vm| vm.spec.name.clone())
            .collect();
        let wanted: Vec<String> = (1..=replicas).map(|i| format!("{group}-{i}")).collect();
        // A member may not take a group's name (create_vm keeps the same
        // rule for single VMs).
        let groups: std::collections::BTreeSet<&str> = self
            .vms
            .values()
            .filter_map(|vm| vm.spec.group.as_deref())
            .collect();
        for name in &wanted {
            if self.vms.contains_key(name) && !members.contains(name) {
                return Outcome::rejected(Rejection::VmExists { name: name.clone() });
            }
            if !members.contains(name) && groups.contains(name.as_str()) {
                return Outcome::rejected(Rejection::GroupExists { name: name.clone() });
            }
        }
        // Only members still to be made need their node: a group pinned to
        // a node since removed can still shrink and be deleted.
        let creates = wanted.iter().any(|name| !members.contains(name));
        if let Some(node_id) = template.pinned_node.filter(|_| creates) {
            if !self.nodes.contains_key(&node_id) {
                return Outcome::rejected(Rejection::NoSuchNode { node_id });
            }
        }
        self.revision += 1;
        let mut outcome = Outcome::applied(self.revision, Vec::new());
        for name in &wanted {
            if members.contains(name) {
                continue;
            }
            let spec = VmSpec {
                name: name.clone(),
                group: Some(group.clone()),
                ..template.clone()
            };
            let desired = match start {
                true => DesiredState::Running,
                false => DesiredState::Stopped,
            };
            let record = self.insert_vm(spec, desired, created_at_unix_ms, &mut outcome);
            // The first new member answers the caller (a worker's copy of
            // the state may not hold it yet).
            if let Ok(applied) = &mut outcome.result {
                applied.vm.get_or_insert(record);
            }
        }
        for name in members.iter().filter(|name| !wanted.contains(name)) {
            let mut record = self.vms.remove(name).expect("member listed above");
            record.mod_revision = self.revision;
            outcome.touched.push(Touched::Vm(name.clone()));
            outcome.vm_changes.push(VmChange::Deleted(record));
            outcome.events.push(Event {
                kind: EventKind::VmDeleted,
                vm: Some(name.clone()),
                node_id: None,
                message: format!("deleted VM {name} (scaled {group} to {replicas})"),
            });
        }
        outcome
    }

    fn assign_vm(
        &mut self,
        name: &str,
        node_id: Option<u64>,
        reason: String,
        vcpu_overcommit: Option<u32>,
        needs_agent: bool,
    ) -> Outcome {
        if let Some(node_id) = node_id {
            let Some(node) = self.nodes.get(&node_id) else {
                return Outcome::rejected(Rejection::NoSuchNode { node_id });
            };
            // A new placement is judged again on this state, which may
            // have changed since the scheduler decided it (a deposed
            // leader's batch, or two decided on one state): it must still
            // fit, or the VM stays pending for the next pass. Entries
            // written before this check carry no overcommit and apply as
            // they did, so replaying an old log yields the same state.
            let new = self.vms.get(name).filter(|vm| vm.assigned_node.is_none());
            if let (Some(vm), Some(overcommit)) = (new, vcpu_overcommit) {
                let load = self.load_on(node_id);
                let mut facts = NodeFacts::of(node);
                if let Some(capacity) = facts.capacity.as_mut().filter(|_| !needs_agent) {
                    // Decided before nodes without an agent were refused.
                    capacity.runs_vms = true;
                }
                if let Some(misfit) = fit::misfit(vm, &facts, &load, overcommit) {
                    return Outcome::rejected(Rejection::DoesNotFit {
                        name: name.to_string(),
                        node_id,
                        reason: misfit.describe(&vm.spec),
                    });
                }
            }
        }
        let mut again = false;
        let outcome = self.update_vm(name, |vm| {
            // A placement decided on an older state (a retried or a
            // deposed leader's proposal) must not move a placed VM: its
            // node may already run it.
            if let (Some(new), Some(current)) = (node_id, vm.assigned_node) {
                if new != current {
                    return Err(Rejection::Invalid {
                        detail: format!("VM {name:?} is already placed on node {current}"),
                    });
                }
                // The same placement again: what its node reported stays.
                again = true;
                return Ok(());
            }
            vm.assigned_node = node_id;
            vm.evicting = false;
            vm.observed = match (node_id, vm.desired_state) {
                (Some(node), DesiredState::Running) => VmObserved {
                    phase: VmPhase::Scheduled,
                    node: Some(node),
                    restarts: vm.observed.restarts,
                    ..VmObserved::default()
                },
                (None, DesiredState::Running) => pending(String::new()),
                (_, DesiredState::Stopped) => VmObserved::default(),
            };
            Ok(())
        });
        match node_id {
            Some(_) if again => outcome,
            Some(node) => {
                let message = match reason.is_empty() {
                    true => format!("placed {name} on node {node}"),
                    false => format!("placed {name} on node {node}: {reason}"),
                };
                outcome.event(EventKind::VmPlaced, Some(name), Some(node), message)
            }
            None => outcome,
        }
    }

    /// What node `node_id` carries: the VMs placed on it that hold
    /// resources. (A scan of every VM: placements are few per pass.)
    pub fn load_on(&self, node_id: u64) -> Load {
        let mut load = Load::default();
        for vm in self.vms.values() {
            if vm.assigned_node == Some(node_id) && fit::holds_resources(vm) {
                load.add(vm);
            }
        }
        load
    }

    fn mark_unplaceable(&mut self, name: &str, reason: String) -> Outcome {
        let message = format!("{name} cannot be placed: {reason}");
        self.update_vm(name, |vm| {
            if vm.assigned_node.is_some() || vm.desired_state != DesiredState::Running {
                return Err(Rejection::Invalid {
                    detail: format!("VM {name:?} is not waiting for a node"),
                });
            }
            vm.observed = pending(reason);
            Ok(())
        })
        .event(EventKind::VmUnplaceable, Some(name), None, message)
    }

    fn mark_lost(&mut self, name: &str, node_id: u64, reason: String, replace: bool) -> Outcome {
        let message = format!("{name} lost on node {node_id}: {reason}");
        self.update_vm(name, |vm| {
            if vm.assigned_node != Some(node_id) {
                return Err(Rejection::NotAssigned {
                    name: name.into(),
                    node_id,
                    assigned: vm.assigned_node,
                });
            }
            if replace {
                vm.assigned_node = None;
                vm.evicting = false;
            }
            vm.observed = VmObserved {
                phase: VmPhase::Lost,
                node: Some(node_id),
                restarts: vm.observed.restarts,
                reason,
                ..VmObserved::default()
            };
            Ok(())
        })
        .event(EventKind::VmLost, Some(name), Some(node_id), message)
    }

    fn report_vm(&mut self, name: &str, node_id: u64, observed: VmObserved) -> Outcome {
        let mut happened: Vec<(EventKind, String)> = Vec::new();
        let outcome = self.update_vm(name, |vm| {
            if vm.assigned_node != Some(node_id) {
                return Err(Rejection::NotAssigned {
                    name: vm.spec.name.clone(),
                    node_id,
                    assigned: vm.assigned_node,
                });
            }
            happened.extend(lifecycle(&vm.observed, &observed, node_id));
            let stopped = matches!(observed.phase, VmPhase::Stopped | VmPhase::Failed);
            vm.observed = VmObserved {
                node: Some(node_id),
                ..observed
            };
            if vm.evicting && stopped {
                unassign(vm, format!("moved off node {node_id}, which is draining"));
                happened.push((
                    EventKind::VmEvicted,
                    format!("moved off node {node_id} (drain)"),
                ));
            }
            Ok(())
        });
        happened
            .into_iter()
            .fold(outcome, |outcome, (kind, message)| {
                let message = format!("{name}: {message}");
                outcome.event(kind, Some(name), Some(node_id), message)
            })
    }

    fn drain_node(&mut self, node_id: u64, at_unix_ms: u64, deadline_unix_ms: u64) -> Outcome {
        if !self.nodes.contains_key(&node_id) {
            return Outcome::rejected(Rejection::NoSuchNode { node_id });
        }
        self.revision += 1;
        let node = self.nodes.get_mut(&node_id).expect("checked above");
        node.eligible = false;
        node.drain = Some(Drain {
            started_at_unix_ms: at_unix_ms,
            deadline_unix_ms,
        });
        let mut outcome = Outcome::applied(self.revision, vec![Touched::Node(node_id)]);
        let mut evicting = 0;
        for vm in self.vms.values_mut() {
            if vm.assigned_node != Some(node_id) {
                continue;
            }
            // Only a VM that should not run and does not is taken off at
            // once; any other may be running or about to, so its node
            // stops it first.
            let idle = vm.desired_state == DesiredState::Stopped
                && matches!(
                    vm.observed.phase,
                    VmPhase::Stopped | VmPhase::Failed | VmPhase::Lost
                );
            if !idle {
                vm.evicting = true;
                evicting += 1;
            } else {
                unassign(vm, format!("moved off node {node_id}, which is draining"));
            }
            vm.mod_revision = self.revision;
            outcome.touched.push(Touched::Vm(vm.spec.name.clone()));
            outcome.vm_changes.push(VmChange::Modified(vm.clone()));
        }
        outcome.event(
            EventKind::DrainStarted,
            None,
            Some(node_id),
            format!("draining node {node_id}: {evicting} VM(s) to stop and move"),
        )
    }

    fn finish_drain(&mut self, node_id: u64, force: bool) -> Outcome {
        let Some(node) = self.nodes.get(&node_id) else {
            return Outcome::rejected(Rejection::NoSuchNode { node_id });
        };
        if node.drain.is_none() {
            return Outcome::rejected(Rejection::Invalid {
                detail: format!("node {node_id} is not draining"),
            });
        }
        let remaining: Vec<String> = self
            .vms
            .values()
            .filter(|vm| vm.assigned_node == Some(node_id))
            .map(|vm| vm.spec.name.clone())
            .collect();
        if !remaining.is_empty() && !force {
            return Outcome::rejected(Rejection::Invalid {
                detail: format!("node {node_id} still runs {}", remaining.join(", ")),
            });
        }
        self.revision += 1;
        self.nodes.get_mut(&node_id).expect("checked above").drain = None;
        let mut outcome = Outcome::applied(self.revision, vec![Touched::Node(node_id)]);
        for name in &remaining {
            let vm = self.vms.get_mut(name).expect("listed above");
            unassign(vm, format!("drain deadline of node {node_id} passed"));
            vm.mod_revision = self.revision;
            outcome.touched.push(Touched::Vm(name.clone()));
            outcome.vm_changes.push(VmChange::Modified(vm.clone()));
        }
        let message = match remaining.is_empty() {
            true => format!("node {node_id} drained"),
            false => format!(
                "drain of node {node_id} hit its deadline; took {} off it",
                remaining.join(", ")
            ),
        };
        outcome.event(EventKind::DrainFinished, None, Some(node_id), message)
    }

    fn set_settings(&mut self, settings: Settings) -> Outcome {
        if let Err(error) = validate_settings(&settings) {
            return Outcome::rejected(Rejection::Invalid {
                detail: error.to_string(),
            });
        }
        self.revision += 1;
        let message = format!(
            "settings: voters={}, dead_voter_after_ms={}, lost_after_ms={}, replace_lost={}",
            settings.voters,
            settings.dead_voter_after_ms,
            settings.lost_after_ms,
            settings.replace_lost
        );
        self.settings = settings;
        Outcome::applied(self.revision, vec![Touched::Settings]).event(
            EventKind::SettingsChanged,
            None,
            None,
            message,
        )
    }

    /// Changes one VM through `change`, which may refuse; a refusal leaves
    /// the VM as it was.
    fn update_vm(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut VmRecord) -> Result<(), Rejection>,
    ) -> Outcome {
        let Some(vm) = self.vms.get(name) else {
            return Outcome::rejected(Rejection::VmNotFound { name: name.into() });
        };
        let mut record = vm.clone();
        if let Err(rejection) = change(&mut record) {
            return Outcome::rejected(rejection);
        }
        self.revision += 1;
        record.mod_revision = self.revision;
        self.vms.insert(name.to_string(), record.clone());
        Outcome {
            result: Ok(Applied {
                revision: self.revision,
                vm: Some(record.clone()),
            }),
            touched: vec![Touched::Vm(name.into())],
            vm_changes: vec![VmChange::Modified(record)],
            events: Vec::new(),
            recorded: Vec::new(),
        }
    }

    fn update_node(
        &mut self,
        node_id: u64,
        change: impl FnOnce(&mut NodeRecord) -> Result<(), Rejection>,
    ) -> Outcome {
        let Some(node) = self.nodes.get(&node_id) else {
            return Outcome::rejected(Rejection::NoSuchNode { node_id });
        };
        let mut record = node.clone();
        if let Err(rejection) = change(&mut record) {
            return Outcome::rejected(rejection);
        }
        self.revision += 1;
        self.nodes.insert(node_id, record);
        self.node_changed(node_id)
    }

    fn delete_vm(&mut self, name: &str) -> Outcome {
        let Some(mut record) = self.vms.remove(name) else {
            return Outcome::rejected(Rejection::VmNotFound { name: name.into() });
        };
        self.revision += 1;
        record.mod_revision = self.revision;
        Outcome {
            result: Ok(Applied {
                revision: self.revision,
                vm: None,
            }),
            touched: vec![Touched::Vm(name.into())],
            vm_changes: vec![VmChange::Deleted(record)],
            events: Vec::new(),
            recorded: Vec::new(),
        }
        .event(
            EventKind::VmDeleted,
            Some(name),
            None,
            format!("deleted VM {name}"),
        )
    }

    fn set_node(&mut self, node_id: u64, address: String) -> Outcome {
        self.revision += 1;
        let node = self.nodes.entry(node_id).or_insert_with(|| NodeRecord {
            node_id,
            address: String::new(),
            host: None,
            eligible: true,
            drain: None,
            certificates_sha256: BTreeSet::new(),
        });
        node.address = address;
        self.node_changed(node_id)
    }

    fn set_host_facts(&mut self, node_id: u64, facts: HostFacts) -> Outcome {
        self.update_node(node_id, |node| {
            node.host = Some(facts);
            Ok(())
        })
    }

    /// The outcome of a change to one node's record (revision already
    /// advanced by the caller).
    fn node_changed(&self, node_id: u64) -> Outcome {
        Outcome::applied(self.revision, vec![Touched::Node(node_id)])
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("cluster state always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, crate::Error> {
        serde_json::from_slice(bytes).map_err(|e| crate::Error::Corrupt {
            what: "snapshot",
            detail: e.to_string(),
        })
    }
}

fn pending(reason: String) -> VmObserved {
    VmObserved {
        phase: VmPhase::Pending,
        reason,
        ..VmObserved::default()
    }
}

/// The lifecycle event a report from `node_id` makes of a VM's change
/// from `was` to `now`: the phase it enters. A report that counts one
/// more restart is told as that restart (the VM died unasked and its
/// agent starts it again), not as a failure.
fn lifecycle(was: &VmObserved, now: &VmObserved, node_id: u64) -> Option<(EventKind, String)> {
    let on = format!("on node {node_id}");
    // Counted at the failure, or at the next start if that report was lost.
    if now.restarts > was.restarts {
        let exit = now.exit_status.as_deref().unwrap_or("an exit");
        return Some((
            EventKind::VmRestarted,
            format!("died unasked {on} ({exit}); restart {}", now.restarts),
        ));
    }
    if now.phase == was.phase {
        return None;
    }
    Some(match now.phase {
        VmPhase::Failed => (EventKind::VmFailed, format!("failed {on}: {}", now.reason)),
        VmPhase::Starting => (EventKind::VmStarting, format!("starting {on}")),
        VmPhase::Running => (
            EventKind::VmRunning,
            match now.boot_ms {
                Some(ms) => format!("running {on} (booted in {ms} ms)"),
                None => format!("running {on}"),
            },
        ),
        // An exit status from before (an earlier crash) is not this stop's.
        VmPhase::Stopped => (
            EventKind::VmStopped,
            match &now.exit_status {
                Some(status) if now.exit_status != was.exit_status => {
                    format!("stopped {on} ({status})")
                }
                _ => format!("stopped {on}"),
            },
        ),
        VmPhase::Pending | VmPhase::Scheduled | VmPhase::Stopping | VmPhase::Lost => return None,
    })
}

/// Takes a VM off its node: it waits for a new one if it should run.
fn unassign(vm: &mut VmRecord, reason: String) {
    vm.assigned_node = None;
    vm.evicting = false;
    let restarts = vm.observed.restarts;
    vm.observed = match vm.desired_state {
        DesiredState::Running => VmObserved {
            restarts,
            ..pending(reason)
        },
        DesiredState::Stopped => VmObserved::default(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{DesiredState, VmSpec};
    use proptest::prelude::*;

    fn spec(name: &str) -> VmSpec {
        VmSpec::for_tests(name)
    }

    fn create(name: &str) -> Command {
        Command::CreateVm {
            spec: spec(name),
            created_at_unix_ms: 7,
        }
    }

    fn by(accessor: &str, at_unix_ms: u64) -> Audit {
        Audit {
            context: crate::audit::AuditContext {
                actor: Actor::Token {
                    accessor: accessor.into(),
                },
                at_unix_ms,
                from: "10.0.0.9:4000".into(),
                relayed_by: None,
            },
            proposer: 2,
        }
    }

    #[test]
    fn accepted_client_commands_join_the_trail_and_replay_alike() {
        let mut state = ClusterState::default();
        let mut mirror = ClusterState::default();
        let steps = [
            (create("a"), Some(by("ops", 10))),
            // Refused: no record.
            (create("a"), Some(by("ops", 11))),
            // The cluster's own decision: no record.
            (
                Command::SetVmDesiredState {
                    name: "a".into(),
                    desired_state: DesiredState::Running,
                },
                None,
            ),
            (Command::DeleteVm { name: "a".into() }, Some(by("ci", 12))),
        ];
        for (command, audit) in steps {
            let outcome = state.apply_entry(command.clone(), audit.as_ref(), None);
            if outcome.result.is_ok() {
                let transition = Transition::Command {
                    command: Box::new(command),
                    audit: audit.map(Box::new),
                    at_unix_ms: None,
                };
                assert!(mirror.replay(transition).result.is_ok());
            }
        }
        assert_eq!(mirror, state, "a worker's trail is the voters' trail");
        let trail: Vec<_> = state
            .audit
            .iter()
            .map(|r| {
                (
                    r.seq,
                    r.action.as_str(),
                    r.target.as_str(),
                    r.at_unix_ms,
                    r.via_node,
                )
            })
            .collect();
        assert_eq!(
            trail,
            [(1, "create_vm", "a", 10, 2), (2, "delete_vm", "a", 12, 2)]
        );
        assert_eq!(state.audit[1].revision, state.revision);
        assert!(state.audit[0].is_by("ops") && !state.audit[0].is_by("ci"));
    }

    #[test]
    fn a_removed_node_never_registers_again() {
        let mut state = ClusterState::default();
        let register = Command::RegisterWorker {
            node_id: 4,
            address: "127.0.0.1:4".into(),
        };
        assert!(state.apply(register.clone()).result.is_ok());
        let removed = state.apply(Command::UnregisterWorker { node_id: 4 });
        assert!(removed.touched.contains(&Touched::Removed));
        assert!(state.removed_nodes.contains(&4));
        let refused = state.apply(register).result.unwrap_err();
        assert!(refused.to_string().contains("was removed"), "{refused}");
        // A raft member removed by configuration change is retired too.
        state.add_member(2, "127.0.0.1:2".into());
        state.remove_member(2);
        assert_eq!(state.removed_nodes, BTreeSet::from([2, 4]));
        assert_eq!(ClusterState::decode(&state.encode()).unwrap(), state);
    }

    /// Replica group operations decide at apply time, so racing callers
    /// (each having read the state before either applied) get the answer
    /// the order of the log gives them.
    #[test]
    fn replica_group_operations_decide_when_they_apply() {
        let mut state = ClusterState::default();
        let create_group = |group: &str, replicas| Command::CreateGroup {
            template: spec(group),
            replicas,
            start: true,
            created_at_unix_ms: 0,
        };
        let scale = |group: &str, replicas| Command::ScaleGroup {
            group: group.into(),
            replicas,
            start: true,
            created_at_unix_ms: 0,
        };
        let members = |state: &ClusterState| -> Vec<String> {
            state
                .vms
                .values()
                .filter(|vm| vm.spec.group.as_deref() == Some("g"))
                .map(|vm| vm.spec.name.clone())
                .collect()
        };
        // Two creates of one group: the second is refused, the first's
        // members stay.
        assert!(state.apply(create_group("g", 4)).result.is_ok());
        let before = state.clone();
        let refused = state.apply(create_group("g", 2)).result.unwrap_err();
        assert!(
            matches!(refused, Rejection::GroupExists { .. }),
            "{refused}"
        );
        assert_eq!(state, before);
        assert_eq!(members(&state), ["g-1", "g-2", "g-3", "g-4"]);
        // Nor may a plain VM take the group's name, or a group a VM's.
        assert!(matches!(
            state.apply(create("g")).result,
            Err(Rejection::GroupExists { .. })
        ));
        assert!(state.apply(create("solo")).result.is_ok());
        assert!(matches!(
            state.apply(create_group("solo", 2)).result,
            Err(Rejection::GroupExists { .. })
        ));
        // Two scales to zero: the second finds no group; nor does a
        // scale up after it (no group is made from a stale template).
        assert!(state.apply(scale("g", 1)).result.is_ok());
        assert_eq!(members(&state), ["g-1"]);
        assert!(state.apply(scale("g", 0)).result.is_ok());
        assert!(members(&state).is_empty());
        for replicas in [0, 3] {
            assert!(matches!(
                state.apply(scale("g", replicas)).result,
                Err(Rejection::NoSuchGroup { .. })
            ));
        }
        // A scale copies the group as it is when it applies.
        let mut other = spec("g");
        other.memory_mib = 512;
        assert!(state
            .apply(Command::CreateGroup {
                template: other,
                replicas: 1,
                start: true,
                created_at_unix_ms: 0,
            })
            .result
            .is_ok());
        assert!(state.apply(scale("g", 2)).result.is_ok());
        assert_eq!(state.vms["g-2"].spec.memory_mib, 512);
        assert!(state.apply(create_group("g", 0)).result.is_err());
        // A member may not take another group's name: group "a-1" exists,
        // so group "a" cannot grow a member "a-1".
        assert!(state.apply(create_group("a-1", 1)).result.is_ok());
        assert!(matches!(
            state.apply(create_group("a", 1)).result,
            Err(Rejection::GroupExists { .. })
        ));
        // A group pinned to a node that is gone still shrinks to nothing.
        let mut pinned = spec("p");
        pinned.pinned_node = Some(1);
        assert!(state.add_member(1, "127.0.0.1:1".into()).result.is_ok());
        assert!(state
            .apply(Command::CreateGroup {
                template: pinned,
                replicas: 2,
                start: false,
                created_at_unix_ms: 0,
            })
            .result
            .is_ok());
        assert!(state.remove_member(1).result.is_ok());
        assert!(matches!(
            state.apply(scale("p", 3)).result,
            Err(Rejection::NoSuchNode { .. })
        ));
        assert!(state.apply(scale("p", 0)).result.is_ok());
    }

    #[test]
    fn a_node_pins_the_certificate_it_serves_once() {
        let [served, hand_made] = ["a", "b"].map(|c| c.repeat(64));
        let mut state = ClusterState::default();
        let pin = |certificate: &str| Command::PinNodeCertificate {
            node_id: 4,
            certificate_sha256: certificate.into(),
        };
        // Only a node in the state pins.
        assert!(state.apply(pin(&served)).result.is_err());
        let register = Command::RegisterWorker {
            node_id: 4,
            address: "127.0.0.1:4".into(),
        };
        assert!(state.apply(register).result.is_ok());
        assert!(state.node_certificate_accepted(4, &hand_made));
        assert!(state.apply(pin(&served)).result.is_ok());
        assert!(state.node_certificate_accepted(4, &served));
        assert!(!state.node_certificate_accepted(4, &hand_made));
        // Pinned once: a second pin (the hand-made certificate's holder
        // racing the node) changes nothing.
        let before = state.clone();
        let refused = state.apply(pin(&hand_made)).result.unwrap_err();
        assert!(refused.to_string().contains("held to"), "{refused}");
        assert!(state.apply(pin(&served)).result.is_err());
        assert!(state.apply(pin("NOT-HEX")).result.is_err());
        assert_eq!(state, before);
        // A renewal goes on from the pinned certificate.
        let renewed = "c".repeat(64);
        let accept = Command::AcceptNodeCertificate {
            node_id: 4,
            presented_sha256: served.clone(),
            issued_sha256: renewed.clone(),
        };
        assert!(state.apply(accept).result.is_ok());
        assert!(state.node_certificate_accepted(4, &renewed));
    }

    #[test]
    fn a_renewal_narrows_a_node_to_its_new_certificate() {
        let [old, new, newer, stolen] = ["a", "b", "c", "d"].map(|c| c.repeat(64));
        let mut state = ClusterState::default();
        let register = Command::RegisterWorker {
            node_id: 4,
            address: "127.0.0.1:4".into(),
        };
        assert!(state.apply(register).result.is_ok());
        // Never renewed: any certificate the CA issued for it.
        assert!(state.node_certificate_accepted(4, &stolen));
        let accept = |presented: &str, issued: &str| Command::AcceptNodeCertificate {
            node_id: 4,
            presented_sha256: presented.into(),
            issued_sha256: issued.into(),
        };
        let retire = |keep: &str| Command::RetireNodeCertificates {
            node_id: 4,
            keep_sha256: keep.into(),
        };
        // Keeping a certificate before any renewal names one is refused.
        assert!(state.apply(retire(&old)).result.is_err());
        assert!(state.apply(accept(&old, &new)).result.is_ok());
        for (certificate, accepted) in [(&old, true), (&new, true), (&stolen, false)] {
            assert_eq!(state.node_certificate_accepted(4, certificate), accepted);
        }
        // A certificate outside the pair renews nothing.
        let before = state.clone();
        let refused = state.apply(accept(&stolen, &newer)).result.unwrap_err();
        assert!(refused.to_string().contains("retired"), "{refused}");
        assert!(state.apply(retire(&stolen)).result.is_err());
        assert_eq!(state, before);
        assert!(state.apply(retire(&new)).result.is_ok());
        assert!(!state.node_certificate_accepted(4, &old));
        assert!(state.node_certificate_accepted(4, &new));
        // The old one is gone for good: it cannot start another renewal.
        assert!(state.apply(accept(&old, &newer)).result.is_err());
        assert!(state.apply(accept(&new, &newer)).result.is_ok());
        assert_eq!(
            state.nodes[&4].certificates_sha256,
            BTreeSet::from([new.clone(), newer.clone()])
        );
        // A second signer answering the same renewal late adds its
        // certificate; the node retires down to the one it kept.
        let late = "e".repeat(64);
        assert!(state.apply(accept(&new, &late)).result.is_ok());
        assert!(state.node_certificate_accepted(4, &newer));
        assert!(state.apply(retire(&newer)).result.is_ok());
        assert!(!state.node_certificate_accepted(4, &late));
        // The set stays bounded: past the bound it starts over.
        for (i, issued) in ["1", "2", "3", "4", "5"].iter().enumerate() {
            assert!(state
                .apply(accept(&newer, &issued.repeat(64)))
                .result
                .is_ok());
            let held = &state.nodes[&4].certificates_sha256;
            assert!(held.len() <= NODE_CERTIFICATES_MAX, "{i}: {held:?}");
            assert!(held.contains(&newer) && held.contains(&issued.repeat(64)));
        }
        assert!(
            state.apply(accept(&new, &new)).result.is_err(),
            "same twice"
        );
        assert!(state.apply(retire("NOT-HEX")).result.is_err());
        assert_eq!(ClusterState::decode(&state.encode()).unwrap(), state);
        // A removed node is accepted with nothing.
        assert!(state
            .apply(Command::UnregisterWorker { node_id: 4 })
            .result
            .is_ok());
        assert!(!state.node_certificate_accepted(4, &newer));
        assert!(state.apply(accept(&newer, &stolen)).result.is_err());
    }

    #[test]
    fn the_trail_keeps_the_newest_records_and_names_what_fell_off() {
        let mut state = ClusterState::default();
        for n in 0..AUDIT_RECORDS_MAX + 2 {
            let name = format!("vm{n}");
            let outcome = state.apply_audited(create(&name), Some(&by("ops", n as u64)));
            assert!(outcome.result.is_ok());
            if n >= AUDIT_RECORDS_MAX {
                let dropped = (n - AUDIT_RECORDS_MAX + 1) as u64;
                assert!(outcome.touched.contains(&Touched::Audit(dropped)), "{n}");
            }
        }
        assert_eq!(state.audit.len(), AUDIT_RECORDS_MAX);
        assert_eq!(state.audit.front().unwrap().seq, 3);
        assert_eq!(
            state.audit.back().unwrap().seq,
            AUDIT_RECORDS_MAX as u64 + 2
        );
    }

    #[test]
    fn custom_roles_allow_what_they_name_and_outlive_no_token() {
        let mut state = ClusterState::default();
        let role = |name: &str, permissions: &[Permission]| Command::CreateRole {
            role: CustomRole {
                name: name.into(),
                permissions: permissions.iter().copied().collect(),
                created_at_unix_ms: 1,
            },
        };
        let token = |role: TokenRole| Command::CreateToken {
            token: Token {
                accessor: "00000000000000c1".into(),
                name: "ci".into(),
                secret_sha256: "c".repeat(64),
                created_at_unix_ms: 1,
                role,
                expires_at_unix_ms: None,
            },
        };
        let deployer = TokenRole::named("deployer");
        let refused = state.apply(token(deployer.clone())).result.unwrap_err();
        assert!(
            refused.to_string().contains("no role named deployer"),
            "{refused}"
        );
        for bad in [role("admin", &[Permission::VmRead]), role("empty", &[])] {
            assert!(state.apply(bad).result.is_err());
        }
        let made = state.apply(role("deployer", &[Permission::VmRead, Permission::VmWrite]));
        assert!(made.touched.contains(&Touched::Roles));
        assert!(state
            .apply(role("deployer", &[Permission::VmRead]))
            .result
            .is_err());
        assert!(state.apply(token(deployer.clone())).result.is_ok());
        assert!(state.role_allows(&deployer, Permission::VmWrite));
        assert!(!state.role_allows(&deployer, Permission::VmReadSecrets));
        assert!(!state.role_allows(&TokenRole::named("ghost"), Permission::VmRead));
        assert!(state.role_allows(&TokenRole::Viewer, Permission::VmRead));
        let delete = Command::DeleteRole {
            name: "deployer".into(),
        };
        let held = state.apply(delete.clone()).result.unwrap_err();
        assert!(held.to_string().contains("held by 1 token"), "{held}");
        assert!(state
            .apply(Command::RevokeToken {
                accessor: "00000000000000c1".into()
            })
            .result
            .is_ok());
        assert!(state.apply(delete).result.is_ok());
        assert!(state.roles.is_empty());
        assert_eq!(ClusterState::decode(&state.encode()).unwrap(), state);
        // Tokens made before custom roles read the same.
        let old: Token = serde_json::from_str(
            r#"{"accessor":"00000000000000d1","name":"x","secret_sha256":"00","created_at_unix_ms":0,"role":"operator"}"#,
        )
        .unwrap();
        assert_eq!(old.role, TokenRole::Operator);
    }

    #[test]
    fn tokens_are_made_and_revoked_but_never_the_last_admin() {
        let token = |accessor: &str, role| crate::records::Token {
            accessor: accessor.into(),
            name: "t".into(),
            secret_sha256: format!("{:0>64}", accessor),
            created_at_unix_ms: 1,
            role,
            expires_at_unix_ms: None,
        };
        let mut state = ClusterState::default();
        for (accessor, role) in [
            ("00000000000000a1", TokenRole::Admin),
            ("00000000000000b1", TokenRole::Viewer),
        ] {
            let created = state.apply(Command::CreateToken {
                token: token(accessor, role),
            });
            assert!(created.result.is_ok(), "{:?}", created.result);
        }
        let again = state.apply(Command::CreateToken {
            token: token("00000000000000b1", TokenRole::Viewer),
        });
        assert!(again.result.is_err(), "a second token with one accessor");
        let revoke = |accessor: &str| Command::RevokeToken {
            accessor: accessor.into(),
        };
        assert!(state.apply(revoke("00000000000000b1")).result.is_ok());
        let before = state.clone();
        assert!(state.apply(revoke("00000000000000a1")).result.is_err());
        assert_eq!(state, before, "the last admin token was revoked");
    }

    #[test]
    fn duplicate_create_is_refused_and_changes_nothing() {
        let mut state = ClusterState::default();
        assert!(state.apply(create("a")).result.is_ok());
        let before = state.clone();
        let outcome = state.apply(create("a"));
        assert_eq!(
            outcome.result,
            Err(Rejection::VmExists { name: "a".into() })
        );
        assert_eq!(state, before);
    }

    #[test]
    fn lifecycle_moves_revisions() {
        let mut state = ClusterState::default();
        state.apply(create("a"));
        let started = state.apply(Command::SetVmDesiredState {
            name: "a".into(),
            desired_state: DesiredState::Running,
        });
        let vm = started.result.unwrap().vm.unwrap();
        assert_eq!((vm.create_revision, vm.mod_revision), (1, 2));
        assert_eq!(vm.desired_state, DesiredState::Running);
        assert!(state
            .apply(Command::DeleteVm { name: "a".into() })
            .result
            .is_ok());
        assert!(state.vms.is_empty());
        assert_eq!(state.revision, 3);
        assert!(state
            .apply(Command::DeleteVm { name: "a".into() })
            .result
            .is_err());
    }

    /// Node `node`'s host, as its agent reports it: room for any test VM.
    fn report_host(state: &mut ClusterState, node: u64) {
        let reported = state.apply(Command::SetHostFacts {
            node_id: node,
            facts: HostFacts {
                memory_mib_total: 64 * 1024,
                vcpus_total: 16,
                accel: "tcg".into(),
                labels: Default::default(),
                gossip_address: String::new(),
                fence_after_ms: 0,
            },
        });
        assert!(reported.result.is_ok(), "{:?}", reported.result);
    }

    fn running_on(state: &mut ClusterState, name: &str, node: u64) {
        if state.nodes.get(&node).is_some_and(|n| n.host.is_none()) {
            report_host(state, node);
        }
        state.apply(create(name));
        state.apply(Command::SetVmDesiredState {
            name: name.into(),
            desired_state: DesiredState::Running,
        });
        assert_eq!(state.vms[name].observed.phase, VmPhase::Pending);
        let assigned = state.apply(Command::AssignVm {
            name: name.into(),
            node_id: Some(node),
            reason: String::new(),
            vcpu_overcommit: None,
            needs_agent: false,
        });
        assert_eq!(
            assigned.result.unwrap().vm.unwrap().observed.phase,
            VmPhase::Scheduled
        );
    }

    #[test]
    fn a_placement_decided_on_an_older_state_is_judged_again() {
        let mut state = ClusterState::default();
        state.add_member(1, "a:1".into());
        state.add_member(2, "b:2".into());
        report_host(&mut state, 1);
        let mut big = |name: &str, memory_mib: u64, vcpus: u32| {
            let mut spec = spec(name);
            spec.memory_mib = memory_mib;
            spec.vcpus = vcpus;
            assert!(state
                .apply(Command::CreateVm {
                    spec,
                    created_at_unix_ms: 0,
                })
                .result
                .is_ok());
            state.apply(Command::SetVmDesiredState {
                name: name.into(),
                desired_state: DesiredState::Running,
            });
        };
        big("a", 40 * 1024, 1);
        big("b", 40 * 1024, 1);
        big("c", 1024, 16);
        let place = |name: &str, node_id: u64| Command::AssignVm {
            name: name.into(),
            node_id: Some(node_id),
            reason: String::new(),
            vcpu_overcommit: Some(1),
            needs_agent: true,
        };
        // Both were decided on a state where node 1 had 64 GiB free.
        assert!(state.apply(place("a", 1)).result.is_ok());
        let refused = state.apply(place("b", 1));
        assert_eq!(
            refused.result,
            Err(Rejection::DoesNotFit {
                name: "b".into(),
                node_id: 1,
                reason: "without 40960 MiB of memory free".into(),
            })
        );
        assert_eq!(state.vms["b"].assigned_node, None, "b stays pending");
        assert_eq!(state.vms["b"].observed.phase, VmPhase::Pending);
        // 16 cores at 1 vCPU each: "a" holds one of them.
        let refused = state.apply(place("c", 1)).result.unwrap_err();
        assert!(refused.to_string().contains("vCPUs"), "{refused}");
        // A node that has not reported its host, or that may take none.
        let refused = state.apply(place("c", 2)).result.unwrap_err();
        assert!(
            refused.to_string().contains("not yet reporting"),
            "{refused}"
        );
        state.apply(Command::SetNodeEligibility {
            node_id: 1,
            eligible: false,
        });
        let mut small = spec("d");
        small.memory_mib = 128;
        state.apply(Command::CreateVm {
            spec: small,
            created_at_unix_ms: 0,
        });
        let refused = state.apply(place("d", 1)).result.unwrap_err();
        assert!(refused.to_string().contains("ineligible"), "{refused}");
        // The same placement again (a retry) is no new placement: what the
        // node reported stays, and no second "placed" is told.
        state.apply(report("a", 1, VmPhase::Running));
        let again = state.apply(place("a", 1));
        assert!(again.result.is_ok());
        assert!(again.events.is_empty(), "{:?}", again.events);
        assert_eq!(state.vms["a"].observed.phase, VmPhase::Running);
        // An entry written before the check (no overcommit) applies as it
        // did, so replaying an old log yields the state it yielded.
        let old = state.apply(Command::AssignVm {
            name: "b".into(),
            node_id: Some(1),
            reason: String::new(),
            vcpu_overcommit: None,
            needs_agent: false,
        });
        assert!(old.result.is_ok(), "{:?}", old.result);
        assert_eq!(state.vms["b"].assigned_node, Some(1));
    }

    #[test]
    fn only_the_assigned_node_reports() {
        let mut state = ClusterState::default();
        state.add_member(1, "a:1".into());
        state.add_member(2, "b:2".into());
        running_on(&mut state, "a", 1);
        let before = state.clone();
        let report = |node_id| Command::ReportVm {
            name: "a".into(),
            node_id,
            observed: VmObserved {
                phase: VmPhase::Running,
                pid: Some(42),
                ..VmObserved::default()
            },
        };
        assert!(matches!(
            state.apply(report(2)).result,
            Err(Rejection::NotAssigned {
                node_id: 2,
                assigned: Some(1),
                ..
            })
        ));
        assert_eq!(state, before);
        let accepted = state.apply(report(1)).result.unwrap().vm.unwrap();
        assert_eq!(accepted.observed.phase, VmPhase::Running);
        assert_eq!(accepted.observed.node, Some(1));
    }

    #[test]
    fn a_vm_s_lifecycle_is_told_in_events_once_per_change() {
        let mut state = ClusterState::default();
        state.add_member(1, "a:1".into());
        running_on(&mut state, "a", 1);
        let mut report = |observed: VmObserved| -> Vec<(EventKind, String)> {
            let outcome = state.apply(Command::ReportVm {
                name: "a".into(),
                node_id: 1,
                observed,
            });
            assert!(outcome.result.is_ok());
            outcome
                .events
                .into_iter()
                .map(|e| (e.kind, e.message))
                .collect()
        };
        let starting = VmObserved {
            phase: VmPhase::Starting,
            ..VmObserved::default()
        };
        let running = VmObserved {
            phase: VmPhase::Running,
            boot_ms: Some(900),
            ..VmObserved::default()
        };
        assert_eq!(
            report(starting.clone()),
            [(EventKind::VmStarting, "a: starting on node 1".to_string())]
        );
        assert_eq!(
            report(running.clone()),
            [(
                EventKind::VmRunning,
                "a: running on node 1 (booted in 900 ms)".to_string()
            )]
        );
        // The same phase again (a periodic report) is no news.
        assert!(report(running.clone()).is_empty());
        // Died unasked: failed, then started again by its agent.
        let died = VmObserved {
            phase: VmPhase::Failed,
            restarts: 1,
            exit_status: Some("signal 9".into()),
            reason: "hypervisor exited unasked".into(),
            ..VmObserved::default()
        };
        assert_eq!(
            report(died.clone()),
            [(
                EventKind::VmRestarted,
                "a: died unasked on node 1 (signal 9); restart 1".to_string()
            )]
        );
        let kinds = |events: Vec<(EventKind, String)>| -> Vec<EventKind> {
            events.into_iter().map(|(kind, _)| kind).collect()
        };
        let restarting = VmObserved {
            phase: VmPhase::Starting,
            ..died.clone()
        };
        assert_eq!(kinds(report(restarting.clone())), [EventKind::VmStarting]);
        // Its boot fails: no restart counted, so a failure.
        let failed = VmObserved {
            phase: VmPhase::Failed,
            reason: "boot timed out".into(),
            ..restarting
        };
        assert_eq!(
            report(failed.clone()),
            [(
                EventKind::VmFailed,
                "a: failed on node 1: boot timed out".to_string()
            )]
        );
        // Started again by hand: a start, not a restart.
        let again = VmObserved {
            phase: VmPhase::Starting,
            ..failed
        };
        assert_eq!(kinds(report(again)), [EventKind::VmStarting]);
        assert_eq!(kinds(report(running)), [EventKind::VmRunning]);
        // (The report before said no restarts: an agent restarted since.)
        let stopped = report(VmObserved {
            phase: VmPhase::Stopped,
            exit_status: Some("exit code 0".into()),
            ..VmObserved::default()
        });
        assert_eq!(
            stopped,
            [(
                EventKind::VmStopped,
                "a: stopped on node 1 (exit code 0)".to_string()
            )]
        );
    }

    #[test]
    fn assignment_needs_a_member_and_removal_unassigns() {
        let mut state = ClusterState::default();
        state.add_member(1, "a:1".into());
        state.apply(create("a"));
        let refused = state.apply(Command::AssignVm {
            name: "a".into(),
            node_id: Some(9),
            reason: String::new(),
            vcpu_overcommit: None,
            needs_agent: false,
        });
        assert_eq!(refused.result, Err(Rejection::NoSuchNode { node_id: 9 }));
        state.apply(Command::DeleteVm { name: "a".into() });
        running_on(&mut state, "a", 1);
        let removed = state.remove_member(1);
        assert_eq!(removed.vm_changes.len(), 1);
        assert_eq!(state.vms["a"].assigned_node, None);
        assert_eq!(state.vms["a"].observed.phase, VmPhase::Pending);
    }

    fn report(name: &str, node_id: u64, phase: VmPhase) -> Command {
        Command::ReportVm {
            name: name.into(),
            node_id,
            observed: VmObserved {
                phase,
                ..VmObserved::default()
            },
        }
    }

    #[test]
    fn replicas_grow_and_shrink_as_one_revision() {
        let mut state = ClusterState::default();
        let grow = |replicas| Command::SetReplicas {
            template: spec("web"),
            replicas,
            start: true,
            created_at_unix_ms: 1,
        };
        let outcome = state.apply(grow(3));
        assert_eq!(outcome.result.unwrap().revision, 1);
        let names: Vec<_> = state.vms.keys().cloned().collect();
        assert_eq!(names, ["web-1", "web-2", "web-3"]);
        assert!(state
            .vms
            .values()
            .all(|vm| vm.spec.group.as_deref() == Some("web")
                && vm.observed.phase == VmPhase::Pending));
        state.apply(grow(1));
        assert_eq!(state.vms.keys().collect::<Vec<_>>(), ["web-1"]);
        assert_eq!(state.revision, 2);

        state.apply(create("web-2"));
        let before = state.clone();
        let refused = state.apply(grow(2));
        assert_eq!(
            refused.result,
            Err(Rejection::VmExists {
                name: "web-2".into()
            })
        );
        assert_eq!(state, before);
    }

    #[test]
    fn a_lost_vm_is_unassigned_only_when_replaced() {
        let mut state = ClusterState::default();
        state.add_member(1, "a:1".into());
        running_on(&mut state, "a", 1);
        running_on(&mut state, "b", 1);
        let lost = |name: &str, replace| Command::MarkVmLost {
            name: name.into(),
            node_id: 1,
            reason: "node 1 dead for 15s".into(),
            replace,
        };
        let outcome = state.apply(lost("a", true));
        assert_eq!(outcome.events[0].kind, EventKind::VmLost);
        assert_eq!(state.vms["a"].assigned_node, None);
        assert_eq!(state.vms["a"].observed.phase, VmPhase::Lost);
        state.apply(lost("b", false));
        assert_eq!(state.vms["b"].assigned_node, Some(1));
        assert_eq!(state.vms["b"].observed.phase, VmPhase::Lost);
        let before = state.clone();
        assert!(matches!(
            state.apply(lost("a", true)).result,
            Err(Rejection::NotAssigned { .. })
        ));
        assert_eq!(state, before);
    }

    #[test]
    fn drain_evicts_running_vms_only_after_the_node_stops_them() {
        let mut state = ClusterState::default();
        state.add_member(1, "a:1".into());
        state.add_member(2, "b:2".into());
        running_on(&mut state, "a", 1);
        state.apply(report("a", 1, VmPhase::Running));
        running_on(&mut state, "b", 2);
        state.apply(Command::DrainNode {
            node_id: 1,
            at_unix_ms: 10,
            deadline_unix_ms: 20,
        });
        assert!(!state.nodes[&1].eligible);
        assert!(state.vms["a"].evicting);
        assert_eq!(state.vms["a"].assigned_node, Some(1));
        assert!(!state.vms["b"].evicting);
        let refused = state.apply(Command::FinishDrain {
            node_id: 1,
            force: false,
        });
        assert!(refused.result.is_err());
        let stopped = state.apply(report("a", 1, VmPhase::Stopped));
        let kinds: Vec<EventKind> = stopped.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::VmStopped, EventKind::VmEvicted]);
        assert_eq!(state.vms["a"].assigned_node, None);
        assert_eq!(state.vms["a"].observed.phase, VmPhase::Pending);
        assert!(state
            .apply(Command::FinishDrain {
                node_id: 1,
                force: false
            })
            .result
            .is_ok());
        assert_eq!(state.nodes[&1].drain, None);
        assert!(!state.nodes[&1].eligible);
    }

    #[test]
    fn a_placed_vm_is_not_placed_again_elsewhere() {
        let mut state = ClusterState::default();
        state.add_member(1, "a:1".into());
        state.add_member(2, "b:2".into());
        running_on(&mut state, "a", 1);
        let before = state.clone();
        let again = |node| Command::AssignVm {
            name: "a".into(),
            node_id: Some(node),
            reason: String::new(),
            vcpu_overcommit: None,
            needs_agent: false,
        };
        assert!(matches!(
            state.apply(again(2)).result,
            Err(Rejection::Invalid { .. })
        ));
        assert_eq!(state, before);
        assert!(state.apply(again(1)).result.is_ok());
    }

    /// A valid accessor made of one hex digit.
    fn accessor(digit: &str) -> String {
        digit.repeat(16)
    }

    fn join_token(digit: &str, expires_at_unix_ms: u64) -> Command {
        Command::CreateJoinToken {
            token: JoinToken {
                accessor: accessor(digit),
                secret_sha256: digit.repeat(64),
                created_at_unix_ms: 1,
                expires_at_unix_ms,
                spent: None,
            },
        }
    }

    fn spend(digit: &str, node_id: u64, key: char, at_unix_ms: u64) -> Command {
        Command::UseJoinToken {
            accessor: accessor(digit),
            node_id,
            key_sha256: key.to_string().repeat(64),
            at_unix_ms,
        }
    }

    #[test]
    fn a_join_token_is_spent_on_one_new_node_and_key() {
        let mut state = ClusterState::default();
        state.add_member(1, "n1:1".into());
        assert!(state.apply(join_token("a", 100)).result.is_ok());
        assert!(state.apply(join_token("b", 100)).result.is_ok());
        let refused = |state: &mut ClusterState, command: Command, why: &str| {
            let before = state.clone();
            match state.apply(command).result {
                Err(Rejection::Invalid { detail }) => assert!(detail.contains(why), "{detail}"),
                other => panic!("accepted, or refused otherwise: {other:?}"),
            }
            assert_eq!(*state, before);
        };
        refused(
            &mut state,
            spend("a", 1, 'c', 2),
            "is or was in the cluster",
        );
        refused(&mut state, spend("a", 4, 'c', 100), "expired");
        refused(&mut state, spend("f", 4, 'c', 2), "not valid here");
        assert!(state.apply(spend("a", 4, 'c', 2)).result.is_ok());
        assert!(state.issued_node_ids.contains(&4));
        // The same node may ask again with the same key.
        let before = state.clone();
        assert!(state.apply(spend("a", 4, 'c', 3)).result.is_ok());
        assert_eq!(state.join_tokens, before.join_tokens);
        assert_eq!(state.issued_node_ids, before.issued_node_ids);
        refused(&mut state, spend("a", 4, 'd', 3), "another node's");
        refused(&mut state, spend("a", 5, 'c', 3), "another node's");
        // Another token never gets a second certificate for node 4.
        refused(
            &mut state,
            spend("b", 4, 'd', 3),
            "is or was in the cluster",
        );
        // Node 4 never joined: removing it retires its certificate's id.
        assert!(state
            .apply(Command::UnregisterWorker { node_id: 4 })
            .result
            .is_ok());
        assert!(state.removed_nodes.contains(&4));
        assert!(matches!(
            state.apply(Command::UnregisterWorker { node_id: 4 }).result,
            Err(Rejection::NoSuchNode { node_id: 4 })
        ));
        refused(
            &mut state,
            spend("a", 4, 'c', 3),
            "is or was in the cluster",
        );
        assert!(state
            .apply(Command::RevokeJoinToken {
                accessor: accessor("b")
            })
            .result
            .is_ok());
        refused(&mut state, spend("b", 6, 'd', 3), "not valid here");
        refused(
            &mut state,
            Command::RevokeJoinToken {
                accessor: accessor("b"),
            },
            "no join token",
        );
        assert_eq!(
            ClusterState::decode(&state.encode()).unwrap(),
            state.clone()
        );
    }

    #[test]
    fn settings_are_validated() {
        let mut state = ClusterState::default();
        let refused = state.apply(Command::SetSettings {
            settings: Settings {
                voters: 4,
                ..Settings::default()
            },
        });
        assert!(matches!(refused.result, Err(Rejection::Invalid { .. })));
        assert_eq!(state.settings, Settings::default());
        let accepted = state.apply(Command::SetSettings {
            settings: Settings {
                voters: 5,
                ..Settings::default()
            },
        });
        assert!(accepted.result.is_ok());
        assert_eq!(state.settings.voters, 5);
    }

    fn arbitrary_command() -> impl Strategy<Value = Command> {
        let name = prop::sample::select(vec!["a", "b", "c"]);
        let node = 1u64..4;
        let phase = prop::sample::select(vec![
            VmPhase::Starting,
            VmPhase::Running,
            VmPhase::Stopped,
            VmPhase::Failed,
        ]);
        let certificate = prop::sample::select(vec!["a", "b", "c"]);
        prop_oneof![
            name.clone().prop_map(create),
            name.clone()
                .prop_map(|n| Command::DeleteVm { name: n.into() }),
            (name.clone(), prop::option::of(node.clone())).prop_map(|(n, node_id)| {
                Command::AssignVm {
                    name: n.into(),
                    node_id,
                    reason: String::new(),
                    vcpu_overcommit: None,
                    needs_agent: false,
                }
            }),
            (name.clone(), node.clone(), phase)
                .prop_map(|(n, node_id, phase)| report(n, node_id, phase)),
            (name.clone(), node.clone(), any::<bool>()).prop_map(|(n, node_id, replace)| {
                Command::MarkVmLost {
                    name: n.into(),
                    node_id,
                    reason: "dead".into(),
                    replace,
                }
            }),
            (node.clone(), 0u64..100).prop_map(|(node_id, at)| Command::DrainNode {
                node_id,
                at_unix_ms: at,
                deadline_unix_ms: at + 10,
            }),
            (node.clone(), any::<bool>())
                .prop_map(|(node_id, force)| Command::FinishDrain { node_id, force }),
            (0u32..3).prop_map(|replicas| Command::SetReplicas {
                template: spec("g"),
                replicas,
                start: true,
                created_at_unix_ms: 0,
            }),
            (prop::sample::select(vec!["g", "a"]), 1u32..3).prop_map(|(group, replicas)| {
                Command::CreateGroup {
                    template: spec(group),
                    replicas,
                    start: true,
                    created_at_unix_ms: 0,
                }
            }),
            (prop::sample::select(vec!["g", "a"]), 0u32..3).prop_map(|(group, replicas)| {
                Command::ScaleGroup {
                    group: group.into(),
                    replicas,
                    start: false,
                    created_at_unix_ms: 0,
                }
            }),
            (prop::sample::select(vec!["a", "b"]), 1u64..50)
                .prop_map(|(a, expires)| join_token(a, expires)),
            (
                prop::sample::select(vec!["a", "b"]),
                node.clone(),
                prop::sample::select(vec!['c', 'd']),
                0u64..60
            )
                .prop_map(|(a, node_id, key, at)| spend(a, node_id, key, at)),
            prop::sample::select(vec!["a", "b"]).prop_map(|a| Command::RevokeJoinToken {
                accessor: accessor(a)
            }),
            (node.clone(), certificate.clone(), certificate.clone()).prop_map(
                |(node_id, presented, issued)| Command::AcceptNodeCertificate {
                    node_id,
                    presented_sha256: presented.repeat(64),
                    issued_sha256: issued.repeat(64),
                }
            ),
            (node.clone(), certificate.clone()).prop_map(|(node_id, keep)| {
                Command::RetireNodeCertificates {
                    node_id,
                    keep_sha256: keep.repeat(64),
                }
            }),
            (node.clone(), certificate).prop_map(|(node_id, pinned)| {
                Command::PinNodeCertificate {
                    node_id,
                    certificate_sha256: pinned.repeat(64),
                }
            }),
            (name, any::<bool>()).prop_map(|(n, run)| Command::SetVmDesiredState {
                name: n.into(),
                desired_state: if run {
                    DesiredState::Running
                } else {
                    DesiredState::Stopped
                },
            }),
        ]
    }

    proptest! {
        /// Replicas applying the same log agree, a worker replaying the
        /// accepted transitions agrees with them, and a snapshot round-trips.
        #[test]
        fn replicas_agree(commands in prop::collection::vec(arbitrary_command(), 0..64)) {
            let mut one = ClusterState::default();
            let mut two = ClusterState::default();
            for node in [1, 2] {
                one.add_member(node, format!("n{node}:1"));
                two.add_member(node, format!("n{node}:1"));
            }
            // A worker replays only the accepted commands, as transitions.
            let mut mirror = one.clone();
            for (i, command) in commands.into_iter().enumerate() {
                // Some entries say when they were proposed, as entries do
                // since they carry the clock; some (older ones) do not.
                let at_unix_ms = (i % 3 != 0).then_some(1_000 * i as u64);
                let a = one.apply_entry(command.clone(), None, at_unix_ms).result;
                let b = two.apply_entry(command.clone(), None, at_unix_ms).result;
                prop_assert_eq!(&a, &b);
                if a.is_ok() {
                    let transition = Transition::Command {
                        command: Box::new(command),
                        audit: None,
                        at_unix_ms,
                    };
                    prop_assert!(mirror.replay(transition).result.is_ok());
                    prop_assert_eq!(&mirror, &one);
                }
                prop_assert!(one.events.len() <= RECENT_EVENTS_MAX);
                for pair in one.events.iter().collect::<Vec<_>>().windows(2) {
                    prop_assert!(pair[0].seq < pair[1].seq);
                    prop_assert!(pair[0].revision <= pair[1].revision);
                }
                for vm in one.vms.values() {
                    if let Some(node) = vm.assigned_node {
                        prop_assert!(one.nodes.contains_key(&node));
                    }
                    prop_assert!(!vm.evicting || vm.assigned_node.is_some());
                }
                for token in one.join_tokens.values() {
                    if let Some(spent) = &token.spent {
                        prop_assert!(one.issued_node_ids.contains(&spent.node_id));
                    }
                }
            }
            prop_assert_eq!(&one, &two);
            prop_assert_eq!(ClusterState::decode(&one.encode()).unwrap(), one.clone());
            for vm in one.vms.values() {
                prop_assert!(vm.create_revision <= vm.mod_revision);
                prop_assert!(vm.mod_revision <= one.revision);
            }
        }
    }
}
