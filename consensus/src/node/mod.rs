//! The raft loop: one task owns the `RawNode`, its storage and the cluster
//! state, and follows the raft-rs Ready protocol step by step.
//!
//! Invariants:
//! - Entries and hard state are durable before any message that depends on
//!   them (`persisted_messages`) is sent. A client is answered once its
//!   entry is committed (durable on a quorum) and applied in memory, which
//!   may be before this node's fsync of the applied state.
//! - A committed entry is applied exactly once: its state changes and the
//!   applied index are written in one transaction.
//! - Only the node that proposed an entry answers its client, with the
//!   result the state machine gave.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use heed::RwTxn;
use raft::prelude::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Message, MessageType,
    Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::mpsc;

use crate::command::{Applied, Command, ProposalTag, Rejection};
use crate::handle::{
    MemberStatus, MembershipChange, RaftHandle, RaftStatus, Request, Shared, MESSAGES_QUEUED_MAX,
    REQUESTS_QUEUED_MAX,
};
mod apply;
mod guard;

use crate::pending::{Pending, RequestIds};
use crate::state::ClusterState;
use crate::storage::LogStore;
use crate::{Error, Result};

/// Client requests taken from the queue per loop iteration, so one Ready
/// (one fsync) carries a batch of proposals.
const REQUESTS_PER_BATCH_MAX: usize = 256;
const MESSAGES_PER_BATCH_MAX: usize = 1024;
/// How often (in ticks) the leader looks for learners to promote.
const PROMOTION_CHECK_TICKS: u64 = 3;
/// A learner this many entries behind the commit index counts as caught up.
const LEARNER_CATCH_UP_LAG_ENTRIES: u64 = 16;
/// How often (in ticks) a node checks that the cluster has its address.
const ADDRESS_CHECK_TICKS: u64 = 10;
/// Bound on addresses remembered from peers' messages.
const LEARNED_ADDRESSES_MAX: usize = 1024;

/// Tunables of one raft node.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub node_id: u64,
    /// This node's gRPC address, recorded in the cluster state.
    pub address: String,
    pub tick_interval_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Randomized election timeouts are drawn from
    /// `[election_ticks, election_ticks_max)`; simulations narrow it to one
    /// value per node so runs are reproducible.
    pub election_ticks_max: usize,
    /// Compact the log once it holds more than this many applied entries.
    pub snapshot_threshold_entries: u64,
    pub request_timeout_ms: u64,
    /// Cluster settings of a cluster this node bootstraps (ignored
    /// otherwise: the log holds the settings).
    pub initial_settings: crate::Settings,
    /// Tokens a cluster this node bootstraps starts with (likewise).
    pub initial_tokens: Vec<crate::Token>,
}

/// Where the loop sends raft messages. Implementations queue and never block;
/// dropping a message is allowed (raft retransmits).
pub trait Transport: Send + 'static {
    fn send(&mut self, to: u64, address: &str, message: Message);

    /// Drops whatever connection leads to `to`; the next send opens a new
    /// one. Called when `to` has been silent for a long time, since a
    /// connection can stay open while nothing on it arrives.
    fn reset(&mut self, _to: u64) {}
}

/// Owns the raft state; run it with [`RaftNode::run`].
pub struct RaftNode<T: Transport> {
    config: RaftConfig,
    raw: RawNode<LogStore>,
    transport: T,
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Request>,
    messages: mpsc::Receiver<(Message, String)>,
    /// Addresses peers gave in their latest messages; they win over the
    /// state's record (see `send_messages`).
    learned_addresses: HashMap<u64, String>,
    pending: Pending,
    request_ids: RequestIds,
    ticks: u64,
    /// The tick at which each peer was last heard from.
    last_heard_tick: HashMap<u64, u64>,
    /// Peer messages the guard refused since start.
    messages_refused: u64,
    refusal_logged_tick: Option<u64>,
}

