//! The host-owned application state machine: a key-value map with put, get,
//! delete and compare-and-swap.
//!
//! Every protocol applies commands here, so catch-up, swap and replica
//! comparison use one snapshot format and one digest for all protocols.
//! Applying a command can be undone (see [`Undo`]) because a plugin callback
//! that traps must leave no trace.
//!
//! Two apply modes share the map. `apply` executes commands in the order
//! given (Raft, standalone). `apply_stamped` is last-writer-wins for
//! leaderless protocols: each key remembers the [`Stamp`] of the write it
//! holds, a write takes effect only over an older stamp, and a delete leaves
//! a tombstone with its stamp until `compact_tombstones` drops it. Applying
//! the same stamped writes in any order, any number of times, gives the same
//! map. The digest covers live keys and values only (not stamps, not
//! tombstones), so it is the same function for both modes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
pub use synod_guest_sdk::Stamp;

/// A write, as the API encodes it into a command payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Sets `key` to `new` (absent when `None`) only if it currently equals
    /// `expected` (absent when `None`).
    Cas {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        expected: Option<serde_bytes::ByteBuf>,
        new: Option<serde_bytes::ByteBuf>,
    },
}

impl KvCommand {
    pub fn key(&self) -> &[u8] {
        match self {
            KvCommand::Put { key, .. } | KvCommand::Delete { key } | KvCommand::Cas { key, .. } => {
                key
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }
}

/// A read, as the API encodes it into a query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvQuery {
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

impl KvQuery {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
}

/// What a command or query produced; sent back to the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOutcome {
    Written,
    Deleted {
        existed: bool,
    },
    Cas {
        succeeded: bool,
        current: Option<serde_bytes::ByteBuf>,
    },
    Value(Option<serde_bytes::ByteBuf>),
    /// The payload did not decode. Deterministic, so every replica agrees.
    Invalid(String),
    /// A put applied by last-writer-wins, versioned `(time, origin)`.
    /// `superseded`: a newer write already held the key, so this one
    /// changed nothing (it still counts as written: it lost by the rule).
    WrittenStamped {
        time: u64,
        origin: u64,
        superseded: bool,
    },
    /// A delete applied by last-writer-wins (see `WrittenStamped`).
    DeletedStamped {
        existed: bool,
        time: u64,
        origin: u64,
        superseded: bool,
    },
}

/// What a CAS under last-writer-wins is answered.
pub const CAS_UNDER_LWW: &str = "compare-and-swap is not supported by a last-writer-wins (eventually consistent) protocol: replicas accept writes independently, so no replica can compare against the value the others hold; use put or delete";

impl KvOutcome {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// Everything the state machine holds about one key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyState {
    value: Option<Vec<u8>>,
    stamp: Option<Stamp>,
    tombstone: Option<Stamp>,
}

/// How to reverse one apply: the key's previous state and the previous
/// applied position.
#[derive(Debug)]
pub struct Undo {
    key: Option<(Vec<u8>, KeyState)>,
    applied_position: u64,
}

/// How to reverse one `compact_tombstones`: the tombstones it dropped.
#[derive(Debug, Default)]
pub struct TombstoneUndo {
    dropped: Vec<(Vec<u8>, Stamp)>,
}

/// Errors restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    #[error("snapshot does not decode: {0}")]
    Snapshot(#[from] postcard::Error),
}

#[derive(Serialize, Deserialize)]
struct SnapshotImage {
    applied_position: u64,
    entries: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
}

/// [`SnapshotImage`] borrowed from the live state: it serializes to the
/// same bytes.
#[derive(Serialize)]
struct SnapshotImageRef<'a> {
    applied_position: u64,
    entries: EntriesRef<'a>,
}

struct EntriesRef<'a>(&'a BTreeMap<Vec<u8>, Vec<u8>>);

impl Serialize for EntriesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.0
                .iter()
                .map(|(k, v)| (serde_bytes::Bytes::new(k), serde_bytes::Bytes::new(v))),
        )
    }
}

/// [`StampedImage`] borrowed from the live state: the same bytes.
#[derive(Serialize)]
struct StampedImageRef<'a> {
    applied_position: u64,
    entries: StampedEntriesRef<'a>,
    tombstones: TombstonesRef<'a>,
}

