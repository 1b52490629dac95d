//! What identifies the content of a full KV block for the prefix cache. A block's K/V depend on
//! every token before it and on the weights that computed them, so its key chains: the first
//! block's key holds the `CacheIdentity` (which model weights: the base, or an adapter set with
//! each adapter's id and mix weight) and its tokens; every later block's key holds its parent's
//! `ContentId` and its own tokens. Keys are compared exactly (the map hashes them, equality checks
//! every field), so two keys never collide: a block is reused only for the same tokens after the
//! same prefix under the same weights.

use std::sync::Arc;

/// Which weights compute a sequence's K/V: opaque words the engine derives from the request's
/// adapter set (adapter ids — fresh on every load or in-place reload — with their mix weights).
/// The empty identity is the base model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CacheIdentity(Arc<[u64]>);

impl CacheIdentity {
    pub fn new(words: Vec<u64>) -> Self {
        CacheIdentity(words.into())
    }

    pub fn base() -> Self {
        Self::default()
    }
}

/// The unique, never reused id of one cached block content (a `PrefixKey` once registered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentId(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Parent {
    /// The first block of a sequence computed under these weights.
    Root(CacheIdentity),
    /// The block right before, which itself chains back to a root.
    Block(ContentId),
}

/// The exact key of one full block: its parent and its `block_size` tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrefixKey {
    parent: Parent,
    tokens: Box<[u32]>,
}

impl PrefixKey {
    /// The key of the block after `prev` (`None`: the first block, computed under `identity`).
    pub fn new(identity: &CacheIdentity, prev: Option<ContentId>, tokens: &[u32]) -> Self {
        let parent = match prev {
            None => Parent::Root(identity.clone()),
            Some(c) => Parent::Block(c),
        };
        PrefixKey {
            parent,
            tokens: tokens.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_identity_parent_and_tokens() {
        let base = CacheIdentity::base();
        let a = CacheIdentity::new(vec![7, 1]);
        let b = CacheIdentity::new(vec![8, 1]);
        let t = [1u32, 2, 3];
        assert_eq!(PrefixKey::new(&a, None, &t), PrefixKey::new(&a, None, &t));
        assert_ne!(PrefixKey::new(&a, None, &t), PrefixKey::new(&b, None, &t));
        assert_ne!(
            PrefixKey::new(&a, None, &t),
            PrefixKey::new(&base, None, &t)
        );
        assert_ne!(
            PrefixKey::new(&a, Some(ContentId(1)), &t),
            PrefixKey::new(&a, Some(ContentId(2)), &t)
        );
        assert_ne!(
            PrefixKey::new(&a, None, &t),
            PrefixKey::new(&a, None, &[1, 2, 4])
        );
    }
}
