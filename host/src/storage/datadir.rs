//! Consistency of a node's data directory. A marker file written at first
//! start names the node; a WAL that is missing or empty while the marker or
//! other state exists means the WAL was lost, and starting would silently
//! come up as an empty node, so the node refuses.

use thiserror::Error;

use super::disk::Disk;

/// Written once, after the first `NodeBoot` record is durable.
pub const MARKER_PATH: &str = "synod-node";
const MARKER_TITLE: &str = "synod data directory";
/// Format 2: the data directory holds the replicated control plane's WAL
/// (`control/`). Format 1 directories used the anti-entropy catalog.
const MARKER_FORMAT: u32 = 2;

#[derive(Debug, Error)]
pub enum DataDirError {
    #[error("data directory marker {MARKER_PATH}: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "data directory marker {MARKER_PATH} is unreadable ({0}); it must read \
         \"{MARKER_TITLE}\\nformat {MARKER_FORMAT}\\nnode <id>\""
    )]
    BadMarker(String),
    #[error(
        "this data directory was written by a Synod before the replicated control plane \
         (marker format 1, anti-entropy catalog) and cannot be migrated: its regions and \
         components are not in any control-plane record. Export what you need with the old \
         binary, then move the directory away and start with an empty one \
         (docs/OPERATIONS.md, \"Upgrading from the anti-entropy catalog\")"
    )]
    Obsolete,
    #[error(
        "this data directory belongs to node {found} ({MARKER_PATH}), but this node is \
         configured as node {configured}: point it at its own data directory"
    )]
    WrongNode { found: u64, configured: u64 },
    #[error(
        "inconsistent data directory: {missing}, but {present}. Starting would come up as an \
         empty node and silently forget its regions. Restore wal/ from a backup, or move the \
         whole data directory away and rejoin under a new node id (docs/OPERATIONS.md, \
         \"Inconsistent data directory\")"
    )]
    Inconsistent { missing: String, present: String },
}

/// What the directory looked like.
#[derive(Debug, PartialEq, Eq)]
pub enum DataDirState {
    /// Initialized and consistent.
    Marked,
    /// No marker yet (a fresh directory, or one from before markers):
    /// write it with [`write_marker`] once the WAL holds a `NodeBoot`.
    Unmarked,
}

fn parse_marker(text: &str) -> Result<u64, String> {
    let mut lines = text.lines();
    if lines.next() != Some(MARKER_TITLE) {
        return Err("bad first line".into());
    }
    match lines.next().and_then(|l| l.strip_prefix("format ")) {
        Some(v) if v.trim() == MARKER_FORMAT.to_string() => {}
        Some(v) => return Err(format!("unknown format {v}")),
        None => return Err("no format line".into()),
    }
    lines
        .next()
        .and_then(|l| l.strip_prefix("node "))
        .and_then(|id| id.trim().parse().ok())
        .ok_or_else(|| "no node line".into())
}

/// Files in `dir` with the given suffix.
fn count(disk: &dyn Disk, dir: &str, suffix: &str) -> Result<usize, DataDirError> {
    Ok(disk
        .list(dir)?
        .iter()
        .filter(|n| n.ends_with(suffix))
        .count())
}

/// Checks the directory before anything is written to it. `wal_empty` is
/// whether the WAL recovered no entries at all.
pub fn check(disk: &dyn Disk, node_id: u64, wal_empty: bool) -> Result<DataDirState, DataDirError> {
    let marker = match disk.read(MARKER_PATH) {
        Ok(bytes) => {
            let text =
                String::from_utf8(bytes).map_err(|e| DataDirError::BadMarker(e.to_string()))?;
            if text.lines().nth(1).map(str::trim) == Some("format 1") {
                return Err(DataDirError::Obsolete);
            }
            Some(parse_marker(&text).map_err(DataDirError::BadMarker)?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(found) = marker
        && found != node_id
    {
        return Err(DataDirError::WrongNode {
            found,
            configured: node_id,
        });
    }
    if wal_empty {
        let segments = count(disk, "wal", ".seg")?;
        let missing = if segments == 0 {
            "wal/ holds no WAL segment".to_string()
        } else {
            format!("wal/ holds {segments} segment(s) without a single record")
        };
        let mut present = Vec::new();
        if let Some(id) = marker {
            present.push(format!(
                "{MARKER_PATH} says it was initialized as node {id}"
            ));
        }
        let snapshots = count(disk, "snapshots", ".snap")?;
        if snapshots > 0 {
            present.push(format!("snapshots/ holds {snapshots} snapshot(s)"));
        }
        let components = count(disk, "components", ".wasm")?;
        if components > 0 {
            present.push(format!("components/ holds {components} component(s)"));
        }
        if !present.is_empty() {
            return Err(DataDirError::Inconsistent {
                missing,
                present: present.join(" and "),
            });
        }
    }
    Ok(if marker.is_some() {
        DataDirState::Marked
    } else {
        DataDirState::Unmarked
    })
}

/// Writes the marker durably (call once the WAL holds a `NodeBoot`).
pub fn write_marker(disk: &dyn Disk, node_id: u64) -> Result<(), DataDirError> {
    let text = format!("{MARKER_TITLE}\nformat {MARKER_FORMAT}\nnode {node_id}\n");
    disk.write_atomic(MARKER_PATH, text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::disk::MemDisk;

    #[test]
    fn fresh_marked_and_inconsistent_directories() -> Result<(), DataDirError> {
        let disk = MemDisk::new();
        assert_eq!(check(&disk, 3, true)?, DataDirState::Unmarked);
        write_marker(&disk, 3)?;
        assert_eq!(check(&disk, 3, false)?, DataDirState::Marked);
        let err = check(&disk, 3, true)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("wal/ holds no WAL segment") && err.contains("node 3"),
            "{err}"
        );
        assert!(matches!(
            check(&disk, 4, false),
            Err(DataDirError::WrongNode {
                found: 3,
                configured: 4
            })
        ));
        // No marker (a directory from before markers) but snapshots: refused.
        let disk = MemDisk::new();
        disk.write_atomic("snapshots/r.snap", b"x")?;
        let err = check(&disk, 1, true)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("snapshots/ holds 1 snapshot"), "{err}");
        assert_eq!(check(&disk, 1, false)?, DataDirState::Unmarked);
        disk.write_atomic(MARKER_PATH, b"synod data directory\nformat 1\nnode 1\n")?;
        assert!(
            matches!(check(&disk, 1, false), Err(DataDirError::Obsolete)),
            "a directory of the anti-entropy catalog is refused by name"
        );
        disk.write_atomic(MARKER_PATH, b"garbage")?;
        assert!(matches!(
            check(&disk, 1, false),
            Err(DataDirError::BadMarker(_))
        ));
        Ok(())
    }
}
