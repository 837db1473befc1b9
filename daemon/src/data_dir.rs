//! Whose a data directory is, decided before anything in it is opened.
//!
//! Invariants:
//! - A data directory's identity (`identity.toml`: format, cluster id,
//!   node id) is written, durably, before its store is created, and
//!   never changes afterwards; the store records the same identity.
//! - A directory whose identity says it holds a node's store, but whose
//!   store is missing or empty, is refused: starting anyway would found or
//!   join as a node with no history (a voter that forgot its votes).
//! - A directory is started only as the node it belongs to.
//! - A cluster is founded only when asked (`bootstrap`, without join
//!   addresses), on an empty directory; a start that died before the raft
//!   state was founded finishes founding only if its identity says it is
//!   the founder.
//!
//! [`decide`] is pure; the file reading and writing around it is thin.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use blixard_consensus::{DataIdentity, DATA_FORMAT_VERSION, STORE_FILE};

use crate::Error;

/// Beside the store, in the data directory.
pub const IDENTITY_FILE: &str = "identity.toml";
/// A cluster id is this many random bytes, written as hex.
const CLUSTER_ID_BYTES: usize = 16;

/// What the store file looks like before it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFile {
    Missing,
    /// Zero bytes: emptied, or a start that died before LMDB wrote it.
    Empty,
    Present,
}

/// How this start goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The directory is this node's; its store holds what it held.
    Known(DataIdentity),
    /// The identity file is gone but the store may still name its owner
    /// (the store's record is checked once it is open).
    FromStore,
    /// A first start: found a new cluster.
    Bootstrap,
    /// A first start: join through the join addresses.
    Join,
}

/// The start-up decision (see the module invariants). `dir` only names
/// the directory in errors.
pub fn decide(
    dir: &Path,
    recorded: Option<&DataIdentity>,
    store: StoreFile,
    node_id: u64,
    bootstrap: bool,
    join: bool,
) -> Result<Start, Error> {
    let dir_text = dir.display().to_string();
    match recorded {
        Some(identity) => {
            if identity.node_id != node_id {
                return Err(Error::NotThisNode {
                    path: dir_text,
                    recorded: identity.node_id,
                    configured: node_id,
                });
            }
            match store {
                StoreFile::Present => Ok(Start::Known(identity.clone())),
                StoreFile::Missing | StoreFile::Empty => Err(Error::StoreLost {
                    path: dir_text,
                    node_id,
                    cluster_id: identity.cluster_id.clone(),
                    what: if store == StoreFile::Missing {
                        "missing"
                    } else {
                        "empty"
                    },
                }),
            }
        }
        None if store == StoreFile::Present => Ok(Start::FromStore),
        // Founding "unless a join address answers" would found a second
        // cluster whenever the others are down or cut off; a first start
        // does one or the other.
        None if join && bootstrap => Err(Error::BootstrapAndJoin { path: dir_text }),
        None if join => Ok(Start::Join),
        None if bootstrap => Ok(Start::Bootstrap),
        None => Err(Error::NothingToJoin {
            path: dir_text,
            what: "is empty",
        }),
    }
}

/// Checks the identity the store records against the one beside it (or
/// adopts the store's when the file is gone).
pub fn reconcile(
    dir: &Path,
    file: Option<&DataIdentity>,
    store: Option<&DataIdentity>,
) -> Result<DataIdentity, Error> {
    match (file, store) {
        // Whose it is: the cluster and the node (the founder flag only
        // says how the first start went).
        (Some(file), Some(store))
            if (&file.cluster_id, file.node_id) != (&store.cluster_id, store.node_id) =>
        {
            Err(Error::IdentityMismatch {
                path: dir.display().to_string(),
                file: describe(file),
                store: describe(store),
            })
        }
        // The store's record is written first and so is the one to keep.
        (_, Some(identity)) | (Some(identity), None) => Ok(identity.clone()),
        (None, None) => Err(Error::IdentityMissing {
            path: dir.display().to_string(),
        }),
    }
}

fn describe(identity: &DataIdentity) -> String {
    format!(
        "node {} of cluster {}",
        identity.node_id, identity.cluster_id
    )
}

/// A new cluster's id.
pub fn new_cluster_id() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; CLUSTER_ID_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A cluster id that is not one (its text echoed short).
#[derive(Debug, thiserror::Error)]
#[error("{echo:?} is not a cluster id ({} lowercase hex digits)", 2 * CLUSTER_ID_BYTES)]
pub struct BadClusterId {
    echo: String,
}

/// Checks a cluster id from outside (a file, a store, a peer's answer).
pub fn check_cluster_id(id: &str) -> Result<(), BadClusterId> {
    let well_formed = id.len() == 2 * CLUSTER_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if well_formed {
        Ok(())
    } else {
        Err(BadClusterId {
            echo: blixard_api::validate::echo(id),
        })
    }
}

pub fn identity_path(dir: &Path) -> PathBuf {
    dir.join(IDENTITY_FILE)
}

