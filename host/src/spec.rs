//! `--scheduler` values: which scheduler backend to run.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use waypoint_scheduler::{PolicyKind, SchedulerConfig};

use crate::backend::{BackendError, NativeBackend, SchedulerBackend};
use crate::builtin::builtin_policy;
use crate::guest::{GuestRuntime, PolicyModule};

/// A scheduler backend named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchedulerSpec {
    /// The scheduler crate linked natively: `native` (FCFS), `native:priority`, `native:fair`.
    Native(PolicyKind),
    /// A built-in policy component: `fcfs`, `priority`, `fair`.
    Builtin(String),
    /// A policy component file (`*.wasm`).
    File(PathBuf),
}

impl FromStr for SchedulerSpec {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let native = |kind: &str| match kind {
            "fcfs" => Ok(PolicyKind::Fcfs),
            "priority" => Ok(PolicyKind::Priority),
            "fair" => Ok(PolicyKind::Fair),
            other => Err(format!(
                "unknown native policy {other:?} (fcfs, priority, fair)"
            )),
        };
        match value {
            "native" => Ok(Self::Native(PolicyKind::Fcfs)),
            _ if value.starts_with("native:") => native(&value["native:".len()..]).map(Self::Native),
            _ if builtin_policy(value).is_some() => Ok(Self::Builtin(value.into())),
            _ if value.ends_with(".wasm") => Ok(Self::File(PathBuf::from(value))),
            _ => Err(format!(
                "unknown scheduler {value:?}: use native, native:<policy>, fcfs, priority, fair or a path to a .wasm component"
            )),
        }
    }
}

impl fmt::Display for SchedulerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Native(PolicyKind::Fcfs) => write!(f, "native"),
            Self::Native(PolicyKind::Priority) => write!(f, "native:priority"),
            Self::Native(PolicyKind::Fair) => write!(f, "native:fair"),
            Self::Builtin(name) => write!(f, "{name}"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl SchedulerSpec {
    /// Compile the named component (nothing to compile for the native backend).
    pub fn load(&self, runtime: &GuestRuntime) -> anyhow::Result<Option<PolicyModule>> {
        match self {
            Self::Native(_) => Ok(None),
            Self::Builtin(name) => {
                let bytes = builtin_policy(name)
                    .ok_or_else(|| anyhow::anyhow!("no built-in policy {name}"))?;
                Ok(Some(runtime.load(bytes, &format!("built-in {name}"))?))
            }
            Self::File(path) => runtime.load_file(path).map(Some),
        }
    }

    /// A backend for `config`: the native scheduler, or an instance of `module`.
    pub fn open(
        &self,
        module: Option<&PolicyModule>,
        config: SchedulerConfig,
    ) -> Result<Box<dyn SchedulerBackend + Send>, BackendError> {
        match (self, module) {
            (Self::Native(policy), _) => Ok(Box::new(NativeBackend::new(SchedulerConfig {
                policy: *policy,
                ..config
            })?)),
            (_, Some(module)) => Ok(Box::new(module.create(config)?)),
            (_, None) => Err(crate::backend::GuestFault::Incompatible(format!(
                "{self} was not loaded"
            ))
            .into()),
        }
    }
}
