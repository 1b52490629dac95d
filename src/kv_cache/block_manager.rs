//! Block allocation. Invariant: every block id is either in the free list or owned by exactly one
//! live `BlockTable`; `num_free() + owned == num_blocks` at all times.

use std::sync::{Arc, Mutex};

/// Index of a KV block in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockId(pub u32);

#[derive(Debug)]
struct Pool {
    free: Vec<u32>,
}

/// Hands out blocks of `block_size` token slots; cheap to clone (shared pool).
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    pool: Arc<Mutex<Pool>>,
    block_size: usize,
    num_blocks: usize,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        // Hand out low ids first.
        let free = (0..num_blocks as u32).rev().collect();
        BlockAllocator {
            pool: Arc::new(Mutex::new(Pool { free })),
            block_size,
            num_blocks,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn num_free(&self) -> usize {
        self.pool.lock().expect("block pool").free.len()
    }

    /// Blocks needed to hold `tokens` slots.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    pub fn new_table(&self) -> BlockTable {
        BlockTable {
            blocks: Vec::new(),
            alloc: self.clone(),
        }
    }
}

/// The blocks of one sequence, in position order. Returns them to the pool on drop.
#[derive(Debug)]
pub struct BlockTable {
    blocks: Vec<u32>,
    alloc: BlockAllocator,
}

impl BlockTable {
    /// Grows the table to hold `tokens` slots; all-or-nothing. Returns false if the pool is short.
    pub fn reserve(&mut self, tokens: usize) -> bool {
        let need = self
            .alloc
            .blocks_for(tokens)
            .saturating_sub(self.blocks.len());
        if need == 0 {
            return true;
        }
        let mut pool = self.alloc.pool.lock().expect("block pool");
        if pool.free.len() < need {
            return false;
        }
        let at = pool.free.len() - need;
        self.blocks.extend(pool.free.drain(at..).rev());
        true
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

    /// Returns every block to the pool now.
    pub fn release(&mut self) {
        if self.blocks.is_empty() {
            return;
        }
        let mut pool = self.alloc.pool.lock().expect("block pool");
        pool.free.extend(self.blocks.drain(..).rev());
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
