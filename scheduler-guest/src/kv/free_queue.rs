//! The free-block queue: an intrusive doubly linked list giving O(1) pop, append, prepend and
//! removal from the middle; its order is the pool's LRU eviction order.

use alloc::vec::Vec;

use crate::error::NoFreeBlocks;

const NIL: u32 = u32::MAX;

/// Free KV blocks in eviction order: the head is reused (and its cached hash evicted) first,
/// the tail was freed most recently.
#[derive(Clone, Debug)]
pub struct FreeBlockQueue {
    prev: Vec<u32>,
    next: Vec<u32>,
    len: u32,
}

impl FreeBlockQueue {
    /// A queue over blocks `0..num_blocks`, all free, in id order.
    pub fn new(num_blocks: u32) -> Self {
        let order: Vec<u32> = (0..num_blocks).collect();
        Self::from_order(num_blocks, &order)
    }

    /// A queue over blocks `0..num_blocks` holding exactly `order`, head first.
    ///
    /// # Panics
    /// If `order` names a block twice or a block outside `0..num_blocks`.
    pub fn from_order(num_blocks: u32, order: &[u32]) -> Self {
        let slots = num_blocks as usize + 2;
        let mut queue = Self {
            prev: alloc::vec![NIL; slots],
            next: alloc::vec![NIL; slots],
            len: 0,
        };
        let (head, tail) = (queue.head(), queue.tail());
        queue.next[head as usize] = tail;
        queue.prev[tail as usize] = head;
        for &block in order {
            assert!(
                block < num_blocks && !queue.contains(block),
                "bad queue order"
            );
            queue.append(block);
        }
        queue
    }

    fn head(&self) -> u32 {
        (self.prev.len() - 2) as u32
    }

    fn tail(&self) -> u32 {
        (self.prev.len() - 1) as u32
    }

    /// Number of free blocks.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether no block is free.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `block` is in the queue.
    pub fn contains(&self, block: u32) -> bool {
        self.next[block as usize] != NIL
    }

    fn link_after(&mut self, anchor: u32, block: u32) {
        debug_assert!(!self.contains(block));
        let after = self.next[anchor as usize];
        self.prev[block as usize] = anchor;
        self.next[block as usize] = after;
        self.next[anchor as usize] = block;
        self.prev[after as usize] = block;
        self.len += 1;
    }

    /// Take the head block.
    pub fn popleft(&mut self) -> Result<u32, NoFreeBlocks> {
        let first = self.next[self.head() as usize];
        if first == self.tail() {
            return Err(NoFreeBlocks);
        }
        self.remove(first);
        Ok(first)
    }

    /// Take the first `n` blocks, head first, onto the end of `into`; takes nothing when fewer
    /// than `n` are free.
    pub fn popleft_n(&mut self, n: u32, into: &mut Vec<u32>) -> Result<(), NoFreeBlocks> {
        if n > self.len {
            return Err(NoFreeBlocks);
        }
        into.reserve(n as usize);
        for _ in 0..n {
            into.push(self.popleft()?);
        }
        Ok(())
    }

    /// Unlink `block` from wherever it sits. A block not in the queue is left alone.
    pub fn remove(&mut self, block: u32) {
        if !self.contains(block) {
            return;
        }
        let (before, after) = (self.prev[block as usize], self.next[block as usize]);
        self.next[before as usize] = after;
        self.prev[after as usize] = before;
        self.prev[block as usize] = NIL;
        self.next[block as usize] = NIL;
        self.len -= 1;
    }

    /// Put `block` at the tail: evicted last.
    pub fn append(&mut self, block: u32) {
        let last = self.prev[self.tail() as usize];
        self.link_after(last, block);
    }

    /// Put `blocks` at the head in the given order (`blocks[0]` becomes the head): reused first.
    pub fn prepend_n(&mut self, blocks: &[u32]) {
        let mut anchor = self.head();
        for &block in blocks {
            self.link_after(anchor, block);
            anchor = block;
        }
    }

    /// The free blocks, head first.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let tail = self.tail();
        let mut cursor = self.next[self.head() as usize];
        core::iter::from_fn(move || {
            if cursor == tail {
                return None;
            }
            let block = cursor;
            cursor = self.next[block as usize];
            Some(block)
        })
    }
}
