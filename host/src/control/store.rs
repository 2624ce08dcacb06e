//! The control plane's Raft log, vote and snapshots, kept in a write-ahead
//! log of its own (`control/` in the data directory, beside the regions'
//! `wal/`), and its in-memory state machine.
//!
//! Why a WAL of its own rather than records in the node's WAL: the control
//! log is tiny and rarely written, and keeping it apart means its recovery
//! never depends on (and its checkpoints never copy) the regions' data,
//! while it still gets the same checksummed frames, torn-tail rule and
//! `synod repair`. The cost is one more fsync for control writes only.
//!
//! The state machine is not persisted apart from snapshots: at start it is
//! the last snapshot, and openraft re-applies the committed entries after
//! it (the committed log id is persisted for that).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use synod_guest_sdk::NodeId;
use tokio::sync::watch;

use super::record::{ControlResponse, ControlState};
use super::{ControlConfig, ControlNode};
use crate::storage::commit::{Compactor, GroupCommit};

type C = ControlConfig;

/// One durable effect of the control plane's Raft.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum StoreRecord {
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
    Entries(Vec<Entry<C>>),
    /// Removes every entry at or after `since`.
    Truncate {
        since: u64,
    },
    /// Removes every entry at or before `upto`.
    Purge {
        upto: LogId<NodeId>,
    },
    Snapshot {
        meta: SnapshotMeta<NodeId, ControlNode>,
        data: ByteBuf,
    },
}

/// Everything the control WAL holds, folded.
#[derive(Clone, Debug, Default)]
pub struct StoreImage {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    log: BTreeMap<u64, Entry<C>>,
    purged: Option<LogId<NodeId>>,
    snapshot: Option<(SnapshotMeta<NodeId, ControlNode>, Vec<u8>)>,
}

/// What an undecodable control record most likely means, and what to do.
const FOREIGN_FORMAT: &str = "the data directory was written by another Synod version whose \
control-plane format this build does not read (or the file is damaged); start this node \
on an empty data directory and let it rejoin, or run the version that wrote it";

impl StoreImage {
    /// Folds the WAL's entries as replayed at start.
    pub fn replay(entries: &[Vec<u8>]) -> Result<Self, String> {
        let mut image = StoreImage::default();
        for (i, entry) in entries.iter().enumerate() {
            let record: StoreRecord = postcard::from_bytes(entry).map_err(|e| {
                format!("control WAL entry {i} does not decode ({e}): {FOREIGN_FORMAT}")
            })?;
            image.fold(record);
        }
        Ok(image)
    }

    /// Whether nothing was ever stored (a node that never joined).
    pub fn is_empty(&self) -> bool {
        self.vote.is_none() && self.log.is_empty() && self.snapshot.is_none()
    }

    fn fold(&mut self, record: StoreRecord) {
        match record {
            StoreRecord::Vote(vote) => self.vote = Some(vote),
            StoreRecord::Committed(committed) => self.committed = committed,
            StoreRecord::Entries(entries) => {
                for entry in entries {
                    self.log.insert(entry.log_id.index, entry);
                }
            }
            StoreRecord::Truncate { since } => {
                self.log.split_off(&since);
            }
            StoreRecord::Purge { upto } => {
                self.log = self.log.split_off(&(upto.index + 1));
                self.purged = Some(upto);
            }
            StoreRecord::Snapshot { meta, data } => self.snapshot = Some((meta, data.into_vec())),
        }
    }

    /// The records that rebuild this image (a checkpoint).
    fn records(&self) -> Vec<StoreRecord> {
        let mut records = Vec::new();
        if let Some(vote) = self.vote {
            records.push(StoreRecord::Vote(vote));
        }
        if let Some((meta, data)) = &self.snapshot {
            records.push(StoreRecord::Snapshot {
                meta: meta.clone(),
                data: ByteBuf::from(data.clone()),
            });
        }
        if let Some(upto) = self.purged {
            records.push(StoreRecord::Purge { upto });
        }
        let entries: Vec<Entry<C>> = self.log.values().cloned().collect();
        for chunk in entries.chunks(64) {
            records.push(StoreRecord::Entries(chunk.to_vec()));
        }
        records.push(StoreRecord::Committed(self.committed));
        records
    }

