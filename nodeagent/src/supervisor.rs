//! One task per VM on this node: starts its hypervisor through the node's
//! [`Launcher`], watches it, restarts it per policy and stops it,
//! reporting each phase.
//!
//! Invariants:
//! - At most one hypervisor per VM: one that runs already is adopted
//!   before anything is started.
//! - A start that fails is not retried for the same plan (the reason is
//!   reported); a VM that dies after it ran is restarted as
//!   [`restart_decision`] says.
//! - A VM is reported `Stopped` only once its hypervisor has stopped; a
//!   stop that fails stays `Stopping` (the cluster still counts the VM as
//!   on this node, so it is not started elsewhere) and is tried again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::accel::Accel;
use crate::console;
use crate::launcher::{ExitStatus, Hypervisor, Launched, Launcher, VmDir};
use crate::paths;
use crate::restart::{restart_decision, AfterExit, RestartPolicy};
use crate::systemd::Supervision;

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

const ROTATE_CHECK_INTERVAL_MS: u64 = 1_000;
/// A stop that failed (systemctl did not answer) is tried again after this.
const STOP_RETRY_MS: u64 = 5_000;

/// Runs until told to `Remove` or `StopAndExit`, or until the agent drops
/// the desired-state sender (then the VM is left running for adoption).
pub async fn supervise(
    name: String,
    settings: Arc<Settings>,
    launcher: Arc<dyn Launcher>,
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
        launcher,
        reports,
        hypervisor: None,
        started_at: None,
        restarts: 0,
        failures_in_row: 0,
        blocked_plan: None,
        restart_at: None,
        stop_retry_at: None,
        discarding: None,
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
        let wake_at = vm.restart_at.or(vm.stop_retry_at);
        tokio::select! {
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            status = wait_for(&mut vm.hypervisor) => {
                vm.on_exit(status, &want).await;
            }
            // Due: `converge` restarts, or retries the stop (which keeps
            // `stop_retry_at` until it is done, so it is not told twice).
            _ = sleep_until(wake_at) => vm.restart_at = None,
            _ = rotate.tick() => {
                if let Err(error) = console::rotate_if_larger(&vm.state_dir, vm.settings.console_log_bytes_max) {
                    tracing::warn!(vm = %vm.name, %error, "console log rotation failed");
                }
            }
        }
    }
}

