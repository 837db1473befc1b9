//! Where the client connects and with which token, from (first wins):
//! flags, the environment (`BLIXARD_ADDR`, `BLIXARD_TOKEN`,
//! `BLIXARD_CA_FILE`; clap reads
//! both), the client config file, the defaults (a CA pinned by `blixard
//! tls trust`).
//!
//! Invariant: a config file named explicitly must exist and parse; the
//! default one may be absent; a file with an unknown key or a bad value is
//! refused with its path, line and column, never half-read.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::exit::{self, Exit};

/// The client config file (TOML).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    /// gRPC address of any node.
    addr: Option<String>,
    /// Bearer token sent with every request.
    token: Option<String>,
    /// The cluster CA certificate (PEM): connect over TLS.
    ca_file: Option<PathBuf>,
    /// The REPL's key bindings: "emacs" (default) or "vi".
    edit_mode: Option<EditMode>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EditMode {
    #[default]
    Emacs,
    Vi,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: String,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub edit_mode: EditMode,
}

/// `$XDG_CONFIG_HOME/blixard/client.toml`, else `~/.config/blixard/client.toml`.
pub fn default_path() -> Option<PathBuf> {
    xdg_dir("XDG_CONFIG_HOME", ".config").map(|dir| dir.join("blixard/client.toml"))
}

/// Where `blixard tls trust` keeps a pinned CA, and where the client
/// looks for one when no CA file is named: `$XDG_CONFIG_HOME/blixard/ca.pem`.
pub fn pinned_ca_file() -> Option<PathBuf> {
    xdg_dir("XDG_CONFIG_HOME", ".config").map(|dir| dir.join("blixard/ca.pem"))
}

/// An XDG base directory: the variable if set and absolute, else
/// `$HOME/fallback`.
pub fn xdg_dir(variable: &str, fallback: &str) -> Option<PathBuf> {
    std::env::var_os(variable)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(fallback)))
}

fn read(path: &Path, explicit: bool) -> anyhow::Result<ClientFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(ClientFile::default())
        }
        Err(e) => {
            return Err(exit::error(
                Exit::Usage,
                format!("client config {}: {e}", path.display()),
            ))
        }
    };
    toml::from_str(&text).map_err(|e| {
        exit::error(
            Exit::Usage,
            format!("client config {}: {e}", path.display()),
        )
    })
}

/// Resolves the settings; `addr` and `token` are what flags or the
/// environment gave, `file` the config file named by flag or environment.
pub fn resolve(
    addr: Option<String>,
    token: Option<String>,
    ca_file: Option<PathBuf>,
    file: Option<PathBuf>,
) -> anyhow::Result<Settings> {
    let from_file = match (&file, default_path()) {
        (Some(path), _) => read(path, true)?,
        (None, Some(path)) => read(&path, false)?,
        (None, None) => ClientFile::default(),
    };
    Ok(Settings {
        addr: addr
            .or(from_file.addr)
            .unwrap_or_else(|| blixard_api::DEFAULT_ADDR.to_string()),
        token: token.or(from_file.token),
        ca_file: ca_file
            .or(from_file.ca_file)
            .or_else(|| pinned_ca_file().filter(|pinned| pinned.exists())),
        edit_mode: from_file.edit_mode.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(
            &path,
            "addr = \"10.0.0.1:7001\"\ntoken = \"s3cret\"\nedit_mode = \"vi\"\n",
        )
        .unwrap();
        let settings = resolve(None, None, None, Some(path.clone())).unwrap();
        assert_eq!(settings.addr, "10.0.0.1:7001");
        assert_eq!(settings.token.as_deref(), Some("s3cret"));
        assert_eq!(settings.edit_mode, EditMode::Vi);
        let settings = resolve(Some("10.0.0.2:7001".into()), None, None, Some(path)).unwrap();
        assert_eq!(settings.addr, "10.0.0.2:7001");
    }

    #[test]
    fn a_bad_file_is_refused_with_where_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(&path, "addr = \"a:1\"\nport = 7\n").unwrap();
        let error = resolve(None, None, None, Some(path.clone())).unwrap_err();
        let text = format!("{error:#}");
        assert!(
            text.contains("client.toml") && text.contains("line 2"),
            "{text}"
        );
        assert!(text.contains("unknown field `port`"), "{text}");
        assert_eq!(exit::classify(&error), Exit::Usage);

        let missing = resolve(None, None, None, Some(dir.path().join("nope.toml"))).unwrap_err();
        assert_eq!(exit::classify(&missing), Exit::Usage);
    }
}
