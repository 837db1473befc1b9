//! The live data behind the dashboard: the VM watch stream, the event
//! stream, and the node list and status once a second, from one node at a
//! time; when that node fails, the next address (with backoff), learning
//! the other members' addresses from the status.
//!
//! Invariants: the UI is never blocked by the network, it only reads the
//! bounded `updates` channel (a slow UI slows the streams, it does not
//! lose watch events); reconnect waits grow to `BACKOFF_MAX_MS` and reset
//! once a connection holds.

use std::time::Duration;

use blixard_api::connect::{ConnectError, Connection, Timeouts};
use blixard_api::follow::{Ended, Members};
use blixard_api::pb;
use blixard_api::pb::cluster_client::ClusterClient;
use blixard_api::pb::node_client::NodeClient;
use blixard_api::pb::vm_client::VmClient;
use blixard_api::resume::Position;
use tokio::sync::mpsc;

use crate::app::Action;
use crate::model::Update;

const CONNECT_TIMEOUT_MS: u64 = 2_000;
const POLL_INTERVAL_MS: u64 = 1_000;
const RECENT_EVENTS: u32 = 200;

/// A connection to `address` carrying the process's token (streams stay
/// open: no request deadline).
pub async fn connect(address: &str) -> Result<Connection, ConnectError> {
    let timeouts = Timeouts {
        connect_ms: CONNECT_TIMEOUT_MS,
        request_ms: None,
    };
    blixard_api::connect::connect(address, timeouts).await
}

/// Feeds `updates` until the receiver goes away.
pub async fn run(addresses: Vec<String>, updates: mpsc::Sender<Update>) {
    let mut members = Members::new(addresses);
    // Kept across reconnections: the VM watch resumes where it was.
    let mut position = Position::default();
    loop {
        let address = members.current().to_string();
        let ended = match follow(&address, &updates, &mut members, &mut position).await {
            Ok(()) | Err(Failure::Gone) => return,
            Err(Failure::Lost(ended)) => ended,
        };
        let wait = members.failed(&ended);
        let lost = Update::Disconnected {
            address,
            reason: ended.reason,
        };
        if updates.send(lost).await.is_err() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

enum Failure {
    /// The UI went away.
    Gone,
    /// The node failed.
    Lost(Ended),
}

fn lost(reason: impl std::fmt::Display, held: bool) -> Failure {
    Failure::Lost(Ended::new(reason, held))
}

async fn send(updates: &mpsc::Sender<Update>, update: Update) -> Result<(), Failure> {
    updates.send(update).await.map_err(|_| Failure::Gone)
}

/// The VM watch on `vms`: resumed from `position` when this node's history
/// still reaches back to it, else from the start (the VMs shown are then
/// replaced).
async fn watch_vms(
    vms: &mut VmClient<Connection>,
    updates: &mpsc::Sender<Update>,
    position: &mut Position,
) -> Result<tonic::Streaming<pb::VmEvent>, Failure> {
    if let Some(resume) = position.resume() {
        match vms.watch(resume).await {
            Ok(watch) => return Ok(watch.into_inner()),
            // History gone, or a revision this cluster never had (another
            // cluster at the same address): list again.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::OutOfRange | tonic::Code::InvalidArgument
                ) => {}
            Err(status) => return Err(lost(status.message(), true)),
        }
    }
    *position = Position::default();
    let watch = vms
        .watch(pb::WatchVmsRequest::default())
        .await
        .map_err(|e| lost(e.message(), true))?
        .into_inner();
    send(updates, Update::VmsReset).await?;
    Ok(watch)
}

async fn follow(
    address: &str,
    updates: &mpsc::Sender<Update>,
    members: &mut Members,
    position: &mut Position,
) -> Result<(), Failure> {
    let channel = connect(address).await.map_err(|e| lost(e, false))?;
    let mut cluster = ClusterClient::new(channel.clone());
    let status = cluster
        .status(pb::StatusRequest {})
        .await
        .map_err(|e| lost(e.message(), false))?
        .into_inner();
    members.learn(&status);
    send(updates, Update::Connected(address.to_string())).await?;
    let mut watch = watch_vms(&mut VmClient::new(channel.clone()), updates, position).await?;
    let mut events = cluster
        .events(pb::EventsRequest {
            follow: true,
            recent_max: RECENT_EVENTS,
        })
        .await
        .map_err(|e| lost(e.message(), true))?
        .into_inner();
    let nodes = NodeClient::new(channel);
    let mut poll = tokio::time::interval(Duration::from_millis(POLL_INTERVAL_MS));
    loop {
        tokio::select! {
            event = watch.message() => match event {
                Ok(Some(event)) => {
                    if position.take(&event) {
                        send(updates, Update::Vm(Box::new(event))).await?;
                    }
                }
                Ok(None) => return Err(lost("the VM watch ended", true)),
                Err(status) => return Err(lost(status.message(), true)),
            },
            event = events.message() => match event {
                Ok(Some(event)) => send(updates, Update::Event(event)).await?,
                Ok(None) => return Err(lost("the event stream ended", true)),
                Err(status) => return Err(lost(status.message(), true)),
            },
            _ = poll.tick() => {
                let status = cluster
                    .status(pb::StatusRequest {})
                    .await
                    .map_err(|e| lost(e.message(), true))?
                    .into_inner();
                send(updates, Update::Status { status: Box::new(status), at_ms: blixard_api::unix_ms_now() }).await?;
                let listed = blixard_api::pages::all_nodes(|request| {
                    let mut nodes = nodes.clone();
                    async move { nodes.list(request).await }
                })
                .await
                .map_err(|e| lost(e.message(), true))?;
                send(updates, Update::Nodes(listed.nodes)).await?;
            }
        }
    }
}

const RESTART_DEADLINE_MS: u64 = 60_000;
/// Console lines fetched when the logs view opens.
const LOG_TAIL_LINES: u32 = 500;

/// Streams `vm`'s console into `updates` until the stream or the receiver
/// ends; a failure arrives as a notice.
pub async fn follow_logs(address: String, vm: String, updates: mpsc::Sender<Update>) {
    let result = async {
        let connection = connect(&address).await.map_err(|e| e.to_string())?;
        let mut stream = VmClient::new(connection)
            .logs(pb::VmLogsRequest {
                name: vm.clone(),
                follow: true,
                tail_lines: LOG_TAIL_LINES,
            })
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|e| e.message().to_string())?
        {
            let update = Update::Log {
                vm: vm.clone(),
                data: chunk.data,
                at_ms: blixard_api::unix_ms_now(),
            };
            if updates.send(update).await.is_err() {
                return Ok(());
            }
        }
        Ok::<_, String>(())
    };
    if let Err(reason) = result.await {
        let notice = Update::Notice {
            text: format!("logs of {vm}: {reason}"),
            error: true,
        };
        let _ = updates.send(notice).await;
    }
}

