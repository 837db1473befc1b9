//! Exit codes, from what went wrong: scripts branch on them.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation failed (a VM failed, a conflict, `--wait` ran out of time); `diff`: there are changes |
//! | 2 | usage error: bad arguments or input (clap also exits 2); `diff`: a document that does not fit the cluster |
//! | 3 | not found: no such VM, node or replica group |
//! | 4 | cluster unavailable: no node reachable, no leader, a request timed out |
//! | 5 | not authenticated: no token, or one the cluster does not hold |
//! | 6 | permission denied: the credentials do not allow this |
//!
//! Invariant: every error a command returns maps to exactly one code,
//! found by walking its causes for a gRPC status, a validation error, a
//! transport error or an explicit [`Classified`].

use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Failed = 1,
    Usage = 2,
    NotFound = 3,
    Unavailable = 4,
    Unauthenticated = 5,
    PermissionDenied = 6,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// An error that says which exit code it deserves.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Classified {
    pub exit: Exit,
    pub message: String,
}

/// An `anyhow` error carrying `exit`.
pub fn error(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Classified {
        exit,
        message: message.into(),
    })
}

/// A gRPC status kept as the error's cause, so its code decides the exit.
#[derive(Debug, thiserror::Error)]
#[error("{} ({:?})", .0.message(), .0.code())]
pub struct StatusError(pub tonic::Status);

fn from_code(code: tonic::Code) -> Exit {
    use tonic::Code;
    match code {
        Code::NotFound => Exit::NotFound,
        Code::InvalidArgument | Code::OutOfRange => Exit::Usage,
        Code::Unavailable | Code::DeadlineExceeded => Exit::Unavailable,
        Code::Unauthenticated => Exit::Unauthenticated,
        Code::PermissionDenied => Exit::PermissionDenied,
        _ => Exit::Failed,
    }
}

/// The exit code `error` deserves.
/// Ends a command with an exit code and nothing more said: what it
/// printed says it all (`diff` that found changes).
#[derive(Debug, thiserror::Error)]
#[error("exit status {}", *.0 as u8)]
pub struct Quiet(pub Exit);

/// Prints `error` for the operator (on stderr), unless it is [`Quiet`].
pub fn report(error: &anyhow::Error) {
    if error.downcast_ref::<Quiet>().is_none() {
        eprintln!("error: {error:#}");
    }
}

pub fn classify(error: &anyhow::Error) -> Exit {
    for cause in error.chain() {
        if let Some(Quiet(exit)) = cause.downcast_ref::<Quiet>() {
            return *exit;
        }
        if let Some(classified) = cause.downcast_ref::<Classified>() {
            return classified.exit;
        }
        if let Some(StatusError(status)) = cause.downcast_ref::<StatusError>() {
            return from_code(status.code());
        }
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return from_code(status.code());
        }
        if cause
            .downcast_ref::<blixard_api::validate::ValidationError>()
            .is_some()
        {
            return Exit::Usage;
        }
        if cause.downcast_ref::<tonic::transport::Error>().is_some() {
            return Exit::Unavailable;
        }
    }
    Exit::Failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn causes_decide_the_code_however_deeply_wrapped() {
        let not_found = anyhow::Error::new(StatusError(tonic::Status::not_found("no VM web")))
            .context("vm status web");
        assert_eq!(classify(&not_found), Exit::NotFound);
        assert!(format!("{not_found:#}").contains("no VM web (NotFound)"));
        let no_leader = anyhow::Error::new(StatusError(tonic::Status::unavailable("no leader")));
        assert_eq!(classify(&no_leader), Exit::Unavailable);
        let bad = anyhow::Error::new(StatusError(tonic::Status::invalid_argument("vcpus 0")));
        assert_eq!(classify(&bad), Exit::Usage);
        let refused = anyhow::Error::new(StatusError(tonic::Status::failed_precondition("x")));
        assert_eq!(classify(&refused), Exit::Failed);
        let no_token = anyhow::Error::new(StatusError(tonic::Status::unauthenticated("token")));
        assert_eq!(classify(&no_token), Exit::Unauthenticated);
        let peer_only = anyhow::Error::new(StatusError(tonic::Status::permission_denied("peer")));
        assert_eq!(classify(&peer_only), Exit::PermissionDenied);
        let invalid = blixard_api::validate::vm_name("Not A Name").unwrap_err();
        assert_eq!(classify(&anyhow::Error::new(invalid)), Exit::Usage);
        let explicit = Err::<(), _>(error(Exit::Unavailable, "every node refused"))
            .context("connecting")
            .unwrap_err();
        assert_eq!(classify(&explicit), Exit::Unavailable);
        assert_eq!(classify(&anyhow::anyhow!("plain")), Exit::Failed);
    }
}
