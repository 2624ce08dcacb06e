use super::Trace;
use super::model::{Fate, MarkKind, NodeChange, OpOutcome, Sending};
use crate::checker::{OpInput, OpOutput, Operation, UNKNOWN_RETURN};

fn sending(from: u64, to: u64, bytes: u64) -> Sending {
    Sending {
        from,
        to,
        bytes,
        duplicate: false,
    }
}

fn cas(output: OpOutput) -> Operation {
    Operation {
        client: 1,
        key: "k2".into(),
        call: 10,
        ret: UNKNOWN_RETURN,
        input: OpInput::Cas {
            expected: Some("a".into()),
            new: Some("b".into()),
        },
        output,
    }
}

/// Goal: formatted events stream into the hash without being built when
/// the trace is dropped, and hash exactly as the built text would (replay
/// hashes do not change with the optimisation).
#[test]
fn formatted_events_hash_as_their_text_kept_or_not() {
    let mut text = Trace::new(false);
    let mut streamed = Trace::new(false);
    let mut kept = Trace::new(true);
    let (to, request) = (3u64, 0x1_0000_002au64);
    text.record(7, 1, format!("→ n{to} lost"));
    text.record(8, 2, format!("apply put {request:#x}"));
    for trace in [&mut streamed, &mut kept] {
        trace.record_args(7, 1, format_args!("→ n{to} lost"));
        trace.record_args(8, 2, format_args!("apply put {request:#x}"));
    }
    assert_eq!(streamed.hash(), text.hash());
    assert_eq!(kept.hash(), text.hash());
    assert_eq!(kept.events()[1].what, "apply put 0x10000002a");
    let mut other = Trace::new(false);
    other.record_args(7, 1, format_args!("→ n{} lost", to + 1));
    assert_ne!(other.hash(), Trace::new(false).hash());
    assert_ne!(other.hash(), {
        let mut first = Trace::new(false);
        first.record(7, 1, format!("→ n{to} lost"));
        first.hash()
    });
}

#[test]
fn an_untraced_run_keeps_nothing_but_hashes_the_same() {
    let mut kept = Trace::new(true);
    let mut dropped = Trace::new(false);
    for trace in [&mut kept, &mut dropped] {
        let id = trace.send(5, sending(1, 2, 40), Fate::InFlight, || "Append".into());
        trace.arrived(9, id, Fate::Delivered);
        trace.node(11, 2, NodeChange::Pause);
        trace.role(12, 1, "leader", 3, 1);
        trace.plugin_log(13, 1, "info: hello".into());
        trace.mark(14, 0, MarkKind::Violation, "bad".into());
    }
    assert_eq!(kept.hash(), dropped.hash());
    assert!(dropped.into_recorded().is_none());
    let model = kept.model();
    assert_eq!(model.messages.len(), 1);
    assert_eq!(model.messages[0].arrived, Some(9));
    assert_eq!(model.messages[0].fate, Fate::Delivered);
    assert_eq!(kept.events().len(), 2, "the log line and the violation");
    assert!(kept.to_text().contains("VIOLATION: bad"));
    assert!(kept.to_text().contains("plugin info: hello"));
}

#[test]
fn a_send_is_described_only_when_kept() {
    let mut trace = Trace::new(false);
    let id = trace.send(1, sending(1, 2, 3), Fate::Lost, || {
        panic!("kinds are not worked out for an untraced run")
    });
    assert_eq!(id, 0);
    trace.arrived(2, id, Fate::Delivered);
}

#[test]
fn roles_keep_changes_only_and_a_reboot_reports_afresh() {
    let mut trace = Trace::new(true);
    trace.role(1, 1, "follower", 1, 1);
    trace.role(2, 1, "follower", 1, 1);
    trace.role(3, 1, "leader", 2, 1);
    trace.node(4, 1, NodeChange::Crash { why: String::new() });
    trace.node(
        5,
        1,
        NodeChange::Boot {
            epoch: 1,
            recovering: true,
        },
    );
    trace.role(6, 1, "leader", 2, 1);
    let times: Vec<u64> = trace.model().roles.iter().map(|r| r.nanos).collect();
    assert_eq!(times, vec![1, 3, 6]);
}

#[test]
fn partitions_close_when_healed_or_replaced() {
    let mut trace = Trace::new(true);
    trace.partition(1, &[1], &[2, 3], false);
    trace.partition(5, &[2], &[1, 3], true);
    trace.healed(9);
    trace.healed(12);
    let ends: Vec<Option<u64>> = trace.model().partitions.iter().map(|p| p.end).collect();
    assert_eq!(ends, vec![Some(5), Some(9)]);
}

#[test]
fn client_outcomes_follow_what_came_back() {
    let mut trace = Trace::new(true);
    trace.client_call(10, 0, 2, &cas(OpOutput::Unknown));
    let failed = cas(OpOutput::Cas {
        succeeded: false,
        current: Some("z".into()),
    });
    trace.client_return(20, 0, &failed, OpOutcome::Ok, "");
    trace.client_call(30, 1, 3, &cas(OpOutput::Unknown));
    trace.client_return(
        40,
        1,
        &cas(OpOutput::Unknown),
        OpOutcome::Unknown,
        "timeout",
    );
    let ops = &trace.model().ops;
    assert_eq!(ops[0].what, "cas k2 a → b");
    assert_eq!(ops[0].outcome, OpOutcome::Failed);
    assert_eq!(ops[0].result, "cas failed (current z)");
    assert_eq!((ops[1].ret, ops[1].outcome), (Some(40), OpOutcome::Unknown));
    assert_eq!(ops[1].result, "timeout");
}
