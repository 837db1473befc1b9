//! The Raft log, hard state and cluster state, durable in one LMDB
//! environment (heed).
//!
//! Invariants:
//! - `first_index() == snapshot_index + 1` and the log holds every index in
//!   `[first_index, last_index]`, nothing else.
//! - The applied index and the cluster state it produced are written in the
//!   same transaction, so after a crash the state is exactly that of
//!   `applied_index` and no entry is applied twice.
//! - `snapshot_index <= applied_index <= commit <= last_index` once the
//!   transaction of a Ready is committed.
//!
//! Writes go through a caller-owned `RwTxn` so one Ready costs one fsync.
//! The in-memory copies of the metadata are updated as the writes are made;
//! if the transaction then fails to commit the node stops (see `node.rs`),
//! so they never outlive a failed write.

use std::path::Path;

use heed::types::{Bytes, Str, U64};
use heed::{
    byteorder::BigEndian, CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, FlagSetMode,
    RwTxn, WithoutTls,
};
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::records::{NodeRecord, Settings, Token, VmRecord};
use crate::state::{ClusterState, Touched};
use crate::{Error, Result};

type IndexKey = U64<BigEndian>;

/// LMDB reserves address space, not disk: 64 GiB of map is only a ceiling.
const MAP_SIZE_BYTES: usize = 64 * 1024 * 1024 * 1024;
const DATABASES_MAX: u32 = 8;

const KEY_HARD_STATE: &str = "hard_state";
const KEY_CONF_STATE: &str = "conf_state";
const KEY_SNAPSHOT_META: &str = "snapshot_metadata";
const KEY_APPLIED_INDEX: &str = "applied_index";
const KEY_REVISION: &str = "revision";
const KEY_SETTINGS: &str = "settings";
/// How many request-id epochs this node has begun (see
/// [`LogStore::begin_request_epoch`]).
const KEY_REQUEST_EPOCH: &str = "request_epoch";
/// Who this store belongs to (see [`DataIdentity`]), as JSON.
const KEY_IDENTITY: &str = "identity";
/// All tokens as one row: they are few (`TOKENS_MAX`) and change rarely.
const KEY_TOKENS: &str = "tokens";
/// Audit records are rows `audit/SEQ` (SEQ zero-padded, so they sort).
const AUDIT_PREFIX: &str = "audit/";
/// Event records are rows `event/SEQ`, as audit records are.
const EVENT_PREFIX: &str = "event/";
/// Removed node ids, one row (see `ClusterState::removed_nodes`).
const KEY_REMOVED: &str = "removed_nodes";
/// Custom roles, one row (at most `ROLES_MAX`).
const KEY_ROLES: &str = "roles";
/// Unspent join tokens, one row (at most `JOIN_TOKENS_MAX`).
const KEY_JOIN_TOKENS: &str = "join_tokens";
/// Node ids a join token was spent on (see `ClusterState::issued_node_ids`),
/// written with the join tokens.
const KEY_ISSUED: &str = "issued_node_ids";

/// The file LMDB keeps its pages in, inside the data directory.
pub const STORE_FILE: &str = "data.mdb";
/// The format of data directories this build writes and reads.
pub const DATA_FORMAT_VERSION: u32 = 1;
/// Below this much free space, a failed write is reported as a full disk
/// (LMDB reports a short write as EIO, which names nothing useful).
const DISK_FREE_BYTES_MIN: u64 = 1024 * 1024;

/// Who a data directory belongs to: written on its first start, before
/// anything else, beside the store (the daemon's `identity.toml`) and
/// inside it, and checked on every start, so a store that was emptied,
/// swapped or moved to another node is refused instead of founding or
/// joining as something it is not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataIdentity {
    pub format_version: u32,
    /// The id the cluster got when it was founded.
    pub cluster_id: String,
    pub node_id: u64,
    /// This node founded the cluster: a start that died before the raft
    /// state was bootstrapped finishes founding it; no other node ever
    /// founds (a worker's store holds no raft state either).
    #[serde(default)]
    pub founder: bool,
}

fn audit_key(seq: u64) -> String {
    format!("{AUDIT_PREFIX}{seq:020}")
}

fn event_key(seq: u64) -> String {
    format!("{EVENT_PREFIX}{seq:020}")
}

/// Raft storage plus the state machine's tables.
pub struct LogStore {
    env: Env<WithoutTls>,
    entries: Database<'static, IndexKey, Bytes>,
    meta: Database<'static, Str, Bytes>,
    vms: Database<'static, Str, Bytes>,
    nodes: Database<'static, IndexKey, Bytes>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry folded into the state (compacted).
    snapshot_meta: SnapshotMetadata,
    last_index: u64,
    applied_index: u64,
}

