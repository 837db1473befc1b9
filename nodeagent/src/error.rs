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
