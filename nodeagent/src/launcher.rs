//! How a VM's hypervisor is run. The supervisor decides when a VM starts,
//! restarts and stops and what is reported; a [`Launcher`] only does it:
//! as a child process of the agent ([`crate::child`]), as a systemd unit
//! ([`crate::systemd`]), or, in the simulation, as a simulated process.
//!
//! Invariants: a launcher finds a hypervisor already running for a VM
//! ([`Launcher::adopt`]) before the supervisor ever asks it to start one,
//! so a VM never runs twice; [`Launcher::launch`] returns only once the
//! guest runs, or with why it could not, leaving nothing running.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::accel::Accel;
use crate::error::{Error, Result};
use crate::supervisor::{Settings, VmPlan};
use crate::systemd::Supervision;
use crate::{console, qmp, runner};

/// One VM's name and the directory that holds its state.
#[derive(Debug, Clone, Copy)]
pub struct VmDir<'a> {
    pub name: &'a str,
    pub state_dir: &'a Path,
}

/// How a hypervisor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    pub success: bool,
    /// `exit code 1`, `signal 9`, `unit microvm@a.service is failed`.
    pub text: String,
}

impl ExitStatus {
    pub fn from_std(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        let text = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => status.to_string(),
        };
        Self {
            success: status.success(),
            text,
        }
    }

    pub fn failed(text: impl Into<String>) -> Self {
        Self {
            success: false,
            text: text.into(),
        }
    }
}

/// A hypervisor that runs (or ran) one VM.
#[async_trait]
pub trait Hypervisor: Send {
    fn pid(&self) -> Option<u32>;

    /// Waits until it ends. Cancel safe: the supervisor waits on it beside
    /// other events, and waiting again later misses nothing.
    async fn wait(&mut self) -> ExitStatus;

    /// Stops it, gently first and then by force, within `timeout_ms`.
    /// Returns how it ended when that is known; an error when it could not
    /// be told to stop and may still run.
    async fn stop(&mut self, timeout_ms: u64) -> Result<Option<ExitStatus>>;
}

/// A started hypervisor and how long its guest took to boot, when the
/// hypervisor could tell.
pub struct Launched {
    pub hypervisor: Box<dyn Hypervisor>,
    pub boot_ms: Option<u64>,
}

/// Runs hypervisors on this node.
#[async_trait]
pub trait Launcher: Send + Sync {
    /// The acceleration guests get here, which the node advertises.
    fn accel(&self) -> Accel;

