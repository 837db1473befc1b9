//! One task per VM on this node: prepares its runner, runs the hypervisor,
//! watches it, restarts it per policy and stops it, reporting each phase.
//!
//! Invariants:
//! - At most one hypervisor per VM: a live process named `microvm@NAME`
//!   found through the pid file is adopted, never started twice.
//! - A start that fails is not retried for the same plan (the reason is
//!   reported); a VM that dies after it ran is restarted per policy with
//!   capped exponential backoff.
//! - Stopping escalates: `microvm-shutdown` or QMP `quit`, then SIGTERM,
//!   then SIGKILL, each after half the stop timeout.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::accel::Accel;
use crate::console;
use crate::paths;
use crate::process::{self, is_vm_process};
use crate::qmp;
use crate::runner::{self, FlakeRunner, QemuRunner, RunnerSource};
use crate::systemd::{self, Supervision};

/// How a VM's runner is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanSource {
    Kernel {
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
        /// (host, guest) TCP ports forwarded from 127.0.0.1.
        ports: Vec<(u16, u16)>,
    },
    Flake {
        flake_ref: String,
    },
}

/// What this node should run for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPlan {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub source: PlanSource,
}

/// What the agent wants of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    Run(VmPlan),
    Stop,
    /// Stop it and delete its state directory.
    Remove,
    /// The agent is shutting down and stops its VMs (state is kept).
    StopAndExit,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Never,
    /// Restart a hypervisor that exits unasked with a failure status.
    #[default]
    OnFailure,
    /// Restart a hypervisor that exits unasked, whatever its status.
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
}

/// A phase change of one VM, for the cluster state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmReport {
    pub name: String,
    pub phase: Phase,
    pub pid: Option<u32>,
    pub boot_ms: Option<u64>,
    pub exit_status: Option<String>,
    pub restarts: u32,
    pub reason: String,
}

/// Settings shared by every supervisor on the node.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state_root: PathBuf,
    pub qemu_binary: String,
    pub nix_binary: String,
    pub accel: Accel,
    pub restart_policy: RestartPolicy,
    pub stop_timeout_ms: u64,
    pub boot_timeout_ms: u64,
    pub console_log_bytes_max: u64,
    pub supervision: Supervision,
    pub systemctl_binary: String,
    /// Directories whose files are never given to a guest as its kernel
    /// or initrd (the agent's data directory).
    pub private_dirs: Vec<PathBuf>,
    /// The unprivileged user hypervisors run as (see [`crate::vm_user`]);
    /// `None`: as the agent's user.
    pub vm_user: Option<crate::VmUser>,
}

const POLL_INTERVAL_MS: u64 = 50;
const ADOPTED_POLL_INTERVAL_MS: u64 = 250;
const ROTATE_CHECK_INTERVAL_MS: u64 = 1_000;
const RESTART_BACKOFF_MS_MIN: u64 = 500;
const RESTART_BACKOFF_MS_MAX: u64 = 30_000;
/// A VM that ran this long before dying restarts without backoff history.
const STABLE_RUN_MS: u64 = 60_000;

enum Hypervisor {
    Child(tokio::process::Child),
    /// Found running at start-up; not our child, so it is polled.
    Adopted(u32),
    /// Run by systemd as `microvm@NAME`; polled through `systemctl`.
    Systemd {
        systemctl: String,
        pid: Option<u32>,
    },
}

impl Hypervisor {
    fn pid(&self) -> Option<u32> {
        match self {
            Hypervisor::Child(child) => child.id(),
            Hypervisor::Adopted(pid) => Some(*pid),
            Hypervisor::Systemd { pid, .. } => *pid,
        }
    }

