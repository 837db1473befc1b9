//! The state machine's own checks of every command, run in `apply` on
//! every node before the command may change anything.
//!
//! Invariant: a command that reaches [`ClusterState::apply`] and passes
//! [`command`] holds only bounded, well-formed values (DNS-label names,
//! parseable addresses, sizes within the API's limits, text without
//! control characters), whoever proposed it. The gRPC layer checks the
//! same things first for good error messages; these checks are what holds
//! when a peer proposes directly (`StateFeed.Propose`, raft `MsgPropose`).
//! Both take their rules from `blixard_api::validate`, so they cannot
//! drift apart. The checks are pure: every node refuses alike.
//!
//! [`ClusterState::apply`]: crate::state::ClusterState::apply

use blixard_api::validate as api;
use blixard_api::{limits, ValidationError};

use crate::command::Command;
use crate::placement::Rule;
use crate::records::{
    validate_settings, HostFacts, RunnerSource, Settings, TokenRole, VmObserved, VmPhase, VmSpec,
    JOIN_TOKEN_TTL_MS_MAX,
};
use crate::Rejection;

/// Longest period a setting or a VM's failover may name: a week. Longer
/// is a typo, and sums of periods must not overflow.
pub const PERIOD_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
/// Largest host a node may report; beyond is a lie or a typo.
const HOST_VCPUS_MAX: u32 = 65_536;
const HOST_MEMORY_MIB_MAX: u64 = 256 * 1024 * 1024;

fn invalid(error: ValidationError) -> Rejection {
    Rejection::Invalid {
        detail: error.to_string(),
    }
}

fn refuse(detail: String) -> Rejection {
    Rejection::Invalid { detail }
}

