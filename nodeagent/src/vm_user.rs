//! Running hypervisors as an unprivileged user (`[agent] vm_user`).
//!
//! Invariant: with a VM user, a hypervisor runs with that user's uid, the
//! group of `/dev/kvm` (the user's own group where there is none) and no
//! supplementary groups, and it can write nothing of the agent's: the
//! VM's state directory stays the agent's (0711: passable, not listable),
//! its console log is an inherited descriptor, and its QMP socket is
//! bound by the agent and inherited as descriptor 3. So a hypervisor a
//! guest took over can plant no file or link where the agent (root)
//! writes. What it must read (its runner, kernel and initrd) is checked
//! reachable by mode bits before it starts, so a refusal names the file.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// The descriptor the hypervisor finds its QMP socket at.
pub const QMP_FD: i32 = 3;

/// The user hypervisors run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl VmUser {
    /// Looks `name` up (through the system's user database); the group is
    /// `kvm_device`'s when it exists, so the hypervisor may open it.
    pub fn resolve(name: &str, kvm_device: &Path) -> Result<Self> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| Error::Runner(format!("[agent] vm_user {name:?}: {e}")))?
            .ok_or_else(|| {
                Error::Runner(format!(
                    "[agent] vm_user {name:?}: no such user (create one: useradd --system \
                     --no-create-home --shell /usr/sbin/nologin {name})"
                ))
            })?;
        if user.uid.is_root() {
            return Err(Error::Runner(format!(
                "[agent] vm_user {name:?} is root; name an unprivileged user"
            )));
        }
        // Never root's group, whatever the device's (a container's bind
        // mount may be root:root).
        let gid = std::fs::metadata(kvm_device)
            .map(|device| device.gid())
            .ok()
            .filter(|gid| *gid != 0)
            .unwrap_or(user.gid.as_raw());
        if gid == 0 {
            return Err(Error::Runner(format!(
                "[agent] vm_user {name:?} has root's group; name an unprivileged user"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid,
        })
    }

    /// Whether this user may read `path`, passing every directory above
    /// it; the refusal names the first thing in the way. By mode bits
    /// (ACLs are not read).
    pub fn check_readable(&self, path: &Path) -> Result<()> {
        let refuse = |what: &Path, detail: String| {
            Err(Error::Runner(format!(
                "vm_user {} cannot read {}: {} {detail}",
                self.name,
                path.display(),
                what.display()
            )))
        };
        let resolved = path
            .canonicalize()
            .map_err(|e| Error::io(format!("resolve {}", path.display()), e))?;
        let mut ancestors: Vec<&Path> = resolved.ancestors().skip(1).collect();
        ancestors.reverse();
        for dir in ancestors {
            let metadata =
                std::fs::metadata(dir).map_err(|e| Error::io(format!("{}", dir.display()), e))?;
            if !self.allowed(&metadata, 0o1) {
                return refuse(
                    dir,
                    format!(
                        "is mode {:o} (make it passable: chmod o+x, or set [agent] state_dir \
                         elsewhere)",
                        metadata.permissions().mode() & 0o7777
                    ),
                );
            }
        }
        let metadata = std::fs::metadata(&resolved)
            .map_err(|e| Error::io(format!("{}", resolved.display()), e))?;
        if !self.allowed(&metadata, 0o4) {
            return refuse(
                &resolved,
                format!(
                    "is mode {:o} (make it readable: chmod o+r)",
                    metadata.permissions().mode() & 0o7777
                ),
            );
        }
        Ok(())
    }

    /// Whether the owner, group or other bits of `metadata` grant `bits`
    /// (0o4 read, 0o1 execute) to this user.
    fn allowed(&self, metadata: &std::fs::Metadata, bits: u32) -> bool {
        let mode = metadata.mode();
        let shift = match (metadata.uid() == self.uid, metadata.gid() == self.gid) {
            (true, _) => 6,
            (false, true) => 3,
            (false, false) => 0,
        };
        (mode >> shift) & bits == bits
    }
}

