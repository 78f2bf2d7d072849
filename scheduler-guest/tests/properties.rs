//! Property tests: random workloads of adds, steps with random tokens (EOS included), aborts,
//! prefix-sharing prompts and cache resets, with the scheduler's invariants checked after
//! every call, every request finishing once the workload ends, and every journey following
//! the journey grammar; and the block pool's prefix-cache index against a plain model of it.

mod common;

use std::collections::{HashMap, HashSet};

use common::EOS;
use proptest::prelude::*;
use waypoint_scheduler::kv::hash::{hash_block_tokens, ExtraKeys};
use waypoint_scheduler::kv::{BlockHash, BlockPool};
use waypoint_scheduler::{
    FinishStatus, JourneyConfig, JourneyEvent, JourneyValidator, ModelOutput, NewRequest,
    PolicyKind, RequestHandle, RequestStatus, Scheduler, SchedulerConfig,
};

#[derive(Clone, Debug)]
enum Op {
    Add {
        group: u8,
        prefix_blocks: u8,
        suffix: u16,
        max_tokens: u16,
        priority: i8,
        sampled: bool,
    },
    Step,
    Abort {
        pick: u16,
    },
    Reset {
        running_too: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 0u8..4, 1u16..40, 1u16..24, -2i8..3, prop::bool::weighted(0.8)).prop_map(
            |(group, prefix_blocks, suffix, max_tokens, priority, sampled)| Op::Add {
                group, prefix_blocks, suffix, max_tokens, priority, sampled
            }
        ),
        6 => Just(Op::Step),
        1 => (0u16..1000).prop_map(|pick| Op::Abort { pick }),
        1 => prop::bool::weighted(0.3).prop_map(|running_too| Op::Reset { running_too }),
    ]
}

fn config() -> impl Strategy<Value = SchedulerConfig> {
    (
        prop_oneof![Just(2u32), Just(4), Just(16)],
        1u32..8,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(0u32), Just(8), Just(24)],
        any::<bool>(),
        prop::bool::weighted(0.8),
    )
        .prop_map(
            |(
                block_size,
                max_num_seqs,
                caching,
                chunked,
                priority,
                threshold,
                reserve,
                journey,
            )| {
                let max_model_len = 160;
                SchedulerConfig {
                    max_num_seqs,
                    max_num_batched_tokens: if chunked { 48 } else { max_model_len },
                    max_model_len,
                    block_size,
                    // Barely more than one full-length sequence: preemption is frequent.
                    num_blocks: max_model_len.div_ceil(block_size) + 2,
                    enable_prefix_caching: caching,
                    enable_chunked_prefill: chunked,
                    long_prefill_token_threshold: threshold,
                    reserve_full_prompt: reserve,
                    policy: if priority {
                        PolicyKind::Priority
                    } else {
                        PolicyKind::Fcfs
                    },
                    journey: JourneyConfig { enabled: journey },
                    ..SchedulerConfig::default()
                }
            },
        )
}

/// The invariants that must hold between any two calls.
fn check(s: &Scheduler, finished: &HashSet<String>) -> Result<(), TestCaseError> {
    let pool = s.kv().pool();
    let mut owners = vec![0u32; pool.num_blocks() as usize];
    for request in s.requests().iter() {
        prop_assert!(request.num_computed_tokens() <= request.num_tokens());
        for &block in request.block_ids() {
            owners[block as usize] += 1;
        }
        match request.status() {
            RequestStatus::Running => {}
            _ => prop_assert!(
                request.block_ids().is_empty(),
                "a queued request holds blocks"
            ),
        }
    }
    prop_assert_eq!(pool.ref_count(0), 0);
    prop_assert!(!pool.is_free(0), "the null block is never free");
    for block in 1..pool.num_blocks() {
        let count = pool.ref_count(block);
        prop_assert_eq!(
            count,
            owners[block as usize],
            "ref count of block {} != owners",
            block
        );
        prop_assert!(
            pool.is_free(block) != (count > 0),
            "block {} free and held",
            block
        );
    }
    prop_assert!(s.num_running() <= s.config().max_num_seqs as usize);
    prop_assert_eq!(s.num_running() + s.num_waiting(), s.requests().len());
    let running: Vec<_> = s.running_ids();
    for id in &running {
        prop_assert_eq!(
            s.request(id).map(|r| r.status()),
            Some(RequestStatus::Running)
        );
    }
    for id in s.waiting_ids() {
        let status = s.request(&id).map(|r| r.status());
        prop_assert!(matches!(
            status,
            Some(RequestStatus::Waiting | RequestStatus::Preempted)
        ));
    }
    for id in finished {
        prop_assert!(
            s.request(id).is_none(),
            "finished request {} still present",
            id
        );
    }
    Ok(())
}

