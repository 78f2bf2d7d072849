//! The engine's one record per request: whatever payload a request is submitted with comes back
//! exactly once, on each way out (finished in a step, finished from outside, refused, shed by a
//! recovery, lost to a reload), and none outlives the engine's hold on it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::tiny_random_model;
use waypoint::backend::{BackendError, NativeBackend};
use waypoint::engine::{Engine, EngineRequest, Recovered, Refused, Reloaded};
use waypoint::model::sampling::SamplingParams;
use waypoint_scheduler::{FinishStatus, NewRequest, SchedulerConfig};

/// A payload that counts how many of its kind are alive.
#[derive(Debug)]
struct Tracked {
    id: &'static str,
    alive: Arc<AtomicUsize>,
}

impl Tracked {
    fn new(id: &'static str, alive: &Arc<AtomicUsize>) -> Self {
        alive.fetch_add(1, Ordering::SeqCst);
        Self {
            id,
            alive: alive.clone(),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

fn request(id: &str, max_tokens: u32) -> EngineRequest {
    EngineRequest {
        request: NewRequest {
            max_tokens,
            ..NewRequest::new(id, vec![1, 2, 3, 4, 5])
        },
        sampling: SamplingParams::default(),
    }
}

#[test]
fn every_payload_comes_back_once_on_each_way_out() {
    let config = SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 256,
        max_model_len: 128,
        block_size: 4,
        num_blocks: 256,
        ..SchedulerConfig::default()
    };
    let model = tiny_random_model();
    let backend = Box::new(NativeBackend::new(config).expect("valid config"));
    let mut engine: Engine<NativeBackend, Tracked> = Engine::new(backend, model, &config);
    let alive = Arc::new(AtomicUsize::new(0));
    for (id, max_tokens) in [
        ("short", 2),
        ("aborted", 40),
        ("lost-1", 40),
        ("lost-2", 40),
    ] {
        engine
            .add(request(id, max_tokens), Tracked::new(id, &alive), 0)
            .expect("accepted");
    }

    let refused = engine
        .add(request("short", 2), Tracked::new("duplicate", &alive), 0)
        .expect_err("a duplicate id is refused");
    let Refused { error, payload, .. } = refused;
    assert!(matches!(error, BackendError::Request(_)), "{error}");
    assert_eq!(payload.id, "duplicate");
    drop(payload);
    assert_eq!(alive.load(Ordering::SeqCst), 4);

    let mut now = 0;
    let finished = loop {
        now += 1000;
        let step = engine.step(now, || now + 500).expect("step");
        if !step.finished.is_empty() {
            break step.finished;
        }
    };
    let ids: Vec<&str> = finished.iter().map(|(_, payload)| payload.id).collect();
    assert_eq!(ids, ["short"]);
    assert_eq!(finished[0].0.token_ids.len(), 2);
    drop(finished);
    assert_eq!(alive.load(Ordering::SeqCst), 3);

    let aborted = engine
        .finish(&["aborted".into()], FinishStatus::Aborted, now + 1)
        .expect("finish");
    let ids: Vec<&str> = aborted
        .completions
        .iter()
        .map(|(_, payload)| payload.id)
        .collect();
    assert_eq!(ids, ["aborted"]);
    assert_eq!(
        engine.payload_mut("aborted").map(|payload| payload.id),
        None
    );
    drop(aborted);
    assert_eq!(alive.load(Ordering::SeqCst), 2);

    engine
        .add(
            request("newest", 40),
            Tracked::new("newest", &alive),
            now + 2,
        )
        .expect("accepted");
    let Recovered {
        failed,
        shed,
        result,
        ..
    } = engine.recover(None, &[], 1, 3, now + 3);
    result.expect("the others taken back");
    assert!(failed.is_empty());
    let ids: Vec<&str> = shed.iter().map(|(_, payload)| payload.id).collect();
    assert_eq!(ids, ["newest"], "the newest arrival is shed");
    drop(shed);
    assert_eq!(alive.load(Ordering::SeqCst), 2);
    assert_eq!(engine.num_unfinished(), 2);

    let Reloaded { lost, result } = engine.reload();
    result.expect("a fresh scheduler");
    let mut ids: Vec<&str> = lost.iter().map(|(_, payload)| payload.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["lost-1", "lost-2"]);
    assert!(lost.iter().all(|(id, payload)| &**id == payload.id));
    drop(lost);
    assert_eq!(alive.load(Ordering::SeqCst), 0);
    assert_eq!(engine.num_unfinished(), 0);
}
