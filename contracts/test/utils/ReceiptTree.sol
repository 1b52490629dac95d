// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Hashes} from "@openzeppelin/contracts/utils/cryptography/Hashes.sol";

/// Reference implementation (test-only) of the receipts tree the server builds off-chain; the Rust
/// ledger implements the same rules (see contracts/README.md "Receipts Merkle tree"):
///   - leaves in batch order, not sorted;
///   - each level pairs (0,1), (2,3), ...; a pair hashes to keccak256(min(a,b) ++ max(a,b));
///   - an odd last node is carried up unchanged;
///   - the root of one leaf is that leaf.
library ReceiptTree {
    function root(bytes32[] memory leaves) internal pure returns (bytes32) {
        require(leaves.length > 0, "empty tree");
        bytes32[] memory level = leaves;
        while (level.length > 1) {
            level = _up(level);
        }
        return level[0];
    }

    function proof(bytes32[] memory leaves, uint256 index) internal pure returns (bytes32[] memory out) {
        require(index < leaves.length, "index");
        bytes32[] memory buf = new bytes32[](256);
        uint256 n;
        bytes32[] memory level = leaves;
        while (level.length > 1) {
            uint256 sib = index ^ 1;
            if (sib < level.length) buf[n++] = level[sib];
            level = _up(level);
            index /= 2;
        }
        out = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            out[i] = buf[i];
        }
    }

    function _up(bytes32[] memory level) private pure returns (bytes32[] memory next) {
        next = new bytes32[]((level.length + 1) / 2);
        for (uint256 i = 0; i < next.length; ++i) {
            uint256 l = 2 * i;
            next[i] = l + 1 < level.length ? Hashes.commutativeKeccak256(level[l], level[l + 1]) : level[l];
        }
    }
}
