//! What a node writes to its write-ahead log, and how a node's state is
//! rebuilt by folding those records at start.
//!
//! One WAL serves every region of the node (group commit: one fsync covers
//! many regions). Each WAL entry is the postcard encoding of a
//! `Vec<JournalRecord>`: the storage effects of one driver round.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use synod_guest_sdk::Batch;

use crate::region::{RegionLog, RegionSpec};

/// One durable effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalRecord {
    /// The node started; request ids of this run embed `incarnation`.
    NodeBoot {
        incarnation: u64,
    },
    RegionCreated {
        spec: RegionSpec,
    },
    /// A new version of an existing region's spec (its storage is kept).
    RegionUpdated {
        spec: RegionSpec,
    },
    RegionDropped {
        region: String,
    },
    LogAppend {
        region: String,
        first: u64,
        data: ByteBuf,
        ends: Vec<u32>,
    },
    LogTruncate {
        region: String,
        from: u64,
    },
    LogCompact {
        region: String,
        through: u64,
    },
    MetaPut {
        region: String,
        key: ByteBuf,
        value: ByteBuf,
    },
    MetaDelete {
        region: String,
        key: ByteBuf,
    },
    /// Live swap: the region moved to `spec` (a new epoch and protocol).
    /// Its log and kv area are dropped, so the new protocol never sees the
    /// old one's storage; its state starts from the region's snapshot file,
    /// saved (at `start_position`) before this record was written.
    RegionEpochStarted {
        spec: RegionSpec,
        start_position: u64,
    },
}

impl JournalRecord {
    pub fn encode_all(records: &[JournalRecord]) -> Vec<u8> {
        postcard::to_allocvec(records).unwrap_or_default()
    }

    pub fn decode_all(bytes: &[u8]) -> Result<Vec<JournalRecord>, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// Feeds the commit thread's checkpoints: a [`RecoveredNode`] kept current
/// by folding every entry the WAL writes.
pub struct JournalCompactor {
    shadow: RecoveredNode,
}

impl JournalCompactor {
    pub fn new(shadow: RecoveredNode) -> Self {
        Self { shadow }
    }
}

impl crate::storage::commit::Compactor for JournalCompactor {
    fn fold(&mut self, entry: &[u8]) {
        match JournalRecord::decode_all(entry) {
            Ok(records) => {
                for record in records {
                    if let Err(why) = self.shadow.fold(record) {
                        tracing::error!(%why, "journal shadow diverged; checkpoints may be incomplete");
                    }
                }
            }
            Err(error) => tracing::error!(%error, "undecodable journal entry in the WAL"),
        }
    }

    fn live_bytes(&self) -> u64 {
        self.shadow.live_bytes()
    }

    fn checkpoint(&self, entry_bytes_max: usize) -> Vec<Vec<u8>> {
        group_records(
            &self.shadow.checkpoint_records(entry_bytes_max),
            entry_bytes_max,
        )
    }
}

/// Encodes `records` as WAL entries (each a `Vec<JournalRecord>`) of at most
/// `entry_bytes_max` bytes; a record larger than that goes alone. Sizes are
/// exact: each record is encoded once and the entry is the postcard list
/// prefix (a varint count) followed by the records.
pub fn group_records(records: &[JournalRecord], entry_bytes_max: usize) -> Vec<Vec<u8>> {
    const COUNT_PREFIX_MAX: usize = 10;
    let mut entries = Vec::new();
    let mut group: Vec<Vec<u8>> = Vec::new();
    let mut group_bytes = COUNT_PREFIX_MAX;
    let flush = |group: &mut Vec<Vec<u8>>, entries: &mut Vec<Vec<u8>>| {
        let mut entry = postcard::to_allocvec(&(group.len() as u64)).unwrap_or_default();
        for encoded in group.drain(..) {
            entry.extend_from_slice(&encoded);
        }
        entries.push(entry);
    };
    for record in records {
        let encoded = postcard::to_allocvec(record).unwrap_or_default();
        if !group.is_empty() && group_bytes + encoded.len() > entry_bytes_max {
            flush(&mut group, &mut entries);
            group_bytes = COUNT_PREFIX_MAX;
        }
        group_bytes += encoded.len();
        group.push(encoded);
    }
    if !group.is_empty() {
        flush(&mut group, &mut entries);
    }
    entries
}

/// A region's durable storage as rebuilt from the journal.
#[derive(Debug, Default)]
pub struct RecoveredRegion {
    pub spec: Option<RegionSpec>,
    pub log: RegionLog,
    pub meta: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Everything the journal says about a node.
#[derive(Debug, Default)]
pub struct RecoveredNode {
    pub incarnation: u64,
    pub regions: HashMap<String, RecoveredRegion>,
}

/// Errors folding the journal: the WAL's checksums passed, so these mean a
/// bug or a journal from an incompatible version, never a torn write.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("WAL entry {index} does not decode as journal records: {source}")]
    Decode {
        index: usize,
        source: postcard::Error,
    },
    #[error("WAL entry {index}: {reason}")]
    Inconsistent { index: usize, reason: String },
}

impl RecoveredNode {
    /// Folds the WAL entries in order.
    pub fn rebuild(entries: &[Vec<u8>]) -> Result<Self, JournalError> {
        let mut node = RecoveredNode::default();
        for (index, entry) in entries.iter().enumerate() {
            let records = JournalRecord::decode_all(entry)
                .map_err(|source| JournalError::Decode { index, source })?;
            for record in records {
                node.fold(record)
                    .map_err(|reason| JournalError::Inconsistent { index, reason })?;
            }
        }
        node.regions.retain(|_, region| region.spec.is_some());
        Ok(node)
    }