    /// Waits for the process to end; returns how it ended.
    async fn wait(&mut self, name: &str) -> ExitStatus {
        match self {
            Hypervisor::Child(child) => match child.wait().await {
                Ok(status) => ExitStatus::from_std(status),
                Err(error) => ExitStatus {
                    success: false,
                    text: format!("wait failed: {error}"),
                },
            },
            Hypervisor::Systemd { systemctl, .. } => loop {
                let state = systemd::state(systemctl, name).await;
                if state != "active" && state != "activating" && state != "reloading" {
                    return ExitStatus {
                        success: false,
                        text: format!("unit {} is {state}", systemd::unit(name)),
                    };
                }
                tokio::time::sleep(Duration::from_millis(ADOPTED_POLL_INTERVAL_MS)).await;
            },
            Hypervisor::Adopted(pid) => {
                while is_vm_process(*pid, name) {
                    tokio::time::sleep(Duration::from_millis(ADOPTED_POLL_INTERVAL_MS)).await;
                }
                ExitStatus {
                    success: false,
                    text: "exited (adopted process: status unknown)".into(),
                }
            }
        }
    }
}

struct ExitStatus {
    success: bool,
    text: String,
}

impl ExitStatus {
    fn from_std(status: std::process::ExitStatus) -> Self {
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
}

/// Runs until told to `Remove` or `StopAndExit`, or until the agent drops
/// the desired-state sender (then the VM is left running for adoption).
pub async fn supervise(
    name: String,
    settings: Arc<Settings>,
    mut desired: watch::Receiver<Desired>,
    reports: mpsc::Sender<VmReport>,
) {
    let state_dir = match paths::vm_state_dir(&settings.state_root, &name) {
        Ok(dir) => dir,
        Err(error) => {
            tracing::error!(%error, "refusing to supervise a VM with this name");
            return;
        }
    };
    let mut vm = Supervisor {
        state_dir,
        name,
        settings,
        reports,
        hypervisor: None,
        started_at: None,
        restarts: 0,
        failures_in_row: 0,
        blocked_plan: None,
        restart_at: None,
        last_reported: None,
        last_exit: None,
    };
    vm.adopt().await;
    let mut rotate = tokio::time::interval(Duration::from_millis(ROTATE_CHECK_INTERVAL_MS));
    loop {
        let want = desired.borrow_and_update().clone();
        if !vm.converge(&want).await {
            return;
        }
        let restart_at = vm.restart_at;
        tokio::select! {
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            status = wait_for(&mut vm.hypervisor, &vm.name) => {
                vm.on_exit(status, &want).await;
            }
            _ = sleep_until(restart_at) => vm.restart_at = None,
            _ = rotate.tick() => {
                if let Err(error) = console::rotate_if_larger(&vm.state_dir, vm.settings.console_log_bytes_max) {
                    tracing::warn!(vm = %vm.name, %error, "console log rotation failed");
                }
            }
        }
    }
}

async fn wait_for(hypervisor: &mut Option<Hypervisor>, name: &str) -> ExitStatus {
    match hypervisor {
        Some(hypervisor) => hypervisor.wait(name).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep(at.saturating_duration_since(Instant::now())).await,
        None => std::future::pending().await,
    }
}

struct Supervisor {
    name: String,
    state_dir: PathBuf,
    settings: Arc<Settings>,
    reports: mpsc::Sender<VmReport>,
    hypervisor: Option<Hypervisor>,
    started_at: Option<Instant>,
    restarts: u32,
    failures_in_row: u32,
    /// A plan whose start failed (or whose VM gave up): not retried until
    /// the plan or the desired state changes.
    blocked_plan: Option<VmPlan>,
    restart_at: Option<Instant>,
    last_reported: Option<Phase>,
    /// How the hypervisor last exited; kept across restarts.
    last_exit: Option<String>,
}

impl Supervisor {
    fn pid_file(&self) -> PathBuf {
        self.state_dir.join("pid")
    }

    async fn report(&mut self, phase: Phase, reason: String) {
        self.last_reported = Some(phase);
        let report = VmReport {
            name: self.name.clone(),
            phase,
            pid: self.hypervisor.as_ref().and_then(Hypervisor::pid),
            boot_ms: None,
            exit_status: self.last_exit.clone(),
            restarts: self.restarts,
            reason,
        };
        let _ = self.reports.send(report).await;
    }

