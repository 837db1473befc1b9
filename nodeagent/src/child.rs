//! Hypervisors as child processes of the agent: `current/bin/microvm-run`
//! run in the VM's state directory, in its own process group, as the VM
//! user when there is one. A hypervisor outlives its agent; the next agent
//! adopts it through the pid file.
//!
//! Invariants: the pid file names the running hypervisor from its start
//! until its exit; a pid is signalled only while it is still this VM's
//! hypervisor (its process name says so), never a pid since reused.
//! Stopping escalates: `microvm-shutdown` or QMP `quit`, then SIGTERM,
//! then SIGKILL, each after half the stop timeout.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::Signal;

use crate::accel::Accel;
use crate::error::{Error, Result};
use crate::launcher::{self, ExitStatus, Hypervisor, Launched, Launcher, VmDir};
use crate::process::{self, is_vm_process};
use crate::supervisor::{Settings, VmPlan};
use crate::{console, qmp, runner};

/// How often an adopted hypervisor (not our child: no exit status) is
/// checked for still running.
const ADOPTED_POLL_INTERVAL_MS: u64 = 250;

pub struct ChildLauncher {
    settings: Arc<Settings>,
}

impl ChildLauncher {
    pub fn new(settings: Arc<Settings>) -> Self {
        Self { settings }
    }
}

/// A hypervisor process, started here or found running.
struct ChildHypervisor {
    name: String,
    state_dir: PathBuf,
    process: Process,
}

enum Process {
    Child(tokio::process::Child),
    /// Found running at start-up; not our child, so it is polled.
    Adopted(u32),
}

impl ChildHypervisor {
    fn pid_file(&self) -> PathBuf {
        pid_file(&self.state_dir)
    }

    /// The pid while it is still this VM's hypervisor.
    fn live_pid(&self) -> Option<u32> {
        self.pid().filter(|pid| is_vm_process(*pid, &self.name))
    }
}

fn pid_file(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("pid")
}

#[async_trait]
impl Hypervisor for ChildHypervisor {
    fn pid(&self) -> Option<u32> {
        match &self.process {
            Process::Child(child) => child.id(),
            Process::Adopted(pid) => Some(*pid),
        }
    }

    async fn wait(&mut self) -> ExitStatus {
        let status = match &mut self.process {
            Process::Child(child) => match child.wait().await {
                Ok(status) => ExitStatus::from_std(status),
                Err(error) => ExitStatus::failed(format!("wait failed: {error}")),
            },
            Process::Adopted(pid) => {
                while is_vm_process(*pid, &self.name) {
                    tokio::time::sleep(Duration::from_millis(ADOPTED_POLL_INTERVAL_MS)).await;
                }
                ExitStatus::failed("exited (adopted process: status unknown)")
            }
        };
        let _ = std::fs::remove_file(self.pid_file());
        status
    }

    async fn stop(&mut self, timeout_ms: u64) -> Result<Option<ExitStatus>> {
        let half = Duration::from_millis(timeout_ms / 2);
        let shutdown = runner::current(&self.state_dir).join("bin/microvm-shutdown");
        if shutdown.is_file() {
            let _ = tokio::time::timeout(
                half,
                tokio::process::Command::new(&shutdown)
                    .current_dir(&self.state_dir)
                    .kill_on_drop(true)
                    .status(),
            )
            .await;
        } else {
            let socket = runner::qmp_socket(&self.state_dir, &self.name);
            if let Err(error) = qmp::execute(&socket, "quit").await {
                tracing::debug!(vm = %self.name, %error, "QMP quit failed");
            }
        }
        let mut status = tokio::time::timeout(half, self.wait()).await.ok();
        for signal in [Signal::SIGTERM, Signal::SIGKILL] {
            if status.is_some() {
                break;
            }
            if let Some(pid) = self.live_pid() {
                tracing::warn!(vm = %self.name, pid, %signal, "hypervisor did not stop; signalling");
                process::signal(pid, signal);
            }
            status = tokio::time::timeout(half, self.wait()).await.ok();
        }
        if status.is_none() {
            if let Some(pid) = self.live_pid() {
                // Its pid file stays: the next agent must find it.
                return Err(Error::StillRunning { pid });
            }
        }
        let _ = std::fs::remove_file(self.pid_file());
        let _ = std::fs::remove_file(runner::qmp_socket(&self.state_dir, &self.name));
        Ok(status)
    }
}