    fn fold(&mut self, record: JournalRecord) -> Result<(), String> {
        match record {
            JournalRecord::NodeBoot { incarnation } => {
                self.incarnation = self.incarnation.max(incarnation);
            }
            JournalRecord::RegionCreated { spec } => {
                let region = self.regions.entry(spec.name.clone()).or_default();
                *region = RecoveredRegion {
                    spec: Some(spec),
                    ..RecoveredRegion::default()
                };
            }
            JournalRecord::RegionUpdated { spec } => {
                let name = spec.name.clone();
                self.regions.entry(name).or_default().spec = Some(spec);
            }
            JournalRecord::RegionDropped { region } => {
                self.regions.remove(&region);
            }
            JournalRecord::RegionEpochStarted { spec, .. } => {
                let region = self.regions.entry(spec.name.clone()).or_default();
                *region = RecoveredRegion {
                    spec: Some(spec),
                    ..RecoveredRegion::default()
                };
            }
            JournalRecord::LogAppend {
                region,
                first,
                data,
                ends,
            } => {
                let batch = Batch {
                    data: data.into_vec(),
                    ends,
                };
                if !batch.is_well_formed() {
                    return Err(format!("malformed log append for region {region}"));
                }
                self.region(&region)
                    .log
                    .append(first, &batch)
                    .map_err(|e| format!("log append for region {region}: {e}"))?;
            }
            JournalRecord::LogTruncate { region, from } => {
                self.region(&region)
                    .log
                    .truncate_suffix(from)
                    .map_err(|e| format!("log truncate for region {region}: {e}"))?;
            }
            JournalRecord::LogCompact { region, through } => {
                self.region(&region)
                    .log
                    .compact_prefix(through)
                    .map_err(|e| format!("log compaction for region {region}: {e}"))?;
            }
            JournalRecord::MetaPut { region, key, value } => {
                self.region(&region)
                    .meta
                    .insert(key.into_vec(), value.into_vec());
            }
            JournalRecord::MetaDelete { region, key } => {
                self.region(&region).meta.remove(key.as_slice());
            }
        }
        Ok(())
    }

    fn region(&mut self, name: &str) -> &mut RecoveredRegion {
        self.regions.entry(name.to_string()).or_default()
    }

    /// Approximate encoded size of the live state.
    pub fn live_bytes(&self) -> u64 {
        self.regions
            .values()
            .map(|region| {
                let meta: usize = region.meta.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
                (region.log.byte_len() + region.log.len() * 8 + meta + 256) as u64
            })
            .sum::<u64>()
    }

    /// The records that recreate this state: the input of a WAL checkpoint.
    /// Large logs are split into several appends, so a `LogAppend` holds at
    /// most about `record_bytes_max` bytes (data plus entry ends) unless one
    /// log entry alone is larger.
    pub fn checkpoint_records(&self, record_bytes_max: usize) -> Vec<JournalRecord> {
        // Data up to a quarter of the cap, and at most cap/8 entries (each
        // end is a varint of up to 5 bytes): together under the cap.
        let data_bytes = u32::try_from(record_bytes_max / 4)
            .unwrap_or(u32::MAX)
            .max(1);
        let count_max = (record_bytes_max as u64 / 8).max(1);
        let mut records = vec![JournalRecord::NodeBoot {
            incarnation: self.incarnation,
        }];
        let mut names: Vec<&String> = self.regions.keys().collect();
        names.sort();
        for name in names {
            let region = &self.regions[name];
            let Some(spec) = &region.spec else { continue };
            records.push(JournalRecord::RegionCreated { spec: spec.clone() });
            let bounds = region.log.bounds();
            if bounds.first > 1 {
                records.push(JournalRecord::LogCompact {
                    region: name.clone(),
                    through: bounds.first - 1,
                });
            }
            let mut next = bounds.first;
            while next <= bounds.last {
                let upto = bounds.last.min(next.saturating_add(count_max - 1));
                let batch = region.log.read(next, upto, data_bytes).unwrap_or_default();
                if batch.is_empty() {
                    break;
                }
                let count = batch.len() as u64;
                records.push(JournalRecord::LogAppend {
                    region: name.clone(),
                    first: next,
                    data: ByteBuf::from(batch.data),
                    ends: batch.ends,
                });
                next += count;
            }
            for (key, value) in &region.meta {
                records.push(JournalRecord::MetaPut {
                    region: name.clone(),
                    key: ByteBuf::from(key.clone()),
                    value: ByteBuf::from(value.clone()),
                });
            }
        }
        records
    }
}