    /// The hypervisor an earlier agent left running for this VM, if any.
    async fn adopt(&self, vm: VmDir<'_>) -> Option<Box<dyn Hypervisor>>;

    /// Prepares `plan`'s runner and starts it; returns once the guest runs.
    async fn launch(&self, vm: VmDir<'_>, plan: &VmPlan) -> Result<Launched>;
}

/// The launcher `settings.supervision` names.
pub fn for_settings(settings: Arc<Settings>) -> Arc<dyn Launcher> {
    match settings.supervision {
        Supervision::Child => Arc::new(crate::child::ChildLauncher::new(settings)),
        Supervision::Systemd => Arc::new(crate::systemd::SystemdLauncher::new(settings)),
    }
}

/// Prepares the runner `plan` names in the VM's state directory (Blixard's
/// qemu runner, or microvm.nix's built by `nix build`).
pub(crate) async fn prepare_runner(
    settings: &Settings,
    vm: VmDir<'_>,
    plan: &VmPlan,
) -> Result<()> {
    use crate::runner::{FlakeRunner, QemuRunner, RunnerSource};
    use crate::supervisor::PlanSource;
    match &plan.source {
        PlanSource::Kernel {
            kernel,
            initrd,
            cmdline,
            ports,
        } => {
            let kernel = guest_file("kernel", kernel, settings)?;
            let initrd = guest_file("initrd", initrd, settings)?;
            QemuRunner {
                name: plan.name.clone(),
                vcpus: plan.vcpus,
                memory_mib: plan.memory_mib,
                kernel,
                initrd,
                cmdline: cmdline.clone(),
                ports: ports.clone(),
                accel: settings.accel,
                qemu_binary: settings.qemu_binary.clone(),
                qmp_inherited: settings.vm_user.is_some(),
            }
            .prepare(vm.state_dir)
            .await?;
        }
        PlanSource::Flake { .. } if settings.vm_user.is_some() => {
            return Err(Error::Unsupported(
                "[agent] vm_user runs Blixard's qemu runner (kernel VMs) only; a microvm.nix \
                 runner runs as microvm.nix's own user under supervision = \"systemd\"",
            ))
        }
        PlanSource::Flake { flake_ref } => {
            FlakeRunner {
                name: plan.name.clone(),
                flake_ref: flake_ref.clone(),
                nix_binary: settings.nix_binary.clone(),
            }
            .prepare(vm.state_dir)
            .await?;
        }
    }
    Ok(())
}

/// A kernel or initrd a guest may be given (never a file of the agent's
/// own), readable by the VM user when there is one.
fn guest_file(what: &'static str, path: &Path, settings: &Settings) -> Result<PathBuf> {
    let file =
        crate::paths::guest_file(path, &settings.private_dirs).map_err(|e| Error::Guest {
            what,
            source: Box::new(e),
        })?;
    if let Some(user) = &settings.vm_user {
        user.check_readable(&file)?;
    }
    Ok(file)
}

const POLL_INTERVAL_MS: u64 = 50;

/// Waits until the guest that `hypervisor` started at `spawned_at` runs
/// (QMP says so), at most the boot timeout. Returns the boot time, or
/// `None` for a hypervisor without QMP (not qemu) that is alive at the
/// deadline. A hypervisor that exits meanwhile is an error naming its exit
/// and the console's last line; one that is not running at the deadline is
/// stopped.
pub(crate) async fn wait_until_running(
    hypervisor: &mut dyn Hypervisor,
    vm: VmDir<'_>,
    settings: &Settings,
    spawned_at: Instant,
) -> Result<Option<u64>> {
    /// How a boot ended.
    enum Boot {
        Running(u64),
        /// Alive at the deadline, without QMP to ask.
        Alive,
        Exited(ExitStatus),
        TimedOut,
    }
    let socket = runner::qmp_socket(vm.state_dir, vm.name);
    let deadline = spawned_at + Duration::from_millis(settings.boot_timeout_ms);
    let boot = {
        // One wait for the whole boot, polled beside the QMP checks (a
        // systemd unit's wait polls systemctl at its own pace).
        let exited = hypervisor.wait();
        tokio::pin!(exited);
        loop {
            if socket.exists() && qmp::is_running(&socket).await {
                break Boot::Running(spawned_at.elapsed().as_millis() as u64);
            }
            if Instant::now() >= deadline {
                break match socket.exists() {
                    true => Boot::TimedOut,
                    false => Boot::Alive,
                };
            }
            tokio::select! {
                status = &mut exited => break Boot::Exited(status),
                _ = tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)) => {}
            }
        }
    };
    match boot {
        Boot::Running(boot_ms) => Ok(Some(boot_ms)),
        Boot::Alive => Ok(None),
        Boot::Exited(status) => Err(Error::ExitedDuringStart {
            status: status.text,
            console: last_console_line(vm.state_dir),
        }),
        Boot::TimedOut => {
            if let Err(error) = hypervisor.stop(settings.stop_timeout_ms).await {
                tracing::warn!(vm = %vm.name, %error, "could not stop a guest that did not boot");
            }
            Err(Error::BootTimeout {
                boot_timeout_ms: settings.boot_timeout_ms,
            })
        }
    }
}

fn last_console_line(state_dir: &Path) -> String {
    console::tail(state_dir, 1)
        .map(|(bytes, _)| String::from_utf8_lossy(&bytes).trim().to_string())
        .unwrap_or_default()
}
