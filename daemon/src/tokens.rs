//! Client tokens: how they are made, how a presented one is recognised,
//! and the management token a node writes when it founds a cluster.
//!
//! Invariant: a secret leaves this node exactly once, in the answer (or
//! the 0600 file) that creates it; the cluster state holds only its
//! SHA-256, and a request is recognised by hashing what it presents.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use blixard_consensus::{JoinToken, Token, TokenRole};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::Error;

pub use blixard_api::MANAGEMENT_TOKEN_FILE;
/// Secrets start with this, so scanners and people can tell them apart.
const SECRET_PREFIX: &str = "blx_";

/// Join tokens start with this; the accessor follows, then the secret.
const JOIN_PREFIX: &str = "blxj.";

/// A join token as made: its record for the cluster, the token for the
/// operator to hand to the new node.
pub struct NewJoinToken {
    pub token: JoinToken,
    pub secret: String,
}

/// A new join token, good until `expires_at_unix_ms`.
pub fn generate_join_token(now_unix_ms: u64, expires_at_unix_ms: u64) -> NewJoinToken {
    let accessor = random_hex(8);
    let secret = format!("{JOIN_PREFIX}{accessor}.{}", random_hex(32));
    NewJoinToken {
        token: JoinToken {
            accessor,
            secret_sha256: hash(&secret),
            created_at_unix_ms: now_unix_ms,
            expires_at_unix_ms,
            spent: None,
        },
        secret,
    }
}

/// The accessor a presented join token names (its record is looked up by
/// it, then the whole token's hash compared).
pub fn join_token_accessor(presented: &str) -> Option<&str> {
    let (accessor, _secret) = presented.strip_prefix(JOIN_PREFIX)?.split_once('.')?;
    (accessor.len() == 16 && accessor.bytes().all(|b| b.is_ascii_hexdigit())).then_some(accessor)
}

/// A token as made: its record for the cluster, its secret for the caller.
pub struct NewToken {
    pub token: Token,
    pub secret: String,
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buffer);
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a presented secret, lowercase hex.
pub fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new token named `name`, with 256 random bits of secret, good until
/// `expires_at_unix_ms` (or for ever).
pub fn generate(
    name: &str,
    role: TokenRole,
    now_unix_ms: u64,
    expires_at_unix_ms: Option<u64>,
) -> NewToken {
    let secret = format!("{SECRET_PREFIX}{}", random_hex(32));
    NewToken {
        token: Token {
            accessor: random_hex(8),
            name: name.to_string(),
            secret_sha256: hash(&secret),
            created_at_unix_ms: now_unix_ms,
            role,
            expires_at_unix_ms,
        },
        secret,
    }
}

/// Writes the management token's secret for the operator (0600),
/// replacing one an earlier, failed start left behind.
pub fn write_management_token(data_dir: &Path, secret: &str) -> Result<PathBuf, Error> {
    let path = data_dir.join(MANAGEMENT_TOKEN_FILE);
    let io = |source| Error::DataDir {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let _ = std::fs::remove_file(&path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| file.write_all(format!("{secret}\n").as_bytes()))
        .map_err(io)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_name_their_record_and_keep_only_a_hash() {
        let made = generate_join_token(1, 2);
        assert_eq!(
            join_token_accessor(&made.secret),
            Some(made.token.accessor.as_str())
        );
        assert_eq!(made.token.secret_sha256, hash(&made.secret));
        for bad in [
            "",
            "blxj.",
            "blxj.zz.x",
            "blx_0123456789abcdef.x",
            "blxj.0123456789abcdef",
        ] {
            assert_eq!(join_token_accessor(bad), None, "{bad}");
        }
        let command = blixard_consensus::Command::CreateJoinToken { token: made.token };
        assert_eq!(blixard_consensus::validate::command(&command), Ok(()));
    }

    #[test]
    fn secrets_are_random_and_only_their_hash_is_kept() {
        let a = generate("ci", TokenRole::Viewer, 1, None);
        let b = generate("ci", TokenRole::Viewer, 1, Some(2));
        assert!(b.token.is_valid_at(1) && !b.token.is_valid_at(2));
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.token.accessor, b.token.accessor);
        assert_eq!(a.token.secret_sha256, hash(&a.secret));
        assert!(!serde_json::to_string(&a.token).unwrap().contains(&a.secret));
        let command = blixard_consensus::Command::CreateToken { token: a.token };
        assert_eq!(blixard_consensus::validate::command(&command), Ok(()));
    }
}