/// How the store file in `dir` looks.
pub fn store_file(dir: &Path) -> Result<StoreFile, Error> {
    let path = dir.join(STORE_FILE);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.len() == 0 => Ok(StoreFile::Empty),
        Ok(_) => Ok(StoreFile::Present),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreFile::Missing),
        Err(source) => Err(Error::DataDir {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Reads `identity.toml` (`None` when there is none).
pub fn read_identity(dir: &Path) -> Result<Option<DataIdentity>, Error> {
    let path = identity_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::DataDir {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let bad = |detail: String| Error::IdentityUnreadable {
        path: path.display().to_string(),
        detail,
    };
    let identity: DataIdentity = toml::from_str(&text).map_err(|e| bad(e.message().into()))?;
    if identity.format_version != DATA_FORMAT_VERSION {
        return Err(bad(format!(
            "format_version {} (this blixard reads {DATA_FORMAT_VERSION})",
            identity.format_version
        )));
    }
    check_cluster_id(&identity.cluster_id).map_err(|e| bad(e.to_string()))?;
    if identity.node_id == 0 {
        return Err(bad("node_id 0".into()));
    }
    Ok(Some(identity))
}

/// Writes `identity.toml` durably: a new file, synced, renamed into
/// place, and the directory synced, so a crash leaves either no file or
/// the whole one.
pub fn write_identity(dir: &Path, identity: &DataIdentity) -> Result<(), Error> {
    let path = identity_path(dir);
    let io_error = |source| Error::DataDir {
        path: path.display().to_string(),
        source,
    };
    let text = format!(
        "# Written by blixard on this data directory's first start; never edit it.\n\
         # It names the node and cluster the store beside it belongs to.\n{}",
        toml::to_string(identity).expect("an identity always encodes")
    );
    let partial = dir.join(format!("{IDENTITY_FILE}.partial"));
    let mut file = std::fs::File::create(&partial).map_err(io_error)?;
    file.write_all(text.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    drop(file);
    std::fs::rename(&partial, &path).map_err(io_error)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(node_id: u64) -> DataIdentity {
        DataIdentity {
            format_version: DATA_FORMAT_VERSION,
            cluster_id: new_cluster_id(),
            node_id,
            founder: false,
        }
    }

    #[test]
    fn a_first_start_founds_only_when_asked_and_joins_when_it_can() {
        let dir = Path::new("/d");
        for store in [StoreFile::Missing, StoreFile::Empty] {
            assert_eq!(
                decide(dir, None, store, 1, true, false).unwrap(),
                Start::Bootstrap
            );
            assert_eq!(
                decide(dir, None, store, 1, false, true).unwrap(),
                Start::Join
            );
            // Both given: refused (founding when no join address answers
            // would found a second cluster whenever the others are down).
            let both = decide(dir, None, store, 1, true, true).unwrap_err();
            assert!(
                both.to_string().contains("--bootstrap and --join"),
                "{both}"
            );
            let refused = decide(dir, None, store, 1, false, false).unwrap_err();
            assert!(refused.to_string().contains("--bootstrap"), "{refused}");
        }
    }

    #[test]
    fn a_directory_that_lost_its_store_is_refused_with_what_to_do() {
        let mine = identity(3);
        for store in [StoreFile::Missing, StoreFile::Empty] {
            for (bootstrap, join) in [(true, false), (false, true), (false, false)] {
                let refused =
                    decide(Path::new("/d"), Some(&mine), store, 3, bootstrap, join).unwrap_err();
                let text = refused.to_string();
                assert!(text.contains("/d"), "{text}");
                assert!(text.contains(&mine.cluster_id), "{text}");
                assert!(text.contains("remove-node 3"), "{text}");
            }
        }
        assert_eq!(
            decide(
                Path::new("/d"),
                Some(&mine),
                StoreFile::Present,
                3,
                false,
                true
            )
            .unwrap(),
            Start::Known(mine)
        );
    }

    #[test]
    fn a_directory_starts_only_as_its_node() {
        let refused = decide(
            Path::new("/d"),
            Some(&identity(3)),
            StoreFile::Present,
            4,
            false,
            false,
        )
        .unwrap_err();
        let text = refused.to_string();
        assert!(text.contains("node 3") && text.contains("node 4"), "{text}");
    }

    #[test]
    fn the_store_and_the_file_must_agree() {
        let dir = Path::new("/d");
        let a = identity(1);
        let b = identity(1);
        assert_eq!(reconcile(dir, Some(&a), None).unwrap(), a);
        assert_eq!(reconcile(dir, None, Some(&a)).unwrap(), a);
        assert_eq!(reconcile(dir, Some(&a), Some(&a)).unwrap(), a);
        let mismatch = reconcile(dir, Some(&a), Some(&b)).unwrap_err().to_string();
        assert!(
            mismatch.contains(&a.cluster_id) && mismatch.contains(&b.cluster_id),
            "{mismatch}"
        );
        assert!(reconcile(dir, None, None).is_err());
    }

    #[test]
    fn identities_round_trip_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_identity(dir.path()).unwrap(), None);
        let mine = identity(7);
        write_identity(dir.path(), &mine).unwrap();
        assert_eq!(read_identity(dir.path()).unwrap(), Some(mine.clone()));
        let path = identity_path(dir.path());
        for (text, names) in [
            (
                "format_version = 2\ncluster_id = \"x\"\nnode_id = 1\n",
                "format_version 2",
            ),
            (
                "format_version = 1\ncluster_id = \"x\"\nnode_id = 1\n",
                "not a cluster id",
            ),
            ("garbage", "identity.toml"),
            ("", "identity.toml"),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = read_identity(dir.path()).unwrap_err().to_string();
            assert!(error.contains(names), "{text:?}: {error}");
        }
    }

    #[test]
    fn cluster_ids_are_checked() {
        assert!(check_cluster_id(&new_cluster_id()).is_ok());
        assert_ne!(new_cluster_id(), new_cluster_id());
        for bad in [
            "",
            "abc",
            &"A".repeat(32),
            &"a".repeat(33),
            &"z".repeat(10_000),
        ] {
            let error = check_cluster_id(bad).unwrap_err().to_string();
            assert!(error.len() < 200, "{error}");
        }
    }
}
