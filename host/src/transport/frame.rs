//! What travels between nodes: length-delimited postcard frames.
//!
//! A connection starts with a mutual challenge-response handshake proving
//! both ends know the cluster secret (HMAC-SHA256 over the peer's nonce);
//! after it, either end may send data frames. Every data frame names its
//! region and epoch, so a message never reaches another region or an old
//! epoch's instance.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::Sha256;
use synod_guest_sdk::NodeId;

/// Largest frame accepted; a larger one closes the connection.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Largest frame accepted before the handshake completes: a Hello, Welcome
/// or Proof is under 100 bytes, and an unauthenticated peer must not make
/// the node buffer more.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 1024;
/// Protocol version carried in the handshake.
pub const TRANSPORT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Dialer → acceptor: who I am, and a nonce for you to prove the secret.
    Hello {
        version: u32,
        node_id: NodeId,
        nonce: [u8; 32],
    },
    /// Acceptor → dialer: who I am, my proof over your nonce, my nonce.
    Welcome {
        node_id: NodeId,
        proof: [u8; 32],
        nonce: [u8; 32],
    },
    /// Dialer → acceptor: my proof over your nonce.
    Proof { proof: [u8; 32] },
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

/// Proof that the holder of `secret` is `node_id`, bound to `nonce` and the
/// handshake step (`role`), so a proof cannot be replayed in another role.
pub fn proof(secret: &[u8], role: &str, node_id: NodeId, nonce: &[u8; 32]) -> [u8; 32] {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm cannot run.
        Err(_) => return [0; 32],
    };
    mac.update(role.as_bytes());
    mac.update(&node_id.to_le_bytes());
    mac.update(nonce);
    mac.finalize().into_bytes().into()
}

/// Constant-time comparison of a received proof.
pub fn verify(
    secret: &[u8],
    role: &str,
    node_id: NodeId,
    nonce: &[u8; 32],
    proof: &[u8; 32],
) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(role.as_bytes());
    mac.update(&node_id.to_le_bytes());
    mac.update(nonce);
    mac.verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_secret_role_node_and_nonce() {
        let nonce = [7u8; 32];
        let p = proof(b"secret", "dial", 3, &nonce);
        assert!(verify(b"secret", "dial", 3, &nonce, &p));
        assert!(!verify(b"other", "dial", 3, &nonce, &p));
        assert!(!verify(b"secret", "accept", 3, &nonce, &p));
        assert!(!verify(b"secret", "dial", 4, &nonce, &p));
        assert!(!verify(b"secret", "dial", 3, &[8u8; 32], &p));
    }

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