struct StampedEntriesRef<'a> {
    map: &'a BTreeMap<Vec<u8>, Vec<u8>>,
    stamps: &'a BTreeMap<Vec<u8>, Stamp>,
}

impl Serialize for StampedEntriesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.map.iter().map(|(k, v)| {
            (
                serde_bytes::Bytes::new(k),
                serde_bytes::Bytes::new(v),
                self.stamps.get(k).copied().map(pair),
            )
        }))
    }
}

struct TombstonesRef<'a>(&'a BTreeMap<Vec<u8>, Stamp>);

impl Serialize for TombstonesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.0
                .iter()
                .map(|(k, s)| (serde_bytes::Bytes::new(k), pair(*s))),
        )
    }
}

/// The image of a state that holds stamps or tombstones. It follows
/// [`STAMPED_IMAGE_PREFIX`]; states without either keep the plain image, so
/// Raft and standalone snapshots are unchanged.
#[derive(Serialize, Deserialize)]
struct StampedImage {
    applied_position: u64,
    /// Key, value, and the value's stamp if it has one.
    entries: Vec<StampedEntry>,
    /// Deleted keys and their tombstones' stamps.
    tombstones: Vec<(serde_bytes::ByteBuf, (u64, u64))>,
}

/// Key, value, and the value's stamp if it has one.
type StampedEntry = (
    serde_bytes::ByteBuf,
    serde_bytes::ByteBuf,
    Option<(u64, u64)>,
);

/// One key as `versioned` lists it: key, value (`None`: a tombstone), stamp.
pub type Versioned<'a> = (&'a [u8], Option<&'a [u8]>, Option<Stamp>);

/// Ten 0xff bytes: never the start of a plain image, whose first field is a
/// u64 varint (at most ten bytes, the tenth below 0x02).
const STAMPED_IMAGE_PREFIX: [u8; 10] = [0xff; 10];

fn pair(stamp: Stamp) -> (u64, u64) {
    (stamp.time, stamp.origin)
}

fn unpair((time, origin): (u64, u64)) -> Stamp {
    Stamp { time, origin }
}

/// The key-value state machine of one region replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStateMachine {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Stamp of each live key last written by `apply_stamped`.
    stamps: BTreeMap<Vec<u8>, Stamp>,
    /// Keys deleted by `apply_stamped`, with the delete's stamp.
    tombstones: BTreeMap<Vec<u8>, Stamp>,
    applied_position: u64,
    applied_commands: u64,
}

impl KvStateMachine {
    pub fn applied_position(&self) -> u64 {
        self.applied_position
    }

