//! Simulation metrics: per-request latencies from the journey events, token gaps from the
//! outputs, and the summary report (JSON and a table).

use std::fmt::Write as _;

use serde::Serialize;

/// p50/p90/p99 and mean of a sample, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
}

/// The nearest-rank percentile `q` (0..=1) of sorted `values`.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl Percentiles {
    /// Summarise a sample (sorted in place).
    pub fn of(values: &mut [f64]) -> Self {
        values.sort_by(f64::total_cmp);
        let mean = if values.is_empty() {
            0.0
        } else {
            values.iter().sum::<f64>() / values.len() as f64
        };
        Self {
            p50: percentile(values, 0.5),
            p90: percentile(values, 0.9),
            p99: percentile(values, 0.99),
            mean,
        }
    }
}

/// Service-level objectives for goodput.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Slo {
    /// Most time to first token, ms.
    pub ttft_ms: Option<f64>,
    /// Most time per output token, ms.
    pub tpot_ms: Option<f64>,
}

/// KV cache usage over the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KvUsage {
    /// Mean over steps.
    pub mean: f64,
    /// Maximum over steps.
    pub max: f64,
    /// `[seconds, usage]` at up to 200 evenly spaced steps.
    pub series: Vec<(f64, f64)>,
}

/// The report of one simulation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// The policy and where it ran.
    pub scheduler: String,
    /// Requests in the workload.
    pub requests: u64,
    /// Requests that finished.
    pub completed: u64,
    /// Engine steps.
    pub steps: u64,
    /// Virtual time from the first arrival to the last finish, seconds.
    pub duration_s: f64,
    /// Finished requests per second.
    pub throughput_rps: f64,
    /// Output tokens per second.
    pub output_tokens_per_s: f64,
    /// Time to first token.
    pub ttft_ms: Percentiles,
    /// Time per output token (per request, after the first).
    pub tpot_ms: Percentiles,
    /// Inter-token latency (every gap between two tokens of a request; percentiles within
    /// 0.1 %, from a histogram).
    pub itl_ms: Percentiles,
    /// End-to-end latency.
    pub e2e_ms: Percentiles,
    /// Time from arrival to first scheduling.
    pub queue_ms: Percentiles,
    /// The objectives goodput counts against.
    pub slo: Slo,
    /// Requests per second that met every objective.
    pub goodput_rps: f64,
    /// Finished requests that gave a deadline.
    pub deadline_requests: u64,
    /// Of those, the ones that finished by it.
    pub deadlines_met: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Prefix-cache hits over queries.
    pub prefix_cache_hit_rate: f64,
    /// KV usage.
    pub kv_usage: KvUsage,
}

/// A histogram with 0.1 % relative buckets, for samples too many to keep (one per token):
/// memory stays constant however long the run.
#[derive(Debug, Clone)]
pub struct LogHistogram {
    counts: Vec<u64>,
    total: u64,
    sum: f64,
    /// The last value recorded and its bucket: the tokens of one step share their gap, so
    /// most records repeat the value before and skip the logarithm.
    last: Option<(f64, usize)>,
}

const GROWTH: f64 = 1.001;
/// Smallest value told apart (ms); smaller samples fall into the first bucket.
const FLOOR_MS: f64 = 1e-6;

impl Default for LogHistogram {
    fn default() -> Self {
        Self {
            counts: Vec::new(),
            total: 0,
            sum: 0.0,
            last: None,
        }
    }
}

impl LogHistogram {
    /// Kept out of line: inlined, the logarithm's registers made every record save and restore
    /// them, though most records repeat the last value and never reach it.
    #[inline(never)]
    fn bucket(value: f64) -> usize {
        if value <= FLOOR_MS {
            0
        } else {
            ((value / FLOOR_MS).ln() / GROWTH.ln()).ceil() as usize
        }
    }

    /// Add `count` samples of `value` (ms).
    #[inline]
    pub fn record(&mut self, value: f64, count: u64) {
        if count == 0 {
            return;
        }
        let bucket = match self.last {
            Some((last, bucket)) if last == value => bucket,
            _ => Self::bucket(value),
        };
        self.last = Some((value, bucket));
        if bucket >= self.counts.len() {
            self.counts.resize(bucket + 1, 0);
        }
        self.counts[bucket] += count;
        self.total += count;
        // One addition per sample, in order: the mean is exactly the one of separate samples.
        for _ in 0..count {
            self.sum += value;
        }
    }

    /// Percentiles (each within 0.1 % of the exact nearest-rank value) and the exact mean.
    pub fn percentiles(&self) -> Percentiles {
        if self.total == 0 {
            return Percentiles::default();
        }
        let at = |q: f64| {
            let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
            let mut seen = 0;
            for (bucket, &count) in self.counts.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    return FLOOR_MS * GROWTH.powi(bucket as i32);
                }
            }
            0.0
        };
        Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            mean: self.sum / self.total as f64,
        }
    }
}

/// Ms from ns.
pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Collects the samples a report is made of.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) ttft: Vec<f64>,
    pub(crate) tpot: Vec<f64>,
    pub(crate) itl: LogHistogram,
    pub(crate) e2e: Vec<f64>,
    pub(crate) queue: Vec<f64>,
    pub(crate) good: u64,
    pub(crate) deadline_requests: u64,
    pub(crate) deadlines_met: u64,
    pub(crate) output_tokens: u64,
    pub(crate) preemptions: u64,
    pub(crate) kv: Vec<(f64, f64)>,
    pub(crate) kv_sum: f64,
    pub(crate) kv_max: f64,
    pub(crate) kv_steps: u64,
}