    /// Takes over a hypervisor left running by an earlier agent.
    async fn adopt(&mut self) {
        if self.settings.supervision == Supervision::Systemd {
            let systemctl = self.settings.systemctl_binary.clone();
            if systemd::state(&systemctl, &self.name).await == "active" {
                let pid = systemd::main_pid(&systemctl, &self.name).await;
                tracing::info!(vm = %self.name, ?pid, "adopting active systemd unit");
                self.hypervisor = Some(Hypervisor::Systemd { systemctl, pid });
                self.started_at = Some(Instant::now());
                self.report(Phase::Running, String::new()).await;
            }
            return;
        }
        let Some(pid) = process::read_pid_file(&self.pid_file()) else {
            return;
        };
        if !is_vm_process(pid, &self.name) {
            return;
        }
        tracing::info!(vm = %self.name, pid, "adopting running hypervisor");
        self.hypervisor = Some(Hypervisor::Adopted(pid));
        self.started_at = Some(Instant::now());
        self.report(Phase::Running, String::new()).await;
    }

    /// Moves towards `want`; returns false when the task should end.
    async fn converge(&mut self, want: &Desired) -> bool {
        match want {
            Desired::Run(plan) => {
                if self.blocked_plan.as_ref() != Some(plan) {
                    self.blocked_plan = None;
                }
                let may_start = self.hypervisor.is_none()
                    && self.blocked_plan.is_none()
                    && self.restart_at.is_none_or(|at| at <= Instant::now());
                if may_start {
                    self.restart_at = None;
                    self.start(plan).await;
                }
                true
            }
            Desired::Stop => {
                self.blocked_plan = None;
                self.restart_at = None;
                self.stop().await;
                if self.last_reported != Some(Phase::Stopped) {
                    self.report(Phase::Stopped, String::new()).await;
                }
                true
            }
            Desired::Remove => {
                self.stop().await;
                if let Err(error) = std::fs::remove_dir_all(&self.state_dir) {
                    if error.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(vm = %self.name, %error, "could not remove state directory");
                    }
                }
                false
            }
            Desired::StopAndExit => {
                self.stop().await;
                false
            }
        }
    }

    async fn start(&mut self, plan: &VmPlan) {
        self.report(Phase::Starting, String::new()).await;
        match self.spawn(plan).await {
            Ok(boot_ms) => {
                self.started_at = Some(Instant::now());
                self.last_reported = Some(Phase::Running);
                let report = VmReport {
                    name: self.name.clone(),
                    phase: Phase::Running,
                    pid: self.hypervisor.as_ref().and_then(Hypervisor::pid),
                    boot_ms,
                    exit_status: self.last_exit.clone(),
                    restarts: self.restarts,
                    reason: String::new(),
                };
                let _ = self.reports.send(report).await;
            }
            Err(reason) => {
                tracing::warn!(vm = %self.name, %reason, "VM failed to start");
                self.blocked_plan = Some(plan.clone());
                self.report(Phase::Failed, reason).await;
            }
        }
    }

