//! In-memory index of the host log's terms.
//!
//! The entries themselves live in the host log; this keeps what consensus
//! asks about on every message without a host call: the snapshot boundary,
//! the last index, and the term of any retained index. Terms are stored as
//! runs (first index of each term), so the index is as small as the number
//! of terms in the log.

/// Terms of the log after the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogIndex {
    /// Last index covered by the snapshot (0 if none).
    snapshot_index: u64,
    /// Term of the entry at `snapshot_index` (0 if none).
    snapshot_term: u64,
    /// Last index of the log (`snapshot_index` when no entry follows it).
    last_index: u64,
    /// `(first index, term)` of each run of equal terms, ascending; the
    /// runs cover `snapshot_index + 1 ..= last_index`.
    runs: Vec<(u64, u64)>,
}

impl LogIndex {
    /// An empty log after a snapshot at `snapshot_index`/`snapshot_term`.
    pub fn new(snapshot_index: u64, snapshot_term: u64) -> LogIndex {
        LogIndex {
            snapshot_index,
            snapshot_term,
            last_index: snapshot_index,
            runs: Vec::new(),
        }
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    pub fn last_term(&self) -> u64 {
        self.runs
            .last()
            .map_or(self.snapshot_term, |&(_, term)| term)
    }

    /// Term of the entry at `index`, if it is the snapshot boundary or a
    /// retained entry.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if index < self.snapshot_index || index > self.last_index {
            return None;
        }
        let run = self.runs.partition_point(|&(first, _)| first <= index);
        debug_assert!(run > 0);
        Some(self.runs[run - 1].1)
    }

    /// Records the entry at `last_index + 1`.
    pub fn push(&mut self, index: u64, term: u64) {
        assert_eq!(index, self.last_index + 1, "log index must grow densely");
        assert!(
            term >= self.last_term(),
            "log terms must not decrease: {term} after {} at {index}",
            self.last_term()
        );
        if self.runs.last().is_none_or(|&(_, last)| last != term) {
            self.runs.push((index, term));
        }
        self.last_index = index;
    }

    /// Forgets every entry at or after `from`.
    pub fn truncate_from(&mut self, from: u64) {
        assert!(
            from > self.snapshot_index,
            "cannot truncate into the snapshot ({from} <= {})",
            self.snapshot_index
        );
        if from > self.last_index {
            return;
        }
        while self.runs.last().is_some_and(|&(first, _)| first >= from) {
            self.runs.pop();
        }
        self.last_index = from - 1;
    }

    /// Moves the snapshot boundary to `through` (whose term is `term`),
    /// keeping later entries. Past the end, the log becomes empty.
    pub fn compact_through(&mut self, through: u64, term: u64) {
        if through <= self.snapshot_index {
            return;
        }
        if through >= self.last_index {
            *self = LogIndex::new(through, term);
            return;
        }
        assert_eq!(
            self.term(through),
            Some(term),
            "compaction term disagrees with the log at {through}"
        );
        let keep_from = self
            .runs
            .partition_point(|&(first, _)| first <= through + 1);
        // The run holding `through + 1` starts there now.
        let mut runs = Vec::with_capacity(self.runs.len() - keep_from + 1);
        runs.push((through + 1, self.runs[keep_from - 1].1));
        runs.extend_from_slice(&self.runs[keep_from..]);
        self.runs = runs;
        self.snapshot_index = through;
        self.snapshot_term = term;
    }

    /// The largest index ≤ `index` whose term is ≤ `term`, with its term:
    /// the last entry that may match a log whose entry at `index` has
    /// `term` (the fast back-up of §5.3 as etcd does it). Below the
    /// snapshot the term is unknown and reported as 0.
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut index = index.min(self.last_index);
        for &(first, run_term) in self.runs.iter().rev() {
            if first > index {
                continue;
            }
            if run_term <= term {
                return (index, run_term);
            }
            index = first - 1;
        }
        if index >= self.snapshot_index {
            (self.snapshot_index, self.snapshot_term)
        } else {
            (index, 0)
        }
    }

    /// Whether a log ending at `last_index`/`last_term` is at least as
    /// up-to-date as this one (§5.4.1).
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        let my_term = self.last_term();
        last_term > my_term || (last_term == my_term && last_index >= self.last_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(terms: &[u64]) -> LogIndex {
        let mut log = LogIndex::new(0, 0);
        for (offset, &term) in terms.iter().enumerate() {
            log.push(offset as u64 + 1, term);
        }
        log
    }

    #[test]
    fn terms_by_run() {
        let log = log(&[1, 1, 2, 2, 2, 5]);
        assert_eq!(log.last_index(), 6);
        assert_eq!(log.last_term(), 5);
        let terms: Vec<_> = (0..=7).map(|i| log.term(i)).collect();
        assert_eq!(
            terms,
            vec![
                Some(0),
                Some(1),
                Some(1),
                Some(2),
                Some(2),
                Some(2),
                Some(5),
                None
            ]
        );
    }

    #[test]
    fn truncate_and_compact() {
        let mut log = log(&[1, 1, 2, 2, 2, 5]);
        log.truncate_from(4);
        assert_eq!((log.last_index(), log.last_term()), (3, 2));
        log.push(4, 3);
        log.compact_through(2, 1);
        assert_eq!(log.term(1), None);
        assert_eq!(log.term(2), Some(1));
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.term(4), Some(3));
        log.compact_through(3, 2);
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.term(4), Some(3));
        log.compact_through(10, 7);
        assert_eq!((log.last_index(), log.last_term()), (10, 7));
        assert_eq!(log.term(10), Some(7));
    }

    #[test]
    fn conflict_hints_skip_whole_terms() {
        let log = log(&[1, 1, 2, 2, 2, 5, 5]);
        // A leader probing at 7 with term 4: our entries of term 5 cannot
        // match, term 2 might.
        assert_eq!(log.find_conflict_by_term(7, 4), (5, 2));
        assert_eq!(log.find_conflict_by_term(7, 5), (7, 5));
        assert_eq!(log.find_conflict_by_term(9, 1), (2, 1));
        assert_eq!(log.find_conflict_by_term(7, 0), (0, 0));
    }

    #[test]
    fn up_to_date_compares_term_then_index() {
        let log = log(&[1, 2, 2]);
        assert!(log.is_up_to_date(3, 2));
        assert!(log.is_up_to_date(1, 3));
        assert!(!log.is_up_to_date(2, 2));
        assert!(!log.is_up_to_date(9, 1));
    }
}
