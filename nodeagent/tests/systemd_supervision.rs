//! The systemd supervision mode's command lines, checked against a
//! stand-in `systemctl` that records its arguments and keeps a unit state.
//! (On NixOS the real `systemctl` drives microvm.nix's `microvm@` units.)

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blixard_nodeagent::{
    launcher, Accel, Desired, NodeAgent, Phase, PlanSource, RestartPolicy, Settings, Supervision,
    VmPlan, VmReport,
};
use tokio::sync::mpsc;

const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
dir=$(dirname "$0")
echo "$*" >> "$dir/calls"
case "$1" in
  start)
    if [ -e "$dir/start-hangs" ]; then
      echo activating > "$dir/unit-state"; echo "Job for $2 timed out." >&2; exit 1
    fi
    echo active > "$dir/unit-state" ;;
  stop)
    if [ -e "$dir/stop-fails" ]; then
      echo deactivating > "$dir/unit-state"; echo "Job for $2 canceled." >&2; exit 1
    fi
    echo inactive > "$dir/unit-state" ;;
  is-active)
    state=$(cat "$dir/unit-state" 2>/dev/null || echo inactive)
    echo "$state"
    [ "$state" = active ] ;;
  show) echo 4242 ;;
esac
"#;

async fn next_report(reports: &mut mpsc::Receiver<VmReport>) -> VmReport {
    tokio::time::timeout(Duration::from_secs(10), reports.recv())
        .await
        .expect("no report within 10 s")
        .expect("agent dropped its reports")
}

/// An agent in systemd mode whose `systemctl` is the stand-in in `dir`.
fn systemd_agent(dir: &Path) -> (NodeAgent, mpsc::Receiver<VmReport>) {
    let systemctl = dir.join("systemctl");
    std::fs::write(&systemctl, FAKE_SYSTEMCTL).unwrap();
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in ["vmlinuz", "initrd"] {
        std::fs::write(dir.join(file), b"x").unwrap();
    }
    let settings = Arc::new(Settings {
        state_root: dir.join("microvms"),
        qemu_binary: "qemu-system-x86_64".into(),
        nix_binary: "nix".into(),
        accel: Accel::Tcg,
        restart_policy: RestartPolicy::OnFailure,
        stop_timeout_ms: 1_000,
        boot_timeout_ms: 300,
        console_log_bytes_max: 1 << 20,
        supervision: Supervision::Systemd,
        systemctl_binary: systemctl.display().to_string(),
        private_dirs: Vec::new(),
        vm_user: None,
    });
    NodeAgent::new(settings.clone(), launcher::for_settings(settings))
}

fn plan(dir: &Path) -> VmPlan {
    VmPlan {
        name: "web".into(),
        vcpus: 1,
        memory_mib: 64,
        source: PlanSource::Kernel {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd"),
            cmdline: String::new(),
            ports: Vec::new(),
        },
    }
}

#[tokio::test]
async fn systemd_mode_starts_and_stops_the_microvm_unit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, mut reports) = systemd_agent(dir.path());
    agent.reconcile(&BTreeMap::from([(
        "web".to_string(),
        Desired::Run(plan(dir.path())),
    )]));
    assert_eq!(next_report(&mut reports).await.phase, Phase::Starting);
    let running = next_report(&mut reports).await;
    assert_eq!((running.phase, running.pid), (Phase::Running, Some(4242)));
    // The runner the unit will start is in place, laid out as microvm.nix's.
    assert!(dir
        .path()
        .join("microvms/web/current/bin/microvm-run")
        .is_file());

    agent.reconcile(&BTreeMap::from([("web".to_string(), Desired::Stop)]));
    assert_eq!(next_report(&mut reports).await.phase, Phase::Stopping);
    assert_eq!(next_report(&mut reports).await.phase, Phase::Stopped);

    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(
        calls.first(),
        Some(&"is-active microvm@web.service"),
        "{calls:?}"
    );
    assert!(calls.contains(&"start microvm@web.service"), "{calls:?}");
    assert!(
        calls.contains(&"show --property=MainPID --value microvm@web.service"),
        "{calls:?}"
    );
    let start = calls
        .iter()
        .position(|c| *c == "start microvm@web.service")
        .unwrap();
    let stop = calls.iter().position(|c| *c == "stop microvm@web.service");
    assert!(stop.is_some_and(|stop| stop > start), "{calls:?}");
    // A status poll already under way when the stop came may still land.
    assert!(
        calls[stop.unwrap() + 1..]
            .iter()
            .all(|c| c.starts_with("is-active")),
        "{calls:?}"
    );
    assert!(
        calls.iter().all(|c| c.ends_with(" microvm@web.service")),
        "{calls:?}"
    );
}

