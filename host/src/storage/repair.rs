//! `synod repair`: finds the first damage in a stopped node's WAL, reports
//! exactly what cutting there would lose, and cuts only with the operator's
//! explicit consent.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use thiserror::Error;

use super::disk::{Disk, FsDisk};
use super::wal::{self, Diagnosis, WalError};
use crate::journal::JournalRecord;

#[derive(Debug, Error)]
pub enum RepairError {
    #[error("{0} does not exist or is not a directory")]
    NoDataDir(String),
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// What the lost frames held, for one region.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RegionLoss {
    /// Lowest and highest log positions appended by lost records.
    pub log_positions: Option<(u64, u64)>,
    pub log_truncates: usize,
    pub log_compacts: usize,
    pub kv_puts: usize,
    pub kv_deletes: usize,
    pub spec_changes: usize,
}

/// The decoded content of the frames a cut loses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loss {
    pub frames: usize,
    pub entries: usize,
    /// Lowest and highest frame seq lost (intact frames only).
    pub seqs: Option<(u64, u64)>,
    pub regions: BTreeMap<String, RegionLoss>,
    pub node_records: usize,
    /// Entries that are intact frames but do not decode as journal records.
    pub undecodable: usize,
}

/// The outcome of `synod repair`.
#[derive(Debug)]
pub struct RepairReport {
    pub diagnosis: Diagnosis,
    pub loss: Loss,
    /// Whether the WAL was cut.
    pub cut: bool,
}

impl RepairReport {
    /// Damage that the node would refuse to start with remains.
    pub fn blocks_start(&self) -> bool {
        !self.cut && self.diagnosis.problem.as_ref().is_some_and(|p| !p.torn)
    }
}

fn widen(range: &mut Option<(u64, u64)>, lo: u64, hi: u64) {
    *range = Some(match *range {
        Some((a, b)) => (a.min(lo), b.max(hi)),
        None => (lo, hi),
    });
}

fn region_of<'a>(regions: &'a mut BTreeMap<String, RegionLoss>, name: &str) -> &'a mut RegionLoss {
    regions.entry(name.to_string()).or_default()
}

fn summarize(diagnosis: &Diagnosis) -> Loss {
    let mut loss = Loss::default();
    let Some(problem) = &diagnosis.problem else {
        return loss;
    };
    for (_, frame) in &problem.frames_after {
        loss.frames += 1;
        widen(&mut loss.seqs, frame.seq, frame.seq);
        for entry in &frame.entries {
            loss.entries += 1;
            let Ok(records) = JournalRecord::decode_all(entry) else {
                loss.undecodable += 1;
                continue;
            };
            for record in records {
                let regions = &mut loss.regions;
                match record {
                    JournalRecord::LogAppend {
                        region: name,
                        first,
                        ends,
                        ..
                    } => {
                        let r = region_of(regions, &name);
                        if !ends.is_empty() {
                            let last = first + ends.len() as u64 - 1;
                            widen(&mut r.log_positions, first, last);
                        }
                    }
                    JournalRecord::LogTruncate { region: name, .. } => {
                        region_of(regions, &name).log_truncates += 1
                    }
                    JournalRecord::LogCompact { region: name, .. } => {
                        region_of(regions, &name).log_compacts += 1
                    }
                    JournalRecord::MetaPut { region: name, .. } => {
                        region_of(regions, &name).kv_puts += 1
                    }
                    JournalRecord::MetaDelete { region: name, .. } => {
                        region_of(regions, &name).kv_deletes += 1
                    }
                    JournalRecord::RegionCreated { spec }
                    | JournalRecord::RegionUpdated { spec }
                    | JournalRecord::RegionEpochStarted { spec, .. } => {
                        region_of(regions, &spec.name).spec_changes += 1
                    }
                    JournalRecord::RegionDropped { region: name } => {
                        region_of(regions, &name).spec_changes += 1
                    }
                    JournalRecord::NodeBoot { .. } => {
                        loss.node_records += 1;
                    }
                }
            }
        }
    }
    loss
}

/// Inspects the WAL under `data_dir` and, if `cut`, cuts it at the first
/// damage durably. The node must be stopped.
pub fn repair(data_dir: &Path, cut: bool) -> Result<RepairReport, RepairError> {
    if !data_dir.is_dir() {
        return Err(RepairError::NoDataDir(data_dir.display().to_string()));
    }
    let disk = FsDisk::new(data_dir.to_path_buf());
    repair_on(&disk, cut)
}

/// [`repair`] over any [`Disk`].
pub fn repair_on(disk: &dyn Disk, cut: bool) -> Result<RepairReport, RepairError> {
    repair_dir(disk, "wal", cut)
}

/// The same for the control plane's WAL (`control/`). Its entries are
/// openraft records, reported by count only; after a cut this member
/// rejoins with a shorter log and the leader sends it what it lacks (a
/// voter whose acknowledged entries are cut must be treated as having lost
/// its disk: see docs/OPERATIONS.md).
pub fn repair_control(data_dir: &Path, cut: bool) -> Result<RepairReport, RepairError> {
    if !data_dir.is_dir() {
        return Err(RepairError::NoDataDir(data_dir.display().to_string()));
    }
    let disk = FsDisk::new(data_dir.to_path_buf());
    repair_dir(&disk, crate::control::CONTROL_WAL_DIR, cut)
}

