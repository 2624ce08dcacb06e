//! Single-copy consensus (IoTDB's SimpleConsensus): the one replica orders
//! writes by appending them to the host log and applies them at once.
//!
//! Durability comes from the host's output commit: a write's answer leaves
//! the node only after its log append is durable, so an acknowledged write
//! survives a crash and is re-applied from the log on recovery.
//!
//! Log entry layout: 8-byte little-endian request id, then the command.
//!
//! Parameters:
//! - `snapshot-interval` (entries, default 10000, 0 = never): after this many
//!   applies since the last snapshot, snapshot the state machine and compact
//!   the log up to it. When the host refuses an append over the region's
//!   log quota (`quota exceeded: ...`), it snapshots at once and retries, so
//!   a quota smaller than `snapshot-interval` entries still works.

use synod_guest_sdk::*;

/// Entries read per host call while replaying the log on recovery.
const REPLAY_BYTES_MAX: u32 = 4 << 20;
const SNAPSHOT_INTERVAL_DEFAULT: u64 = 10_000;

pub struct Standalone {
    self_id: NodeId,
    /// Last log position, which is also the applied position.
    position: u64,
    last_snapshot_position: u64,
    snapshot_interval_entries: u64,
    sealed: bool,
}

impl Standalone {
    fn encode(id: RequestId, payload: &[u8], out: &mut Batch) {
        let mut entry = Vec::with_capacity(8 + payload.len());
        entry.extend_from_slice(&id.to_le_bytes());
        entry.extend_from_slice(payload);
        out.push(&entry);
    }

    fn decode(entry: &[u8]) -> (RequestId, &[u8]) {
        assert!(
            entry.len() >= 8,
            "standalone log entry shorter than its header"
        );
        let (id, payload) = entry.split_at(8);
        let mut id_bytes = [0u8; 8];
        id_bytes.copy_from_slice(id);
        (u64::from_le_bytes(id_bytes), payload)
    }

    /// Re-applies log entries after the state machine's applied position.
    fn replay<H: Host>(&mut self, host: &mut H, applied_position: u64) {
        let mut bounds = host.log_bounds();
        if bounds.last < applied_position && bounds.first <= applied_position {
            // The state machine is ahead of an empty log (a protocol swap
            // started this one over a state that already applied commands):
            // the log continues after it, so appends leave no gap.
            if let Err(error) = host.log_compact_prefix(applied_position) {
                panic!("cannot start the log after position {applied_position}: {error}");
            }
            bounds = host.log_bounds();
        }
        assert!(
            applied_position + 1 >= bounds.first,
            "log compacted past the applied position ({applied_position} < {} - 1)",
            bounds.first
        );
        let mut next = applied_position + 1;
        while next <= bounds.last {
            let entries = match host.log_read(next, bounds.last, REPLAY_BYTES_MAX) {
                Ok(entries) => entries,
                Err(error) => panic!("replay read at {next} failed: {error}"),
            };
            assert!(
                !entries.is_empty(),
                "log read returned no entries at {next}"
            );
            let mut applies = Applies::default();
            for entry in entries.iter() {
                let (id, payload) = Self::decode(entry);
                applies.push(id, payload);
            }
            next += applies.len() as u64;
            host.apply(&applies, next - 1);
        }
        self.position = bounds.last.max(applied_position);
        self.last_snapshot_position = applied_position;
    }

    fn maybe_snapshot<H: Host>(&mut self, host: &mut H) {
        if self.snapshot_interval_entries == 0
            || self.position - self.last_snapshot_position < self.snapshot_interval_entries
        {
            return;
        }
        self.snapshot_now(host);
    }

    fn snapshot_now<H: Host>(&mut self, host: &mut H) {
        match host.snapshot() {
            Ok(position) => {
                self.last_snapshot_position = position;
                if let Err(error) = host.log_compact_prefix(position) {
                    host.log(Level::Warn, &format!("log compaction failed: {error}"));
                }
            }
            Err(error) => host.log(Level::Warn, &format!("snapshot failed: {error}")),
        }
    }
}

impl Protocol for Standalone {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "standalone".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            consistency: Consistency::Linearizable,
            capabilities: Capabilities {
                linearizable_reads: true,
                seal: true,
                snapshots: true,
                ..Capabilities::default()
            },
        }
    }

    fn init<H: Host>(host: &mut H, config: InitConfig) -> Self {
        let snapshot_interval_entries = config
            .param("snapshot-interval")
            .and_then(|value| value.parse().ok())
            .unwrap_or(SNAPSHOT_INTERVAL_DEFAULT);
        let mut protocol = Standalone {
            self_id: config.self_id,
            position: config.applied_position,
            last_snapshot_position: config.applied_position,
            snapshot_interval_entries,
            sealed: false,
        };
        protocol.replay(host, config.applied_position);
        protocol
    }

    fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
        if commands.is_empty() {
            return;
        }
        if self.sealed {
            host.reject(&commands.ids, &Rejection::Sealed);
            return;
        }
        let mut entries = Batch {
            data: Vec::with_capacity(commands.payloads.byte_len() + 8 * commands.len()),
            ends: Vec::with_capacity(commands.len()),
        };
        for (id, payload) in commands.ids.iter().zip(commands.payloads.iter()) {
            Self::encode(*id, payload, &mut entries);
        }
        let first = self.position + 1;
        let mut appended = host.log_append(first, &entries);
        if let Err(StorageError::Failed(why)) = &appended
            && why.starts_with("quota exceeded:")
            && self.position > self.last_snapshot_position
        {
            // Everything in the log is applied: a snapshot frees it all.
            self.snapshot_now(host);
            appended = host.log_append(first, &entries);
        }
        if let Err(error) = appended {
            host.reject(&commands.ids, &Rejection::Unavailable(error.to_string()));
            return;
        }
        self.position += commands.len() as u64;
        let applies = Applies {
            ids: commands.ids,
            payloads: commands.payloads,
        };
        host.apply(&applies, self.position);
        self.maybe_snapshot(host);
    }

    fn on_reads<H: Host>(&mut self, host: &mut H, reads: Reads) {
        // One copy: every read level is answered from the applied state, and
        // output commit holds the answer until the writes it saw are durable.
        host.complete_reads(&reads.ids);
    }

    fn on_membership<H: Host>(
        &mut self,
        _host: &mut H,
        membership: Membership,
    ) -> Result<(), String> {
        if membership.voters == [self.self_id] && membership.learners.is_empty() {
            Ok(())
        } else {
            Err("standalone keeps exactly one copy: the only voter must be this node".into())
        }
    }

    fn seal<H: Host>(&mut self, _host: &mut H) -> SealProgress {
        self.sealed = true;
        SealProgress::Sealed(self.position)
    }

    fn status<H: Host>(&mut self, _host: &mut H) -> Status {
        Status {
            role: if self.sealed {
                Role::Sealed
            } else {
                Role::Leader
            },
            leader: Some(self.self_id),
            term: 0,
            commit_position: self.position,
            applied_position: self.position,
            peers: Vec::new(),
            counters: vec![("last-snapshot-position".into(), self.last_snapshot_position)],
        }
    }
}

