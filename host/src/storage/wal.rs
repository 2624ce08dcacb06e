//! Segmented write-ahead log. A frame is `[len u32 LE][crc32 u32 LE][payload]`
//! where the payload is a postcard list of opaque entries, so one frame (and
//! one fsync) carries a whole group commit.
//!
//! Recovery is strict: only a damaged *tail* of the *last* segment is treated
//! as a torn write and cut off; any other damage is reported as
//! [`WalError::Corrupt`], because silently skipping a frame would drop
//! acknowledged consensus state.

use std::sync::Arc;

use serde_bytes::{ByteBuf, Bytes};
use thiserror::Error;
use tracing::{info, warn};

use super::disk::Disk;

/// Largest payload a frame may claim; anything larger is damage.
pub const FRAME_BYTES_MAX: usize = 256 << 20;
/// Frame header: payload length and payload crc32.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Single entry of the first frame of a checkpoint segment. Entries before the
/// last marker are superseded; user entries may not equal it.
pub const CHECKPOINT_MARKER: &[u8] = b"\0SYNOD-CHECKPOINT";
/// Payload size at which a checkpoint is split into further frames.
const CHECKPOINT_FRAME_BYTES: usize = 8 << 20;

#[derive(Debug, Error)]
pub enum WalError {
    #[error("wal i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("wal corrupt in {segment} at offset {offset}: {reason}")]
    Corrupt {
        segment: String,
        offset: u64,
        reason: String,
    },
    #[error("frame payload of {0} bytes exceeds {FRAME_BYTES_MAX}")]
    FrameTooLarge(usize),
    #[error("entry equals the reserved checkpoint marker")]
    ReservedEntry,
    #[error("frame encoding failed: {0}")]
    Encode(String),
    /// A previous write or fsync failed; the on-disk state is unknown until
    /// reopened (retrying an fsync can falsely report success).
    #[error("wal unusable after an earlier i/o failure")]
    Poisoned,
}

#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Rotate to a new segment once the current one reaches this size.
    pub segment_bytes_target: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_target: 64 << 20,
        }
    }
}

/// What `Wal::open` recovered.
#[derive(Debug, Default)]
pub struct Replay {
    /// Entries after the last checkpoint marker, in log order.
    pub entries: Vec<Vec<u8>>,
    /// Frames that contributed to `entries` (marker frame excluded).
    pub frames: u64,
    /// Bytes cut from the last segment as a torn write.
    pub torn_tail_bytes: u64,
    /// Live segments after recovery.
    pub segments: usize,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    seq: u64,
    len: u64,
}

pub struct Wal {
    disk: Arc<dyn Disk>,
    dir: String,
    options: WalOptions,
    /// Ascending by seq; the last one is appended to.
    segments: Vec<Segment>,
    /// The current segment has appended bytes not yet synced.
    dirty: bool,
    poisoned: bool,
}

/// Checks an entry can be logged: not the marker, fits in a frame.
pub fn check_entry(entry: &[u8]) -> Result<(), WalError> {
    if entry == CHECKPOINT_MARKER {
        return Err(WalError::ReservedEntry);
    }
    // Leave room for the entry's and the list's varint prefixes.
    if entry.len() > FRAME_BYTES_MAX - 16 {
        return Err(WalError::FrameTooLarge(entry.len()));
    }
    Ok(())
}

fn encode_frame(entries: &[Vec<u8>]) -> Result<Vec<u8>, WalError> {
    let refs: Vec<&Bytes> = entries.iter().map(|e| Bytes::new(e)).collect();
    let payload = postcard::to_stdvec(&refs).map_err(|e| WalError::Encode(e.to_string()))?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l as usize <= FRAME_BYTES_MAX)
        .ok_or(WalError::FrameTooLarge(payload.len()))?;
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

fn decode_payload(payload: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let (list, rest) =
        postcard::take_from_bytes::<Vec<ByteBuf>>(payload).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes in payload", rest.len()));
    }
    Ok(list.into_iter().map(ByteBuf::into_vec).collect())
}

struct Parsed {
    frames: Vec<Vec<Vec<u8>>>,
    /// Offset of a torn tail to cut, if any.
    torn_at: Option<usize>,
}