async fn wait_for(hypervisor: &mut Option<Box<dyn Hypervisor>>) -> ExitStatus {
    match hypervisor {
        Some(hypervisor) => hypervisor.wait().await,
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
    launcher: Arc<dyn Launcher>,
    reports: mpsc::Sender<VmReport>,
    hypervisor: Option<Box<dyn Hypervisor>>,
    started_at: Option<Instant>,
    restarts: u32,
    failures_in_row: u32,
    /// A plan whose start failed (or whose VM gave up): not retried until
    /// the plan or the desired state changes.
    blocked_plan: Option<VmPlan>,
    restart_at: Option<Instant>,
    /// After a failed stop: not tried again before this.
    stop_retry_at: Option<Instant>,
    /// Why the start failed, while the hypervisor it left is being
    /// stopped: reported (as `Failed`) once that hypervisor is gone.
    discarding: Option<String>,
    last_reported: Option<Phase>,
    /// How the hypervisor last exited; kept across restarts.
    last_exit: Option<String>,
}

impl Supervisor {
    fn dir(&self) -> VmDir<'_> {
        VmDir {
            name: &self.name,
            state_dir: &self.state_dir,
        }
    }

    async fn report(&mut self, phase: Phase, reason: String) {
        self.report_boot(phase, None, reason).await;
    }

    async fn report_boot(&mut self, phase: Phase, boot_ms: Option<u64>, reason: String) {
        self.last_reported = Some(phase);
        let report = VmReport {
            name: self.name.clone(),
            phase,
            pid: self.hypervisor.as_ref().and_then(|h| h.pid()),
            boot_ms,
            exit_status: self.last_exit.clone(),
            restarts: self.restarts,
            reason,
        };
        let _ = self.reports.send(report).await;
    }

    /// Takes over a hypervisor left running by an earlier agent.
    async fn adopt(&mut self) {
        let Some(hypervisor) = self.launcher.adopt(self.dir()).await else {
            return;
        };
        self.hypervisor = Some(hypervisor);
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
                if self.hypervisor.is_some() && self.stop_retry_at.is_some() {
                    if self.discarding.is_some() {
                        // What a failed start left must go, whatever is
                        // wanted (its retry waits as any other).
                        self.stop(false).await;
                    } else {
                        // Wanted again while a failed stop was to be
                        // retried: it runs, so it is reported running.
                        self.stop_retry_at = None;
                        self.report(Phase::Running, String::new()).await;
                    }
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
                self.stop(false).await;
                if self.hypervisor.is_none() && self.last_reported != Some(Phase::Stopped) {
                    self.report(Phase::Stopped, String::new()).await;
                }
                true
            }
            Desired::Remove => {
                self.stop(false).await;
                if self.hypervisor.is_some() {
                    // Its state stays while it may run; removal is tried
                    // again with the stop.
                    return true;
                }
                if let Err(error) = std::fs::remove_dir_all(&self.state_dir) {
                    if error.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(vm = %self.name, %error, "could not remove state directory");
                    }
                }
                false
            }
            Desired::StopAndExit => {
                // The last chance: no waiting out a retry.
                self.stop(true).await;
                false
            }
        }
    }

    async fn start(&mut self, plan: &VmPlan) {
        self.report(Phase::Starting, String::new()).await;
        let launched = match paths::create_private_dir(&self.state_dir) {
            Ok(()) => self.launcher.launch(self.dir(), plan).await,
            Err(error) => Err(error),
        };
        match launched {
            Ok(Launched {
                hypervisor,
                boot_ms,
            }) => {
                self.hypervisor = Some(hypervisor);
                self.started_at = Some(Instant::now());
                self.report_boot(Phase::Running, boot_ms, String::new())
                    .await;
            }
            Err(error) => {
                tracing::warn!(vm = %self.name, %error, "VM failed to start");
                self.blocked_plan = Some(plan.clone());
                // A start that failed half-way may have left a hypervisor
                // running (one that would not stop when its boot timed
                // out): supervised and stopped, never forgotten.
                if let Some(left) = self.launcher.adopt(self.dir()).await {
                    self.hypervisor = Some(left);
                    self.discarding = Some(error.to_string());
                    // Reports `Failed` once it is gone; `Stopping` while
                    // it is not.
                    self.stop(false).await;
                    return;
                }
                self.report(Phase::Failed, error.to_string()).await;
            }
        }
    }

    async fn on_exit(&mut self, status: ExitStatus, want: &Desired) {
        self.hypervisor = None;
        self.stop_retry_at = None;
        if let Some(reason) = self.discarding.take() {
            // What a failed start left has ended: the start's failure
            // stands (its plan stays blocked).
            self.last_exit = Some(status.text);
            self.report(Phase::Failed, reason).await;
            return;
        }
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
        match restart_decision(
            self.settings.restart_policy,
            status.success,
            ran_ms,
            self.failures_in_row,
        ) {
            AfterExit::Leave { failed } => {
                self.blocked_plan = Some(plan.clone());
                if failed {
                    let reason =
                        "hypervisor exited unasked; restart policy does not restart it".into();
                    self.report(Phase::Failed, reason).await;
                } else {
                    self.report(Phase::Stopped, String::new()).await;
                }
            }
            AfterExit::Restart {
                backoff_ms,
                failures_in_row,
            } => {
                self.failures_in_row = failures_in_row;
                self.restarts += 1;
                self.restart_at = Some(Instant::now() + Duration::from_millis(backoff_ms));
                self.report(
                    Phase::Failed,
                    format!("hypervisor exited unasked; restarting in {backoff_ms} ms"),
                )
                .await;
            }
        }
    }

    /// Stops the hypervisor if one runs. One that could not be stopped
    /// stays supervised (it may run) and `Stopping`, with the reason, and
    /// is tried again after [`STOP_RETRY_MS`]. `now`: the agent is
    /// leaving, so at once, and what fails is left to the next agent.
    async fn stop(&mut self, now: bool) {
        if !now && self.stop_retry_at.is_some_and(|at| at > Instant::now()) {
            return;
        }
        let Some(mut hypervisor) = self.hypervisor.take() else {
            return;
        };
        if self.stop_retry_at.is_none() {
            self.report(Phase::Stopping, String::new()).await;
        }
        match hypervisor.stop(self.settings.stop_timeout_ms).await {
            Ok(status) => {
                self.stop_retry_at = None;
                if let Some(status) = status {
                    self.last_exit = Some(status.text);
                }
                match self.discarding.take() {
                    Some(start_failed) => self.report(Phase::Failed, start_failed).await,
                    None => self.report(Phase::Stopped, String::new()).await,
                }
            }
            Err(error) => {
                tracing::warn!(vm = %self.name, %error, "stop failed");
                self.hypervisor = Some(hypervisor);
                self.stop_retry_at = Some(Instant::now() + Duration::from_millis(STOP_RETRY_MS));
                let reason = match now {
                    // The agent is going: the next one adopts it.
                    true => format!("stop failed: {error}; left to the next agent"),
                    false => format!("stop failed: {error}; trying again in {STOP_RETRY_MS} ms"),
                };
                self.report(Phase::Stopping, reason).await;
            }
        }
    }
}
