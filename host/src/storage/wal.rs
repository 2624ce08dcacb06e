//! Segmented write-ahead log, format v2.
//!
//! A segment starts with a 24-byte header
//! `[magic "SYNODWAL"][version u32 = 2][first frame seq u64][crc32 u32]`,
//! then frames:
//!
//! ```text
//! [header crc u32][len u32][seq u64][payload crc u32][payload: len bytes]
//! ```
//!
//! The header crc covers `len`, `seq` and the payload crc, so a damaged
//! length is detected before it is trusted. `seq` numbers frames 1, 2, ...
//! across segments and checkpoints. The payload is a postcard list of opaque
//! entries, whitened with a keystream seeded by `seq`, so a frame never holds
//! a long run of zero bytes by chance: zeros then mean "never written".
//!
//! **Torn tail versus corruption.** Recovery treats damage as a torn write,
//! and cuts it, only if all of these hold (see docs/ARCHITECTURE.md):
//! it is in the last segment; no valid frame header with a following seq
//! lies anywhere after it; and the damaged frame is incomplete (its header,
//! or the payload its valid header claims, runs past the end of the file),
//! or a 512-byte sector of it holds at least 16 bytes that are all zero up
//! to the sector's end or the file's end (space never written). Everything
//! else is [`WalError::Corrupt`], and the node refuses to start.

use std::sync::Arc;

use serde_bytes::{ByteBuf, Bytes};
use thiserror::Error;
use tracing::{info, warn};

use super::disk::Disk;

/// Largest payload a frame may hold; also the default write limit.
pub const FRAME_BYTES_MAX: usize = 256 << 20;
/// Frame header: header crc, payload length, sequence number, payload crc.
pub const FRAME_HEADER_BYTES: usize = 20;
/// Segment header: magic, format version, first frame seq, crc.
pub const SEGMENT_HEADER_BYTES: usize = 24;
/// Identifies a v2 segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"SYNODWAL";
/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 2;
/// Single entry of the first frame of a checkpoint segment. Entries before the
/// last marker are superseded; user entries may not equal it.
pub const CHECKPOINT_MARKER: &[u8] = b"\0SYNOD-CHECKPOINT";
/// Payload size at which a checkpoint is split into further frames.
const CHECKPOINT_FRAME_BYTES: usize = 8 << 20;
/// Sector size assumed for never-written space.
const SECTOR_BYTES: usize = 512;
/// Shortest all-zero piece of a sector taken as never written (a frame
/// header can legitimately hold a few zero bytes).
const ZERO_PIECE_MIN: usize = 16;
/// Varint prefix bound per entry and per list in a frame payload.
pub const VARINT_MAX: usize = 5;
/// Seeds the header crc, so an all-zero header never checks out.
const HEADER_CRC_SEED: u32 = 0x5359_4e44;

#[derive(Debug, Error)]
pub enum WalError {
    #[error("wal i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "wal corrupt in {segment} at offset {offset}: {reason}. The node refuses to start: \
         run `synod repair --data-dir <data dir>` to see what is damaged and what a cut would lose"
    )]
    Corrupt {
        segment: String,
        offset: u64,
        reason: String,
    },
    #[error(
        "{segment} is not a WAL segment of format v{FORMAT_VERSION}: {found}. This build reads \
         only format v{FORMAT_VERSION}; it does not convert older segments"
    )]
    UnsupportedFormat { segment: String, found: String },
    #[error("frame payload of {size} bytes exceeds the frame limit of {limit} bytes")]
    FrameTooLarge { size: usize, limit: usize },
    #[error("entry equals the reserved checkpoint marker")]
    ReservedEntry,
    #[error("frame encoding failed: {0}")]
    Encode(String),
    /// A previous write or fsync failed; the on-disk state is unknown until
    /// reopened (retrying an fsync can falsely report success).
    #[error("wal unusable after an earlier i/o failure")]
    Poisoned,
}

impl WalError {
    /// Whether the error came before any byte was written (the WAL is fine).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            WalError::FrameTooLarge { .. } | WalError::ReservedEntry | WalError::Encode(_)
        )
    }
}

#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Rotate to a new segment once the current one reaches this size.
    pub segment_bytes_target: u64,
    /// Largest frame payload written (capped at [`FRAME_BYTES_MAX`]).
    pub frame_bytes_max: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_target: 64 << 20,
            frame_bytes_max: FRAME_BYTES_MAX,
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
    /// Sequence number of the last frame recovered (0 if none).
    pub last_seq: u64,
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
    /// Sequence number the next frame gets.
    next_seq: u64,
    /// The current segment has appended bytes not yet synced.
    dirty: bool,
    poisoned: bool,
}

/// Largest entry a frame of `frame_bytes_max` can carry alone.
pub fn entry_bytes_max(frame_bytes_max: usize) -> usize {
    frame_bytes_max
        .min(FRAME_BYTES_MAX)
        .saturating_sub(2 * VARINT_MAX)
}

/// Checks an entry can be logged: not the marker, fits in a frame.
pub fn check_entry(entry: &[u8], frame_bytes_max: usize) -> Result<(), WalError> {
    if entry == CHECKPOINT_MARKER {
        return Err(WalError::ReservedEntry);
    }
    if entry.len() > entry_bytes_max(frame_bytes_max) {
        return Err(WalError::FrameTooLarge {
            size: entry.len(),
            limit: frame_bytes_max.min(FRAME_BYTES_MAX),
        });
    }
    Ok(())
}