fn corrupt(what: &'static str, detail: impl ToString) -> Error {
    Error::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

fn decode_pb<M: protobuf::Message>(what: &'static str, bytes: &[u8]) -> Result<M> {
    M::parse_from_bytes(bytes).map_err(|e| corrupt(what, e))
}

fn encode_pb<M: protobuf::Message>(message: &M) -> Vec<u8> {
    message
        .write_to_bytes()
        .expect("raft messages always encode")
}

fn decode_u64(what: &'static str, bytes: &[u8]) -> Result<u64> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| corrupt(what, "not 8 bytes"))?;
    Ok(u64::from_be_bytes(array))
}

/// Bytes an unprivileged writer may still use on the filesystem of
/// `dir` (`None` when it cannot be asked).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    #[allow(clippy::unnecessary_cast)] // the field types differ by platform
    Some((stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64))
}

/// Names a full disk as such: ENOSPC or EDQUOT when LMDB passes them on,
/// and a write error with the filesystem (nearly) full, since LMDB turns
/// a short write into EIO.
fn explain_write_error(dir: &Path, error: heed::Error) -> Error {
    let full = match &error {
        // heed passes LMDB's errno codes on as I/O errors.
        heed::Error::Io(e) => matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)),
        _ => false,
    };
    let free = free_bytes(dir);
    if full || free.is_some_and(|free| free < DISK_FREE_BYTES_MIN) {
        return Error::DiskFull {
            path: dir.display().to_string(),
            free_bytes: free.unwrap_or(0),
            detail: error.to_string(),
        };
    }
    Error::Storage(error)
}

fn encode_identity(identity: &DataIdentity) -> Vec<u8> {
    serde_json::to_vec(identity).expect("an identity always encodes")
}

