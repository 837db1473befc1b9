//! The blixard daemon: configuration, the agent's wiring, gRPC services and
//! the Raft peer transport.
//!
//! Invariant: every RPC enters through [`services::Authorize`] and every
//! write reaches the cluster state only through the raft log.

pub mod agent;
pub mod bounds;
pub mod config;
pub mod controllers;
mod convert;
pub mod data_dir;
mod error;
pub mod handle;
#[cfg(not(madsim))]
pub mod idle;
pub mod listener;
pub mod mirror;
pub mod security;
pub mod services;
pub mod shutdown;
pub mod tokens;
pub mod transport;

pub use config::{Config, Overrides};
pub use error::Error;