#[async_trait]
impl Launcher for ChildLauncher {
    fn accel(&self) -> Accel {
        self.settings.accel
    }

    async fn adopt(&self, vm: VmDir<'_>) -> Option<Box<dyn Hypervisor>> {
        let pid = process::read_pid_file(&pid_file(vm.state_dir))?;
        if !is_vm_process(pid, vm.name) {
            return None;
        }
        tracing::info!(vm = %vm.name, pid, "adopting running hypervisor");
        Some(Box::new(ChildHypervisor {
            name: vm.name.to_string(),
            state_dir: vm.state_dir.to_path_buf(),
            process: Process::Adopted(pid),
        }))
    }

    async fn launch(&self, vm: VmDir<'_>, plan: &VmPlan) -> Result<Launched> {
        let settings = &*self.settings;
        launcher::prepare_runner(settings, vm, plan).await?;
        let socket = runner::qmp_socket(vm.state_dir, vm.name);
        let _ = std::fs::remove_file(&socket);
        let log = console::open_for_hypervisor(vm.state_dir)?;
        let stderr = log.try_clone().map_err(|e| Error::io("console log", e))?;
        let spawned_at = Instant::now();
        let run = runner::current(vm.state_dir).join("bin/microvm-run");
        let mut command = tokio::process::Command::new(&run);
        command
            .current_dir(vm.state_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            // Its own process group: a terminal's Ctrl-C to the agent must
            // not reach the VMs, and the VM outlives an agent crash.
            .process_group(0);
        // Held until the child has its copy (see `crate::vm_user`).
        let mut qmp_listener = None;
        if let Some(user) = &settings.vm_user {
            // The state directories must be the agent's alone (checked,
            // never taken over by a chmod of someone else's), and are made
            // passable, not listable or writable, for the hypervisor.
            for dir in [settings.state_root.as_path(), vm.state_dir] {
                crate::vm_user::check_agent_owned(dir)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                    .map_err(|e| Error::io(format!("chmod {}", dir.display()), e))?;
            }
            user.check_readable(&run)?;
            let listener = std::os::unix::net::UnixListener::bind(&socket)
                .map_err(|e| Error::io(format!("QMP socket {}", socket.display()), e))?;
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(format!("chmod {}", socket.display()), e))?;
            let copied = crate::vm_user::prepare_child(&mut command, &listener)?;
            command.uid(user.uid).gid(user.gid);
            qmp_listener = Some((listener, copied));
        }
        let child = process::spawn_retrying_busy(|| command.spawn())
            .await
            .map_err(|e| Error::io("cannot run microvm-run", e))?;
        drop(qmp_listener);
        let mut hypervisor = ChildHypervisor {
            name: vm.name.to_string(),
            state_dir: vm.state_dir.to_path_buf(),
            process: Process::Child(child),
        };
        let pid = hypervisor.pid().unwrap_or_default();
        if let Err(error) = std::fs::write(hypervisor.pid_file(), format!("{pid}\n")) {
            // Without a pid file the next agent could not adopt it and
            // would start it twice: it does not run.
            if let Err(stop) = hypervisor.stop(settings.stop_timeout_ms).await {
                tracing::error!(vm = %vm.name, %stop, "a hypervisor without a pid file still runs");
            }
            return Err(Error::io("pid file", error));
        }
        if let Ok(target) = std::fs::read_link(runner::current(vm.state_dir)) {
            let _ = runner::link(&target, &vm.state_dir.join("booted"));
        }
        let boot_ms =
            launcher::wait_until_running(&mut hypervisor, vm, settings, spawned_at).await?;
        Ok(Launched {
            hypervisor: Box::new(hypervisor),
            boot_ms,
        })
    }
}