impl LogStore {
    /// Opens (creating if needed) the store in `dir`. A store that is not
    /// an LMDB file, or is shorter than the pages its header names (a
    /// truncated copy, a disk that lost its tail), is refused here: reading
    /// a page past the end of a mapped file would kill the process with
    /// SIGBUS, naming nothing.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_as(dir, None)
    }

    /// [`LogStore::open`], recording `identity` in the transaction that
    /// creates a new store (an existing store's record is kept): a store
    /// on disk always names its owner, whenever its start died.
    pub fn open_as(dir: &Path, identity: Option<&DataIdentity>) -> Result<Self> {
        let path = dir.join(STORE_FILE);
        let unreadable = |detail: String| Error::StoreUnreadable {
            path: path.display().to_string(),
            detail,
        };
        // Only what says the file is not a store is "unreadable"; a
        // permission or memory error is the directory's, not the file's.
        let open_error = |e: heed::Error| match e {
            heed::Error::Mdb(
                heed::MdbError::Invalid
                | heed::MdbError::VersionMismatch
                | heed::MdbError::Corrupted
                | heed::MdbError::PageNotFound,
            ) => unreadable(e.to_string()),
            heed::Error::Io(ref source)
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                explain_write_error(dir, e)
            }
            heed::Error::Io(source) => Error::DataDir {
                path: dir.display().to_string(),
                source,
            },
            e => Error::Storage(e),
        };
        std::fs::create_dir_all(dir).map_err(|source| Error::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        // SAFETY: heed requires that the same environment is not opened
        // twice in one process and that the files are not modified by
        // others; the daemon takes an exclusive lock on the data directory
        // before opening it.
        let env = unsafe {
            EnvOpenOptions::new()
                .read_txn_without_tls()
                .map_size(MAP_SIZE_BYTES)
                .max_dbs(DATABASES_MAX)
                .open(dir)
        }
        .map_err(open_error)?;
        // Opening read only the two meta pages (with pread); nothing past
        // them has been touched through the map yet.
        let len_bytes = std::fs::metadata(&path)
            .map_err(|e| unreadable(e.to_string()))?
            .len();
        let page_bytes = u64::from(env.unnamed_database_stat().page_size);
        let needed_bytes = (env.info().last_page_number as u64 + 1) * page_bytes;
        if len_bytes < needed_bytes {
            return Err(unreadable(format!(
                "truncated: {len_bytes} bytes, but its last page ends at {needed_bytes}"
            )));
        }
        let wtxn = env.write_txn()?;
        let (entries, meta, vms, nodes) = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_> {
                let meta = opener.create_database::<Str, Bytes>(wtxn, Some("raft_meta"))?;
                if let Some(identity) = identity {
                    if meta.get(wtxn, KEY_IDENTITY)?.is_none() {
                        meta.put(wtxn, KEY_IDENTITY, &encode_identity(identity))?;
                    }
                }
                Ok(CommitOrAbort::<_, ()>::Commit((
                    opener.create_database::<IndexKey, Bytes>(wtxn, Some("raft_entries"))?,
                    meta,
                    opener.create_database::<Str, Bytes>(wtxn, Some("state_vms"))?,
                    opener.create_database::<IndexKey, Bytes>(wtxn, Some("state_nodes"))?,
                )))
            })
            .map_err(|e| match e {
                Error::Storage(e) => explain_write_error(dir, e),
                e => e,
            })?
            .unwrap_commit();
        let mut store = Self {
            env,
            entries,
            meta,
            vms,
            nodes,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot_meta: SnapshotMetadata::default(),
            last_index: 0,
            applied_index: 0,
        };
        store.load_metadata()?;
        Ok(store)
    }

    fn load_metadata(&mut self) -> Result<()> {
        let rtxn = self.env.read_txn()?;
        if let Some(bytes) = self.meta.get(&rtxn, KEY_HARD_STATE)? {
            self.hard_state = decode_pb("hard state", bytes)?;
        }
        if let Some(bytes) = self.meta.get(&rtxn, KEY_CONF_STATE)? {
            self.conf_state = decode_pb("conf state", bytes)?;
        }
        if let Some(bytes) = self.meta.get(&rtxn, KEY_SNAPSHOT_META)? {
            self.snapshot_meta = decode_pb("snapshot metadata", bytes)?;
        }
        if let Some(bytes) = self.meta.get(&rtxn, KEY_APPLIED_INDEX)? {
            self.applied_index = decode_u64("applied index", bytes)?;
        }
        self.last_index = match self.entries.last(&rtxn)? {
            Some((index, _)) => index,
            None => self.snapshot_meta.index,
        };
        let first = self.snapshot_meta.index + 1;
        if self.last_index >= first {
            // The log must be contiguous from first_index.
            let Some((lowest, _)) = self.entries.first(&rtxn)? else {
                unreachable!("last exists, so first exists");
            };
            if lowest != first {
                return Err(corrupt(
                    "raft log",
                    format!("first entry is {lowest}, expected {first}"),
                ));
            }
        }
        if self.applied_index < self.snapshot_meta.index || self.applied_index > self.last_index {
            return Err(corrupt(
                "applied index",
                format!(
                    "{} outside [{}, {}]",
                    self.applied_index, self.snapshot_meta.index, self.last_index
                ),
            ));
        }
        Ok(())
    }

    /// Begins a new epoch of request ids and returns it (1 on a new store):
    /// durable before any request of the epoch is proposed, so no id this
    /// node hands out repeats one an earlier incarnation proposed, whose
    /// entry may still apply after a restart.
    pub fn begin_request_epoch(&mut self) -> Result<u64> {
        let mut wtxn = self.env.write_txn()?;
        let epoch = match self.meta.get(&wtxn, KEY_REQUEST_EPOCH)? {
            Some(bytes) => decode_u64("request epoch", bytes)? + 1,
            None => 1,
        };
        self.meta
            .put(&mut wtxn, KEY_REQUEST_EPOCH, &epoch.to_be_bytes())?;
        self.commit(wtxn, true)?;
        Ok(epoch)
    }

    /// The identity recorded inside the store, if any.
    pub fn identity(&self) -> Result<Option<DataIdentity>> {
        let rtxn = self.env.read_txn()?;
        self.meta
            .get(&rtxn, KEY_IDENTITY)?
            .map(|bytes| serde_json::from_slice(bytes).map_err(|e| corrupt("identity", e)))
            .transpose()
    }

    /// Records `identity` inside the store, durably.
    pub fn record_identity(&mut self, identity: &DataIdentity) -> Result<()> {
        let mut wtxn = self.env.write_txn()?;
        self.meta
            .put(&mut wtxn, KEY_IDENTITY, &encode_identity(identity))?;
        self.commit(wtxn, true)
    }

    /// The environment, for opening a write transaction that spans a Ready.
    pub fn env(&self) -> Env<WithoutTls> {
        self.env.clone()
    }

    /// True once this node holds any raft state (it bootstrapped, or a
    /// leader has reached it).
    pub fn is_initialized(&self) -> bool {
        self.hard_state.term > 0
            || !self.conf_state.voters.is_empty()
            || !self.conf_state.learners.is_empty()
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_meta.index
    }

    /// Number of entries still held in the log.
    pub fn log_len(&self) -> u64 {
        self.last_index - self.snapshot_meta.index
    }

    /// Starts a new single-voter cluster: the log begins after a snapshot at
    /// index 1 (term 1) whose state already names this node, so every node
    /// that joins later receives that snapshot and learns the first voter.
    /// Makes this store a new one-node cluster holding `tokens` (the
    /// management token the bootstrapping node hands its operator).
    pub fn bootstrap(
        &mut self,
        node_id: u64,
        address: &str,
        settings: &Settings,
        tokens: &[Token],
    ) -> Result<()> {
        assert!(!self.is_initialized(), "bootstrap of an initialized store");
        let env = self.env();
        let mut wtxn = env.write_txn()?;
        let conf_state = ConfState {
            voters: vec![node_id],
            ..Default::default()
        };
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 1;
        snapshot.mut_metadata().term = 1;
        snapshot.mut_metadata().set_conf_state(conf_state);
        let mut state = ClusterState {
            settings: settings.clone(),
            tokens: tokens
                .iter()
                .map(|t| (t.accessor.clone(), t.clone()))
                .collect(),
            ..ClusterState::default()
        };
        state.add_member(node_id, address.to_string());
        snapshot.data = state.encode().into();
        self.apply_snapshot(&mut wtxn, &snapshot)?;
        let hard_state = HardState {
            term: 1,
            commit: 1,
            ..Default::default()
        };
        self.set_hard_state(&mut wtxn, &hard_state)?;
        self.commit(wtxn, true)
    }

    /// Reads the cluster state tables (as of `applied_index`).
    pub fn load_state(&self) -> Result<ClusterState> {
        let rtxn = self.env.read_txn()?;
        self.read_state(&rtxn)
    }

    fn read_state(&self, rtxn: &heed::RoTxn) -> Result<ClusterState> {
        let mut state = ClusterState::default();
        if let Some(bytes) = self.meta.get(rtxn, KEY_REVISION)? {
            state.revision = decode_u64("revision", bytes)?;
        }
        if let Some(bytes) = self.meta.get(rtxn, KEY_SETTINGS)? {
            state.settings = serde_json::from_slice(bytes).map_err(|e| corrupt("settings", e))?;
        }
        if let Some(bytes) = self.meta.get(rtxn, KEY_TOKENS)? {
            state.tokens = serde_json::from_slice(bytes).map_err(|e| corrupt("tokens", e))?;
        }
        if let Some(bytes) = self.meta.get(rtxn, KEY_JOIN_TOKENS)? {
            state.join_tokens =
                serde_json::from_slice(bytes).map_err(|e| corrupt("join tokens", e))?;
        }
        if let Some(bytes) = self.meta.get(rtxn, KEY_ISSUED)? {
            state.issued_node_ids =
                serde_json::from_slice(bytes).map_err(|e| corrupt("issued node ids", e))?;
        }
        if let Some(bytes) = self.meta.get(rtxn, KEY_ROLES)? {
            state.roles = serde_json::from_slice(bytes).map_err(|e| corrupt("roles", e))?;
        }
        if let Some(bytes) = self.meta.get(rtxn, KEY_REMOVED)? {
            state.removed_nodes =
                serde_json::from_slice(bytes).map_err(|e| corrupt("removed nodes", e))?;
        }
        for item in self.meta.prefix_iter(rtxn, AUDIT_PREFIX)? {
            let (_, bytes) = item?;
            state
                .audit
                .push_back(serde_json::from_slice(bytes).map_err(|e| corrupt("audit record", e))?);
        }
        for item in self.meta.prefix_iter(rtxn, EVENT_PREFIX)? {
            let (_, bytes) = item?;
            state
                .events
                .push_back(serde_json::from_slice(bytes).map_err(|e| corrupt("event record", e))?);
        }
        for item in self.vms.iter(rtxn)? {
            let (name, bytes) = item?;
            let vm: VmRecord =
                serde_json::from_slice(bytes).map_err(|e| corrupt("VM record", e))?;
            state.vms.insert(name.to_string(), vm);
        }
        for item in self.nodes.iter(rtxn)? {
            let (id, bytes) = item?;
            let node: NodeRecord =
                serde_json::from_slice(bytes).map_err(|e| corrupt("node record", e))?;
            state.nodes.insert(id, node);
        }
        Ok(state)
    }

    /// Appends entries, replacing any conflicting suffix of the log.
    pub fn append(&mut self, wtxn: &mut RwTxn, entries: &[Entry]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        assert!(
            first.index > self.snapshot_meta.index && first.index <= self.last_index + 1,
            "append at {} leaves a gap or overwrites the snapshot (snapshot {}, last {})",
            first.index,
            self.snapshot_meta.index,
            self.last_index
        );
        self.entries.delete_range(wtxn, &(first.index..))?;
        for entry in entries {
            self.entries.put(wtxn, &entry.index, &encode_pb(entry))?;
        }
        self.last_index = entries.last().map_or(self.last_index, |e| e.index);
        Ok(())
    }

    /// Commits `wtxn`. A durable commit has reached the disk when this
    /// returns. A non-durable one is for what the log can rebuild (applied
    /// state, the commit index, compaction): it syncs the data but not the
    /// meta page (LMDB's NOMETASYNC), so a power loss may undo it, never
    /// corrupt the store, and the next durable commit syncs it too.
    pub fn commit(&self, wtxn: RwTxn, durable: bool) -> Result<()> {
        let mode = if durable {
            FlagSetMode::Disable
        } else {
            FlagSetMode::Enable
        };
        // SAFETY: NO_META_SYNC keeps LMDB's integrity (its docs: "preserves
        // the ACI ... but not D"); flags are only changed here, on the one
        // thread that writes this environment.
        unsafe { self.env.set_flags(EnvFlags::NO_META_SYNC, mode)? };
        wtxn.commit()
            .map_err(|e| explain_write_error(self.env.path(), e))
    }

    /// Whether persisting `hard_state` must be durable: a changed term or
    /// vote must survive a crash before any vote is sent; the commit index
    /// need not (raft recovers it).
    pub fn hard_state_needs_sync(&self, hard_state: &HardState) -> bool {
        hard_state.term != self.hard_state.term || hard_state.vote != self.hard_state.vote
    }

    pub fn set_hard_state(&mut self, wtxn: &mut RwTxn, hard_state: &HardState) -> Result<()> {
        self.meta
            .put(wtxn, KEY_HARD_STATE, &encode_pb(hard_state))?;
        self.hard_state = hard_state.clone();
        Ok(())
    }

    pub fn set_commit(&mut self, wtxn: &mut RwTxn, commit: u64) -> Result<()> {
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = commit;
        self.set_hard_state(wtxn, &hard_state)
    }

    pub fn set_conf_state(&mut self, wtxn: &mut RwTxn, conf_state: &ConfState) -> Result<()> {
        self.meta
            .put(wtxn, KEY_CONF_STATE, &encode_pb(conf_state))?;
        self.conf_state = conf_state.clone();
        Ok(())
    }

    /// Records that entry `index` has been applied, together with the
    /// state rows it changed.
    pub fn record_applied(
        &mut self,
        wtxn: &mut RwTxn,
        index: u64,
        state: &ClusterState,
        touched: &[Touched],
    ) -> Result<()> {
        assert!(
            index > self.applied_index,
            "entry {index} applied twice (applied index {})",
            self.applied_index
        );
        for key in touched {
            self.write_row(wtxn, state, key)?;
        }
        self.meta
            .put(wtxn, KEY_REVISION, &state.revision.to_be_bytes())?;
        self.meta
            .put(wtxn, KEY_APPLIED_INDEX, &index.to_be_bytes())?;
        self.applied_index = index;
        Ok(())
    }

    fn write_row(&self, wtxn: &mut RwTxn, state: &ClusterState, key: &Touched) -> Result<()> {
        match key {
            Touched::Vm(name) => match state.vms.get(name) {
                Some(vm) => {
                    let bytes = serde_json::to_vec(vm).expect("VM records serialize");
                    self.vms.put(wtxn, name, &bytes)?;
                }
                None => {
                    self.vms.delete(wtxn, name)?;
                }
            },
            Touched::Node(id) => match state.nodes.get(id) {
                Some(node) => {
                    let bytes = serde_json::to_vec(node).expect("node records serialize");
                    self.nodes.put(wtxn, id, &bytes)?;
                }
                None => {
                    self.nodes.delete(wtxn, id)?;
                }
            },
            Touched::Settings => {
                let bytes = serde_json::to_vec(&state.settings).expect("settings serialize");
                self.meta.put(wtxn, KEY_SETTINGS, &bytes)?;
            }
            Touched::Tokens => {
                let bytes = serde_json::to_vec(&state.tokens).expect("tokens serialize");
                self.meta.put(wtxn, KEY_TOKENS, &bytes)?;
            }
            Touched::JoinTokens => {
                let bytes = serde_json::to_vec(&state.join_tokens).expect("tokens serialize");
                self.meta.put(wtxn, KEY_JOIN_TOKENS, &bytes)?;
                let bytes = serde_json::to_vec(&state.issued_node_ids).expect("ids serialize");
                self.meta.put(wtxn, KEY_ISSUED, &bytes)?;
            }
            Touched::Roles => {
                let bytes = serde_json::to_vec(&state.roles).expect("roles serialize");
                self.meta.put(wtxn, KEY_ROLES, &bytes)?;
            }
            Touched::Removed => {
                let bytes = serde_json::to_vec(&state.removed_nodes).expect("ids serialize");
                self.meta.put(wtxn, KEY_REMOVED, &bytes)?;
            }
            // Records only ever join at the back and fall off the front.
            Touched::Audit(seq) => {
                let record = state.audit.iter().rev().find(|r| r.seq == *seq);
                self.put_or_delete(wtxn, &audit_key(*seq), record)?;
            }
            Touched::Event(seq) => {
                let record = state.events.iter().rev().find(|r| r.seq == *seq);
                self.put_or_delete(wtxn, &event_key(*seq), record)?;
            }
        }
        Ok(())
    }

    /// Writes `record` as row `key` of the meta table, or deletes the row
    /// when there is none (it fell off its bounded list).
    fn put_or_delete<T: serde::Serialize>(
        &self,
        wtxn: &mut RwTxn,
        key: &str,
        record: Option<&T>,
    ) -> Result<()> {
        match record {
            Some(record) => {
                let bytes = serde_json::to_vec(record).expect("records serialize");
                self.meta.put(wtxn, key, &bytes)?;
            }
            None => {
                self.meta.delete(wtxn, key)?;
            }
        }
        Ok(())
    }

    /// Replaces log and state with a snapshot (received from the leader or
    /// made at bootstrap) and returns the state it holds.
    pub fn apply_snapshot(
        &mut self,
        wtxn: &mut RwTxn,
        snapshot: &Snapshot,
    ) -> Result<ClusterState> {
        let metadata = snapshot.get_metadata();
        let state = ClusterState::decode(&snapshot.data)?;
        self.entries.clear(wtxn)?;
        self.vms.clear(wtxn)?;
        self.nodes.clear(wtxn)?;
        for vm in state.vms.values() {
            let bytes = serde_json::to_vec(vm).expect("VM records serialize");
            self.vms.put(wtxn, &vm.spec.name, &bytes)?;
        }
        for node in state.nodes.values() {
            let bytes = serde_json::to_vec(node).expect("node records serialize");
            self.nodes.put(wtxn, &node.node_id, &bytes)?;
        }
        self.meta
            .put(wtxn, KEY_REVISION, &state.revision.to_be_bytes())?;
        let settings = serde_json::to_vec(&state.settings).expect("settings serialize");
        self.meta.put(wtxn, KEY_SETTINGS, &settings)?;
        let tokens = serde_json::to_vec(&state.tokens).expect("tokens serialize");
        self.meta.put(wtxn, KEY_TOKENS, &tokens)?;
        let join_tokens = serde_json::to_vec(&state.join_tokens).expect("tokens serialize");
        self.meta.put(wtxn, KEY_JOIN_TOKENS, &join_tokens)?;
        let issued = serde_json::to_vec(&state.issued_node_ids).expect("ids serialize");
        self.meta.put(wtxn, KEY_ISSUED, &issued)?;
        let roles = serde_json::to_vec(&state.roles).expect("roles serialize");
        self.meta.put(wtxn, KEY_ROLES, &roles)?;
        let removed = serde_json::to_vec(&state.removed_nodes).expect("ids serialize");
        self.meta.put(wtxn, KEY_REMOVED, &removed)?;
        for prefix in [AUDIT_PREFIX, EVENT_PREFIX] {
            let stale: Vec<String> = self
                .meta
                .prefix_iter(wtxn, prefix)?
                .map(|item| item.map(|(key, _)| key.to_string()))
                .collect::<std::result::Result<_, _>>()?;
            for key in stale {
                self.meta.delete(wtxn, &key)?;
            }
        }
        for record in &state.audit {
            let bytes = serde_json::to_vec(record).expect("audit records serialize");
            self.meta.put(wtxn, &audit_key(record.seq), &bytes)?;
        }
        for record in &state.events {
            let bytes = serde_json::to_vec(record).expect("event records serialize");
            self.meta.put(wtxn, &event_key(record.seq), &bytes)?;
        }
        self.meta
            .put(wtxn, KEY_APPLIED_INDEX, &metadata.index.to_be_bytes())?;
        self.meta
            .put(wtxn, KEY_SNAPSHOT_META, &encode_pb(metadata))?;
        self.set_conf_state(wtxn, metadata.get_conf_state())?;
        if self.hard_state.commit < metadata.index {
            self.set_commit(wtxn, metadata.index)?;
        }
        self.snapshot_meta = metadata.clone();
        self.last_index = metadata.index;
        self.applied_index = metadata.index;
        Ok(state)
    }

    /// Drops log entries up to and including `index`, which must be
    /// applied; a follower that needs them gets a snapshot instead.
    pub fn compact(&mut self, wtxn: &mut RwTxn, index: u64) -> Result<()> {
        assert!(
            index <= self.applied_index,
            "compaction to {index} beyond applied index {}",
            self.applied_index
        );
        if index <= self.snapshot_meta.index {
            return Ok(());
        }
        // Read through the write transaction: the entry may have been
        // appended in it.
        let bytes = self
            .entries
            .get(wtxn, &index)?
            .ok_or_else(|| corrupt("raft log", format!("entry {index} missing")))?;
        let term = decode_pb::<Entry>("raft entry", bytes)?.term;
        let mut metadata = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        metadata.set_conf_state(self.conf_state.clone());
        self.entries.delete_range(wtxn, &(..=index))?;
        self.meta
            .put(wtxn, KEY_SNAPSHOT_META, &encode_pb(&metadata))?;
        self.snapshot_meta = metadata;
        Ok(())
    }

    fn entry_term(&self, index: u64) -> Result<u64> {
        let rtxn = self.env.read_txn()?;
        let bytes = self
            .entries
            .get(&rtxn, &index)?
            .ok_or_else(|| corrupt("raft log", format!("entry {index} missing")))?;
        let entry: Entry = decode_pb("raft entry", bytes)?;
        Ok(entry.term)
    }
}