impl Metrics {
    pub(crate) fn kv_sample(&mut self, seconds: f64, usage: f64) {
        self.kv_sum += usage;
        self.kv_max = self.kv_max.max(usage);
        self.kv_steps += 1;
        // Keep at most 400 points: halve the series whenever it fills up.
        if self.kv_steps.is_power_of_two() || self.kv.len() < 400 {
            if self.kv.len() >= 400 {
                self.kv = self.kv.iter().step_by(2).copied().collect();
            }
            self.kv.push((seconds, usage));
        }
    }

    pub(crate) fn report(mut self, header: ReportHeader) -> Report {
        let seconds = header.duration_s.max(f64::MIN_POSITIVE);
        let completed = self.e2e.len() as u64;
        let step = (self.kv.len() / 200).max(1);
        Report {
            scheduler: header.scheduler,
            requests: header.requests,
            completed,
            steps: header.steps,
            duration_s: header.duration_s,
            throughput_rps: completed as f64 / seconds,
            output_tokens_per_s: self.output_tokens as f64 / seconds,
            ttft_ms: Percentiles::of(&mut self.ttft),
            tpot_ms: Percentiles::of(&mut self.tpot),
            itl_ms: self.itl.percentiles(),
            e2e_ms: Percentiles::of(&mut self.e2e),
            queue_ms: Percentiles::of(&mut self.queue),
            slo: header.slo,
            goodput_rps: self.good as f64 / seconds,
            deadline_requests: self.deadline_requests,
            deadlines_met: self.deadlines_met,
            preemptions: self.preemptions,
            prefix_cache_hit_rate: header.prefix_cache_hit_rate,
            kv_usage: KvUsage {
                mean: if self.kv_steps == 0 {
                    0.0
                } else {
                    self.kv_sum / self.kv_steps as f64
                },
                max: self.kv_max,
                series: self.kv.iter().step_by(step).copied().collect(),
            },
        }
    }
}

/// The parts of a report that do not come from samples.
pub(crate) struct ReportHeader {
    pub(crate) scheduler: String,
    pub(crate) requests: u64,
    pub(crate) steps: u64,
    pub(crate) duration_s: f64,
    pub(crate) slo: Slo,
    pub(crate) prefix_cache_hit_rate: f64,
}

/// Reports side by side as a text table (one column per report).
pub fn table(reports: &[Report]) -> String {
    let each = |f: &dyn Fn(&Report) -> String| reports.iter().map(f).collect::<Vec<_>>();
    let mut rows: Vec<(String, Vec<String>)> = vec![
        ("scheduler".into(), each(&|r| r.scheduler.clone())),
        (
            "requests completed".into(),
            each(&|r| format!("{}/{}", r.completed, r.requests)),
        ),
        (
            "duration (s)".into(),
            each(&|r| format!("{:.3}", r.duration_s)),
        ),
        (
            "throughput (req/s)".into(),
            each(&|r| format!("{:.3}", r.throughput_rps)),
        ),
        (
            "output tokens/s".into(),
            each(&|r| format!("{:.1}", r.output_tokens_per_s)),
        ),
    ];
    for (name, pick) in [
        (
            "TTFT",
            (|r: &Report| r.ttft_ms) as fn(&Report) -> Percentiles,
        ),
        ("TPOT", |r: &Report| r.tpot_ms),
        ("ITL", |r: &Report| r.itl_ms),
        ("e2e", |r: &Report| r.e2e_ms),
        ("queue", |r: &Report| r.queue_ms),
    ] {
        let values = each(&|r| {
            let p = pick(r);
            format!("{:.1}/{:.1}/{:.1}", p.p50, p.p90, p.p99)
        });
        rows.push((format!("{name} p50/p90/p99 (ms)"), values));
    }
    rows.push((
        "goodput (req/s)".into(),
        each(&|r| format!("{:.3}", r.goodput_rps)),
    ));
    if reports.iter().any(|r| r.deadline_requests > 0) {
        rows.push((
            "deadlines met".into(),
            each(&|r| format!("{}/{}", r.deadlines_met, r.deadline_requests)),
        ));
    }
    rows.push(("preemptions".into(), each(&|r| r.preemptions.to_string())));
    rows.push((
        "prefix cache hit rate".into(),
        each(&|r| format!("{:.3}", r.prefix_cache_hit_rate)),
    ));
    rows.push((
        "KV usage mean/max".into(),
        each(&|r| format!("{:.3}/{:.3}", r.kv_usage.mean, r.kv_usage.max)),
    ));
    let label_width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..reports.len())
        .map(|column| {
            rows.iter()
                .map(|(_, values)| values[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for (label, values) in rows {
        let _ = write!(text, "{label:<label_width$}");
        for (value, width) in values.iter().zip(&widths) {
            let _ = write!(text, "  {value:>width$}");
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::LogHistogram;

    #[test]
    fn a_run_of_equal_samples_counts_as_that_many_samples_mean_included() {
        // After 1e16, adding 1.0 three times is not adding 3.0: the sum must be built the same way.
        let samples = [1e16, 1.0, 1.0, 1.0, 7.25, 7.25, 0.1, 1e-9, 33.0, 33.0, 33.0];
        let mut one_by_one = LogHistogram::default();
        for &sample in &samples {
            one_by_one.record(sample, 1);
        }
        let mut in_runs = LogHistogram::default();
        for (value, count) in [
            (1e16, 1),
            (1.0, 3),
            (7.25, 2),
            (0.1, 1),
            (1e-9, 1),
            (33.0, 0),
            (33.0, 3),
        ] {
            in_runs.record(value, count);
        }
        assert_eq!(in_runs.percentiles(), one_by_one.percentiles());
        assert_eq!(in_runs.total, samples.len() as u64);
        assert_eq!(in_runs.sum.to_bits(), one_by_one.sum.to_bits());
    }
}
