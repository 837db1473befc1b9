//! A minimal QMP client: one command per connection, as the agent needs
//! (`query-status`, `quit`).
//!
//! Invariant: every read is bounded in length and time, so a wedged
//! hypervisor cannot stall the supervisor.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::UnixStream;

use crate::error::{Error, Result};

const QMP_LINE_BYTES_MAX: usize = 64 * 1024;
const QMP_TIMEOUT_MS: u64 = 2_000;
const QMP_LINES_MAX: usize = 64;

/// Runs `command` on the QMP socket and returns its `return` value.
pub async fn execute(socket: &Path, command: &str) -> Result<Value> {
    tokio::time::timeout(
        Duration::from_millis(QMP_TIMEOUT_MS),
        execute_now(socket, command),
    )
    .await
    .map_err(|_| Error::Qmp(format!("{command}: no answer within {QMP_TIMEOUT_MS} ms")))?
}

async fn execute_now(socket: &Path, command: &str) -> Result<Value> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| Error::Qmp(format!("connect {}: {e}", socket.display())))?;
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read);
    read_reply(&mut lines, "greeting").await?;
    send(&mut write, "qmp_capabilities").await?;
    read_reply(&mut lines, "qmp_capabilities").await?;
    send(&mut write, command).await?;
    read_reply(&mut lines, command).await
}

async fn send(write: &mut WriteHalf<UnixStream>, command: &str) -> Result<()> {
    let line = format!("{{\"execute\":\"{command}\"}}\n");
    write
        .write_all(line.as_bytes())
        .await
        .map_err(|e| Error::Qmp(format!("send {command}: {e}")))
}

/// Reads lines until a greeting, `return` or `error` (events are skipped).
async fn read_reply(lines: &mut BufReader<ReadHalf<UnixStream>>, what: &str) -> Result<Value> {
    for _ in 0..QMP_LINES_MAX {
        let mut line = String::new();
        // Bounded while it is read: a hypervisor (which a guest may have
        // taken over) never makes the agent buffer an endless line.
        let read = (&mut *lines)
            .take(QMP_LINE_BYTES_MAX as u64 + 1)
            .read_line(&mut line)
            .await
            .map_err(|e| Error::Qmp(format!("{what}: {e}")))?;
        if read == 0 {
            // qemu closes the socket as it quits.
            return Ok(Value::Null);
        }
        if line.len() > QMP_LINE_BYTES_MAX {
            return Err(Error::Qmp(format!(
                "{what}: reply longer than {QMP_LINE_BYTES_MAX} bytes"
            )));
        }
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| Error::Qmp(format!("{what}: bad JSON: {e}")))?;
        if let Some(error) = value.get("error") {
            return Err(Error::Qmp(format!("{what}: {error}")));
        }
        if let Some(result) = value.get("return").or_else(|| value.get("QMP")) {
            return Ok(result.clone());
        }
    }
    Err(Error::Qmp(format!(
        "{what}: no reply among {QMP_LINES_MAX} lines"
    )))
}

/// True when the hypervisor reports its guest running.
pub async fn is_running(socket: &Path) -> bool {
    match execute(socket, "query-status").await {
        Ok(status) => status.get("status").and_then(Value::as_str) == Some("running"),
        Err(_) => false,
    }
}