/// Checks one command's values (see the module invariant).
pub fn command(command: &Command) -> Result<(), Rejection> {
    match command {
        Command::CreateVm { spec, .. } => vm_spec(spec),
        Command::SetVmDesiredState { name, .. } | Command::DeleteVm { name } => vm_name(name),
        Command::SetNodeAddress { node_id, address }
        | Command::RegisterWorker { node_id, address } => {
            node(*node_id)?;
            api::address(address).map_err(invalid)
        }
        Command::SetHostFacts { node_id, facts } => {
            node(*node_id)?;
            host_facts(facts)
        }
        Command::AssignVm {
            name,
            node_id,
            reason,
            vcpu_overcommit,
            ..
        } => {
            vm_name(name)?;
            if let Some(node_id) = node_id {
                node(*node_id)?;
            }
            if let Some(overcommit) = vcpu_overcommit {
                if !(1..=crate::fit::VCPU_OVERCOMMIT_MAX).contains(overcommit) {
                    return Err(Rejection::Invalid {
                        detail: format!(
                            "vcpu_overcommit {overcommit} must be between 1 and {}",
                            crate::fit::VCPU_OVERCOMMIT_MAX
                        ),
                    });
                }
            }
            text("reason", reason)
        }
        Command::MarkUnplaceable { name, reason } => {
            vm_name(name)?;
            text("reason", reason)
        }
        Command::MarkVmLost {
            name,
            node_id,
            reason,
            ..
        } => {
            vm_name(name)?;
            node(*node_id)?;
            text("reason", reason)
        }
        Command::ReportVm {
            name,
            node_id,
            observed,
        } => {
            vm_name(name)?;
            node(*node_id)?;
            observation(observed)
        }
        Command::CreateGroup {
            template, replicas, ..
        } => {
            vm_spec(template)?;
            api::replicas(&template.name, *replicas).map_err(invalid)
        }
        Command::ScaleGroup {
            group, replicas, ..
        } => {
            vm_name(group)?;
            // Zero deletes the group; every member name must be a label.
            match *replicas {
                0 => Ok(()),
                replicas => api::replicas(group, replicas).map_err(invalid),
            }
        }
        Command::SetReplicas {
            template, replicas, ..
        } => {
            vm_spec(template)?;
            // Zero deletes the group; every member name must be a label.
            if *replicas > limits::REPLICAS_MAX {
                return Err(invalid(ValidationError::Replicas {
                    replicas: *replicas,
                }));
            }
            if *replicas > 0 {
                api::replicas(&template.name, *replicas).map_err(invalid)?;
            }
            Ok(())
        }
        Command::SetNodeEligibility { node_id, .. }
        | Command::FinishDrain { node_id, .. }
        | Command::UnregisterWorker { node_id } => node(*node_id),
        Command::DrainNode {
            node_id,
            at_unix_ms,
            deadline_unix_ms,
        } => {
            node(*node_id)?;
            if deadline_unix_ms < at_unix_ms {
                return Err(refuse("a drain's deadline is before its start".into()));
            }
            Ok(())
        }
        Command::CreateToken { token } => {
            role_name(token.role.as_str())?;
            if let Some(expires) = token.expires_at_unix_ms {
                if expires <= token.created_at_unix_ms {
                    return Err(refuse("a token must expire after it is made".into()));
                }
            }
            hex("accessor", &token.accessor, 16..=32)?;
            hex("secret hash", &token.secret_sha256, 64..=64)?;
            api::vm_name(&token.name).map_err(|_| {
                refuse(format!(
                    "token name {:?} must be a DNS label (lowercase letters, digits, '-')",
                    api::echo(&token.name)
                ))
            })
        }
        Command::RevokeToken { accessor } => hex("accessor", accessor, 16..=32),
        Command::CreateRole { role } => {
            role_name(&role.name)?;
            if TokenRole::named(&role.name) != TokenRole::Custom(role.name.clone()) {
                return Err(refuse(format!(
                    "{} is a built-in role; pick another name",
                    role.name
                )));
            }
            if role.permissions.is_empty() {
                return Err(refuse("a role must allow something".into()));
            }
            Ok(())
        }
        Command::DeleteRole { name } => role_name(name),
        Command::CreateJoinToken { token } => {
            hex("accessor", &token.accessor, 16..=32)?;
            hex("secret hash", &token.secret_sha256, 64..=64)?;
            if token.spent.is_some() {
                return Err(refuse("a join token is made unspent".into()));
            }
            let ttl_ms = token
                .expires_at_unix_ms
                .checked_sub(token.created_at_unix_ms)
                .filter(|ttl| *ttl > 0)
                .ok_or_else(|| refuse("a join token must expire after it is made".into()))?;
            if ttl_ms > JOIN_TOKEN_TTL_MS_MAX {
                return Err(refuse(format!(
                    "a join token lives at most {} days",
                    JOIN_TOKEN_TTL_MS_MAX / (24 * 3600 * 1000)
                )));
            }
            Ok(())
        }
        Command::UseJoinToken {
            accessor,
            node_id,
            key_sha256,
            ..
        } => {
            hex("accessor", accessor, 16..=32)?;
            hex("key hash", key_sha256, 64..=64)?;
            api::node_id(*node_id).map_err(invalid)
        }
        Command::RevokeJoinToken { accessor } => hex("accessor", accessor, 16..=32),
        Command::AcceptNodeCertificate {
            node_id,
            presented_sha256,
            issued_sha256,
        } => {
            hex("presented certificate hash", presented_sha256, 64..=64)?;
            hex("issued certificate hash", issued_sha256, 64..=64)?;
            if presented_sha256 == issued_sha256 {
                return Err(refuse(
                    "a renewal issues a certificate other than the one presented".into(),
                ));
            }
            api::node_id(*node_id).map_err(invalid)
        }
        Command::RetireNodeCertificates {
            node_id,
            keep_sha256,
        } => {
            hex("kept certificate hash", keep_sha256, 64..=64)?;
            api::node_id(*node_id).map_err(invalid)
        }
        Command::PinNodeCertificate {
            node_id,
            certificate_sha256,
        } => {
            hex("pinned certificate hash", certificate_sha256, 64..=64)?;
            api::node_id(*node_id).map_err(invalid)
        }
        Command::SetSettings { settings } => cluster_settings(settings),
        // Each value named is checked as the whole settings would be (the
        // defaults are valid, and apply checks the merged result again).
        Command::UpdateSettings { update } => {
            cluster_settings(&update.applied_to(&Settings::default()))
        }
    }
}

