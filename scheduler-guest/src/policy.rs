//! The policy API: the decisions a scheduling policy makes, the view of a request it makes them
//! on, and the built-in policies written against it.
//!
//! The scheduler runs vLLM's algorithm (running requests first, then admission while budget and
//! KV blocks last, preemption by recompute when blocks run out) and asks a [`Policy`] at each
//! point where vLLM's policies differ:
//!
//! - **waiting order**: [`Policy::enqueue`] places a request that starts waiting (a new
//!   arrival, a preempted request, or one carried over by a state import), and
//!   [`Policy::order`] lists the queue;
//! - **admission**: [`Policy::next`] names the request to admit next, and
//!   [`Policy::may_admit`] can hold it back for this step;
//! - **preemption victim**: [`Policy::preemption_victim`] picks among the running requests;
//! - **per-step accounting**: [`Policy::on_scheduled`] sees every token grant;
//! - **state across a swap**: [`Policy::export_state`] and [`Policy::import_state`] carry the
//!   policy's own accounting through a live swap to another component.
//!
//! A policy sees requests only through [`RequestView`] and names queued ones by [`Ticket`]; the
//! scheduler's tables stay its own. [`Fifo`] and [`Ordered`] are ready-made waiting queues, and
//! [`ByKey`] makes a whole policy of a [`KeyOrder`] (a key per request).
//! Policy authors use this module through the `waypoint-policy` crate, which turns a
//! `Policy + Default` type into a complete `policy` component.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use crate::config::PolicyKind;
use crate::map::FxHashMap;
use crate::request::{Request, RequestStatus};
use crate::table::ReqIdx;

/// A waiting request's name in a policy's queue. Opaque: the scheduler hands one out with each
/// [`Policy::enqueue`] and expects it back from [`Policy::next`] and [`Policy::order`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket(pub(crate) ReqIdx);

/// Why a request starts waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueue {
    /// Newly submitted.
    Arrived,
    /// Preempted by recompute: it lost its KV blocks and waits to resume. vLLM's FCFS puts it
    /// ahead of every request that never ran.
    Preempted,
    /// Carried over from an exported state, in the exporting policy's admission order.
    Imported,
}

/// What a policy may know of a request, at the time of the call.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    request: &'a Request,
    now_ns: u64,
}

impl<'a> RequestView<'a> {
    pub(crate) fn new(request: &'a Request, now_ns: u64) -> Self {
        Self { request, now_ns }
    }

    /// The caller's request id.
    pub fn id(&self) -> &'a str {
        &self.request.id
    }
    /// The tenant (client) the request came from.
    pub fn client(&self) -> u32 {
        self.request.client_index
    }
    /// The caller's priority; lower is more urgent, as in vLLM.
    pub fn priority(&self) -> i32 {
        self.request.priority
    }
    /// Arrival time, on the caller's monotonic clock in nanoseconds.
    pub fn arrival_ns(&self) -> u64 {
        self.request.arrival_ns
    }
    /// The time of this call, on the same clock.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }
    /// Nanoseconds since the request arrived.
    pub fn waited_ns(&self) -> u64 {
        self.now_ns.saturating_sub(self.request.arrival_ns)
    }
    /// When the request should have finished, on the same clock, if the caller gave a deadline.
    pub fn deadline_ns(&self) -> Option<u64> {
        self.request.deadline_ns
    }
    /// Prompt tokens.
    pub fn prompt_len(&self) -> u32 {
        self.request.prompt_len
    }
    /// The most output tokens the request may generate.
    pub fn max_tokens(&self) -> u32 {
        self.request.max_tokens
    }
    /// Tokens whose KV is computed or scheduled (0 after a preemption).
    pub fn num_computed_tokens(&self) -> u32 {
        self.request.num_computed_tokens
    }
    /// Output tokens generated so far (kept through preemptions).
    pub fn num_output_tokens(&self) -> u32 {
        self.request.num_output_tokens()
    }
    /// How often the request was preempted.
    pub fn num_preemptions(&self) -> u32 {
        self.request.num_preemptions
    }
    /// Whether the request holds KV blocks in the running batch.
    pub fn is_running(&self) -> bool {
        self.request.status == RequestStatus::Running
    }
}

