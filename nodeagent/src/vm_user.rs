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
        let gid = std::fs::metadata(kvm_device).map_or(user.gid.as_raw(), |device| device.gid());
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

/// Makes the hypervisor's child process find `socket_fd` as [`QMP_FD`],
/// inherited across exec.
pub fn pass_qmp_socket(command: &mut tokio::process::Command, socket_fd: i32) {
    // SAFETY: runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: dup2 and fcntl are.
    unsafe {
        command.pre_exec(move || {
            let inherited = match socket_fd == QMP_FD {
                // dup2 onto itself keeps close-on-exec; clear it instead.
                true => libc::fcntl(QMP_FD, libc::F_SETFD, 0),
                false => libc::dup2(socket_fd, QMP_FD),
            };
            match inherited {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            }
        });
    }
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
