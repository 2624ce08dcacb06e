//! Linearizability checking of key-value histories.
//!
//! Algorithm: Wing & Gong's search with Lowe's just-in-time linearisation and
//! Porcupine-style memoisation. Call and return events are sorted into one
//! doubly linked list. Walking from the head, a call may be linearised now
//! (its op is applied to the model and lifted out of the list together with
//! its return); reaching a return means that op was not linearised in time,
//! so the search backtracks. Visited (linearised-set, model-state) pairs are
//! cached, since reaching the same pair again cannot lead anywhere new.
//!
//! Keys are independent registers, and linearizability is compositional, so
//! each key is searched on its own; this is what keeps the search small.
//!
//! Operations with an unknown outcome (`ret == u64::MAX`, output `Unknown`)
//! get no return event: they never force the search to backtrack, may be
//! linearised at any point after their call, and the history is accepted as
//! soon as every operation with an observed outcome is linearised (taking the
//! remaining unknown ones to have never happened, or to happen later).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::history::{HistoryError, OpInput, OpOutput, Operation, fmt_value, validate_history};

/// Default for [`CheckOptions::max_states`]: a few million cached
/// configurations is seconds of work and a few hundred MB at worst.
pub const DEFAULT_MAX_STATES: u64 = 2_000_000;

/// Bounds on the search, so that a pathological history yields
/// [`Outcome::Unknown`] instead of hanging the test suite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOptions {
    /// Maximum distinct configurations (linearised set + state) explored per key.
    pub max_states: u64,
    /// Optional wall-clock budget for the whole check (all keys together).
    /// Off by default because it makes results depend on machine speed.
    pub time_limit: Option<Duration>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            max_states: DEFAULT_MAX_STATES,
            time_limit: None,
        }
    }
}

/// Result of a check. `Unknown` (search bound hit, or malformed history) is
/// deliberately distinct from `Violation`: it proves nothing either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Linearizable,
    Violation(Violation),
    Unknown { key: String, reason: String },
}

impl Outcome {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Outcome::Linearizable)
    }

    pub fn is_violation(&self) -> bool {
        matches!(self, Outcome::Violation(_))
    }

    pub fn violation(&self) -> Option<&Violation> {
        match self {
            Outcome::Violation(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Linearizable => write!(f, "linearizable"),
            Outcome::Violation(v) => write!(f, "{v}"),
            Outcome::Unknown { key, reason } => {
                write!(
                    f,
                    "could not decide linearizability of key {key:?}: {reason}"
                )
            }
        }
    }
}

/// Evidence that one key's history admits no linearisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub key: String,
    /// All of the key's operations, sorted by call (then return) time; the
    /// explanation refers to them as `#index`.
    pub operations: Vec<Operation>,
    /// The longest linearisable prefix found and the operation that could not
    /// be placed after it.
    pub explanation: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "linearizability violation on key {:?}\n{}",
            self.key, self.explanation
        )
    }
}

/// Checks the whole history, key by key (in key order).
///
/// Malformed operations (`ret < call`, an `Unknown` output with a finite
/// return time, an output that does not answer the input) are reported as
/// [`Outcome::Unknown`] with the reason, before any search, because a
/// recording bug must never be read as a consistency verdict. Use
/// [`validate_history`] for a typed error.
///
/// A violation on any key wins; otherwise the first undecided key is reported.
pub fn check_linearizable(history: &[Operation], options: &CheckOptions) -> Outcome {
    if let Err(e) = validate_history(history) {
        return invalid(&e);
    }
    let deadline = deadline(options);
    let mut undecided = None;
    for (key, ops) in partition_by_key(history) {
        match check_key(key, ops, options, deadline) {
            Outcome::Linearizable => {}
            violation @ Outcome::Violation(_) => return violation,
            unknown @ Outcome::Unknown { .. } => {
                undecided.get_or_insert(unknown);
            }
        }
    }
    undecided.unwrap_or(Outcome::Linearizable)
}

/// Like [`check_linearizable`] but reports every key, for dashboards and for
/// seeing whether a violation is isolated.
pub fn check_each_key(history: &[Operation], options: &CheckOptions) -> BTreeMap<String, Outcome> {
    let deadline = deadline(options);
    partition_by_key(history)
        .into_iter()
        .map(|(key, ops)| (key.to_string(), check_key(key, ops, options, deadline)))
        .collect()
}

fn invalid(e: &HistoryError) -> Outcome {
    Outcome::Unknown {
        key: e.key().unwrap_or_default().to_string(),
        reason: format!("malformed history: {e}"),
    }
}

fn deadline(options: &CheckOptions) -> Option<Instant> {
    options
        .time_limit
        .and_then(|limit| Instant::now().checked_add(limit))
}

fn partition_by_key(history: &[Operation]) -> BTreeMap<&str, Vec<&Operation>> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    by_key
}

fn check_key(
    key: &str,
    ops: Vec<&Operation>,
    options: &CheckOptions,
    deadline: Option<Instant>,
) -> Outcome {
    let mut sorted: Vec<Operation> = ops.into_iter().cloned().collect();
    sorted.sort_by_key(|op| (op.call, op.ret));

    let mut interner = Interner::default();
    let mut key_ops = Vec::with_capacity(sorted.len());
    for (index, op) in sorted.iter().enumerate() {
        match Action::from_operation(op, &mut interner) {
            Err(e) => return invalid(&e),
            Ok(None) => {}
            Ok(Some(action)) => key_ops.push(KeyOp {
                index,
                call: op.call,
                ret: op.ret,
                required: !op.is_outcome_unknown(),
                action,
            }),
        }
    }

    match Search::new(&key_ops).run(options, deadline) {
        SearchResult::Linearizable => Outcome::Linearizable,
        SearchResult::GaveUp(reason) => Outcome::Unknown {
            key: key.to_string(),
            reason,
        },
        SearchResult::NotLinearizable { best_prefix } => {
            let explanation = explain(&sorted, &key_ops, &best_prefix);
            Outcome::Violation(Violation {
                key: key.to_string(),
                operations: sorted,
                explanation,
            })
        }
    }
}

