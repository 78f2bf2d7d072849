//! Policy components under wasmtime: compile once, instantiate per scheduler, sandbox every
//! call, and recover from a faulty guest by reloading it.
//!
//! The sandbox: the linker grants no imports (a component that needs one fails to load), each
//! store's memory is capped by a resource limiter, and every call runs under an epoch deadline
//! ticked by one background thread. A trap, a timeout or a denied memory grow becomes a
//! [`GuestFault`]. The instance's calls are a [`Transport`] of the engine crate's
//! [`ComponentBackend`], which checks every result and keeps a faulted instance unusable until
//! `reload` builds a fresh one from the compiled component.

mod convert;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceAny};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, Inlining, ProfilingStrategy, ResourceLimiter, Store, Trap,
};
use waypoint_engine::component::{ComponentBackend, Transport};
use waypoint_scheduler::output::{
    Added, EngineOutputs, FinishOutcome, ResetOutcome, SchedulerOutput,
};
use waypoint_scheduler::wit::Convert;
use waypoint_scheduler::{
    ConfigError, FinishStatus, LiveRequest, ModelOutput, NewRequest, OutputError, RequestError,
    SchedulerConfig, SchedulerStats, StateError, StepEvent,
};

use crate::backend::{BackendError, GuestFault, PolicyDescription};

wasmtime::component::bindgen!({
    world: "policy",
    path: "../wit",
});

use exports::waypoint::scheduler::scheduler::GuestScheduler as Guest;
use exports::waypoint::scheduler::types as wit;

/// Sandbox limits for every scheduler instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestLimits {
    /// Most linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// Most CPU time one call may take (rounded up to whole epoch ticks).
    pub call_timeout: Duration,
}

impl Default for GuestLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            call_timeout: Duration::from_millis(1000),
        }
    }
}

/// One epoch tick.
const TICK: Duration = Duration::from_millis(1);

/// Advances the engine's epoch every [`TICK`]; stops and joins on drop.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("waypoint-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Per-store data: the memory limiter, which remembers whether it denied a grow.
struct StoreState {
    memory_limit: usize,
    denied_grow: bool,
}

impl ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.memory_limit;
        self.denied_grow |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// The wasmtime engine all policy components run on.
#[derive(Clone)]
pub struct GuestRuntime {
    engine: Engine,
    linker: Arc<Linker<StoreState>>,
    limits: GuestLimits,
    /// Started with the first component loaded, so a native run has no epoch thread.
    ticker: Arc<OnceLock<EpochTicker>>,
}

impl GuestRuntime {
    /// An engine with epoch interruption and the given limits.
    pub fn new(limits: GuestLimits) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // Policies are instantiated once per scheduler and make indirect calls every step
        // (their `Policy` trait objects): filled tables make those calls cheaper.
        config.table_lazy_init(false);
        // Cranelift inlines small functions the guest's compiler left as calls (compiler
        // builtins, allocator helpers) and the component's adapters: 6 % fewer instructions on a
        // simulation through the component, for twice the compile time (about 0.85 s instead of
        // 0.4 s, once per component, since compiled code is cached).
        config.compiler_inlining(Inlining::Yes);
        // Compiled components are kept in wasmtime's cache (keyed by the component, wasmtime's
        // version and these settings), so a command starts without compiling again. Without a
        // usable cache directory, components are compiled each time.
        if let Ok(cache) = Cache::new(CacheConfig::new()) {
            config.cache(Some(cache));
        }
        // `perf` names a component's functions only from a perf map (/tmp/perf-PID.map), which
        // wasmtime writes when asked: set WAYPOINT_PERF_MAP=1 to profile the guest's own code.
        if std::env::var_os("WAYPOINT_PERF_MAP").is_some() {
            config.profiler(ProfilingStrategy::PerfMap);
        }
        let engine =
            Engine::new(&config).map_err(|e| anyhow::anyhow!("starting wasmtime: {e:?}"))?;
        Ok(Self {
            linker: Arc::new(Linker::new(&engine)),
            ticker: Arc::new(OnceLock::new()),
            engine,
            limits,
        })
    }

    /// Compile a policy component and check it against the contract.
    pub fn load(&self, bytes: &[u8], origin: &str) -> Result<PolicyModule, BackendError> {
        self.ticker
            .get_or_init(|| EpochTicker::start(self.engine.clone()));
        let incompatible =
            |error: wasmtime::Error| GuestFault::Incompatible(format!("{origin}: {error:?}"));
        let component = Component::new(&self.engine, bytes).map_err(incompatible)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(PolicyPre::new)
            .map_err(incompatible)?;
        let module = PolicyModule {
            runtime: self.clone(),
            pre,
            description: PolicyDescription {
                name: String::new(),
                version: String::new(),
                origin: origin.into(),
            },
        };
        let (mut store, bindings) = module.instantiate()?;
        let info = call(&mut store, self.limits, |store| {
            bindings
                .waypoint_scheduler_scheduler()
                .call_describe_policy(store)
        })?;
        Ok(PolicyModule {
            description: PolicyDescription {
                name: info.name,
                version: info.version,
                origin: origin.into(),
            },
            ..module
        })
    }

    /// Compile a policy component from a file.
    pub fn load_file(&self, path: &Path) -> anyhow::Result<PolicyModule> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("reading policy component {}: {e}", path.display()))?;
        Ok(self.load(&bytes, &path.display().to_string())?)
    }
}

