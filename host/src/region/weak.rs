//! What the host refuses, before the plugin sees it, on a region whose
//! protocol declares `eventual` consistency: compare-and-swap (replicas
//! accept writes independently, so no replica can compare against what the
//! others hold) and `linearizable` or `lease` reads (a replica only knows
//! what it has applied). Refusals change nothing, so they leave at once.

use synod_guest_sdk::{Consistency, PluginInfo, ReadLevel, Rejection};

use crate::state_machine::{CAS_UNDER_LWW, KvCommand};

/// The refusal of a write, if `info`'s consistency cannot honour it.
pub fn refuse_write(info: &PluginInfo, command: &[u8]) -> Option<Rejection> {
    if info.consistency != Consistency::Eventual {
        return None;
    }
    match postcard::from_bytes::<KvCommand>(command) {
        Ok(KvCommand::Cas { .. }) => Some(Rejection::Invalid(format!(
            "{} (protocol {})",
            CAS_UNDER_LWW, info.name
        ))),
        _ => None,
    }
}

/// The refusal of a read at `level`, if `info`'s consistency cannot
/// honour it.
pub fn refuse_read(info: &PluginInfo, level: ReadLevel) -> Option<Rejection> {
    if info.consistency != Consistency::Eventual || level == ReadLevel::Local {
        return None;
    }
    let level = match level {
        ReadLevel::Linearizable => "linearizable",
        ReadLevel::Lease => "lease",
        ReadLevel::Local => "local",
    };
    Some(Rejection::Invalid(format!(
        "{level} reads are not available on an eventually consistent protocol ({}): every replica accepts writes and ships them to the others asynchronously, so no replica knows it holds every acknowledged write; read with consistency=local",
        info.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_guest_sdk::Capabilities;

    fn info(consistency: Consistency) -> PluginInfo {
        PluginInfo {
            name: "p".into(),
            version: "1".into(),
            consistency,
            capabilities: Capabilities::default(),
        }
    }

    #[test]
    fn eventual_refuses_cas_and_strong_reads_only() {
        let cas = KvCommand::Cas {
            key: b"k".to_vec(),
            expected: None,
            new: None,
        }
        .encode();
        let put = KvCommand::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }
        .encode();
        let weak = info(Consistency::Eventual);
        assert!(
            matches!(refuse_write(&weak, &cas), Some(Rejection::Invalid(why)) if why.contains("compare-and-swap"))
        );
        assert_eq!(refuse_write(&weak, &put), None);
        assert!(
            matches!(refuse_read(&weak, ReadLevel::Linearizable), Some(Rejection::Invalid(why)) if why.contains("consistency=local"))
        );
        assert!(refuse_read(&weak, ReadLevel::Lease).is_some());
        assert_eq!(refuse_read(&weak, ReadLevel::Local), None);
        let strong = info(Consistency::Linearizable);
        assert_eq!(refuse_write(&strong, &cas), None);
        assert_eq!(refuse_read(&strong, ReadLevel::Linearizable), None);
    }
}
