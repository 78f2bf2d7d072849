//! Upstream KV-cache scenarios (test_prefix_caching.py "P" and test_kv_cache_utils.py "U" in
//! the reference notes) on the block pool and cache manager directly, with the same numbers.

mod common;

use common::*;
use waypoint_scheduler::kv::events::external_hash;
use waypoint_scheduler::kv::hash::{extend_block_hashes, hash_block_tokens, none_hash, ExtraKeys};
use waypoint_scheduler::kv::{
    BlockPool, BlockRemoved, BlockStored, ComputedBlocks, FreeBlockQueue, KvCacheManager, KvEvent,
};
use waypoint_scheduler::{NewRequest, Request, RequestHandle, SchedulerConfig};

const BLOCK: u32 = 16;
const PINNED: u128 = 256_148_686_511_616_795_643_025_942_106_978_341_787;

fn manager(num_blocks: u32, block_size: u32, caching: bool) -> KvCacheManager {
    KvCacheManager::new(num_blocks, block_size, 100_000, caching)
}

fn request(id: &str, tokens: Vec<u32>, manager: &KvCacheManager) -> Request {
    Request::new(
        NewRequest::new(id, tokens),
        RequestHandle(1),
        manager.hash_block_size(),
    )
}

/// Prefix-cache lookup plus allocation for the whole prompt, as a first admission does; the
/// newly allocated blocks are the last of the request's.
fn admit(
    manager: &mut KvCacheManager,
    request: &mut Request,
) -> (ComputedBlocks, Option<Vec<u32>>) {
    let hit = manager.get_computed_blocks(request);
    let wanted = request.num_tokens() - hit.num_tokens;
    let new = manager
        .allocate_slots(request, wanted, &hit, false)
        .map(|num_new| {
            let blocks = request.block_ids();
            blocks[blocks.len() - num_new as usize..].to_vec()
        });
    (hit, new)
}

fn blocks_of(value: u32, count: usize) -> Vec<u32> {
    vec![value; count * BLOCK as usize]
}

#[test]
fn p1_prefill_hits_shared_blocks_and_frees_uncached_blocks_to_the_head() {
    let mut m = manager(11, BLOCK, true);
    let common: Vec<u32> = (0..3).flat_map(|v| blocks_of(v, 1)).collect();
    let with_tail = |n: usize| {
        common
            .iter()
            .copied()
            .chain(std::iter::repeat_n(3, n))
            .collect::<Vec<_>>()
    };

    let mut req0 = request("0", with_tail(7), &m);
    let (hit, new) = admit(&mut m, &mut req0);
    assert!(hit.block_ids.is_empty());
    assert_eq!(new.unwrap(), [1, 2, 3, 4]);
    for (i, block) in [1, 2, 3].into_iter().enumerate() {
        assert_eq!(m.pool().block_hash(block), Some(req0.block_hashes()[i]));
        assert_eq!(m.pool().ref_count(block), 1);
    }
    assert_eq!(m.pool().block_hash(4), None);

    let mut req1 = request("1", with_tail(5), &m);
    let (hit, new) = admit(&mut m, &mut req1);
    assert_eq!(
        (hit.block_ids.as_slice(), hit.num_tokens),
        (&[1, 2, 3][..], 48)
    );
    assert_eq!(new.unwrap(), [5]);
    assert!([1, 2, 3].iter().all(|&b| m.pool().ref_count(b) == 2));
    assert_eq!(m.pool().num_free_blocks(), 5);

    m.free(&mut req0);
    m.free(&mut req1);
    // 0.33 order: unhashed blocks 4 then 5 went to the head, hashed ones to the tail, tail first.
    assert_eq!(m.pool().free_block_ids(), [5, 4, 6, 7, 8, 9, 10, 3, 2, 1]);

    let mut req2 = request("2", with_tail(6), &m);
    let (hit, new) = admit(&mut m, &mut req2);
    assert_eq!(hit.block_ids, [1, 2, 3]);
    assert_eq!(new.unwrap(), [5]);
    assert_eq!(m.pool().num_free_blocks(), 6);

    m.free(&mut req2);
    let mut req3 = request("3", vec![99; 160], &m);
    let (hit, new) = admit(&mut m, &mut req3);
    assert!(hit.block_ids.is_empty());
    assert_eq!(
        new.unwrap(),
        [5, 4, 6, 7, 8, 9, 10, 3, 2, 1],
        "LRU: the shared prefix is evicted last"
    );
    assert_eq!(m.pool().num_free_blocks(), 0);
}

