//! Crash points for tests: a node started with `SYNOD_FAILPOINTS=a,b`
//! aborts the process (as kill -9 would) when it reaches point `a` or `b`.
//! Unset, a point costs one load of a cached flag.
//!
//! Points: `swap-after-begin` (the swap is recorded, nothing else),
//! `swap-after-seal-step` (the coordinator recorded the seal step),
//! `swap-after-sealed` (this host sealed, before reporting it),
//! `swap-after-commit` (the coordinator recorded the new epoch),
//! `swap-before-enter` (this host is about to enter the new epoch),
//! `create-after-record`, `delete-after-record`.

use std::sync::OnceLock;

fn armed() -> &'static Vec<String> {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("SYNOD_FAILPOINTS")
            .map(|v| {
                v.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Aborts the process if `point` is armed.
pub fn hit(point: &str) {
    if armed().iter().any(|p| p == point) {
        eprintln!("failpoint {point} reached: aborting");
        std::process::abort();
    }
}