    fn bytes(&self) -> u64 {
        let snapshot = self.snapshot.as_ref().map_or(0, |(_, d)| d.len());
        (snapshot + self.log.len() * 256) as u64
    }
}

/// Keeps the control WAL's checkpoints current (see `storage::commit`).
pub struct StoreCompactor {
    shadow: StoreImage,
}

impl StoreCompactor {
    pub fn new(shadow: StoreImage) -> Self {
        Self { shadow }
    }
}

impl Compactor for StoreCompactor {
    fn fold(&mut self, entry: &[u8]) {
        match postcard::from_bytes::<StoreRecord>(entry) {
            Ok(record) => self.shadow.fold(record),
            Err(error) => tracing::error!(%error, "undecodable control WAL entry"),
        }
    }

    fn live_bytes(&self) -> u64 {
        self.shadow.bytes()
    }

    fn checkpoint(&self, entry_bytes_max: usize) -> Vec<Vec<u8>> {
        self.shadow
            .records()
            .iter()
            .filter_map(|record| postcard::to_allocvec(record).ok())
            .filter(|entry| entry.len() <= entry_bytes_max)
            .collect()
    }
}

/// The image and the WAL it is persisted in, shared by the log store and
/// the state machine.
struct Shared {
    image: Mutex<StoreImage>,
    commit: Arc<GroupCommit>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, StoreImage> {
        self.image
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies `record` to the image and submits it; returns its ticket
    /// (or why the WAL refused it).
    fn submit(&self, record: StoreRecord) -> Result<u64, String> {
        let bytes = postcard::to_allocvec(&record).map_err(|e| e.to_string())?;
        let ticket = self.commit.submit(bytes).map_err(|e| e.to_string())?;
        self.lock().fold(record);
        Ok(ticket)
    }

    async fn durable(&self, ticket: u64) -> Result<(), StorageError<NodeId>> {
        let mut durable = self.commit.durable();
        durable
            .wait_for(|d| *d >= ticket)
            .await
            .map(|_| ())
            .map_err(|_| {
                StorageIOError::write_logs(AnyError::error("the control WAL stopped")).into()
            })
    }

    async fn persist(&self, record: StoreRecord) -> Result<(), StorageError<NodeId>> {
        let ticket = self.submit(record).map_err(write_error)?;
        self.durable(ticket).await
    }
}

fn write_error(why: String) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::error(why)).into()
}

/// A snapshot's metadata and its encoded state.
type SnapshotParts = (SnapshotMeta<NodeId, ControlNode>, Vec<u8>);

impl Shared {}

/// The Raft log and vote.
#[derive(Clone)]
pub struct ControlLogStore {
    shared: Arc<Shared>,
}

/// The state machine: the [`ControlState`], shared with readers.
pub struct ControlStateMachine {
    shared: Arc<Shared>,
    state: Arc<RwLock<Arc<ControlState>>>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, ControlNode>,
    applied: watch::Sender<u64>,
}