/// Answers `request` with the error `error` makes, without handling it.
fn refuse(request: Request, error: impl Fn() -> Error) {
    match request {
        Request::Propose { reply, .. } | Request::ChangeMembership { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Request::ReadIndex { reply } => {
            let _ = reply.send(Err(error()));
        }
        Request::TransferLeader { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
    }
}

fn raft_logger() -> slog::Logger {
    slog::Logger::root(tracing_slog::TracingSlogDrain, slog::o!())
}

impl<T: Transport> RaftNode<T> {
    /// Opens the node over `store`. If the store is empty and `bootstrap` is
    /// set, a new single-node cluster is created; an empty store without
    /// `bootstrap` waits for a leader to add it.
    pub fn new(
        config: RaftConfig,
        mut store: LogStore,
        bootstrap: bool,
        transport: T,
    ) -> Result<(Self, RaftHandle)> {
        if bootstrap && !store.is_initialized() {
            store.bootstrap(
                config.node_id,
                &config.address,
                &config.initial_settings,
                &config.initial_tokens,
            )?;
        }
        let state = store.load_state()?;
        let request_ids = RequestIds::new(store.begin_request_epoch()?);
        let raft_config = raft::Config {
            id: config.node_id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            min_election_tick: config.election_ticks,
            max_election_tick: config.election_ticks_max,
            applied: store.applied_index(),
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_config.validate()?;
        let raw = RawNode::new(&raft_config, store, &raft_logger())?;
        let (requests_tx, requests) = mpsc::channel(REQUESTS_QUEUED_MAX);
        let (messages_tx, messages) = mpsc::channel(MESSAGES_QUEUED_MAX);
        let shared = Arc::new(Shared::new(state, RaftStatus::default()));
        let handle = RaftHandle {
            requests: requests_tx,
            messages: messages_tx,
            shared: shared.clone(),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
        };
        let mut node = Self {
            config,
            raw,
            transport,
            shared,
            requests,
            messages,
            pending: Pending::default(),
            learned_addresses: HashMap::new(),
            request_ids,
            ticks: 0,
            last_heard_tick: HashMap::new(),
            messages_refused: 0,
            refusal_logged_tick: None,
        };
        node.publish_status();
        Ok((node, handle))
    }

    /// Runs until `shutdown` completes or storage fails. Waiting clients are
    /// answered with `Stopped` when it returns.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.tick_interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = ticker.tick() => self.on_tick(),
                Some((message, from_address)) = self.messages.recv() => {
                    self.step(message, from_address);
                    self.drain_messages();
                }
                Some(request) = self.requests.recv() => {
                    self.on_request(request);
                    self.drain_requests();
                }
            }
            self.on_ready()?;
            self.publish_status();
        }
        Ok(())
    }

    fn drain_messages(&mut self) {
        for _ in 1..MESSAGES_PER_BATCH_MAX {
            match self.messages.try_recv() {
                Ok((message, from_address)) => self.step(message, from_address),
                Err(_) => break,
            }
        }
    }

    fn drain_requests(&mut self) {
        for _ in 1..REQUESTS_PER_BATCH_MAX {
            match self.requests.try_recv() {
                Ok(request) => self.on_request(request),
                Err(_) => break,
            }
        }
    }

    fn step(&mut self, message: Message, from_address: String) {
        // Peer input is checked before raft-rs, which trusts its peers,
        // sees it, and before anything is learned from it.
        if let Err(refused) = guard::check(&message, &self.raw.raft) {
            self.messages_refused += 1;
            // One line per tick at most: a flood must not flood the log.
            if self.refusal_logged_tick != Some(self.ticks) {
                self.refusal_logged_tick = Some(self.ticks);
                tracing::warn!(
                    %refused,
                    refused_total = self.messages_refused,
                    "refused a raft message from a peer"
                );
            }
            return;
        }
        self.last_heard_tick.insert(message.from, self.ticks);
        if !from_address.is_empty()
            && self.learned_addresses.get(&message.from) != Some(&from_address)
            && (self.learned_addresses.contains_key(&message.from)
                || self.learned_addresses.len() < LEARNED_ADDRESSES_MAX)
        {
            self.learned_addresses.insert(message.from, from_address);
        }
        // Messages from peers not in the configuration are normal during
        // membership changes; raft-rs reports them as errors.
        if let Err(error) = self.raw.step(message) {
            tracing::debug!(%error, "raft step refused a message");
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        self.raw.tick();
        self.pending
            .expire(self.ticks, self.config.request_timeout_ms);
        if self.ticks.is_multiple_of(PROMOTION_CHECK_TICKS) {
            self.promote_caught_up_learner();
        }
        if self.ticks.is_multiple_of(ADDRESS_CHECK_TICKS) {
            self.check_own_address();
        }
        if self.raw.raft.leader_id != raft::INVALID_ID {
            let every_ticks = (2 * self.config.heartbeat_ticks as u64).max(1);
            for request_id in self.pending.reads_to_ask_again(self.ticks, every_ticks) {
                let context = ProposalTag {
                    proposer: self.config.node_id,
                    request_id,
                };
                self.raw.read_index(context.encode());
            }
        }
        let silence_ticks = 2 * self.config.election_ticks as u64;
        if self.ticks.is_multiple_of(silence_ticks) {
            self.reset_silent_peers(silence_ticks);
        }
    }

    fn deadline_tick(&self) -> u64 {
        self.ticks + self.config.request_timeout_ms / self.config.tick_interval_ms.max(1) + 1
    }

    fn on_request(&mut self, request: Request) {
        if self.pending.is_full() {
            refuse(request, || Error::Busy {
                queued_max: crate::pending::REQUESTS_PENDING_MAX,
            });
            return;
        }
        let request_id = match self.request_ids.next() {
            Some(id) => id,
            None => match self.raw.mut_store().begin_request_epoch() {
                Ok(epoch) => {
                    self.request_ids = RequestIds::new(epoch);
                    self.request_ids
                        .next()
                        .expect("a new epoch has ids to give")
                }
                Err(error) => {
                    tracing::error!(%error, "cannot record a new request epoch");
                    refuse(request, || Error::Stopped);
                    return;
                }
            },
        };
        let tag = ProposalTag {
            proposer: self.config.node_id,
            request_id,
        };
        let deadline = self.deadline_tick();
        match request {
            Request::Propose {
                command,
                audit,
                reply,
            } => {
                let context = tag.entry_context(blixard_api::unix_ms_now(), audit.as_deref());
                match self.raw.propose(context, command.encode()) {
                    Ok(()) => self.pending.add_proposal(request_id, reply, deadline),
                    Err(error) => {
                        let _ = reply.send(Err(self.proposal_error(error)));
                    }
                }
            }
            Request::ChangeMembership { change, reply } => {
                match self.propose_membership(tag, &change) {
                    Ok(()) => self.pending.add_proposal(request_id, reply, deadline),
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Request::ReadIndex { reply } => {
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(Error::NoLeader));
                    return;
                }
                // The leader keys pending reads by this context and drops
                // a second read with the same one, so it must be unique
                // across nodes, not just on this one: proposer + id.
                let context = ProposalTag {
                    proposer: self.config.node_id,
                    request_id,
                };
                self.raw.read_index(context.encode());
                self.pending
                    .add_read(request_id, reply, deadline, self.ticks);
            }
            Request::TransferLeader { to, reply } => {
                let _ = reply.send(self.transfer_leader(to));
            }
        }
    }

    fn proposal_error(&self, error: raft::Error) -> Error {
        match error {
            raft::Error::ProposalDropped => Error::NoLeader,
            other => Error::Raft(other),
        }
    }

    fn propose_membership(&mut self, tag: ProposalTag, change: &MembershipChange) -> Result<()> {
        let mut single = ConfChangeSingle::default();
        let mut context = Vec::new();
        match change {
            MembershipChange::AddLearner { node_id, address } => {
                let conf_state = self.raw.store().conf_state();
                // A worker (a node record without raft membership) may be
                // added: that is how autopilot turns it into a voter.
                if conf_state.voters.contains(node_id) || conf_state.learners.contains(node_id) {
                    return Err(Rejection::ConfChange {
                        detail: format!("node {node_id} is already a member"),
                    }
                    .into());
                }
                single.node_id = *node_id;
                single.set_change_type(ConfChangeType::AddLearnerNode);
                context = address.clone().into_bytes();
            }
            MembershipChange::Demote { node_id } => {
                if !self.raw.store().conf_state().voters.contains(node_id) {
                    return Err(Rejection::ConfChange {
                        detail: format!("node {node_id} is not a voter"),
                    }
                    .into());
                }
                if *node_id == self.raw.raft.leader_id {
                    return Err(Rejection::ConfChange {
                        detail: format!("node {node_id} is the leader"),
                    }
                    .into());
                }
                single.node_id = *node_id;
                single.set_change_type(ConfChangeType::AddLearnerNode);
            }
            MembershipChange::Remove { node_id } => {
                // Callers move leadership off a node before removing it
                // (see the Cluster service); a leader removing itself would
                // leave the cluster leaderless until an election.
                if *node_id == self.raw.raft.leader_id {
                    return Err(Rejection::ConfChange {
                        detail: format!("node {node_id} is still the leader"),
                    }
                    .into());
                }
                single.node_id = *node_id;
                single.set_change_type(ConfChangeType::RemoveNode);
            }
        }
        let mut conf_change = ConfChangeV2::default();
        conf_change.set_transition(ConfChangeTransition::Auto);
        conf_change.set_changes(vec![single].into());
        conf_change.set_context(context.into());
        self.raw
            .propose_conf_change(
                tag.entry_context(blixard_api::unix_ms_now(), None),
                conf_change,
            )
            .map_err(|e| self.proposal_error(e))
    }

    fn transfer_leader(&mut self, to: Option<u64>) -> Result<u64> {
        let me = self.config.node_id;
        let target = match to {
            Some(to) => Some(to),
            None if self.raw.raft.state == StateRole::Leader => {
                let raft = &self.raw.raft;
                self.raw
                    .store()
                    .conf_state()
                    .voters
                    .iter()
                    .filter(|id| **id != me)
                    .max_by_key(|id| raft.prs().get(**id).map_or(0, |p| p.matched))
                    .copied()
            }
            None => {
                return Err(Rejection::ConfChange {
                    detail: "only the leader can choose whom to hand leadership to".into(),
                }
                .into())
            }
        };
        let Some(target) = target else {
            return Err(Rejection::ConfChange {
                detail: "there is no other voter to take over leadership".into(),
            }
            .into());
        };
        tracing::info!(to = target, "transferring leadership");
        self.raw.transfer_leader(target);
        Ok(target)
    }

    /// Leader only: while there are fewer voters than the cluster's
    /// `voters` setting, promote one learner that is active and caught up.
    /// The others stay learners: workers that do not vote.
    fn promote_caught_up_learner(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || raft.has_pending_conf() {
            return;
        }
        let voters_wanted = self.shared_state(|s| s.settings.voters) as usize;
        if self.raw.store().conf_state().voters.len() >= voters_wanted {
            return;
        }
        let committed = raft.raft_log.committed;
        let learners = self.raw.store().conf_state().learners.clone();
        let Some(learner) = learners.into_iter().find(|id| {
            raft.prs().get(*id).is_some_and(|p| {
                p.recent_active
                    && p.matched > 0
                    && p.matched + LEARNER_CATCH_UP_LAG_ENTRIES >= committed
            })
        }) else {
            return;
        };
        let mut single = ConfChangeSingle {
            node_id: learner,
            ..Default::default()
        };
        single.set_change_type(ConfChangeType::AddNode);
        let mut conf_change = ConfChangeV2::default();
        conf_change.set_changes(vec![single].into());
        match self.raw.propose_conf_change(Vec::new(), conf_change) {
            Ok(()) => tracing::info!(node_id = learner, "promoting caught-up learner to voter"),
            Err(error) => tracing::warn!(%error, node_id = learner, "learner promotion refused"),
        }
    }

    /// Re-opens the connections to members not heard from in
    /// `silence_ticks`: a peer that restarted behind a connection the
    /// network never closed would otherwise stay unreachable.
    fn reset_silent_peers(&mut self, silence_ticks: u64) {
        let me = self.config.node_id;
        let conf_state = self.raw.store().conf_state();
        let members: Vec<u64> = conf_state
            .voters
            .iter()
            .chain(conf_state.learners.iter())
            .copied()
            .filter(|id| *id != me)
            .collect();
        for id in members {
            let heard = *self.last_heard_tick.entry(id).or_insert(self.ticks);
            if self.ticks - heard >= silence_ticks {
                tracing::debug!(node_id = id, "peer silent; re-opening its connection");
                self.transport.reset(id);
                self.last_heard_tick.insert(id, self.ticks);
            }
        }
    }

    /// Keeps the cluster's record of this node's address current (it may
    /// have restarted on a new address). Fire and forget: checked again.
    fn check_own_address(&mut self) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return;
        }
        let id = self.config.node_id;
        let known = self.shared_state(|s| s.nodes.get(&id).map(|n| n.address.clone()));
        let is_member = self.raw.store().conf_state().voters.contains(&id)
            || self.raw.store().conf_state().learners.contains(&id);
        if !is_member || known.as_deref() == Some(self.config.address.as_str()) {
            return;
        }
        let command = Command::SetNodeAddress {
            node_id: id,
            address: self.config.address.clone(),
        };
        // Tagged with this node as proposer: the state machine lets only a
        // node itself change its address. No client waits for request 0.
        let tag = ProposalTag {
            proposer: id,
            request_id: 0,
        };
        let context = tag.entry_context(blixard_api::unix_ms_now(), None);
        if let Err(error) = self.raw.propose(context, command.encode()) {
            tracing::debug!(%error, "could not propose this node's address yet");
        }
    }

    fn shared_state<R>(&self, read: impl FnOnce(&ClusterState) -> R) -> R {
        self.shared.published.read(read)
    }

    /// One pass of the raft-rs Ready protocol.
    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();

        // 1. Send messages that need no persistence (the leader's appends).
        let messages = ready.take_messages();
        self.send_messages(messages);

        let env = self.raw.store().env();
        let mut wtxn = env.write_txn()?;

        // 2. Install a snapshot from the leader.
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.install_snapshot(&mut wtxn, &snapshot)?;
        }

        // 3. Apply committed entries (state rows and applied index together).
        let committed = ready.take_committed_entries();
        let mut answers = Vec::new();
        self.apply_entries(&mut wtxn, committed, &mut answers)?;

        // 4. Persist new log entries.
        self.raw.mut_store().append(&mut wtxn, ready.entries())?;

        // 5. Persist the hard state (term, vote, commit).
        let mut durable = !ready.entries().is_empty() || !ready.snapshot().is_empty();
        if let Some(hard_state) = ready.hs() {
            durable |= self.raw.store().hard_state_needs_sync(hard_state);
            self.raw.mut_store().set_hard_state(&mut wtxn, hard_state)?;
        }

        // Clients may hear before the fsync below: a committed entry is
        // already durable on a quorum, and a restart re-applies it with the
        // same result (applying is deterministic).
        self.answer(answers);

        // One commit for all of the above, synced fully only when raft
        // needs it to be (new entries, snapshot, term or vote).
        self.raw.store().commit(wtxn, durable)?;

        // 6. Messages that had to wait for persistence (votes, append acks).
        let persisted = ready.take_persisted_messages();
        self.send_messages(persisted);

        // Reads confirmed by this Ready wait for their index to be applied.
        for read_state in ready.take_read_states() {
            let tag = ProposalTag::decode(&read_state.request_ctx);
            if let Some(tag) = tag.filter(|t| t.proposer == self.config.node_id) {
                self.pending.confirm_read(tag.request_id, read_state.index);
            }
        }

        // 7. Advance, then handle what the LightReady still holds (often
        //    nothing: then no transaction at all).
        let mut light = self.raw.advance(ready);
        let commit = light.commit_index();
        let committed = light.take_committed_entries();
        if commit.is_some() || !committed.is_empty() || self.needs_compaction() {
            let mut wtxn = env.write_txn()?;
            if let Some(commit) = commit {
                self.raw.mut_store().set_commit(&mut wtxn, commit)?;
            }
            let mut answers = Vec::new();
            self.apply_entries(&mut wtxn, committed, &mut answers)?;
            self.answer(answers);
            self.maybe_compact(&mut wtxn)?;
            self.raw.store().commit(wtxn, false)?;
        }
        self.send_messages(light.take_messages());

        // 8. Everything committed so far is applied.
        self.raw.advance_apply();
        self.pending.release_reads(self.raw.store().applied_index());
        Ok(())
    }

    fn send_messages(&mut self, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            // What a peer last said its address is wins over the state's
            // record: a voter restarted on a new address hears nobody
            // until its record changes, and it cannot change it without
            // a leader it hears (the transport authenticated the sender).
            let address = self
                .learned_addresses
                .get(&to)
                .cloned()
                .or_else(|| self.shared_state(|s| s.nodes.get(&to).map(|n| n.address.clone())));
            match address {
                Some(address) => self.transport.send(to, &address, message),
                None => tracing::debug!(to, "no address known for peer; message dropped"),
            }
            if is_snapshot {
                // The stream to a peer is ordered, so appends sent after the
                // snapshot arrive after it; if it is lost the follower
                // rejects them and the leader sends a new snapshot.
                self.raw.report_snapshot(to, SnapshotStatus::Finish);
            }
        }
    }

    fn install_snapshot(&mut self, wtxn: &mut RwTxn, snapshot: &Snapshot) -> Result<()> {
        let state = self.raw.mut_store().apply_snapshot(wtxn, snapshot)?;
        tracing::info!(
            index = snapshot.get_metadata().index,
            vms = state.vms.len(),
            "installed snapshot from leader"
        );
        self.shared.published.replace(state);
        self.shared.reset_feed();
        Ok(())
    }

    fn needs_compaction(&self) -> bool {
        let store = self.raw.store();
        store.applied_index().saturating_sub(store.snapshot_index())
            > self.config.snapshot_threshold_entries
    }

    fn maybe_compact(&mut self, wtxn: &mut RwTxn) -> Result<()> {
        if !self.needs_compaction() {
            return Ok(());
        }
        let store = self.raw.store();
        let applied = store.applied_index();
        tracing::info!(
            compact_to = applied,
            log_entries = store.log_len(),
            "compacting raft log"
        );
        self.raw.mut_store().compact(wtxn, applied)
    }

    fn answer(&mut self, answers: Vec<(u64, Result<Applied>)>) {
        if answers.is_empty() {
            return;
        }
        // A client that reads the status after its answer (a membership
        // change, say) must see the status its entry produced.
        self.publish_status();
        for (request_id, result) in answers {
            self.pending.answer_proposal(request_id, result);
        }
    }

    fn publish_status(&mut self) {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let conf_state = store.conf_state();
        let members = self.shared_state(|state| {
            let member = |node_id: u64, voter: bool| MemberStatus {
                node_id,
                address: state
                    .nodes
                    .get(&node_id)
                    .map(|n| n.address.clone())
                    .unwrap_or_default(),
                voter,
            };
            let mut members: Vec<MemberStatus> = conf_state
                .voters
                .iter()
                .map(|id| member(*id, true))
                .chain(conf_state.learners.iter().map(|id| member(*id, false)))
                .collect();
            members.sort_by_key(|m| m.node_id);
            members
        });
        let status = RaftStatus {
            node_id: self.config.node_id,
            leader_id: raft.leader_id,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: store.applied_index(),
            first_log_index: store.snapshot_index() + 1,
            role: raft.state.into(),
            members,
        };
        *self.shared.status.write().expect("status lock poisoned") = status;
    }
}