    /// Commands applied by this instance since it was created or restored.
    pub fn applied_commands(&self) -> u64 {
        self.applied_commands
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// What every apply does first: move the applied position (recording
    /// how to undo that) and decode the command. A payload that does not
    /// decode is answered `invalid`, deterministically on every replica.
    fn begin_apply(
        &mut self,
        payload: &[u8],
        position: u64,
    ) -> (Result<KvCommand, KvOutcome>, Undo) {
        let undo = Undo {
            key: None,
            applied_position: self.applied_position,
        };
        self.applied_position = position;
        self.applied_commands += 1;
        let command = postcard::from_bytes(payload)
            .map_err(|error| KvOutcome::Invalid(format!("bad command: {error}")));
        (command, undo)
    }

    /// Applies one encoded command; `position` becomes the applied position.
    pub fn apply(&mut self, payload: &[u8], position: u64) -> (KvOutcome, Undo) {
        let (command, mut undo) = self.begin_apply(payload, position);
        let command = match command {
            Ok(command) => command,
            Err(refused) => return (refused, undo),
        };
        let state = self.key_state(command.key());
        let previous = state.value.clone();
        let outcome = match command {
            KvCommand::Put { key, value } => {
                self.clear_stamps(&key);
                self.map.insert(key.clone(), value);
                undo.key = Some((key, state));
                KvOutcome::Written
            }
            KvCommand::Delete { key } => {
                self.clear_stamps(&key);
                let existed = self.map.remove(&key).is_some();
                undo.key = Some((key, state));
                KvOutcome::Deleted { existed }
            }
            KvCommand::Cas { key, expected, new } => {
                let expected = expected.map(serde_bytes::ByteBuf::into_vec);
                if previous == expected {
                    self.clear_stamps(&key);
                    match new {
                        Some(value) => self.map.insert(key.clone(), value.into_vec()),
                        None => self.map.remove(&key),
                    };
                    undo.key = Some((key, state));
                    KvOutcome::Cas {
                        succeeded: true,
                        current: None,
                    }
                } else {
                    KvOutcome::Cas {
                        succeeded: false,
                        current: previous.map(serde_bytes::ByteBuf::from),
                    }
                }
            }
        };
        (outcome, undo)
    }

    fn key_state(&self, key: &[u8]) -> KeyState {
        KeyState {
            value: self.map.get(key).cloned(),
            stamp: self.stamps.get(key).copied(),
            tombstone: self.tombstones.get(key).copied(),
        }
    }

    /// Removes `key`'s tombstone, if any (most states keep none).
    fn take_tombstone(&mut self, key: &[u8]) -> Option<Stamp> {
        if self.tombstones.is_empty() {
            None
        } else {
            self.tombstones.remove(key)
        }
    }

    /// An ordered write makes the key unversioned again.
    fn clear_stamps(&mut self, key: &[u8]) {
        if !self.stamps.is_empty() {
            self.stamps.remove(key);
        }
        if !self.tombstones.is_empty() {
            self.tombstones.remove(key);
        }
    }

    fn set_key_state(&mut self, key: Vec<u8>, state: KeyState) {
        match state.stamp {
            Some(stamp) => self.stamps.insert(key.clone(), stamp),
            None => self.stamps.remove(&key),
        };
        match state.tombstone {
            Some(stamp) => self.tombstones.insert(key.clone(), stamp),
            None => self.tombstones.remove(&key),
        };
        match state.value {
            Some(value) => self.map.insert(key, value),
            None => self.map.remove(&key),
        };
    }

    /// The stamp that versions `key`: its live value's, or its tombstone's.
    /// A value written by an ordered apply has none (it loses to any stamp).
    pub fn stamp_of(&self, key: &[u8]) -> Option<Stamp> {
        self.stamps
            .get(key)
            .or_else(|| self.tombstones.get(key))
            .copied()
    }

    /// Every key the state versions or holds, in key order: its value
    /// (`None` for a tombstone) and its stamp (`None` for an ordered write).
    pub fn versioned(&self) -> Vec<Versioned<'_>> {
        let mut all: Vec<Versioned<'_>> = self
            .map
            .iter()
            .map(|(k, v)| {
                (
                    k.as_slice(),
                    Some(v.as_slice()),
                    self.stamps.get(k).copied(),
                )
            })
            .chain(
                self.tombstones
                    .iter()
                    .map(|(k, s)| (k.as_slice(), None, Some(*s))),
            )
            .collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// Tombstones currently kept.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// Applies one encoded command by last-writer-wins (see the module
    /// docs); `position` becomes the applied position.
    pub fn apply_stamped(
        &mut self,
        payload: &[u8],
        stamp: Stamp,
        position: u64,
    ) -> (KvOutcome, Undo) {
        let (command, mut undo) = self.begin_apply(payload, position);
        let command = match command {
            Ok(command) => command,
            Err(refused) => return (refused, undo),
        };
        // An unversioned value (from an ordered apply) is older than any
        // stamp. The previous state for the undo comes out of the maps'
        // own insert and remove: no value is cloned and each map is
        // searched once (every replica applies every write this way).
        let wins = self
            .stamp_of(command.key())
            .is_none_or(|current| stamp > current);
        let outcome = match command {
            KvCommand::Put { key, value } => {
                if wins {
                    let tombstone = self.take_tombstone(&key);
                    let previous = KeyState {
                        stamp: self.stamps.insert(key.clone(), stamp),
                        value: self.map.insert(key.clone(), value),
                        tombstone,
                    };
                    undo.key = Some((key, previous));
                }
                KvOutcome::WrittenStamped {
                    time: stamp.time,
                    origin: stamp.origin,
                    superseded: !wins,
                }
            }
            KvCommand::Delete { key } => {
                let mut existed = false;
                if wins {
                    let stamp_before = if self.stamps.is_empty() {
                        None
                    } else {
                        self.stamps.remove(&key)
                    };
                    let previous = KeyState {
                        value: self.map.remove(&key),
                        stamp: stamp_before,
                        tombstone: self.tombstones.insert(key.clone(), stamp),
                    };
                    existed = previous.value.is_some();
                    undo.key = Some((key, previous));
                }
                KvOutcome::DeletedStamped {
                    existed,
                    time: stamp.time,
                    origin: stamp.origin,
                    superseded: !wins,
                }
            }
            KvCommand::Cas { .. } => KvOutcome::Invalid(CAS_UNDER_LWW.into()),
        };
        (outcome, undo)
    }

    /// Joins `other` into this state by last-writer-wins, key by key (a
    /// state-shipping catch-up of a leaderless protocol): every key ends
    /// with the greater stamp's value or tombstone, so nothing either side
    /// held is lost and the result does not depend on which side merges.
    /// Unversioned values are kept where this state has the key. The
    /// applied position stays this state's: positions of a leaderless
    /// protocol count what each replica applied itself.
    pub fn merge(&mut self, other: KvStateMachine) {
        for (key, value) in other.map {
            let stamp = other.stamps.get(&key).copied();
            let current = self.stamp_of(&key);
            let wins = match (stamp, current) {
                (Some(stamp), Some(current)) => stamp > current,
                (Some(_), None) => true,
                (None, _) => !self.map.contains_key(&key) && current.is_none(),
            };
            if wins {
                self.set_key_state(
                    key,
                    KeyState {
                        value: Some(value),
                        stamp,
                        tombstone: None,
                    },
                );
            }
        }
        for (key, stamp) in other.tombstones {
            if self.stamp_of(&key).is_none_or(|current| stamp > current) {
                self.set_key_state(
                    key,
                    KeyState {
                        value: None,
                        stamp: None,
                        tombstone: Some(stamp),
                    },
                );
            }
        }
    }

    /// Drops every tombstone whose stamp time is below `below`.
    pub fn compact_tombstones(&mut self, below: u64) -> TombstoneUndo {
        let mut undo = TombstoneUndo::default();
        self.tombstones.retain(|key, stamp| {
            if stamp.time < below {
                undo.dropped.push((key.clone(), *stamp));
                false
            } else {
                true
            }
        });
        undo
    }

    /// Reverses a `compact_tombstones`.
    pub fn undo_compaction(&mut self, undo: TombstoneUndo) {
        self.tombstones.extend(undo.dropped);
    }

    /// Reverses an apply. Undos must be replayed newest first.
    pub fn undo(&mut self, undo: Undo) {
        self.applied_position = undo.applied_position;
        self.applied_commands = self.applied_commands.saturating_sub(1);
        if let Some((key, previous)) = undo.key {
            self.set_key_state(key, previous);
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// Evaluates an encoded query.
    pub fn query(&self, query: &[u8]) -> KvOutcome {
        match postcard::from_bytes::<KvQuery>(query) {
            Ok(KvQuery::Get { key }) => {
                KvOutcome::Value(self.map.get(&key).cloned().map(serde_bytes::ByteBuf::from))
            }
            Err(error) => KvOutcome::Invalid(format!("bad query: {error}")),
        }
    }

    /// Serialized state including the applied position (and, when there
    /// are any, stamps and tombstones).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.image_bytes_hint());
        // Writing to memory cannot fail, and every state encodes.
        let _ = self.write_snapshot(&mut bytes);
        bytes
    }

    /// Writes the serialized state (the bytes [`Self::snapshot`] returns)
    /// to `out`, borrowing keys and values instead of copying the state
    /// into an image first: saving a large state then allocates nothing of
    /// its size (a swap's boundary snapshot streams it to its file). A
    /// state with stamps or tombstones is written as a [`StampedImage`]
    /// after [`STAMPED_IMAGE_PREFIX`], any other as a plain [`SnapshotImage`].
    pub fn write_snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let encoded = if !self.stamps.is_empty() || !self.tombstones.is_empty() {
            out.write_all(&STAMPED_IMAGE_PREFIX)?;
            postcard::to_io(
                &StampedImageRef {
                    applied_position: self.applied_position,
                    entries: StampedEntriesRef {
                        map: &self.map,
                        stamps: &self.stamps,
                    },
                    tombstones: TombstonesRef(&self.tombstones),
                },
                out,
            )
            .map(|_| ())
        } else {
            postcard::to_io(
                &SnapshotImageRef {
                    applied_position: self.applied_position,
                    entries: EntriesRef(&self.map),
                },
                out,
            )
            .map(|_| ())
        };
        encoded.map_err(|error| std::io::Error::other(format!("encoding the state: {error}")))
    }

    /// About the encoded size, so [`Self::snapshot`] allocates once.
    fn image_bytes_hint(&self) -> usize {
        let entries: usize = self.map.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        let tombstones: usize = self.tombstones.keys().map(|k| k.len() + 22).sum();
        entries + self.stamps.len() * 21 + tombstones + 32
    }

    pub fn restore(bytes: &[u8]) -> Result<Self, StateMachineError> {
        if let Some(stamped) = bytes.strip_prefix(&STAMPED_IMAGE_PREFIX[..]) {
            let image: StampedImage = postcard::from_bytes(stamped)?;
            let mut state = Self {
                applied_position: image.applied_position,
                ..Self::default()
            };
            for (key, value, stamp) in image.entries {
                let key = key.into_vec();
                if let Some(stamp) = stamp {
                    state.stamps.insert(key.clone(), unpair(stamp));
                }
                state.map.insert(key, value.into_vec());
            }
            for (key, stamp) in image.tombstones {
                state.tombstones.insert(key.into_vec(), unpair(stamp));
            }
            return Ok(state);
        }
        let image: SnapshotImage = postcard::from_bytes(bytes)?;
        Ok(Self {
            map: image
                .entries
                .into_iter()
                .map(|(k, v)| (k.into_vec(), v.into_vec()))
                .collect(),
            applied_position: image.applied_position,
            ..Self::default()
        })
    }

    /// SHA-256 over the ordered live keys and values: equal on replicas
    /// holding equal data, whatever their history, applied positions, stamps
    /// or tombstones.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for (key, value) in &self.map {
            hasher.update((key.len() as u64).to_le_bytes());
            hasher.update(key);
            hasher.update((value.len() as u64).to_le_bytes());
            hasher.update(value);
        }
        hasher.finalize().into()
    }
}