/// Refuses a directory the hypervisor's user could plant files or links
/// in: `dir` must be a real directory (not a link) owned by the agent's
/// user and writable by no one else, so whatever the agent opens, writes
/// or removes there is its own.
pub fn check_agent_owned(dir: &Path) -> Result<()> {
    let metadata =
        std::fs::symlink_metadata(dir).map_err(|e| Error::io(format!("{}", dir.display()), e))?;
    let agent = nix::unistd::geteuid().as_raw();
    let mode = metadata.mode();
    if !metadata.is_dir() || metadata.uid() != agent || mode & 0o022 != 0 {
        return Err(Error::Runner(format!(
            "{} must be a directory of the agent's user (uid {agent}) that no one else may              write (it is {}uid {}, mode {:o}); with [agent] vm_user the agent makes its own              state directories: point state_dir at one no other tool manages",
            dir.display(),
            if metadata.file_type().is_symlink() { "a link, " } else { "" },
            metadata.uid(),
            mode & 0o7777
        )));
    }
    Ok(())
}

/// Sets the hypervisor's child process up to drop what it may not keep:
/// it finds `socket` as [`QMP_FD`] (inherited across exec), may never gain
/// privileges again (`PR_SET_NO_NEW_PRIVS`: no set-uid binary lifts it),
/// and gets only `PATH` of the agent's environment. Returns the
/// descriptor the child copies from, which the caller keeps open until
/// the child is spawned.
pub fn prepare_child(
    command: &mut tokio::process::Command,
    socket: &std::os::unix::net::UnixListener,
) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // Above the standard descriptors (which the child's stdio replaces
    // before this runs) and above QMP_FD, so the copy below is always a
    // real dup2 that clears close-on-exec.
    // SAFETY: fcntl on a descriptor the listener owns; the result is a
    // new descriptor that the OwnedFd takes.
    let source = unsafe { libc::fcntl(socket.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if source == -1 {
        return Err(Error::io(
            "copy the QMP socket",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `source` was just returned by fcntl and is owned by no one else.
    let source = unsafe { std::os::fd::OwnedFd::from_raw_fd(source) };
    let raw = source.as_raw_fd();
    command.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    // SAFETY: runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: dup2 and prctl are.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(raw, QMP_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readability_follows_mode_bits_on_the_whole_path() {
        let dir = tempfile::tempdir().unwrap();
        let outsider = VmUser {
            name: "nobody".into(),
            uid: 65_534,
            gid: 65_534,
        };
        let chmod = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("vmlinuz");
        std::fs::write(&file, "k").unwrap();
        chmod(dir.path(), 0o711);
        chmod(&sub, 0o755);
        chmod(&file, 0o644);
        outsider.check_readable(&file).unwrap();
        chmod(&file, 0o600);
        let refused = outsider.check_readable(&file).unwrap_err().to_string();
        assert!(refused.contains("vmlinuz is mode 600"), "{refused}");
        chmod(&file, 0o644);
        chmod(&sub, 0o700);
        let refused = outsider.check_readable(&file).unwrap_err().to_string();
        assert!(refused.contains("sub is mode 700"), "{refused}");
        // The group's bits count for the user's group.
        let member = VmUser {
            gid: std::fs::metadata(&sub).unwrap().gid(),
            ..outsider.clone()
        };
        chmod(&sub, 0o710);
        member.check_readable(&file).unwrap();
        assert!(outsider.check_readable(&file).is_err());
    }

    #[test]
    fn root_and_unknown_users_are_refused() {
        let kvm = Path::new("/dev/kvm");
        assert!(VmUser::resolve("root", kvm)
            .unwrap_err()
            .to_string()
            .contains("is root"));
        assert!(VmUser::resolve("no-such-user-blixard", kvm)
            .unwrap_err()
            .to_string()
            .contains("useradd"));
        let nobody = VmUser::resolve("nobody", Path::new("/nonexistent")).unwrap();
        assert_ne!(nobody.uid, 0);
    }
}