/// The decisions of a scheduling policy. See the module docs for when each is asked.
///
/// The scheduler keeps its promises: a ticket is enqueued once until it is removed, `next` and
/// `may_admit` are only asked while the queue is not empty, and `running` is never empty. A
/// policy must keep its own: `next` and `order` return only tickets that are queued, and the
/// victim is a position in `running`. A component whose policy breaks them traps, and the host
/// treats it as a fault.
pub trait Policy: Send {
    /// The policy's name, as `describe-policy`, logs and metrics show it.
    fn name(&self) -> &'static str;
    /// The policy's version.
    fn version(&self) -> &'static str;
    /// `request` starts waiting.
    fn enqueue(&mut self, request: &RequestView<'_>, ticket: Ticket, why: Enqueue);
    /// The waiting request to admit next.
    fn next(&self) -> Option<Ticket>;
    /// Whether `request`, the one [`next`](Self::next) named, may be admitted now; `false`
    /// ends admission for this step and leaves it first in line.
    fn may_admit(&self, _request: &RequestView<'_>) -> bool {
        true
    }
    /// Take a request out of the queue, because it was admitted or finished while waiting;
    /// returns whether it was queued.
    fn remove(&mut self, request: &RequestView<'_>, ticket: Ticket) -> bool;
    /// Requests waiting.
    fn len(&self) -> usize;
    /// Whether nothing waits.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The waiting requests in admission order.
    fn order(&self) -> Vec<Ticket>;
    /// The position in `running` (in admission order) of the request to preempt when KV blocks
    /// run out.
    fn preemption_victim(&self, running: &[RequestView<'_>]) -> usize;
    /// `request` was granted `num_tokens` tokens in the step being decided.
    fn on_scheduled(&mut self, _request: &RequestView<'_>, _num_tokens: u32) {}
    /// The policy's own accounting, carried in an exported scheduler state.
    fn export_state(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Take over accounting that the policy named `exporter` exported (called before the
    /// waiting requests are enqueued). Bytes it cannot read are best ignored.
    fn import_state(&mut self, _exporter: &str, _state: &[u8]) {}
}

/// A FIFO queue whose preempted requests go back to the front, as vLLM's FCFS does.
#[derive(Clone, Debug, Default)]
pub struct Fifo {
    queue: VecDeque<Ticket>,
}

impl Fifo {
    /// Queue `ticket`: at the front when it was preempted, at the back otherwise.
    pub fn push(&mut self, ticket: Ticket, why: Enqueue) {
        match why {
            Enqueue::Preempted => self.queue.push_front(ticket),
            Enqueue::Arrived | Enqueue::Imported => self.queue.push_back(ticket),
        }
    }
    /// The head.
    pub fn front(&self) -> Option<Ticket> {
        self.queue.front().copied()
    }
    /// Remove `ticket` (a scan from the front, where admitted requests are).
    pub fn remove(&mut self, ticket: Ticket) -> bool {
        match self.queue.iter().position(|&queued| queued == ticket) {
            Some(position) => self.queue.remove(position).is_some(),
            None => false,
        }
    }
    /// Requests queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }
    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
    /// The queue from the front.
    pub fn iter(&self) -> impl Iterator<Item = Ticket> + '_ {
        self.queue.iter().copied()
    }
}

/// A queue ordered by a key the policy computes once per enqueue; equal keys keep their
/// enqueue order.
#[derive(Clone, Debug)]
pub struct Ordered<K> {
    queue: BTreeMap<(K, u64), Ticket>,
    keys: FxHashMap<Ticket, (K, u64)>,
    sequence: u64,
}

impl<K> Default for Ordered<K> {
    fn default() -> Self {
        Self {
            queue: BTreeMap::new(),
            keys: FxHashMap::default(),
            sequence: 0,
        }
    }
}

impl<K: Ord + Clone> Ordered<K> {
    /// Queue `ticket` under `key`.
    pub fn insert(&mut self, key: K, ticket: Ticket) {
        self.sequence += 1;
        let position = (key, self.sequence);
        if let Some(previous) = self.keys.insert(ticket, position.clone()) {
            self.queue.remove(&previous);
        }
        self.queue.insert(position, ticket);
    }
    /// The ticket with the smallest key.
    pub fn first(&self) -> Option<Ticket> {
        self.queue.first_key_value().map(|(_, &ticket)| ticket)
    }
    /// Remove `ticket`.
    pub fn remove(&mut self, ticket: Ticket) -> bool {
        match self.keys.remove(&ticket) {
            Some(position) => self.queue.remove(&position).is_some(),
            None => false,
        }
    }
    /// Requests queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }
    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
    /// The queue in key order.
    pub fn iter(&self) -> impl Iterator<Item = Ticket> + '_ {
        self.queue.values().copied()
    }
}

/// A policy that orders the waiting queue by a key computed once per enqueue, and by default
/// preempts the running request with the largest key (the latest admitted of equals):
/// implement this, and [`ByKey`] is the [`Policy`].
pub trait KeyOrder: Send {
    /// The key; smaller is admitted first.
    type Key: Ord + Clone + Send;
    /// The policy's name.
    fn name(&self) -> &'static str;
    /// The policy's version.
    fn version(&self) -> &'static str;
    /// `request`'s key, when it starts waiting and when it is a preemption candidate.
    fn key(&self, request: &RequestView<'_>) -> Self::Key;
    /// The position in `running` of the request to preempt: by default the one with the
    /// largest key, the latest admitted of equals.
    fn preemption_victim(&self, running: &[RequestView<'_>]) -> usize {
        let keys: Vec<Self::Key> = running.iter().map(|r| self.key(r)).collect();
        // `max_by` keeps the last of equal maxima: the latest admitted.
        (0..keys.len())
            .max_by(|&a, &b| keys[a].cmp(&keys[b]))
            .unwrap_or(0)
    }
}

/// The [`Policy`] of a [`KeyOrder`].
#[derive(Clone, Debug, Default)]
pub struct ByKey<O: KeyOrder> {
    order: O,
    waiting: Ordered<O::Key>,
}

impl<O: KeyOrder> Policy for ByKey<O> {
    fn name(&self) -> &'static str {
        self.order.name()
    }
    fn version(&self) -> &'static str {
        self.order.version()
    }
    fn enqueue(&mut self, request: &RequestView<'_>, ticket: Ticket, _why: Enqueue) {
        self.waiting.insert(self.order.key(request), ticket);
    }
    fn next(&self) -> Option<Ticket> {
        self.waiting.first()
    }
    fn remove(&mut self, _request: &RequestView<'_>, ticket: Ticket) -> bool {
        self.waiting.remove(ticket)
    }
    fn len(&self) -> usize {
        self.waiting.len()
    }
    fn order(&self) -> Vec<Ticket> {
        self.waiting.iter().collect()
    }
    fn preemption_victim(&self, running: &[RequestView<'_>]) -> usize {
        self.order.preemption_victim(running)
    }
}

/// Build the built-in policy a configuration names.
pub fn new_policy(kind: PolicyKind) -> Box<dyn Policy> {
    match kind {
        PolicyKind::Fcfs => Box::new(Fcfs::default()),
        PolicyKind::Priority => Box::new(Priority::default()),
        PolicyKind::Fair => Box::new(Fair::default()),
    }
}

const BUILTIN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// First come, first served (vLLM's `fcfs`). Preempted requests go back to the front; the
/// victim is the most recently admitted running request.
#[derive(Clone, Debug, Default)]
pub struct Fcfs {
    queue: Fifo,
}

impl Policy for Fcfs {
    fn name(&self) -> &'static str {
        "fcfs"
    }
    fn version(&self) -> &'static str {
        BUILTIN_VERSION
    }
    fn enqueue(&mut self, _request: &RequestView<'_>, ticket: Ticket, why: Enqueue) {
        self.queue.push(ticket, why);
    }
    fn next(&self) -> Option<Ticket> {
        self.queue.front()
    }
    fn remove(&mut self, _request: &RequestView<'_>, ticket: Ticket) -> bool {
        self.queue.remove(ticket)
    }
    fn len(&self) -> usize {
        self.queue.len()
    }
    fn order(&self) -> Vec<Ticket> {
        self.queue.iter().collect()
    }
    fn preemption_victim(&self, running: &[RequestView<'_>]) -> usize {
        running.len() - 1
    }
}

/// Lowest `(priority, arrival, id)` first (vLLM's `priority`). A preempted request rejoins the
/// order by its key. The victim is the running request with the largest `(priority, arrival)`,
/// the first such one on a tie (Python's `max`).
pub type Priority = ByKey<PriorityOrder>;

/// The order of [`Priority`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PriorityOrder;

impl KeyOrder for PriorityOrder {
    type Key = (i32, u64, String);

    fn name(&self) -> &'static str {
        "priority"
    }
    fn version(&self) -> &'static str {
        BUILTIN_VERSION
    }
    fn key(&self, request: &RequestView<'_>) -> Self::Key {
        (
            request.priority(),
            request.arrival_ns(),
            request.id().into(),
        )
    }
    fn preemption_victim(&self, running: &[RequestView<'_>]) -> usize {
        let mut victim = 0;
        for (position, candidate) in running.iter().enumerate() {
            let current = &running[victim];
            if (candidate.priority(), candidate.arrival_ns())
                > (current.priority(), current.arrival_ns())
            {
                victim = position;
            }
        }
        victim
    }
}

/// Fair sharing between clients (a request's client is its tenant), by least attained service
/// on scheduled tokens:
///
/// - each client has its own FCFS queue (preempted requests return to its front);
/// - admission takes the head of the waiting client that has had the fewest tokens scheduled
///   (ties: the lowest client index), so a tenant's burst queues behind its own requests while
///   other tenants keep being admitted;
/// - a client that starts waiting is lifted to the least service among clients already waiting,
///   so idle time is not banked into a later burst;
/// - the preemption victim is the most recently admitted running request of the running client
///   with the most service (ties: the highest client index).
///
/// The service counters cross a live swap from one `fair` component to another.
#[derive(Clone, Debug, Default)]
pub struct Fair {
    queues: BTreeMap<u32, Fifo>,
    service: BTreeMap<u32, u64>,
    len: usize,
}

impl Fair {
    fn service_of(&self, client: u32) -> u64 {
        self.service.get(&client).copied().unwrap_or(0)
    }

    fn next_client(&self) -> Option<u32> {
        self.queues
            .keys()
            .copied()
            .min_by_key(|&client| (self.service_of(client), client))
    }
}

impl Policy for Fair {
    fn name(&self) -> &'static str {
        "fair"
    }
    fn version(&self) -> &'static str {
        BUILTIN_VERSION
    }
    fn enqueue(&mut self, request: &RequestView<'_>, ticket: Ticket, why: Enqueue) {
        let client = request.client();
        if !self.queues.contains_key(&client) {
            let floor = self.queues.keys().map(|&c| self.service_of(c)).min();
            if let Some(floor) = floor {
                let service = self.service.entry(client).or_insert(0);
                *service = (*service).max(floor);
            }
        }
        self.queues.entry(client).or_default().push(ticket, why);
        self.len += 1;
    }
    fn next(&self) -> Option<Ticket> {
        self.queues.get(&self.next_client()?)?.front()
    }
    fn remove(&mut self, request: &RequestView<'_>, ticket: Ticket) -> bool {
        let client = request.client();
        let Some(queue) = self.queues.get_mut(&client) else {
            return false;
        };
        if !queue.remove(ticket) {
            return false;
        }
        if queue.is_empty() {
            self.queues.remove(&client);
        }
        self.len -= 1;
        true
    }
    fn len(&self) -> usize {
        self.len
    }
    fn order(&self) -> Vec<Ticket> {
        let mut clients: Vec<u32> = self.queues.keys().copied().collect();
        clients.sort_by_key(|&client| (self.service_of(client), client));
        clients
            .iter()
            .flat_map(|client| self.queues[client].iter())
            .collect()
    }
    fn preemption_victim(&self, running: &[RequestView<'_>]) -> usize {
        let heaviest = running
            .iter()
            .map(RequestView::client)
            .max_by_key(|&client| (self.service_of(client), client))
            .unwrap_or(0);
        running
            .iter()
            .rposition(|request| request.client() == heaviest)
            .unwrap_or(running.len() - 1)
    }
    fn on_scheduled(&mut self, request: &RequestView<'_>, num_tokens: u32) {
        *self.service.entry(request.client()).or_insert(0) += u64::from(num_tokens);
    }
    fn export_state(&self) -> Vec<u8> {
        let service: Vec<(u32, u64)> = self.service.iter().map(|(&c, &s)| (c, s)).collect();
        postcard::to_allocvec(&service).unwrap_or_default()
    }
    fn import_state(&mut self, exporter: &str, state: &[u8]) {
        if exporter != self.name() {
            return;
        }
        if let Ok(service) = postcard::from_bytes::<Vec<(u32, u64)>>(state) {
            self.service = service.into_iter().collect();
        }
    }
}
