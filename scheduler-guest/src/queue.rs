//! Queue policies: the order of the waiting queue and the choice of the preemption victim.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use crate::config::PolicyKind;
use crate::request::{Request, RequestId};
use crate::table::{ReqIdx, RequestTable};

/// A scheduling policy owns the waiting queue and picks whom to preempt when KV runs out.
///
/// The scheduler peeks at the head to admit, pops what it admitted, puts preempted requests back
/// with [`push_front`](Self::push_front) and removes aborted ones with [`remove`](Self::remove).
pub trait SchedulingPolicy: Send {
    /// The policy's name (`fcfs`, `priority`).
    fn name(&self) -> &'static str;
    /// Enqueue a newly added request.
    fn push_back(&mut self, request: &Request, idx: ReqIdx);
    /// Re-enqueue a preempted request ahead of newcomers, where the policy has a front.
    fn push_front(&mut self, request: &Request, idx: ReqIdx);
    /// The next request to admit.
    fn peek(&self) -> Option<ReqIdx>;
    /// Remove and return the next request to admit.
    fn pop(&mut self) -> Option<ReqIdx>;
    /// Remove a request from anywhere in the queue; returns whether it was there.
    fn remove(&mut self, request: &Request, idx: ReqIdx) -> bool;
    /// Requests waiting.
    fn len(&self) -> usize;
    /// Whether nothing waits.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The waiting requests in admission order.
    fn order(&self) -> Vec<ReqIdx>;
    /// The position in `running` of the request to preempt. `running` is never empty.
    fn preemption_victim(&self, running: &[ReqIdx], requests: &RequestTable) -> usize;
}

/// Build the policy a configuration names.
pub fn new_policy(kind: PolicyKind) -> Box<dyn SchedulingPolicy> {
    match kind {
        PolicyKind::Fcfs => Box::new(FcfsPolicy::default()),
        PolicyKind::Priority => Box::new(PriorityPolicy::default()),
    }
}

/// First come, first served. Preempted requests go back to the front; the victim is the most
/// recently admitted running request (the last in the running list).
#[derive(Clone, Debug, Default)]
pub struct FcfsPolicy {
    queue: VecDeque<ReqIdx>,
}

impl SchedulingPolicy for FcfsPolicy {
    fn name(&self) -> &'static str {
        "fcfs"
    }
    fn push_back(&mut self, _request: &Request, idx: ReqIdx) {
        self.queue.push_back(idx);
    }
    fn push_front(&mut self, _request: &Request, idx: ReqIdx) {
        self.queue.push_front(idx);
    }
    fn peek(&self) -> Option<ReqIdx> {
        self.queue.front().copied()
    }
    fn pop(&mut self) -> Option<ReqIdx> {
        self.queue.pop_front()
    }
    fn remove(&mut self, _request: &Request, idx: ReqIdx) -> bool {
        match self.queue.iter().position(|&queued| queued == idx) {
            Some(position) => self.queue.remove(position).is_some(),
            None => false,
        }
    }
    fn len(&self) -> usize {
        self.queue.len()
    }
    fn order(&self) -> Vec<ReqIdx> {
        self.queue.iter().copied().collect()
    }
    fn preemption_victim(&self, running: &[ReqIdx], _requests: &RequestTable) -> usize {
        running.len() - 1
    }
}

type PriorityKey = (i32, u64, RequestId);

fn priority_key(request: &Request) -> PriorityKey {
    (request.priority, request.arrival_ns, request.id.clone())
}

/// Lowest `(priority, arrival, id)` first. A preempted request simply rejoins the ordered set
/// (there is no front). The victim is the running request with the largest
/// `(priority, arrival)`; the first such one in the running list on a tie (Python's `max`).
#[derive(Clone, Debug, Default)]
pub struct PriorityPolicy {
    queue: BTreeMap<PriorityKey, ReqIdx>,
}

impl SchedulingPolicy for PriorityPolicy {
    fn name(&self) -> &'static str {
        "priority"
    }
    fn push_back(&mut self, request: &Request, idx: ReqIdx) {
        self.queue.insert(priority_key(request), idx);
    }
    fn push_front(&mut self, request: &Request, idx: ReqIdx) {
        self.push_back(request, idx);
    }
    fn peek(&self) -> Option<ReqIdx> {
        self.queue.first_key_value().map(|(_, &idx)| idx)
    }
    fn pop(&mut self) -> Option<ReqIdx> {
        self.queue.pop_first().map(|(_, idx)| idx)
    }
    fn remove(&mut self, request: &Request, _idx: ReqIdx) -> bool {
        self.queue.remove(&priority_key(request)).is_some()
    }
    fn len(&self) -> usize {
        self.queue.len()
    }
    fn order(&self) -> Vec<ReqIdx> {
        self.queue.values().copied().collect()
    }
    fn preemption_victim(&self, running: &[ReqIdx], requests: &RequestTable) -> usize {
        let mut victim = 0;
        for (position, &idx) in running.iter().enumerate() {
            let (candidate, current) = (&requests[idx], &requests[running[victim]]);
            if (candidate.priority, candidate.arrival_ns) > (current.priority, current.arrival_ns) {
                victim = position;
            }
        }
        victim
    }
}
