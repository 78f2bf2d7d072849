//! The `waypoint` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use waypoint::bench;
use waypoint::conformance;
use waypoint::guest::{GuestLimits, GuestRuntime};
use waypoint::spec::SchedulerSpec;
use waypoint_scheduler::PolicyKind;

#[derive(Parser)]
#[command(
    name = "waypoint",
    version,
    about = "LLM request scheduling with request journeys"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Most linear memory a policy component instance may use, in MiB.
    #[arg(long, global = true, default_value_t = 256)]
    guest_memory_limit: usize,
    /// Most CPU time one call into a policy component may take, in milliseconds.
    #[arg(long, global = true, default_value_t = 1000)]
    guest_call_timeout_ms: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Check a policy component against the scheduler contract, scenario by scenario.
    Conformance {
        /// A policy component file, or a built-in policy name (fcfs, priority, fair).
        component: String,
    },
    /// Scheduler cycle latency natively and through a policy component, side by side.
    Bench {
        /// Running requests to measure at.
        #[arg(long, value_delimiter = ',', default_value = "64,256,1024")]
        running: Vec<u32>,
        /// Timed cycles per measurement.
        #[arg(long, default_value_t = 2000)]
        cycles: u32,
        /// The component to compare with the native scheduler (its policy runs natively too).
        #[arg(long, default_value = "fcfs")]
        scheduler: SchedulerSpec,
    },
}

fn runtime(cli: &Cli) -> Result<GuestRuntime> {
    GuestRuntime::new(GuestLimits {
        memory_bytes: cli.guest_memory_limit << 20,
        call_timeout: Duration::from_millis(cli.guest_call_timeout_ms),
    })
}

fn conformance(cli: &Cli, component: &str) -> Result<ExitCode> {
    let spec: SchedulerSpec = if component.ends_with(".wasm") {
        SchedulerSpec::File(PathBuf::from(component))
    } else {
        component.parse().map_err(anyhow::Error::msg)?
    };
    let runtime = runtime(cli)?;
    let module = match spec.load(&runtime) {
        Ok(Some(module)) => module,
        Ok(None) => {
            anyhow::bail!("conformance checks a policy component, not the native scheduler")
        }
        Err(error) => {
            println!("conformance of {component}\n  FAIL  loads as a policy component: {error:#}\n0 passed, 1 failed");
            return Ok(ExitCode::FAILURE);
        }
    };
    let outcomes = conformance::run(&module);
    print!("{}", conformance::report(&module, &outcomes));
    Ok(if outcomes.iter().all(|o| o.failure.is_none()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn bench(cli: &Cli, running: &[u32], cycles: u32, spec: &SchedulerSpec) -> Result<ExitCode> {
    let runtime = runtime(cli)?;
    let module = spec
        .load(&runtime)?
        .context("bench compares a policy component with the native scheduler")?;
    let policy = match module.description().name.as_str() {
        "priority" => PolicyKind::Priority,
        "fair" => PolicyKind::Fair,
        _ => PolicyKind::Fcfs,
    };
    println!("steady decode, one schedule + update_from_output cycle; {cycles} timed cycles each");
    println!(
        "{:>8}  {:>12} {:>10}  {:>12} {:>10}  {:>10}",
        "running", "native p50", "p99", "wasm p50", "p99", "wasm/native"
    );
    let warmup = cycles / 10;
    for &n in running {
        let config = bench::decode_config(n, warmup + cycles);
        let mut native = SchedulerSpec::Native(policy).open(None, config)?;
        let mut wasm = spec.open(Some(&module), config)?;
        let native_figures = bench::measure(native.as_mut(), n, warmup, cycles)?;
        let wasm_figures = bench::measure(wasm.as_mut(), n, warmup, cycles)?;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{n:>8}  {:>10.2}µs {:>8.2}µs  {:>10.2}µs {:>8.2}µs  {:>10.2}×",
            us(native_figures.median),
            us(native_figures.p99),
            us(wasm_figures.median),
            us(wasm_figures.p99),
            us(wasm_figures.median) / us(native_figures.median),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Conformance { component } => conformance(&cli, component),
        Command::Bench {
            running,
            cycles,
            scheduler,
        } => bench(&cli, running, *cycles, scheduler),
    }
}
