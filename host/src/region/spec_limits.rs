//! Size limits of a region spec: a spec lives in the control plane's
//! record, which every node holds and every snapshot of it carries, so an
//! oversized one would cost every node forever.

use crate::region::RegionSpec;

/// Parameters a region spec may carry.
pub const REGION_PARAMS_MAX: usize = 64;
/// Bytes of one parameter name.
pub const REGION_PARAM_NAME_BYTES_MAX: usize = 128;
/// Bytes of all parameter names and values of one spec together.
pub const REGION_PARAMS_BYTES_MAX: usize = 64 * 1024;
/// Voters, learners and membership-target entries of one spec, each.
pub const REGION_MEMBERS_MAX: usize = 1024;

/// Why a region spec was refused: it is over a size limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecTooLarge {
    #[error("region name {name:?} is not 1..=64 characters of [A-Za-z0-9_-]")]
    Name { name: String },
    #[error("{count} params; the limit is {REGION_PARAMS_MAX}")]
    ParamCount { count: usize },
    #[error("param name of {bytes} bytes; the limit is {REGION_PARAM_NAME_BYTES_MAX}")]
    ParamName { bytes: usize },
    #[error("params hold {bytes} bytes; the limit is {REGION_PARAMS_BYTES_MAX}")]
    ParamBytes { bytes: usize },
    #[error("{count} {what}; the limit is {REGION_MEMBERS_MAX}")]
    Members { what: &'static str, count: usize },
}

impl SpecTooLarge {
    /// The API's error code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            SpecTooLarge::Name { .. } => "invalid_region_name",
            SpecTooLarge::ParamCount { .. } => "too_many_params",
            SpecTooLarge::ParamName { .. } | SpecTooLarge::ParamBytes { .. } => "params_too_large",
            SpecTooLarge::Members { .. } => "too_many_replicas",
        }
    }
}

/// Checks `params` against the size limits.
pub fn check_params<'a>(
    params: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Result<(), SpecTooLarge> {
    let count = params.len();
    if count > REGION_PARAMS_MAX {
        return Err(SpecTooLarge::ParamCount { count });
    }
    let mut bytes = 0;
    for (name, value) in params {
        if name.len() > REGION_PARAM_NAME_BYTES_MAX {
            return Err(SpecTooLarge::ParamName { bytes: name.len() });
        }
        bytes += name.len() + value.len();
    }
    if bytes > REGION_PARAMS_BYTES_MAX {
        return Err(SpecTooLarge::ParamBytes { bytes });
    }
    Ok(())
}

impl RegionSpec {
    /// Checks the spec against the size limits (name, params, members).
    pub fn check_size(&self) -> Result<(), SpecTooLarge> {
        if super::RegionName::new(&self.name).is_err() {
            return Err(SpecTooLarge::Name {
                name: self.name.chars().take(80).collect(),
            });
        }
        check_params(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        let target = self.membership_target.as_ref();
        for (what, count) in [
            ("voters", self.voters.len()),
            ("learners", self.learners.len()),
            ("target voters", target.map_or(0, |t| t.voters.len())),
            ("target learners", target.map_or(0, |t| t.learners.len())),
        ] {
            if count > REGION_MEMBERS_MAX {
                return Err(SpecTooLarge::Members { what, count });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::ProtocolRef;
    use synod_guest_sdk::NodeId;

    fn spec(name: &str, version: u64, voters: Vec<NodeId>) -> RegionSpec {
        RegionSpec {
            name: name.into(),
            protocol: ProtocolRef::Native {
                name: "standalone".into(),
            },
            params: vec![],
            voters,
            learners: vec![],
            epoch: 1,
            membership_target: None,
            version,
        }
    }

    #[test]
    fn oversized_specs_are_refused() {
        assert_eq!(spec("r", 1, vec![1]).check_size(), Ok(()));
        let mut big = spec("r", 1, vec![1]);
        big.params = vec![("p".into(), "x".repeat(REGION_PARAMS_BYTES_MAX))];
        assert!(matches!(
            big.check_size(),
            Err(SpecTooLarge::ParamBytes { .. })
        ));
        big.params = (0..=REGION_PARAMS_MAX)
            .map(|i| (format!("p{i}"), String::new()))
            .collect();
        assert!(matches!(
            big.check_size(),
            Err(SpecTooLarge::ParamCount { .. })
        ));
        big.params = vec![];
        big.name = "x".repeat(65);
        assert!(matches!(big.check_size(), Err(SpecTooLarge::Name { .. })));
        let mut crowded = spec("r", 1, vec![1; REGION_MEMBERS_MAX + 1]);
        assert!(crowded.check_size().is_err());
        crowded.voters = vec![1];
        assert_eq!(crowded.check_size(), Ok(()));
    }
}
