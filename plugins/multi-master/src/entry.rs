//! The layout of one replicated write, in the log and in messages:
//! `origin u64 | seq u64 | stamp time u64 | request id u64 | command`
//! (little-endian). The stamp's origin is the entry's origin.

use synod_guest_sdk::{NodeId, RequestId, Stamp};

const HEADER: usize = 32;

/// One write, borrowed from a log entry or a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub origin: NodeId,
    /// The origin's sequence number: dense from 1 per origin.
    pub seq: u64,
    pub time: u64,
    pub id: RequestId,
    pub command: &'a [u8],
}

impl<'a> Entry<'a> {
    pub fn stamp(&self) -> Stamp {
        Stamp {
            time: self.time,
            origin: self.origin,
        }
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(HEADER + self.command.len());
        for field in [self.origin, self.seq, self.time, self.id] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(self.command);
    }

    /// `None` when `bytes` is shorter than the header (a peer or the log
    /// handed something that is not an entry).
    pub fn decode(bytes: &'a [u8]) -> Option<Entry<'a>> {
        if bytes.len() < HEADER {
            return None;
        }
        let field = |i: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(word)
        };
        Some(Entry {
            origin: field(0),
            seq: field(1),
            time: field(2),
            id: field(3),
            command: &bytes[HEADER..],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_input() {
        let entry = Entry {
            origin: 3,
            seq: 9,
            time: 77,
            id: 5,
            command: b"put",
        };
        let mut bytes = Vec::new();
        entry.encode_into(&mut bytes);
        assert_eq!(Entry::decode(&bytes), Some(entry));
        assert_eq!(Entry::decode(&bytes[..31]), None);
    }
}
