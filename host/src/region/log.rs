//! The in-memory view of one region replica's log. The WAL is the durable
//! copy; this view answers reads and is rebuilt from the WAL at start.
//! Every mutation returns what is needed to undo it, because a plugin
//! callback that traps must leave no trace.

use std::collections::VecDeque;

use synod_guest_sdk::{Batch, LogBounds, StorageError};

/// The highest position an entry may take. `bounds.last + 1` must not
/// wrap for the plugin, so `u64::MAX` is never a position.
pub const POSITION_MAX: u64 = u64::MAX - 1;

/// The most bytes one `log.read` returns (beyond a first entry, which is
/// always returned): a batch indexes its data with u32 offsets, and a
/// plugin asking for its whole log would only trap on its memory limit.
pub const READ_BYTES_MAX: usize = 64 << 20;

/// Entries at dense positions `first..=last`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionLog {
    first: u64,
    entries: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Default for RegionLog {
    fn default() -> Self {
        Self {
            first: 1,
            entries: VecDeque::new(),
            bytes: 0,
        }
    }
}

/// How to reverse one log mutation.
#[derive(Debug)]
pub enum LogUndo {
    /// Drop everything at or after `from`, then re-append `removed`.
    RestoreSuffix { from: u64, removed: Vec<Vec<u8>> },
    /// Put back a compacted prefix.
    Uncompact { first: u64, removed: Vec<Vec<u8>> },
}

impl RegionLog {
    pub fn bounds(&self) -> LogBounds {
        LogBounds {
            first: self.first,
            last: self.last(),
        }
    }