/// Stops `vm`, waits until its node reports it stopped, starts it again
/// (flipping the desired state back at once could go unseen by the node).
async fn restart(vms: &mut VmClient<Connection>, vm: &str) -> Result<(), tonic::Status> {
    let request = || pb::VmNameRequest { name: vm.into() };
    vms.stop(request()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(RESTART_DEADLINE_MS);
    loop {
        let info = vms.get(request()).await?.into_inner();
        let phase = info
            .vm
            .and_then(|vm| vm.observed)
            .map(|observed| observed.phase());
        if matches!(
            phase,
            Some(pb::VmPhase::Stopped | pb::VmPhase::Failed) | None
        ) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(tonic::Status::deadline_exceeded(format!(
                "{vm} did not stop within {RESTART_DEADLINE_MS} ms"
            )));
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS / 5)).await;
    }
    vms.start(request()).await.map(|_| ())
}

/// Why an operator's action was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("cannot {action}: {source}")]
    Connect {
        action: String,
        source: ConnectError,
    },
    #[error("cannot {action}: {}", status.message())]
    Refused {
        action: String,
        status: tonic::Status,
    },
}

/// Carries out `action` through `address`; the text says what happened.
pub async fn perform(address: &str, action: &Action) -> Result<String, ActionError> {
    let channel = connect(address)
        .await
        .map_err(|source| ActionError::Connect {
            action: action.describe(),
            source,
        })?;
    let mut vms = VmClient::new(channel.clone());
    let name = |vm: &str| pb::VmNameRequest { name: vm.into() };
    let result = match action {
        Action::Start(vm) => vms.start(name(vm)).await.map(|_| ()),
        Action::Stop(vm) => vms.stop(name(vm)).await.map(|_| ()),
        Action::Delete(vm) => vms.delete(name(vm)).await.map(|_| ()),
        Action::Restart(vm) => restart(&mut vms, vm).await,
        Action::Drain { node, deadline_ms } => NodeClient::new(channel)
            .drain(pb::DrainRequest {
                node_id: *node,
                deadline_ms: *deadline_ms,
            })
            .await
            .map(|_| ()),
        Action::Scale { group, replicas } => vms
            .scale(pb::ScaleVmRequest {
                name: group.clone(),
                replicas: *replicas,
                stopped: false,
            })
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => Ok(format!("asked to {}", action.describe())),
        Err(status) => Err(ActionError::Refused {
            action: action.describe(),
            status,
        }),
    }
}
