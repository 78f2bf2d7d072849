//! `waypoint sweep`: a capacity grid of engine configurations × request rates × schedulers,
//! simulated in parallel on every core, written as a table (CSV, JSON) and a chart (SVG).

use std::fmt;

use plotters::prelude::*;
use rayon::prelude::*;
use serde::Serialize;
use thiserror::Error;

use crate::args::{CapacityArgs, SequenceArgs};
use crate::guest::PolicyModule;
use crate::sim::report::Report;
use crate::sim::settings::SyntheticSettings;
use crate::sim::{simulate, Outputs, Settings, SimError};
use crate::spec::SchedulerSpec;

/// Why a sweep stopped.
#[derive(Debug, Error)]
pub enum SweepError {
    /// The grid or the workload settings are unusable.
    #[error("{0}")]
    Settings(String),
    /// One point's simulation failed.
    #[error("{scheduler}, {capacity}, {rate} req/s: {source}")]
    Point {
        /// The scheduler.
        scheduler: String,
        /// The engine configuration.
        capacity: CapacityArgs,
        /// The request rate.
        rate: f64,
        /// What went wrong.
        source: SimError,
    },
    /// The table could not be written as CSV.
    #[error("writing the CSV table: {0}")]
    Csv(#[from] csv::Error),
    /// The chart could not be drawn.
    #[error("drawing the chart: {0}")]
    Chart(String),
}

/// A scheduler to sweep, compiled once and instantiated per point.
pub struct Scheduler {
    /// As named on the command line.
    pub spec: SchedulerSpec,
    /// Its component (none for the native scheduler).
    pub module: Option<PolicyModule>,
}

/// The grid and what stays fixed across it.
pub struct Grid {
    /// Engine configurations.
    pub capacities: Vec<CapacityArgs>,
    /// Mean arrivals per second.
    pub rates: Vec<f64>,
    /// Schedulers.
    pub schedulers: Vec<Scheduler>,
    /// The engine flags every configuration shares.
    pub sequence: SequenceArgs,
    /// The synthetic workload; its rate is replaced per point, its seed kept, so every point
    /// sees the same requests.
    pub workload: SyntheticSettings,
    /// Latency model and objectives.
    pub settings: Settings,
    /// Fraction of requests that must meet every objective for a point to pass.
    pub attainment: f64,
}

/// One point's figures: a row of the table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Point {
    /// The policy and where it ran.
    pub scheduler: String,
    /// `--max-num-seqs`.
    pub max_num_seqs: u32,
    /// `--max-num-batched-tokens`.
    pub max_num_batched_tokens: u32,
    /// `--num-blocks`.
    pub num_blocks: u32,
    /// Offered mean arrivals per second.
    pub request_rate: f64,
    /// Requests finished.
    pub completed: u64,
    /// Finished requests per second.
    pub throughput_rps: f64,
    /// Requests per second that met every objective.
    pub goodput_rps: f64,
    /// Fraction of finished requests that met every objective.
    pub slo_attainment: f64,
    /// Time to first token, median.
    pub ttft_p50_ms: f64,
    /// Time to first token, 99th percentile.
    pub ttft_p99_ms: f64,
    /// Time per output token, median.
    pub tpot_p50_ms: f64,
    /// Time per output token, 99th percentile.
    pub tpot_p99_ms: f64,
    /// Preemptions.
    pub preemptions: u64,
    /// KV cache usage, mean over steps.
    pub kv_usage_mean: f64,
    /// KV cache usage, maximum.
    pub kv_usage_max: f64,
    /// At least the required fraction of requests met every objective.
    pub meets_slo: bool,
    /// The highest rate of its line (scheduler and configuration) at which it and every lower
    /// rate meet the objectives.
    pub max_rate_meeting_slo: bool,
}

impl Point {
    fn new(
        scheduler: &Scheduler,
        capacity: CapacityArgs,
        rate: f64,
        report: &Report,
        attainment: f64,
    ) -> Self {
        let slo_attainment = if report.throughput_rps > 0.0 {
            report.goodput_rps / report.throughput_rps
        } else {
            0.0
        };
        Self {
            scheduler: scheduler.spec.to_string(),
            max_num_seqs: capacity.max_num_seqs,
            max_num_batched_tokens: capacity.max_num_batched_tokens,
            num_blocks: capacity.num_blocks,
            request_rate: rate,
            completed: report.completed,
            throughput_rps: report.throughput_rps,
            goodput_rps: report.goodput_rps,
            slo_attainment,
            ttft_p50_ms: report.ttft_ms.p50,
            ttft_p99_ms: report.ttft_ms.p99,
            tpot_p50_ms: report.tpot_ms.p50,
            tpot_p99_ms: report.tpot_ms.p99,
            preemptions: report.preemptions,
            kv_usage_mean: report.kv_usage.mean,
            kv_usage_max: report.kv_usage.max,
            meets_slo: slo_attainment + 1e-12 >= attainment,
            max_rate_meeting_slo: false,
        }
    }