/// Splits a segment into frames, applying the torn-tail rule if `is_last`.
fn parse_segment(name: &str, data: &[u8], is_last: bool) -> Result<Parsed, WalError> {
    let all_zero = |b: &[u8]| b.iter().all(|&x| x == 0);
    let corrupt = |offset: usize, reason: String| WalError::Corrupt {
        segment: name.to_string(),
        offset: offset as u64,
        reason,
    };
    let mut frames = Vec::new();
    let mut pos = 0;
    'frames: while pos < data.len() {
        let rest = &data[pos..];
        // (reason, whether the damage reaches EOF like a torn write would)
        let (reason, tail_like) = 'check: {
            let Some((len, crc)) = rest.get(..FRAME_HEADER_BYTES).map(|h| {
                let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
                (word(0) as usize, word(4))
            }) else {
                break 'check ("incomplete frame header", true);
            };
            if len == 0 {
                break 'check ("zero-length frame", all_zero(rest));
            }
            let end = FRAME_HEADER_BYTES + len;
            let Some(payload) = rest.get(FRAME_HEADER_BYTES..end) else {
                break 'check ("frame runs past end of segment", true);
            };
            if len > FRAME_BYTES_MAX {
                break 'check ("frame length exceeds maximum", false);
            }
            if crc32fast::hash(payload) != crc {
                break 'check ("crc mismatch", all_zero(&rest[end..]));
            }
            let entries = decode_payload(payload)
                .map_err(|e| corrupt(pos, format!("undecodable frame: {e}")))?;
            frames.push(entries);
            pos += end;
            continue 'frames;
        };
        if is_last && tail_like {
            return Ok(Parsed {
                frames,
                torn_at: Some(pos),
            });
        }
        return Err(corrupt(pos, reason.to_string()));
    }
    Ok(Parsed {
        frames,
        torn_at: None,
    })
}