fn repair_dir(disk: &dyn Disk, dir: &str, cut: bool) -> Result<RepairReport, RepairError> {
    let diagnosis = wal::diagnose(disk, dir)?;
    let mut loss = summarize(&diagnosis);
    if dir != "wal" {
        // Not journal records: only the counts mean anything.
        loss.regions.clear();
        loss.node_records = 0;
        loss.undecodable = 0;
    }
    let mut done = false;
    if cut && let Some(problem) = &diagnosis.problem {
        wal::cut(disk, problem)?;
        done = true;
    }
    Ok(RepairReport {
        diagnosis,
        loss,
        cut: done,
    })
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.diagnosis;
        writeln!(
            f,
            "WAL: {} live segment(s), {} intact frame(s) before any damage (last seq {})",
            d.segments.len(),
            d.frames,
            d.last_good_seq
        )?;
        if !d.superseded.is_empty() {
            writeln!(
                f,
                "{} segment(s) before the last checkpoint are dead and are removed on start",
                d.superseded.len()
            )?;
        }
        let Some(p) = &d.problem else {
            return writeln!(f, "No damage found: the node can start.");
        };
        writeln!(
            f,
            "Damage: {} at offset {}: {}",
            p.segment, p.offset, p.reason
        )?;
        if p.torn {
            writeln!(
                f,
                "This is a torn tail (a write that never completed): the node cuts it by itself on start."
            )?;
        }
        let verb = if self.cut {
            "The cut removed"
        } else {
            "A cut at this point removes"
        };
        writeln!(
            f,
            "{verb} {} byte(s): {} from offset {} to its end{}",
            p.bytes_cut,
            p.segment,
            p.offset,
            if p.segments_removed.is_empty() {
                String::new()
            } else {
                format!(", and the later segments {}", p.segments_removed.join(", "))
            }
        )?;
        let l = &self.loss;
        writeln!(
            f,
            "Lost with it: the damaged frame itself (its contents cannot be read)"
        )?;
        match l.seqs {
            None => writeln!(
                f,
                "  and no intact frame: nothing decodable lies after the damage"
            )?,
            Some((lo, hi)) => {
                writeln!(
                    f,
                    "  and {} intact frame(s) after it (seq {lo}..={hi}), {} entr(ies):",
                    l.frames, l.entries
                )?;
                for (name, r) in &l.regions {
                    let positions = r
                        .log_positions
                        .map_or("no log appends".to_string(), |(a, b)| {
                            format!("log positions {a}..={b}")
                        });
                    writeln!(
                        f,
                        "    region {name}: {positions}, {} log truncation(s), {} log compaction(s), \
                         {} kv put(s), {} kv delete(s), {} spec change(s)",
                        r.log_truncates, r.log_compacts, r.kv_puts, r.kv_deletes, r.spec_changes
                    )?;
                }
                if l.node_records > 0 {
                    writeln!(f, "    node records (boots, addresses): {}", l.node_records)?;
                }
                if l.undecodable > 0 {
                    writeln!(
                        f,
                        "    entries that are not journal records: {}",
                        l.undecodable
                    )?;
                }
            }
        }
        if self.cut {
            writeln!(
                f,
                "The WAL was cut durably. The node starts with what precedes the damage. A Raft \
                 replica that lost entries should be replaced (docs/OPERATIONS.md)."
            )
        } else {
            writeln!(
                f,
                "Nothing was changed. To cut here, run again with --cut --yes."
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::disk::MemDisk;
    use crate::storage::wal::{Wal, WalOptions};
    use serde_bytes::ByteBuf;
    use std::sync::Arc;

    #[test]
    fn reports_regions_and_positions_then_cuts() -> Result<(), Box<dyn std::error::Error>> {
        let disk = MemDisk::new();
        let (mut wal, _) = Wal::open(Arc::new(disk.clone()), "wal", WalOptions::default())?;
        for i in 0..20u64 {
            let record = JournalRecord::LogAppend {
                region: "r".into(),
                first: i + 1,
                data: ByteBuf::from(b"cmd".to_vec()),
                ends: vec![3],
            };
            wal.append(&[JournalRecord::encode_all(&[record])])?;
            wal.sync()?;
        }
        let seg = "wal/00000000000000000001.seg";
        let diagnosis = wal::diagnose(&disk, "wal")?;
        assert!(diagnosis.problem.is_none());
        // Damage frame 6 (the 6th append).
        let data = disk.read(seg)?;
        let frame = (data.len() - wal::SEGMENT_HEADER_BYTES) / 20;
        disk.corrupt(
            seg,
            (wal::SEGMENT_HEADER_BYTES + 5 * frame + 9) as u64,
            0x01,
        )?;
        let report = repair_on(&disk, false)?;
        assert!(report.blocks_start());
        assert_eq!(report.loss.regions["r"].log_positions, Some((7, 20)));
        assert_eq!(report.loss.frames, 14);
        let text = report.to_string();
        assert!(text.contains("region r: log positions 7..=20"), "{text}");
        assert!(text.contains("Nothing was changed"), "{text}");
        assert_eq!(disk.read(seg)?, {
            let mut d = data.clone();
            d[wal::SEGMENT_HEADER_BYTES + 5 * frame + 9] ^= 0x01;
            d
        });
        let report = repair_on(&disk, true)?;
        assert!(report.cut && !report.blocks_start());
        let (_, replay) = Wal::open(Arc::new(disk.clone()), "wal", WalOptions::default())?;
        assert_eq!(replay.entries.len(), 5);
        Ok(())
    }
}