struct Workload {
    s: Scheduler,
    finished: HashSet<String>,
    live: Vec<String>,
    names: HashMap<RequestHandle, String>,
    next_id: usize,
    rng: u64,
    now: u64,
    journeys: JourneyValidator,
}

impl Workload {
    fn observe(&mut self, events: &[JourneyEvent]) -> Result<(), TestCaseError> {
        for event in events {
            self.journeys
                .observe(event)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        Ok(())
    }

    fn token(&mut self) -> u32 {
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if (self.rng >> 33) % 10 == 0 {
            EOS
        } else {
            ((self.rng >> 40) % 1000) as u32
        }
    }

    fn step(&mut self) -> Result<(), TestCaseError> {
        self.now += 1000;
        let output = self.s.schedule(self.now);
        let budget = self.s.config().max_num_batched_tokens;
        prop_assert!(output.total_num_scheduled_tokens <= budget);
        prop_assert!(output.batch.is_well_formed());
        let sum: u32 = output.batch.num_scheduled_tokens.iter().sum();
        prop_assert_eq!(sum, output.total_num_scheduled_tokens);
        check(&self.s, &self.finished)?;
        self.observe(&output.journey_events)?;
        let sampled = output
            .batch
            .sample
            .iter()
            .map(|&sample| sample.then(|| self.token()))
            .collect();
        self.now += 1;
        let engine = self
            .s
            .update_from_output(
                &ModelOutput {
                    sampled_token_ids: sampled,
                },
                self.now,
            )
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        self.observe(&engine.journey_events)?;
        for finish in &engine.finishes {
            let handle = engine.handles[finish.index as usize];
            self.finished.insert(self.names[&handle].clone());
        }
        check(&self.s, &self.finished)
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Add {
                group,
                prefix_blocks,
                suffix,
                max_tokens,
                priority,
                sampled,
            } => {
                let id = format!("r{}", self.next_id);
                self.next_id += 1;
                let mut prompt: Vec<u32> =
                    vec![10_000 + u32::from(group); usize::from(prefix_blocks) * 16];
                prompt.extend((0..u32::from(suffix)).map(|t| t * 7 + self.next_id as u32));
                prompt.truncate(150);
                let request = NewRequest {
                    max_tokens: u32::from(max_tokens),
                    eos_token_id: Some(EOS),
                    priority: i32::from(priority),
                    arrival_ns: self.now,
                    journey_sampled: sampled,
                    ..NewRequest::new(id.clone(), prompt)
                };
                let added = self
                    .s
                    .add_request(request, self.now)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                self.observe(&added.journey_events)?;
                self.names.insert(added.handle, id.clone());
                self.live.push(id);
            }
            Op::Step => self.step()?,
            Op::Abort { pick } => {
                if !self.live.is_empty() {
                    let id = self.live[usize::from(pick) % self.live.len()].clone();
                    let outcome =
                        self.s
                            .finish_requests([id.as_str()], FinishStatus::Aborted, self.now);
                    self.observe(&outcome.journey_events)?;
                    for id in outcome.finished_ids {
                        self.finished.insert(id.to_string());
                    }
                }
            }
            Op::Reset { running_too } => {
                let outcome = self.s.reset_prefix_cache(running_too, self.now);
                self.observe(&outcome.journey_events)?;
                if running_too {
                    prop_assert!(outcome.reset);
                    prop_assert_eq!(self.s.num_running(), 0);
                }
            }
        }
        self.live.retain(|id| !self.finished.contains(id));
        check(&self.s, &self.finished)
    }
}

/// One call on a [`BlockPool`]; `pick` chooses among the blocks the call applies to.
#[derive(Clone, Debug)]
enum PoolOp {
    Take { n: u8 },
    Cache { pick: u8, content: u8 },
    Free { pick: u8 },
    Evict { pick: u8 },
}

fn pool_op() -> impl Strategy<Value = PoolOp> {
    prop_oneof![
        (1u8..3).prop_map(|n| PoolOp::Take { n }),
        (any::<u8>(), 0u8..3).prop_map(|(pick, content)| PoolOp::Cache { pick, content }),
        any::<u8>().prop_map(|pick| PoolOp::Free { pick }),
        any::<u8>().prop_map(|pick| PoolOp::Evict { pick }),
    ]
}

