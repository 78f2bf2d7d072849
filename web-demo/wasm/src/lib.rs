//! Waypoint's browser demo in Rust: `waypoint simulate` driving the policy components the host
//! loads (jco makes them JavaScript modules), and the model runner stepping on WebGPU.

mod jco;
pub mod live;
pub mod run;

use wasm_bindgen::prelude::*;

pub use jco::{JcoBackend, JcoTransport};

#[cfg(target_family = "wasm")]
extern "C" {
    fn __wasm_call_ctors();
}

/// Run the static constructors (cubecl registers its kernels' attributes in them) once, when
/// the module starts. Calling them explicitly stops wasm-ld from wrapping every export in a
/// call to them, which re-ran them on every call from JavaScript — thousands per step.
#[cfg(target_family = "wasm")]
#[wasm_bindgen(start)]
fn start() {
    // SAFETY: wasm-ld's constructor entry point; this is its only caller, once per instance.
    unsafe { __wasm_call_ctors() }
}

/// Run `waypoint simulate` on a transpiled policy component. `component` is its `scheduler`
/// interface, `origin` names it in the report, `spec` is a [`run::SimulationSpec`] as JSON and
/// `progress` hears the number of finished requests after every step. Returns a
/// [`run::SimulationResult`] as JSON.
#[wasm_bindgen]
pub fn simulate(
    component: &JsValue,
    origin: &str,
    spec: &str,
    progress: Option<js_sys::Function>,
) -> Result<String, JsError> {
    let spec = run::SimulationSpec::from_json(spec)?;
    let mut backend = jco::backend(component, spec.config(), origin)?;
    let report = |finished: u64| report_progress(progress.as_ref(), finished);
    let result = run::run(&mut backend, &spec, &report)?;
    Ok(serde_json::to_string(&result)?)
}

/// Live mode: the same workload with the tiny model stepping on WebGPU, `component` deciding
/// every step. `now_ms` reads a monotonic clock (`performance.now`). Returns a
/// [`live::LiveResult`] as JSON.
#[wasm_bindgen]
pub async fn live(
    component: JsValue,
    origin: String,
    spec: String,
    now_ms: js_sys::Function,
    progress: Option<js_sys::Function>,
) -> Result<String, JsError> {
    let spec = run::SimulationSpec::from_json(&spec)?;
    let backend = jco::backend(&component, spec.config(), &origin)?;
    let elapsed_ms = || {
        now_ms
            .call0(&JsValue::NULL)
            .ok()
            .and_then(|now| now.as_f64())
            .unwrap_or(0.0)
    };
    let report = |finished: u64| report_progress(progress.as_ref(), finished);
    let result = live::run(backend, &spec, &elapsed_ms, &report).await?;
    Ok(serde_json::to_string(&result)?)
}

/// The page's check of its model runner on WebGPU: the paged forward (the paged-attention
/// kernel) against the dense reference. Returns a [`live::ModelCheck`] as JSON.
#[wasm_bindgen]
pub async fn check_model() -> Result<String, JsError> {
    let check = live::check_model().await?;
    Ok(serde_json::to_string(&check)?)
}

fn report_progress(progress: Option<&js_sys::Function>, finished: u64) {
    if let Some(progress) = progress {
        // A throwing progress callback must not stop the run.
        let _ = progress.call1(&JsValue::NULL, &JsValue::from_f64(finished as f64));
    }
}
