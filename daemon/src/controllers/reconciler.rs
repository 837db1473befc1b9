//! Drives this node's agent from the cluster state and reports what the
//! agent observes back into it.
//!
//! Invariants: the agent is only told about VMs assigned to this node; it
//! starts acting only after a read barrier, so a node that restarts with a
//! stale state catches up before it stops or removes anything; while the
//! node is fenced (no quorum), every VM it holds is told to stop; every
//! report carries this node's id, and the state machine refuses reports
//! from a node the VM is not assigned to.

use crate::handle::ClusterHandle;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use blixard_api::limits;
use blixard_api::validate::clip;
use blixard_consensus::{
    ClusterState, Command, DesiredState, Rejection, RunnerSource, StateEvent, VmObserved, VmPhase,
};
use blixard_nodeagent::{Desired, NodeAgent, Phase, PlanSource, VmPlan, VmReport};
use tokio::sync::{mpsc, watch};

use crate::shutdown::Shutdown;

use crate::controllers::wake::{self, Wake};

const RECONCILE_INTERVAL_MS: u64 = 250;
/// A state change (a VM placed here) wakes the loop early, at most this often.
const PASS_SPACING_MS: u64 = 10;
const RETRY_DELAY_MS: u64 = 200;
/// A report that cannot be committed after this many tries is dropped
/// (a newer one supersedes it anyway).
const REPORT_ATTEMPTS_MAX: u32 = 50;
/// Clean shutdown waits this long for VMs to stop.
const STOP_ALL_TIMEOUT_MS: u64 = 30_000;

/// What this node should hold, from the cluster state. A fenced node
/// stops everything; an evicting VM is stopped so it can move.
pub fn plan_for(state: &ClusterState, node_id: u64, fenced: bool) -> BTreeMap<String, Desired> {
    state
        .vms
        .values()
        .filter(|vm| vm.assigned_node == Some(node_id))
        .map(|vm| {
            let run = vm.desired_state == DesiredState::Running && !vm.evicting && !fenced;
            let desired = match run {
                false => Desired::Stop,
                true => Desired::Run(VmPlan {
                    name: vm.spec.name.clone(),
                    vcpus: vm.spec.vcpus,
                    memory_mib: vm.spec.memory_mib,
                    source: match &vm.spec.runner {
                        RunnerSource::Kernel {
                            kernel_path,
                            initrd_path,
                            cmdline,
                            ports,
                        } => PlanSource::Kernel {
                            kernel: PathBuf::from(kernel_path),
                            initrd: PathBuf::from(initrd_path),
                            cmdline: cmdline.clone(),
                            ports: ports.iter().map(|p| (p.host_port, p.guest_port)).collect(),
                        },
                        RunnerSource::Flake { flake_ref } => PlanSource::Flake {
                            flake_ref: flake_ref.clone(),
                        },
                    },
                }),
            };
            (vm.spec.name.clone(), desired)
        })
        .collect()
}

fn observed(report: VmReport) -> VmObserved {
    VmObserved {
        phase: match report.phase {
            Phase::Starting => VmPhase::Starting,
            Phase::Running => VmPhase::Running,
            Phase::Stopping => VmPhase::Stopping,
            Phase::Stopped => VmPhase::Stopped,
            Phase::Failed => VmPhase::Failed,
        },
        node: None,
        pid: report.pid,
        boot_ms: report.boot_ms,
        // A failed build's output or an exit status is outside text: cut
        // to what the state machine accepts, so the report is never refused.
        exit_status: report
            .exit_status
            .map(|status| clip(&status, limits::TEXT_LEN_MAX)),
        restarts: report.restarts,
        reason: clip(&report.reason, limits::TEXT_LEN_MAX),
        observed_at_unix_ms: blixard_api::unix_ms_now(),
    }
}

/// Runs the agent until `stop` turns true; then stops the VMs if asked to.
pub async fn run(
    raft: ClusterHandle,
    node_id: u64,
    mut agent: NodeAgent,
    reports: mpsc::Receiver<VmReport>,
    fenced: watch::Receiver<bool>,
    stop_vms_on_shutdown: bool,
    mut stop: Shutdown,
) {
    let reporter = tokio::spawn(report_loop(raft.clone(), node_id, reports));
    let caught_up = async {
        while raft.read_barrier().await.is_err() {
            tokio::time::sleep(Duration::from_millis(RETRY_DELAY_MS)).await;
        }
    };
    tokio::select! {
        _ = caught_up => {}
        _ = stop.stopped() => {
            reporter.abort();
            return;
        }
    }
    let mut wake = Wake::new(
        &raft,
        Duration::from_millis(RECONCILE_INTERVAL_MS),
        Duration::from_millis(PASS_SPACING_MS),
        // A VM on this node; a VM moved away is caught by the ticker.
        Box::new(move |event| match event {
            StateEvent::Reset { .. } => true,
            _ => wake::changed_vm(event).is_some_and(|vm| vm.assigned_node == Some(node_id)),
        }),
    );
    while wake.next(&mut stop).await {
        let fenced = *fenced.borrow();
        let plan = raft.read_state(|state| plan_for(state, node_id, fenced));
        agent.reconcile(&plan);
    }
    if stop_vms_on_shutdown {
        agent
            .stop_all(Duration::from_millis(STOP_ALL_TIMEOUT_MS))
            .await;
    }
    reporter.abort();
}

async fn report_loop(raft: ClusterHandle, node_id: u64, mut reports: mpsc::Receiver<VmReport>) {
    while let Some(report) = reports.recv().await {
        let name = report.name.clone();
        let command = Command::ReportVm {
            name: name.clone(),
            node_id,
            observed: observed(report),
        };
        for _ in 0..REPORT_ATTEMPTS_MAX {
            match raft.propose(command.clone()).await {
                Ok(_) => break,
                Err(blixard_consensus::Error::Rejected(
                    Rejection::NotAssigned { .. } | Rejection::VmNotFound { .. },
                )) => break,
                Err(error) => {
                    tracing::debug!(vm = %name, %error, "report not committed; retrying");
                    tokio::time::sleep(Duration::from_millis(RETRY_DELAY_MS)).await;
                }
            }
        }
    }
}
