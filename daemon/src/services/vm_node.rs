//! The parts of the `Vm` service served by the node that runs the VM:
//! console logs and live stats. A request that reaches another node is
//! forwarded once to the VM's node.
//!
//! Invariant: a request is forwarded at most one hop (the forwarded copy
//! carries `FORWARDED_HEADER`), so two nodes that disagree on where a VM
//! runs cannot bounce a request between them.

use crate::handle::ClusterHandle;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use blixard_api::pb::vm_client::VmClient;
use blixard_api::{pb, validate};
use blixard_consensus::VmPhase;
use blixard_nodeagent::{console, process};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use crate::Error;

const FORWARDED_HEADER: &str = "x-blixard-forwarded";
const LOG_CHUNK_BYTES_MAX: usize = 64 * 1024;
const LOG_CHUNKS_BUFFERED_MAX: usize = 16;
const LOG_FOLLOW_POLL_MS: u64 = 200;

pub type LogStream = Pin<Box<dyn Stream<Item = Result<pb::VmLogChunk, Status>> + Send>>;

/// Where the VM's node is, as this node knows it.
enum Location {
    Here,
    Elsewhere { node: u64, address: String },
}

pub struct VmNode {
    pub raft: ClusterHandle,
    pub node_id: u64,
    /// `None` when this node runs no agent.
    pub vm_state_dir: Option<PathBuf>,
}

impl VmNode {
    async fn locate<T>(&self, request: &Request<T>, name: &str) -> Result<Location, Status> {
        validate::vm_name(name).map_err(Error::from)?;
        self.raft.read_barrier().await.map_err(Error::from)?;
        let (node, address) = self
            .raft
            .read_state(|s| {
                let vm = s.vms.get(name)?;
                let node = vm.assigned_node.or(vm.observed.node)?;
                let address = s.nodes.get(&node).map(|n| n.address.clone());
                Some((node, address))
            })
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "VM {name:?} does not exist or is not placed on any node"
                ))
            })?;
        if node == self.node_id {
            return Ok(Location::Here);
        }
        if request.metadata().contains_key(FORWARDED_HEADER) {
            return Err(Status::failed_precondition(format!(
                "VM {name:?} is not on node {} (forwarded request)",
                self.node_id
            )));
        }
        let address = address
            .ok_or_else(|| Status::unavailable(format!("node {node} has no known address")))?;
        Ok(Location::Elsewhere { node, address })
    }

    fn local_dir(&self, name: &str) -> Result<PathBuf, Status> {
        let root = self.vm_state_dir.as_ref().ok_or_else(|| {
            Status::failed_precondition(format!("node {} runs no agent", self.node_id))
        })?;
        blixard_nodeagent::paths::vm_state_dir(root, name)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    pub async fn logs(&self, request: Request<pb::VmLogsRequest>) -> Result<LogStream, Status> {
        let name = request.get_ref().name.clone();
        match self.locate(&request, &name).await? {
            Location::Here => {
                let args = request.into_inner();
                local_logs(self.local_dir(&name)?, args.follow, args.tail_lines)
            }
            Location::Elsewhere { node, address } => {
                let mut client = connect(node, &address).await?;
                let stream = client
                    .logs(forwarded(request.into_inner()))
                    .await?
                    .into_inner();
                Ok(Box::pin(stream.map(|item| item)))
            }
        }
    }

    pub async fn stats(&self, request: Request<pb::VmNameRequest>) -> Result<pb::VmStats, Status> {
        let name = request.get_ref().name.clone();
        match self.locate(&request, &name).await? {
            Location::Here => self.local_stats(&name),
            Location::Elsewhere { node, address } => {
                let mut client = connect(node, &address).await?;
                Ok(client
                    .stats(forwarded(request.into_inner()))
                    .await?
                    .into_inner())
            }
        }
    }

    fn local_stats(&self, name: &str) -> Result<pb::VmStats, Status> {
        let dir = self.local_dir(name)?;
        let observed = self
            .raft
            .read_state(|s| s.vms.get(name).map(|vm| vm.observed.clone()))
            .unwrap_or_default();
        let pid = process::read_pid_file(&dir.join("pid"))
            .filter(|pid| process::is_vm_process(*pid, name))
            .ok_or_else(|| Status::failed_precondition(format!("VM {name:?} is not running")))?;
        let usage = process::usage(pid).unwrap_or_default();
        let uptime_ms = match observed.phase {
            VmPhase::Running => {
                blixard_api::unix_ms_now().saturating_sub(observed.observed_at_unix_ms)
            }
            _ => 0,
        };
        Ok(pb::VmStats {
            node: self.node_id,
            pid,
            cpu_ms: usage.cpu_ms,
            rss_bytes: usage.rss_bytes,
            uptime_ms,
            restarts: observed.restarts,
        })
    }
}

fn forwarded<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    request
}

/// A node that does not answer within this long is reported unreachable
/// (rather than holding the client until the OS gives up on the connect).
const FORWARD_CONNECT_TIMEOUT_MS: u64 = 2_000;

async fn connect(node: u64, address: &str) -> Result<VmClient<tonic::transport::Channel>, Status> {
    let unreachable = |e: &dyn std::fmt::Display| {
        Status::unavailable(format!("cannot reach node {node} at {address}: {e}"))
    };
    let endpoint = blixard_api::connect::endpoint_for(address, node)
        .map_err(|e| unreachable(&e))?
        .connect_timeout(std::time::Duration::from_millis(FORWARD_CONNECT_TIMEOUT_MS));
    let channel = endpoint.connect().await.map_err(|e| unreachable(&e))?;
    Ok(VmClient::new(channel))
}

fn local_logs(dir: PathBuf, follow: bool, tail_lines: u32) -> Result<LogStream, Status> {
    let lines = if tail_lines == 0 {
        usize::MAX
    } else {
        tail_lines as usize
    };
    let (initial, offset) =
        console::tail(&dir, lines).map_err(|e| Status::internal(e.to_string()))?;
    let (tx, rx) = mpsc::channel(LOG_CHUNKS_BUFFERED_MAX);
    tokio::spawn(async move {
        for chunk in initial.chunks(LOG_CHUNK_BYTES_MAX) {
            if tx
                .send(Ok(pb::VmLogChunk {
                    data: chunk.to_vec(),
                }))
                .await
                .is_err()
            {
                return;
            }
        }
        if follow {
            follow_log(&dir, offset, &tx).await;
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Streams what is appended until the client goes away.
async fn follow_log(
    dir: &Path,
    mut offset: u64,
    tx: &mpsc::Sender<Result<pb::VmLogChunk, Status>>,
) {
    loop {
        match console::read_from(dir, offset, LOG_CHUNK_BYTES_MAX) {
            Ok((bytes, next)) => {
                offset = next;
                if !bytes.is_empty() && tx.send(Ok(pb::VmLogChunk { data: bytes })).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = tx.send(Err(Status::internal(error.to_string()))).await;
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(LOG_FOLLOW_POLL_MS)).await;
    }
}
