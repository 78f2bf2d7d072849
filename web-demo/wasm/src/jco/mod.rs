//! A policy component as jco transpiled it, as a [`Transport`] of the engine crate's component
//! backend: calls go through the JavaScript bindings. Their records are the contract's own
//! types ([`records`], generated from the WIT), carried in jco's JavaScript shape by one serde
//! data format ([`format`]) and converted to the crate's records by the conversions the host and
//! the guest use too. The backend checks them, as it does the wasmtime host's.

mod format;
mod records;

use js_sys::{Array, Function, Reflect, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue};
use waypoint_engine::backend::{BackendError, GuestFault, PolicyDescription};
use waypoint_engine::component::{ComponentBackend, Transport};
use waypoint_engine::fault::{Call, ContractViolation};
use waypoint_scheduler::output::{
    Added, EngineOutputs, FinishOutcome, ResetOutcome, SchedulerOutput,
};
use waypoint_scheduler::wit::Convert;
use waypoint_scheduler::{
    ConfigError, FinishStatus, LiveRequest, ModelOutput, NewRequest, OutputError, RequestError,
    SchedulerConfig, SchedulerStats, StateError, StepEvent,
};

use records::wit;

/// A scheduler in a transpiled policy component.
pub type JcoBackend = ComponentBackend<JcoTransport>;

/// What `describePolicy` returns (the `scheduler` interface's one record of its own).
#[derive(Deserialize)]
struct PolicyInfo {
    name: String,
    version: String,
}

/// A scheduler backend over the transpiled module's `scheduler` interface `exports`, for
/// `config`; `origin` names the component file.
pub fn backend(
    exports: &JsValue,
    config: SchedulerConfig,
    origin: &str,
) -> Result<JcoBackend, BackendError> {
    let info: PolicyInfo = decode(call(exports, "describePolicy", &[]).map_err(fault)?)?;
    let description = PolicyDescription {
        name: info.name,
        version: info.version,
        origin: origin.to_owned(),
    };
    let class = Reflect::get(exports, &JsValue::from_str("Scheduler"))
        .ok()
        .filter(|class| class.is_function())
        .ok_or_else(|| GuestFault::Incompatible("the component has no Scheduler".into()))?;
    let transport = JcoTransport {
        class,
        instance: JsValue::UNDEFINED,
    };
    ComponentBackend::new(transport, description, config)
}

/// The calls of one transpiled component's scheduler instance.
pub struct JcoTransport {
    class: JsValue,
    instance: JsValue,
}

/// What a call into the component threw.
enum Thrown {
    /// A `result` error of the contract (jco's `ComponentError`, with the variant as payload).
    Error(JsValue),
    /// Anything else: a trap or a broken binding.
    Fault(GuestFault),
}

impl From<GuestFault> for Thrown {
    fn from(fault: GuestFault) -> Self {
        Self::Fault(fault)
    }
}

impl JcoTransport {
    /// A call whose contract has no error case, returning the contract's record `W` as the
    /// crate's `T`.
    fn infallible<W, T>(&self, method: &str, args: &[JsValue]) -> Result<T, BackendError>
    where
        W: for<'de> Deserialize<'de> + Convert<T>,
    {
        let value = call(&self.instance, method, args).map_err(fault)?;
        Ok(decode::<W>(value)?.convert())
    }

    /// A call whose contract errors are `WE` (the crate's `E`), returning `W` as the crate's `T`.
    fn fallible<W, T, WE, E>(&self, method: &str, args: &[JsValue]) -> Result<T, BackendError>
    where
        W: for<'de> Deserialize<'de> + Convert<T>,
        WE: for<'de> Deserialize<'de> + Convert<E>,
        E: Into<BackendError>,
    {
        match call(&self.instance, method, args) {
            Ok(value) => Ok(decode::<W>(value)?.convert()),
            Err(thrown) => Err(contract_error::<WE, E>(thrown)),
        }
    }

    /// A static constructor of the `scheduler` resource, whose errors are `WE` (the crate's `E`).
    fn construct<WE, E>(&self, method: &str, args: &[JsValue]) -> Result<JsValue, BackendError>
    where
        WE: for<'de> Deserialize<'de> + Convert<E>,
        E: Into<BackendError>,
    {
        match call(&self.class, method, args) {
            Ok(instance) if instance.is_object() => Ok(instance),
            Ok(_) => Err(contract(format!("{method} returned no scheduler")).into()),
            Err(thrown) => Err(contract_error::<WE, E>(thrown)),
        }
    }
}

impl Transport for JcoTransport {
    fn create(&mut self, config: &SchedulerConfig) -> Result<(), BackendError> {
        let config: wit::SchedulerConfig = (*config).convert();
        self.instance =
            self.construct::<wit::ConfigError, ConfigError>("create", &[encode(&config)?])?;
        Ok(())
    }

    fn import_state(&mut self, state: &[u8], now_ns: u64) -> Result<(), BackendError> {
        let args = [Uint8Array::from(state).into(), now_ns.into()];
        self.instance = self.construct::<wit::StateError, StateError>("importState", &args)?;
        Ok(())
    }

