//! The `Vm` service: VM definitions and desired state in the replicated log.

use crate::handle::ClusterHandle;
use std::pin::Pin;
use std::time::Duration;

use blixard_api::{pb, validate};
use blixard_consensus::{Command, DesiredState, StateEvent, VmChange};
use futures::Stream;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use super::pages::PageRequest;
use super::streams::{self, StreamSlots};
use super::vm_node::{LogStream, VmNode};
use super::{lease, Caller};
use crate::convert::{redact_vm_info, vm_info_to_pb, vm_spec_from_pb};
use crate::Error;

/// VMs read from the state at once for a watch's initial list.
const WATCH_PAGE_VMS: usize = 32;
/// How often a watch looks again whether the changes up to its list's
/// revision have all been published (they trail the state by moments).
const SYNC_CHECK_MS: u64 = 20;

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

impl VmService {
    /// One page of VMs (only group `group`'s members unless it is empty),
    /// the revision it was read at and the next page's token.
    fn page(
        &self,
        page: &PageRequest<String>,
        group: &str,
        reads_secrets: bool,
    ) -> (Vec<pb::VmInfo>, u64, String) {
        self.raft.read_state(|s| {
            let after = match &page.after {
                Some(name) => std::ops::Bound::Excluded(name),
                None => std::ops::Bound::Unbounded,
            };
            let vms = s
                .vms
                .range::<String, _>((after, std::ops::Bound::Unbounded))
                .filter(|(_, vm)| group.is_empty() || vm.spec.group.as_deref() == Some(group))
                .map(|(name, vm)| (name.clone(), shown(vm_info_to_pb(vm), reads_secrets)));
            let (vms, token) = page.cut(vms);
            (vms, s.revision, token)
        })
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
                        created_at_unix_ms: blixard_api::unix_ms_now(),
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
                    created_at_unix_ms: blixard_api::unix_ms_now(),
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
                    created_at_unix_ms: blixard_api::unix_ms_now(),
                },
                requester,
            )
            .await
            .map_err(Error::from)?;
        // The group's first page, as `List` with `group` would show it.
        let (vms, _, next_page_token) = self.page(&PageRequest::new(0, "")?, &group, reads_secrets);
        Ok(Response::new(pb::ScaleVmResponse {
            vms,
            revision: applied.revision,
            next_page_token,
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
        let request = request.into_inner();
        if !request.group.is_empty() {
            validate::vm_name(&request.group).map_err(Error::from)?;
        }
        let page = PageRequest::new(request.limit, &request.page_token)?;
        self.raft.read_barrier().await.map_err(Error::from)?;
        let (vms, revision, next_page_token) = self.page(&page, &request.group, reads_secrets);
        Ok(Response::new(pb::ListVmsResponse {
            vms,
            revision,
            next_page_token,
        }))
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
        let after = request.get_ref().after_revision;
        let slot = self.streams.take(request.remote_addr().map(|a| a.ip()))?;
        // Subscribe before reading so no change falls between the two.
        let mut events = self.raft.subscribe();
        self.raft.read_barrier().await.map_err(Error::from)?;
        let resume = match after {
            None => None,
            Some(after) => {
                // Past the barrier this node has applied everything the
                // watcher could have seen.
                let revision = self.raft.read_state(|s| s.revision);
                if after > revision {
                    return Err(Status::invalid_argument(format!(
                        "after_revision {after} is ahead of the cluster's revision {revision}"
                    )));
                }
                let resume = self.raft.vm_changes_since(after);
                Some(resume.map_err(|e| Status::out_of_range(e.to_string()))?)
            }
        };
        let (tx, stream) = streams::channel(slot);
        let raft = self.raft.clone();
        tokio::spawn(async move {
            // Live changes at or before `sent_through` were sent already
            // (or, for a page, shown by it when `pages` says so).
            let mut pages = Pages::default();
            let (sent_through, mut sync) = match resume {
                Some(resume) => {
                    for (revision, change) in &resume.changes {
                        let event = redacted(vm_event(change, *revision), reads_secrets);
                        if !tx.send(Ok(event)).await {
                            return;
                        }
                    }
                    (resume.through, Sync::new(resume.through))
                }
                None => {
                    let first = raft.read_state(|s| s.revision);
                    match send_pages(&raft, &tx, &mut pages, reads_secrets).await {
                        Some(last) => (first, Sync::new(last)),
                        None => return,
                    }
                }
            };
            loop {
                if events.is_empty() {
                    if let Some(at) = sync.due(|| raft.vm_changes_published(), None) {
                        if !tx.send(Ok(synced_event(at))).await {
                            return;
                        }
                    }
                }
                let received = tokio::select! {
                    () = tx.closed() => return,
                    received = events.recv() => received,
                    // The changes up to the list's revision are being
                    // published (they trail the state by moments).
                    () = tokio::time::sleep(Duration::from_millis(SYNC_CHECK_MS)),
                        if sync.awaits_publication() => continue,
                };
                let next = match &received {
                    Ok(StateEvent::Vm { revision, .. }) => Some(*revision),
                    Ok(StateEvent::Cluster(record)) => Some(record.revision),
                    _ => None,
                };
                if let Some(next) = next {
                    if let Some(at) = sync.due(|| raft.vm_changes_published(), Some(next)) {
                        if !tx.send(Ok(synced_event(at))).await {
                            return;
                        }
                    }
                }
                let item = match received {
                    Ok(StateEvent::Vm {
                        change,
                        revision: r,
                    }) if r > sent_through => {
                        if pages.shown(&change_vm(&change).spec.name, r) {
                            continue;
                        }
                        sync.sent(r);
                        Ok(redacted(vm_event(&change, r), reads_secrets))
                    }
                    Ok(StateEvent::Vm { .. } | StateEvent::Cluster(_)) => continue,
                    Ok(StateEvent::Reset { .. }) => Err(Status::aborted(
                        "this node's copy of the state was replaced (a snapshot, or it \
                         joined or left the raft members); watch again",
                    )),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        Err(Status::data_loss(format!(
                            "watcher fell {missed} events behind; resume (after_revision) or watch again"
                        )))
                    }
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

/// The pages a watch's initial list was read in: each page's last name
/// (`None` for the last page, which reaches to the end) and the revision
/// it was read at, in name order. One entry per page, not per VM.
#[derive(Debug, Default)]
struct Pages {
    read: Vec<(Option<String>, u64)>,
}

impl Pages {
    fn read(&mut self, last_name: Option<String>, revision: u64) {
        self.read.push((last_name, revision));
    }

    /// Whether the change to `name` at `revision` is one its page already
    /// showed (or, for a VM gone before its page was read, hid): the page
    /// covering `name` was read at or after it. Once a change is newer
    /// than every page, none is, and the pages are forgotten.
    fn shown(&mut self, name: &str, revision: u64) -> bool {
        if self.read.iter().all(|(_, at)| revision > *at) {
            self.read = Vec::new();
            return false;
        }
        let covering = self
            .read
            .iter()
            .find(|(last, _)| last.as_deref().is_none_or(|last| name <= last));
        covering.is_some_and(|(_, at)| revision <= *at)
    }
}

/// Sends the current list a page at a time, each read from the state as
/// it is then, so a watcher holds one page, not the whole list; each
/// page's name range and revision are kept in `pages` so a change a page
/// already shows is not sent again as an older event. The revision of the
/// last page, or `None` once the watcher has gone.
async fn send_pages(
    raft: &ClusterHandle,
    tx: &streams::Sender<pb::VmEvent>,
    pages: &mut Pages,
    reads_secrets: bool,
) -> Option<u64> {
    let mut after: Option<String> = None;
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
        after = page.last().map(|(name, _)| name.clone());
        pages.read((!last_page).then(|| after.clone()).flatten(), revision);
        for (_, event) in page {
            if !tx.send(Ok(redacted(event, reads_secrets))).await {
                return None;
            }
        }
        if last_page {
            return Some(revision);
        }
    }
}

/// When a watch may tell its watcher it has every change through a
/// revision (SYNCED): once every change up to it has been published
/// (`published`, read once it reaches that far), and each of them taken
/// from the watch's subscription, which delivers changes in revision
/// order: the queue is empty, or the next change is newer than
/// `published`.
#[derive(Debug)]
struct Sync {
    /// What the watcher will have: the list's (or the resume's) revision,
    /// or a newer change sent before SYNCED.
    at: u64,
    published: Option<u64>,
    done: bool,
}

impl Sync {
    fn new(at: u64) -> Self {
        Self {
            at,
            published: None,
            done: false,
        }
    }

    /// A change at `revision` went to the watcher.
    fn sent(&mut self, revision: u64) {
        if !self.done {
            self.at = self.at.max(revision);
        }
    }

    /// Whether the changes up to `at` are still being published.
    fn awaits_publication(&self) -> bool {
        !self.done && self.published.is_none()
    }

    /// The revision to say SYNCED at now, before the change at `next`
    /// (`None`: nothing is queued), if it is due.
    fn due(&mut self, published: impl FnOnce() -> u64, next: Option<u64>) -> Option<u64> {
        if self.done {
            return None;
        }
        if self.published.is_none() {
            let now = published();
            self.published = (now >= self.at).then_some(now);
        }
        let published = self.published?;
        if next.is_some_and(|next| next <= published) {
            return None;
        }
        self.done = true;
        Some(self.at)
    }
}

/// The watcher has every change through `revision`.
fn synced_event(revision: u64) -> pb::VmEvent {
    pb::VmEvent {
        kind: pb::VmEventKind::Synced as i32,
        vm: None,
        revision,
    }
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

#[cfg(test)]
mod tests {
    use super::{Pages, Sync};

    #[test]
    fn synced_waits_for_publication_then_for_the_queue_to_pass_it() {
        let mut sync = Sync::new(10);
        // The state is at 10, its changes published only to 9.
        assert_eq!(sync.due(|| 9, None), None);
        assert!(sync.awaits_publication());
        // Published to 12: changes up to 12 may still be queued.
        assert_eq!(sync.due(|| 12, Some(11)), None);
        sync.sent(11);
        assert_eq!(sync.due(|| unreachable!("read once"), Some(12)), None);
        // The next queued change is past 12: everything before it is in.
        assert_eq!(sync.due(|| unreachable!("read once"), Some(13)), Some(11));
        assert_eq!(sync.due(|| 20, None), None, "said once");
        // A quiet node: an empty queue is enough.
        let mut quiet = Sync::new(5);
        assert_eq!(quiet.due(|| 5, None), Some(5));
    }

    #[test]
    fn a_change_is_skipped_only_when_its_page_was_read_after_it() {
        let mut pages = Pages::default();
        pages.read(Some("b".into()), 10);
        pages.read(Some("m".into()), 14);
        pages.read(None, 20);
        // "a" and "b" were read at 10: later changes go out.
        assert!(pages.shown("a", 10));
        assert!(!pages.shown("b", 11));
        // "c".."m" were read at 14.
        assert!(pages.shown("c", 12));
        assert!(pages.shown("m", 14));
        assert!(!pages.shown("k", 15));
        // Past "m", to the end, read at 20: a VM deleted at 18 before its
        // page was read was never shown, and its delete is not sent.
        assert!(pages.shown("z", 18));
        assert!(!pages.shown("z", 21));
        // Newer than every page: nothing is skipped again.
        assert!(!pages.shown("c", 12));
    }
}