/// Model state id for an absent key; value ids start at 1.
const ABSENT: u64 = 0;

/// Maps the key's distinct values to small integers so states are cheap to
/// compare, copy and cache.
#[derive(Default)]
struct Interner<'a> {
    ids: HashMap<&'a str, u64>,
}

impl<'a> Interner<'a> {
    fn id(&mut self, value: &'a Option<String>) -> u64 {
        match value {
            None => ABSENT,
            Some(v) => self.id_of(v),
        }
    }

    fn id_of(&mut self, value: &'a str) -> u64 {
        let next = self.ids.len() as u64 + 1;
        *self.ids.entry(value).or_insert(next)
    }
}

/// An operation's input and observed output fused into one transition
/// relation on interned states.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// Output `Ok` or unknown: either way the value is written.
    Put {
        value: u64,
    },
    Get {
        seen: u64,
    },
    /// `existed: None` means unknown outcome.
    Delete {
        existed: Option<bool>,
    },
    CasSucceeded {
        expected: u64,
        new: u64,
    },
    CasFailed {
        expected: u64,
        current: u64,
    },
    /// Unobserved CAS: if it happens, its effect still depends on the state.
    CasUnknown {
        expected: u64,
        new: u64,
    },
}

impl Action {
    /// `Ok(None)` for an unobserved read, which cannot affect anything.
    fn from_operation<'a>(
        op: &'a Operation,
        interner: &mut Interner<'a>,
    ) -> Result<Option<Action>, HistoryError> {
        op.validate()?;
        let action = match (&op.input, &op.output) {
            (OpInput::Get, OpOutput::Unknown) => return Ok(None),
            (OpInput::Put { value }, OpOutput::Ok | OpOutput::Unknown) => Action::Put {
                value: interner.id_of(value),
            },
            (OpInput::Get, OpOutput::Value(seen)) => Action::Get {
                seen: interner.id(seen),
            },
            (OpInput::Delete, OpOutput::Deleted { existed }) => Action::Delete {
                existed: Some(*existed),
            },
            (OpInput::Delete, OpOutput::Unknown) => Action::Delete { existed: None },
            (
                OpInput::Cas { expected, new },
                OpOutput::Cas {
                    succeeded: true, ..
                },
            ) => Action::CasSucceeded {
                expected: interner.id(expected),
                new: interner.id(new),
            },
            (
                OpInput::Cas { expected, .. },
                OpOutput::Cas {
                    succeeded: false,
                    current,
                },
            ) => Action::CasFailed {
                expected: interner.id(expected),
                current: interner.id(current),
            },
            (OpInput::Cas { expected, new }, OpOutput::Unknown) => Action::CasUnknown {
                expected: interner.id(expected),
                new: interner.id(new),
            },
            _ => {
                return Err(HistoryError::MismatchedOutput {
                    client: op.client,
                    key: op.key.clone(),
                    input: op.input.to_string(),
                    output: op.output.to_string(),
                });
            }
        };
        Ok(Some(action))
    }

    /// The state after taking effect in `state`, or `None` if the observed
    /// output is impossible there.
    fn step(self, state: u64) -> Option<u64> {
        match self {
            Action::Put { value } => Some(value),
            Action::Get { seen } => (seen == state).then_some(state),
            Action::Delete { existed: None } => Some(ABSENT),
            Action::Delete {
                existed: Some(existed),
            } => (existed == (state != ABSENT)).then_some(ABSENT),
            Action::CasSucceeded { expected, new } => (state == expected).then_some(new),
            Action::CasFailed { expected, current } => {
                (state != expected && state == current).then_some(state)
            }
            Action::CasUnknown { expected, new } => {
                Some(if state == expected { new } else { state })
            }
        }
    }
}