/// Stable 64-bit conflict key of a KV key (first 8 bytes of its SHA-256), so
/// nodes running different builds agree on conflicts.
pub fn conflict_key(key: &[u8]) -> u64 {
    let digest = Sha256::digest(key);
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Vec<u8> {
        KvCommand::Put {
            key: key.into(),
            value: value.into(),
        }
        .encode()
    }

    fn get(sm: &KvStateMachine, key: &str) -> KvOutcome {
        sm.query(&KvQuery::Get { key: key.into() }.encode())
    }

    fn value(v: &str) -> Option<serde_bytes::ByteBuf> {
        Some(serde_bytes::ByteBuf::from(v.as_bytes().to_vec()))
    }

    /// The streamed encoding is byte for byte the buffered one, so files
    /// and shipped images agree whichever path wrote them.
    #[test]
    fn write_snapshot_writes_the_bytes_of_snapshot() {
        let mut sm = KvStateMachine::default();
        assert_eq!(streamed(&sm), owned_image(&sm));
        for i in 0..300u32 {
            let value = "v".repeat((i % 70) as usize);
            sm.apply(&put(&format!("key-{i}"), &value), u64::from(i) + 1);
        }
        let bytes = streamed(&sm);
        assert_eq!(bytes, owned_image(&sm));
        assert_eq!(bytes, sm.snapshot());
        let restored = KvStateMachine::restore(&bytes).expect("restores");
        assert_eq!(restored.digest(), sm.digest());
        assert_eq!(restored.applied_position(), 300);

        // With stamps and tombstones: the stamped image, same bytes too.
        let mut weak = KvStateMachine::default();
        for i in 0..100u64 {
            let key = format!("key-{}", i % 40);
            let command = if i % 7 == 0 {
                delete(&key)
            } else {
                put(&key, "x")
            };
            weak.apply_stamped(&command, stamp(1000 + i, i % 3), i + 1);
        }
        assert!(!weak.tombstones.is_empty() && !weak.stamps.is_empty());
        let bytes = streamed(&weak);
        assert_eq!(bytes, owned_image(&weak));
        assert_eq!(bytes, weak.snapshot());
        let restored = KvStateMachine::restore(&bytes).expect("restores");
        assert_eq!(restored.snapshot(), bytes);
        assert_eq!(restored.digest(), weak.digest());
    }

    fn streamed(sm: &KvStateMachine) -> Vec<u8> {
        let mut bytes = Vec::new();
        sm.write_snapshot(&mut bytes).expect("writes to memory");
        bytes
    }

    /// The image formats as owned values: what the borrowed encoders must
    /// reproduce byte for byte.
    fn owned_image(sm: &KvStateMachine) -> Vec<u8> {
        let bytes = |b: &[u8]| serde_bytes::ByteBuf::from(b.to_vec());
        if sm.stamps.is_empty() && sm.tombstones.is_empty() {
            let image = SnapshotImage {
                applied_position: sm.applied_position,
                entries: sm.map.iter().map(|(k, v)| (bytes(k), bytes(v))).collect(),
            };
            return postcard::to_allocvec(&image).expect("encodes");
        }
        let image = StampedImage {
            applied_position: sm.applied_position,
            entries: sm
                .map
                .iter()
                .map(|(k, v)| (bytes(k), bytes(v), sm.stamps.get(k).copied().map(pair)))
                .collect(),
            tombstones: sm
                .tombstones
                .iter()
                .map(|(k, s)| (bytes(k), pair(*s)))
                .collect(),
        };
        let mut out = STAMPED_IMAGE_PREFIX.to_vec();
        out.extend(postcard::to_allocvec(&image).expect("encodes"));
        out
    }

    #[test]
    fn put_get_delete_cas() {
        let mut sm = KvStateMachine::default();
        assert_eq!(sm.apply(&put("a", "1"), 1).0, KvOutcome::Written);
        assert_eq!(get(&sm, "a"), KvOutcome::Value(value("1")));
        let cas = KvCommand::Cas {
            key: b"a".to_vec(),
            expected: value("0"),
            new: value("2"),
        };
        assert_eq!(
            sm.apply(&cas.encode(), 2).0,
            KvOutcome::Cas {
                succeeded: false,
                current: value("1")
            }
        );
        let cas = KvCommand::Cas {
            key: b"a".to_vec(),
            expected: value("1"),
            new: value("2"),
        };
        assert_eq!(
            sm.apply(&cas.encode(), 3).0,
            KvOutcome::Cas {
                succeeded: true,
                current: None
            }
        );
        let delete = KvCommand::Delete { key: b"a".to_vec() }.encode();
        assert_eq!(sm.apply(&delete, 4).0, KvOutcome::Deleted { existed: true });
        assert_eq!(
            sm.apply(&delete, 5).0,
            KvOutcome::Deleted { existed: false }
        );
        assert_eq!(get(&sm, "a"), KvOutcome::Value(None));
        assert_eq!(sm.applied_position(), 5);
    }

    #[test]
    fn cas_on_absent_key_creates_it() {
        let mut sm = KvStateMachine::default();
        let cas = KvCommand::Cas {
            key: b"k".to_vec(),
            expected: None,
            new: value("v"),
        };
        assert!(matches!(
            sm.apply(&cas.encode(), 1).0,
            KvOutcome::Cas {
                succeeded: true,
                ..
            }
        ));
        assert_eq!(get(&sm, "k"), KvOutcome::Value(value("v")));
    }

    #[test]
    fn undo_restores_state_and_position() {
        let mut sm = KvStateMachine::default();
        sm.apply(&put("a", "1"), 1);
        let before = sm.clone();
        let (_, undo_put) = sm.apply(&put("a", "2"), 2);
        let (_, undo_new) = sm.apply(&put("b", "3"), 3);
        sm.undo(undo_new);
        sm.undo(undo_put);
        assert_eq!(sm, before);
    }

    #[test]
    fn garbage_is_invalid_not_a_panic() {
        let mut sm = KvStateMachine::default();
        assert!(matches!(
            sm.apply(&[0xff, 0xff, 0xff], 1).0,
            KvOutcome::Invalid(_)
        ));
        assert!(matches!(sm.query(&[0xff]), KvOutcome::Invalid(_)));
    }

    fn stamp(time: u64, origin: u64) -> Stamp {
        Stamp { time, origin }
    }

    fn delete(key: &str) -> Vec<u8> {
        KvCommand::Delete { key: key.into() }.encode()
    }

    /// Goal: the same stamped writes applied in every order, with
    /// duplicates, give one state (values, stamps, tombstones).
    #[test]
    fn stamped_writes_converge_in_any_order() {
        let writes = [
            (put("a", "1"), stamp(10, 1)),
            (put("a", "2"), stamp(10, 2)),
            (delete("a"), stamp(9, 3)),
            (put("b", "x"), stamp(5, 1)),
            (delete("b"), stamp(6, 2)),
            (put("b", "old"), stamp(4, 3)),
        ];
        let mut reference: Option<KvStateMachine> = None;
        let mut order: Vec<usize> = (0..writes.len()).collect();
        for round in 0..40u64 {
            // A deterministic shuffle, plus one duplicate per round.
            for i in (1..order.len()).rev() {
                let j = ((round * 31 + i as u64 * 17) % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
            let mut sm = KvStateMachine::default();
            let mut position = 0;
            for &i in order.iter().chain(std::iter::once(&order[0])) {
                position += 1;
                sm.apply_stamped(&writes[i].0, writes[i].1, position);
            }
            sm.applied_position = 0;
            sm.applied_commands = 0;
            match &reference {
                None => reference = Some(sm),
                Some(reference) => assert_eq!(&sm, reference, "order {order:?}"),
            }
        }
        let sm = reference.expect("ran");
        assert_eq!(
            sm.get(b"a"),
            Some(&b"2"[..]),
            "(10, 2) beats (10, 1) and (9, 3)"
        );
        assert_eq!(
            sm.get(b"b"),
            None,
            "the delete at 6 beats the puts at 4 and 5"
        );
        assert_eq!(sm.stamp_of(b"b"), Some(stamp(6, 2)));
        assert_eq!(sm.tombstones(), 1);
    }

    #[test]
    fn stamped_outcomes_name_the_stamp_and_cas_is_invalid() {
        let mut sm = KvStateMachine::default();
        assert_eq!(
            sm.apply_stamped(&put("a", "1"), stamp(5, 1), 1).0,
            KvOutcome::WrittenStamped {
                time: 5,
                origin: 1,
                superseded: false
            }
        );
        assert_eq!(
            sm.apply_stamped(&put("a", "0"), stamp(4, 2), 2).0,
            KvOutcome::WrittenStamped {
                time: 4,
                origin: 2,
                superseded: true
            }
        );
        assert_eq!(sm.get(b"a"), Some(&b"1"[..]));
        let cas = KvCommand::Cas {
            key: b"a".to_vec(),
            expected: value("1"),
            new: value("2"),
        };
        assert_eq!(
            sm.apply_stamped(&cas.encode(), stamp(6, 1), 3).0,
            KvOutcome::Invalid(CAS_UNDER_LWW.into())
        );
        assert_eq!(sm.get(b"a"), Some(&b"1"[..]));
    }

    #[test]
    fn an_ordered_value_loses_to_any_stamp_and_an_ordered_write_clears_it() {
        let mut sm = KvStateMachine::default();
        sm.apply(&put("a", "raft"), 1);
        sm.apply_stamped(&put("a", "mm"), stamp(1, 1), 2);
        assert_eq!(sm.get(b"a"), Some(&b"mm"[..]));
        sm.apply_stamped(&delete("a"), stamp(2, 1), 3);
        sm.apply(&put("a", "raft again"), 4);
        assert_eq!(sm.stamp_of(b"a"), None);
        assert_eq!(sm.tombstones(), 0);
    }

    /// Goal: a tombstone refuses an older put until it is compacted, and
    /// compaction is undone exactly.
    #[test]
    fn tombstones_refuse_older_puts_until_compacted() {
        let mut sm = KvStateMachine::default();
        sm.apply_stamped(&put("a", "1"), stamp(5, 1), 1);
        sm.apply_stamped(&delete("a"), stamp(8, 2), 2);
        sm.apply_stamped(&put("a", "late"), stamp(7, 3), 3);
        assert_eq!(sm.get(b"a"), None);
        let before = sm.clone();
        let undo = sm.compact_tombstones(8);
        assert_eq!(sm.tombstones(), 1, "below is exclusive");
        sm.undo_compaction(undo);
        let undo = sm.compact_tombstones(9);
        assert_eq!(sm.tombstones(), 0);
        sm.undo_compaction(undo);
        assert_eq!(sm, before);
    }

    /// Goal: merging two states gives the state of applying both sides'
    /// writes, whichever side merges into which.
    #[test]
    fn merge_is_the_join_of_both_sides() {
        let mine = vec![
            (put("a", "mine"), stamp(10, 1)),
            (delete("b"), stamp(7, 1)),
            (put("c", "only mine"), stamp(1, 1)),
        ];
        let theirs = vec![
            (put("a", "theirs"), stamp(9, 2)),
            (put("b", "theirs"), stamp(8, 2)),
            (delete("d"), stamp(3, 2)),
        ];
        let build = |writes: &[(Vec<u8>, Stamp)]| {
            let mut sm = KvStateMachine::default();
            for (position, (payload, stamp)) in writes.iter().enumerate() {
                sm.apply_stamped(payload, *stamp, position as u64 + 1);
            }
            sm
        };
        let mut all = mine.clone();
        all.extend(theirs.clone());
        let mut left = build(&mine);
        left.merge(build(&theirs));
        let mut right = build(&theirs);
        right.merge(build(&mine));
        let both = build(&all);
        assert_eq!(left.versioned(), both.versioned());
        assert_eq!(right.versioned(), both.versioned());
        assert_eq!(left.get(b"b"), Some(&b"theirs"[..]));
        assert_eq!(left.applied_position(), 3);
    }

    #[test]
    fn stamped_undo_restores_value_stamp_and_tombstone() {
        let mut sm = KvStateMachine::default();
        sm.apply_stamped(&put("a", "1"), stamp(5, 1), 1);
        sm.apply_stamped(&delete("b"), stamp(5, 1), 2);
        let before = sm.clone();
        let (_, u1) = sm.apply_stamped(&delete("a"), stamp(6, 1), 3);
        let (_, u2) = sm.apply_stamped(&put("b", "2"), stamp(6, 1), 4);
        let (_, u3) = sm.apply(&put("a", "3"), 5);
        sm.undo(u3);
        sm.undo(u2);
        sm.undo(u1);
        assert_eq!(sm, before);
    }

    #[test]
    fn stamped_snapshots_keep_stamps_and_tombstones_and_plain_ones_are_unchanged() {
        let mut plain = KvStateMachine::default();
        plain.apply(&put("x", "1"), 1);
        let image = plain.snapshot();
        assert!(!image.starts_with(&STAMPED_IMAGE_PREFIX));
        let legacy = postcard::to_allocvec(&SnapshotImage {
            applied_position: 1,
            entries: vec![(b"x".to_vec().into(), b"1".to_vec().into())],
        })
        .expect("encode");
        assert_eq!(
            image, legacy,
            "a state without stamps keeps the plain image"
        );
        let mut sm = KvStateMachine::default();
        sm.apply(&put("plain", "p"), 1);
        sm.apply_stamped(&put("a", "1"), stamp(5, 1), 2);
        sm.apply_stamped(&delete("b"), stamp(6, 2), 3);
        let restored = KvStateMachine::restore(&sm.snapshot()).expect("restore");
        assert_eq!(restored.stamp_of(b"a"), Some(stamp(5, 1)));
        assert_eq!(restored.stamp_of(b"b"), Some(stamp(6, 2)));
        assert_eq!(restored.stamp_of(b"plain"), None);
        assert_eq!(restored.digest(), sm.digest());
        assert_eq!(restored.applied_position(), 3);
        // The digest ignores tombstones: compacting one changes nothing.
        let mut compacted = restored.clone();
        compacted.compact_tombstones(u64::MAX);
        assert_eq!(compacted.digest(), restored.digest());
    }

    #[test]
    fn snapshot_round_trip_and_digest() {
        let mut a = KvStateMachine::default();
        a.apply(&put("x", "1"), 1);
        a.apply(&put("y", "2"), 2);
        let b = KvStateMachine::restore(&a.snapshot()).expect("restore");
        assert_eq!(a.digest(), b.digest());
        assert_eq!(b.applied_position(), 2);
        let mut c = KvStateMachine::default();
        c.apply(&put("y", "2"), 7);
        c.apply(&put("x", "1"), 9);
        assert_eq!(a.digest(), c.digest(), "digest depends on contents only");
        assert!(KvStateMachine::restore(b"nonsense").is_err());
    }
}
