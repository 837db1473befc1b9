//! Control loops. On the leader: placement, failover, drains and
//! autopilot (`leader`, over the pure `scheduler`, `failover`, `drain` and
//! `autopilot`). On every node: facts about itself (`facts`), fencing
//! (`fencing`), and the reconciler that makes the node run what is placed
//! on it and reports back.

pub mod autopilot;
pub mod drain;
pub mod facts;
pub mod failover;
pub mod fencing;
pub mod leader;
pub mod reconciler;
pub mod scheduler;
pub mod wake;
