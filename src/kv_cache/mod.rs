//! The paged KV cache: a fixed pool of blocks (`block_manager`) and their storage (`cache`).
//! A sequence owns a `BlockTable`; dropping the table returns its blocks to the pool at once.

mod block_manager;
mod cache;

pub use block_manager::{BlockAllocator, BlockId, BlockTable};
pub use cache::KvCache;
