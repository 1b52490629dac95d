//! The paged KV cache's bookkeeping: a fixed pool of block ids (`block_manager`). A sequence owns a
//! `BlockTable`; dropping the table returns its blocks to the pool at once. The storage the ids
//! index lives in the executor (`exec`), on whatever device it runs.

mod block_manager;

pub use block_manager::{BlockAllocator, BlockId, BlockTable};