    fn add_request(&mut self, request: &NewRequest, now_ns: u64) -> Result<Added, BackendError> {
        let request: wit::NewRequest = request.clone().convert();
        let args = [encode(&request)?, now_ns.into()];
        self.fallible::<wit::Added, _, wit::RequestError, RequestError>("addRequest", &args)
    }

    fn schedule(&mut self, now_ns: u64) -> Result<SchedulerOutput, BackendError> {
        self.infallible::<wit::SchedulerOutput, _>("schedule", &[now_ns.into()])
    }

    fn update_from_output(
        &mut self,
        output: &ModelOutput,
        now_ns: u64,
    ) -> Result<EngineOutputs, BackendError> {
        let output: wit::ModelOutput = output.convert();
        let args = [encode(&output)?, now_ns.into()];
        self.fallible::<wit::EngineOutputs, _, wit::OutputError, OutputError>(
            "updateFromOutput",
            &args,
        )
    }

    fn finish_requests(
        &mut self,
        ids: &[String],
        status: FinishStatus,
        now_ns: u64,
    ) -> Result<FinishOutcome, BackendError> {
        let status: wit::FinishStatus = status.convert();
        let args = [encode(ids)?, encode(&status)?, now_ns.into()];
        self.infallible::<wit::FinishOutcome, _>("finishRequests", &args)
    }

    fn reset_prefix_cache(
        &mut self,
        reset_running_requests: bool,
        now_ns: u64,
    ) -> Result<ResetOutcome, BackendError> {
        let args = [reset_running_requests.into(), now_ns.into()];
        self.infallible::<wit::ResetOutcome, _>("resetPrefixCache", &args)
    }

    fn shutdown(&mut self, now_ns: u64) -> Result<Vec<StepEvent>, BackendError> {
        self.infallible::<Vec<wit::StepEvent>, _>("shutdown", &[now_ns.into()])
    }

    fn stats(&mut self, now_ns: u64) -> Result<SchedulerStats, BackendError> {
        self.infallible::<wit::SchedulerStats, _>("stats", &[now_ns.into()])
    }

    fn live_requests(&mut self, now_ns: u64) -> Result<Vec<LiveRequest>, BackendError> {
        self.infallible::<Vec<wit::LiveRequest>, _>("liveRequests", &[now_ns.into()])
    }

    fn export_state(&mut self, now_ns: u64) -> Result<Vec<u8>, BackendError> {
        self.infallible::<Vec<u8>, _>("exportState", &[now_ns.into()])
    }
}

/// The contract's record `T` from what a call returned or threw.
fn decode<T: for<'de> Deserialize<'de>>(value: JsValue) -> Result<T, GuestFault> {
    format::from_js(value).map_err(|error| contract(error.to_string()))
}

/// An argument in jco's shape.
fn encode<T: Serialize + ?Sized>(value: &T) -> Result<JsValue, GuestFault> {
    format::to_js(value)
        .map_err(|error| GuestFault::Incompatible(format!("encoding an argument: {error}")))
}

/// Call `object[method](...args)`, telling the contract's errors from faults.
fn call(object: &JsValue, method: &str, args: &[JsValue]) -> Result<JsValue, Thrown> {
    let function = Reflect::get(object, &JsValue::from_str(method))
        .ok()
        .and_then(|f| f.dyn_into::<Function>().ok())
        .ok_or_else(|| GuestFault::Incompatible(format!("the component has no {method}")))?;
    let args: Array = args.iter().collect();
    function.apply(object, &args).map_err(|thrown| {
        match Reflect::get(&thrown, &JsValue::from_str("payload")) {
            Ok(payload) if payload.is_object() => Thrown::Error(payload),
            _ => Thrown::Fault(GuestFault::Trap(describe(&thrown))),
        }
    })
}

/// A thrown value's message (a `WebAssembly.RuntimeError` for a trap).
fn describe(thrown: &JsValue) -> String {
    thrown
        .dyn_ref::<js_sys::Error>()
        .map(|error| String::from(error.to_string()))
        .or_else(|| thrown.as_string())
        .unwrap_or_else(|| format!("{thrown:?}"))
}

/// A thrown value as the contract's error `WE` (the crate's `E`), or the fault it is.
fn contract_error<WE, E>(thrown: Thrown) -> BackendError
where
    WE: for<'de> Deserialize<'de> + Convert<E>,
    E: Into<BackendError>,
{
    match thrown {
        Thrown::Error(payload) => match decode::<WE>(payload) {
            Ok(error) => error.convert().into(),
            Err(fault) => fault.into(),
        },
        Thrown::Fault(fault) => fault.into(),
    }
}

fn fault(thrown: Thrown) -> BackendError {
    match thrown {
        Thrown::Error(_) => contract("an error where the contract has none").into(),
        Thrown::Fault(fault) => fault.into(),
    }
}

/// A record jco built that does not have the contract's shape.
fn contract(what: impl Into<String>) -> GuestFault {
    GuestFault::Contract(ContractViolation::Malformed {
        call: Call::Transport,
        what: what.into(),
    })
}
