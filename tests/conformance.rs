//! Every protocol plugin runs the one conformance suite
//! (`synod::sim::conformance`): output commit, recovery, seal, snapshots
//! and membership where declared. A new protocol joins with one line.

use synod::sim::conformance::{ConformanceReport, Suite, assert_conforms};
use synod::sim::harness::Harness;

fn conforms(harness: Harness) -> ConformanceReport {
    let report = assert_conforms(&harness);
    println!("{report}");
    report
}

#[test]
fn standalone_native() {
    conforms(Harness::native::<synod_plugin_standalone::Standalone>());
}

#[test]
fn raft_native() {
    conforms(Harness::native::<synod_plugin_raft::Raft>().nodes(3));
}

/// The built component, in the sandbox, as a node runs it.
#[test]
fn raft_component() {
    let harness =
        Harness::wasm_file(synod_plugin_artifacts::RAFT_PATH).expect("the raft component loads");
    conforms(harness.nodes(3));
}

/// EPaxos on shorter runs and fewer seeds: without compaction of executed
/// instances its dependency graphs make each crash-heavy seed dearer.
fn epaxos_suite(harness: Harness) -> ConformanceReport {
    let harness = harness.nodes(3).seconds(3.0, 3.0).workload(3, 8);
    let report = Suite::new(&harness).seeds(1..=2).run();
    println!("{report}");
    assert!(report.passed(), "{report}");
    report
}

#[test]
fn epaxos_native() {
    epaxos_suite(Harness::native::<synod_plugin_epaxos::Epaxos>());
}

/// The built EPaxos component, in the sandbox.
#[test]
fn epaxos_component() {
    let harness = Harness::wasm_file(synod_plugin_artifacts::EPAXOS_PATH)
        .expect("the epaxos component loads");
    epaxos_suite(harness);
}
