//! Wire formats: peer messages, snapshot metadata and hard state, all
//! postcard-encoded. Every message carries the sender's term (§5.1).

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use synod_guest_sdk::Batch;

use crate::membership::Config;

/// A byte string encoded as one length-prefixed run (postcard
/// `serialize_bytes`), not as a sequence of `u8` values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
                let mut bytes = Vec::new();
                while let Some(byte) = seq.next_element::<u8>()? {
                    bytes.push(byte);
                }
                Ok(Bytes(bytes))
            }
        }
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

/// Log entries in a message: the host's flat batch layout (see
/// [`crate::entry`] for each entry's layout).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entries {
    pub data: Bytes,
    pub ends: Vec<u32>,
}

impl Entries {
    pub fn from_batch(batch: Batch) -> Entries {
        Entries {
            data: Bytes(batch.data),
            ends: batch.ends,
        }
    }

    pub fn into_batch(self) -> Batch {
        Batch {
            data: self.data.0,
            ends: self.ends,
        }
    }
}

/// A peer message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Pre-vote request (§9.6 of the thesis): would you vote for me in
    /// `term` (the sender's term + 1)? Changes no receiver state.
    PreVote {
        term: u64,
        last_index: u64,
        last_term: u64,
    },
    /// Answer to a pre-vote: `term` is the requested term when granted,
    /// the responder's own term when refused.
    PreVoteResponse {
        term: u64,
        granted: bool,
    },
    /// RequestVote (§5.2). `transfer` is set when the candidate was told to
    /// campaign by the leader (TimeoutNow, §3.10); receivers then skip the
    /// check that they have not heard from a leader recently.
    Vote {
        term: u64,
        last_index: u64,
        last_term: u64,
        transfer: bool,
    },
    VoteResponse {
        term: u64,
        granted: bool,
    },
    /// AppendEntries (§5.3): `entries` go at `prev_index + 1 ..`.
    ///
    /// It carries no commit index: the leader sends it with `send-eager`,
    /// before its own copy of the entries is durable (thesis §10.2.1), so
    /// it must not carry anything that depends on that durability. The
    /// commit index travels in [`Message::Heartbeat`], sent normally.
    Append {
        term: u64,
        prev_index: u64,
        prev_term: u64,
        entries: Entries,
    },
    /// Answer to AppendEntries (or to a snapshot). On success `index` is the
    /// last index known to match the leader's log. On refusal `index` is
    /// the refused `prev_index` and `hint_index`/`hint_term` name the last
    /// entry that may match (the largest index ≤ `prev_index` whose term is
    /// ≤ the refused `prev_term`), so the leader skips whole terms back.
    AppendResponse {
        term: u64,
        success: bool,
        index: u64,
        hint_index: u64,
        hint_term: u64,
    },
    /// Leader heartbeat. `commit` is at most what the follower is known to
    /// hold; `round` numbers the leader's heartbeat rounds (ReadIndex and
    /// lease confirmation, answered by [`Message::HeartbeatResponse`]);
    /// round 0 is a commit update that needs no answer.
    Heartbeat {
        term: u64,
        commit: u64,
        round: u64,
    },
    /// Answer to a heartbeat: `last_index` is the follower's last log index,
    /// which lets the leader notice a lost AppendEntries within one round.
    HeartbeatResponse {
        term: u64,
        round: u64,
        last_index: u64,
    },
    /// Leadership transfer (§3.10): campaign now, skipping pre-vote.
    TimeoutNow {
        term: u64,
    },
}

impl Message {
    pub fn term(&self) -> u64 {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteResponse { term, .. }
            | Message::Vote { term, .. }
            | Message::VoteResponse { term, .. }
            | Message::Append { term, .. }
            | Message::AppendResponse { term, .. }
            | Message::Heartbeat { term, .. }
            | Message::HeartbeatResponse { term, .. }
            | Message::TimeoutNow { term } => *term,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a message always encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// The state a snapshot covers, kept in kv (`SNAPSHOT_KEY`) and shipped
/// with the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Last log index the snapshot covers (the host's applied position).
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
    /// Configuration in effect at `index`.
    pub config: Config,
    /// Index of the applied seal entry, if the snapshot covers one.
    pub sealed: Option<u64>,
}

/// Metadata attached to `send-snapshot`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippedSnapshot {
    /// Term of the leader that shipped it.
    pub leader_term: u64,
    pub meta: SnapshotMeta,
}

/// Term and vote, kept in kv (`HARD_STATE_KEY`) and written before any
/// message that depends on them leaves (§5.1, Figure 2 "persistent state").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: u64,
    pub voted_for: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bytes_stay_compact() {
        let message = Message::Append {
            term: 3,
            prev_index: 10,
            prev_term: 2,
            entries: Entries {
                data: Bytes(vec![7; 1000]),
                ends: vec![500, 1000],
            },
        };
        let encoded = message.encode();
        assert!(encoded.len() < 1020, "{} bytes", encoded.len());
        assert_eq!(Message::decode(&encoded).unwrap(), message);
        assert_eq!(message.term(), 3);
        assert!(Message::decode(&[250, 1, 2]).is_err());
    }
}
