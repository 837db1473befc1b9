//! Goal: no message a peer can send makes raft-rs panic once it passed
//! the guard. Method: build real `RawNode`s (leader, follower, a fresh
//! node with no configuration) over a log with a compacted prefix, then
//! step random sequences of peer messages, built around the indexes and
//! terms where raft-rs's checks sit, through the guard, processing each
//! Ready as the real loop does; any panic fails the case. A control test
//! shows that the same harness does see raft-rs panic without the guard.

use std::panic::{catch_unwind, AssertUnwindSafe};

use proptest::prelude::*;
use protobuf::{Message as _, ProtobufEnum as _};
use raft::prelude::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState,
    Message, MessageType, Snapshot,
};
use raft::storage::MemStorage;
use raft::{Config, RawNode};

use super::{check, Reason};
use crate::command::{Command, ProposalTag};
use crate::state::ClusterState;

const ME: u64 = 1;
/// The log: a snapshot at 10 (term 1), entries 11..=20 at term 2, 15
/// committed.
const SNAPSHOT_INDEX: u64 = 10;
const LAST_INDEX: u64 = 20;
const COMMITTED: u64 = 15;

#[derive(Debug, Clone, Copy)]
enum Role {
    Leader,
    Follower,
    Fresh,
}

fn conf_state() -> ConfState {
    let mut conf = ConfState::default();
    conf.set_voters(vec![1, 2, 3]);
    conf.set_learners(vec![4]);
    conf
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        ..Entry::default()
    }
}

fn node(role: Role) -> RawNode<MemStorage> {
    let storage = MemStorage::new();
    if !matches!(role, Role::Fresh) {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = SNAPSHOT_INDEX;
        snapshot.mut_metadata().term = 1;
        snapshot.mut_metadata().set_conf_state(conf_state());
        let mut core = storage.wl();
        core.apply_snapshot(snapshot).unwrap();
        let entries: Vec<Entry> = (SNAPSHOT_INDEX + 1..=LAST_INDEX)
            .map(|i| entry(i, 2))
            .collect();
        core.append(&entries).unwrap();
        core.set_hardstate(HardState {
            term: 2,
            commit: COMMITTED,
            ..HardState::default()
        });
    }
    let config = Config {
        id: ME,
        applied: if matches!(role, Role::Fresh) {
            0
        } else {
            SNAPSHOT_INDEX
        },
        check_quorum: true,
        pre_vote: true,
        ..Config::default()
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut raw = RawNode::new(&config, storage, &logger).unwrap();
    match role {
        Role::Leader => {
            raw.raft.become_candidate();
            raw.raft.become_leader();
            // As if a quorum had acknowledged the new term's first entry:
            // the leader then serves reads, where raft-rs reads entries.
            raw.raft.raft_log.commit_to(LAST_INDEX + 1);
            assert!(raw.raft.commit_to_current_term());
        }
        Role::Follower => raw.raft.become_follower(2, 2),
        Role::Fresh => {}
    }
    raw
}

/// Handles a Ready as the real loop does, over the in-memory store.
fn process_ready(raw: &mut RawNode<MemStorage>) {
    if !raw.has_ready() {
        return;
    }
    let mut ready = raw.ready();
    let store = raw.raft.raft_log.store.clone();
    if !ready.snapshot().is_empty() {
        store.wl().apply_snapshot(ready.snapshot().clone()).unwrap();
    }
    let _ = ready.take_committed_entries();
    store.wl().append(ready.entries()).unwrap();
    if let Some(hard_state) = ready.hs() {
        store.wl().set_hardstate(hard_state.clone());
    }
    let _ = ready.take_messages();
    let _ = ready.take_persisted_messages();
    let mut light = raw.advance(ready);
    if let Some(commit) = light.commit_index() {
        store.wl().mut_hard_state().set_commit(commit);
    }
    let _ = light.take_committed_entries();
    raw.advance_apply();
}

fn tag(proposer: u64) -> Vec<u8> {
    ProposalTag {
        proposer,
        request_id: 7,
    }
    .encode()
}

fn command_bytes() -> Vec<u8> {
    Command::DeleteVm { name: "web".into() }.encode()
}

fn conf_change_bytes(node_id: u64, address: &str) -> Vec<u8> {
    let mut single = ConfChangeSingle {
        node_id,
        ..ConfChangeSingle::default()
    };
    single.set_change_type(ConfChangeType::AddLearnerNode);
    let mut change = ConfChangeV2::default();
    change.set_changes(vec![single].into());
    change.set_context(address.as_bytes().to_vec().into());
    change.write_to_bytes().unwrap()
}

/// Indexes and terms around every boundary of the test log.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(3),
        Just(SNAPSHOT_INDEX - 1),
        Just(SNAPSHOT_INDEX),
        Just(SNAPSHOT_INDEX + 1),
        Just(COMMITTED - 1),
        Just(COMMITTED),
        Just(COMMITTED + 1),
        Just(LAST_INDEX),
        Just(LAST_INDEX + 1),
        Just(LAST_INDEX + 2),
        Just(1_000_000_000),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

fn peer() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(1), Just(2), Just(3), Just(4), Just(77)]
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(command_bytes()),
        Just(conf_change_bytes(5, "127.0.0.1:7005")),
        Just(conf_change_bytes(0, "")),
        Just(ClusterState::default().encode()),
        prop::collection::vec(any::<u8>(), 0..16),
    ]
}

