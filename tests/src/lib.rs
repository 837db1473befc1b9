//! Test support shared by the multi-process tests and the simulation.
//!
//! Invariant: every process a `TestCluster` starts is SIGKILLed when it is
//! dropped, so a failing test leaves nothing running.

use blixard_api::pb;

#[cfg(not(madsim))]
mod harness;
#[cfg(not(madsim))]
pub use harness::*;
#[cfg(not(madsim))]
mod tmux;
#[cfg(not(madsim))]
pub use tmux::{Tmux, SCREEN_TIMEOUT};

/// A VM spec with a flake runner (nothing boots in these tests).
/// [`flake_spec`] whose flake reference is padded to about `bytes`: VMs
/// that weigh on lists, watches and buffers.
pub fn heavy_flake_spec(name: &str, bytes: usize) -> pb::VmSpec {
    let mut spec = flake_spec(name);
    spec.runner = Some(pb::RunnerSource {
        source: Some(pb::runner_source::Source::Flake(pb::FlakeRunner {
            flake_ref: format!("/etc/vms/{}#{name}", "x".repeat(bytes)),
        })),
    });
    spec
}

pub fn flake_spec(name: &str) -> pb::VmSpec {
    pb::VmSpec {
        name: name.to_string(),
        vcpus: 1,
        memory_mib: 128,
        pinned_node: 0,
        runner: Some(pb::RunnerSource {
            source: Some(pb::runner_source::Source::Flake(pb::FlakeRunner {
                flake_ref: format!("/etc/vms#{name}"),
            })),
        }),
        ..pb::VmSpec::default()
    }
}