fn parse_seq(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Groups entries into runs of at most ~`cap` bytes (at least one entry each).
fn chunk_entries(entries: &[Vec<u8>], cap: usize) -> Vec<&[Vec<u8>]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in entries.iter().enumerate() {
        if i > start && bytes + e.len() > cap {
            chunks.push(&entries[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += e.len();
    }
    if start < entries.len() {
        chunks.push(&entries[start..]);
    }
    chunks
}

impl Wal {
    /// Recovers the log in `dir`: cuts a torn tail, drops segments superseded
    /// by the last checkpoint, and returns the live entries.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: impl Into<String>,
        options: WalOptions,
    ) -> Result<(Wal, Replay), WalError> {
        let dir = dir.into();
        let mut seqs = Vec::new();
        for name in disk.list(&dir)? {
            if let Some(seq) = parse_seq(&name) {
                seqs.push(seq);
            } else if name.ends_with(".seg.tmp") {
                // A checkpoint interrupted before its rename; never live.
                disk.remove(&join(&dir, &name))?;
            }
        }
        seqs.sort_unstable();

        let mut replay = Replay::default();
        let mut segments = Vec::with_capacity(seqs.len());
        let mut checkpoint_idx = None;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = seg_path(&dir, seq);
            let data = disk.read(&path)?;
            let parsed = parse_segment(&path, &data, i + 1 == seqs.len())?;
            let mut len = data.len() as u64;
            if let Some(at) = parsed.torn_at {
                let cut = len - at as u64;
                warn!(segment = %path, offset = at, bytes = cut, "wal: truncating torn tail");
                disk.truncate(&path, at as u64)?;
                replay.torn_tail_bytes += cut;
                len = at as u64;
            }
            for (k, frame) in parsed.frames.into_iter().enumerate() {
                if k == 0 && frame.len() == 1 && frame[0] == CHECKPOINT_MARKER {
                    replay.entries.clear();
                    replay.frames = 0;
                    checkpoint_idx = Some(i);
                    continue;
                }
                replay.frames += 1;
                replay.entries.extend(frame);
            }
            segments.push(Segment { seq, len });
        }
        if let Some(idx) = checkpoint_idx.filter(|&i| i > 0) {
            // A crash hit after the checkpoint was durable but before cleanup.
            for s in segments.drain(..idx) {
                disk.remove(&seg_path(&dir, s.seq))?;
            }
            info!(
                removed = idx,
                "wal: removed segments superseded by checkpoint"
            );
        }
        replay.segments = segments.len();
        let wal = Wal {
            disk,
            dir,
            options,
            segments,
            dirty: false,
            poisoned: false,
        };
        Ok((wal, replay))
    }

    /// Writes one frame holding all `entries` (not synced). Returns bytes written.
    pub fn append(&mut self, entries: &[Vec<u8>]) -> Result<u64, WalError> {
        if entries.is_empty() {
            return Ok(0);
        }
        entries.iter().try_for_each(|e| check_entry(e))?;
        let frame = encode_frame(entries)?;
        self.guard()?;
        self.rotate_if_full()?;
        let seg = self.current();
        let res = self.disk.append(&seg_path(&self.dir, seg.seq), &frame);
        self.poison_on_err(res)?;
        if let Some(s) = self.segments.last_mut() {
            s.len += frame.len() as u64;
        }
        self.dirty = true;
        Ok(frame.len() as u64)
    }

    /// Makes every appended frame durable.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.guard()?;
        if self.dirty {
            let path = seg_path(&self.dir, self.current().seq);
            let res = self.disk.sync(&path);
            self.poison_on_err(res)?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Replaces the whole log with `entries` (the owner's live state) and
    /// reclaims space.
    ///
    /// Crash safety: the checkpoint segment (marker frame first, then the
    /// entries) is written with `write_atomic`, so it appears complete or not
    /// at all; a partially written checkpoint can never hide older segments.
    /// If we crash after it is durable but before old segments are removed,
    /// `open` discards everything before the last marker and removes them.
    pub fn checkpoint(&mut self, entries: &[Vec<u8>]) -> Result<(), WalError> {
        entries.iter().try_for_each(|e| check_entry(e))?;
        let mut image = encode_frame(&[CHECKPOINT_MARKER.to_vec()])?;
        for chunk in chunk_entries(entries, CHECKPOINT_FRAME_BYTES) {
            image.extend_from_slice(&encode_frame(chunk)?);
        }
        // Old segments must be intact (not torn) in case we crash before the rename.
        self.sync()?;
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let path = seg_path(&self.dir, seq);
        let res = self.disk.write_atomic(&path, &image);
        self.poison_on_err(res)?;
        let old = std::mem::replace(
            &mut self.segments,
            vec![Segment {
                seq,
                len: image.len() as u64,
            }],
        );
        // The checkpoint is durable, so the old segments are dead; deleting
        // them may finish later (`open` removes any a crash left behind).
        for s in &old {
            self.disk.remove_superseded(&seg_path(&self.dir, s.seq))?;
        }
        info!(segment = %path, entries = entries.len(), removed = old.len(), "wal: checkpoint");
        Ok(())
    }

    /// Bytes in all live segments.
    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn guard(&self) -> Result<(), WalError> {
        if self.poisoned {
            Err(WalError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn poison_on_err<T>(&mut self, res: std::io::Result<T>) -> Result<T, WalError> {
        if res.is_err() {
            self.poisoned = true;
        }
        Ok(res?)
    }

    fn current(&self) -> Segment {
        self.segments
            .last()
            .copied()
            .unwrap_or(Segment { seq: 1, len: 0 })
    }

    /// Starts a new segment when the current one is full, syncing the old one
    /// first so that only the last segment can ever hold a torn write.
    fn rotate_if_full(&mut self) -> Result<(), WalError> {
        match self.segments.last() {
            None => self.segments.push(Segment { seq: 1, len: 0 }),
            Some(s) if s.len >= self.options.segment_bytes_target => {
                let seq = s.seq + 1;
                self.sync()?;
                self.segments.push(Segment { seq, len: 0 });
            }
            Some(_) => {}
        }
        Ok(())
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn seg_path(dir: &str, seq: u64) -> String {
    join(dir, &format!("{seq:020}.seg"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::disk::{FsDisk, MemDisk};

    fn e(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn open(disk: &MemDisk, target: u64) -> Result<(Wal, Replay), WalError> {
        let opts = WalOptions {
            segment_bytes_target: target,
        };
        Wal::open(Arc::new(disk.clone()), "wal", opts)
    }

    fn strs(r: &Replay) -> Vec<String> {
        r.entries
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn round_trip_across_reopen() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let (mut wal, replay) = open(&disk, 1 << 20)?;
        assert!(replay.entries.is_empty());
        wal.append(&[e("a"), e("b")])?;
        wal.append(&[e("c")])?;
        wal.append(&[])?;
        wal.sync()?;
        drop(wal);
        let (mut wal, replay) = open(&disk, 1 << 20)?;
        assert_eq!(strs(&replay), ["a", "b", "c"]);
        assert_eq!((replay.frames, replay.segments), (2, 1));
        wal.append(&[e("")])?;
        wal.sync()?;
        let (_, replay) = open(&disk, 1 << 20)?;
        assert_eq!(strs(&replay), ["a", "b", "c", ""]);
        assert!(matches!(
            wal.append(&[CHECKPOINT_MARKER.to_vec()]),
            Err(WalError::ReservedEntry)
        ));
        Ok(())
    }

    #[test]
    fn rotates_between_frames() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let (mut wal, _) = open(&disk, 100)?;
        for i in 0..20 {
            wal.append(&[vec![i; 30]])?;
        }
        // Rotation synced the older segments; only the current tail is lost.
        disk.crash();
        let (wal2, replay) = open(&disk, 100)?;
        assert!(wal.segment_count() > 3);
        assert_eq!(wal2.segment_count(), wal.segment_count());
        assert_eq!(replay.entries.len(), 18); // 3 frames per segment
        for (i, ent) in replay.entries.iter().enumerate() {
            assert_eq!(ent, &vec![i as u8; 30]);
        }
        assert_eq!(disk.list("wal")?[0], "00000000000000000001.seg");
        Ok(())
    }

    #[test]
    fn crash_drops_only_unsynced() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let (mut wal, _) = open(&disk, 1 << 20)?;
        wal.append(&[e("kept")])?;
        wal.sync()?;
        wal.append(&[e("lost")])?;
        disk.crash();
        let (_, replay) = open(&disk, 1 << 20)?;
        assert_eq!(strs(&replay), ["kept"]);
        assert_eq!(replay.torn_tail_bytes, 0);
        Ok(())
    }

    #[test]
    fn torn_tail_is_truncated_and_log_stays_appendable() -> Result<(), WalError> {
        let frame_len = encode_frame(&[e("second-entry")])?.len();
        for keep in [1, 4, 7, 8, 9, frame_len - 1] {
            let disk = MemDisk::new();
            let (mut wal, _) = open(&disk, 1 << 20)?;
            wal.append(&[e("first")])?;
            wal.sync()?;
            wal.append(&[e("second-entry")])?;
            disk.crash_with_torn_tail(keep);
            let (mut wal, replay) = open(&disk, 1 << 20)?;
            assert_eq!(strs(&replay), ["first"], "keep={keep}");
            assert_eq!(replay.torn_tail_bytes, keep as u64);
            wal.append(&[e("third")])?;
            wal.sync()?;
            let (_, replay) = open(&disk, 1 << 20)?;
            assert_eq!(strs(&replay), ["first", "third"], "keep={keep}");
            assert_eq!(replay.torn_tail_bytes, 0);
        }
        Ok(())
    }

    #[test]
    fn zero_fill_and_bad_crc_at_tail_are_torn() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let (mut wal, _) = open(&disk, 1 << 20)?;
        wal.append(&[e("one")])?;
        wal.append(&[e("two")])?;
        wal.sync()?;
        let path = "wal/00000000000000000001.seg";
        let len = disk.read(path)?.len() as u64;
        disk.append(path, &[0; 32])?;
        disk.corrupt(path, len - 1, 0xff)?; // last byte of the last frame
        let (_, replay) = open(&disk, 1 << 20)?;
        assert_eq!(strs(&replay), ["one"]);
        assert!(replay.torn_tail_bytes > 32);
        Ok(())
    }

    #[test]
    fn corrupt_middle_frame_is_an_error() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let (mut wal, _) = open(&disk, 1 << 20)?;
        let first = wal.append(&[e("one")])?;
        wal.append(&[e("two")])?;
        wal.append(&[e("three")])?;
        wal.sync()?;
        disk.corrupt("wal/00000000000000000001.seg", first + 9, 0x01)?;
        match open(&disk, 1 << 20) {
            Err(WalError::Corrupt {
                segment, offset, ..
            }) => {
                assert_eq!(segment, "wal/00000000000000000001.seg");
                assert_eq!(offset, first);
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r)),
        }
        Ok(())
    }

    #[test]
    fn undecodable_crc_valid_frame_is_an_error() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let (mut wal, _) = open(&disk, 1 << 20)?;
        wal.append(&[e("one")])?;
        wal.sync()?;
        // Claims 5 entries but holds none: crc is fine, postcard is not.
        let payload = [5u8];
        let mut frame = 1u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        disk.append("wal/00000000000000000001.seg", &frame)?;
        assert!(matches!(
            open(&disk, 1 << 20),
            Err(WalError::Corrupt { offset: 13, .. })
        ));
        Ok(())
    }

    #[test]
    fn corrupt_non_last_segment_is_an_error() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let (mut wal, _) = open(&disk, 10)?;
        wal.append(&[e("segment-one")])?;
        wal.append(&[e("segment-two")])?;
        wal.sync()?;
        assert_eq!(wal.segment_count(), 2);
        // Damage the very end of segment 1: in the last segment this would be torn.
        let path = "wal/00000000000000000001.seg";
        let len = disk.read(path)?.len() as u64;
        disk.corrupt(path, len - 1, 0x80)?;
        match open(&disk, 10) {
            Err(WalError::Corrupt { segment, .. }) => assert_eq!(segment, path),
            other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r)),
        }
        disk.truncate(path, len - 3)?;
        assert!(matches!(open(&disk, 10), Err(WalError::Corrupt { .. })));
        Ok(())
    }

    #[test]
    fn checkpoint_replaces_log_and_survives_interrupted_cleanup() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let (mut wal, _) = open(&disk, 50)?;
        for i in 0..6 {
            wal.append(&[format!("old-{i}").into_bytes()])?;
        }
        wal.sync()?;
        let old: Vec<(String, Vec<u8>)> = disk
            .list("wal")?
            .into_iter()
            .map(|n| {
                let p = format!("wal/{n}");
                disk.read(&p).map(|d| (p, d))
            })
            .collect::<Result<_, _>>()?;
        assert!(old.len() > 1);
        wal.checkpoint(&[e("state-a"), e("state-b")])?;
        assert_eq!(wal.segment_count(), 1);
        wal.append(&[e("after")])?;
        wal.sync()?;
        // Simulate a crash before the old segments were removed.
        for (p, d) in &old {
            disk.write_atomic(p, d)?;
        }
        disk.append("wal/00000000000000000099.seg.tmp", b"junk")?;
        let (wal, replay) = open(&disk, 50)?;
        assert_eq!(strs(&replay), ["state-a", "state-b", "after"]);
        assert_eq!(replay.segments, wal.segment_count());
        assert_eq!(disk.list("wal")?.len(), wal.segment_count());
        // Checkpoint frames are split when large.
        let big: Vec<Vec<u8>> = (0..3).map(|i| vec![i; 5 << 20]).collect();
        let (mut wal, _) = open(&disk, 50)?;
        wal.checkpoint(&big)?;
        let (_, replay) = open(&disk, 50)?;
        assert_eq!(replay.entries, big);
        assert_eq!(replay.frames, 3);
        Ok(())
    }

    #[test]
    fn fsdisk_smoke() -> Result<(), WalError> {
        let tmp = tempfile::tempdir()?;
        let disk: Arc<dyn Disk> = Arc::new(FsDisk::new(tmp.path().to_path_buf()));
        let opts = WalOptions {
            segment_bytes_target: 64,
        };
        let (mut wal, _) = Wal::open(disk.clone(), "wal", opts.clone())?;
        for i in 0..10u8 {
            wal.append(&[vec![i; 40]])?;
        }
        wal.sync()?;
        wal.checkpoint(&[e("cp")])?;
        wal.append(&[e("x")])?;
        wal.sync()?;
        let total = wal.total_bytes();
        drop(wal);
        let (wal, replay) = Wal::open(disk, "wal", opts)?;
        assert_eq!(strs(&replay), ["cp", "x"]);
        assert_eq!(wal.total_bytes(), total);
        Ok(())
    }
}