fn an_entry() -> impl Strategy<Value = Entry> {
    (number(), number(), 0..3i32, data(), peer()).prop_map(|(index, term, kind, data, proposer)| {
        let mut entry = entry(index, term % 8);
        entry.set_entry_type(match kind {
            0 => EntryType::EntryNormal,
            1 => EntryType::EntryConfChange,
            _ => EntryType::EntryConfChangeV2,
        });
        entry.data = data.into();
        entry.context = tag(proposer).into();
        entry
    })
}

fn a_snapshot() -> impl Strategy<Value = Snapshot> {
    (
        number(),
        0..4u64,
        prop::collection::vec(peer(), 0..4),
        prop::collection::vec(peer(), 0..3),
        data(),
    )
        .prop_map(|(index, term, voters, learners, data)| {
            let mut snapshot = Snapshot::default();
            snapshot.mut_metadata().index = index;
            snapshot.mut_metadata().term = term;
            let mut conf = ConfState::default();
            conf.set_voters(voters);
            conf.set_learners(learners);
            snapshot.mut_metadata().set_conf_state(conf);
            snapshot.data = data.into();
            snapshot
        })
}

fn a_message() -> impl Strategy<Value = Message> {
    (
        (0..19i32, peer(), prop_oneof![Just(ME), peer()]),
        (0..6u64, number(), number(), number()),
        prop::collection::vec(an_entry(), 0..4),
        (any::<bool>(), number(), proptest::option::of(a_snapshot())),
        (any::<bool>(), number()),
    )
        .prop_map(
            |(
                (kind, from, to),
                (term, log_term, index, commit),
                entries,
                (reject, reject_hint, snapshot),
                (contiguous, request_snapshot),
            )| {
                let mut message = Message::default();
                message.set_msg_type(MessageType::from_i32(kind).unwrap_or(MessageType::MsgHup));
                message.from = from;
                message.to = to;
                message.term = term;
                message.log_term = log_term % 8;
                message.index = index;
                message.commit = commit;
                let mut entries = entries;
                if contiguous {
                    // Make the entries line up after the anchor, as real
                    // appends do, so the deeper checks are reached too.
                    for (offset, entry) in entries.iter_mut().enumerate() {
                        entry.index = index.wrapping_add(offset as u64 + 1);
                        entry.term = term;
                    }
                }
                message.set_entries(entries.into());
                message.reject = reject;
                message.reject_hint = reject_hint;
                message.request_snapshot = request_snapshot;
                if let Some(snapshot) = snapshot {
                    message.set_snapshot(snapshot);
                }
                message
            },
        )
}

/// Steps every message the guard lets through; Err names the one that
/// panicked.
fn survive(role: Role, messages: Vec<Message>) -> Result<(), String> {
    let mut raw = node(role);
    for message in messages {
        if check(&message, &raw.raft).is_err() {
            continue;
        }
        let shown = format!("{message:?}");
        let stepped = catch_unwind(AssertUnwindSafe(|| {
            let _ = raw.step(message);
            process_ready(&mut raw);
        }));
        if stepped.is_err() {
            return Err(format!("{role:?} panicked on {shown}"));
        }
    }
    Ok(())
}

