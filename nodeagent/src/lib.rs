//! The node agent: turns the VMs the cluster assigns to this node into
//! running microVMs through the microvm.nix runner contract
//! (`current/bin/microvm-run` run in the VM's state directory), supervises
//! them, and reports what really happens.
//!
//! Invariant: everything the agent knows about a VM it can re-learn from
//! the VM's state directory (`current`, `pid`, the QMP socket, the console
//! log), so an agent restart adopts running VMs instead of doubling them.

pub mod accel;
pub mod agent;
pub mod child;
pub mod console;
mod error;
pub mod launcher;
pub mod paths;
pub mod process;
pub mod qmp;
pub mod restart;
pub mod runner;
pub mod supervisor;
pub mod systemd;
pub mod vm_user;

pub use accel::{Accel, AccelMode};
pub use agent::NodeAgent;
pub use error::{Error, Result};
pub use launcher::{ExitStatus, Hypervisor, Launched, Launcher, VmDir};
pub use restart::RestartPolicy;
pub use supervisor::{Desired, Phase, PlanSource, Settings, VmPlan, VmReport};
pub use systemd::Supervision;
pub use vm_user::VmUser;