/// A compiled policy component, ready to instantiate schedulers.
#[derive(Clone)]
pub struct PolicyModule {
    runtime: GuestRuntime,
    pre: PolicyPre<StoreState>,
    description: PolicyDescription,
}

impl PolicyModule {
    /// The policy's name, version and origin.
    pub fn description(&self) -> &PolicyDescription {
        &self.description
    }

    fn instantiate(&self) -> Result<(Store<StoreState>, Policy), BackendError> {
        let limits = self.runtime.limits;
        let mut store = Store::new(
            &self.runtime.engine,
            StoreState {
                memory_limit: limits.memory_bytes,
                denied_grow: false,
            },
        );
        store.limiter(|state| state);
        store.set_epoch_deadline(ticks(limits.call_timeout));
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|error| fault(&store, limits, error))?;
        Ok((store, bindings))
    }

    /// A scheduler in a fresh instance of this component.
    pub fn create(&self, config: SchedulerConfig) -> Result<GuestBackend, BackendError> {
        let transport = WasmtimeTransport {
            module: self.clone(),
            instance: None,
        };
        ComponentBackend::new(transport, self.description.clone(), config)
    }
}

fn ticks(timeout: Duration) -> u64 {
    (timeout.as_micros().div_ceil(TICK.as_micros())).max(1) as u64
}

/// Turn a failed call into a fault, telling a timeout and a denied grow from other traps.
fn fault(store: &Store<StoreState>, limits: GuestLimits, error: wasmtime::Error) -> BackendError {
    let fault = match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => GuestFault::Timeout {
            limit_ms: limits.call_timeout.as_millis() as u64,
        },
        _ if store.data().denied_grow => GuestFault::MemoryLimit {
            limit_bytes: limits.memory_bytes,
        },
        Some(trap) => GuestFault::Trap(describe_trap(*trap, &error)),
        None => GuestFault::Trap(format!("{error:#}")),
    };
    BackendError::Guest(fault)
}

/// `<trap> in <export>`: the trap and the guest export it happened under.
fn describe_trap(trap: Trap, error: &wasmtime::Error) -> String {
    let export = error
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .and_then(|backtrace| backtrace.frames().last()?.func_name().map(str::to_owned));
    match export {
        Some(export) => format!("{trap} in {export}"),
        None => trap.to_string(),
    }
}

/// Run one call under a fresh deadline.
fn call<T>(
    store: &mut Store<StoreState>,
    limits: GuestLimits,
    f: impl FnOnce(&mut Store<StoreState>) -> wasmtime::Result<T>,
) -> Result<T, BackendError> {
    store.set_epoch_deadline(ticks(limits.call_timeout));
    store.data_mut().denied_grow = false;
    f(store).map_err(|error| fault(store, limits, error))
}

/// A scheduler in a policy component under wasmtime.
pub type GuestBackend = ComponentBackend<WasmtimeTransport>;

/// The calls of one policy component instance under wasmtime. A trap, timeout or denied grow
/// is a [`GuestFault`]; [`ComponentBackend`] poisons the instance on it and checks every result.
pub struct WasmtimeTransport {
    module: PolicyModule,
    /// `None` until `create` or `import_state` succeeds.
    instance: Option<Instance>,
}

/// A component instance and the scheduler resource living in it.
struct Instance {
    store: Store<StoreState>,
    bindings: Policy,
    scheduler: ResourceAny,
}

