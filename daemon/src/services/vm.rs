//! The `Vm` service: VM definitions and desired state in the replicated log.

use crate::handle::ClusterHandle;
use std::pin::Pin;

use blixard_api::{pb, validate};
use blixard_consensus::{Command, DesiredState, StateEvent, VmChange};
use futures::Stream;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use super::streams::{self, StreamSlots};
use super::vm_node::{now_unix_ms, LogStream, VmNode};
use super::{lease, Caller};
use crate::convert::{redact_vm_info, vm_info_to_pb, vm_spec_from_pb};
use crate::Error;

/// VMs read from the state at once for a watch's initial list.
const WATCH_PAGE_VMS: usize = 32;

pub struct VmService {
    pub raft: ClusterHandle,
    /// Serves what only the VM's own node can (logs, stats).
    pub node: VmNode,
    /// The node's watch and follow streams.
    pub streams: StreamSlots,
}

impl VmService {
    async fn set_desired(
        &self,
        request: Request<pb::VmNameRequest>,
        desired_state: DesiredState,
    ) -> Result<Response<pb::VmResponse>, Status> {
        let requester = super::requester(&request);
        let reads_secrets = super::reads_secrets(&request);
        let name = request.into_inner().name;
        validate::vm_name(&name).map_err(Error::from)?;
        let applied = self
            .raft
            .propose_for(
                Command::SetVmDesiredState {
                    name,
                    desired_state,
                },
                requester,
            )
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::VmResponse {
            vm: applied
                .vm
                .as_ref()
                .map(|vm| shown(vm_info_to_pb(vm), reads_secrets)),
            revision: applied.revision,
        }))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::VmEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::vm_server::Vm for VmService {
    async fn create(
        &self,
        request: Request<pb::CreateVmRequest>,
    ) -> Result<Response<pb::VmResponse>, Status> {
        let requester = super::requester(&request);
        let reads_secrets = super::reads_secrets(&request);
        let request = request.into_inner();
        let spec = vm_spec_from_pb(request.spec).map_err(Error::from)?;
        if request.replicas > 0 {
            validate::replicas(&spec.name, request.replicas).map_err(Error::from)?;
            // Whether the name is free is decided when this applies: of
            // two racing creates, one gets AlreadyExists.
            let applied = self
                .raft
                .propose_for(
                    Command::CreateGroup {
                        template: spec,
                        replicas: request.replicas,
                        start: !request.stopped,
                        created_at_unix_ms: now_unix_ms(),
                    },
                    requester,
                )
                .await
                .map_err(Error::from)?;
            // The first member as this create made it.
            return Ok(Response::new(pb::VmResponse {
                vm: applied
                    .vm
                    .as_ref()
                    .map(|vm| shown(vm_info_to_pb(vm), reads_secrets)),
                revision: applied.revision,
            }));
        }
        let applied = self
            .raft
            .propose_for(
                Command::CreateVm {
                    spec,
                    created_at_unix_ms: now_unix_ms(),
                },
                requester,
            )
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::VmResponse {
            vm: applied
                .vm
                .as_ref()
                .map(|vm| shown(vm_info_to_pb(vm), reads_secrets)),
            revision: applied.revision,
        }))
    }

    async fn scale(
        &self,
        request: Request<pb::ScaleVmRequest>,
    ) -> Result<Response<pb::ScaleVmResponse>, Status> {
        let requester = super::requester(&request);
        let reads_secrets = super::reads_secrets(&request);
        let request = request.into_inner();
        validate::vm_name(&request.name).map_err(Error::from)?;
        if request.replicas > 0 {
            validate::replicas(&request.name, request.replicas).map_err(Error::from)?;
        }
        let group = request.name.clone();
        // The group's existence and its template are read when this
        // applies, never before: a scale racing a deletion of the group
        // gets NotFound instead of bringing it back from a stale copy.
        let applied = self
            .raft
            .propose_for(
                Command::ScaleGroup {
                    group: group.clone(),
                    replicas: request.replicas,
                    start: !request.stopped,
                    created_at_unix_ms: now_unix_ms(),
                },
                requester,
            )
            .await
            .map_err(Error::from)?;
        let vms = self.raft.read_state(|s| {
            s.vms
                .values()
                .filter(|vm| vm.spec.group.as_deref() == Some(&group))
                .map(|vm| shown(vm_info_to_pb(vm), reads_secrets))
                .collect()
        });
        Ok(Response::new(pb::ScaleVmResponse {
            vms,
            revision: applied.revision,
        }))
    }

    async fn start(
        &self,
        request: Request<pb::VmNameRequest>,
    ) -> Result<Response<pb::VmResponse>, Status> {
        self.set_desired(request, DesiredState::Running).await
    }

    async fn stop(
        &self,
        request: Request<pb::VmNameRequest>,
    ) -> Result<Response<pb::VmResponse>, Status> {
        self.set_desired(request, DesiredState::Stopped).await
    }

    async fn delete(
        &self,
        request: Request<pb::VmNameRequest>,
    ) -> Result<Response<pb::DeleteVmResponse>, Status> {
        let requester = super::requester(&request);
        let name = request.into_inner().name;
        validate::vm_name(&name).map_err(Error::from)?;
        let applied = self
            .raft
            .propose_for(Command::DeleteVm { name }, requester)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::DeleteVmResponse {
            revision: applied.revision,
        }))
    }

    async fn get(
        &self,
        request: Request<pb::VmNameRequest>,
    ) -> Result<Response<pb::VmResponse>, Status> {
        let reads_secrets = super::reads_secrets(&request);
        let name = request.into_inner().name;
        validate::vm_name(&name).map_err(Error::from)?;
        self.raft.read_barrier().await.map_err(Error::from)?;
        let (vm, revision) = self
            .raft
            .read_state(|s| (s.vms.get(&name).map(vm_info_to_pb), s.revision));
        let mut vm = vm.ok_or_else(|| Status::not_found(format!("no VM named {name:?}")))?;
        if !reads_secrets {
            redact_vm_info(&mut vm);
        }
        Ok(Response::new(pb::VmResponse {
            vm: Some(vm),
            revision,
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListVmsRequest>,
    ) -> Result<Response<pb::ListVmsResponse>, Status> {
        let reads_secrets = super::reads_secrets(&request);
        self.raft.read_barrier().await.map_err(Error::from)?;
        let (mut vms, revision): (Vec<pb::VmInfo>, u64) = self
            .raft
            .read_state(|s| (s.vms.values().map(vm_info_to_pb).collect(), s.revision));
        if !reads_secrets {
            vms.iter_mut().for_each(redact_vm_info);
        }
        Ok(Response::new(pb::ListVmsResponse { vms, revision }))
    }

    type LogsStream = LogStream;

    async fn logs(
        &self,
        request: Request<pb::VmLogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let logs = self.node.logs(request).await?;
        Ok(Response::new(lease::while_token_valid(
            caller.as_ref(),
            self.raft.clone(),
            logs,
        )))
    }

    async fn stats(
        &self,
        request: Request<pb::VmNameRequest>,
    ) -> Result<Response<pb::VmStats>, Status> {
        Ok(Response::new(self.node.stats(request).await?))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchVmsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let reads_secrets = super::reads_secrets(&request);
        let slot = self.streams.take()?;
        // Subscribe before reading so no change falls between the two.
        let mut events = self.raft.subscribe();
        self.raft.read_barrier().await.map_err(Error::from)?;
        let (tx, stream) = streams::channel(slot);
        let raft = self.raft.clone();
        tokio::spawn(async move {
            // The initial list goes out a page at a time, each read from
            // the state as it is then, so a watcher holds one page, not
            // the whole list; the revision each VM was read at is kept
            // (names only) so a change it already shows is not sent again
            // as an older event.
            let mut shown_at: std::collections::HashMap<String, u64> = Default::default();
            let mut after: Option<String> = None;
            let first_revision = raft.read_state(|s| s.revision);
            loop {
                let (page, revision) = raft.read_state(|s| {
                    let range = match &after {
                        Some(name) => s.vms.range::<String, _>((
                            std::ops::Bound::Excluded(name),
                            std::ops::Bound::Unbounded,
                        )),
                        None => s.vms.range::<String, _>(..),
                    };
                    let page: Vec<(String, pb::VmEvent)> = range
                        .take(WATCH_PAGE_VMS)
                        .map(|(name, vm)| {
                            let event = pb::VmEvent {
                                kind: pb::VmEventKind::Added as i32,
                                vm: Some(vm_info_to_pb(vm)),
                                revision: s.revision,
                            };
                            (name.clone(), event)
                        })
                        .collect();
                    (page, s.revision)
                });
                let last_page = page.len() < WATCH_PAGE_VMS;
                for (name, event) in page {
                    shown_at.insert(name.clone(), revision);
                    after = Some(name);
                    if !tx.send(Ok(redacted(event, reads_secrets))).await {
                        return;
                    }
                }
                if last_page {
                    break;
                }
            }
            let last_shown = shown_at.values().copied().max().unwrap_or(first_revision);
            loop {
                let item = match events.recv().await {
                    Ok(StateEvent::Vm {
                        change,
                        revision: r,
                    }) if r > first_revision => {
                        // A change the page this VM was sent in already
                        // showed; past the last page's revision none is.
                        let name = &change_vm(&change).spec.name;
                        if r <= last_shown && shown_at.get(name).is_some_and(|&at| r <= at) {
                            continue;
                        }
                        if r > last_shown && !shown_at.is_empty() {
                            shown_at = Default::default();
                        }
                        Ok(redacted(vm_event(&change, r), reads_secrets))
                    }
                    Ok(StateEvent::Vm { .. } | StateEvent::Cluster(_)) => continue,
                    Ok(StateEvent::Reset { .. }) => Err(Status::aborted(
                        "state was replaced by a snapshot; watch again",
                    )),
                    Err(broadcast::error::RecvError::Lagged(missed)) => Err(Status::data_loss(
                        format!("watcher fell {missed} events behind; watch again"),
                    )),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if !tx.send(item).await {
                    return;
                }
            }
        });
        Ok(Response::new(lease::while_token_valid(
            caller.as_ref(),
            self.raft.clone(),
            stream,
        )))
    }
}

/// `vm` with its secrets redacted unless the caller reads them.
fn shown(mut vm: pb::VmInfo, reads_secrets: bool) -> pb::VmInfo {
    if !reads_secrets {
        redact_vm_info(&mut vm);
    }
    vm
}

/// `event` with its VM's secrets redacted unless the watcher reads them.
fn redacted(mut event: pb::VmEvent, reads_secrets: bool) -> pb::VmEvent {
    if !reads_secrets {
        if let Some(vm) = event.vm.as_mut() {
            redact_vm_info(vm);
        }
    }
    event
}

fn change_vm(change: &VmChange) -> &blixard_consensus::VmRecord {
    match change {
        VmChange::Added(vm) | VmChange::Modified(vm) | VmChange::Deleted(vm) => vm,
    }
}

fn vm_event(change: &VmChange, revision: u64) -> pb::VmEvent {
    let (kind, vm) = match change {
        VmChange::Added(vm) => (pb::VmEventKind::Added, vm),
        VmChange::Modified(vm) => (pb::VmEventKind::Modified, vm),
        VmChange::Deleted(vm) => (pb::VmEventKind::Deleted, vm),
    };
    pb::VmEvent {
        kind: kind as i32,
        vm: Some(vm_info_to_pb(vm)),
        revision,
    }
}