#[test]
fn p3_decode_hashes_a_block_once_generated_tokens_fill_it() {
    let mut s = scheduler(SchedulerConfig {
        enable_prefix_caching: true,
        ..harness_config()
    });
    s.add_request(
        NewRequest {
            max_tokens: 100,
            ..NewRequest::new("r", (0..55).collect())
        },
        0,
    )
    .unwrap();
    let _ = step(&mut s, 7);
    for _ in 0..3 {
        let _ = step(&mut s, 7);
    }
    let r = s.request("r").unwrap();
    assert_eq!(r.num_tokens(), 59);
    assert_eq!(r.block_ids().len(), 4);
    assert_eq!(s.kv().pool().block_hash(r.block_ids()[3]), None);
    for _ in 0..19 {
        let _ = step(&mut s, 7);
    }
    let r = s.request("r").unwrap();
    assert_eq!(r.num_tokens(), 78);
    assert_eq!(r.block_ids().len(), 5);
    assert!(s.kv().pool().block_hash(r.block_ids()[3]).is_some());
    assert_eq!(s.kv().pool().block_hash(r.block_ids()[4]), None);
}

#[test]
fn p4_eviction_reuses_the_freed_tail_first_and_keeps_the_prefix() {
    let mut m = manager(11, BLOCK, true);
    let mut req0 = request("0", (0..87).collect(), &m);
    let mut req1 = request("1", (87..135).collect(), &m);
    assert_eq!(admit(&mut m, &mut req0).1.unwrap(), [1, 2, 3, 4, 5, 6]);
    assert_eq!(admit(&mut m, &mut req1).1.unwrap(), [7, 8, 9]);
    assert_eq!(m.pool().num_free_blocks(), 1);
    m.free(&mut req0);
    m.free(&mut req1);
    // Upstream (classic) order is [10, 6,5,4,3,2,1, 9,8,7]; 0.33 puts unhashed block 6 first.
    assert_eq!(m.pool().free_block_ids(), [6, 10, 5, 4, 3, 2, 1, 9, 8, 7]);
    let mut req2 = request("2", (0..35).collect(), &m);
    let (hit, new) = admit(&mut m, &mut req2);
    assert_eq!(hit.block_ids, [1, 2]);
    assert_eq!(new.unwrap(), [6]);
    assert_eq!(m.pool().num_free_blocks(), 7);
}

#[test]
fn p5_a_reused_block_loses_its_old_hash() {
    let mut m = KvCacheManager::new(2, BLOCK, 16, true);
    let mut full = request("full", (0..16).collect(), &m);
    assert_eq!(admit(&mut m, &mut full).1.unwrap(), [1]);
    assert!(m.pool().block_hash(1).is_some());
    m.free(&mut full);
    let mut short = request("short", (100..115).collect(), &m);
    assert_eq!(admit(&mut m, &mut short).1.unwrap(), [1]);
    assert_eq!(m.pool().block_hash(1), None);
    assert_eq!(m.pool().num_cached_hashes(), 0);
}

#[test]
fn p6_a_hit_block_is_never_the_eviction_victim() {
    let mut m = manager(3, BLOCK, true);
    let mut r0 = request("r0", (0..16).collect(), &m);
    let mut r1 = request("r1", (16..32).collect(), &m);
    assert_eq!(admit(&mut m, &mut r0).1.unwrap(), [1]);
    assert_eq!(admit(&mut m, &mut r1).1.unwrap(), [2]);
    m.free(&mut r0);
    m.free(&mut r1);
    let mut r2 = request("r2", (0..32).collect(), &m);
    let (hit, new) = admit(&mut m, &mut r2);
    assert_eq!((hit.block_ids.as_slice(), hit.num_tokens), (&[1][..], 16));
    assert_eq!(new.unwrap(), [2]);
}

