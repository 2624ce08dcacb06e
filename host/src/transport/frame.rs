//! What travels between nodes: length-delimited postcard frames.
//!
//! A connection starts (inside mutual TLS) with the dialer's `Hello`
//! naming its node id and the acceptor's `Welcome` naming its own;
//! after it, either end may send data frames. Every data frame names its
//! region and epoch, so a message never reaches another region or an old
//! epoch's instance.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use synod_guest_sdk::NodeId;

/// Largest frame accepted; a larger one closes the connection.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Largest frame accepted before the handshake completes: a Hello, Welcome
/// or Proof is under 100 bytes, and an unauthenticated peer must not make
/// the node buffer more.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 1024;
/// Protocol version carried in the handshake (2: TLS, no shared secret).
pub const TRANSPORT_VERSION: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Dialer → acceptor: who I am (my certificate must name me).
    Hello { version: u32, node_id: NodeId },
    /// Acceptor → dialer: who I am, once the dialer is checked.
    Welcome { node_id: NodeId },
    /// Plugin messages of one region replica to its peer replica.
    Messages {
        region: String,
        epoch: u64,
        data: ByteBuf,
        ends: Vec<u32>,
    },
    /// Part of a state-machine snapshot shipped by a plugin.
    SnapshotChunk(super::chunks::Chunk),
    /// A control-plane request (`reply: false`) or the reply to request
    /// `id` (`reply: true`); the body is a `control::network` message.
    Control { id: u64, reply: bool, body: ByteBuf },
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_fails() {
        let frame = Frame::Messages {
            region: "r".into(),
            epoch: 2,
            data: ByteBuf::from(vec![1, 2, 3]),
            ends: vec![1, 3],
        };
        assert_eq!(Frame::decode(&frame.encode()).expect("decode"), frame);
        assert!(Frame::decode(&[0xff; 16]).is_err());
        assert!(Frame::decode(&[]).is_err());
    }
}