    pub fn last(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of retained entries.
    pub fn byte_len(&self) -> usize {
        self.bytes
    }

    /// Writes `entries` at `first..`, replacing the suffix.
    pub fn append(&mut self, first: u64, entries: &Batch) -> Result<LogUndo, StorageError> {
        if first == 0 {
            return Err(StorageError::OutOfRange(
                "position 0 is not a log position (positions start at 1)".into(),
            ));
        }
        let count = entries.len() as u64;
        if count > 0
            && first
                .checked_add(count - 1)
                .is_none_or(|last| last > POSITION_MAX)
        {
            return Err(StorageError::OutOfRange(format!(
                "{count} entries at {first} would pass the last usable position {POSITION_MAX}"
            )));
        }
        if first < self.first {
            return Err(StorageError::Compacted(self.first));
        }
        if first > self.last() + 1 {
            return Err(StorageError::OutOfRange(format!(
                "append at {first} would leave a gap after the last position {}",
                self.last()
            )));
        }
        let removed = self.split_off(first);
        for entry in entries.iter() {
            self.bytes += entry.len();
            self.entries.push_back(entry.to_vec());
        }
        Ok(LogUndo::RestoreSuffix {
            from: first,
            removed,
        })
    }

    /// Removes every entry at or after `from`.
    pub fn truncate_suffix(&mut self, from: u64) -> Result<LogUndo, StorageError> {
        if from == 0 {
            return Err(StorageError::OutOfRange(
                "truncate-suffix(0): positions start at 1; truncate from bounds.first to empty the log".into(),
            ));
        }
        if from < self.first {
            return Err(StorageError::Compacted(self.first));
        }
        let removed = self.split_off(from);
        Ok(LogUndo::RestoreSuffix { from, removed })
    }

    /// Discards every entry at or before `through`. `through` must leave a
    /// first position: `u64::MAX` is refused (it would wrap `first` to 0).
    pub fn compact_prefix(&mut self, through: u64) -> Result<LogUndo, StorageError> {
        if through == u64::MAX {
            return Err(StorageError::OutOfRange(format!(
                "compact-prefix({through}) leaves no first position; compact at most through {POSITION_MAX}"
            )));
        }
        let first = self.first;
        let mut removed = Vec::new();
        while self.first <= through {
            match self.entries.pop_front() {
                Some(entry) => {
                    self.bytes -= entry.len();
                    removed.push(entry);
                }
                None => {
                    // Compacting past the end leaves an empty log that
                    // continues after `through` (e.g. after a snapshot).
                    self.first = through + 1;
                    break;
                }
            }
            self.first += 1;
        }
        Ok(LogUndo::Uncompact { first, removed })
    }

    /// Entries `first..=last`, stopping before `max_bytes` once one is taken.
    pub fn read(&self, first: u64, last: u64, max_bytes: u32) -> Result<Batch, StorageError> {
        if first < self.first {
            return Err(StorageError::Compacted(self.first));
        }
        if last > self.last() {
            return Err(StorageError::OutOfRange(format!(
                "read up to {last} beyond the last position {}",
                self.last()
            )));
        }
        let mut batch = Batch::new();
        if first > last {
            return Ok(batch);
        }
        let start = (first - self.first) as usize;
        let end = (last - self.first) as usize;
        let max_bytes = (max_bytes as usize).min(READ_BYTES_MAX);
        for entry in self.entries.range(start..=end) {
            if !batch.is_empty() && batch.byte_len() + entry.len() > max_bytes {
                break;
            }
            batch.push(entry);
        }
        Ok(batch)
    }

    pub fn undo(&mut self, undo: LogUndo) {
        match undo {
            LogUndo::RestoreSuffix { from, removed } => {
                self.split_off(from);
                for entry in removed {
                    self.bytes += entry.len();
                    self.entries.push_back(entry);
                }
            }
            LogUndo::Uncompact { first, removed } => {
                for entry in removed.into_iter().rev() {
                    self.bytes += entry.len();
                    self.entries.push_front(entry);
                }
                self.first = first;
            }
        }
    }

    fn split_off(&mut self, from: u64) -> Vec<Vec<u8>> {
        let keep = from.saturating_sub(self.first) as usize;
        if keep >= self.entries.len() {
            return Vec::new();
        }
        let removed: Vec<Vec<u8>> = self.entries.drain(keep..).collect();
        self.bytes -= removed.iter().map(Vec::len).sum::<usize>();
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(items: &[&str]) -> Batch {
        Batch::from_items(items.iter().map(|s| s.as_bytes()))
    }

    fn contents(log: &RegionLog) -> Vec<String> {
        let b = log.bounds();
        if b.last < b.first {
            return vec![];
        }
        log.read(b.first, b.last, u32::MAX)
            .expect("read")
            .iter()
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect()
    }

    #[test]
    fn append_replaces_suffix_and_undo_restores() {
        let mut log = RegionLog::default();
        log.append(1, &batch(&["a", "b", "c"])).expect("append");
        let before = log.clone();
        let undo = log.append(2, &batch(&["x"])).expect("append");
        assert_eq!(contents(&log), vec!["a", "x"]);
        log.undo(undo);
        assert_eq!(log, before);
    }

    #[test]
    fn gaps_and_compacted_positions_are_errors() {
        let mut log = RegionLog::default();
        assert!(matches!(
            log.append(2, &batch(&["a"])),
            Err(StorageError::OutOfRange(_))
        ));
        log.append(1, &batch(&["a", "b"])).expect("append");
        log.compact_prefix(1).expect("compact");
        assert!(matches!(
            log.append(1, &batch(&["z"])),
            Err(StorageError::Compacted(2))
        ));
        assert!(matches!(
            log.read(1, 2, 10),
            Err(StorageError::Compacted(2))
        ));
        assert!(matches!(
            log.read(2, 3, 10),
            Err(StorageError::OutOfRange(_))
        ));
    }

    #[test]
    fn compact_past_the_end_moves_first() {
        let mut log = RegionLog::default();
        log.append(1, &batch(&["a"])).expect("append");
        let before = log.clone();
        let undo = log.compact_prefix(10).expect("compact");
        assert_eq!(
            log.bounds(),
            LogBounds {
                first: 11,
                last: 10
            }
        );
        log.append(11, &batch(&["k"]))
            .expect("append after compaction");
        log.truncate_suffix(11).expect("truncate");
        log.undo(undo);
        assert_eq!(log, before);
    }

    #[test]
    fn read_respects_max_bytes_but_returns_one() {
        let mut log = RegionLog::default();
        log.append(1, &batch(&["aaaa", "bbbb", "cccc"]))
            .expect("append");
        assert_eq!(log.read(1, 3, 1).expect("read").len(), 1);
        assert_eq!(log.read(1, 3, 8).expect("read").len(), 2);
        assert_eq!(log.byte_len(), 12);
    }

    #[test]
    fn edge_positions_never_wrap() {
        let mut log = RegionLog::default();
        assert!(matches!(
            log.append(0, &batch(&["a"])),
            Err(StorageError::OutOfRange(_))
        ));
        assert!(matches!(
            log.truncate_suffix(0),
            Err(StorageError::OutOfRange(_))
        ));
        assert!(matches!(
            log.compact_prefix(u64::MAX),
            Err(StorageError::OutOfRange(_))
        ));
        assert_eq!(log.bounds(), LogBounds { first: 1, last: 0 });
        // Compacting through the last usable position leaves an empty log
        // whose `last + 1` does not wrap, and nothing can be appended.
        log.compact_prefix(POSITION_MAX).expect("compact");
        let bounds = log.bounds();
        assert_eq!(bounds.first, u64::MAX);
        assert_eq!(bounds.last, POSITION_MAX);
        assert!(matches!(
            log.append(u64::MAX, &batch(&["a"])),
            Err(StorageError::OutOfRange(_))
        ));
        // Huge ranges are refused, not walked.
        let mut log = RegionLog::default();
        log.append(1, &batch(&["a", "b"])).expect("append");
        assert!(matches!(
            log.read(1, u64::MAX, u32::MAX),
            Err(StorageError::OutOfRange(_))
        ));
        assert_eq!(log.read(1, 2, 0).expect("read").len(), 1);
        assert_eq!(log.read(2, 1, 0).expect("read").len(), 0);
    }
}
