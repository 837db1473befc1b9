//! Supervision through systemd on NixOS hosts that use microvm.nix's host
//! module: the unit `microvm@NAME` runs `current/bin/microvm-run` from the
//! state directory and restarts it itself (`Restart=always`).
//!
//! Invariant: the agent only ever runs `systemctl start|stop|is-active|show`
//! on units named `microvm@NAME`; it never edits units.

use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the agent runs hypervisors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Supervision {
    /// `current/bin/microvm-run` as a child process of the agent.
    #[default]
    Child,
    /// `systemctl start microvm@NAME` (microvm.nix host module).
    Systemd,
}

const SYSTEMCTL_TIMEOUT_MS: u64 = 30_000;

pub fn unit(name: &str) -> String {
    format!("microvm@{name}.service")
}

/// Runs `systemctl ARGS UNIT`; returns its trimmed stdout, or why it failed.
async fn systemctl(binary: &str, args: &[&str], unit: &str) -> Result<String> {
    let failed = |detail: String| Error::Systemctl {
        args: args.join(" "),
        unit: unit.to_string(),
        detail,
    };
    let run = tokio::process::Command::new(binary)
        .args(args)
        .arg(unit)
        .stdin(Stdio::null())
        // A status poll abandoned mid-way must not linger.
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_millis(SYSTEMCTL_TIMEOUT_MS), run)
        .await
        .map_err(|_| failed(format!("took over {SYSTEMCTL_TIMEOUT_MS} ms")))?
        .map_err(|e| failed(format!("cannot run {binary}: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.success() || args == ["is-active"] {
        // is-active exits non-zero for inactive units; its stdout says which.
        Ok(stdout)
    } else {
        Err(failed(format!(
            "failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

pub async fn start(binary: &str, name: &str) -> Result<()> {
    systemctl(binary, &["start"], &unit(name)).await.map(|_| ())
}

pub async fn stop(binary: &str, name: &str) -> Result<()> {
    systemctl(binary, &["stop"], &unit(name)).await.map(|_| ())
}

/// "active", "inactive", "failed", "activating", ...
pub async fn state(binary: &str, name: &str) -> String {
    systemctl(binary, &["is-active"], &unit(name))
        .await
        .unwrap_or_else(|error| error.to_string())
}

pub async fn main_pid(binary: &str, name: &str) -> Option<u32> {
    systemctl(
        binary,
        &["show", "--property=MainPID", "--value"],
        &unit(name),
    )
    .await
    .ok()?
    .parse()
    .ok()
    .filter(|pid| *pid != 0)
}