/// One operation of the key being searched.
struct KeyOp {
    /// Position in the key's call-sorted operation list (for reporting).
    index: usize,
    call: u64,
    ret: u64,
    /// False for unknown-outcome writes, which may be skipped forever.
    required: bool,
    action: Action,
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// Node of the event list; `Copy` so lifting can read neighbours by value.
#[derive(Debug, Clone, Copy)]
struct Node {
    prev: usize,
    next: usize,
    op: usize,
    is_call: bool,
}

enum SearchResult {
    Linearizable,
    NotLinearizable { best_prefix: Vec<usize> },
    GaveUp(String),
}

/// Cache of visited configurations: linearised bitset words followed by the
/// state word, hashed with a cheap non-cryptographic hasher.
type Cache = HashSet<Box<[u64]>, BuildHasherDefault<WordHasher>>;

/// Doubly linked event list plus the per-op handles into it.
struct Search<'a> {
    ops: &'a [KeyOp],
    nodes: Vec<Node>,
    /// Return node of each op, `NIL` for ops that never return.
    ret_node: Vec<usize>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [KeyOp]) -> Self {
        // Calls sort before returns at equal times: such ops overlap, which is
        // the permissive reading of equal timestamps (as in Porcupine).
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, false, i));
            if op.required {
                events.push((op.ret, true, i));
            }
        }
        events.sort_unstable();

        let mut nodes = Vec::with_capacity(events.len() + 1);
        nodes.push(Node {
            prev: NIL,
            next: if events.is_empty() { NIL } else { 1 },
            op: NIL,
            is_call: false,
        });
        let mut ret_node = vec![NIL; ops.len()];
        for (pos, &(_, is_return, op)) in events.iter().enumerate() {
            let id = pos + 1;
            nodes.push(Node {
                prev: pos,
                next: if id < events.len() { id + 1 } else { NIL },
                op,
                is_call: !is_return,
            });
            if is_return {
                ret_node[op] = id;
            }
        }
        Self {
            ops,
            nodes,
            ret_node,
        }
    }

    fn unlink(&mut self, id: usize) {
        let n = self.nodes[id];
        self.nodes[n.prev].next = n.next;
        if n.next != NIL {
            self.nodes[n.next].prev = n.prev;
        }
    }

    fn relink(&mut self, id: usize) {
        let n = self.nodes[id];
        self.nodes[n.prev].next = id;
        if n.next != NIL {
            self.nodes[n.next].prev = id;
        }
    }

    /// Removes a linearised call and its return (dancing-links style, so
    /// [`Search::unlift`] restores it exactly when undone in LIFO order).
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        let ret = self.ret_node[self.nodes[call].op];
        if ret != NIL {
            self.unlink(ret);
        }
    }

    fn unlift(&mut self, call: usize) {
        let ret = self.ret_node[self.nodes[call].op];
        if ret != NIL {
            self.relink(ret);
        }
        self.relink(call);
    }

    fn run(&mut self, options: &CheckOptions, deadline: Option<Instant>) -> SearchResult {
        let words = self.ops.len().div_ceil(64);
        // `config[..words]` is the linearised bitset, `config[words]` the state.
        let mut config = vec![0u64; words + 1];
        let mut state = ABSENT;
        config[words] = state;
        let mut cache = Cache::default();
        // (call node linearised, state before it) for backtracking.
        let mut stack: Vec<(usize, u64)> = Vec::new();
        let mut best_prefix: Vec<usize> = Vec::new();
        let mut required_left = self.ops.iter().filter(|op| op.required).count();
        let mut iterations: u64 = 0;
        let mut entry = self.nodes[HEAD].next;

        loop {
            if required_left == 0 {
                return SearchResult::Linearizable;
            }
            iterations += 1;
            if iterations.is_multiple_of(4096) && deadline.is_some_and(|d| Instant::now() >= d) {
                return SearchResult::GaveUp(format!(
                    "time limit reached after exploring {} configurations \
                     (longest linearizable prefix {} of {} operations)",
                    cache.len(),
                    best_prefix.len(),
                    self.ops.len()
                ));
            }

            if entry != NIL && self.nodes[entry].is_call {
                let op = self.nodes[entry].op;
                if let Some(next_state) = self.ops[op].action.step(state) {
                    let (word, bit) = (op / 64, 1u64 << (op % 64));
                    config[word] |= bit;
                    config[words] = next_state;
                    if !cache.contains(&config[..]) {
                        if cache.len() as u64 >= options.max_states {
                            return SearchResult::GaveUp(format!(
                                "search bound of {} configurations exceeded \
                                 (longest linearizable prefix {} of {} operations); \
                                 the history is too concurrent to check exhaustively",
                                options.max_states,
                                best_prefix.len(),
                                self.ops.len()
                            ));
                        }
                        cache.insert(config.clone().into_boxed_slice());
                        stack.push((entry, state));
                        state = next_state;
                        self.lift(entry);
                        if self.ops[op].required {
                            required_left -= 1;
                        }
                        if stack.len() > best_prefix.len() {
                            best_prefix = stack.iter().map(|&(n, _)| self.nodes[n].op).collect();
                        }
                        entry = self.nodes[HEAD].next;
                        continue;
                    }
                    config[word] &= !bit;
                    config[words] = state;
                }
                entry = self.nodes[entry].next;
                continue;
            }

            // A return (or the end) reached with its op still pending: undo
            // the most recent linearisation and try the next candidate.
            let Some((call, previous_state)) = stack.pop() else {
                return SearchResult::NotLinearizable { best_prefix };
            };
            let op = self.nodes[call].op;
            config[op / 64] &= !(1u64 << (op % 64));
            state = previous_state;
            config[words] = state;
            self.unlift(call);
            if self.ops[op].required {
                required_left += 1;
            }
            entry = self.nodes[call].next;
        }
    }
}

/// What a correct sequential store would do: (new state, output).
fn sequential_apply(state: &Option<String>, input: &OpInput) -> (Option<String>, OpOutput) {
    match input {
        OpInput::Put { value } => (Some(value.clone()), OpOutput::Ok),
        OpInput::Get => (state.clone(), OpOutput::Value(state.clone())),
        OpInput::Delete => (
            None,
            OpOutput::Deleted {
                existed: state.is_some(),
            },
        ),
        OpInput::Cas { expected, new } if state == expected => (
            new.clone(),
            OpOutput::Cas {
                succeeded: true,
                current: None,
            },
        ),
        OpInput::Cas { .. } => (
            state.clone(),
            OpOutput::Cas {
                succeeded: false,
                current: state.clone(),
            },
        ),
    }
}

/// Prefix lines shown in full; longer prefixes show only their tail, since
/// the interesting part is just before the failure.
const MAX_PREFIX_LINES: usize = 30;

fn explain(sorted: &[Operation], key_ops: &[KeyOp], best_prefix: &[usize]) -> String {
    use std::fmt::Write as _;

    let mut out = String::new();
    let required = key_ops.iter().filter(|op| op.required).count();
    let _ = writeln!(
        out,
        "No linearization exists. Longest linearizable prefix: {} operation(s) \
         ({} of the key's operations have an observed outcome and must all be placed).",
        best_prefix.len(),
        required
    );

    let skip = best_prefix.len().saturating_sub(MAX_PREFIX_LINES);
    let mut state: Option<String> = None;
    for (position, &op) in best_prefix.iter().enumerate() {
        let index = key_ops[op].index;
        let operation = &sorted[index];
        state = sequential_apply(&state, &operation.input).0;
        if position + 1 == skip {
            let _ = writeln!(
                out,
                "  ... {skip} earlier operation(s) omitted; state then: {}",
                fmt_value(&state)
            );
        } else if position >= skip {
            let _ = writeln!(
                out,
                "  {:>3}. #{index} {operation}  => state {}",
                position + 1,
                fmt_value(&state)
            );
        }
    }
    let _ = writeln!(out, "State after the prefix: {}", fmt_value(&state));

    // The earliest-returning observed op left out is the one whose return
    // event forced the search back.
    let in_prefix: HashSet<usize> = best_prefix.iter().copied().collect();
    let stuck = key_ops
        .iter()
        .enumerate()
        .filter(|(i, op)| op.required && !in_prefix.contains(i))
        .min_by_key(|(_, op)| (op.ret, op.call, op.index));
    match stuck {
        Some((_, op)) => {
            let operation = &sorted[op.index];
            let would = sequential_apply(&state, &operation.input).1;
            let _ = write!(
                out,
                "Could not place #{} {operation}: it must take effect before its return \
                 at {}, but applied after this prefix it would return {would}, not {}; \
                 no other order consistent with real time works either.",
                op.index, op.ret, operation.output
            );
        }
        None => {
            let _ = write!(
                out,
                "No single operation could be identified as the culprit."
            );
        }
    }
    out
}