fn cluster_settings(settings: &Settings) -> Result<(), Rejection> {
    validate_settings(settings).map_err(|e| refuse(e.to_string()))?;
    if settings.dead_voter_after_ms > PERIOD_MS_MAX || settings.lost_after_ms > PERIOD_MS_MAX {
        return Err(refuse(format!(
            "dead-voter and lost-after periods must be at most {PERIOD_MS_MAX} ms"
        )));
    }
    Ok(())
}

/// Lowercase hex of a length in `len`.
/// A role's name: a DNS label, as token names are.
fn role_name(name: &str) -> Result<(), Rejection> {
    api::vm_name(name)
        .map(|_| ())
        .map_err(|_| Rejection::Invalid {
            detail: format!(
                "role name {:?} must be a DNS label (lowercase letters, digits, '-')",
                api::echo(name)
            ),
        })
}

fn hex(field: &str, value: &str, len: std::ops::RangeInclusive<usize>) -> Result<(), Rejection> {
    let ok = len.contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    match ok {
        true => Ok(()),
        false => Err(refuse(format!(
            "{field} {:?} is not {}-{} lowercase hex digits",
            api::echo(value),
            len.start(),
            len.end()
        ))),
    }
}

fn node(node_id: u64) -> Result<(), Rejection> {
    api::node_id(node_id).map_err(invalid)
}

fn vm_name(name: &str) -> Result<(), Rejection> {
    api::vm_name(name).map_err(invalid)
}

fn text(field: &'static str, value: &str) -> Result<(), Rejection> {
    api::text(field, value, limits::TEXT_LEN_MAX).map_err(invalid)
}

/// Checks a VM spec as the API does, on the domain type.
pub fn vm_spec(spec: &VmSpec) -> Result<(), Rejection> {
    vm_name(&spec.name)?;
    if spec.vcpus == 0 || spec.vcpus > limits::VCPUS_MAX {
        return Err(invalid(ValidationError::Vcpus { vcpus: spec.vcpus }));
    }
    if !(limits::MEMORY_MIB_MIN..=limits::MEMORY_MIB_MAX).contains(&spec.memory_mib) {
        return Err(invalid(ValidationError::Memory {
            memory_mib: spec.memory_mib,
        }));
    }
    match &spec.runner {
        RunnerSource::Kernel {
            kernel_path,
            initrd_path,
            cmdline,
            ports,
        } => {
            api::path("kernel path", kernel_path).map_err(invalid)?;
            api::path("initrd path", initrd_path).map_err(invalid)?;
            api::cmdline(cmdline).map_err(invalid)?;
            if ports.len() > limits::PORT_FORWARDS_MAX {
                return Err(refuse(format!(
                    "at most {} port forwards",
                    limits::PORT_FORWARDS_MAX
                )));
            }
            let mut seen = std::collections::BTreeSet::new();
            for port in ports {
                if port.host_port == 0 || port.guest_port == 0 || !seen.insert(port.host_port) {
                    return Err(refuse(format!(
                        "bad port forward {}:{}",
                        port.host_port, port.guest_port
                    )));
                }
            }
        }
        RunnerSource::Flake { flake_ref } => api::flake_ref(flake_ref).map_err(invalid)?,
    }
    if let Some(node_id) = spec.pinned_node {
        node(node_id)?;
    }
    for group in [
        &spec.group,
        &spec.placement.anti_affinity_group,
        &spec.placement.affinity_group,
    ]
    .into_iter()
    .flatten()
    {
        vm_name(group)?;
    }
    if let Some(platform) = &spec.platform {
        api::platform_name(platform).map_err(invalid)?;
    }
    let placement = &spec.placement;
    if placement.constraints.len() + placement.preferences.len() > limits::PLACEMENT_RULES_MAX {
        return Err(refuse(format!(
            "at most {} constraints and preferences",
            limits::PLACEMENT_RULES_MAX
        )));
    }
    for rule in placement.constraints.iter().chain(&placement.preferences) {
        // A rule is well-formed exactly when its text parses back to it.
        if rule.to_string().parse::<Rule>().as_ref() != Ok(rule) {
            return Err(refuse(format!(
                "malformed placement rule {:?}",
                api::echo(&rule.to_string())
            )));
        }
    }
    if let Some(lost_after_ms) = spec.failover.lost_after_ms {
        if !(1_000..=PERIOD_MS_MAX).contains(&lost_after_ms) {
            return Err(refuse(format!(
                "lost-after {lost_after_ms} ms is outside 1000..={PERIOD_MS_MAX} ms"
            )));
        }
    }
    Ok(())
}

