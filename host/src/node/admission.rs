//! Admission: how many region replicas this node takes, and the instance
//! pool sized for them.
//!
//! The node announces `regions_max` to the control plane, whose record
//! refuses (code `node_full`) any command that would give a node more
//! replicas than it announced. So a region is refused at creation, never
//! created and then starved of an instance, and every replica a node has
//! journaled fits its pool after a restart.

use super::NodeConfig;
use crate::engine::SandboxLimits;

/// The number of region replicas `config` admits.
pub fn regions_max(config: &NodeConfig) -> u32 {
    config.regions_max.unwrap_or(config.limits.instances_max)
}

/// The sandbox limits the engine is built with: its instance pool holds
/// every admitted replica and every replica recovered from the journal
/// (`recovered`, which may exceed a lowered `regions_max`).
pub fn engine_limits(config: &NodeConfig, recovered: usize) -> SandboxLimits {
    let recovered = u32::try_from(recovered).unwrap_or(u32::MAX);
    let mut limits = config.limits.clone();
    limits.instances_max = limits.instances_max.max(regions_max(config)).max(recovered);
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_holds_every_admitted_and_recovered_replica() {
        let mut config = NodeConfig::new(1, "/nonexistent".into());
        config.limits.instances_max = 16;
        assert_eq!(regions_max(&config), 16);
        assert_eq!(engine_limits(&config, 3).instances_max, 16);
        config.regions_max = Some(40);
        assert_eq!(engine_limits(&config, 3).instances_max, 40);
        assert_eq!(engine_limits(&config, 50).instances_max, 50);
    }
}
