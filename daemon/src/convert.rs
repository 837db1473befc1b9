//! Conversions between the wire types (`pb`) and the replicated state types.

use blixard_api::{pb, validate, ValidationError};
use blixard_consensus::{
    DesiredState, FailoverPolicy, HostFacts, Placement, PortForward, Rule, RunnerSource, Strategy,
    VmObserved, VmPhase, VmRecord, VmSpec,
};

/// Validates a spec from the wire and converts it.
pub fn vm_spec_from_pb(spec: Option<pb::VmSpec>) -> Result<VmSpec, ValidationError> {
    let spec = spec.ok_or(ValidationError::Missing { field: "spec" })?;
    validate::vm_spec(&spec)?;
    let runner = match spec.runner.and_then(|r| r.source) {
        // A spec read back redacted (an export by a token without
        // vm:read-secrets) must not overwrite the real secret.
        Some(pb::runner_source::Source::Kernel(k)) if k.cmdline.contains(REDACTED) => {
            return Err(ValidationError::Text {
                field: "kernel command line",
                reason: format!(
                    "holds {REDACTED}, as a redacted read shows it: give the real value"
                ),
            })
        }
        Some(pb::runner_source::Source::Kernel(k)) => RunnerSource::Kernel {
            kernel_path: k.kernel_path,
            initrd_path: k.initrd_path,
            cmdline: k.cmdline,
            // validate::vm_spec checked the ranges.
            ports: k
                .ports
                .iter()
                .map(|p| PortForward {
                    host_port: p.host_port as u16,
                    guest_port: p.guest_port as u16,
                })
                .collect(),
        },
        Some(pb::runner_source::Source::Flake(f)) => RunnerSource::Flake {
            flake_ref: f.flake_ref,
        },
        None => unreachable!("validate::vm_spec requires a runner"),
    };
    let rules = |texts: &[String]| -> Result<Vec<Rule>, ValidationError> {
        texts
            .iter()
            .map(|text| {
                text.parse::<Rule>()
                    .map_err(|e| ValidationError::Placement {
                        reason: e.to_string(),
                    })
            })
            .collect()
    };
    let strategy = match spec.strategy.as_str() {
        "" => Strategy::default(),
        other => other
            .parse()
            .map_err(
                |e: blixard_api::placement::StrategyError| ValidationError::Placement {
                    reason: e.to_string(),
                },
            )?,
    };
    Ok(VmSpec {
        name: spec.name,
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        runner,
        pinned_node: (spec.pinned_node != 0).then_some(spec.pinned_node),
        placement: Placement {
            constraints: rules(&spec.constraints)?,
            preferences: rules(&spec.preferences)?,
            anti_affinity_group: (!spec.anti_affinity_group.is_empty())
                .then_some(spec.anti_affinity_group),
            affinity_group: (!spec.affinity_group.is_empty()).then_some(spec.affinity_group),
            strategy,
        },
        failover: FailoverPolicy {
            lost_after_ms: (spec.lost_after_ms != 0).then_some(spec.lost_after_ms),
            replace: spec.replace_lost,
        },
        // Groups are the cluster's to assign (through replicas).
        group: None,
        platform: (!spec.platform.is_empty()).then_some(spec.platform),
    })
}

/// Marks a value [`redact_cmdline`] hid.
pub const REDACTED: &str = "<redacted>";

/// Whether a command-line key names a secret (`db_password`, `API_KEY`,
/// `systemd.setenv=TOKEN`, ...).
fn names_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "secret", "token", "credential", "auth", "private"]
        .iter()
        .any(|word| key.contains(word))
        || key.ends_with("key")
        || key.contains("key_")
}

