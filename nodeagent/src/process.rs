//! Facts about hypervisor processes read from /proc, and signals to them.
//!
//! Invariant: a pid is only treated as a VM's hypervisor when its argv[0]
//! is `microvm@NAME` (the runner contract's `exec -a`), so a recycled pid
//! is never adopted or signalled.

use std::path::Path;

/// Starts a runner at most this many times while its file is busy.
const TEXT_BUSY_ATTEMPTS: u32 = 6;
/// The first pause after a busy runner; each later one doubles.
const TEXT_BUSY_BACKOFF_MS: u64 = 10;

/// Calls `spawn` again while it fails with ETXTBSY, pausing a little
/// longer each time (about 0.3 s in all).
///
/// A runner file is closed before it is run, but a process another
/// thread forks at that moment inherits the writing descriptor until it
/// execs, and the kernel refuses to run a file open for writing: the
/// refusal passes within moments, so it is retried, not reported.
pub async fn spawn_retrying_busy<T>(
    mut spawn: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let mut attempt = 1;
    loop {
        match spawn() {
            Err(error)
                if error.raw_os_error() == Some(libc::ETXTBSY) && attempt < TEXT_BUSY_ATTEMPTS =>
            {
                let pause_ms = TEXT_BUSY_BACKOFF_MS << (attempt - 1);
                tracing::debug!(attempt, pause_ms, "runner file busy; starting it again");
                tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// The argv[0] every runner gives the hypervisor of VM `name`.
pub fn process_name(name: &str) -> String {
    format!("microvm@{name}")
}

/// True when `pid` is alive and is the hypervisor of VM `name`.
pub fn is_vm_process(pid: u32, name: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    argv0 == process_name(name).as_bytes() && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1;
            after_name
                .split_whitespace()
                .next()
                .map(|state| state == "Z")
        })
        .unwrap_or(true)
}

/// Sends `signal` to `pid` (the caller checked with `is_vm_process` that
/// it is the VM's hypervisor); a process already gone is no error.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Reads the pid file; `None` when absent or garbled.
pub fn read_pid_file(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// CPU time and resident memory of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_ms: u64,
    pub rss_bytes: u64,
}

/// Reads `/proc/PID/stat` (utime+stime, rss pages).
pub fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields after the command name start at "state" (field 3 in proc(5)).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    let constant = |name| {
        nix::unistd::sysconf(name)
            .ok()
            .flatten()
            .map_or(1, |value| value.max(1) as u64)
    };
    let ticks_per_second = constant(nix::unistd::SysconfVar::CLK_TCK);
    let page_bytes = constant(nix::unistd::SysconfVar::PAGE_SIZE);
    Some(Usage {
        cpu_ms: (utime + stime) * 1000 / ticks_per_second,
        rss_bytes: rss_pages * page_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_a_vm_and_has_usage() {
        let me = std::process::id();
        assert!(!is_vm_process(me, "anything"));
        let usage = usage(me).unwrap();
        assert!(usage.rss_bytes > 0);
    }

    /// Goal: a runner whose file is still open for writing somewhere (a
    /// sibling's fork) starts once it is closed, and one that stays busy
    /// fails with the kernel's reason. Method: a real script held open for
    /// writing; the first refusal closes it.
    #[tokio::test]
    async fn a_busy_runner_is_started_again() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("microvm-run");
        let open_for_writing = || {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o755)
                .open(&script)
                .unwrap();
            std::io::Write::write_all(&mut file, b"#!/bin/sh\nexit 0\n").unwrap();
            file
        };
        let mut writer = Some(open_for_writing());
        let mut attempts = 0;
        let mut child = spawn_retrying_busy(|| {
            attempts += 1;
            let spawned = std::process::Command::new(&script).spawn();
            if spawned.is_err() {
                writer = None;
            }
            spawned
        })
        .await
        .expect("the runner starts once its file is closed");
        assert!(child.wait().unwrap().success());
        assert_eq!(attempts, 2, "the first start found the file busy");

        let _held = open_for_writing();
        let mut attempts = 0;
        let busy = spawn_retrying_busy(|| {
            attempts += 1;
            std::process::Command::new(&script).spawn()
        })
        .await
        .unwrap_err();
        assert_eq!(busy.raw_os_error(), Some(libc::ETXTBSY), "{busy}");
        assert_eq!(attempts, TEXT_BUSY_ATTEMPTS);
    }
}