#[test]
fn p7_without_prefix_caching_nothing_hits_and_allocation_fails_cleanly() {
    let mut m = KvCacheManager::new(5, 4, 16, false);
    let mut first = request("a", (0..10).collect(), &m);
    assert_eq!(admit(&mut m, &mut first).1.unwrap().len(), 3);
    m.free(&mut first);
    let mut second = request("b", (0..16).collect(), &m);
    let (hit, new) = admit(&mut m, &mut second);
    assert!(hit.block_ids.is_empty());
    assert_eq!(new.unwrap().len(), 4);
    let mut third = request("c", (0..4).collect(), &m);
    assert_eq!(admit(&mut m, &mut third).1, None);
    assert!(third.block_ids().is_empty());
}

#[test]
fn p8_caching_full_blocks_adds_one_table_entry_each() {
    let mut pool = BlockPool::new(5);
    let mut hashes = Vec::new();
    let tokens: Vec<u32> = (0..14).collect();
    extend_block_hashes(&mut hashes, &tokens, 4, None);
    assert_eq!(hashes.len(), 3);
    let mut blocks = Vec::new();
    pool.get_new_blocks(4, &mut blocks).unwrap();
    pool.cache_block(blocks[0], hashes[0]);
    pool.cache_block(blocks[1], hashes[1]);
    assert_eq!(pool.num_cached_hashes(), 2);
    pool.cache_block(blocks[2], hashes[2]);
    assert_eq!(pool.num_cached_hashes(), 3);
}

#[test]
fn p10_cache_salt_separates_otherwise_identical_prompts() {
    let mut m = manager(20, BLOCK, true);
    let prompt: Vec<u32> = (0..50).collect();
    let salted = |id: &str, salt: &str, m: &KvCacheManager| {
        Request::new(
            NewRequest {
                cache_salt: Some(salt.into()),
                ..NewRequest::new(id, prompt.clone())
            },
            RequestHandle(1),
            m.hash_block_size(),
        )
    };
    let unsalted = request("plain", prompt.clone(), &m);
    let mut first = salted("a", "salt1", &m);
    assert_ne!(first.block_hashes()[0], unsalted.block_hashes()[0]);
    let first_block = hash_block_tokens(
        none_hash(),
        &prompt[..16],
        ExtraKeys {
            cache_salt: Some("salt1"),
        },
    );
    assert_eq!(first.block_hashes()[0], first_block);
    let second_block = hash_block_tokens(first_block, &prompt[16..32], ExtraKeys::default());
    assert_eq!(
        first.block_hashes()[1],
        second_block,
        "only block 0 carries the salt"
    );
    let _ = admit(&mut m, &mut first);
    assert_eq!(
        m.get_computed_blocks(&salted("b", "salt1", &m))
            .block_ids
            .len(),
        3
    );
    assert_eq!(
        m.get_computed_blocks(&salted("c", "salt2", &m))
            .block_ids
            .len(),
        0
    );
}

