//! What happens to a VM whose hypervisor exited while it should run.
//!
//! Invariant: pure. The decision depends only on the policy, how the
//! hypervisor ended, how long it ran and how many failures came before
//! in a row; the wait doubles per failure in a row from
//! [`RESTART_BACKOFF_MS_MIN`] up to [`RESTART_BACKOFF_MS_MAX`], and a VM
//! that ran [`STABLE_RUN_MS`] counts as healthy again.

use serde::{Deserialize, Serialize};

pub const RESTART_BACKOFF_MS_MIN: u64 = 500;
pub const RESTART_BACKOFF_MS_MAX: u64 = 30_000;
/// A VM that ran this long before dying restarts without backoff history.
pub const STABLE_RUN_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Never,
    /// Restart a hypervisor that exits unasked with a failure status.
    #[default]
    OnFailure,
    /// Restart a hypervisor that exits unasked, whatever its status.
    Always,
}

/// The decision for one unasked exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Leave it stopped (the policy does not restart it); `failed` when it
    /// exited with a failure status.
    Leave { failed: bool },
    /// Start it again in `backoff_ms`; `failures_in_row` counts this exit.
    Restart {
        backoff_ms: u64,
        failures_in_row: u32,
    },
}

/// What to do when a hypervisor that should run exits: `success` is its
/// exit status, `ran_ms` how long it ran, `failures_in_row` the unasked
/// exits before it without a stable run between.
pub fn restart_decision(
    policy: RestartPolicy,
    success: bool,
    ran_ms: u64,
    failures_in_row: u32,
) -> AfterExit {
    let restart = match policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => !success,
        RestartPolicy::Always => true,
    };
    if !restart {
        return AfterExit::Leave { failed: !success };
    }
    let before = if ran_ms >= STABLE_RUN_MS {
        0
    } else {
        failures_in_row
    };
    let backoff_ms = RESTART_BACKOFF_MS_MIN
        .checked_shl(before.min(16))
        .unwrap_or(u64::MAX)
        .min(RESTART_BACKOFF_MS_MAX);
    AfterExit::Restart {
        backoff_ms,
        failures_in_row: before.saturating_add(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_decides_whether_it_restarts() {
        use RestartPolicy::*;
        for (policy, success, restarts) in [
            (Never, false, false),
            (Never, true, false),
            (OnFailure, false, true),
            (OnFailure, true, false),
            (Always, true, true),
            (Always, false, true),
        ] {
            let decision = restart_decision(policy, success, 0, 0);
            assert_eq!(
                matches!(decision, AfterExit::Restart { .. }),
                restarts,
                "{policy:?}, success {success}: {decision:?}"
            );
            if !restarts {
                assert_eq!(decision, AfterExit::Leave { failed: !success });
            }
        }
    }

    #[test]
    fn failures_in_a_row_double_the_wait_up_to_the_cap() {
        let mut failures = 0;
        let mut waits = Vec::new();
        for _ in 0..10 {
            let AfterExit::Restart {
                backoff_ms,
                failures_in_row,
            } = restart_decision(RestartPolicy::OnFailure, false, 1_000, failures)
            else {
                panic!("on-failure restarts a failure");
            };
            assert_eq!(failures_in_row, failures + 1);
            failures = failures_in_row;
            waits.push(backoff_ms);
        }
        assert_eq!(
            waits,
            [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000, 30_000]
        );
        // Counts far past the cap neither overflow nor wrap.
        assert_eq!(
            restart_decision(RestartPolicy::Always, false, 0, u32::MAX),
            AfterExit::Restart {
                backoff_ms: RESTART_BACKOFF_MS_MAX,
                failures_in_row: u32::MAX
            }
        );
    }

    #[test]
    fn a_stable_run_forgets_earlier_failures() {
        assert_eq!(
            restart_decision(RestartPolicy::OnFailure, false, STABLE_RUN_MS, 7),
            AfterExit::Restart {
                backoff_ms: RESTART_BACKOFF_MS_MIN,
                failures_in_row: 1
            }
        );
        assert_eq!(
            restart_decision(RestartPolicy::OnFailure, false, STABLE_RUN_MS - 1, 7),
            AfterExit::Restart {
                backoff_ms: RESTART_BACKOFF_MS_MAX,
                failures_in_row: 8
            }
        );
    }
}