/// FxHash-style word mixer with a murmur3 finaliser; the finaliser matters
/// because bitsets differing only in high bits would otherwise collide in
/// the table's low index bits.
#[derive(Default)]
struct WordHasher {
    hash: u64,
}

impl WordHasher {
    fn mix(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.mix(word);
    }

    fn write_usize(&mut self, word: usize) {
        self.mix(word as u64);
    }

    fn finish(&self) -> u64 {
        let mut z = self.hash;
        z ^= z >> 33;
        z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
        z ^= z >> 33;
        z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        z ^ (z >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::history::{History, UNKNOWN_RETURN};

    fn s(v: &str) -> String {
        v.to_string()
    }

    fn opt(v: Option<&str>) -> Option<String> {
        v.map(s)
    }

    fn op(
        client: u64,
        key: &str,
        call: u64,
        ret: u64,
        input: OpInput,
        output: OpOutput,
    ) -> Operation {
        Operation {
            client,
            key: s(key),
            call,
            ret,
            input,
            output,
        }
    }

    fn put(client: u64, key: &str, call: u64, ret: u64, value: &str) -> Operation {
        op(
            client,
            key,
            call,
            ret,
            OpInput::Put { value: s(value) },
            OpOutput::Ok,
        )
    }

    fn get(client: u64, key: &str, call: u64, ret: u64, seen: Option<&str>) -> Operation {
        op(
            client,
            key,
            call,
            ret,
            OpInput::Get,
            OpOutput::Value(opt(seen)),
        )
    }

    fn del(client: u64, key: &str, call: u64, ret: u64, existed: bool) -> Operation {
        op(
            client,
            key,
            call,
            ret,
            OpInput::Delete,
            OpOutput::Deleted { existed },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn cas(
        client: u64,
        key: &str,
        call: u64,
        ret: u64,
        expected: Option<&str>,
        new: Option<&str>,
        succeeded: bool,
        current: Option<&str>,
    ) -> Operation {
        op(
            client,
            key,
            call,
            ret,
            OpInput::Cas {
                expected: opt(expected),
                new: opt(new),
            },
            OpOutput::Cas {
                succeeded,
                current: opt(current),
            },
        )
    }

    fn unknown(client: u64, key: &str, call: u64, input: OpInput) -> Operation {
        op(client, key, call, UNKNOWN_RETURN, input, OpOutput::Unknown)
    }

    fn check(history: &[Operation]) -> Outcome {
        check_linearizable(history, &CheckOptions::default())
    }

    #[track_caller]
    fn assert_linearizable(history: &[Operation]) {
        let outcome = check(history);
        assert!(
            outcome.is_linearizable(),
            "expected linearizable, got {outcome}"
        );
    }

    #[track_caller]
    fn assert_violation(history: &[Operation], key: &str) -> Violation {
        match check(history) {
            Outcome::Violation(v) => {
                assert_eq!(v.key, key, "violation on the wrong key: {v}");
                v
            }
            other => panic!("expected a violation on {key:?}, got {other}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&[]);
    }

    #[test]
    fn sequential_history_is_linearizable() {
        assert_linearizable(&[
            get(1, "x", 0, 1, None),
            put(1, "x", 2, 3, "a"),
            get(2, "x", 4, 5, Some("a")),
            put(2, "x", 6, 7, "b"),
            get(1, "x", 8, 9, Some("b")),
            del(1, "x", 10, 11, true),
            get(3, "x", 12, 13, None),
        ]);
    }

    #[test]
    fn sequential_history_with_wrong_read_is_violation() {
        let v = assert_violation(&[put(1, "x", 0, 1, "a"), get(1, "x", 2, 3, Some("b"))], "x");
        assert!(v.explanation.contains("#1"), "{}", v.explanation);
    }

    #[test]
    fn concurrent_writes_either_order() {
        // Two overlapping puts; later reads may see either one, as long as
        // they agree with a single order.
        let writes = [put(1, "x", 0, 10, "a"), put(2, "x", 5, 15, "b")];
        for last in ["a", "b"] {
            let mut h = writes.to_vec();
            h.push(get(3, "x", 20, 21, Some(last)));
            h.push(get(1, "x", 22, 23, Some(last)));
            assert_linearizable(&h);
        }
        // But two sequential reads cannot see both orders.
        let mut h = writes.to_vec();
        h.push(get(3, "x", 20, 21, Some("a")));
        h.push(get(1, "x", 22, 23, Some("b")));
        assert_violation(&h, "x");
    }

    #[test]
    fn stale_read_is_violation_naming_the_key() {
        let v = assert_violation(
            &[
                put(1, "x", 0, 10, "1"),
                put(2, "x", 20, 30, "2"),
                get(3, "x", 40, 50, Some("1")),
            ],
            "x",
        );
        eprintln!("{v}");
        assert_eq!(v.operations.len(), 3);
        assert!(
            v.explanation.contains("Longest linearizable prefix: 2"),
            "{}",
            v.explanation
        );
        assert!(
            v.explanation.contains("Could not place #2 client 3 get()"),
            "{}",
            v.explanation
        );
        assert!(
            v.explanation.contains("would return \"2\", not \"1\""),
            "{}",
            v.explanation
        );
    }

    #[test]
    fn read_concurrent_with_write_may_see_old_or_new() {
        for seen in [Some("old"), Some("new")] {
            assert_linearizable(&[
                put(1, "x", 0, 1, "old"),
                put(1, "x", 10, 20, "new"),
                get(2, "x", 12, 18, seen),
            ]);
        }
        // Absent before any write is also "old".
        assert_linearizable(&[put(1, "x", 10, 20, "new"), get(2, "x", 5, 15, None)]);
    }

    #[test]
    fn new_then_old_reads_during_one_write_is_violation() {
        let base = [put(1, "x", 0, 1, "old"), put(1, "x", 10, 100, "new")];
        let mut h = base.to_vec();
        h.push(get(2, "x", 20, 30, Some("new")));
        h.push(get(3, "x", 40, 50, Some("old")));
        assert_violation(&h, "x");
        // Old then new is fine, and so is new-then-old if the reads overlap.
        let mut ok = base.to_vec();
        ok.push(get(2, "x", 20, 30, Some("old")));
        ok.push(get(3, "x", 40, 50, Some("new")));
        assert_linearizable(&ok);
        let mut overlapping = base.to_vec();
        overlapping.push(get(2, "x", 20, 45, Some("new")));
        overlapping.push(get(3, "x", 40, 50, Some("old")));
        assert_linearizable(&overlapping);
    }

    #[test]
    fn cas_consistent_with_state() {
        assert_linearizable(&[
            cas(1, "x", 0, 1, None, Some("a"), true, None),
            cas(2, "x", 2, 3, None, Some("b"), false, Some("a")),
            cas(1, "x", 4, 5, Some("a"), Some("b"), true, None),
            cas(2, "x", 6, 7, Some("a"), Some("c"), false, Some("b")),
            get(3, "x", 8, 9, Some("b")),
            cas(3, "x", 10, 11, Some("b"), None, true, None),
            get(3, "x", 12, 13, None),
        ]);
        // Two concurrent CASes from the same expected value: one wins.
        assert_linearizable(&[
            put(1, "x", 0, 1, "v0"),
            cas(2, "x", 5, 20, Some("v0"), Some("v2"), false, Some("v3")),
            cas(3, "x", 6, 19, Some("v0"), Some("v3"), true, None),
            get(1, "x", 30, 31, Some("v3")),
        ]);
    }

    #[test]
    fn cas_success_with_impossible_expected_is_violation() {
        // The key holds "b" for the CAS's whole interval, yet it claims to
        // have swapped from "a".
        assert_violation(
            &[
                put(1, "x", 0, 1, "a"),
                put(1, "x", 2, 3, "b"),
                cas(2, "x", 10, 20, Some("a"), Some("c"), true, None),
            ],
            "x",
        );
        // A CAS failure must report a current value that differs from
        // `expected` and that really was current.
        assert_violation(
            &[
                put(1, "x", 0, 1, "a"),
                cas(2, "x", 10, 20, Some("a"), Some("c"), false, Some("a")),
            ],
            "x",
        );
        assert_violation(
            &[
                put(1, "x", 0, 1, "a"),
                cas(2, "x", 10, 20, Some("z"), Some("c"), false, Some("q")),
            ],
            "x",
        );
        // Expecting absence when the key exists cannot succeed.
        assert_violation(
            &[
                put(1, "x", 0, 1, "a"),
                cas(2, "x", 10, 20, None, Some("c"), true, None),
            ],
            "x",
        );
    }

    #[test]
    fn unknown_outcome_write_may_or_may_not_take_effect() {
        let base = [
            put(1, "x", 0, 1, "old"),
            unknown(2, "x", 10, OpInput::Put { value: s("new") }),
        ];
        for seen in ["old", "new"] {
            let mut h = base.to_vec();
            h.push(get(3, "x", 100, 110, Some(seen)));
            h.push(get(3, "x", 120, 130, Some(seen)));
            assert_linearizable(&h);
        }
        // It may take effect long after the client gave up: old, then new.
        let mut late = base.to_vec();
        late.push(get(3, "x", 100, 110, Some("old")));
        late.push(get(3, "x", 120, 130, Some("new")));
        assert_linearizable(&late);
        // It cannot take effect before its call.
        let mut early = base.to_vec();
        early.push(get(3, "x", 2, 5, Some("new")));
        assert_violation(&early, "x");
    }

    #[test]
    fn unknown_outcome_write_new_then_old_is_violation() {
        assert_violation(
            &[
                put(1, "x", 0, 1, "old"),
                unknown(2, "x", 10, OpInput::Put { value: s("new") }),
                get(3, "x", 100, 110, Some("new")),
                get(3, "x", 120, 130, Some("old")),
            ],
            "x",
        );
    }

    #[test]
    fn unknown_outcome_cas_and_delete_are_both_considered() {
        let base = [
            put(1, "x", 0, 1, "a"),
            unknown(
                2,
                "x",
                10,
                OpInput::Cas {
                    expected: opt(Some("a")),
                    new: opt(Some("b")),
                },
            ),
        ];
        for seen in ["a", "b"] {
            let mut h = base.to_vec();
            h.push(get(3, "x", 20, 30, Some(seen)));
            assert_linearizable(&h);
        }
        // If it happens it can only install "b", never an unrelated value.
        let mut h = base.to_vec();
        h.push(get(3, "x", 20, 30, Some("c")));
        assert_violation(&h, "x");

        let deleted = [
            put(1, "y", 0, 1, "a"),
            unknown(2, "y", 10, OpInput::Delete),
            get(3, "y", 20, 30, None),
            get(3, "y", 40, 50, Some("a")),
        ];
        assert_violation(&deleted, "y");
        assert_linearizable(&deleted[..3]);
    }

    #[test]
    fn unknown_outcome_read_is_dropped() {
        assert_linearizable(&[
            put(1, "x", 0, 1, "a"),
            unknown(2, "x", 2, OpInput::Get),
            get(3, "x", 5, 6, Some("a")),
        ]);
    }

    #[test]
    fn known_output_with_unknown_return_must_still_happen() {
        // The client saw the result but not when: it happened after its call.
        let h = [
            put(1, "x", 0, 1, "a"),
            op(
                2,
                "x",
                5,
                UNKNOWN_RETURN,
                OpInput::Get,
                OpOutput::Value(opt(Some("b"))),
            ),
        ];
        assert_violation(&h, "x");
        let mut ok = h.to_vec();
        ok.push(put(3, "x", 10, 11, "b"));
        assert_linearizable(&ok);
    }

    #[test]
    fn delete_semantics() {
        assert_linearizable(&[
            del(1, "x", 0, 1, false),
            put(1, "x", 2, 3, "a"),
            del(2, "x", 4, 5, true),
            get(3, "x", 6, 7, None),
            del(3, "x", 8, 9, false),
        ]);
        assert_violation(&[del(1, "x", 0, 1, true)], "x");
        assert_violation(&[put(1, "x", 0, 1, "a"), del(2, "x", 2, 3, false)], "x");
        assert_violation(
            &[
                put(1, "x", 0, 1, "a"),
                del(2, "x", 2, 3, true),
                get(3, "x", 4, 5, Some("a")),
            ],
            "x",
        );
        // Two concurrent deletes of an existing key: exactly one saw it.
        let pair = |first: bool, second: bool| {
            vec![
                put(1, "x", 0, 1, "a"),
                del(2, "x", 5, 20, first),
                del(3, "x", 6, 21, second),
            ]
        };
        assert_linearizable(&pair(true, false));
        assert_linearizable(&pair(false, true));
        assert_violation(&pair(true, true), "x");
        assert_violation(&pair(false, false), "x");
    }

    #[test]
    fn keys_are_independent() {
        // Interleaved in real time; each key is consistent on its own even
        // though "x" and "y" reads would clash if they were one register.
        let mut h = vec![
            put(1, "x", 0, 10, "1"),
            put(2, "y", 5, 15, "2"),
            get(3, "x", 20, 30, Some("1")),
            get(3, "y", 31, 40, Some("2")),
            get(1, "z", 0, 50, None),
        ];
        assert_linearizable(&h);
        let per_key = check_each_key(&h, &CheckOptions::default());
        assert_eq!(per_key.len(), 3);
        assert!(per_key.values().all(Outcome::is_linearizable));

        h.push(get(2, "y", 50, 60, Some("1")));
        let v = assert_violation(&h, "y");
        assert!(v.operations.iter().all(|o| o.key == "y"));
        assert_eq!(v.operations.len(), 3);
        let per_key = check_each_key(&h, &CheckOptions::default());
        assert!(per_key["x"].is_linearizable());
        assert!(per_key["y"].is_violation());
        assert!(per_key["z"].is_linearizable());
    }

    #[test]
    fn equal_timestamps_count_as_concurrent() {
        assert_linearizable(&[put(1, "x", 0, 10, "a"), get(2, "x", 10, 20, None)]);
        assert_violation(&[put(1, "x", 0, 9, "a"), get(2, "x", 10, 20, None)], "x");
    }

    #[test]
    fn malformed_operations_are_unknown_not_violations() {
        let outcome = check(&[put(1, "x", 10, 5, "a")]);
        match outcome {
            Outcome::Unknown { key, reason } => {
                assert_eq!(key, "x");
                assert!(reason.contains("before call"), "{reason}");
            }
            other => panic!("expected Unknown, got {other}"),
        }
        let mismatched = op(1, "x", 0, 1, OpInput::Get, OpOutput::Ok);
        assert!(matches!(check(&[mismatched]), Outcome::Unknown { .. }));
        let unknown_with_ret = op(1, "x", 0, 1, OpInput::Delete, OpOutput::Unknown);
        assert!(matches!(
            check(&[unknown_with_ret]),
            Outcome::Unknown { .. }
        ));
        // check_each_key attributes the problem to its key only.
        let per_key = check_each_key(
            &[put(1, "x", 10, 5, "a"), put(1, "y", 0, 1, "a")],
            &CheckOptions::default(),
        );
        assert!(matches!(per_key["x"], Outcome::Unknown { .. }));
        assert!(per_key["y"].is_linearizable());
    }

    #[test]
    fn history_builder_feeds_the_checker() {
        let mut h = History::new();
        let a = h.record_call(1, "x", OpInput::Put { value: s("1") }, 0);
        h.record_return(a, OpOutput::Ok, 10).unwrap();
        let b = h.record_call(2, "x", OpInput::Put { value: s("2") }, 20);
        h.record_unknown(b).unwrap();
        let c = h.record_call(3, "x", OpInput::Get, 30);
        h.record_return(c, OpOutput::Value(opt(Some("2"))), 40)
            .unwrap();
        let _pending = h.record_call(4, "x", OpInput::Delete, 50);
        assert!(h.check(&CheckOptions::default()).is_linearizable());
        let d = h.record_call(3, "x", OpInput::Get, 60);
        h.record_return(d, OpOutput::Value(opt(Some("1"))), 70)
            .unwrap();
        assert!(h.check(&CheckOptions::default()).is_violation());
    }

    #[test]
    fn outcome_serializes() {
        let outcome = check(&[put(1, "x", 0, 1, "a"), get(2, "x", 2, 3, None)]);
        let json = serde_json::to_string(&outcome).unwrap();
        let back: Outcome = serde_json::from_str(&json).unwrap();
        assert_eq!(back, outcome);
    }

    /// splitmix64: deterministic, dependency-free randomness for tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// Simulates a sequential store: every op gets a real-time interval
    /// containing a linearisation point, and outputs come from applying ops
    /// in point order, so the history is linearizable by construction. All
    /// written values are unique. `unknown_percent` of ops lose their
    /// outcome (writes among them take effect or not at random).
    fn random_history(
        seed: u64,
        n_ops: usize,
        n_keys: u64,
        n_clients: u64,
        unknown_percent: u64,
    ) -> Vec<Operation> {
        let mut rng = Rng(seed);
        let mut clock = vec![0u64; n_clients as usize];
        // (client, key, call, point, ret)
        let mut slots = Vec::with_capacity(n_ops);
        for _ in 0..n_ops {
            let client = rng.below(n_clients);
            // Skewed towards low keys so some keys are hot.
            let key = rng.below(n_keys).min(rng.below(n_keys));
            let long = if rng.chance(5) { 20 } else { 1 };
            let call = clock[client as usize] + 1 + rng.below(30);
            let point = call + rng.below(60 * long);
            let ret = point + 1 + rng.below(60 * long);
            clock[client as usize] = ret;
            slots.push((client, format!("key{key}"), call, point, ret));
        }
        let mut order: Vec<usize> = (0..slots.len()).collect();
        order.sort_by_key(|&i| (slots[i].3, i));

        let mut store: HashMap<String, Option<String>> = HashMap::new();
        let mut fresh = 0u64;
        let mut ops = Vec::with_capacity(n_ops);
        for i in order {
            let (client, key, call, _, ret) = slots[i].clone();
            let current = store.get(&key).cloned().flatten();
            fresh += 1;
            let value = format!("v{fresh}");
            let input = match rng.below(100) {
                0..=34 => OpInput::Get,
                35..=64 => OpInput::Put { value },
                65..=74 => OpInput::Delete,
                roll => {
                    let expected = if roll < 88 {
                        current.clone()
                    } else if rng.chance(30) {
                        None
                    } else {
                        Some(format!("v{}", rng.below(fresh)))
                    };
                    let new = if rng.chance(80) { Some(value) } else { None };
                    OpInput::Cas { expected, new }
                }
            };
            let (next, output) = sequential_apply(&current, &input);
            if rng.chance(unknown_percent) {
                if input.is_read_only() || rng.chance(50) {
                    store.insert(key.clone(), next);
                }
                ops.push(op(
                    client,
                    &key,
                    call,
                    UNKNOWN_RETURN,
                    input,
                    OpOutput::Unknown,
                ));
            } else {
                store.insert(key.clone(), next);
                ops.push(op(client, &key, call, ret, input, output));
            }
        }
        ops
    }

    /// Turns one late read into a stale read that must be a violation: it
    /// returns the value of a write `p1` that was overwritten by a write `p2`
    /// which itself completed, strictly after `p1`, before the read began.
    /// Values are unique, so nothing else can reinstate it.
    fn inject_stale_read(ops: &mut [Operation]) -> String {
        let sets_value = |o: &Operation| match (&o.input, &o.output) {
            (OpInput::Put { value }, OpOutput::Ok) => Some(value.clone()),
            (
                OpInput::Cas { new: Some(v), .. },
                OpOutput::Cas {
                    succeeded: true, ..
                },
            ) => Some(v.clone()),
            _ => None,
        };
        let overwrites = |o: &Operation| {
            matches!(
                (&o.input, &o.output),
                (OpInput::Put { .. }, OpOutput::Ok)
                    | (OpInput::Delete, OpOutput::Deleted { .. })
                    | (
                        OpInput::Cas { .. },
                        OpOutput::Cas {
                            succeeded: true,
                            ..
                        }
                    )
            )
        };
        let mut reads: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].input == OpInput::Get && ops[i].ret != UNKNOWN_RETURN)
            .collect();
        reads.sort_by_key(|&i| std::cmp::Reverse(ops[i].call));
        for g in reads {
            let key = ops[g].key.clone();
            let found = ops.iter().find_map(|p2| {
                if p2.key != key || !overwrites(p2) || p2.ret >= ops[g].call {
                    return None;
                }
                ops.iter().find_map(|p1| {
                    (p1.key == key && p1.ret < p2.call)
                        .then(|| sets_value(p1))
                        .flatten()
                })
            });
            if let Some(stale) = found {
                ops[g].output = OpOutput::Value(Some(stale));
                return key;
            }
        }
        panic!("no place to inject a stale read");
    }

    /// Largest number of same-key operations in flight at one instant, to
    /// prove the generated histories really exercise concurrency.
    fn max_same_key_overlap(ops: &[Operation]) -> usize {
        let mut events: Vec<(u64, bool, &str)> = Vec::new();
        for o in ops {
            events.push((o.call, false, &o.key));
            events.push((o.ret, true, &o.key));
        }
        // Returns first at equal times so touching intervals do not count.
        events.sort_by_key(|&(t, is_call_after, _)| (t, !is_call_after));
        let mut open: HashMap<&str, usize> = HashMap::new();
        let mut best = 0;
        for (_, is_return, key) in events {
            let n = open.entry(key).or_default();
            if is_return {
                *n -= 1;
            } else {
                *n += 1;
                best = best.max(*n);
            }
        }
        best
    }

    #[test]
    fn random_linearizable_history_checks_quickly() {
        for seed in [1, 2, 3] {
            let h = random_history(seed, 2000, 10, 8, 0);
            let overlap = max_same_key_overlap(&h);
            assert!(overlap >= 4, "generator too sequential: {overlap}");
            let start = Instant::now();
            let outcome = check(&h);
            let elapsed = start.elapsed();
            eprintln!(
                "seed {seed}: 2000 ops / 10 keys / 8 clients (max {overlap} concurrent \
                 on one key) checked in {elapsed:?}"
            );
            assert!(outcome.is_linearizable(), "seed {seed}: {outcome}");
        }
    }

    #[test]
    fn random_history_with_unknown_outcomes_is_linearizable() {
        for seed in [4, 5] {
            let h = random_history(seed, 2000, 10, 8, 2);
            assert!(h.iter().any(Operation::is_outcome_unknown));
            let start = Instant::now();
            let outcome = check(&h);
            eprintln!(
                "seed {seed}: 2000 ops with ~2% unknown outcomes checked in {:?}",
                start.elapsed()
            );
            assert!(outcome.is_linearizable(), "seed {seed}: {outcome}");
        }
    }

    #[test]
    fn random_history_with_injected_stale_read_is_violation() {
        for seed in [1, 6] {
            let mut h = random_history(seed, 2000, 10, 8, 0);
            let key = inject_stale_read(&mut h);
            let start = Instant::now();
            let outcome = check(&h);
            eprintln!(
                "seed {seed}: 2000 ops with one stale read rejected in {:?}",
                start.elapsed()
            );
            match outcome {
                Outcome::Violation(v) => {
                    if seed == 1 {
                        eprintln!("{v}");
                    }
                    assert_eq!(v.key, key);
                }
                other => panic!("seed {seed}: expected violation on {key}, got {other}"),
            }
        }
    }

    /// Scaling probe, not run by default: `cargo test --release -- --ignored`.
    #[test]
    #[ignore]
    fn large_random_history_scales() {
        for (n_ops, n_keys) in [(50_000, 10), (50_000, 100)] {
            let h = random_history(7, n_ops, n_keys, 8, 1);
            let start = Instant::now();
            let outcome = check(&h);
            eprintln!(
                "{n_ops} ops / {n_keys} keys / 8 clients / 1% unknown checked in {:?}",
                start.elapsed()
            );
            assert!(outcome.is_linearizable(), "{outcome}");
        }
    }

    /// Many mutually concurrent writes followed by two reads that no order
    /// can explain: exhaustive search is exponential even with memoisation.
    fn pathological_history(writers: u64) -> Vec<Operation> {
        let mut h: Vec<Operation> = (0..writers)
            .map(|i| put(i, "hot", i, 1_000 + i, &format!("w{i}")))
            .collect();
        h.push(get(writers, "hot", 2_000, 2_001, Some("w0")));
        h.push(get(writers, "hot", 2_002, 2_003, Some("w1")));
        h
    }

    #[test]
    fn search_bound_returns_unknown_instead_of_hanging() {
        let h = pathological_history(40);
        let options = CheckOptions {
            max_states: 50_000,
            time_limit: None,
        };
        let start = Instant::now();
        let outcome = check_linearizable(&h, &options);
        eprintln!("pathological history gave up in {:?}", start.elapsed());
        match outcome {
            Outcome::Unknown { key, reason } => {
                assert_eq!(key, "hot");
                assert!(reason.contains("50000"), "{reason}");
            }
            other => panic!("expected Unknown, got {other}"),
        }
    }

    #[test]
    fn time_limit_returns_unknown_instead_of_hanging() {
        let h = pathological_history(40);
        let options = CheckOptions {
            max_states: u64::MAX,
            time_limit: Some(Duration::from_millis(200)),
        };
        let start = Instant::now();
        let outcome = check_linearizable(&h, &options);
        assert!(start.elapsed() < Duration::from_secs(5));
        match outcome {
            Outcome::Unknown { key, reason } => {
                assert_eq!(key, "hot");
                assert!(reason.contains("time limit"), "{reason}");
            }
            other => panic!("expected Unknown, got {other}"),
        }
    }

    #[test]
    fn small_pathological_history_is_decided_exactly() {
        // Same shape, small enough for the exhaustive search to finish.
        assert_violation(&pathological_history(8), "hot");
    }

    #[test]
    fn violation_on_one_key_wins_over_unknown_on_another() {
        let mut h = pathological_history(40);
        h.push(put(1, "x-cold", 0, 1, "a"));
        h.push(get(1, "x-cold", 2, 3, Some("b")));
        let options = CheckOptions {
            max_states: 10_000,
            time_limit: None,
        };
        assert!(check_linearizable(&h, &options).is_violation());
    }

    /// Does a correct sequential store explain `observed` given `expected`?
    fn output_matches(observed: &OpOutput, expected: &OpOutput) -> bool {
        match (observed, expected) {
            (OpOutput::Unknown, _) => true,
            (
                OpOutput::Cas {
                    succeeded: true, ..
                },
                OpOutput::Cas {
                    succeeded: true, ..
                },
            ) => true,
            _ => observed == expected,
        }
    }

    /// Independent oracle: tries every real-time-respecting order, with
    /// unknown-outcome ops optional. Exponential, for tiny histories only.
    fn brute_force(ops: &[Operation], placed: &mut Vec<bool>, state: &Option<String>) -> bool {
        let done = ops
            .iter()
            .zip(placed.iter())
            .all(|(o, &p)| p || o.is_outcome_unknown());
        if done {
            return true;
        }
        for i in 0..ops.len() {
            if placed[i] {
                continue;
            }
            let ready = (0..ops.len()).all(|j| placed[j] || ops[j].ret >= ops[i].call);
            if !ready {
                continue;
            }
            let (next, expected) = sequential_apply(state, &ops[i].input);
            if !output_matches(&ops[i].output, &expected) {
                continue;
            }
            placed[i] = true;
            let ok = brute_force(ops, placed, &next);
            placed[i] = false;
            if ok {
                return true;
            }
        }
        false
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let mut rng = Rng(42);
        let values = [None, Some("a"), Some("b"), Some("c")];
        let pick = |rng: &mut Rng| opt(values[rng.below(4) as usize]);
        let (mut yes, mut no) = (0, 0);
        for _ in 0..4000 {
            let n = 1 + rng.below(7);
            let mut h = Vec::new();
            for client in 0..n {
                let call = rng.below(20);
                let ret = call + rng.below(12);
                let input = match rng.below(4) {
                    0 => OpInput::Get,
                    1 => OpInput::Put {
                        value: pick(&mut rng).unwrap_or_else(|| s("a")),
                    },
                    2 => OpInput::Delete,
                    _ => OpInput::Cas {
                        expected: pick(&mut rng),
                        new: pick(&mut rng),
                    },
                };
                let output = match &input {
                    OpInput::Get => OpOutput::Value(pick(&mut rng)),
                    OpInput::Put { .. } => OpOutput::Ok,
                    OpInput::Delete => OpOutput::Deleted {
                        existed: rng.chance(50),
                    },
                    OpInput::Cas { .. } => OpOutput::Cas {
                        succeeded: rng.chance(50),
                        current: pick(&mut rng),
                    },
                };
                if rng.chance(15) {
                    h.push(unknown(client, "k", call, input));
                } else {
                    h.push(op(client, "k", call, ret, input, output));
                }
            }
            let expected = brute_force(&h, &mut vec![false; h.len()], &None);
            let outcome = check(&h);
            assert_eq!(
                outcome.is_linearizable(),
                expected,
                "disagreement on {h:#?}: checker says {outcome}"
            );
            assert!(expected || outcome.is_violation());
            if expected {
                yes += 1;
            } else {
                no += 1;
            }
        }
        eprintln!("brute-force cross-check: {yes} linearizable, {no} violations");
        assert!(yes > 500 && no > 500, "unbalanced sample: {yes}/{no}");
    }
}
