//! The outgoing side of one peer link: a byte-bounded, per-region fair
//! scheduler.
//!
//! Frames wait in one of two places:
//! - the control lane: control-plane frames in order, within
//!   [`CONTROL_LANE_BYTES_MAX`], always served first, so the control plane
//!   never waits behind bulk data (a frame that does not fit is dropped:
//!   control RPCs time out and are retried);
//! - one queue per region, served by deficit round robin: each turn a
//!   region may send up to [`QUANTUM_BYTES`] more than it has already
//!   sent, so a region with small messages (heartbeats) gets through while
//!   another sends megabytes.
//!
//! Every region queue holds at most `region_bytes_max` encoded bytes, and
//! the link at most `link_bytes_max`. A frame that does not fit is dropped
//! and counted against its region: delivery is unreliable by contract, and
//! only the region that overflows loses messages. A shipped snapshot is
//! one queue entry that yields its chunks one at a time as the link gets
//! to them; it counts one chunk against its region's budget while queued.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_util::bytes::Bytes;

use super::chunks::{Chunk, SNAPSHOT_CHUNK_BYTES};
use super::frame::Frame;

/// Bytes of control frames a link may hold.
pub const CONTROL_LANE_BYTES_MAX: usize = 96 << 20;

/// Bytes a region may send per round-robin turn.
pub const QUANTUM_BYTES: usize = 256 * 1024;

/// What a queued snapshot chunk is charged, besides its data: the frame's
/// header, region name and metadata are charged exactly at enqueue.
const CHUNK_OVERHEAD_BYTES: usize = 64;

/// What each queued entry costs in memory besides its bytes (queue slot,
/// buffer header), so a flood of tiny frames is bounded too.
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// Byte budgets of one link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkBudget {
    /// Queued bytes per region on one link.
    pub region_bytes_max: usize,
    /// Queued bytes on one link, all regions together.
    pub link_bytes_max: usize,
}

/// What was dropped instead of queued, for the region counters.
#[derive(Debug, PartialEq, Eq)]
pub struct Dropped {
    pub region: String,
    pub frames: u64,
    pub bytes: u64,
}

/// A snapshot shipment that produces its chunk frames on demand.
struct OutgoingSnapshot {
    region: String,
    epoch: u64,
    transfer: u64,
    metadata: Vec<u8>,
    image: Vec<u8>,
    offset: usize,
    /// What this entry is charged in its region's budget.
    cost: usize,
}

impl OutgoingSnapshot {
    /// The next chunk; `None` once the image is exhausted.
    fn next_frame(&mut self) -> Option<Bytes> {
        if self.offset > self.image.len() {
            return None;
        }
        let end = (self.offset + SNAPSHOT_CHUNK_BYTES).min(self.image.len());
        let frame = Frame::SnapshotChunk(Chunk {
            region: self.region.clone(),
            epoch: self.epoch,
            transfer: self.transfer,
            offset: self.offset as u64,
            total: self.image.len() as u64,
            metadata: if self.offset == 0 {
                std::mem::take(&mut self.metadata)
            } else {
                Vec::new()
            },
            data: self.image[self.offset..end].to_vec(),
        });
        // Past the end once the last chunk (possibly empty) has left.
        self.offset = if end == self.image.len() {
            self.image.len() + 1
        } else {
            end
        };
        Some(Bytes::from(frame.encode()))
    }

    fn finished(&self) -> bool {
        self.offset > self.image.len()
    }
}

enum Entry {
    Frame(Bytes),
    Snapshot(Box<OutgoingSnapshot>),
}

impl Entry {
    /// Bytes charged while queued.
    fn cost(&self) -> usize {
        match self {
            Entry::Frame(bytes) => bytes.len() + 4 + ENTRY_OVERHEAD_BYTES,
            Entry::Snapshot(snapshot) => snapshot.cost,
        }
    }

    /// Bytes the next frame of this entry will put on the wire, for DRR.
    fn next_bytes(&self) -> usize {
        match self {
            Entry::Frame(bytes) => bytes.len() + 4,
            Entry::Snapshot(snapshot) => {
                let remaining = snapshot.image.len().saturating_sub(snapshot.offset);
                remaining.min(SNAPSHOT_CHUNK_BYTES) + CHUNK_OVERHEAD_BYTES
            }
        }
    }
}