#[test]
fn p11_failed_allocation_with_evictable_hits_changes_no_reference_count() {
    let mut m = manager(11, BLOCK, true);
    let long: Vec<u32> = (0..144).collect();
    let mut a = request("a", long[..97].to_vec(), &m);
    assert_eq!(admit(&mut m, &mut a).1.unwrap(), [1, 2, 3, 4, 5, 6, 7]);
    m.free(&mut a);
    let mut b = request("b", long[..49].to_vec(), &m);
    let (hit, _) = admit(&mut m, &mut b);
    assert_eq!(hit.block_ids, [1, 2, 3]);
    let mut c = request("c", vec![9999; 16], &m);
    admit(&mut m, &mut c).1.unwrap();
    assert_eq!(m.pool().num_free_blocks(), 5);
    let before: Vec<u32> = (0..11).map(|b| m.pool().ref_count(b)).collect();
    let mut d = request("d", long.clone(), &m);
    let hit = m.get_computed_blocks(&d);
    assert_eq!(hit.block_ids, [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        hit.block_ids
            .iter()
            .filter(|&&b| m.pool().ref_count(b) == 0)
            .count(),
        3
    );
    assert_eq!(m.allocate_slots(&mut d, 144 - 96, &hit, false), None);
    let after: Vec<u32> = (0..11).map(|b| m.pool().ref_count(b)).collect();
    assert_eq!(before, after);
    assert!(d.block_ids().is_empty());
}

#[test]
fn p12_prefix_cache_reset_only_succeeds_with_every_block_free() {
    let mut m = manager(11, BLOCK, true);
    let mut r = request("r", (0..40).collect(), &m);
    let _ = admit(&mut m, &mut r);
    assert!(!m.reset_prefix_cache());
    m.free(&mut r);
    assert!(m.reset_prefix_cache());
    assert_eq!(m.pool().num_cached_hashes(), 0);
    assert!((0..11).all(|b| m.pool().block_hash(b).is_none()));
}

/// A request's block hashes as KV events carry them.
fn external_hashes(request: &Request) -> Vec<u64> {
    request
        .block_hashes()
        .iter()
        .copied()
        .map(external_hash)
        .collect()
}

#[test]
fn p13_kv_events_report_stores_evictions_and_clears_in_order() {
    let blocks = 3;
    let mut m = manager(blocks + 1, BLOCK, true);
    assert!(m.take_events().is_empty(), "events are off until enabled");
    m.enable_events();
    let tokens: Vec<u32> = (0..blocks * BLOCK).collect();
    let mut req0 = request("0", tokens.clone(), &m);
    admit(&mut m, &mut req0).1.unwrap();
    let stored = external_hashes(&req0);
    assert_eq!(
        m.take_events(),
        [KvEvent::BlockStored(BlockStored {
            block_hashes: stored.clone(),
            parent_block_hash: None,
            token_ids: tokens,
            cache_salt: None,
        })]
    );
    assert!(
        m.take_events().is_empty(),
        "taking events empties the queue"
    );

    // Other content needs every block: each cached one is evicted, then the new ones stored.
    m.free(&mut req0);
    let other: Vec<u32> = (10..10 + blocks * BLOCK).collect();
    let mut req1 = request("1", other.clone(), &m);
    admit(&mut m, &mut req1).1.unwrap();
    let events = m.take_events();
    assert_eq!(events.len(), blocks as usize + 1);
    let mut removed: Vec<u64> = events[..blocks as usize]
        .iter()
        .map(|event| match event {
            KvEvent::BlockRemoved(BlockRemoved { block_hashes }) => block_hashes[0],
            other => panic!("expected BlockRemoved, got {other:?}"),
        })
        .collect();
    removed.sort_unstable();
    let mut expected = stored;
    expected.sort_unstable();
    assert_eq!(removed, expected);
    let KvEvent::BlockStored(last) = &events[blocks as usize] else {
        panic!(
            "expected BlockStored last, got {:?}",
            events[blocks as usize]
        );
    };
    assert_eq!(last.block_hashes.len(), m.pool().num_cached_hashes());
    assert_eq!(last.token_ids, other);

    m.free(&mut req1);
    assert!(m.reset_prefix_cache());
    assert_eq!(m.take_events(), [KvEvent::AllBlocksCleared]);
}

#[test]
fn kv_events_name_the_parent_block_and_the_first_blocks_salt() {
    let mut s = scheduler(SchedulerConfig {
        max_num_seqs: 1,
        max_num_batched_tokens: BLOCK,
        enable_prefix_caching: true,
        enable_kv_cache_events: true,
        ..harness_config()
    });
    let tokens: Vec<u32> = (0..2 * BLOCK + 3).collect();
    s.add_request(
        NewRequest {
            cache_salt: Some("tenant-a".into()),
            ..NewRequest::new("salted", tokens.clone())
        },
        0,
    )
    .unwrap();
    // A budget of one block: each step's chunk fills one block, so each stores one, chained.
    let (first, _) = step(&mut s, 7);
    let (second, _) = step(&mut s, 7);
    let hashes = external_hashes(s.request("salted").unwrap());
    assert_eq!(
        first.kv_events,
        [KvEvent::BlockStored(BlockStored {
            block_hashes: vec![hashes[0]],
            parent_block_hash: None,
            token_ids: tokens[..BLOCK as usize].to_vec(),
            cache_salt: Some("tenant-a".into()),
        })]
    );
    assert_eq!(
        second.kv_events,
        [KvEvent::BlockStored(BlockStored {
            block_hashes: vec![hashes[1]],
            parent_block_hash: Some(hashes[0]),
            token_ids: tokens[BLOCK as usize..2 * BLOCK as usize].to_vec(),
            cache_salt: None,
        })]
    );
    let (third, _) = step(&mut s, 7);
    assert!(third.kv_events.is_empty(), "a partial block is not stored");
}

#[test]
fn p16_evicting_one_of_two_blocks_with_the_same_hash_keeps_the_other() {
    let mut pool = BlockPool::new(5);
    let hash = hash_block_tokens(none_hash(), &[1, 2, 3, 4], ExtraKeys::default());
    let mut blocks = Vec::new();
    pool.get_new_blocks(2, &mut blocks).unwrap();
    pool.cache_block(blocks[0], hash);
    pool.cache_block(blocks[1], hash);
    assert_eq!(pool.num_blocks_cached_under(hash), 2);
    pool.free_blocks(blocks.clone());
    assert!(pool.evict_cached_block(blocks[0]));
    assert_eq!(pool.num_blocks_cached_under(hash), 1);
    assert_eq!(pool.lookup(hash), Some(blocks[1]));
}

#[test]
fn u1_free_queue_pops_removes_appends_and_reports_empty() {
    let mut queue = FreeBlockQueue::new(4);
    assert_eq!(queue.popleft(), Ok(0));
    queue.remove(2);
    assert_eq!(queue.iter().collect::<Vec<_>>(), [1, 3]);
    queue.append(2);
    assert_eq!(queue.iter().collect::<Vec<_>>(), [1, 3, 2]);
    let mut taken = Vec::new();
    queue.popleft_n(3, &mut taken).unwrap();
    assert_eq!(taken, [1, 3, 2]);
    assert!(queue.is_empty());
    let error = queue.popleft().unwrap_err();
    assert_eq!(error.to_string(), "no free blocks available");
}

#[test]
fn u2_popleft_n_takes_blocks_in_queue_order() {
    let mut queue = FreeBlockQueue::from_order(6, &[1, 3, 5, 4, 0, 2]);
    let mut taken = Vec::new();
    queue.popleft_n(1, &mut taken).unwrap();
    assert_eq!(taken, [1]);
    queue.popleft_n(2, &mut taken).unwrap();
    assert_eq!(taken, [1, 3, 5]);
    queue.popleft_n(3, &mut taken).unwrap();
    assert_eq!(taken, [1, 3, 5, 4, 0, 2]);
    assert!((0..6).all(|b| !queue.contains(b)));
    assert!(queue.popleft_n(1, &mut taken).is_err());
    assert_eq!(taken.len(), 6);
}

#[test]
fn u4_u5_block_hashes_chain_parent_tokens_and_extra_keys() {
    let mut hashes = Vec::new();
    extend_block_hashes(&mut hashes, &[0, 1, 2, 3, 4, 5], 3, None);
    let h0 = hash_block_tokens(none_hash(), &[0, 1, 2], ExtraKeys::default());
    let h1 = hash_block_tokens(h0, &[3, 4, 5], ExtraKeys::default());
    assert_eq!(hashes, [h0, h1]);
    extend_block_hashes(&mut hashes, &[0, 1, 2, 3, 4, 5, 6, 7], 3, None);
    assert_eq!(hashes.len(), 2, "a partial block is not hashed");
}

#[test]
fn u6_a_different_first_block_key_changes_every_later_hash() {
    let tokens: Vec<u32> = (0..6).collect();
    let (mut plain, mut salted) = (Vec::new(), Vec::new());
    extend_block_hashes(&mut plain, &tokens, 3, Some("a"));
    extend_block_hashes(&mut salted, &tokens, 3, Some("b"));
    assert_ne!(plain[0], salted[0]);
    assert_ne!(plain[1], salted[1]);
}

#[test]
fn block_hashes_are_fixed_values_on_every_platform() {
    // Pinned so that a change of hash function or byte encoding is a deliberate one.
    let h = hash_block_tokens(none_hash(), &[1, 2, 3, 4], ExtraKeys::default());
    assert_eq!(u128::from(h), PINNED);
}
