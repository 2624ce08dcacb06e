//! Snapshots cross the transport in chunks, so a state machine larger than
//! one frame can still catch a follower up, and reassemble on arrival.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use synod_guest_sdk::NodeId;

#[cfg(test)]
use super::frame::Frame;

/// Image bytes per chunk frame: well under `FRAME_BYTES_MAX`, small enough
/// that other regions' messages are not held up long behind one.
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;

/// Largest image a node accepts from a peer.
pub const SNAPSHOT_BYTES_MAX: u64 = 16 << 30;

/// The frames that carry `image` (at least one, even when it is empty).
/// The link produces the same frames one at a time (`link.rs`).
#[cfg(test)]
pub fn snapshot_frames(region: &str, epoch: u64, metadata: &[u8], image: &[u8]) -> Vec<Frame> {
    let transfer = rand::random::<u64>();
    let total = image.len() as u64;
    let mut frames = Vec::with_capacity(image.len() / SNAPSHOT_CHUNK_BYTES + 1);
    let mut offset = 0;
    loop {
        let end = (offset + SNAPSHOT_CHUNK_BYTES).min(image.len());
        frames.push(Frame::SnapshotChunk(Chunk {
            region: region.to_string(),
            epoch,
            transfer,
            offset: offset as u64,
            total,
            metadata: if offset == 0 {
                metadata.to_vec()
            } else {
                Vec::new()
            },
            data: image[offset..end].to_vec(),
        }));
        offset = end;
        if offset >= image.len() {
            return frames;
        }
    }
}

/// A whole snapshot, reassembled.
#[derive(Debug, PartialEq, Eq)]
pub struct ArrivedSnapshot {
    pub region: String,
    pub epoch: u64,
    pub metadata: Vec<u8>,
    pub image: Vec<u8>,
}

/// One chunk of a snapshot: `data` is the image's bytes from `offset`, of
/// `total` in all. `metadata` rides on the first chunk. `transfer` tells
/// one shipment from its retry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub region: String,
    pub epoch: u64,
    pub transfer: u64,
    pub offset: u64,
    pub total: u64,
    #[serde(with = "serde_bytes")]
    pub metadata: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("snapshot of {total} bytes is over the {SNAPSHOT_BYTES_MAX}-byte limit")]
    TooLarge { total: u64 },
    #[error("chunk at {offset} does not continue a transfer (expected {expected})")]
    OutOfOrder { offset: u64, expected: u64 },
    #[error("chunk runs past the announced {total} bytes")]
    Overrun { total: u64 },
}

struct Partial {
    transfer: u64,
    epoch: u64,
    total: u64,
    metadata: Vec<u8>,
    image: Vec<u8>,
}

/// Transfers in progress, one per sending peer and region. A new transfer
/// (offset 0) replaces an unfinished one; a gap abandons it, and the
/// protocol's own retry sends the snapshot again.
#[derive(Default)]
pub struct SnapshotAssembler {
    partial: HashMap<(NodeId, String), Partial>,
}

