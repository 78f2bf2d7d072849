//! Queue policies: the order of the waiting queue and the choice of the preemption victim.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

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
    /// `request` got `num_tokens` tokens in a step that was just decided.
    fn on_scheduled(&mut self, _request: &Request, _num_tokens: u32) {}
    /// The policy's own accounting, for a state export.
    fn snapshot(&self) -> PolicySnapshot {
        PolicySnapshot::default()
    }
    /// Take over accounting from a state import (policies without accounting ignore it).
    fn restore(&mut self, _snapshot: &PolicySnapshot) {}
}

/// Policy accounting carried across a state export and import.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySnapshot {
    /// Tokens scheduled per client so far (the fair policy's service counters).
    pub client_service: Vec<(u32, u64)>,
}

/// Build the policy a configuration names.
pub fn new_policy(kind: PolicyKind) -> Box<dyn SchedulingPolicy> {
    match kind {
        PolicyKind::Fcfs => Box::new(FcfsPolicy::default()),
        PolicyKind::Priority => Box::new(PriorityPolicy::default()),
        PolicyKind::Fair => Box::new(FairPolicy::default()),
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

/// Fair sharing between clients (a request's client index is its tenant), by least attained
/// service on scheduled tokens:
///
/// - each client has its own FCFS queue (preempted requests return to its front);
/// - admission takes the head of the waiting client that has had the fewest tokens scheduled
///   (ties: the lowest client index), so a tenant's burst queues behind its own requests while
///   other tenants keep being admitted;
/// - a client that starts waiting is lifted to the least service among clients already waiting,
///   so idle time is not banked into a later burst;
/// - the preemption victim is the most recently admitted running request of the running client
///   with the most service (ties: the highest client index).
#[derive(Clone, Debug, Default)]
pub struct FairPolicy {
    queues: BTreeMap<u32, VecDeque<ReqIdx>>,
    service: BTreeMap<u32, u64>,
    len: usize,
}

impl FairPolicy {
    fn service_of(&self, client: u32) -> u64 {
        self.service.get(&client).copied().unwrap_or(0)
    }

    fn next_client(&self) -> Option<u32> {
        self.queues
            .keys()
            .copied()
            .min_by_key(|&client| (self.service_of(client), client))
    }

    fn enqueue(&mut self, client: u32, idx: ReqIdx, front: bool) {
        if !self.queues.contains_key(&client) {
            let floor = self.queues.keys().map(|&c| self.service_of(c)).min();
            if let Some(floor) = floor {
                let service = self.service.entry(client).or_insert(0);
                *service = (*service).max(floor);
            }
        }
        let queue = self.queues.entry(client).or_default();
        if front {
            queue.push_front(idx);
        } else {
            queue.push_back(idx);
        }
        self.len += 1;
    }
}

impl SchedulingPolicy for FairPolicy {
    fn name(&self) -> &'static str {
        "fair"
    }
    fn push_back(&mut self, request: &Request, idx: ReqIdx) {
        self.enqueue(request.client_index, idx, false);
    }
    fn push_front(&mut self, request: &Request, idx: ReqIdx) {
        self.enqueue(request.client_index, idx, true);
    }
    fn peek(&self) -> Option<ReqIdx> {
        let client = self.next_client()?;
        self.queues.get(&client)?.front().copied()
    }
    fn pop(&mut self) -> Option<ReqIdx> {
        let client = self.next_client()?;
        let queue = self.queues.get_mut(&client)?;
        let idx = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&client);
        }
        self.len -= 1;
        Some(idx)
    }
    fn remove(&mut self, request: &Request, idx: ReqIdx) -> bool {
        let client = request.client_index;
        let Some(queue) = self.queues.get_mut(&client) else {
            return false;
        };
        let Some(position) = queue.iter().position(|&queued| queued == idx) else {
            return false;
        };
        queue.remove(position);
        if queue.is_empty() {
            self.queues.remove(&client);
        }
        self.len -= 1;
        true
    }
    fn len(&self) -> usize {
        self.len
    }
    fn order(&self) -> Vec<ReqIdx> {
        let mut clients: Vec<u32> = self.queues.keys().copied().collect();
        clients.sort_by_key(|&client| (self.service_of(client), client));
        clients
            .iter()
            .flat_map(|client| self.queues[client].iter().copied())
            .collect()
    }
    fn preemption_victim(&self, running: &[ReqIdx], requests: &RequestTable) -> usize {
        let heaviest = running
            .iter()
            .map(|&idx| requests[idx].client_index)
            .max_by_key(|&client| (self.service_of(client), client))
            .unwrap_or(0);
        running
            .iter()
            .rposition(|&idx| requests[idx].client_index == heaviest)
            .unwrap_or(running.len() - 1)
    }
    fn on_scheduled(&mut self, request: &Request, num_tokens: u32) {
        *self.service.entry(request.client_index).or_insert(0) += u64::from(num_tokens);
    }
    fn snapshot(&self) -> PolicySnapshot {
        PolicySnapshot {
            client_service: self.service.iter().map(|(&c, &s)| (c, s)).collect(),
        }
    }
    fn restore(&mut self, snapshot: &PolicySnapshot) {
        self.service = snapshot.client_service.iter().copied().collect();
    }
}
