//! Supervision through systemd on NixOS hosts that use microvm.nix's host
//! module: the unit `microvm@NAME` runs `current/bin/microvm-run` from the
//! state directory and restarts it itself (`Restart=always`).
//!
//! Invariant: the agent only ever runs `systemctl start|stop|is-active|show`
//! on units named `microvm@NAME`; it never edits units.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::accel::Accel;
use crate::error::{Error, Result};
use crate::launcher::{self, ExitStatus, Hypervisor, Launched, Launcher, VmDir};
use crate::supervisor::{Settings, VmPlan};

/// How the agent runs hypervisors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Supervision {
    /// `current/bin/microvm-run` as a child process of the agent.
    #[default]
    Child,
    /// `systemctl start microvm@NAME` (microvm.nix host module).
    Systemd,
}

const SYSTEMCTL_TIMEOUT_MS: u64 = 30_000;

pub fn unit(name: &str) -> String {
    format!("microvm@{name}.service")
}

/// Runs `systemctl ARGS UNIT`; returns its trimmed stdout, or why it failed.
async fn systemctl(binary: &str, args: &[&str], unit: &str) -> Result<String> {
    let failed = |detail: String| Error::Systemctl {
        args: args.join(" "),
        unit: unit.to_string(),
        detail,
    };
    let run = tokio::process::Command::new(binary)
        .args(args)
        .arg(unit)
        .stdin(Stdio::null())
        // A status poll abandoned mid-way must not linger.
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_millis(SYSTEMCTL_TIMEOUT_MS), run)
        .await
        .map_err(|_| failed(format!("took over {SYSTEMCTL_TIMEOUT_MS} ms")))?
        .map_err(|e| failed(format!("cannot run {binary}: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.success() || args == ["is-active"] {
        // is-active exits non-zero for inactive units; its stdout says which.
        Ok(stdout)
    } else {
        Err(failed(format!(
            "failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

pub async fn start(binary: &str, name: &str) -> Result<()> {
    systemctl(binary, &["start"], &unit(name)).await.map(|_| ())
}

pub async fn stop(binary: &str, name: &str) -> Result<()> {
    systemctl(binary, &["stop"], &unit(name)).await.map(|_| ())
}

/// "active", "inactive", "failed", "activating", ...
pub async fn state(binary: &str, name: &str) -> String {
    systemctl(binary, &["is-active"], &unit(name))
        .await
        .unwrap_or_else(|error| error.to_string())
}

pub async fn main_pid(binary: &str, name: &str) -> Option<u32> {
    systemctl(
        binary,
        &["show", "--property=MainPID", "--value"],
        &unit(name),
    )
    .await
    .ok()?
    .parse()
    .ok()
    .filter(|pid| *pid != 0)
}

/// How often a unit's state is polled.
const POLL_INTERVAL_MS: u64 = 250;

/// Hypervisors run by systemd as `microvm@NAME`, which restarts them
/// itself; the agent starts, watches and stops the unit.
pub struct SystemdLauncher {
    settings: Arc<Settings>,
}

impl SystemdLauncher {
    pub fn new(settings: Arc<Settings>) -> Self {
        Self { settings }
    }

    fn unit_of(&self, name: &str) -> Unit {
        Unit {
            systemctl: self.settings.systemctl_binary.clone(),
            name: name.to_string(),
            pid: None,
        }
    }
}

/// One VM's unit, polled through `systemctl`.
struct Unit {
    systemctl: String,
    name: String,
    pid: Option<u32>,
}

#[async_trait]
impl Hypervisor for Unit {
    fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Until the unit is `inactive` or `failed`: while it is
    /// `deactivating` (a stop still under way) its qemu may run, and a
    /// `systemctl` that fails says nothing about it.
    async fn wait(&mut self) -> ExitStatus {
        loop {
            let state = state(&self.systemctl, &self.name).await;
            if matches!(state.as_str(), "inactive" | "failed") {
                return ExitStatus::failed(format!("unit {} is {state}", unit(&self.name)));
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// `systemctl stop` waits for the unit's own stop (microvm.nix's
    /// `microvm-shutdown`, then systemd's escalation).
    async fn stop(&mut self, _timeout_ms: u64) -> Result<Option<ExitStatus>> {
        stop(&self.systemctl, &self.name).await?;
        Ok(None)
    }
}

#[async_trait]
impl Launcher for SystemdLauncher {
    fn accel(&self) -> Accel {
        self.settings.accel
    }

    /// A unit that may run qemu: active, or on its way up or down (a
    /// start or stop that timed out leaves it so).
    async fn adopt(&self, vm: VmDir<'_>) -> Option<Box<dyn Hypervisor>> {
        let mut unit = self.unit_of(vm.name);
        let state = state(&unit.systemctl, vm.name).await;
        if !matches!(
            state.as_str(),
            "active" | "activating" | "deactivating" | "reloading"
        ) {
            return None;
        }
        unit.pid = main_pid(&unit.systemctl, vm.name).await;
        tracing::info!(vm = %vm.name, pid = ?unit.pid, "adopting active systemd unit");
        Some(Box::new(unit))
    }

    async fn launch(&self, vm: VmDir<'_>, plan: &VmPlan) -> Result<Launched> {
        launcher::prepare_runner(&self.settings, vm, plan).await?;
        let _ = std::fs::remove_file(crate::runner::qmp_socket(vm.state_dir, vm.name));
        let spawned_at = Instant::now();
        let mut unit = self.unit_of(vm.name);
        start(&unit.systemctl, vm.name).await?;
        unit.pid = main_pid(&unit.systemctl, vm.name).await;
        let boot_ms =
            launcher::wait_until_running(&mut unit, vm, &self.settings, spawned_at).await?;
        Ok(Launched {
            hypervisor: Box::new(unit),
            boot_ms,
        })
    }
}
