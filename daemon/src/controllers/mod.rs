//! Control loops: the scheduler (on the leader) places VMs on nodes; the
//! reconciler (on every node with an agent) makes the node run what is
//! placed on it and reports back.

pub mod reconciler;
pub mod scheduler;