fn to_raft(error: Error) -> raft::Error {
    match error {
        Error::Raft(e) => e,
        other => raft::Error::Store(StorageError::Other(Box::new(other))),
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot_meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.last_index + 1,
            "entries up to {high} requested, last index is {}",
            self.last_index
        );
        let read = || -> Result<Vec<Entry>> {
            let rtxn = self.env.read_txn()?;
            let mut entries = Vec::with_capacity((high - low) as usize);
            for item in self.entries.range(&rtxn, &(low..high))? {
                let (_, bytes) = item?;
                entries.push(decode_pb("raft entry", bytes)?);
            }
            Ok(entries)
        };
        let mut entries = read().map_err(to_raft)?;
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.snapshot_meta.index {
            return Ok(self.snapshot_meta.term);
        }
        if index < self.snapshot_meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.entry_term(index).map_err(to_raft)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_meta.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    /// A snapshot of the applied state. The state and its index are read
    /// in one read transaction, so they belong together even when raft-rs
    /// asks for a snapshot while the loop's write transaction is open (the
    /// in-memory applied index may then be ahead of what is committed).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let build = || -> Result<Snapshot> {
            let rtxn = self.env.read_txn()?;
            let applied_index = match self.meta.get(&rtxn, KEY_APPLIED_INDEX)? {
                Some(bytes) => decode_u64("applied index", bytes)?,
                None => 0,
            };
            if applied_index < request_index {
                return Err(Error::Raft(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                )));
            }
            let conf_state: ConfState = match self.meta.get(&rtxn, KEY_CONF_STATE)? {
                Some(bytes) => decode_pb("conf state", bytes)?,
                None => ConfState::default(),
            };
            let state = self.read_state(&rtxn)?;
            let mut snapshot = Snapshot::default();
            let metadata = snapshot.mut_metadata();
            metadata.index = applied_index;
            metadata.term = raft::Storage::term(self, applied_index)?;
            metadata.set_conf_state(conf_state);
            snapshot.data = state.encode().into();
            Ok(snapshot)
        };
        build().map_err(to_raft)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn request_epochs_never_repeat_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.begin_request_epoch().unwrap(), 1);
        assert_eq!(store.begin_request_epoch().unwrap(), 2);
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.begin_request_epoch().unwrap(), 3);
    }

    #[test]
    fn the_audit_trail_and_events_survive_reopen_and_snapshots() {
        use crate::audit::{Actor, Audit, AuditContext};
        let dir = tempfile::tempdir().unwrap();
        let mut state = ClusterState::default();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            store
                .bootstrap(1, "127.0.0.1:1", &Settings::default(), &[])
                .unwrap();
            let env = store.env();
            let mut wtxn = env.write_txn().unwrap();
            // Three entries make tokens (audited); the rest make VMs, more
            // events than the state keeps, so the oldest rows go.
            let last = 4 + crate::RECENT_EVENTS_MAX as u64 + 5;
            let entries: Vec<Entry> = (2..=last).map(|index| entry(index, 1)).collect();
            store.append(&mut wtxn, &entries).unwrap();
            store.set_commit(&mut wtxn, last).unwrap();
            for index in 2..5u64 {
                let audit = Audit {
                    context: AuditContext {
                        actor: Actor::Node { node_id: 1 },
                        at_unix_ms: index,
                        from: String::new(),
                        relayed_by: None,
                    },
                    proposer: 1,
                };
                let outcome = state.apply_entry(
                    crate::Command::CreateToken {
                        token: crate::Token {
                            accessor: format!("{index:016x}"),
                            name: "ci".into(),
                            secret_sha256: format!("{index:064x}"),
                            created_at_unix_ms: 0,
                            role: crate::TokenRole::Admin,
                            expires_at_unix_ms: None,
                        },
                    },
                    Some(&audit),
                    Some(index),
                );
                assert!(outcome.result.is_ok(), "{:?}", outcome.result);
                store
                    .record_applied(&mut wtxn, index, &state, &outcome.touched)
                    .unwrap();
            }
            for index in 5..=last {
                let outcome = state.apply_entry(
                    crate::Command::CreateVm {
                        spec: crate::records::VmSpec::for_tests(&format!("vm-{index}")),
                        created_at_unix_ms: index,
                    },
                    None,
                    Some(index),
                );
                assert!(!outcome.recorded.is_empty(), "{:?}", outcome.result);
                store
                    .record_applied(&mut wtxn, index, &state, &outcome.touched)
                    .unwrap();
            }
            wtxn.commit().unwrap();
        }
        assert_eq!(state.events.len(), crate::RECENT_EVENTS_MAX);
        let mut store = LogStore::open(dir.path()).unwrap();
        let loaded = store.load_state().unwrap();
        assert_eq!(loaded.audit, state.audit);
        assert_eq!(loaded.events, state.events);

        // A snapshot replaces the trail whole.
        let mut shorter = state.clone();
        shorter.audit.pop_front();
        shorter.events.truncate(10);
        let mut snapshot = Snapshot::default();
        snapshot.set_data(shorter.encode().into());
        snapshot.mut_metadata().index = 10;
        snapshot.mut_metadata().term = 1;
        let env = store.env();
        let mut wtxn = env.write_txn().unwrap();
        store.apply_snapshot(&mut wtxn, &snapshot).unwrap();
        wtxn.commit().unwrap();
        let loaded = store.load_state().unwrap();
        assert_eq!(loaded.audit, shorter.audit);
        assert_eq!(loaded.events, shorter.events);
    }

    #[test]
    fn log_survives_reopen_and_truncates_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            store
                .bootstrap(1, "127.0.0.1:1", &Settings::default(), &[])
                .unwrap();
            let env = store.env();
            let mut wtxn = env.write_txn().unwrap();
            store
                .append(&mut wtxn, &[entry(2, 1), entry(3, 1), entry(4, 1)])
                .unwrap();
            store.append(&mut wtxn, &[entry(3, 2)]).unwrap();
            wtxn.commit().unwrap();
        }
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.first_index().unwrap(), 2);
        assert_eq!(store.last_index().unwrap(), 3);
        assert_eq!(store.term(1).unwrap(), 1);
        assert_eq!(store.term(3).unwrap(), 2);
        assert_eq!(store.applied_index(), 1);
        assert_eq!(store.load_state().unwrap().nodes[&1].address, "127.0.0.1:1");
        assert!(matches!(
            store.entries(1, 3, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
    }

    #[test]
    fn compaction_moves_first_index_and_snapshot_carries_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        store
            .bootstrap(1, "a:1", &Settings::default(), &[])
            .unwrap();
        let env = store.env();
        let mut wtxn = env.write_txn().unwrap();
        store
            .append(&mut wtxn, &[entry(2, 1), entry(3, 1)])
            .unwrap();
        let mut state = store.load_state().unwrap();
        state.add_member(2, "b:2".into());
        store
            .record_applied(&mut wtxn, 2, &state, &[Touched::Node(2)])
            .unwrap();
        store.compact(&mut wtxn, 2).unwrap();
        wtxn.commit().unwrap();
        assert_eq!(store.first_index().unwrap(), 3);
        let snapshot = store.snapshot(0, 2).unwrap();
        assert_eq!(snapshot.get_metadata().index, 2);
        let restored = ClusterState::decode(&snapshot.data).unwrap();
        assert_eq!(restored.nodes.len(), 2);
    }
}