    fn capacity(&self) -> CapacityArgs {
        CapacityArgs {
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            num_blocks: self.num_blocks,
        }
    }

    /// The line the point belongs to in the chart.
    pub fn line(&self) -> String {
        format!("{} · {}", self.scheduler, self.capacity())
    }
}

impl Grid {
    /// Check the grid before anything runs.
    pub fn validate(&self) -> Result<(), SweepError> {
        let bad = |message: String| Err(SweepError::Settings(message));
        if self.capacities.is_empty() || self.rates.is_empty() || self.schedulers.is_empty() {
            return bad("a sweep needs at least one configuration, rate and scheduler".into());
        }
        if let Some(rate) = self.rates.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
            return bad(format!(
                "--request-rate {rate}: a sweep's rates must be positive and finite"
            ));
        }
        if !(self.attainment > 0.0 && self.attainment <= 1.0) {
            return bad(format!(
                "--slo-attainment {} must be in (0, 1]",
                self.attainment
            ));
        }
        if self.settings.slo.ttft_ms.is_none() && self.settings.slo.tpot_ms.is_none() {
            return bad("a sweep needs --slo-ttft-ms or --slo-tpot-ms to find capacity".into());
        }
        self.workload
            .synthetic(self.sequence.max_model_len)
            .map(drop)
            .map_err(SweepError::Settings)
    }

    /// Simulate every point, in parallel, and mark each line's highest passing rate. Points
    /// come back in grid order: scheduler, then configuration, then rate.
    pub fn run(&self) -> Result<Vec<Point>, SweepError> {
        self.validate()?;
        let mut rates = self.rates.clone();
        rates.sort_by(f64::total_cmp);
        rates.dedup();
        let cells: Vec<(&Scheduler, CapacityArgs, f64)> = self
            .schedulers
            .iter()
            .flat_map(|scheduler| {
                self.capacities.iter().flat_map({
                    let rates = &rates;
                    move |&capacity| rates.iter().map(move |&rate| (scheduler, capacity, rate))
                })
            })
            .collect();
        let mut points = cells
            .par_iter()
            .map(|&(scheduler, capacity, rate)| self.point(scheduler, capacity, rate))
            .collect::<Result<Vec<_>, _>>()?;
        // Grid order puts each line's rates side by side.
        for line in points.chunks_mut(rates.len()) {
            let passing = line.iter().take_while(|point| point.meets_slo).count();
            if let Some(point) = passing.checked_sub(1).map(|last| &mut line[last]) {
                point.max_rate_meeting_slo = true;
            }
        }
        Ok(points)
    }

    fn point(
        &self,
        scheduler: &Scheduler,
        capacity: CapacityArgs,
        rate: f64,
    ) -> Result<Point, SweepError> {
        let failed = |source: SimError| SweepError::Point {
            scheduler: scheduler.spec.to_string(),
            capacity,
            rate,
            source,
        };
        let engine = self.sequence.settings(&capacity);
        let workload = SyntheticSettings {
            request_rate: Some(rate),
            ..self.workload.clone()
        }
        .synthetic(engine.max_model_len)
        .map_err(SweepError::Settings)?;
        let mut backend = scheduler
            .spec
            .open(scheduler.module.as_ref(), engine.config(true))
            .map_err(|error| failed(error.into()))?;
        let report = simulate(
            backend.as_mut(),
            workload.arrivals().map(Ok),
            self.settings,
            &mut Outputs::default(),
        )
        .map_err(failed)?;
        Ok(Point::new(
            scheduler,
            capacity,
            rate,
            &report,
            self.attainment,
        ))
    }
}

/// The table as CSV, one row per point, the columns named as in the JSON.
pub fn csv(points: &[Point]) -> Result<String, SweepError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for point in points {
        writer.serialize(point)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|error| csv::Error::from(error.into_error()))?;
    // Every field is a Rust string or a number, so the bytes are UTF-8.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Each line's highest passing rate, for the summary on stdout.
pub fn summary(points: &[Point]) -> String {
    let mut text = String::new();
    for line in points.chunk_by(|a, b| a.line() == b.line()) {
        let best = line.iter().find(|point| point.max_rate_meeting_slo);
        let verdict = best.map_or_else(
            || "no rate meets the objectives".to_string(),
            |point| {
                format!(
                    "meets the objectives up to {} req/s (goodput {:.2} req/s, p99 TTFT {:.0} ms)",
                    point.request_rate, point.goodput_rps, point.ttft_p99_ms
                )
            },
        );
        text.push_str(&format!("{}: {verdict}\n", line[0].line()));
    }
    text
}

