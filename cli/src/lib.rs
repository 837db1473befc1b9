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

/// Output into a pipe its reader closed (`blixard schema | head -2`) ends
/// the process as it ends a Unix filter: quietly, with status 141 (what a
/// shell reports for SIGPIPE). Rust ignores SIGPIPE, so such a write is
/// an error that `println!` (and clap's generators) turn into a panic;
/// this catches exactly those. SIGPIPE itself stays ignored: a client's
/// vectored write to a connection its node reset must stay an error, not
/// end the REPL or the dashboard.
pub fn end_quietly_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("Broken pipe") || message.contains("BrokenPipe") {
            std::process::exit(CLOSED_PIPE_STATUS);
        }
        default(info);
    }));
}

/// 128 + SIGPIPE, as a shell reports a filter SIGPIPE ended.
const CLOSED_PIPE_STATUS: i32 = 141;

/// Whether `error` is a write into a pipe its reader closed: an I/O error
/// itself (what `writeln!(stdout, ..)?` gives), never one deep inside a
/// network error (a node that reset a connection is unavailable, exit 4).
fn closed_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
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
        // `writeln!` into a closed pipe: as a panicking `println!` would.
        Err(error) if closed_pipe(&error) => ExitCode::from(CLOSED_PIPE_STATUS as u8),
        Err(error) => {
            exit::report(&error);
            exit::classify(&error).into()
        }
    }
}
