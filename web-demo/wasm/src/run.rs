//! A simulation as the page asks for it: `waypoint simulate`'s inputs as one JSON document, and
//! its outputs — the journey log and the report — with the scheduler's load after every step.

use std::io::BufReader;

use serde::{Deserialize, Serialize};
use waypoint_engine::backend::SchedulerBackend;
use waypoint_scheduler::SchedulerConfig;
use waypoint_sim::arrivals::{read_workload, Arrival, WorkloadError};
use waypoint_sim::latency::LatencyModel;
use waypoint_sim::report::{Report, Slo};
use waypoint_sim::settings::{EngineSettings, SyntheticSettings};
use waypoint_sim::{simulate, Outputs, Settings, SimError, StepSample};

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The settings are malformed.
    #[error("settings: {0}")]
    Settings(String),
    /// The simulation stopped.
    #[error(transparent)]
    Simulation(#[from] SimError),
}

/// Everything `waypoint simulate` takes, by its flag names.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulationSpec {
    /// Where requests come from.
    pub workload: WorkloadSpec,
    /// A latency-model file's text (`--latency-model`); the default model without it.
    #[serde(default)]
    pub latency_model: Option<String>,
    /// `--slo-ttft-ms`.
    #[serde(default)]
    pub slo_ttft_ms: Option<f64>,
    /// `--slo-tpot-ms`.
    #[serde(default)]
    pub slo_tpot_ms: Option<f64>,
    /// The engine flags.
    pub engine: EngineSettings,
}

/// `--workload FILE` or the synthetic generator's flags.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkloadSpec {
    /// A workload file's JSON Lines.
    Jsonl(String),
    /// The synthetic generator.
    Synthetic(SyntheticSettings),
}

impl SimulationSpec {
    /// The scheduler configuration, journeys on, as `waypoint simulate` builds it.
    pub fn config(&self) -> SchedulerConfig {
        self.engine.config(true)
    }

    /// Parse the page's JSON.
    pub fn from_json(text: &str) -> Result<Self, RunError> {
        serde_json::from_str(text).map_err(|e| RunError::Settings(e.to_string()))
    }

    /// The latency model and objectives.
    pub fn settings(&self) -> Result<Settings, RunError> {
        let latency = match &self.latency_model {
            Some(text) => LatencyModel::from_json(text)
                .map_err(|e| RunError::Settings(format!("latency model: {e}")))?,
            None => LatencyModel::default(),
        };
        Ok(Settings {
            latency,
            slo: Slo {
                ttft_ms: self.slo_ttft_ms,
                tpot_ms: self.slo_tpot_ms,
            },
        })
    }

    /// The workload's arrivals, in order.
    pub fn arrivals(&self) -> Result<Vec<Result<Arrival, WorkloadError>>, RunError> {
        let max_model_len = self.engine.max_model_len;
        Ok(match &self.workload {
            WorkloadSpec::Jsonl(text) => {
                read_workload(BufReader::new(text.as_bytes()), max_model_len).collect()
            }
            WorkloadSpec::Synthetic(settings) => settings
                .synthetic(max_model_len)
                .map_err(RunError::Settings)?
                .arrivals()
                .map(Ok)
                .collect(),
        })
    }
}

/// The scheduler's load, one entry per step, as columns for the charts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepSeries {
    /// Virtual time after each step, ms.
    pub t_ms: Vec<f64>,
    /// Fraction of KV blocks in use.
    pub kv_cache_usage: Vec<f64>,
    /// Requests running.
    pub num_running: Vec<u32>,
    /// Requests waiting.
    pub num_waiting: Vec<u32>,
    /// Tokens computed in the step.
    pub scheduled_tokens: Vec<u32>,
}

impl StepSeries {
    /// Append one step.
    pub fn push(&mut self, sample: &StepSample) {
        self.t_ms.push(sample.now_ns as f64 / 1e6);
        self.kv_cache_usage.push(sample.kv_cache_usage);
        self.num_running.push(sample.num_running);
        self.num_waiting.push(sample.num_waiting);
        self.scheduled_tokens.push(sample.scheduled_tokens);
    }
}