proptest! {
    // 96 cases in CI; PROPTEST_CASES=N runs a deeper search locally.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn invariants_hold_after_every_call_and_every_request_finishes(
        config in config(),
        ops in prop::collection::vec(op(), 1..160),
        seed in any::<u64>(),
    ) {
        let mut w = Workload {
            s: Scheduler::new(config).expect("valid generated config"),
            finished: HashSet::new(),
            live: Vec::new(),
            names: HashMap::new(),
            next_id: 0,
            rng: seed,
            now: 0,
            journeys: JourneyValidator::new(),
        };
        for op in ops {
            w.apply(op)?;
        }
        let mut steps = 0;
        while w.s.num_unfinished() > 0 {
            w.step()?;
            steps += 1;
            prop_assert!(steps < 20_000, "workload did not drain");
        }
        let _ = w.s.schedule(w.now + 10_000);
        let pool = w.s.kv().pool();
        prop_assert_eq!(pool.num_free_blocks(), pool.num_usable_blocks());
        prop_assert!(w.s.requests().is_empty());
        prop_assert_eq!(w.s.journey_state_len(), 0);
        prop_assert_eq!(w.journeys.num_open(), 0, "a journey did not end with FINISHED");
    }

    /// Whatever blocks are taken, cached, freed and evicted, a hash's lookup names the first
    /// block still cached under it, in caching order, as vLLM's table does.
    #[test]
    fn prefix_cache_lookups_follow_caching_order_through_evictions(
        ops in prop::collection::vec(pool_op(), 1..300),
    ) {
        const NUM_BLOCKS: u32 = 6;
        let contents: Vec<BlockHash> = (0..3)
            .map(|token| hash_block_tokens(BlockHash::from(0u128), &[token], ExtraKeys::default()))
            .collect();
        let mut pool = BlockPool::new(NUM_BLOCKS);
        let mut held: Vec<u32> = Vec::new();
        let mut hash_of: HashMap<u32, BlockHash> = HashMap::new();
        let mut eager: HashMap<BlockHash, Vec<u32>> = HashMap::new();
        let forget = |eager: &mut HashMap<BlockHash, Vec<u32>>, hash_of: &mut HashMap<u32, BlockHash>, block: u32| {
            if let Some(hash) = hash_of.remove(&block) {
                eager.entry(hash).or_default().retain(|&b| b != block);
            }
        };
        for op in ops {
            match op {
                PoolOp::Take { n } => {
                    let mut blocks = Vec::new();
                    if pool.get_new_blocks(u32::from(n), &mut blocks).is_ok() {
                        for &block in &blocks {
                            forget(&mut eager, &mut hash_of, block);
                        }
                        held.extend(blocks);
                    }
                }
                PoolOp::Cache { pick, content } => {
                    let uncached: Vec<u32> =
                        held.iter().copied().filter(|b| !hash_of.contains_key(b)).collect();
                    if let Some(&block) = uncached.get(usize::from(pick) % uncached.len().max(1)) {
                        let hash = contents[usize::from(content)];
                        pool.cache_block(block, hash);
                        hash_of.insert(block, hash);
                        eager.entry(hash).or_default().push(block);
                    }
                }
                PoolOp::Free { pick } => {
                    if !held.is_empty() {
                        let block = held.remove(usize::from(pick) % held.len());
                        pool.free_blocks([block]);
                    }
                }
                PoolOp::Evict { pick } => {
                    let free = pool.free_block_ids();
                    if let Some(&block) = free.get(usize::from(pick) % free.len().max(1)) {
                        let was_cached = hash_of.contains_key(&block);
                        prop_assert_eq!(pool.evict_cached_block(block), was_cached);
                        forget(&mut eager, &mut hash_of, block);
                    }
                }
            }
            for hash in &contents {
                let expected = eager.get(hash).cloned().unwrap_or_default();
                prop_assert_eq!(pool.lookup(*hash), expected.first().copied());
                prop_assert_eq!(pool.num_blocks_cached_under(*hash), expected.len());
            }
            let distinct = eager.values().filter(|blocks| !blocks.is_empty()).count();
            prop_assert_eq!(pool.num_cached_hashes(), distinct);
        }
    }
}
