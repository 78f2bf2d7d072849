//! Through the real engine loop (scheduler + model over the paged KV cache), greedy outputs do
//! not change with prefix caching on or off, with tiny prefill chunks, or with so few KV blocks
//! that requests are preempted and recomputed — natively and through a policy component, with
//! blocking or awaited steps.

mod common;

use common::tiny_random_model;

use std::collections::BTreeMap;

use waypoint::backend::NativeBackend;
use waypoint::builtin::builtin_policy;
use waypoint::engine::{Engine, EngineRequest};
use waypoint::guest::{GuestLimits, GuestRuntime};
use waypoint::model::encode_bytes;
use waypoint::model::sampling::SamplingParams;
use waypoint_scheduler::{JourneyConfig, JourneyEventType, NewRequest, SchedulerConfig};

fn prompts() -> Vec<(String, Vec<u32>)> {
    let shared = "You are a careful assistant. Answer briefly: ";
    [
        "what is a KV cache?",
        "why preempt?",
        "what is a prefix hit?",
        "tell me about paging",
        "hi",
    ]
    .iter()
    .enumerate()
    .map(|(i, question)| {
        (
            format!("req-{i}"),
            encode_bytes(&format!("{shared}{question}")),
        )
    })
    .collect()
}

fn base() -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 256,
        max_model_len: 128,
        block_size: 4,
        num_blocks: 256,
        journey: JourneyConfig { enabled: true },
        ..SchedulerConfig::default()
    }
}

/// How the engine's steps are driven.
#[derive(Clone, Copy, PartialEq)]
enum Stepping {
    /// `Engine::step`, as the server's engine thread does.
    Blocking,
    /// `Engine::step_async`, as the browser demo does on WebGPU.
    Awaited,
}

/// Greedy outputs by request id, and the number of preemptions seen.
fn generate(engine_backend: &str, config: SchedulerConfig) -> (BTreeMap<String, Vec<u32>>, usize) {
    generate_stepping(engine_backend, config, Stepping::Blocking)
}

fn generate_stepping(
    engine_backend: &str,
    config: SchedulerConfig,
    stepping: Stepping,
) -> (BTreeMap<String, Vec<u32>>, usize) {
    let model = tiny_random_model();
    let backend: Box<dyn waypoint::backend::SchedulerBackend> = match engine_backend {
        "native" => Box::new(NativeBackend::new(config).expect("valid config")),
        policy => {
            let runtime = GuestRuntime::new(GuestLimits::default()).expect("wasmtime");
            let module = runtime
                .load(builtin_policy(policy).expect("built-in"), policy)
                .expect("loads");
            Box::new(module.create(config).expect("valid config"))
        }
    };
    let mut engine = Engine::new(backend, model, &config);
    for (id, prompt) in prompts() {
        let request = NewRequest {
            max_tokens: 12,
            ..NewRequest::new(id, prompt)
        };
        engine
            .add(
                EngineRequest {
                    request,
                    sampling: SamplingParams::default(),
                },
                (),
                0,
            )
            .expect("accepted");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (mut outputs, mut preemptions, mut now) = (BTreeMap::new(), 0, 0);
    while engine.num_unfinished() > 0 {
        now += 1000;
        let step = match stepping {
            Stepping::Blocking => engine.step(now, || now + 500).expect("step"),
            Stepping::Awaited => runtime
                .block_on(engine.step_async(now, || now + 500))
                .expect("step"),
        };
        preemptions += step
            .journey_events
            .iter()
            .filter(|e| e.event_type == JourneyEventType::Preempted)
            .count();
        for (done, ()) in step.finished {
            outputs.insert(done.id.to_string(), done.token_ids);
        }
    }
    (outputs, preemptions)
}

#[test]
fn greedy_outputs_do_not_depend_on_caching_chunking_or_preemption() {
    let (expected, _) = generate("native", base());
    assert_eq!(expected.len(), 5);
    assert!(expected.values().all(|tokens| tokens.len() == 12));
    let variants = [
        (
            "prefix caching off",
            SchedulerConfig {
                enable_prefix_caching: false,
                ..base()
            },
        ),
        (
            "prefill chunks of 5 tokens",
            SchedulerConfig {
                max_num_batched_tokens: 16,
                long_prefill_token_threshold: 5,
                ..base()
            },
        ),
        (
            "preemption",
            SchedulerConfig {
                num_blocks: 33,
                ..base()
            },
        ),
    ];
    for (name, config) in variants {
        let (outputs, preemptions) = generate("native", config);
        assert_eq!(outputs, expected, "{name}");
        if name == "preemption" {
            assert!(preemptions > 0, "the small cache preempts");
        }
    }
}

#[test]
fn a_policy_component_drives_the_model_to_the_same_greedy_outputs() {
    let (expected, _) = generate(
        "native",
        SchedulerConfig {
            num_blocks: 33,
            ..base()
        },
    );
    let (outputs, preemptions) = generate(
        "fcfs",
        SchedulerConfig {
            num_blocks: 33,
            ..base()
        },
    );
    assert!(preemptions > 0);
    assert_eq!(outputs, expected);
}

#[test]
fn awaited_steps_give_the_same_greedy_outputs_as_blocking_steps() {
    let config = SchedulerConfig {
        num_blocks: 33,
        ..base()
    };
    let (expected, _) = generate("fcfs", config);
    let (outputs, preemptions) = generate_stepping("fcfs", config, Stepping::Awaited);
    assert!(preemptions > 0);
    assert_eq!(outputs, expected);
}
