//! Where a VM's files live on this node.
//!
//! Invariant: every path derived from a VM name is `STATE_ROOT/NAME` for a
//! NAME that is a DNS label (so it is one path component: no `/`, no `..`,
//! no white space), created private to the agent (0700). A name from the
//! cluster state was checked when it was proposed and again when it was
//! applied; this is the last check before a directory is filled, run or
//! removed recursively, so a bad name never reaches the file system.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The state directory of VM `name` under `state_root`.
pub fn vm_state_dir(state_root: &Path, name: &str) -> Result<PathBuf> {
    blixard_api::validate::vm_name(name).map_err(|e| Error::Runner(e.to_string()))?;
    let dir = state_root.join(name);
    // A DNS label is one normal component; checked anyway, since a
    // recursive delete follows from this path.
    assert_eq!(
        dir.parent(),
        Some(state_root),
        "{name:?} left the state root"
    );
    Ok(dir)
}

/// Creates `dir` (and missing parents) readable by the agent only; a
/// directory that exists keeps its mode (microvm.nix's host module makes
/// its own, owned by the `microvm` user).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("create {}", dir.display()), e))
}

/// `path` as a file a guest may be given: an absolute path that, with
/// every link resolved, lies outside each of `private_dirs` (the agent's
/// data directory: its keys, tokens and raft store). Returns the resolved
/// path, which is what the hypervisor is then told to open.
pub fn guest_file(path: &Path, private_dirs: &[PathBuf]) -> Result<PathBuf> {
    let refuse = |reason: String| Err(Error::Runner(format!("{} {reason}", path.display())));
    if !path.is_absolute() {
        return refuse("is not an absolute path".into());
    }
    let Ok(resolved) = path.canonicalize() else {
        return refuse("does not exist".into());
    };
    if !resolved.is_file() {
        return refuse("is not a file".into());
    }
    for private in private_dirs {
        let private = private.canonicalize().unwrap_or_else(|_| private.clone());
        if resolved.starts_with(&private) {
            return refuse(format!(
                "lies in {}, whose files are never given to a guest",
                private.display()
            ));
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_dns_label_names_become_directories() {
        let root = Path::new("/var/lib/blixard/vms");
        assert_eq!(vm_state_dir(root, "web-1").unwrap(), root.join("web-1"));
        for bad in ["/srv/data", "..", "a/b", "a\nid>x;#", "", "A"] {
            assert!(vm_state_dir(root, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn guests_get_no_file_from_the_agents_own_directory() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("tls")).unwrap();
        std::fs::write(data.join("tls/node-key.pem"), "secret").unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, "kernel").unwrap();
        let link = dir.path().join("initrd");
        std::os::unix::fs::symlink(data.join("tls/node-key.pem"), &link).unwrap();
        let private = [data.clone()];
        assert_eq!(
            guest_file(&kernel, &private).unwrap(),
            kernel.canonicalize().unwrap()
        );
        assert!(guest_file(&data.join("tls/node-key.pem"), &private).is_err());
        assert!(guest_file(&link, &private).is_err(), "a link into it");
        assert!(guest_file(Path::new("vmlinuz"), &private).is_err());
        assert!(guest_file(&dir.path().join("missing"), &private).is_err());
    }

    #[test]
    fn new_state_directories_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let vm = dir.path().join("vms/web");
        create_private_dir(&vm).unwrap();
        let mode = std::fs::metadata(&vm).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
