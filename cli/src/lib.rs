//! The `blixard` command line as a library: the binary (`main.rs`) parses
//! and dispatches through it, and `blixard-bench` reuses its client
//! settings, output formats and local clusters.

pub mod cli;
pub mod client;
pub mod commands;
pub mod exit;
pub mod local;
pub mod output;
pub mod repl;
pub mod settings;
