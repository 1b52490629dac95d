//! Block pool invariants: all-or-nothing reservation, reference counts, prefix hits only under the
//! same identity and prefix, LRU eviction of idle cached blocks, copy-on-write after a fork.

use super::*;

fn toks(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| i * 7 + salt).collect()
}

#[test]
fn tables_free_on_drop_and_reserve_is_all_or_nothing() {
    let alloc = BlockAllocator::new(4, 16);
    let mut a = alloc.new_table();
    assert!(a.reserve(33)); // 3 blocks
    assert_eq!(alloc.num_free(), 1);
    let mut b = alloc.new_table();
    assert!(!b.reserve(17)); // needs 2, only 1 free: nothing taken
    assert_eq!(alloc.num_free(), 1);
    assert!(b.reserve(16));
    assert_eq!(a.slot(17), a.ids()[1] as usize * 16 + 1);
    drop(a);
    assert_eq!(alloc.num_free(), 3);
    drop(b);
    assert_eq!(alloc.num_free(), 4);
}

/// A table that computed `tokens` under `id` and registered its full blocks.
fn computed(alloc: &BlockAllocator, id: &CacheIdentity, tokens: &[u32]) -> BlockTable {
    let mut t = alloc.new_table();
    assert!(t.reserve(tokens.len()));
    t.register(id, tokens, tokens.len());
    t
}

#[test]
fn hits_need_the_same_identity_and_prefix_and_leave_the_last_token() {
    let alloc = BlockAllocator::with_prefix_caching(16, 4, true);
    let (base, ad) = (CacheIdentity::base(), CacheIdentity::new(vec![3, 1]));
    let p = toks(10, 0);
    let a = computed(&alloc, &base, &p);
    let mut t = alloc.new_table();
    assert_eq!(t.match_prefix(&base, &p), 8);
    assert_eq!(&t.ids()[..2], &a.ids()[..2]);
    let mut u = alloc.new_table();
    assert_eq!(u.match_prefix(&ad, &p), 0, "another adapter never hits");
    let mut other = p.clone();
    other[1] += 1;
    let mut v = alloc.new_table();
    assert_eq!(
        v.match_prefix(&base, &other),
        0,
        "the chain covers earlier tokens"
    );
    let mut w = alloc.new_table();
    assert_eq!(
        w.match_prefix(&base, &p[..8]),
        4,
        "the last token's block is computed"
    );
    // Disabled: nothing is registered or matched.
    let off = BlockAllocator::new(16, 4);
    let _a = computed(&off, &base, &p);
    assert_eq!(off.new_table().match_prefix(&base, &p), 0);
}

#[test]
fn idle_cached_blocks_are_evicted_oldest_first_and_only_when_needed() {
    let alloc = BlockAllocator::with_prefix_caching(4, 4, true);
    let base = CacheIdentity::base();
    let (p, q) = (toks(9, 0), toks(9, 100));
    drop(computed(&alloc, &base, &p[..8])); // 2 idle cached blocks
    drop(computed(&alloc, &base, &q[..8])); // 2 more, newer
    assert_eq!((alloc.num_free(), alloc.num_cached_idle()), (4, 4));
    let mut t = alloc.new_table();
    assert!(t.reserve(4)); // evicts the oldest: p's tail block
    assert_eq!(alloc.num_cached_idle(), 3);
    assert_eq!(alloc.new_table().match_prefix(&base, &p), 4);
    assert_eq!(alloc.new_table().match_prefix(&base, &q), 8);
    // A held cached block is never evicted; the pool is short instead.
    let mut h = alloc.new_table();
    assert_eq!(h.match_prefix(&base, &q), 8);
    let mut big = alloc.new_table();
    assert!(!big.reserve(8));
    assert!(big.reserve(4));
    assert_eq!(h.match_prefix(&base, &q), 0, "only an empty table matches");
    drop(h);
    assert_eq!(alloc.num_free(), 2);
}

#[test]
fn forks_share_blocks_and_copy_a_shared_partial_block_before_writing() {
    let alloc = BlockAllocator::with_prefix_caching(8, 4, true);
    let base = CacheIdentity::base();
    let p = toks(6, 0); // one full block + 2 tokens
    let mut parent = computed(&alloc, &base, &p);
    let mut kids: Vec<BlockTable> = (0..2).map(|_| parent.fork()).collect();
    assert_eq!(alloc.num_free(), 6);
    // The first writer of the shared partial block copies it; the full block stays shared.
    assert!(kids[0].reserve_write(6, 7));
    let c = kids[0].take_copies();
    assert_eq!(
        c,
        vec![BlockCopy {
            src: parent.ids()[1],
            dst: kids[0].ids()[1]
        }]
    );
    assert_eq!(kids[0].ids()[0], parent.ids()[0]);
    assert!(kids[1].reserve_write(6, 7));
    assert_eq!(kids[1].take_copies().len(), 1);
    drop(kids);
    assert_eq!(alloc.num_free(), 6);
    // The only holder left writes its partial block in place.
    assert!(parent.reserve_write(6, 7));
    assert!(parent.take_copies().is_empty());
    assert_eq!(alloc.num_free(), 6);
}
