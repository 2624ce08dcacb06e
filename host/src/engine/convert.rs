//! Conversions between the generated WIT types and the SDK's plain types.
//! Records move their vectors; nothing is copied.

use synod_guest_sdk as sdk;

use super::bindings::types as wit;

pub fn batch_from_wit(batch: wit::Batch) -> sdk::Batch {
    sdk::Batch {
        data: batch.data,
        ends: batch.ends,
    }
}

pub fn batch_to_wit(batch: sdk::Batch) -> wit::Batch {
    wit::Batch {
        data: batch.data,
        ends: batch.ends,
    }
}

pub fn storage_error_to_wit(error: sdk::StorageError) -> wit::StorageError {
    match error {
        sdk::StorageError::Compacted(first) => wit::StorageError::Compacted(first),
        sdk::StorageError::OutOfRange(why) => wit::StorageError::OutOfRange(why),
        sdk::StorageError::Failed(why) => wit::StorageError::Failed(why),
    }
}

pub fn rejection_from_wit(rejection: wit::Rejection) -> sdk::Rejection {
    match rejection {
        wit::Rejection::NotLeader(hint) => sdk::Rejection::NotLeader(hint),
        wit::Rejection::Sealed => sdk::Rejection::Sealed,
        wit::Rejection::Overloaded => sdk::Rejection::Overloaded,
        wit::Rejection::Invalid(why) => sdk::Rejection::Invalid(why),
        wit::Rejection::Unavailable(why) => sdk::Rejection::Unavailable(why),
    }
}

pub fn level_from_wit(level: wit::Level) -> sdk::Level {
    match level {
        wit::Level::Trace => sdk::Level::Trace,
        wit::Level::Debug => sdk::Level::Debug,
        wit::Level::Info => sdk::Level::Info,
        wit::Level::Warn => sdk::Level::Warn,
        wit::Level::Error => sdk::Level::Error,
    }
}

pub fn membership_to_wit(m: sdk::Membership) -> wit::Membership {
    wit::Membership {
        voters: m.voters,
        learners: m.learners,
    }
}

pub fn init_config_to_wit(config: sdk::InitConfig) -> wit::InitConfig {
    wit::InitConfig {
        self_id: config.self_id,
        membership: membership_to_wit(config.membership),
        params: config.params,
        recovering: config.recovering,
        applied_position: config.applied_position,
    }
}

pub fn commands_to_wit(commands: sdk::Commands) -> wit::Commands {
    wit::Commands {
        ids: commands.ids,
        payloads: batch_to_wit(commands.payloads),
        key_ends: commands.key_ends,
        keys: commands.keys,
    }
}

pub fn reads_to_wit(reads: sdk::Reads) -> wit::Reads {
    wit::Reads {
        ids: reads.ids,
        levels: reads
            .levels
            .into_iter()
            .map(|level| match level {
                sdk::ReadLevel::Linearizable => wit::ReadLevel::Linearizable,
                sdk::ReadLevel::Lease => wit::ReadLevel::Lease,
                sdk::ReadLevel::Local => wit::ReadLevel::Local,
            })
            .collect(),
    }
}

pub fn messages_to_wit(messages: sdk::Messages) -> wit::Messages {
    wit::Messages {
        senders: messages.senders,
        payloads: batch_to_wit(messages.payloads),
    }
}

pub fn snapshot_offer_to_wit(offer: sdk::SnapshotOffer) -> wit::SnapshotOffer {
    wit::SnapshotOffer {
        sender: offer.sender,
        position: offer.position,
        metadata: offer.metadata,
    }
}

pub fn seal_from_wit(progress: wit::SealProgress) -> sdk::SealProgress {
    match progress {
        wit::SealProgress::Pending => sdk::SealProgress::Pending,
        wit::SealProgress::Sealed(position) => sdk::SealProgress::Sealed(position),
    }
}

pub fn status_from_wit(status: wit::ReplicaStatus) -> sdk::Status {
    sdk::Status {
        role: match status.role {
            wit::Role::Leader => sdk::Role::Leader,
            wit::Role::Follower => sdk::Role::Follower,
            wit::Role::Candidate => sdk::Role::Candidate,
            wit::Role::Learner => sdk::Role::Learner,
            wit::Role::Replica => sdk::Role::Replica,
            wit::Role::Sealed => sdk::Role::Sealed,
        },
        leader: status.leader,
        term: status.term,
        commit_position: status.commit_position,
        applied_position: status.applied_position,
        peers: status
            .peers
            .into_iter()
            .map(|p| sdk::PeerProgress {
                peer: p.peer,
                match_position: p.match_position,
            })
            .collect(),
        counters: status.counters,
    }
}

pub fn info_from_wit(info: wit::PluginInfo) -> sdk::PluginInfo {
    let flags = info.capabilities;
    sdk::PluginInfo {
        name: info.name,
        version: info.version,
        consistency: match info.consistency {
            wit::Consistency::Linearizable => sdk::Consistency::Linearizable,
            wit::Consistency::Sequential => sdk::Consistency::Sequential,
            wit::Consistency::Eventual => sdk::Consistency::Eventual,
        },
        capabilities: sdk::Capabilities {
            replication: flags.contains(wit::Capabilities::REPLICATION),
            linearizable_reads: flags.contains(wit::Capabilities::LINEARIZABLE_READS),
            lease_reads: flags.contains(wit::Capabilities::LEASE_READS),
            membership_change: flags.contains(wit::Capabilities::MEMBERSHIP_CHANGE),
            leader_transfer: flags.contains(wit::Capabilities::LEADER_TRANSFER),
            seal: flags.contains(wit::Capabilities::SEAL),
            snapshots: flags.contains(wit::Capabilities::SNAPSHOTS),
        },
    }
}
