//! What a live swap cost the clients: the write stall around it, computed
//! from a recorded client history (the demo and `bench --swap` share it).
//!
//! Times are nanoseconds on the [`crate::tools::workload::Recorder`]'s clock.

use std::time::Duration;

use crate::checker::{OpInput, Operation};

/// An acknowledged write: when the client sent it and saw the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteSample {
    pub call_ns: u64,
    pub ret_ns: u64,
}

impl WriteSample {
    fn latency_ns(&self) -> u64 {
        self.ret_ns.saturating_sub(self.call_ns)
    }
}

/// The acknowledged writes (puts, deletes, compare-and-swaps) of `region`
/// in a history whose keys are `region/key`, sorted by answer time.
pub fn acknowledged_writes(operations: &[Operation], region: &str) -> Vec<WriteSample> {
    let prefix = format!("{region}/");
    let mut writes: Vec<WriteSample> = operations
        .iter()
        .filter(|op| op.key.starts_with(&prefix))
        .filter(|op| !matches!(op.input, OpInput::Get))
        .filter(|op| !op.is_outcome_unknown() && op.ret >= op.call)
        .map(|op| WriteSample {
            call_ns: op.call,
            ret_ns: op.ret,
        })
        .collect();
    writes.sort_unstable_by_key(|w| w.ret_ns);
    writes
}

/// When a swap request was sent and answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwapWindow {
    pub start_ns: u64,
    pub end_ns: u64,
}

/// How wide the comparison windows are.
#[derive(Clone, Copy, Debug)]
pub struct Windows {
    /// Added on both sides of the swap for the "around" latency figures.
    pub margin: Duration,
    /// Length of the baseline windows before and after.
    pub baseline: Duration,
}

/// The stall one swap caused.
#[derive(Clone, Debug, PartialEq)]
pub struct StallReport {
    /// Longest time without an acknowledged write, from the last answer
    /// before the swap began to the first one after it ended.
    pub gap_ms: f64,
    /// Longest latency of a write in flight while the swap ran.
    pub max_in_flight_ms: f64,
    /// p99 write latency of answers within the swap ± margin.
    pub p99_around_ms: f64,
    /// p99 write latency in the baseline window before.
    pub p99_before_ms: f64,
    /// Acknowledged writes per second in the baseline window before, and
    /// in the one after (each ends at the margin).
    pub writes_per_second_before: f64,
    pub writes_per_second_after: f64,
    /// Writes answered within the swap ± margin.
    pub writes_around: usize,
}