/// Goodput and p99 TTFT against the offered rate, one line per scheduler and configuration,
/// each line's highest passing rate ringed, as a self-contained SVG.
pub fn chart(points: &[Point], settings: &Settings, attainment: f64) -> Result<String, SweepError> {
    let drawing = |error: &dyn fmt::Display| SweepError::Chart(error.to_string());
    let lines: Vec<&[Point]> = points.chunk_by(|a, b| a.line() == b.line()).collect();
    let rate_range = range(points.iter().map(|p| p.request_rate));
    let goodput_max = points
        .iter()
        .map(|p| p.goodput_rps.max(p.request_rate))
        .fold(0.0, f64::max)
        * 1.1;
    let ttft_values = points.iter().map(|p| p.ttft_p99_ms.max(1.0));
    let ttft_range = range(ttft_values.chain(settings.slo.ttft_ms));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| drawing(&e))?;
        let objectives = [
            settings.slo.ttft_ms.map(|ms| format!("TTFT ≤ {ms} ms")),
            settings.slo.tpot_ms.map(|ms| format!("TPOT ≤ {ms} ms")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
        let root = root
            .titled(
                &format!(
                    "Capacity sweep: ringed points are each line's highest rate with ≥ {:.0} % of requests meeting {objectives}",
                    attainment * 100.0
                ),
                ("sans-serif", 16),
            )
            .map_err(|e| drawing(&e))?;
        let (left, right) = root.split_horizontally(600);

        let mut goodput = ChartBuilder::on(&left)
            .caption("goodput", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(rate_range.clone().log_scale(), 0.0..goodput_max.max(1.0))
            .map_err(|e| drawing(&e))?;
        goodput
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(8)
            .x_label_formatter(&|rate| format!("{rate}"))
            .x_desc("request rate (req/s)")
            .y_desc("goodput (req/s)")
            .draw()
            .map_err(|e| drawing(&e))?;
        goodput
            .draw_series(LineSeries::new(
                [rate_range.start, rate_range.end].map(|r| (r, r)),
                BLACK.mix(0.3).stroke_width(1),
            ))
            .map_err(|e| drawing(&e))?
            .label("offered rate")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.3)));

        let mut ttft = ChartBuilder::on(&right)
            .caption("p99 time to first token", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(rate_range.clone().log_scale(), ttft_range.log_scale())
            .map_err(|e| drawing(&e))?;
        ttft.configure_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(8)
            .x_label_formatter(&|rate| format!("{rate}"))
            .y_label_formatter(&|ms| format!("{ms:.0}"))
            .x_desc("request rate (req/s)")
            .y_desc("p99 TTFT (ms)")
            .draw()
            .map_err(|e| drawing(&e))?;
        if let Some(limit) = settings.slo.ttft_ms {
            ttft.draw_series(LineSeries::new(
                [rate_range.start, rate_range.end].map(|r| (r, limit)),
                RED.mix(0.6).stroke_width(1),
            ))
            .map_err(|e| drawing(&e))?;
            ttft.draw_series(std::iter::once(Text::new(
                format!("objective {limit} ms"),
                (rate_range.start * 1.05, limit),
                ("sans-serif", 12).into_font().color(&RED),
            )))
            .map_err(|e| drawing(&e))?;
        }

        draw_lines(&mut goodput, &lines, |p| p.goodput_rps)?;
        draw_lines(&mut ttft, &lines, |p| p.ttft_p99_ms.max(1.0))?;
        legend(&mut goodput)?;
        root.present().map_err(|e| drawing(&e))?;
    }
    Ok(svg)
}

type Chart<'a, 'b, Y> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<LogCoord<f64>, Y>>;

/// One line per scheduler and configuration, its points dotted, its highest passing rate ringed.
fn draw_lines<Y: Ranged<ValueType = f64>>(
    chart: &mut Chart<'_, '_, Y>,
    lines: &[&[Point]],
    value: fn(&Point) -> f64,
) -> Result<(), SweepError> {
    let drawing = |error: &dyn fmt::Display| SweepError::Chart(error.to_string());
    for (index, line) in lines.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(
                line.iter().map(|p| (p.request_rate, value(p))),
                color.stroke_width(2),
            ))
            .map_err(|e| drawing(&e))?
            .label(line[0].line())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                line.iter()
                    .map(|p| Circle::new((p.request_rate, value(p)), 3, color.filled())),
            )
            .map_err(|e| drawing(&e))?;
        chart
            .draw_series(
                line.iter()
                    .filter(|p| p.max_rate_meeting_slo)
                    .map(|p| Circle::new((p.request_rate, value(p)), 8, color.stroke_width(2))),
            )
            .map_err(|e| drawing(&e))?;
    }
    Ok(())
}

fn legend<'a, Y: Ranged<ValueType = f64>>(chart: &mut Chart<'a, 'a, Y>) -> Result<(), SweepError> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(|error| SweepError::Chart(error.to_string()))
}

/// A positive range around `values`, a little wider than they are.
fn range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (low, high) = values.fold((f64::INFINITY, 0.0f64), |(low, high), value| {
        (low.min(value), high.max(value))
    });
    let low = if low.is_finite() && low > 0.0 {
        low
    } else {
        1.0
    };
    let high = high.max(low * 2.0);
    low / 1.25..high * 1.25
}
