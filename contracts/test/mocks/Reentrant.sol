// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Settlement} from "../../src/Settlement.sol";

/// A payer/recipient that tries to re-enter Settlement when it receives native token.
contract Reentrant {
    Settlement public immutable s;
    bool public attackClaim;
    bool public reentered;
    bytes public lastRevert;

    constructor(Settlement s_) {
        s = s_;
    }

    function deposit() external payable {
        s.deposit{value: msg.value}();
    }

    function request(uint256 amount) external {
        s.requestWithdrawal(address(0), amount);
    }

    function execute() external {
        s.executeWithdrawal(address(0));
    }

    function claim(bool againClaim) external {
        attackClaim = againClaim;
        s.claim(address(0));
    }

    receive() external payable {
        // Try once; record the revert data so the test can check it was the reentrancy guard.
        if (reentered) return;
        reentered = true;
        try this.reenter() {} catch (bytes memory err) {
            lastRevert = err;
            // bubble up so the outer call fails the way an attacker would see it
            assembly { revert(add(err, 32), mload(err)) }
        }
    }

    function reenter() external {
        if (attackClaim) s.claim(address(0));
        else s.executeWithdrawal(address(0));
    }
}