export_protocol!(Standalone);

#[cfg(test)]
mod tests {
    use super::*;
    use synod_guest_sdk::testing::{MemoryHost, commands};

    fn config(params: &[(&str, &str)]) -> InitConfig {
        InitConfig {
            self_id: 1,
            membership: Membership {
                voters: vec![1],
                learners: vec![],
            },
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            recovering: false,
            applied_position: 0,
        }
    }

    #[test]
    fn appends_then_applies_in_order() {
        let mut host = MemoryHost::new(1);
        let mut protocol = Standalone::init(&mut host, config(&[]));
        protocol.on_commands(&mut host, commands(&[(10, b"a"), (11, b"b")]));
        protocol.on_commands(&mut host, commands(&[(12, b"c")]));
        assert_eq!(host.applied_ids(), vec![10, 11, 12]);
        assert_eq!(host.log.len(), 3);
        assert_eq!(host.applied_position, 3);
    }

    #[test]
    fn recovery_replays_entries_after_the_applied_position() {
        let mut host = MemoryHost::new(1);
        let mut protocol = Standalone::init(&mut host, config(&[]));
        protocol.on_commands(&mut host, commands(&[(1, b"a"), (2, b"b"), (3, b"c")]));
        // The state machine survived up to position 1 (e.g. its snapshot).
        host.applied.truncate(1);
        host.applied_position = 1;
        let mut recover = config(&[]);
        recover.recovering = true;
        recover.applied_position = 1;
        let protocol = Standalone::init(&mut host, recover);
        assert_eq!(host.applied_ids(), vec![1, 2, 3]);
        assert_eq!(protocol.position, 3);
    }

    #[test]
    fn snapshots_and_compacts_at_the_interval() {
        let mut host = MemoryHost::new(1);
        let mut protocol = Standalone::init(&mut host, config(&[("snapshot-interval", "2")]));
        protocol.on_commands(&mut host, commands(&[(1, b"a")]));
        assert!(host.snapshots_taken.is_empty());
        protocol.on_commands(&mut host, commands(&[(2, b"b"), (3, b"c")]));
        assert_eq!(host.snapshots_taken, vec![3]);
        assert_eq!(host.log_first, 4);
        assert!(host.log.is_empty());
        protocol.on_commands(&mut host, commands(&[(4, b"d")]));
        assert_eq!(host.log.keys().copied().collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn sealed_rejects_writes() {
        let mut host = MemoryHost::new(1);
        let mut protocol = Standalone::init(&mut host, config(&[]));
        protocol.on_commands(&mut host, commands(&[(1, b"a")]));
        assert_eq!(protocol.seal(&mut host), SealProgress::Sealed(1));
        protocol.on_commands(&mut host, commands(&[(2, b"b")]));
        assert_eq!(host.rejected, vec![(2, Rejection::Sealed)]);
        assert_eq!(host.applied_ids(), vec![1]);
    }

    /// Goal: started over a state machine that already applied commands
    /// (a protocol swap: empty storage, `applied-position` 5), the log
    /// continues after it and writes apply at the next positions.
    #[test]
    fn starts_after_an_existing_state_machine_position() {
        let mut host = MemoryHost::new(1);
        host.applied_position = 5;
        let mut start = config(&[]);
        start.applied_position = 5;
        let mut protocol = Standalone::init(&mut host, start);
        protocol.on_commands(&mut host, commands(&[(1, b"a"), (2, b"b")]));
        assert!(host.rejected.is_empty(), "{:?}", host.rejected);
        assert_eq!(host.applied_ids(), vec![1, 2]);
        assert_eq!(host.applied_position, 7);
        assert_eq!(host.log.keys().copied().collect::<Vec<_>>(), vec![6, 7]);
    }

    #[test]
    fn refuses_a_second_voter() {
        let mut host = MemoryHost::new(1);
        let mut protocol = Standalone::init(&mut host, config(&[]));
        let two = Membership {
            voters: vec![1, 2],
            learners: vec![],
        };
        assert!(protocol.on_membership(&mut host, two).is_err());
    }
}
