//! The table of live requests: a slab with generation-checked handles and an id index.

use alloc::vec::Vec;
use core::ops::{Index, IndexMut};

use crate::map::FxHashMap;
use crate::output::{HandleMap, RequestHandle};
use crate::request::{Request, RequestId};

/// A handle to a live request. A handle outlives its request only as a stale handle: the slot's
/// generation moves on when the request leaves, so a lookup through it finds nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReqIdx {
    slot: u32,
    generation: u32,
}

impl ReqIdx {
    /// The slot number (dense, reused after the request leaves).
    pub fn slot(self) -> u32 {
        self.slot
    }
}

#[derive(Clone, Debug)]
struct Slot {
    generation: u32,
    request: Option<Request>,
}

/// Live (unfinished) requests by handle and by id.
#[derive(Clone, Debug, Default)]
pub struct RequestTable {
    slots: Vec<Slot>,
    vacant: Vec<u32>,
    by_id: FxHashMap<RequestId, ReqIdx>,
    by_handle: HandleMap<ReqIdx>,
}

impl RequestTable {
    /// Add a request whose id is not in the table.
    pub(crate) fn insert(&mut self, request: Request) -> ReqIdx {
        let id = request.id.clone();
        let handle = request.handle;
        let idx = match self.vacant.pop() {
            Some(slot) => {
                let entry = &mut self.slots[slot as usize];
                entry.request = Some(request);
                ReqIdx {
                    slot,
                    generation: entry.generation,
                }
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    request: Some(request),
                });
                ReqIdx {
                    slot: self.slots.len() as u32 - 1,
                    generation: 0,
                }
            }
        };
        self.by_id.insert(id, idx);
        self.by_handle.insert(handle, idx);
        idx
    }

    /// Take a request out of the table.
    pub(crate) fn remove(&mut self, idx: ReqIdx) -> Option<Request> {
        let entry = self.slots.get_mut(idx.slot as usize)?;
        if entry.generation != idx.generation {
            return None;
        }
        let request = entry.request.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.vacant.push(idx.slot);
        self.by_id.remove(&request.id);
        self.by_handle.remove(&request.handle);
        Some(request)
    }

    // The lookups below are `#[inline]`: the scheduler is generic over its policy, so its step
    // code is compiled in the crate that names the policy, which without them calls each one.

    /// The request behind a handle, unless it has left.
    #[inline]
    pub fn get(&self, idx: ReqIdx) -> Option<&Request> {
        let entry = self.slots.get(idx.slot as usize)?;
        (entry.generation == idx.generation)
            .then_some(entry.request.as_ref())
            .flatten()
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, idx: ReqIdx) -> Option<&mut Request> {
        let entry = self.slots.get_mut(idx.slot as usize)?;
        if entry.generation != idx.generation {
            return None;
        }
        entry.request.as_mut()
    }

    /// The handle of the live request with this id.
    pub fn lookup(&self, id: &str) -> Option<ReqIdx> {
        self.by_id.get(id).copied()
    }

    /// The live request a scheduler handle names.
    pub fn by_handle(&self, handle: RequestHandle) -> Option<&Request> {
        self.get(*self.by_handle.get(&handle)?)
    }

    /// Live requests.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no request is live.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Handles of all live requests, in slot order.
    pub fn handles(&self) -> Vec<ReqIdx> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.request.is_some())
            .map(|(slot, entry)| ReqIdx {
                slot: slot as u32,
                generation: entry.generation,
            })
            .collect()
    }

    /// All live requests, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &Request> {
        self.slots.iter().filter_map(|slot| slot.request.as_ref())
    }
}

impl Index<ReqIdx> for RequestTable {
    type Output = Request;

    /// # Panics
    /// On a stale handle: the scheduler's queues only ever hold live handles.
    #[inline]
    fn index(&self, idx: ReqIdx) -> &Request {
        self.get(idx).expect("live request handle")
    }
}

impl IndexMut<ReqIdx> for RequestTable {
    #[inline]
    fn index_mut(&mut self, idx: ReqIdx) -> &mut Request {
        self.get_mut(idx).expect("live request handle")
    }
}
