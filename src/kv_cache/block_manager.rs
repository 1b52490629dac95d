//! Block allocation with a prefix cache. Invariants: every block id is in exactly one of three
//! states — free and empty (the free list), held (reference count > 0: owned by that many live
//! `BlockTable`s), or cached and idle (reference count 0, its content registered under a
//! `PrefixKey`, in the LRU) — so `num_free()` (empty + idle cached) `+ held == num_blocks`. A block
//! is registered only once it is full and every token of it is computed; a registered block is
//! never written again while registered (writes go to positions past a sequence's computed tokens,
//! and a shared partial block is copied before it is written: copy-on-write, the copy recorded for
//! the executor to perform before the step). Idle cached blocks are evicted, oldest first, only
//! when an allocation finds no empty block; evicting drops the key, so nothing matches it again.

use super::prefix_key::{CacheIdentity, ContentId, PrefixKey};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// Index of a KV block in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockId(pub u32);

/// A block copy the executor performs before a step (copy-on-write of a shared partial block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    pub src: u32,
    pub dst: u32,
}

#[derive(Debug)]
struct Pool {
    free: Vec<u32>,
    refs: Vec<u32>,
    /// The registered content of each block, if any.
    content: Vec<Option<(ContentId, PrefixKey)>>,
    by_key: HashMap<PrefixKey, (u32, ContentId)>,
    /// Idle cached blocks by the tick they became idle (oldest evicted first), and each one's tick.
    idle: BTreeMap<u64, u32>,
    idle_at: Vec<u64>,
    tick: u64,
    next_content: u64,
    evictions: u64,
}

impl Pool {
    fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// One block for a writer (reference count 1): an empty one, else the oldest idle cached one.
    fn take(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.idle.pop_first()?;
                let (_, key) = self.content[b as usize]
                    .take()
                    .expect("idle blocks are cached");
                self.by_key.remove(&key);
                self.evictions += 1;
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// One more holder of `b` (a cache hit or a fork).
    fn share(&mut self, b: u32) {
        if self.refs[b as usize] == 0 {
            self.idle.remove(&self.idle_at[b as usize]);
        }
        self.refs[b as usize] += 1;
    }

    /// One holder fewer; the last one makes a cached block idle and any other block empty.
    fn drop_ref(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        *r -= 1;
        if *r > 0 {
            return;
        }
        if self.content[b as usize].is_some() {
            self.tick += 1;
            self.idle.insert(self.tick, b);
            self.idle_at[b as usize] = self.tick;
        } else {
            self.free.push(b);
        }
    }
}

/// Hands out blocks of `block_size` token slots; cheap to clone (shared pool).
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    pool: Arc<Mutex<Pool>>,
    block_size: usize,
    num_blocks: usize,
    prefix_caching: bool,
}

impl BlockAllocator {
    /// A pool without prefix caching.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self::with_prefix_caching(num_blocks, block_size, false)
    }

    pub fn with_prefix_caching(num_blocks: usize, block_size: usize, enabled: bool) -> Self {
        let pool = Pool {
            // Hand out low ids first.
            free: (0..num_blocks as u32).rev().collect(),
            refs: vec![0; num_blocks],
            content: vec![None; num_blocks],
            by_key: HashMap::new(),
            idle: BTreeMap::new(),
            idle_at: vec![0; num_blocks],
            tick: 0,
            next_content: 0,
            evictions: 0,
        };
        BlockAllocator {
            pool: Arc::new(Mutex::new(pool)),
            block_size,
            num_blocks,
            prefix_caching: enabled,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().expect("block pool")
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    /// Blocks an allocation can take now: empty ones and idle cached ones.
    pub fn num_free(&self) -> usize {
        self.lock().available()
    }

    /// Idle cached blocks (reusable by a prefix hit, evictable by an allocation).
    pub fn num_cached_idle(&self) -> usize {
        self.lock().idle.len()
    }

    /// Cached blocks evicted so far (to make room for new content).
    pub fn num_evictions(&self) -> u64 {
        self.lock().evictions
    }

    /// Blocks needed to hold `tokens` slots.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    pub fn new_table(&self) -> BlockTable {
        BlockTable {
            blocks: Vec::new(),
            chain: Vec::new(),
            copies: Vec::new(),
            alloc: self.clone(),
        }
    }
}

/// The blocks of one sequence, in position order. Returns them to the pool on drop.
#[derive(Debug)]
pub struct BlockTable {
    blocks: Vec<u32>,
    /// Content ids of the leading full blocks whose content is known (matched or registered).
    chain: Vec<ContentId>,
    /// Copy-on-write copies made by `reserve_write`, for the next step.
    copies: Vec<BlockCopy>,
    alloc: BlockAllocator,
}

