//! The per-VM console log: the hypervisor's stdout and stderr (the serial
//! console) appended to `console.log`, rotated by size.
//!
//! Invariant: the hypervisor writes through its own O_APPEND descriptor, so
//! the file survives an agent restart; rotation copies the log to
//! `console.log.1` and truncates in place (the hypervisor's descriptor stays
//! valid). Bytes written between the copy and the truncation are lost; the
//! log is for people, not for audit.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const CONSOLE_LOG: &str = "console.log";

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(CONSOLE_LOG)
}

/// Opens the log for a new hypervisor (append, created if missing).
pub fn open_for_hypervisor(state_dir: &Path) -> Result<File> {
    let path = path(state_dir);
    // Guests print secrets to their consoles too: private to the agent.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))
}

/// Rotates the log once it exceeds `bytes_max`.
pub fn rotate_if_larger(state_dir: &Path, bytes_max: u64) -> Result<bool> {
    let path = path(state_dir);
    let Ok(metadata) = std::fs::metadata(&path) else {
        return Ok(false);
    };
    if metadata.len() <= bytes_max {
        return Ok(false);
    }
    let rotated = state_dir.join(format!("{CONSOLE_LOG}.1"));
    std::fs::copy(&path, &rotated).map_err(|e| Error::io("rotate console log", e))?;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(0))
        .map_err(|e| Error::io("truncate console log", e))?;
    Ok(true)
}

/// The last `lines` lines of the log (with the rotated file before it if
/// needed), and the log's current length for a follower to continue from.
pub fn tail(state_dir: &Path, lines: usize) -> Result<(Vec<u8>, u64)> {
    let current = read_all(&path(state_dir))?;
    let offset = current.len() as u64;
    let mut text = current;
    if count_lines(&text) < lines {
        let mut older = read_all(&state_dir.join(format!("{CONSOLE_LOG}.1")))?;
        older.extend_from_slice(&text);
        text = older;
    }
    let start = start_of_last_lines(&text, lines);
    Ok((text[start..].to_vec(), offset))
}

/// Bytes appended since `offset`, and the new offset. A log that shrank
/// was rotated: read it from the start.
pub fn read_from(state_dir: &Path, offset: u64, bytes_max: usize) -> Result<(Vec<u8>, u64)> {
    let path = path(state_dir);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
    };
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat console log", e))?
        .len();
    let from = if len < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(from))
        .map_err(|e| Error::io("seek console log", e))?;
    let mut bytes = Vec::new();
    file.take(bytes_max as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read console log", e))?;
    let next = from + bytes.len() as u64;
    Ok((bytes, next))
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

fn count_lines(text: &[u8]) -> usize {
    text.iter().filter(|b| **b == b'\n').count()
}

fn start_of_last_lines(text: &[u8], lines: usize) -> usize {
    let mut seen = 0;
    // A trailing newline ends the last line; it does not start a new one.
    let end = text.len().saturating_sub(1);
    for index in (0..end).rev() {
        if text[index] == b'\n' {
            seen += 1;
            if seen == lines {
                return index + 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rotation_keeps_tail_and_followers_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open_for_hypervisor(dir.path()).unwrap();
        for i in 0..10 {
            writeln!(log, "line {i}").unwrap();
        }
        let (tail3, offset) = tail(dir.path(), 3).unwrap();
        assert_eq!(
            String::from_utf8(tail3).unwrap(),
            "line 7\nline 8\nline 9\n"
        );
        assert!(rotate_if_larger(dir.path(), 10).unwrap());
        writeln!(log, "after").unwrap();
        // The writer's descriptor still works and appends at the new end.
        let (bytes, next) = read_from(dir.path(), offset, 1024).unwrap();
        assert_eq!(String::from_utf8(bytes).unwrap(), "after\n");
        assert_eq!(next, 6);
        let (tail2, _) = tail(dir.path(), 2).unwrap();
        assert_eq!(String::from_utf8(tail2).unwrap(), "line 9\nafter\n");
    }
}