impl WasmtimeTransport {
    /// Call the scheduler resource under a fresh deadline.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&Guest, &mut Store<StoreState>, ResourceAny) -> wasmtime::Result<T>,
    ) -> Result<T, BackendError> {
        let instance = self.instance.as_mut().ok_or(GuestFault::Unavailable)?;
        let limits = self.module.runtime.limits;
        let bindings = instance.bindings.waypoint_scheduler_scheduler().scheduler();
        let scheduler = instance.scheduler;
        call(&mut instance.store, limits, |store| {
            f(&bindings, store, scheduler)
        })
    }

    /// Install a new scheduler resource in a fresh instance (the old instance is dropped).
    fn replace(
        &mut self,
        make: impl FnOnce(
            &Guest,
            &mut Store<StoreState>,
        ) -> wasmtime::Result<Result<ResourceAny, BackendError>>,
    ) -> Result<(), BackendError> {
        self.instance = None;
        let (mut store, bindings) = self.module.instantiate()?;
        let limits = self.module.runtime.limits;
        let scheduler = call(&mut store, limits, |store| {
            make(&bindings.waypoint_scheduler_scheduler().scheduler(), store)
        })??;
        self.instance = Some(Instance {
            store,
            bindings,
            scheduler,
        });
        Ok(())
    }
}

impl Transport for WasmtimeTransport {
    fn create(&mut self, config: &SchedulerConfig) -> Result<(), BackendError> {
        let config: wit::SchedulerConfig = (*config).convert();
        self.replace(|guest, store| {
            let result = guest.call_create(store, config)?;
            Ok(result.map_err(|e| Convert::<ConfigError>::convert(e).into()))
        })
    }

    fn import_state(&mut self, state: &[u8], now_ns: u64) -> Result<(), BackendError> {
        self.replace(|guest, store| {
            let result = guest.call_import_state(store, state, now_ns)?;
            Ok(result.map_err(|e| Convert::<StateError>::convert(e).into()))
        })
    }

    fn add_request(&mut self, request: &NewRequest, now_ns: u64) -> Result<Added, BackendError> {
        let request: wit::NewRequest = request.clone().convert();
        let added =
            self.with(|guest, store, s| guest.call_add_request(store, s, &request, now_ns))?;
        let added = added.map_err(Convert::<RequestError>::convert)?;
        Ok(added.convert())
    }

    fn schedule(&mut self, now_ns: u64) -> Result<SchedulerOutput, BackendError> {
        let output = self.with(|guest, store, s| guest.call_schedule(store, s, now_ns))?;
        Ok(output.convert())
    }

    fn update_from_output(
        &mut self,
        output: &ModelOutput,
        now_ns: u64,
    ) -> Result<EngineOutputs, BackendError> {
        let output: wit::ModelOutput = output.convert();
        let result =
            self.with(|guest, store, s| guest.call_update_from_output(store, s, &output, now_ns))?;
        let outputs = result.map_err(Convert::<OutputError>::convert)?;
        Ok(outputs.convert())
    }

    fn finish_requests(
        &mut self,
        ids: &[String],
        status: FinishStatus,
        now_ns: u64,
    ) -> Result<FinishOutcome, BackendError> {
        let status: wit::FinishStatus = status.convert();
        let outcome =
            self.with(|guest, store, s| guest.call_finish_requests(store, s, ids, status, now_ns))?;
        Ok(outcome.convert())
    }

    fn reset_prefix_cache(
        &mut self,
        reset_running_requests: bool,
        now_ns: u64,
    ) -> Result<ResetOutcome, BackendError> {
        let outcome = self.with(|guest, store, s| {
            guest.call_reset_prefix_cache(store, s, reset_running_requests, now_ns)
        })?;
        Ok(outcome.convert())
    }

    fn shutdown(&mut self, now_ns: u64) -> Result<Vec<StepEvent>, BackendError> {
        let events = self.with(|guest, store, s| guest.call_shutdown(store, s, now_ns))?;
        Ok(events.convert())
    }

    fn stats(&mut self, now_ns: u64) -> Result<SchedulerStats, BackendError> {
        let stats = self.with(|guest, store, s| guest.call_stats(store, s, now_ns))?;
        Ok(stats.convert())
    }

    fn live_requests(&mut self, now_ns: u64) -> Result<Vec<LiveRequest>, BackendError> {
        let requests = self.with(|guest, store, s| guest.call_live_requests(store, s, now_ns))?;
        Ok(requests.convert())
    }

    fn export_state(&mut self, now_ns: u64) -> Result<Vec<u8>, BackendError> {
        self.with(|guest, store, s| guest.call_export_state(store, s, now_ns))
    }
}
