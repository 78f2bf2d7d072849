//! The host's sandbox against hostile policy components (built by `cargo xtask hostile` into
//! `components/hostile/`): a trap, a runaway loop and unbounded allocation each become a typed
//! fault, the instance refuses further calls, and a reload restores service.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use waypoint::backend::{BackendError, GuestFault, SchedulerBackend};
use waypoint::guest::{GuestLimits, GuestRuntime, PolicyModule};
use waypoint_scheduler::{NewRequest, SchedulerConfig};

const LIMITS: GuestLimits = GuestLimits {
    memory_bytes: 32 << 20,
    call_timeout: Duration::from_millis(100),
};

/// For the tests whose guest must meet its own fault before any deadline: a debug build on a
/// busy two-core machine can take longer than 100 ms to fill 32 MiB.
const PATIENT_LIMITS: GuestLimits = GuestLimits {
    call_timeout: Duration::from_secs(30),
    ..LIMITS
};

fn hostile(name: &str, limits: GuestLimits) -> PolicyModule {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../components/hostile/{name}.wasm"));
    let runtime = GuestRuntime::new(limits).expect("wasmtime starts");
    runtime.load_file(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e:#} (build it with `cargo xtask hostile`)",
            path.display()
        )
    })
}

fn config() -> SchedulerConfig {
    SchedulerConfig {
        num_blocks: 64,
        max_model_len: 256,
        ..SchedulerConfig::default()
    }
}

fn fault(result: Result<impl std::fmt::Debug, BackendError>) -> GuestFault {
    match result {
        Err(BackendError::Guest(fault)) => fault,
        other => panic!("expected a guest fault, got {other:?}"),
    }
}

fn assert_reload_restores_service(backend: &mut dyn SchedulerBackend) {
    assert_eq!(
        fault(backend.stats(0)),
        GuestFault::Unavailable,
        "a faulted instance refuses calls"
    );
    backend.reload().expect("reload builds a fresh instance");
    backend
        .add_request(NewRequest::new("after-reload", vec![1; 8]), 1)
        .expect("the reloaded instance serves");
}

#[test]
fn a_trap_on_the_fifth_call_is_a_typed_fault_and_a_reload_recovers() {
    let mut backend = hostile("trap", PATIENT_LIMITS)
        .create(config())
        .expect("creating is not a counted call");
    for i in 0..4 {
        backend
            .add_request(NewRequest::new(format!("r{i}"), vec![1; 8]), i)
            .expect("calls before the fifth succeed");
    }
    match fault(backend.schedule(10)) {
        GuestFault::Trap(message) => {
            assert!(message.contains("unreachable"), "{message}");
            assert!(message.contains("schedule"), "names the export: {message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_reload_restores_service(&mut backend);
}

#[test]
fn a_runaway_loop_is_interrupted_at_the_call_deadline() {
    let mut backend = hostile("spin", LIMITS).create(config()).expect("create");
    let start = Instant::now();
    assert_eq!(
        fault(backend.schedule(1)),
        GuestFault::Timeout { limit_ms: 100 }
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "interrupted promptly: {:?}",
        start.elapsed()
    );
    assert_reload_restores_service(&mut backend);
}

#[test]
fn unbounded_allocation_stops_at_the_memory_limit() {
    let mut backend = hostile("grow", PATIENT_LIMITS)
        .create(config())
        .expect("create");
    assert_eq!(
        fault(backend.schedule(1)),
        GuestFault::MemoryLimit {
            limit_bytes: 32 << 20
        }
    );
    assert_reload_restores_service(&mut backend);
}

#[test]
fn a_file_that_is_not_a_policy_component_is_refused_with_a_reason() {
    let runtime = GuestRuntime::new(LIMITS).expect("wasmtime starts");
    match runtime.load(b"\0asm not really", "garbage.wasm") {
        Err(BackendError::Guest(GuestFault::Incompatible(why))) => {
            assert!(why.contains("garbage.wasm"), "{why}")
        }
        Err(other) => panic!("expected Incompatible, got {other:?}"),
        Ok(_) => panic!("garbage loaded"),
    }
}
