//! The paged KV cache's bookkeeping: a fixed pool of block ids (`block_manager`) with a prefix
//! cache keyed by `prefix_key`. A sequence owns a `BlockTable`; dropping it releases its blocks at
//! once (cached ones stay reusable until an allocation needs them). Full blocks are shared by
//! reference count — across requests with the same weights and prefix, and between the `n`
//! choices of one request — and a shared partial block is copied before it is written. The
//! storage the ids index lives in the executor (`exec`), on whatever device it runs.

mod block_manager;
mod prefix_key;
#[cfg(test)]
mod tests;

pub use block_manager::{BlockAllocator, BlockCopy, BlockId, BlockTable};
pub use prefix_key::{CacheIdentity, ContentId, PrefixKey};