fn host_facts(facts: &HostFacts) -> Result<(), Rejection> {
    if facts.vcpus_total > HOST_VCPUS_MAX || facts.memory_mib_total > HOST_MEMORY_MIB_MAX {
        return Err(refuse(format!(
            "host of {} vCPUs and {} MiB is beyond any real host",
            facts.vcpus_total, facts.memory_mib_total
        )));
    }
    if !matches!(facts.accel.as_str(), "" | "kvm" | "tcg") {
        return Err(refuse(format!(
            "unknown accel {:?} (expected kvm or tcg)",
            api::echo(&facts.accel)
        )));
    }
    if facts.labels.len() > limits::LABELS_MAX {
        return Err(refuse(format!("at most {} labels", limits::LABELS_MAX)));
    }
    for (key, value) in &facts.labels {
        api::label(key, value).map_err(invalid)?;
    }
    if !facts.gossip_address.is_empty() {
        api::address(&facts.gossip_address).map_err(invalid)?;
    }
    if facts.fence_after_ms > PERIOD_MS_MAX {
        return Err(refuse(format!(
            "fence period {} ms is above {PERIOD_MS_MAX} ms",
            facts.fence_after_ms
        )));
    }
    Ok(())
}

fn observation(observed: &VmObserved) -> Result<(), Rejection> {
    text("reason", &observed.reason)?;
    if let Some(status) = &observed.exit_status {
        text("exit status", status)?;
    }
    // Only the scheduler and failover decide these phases.
    if matches!(
        observed.phase,
        VmPhase::Pending | VmPhase::Scheduled | VmPhase::Lost
    ) {
        return Err(refuse(format!(
            "a node cannot report a VM {}",
            observed.phase.as_str()
        )));
    }
    Ok(())
}