impl StallReport {
    /// Throughput after the swap over before it (0 when nothing before).
    pub fn throughput_ratio(&self) -> f64 {
        if self.writes_per_second_before > 0.0 {
            self.writes_per_second_after / self.writes_per_second_before
        } else {
            0.0
        }
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// p-quantile in milliseconds of unsorted latencies in nanoseconds.
fn quantile_ms(mut latencies: Vec<u64>, q: f64) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort_unstable();
    let index = ((latencies.len() - 1) as f64 * q).round() as usize;
    ms(latencies[index.min(latencies.len() - 1)])
}

/// The stall `swap` caused among `writes` (sorted by answer time).
pub fn analyze(writes: &[WriteSample], swap: SwapWindow, windows: Windows) -> StallReport {
    let margin = u64::try_from(windows.margin.as_nanos()).unwrap_or(u64::MAX);
    let baseline = u64::try_from(windows.baseline.as_nanos()).unwrap_or(u64::MAX);
    let end = swap.end_ns.max(swap.start_ns);

    // The gap: answers from the last one at or before the start to the
    // first at or after the end (the swap's own bounds stand in for any
    // that are missing).
    let before = writes
        .iter()
        .rev()
        .find(|w| w.ret_ns <= swap.start_ns)
        .map_or(swap.start_ns, |w| w.ret_ns);
    let after = writes
        .iter()
        .find(|w| w.ret_ns >= end)
        .map_or(end, |w| w.ret_ns);
    let mut previous = before;
    let mut gap = 0u64;
    for answer in writes
        .iter()
        .map(|w| w.ret_ns)
        .filter(|&t| t > before && t < after)
        .chain(std::iter::once(after))
    {
        gap = gap.max(answer.saturating_sub(previous));
        previous = answer;
    }

    let max_in_flight = writes
        .iter()
        .filter(|w| w.call_ns <= end && w.ret_ns >= swap.start_ns)
        .map(WriteSample::latency_ns)
        .max()
        .unwrap_or(0);

    let around_from = swap.start_ns.saturating_sub(margin);
    let around_to = end.saturating_add(margin);
    let around: Vec<u64> = writes
        .iter()
        .filter(|w| w.ret_ns >= around_from && w.ret_ns <= around_to)
        .map(WriteSample::latency_ns)
        .collect();
    let before_from = around_from.saturating_sub(baseline);
    let before_window: Vec<u64> = writes
        .iter()
        .filter(|w| w.ret_ns >= before_from && w.ret_ns < around_from)
        .map(WriteSample::latency_ns)
        .collect();
    let after_to = around_to.saturating_add(baseline);
    let after_count = writes
        .iter()
        .filter(|w| w.ret_ns > around_to && w.ret_ns <= after_to)
        .count();
    // Windows cut short by the start or end of the run count their real length.
    let before_span = around_from - before_from;
    let last_answer = writes.last().map_or(around_to, |w| w.ret_ns);
    let after_span = after_to.min(last_answer).saturating_sub(around_to);
    let rate = |count: usize, span: u64| {
        if span == 0 {
            0.0
        } else {
            count as f64 / (span as f64 / 1e9)
        }
    };
    StallReport {
        gap_ms: ms(gap),
        max_in_flight_ms: ms(max_in_flight),
        p99_around_ms: quantile_ms(around.clone(), 0.99),
        p99_before_ms: quantile_ms(before_window.clone(), 0.99),
        writes_per_second_before: rate(before_window.len(), before_span),
        writes_per_second_after: rate(after_count, after_span),
        writes_around: around.len(),
    }
}

/// Quantile `q` of `values` (unsorted), 0 when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return 0.0;
    }
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{OpOutput, UNKNOWN_RETURN};

    const MS: u64 = 1_000_000;

    /// One write answered every millisecond taking 1 ms, except a hole
    /// from 1000 ms to 1040 ms, bridged by one write that took 41 ms.
    fn steady_with_hole() -> Vec<WriteSample> {
        let mut writes: Vec<WriteSample> = (1..=2000u64)
            .filter(|t| *t <= 1000 || *t > 1040)
            .map(|t| WriteSample {
                call_ns: (t - 1) * MS,
                ret_ns: t * MS,
            })
            .collect();
        writes.push(WriteSample {
            call_ns: 999 * MS,
            ret_ns: 1040 * MS,
        });
        writes.sort_unstable_by_key(|w| w.ret_ns);
        writes
    }

    fn windows() -> Windows {
        Windows {
            margin: Duration::from_millis(100),
            baseline: Duration::from_millis(500),
        }
    }

    #[test]
    fn the_gap_and_in_flight_latency_measure_the_hole() {
        let swap = SwapWindow {
            start_ns: 1005 * MS,
            end_ns: 1030 * MS,
        };
        let report = analyze(&steady_with_hole(), swap, windows());
        assert!((report.gap_ms - 40.0).abs() < 1e-6, "{report:?}");
        assert!((report.max_in_flight_ms - 41.0).abs() < 1e-6, "{report:?}");
        assert!((report.p99_before_ms - 1.0).abs() < 1e-6, "{report:?}");
        assert!(report.p99_around_ms >= 1.0, "{report:?}");
        assert!((report.writes_per_second_before - 1000.0).abs() < 5.0);
        assert!((report.writes_per_second_after - 1000.0).abs() < 5.0);
        assert!((report.throughput_ratio() - 1.0).abs() < 0.01);
    }

    #[test]
    fn no_stall_without_a_hole() {
        let writes: Vec<WriteSample> = (1..=2000u64)
            .map(|t| WriteSample {
                call_ns: (t - 1) * MS,
                ret_ns: t * MS,
            })
            .collect();
        let swap = SwapWindow {
            start_ns: 1005 * MS,
            end_ns: 1030 * MS,
        };
        let report = analyze(&writes, swap, windows());
        assert!((report.gap_ms - 1.0).abs() < 1e-6, "{report:?}");
        assert!((report.max_in_flight_ms - 1.0).abs() < 1e-6, "{report:?}");
    }

    #[test]
    fn a_swap_with_no_writes_after_it_counts_up_to_its_end() {
        let writes: Vec<WriteSample> = (1..=100u64)
            .map(|t| WriteSample {
                call_ns: (t - 1) * MS,
                ret_ns: t * MS,
            })
            .collect();
        let swap = SwapWindow {
            start_ns: 100 * MS,
            end_ns: 300 * MS,
        };
        let report = analyze(&writes, swap, windows());
        assert!((report.gap_ms - 200.0).abs() < 1e-6, "{report:?}");
        assert_eq!(report.writes_per_second_after, 0.0);
    }

    #[test]
    fn only_acknowledged_writes_of_the_region_count() {
        let op = |key: &str, input: OpInput, output: OpOutput, ret: u64| Operation {
            client: 1,
            key: key.to_string(),
            call: 1,
            ret,
            input,
            output,
        };
        let put = || OpInput::Put { value: "v".into() };
        let operations = vec![
            op("r/a", put(), OpOutput::Ok, 5),
            op("r/a", OpInput::Get, OpOutput::Value(None), 3),
            op("r/b", put(), OpOutput::Unknown, UNKNOWN_RETURN),
            op("other/a", put(), OpOutput::Ok, 2),
            op(
                "r/c",
                OpInput::Cas {
                    expected: None,
                    new: Some("x".into()),
                },
                OpOutput::Cas {
                    succeeded: true,
                    current: None,
                },
                4,
            ),
        ];
        let writes = acknowledged_writes(&operations, "r");
        assert_eq!(
            writes,
            vec![
                WriteSample {
                    call_ns: 1,
                    ret_ns: 4
                },
                WriteSample {
                    call_ns: 1,
                    ret_ns: 5
                }
            ]
        );
    }

    #[test]
    fn quantiles_of_floats() {
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 1.0), 3.0);
    }
}