proptest! {
    // 512 sequences in CI; PROPTEST_CASES=N runs a longer search.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_peer_message_past_the_guard_panics_a_node(
        role in prop_oneof![Just(Role::Leader), Just(Role::Follower), Just(Role::Fresh)],
        messages in prop::collection::vec(a_message(), 1..12),
    ) {
        if let Err(panicked) = survive(role, messages) {
            prop_assert!(false, "{}", panicked);
        }
    }
}

fn message(kind: MessageType, from: u64) -> Message {
    let mut message = Message::default();
    message.set_msg_type(kind);
    message.from = from;
    message.to = ME;
    message.term = 2;
    message
}

/// The attacks from the security review, each refused by the guard and
/// each a panic (or a foreign commit) without it: the harness above can
/// fail.
#[test]
fn the_reviewed_attacks_are_refused_and_would_panic_unguarded() {
    let mut empty_proposal = message(MessageType::MsgPropose, 2);
    empty_proposal.term = 0;
    let mut huge_commit = message(MessageType::MsgHeartbeat, 2);
    huge_commit.commit = 1_000_000_000;
    let mut empty_read = message(MessageType::MsgReadIndex, 2);
    empty_read.term = 0;
    for (role, attack) in [
        (Role::Leader, empty_proposal),
        (Role::Follower, huge_commit),
        (Role::Leader, empty_read),
    ] {
        assert!(check(&attack, &node(role).raft).is_err(), "{attack:?}");
        let mut raw = node(role);
        let unguarded = catch_unwind(AssertUnwindSafe(|| {
            let _ = raw.step(attack.clone());
            process_ready(&mut raw);
        }));
        assert!(
            unguarded.is_err(),
            "raft-rs took {attack:?} without a guard"
        );
    }

    let mut stranger = message(MessageType::MsgPropose, 77);
    stranger.term = 0;
    let mut proposed = entry(0, 0);
    proposed.data = command_bytes().into();
    proposed.context = tag(77).into();
    stranger.set_entries(vec![proposed.clone()].into());
    let refused = check(&stranger, &node(Role::Leader).raft).unwrap_err();
    assert_eq!(refused.reason, Reason::NotAMember, "{refused}");

    let mut impostor = message(MessageType::MsgPropose, 2);
    impostor.term = 0;
    proposed.context = tag(3).into();
    impostor.set_entries(vec![proposed.clone()].into());
    assert!(check(&impostor, &node(Role::Leader).raft).is_err());
    proposed.context = tag(2).into();
    impostor.set_entries(vec![proposed].into());
    assert_eq!(check(&impostor, &node(Role::Leader).raft), Ok(()));

    let mut garbage_snapshot = message(MessageType::MsgSnapshot, 2);
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 30;
    snapshot.mut_metadata().term = 2;
    snapshot.mut_metadata().set_conf_state(conf_state());
    snapshot.data = b"not a state".to_vec().into();
    garbage_snapshot.set_snapshot(snapshot);
    assert!(check(&garbage_snapshot, &node(Role::Follower).raft).is_err());

    let mut rewrite = message(MessageType::MsgAppend, 2);
    rewrite.index = COMMITTED - 2;
    rewrite.log_term = 2;
    rewrite.set_entries(vec![entry(COMMITTED - 1, 3)].into());
    rewrite.term = 3;
    assert!(check(&rewrite, &node(Role::Follower).raft).is_err());
}

/// Goal: no node outside this node's configuration can lead it, and in
/// the leader's term only the leader sends a leader's messages. Method:
/// a follower (members 1-4, leader 2 in term 2) gets a heartbeat of a
/// newer term from node 5 (a worker's certificate), then one of its own
/// term from member 3; only the leader's own passes.
#[test]
fn only_members_and_the_leader_are_heard() {
    let raw = node(Role::Follower);
    let mut outsider = message(MessageType::MsgHeartbeat, 5);
    outsider.term = 3;
    let refused = check(&outsider, &raw.raft).unwrap_err();
    assert_eq!(refused.reason, Reason::NotAMember, "{refused}");
    let rival = message(MessageType::MsgHeartbeat, 3);
    let refused = check(&rival, &raw.raft).unwrap_err();
    assert_eq!(
        refused.reason,
        Reason::NotTheLeader { from: 3, term: 2 },
        "{refused}"
    );
    assert_eq!(
        check(&message(MessageType::MsgHeartbeat, 2), &raw.raft),
        Ok(())
    );
}