/// `cmdline` with the value of every secret-looking `key=value` replaced
/// by [`REDACTED`]: everything after the first key that names a secret, so
/// `systemd.setenv=DB_PASSWORD=x` keeps its keys and hides `x`.
pub fn redact_cmdline(cmdline: &str) -> String {
    cmdline
        .split(' ')
        .map(|word| {
            let mut kept = String::new();
            for (index, segment) in word.split('=').enumerate() {
                if index > 0 {
                    kept.push('=');
                }
                kept.push_str(segment);
                let rest = word.len() > kept.len();
                if rest && names_secret(segment) {
                    kept.push('=');
                    kept.push_str(REDACTED);
                    return kept;
                }
            }
            kept
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Redacts the secrets in a VM's command line (for callers without
/// `vm:read-secrets`).
pub fn redact_vm_info(vm: &mut pb::VmInfo) {
    let kernel = vm
        .spec
        .as_mut()
        .and_then(|spec| spec.runner.as_mut())
        .and_then(|runner| runner.source.as_mut());
    if let Some(pb::runner_source::Source::Kernel(kernel)) = kernel {
        kernel.cmdline = redact_cmdline(&kernel.cmdline);
    }
}

pub fn vm_info_to_pb(vm: &VmRecord) -> pb::VmInfo {
    let source = match &vm.spec.runner {
        RunnerSource::Kernel {
            kernel_path,
            initrd_path,
            cmdline,
            ports,
        } => pb::runner_source::Source::Kernel(pb::KernelRunner {
            kernel_path: kernel_path.clone(),
            initrd_path: initrd_path.clone(),
            cmdline: cmdline.clone(),
            ports: ports
                .iter()
                .map(|p| pb::PortForward {
                    host_port: p.host_port.into(),
                    guest_port: p.guest_port.into(),
                })
                .collect(),
        }),
        RunnerSource::Flake { flake_ref } => pb::runner_source::Source::Flake(pb::FlakeRunner {
            flake_ref: flake_ref.clone(),
        }),
    };
    let desired_state = match vm.desired_state {
        DesiredState::Stopped => pb::DesiredState::Stopped,
        DesiredState::Running => pb::DesiredState::Running,
    };
    pb::VmInfo {
        spec: Some(pb::VmSpec {
            name: vm.spec.name.clone(),
            vcpus: vm.spec.vcpus,
            memory_mib: vm.spec.memory_mib,
            runner: Some(pb::RunnerSource {
                source: Some(source),
            }),
            pinned_node: vm.spec.pinned_node.unwrap_or(0),
            constraints: rules_to_text(&vm.spec.placement.constraints),
            preferences: rules_to_text(&vm.spec.placement.preferences),
            anti_affinity_group: vm
                .spec
                .placement
                .anti_affinity_group
                .clone()
                .unwrap_or_default(),
            strategy: vm.spec.placement.strategy.as_str().into(),
            lost_after_ms: vm.spec.failover.lost_after_ms.unwrap_or(0),
            replace_lost: vm.spec.failover.replace,
            group: vm.spec.group.clone().unwrap_or_default(),
            platform: vm.spec.platform.clone().unwrap_or_default(),
            affinity_group: vm.spec.placement.affinity_group.clone().unwrap_or_default(),
        }),
        desired_state: desired_state as i32,
        create_revision: vm.create_revision,
        mod_revision: vm.mod_revision,
        created_at_unix_ms: vm.created_at_unix_ms,
        assigned_node: vm.assigned_node.unwrap_or(0),
        observed: Some(observed_to_pb(&vm.observed)),
        evicting: vm.evicting,
    }
}

fn rules_to_text(rules: &[Rule]) -> Vec<String> {
    rules.iter().map(Rule::to_string).collect()
}

fn observed_to_pb(observed: &VmObserved) -> pb::VmObserved {
    let phase = match observed.phase {
        VmPhase::Pending => pb::VmPhase::Pending,
        VmPhase::Scheduled => pb::VmPhase::Scheduled,
        VmPhase::Starting => pb::VmPhase::Starting,
        VmPhase::Running => pb::VmPhase::Running,
        VmPhase::Stopping => pb::VmPhase::Stopping,
        VmPhase::Stopped => pb::VmPhase::Stopped,
        VmPhase::Failed => pb::VmPhase::Failed,
        VmPhase::Lost => pb::VmPhase::Lost,
    };
    pb::VmObserved {
        phase: phase as i32,
        node: observed.node.unwrap_or(0),
        pid: observed.pid.unwrap_or(0),
        boot_ms: observed.boot_ms.unwrap_or(0),
        exit_status: observed.exit_status.clone().unwrap_or_default(),
        restarts: observed.restarts,
        reason: observed.reason.clone(),
        observed_at_unix_ms: observed.observed_at_unix_ms,
    }
}

pub fn host_to_pb(host: &HostFacts) -> pb::HostFacts {
    pb::HostFacts {
        memory_mib_total: host.memory_mib_total,
        vcpus_total: host.vcpus_total,
        accel: host.accel.clone(),
        labels: host.labels.clone().into_iter().collect(),
        gossip_address: host.gossip_address.clone(),
        fence_after_ms: host.fence_after_ms,
    }
}

pub fn settings_to_pb(settings: &blixard_consensus::Settings) -> pb::Settings {
    pb::Settings {
        voters: settings.voters,
        dead_voter_after_ms: settings.dead_voter_after_ms,
        lost_after_ms: settings.lost_after_ms,
        replace_lost: settings.replace_lost,
    }
}

pub fn event_to_pb(record: &blixard_consensus::EventRecord) -> pb::ClusterEvent {
    pb::ClusterEvent {
        seq: record.seq,
        revision: record.revision,
        at_unix_ms: record.at_unix_ms,
        kind: record.event.kind.as_str().into(),
        vm: record.event.vm.clone().unwrap_or_default(),
        node_id: record.event.node_id.unwrap_or(0),
        message: record.event.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_values_are_redacted_and_nothing_else() {
        let cases = [
            ("console=ttyS0 root=/dev/vda", "console=ttyS0 root=/dev/vda"),
            ("db_password=hunter2 quiet", "db_password=<redacted> quiet"),
            ("API_KEY=abc=def", "API_KEY=<redacted>"),
            (
                "systemd.setenv=DB_PASSWORD=x systemd.setenv=MODE=prod",
                "systemd.setenv=DB_PASSWORD=<redacted> systemd.setenv=MODE=prod",
            ),
            ("token= secret", "token=<redacted> secret"),
            ("auth_header=Bearer", "auth_header=<redacted>"),
            ("password", "password"),
            ("", ""),
            ("  two  spaces ", "  two  spaces "),
        ];
        for (cmdline, expected) in cases {
            assert_eq!(redact_cmdline(cmdline), expected, "{cmdline:?}");
        }
    }
}