/// What a run gives the page.
#[derive(Debug, Serialize)]
pub struct SimulationResult {
    /// `waypoint simulate`'s report.
    pub report: Report,
    /// The canonical journey JSON Lines, byte for byte what `--journey-log` writes.
    pub journeys: String,
    /// The load after every step.
    pub steps: StepSeries,
}

/// Run `spec` on `backend`; `progress` hears the number of finished requests after each step.
pub fn run(
    backend: &mut dyn SchedulerBackend,
    spec: &SimulationSpec,
    progress: &dyn Fn(u64),
) -> Result<SimulationResult, RunError> {
    let settings = spec.settings()?;
    let arrivals = spec.arrivals()?;
    let mut journeys = Vec::new();
    let mut steps = StepSeries::default();
    let mut record = |sample: &StepSample| steps.push(sample);
    let mut outputs = Outputs {
        journey_log: Some(&mut journeys),
        chrome_trace: None,
        progress: Some(progress),
        steps: Some(&mut record),
    };
    let report = simulate(backend, arrivals.into_iter(), settings, &mut outputs)?;
    Ok(SimulationResult {
        report,
        // Journey lines are serde_json output: always UTF-8.
        journeys: String::from_utf8_lossy(&journeys).into_owned(),
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use waypoint_engine::backend::NativeBackend;

    fn spec(workload: &str) -> String {
        format!(
            r#"{{"workload": {workload}, "engine": {{"max_num_seqs": 8, "max_num_batched_tokens": 256,
            "max_model_len": 512, "num_blocks": 128, "block_size": 16, "enable_prefix_caching": true,
            "enable_chunked_prefill": true, "long_prefill_token_threshold": 0}}}}"#
        )
    }

    #[test]
    fn a_synthetic_run_journeys_every_request_and_samples_every_step() {
        let spec = SimulationSpec::from_json(&spec(
            r#"{"synthetic": {"num_requests": 20, "burstiness": 1.0, "prompt_lengths": "uniform:10-300",
            "output_lengths": "fixed:8", "prefix_fraction": 0.0, "prefix_groups": 8, "prefix_len": 128,
            "priorities": "0", "clients": "0", "seed": 3}}"#,
        ))
        .expect("spec");
        let mut backend = NativeBackend::new(spec.config()).expect("backend");
        let result = run(&mut backend, &spec, &|_| {}).expect("run");
        let finished = result
            .journeys
            .lines()
            .filter(|l| l.contains("\"FINISHED\""))
            .count();
        assert_eq!(finished, 20);
        assert_eq!(result.report.requests, 20);
        assert_eq!(result.steps.t_ms.len() as u64, result.report.steps);
        assert!(result.steps.kv_cache_usage.iter().any(|&u| u > 0.0));
    }

    #[test]
    fn a_workload_file_runs_as_given() {
        let lines = concat!(
            r#"{"id": "a", "arrival_ms": 0, "prompt_len": 40, "output_len": 3}"#,
            "\n",
            r#"{"id": "b", "arrival_ms": 5, "prompt_len": 20, "output_len": 2}"#,
        );
        let workload = serde_json::json!({ "jsonl": lines }).to_string();
        let spec = SimulationSpec::from_json(&spec(&workload)).expect("spec");
        let mut backend = NativeBackend::new(spec.config()).expect("backend");
        let result = run(&mut backend, &spec, &|_| {}).expect("run");
        assert_eq!(result.report.requests, 2);
    }

    #[test]
    fn malformed_settings_are_named() {
        let error = SimulationSpec::from_json(&spec(r#"{"synthetic": {"num_requests": 1}}"#))
            .expect_err("missing fields");
        assert!(error.to_string().contains("missing field"), "{error}");
        let spec = SimulationSpec::from_json(&spec(
            r#"{"synthetic": {"num_requests": 1, "burstiness": 1.0, "prompt_lengths": "lognormal",
            "output_lengths": "fixed:8", "prefix_fraction": 0.0, "prefix_groups": 8, "prefix_len": 128,
            "priorities": "0", "clients": "0", "seed": 3}}"#,
        ))
        .expect("parses");
        assert!(matches!(spec.arrivals(), Err(RunError::Settings(_))));
    }
}
