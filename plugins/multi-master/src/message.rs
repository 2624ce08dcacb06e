//! Peer messages and the durable records, postcard-encoded.

use serde::{Deserialize, Serialize};
use synod_guest_sdk::NodeId;

/// What one replica holds: per origin, the highest sequence number up to
/// which it holds every write of that origin (durably).
pub type Vector = Vec<(NodeId, u64)>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Writes in the entry layout (`crate::entry`), flattened like a host
    /// batch. Each names its origin and sequence number, so a receiver
    /// takes those that extend what it holds and drops the rest.
    Entries {
        #[serde(with = "serde_bytes_compat")]
        data: Vec<u8>,
        ends: Vec<u32>,
    },
    /// The sender's vector, durable on the sender (sent normally, never
    /// eagerly): an acknowledgement of every write it covers, and a probe.
    /// `hlc` is the sender's clock: its later writes are stamped above it.
    /// `reply` asks for the receiver's vector back.
    /// `offset` is the sender's applied position before the protocol's
    /// first write: a peer with a smaller one lacks the state this one
    /// started from (it joined at a swap) and is caught up by state.
    /// `sealed`: the sender accepts no more writes of its own, so `have`
    /// bounds its origin for good (the seal waits for every live peer's).
    Vector {
        have: Vector,
        hlc: u64,
        reply: bool,
        offset: u64,
        sealed: bool,
    },
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Message> {
        postcard::from_bytes(bytes).ok()
    }
}

/// Byte strings as one length-prefixed run instead of a sequence of u8s.
mod serde_bytes_compat {
    use serde::de::{Deserializer, Visitor};
    use serde::ser::Serializer;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

/// Kept in kv under [`BASE_KEY`] after every snapshot: the log position and
/// the vector the saved state covers, and the clock. Written after the
/// snapshot call, so it is never newer than the snapshot file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    pub log_position: u64,
    pub have: Vector,
    pub hlc: u64,
    /// The applied position before this protocol's first write.
    pub offset: u64,
}

/// Metadata of a shipped snapshot: the vector, clock and offset the image
/// covers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippedState {
    pub have: Vector,
    pub hlc: u64,
    pub offset: u64,
}

pub const BASE_KEY: &[u8] = b"mm/base";
pub const MEMBERS_KEY: &[u8] = b"mm/members";

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    postcard::from_bytes(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_none() {
        for message in [
            Message::Entries {
                data: vec![1, 2, 3],
                ends: vec![3],
            },
            Message::Vector {
                have: vec![(1, 5), (2, 0)],
                hlc: 9,
                reply: true,
                offset: 4,
                sealed: false,
            },
        ] {
            assert_eq!(Message::decode(&message.encode()), Some(message));
        }
        assert_eq!(Message::decode(&[0xff, 0xff]), None);
    }
}
