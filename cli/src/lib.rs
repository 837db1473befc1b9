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

use std::future::Future;
use std::process::ExitCode;

use crate::cli::LogFormat;

/// Logs to stderr at `BLIXARD_LOG`'s filter, else `default_level`.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BLIXARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a binary's `main` future on a multi-threaded runtime; an error is
/// printed and becomes its exit code (`exit.rs`).
pub fn run_to_exit(main: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            exit::report(&error);
            exit::classify(&error).into()
        }
    }
}