/// Builds the log store and state machine over a replayed image. The state
/// starts at the image's snapshot; `state` and `applied` are what readers
/// watch.
pub fn open(
    image: StoreImage,
    commit: Arc<GroupCommit>,
    state: Arc<RwLock<Arc<ControlState>>>,
    applied: watch::Sender<u64>,
) -> Result<(ControlLogStore, ControlStateMachine), String> {
    let mut machine_state = ControlState::default();
    let mut last_applied = None;
    let mut membership = StoredMembership::default();
    if let Some((meta, data)) = &image.snapshot {
        machine_state = postcard::from_bytes(data)
            .map_err(|e| format!("the control snapshot does not decode ({e}): {FOREIGN_FORMAT}"))?;
        last_applied = meta.last_log_id;
        membership = meta.last_membership.clone();
    }
    *state
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(machine_state);
    applied.send_replace(last_applied.map_or(0, |l| l.index));
    let shared = Arc::new(Shared {
        image: Mutex::new(image),
        commit,
    });
    Ok((
        ControlLogStore {
            shared: shared.clone(),
        },
        ControlStateMachine {
            shared,
            state,
            last_applied,
            membership,
            applied,
        },
    ))
}

impl RaftLogReader<C> for ControlLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>, StorageError<NodeId>> {
        let image = self.shared.lock();
        Ok(image.log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<C> for ControlLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<NodeId>> {
        let image = self.shared.lock();
        let last = image
            .log
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(image.purged);
        Ok(LogState {
            last_purged_log_id: image.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.shared.persist(StoreRecord::Vote(*vote)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.shared.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Need not be durable at once: a lost one only delays re-applying.
        self.shared
            .submit(StoreRecord::Committed(committed))
            .map_err(write_error)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.shared.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<C>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<C>> = entries.into_iter().collect();
        let ticket = self
            .shared
            .submit(StoreRecord::Entries(entries))
            .map_err(write_error)?;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let result = shared
                .durable(ticket)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()));
            callback.log_io_completed(result);
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.shared
            .persist(StoreRecord::Truncate {
                since: log_id.index,
            })
            .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.shared
            .persist(StoreRecord::Purge { upto: log_id })
            .await
    }
}

impl ControlStateMachine {
    fn publish(&self) {
        self.applied
            .send_replace(self.last_applied.map_or(0, |l| l.index));
    }

    fn snapshot_of(&self) -> Result<SnapshotParts, String> {
        let state = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let data = postcard::to_allocvec(&*state).map_err(|e| e.to_string())?;
        let id = self.last_applied.map_or_else(
            || "0-0".to_string(),
            |l| format!("{}-{}", l.leader_id.term, l.index),
        );
        Ok((
            SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id: id,
            },
            data,
        ))
    }
}

/// Builds snapshots from the state as applied when asked.
pub struct ControlSnapshotBuilder {
    meta: SnapshotMeta<NodeId, ControlNode>,
    data: Vec<u8>,
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<C> for ControlSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<NodeId>> {
        self.shared
            .persist(StoreRecord::Snapshot {
                meta: self.meta.clone(),
                data: ByteBuf::from(self.data.clone()),
            })
            .await?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(self.data.clone())),
        })
    }
}

impl RaftStateMachine<C> for ControlStateMachine {
    type SnapshotBuilder = ControlSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, ControlNode>), StorageError<NodeId>>
    {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ControlResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<C>> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        {
            let mut guard = self
                .state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let state = Arc::make_mut(&mut guard);
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                responses.push(match entry.payload {
                    EntryPayload::Blank => ControlResponse::Done,
                    EntryPayload::Normal(request) => state.apply(entry.log_id.index, &request),
                    EntryPayload::Membership(membership) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), membership);
                        ControlResponse::Done
                    }
                });
            }
        }
        self.publish();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let (meta, data) = self.snapshot_of().unwrap_or_else(|error| {
            tracing::error!(%error, "control snapshot could not be encoded");
            (SnapshotMeta::default(), Vec::new())
        });
        ControlSnapshotBuilder {
            meta,
            data,
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ControlNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let state: ControlState = postcard::from_bytes(&data)
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e)))?;
        self.shared
            .persist(StoreRecord::Snapshot {
                meta: meta.clone(),
                data: ByteBuf::from(data),
            })
            .await?;
        *self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(state);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, StorageError<NodeId>> {
        Ok(self
            .shared
            .lock()
            .snapshot
            .clone()
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
    }
}