/// Encoded payload bytes of a frame holding `entries`, at most.
pub fn payload_bound<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> usize {
    VARINT_MAX
        + entries
            .into_iter()
            .map(|e| e.len() + VARINT_MAX)
            .sum::<usize>()
}

/// XORs `data` with a keystream seeded by `seq` (its own inverse).
fn whiten(data: &mut [u8], seq: u64) {
    let mut state = seq ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]) ^ next();
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let key = next().to_le_bytes();
    for (b, k) in rest.iter_mut().zip(key) {
        *b ^= k;
    }
}

fn header_crc(fields: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(HEADER_CRC_SEED);
    hasher.update(fields);
    hasher.finalize()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

fn encode_segment_header(first_seq: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(SEGMENT_HEADER_BYTES);
    h.extend_from_slice(SEGMENT_MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&first_seq.to_le_bytes());
    let crc = header_crc(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

fn encode_frame(
    entries: &[Vec<u8>],
    seq: u64,
    frame_bytes_max: usize,
) -> Result<Vec<u8>, WalError> {
    let refs: Vec<&Bytes> = entries.iter().map(|e| Bytes::new(e)).collect();
    let mut payload = postcard::to_stdvec(&refs).map_err(|e| WalError::Encode(e.to_string()))?;
    let limit = frame_bytes_max.min(FRAME_BYTES_MAX);
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l as usize <= limit)
        .ok_or(WalError::FrameTooLarge {
            size: payload.len(),
            limit,
        })?;
    whiten(&mut payload, seq);
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    let crc = header_crc(&frame[4..FRAME_HEADER_BYTES]);
    frame[..4].copy_from_slice(&crc.to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

fn decode_payload(stored: &[u8], seq: u64) -> Result<Vec<Vec<u8>>, String> {
    let mut payload = stored.to_vec();
    whiten(&mut payload, seq);
    let (list, rest) =
        postcard::take_from_bytes::<Vec<ByteBuf>>(&payload).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes in payload", rest.len()));
    }
    Ok(list.into_iter().map(ByteBuf::into_vec).collect())
}

/// One intact frame of a segment.
#[derive(Debug, Clone)]
pub struct FrameAt {
    pub offset: u64,
    pub seq: u64,
    pub entries: Vec<Vec<u8>>,
}

/// The first damage found in a segment.
#[derive(Debug, Clone)]
struct DamageAt {
    offset: usize,
    reason: String,
    /// Looks like a write that never completed (before the "valid frame
    /// after it" check, which only the caller can make).
    torn_like: bool,
}

/// A segment parsed up to its end or its first damage.
#[derive(Debug)]
struct SegScan {
    /// Seq of the segment's first frame (from its header).
    first_seq: u64,
    frames: Vec<FrameAt>,
    damage: Option<DamageAt>,
}

impl SegScan {
    /// Seq the frame after the last intact one would carry.
    fn next_seq(&self) -> u64 {
        self.frames.last().map_or(self.first_seq, |f| f.seq + 1)
    }

    fn is_checkpoint(&self) -> bool {
        self.frames.first().is_some_and(|f| {
            f.offset == SEGMENT_HEADER_BYTES as u64
                && f.entries.len() == 1
                && f.entries[0] == CHECKPOINT_MARKER
        })
    }
}

/// A valid frame header at `at` with `min_seq <= seq < min_seq + 2^32`:
/// its (seq, payload length).
fn header_at(data: &[u8], at: usize, min_seq: u64) -> Option<(u64, usize)> {
    let h = data.get(at..at.checked_add(FRAME_HEADER_BYTES)?)?;
    let seq = u64_at(h, 8);
    if seq < min_seq || seq - min_seq > u64::from(u32::MAX) {
        return None;
    }
    let len = u32_at(h, 4) as usize;
    if len > FRAME_BYTES_MAX || header_crc(&h[4..]) != u32_at(h, 0) {
        return None;
    }
    Some((seq, len))
}

/// Whether a 512-byte sector overlapping `[from, to)` holds at least
/// [`ZERO_PIECE_MIN`] bytes at or after `from` that are all zero up to the
/// sector's end or the end of the file: space that was never written.
fn never_written(data: &[u8], from: usize, to: usize) -> bool {
    let to = to.min(data.len());
    let mut sector = from / SECTOR_BYTES;
    while sector * SECTOR_BYTES < to {
        let start = (sector * SECTOR_BYTES).max(from);
        let end = ((sector + 1) * SECTOR_BYTES).min(data.len());
        let piece = &data[start..end];
        if piece.len() >= ZERO_PIECE_MIN && piece.iter().all(|&b| b == 0) {
            return true;
        }
        sector += 1;
    }
    false
}

/// The first valid frame header after `from` (see [`header_at`]).
fn valid_header_after(data: &[u8], from: usize, min_seq: u64) -> Option<(usize, u64)> {
    let last = data.len().checked_sub(FRAME_HEADER_BYTES)?;
    (from..=last).find_map(|q| header_at(data, q, min_seq).map(|(seq, _)| (q, seq)))
}

/// A complete, checksum-valid, decodable frame at `at`.
fn frame_at(data: &[u8], at: usize, min_seq: u64) -> Option<(FrameAt, usize)> {
    let (seq, len) = header_at(data, at, min_seq)?;
    let start = at + FRAME_HEADER_BYTES;
    let stored = data.get(start..start.checked_add(len)?)?;
    if crc32fast::hash(stored) != u32_at(data, at + 16) {
        return None;
    }
    let entries = decode_payload(stored, seq).ok()?;
    let frame = FrameAt {
        offset: at as u64,
        seq,
        entries,
    };
    Some((frame, start + len))
}

/// Every intact frame from `from` on, resynchronising past damage: what a
/// cut at a damage point would lose.
fn salvage(data: &[u8], from: usize, mut min_seq: u64) -> Vec<FrameAt> {
    let mut found = Vec::new();
    let mut pos = from;
    while pos + FRAME_HEADER_BYTES <= data.len() {
        match frame_at(data, pos, min_seq) {
            Some((frame, end)) => {
                min_seq = frame.seq + 1;
                found.push(frame);
                pos = end;
            }
            None => pos += 1,
        }
    }
    found
}

/// Whether `data` starts with a frame of the v1 format (`[len][crc32]`,
/// no segment header).
fn looks_like_v1(data: &[u8]) -> bool {
    if data.len() < 8 {
        return false;
    }
    let len = u32_at(data, 0) as usize;
    len > 0
        && len <= FRAME_BYTES_MAX
        && data
            .get(8..8 + len)
            .is_some_and(|p| crc32fast::hash(p) == u32_at(data, 4))
}

/// Parses a segment up to its first damage. `expected` is the seq the
/// previous segment's successor must start at (`None` for the first).
fn scan_segment(name: &str, data: &[u8], expected: Option<u64>) -> Result<SegScan, WalError> {
    let mut scan = SegScan {
        first_seq: expected.unwrap_or(1),
        frames: Vec::new(),
        damage: None,
    };
    let damage = |offset: usize, reason: String, torn_like: bool| {
        Some(DamageAt {
            offset,
            reason,
            torn_like,
        })
    };
    if !data.starts_with(SEGMENT_MAGIC) && looks_like_v1(data) {
        return Err(WalError::UnsupportedFormat {
            segment: name.to_string(),
            found: "it starts with a format v1 frame (no segment header), written by an \
                    older Synod"
                .into(),
        });
    }
    if data.len() < SEGMENT_HEADER_BYTES {
        // Torn only if what is there is the start of a header (or zeros).
        let magic = &data[..data.len().min(8)];
        let torn = SEGMENT_MAGIC.starts_with(magic) || data.iter().all(|&b| b == 0);
        let reason = format!("incomplete segment header ({} bytes)", data.len());
        scan.damage = damage(0, reason, torn);
        return Ok(scan);
    }
    let header = &data[..SEGMENT_HEADER_BYTES];
    if &header[..8] != SEGMENT_MAGIC {
        let zero = data.iter().all(|&b| b == 0) || never_written(data, 0, SEGMENT_HEADER_BYTES);
        scan.damage = damage(0, "bad segment magic".into(), zero);
        return Ok(scan);
    }
    if header_crc(&header[..20]) != u32_at(header, 20) {
        scan.damage = damage(0, "segment header checksum mismatch".into(), false);
        return Ok(scan);
    }
    let version = u32_at(header, 8);
    if version != FORMAT_VERSION {
        return Err(WalError::UnsupportedFormat {
            segment: name.to_string(),
            found: format!("its header says format v{version}"),
        });
    }
    let first_seq = u64_at(header, 12);
    if let Some(expected) = expected
        && first_seq != expected
    {
        let reason = format!(
            "segment starts at frame seq {first_seq}, but the previous segment ends before seq {expected}"
        );
        scan.damage = damage(0, reason, false);
        return Ok(scan);
    }
    scan.first_seq = first_seq;
    let mut expected = first_seq;
    let mut pos = SEGMENT_HEADER_BYTES;
    while pos < data.len() {
        if data.len() - pos < FRAME_HEADER_BYTES {
            scan.damage = damage(pos, "incomplete frame header".into(), true);
            break;
        }
        let h = &data[pos..pos + FRAME_HEADER_BYTES];
        if header_crc(&h[4..]) != u32_at(h, 0) {
            let zero = data[pos..].iter().all(|&b| b == 0)
                || never_written(data, pos, pos + FRAME_HEADER_BYTES);
            scan.damage = damage(pos, "frame header checksum mismatch".into(), zero);
            break;
        }
        let len = u32_at(h, 4) as usize;
        let seq = u64_at(h, 8);
        if len > FRAME_BYTES_MAX {
            let reason = format!("frame claims {len} bytes, over the {FRAME_BYTES_MAX} limit");
            scan.damage = damage(pos, reason, false);
            break;
        }
        if seq != expected {
            let reason = format!("frame seq {seq} where seq {expected} was expected");
            scan.damage = damage(pos, reason, false);
            break;
        }
        let end = pos + FRAME_HEADER_BYTES + len;
        let Some(stored) = data.get(pos + FRAME_HEADER_BYTES..end) else {
            let reason = format!("frame of {len} bytes runs past the end of the segment");
            scan.damage = damage(pos, reason, true);
            break;
        };
        if crc32fast::hash(stored) != u32_at(h, 16) {
            let zero = never_written(data, pos + FRAME_HEADER_BYTES, end);
            scan.damage = damage(pos, "payload checksum mismatch".into(), zero);
            break;
        }
        match decode_payload(stored, seq) {
            Ok(entries) => scan.frames.push(FrameAt {
                offset: pos as u64,
                seq,
                entries,
            }),
            Err(e) => {
                scan.damage = damage(pos, format!("undecodable frame: {e}"), false);
                break;
            }
        }
        expected += 1;
        pos = end;
    }
    Ok(scan)
}

/// Offsets and payload lengths of the intact frames at the start of one
/// segment's bytes, up to the first damage (for tools and tests).
pub fn frame_layout(data: &[u8]) -> Vec<(u64, usize)> {
    let frames = scan_segment("", data, None).map_or_else(|_| Vec::new(), |s| s.frames);
    frames
        .iter()
        .map(|f| {
            let start = f.offset as usize + 4;
            (
                f.offset,
                data.get(start..start + 4)
                    .map_or(0, |b| u32_at(b, 0) as usize),
            )
        })
        .collect()
}

fn parse_seq(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Groups entries into runs whose frame payload stays within `cap` bytes
/// (an entry larger than that goes alone).
fn chunk_entries(entries: &[Vec<u8>], cap: usize) -> Vec<&[Vec<u8>]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, VARINT_MAX);
    for (i, e) in entries.iter().enumerate() {
        let size = e.len() + VARINT_MAX;
        if i > start && bytes + size > cap {
            chunks.push(&entries[start..i]);
            (start, bytes) = (i, VARINT_MAX);
        }
        bytes += size;
    }
    if start < entries.len() {
        chunks.push(&entries[start..]);
    }
    chunks
}

/// The live segments of a WAL directory, parsed up to the first damage.
struct Analysis {
    /// Segment numbers before the last checkpoint (dead).
    superseded: Vec<u64>,
    /// Live segments in order: number, bytes, parse.
    live: Vec<(u64, Vec<u8>, SegScan)>,
    /// Index into `live` of the segment holding the first damage, and
    /// whether that damage is a torn tail.
    damage: Option<(usize, DamageAt, bool)>,
}

fn analyze(disk: &dyn Disk, dir: &str, remove_tmp: bool) -> Result<Analysis, WalError> {
    let mut seqs = Vec::new();
    for name in disk.list(dir)? {
        if let Some(seq) = parse_seq(&name) {
            seqs.push(seq);
        } else if remove_tmp && name.ends_with(".seg.tmp") {
            // A checkpoint interrupted before its rename; never live.
            disk.remove(&join(dir, &name))?;
        }
    }
    seqs.sort_unstable();
    // Walk back to the last checkpoint: everything before it is dead.
    let mut live = Vec::new();
    let mut superseded = Vec::new();
    let mut found_checkpoint = false;
    for &seq in seqs.iter().rev() {
        if found_checkpoint {
            superseded.push(seq);
            continue;
        }
        let path = seg_path(dir, seq);
        let data = disk.read(&path)?;
        let is_checkpoint = scan_segment(&path, data.get(..peek_len(&data)).unwrap_or(&data), None)
            .map(|s| s.is_checkpoint())
            .unwrap_or(false);
        live.push((seq, data));
        found_checkpoint = is_checkpoint;
    }
    live.reverse();
    superseded.reverse();

    let mut parsed = Vec::with_capacity(live.len());
    let mut damage = None;
    let count = live.len();
    let mut expected: Option<u64> = None;
    for (i, (seq, data)) in live.into_iter().enumerate() {
        let path = seg_path(dir, seq);
        let scan = scan_segment(&path, &data, expected)?;
        // The oldest live segment must start the log or be a checkpoint.
        // (Without an intact first frame, the damage itself is reported.)
        if i == 0 && !scan.frames.is_empty() && scan.first_seq != 1 && !scan.is_checkpoint() {
            let reason = format!(
                "the oldest segment starts at frame seq {}, not 1, and is not a checkpoint: \
                 earlier segments are missing",
                scan.first_seq
            );
            damage = Some((
                i,
                DamageAt {
                    offset: 0,
                    reason,
                    torn_like: false,
                },
                false,
            ));
        }
        if damage.is_none()
            && let Some(d) = &scan.damage
        {
            let last = i + 1 == count;
            let mut torn = last && d.torn_like;
            let mut d = d.clone();
            if torn
                && let Some((at, seq)) = valid_header_after(&data, d.offset + 1, scan.next_seq())
            {
                torn = false;
                d.reason = format!(
                    "{}; a valid frame (seq {seq}) follows at offset {at}, so this is not a torn write",
                    d.reason
                );
            }
            damage = Some((i, d, torn));
        }
        expected = Some(scan.next_seq());
        parsed.push((seq, data, scan));
    }
    Ok(Analysis {
        superseded,
        live: parsed,
        damage,
    })
}

/// Bytes enough to parse a segment's header and first frame.
fn peek_len(data: &[u8]) -> usize {
    let first = SEGMENT_HEADER_BYTES;
    let len = data
        .get(first..first + FRAME_HEADER_BYTES)
        .map_or(0, |h| u32_at(h, 4) as usize);
    if len > 64 {
        // A marker frame is tiny: a larger first frame is not one.
        first + FRAME_HEADER_BYTES
    } else {
        (first + FRAME_HEADER_BYTES + len).min(data.len())
    }
}

/// What `synod repair` found in a WAL directory.
#[derive(Debug, Default)]
pub struct Diagnosis {
    /// Live segment paths, oldest first.
    pub segments: Vec<String>,
    /// Intact frames before any damage.
    pub frames: u64,
    /// Seq of the last intact frame before any damage (0 if none).
    pub last_good_seq: u64,
    /// Segments before the last checkpoint, removed by the next open.
    pub superseded: Vec<String>,
    pub problem: Option<Problem>,
}

/// The first damage of a WAL and the effect of cutting there.
#[derive(Debug)]
pub struct Problem {
    pub segment: String,
    pub offset: u64,
    pub reason: String,
    /// A torn tail: the node cuts it by itself when it starts.
    pub torn: bool,
    /// Seq the first frame after the cut will carry.
    pub next_seq: u64,
    /// Bytes a cut removes (the damaged segment's tail and later segments).
    pub bytes_cut: u64,
    /// Later segments a cut deletes.
    pub segments_removed: Vec<String>,
    /// Intact frames after the damage point that a cut would lose.
    pub frames_after: Vec<(String, FrameAt)>,
}

/// Reports the first damage of the WAL in `dir` without changing anything.
pub fn diagnose(disk: &dyn Disk, dir: &str) -> Result<Diagnosis, WalError> {
    let analysis = analyze(disk, dir, false)?;
    let mut diagnosis = Diagnosis {
        segments: analysis
            .live
            .iter()
            .map(|(s, _, _)| seg_path(dir, *s))
            .collect(),
        superseded: analysis
            .superseded
            .iter()
            .map(|s| seg_path(dir, *s))
            .collect(),
        ..Diagnosis::default()
    };
    let upto = analysis
        .damage
        .as_ref()
        .map_or(analysis.live.len(), |(i, _, _)| i + 1);
    for (_, _, scan) in &analysis.live[..upto] {
        diagnosis.frames += scan.frames.len() as u64;
        if let Some(f) = scan.frames.last() {
            diagnosis.last_good_seq = f.seq;
        }
    }
    if let Some((index, damage, torn)) = analysis.damage {
        let (seq, data, scan) = &analysis.live[index];
        let next_seq = scan.next_seq();
        let segment = seg_path(dir, *seq);
        let mut bytes_cut = (data.len() - damage.offset) as u64;
        let mut frames_after: Vec<(String, FrameAt)> = salvage(data, damage.offset + 1, next_seq)
            .into_iter()
            .map(|f| (segment.clone(), f))
            .collect();
        let mut segments_removed = Vec::new();
        for (later, data, _) in &analysis.live[index + 1..] {
            let path = seg_path(dir, *later);
            let min_seq = frames_after.last().map_or(next_seq, |(_, f)| f.seq + 1);
            frames_after.extend(
                salvage(data, 0, min_seq)
                    .into_iter()
                    .map(|f| (path.clone(), f)),
            );
            bytes_cut += data.len() as u64;
            segments_removed.push(path);
        }
        diagnosis.problem = Some(Problem {
            segment,
            offset: damage.offset as u64,
            reason: damage.reason,
            torn,
            next_seq,
            bytes_cut,
            segments_removed,
            frames_after,
        });
    }
    Ok(diagnosis)
}

/// Cuts the WAL at `problem` durably: later segments are deleted and the
/// damaged one is truncated at the damage point. Everything after it is lost.
pub fn cut(disk: &dyn Disk, problem: &Problem) -> Result<(), WalError> {
    for path in problem.segments_removed.iter().rev() {
        disk.remove(path)?;
    }
    if problem.offset < SEGMENT_HEADER_BYTES as u64 {
        disk.write_atomic(&problem.segment, &encode_segment_header(problem.next_seq))?;
    } else {
        disk.truncate(&problem.segment, problem.offset)?;
    }
    warn!(
        segment = %problem.segment,
        offset = problem.offset,
        bytes = problem.bytes_cut,
        "wal: cut at damage point on operator request"
    );
    Ok(())
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
        let analysis = analyze(&*disk, &dir, true)?;
        let mut cut_at = None;
        if let Some((index, damage, torn)) = &analysis.damage {
            let segment = seg_path(&dir, analysis.live[*index].0);
            if !torn {
                return Err(WalError::Corrupt {
                    segment,
                    offset: damage.offset as u64,
                    reason: damage.reason.clone(),
                });
            }
            cut_at = Some((*index, damage.offset));
        }
        if !analysis.superseded.is_empty() {
            // A crash hit after the checkpoint was durable but before cleanup.
            for &seq in &analysis.superseded {
                disk.remove(&seg_path(&dir, seq))?;
            }
            info!(
                removed = analysis.superseded.len(),
                "wal: removed segments superseded by checkpoint"
            );
        }
        let mut replay = Replay::default();
        let mut segments = Vec::with_capacity(analysis.live.len());
        let mut next_seq = 1;
        for (i, (seq, data, scan)) in analysis.live.into_iter().enumerate() {
            let mut len = data.len() as u64;
            if let Some((_, at)) = cut_at.filter(|(index, _)| *index == i) {
                let path = seg_path(&dir, seq);
                // A cut inside the segment header leaves an empty segment,
                // whose header the next append writes again.
                let at = if at < SEGMENT_HEADER_BYTES {
                    0
                } else {
                    at as u64
                };
                let cut = len - at;
                warn!(segment = %path, offset = at, bytes = cut, "wal: truncating torn tail");
                disk.truncate(&path, at)?;
                replay.torn_tail_bytes += cut;
                len = at;
            }
            next_seq = scan.next_seq();
            for (k, frame) in scan.frames.into_iter().enumerate() {
                if k == 0 && frame.entries.len() == 1 && frame.entries[0] == CHECKPOINT_MARKER {
                    replay.entries.clear();
                    replay.frames = 0;
                    continue;
                }
                replay.frames += 1;
                replay.entries.extend(frame.entries);
            }
            segments.push(Segment { seq, len });
        }
        replay.segments = segments.len();
        replay.last_seq = next_seq - 1;
        let wal = Wal {
            disk,
            dir,
            options,
            segments,
            next_seq,
            dirty: false,
            poisoned: false,
        };
        Ok((wal, replay))
    }

    /// Largest frame payload this WAL writes.
    pub fn frame_bytes_max(&self) -> usize {
        self.options.frame_bytes_max.min(FRAME_BYTES_MAX)
    }

    /// Writes one frame holding all `entries` (not synced). Returns bytes written.
    pub fn append(&mut self, entries: &[Vec<u8>]) -> Result<u64, WalError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let limit = self.frame_bytes_max();
        entries.iter().try_for_each(|e| check_entry(e, limit))?;
        let frame = encode_frame(entries, self.next_seq, limit)?;
        self.guard()?;
        self.rotate_if_full()?;
        let seg = self.current();
        let bytes = if seg.len == 0 {
            let mut bytes = encode_segment_header(self.next_seq);
            bytes.extend_from_slice(&frame);
            bytes
        } else {
            frame
        };
        let res = self.disk.append(&seg_path(&self.dir, seg.seq), &bytes);
        self.poison_on_err(res)?;
        if let Some(s) = self.segments.last_mut() {
            s.len += bytes.len() as u64;
        }
        self.next_seq += 1;
        self.dirty = true;
        Ok(bytes.len() as u64)
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
    /// reclaims space. Entries are written in frames of bounded size; an
    /// error other than I/O (see [`WalError::is_refusal`]) leaves the WAL
    /// untouched and usable.
    ///
    /// Crash safety: the checkpoint segment (marker frame first, then the
    /// entries) is written with `write_atomic`, so it appears complete or not
    /// at all; a partially written checkpoint can never hide older segments.
    /// If we crash after it is durable but before old segments are removed,
    /// `open` discards everything before the last marker and removes them.
    pub fn checkpoint(&mut self, entries: &[Vec<u8>]) -> Result<(), WalError> {
        let limit = self.frame_bytes_max();
        entries.iter().try_for_each(|e| check_entry(e, limit))?;
        let mut seq = self.next_seq;
        let mut image = encode_segment_header(seq);
        image.extend_from_slice(&encode_frame(&[CHECKPOINT_MARKER.to_vec()], seq, limit)?);
        for chunk in chunk_entries(entries, CHECKPOINT_FRAME_BYTES.min(limit)) {
            seq += 1;
            image.extend_from_slice(&encode_frame(chunk, seq, limit)?);
        }
        // Old segments must be intact (not torn) in case we crash before the rename.
        self.sync()?;
        let file = self.segments.last().map_or(1, |s| s.seq + 1);
        let path = seg_path(&self.dir, file);
        let res = self.disk.write_atomic(&path, &image);
        self.poison_on_err(res)?;
        self.next_seq = seq + 1;
        let old = std::mem::replace(
            &mut self.segments,
            vec![Segment {
                seq: file,
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

    const SEG1: &str = "wal/00000000000000000001.seg";

    fn e(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn opts(target: u64) -> WalOptions {
        WalOptions {
            segment_bytes_target: target,
            ..WalOptions::default()
        }
    }

    fn open(disk: &MemDisk, target: u64) -> Result<(Wal, Replay), WalError> {
        Wal::open(Arc::new(disk.clone()), "wal", opts(target))
    }

    fn strs(r: &Replay) -> Vec<String> {
        r.entries
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    fn expect_corrupt(disk: &MemDisk, segment: &str, offset: u64) {
        match open(disk, 1 << 20) {
            Err(WalError::Corrupt {
                segment: s,
                offset: o,
                reason,
            }) => {
                assert_eq!((s.as_str(), o), (segment, offset), "{reason}");
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| strs(&r))),
        }
    }

    /// A WAL of `n` synced single-entry frames; returns their offsets.
    fn filled(disk: &MemDisk, n: usize) -> Result<Vec<u64>, WalError> {
        let (mut wal, _) = open(disk, 1 << 30)?;
        let mut offsets = Vec::new();
        let mut at = SEGMENT_HEADER_BYTES as u64;
        for i in 0..n {
            offsets.push(at);
            at += wal.append(&[format!("entry-{i:04}-{}", "x".repeat(i % 50)).into_bytes()])?;
            if i == 0 {
                at -= SEGMENT_HEADER_BYTES as u64;
            }
            wal.sync()?;
        }
        Ok(offsets)
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
        assert_eq!((replay.frames, replay.segments, replay.last_seq), (2, 1, 2));
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
        assert_eq!(replay.entries.len(), 18); // 2 frames per segment
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
        let frame_len = encode_frame(&[e("second-entry")], 2, FRAME_BYTES_MAX)?.len();
        for keep in [1, 4, 7, 8, 9, 19, 20, 21, frame_len - 1] {
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
        // A torn segment header (the first write of a new segment).
        for keep in [0, 5, SEGMENT_HEADER_BYTES, SEGMENT_HEADER_BYTES + 3] {
            let disk = MemDisk::new();
            let (mut wal, _) = open(&disk, 10)?;
            wal.append(&[e("one")])?;
            wal.append(&[e("two")])?; // rotates; "one" is synced
            disk.crash_with_torn_tail(keep);
            let (mut wal, replay) = open(&disk, 10)?;
            assert_eq!(strs(&replay), ["one"], "keep={keep}");
            wal.append(&[e("three")])?;
            wal.sync()?;
            let (_, replay) = open(&disk, 10)?;
            assert_eq!(strs(&replay), ["one", "three"], "keep={keep}");
        }
        Ok(())
    }

    #[test]
    fn never_written_space_at_the_tail_is_torn() -> Result<(), WalError> {
        // Zero fill after the last frame (size grew, data never landed).
        let disk = MemDisk::new();
        filled(&disk, 3)?;
        disk.append(SEG1, &[0; 32])?;
        disk.sync(SEG1)?;
        let (_, replay) = open(&disk, 1 << 20)?;
        assert_eq!(replay.entries.len(), 3);
        assert_eq!(replay.torn_tail_bytes, 32);

        // The last frame's payload has a sector that was never written.
        let disk = MemDisk::new();
        let (mut wal, _) = open(&disk, 1 << 20)?;
        wal.append(&[e("one")])?;
        wal.sync()?;
        let before = disk.read(SEG1)?.len();
        wal.append(&[vec![7; 3000]])?;
        wal.sync()?;
        let mut data = disk.read(SEG1)?;
        let sector = (before / SECTOR_BYTES + 2) * SECTOR_BYTES;
        data[sector..sector + SECTOR_BYTES].fill(0);
        disk.write_atomic(SEG1, &data)?;
        let (_, replay) = open(&disk, 1 << 20)?;
        assert_eq!(strs(&replay), ["one"]);
        assert_eq!(replay.torn_tail_bytes, (data.len() - before) as u64);
        Ok(())
    }

    #[test]
    fn a_flipped_byte_in_the_last_frame_is_corruption() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let offsets = filled(&disk, 10)?;
        let last = *offsets.last().unwrap_or(&0);
        let len = disk.read(SEG1)?.len() as u64;
        for at in [last + 1, last + 6, last + 12, last + 17, last + 25, len - 1] {
            disk.corrupt(SEG1, at, 0x10)?;
            expect_corrupt(&disk, SEG1, last);
            disk.corrupt(SEG1, at, 0x10)?;
        }
        // Even with zeros after it: real bytes were damaged.
        disk.append(SEG1, &[0; 64])?;
        disk.corrupt(SEG1, len - 1, 0x01)?;
        expect_corrupt(&disk, SEG1, last);
        assert_eq!(
            open(&disk, 1 << 20)
                .err()
                .map(|e| e.to_string().contains("synod repair")),
            Some(true)
        );
        Ok(())
    }

    #[test]
    fn a_damaged_length_in_the_middle_is_corruption() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let offsets = filled(&disk, 50)?;
        let victim = offsets[20];
        let mut data = disk.read(SEG1)?;
        data[victim as usize + 4..victim as usize + 8]
            .copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        disk.write_atomic(SEG1, &data)?;
        expect_corrupt(&disk, SEG1, victim);
        // Also with a length that fits the file, and with a zeroed header.
        data[victim as usize + 4..victim as usize + 8].copy_from_slice(&3u32.to_le_bytes());
        disk.write_atomic(SEG1, &data)?;
        expect_corrupt(&disk, SEG1, victim);
        data[victim as usize..victim as usize + 20].fill(0);
        disk.write_atomic(SEG1, &data)?;
        expect_corrupt(&disk, SEG1, victim);
        Ok(())
    }

    #[test]
    fn zeroed_frames_followed_by_valid_frames_are_corruption() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let (mut wal, _) = open(&disk, 1 << 20)?;
        wal.append(&[e("one")])?;
        let at = disk.read(SEG1)?.len();
        wal.append(&[vec![9; 4000]])?;
        wal.append(&[e("three")])?;
        wal.sync()?;
        let mut data = disk.read(SEG1)?;
        // The whole middle frame reads as never written...
        data[at..at + 4020].fill(0);
        disk.write_atomic(SEG1, &data)?;
        // ...but "three" was written after it, so it cannot be a torn tail.
        expect_corrupt(&disk, SEG1, at as u64);
        Ok(())
    }

    #[test]
    fn sequence_numbers_catch_missing_and_reordered_segments() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let (mut wal, _) = open(&disk, 10)?;
        for i in 0..4 {
            wal.append(&[format!("s{i}").into_bytes()])?;
        }
        wal.sync()?;
        assert_eq!(wal.segment_count(), 4);
        let seg = |n: u64| format!("wal/{n:020}.seg");
        let second = disk.read(&seg(2))?;
        disk.remove(&seg(2))?;
        expect_corrupt(&disk, &seg(3), 0);
        disk.write_atomic(&seg(2), &second)?;
        let first = disk.read(&seg(1))?;
        disk.remove(&seg(1))?;
        expect_corrupt(&disk, &seg(2), 0);
        disk.write_atomic(&seg(1), &first)?;
        assert_eq!(open(&disk, 10)?.1.entries.len(), 4);
        Ok(())
    }

    #[test]
    fn undecodable_crc_valid_frame_is_an_error() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let (mut wal, _) = open(&disk, 1 << 20)?;
        wal.append(&[e("one")])?;
        wal.sync()?;
        let at = disk.read(SEG1)?.len() as u64;
        // Claims 5 entries but holds none: crcs are fine, postcard is not.
        let mut payload = vec![5u8];
        whiten(&mut payload, 2);
        let mut frame = vec![0; 4];
        frame.extend_from_slice(&1u32.to_le_bytes());
        frame.extend_from_slice(&2u64.to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        let crc = header_crc(&frame[4..]);
        frame[..4].copy_from_slice(&crc.to_le_bytes());
        frame.extend_from_slice(&payload);
        disk.append(SEG1, &frame)?;
        expect_corrupt(&disk, SEG1, at);
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
        let len = disk.read(SEG1)?.len() as u64;
        disk.truncate(SEG1, len - 3)?;
        expect_corrupt(&disk, SEG1, SEGMENT_HEADER_BYTES as u64);
        Ok(())
    }

    #[test]
    fn old_format_segments_are_refused_by_name() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let payload = postcard::to_stdvec(&vec![Bytes::new(b"v1")]).unwrap_or_default();
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        disk.write_atomic(SEG1, &frame)?;
        match open(&disk, 1 << 20) {
            Err(e @ WalError::UnsupportedFormat { .. }) => {
                assert!(e.to_string().contains("format v1"), "{e}");
                assert!(e.to_string().contains(SEG1), "{e}");
            }
            other => panic!(
                "expected UnsupportedFormat, got {:?}",
                other.map(|(_, r)| r)
            ),
        }
        Ok(())
    }

    #[test]
    fn diagnose_and_cut_report_what_is_lost() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let offsets = filled(&disk, 30)?;
        let victim = offsets[10];
        disk.corrupt(SEG1, victim + 5, 0x40)?;
        let diagnosis = diagnose(&disk, "wal")?;
        let problem = diagnosis.problem.as_ref().ok_or(WalError::Poisoned)?;
        assert_eq!(
            (problem.segment.as_str(), problem.offset, problem.torn),
            (SEG1, victim, false)
        );
        assert_eq!(diagnosis.frames, 10);
        assert_eq!(problem.next_seq, 11);
        // Frames 12..=30 are intact after the damage.
        let seqs: Vec<u64> = problem.frames_after.iter().map(|(_, f)| f.seq).collect();
        assert_eq!(seqs, (12..=30).collect::<Vec<_>>());
        let len = disk.read(SEG1)?.len() as u64;
        assert_eq!(problem.bytes_cut, len - victim);
        // Diagnosis changes nothing.
        assert_eq!(disk.read(SEG1)?.len() as u64, len);
        cut(&disk, problem)?;
        let (mut wal, replay) = open(&disk, 1 << 20)?;
        assert_eq!(replay.entries.len(), 10);
        assert_eq!(replay.torn_tail_bytes, 0);
        wal.append(&[e("after-repair")])?;
        wal.sync()?;
        assert_eq!(open(&disk, 1 << 20)?.1.last_seq, 11);
        assert!(diagnose(&disk, "wal")?.problem.is_none());
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
        assert_eq!(replay.last_seq, 6 + 3);
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
    fn frames_respect_a_configured_limit() -> Result<(), WalError> {
        let disk = MemDisk::new();
        let options = WalOptions {
            frame_bytes_max: 4096,
            ..opts(1 << 20)
        };
        let (mut wal, _) = Wal::open(Arc::new(disk.clone()), "wal", options.clone())?;
        assert!(matches!(
            wal.append(&[vec![1; 5000]]),
            Err(WalError::FrameTooLarge { limit: 4096, .. })
        ));
        // A refusal is not a failure: the WAL keeps working.
        wal.append(&[e("fine")])?;
        let entries: Vec<Vec<u8>> = (0..40).map(|i| vec![i; 1000]).collect();
        wal.checkpoint(&entries)?;
        wal.sync()?;
        let (_, replay) = Wal::open(Arc::new(disk.clone()), "wal", options)?;
        assert_eq!(replay.entries, entries);
        assert!(replay.frames >= 10, "{} frames", replay.frames);
        Ok(())
    }

    #[test]
    fn fsdisk_smoke() -> Result<(), WalError> {
        let tmp = tempfile::tempdir()?;
        let disk: Arc<dyn Disk> = Arc::new(FsDisk::new(tmp.path().to_path_buf()));
        let opts = opts(64);
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
        let (wal, replay) = Wal::open(disk.clone(), "wal", opts.clone())?;
        assert_eq!(strs(&replay), ["cp", "x"]);
        assert_eq!(wal.total_bytes(), total);
        drop(wal);
        // Bit rot on a real file: refused with the segment and offset.
        let path = tmp.path().join("wal");
        let name = std::fs::read_dir(&path)?
            .filter_map(|d| d.ok())
            .map(|d| d.path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .ok_or(WalError::Poisoned)?;
        let mut bytes = std::fs::read(&name)?;
        let at = SEGMENT_HEADER_BYTES + 2;
        bytes[at] ^= 0x08;
        std::fs::write(&name, &bytes)?;
        match Wal::open(disk, "wal", opts) {
            Err(WalError::Corrupt { offset, .. }) => {
                assert_eq!(offset, SEGMENT_HEADER_BYTES as u64)
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r)),
        }
        Ok(())
    }
}
