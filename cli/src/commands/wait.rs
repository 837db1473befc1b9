//! `--wait`: follow the VM watch stream until every VM named has reached
//! its goal, one has failed, or the timeout passes.
//!
//! Invariant: the answer comes from the watch stream (the full list, then
//! each committed change), never from sleeping; the spinner is drawn only
//! on a terminal (indicatif hides it otherwise).

use std::collections::BTreeMap;
use std::time::Duration;

use blixard_api::pb;

use crate::client::{self, status_error};
use crate::exit::{self, Exit};
use crate::output;

/// What a VM should reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    Running,
    Stopped,
    /// Deleted from the cluster state.
    Gone,
}

/// How far one VM is from its goal.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Reached,
    Waiting(String),
    Failed(String),
}

fn progress(goal: Goal, vm: Option<&pb::VmInfo>) -> Progress {
    let phase = vm.and_then(|vm| vm.observed.as_ref()).map(|o| o.phase());
    let reason = vm
        .and_then(|vm| vm.observed.as_ref())
        .map(|o| o.reason.clone())
        .unwrap_or_default();
    match (goal, vm, phase) {
        (Goal::Gone, None, _) => Progress::Reached,
        (Goal::Gone, Some(_), _) => Progress::Waiting("being deleted".into()),
        (_, None, _) => Progress::Failed("was deleted".into()),
        (Goal::Running, _, Some(pb::VmPhase::Running)) => Progress::Reached,
        (Goal::Running, _, Some(pb::VmPhase::Failed)) => {
            Progress::Failed(format!("failed: {reason}"))
        }
        (Goal::Stopped, _, None | Some(pb::VmPhase::Stopped | pb::VmPhase::Unspecified)) => {
            Progress::Reached
        }
        (Goal::Stopped, _, Some(pb::VmPhase::Failed)) => Progress::Reached,
        (_, Some(vm), Some(_)) => Progress::Waiting(blixard_api::phase_name(vm).into()),
        (Goal::Running, _, None) => Progress::Waiting("pending".into()),
    }
}

/// A VM watch read up to its SYNCED event: the VMs as of that revision,
/// and the stream, whose every later event is a change after it. (A
/// separate list would not do: its pages are read at different
/// revisions.)
pub async fn watch_synced(
    addr: &str,
) -> anyhow::Result<(
    tonic::Streaming<pb::VmEvent>,
    BTreeMap<String, pb::VmInfo>,
    u64,
)> {
    let mut stream = client::vm(addr)
        .await?
        .watch(pb::WatchVmsRequest::default())
        .await
        .map_err(status_error)?
        .into_inner();
    let mut vms = BTreeMap::new();
    loop {
        let Some(event) = stream.message().await.map_err(status_error)? else {
            return Err(exit::error(Exit::Unavailable, "the node ended the watch"));
        };
        if event.kind() == pb::VmEventKind::Synced {
            return Ok((stream, vms, event.revision));
        }
        apply(&mut vms, event);
    }
}

/// One VM event applied to `vms`.
fn apply(vms: &mut BTreeMap<String, pb::VmInfo>, event: pb::VmEvent) {
    let kind = event.kind();
    let Some(vm) = event.vm else { return };
    let name = vm.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
    match kind {
        pb::VmEventKind::Deleted => {
            vms.remove(&name);
        }
        _ => {
            vms.insert(name, vm);
        }
    }
}

/// Waits until each `(name, goal)` holds, through `addr`.
pub async fn vms(addr: &str, goals: Vec<(String, Goal)>, timeout_ms: u64) -> anyhow::Result<()> {
    if goals.is_empty() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let (mut stream, mut vms, _) = watch_synced(addr).await?;
    let spinner = output::spinner("waiting");
    loop {
        {
            let mut waiting = Vec::new();
            for (name, goal) in &goals {
                match progress(*goal, vms.get(name)) {
                    Progress::Reached => {}
                    Progress::Waiting(what) => waiting.push(format!("{name} {what}")),
                    Progress::Failed(why) => {
                        spinner.finish_and_clear();
                        return Err(exit::error(Exit::Failed, format!("VM {name} {why}")));
                    }
                }
            }
            if waiting.is_empty() {
                spinner.finish_and_clear();
                return Ok(());
            }
            spinner.set_message(format!(
                "waiting: {} of {} done; {}",
                goals.len() - waiting.len(),
                goals.len(),
                waiting.join(", ")
            ));
        }
        let event = match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(event) => event.map_err(status_error)?,
            Err(_) => {
                spinner.finish_and_clear();
                return Err(exit::error(
                    Exit::Failed,
                    format!(
                        "timed out after {} waiting for {}",
                        humantime::format_duration(Duration::from_millis(timeout_ms)),
                        spinner.message().trim_start_matches("waiting: ")
                    ),
                ));
            }
        };
        let Some(event) = event else {
            spinner.finish_and_clear();
            return Err(exit::error(Exit::Unavailable, "the node ended the watch"));
        };
        apply(&mut vms, event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(phase: pb::VmPhase) -> pb::VmInfo {
        pb::VmInfo {
            observed: Some(pb::VmObserved {
                phase: phase as i32,
                reason: "exit 1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn goals_are_judged_from_the_observed_phase() {
        use pb::VmPhase::*;
        assert_eq!(
            progress(Goal::Running, Some(&vm(Running))),
            Progress::Reached
        );
        assert_eq!(
            progress(Goal::Running, Some(&vm(Starting))),
            Progress::Waiting("starting".into())
        );
        assert_eq!(
            progress(Goal::Running, Some(&vm(Failed))),
            Progress::Failed("failed: exit 1".into())
        );
        assert_eq!(
            progress(Goal::Running, None),
            Progress::Failed("was deleted".into())
        );
        assert_eq!(
            progress(Goal::Stopped, Some(&vm(Stopped))),
            Progress::Reached
        );
        assert_eq!(
            progress(Goal::Stopped, Some(&pb::VmInfo::default())),
            Progress::Reached
        );
        assert_eq!(
            progress(Goal::Stopped, Some(&vm(Stopping))),
            Progress::Waiting("stopping".into())
        );
        assert_eq!(progress(Goal::Gone, None), Progress::Reached);
        assert!(matches!(
            progress(Goal::Gone, Some(&vm(Running))),
            Progress::Waiting(_)
        ));
    }
}