/// Checks who may propose a command, given the proposer recorded in the
/// entry (`None` for entries without a tag) and the raft members at this
/// point of the log. Node records of raft members are changed only by
/// configuration changes and by the member itself, so a peer cannot
/// point the cluster at wrong addresses (which left it without a leader
/// for good) or erase a voter's record.
pub fn authorize(
    command: &Command,
    proposer: Option<u64>,
    members: &[u64],
) -> Result<(), Rejection> {
    match command {
        Command::SetNodeAddress { node_id, .. } if proposer != Some(*node_id) => Err(refuse(
            format!("only node {node_id} may change its own address"),
        )),
        Command::RegisterWorker { node_id, .. } | Command::UnregisterWorker { node_id }
            if members.contains(node_id) =>
        {
            Err(refuse(format!(
                "node {node_id} is a raft member; members join and leave by configuration change"
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{PortForward, Settings};

    fn spec(name: &str) -> VmSpec {
        VmSpec {
            name: name.into(),
            vcpus: 1,
            memory_mib: 128,
            runner: RunnerSource::Kernel {
                kernel_path: "/k".into(),
                initrd_path: "/i".into(),
                cmdline: "http=1".into(),
                ports: vec![PortForward {
                    host_port: 8080,
                    guest_port: 80,
                }],
            },
            pinned_node: None,
            placement: Default::default(),
            failover: Default::default(),
            group: None,
            platform: None,
        }
    }

    #[test]
    fn the_attacks_names_and_sizes_are_refused() {
        assert_eq!(vm_spec(&spec("web")), Ok(()));
        for name in ["a\nid>$HOME/owned;#", "/srv/data", "..", "a,b", ""] {
            assert!(vm_spec(&spec(name)).is_err(), "{name:?} accepted");
        }
        let mut big = spec("web");
        big.memory_mib = u64::MAX;
        assert!(vm_spec(&big).is_err());
        let mut newline = spec("web");
        newline.runner = RunnerSource::Kernel {
            kernel_path: "/k".into(),
            initrd_path: "/i".into(),
            cmdline: "a\nb".into(),
            ports: Vec::new(),
        };
        assert!(vm_spec(&newline).is_err());
        let mut option = spec("web");
        option.runner = RunnerSource::Flake {
            flake_ref: "--impure".into(),
        };
        assert!(vm_spec(&option).is_err());
        let mut rule = spec("web");
        rule.placement.constraints.push(Rule {
            key: "zone a".into(),
            op: crate::placement::Op::Eq,
            value: "b".into(),
        });
        assert!(vm_spec(&rule).is_err());
    }

    #[test]
    fn node_commands_need_real_ids_addresses_and_facts() {
        let address = |address: &str| Command::SetNodeAddress {
            node_id: 2,
            address: address.into(),
        };
        assert_eq!(command(&address("10.0.0.2:7000")), Ok(()));
        assert!(command(&address("nowhere")).is_err());
        assert!(command(&Command::SetNodeEligibility {
            node_id: 0,
            eligible: true
        })
        .is_err());
        let mut facts = HostFacts {
            memory_mib_total: 1 << 40,
            vcpus_total: 4,
            accel: "tcg".into(),
            labels: Default::default(),
            gossip_address: String::new(),
            fence_after_ms: 0,
        };
        let host = |facts: &HostFacts| Command::SetHostFacts {
            node_id: 2,
            facts: facts.clone(),
        };
        assert!(command(&host(&facts)).is_err(), "100 TB host accepted");
        facts.memory_mib_total = 4096;
        assert_eq!(command(&host(&facts)), Ok(()));
        facts.accel = "xen".into();
        assert!(command(&host(&facts)).is_err());
        let settings = Settings {
            lost_after_ms: u64::MAX,
            ..Settings::default()
        };
        assert!(command(&Command::SetSettings { settings }).is_err());
    }

    #[test]
    fn nodes_report_only_what_they_observe() {
        let report = |phase| Command::ReportVm {
            name: "web".into(),
            node_id: 1,
            observed: VmObserved {
                phase,
                ..VmObserved::default()
            },
        };
        assert_eq!(command(&report(VmPhase::Running)), Ok(()));
        assert!(command(&report(VmPhase::Lost)).is_err());
    }

    #[test]
    fn only_a_node_moves_its_own_address_and_members_stay_members() {
        let moved = Command::SetNodeAddress {
            node_id: 2,
            address: "h:1".into(),
        };
        assert_eq!(authorize(&moved, Some(2), &[1, 2, 3]), Ok(()));
        assert!(authorize(&moved, Some(1), &[1, 2, 3]).is_err());
        assert!(authorize(&moved, None, &[1, 2, 3]).is_err());
        let unregister = Command::UnregisterWorker { node_id: 2 };
        assert!(authorize(&unregister, Some(1), &[1, 2, 3]).is_err());
        assert_eq!(authorize(&unregister, Some(1), &[1, 3]), Ok(()));
        let register = Command::RegisterWorker {
            node_id: 3,
            address: "h:1".into(),
        };
        assert!(authorize(&register, Some(1), &[1, 2, 3]).is_err());
    }
}