impl BlockTable {
    /// Grows the table to hold `tokens` slots; all-or-nothing. Returns false if the pool is short.
    pub fn reserve(&mut self, tokens: usize) -> bool {
        let need = self.extra_blocks_for(tokens);
        if need == 0 {
            return true;
        }
        let mut pool = self.alloc.lock();
        if pool.available() < need {
            return false;
        }
        for _ in 0..need {
            let b = pool.take().expect("counted available");
            self.blocks.push(b);
        }
        true
    }

    /// Makes positions `from..tokens` writable: grows the table and, when the block holding
    /// `from` is shared with another table (a fork), gives this table its own copy of it (the copy
    /// is queued for `take_copies`). All-or-nothing; false if the pool is short.
    pub fn reserve_write(&mut self, from: usize, tokens: usize) -> bool {
        let bs = self.alloc.block_size;
        let i = from / bs;
        let cow = {
            let pool = self.alloc.lock();
            i < self.blocks.len() && pool.refs[self.blocks[i] as usize] > 1
        };
        if !cow {
            return self.reserve(tokens);
        }
        let need = self.extra_blocks_for(tokens) + 1;
        {
            let mut pool = self.alloc.lock();
            if pool.available() < need {
                return false;
            }
            let src = self.blocks[i];
            let dst = pool.take().expect("counted available");
            pool.drop_ref(src);
            self.blocks[i] = dst;
            self.chain.truncate(i);
            self.copies.push(BlockCopy { src, dst });
        }
        self.reserve(tokens)
    }

    /// Extra blocks `reserve(tokens)` would take.
    pub fn extra_blocks_for(&self, tokens: usize) -> usize {
        self.alloc
            .blocks_for(tokens)
            .saturating_sub(self.blocks.len())
    }

    pub fn ids(&self) -> &[u32] {
        &self.blocks
    }

    /// Cache slot of token position `pos`.
    pub fn slot(&self, pos: usize) -> usize {
        let bs = self.alloc.block_size;
        self.blocks[pos / bs] as usize * bs + pos % bs
    }

    /// The copies this table needs before its next step (drained).
    pub fn take_copies(&mut self) -> Vec<BlockCopy> {
        std::mem::take(&mut self.copies)
    }

    /// Takes the cached blocks of `tokens`' longest cached prefix under `identity` into this
    /// (empty) table; returns how many tokens they hold. The block holding the last token is
    /// never taken, so at least one token is left to compute. 0 when caching is off.
    pub fn match_prefix(&mut self, identity: &CacheIdentity, tokens: &[u32]) -> usize {
        let bs = self.alloc.block_size;
        if !self.alloc.prefix_caching || !self.blocks.is_empty() || tokens.is_empty() {
            return 0;
        }
        let mut pool = self.alloc.lock();
        for block in tokens[..tokens.len() - 1].chunks_exact(bs) {
            let key = PrefixKey::new(identity, self.chain.last().copied(), block);
            let Some(&(b, cid)) = pool.by_key.get(&key) else {
                break;
            };
            pool.share(b);
            self.blocks.push(b);
            self.chain.push(cid);
        }
        self.blocks.len() * bs
    }

    /// Registers the full blocks among the first `computed` of `tokens` (computed under
    /// `identity`) so later sequences can reuse them. A block whose key is already cached (computed
    /// twice at once) stays private; the chain continues from the cached one.
    pub fn register(&mut self, identity: &CacheIdentity, tokens: &[u32], computed: usize) {
        let bs = self.alloc.block_size;
        let full = computed.min(tokens.len()) / bs;
        if !self.alloc.prefix_caching || self.chain.len() >= full {
            return;
        }
        let mut pool = self.alloc.lock();
        for i in self.chain.len()..full {
            let key = PrefixKey::new(
                identity,
                self.chain.last().copied(),
                &tokens[i * bs..][..bs],
            );
            let cid = match pool.by_key.get(&key) {
                Some(&(_, cid)) => cid,
                None => {
                    let cid = ContentId(pool.next_content);
                    pool.next_content += 1;
                    let b = self.blocks[i];
                    pool.content[b as usize] = Some((cid, key.clone()));
                    pool.by_key.insert(key, (b, cid));
                    cid
                }
            };
            self.chain.push(cid);
        }
    }

    /// A table sharing every block of this one (n > 1: the prompt is computed once).
    pub fn fork(&self) -> BlockTable {
        let mut pool = self.alloc.lock();
        for &b in &self.blocks {
            pool.share(b);
        }
        BlockTable {
            blocks: self.blocks.clone(),
            chain: self.chain.clone(),
            copies: Vec::new(),
            alloc: self.alloc.clone(),
        }
    }

    /// Returns every block now. The tail goes idle first, so it is evicted before the head.
    pub fn release(&mut self) {
        self.chain.clear();
        self.copies.clear();
        if self.blocks.is_empty() {
            return;
        }
        let mut pool = self.alloc.lock();
        for b in self.blocks.drain(..).rev() {
            pool.drop_ref(b);
        }
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        self.release();
    }
}
