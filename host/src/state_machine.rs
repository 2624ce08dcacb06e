//! The host-owned application state machine: a key-value map with put, get,
//! delete and compare-and-swap.
//!
//! Every protocol applies commands here, so catch-up, swap and replica
//! comparison use one snapshot format and one digest for all protocols.
//! Applying a command can be undone (see [`Undo`]) because a plugin callback
//! that traps must leave no trace.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

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
}

impl KvOutcome {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// How to reverse one apply: the key's previous value and the previous
/// applied position.
#[derive(Debug)]
pub struct Undo {
    key: Option<(Vec<u8>, Option<Vec<u8>>)>,
    applied_position: u64,
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

/// The key-value state machine of one region replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStateMachine {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
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

    /// Applies one encoded command; `position` becomes the applied position.
    pub fn apply(&mut self, payload: &[u8], position: u64) -> (KvOutcome, Undo) {
        let mut undo = Undo {
            key: None,
            applied_position: self.applied_position,
        };
        self.applied_position = position;
        self.applied_commands += 1;
        let command: KvCommand = match postcard::from_bytes(payload) {
            Ok(command) => command,
            Err(error) => return (KvOutcome::Invalid(format!("bad command: {error}")), undo),
        };
        let previous = self.map.get(command.key()).cloned();
        let outcome = match command {
            KvCommand::Put { key, value } => {
                self.map.insert(key.clone(), value);
                undo.key = Some((key, previous));
                KvOutcome::Written
            }
            KvCommand::Delete { key } => {
                let existed = self.map.remove(&key).is_some();
                undo.key = Some((key, previous));
                KvOutcome::Deleted { existed }
            }
            KvCommand::Cas { key, expected, new } => {
                let expected = expected.map(serde_bytes::ByteBuf::into_vec);
                if previous == expected {
                    match new {
                        Some(value) => self.map.insert(key.clone(), value.into_vec()),
                        None => self.map.remove(&key),
                    };
                    undo.key = Some((key, previous));
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

    /// Reverses an apply. Undos must be replayed newest first.
    pub fn undo(&mut self, undo: Undo) {
        self.applied_position = undo.applied_position;
        self.applied_commands = self.applied_commands.saturating_sub(1);
        if let Some((key, previous)) = undo.key {
            match previous {
                Some(value) => self.map.insert(key, value),
                None => self.map.remove(&key),
            };
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

    /// Serialized state including the applied position.
    pub fn snapshot(&self) -> Vec<u8> {
        let image = SnapshotImage {
            applied_position: self.applied_position,
            entries: self
                .map
                .iter()
                .map(|(k, v)| {
                    (
                        serde_bytes::ByteBuf::from(k.clone()),
                        serde_bytes::ByteBuf::from(v.clone()),
                    )
                })
                .collect(),
        };
        postcard::to_allocvec(&image).unwrap_or_default()
    }

    /// Writes exactly the bytes of [`Self::snapshot`] to `out`, borrowing
    /// keys and values instead of copying the state into an image first:
    /// saving a large state then allocates nothing of its size.
    pub fn write_snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let image = SnapshotImageRef {
            applied_position: self.applied_position,
            entries: EntriesRef(&self.map),
        };
        postcard::to_io(&image, out)
            .map(|_| ())
            .map_err(|error| std::io::Error::other(format!("encoding the state: {error}")))
    }

    pub fn restore(bytes: &[u8]) -> Result<Self, StateMachineError> {
        let image: SnapshotImage = postcard::from_bytes(bytes)?;
        Ok(Self {
            map: image
                .entries
                .into_iter()
                .map(|(k, v)| (k.into_vec(), v.into_vec()))
                .collect(),
            applied_position: image.applied_position,
            applied_commands: 0,
        })
    }

    /// SHA-256 over the ordered contents: equal on replicas holding equal
    /// data, whatever their history or applied positions.
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
        assert_eq!(streamed(&sm), sm.snapshot());
        for i in 0..300u32 {
            let value = "v".repeat((i % 70) as usize);
            sm.apply(&put(&format!("key-{i}"), &value), u64::from(i) + 1);
        }
        let bytes = streamed(&sm);
        assert_eq!(bytes, sm.snapshot());
        let restored = KvStateMachine::restore(&bytes).expect("restores");
        assert_eq!(restored.digest(), sm.digest());
        assert_eq!(restored.applied_position(), 300);
    }

    fn streamed(sm: &KvStateMachine) -> Vec<u8> {
        let mut bytes = Vec::new();
        sm.write_snapshot(&mut bytes).expect("writes to memory");
        bytes
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