    /// Prepares the runner and starts it; waits until the guest runs.
    /// Returns the boot time when the hypervisor could tell it.
    async fn spawn(&mut self, plan: &VmPlan) -> Result<Option<u64>, String> {
        paths::create_private_dir(&self.state_dir).map_err(|e| e.to_string())?;
        let settings = &self.settings;
        let prepared =
            match &plan.source {
                PlanSource::Kernel {
                    kernel,
                    initrd,
                    cmdline,
                    ports,
                } => {
                    let kernel = paths::guest_file(kernel, &settings.private_dirs)
                        .map_err(|e| format!("kernel {e}"))?;
                    let initrd = paths::guest_file(initrd, &settings.private_dirs)
                        .map_err(|e| format!("initrd {e}"))?;
                    if let Some(user) = &settings.vm_user {
                        for file in [&kernel, &initrd] {
                            user.check_readable(file).map_err(|e| e.to_string())?;
                        }
                    }
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
                    .prepare(&self.state_dir)
                    .await
                }
                PlanSource::Flake { .. } if settings.vm_user.is_some() => return Err(
                    "[agent] vm_user runs Blixard's qemu runner (kernel VMs) only; a microvm.nix \
                     runner runs as microvm.nix's own user under supervision = \"systemd\""
                        .into(),
                ),
                PlanSource::Flake { flake_ref } => {
                    FlakeRunner {
                        name: plan.name.clone(),
                        flake_ref: flake_ref.clone(),
                        nix_binary: settings.nix_binary.clone(),
                    }
                    .prepare(&self.state_dir)
                    .await
                }
            };
        prepared.map_err(|e| e.to_string())?;
        let socket = runner::qmp_socket(&self.state_dir, &self.name);
        let _ = std::fs::remove_file(&socket);
        let log = console::open_for_hypervisor(&self.state_dir).map_err(|e| e.to_string())?;
        let stderr = log.try_clone().map_err(|e| format!("console log: {e}"))?;
        let spawned_at = Instant::now();
        if self.settings.supervision == Supervision::Systemd {
            let systemctl = self.settings.systemctl_binary.clone();
            systemd::start(&systemctl, &self.name)
                .await
                .map_err(|e| e.to_string())?;
            let pid = systemd::main_pid(&systemctl, &self.name).await;
            self.hypervisor = Some(Hypervisor::Systemd { systemctl, pid });
            return self.wait_until_running(&socket, spawned_at).await;
        }
        let run = runner::current(&self.state_dir).join("bin/microvm-run");
        let mut command = tokio::process::Command::new(&run);
        command
            .current_dir(&self.state_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            // Its own process group: a terminal's Ctrl-C to the agent must
            // not reach the VMs, and the VM outlives an agent crash.
            .process_group(0);
        // Held until the child has its copy (see `crate::vm_user`).
        let mut qmp_listener = None;
        if let Some(user) = &self.settings.vm_user {
            // The state directories must be the agent's alone (checked,
            // never taken over by a chmod of someone else's), and are made
            // passable, not listable or writable, for the hypervisor.
            for dir in [&self.settings.state_root, &self.state_dir] {
                crate::vm_user::check_agent_owned(dir).map_err(|e| e.to_string())?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                    .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
            }
            user.check_readable(&run).map_err(|e| e.to_string())?;
            let listener = std::os::unix::net::UnixListener::bind(&socket)
                .map_err(|e| format!("QMP socket {}: {e}", socket.display()))?;
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("chmod {}: {e}", socket.display()))?;
            let copied = crate::vm_user::prepare_child(&mut command, &listener)
                .map_err(|e| e.to_string())?;
            command.uid(user.uid).gid(user.gid);
            qmp_listener = Some((listener, copied));
        }
        let child = process::spawn_retrying_busy(|| command.spawn())
            .await
            .map_err(|e| format!("cannot run microvm-run: {e}"))?;
        drop(qmp_listener);
        let pid = child.id().unwrap_or_default();
        std::fs::write(self.pid_file(), format!("{pid}\n"))
            .map_err(|e| format!("pid file: {e}"))?;
        if let Ok(target) = std::fs::read_link(runner::current(&self.state_dir)) {
            let _ = runner::link(&target, &self.state_dir.join("booted"));
        }
        self.hypervisor = Some(Hypervisor::Child(child));
        self.wait_until_running(&socket, spawned_at).await
    }

