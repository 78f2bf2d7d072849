//! One interface to a scheduler, whether linked natively or loaded as a policy component, so
//! every feature of the host, the simulator and the browser runs on either; and the native
//! backend.

use std::fmt;

use thiserror::Error;

pub use crate::fault::GuestFault;
use waypoint_scheduler::output::{
    Added, EngineOutputs, FinishOutcome, ResetOutcome, SchedulerOutput,
};
use waypoint_scheduler::{
    ConfigError, FinishStatus, ModelOutput, NewRequest, OutputError, PolicyKind, RequestError,
    Scheduler, SchedulerConfig, SchedulerStats, StateError, StepEvent,
};

/// Why a backend call failed. Scheduler errors are the crate's own types on both backends.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum BackendError {
    /// The configuration was rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The request was rejected; nothing changed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The model output was rejected; nothing changed.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The state could not be imported.
    #[error(transparent)]
    State(#[from] StateError),
    /// The guest itself failed.
    #[error(transparent)]
    Guest(#[from] GuestFault),
}

/// What runs the scheduling decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyDescription {
    /// The policy name (`fcfs`, `priority`, `fair`, or a third party's).
    pub name: String,
    /// Its version.
    pub version: String,
    /// `native` or the component it was loaded from.
    pub origin: String,
}

impl fmt::Display for PolicyDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.name, self.version, self.origin)
    }
}

/// The scheduler calls of the `waypoint:scheduler` contract. See the `waypoint-scheduler`
/// crate for their semantics. Not `Send`: the browser's backend holds JavaScript objects; the
/// host's threads ask for `dyn SchedulerBackend + Send`.
pub trait SchedulerBackend {
    /// Which policy runs, and from where.
    fn policy(&self) -> &PolicyDescription;
    /// Submit a request.
    fn add_request(&mut self, request: NewRequest, now_ns: u64) -> Result<Added, BackendError>;
    /// Decide the next step.
    fn schedule(&mut self, now_ns: u64) -> Result<SchedulerOutput, BackendError>;
    /// Report the step's sampled tokens.
    fn update_from_output(
        &mut self,
        output: &ModelOutput,
        now_ns: u64,
    ) -> Result<EngineOutputs, BackendError>;
    /// Finish requests from outside the step loop.
    fn finish_requests(
        &mut self,
        ids: &[String],
        status: FinishStatus,
        now_ns: u64,
    ) -> Result<FinishOutcome, BackendError>;
    /// Clear the prefix cache.
    fn reset_prefix_cache(
        &mut self,
        reset_running_requests: bool,
        now_ns: u64,
    ) -> Result<ResetOutcome, BackendError>;
    /// Close the open step-tracing window.
    fn shutdown(&mut self, now_ns: u64) -> Result<Vec<StepEvent>, BackendError>;
    /// Load and cache statistics.
    fn stats(&mut self, now_ns: u64) -> Result<SchedulerStats, BackendError>;
    /// The whole state, for `import_state` here or in another backend.
    fn export_state(&mut self, now_ns: u64) -> Result<Vec<u8>, BackendError>;
    /// Replace the scheduler with one continuing from `state`.
    fn import_state(&mut self, state: &[u8], now_ns: u64) -> Result<(), BackendError>;
    /// Replace the scheduler with a fresh one of the same configuration (after a fault).
    fn reload(&mut self) -> Result<(), BackendError>;
}

/// The scheduler crate linked into the host.
pub struct NativeBackend {
    scheduler: Scheduler,
    config: SchedulerConfig,
    description: PolicyDescription,
}

impl NativeBackend {
    /// A native scheduler for `config` (its `policy` field picks the policy).
    pub fn new(config: SchedulerConfig) -> Result<Self, BackendError> {
        let name = match config.policy {
            PolicyKind::Fcfs => "fcfs",
            PolicyKind::Priority => "priority",
            PolicyKind::Fair => "fair",
        };
        Ok(Self {
            scheduler: Scheduler::new(config)?,
            config,
            description: PolicyDescription {
                name: name.into(),
                version: env!("CARGO_PKG_VERSION").into(),
                origin: "native".into(),
            },
        })
    }
}

impl SchedulerBackend for NativeBackend {
    fn policy(&self) -> &PolicyDescription {
        &self.description
    }
    fn add_request(&mut self, request: NewRequest, now_ns: u64) -> Result<Added, BackendError> {
        Ok(self.scheduler.add_request(request, now_ns)?)
    }
    fn schedule(&mut self, now_ns: u64) -> Result<SchedulerOutput, BackendError> {
        Ok(self.scheduler.schedule(now_ns))
    }
    fn update_from_output(
        &mut self,
        output: &ModelOutput,
        now_ns: u64,
    ) -> Result<EngineOutputs, BackendError> {
        Ok(self.scheduler.update_from_output(output, now_ns)?)
    }
    fn finish_requests(
        &mut self,
        ids: &[String],
        status: FinishStatus,
        now_ns: u64,
    ) -> Result<FinishOutcome, BackendError> {
        Ok(self
            .scheduler
            .finish_requests(ids.iter().map(String::as_str), status, now_ns))
    }
    fn reset_prefix_cache(
        &mut self,
        reset_running_requests: bool,
        now_ns: u64,
    ) -> Result<ResetOutcome, BackendError> {
        Ok(self
            .scheduler
            .reset_prefix_cache(reset_running_requests, now_ns))
    }
    fn shutdown(&mut self, now_ns: u64) -> Result<Vec<StepEvent>, BackendError> {
        Ok(self.scheduler.shutdown(now_ns))
    }
    fn stats(&mut self, _now_ns: u64) -> Result<SchedulerStats, BackendError> {
        Ok(self.scheduler.stats())
    }
    fn export_state(&mut self, _now_ns: u64) -> Result<Vec<u8>, BackendError> {
        Ok(self.scheduler.export_state())
    }
    fn import_state(&mut self, state: &[u8], now_ns: u64) -> Result<(), BackendError> {
        self.scheduler = Scheduler::import_state(state, self.config.policy, now_ns)?;
        Ok(())
    }
    fn reload(&mut self) -> Result<(), BackendError> {
        self.scheduler = Scheduler::new(self.config)?;
        Ok(())
    }
}
