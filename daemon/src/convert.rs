//! Conversions between the wire types (`pb`) and the replicated state types.

use blixard_api::{pb, validate, ValidationError};
use blixard_consensus::{DesiredState, RunnerSource, VmRecord, VmSpec};

/// Validates a spec from the wire and converts it.
pub fn vm_spec_from_pb(spec: Option<pb::VmSpec>) -> Result<VmSpec, ValidationError> {
    let spec = spec.ok_or(ValidationError::Missing { field: "spec" })?;
    validate::vm_spec(&spec)?;
    let runner = match spec.runner.and_then(|r| r.source) {
        Some(pb::runner_source::Source::Kernel(k)) => RunnerSource::Kernel {
            kernel_path: k.kernel_path,
            initrd_path: k.initrd_path,
            cmdline: k.cmdline,
        },
        Some(pb::runner_source::Source::Flake(f)) => RunnerSource::Flake {
            flake_ref: f.flake_ref,
        },
        None => unreachable!("validate::vm_spec requires a runner"),
    };
    Ok(VmSpec {
        name: spec.name,
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        runner,
    })
}

pub fn vm_info_to_pb(vm: &VmRecord) -> pb::VmInfo {
    let source = match &vm.spec.runner {
        RunnerSource::Kernel {
            kernel_path,
            initrd_path,
            cmdline,
        } => pb::runner_source::Source::Kernel(pb::KernelRunner {
            kernel_path: kernel_path.clone(),
            initrd_path: initrd_path.clone(),
            cmdline: cmdline.clone(),
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
        }),
        desired_state: desired_state as i32,
        create_revision: vm.create_revision,
        mod_revision: vm.mod_revision,
        created_at_unix_ms: vm.created_at_unix_ms,
    }
}