    async fn wait_until_running(
        &mut self,
        socket: &Path,
        spawned_at: Instant,
    ) -> Result<Option<u64>, String> {
        let deadline = spawned_at + Duration::from_millis(self.settings.boot_timeout_ms);
        loop {
            if let Some(Hypervisor::Systemd { systemctl, .. }) = &self.hypervisor {
                let state = systemd::state(systemctl, &self.name).await;
                if state == "failed" || state == "inactive" {
                    self.hypervisor = None;
                    return Err(format!(
                        "unit {} is {state} after start",
                        systemd::unit(&self.name)
                    ));
                }
            }
            if let Some(Hypervisor::Child(child)) = &mut self.hypervisor {
                if let Ok(Some(status)) = child.try_wait() {
                    self.hypervisor = None;
                    let last_line = last_console_line(&self.state_dir);
                    return Err(format!(
                        "hypervisor exited during start ({}): {last_line}",
                        ExitStatus::from_std(status).text
                    ));
                }
            }
            if socket.exists() && qmp::is_running(socket).await {
                return Ok(Some(spawned_at.elapsed().as_millis() as u64));
            }
            if Instant::now() >= deadline {
                // A hypervisor without QMP (not qemu) that is still alive
                // counts as running; its boot time is unknown.
                return if socket.exists() {
                    self.stop().await;
                    Err(format!(
                        "guest not running after {} ms",
                        self.settings.boot_timeout_ms
                    ))
                } else {
                    Ok(None)
                };
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    async fn on_exit(&mut self, status: ExitStatus, want: &Desired) {
        self.hypervisor = None;
        let _ = std::fs::remove_file(self.pid_file());
        let ran_ms = self
            .started_at
            .take()
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        self.last_exit = Some(status.text.clone());
        let Desired::Run(plan) = want else {
            self.report(Phase::Stopped, String::new()).await;
            return;
        };
        tracing::warn!(vm = %self.name, status = %status.text, "hypervisor exited unasked");
        let restart = match self.settings.restart_policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !status.success,
            RestartPolicy::Always => true,
        };
        if !restart {
            self.blocked_plan = Some(plan.clone());
            let phase = if status.success {
                Phase::Stopped
            } else {
                Phase::Failed
            };
            let reason = if status.success {
                String::new()
            } else {
                "hypervisor exited unasked; restart policy does not restart it".into()
            };
            self.report(phase, reason).await;
            return;
        }
        if ran_ms >= STABLE_RUN_MS {
            self.failures_in_row = 0;
        }
        let backoff_ms =
            (RESTART_BACKOFF_MS_MIN << self.failures_in_row.min(16)).min(RESTART_BACKOFF_MS_MAX);
        self.failures_in_row += 1;
        self.restarts += 1;
        self.restart_at = Some(Instant::now() + Duration::from_millis(backoff_ms));
        self.report(
            Phase::Failed,
            format!("hypervisor exited unasked; restarting in {backoff_ms} ms"),
        )
        .await;
    }

    /// Stops the hypervisor if one runs (see the module invariant).
    async fn stop(&mut self) {
        let Some(mut hypervisor) = self.hypervisor.take() else {
            return;
        };
        self.report(Phase::Stopping, String::new()).await;
        if let Hypervisor::Systemd { systemctl, .. } = &hypervisor {
            if let Err(error) = systemd::stop(systemctl, &self.name).await {
                tracing::warn!(vm = %self.name, %error, "systemctl stop failed");
            }
            self.report(Phase::Stopped, String::new()).await;
            return;
        }
        let half = Duration::from_millis(self.settings.stop_timeout_ms / 2);
        let shutdown = runner::current(&self.state_dir).join("bin/microvm-shutdown");
        if shutdown.is_file() {
            let _ = tokio::time::timeout(
                half,
                tokio::process::Command::new(&shutdown)
                    .current_dir(&self.state_dir)
                    .status(),
            )
            .await;
        } else {
            let socket = runner::qmp_socket(&self.state_dir, &self.name);
            if let Err(error) = qmp::execute(&socket, "quit").await {
                tracing::debug!(vm = %self.name, %error, "QMP quit failed");
            }
        }
        let mut status = tokio::time::timeout(half, hypervisor.wait(&self.name))
            .await
            .ok();
        for signal in [
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::Signal::SIGKILL,
        ] {
            if status.is_some() {
                break;
            }
            if let Some(pid) = hypervisor
                .pid()
                .filter(|pid| is_vm_process(*pid, &self.name))
            {
                tracing::warn!(vm = %self.name, pid, %signal, "hypervisor did not stop; signalling");
                process::signal(pid, signal);
            }
            status = tokio::time::timeout(half, hypervisor.wait(&self.name))
                .await
                .ok();
        }
        let _ = std::fs::remove_file(self.pid_file());
        let _ = std::fs::remove_file(runner::qmp_socket(&self.state_dir, &self.name));
        if let Some(status) = status {
            self.last_exit = Some(status.text);
        }
        self.report(Phase::Stopped, String::new()).await;
    }
}

fn last_console_line(state_dir: &Path) -> String {
    console::tail(state_dir, 1)
        .map(|(bytes, _)| String::from_utf8_lossy(&bytes).trim().to_string())
        .unwrap_or_default()
}