impl SnapshotAssembler {
    pub fn accept(
        &mut self,
        from: NodeId,
        chunk: Chunk,
    ) -> Result<Option<ArrivedSnapshot>, ChunkError> {
        let key = (from, chunk.region);
        if chunk.total > SNAPSHOT_BYTES_MAX {
            self.partial.remove(&key);
            return Err(ChunkError::TooLarge { total: chunk.total });
        }
        if chunk.offset == 0 {
            self.partial.insert(
                key.clone(),
                Partial {
                    transfer: chunk.transfer,
                    epoch: chunk.epoch,
                    total: chunk.total,
                    metadata: chunk.metadata,
                    // Grows with the chunks that really arrive, not with
                    // what the first one announced.
                    image: Vec::new(),
                },
            );
        }
        let Some(partial) = self.partial.get_mut(&key) else {
            return Err(ChunkError::OutOfOrder {
                offset: chunk.offset,
                expected: 0,
            });
        };
        let expected = partial.image.len() as u64;
        if partial.transfer != chunk.transfer
            || partial.epoch != chunk.epoch
            || chunk.offset != expected
            || partial.total != chunk.total
        {
            self.partial.remove(&key);
            return Err(ChunkError::OutOfOrder {
                offset: chunk.offset,
                expected,
            });
        }
        if expected + chunk.data.len() as u64 > partial.total {
            let total = partial.total;
            self.partial.remove(&key);
            return Err(ChunkError::Overrun { total });
        }
        partial.image.extend_from_slice(&chunk.data);
        if (partial.image.len() as u64) < partial.total {
            return Ok(None);
        }
        let Some(done) = self.partial.remove(&key) else {
            return Ok(None);
        };
        Ok(Some(ArrivedSnapshot {
            region: key.1,
            epoch: done.epoch,
            metadata: done.metadata,
            image: done.image,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(frames: Vec<Frame>) -> Vec<Chunk> {
        frames
            .into_iter()
            .map(|frame| match frame {
                Frame::SnapshotChunk(chunk) => chunk,
                other => panic!("not a chunk: {other:?}"),
            })
            .collect()
    }

    fn image(bytes: usize) -> Vec<u8> {
        (0..bytes).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn a_large_image_arrives_whole() {
        let image = image(2 * SNAPSHOT_CHUNK_BYTES + 123);
        let chunks = chunks_of(snapshot_frames("r", 3, b"meta", &image));
        assert_eq!(chunks.len(), 3);
        let mut assembler = SnapshotAssembler::default();
        let mut arrived = None;
        for chunk in chunks {
            assert!(arrived.is_none(), "nothing completes early");
            arrived = assembler.accept(7, chunk).expect("in order");
        }
        let arrived = arrived.expect("complete");
        assert_eq!(arrived.region, "r");
        assert_eq!(arrived.epoch, 3);
        assert_eq!(arrived.metadata, b"meta");
        assert_eq!(arrived.image, image);
    }

    #[test]
    fn an_empty_image_is_one_chunk() {
        let chunks = chunks_of(snapshot_frames("r", 1, b"m", &[]));
        assert_eq!(chunks.len(), 1);
        let mut assembler = SnapshotAssembler::default();
        let arrived = assembler
            .accept(2, chunks.into_iter().next().expect("one"))
            .expect("ok")
            .expect("complete");
        assert!(arrived.image.is_empty());
    }

    #[test]
    fn a_gap_abandons_the_transfer_and_a_new_one_replaces_it() {
        let image = image(3 * SNAPSHOT_CHUNK_BYTES);
        let mut assembler = SnapshotAssembler::default();
        let mut first = chunks_of(snapshot_frames("r", 1, b"m", &image));
        let third = first.remove(2);
        assert!(assembler.accept(1, first.remove(0)).expect("ok").is_none());
        assert!(matches!(
            assembler.accept(1, third),
            Err(ChunkError::OutOfOrder { .. })
        ));
        // The retry (a new transfer id) completes.
        let mut arrived = None;
        for chunk in chunks_of(snapshot_frames("r", 1, b"m", &image)) {
            arrived = assembler.accept(1, chunk).expect("in order");
        }
        assert_eq!(arrived.expect("complete").image, image);
    }

    #[test]
    fn transfers_from_two_peers_do_not_mix() {
        let a = image(SNAPSHOT_CHUNK_BYTES + 5);
        let b = vec![9u8; SNAPSHOT_CHUNK_BYTES + 5];
        let mut assembler = SnapshotAssembler::default();
        let mut from_a = chunks_of(snapshot_frames("r", 1, b"a", &a));
        let mut from_b = chunks_of(snapshot_frames("r", 1, b"b", &b));
        assert!(assembler.accept(1, from_a.remove(0)).expect("ok").is_none());
        assert!(assembler.accept(2, from_b.remove(0)).expect("ok").is_none());
        let done_b = assembler.accept(2, from_b.remove(0)).expect("ok");
        let done_a = assembler.accept(1, from_a.remove(0)).expect("ok");
        assert_eq!(done_a.expect("a").image, a);
        assert_eq!(done_b.expect("b").image, b);
    }

    #[test]
    fn hostile_sizes_are_refused() {
        let mut assembler = SnapshotAssembler::default();
        let huge = Chunk {
            region: "r".into(),
            epoch: 1,
            transfer: 1,
            offset: 0,
            total: SNAPSHOT_BYTES_MAX + 1,
            metadata: vec![],
            data: vec![],
        };
        assert!(matches!(
            assembler.accept(1, huge),
            Err(ChunkError::TooLarge { .. })
        ));
        let overrun = Chunk {
            region: "r".into(),
            epoch: 1,
            transfer: 2,
            offset: 0,
            total: 4,
            metadata: vec![],
            data: vec![0; 8],
        };
        assert_eq!(
            assembler.accept(1, overrun).err(),
            Some(ChunkError::Overrun { total: 4 })
        );
        let stray = Chunk {
            region: "r".into(),
            epoch: 1,
            transfer: 3,
            offset: 100,
            total: 200,
            metadata: vec![],
            data: vec![0; 100],
        };
        assert!(assembler.accept(1, stray).is_err());
    }
}
