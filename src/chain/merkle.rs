//! The receipts Merkle tree, bit for bit as `contracts/README.md` ("Receipts Merkle tree") defines
//! it, so that a root computed here verifies on chain through `Settlement.verifyReceipt`:
//! - leaf = keccak256(keccak256(abi.encode(receiptId, adapterId, payer, operator, inputTokens,
//!   outputTokens, cost, timestamp))), every field one 32-byte big-endian word;
//! - leaves stay in batch order; a pair hashes to keccak256(min(a, b) ++ max(a, b));
//! - an odd last node is carried up unchanged; the root of one leaf is the leaf.

use alloy::primitives::{keccak256, Address, B256, U256};

/// One metered inference call, as committed to in a settlement batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub receipt_id: B256,
    pub adapter_id: B256,
    pub payer: Address,
    pub operator: Address,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Total cost in wei, protocol fee included.
    pub cost: U256,
    /// Unix seconds.
    pub timestamp: u64,
}

impl Receipt {
    /// `abi.encode` of the eight fields: 256 bytes.
    pub fn abi_encode(&self) -> [u8; 256] {
        let mut out = [0u8; 256];
        out[0..32].copy_from_slice(self.receipt_id.as_slice());
        out[32..64].copy_from_slice(self.adapter_id.as_slice());
        out[76..96].copy_from_slice(self.payer.as_slice());
        out[108..128].copy_from_slice(self.operator.as_slice());
        out[152..160].copy_from_slice(&self.input_tokens.to_be_bytes());
        out[184..192].copy_from_slice(&self.output_tokens.to_be_bytes());
        out[192..224].copy_from_slice(&self.cost.to_be_bytes::<32>());
        out[248..256].copy_from_slice(&self.timestamp.to_be_bytes());
        out
    }

    /// The tree leaf: double keccak256 of the ABI encoding (OpenZeppelin StandardMerkleTree style).
    pub fn leaf(&self) -> B256 {
        keccak256(keccak256(self.abi_encode()))
    }
}

/// keccak256 of the two nodes in ascending byte order (OpenZeppelin `Hashes.commutativeKeccak256`).
pub fn hash_pair(a: B256, b: B256) -> B256 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(lo.as_slice());
    buf[32..].copy_from_slice(hi.as_slice());
    keccak256(buf)
}

/// A receipts tree; holds every level so proofs are cheap. Never empty.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    /// levels[0] = leaves, last = [root].
    levels: Vec<Vec<B256>>,
}

impl MerkleTree {
    /// Build the tree over `leaves` in the given order; `None` for no leaves (nothing to settle).
    pub fn new(leaves: Vec<B256>) -> Option<Self> {
        if leaves.is_empty() {
            return None;
        }
        let mut levels = vec![leaves];
        while levels.last().map_or(0, Vec::len) > 1 {
            let level = levels.last().expect("non-empty");
            let next = level
                .chunks(2)
                .map(|pair| match pair {
                    [a, b] => hash_pair(*a, *b),
                    [a] => *a,
                    _ => unreachable!("chunks(2)"),
                })
                .collect();
            levels.push(next);
        }
        Some(Self { levels })
    }

    pub fn from_receipts(receipts: &[Receipt]) -> Option<Self> {
        Self::new(receipts.iter().map(Receipt::leaf).collect())
    }

    pub fn root(&self) -> B256 {
        self.levels.last().expect("never empty")[0]
    }

    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn leaf(&self, index: usize) -> Option<B256> {
        self.levels[0].get(index).copied()
    }

    /// Siblings from the leaf up, skipping levels where the node was carried up without one.
    pub fn proof(&self, mut index: usize) -> Option<Vec<B256>> {
        if index >= self.len() {
            return None;
        }
        let mut proof = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(index ^ 1) {
                proof.push(*sibling);
            }
            index /= 2;
        }
        Some(proof)
    }
}

/// OpenZeppelin `MerkleProof.verify`: fold the proof over the leaf with `hash_pair`.
pub fn verify(proof: &[B256], root: B256, leaf: B256) -> bool {
    proof.iter().fold(leaf, |acc, p| hash_pair(acc, *p)) == root
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{address, b256};

    /// The five receipts of `test_receiptTree_vector` in contracts/test/Settlement.t.sol.
    fn vector_receipt(i: u64) -> Receipt {
        Receipt {
            receipt_id: B256::from(U256::from(i + 1)),
            adapter_id: keccak256("demo-adapter"),
            payer: Address::from_word(B256::from(U256::from(0x1000 + i % 2))),
            operator: address!("0000000000000000000000000000000000002000"),
            input_tokens: 10 * (i + 1),
            output_tokens: 5 * (i + 1),
            cost: U256::from(1_000_000 * (i + 1)),
            timestamp: 1_750_000_000 + i,
        }
    }

    #[test]
    fn matches_the_solidity_vector() {
        let receipts: Vec<_> = (0..5).map(vector_receipt).collect();
        assert_eq!(
            receipts[0].leaf(),
            b256!("934b041a0e921efa3994d9ad3df3c7b9b0f6a74c0a4be62410ba250cbaff36f5")
        );
        let tree = MerkleTree::from_receipts(&receipts).unwrap();
        assert_eq!(
            tree.root(),
            b256!("b792cea4d64f8caaf70b0fefe619faf28de4581cbe313892577c7df56ff02478")
        );
    }

    #[test]
    fn every_proof_verifies_for_odd_and_even_sizes() {
        for n in [1usize, 2, 3, 4, 5, 7, 8, 9, 133] {
            let leaves: Vec<B256> = (0..n as u64).map(|i| vector_receipt(i).leaf()).collect();
            let tree = MerkleTree::new(leaves.clone()).unwrap();
            for (i, leaf) in leaves.iter().enumerate() {
                let proof = tree.proof(i).unwrap();
                assert!(verify(&proof, tree.root(), *leaf), "n={n} i={i}");
                assert!(
                    !verify(&proof, tree.root(), keccak256(leaf)),
                    "n={n} i={i} wrong leaf"
                );
            }
            assert!(tree.proof(n).is_none());
        }
    }

    #[test]
    fn single_leaf_is_its_own_root_and_empty_has_no_tree() {
        let leaf = vector_receipt(0).leaf();
        let tree = MerkleTree::new(vec![leaf]).unwrap();
        assert_eq!(tree.root(), leaf);
        assert!(tree.proof(0).unwrap().is_empty());
        assert!(MerkleTree::new(vec![]).is_none());
    }

    #[test]
    fn hash_pair_is_commutative() {
        let (a, b) = (keccak256("a"), keccak256("b"));
        assert_eq!(hash_pair(a, b), hash_pair(b, a));
    }
}
