//! The one error type of the node agent.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The runner could not be prepared (bad paths, failed `nix build`).
    #[error("{0}")]
    Runner(String),
    /// A kernel or initrd that may not be given to a guest.
    #[error("{what} {source}")]
    Guest {
        what: &'static str,
        source: Box<Error>,
    },
    /// A combination of settings and plan this node cannot run.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The hypervisor ended before its guest ran.
    #[error("hypervisor exited during start ({status}): {console}")]
    ExitedDuringStart {
        status: String,
        /// The console log's last line.
        console: String,
    },
    /// A hypervisor still ran after SIGKILL (stuck in the kernel): it is
    /// still supervised, its pid file kept.
    #[error("hypervisor (pid {pid}) still runs after SIGKILL")]
    StillRunning { pid: u32 },
    /// The guest did not run within the boot timeout (it was stopped).
    #[error("guest not running after {boot_timeout_ms} ms")]
    BootTimeout { boot_timeout_ms: u64 },
    /// The QMP control socket misbehaved.
    #[error("QMP: {0}")]
    Qmp(String),
    /// `systemctl ARGS UNIT` did not finish in time, could not run, or
    /// failed (`detail`: its exit status and stderr).
    #[error("systemctl {args} {unit}: {detail}")]
    Systemctl {
        args: String,
        unit: String,
        detail: String,
    },
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
