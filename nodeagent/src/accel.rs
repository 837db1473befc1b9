//! Which hypervisor acceleration works on this host.
//!
//! Invariant: `Accel::Kvm` is only chosen after qemu actually brought up a
//! KVM vCPU here. `/dev/kvm` existing proves nothing: on nested or PVM hosts
//! it exists and qemu aborts ("failed to set MSR") or guests hang.

use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the operator asked for (`[agent] accel`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelMode {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// What the agent will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// A KVM vCPU that survives this long has passed the MSR set-up that
/// broken KVM fails at once.
const PROBE_ALIVE_MS: u64 = 1_000;

/// Resolves `mode` to an acceleration, probing KVM once for `Auto`.
pub async fn resolve(mode: AccelMode, qemu_binary: &str) -> Accel {
    match mode {
        AccelMode::Kvm => Accel::Kvm,
        AccelMode::Tcg => Accel::Tcg,
        AccelMode::Auto => {
            if kvm_works(qemu_binary).await {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
    }
}

/// The KVM device (whose group a hypervisor run as `[agent] vm_user` gets).
pub const KVM_DEVICE: &str = "/dev/kvm";

/// Starts qemu with KVM and no guest; if it is still alive after
/// `PROBE_ALIVE_MS`, KVM works.
async fn kvm_works(qemu_binary: &str) -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEVICE)
        .is_err()
    {
        return false;
    }
    let child = tokio::process::Command::new(qemu_binary)
        .args([
            "-M",
            "microvm,accel=kvm",
            "-cpu",
            "host",
            "-m",
            "16",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    match tokio::time::timeout(Duration::from_millis(PROBE_ALIVE_MS), child.wait()).await {
        Ok(exit) => {
            tracing::info!(?exit, "KVM probe: qemu exited at once; using TCG");
            false
        }
        Err(_) => {
            let _ = child.kill().await;
            true
        }
    }
}