#[derive(Default)]
struct RegionQueue {
    entries: VecDeque<Entry>,
    bytes: usize,
    deficit: usize,
}

#[derive(Default)]
struct Queues {
    control: VecDeque<Bytes>,
    control_bytes: usize,
    regions: HashMap<String, RegionQueue>,
    /// Regions with queued entries, in round-robin order.
    active: VecDeque<String>,
    /// Whether the front of `active` got its quantum this turn.
    turn_started: bool,
    bytes: usize,
}

/// The outgoing queues of one peer link.
pub struct LinkQueue {
    budget: LinkBudget,
    queues: Mutex<Queues>,
    ready: Notify,
}

impl LinkQueue {
    pub fn new(budget: LinkBudget) -> Self {
        Self {
            budget,
            queues: Mutex::new(Queues::default()),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a control frame; returns false (dropped) when the control
    /// lane is full.
    pub fn push_control(&self, frame: Bytes) -> bool {
        {
            let mut queues = self.lock();
            if queues.control_bytes + frame.len() > CONTROL_LANE_BYTES_MAX {
                return false;
            }
            queues.control_bytes += frame.len();
            queues.control.push_back(frame);
        }
        self.ready.notify_one();
        true
    }

    /// Queues an encoded data frame of `region`; returns what was dropped
    /// if it does not fit the region's or the link's budget.
    pub fn push_frame(&self, region: &str, frame: Bytes) -> Result<(), Dropped> {
        let entry = Entry::Frame(frame);
        self.push(region, entry)
    }

    /// Queues a snapshot shipment. One still queued for the same region is
    /// replaced (its transfer would be abandoned by the receiver anyway)
    /// and reported as dropped.
    pub fn push_snapshot(
        &self,
        region: &str,
        epoch: u64,
        metadata: Vec<u8>,
        image: Vec<u8>,
    ) -> Result<(), Dropped> {
        let cost = SNAPSHOT_CHUNK_BYTES.min(image.len())
            + metadata.len()
            + region.len()
            + CHUNK_OVERHEAD_BYTES;
        let snapshot = OutgoingSnapshot {
            region: region.to_string(),
            epoch,
            transfer: rand::random::<u64>(),
            metadata,
            image,
            offset: 0,
            cost,
        };
        let replaced = {
            let mut queues = self.lock();
            let queues = &mut *queues;
            let mut freed = 0;
            let mut replaced = 0;
            if let Some(queue) = queues.regions.get_mut(region) {
                queue.entries.retain(|entry| match entry {
                    // One already started keeps going: cutting it would
                    // only waste the chunks sent.
                    Entry::Snapshot(old) if old.offset == 0 => {
                        freed += old.cost;
                        replaced += 1;
                        false
                    }
                    _ => true,
                });
                queue.bytes -= freed;
            }
            queues.bytes -= freed;
            replaced
        };
        let pushed = self.push(region, Entry::Snapshot(Box::new(snapshot)));
        match (pushed, replaced) {
            (Ok(()), 0) => Ok(()),
            (Ok(()), frames) => Err(Dropped {
                region: region.to_string(),
                frames,
                bytes: 0,
            }),
            (Err(mut dropped), frames) => {
                dropped.frames += frames;
                Err(dropped)
            }
        }
    }

    fn push(&self, region: &str, entry: Entry) -> Result<(), Dropped> {
        let cost = entry.cost();
        {
            let mut queues = self.lock();
            let queues = &mut *queues;
            let queued = queues.regions.get(region).map_or(0, |q| q.bytes);
            if queued + cost > self.budget.region_bytes_max
                || queues.bytes + cost > self.budget.link_bytes_max
            {
                return Err(Dropped {
                    region: region.to_string(),
                    frames: 1,
                    bytes: cost as u64,
                });
            }
            let queue = queues.regions.entry(region.to_string()).or_default();
            if queue.entries.is_empty() {
                queues.active.push_back(region.to_string());
            }
            queue.entries.push_back(entry);
            queue.bytes += cost;
            queues.bytes += cost;
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The next frame to write: control frames first, then the regions in
    /// deficit round robin. `None` when nothing is queued.
    pub fn pop(&self) -> Option<Bytes> {
        let mut queues = self.lock();
        let queues = &mut *queues;
        if let Some(control) = queues.control.pop_front() {
            queues.control_bytes -= control.len();
            return Some(control);
        }
        loop {
            let name = queues.active.front()?.clone();
            let Some(queue) = queues.regions.get_mut(&name) else {
                queues.active.pop_front();
                queues.turn_started = false;
                continue;
            };
            if !queues.turn_started {
                queue.deficit += QUANTUM_BYTES;
                queues.turn_started = true;
            }
            let Some(head) = queue.entries.front_mut() else {
                queues.regions.remove(&name);
                queues.active.pop_front();
                queues.turn_started = false;
                continue;
            };
            let wants = head.next_bytes();
            if queue.deficit < wants {
                // Turn over: the next region's turn, this one keeps its
                // deficit for its next turn.
                queues.active.rotate_left(1);
                queues.turn_started = false;
                continue;
            }
            queue.deficit -= wants;
            let cost = head.cost();
            let (frame, freed) = match head {
                Entry::Frame(frame) => {
                    // A cheap clone (shared buffer); the entry goes next.
                    let frame = frame.clone();
                    queue.entries.pop_front();
                    (Some(frame), cost)
                }
                Entry::Snapshot(snapshot) => {
                    let frame = snapshot.next_frame();
                    if snapshot.finished() {
                        let cost = snapshot.cost;
                        queue.entries.pop_front();
                        (frame, cost)
                    } else {
                        (frame, 0)
                    }
                }
            };
            queue.bytes -= freed;
            queues.bytes -= freed;
            if queue.entries.is_empty() {
                queues.regions.remove(&name);
                queues.active.pop_front();
                queues.turn_started = false;
            }
            if let Some(frame) = frame {
                return Some(frame);
            }
        }
    }

    /// Waits until something may be queued (spurious wakeups are fine).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Drops everything queued (the peer is unreachable); returns what was
    /// dropped, per region.
    pub fn clear(&self) -> Vec<Dropped> {
        let mut queues = self.lock();
        queues.control.clear();
        queues.control_bytes = 0;
        queues.active.clear();
        queues.turn_started = false;
        queues.bytes = 0;
        queues
            .regions
            .drain()
            .map(|(region, queue)| Dropped {
                region,
                frames: queue.entries.len() as u64,
                bytes: queue.bytes as u64,
            })
            .collect()
    }

    /// Bytes queued now, all regions.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(region: usize, link: usize) -> LinkBudget {
        LinkBudget {
            region_bytes_max: region,
            link_bytes_max: link,
        }
    }

    fn frame(region: &str, bytes: usize) -> Bytes {
        Bytes::from(
            Frame::Messages {
                region: region.into(),
                epoch: 1,
                data: serde_bytes::ByteBuf::from(vec![7u8; bytes]),
                ends: vec![bytes as u32],
            }
            .encode(),
        )
    }

    fn region_of(bytes: &Bytes) -> String {
        match Frame::decode(bytes).expect("decodes") {
            Frame::Messages { region, .. } => region,
            Frame::SnapshotChunk(chunk) => chunk.region,
            Frame::Control { .. } => "control".into(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_full_region_drops_only_its_own_frames() {
        // Room for three frames of 1 MiB and their framing, not four.
        let queue = LinkQueue::new(budget((3 << 20) + 1024, 64 << 20));
        for _ in 0..3 {
            queue
                .push_frame("big", frame("big", 1 << 20))
                .expect("fits");
        }
        let dropped = queue
            .push_frame("big", frame("big", 1 << 20))
            .expect_err("over the region budget");
        assert_eq!(dropped.region, "big");
        assert_eq!(dropped.frames, 1);
        queue
            .push_frame("small", frame("small", 100))
            .expect("another region still fits");
    }

    #[test]
    fn the_link_total_is_bounded() {
        let queue = LinkQueue::new(budget(8 << 20, (2 << 20) + 1024));
        queue.push_frame("a", frame("a", 1 << 20)).expect("fits");
        queue.push_frame("b", frame("b", 1 << 20)).expect("fits");
        assert!(queue.push_frame("c", frame("c", 1 << 20)).is_err());
        assert!(queue.queued_bytes() <= 3 << 20);
    }

    #[test]
    fn small_messages_are_not_stuck_behind_bulk() {
        let queue = LinkQueue::new(budget(64 << 20, 256 << 20));
        for _ in 0..32 {
            queue
                .push_frame("bulk", frame("bulk", 1 << 20))
                .expect("fits");
        }
        for _ in 0..4 {
            queue.push_frame("beat", frame("beat", 16)).expect("fits");
        }
        // Every small message leaves before a second megabyte of bulk.
        let mut bulk_before = 0;
        let mut beats = 0;
        while beats < 4 {
            let next = queue.pop().expect("queued");
            if region_of(&next) == "beat" {
                beats += 1;
            } else {
                bulk_before += 1;
            }
        }
        assert!(bulk_before <= 1, "{bulk_before} bulk frames went first");
    }

    #[test]
    fn bandwidth_is_shared_between_busy_regions() {
        let queue = LinkQueue::new(budget(64 << 20, 256 << 20));
        for _ in 0..40 {
            queue.push_frame("a", frame("a", 1 << 20)).expect("fits");
            queue.push_frame("b", frame("b", 100 << 10)).expect("fits");
        }
        let mut bytes: HashMap<String, usize> = HashMap::new();
        for _ in 0..30 {
            let next = queue.pop().expect("queued");
            *bytes.entry(region_of(&next)).or_default() += next.len();
        }
        let (a, b) = (bytes["a"], bytes["b"]);
        assert!(a < 3 * b && b < 3 * a, "a {a} vs b {b}");
    }

    #[test]
    fn control_frames_go_first_in_order_within_their_budget() {
        let queue = LinkQueue::new(budget(8 << 20, 64 << 20));
        queue.push_frame("a", frame("a", 10)).expect("fits");
        let control = |id: u64, bytes: usize| {
            Bytes::from(
                Frame::Control {
                    id,
                    reply: false,
                    body: serde_bytes::ByteBuf::from(vec![0u8; bytes]),
                }
                .encode(),
            )
        };
        assert!(queue.push_control(control(1, 10)));
        assert!(queue.push_control(control(2, 10)));
        assert!(
            !queue.push_control(control(3, CONTROL_LANE_BYTES_MAX)),
            "a frame over the lane's budget is dropped"
        );
        assert_eq!(queue.pop(), Some(control(1, 10)));
        assert_eq!(queue.pop(), Some(control(2, 10)));
        assert_eq!(region_of(&queue.pop().expect("a")), "a");
        assert_eq!(queue.pop(), None);
    }

    #[test]
    fn a_snapshot_larger_than_the_budget_leaves_in_chunks() {
        let queue = LinkQueue::new(budget(SNAPSHOT_CHUNK_BYTES + (1 << 20), 64 << 20));
        let image: Vec<u8> = (0..3 * SNAPSHOT_CHUNK_BYTES + 5).map(|i| i as u8).collect();
        queue
            .push_snapshot("r", 1, b"meta".to_vec(), image.clone())
            .expect("one chunk's worth is charged");
        queue
            .push_frame("r", frame("r", 1000))
            .expect("room for messages beside it");
        let mut assembler = super::super::chunks::SnapshotAssembler::default();
        let mut arrived = None;
        while let Some(next) = queue.pop() {
            if let Frame::SnapshotChunk(chunk) = Frame::decode(&next).expect("decodes") {
                arrived = assembler.accept(1, chunk).expect("in order").or(arrived);
            }
        }
        assert_eq!(arrived.expect("complete").image, image);
        assert_eq!(queue.queued_bytes(), 0);
    }

    #[test]
    fn clearing_reports_drops_per_region() {
        let queue = LinkQueue::new(budget(8 << 20, 64 << 20));
        queue.push_frame("a", frame("a", 10)).expect("fits");
        queue.push_frame("a", frame("a", 10)).expect("fits");
        queue.push_frame("b", frame("b", 10)).expect("fits");
        let mut dropped = queue.clear();
        dropped.sort_by(|x, y| x.region.cmp(&y.region));
        assert_eq!(dropped[0].frames, 2);
        assert_eq!(dropped[1].frames, 1);
        assert_eq!(queue.queued_bytes(), 0);
        assert_eq!(queue.pop(), None);
    }
}
