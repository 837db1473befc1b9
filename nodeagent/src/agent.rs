//! The node agent: one supervisor per VM that this node should hold.
//!
//! Invariants: exactly one supervisor task per VM name; a VM with state on
//! this node but no place in the plan is stopped and its state removed
//! (it was deleted, or assigned elsewhere); reports flow through one
//! bounded channel to the daemon.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::launcher::Launcher;
use crate::paths;
use crate::supervisor::{supervise, Desired, Settings, VmReport};

/// Reports buffered between supervisors and the daemon.
pub const REPORTS_QUEUED_MAX: usize = 256;

struct Supervised {
    desired: watch::Sender<Desired>,
    task: JoinHandle<()>,
}

pub struct NodeAgent {
    settings: Arc<Settings>,
    launcher: Arc<dyn Launcher>,
    supervisors: HashMap<String, Supervised>,
    reports: mpsc::Sender<VmReport>,
    scanned_state_root: bool,
}

impl NodeAgent {
    /// Returns the agent, which runs hypervisors through `launcher`, and
    /// the receiving end of its reports.
    pub fn new(
        settings: Arc<Settings>,
        launcher: Arc<dyn Launcher>,
    ) -> (Self, mpsc::Receiver<VmReport>) {
        let (reports, receiver) = mpsc::channel(REPORTS_QUEUED_MAX);
        let agent = Self {
            settings,
            launcher,
            supervisors: HashMap::new(),
            reports,
            scanned_state_root: false,
        };
        (agent, receiver)
    }

    /// Makes the supervised set match `plan` (every VM this node should
    /// hold, and whether it should run). Cheap when nothing changed.
    pub fn reconcile(&mut self, plan: &BTreeMap<String, Desired>) {
        self.supervisors.retain(|_, s| !s.task.is_finished());
        if !self.scanned_state_root {
            self.scanned_state_root = true;
            for name in self.leftover_state_dirs() {
                if !plan.contains_key(&name) {
                    tracing::info!(vm = %name, "state of a VM not assigned here: stopping and removing it");
                    self.set(&name, Desired::Remove);
                }
            }
        }
        for (name, desired) in plan {
            self.set(name, desired.clone());
        }
        let unplanned: Vec<String> = self
            .supervisors
            .keys()
            .filter(|name| !plan.contains_key(*name))
            .cloned()
            .collect();
        for name in unplanned {
            self.set(&name, Desired::Remove);
        }
    }

    fn set(&mut self, name: &str, desired: Desired) {
        if let Err(error) = paths::vm_state_dir(&self.settings.state_root, name) {
            tracing::error!(%error, "refusing to supervise a VM with this name");
            return;
        }
        if let Some(supervised) = self.supervisors.get(name) {
            supervised.desired.send_if_modified(|current| {
                let changed = *current != desired;
                *current = desired;
                changed
            });
            return;
        }
        let (sender, receiver) = watch::channel(desired);
        let task = tokio::spawn(supervise(
            name.to_string(),
            self.settings.clone(),
            self.launcher.clone(),
            receiver,
            self.reports.clone(),
        ));
        self.supervisors.insert(
            name.to_string(),
            Supervised {
                desired: sender,
                task,
            },
        );
    }

    fn leftover_state_dirs(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.settings.state_root) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.path().is_dir())
            .filter_map(|entry| entry.file_name().into_string().ok())
            // Only directories a VM could own: others are not ours to remove.
            .filter(|name| paths::vm_state_dir(&self.settings.state_root, name).is_ok())
            .collect()
    }

    /// Stops every VM this agent runs (keeping their state) and waits for
    /// the supervisors, at most `timeout`.
    pub async fn stop_all(mut self, timeout: Duration) {
        for supervised in self.supervisors.values() {
            let _ = supervised.desired.send(Desired::StopAndExit);
        }
        let tasks: Vec<JoinHandle<()>> = self.supervisors.drain().map(|(_, s)| s.task).collect();
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!("some VMs did not stop within {timeout:?}");
        }
    }
}