/// A unit that `systemctl stop` could not stop may still run (here it
/// stays `deactivating`): the VM stays `Stopping` with the reason, never
/// `Stopped` (nor `Failed`, which the cluster would place elsewhere),
/// until a later stop works.
#[tokio::test]
async fn a_failed_systemctl_stop_is_not_reported_as_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, mut reports) = systemd_agent(dir.path());
    agent.reconcile(&BTreeMap::from([(
        "web".to_string(),
        Desired::Run(plan(dir.path())),
    )]));
    assert_eq!(next_report(&mut reports).await.phase, Phase::Starting);
    assert_eq!(next_report(&mut reports).await.phase, Phase::Running);

    std::fs::write(dir.path().join("stop-fails"), b"").unwrap();
    agent.reconcile(&BTreeMap::from([("web".to_string(), Desired::Stop)]));
    assert_eq!(next_report(&mut reports).await.phase, Phase::Stopping);
    let failed = next_report(&mut reports).await;
    assert_eq!(failed.phase, Phase::Stopping, "{failed:?}");
    assert!(
        failed.reason.contains("stop failed") && failed.reason.contains("canceled"),
        "{failed:?}"
    );

    std::fs::remove_file(dir.path().join("stop-fails")).unwrap();
    let stopped = next_report(&mut reports).await;
    assert_eq!(stopped.phase, Phase::Stopped, "{stopped:?}");
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    assert_eq!(
        calls
            .lines()
            .filter(|c| *c == "stop microvm@web.service")
            .count(),
        2,
        "{calls}"
    );
}

/// A start that failed half-way (`systemctl start` timed out, the unit
/// still `activating`) leaves a unit that may run qemu: it is stopped,
/// and only then is the VM `Failed`; while it will not stop the VM stays
/// `Stopping` (a drain never takes it for stopped).
#[tokio::test]
async fn what_a_failed_start_left_is_stopped_before_the_vm_is_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, mut reports) = systemd_agent(dir.path());
    std::fs::write(dir.path().join("start-hangs"), b"").unwrap();
    std::fs::write(dir.path().join("stop-fails"), b"").unwrap();
    agent.reconcile(&BTreeMap::from([(
        "web".to_string(),
        Desired::Run(plan(dir.path())),
    )]));
    assert_eq!(next_report(&mut reports).await.phase, Phase::Starting);
    assert_eq!(next_report(&mut reports).await.phase, Phase::Stopping);
    let stuck = next_report(&mut reports).await;
    assert_eq!(stuck.phase, Phase::Stopping, "{stuck:?}");
    assert!(stuck.reason.contains("stop failed"), "{stuck:?}");

    std::fs::remove_file(dir.path().join("stop-fails")).unwrap();
    let failed = next_report(&mut reports).await;
    assert_eq!(failed.phase, Phase::Failed, "{failed:?}");
    assert!(failed.reason.contains("timed out"), "{failed:?}");
    let state = std::fs::read_to_string(dir.path().join("unit-state")).unwrap();
    assert_eq!(state.trim(), "inactive");
}
