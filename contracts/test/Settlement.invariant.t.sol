// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {CommonBase, Test} from "./utils/Test.sol";
import {Settlement} from "../src/Settlement.sol";

/// Drives Settlement through random sequences of deposits, withdrawals, settlements and claims,
/// plus attempts the invariants forbid (resubmitting a batch id, settling as a non-operator).
contract SettlementHandler is CommonBase {
    Settlement public immutable s;
    address public immutable operator;
    address[] public actors;

    bytes32[] public settledIds;
    uint256 public batchNonce;
    bool public doubleSettled;
    bool public nonOperatorSettled;
    uint256 public ghostIn;
    uint256 public ghostOut;

    constructor(Settlement s_, address operator_, address[] memory actors_) {
        s = s_;
        operator = operator_;
        actors = actors_;
    }

    function actorCount() external view returns (uint256) {
        return actors.length;
    }

    function settledCount() external view returns (uint256) {
        return settledIds.length;
    }

    function _actor(uint256 seed) internal view returns (address) {
        return actors[seed % actors.length];
    }

    function deposit(uint256 who, uint256 amount) external {
        address a = _actor(who);
        amount = bound(amount, 1, 10 ether);
        vm.deal(a, amount);
        vm.prank(a);
        s.deposit{value: amount}();
        ghostIn += amount;
    }

    function requestWithdrawal(uint256 who, uint256 amount) external {
        address a = _actor(who);
        uint256 bal = s.escrowOf(address(0), a);
        if (bal == 0) return;
        vm.prank(a);
        s.requestWithdrawal(address(0), bound(amount, 1, bal));
    }

    function executeWithdrawal(uint256 who) external {
        address a = _actor(who);
        (uint192 amt, uint64 unlockAt) = s.pendingWithdrawal(address(0), a);
        if (amt == 0 || s.escrowOf(address(0), a) == 0) return;
        if (block.timestamp < unlockAt) vm.warp(unlockAt);
        vm.prank(a);
        ghostOut += s.executeWithdrawal(address(0));
    }

    function claim(uint256 who) external {
        address a = _actor(who);
        if (s.earningsOf(address(0), a) == 0) return;
        vm.prank(a);
        ghostOut += s.claim(address(0));
    }

    /// A valid batch: up to 3 payers debited within their escrow, credits split over up to 3 recipients.
    function settle(uint256 seed, uint8 nPayers, uint8 nRecipients) external {
        nPayers = uint8(bound(nPayers, 1, 3));
        nRecipients = uint8(bound(nRecipients, 1, 3));
        address[] memory payers = new address[](nPayers);
        uint256[] memory debits = new uint256[](nPayers);
        uint256 total;
        for (uint256 i = 0; i < nPayers; ++i) {
            payers[i] = _actor(uint256(keccak256(abi.encode(seed, "p", i))));
            uint256 left = s.escrowOf(address(0), payers[i]);
            for (uint256 j = 0; j < i; ++j) {
                if (payers[j] == payers[i]) left -= debits[j];
            }
            debits[i] = left == 0 ? 0 : bound(uint256(keccak256(abi.encode(seed, "d", i))), 0, left);
            total += debits[i];
        }
        uint256 rest = total - s.protocolFeeFor(total);
        address[] memory recipients = new address[](nRecipients);
        uint256[] memory credits = new uint256[](nRecipients);
        for (uint256 i = 0; i < nRecipients; ++i) {
            recipients[i] = _actor(uint256(keccak256(abi.encode(seed, "r", i))));
            credits[i] = i + 1 == nRecipients ? rest : bound(uint256(keccak256(abi.encode(seed, "c", i))), 0, rest);
            rest -= credits[i];
        }
        bytes32 id = keccak256(abi.encode("batch", batchNonce++));
        Settlement.Batch memory b = Settlement.Batch(id, keccak256(abi.encode(id)), nPayers, address(0), payers, debits, recipients, credits);
        vm.prank(operator);
        s.settleBatch(b);
        settledIds.push(id);
    }

    /// Resubmit an already settled id with a batch that would otherwise be valid: must fail.
    function resettle(uint256 idx) external {
        if (settledIds.length == 0) return;
        bytes32 id = settledIds[idx % settledIds.length];
        vm.prank(operator);
        try s.settleBatch(_emptyBatch(id)) {
            doubleSettled = true;
        } catch {}
    }

    /// Settle a fresh, otherwise valid batch from a non-operator: must fail.
    function settleAsStranger(uint256 who) external {
        address a = _actor(who);
        if (s.isOperator(a)) return;
        vm.prank(a);
        try s.settleBatch(_emptyBatch(keccak256(abi.encode("stranger", batchNonce++)))) {
            nonOperatorSettled = true;
        } catch {}
    }

    function warp(uint32 dt) external {
        vm.warp(block.timestamp + bound(dt, 0, 3 days));
    }

    function _emptyBatch(bytes32 id) internal view returns (Settlement.Batch memory b) {
        address[] memory one = new address[](1);
        one[0] = actors[0];
        uint256[] memory zero = new uint256[](1);
        b = Settlement.Batch(id, keccak256("root"), 1, address(0), one, zero, one, zero);
    }
}

contract SettlementInvariantTest is Test {
    Settlement internal s;
    SettlementHandler internal h;
    address internal feeTo = address(0xFEE);
    address[] internal tracked;

    function setUp() public {
        address operator = address(0x0EE);
        s = new Settlement(address(this), feeTo, 300, 1 hours);
        s.setOperator(operator, true);
        address[] memory actors = new address[](5);
        for (uint256 i = 0; i < 4; ++i) {
            actors[i] = address(uint160(0xA000 + i));
        }
        actors[4] = feeTo; // the fee recipient also pays and receives
        h = new SettlementHandler(s, operator, actors);
        tracked = actors;

        targetContract(address(h));
        bytes4[] memory sel = new bytes4[](9);
        sel[0] = h.deposit.selector;
        sel[1] = h.requestWithdrawal.selector;
        sel[2] = h.executeWithdrawal.selector;
        sel[3] = h.claim.selector;
        sel[4] = h.settle.selector;
        sel[5] = h.resettle.selector;
        sel[6] = h.settleAsStranger.selector;
        sel[7] = h.warp.selector;
        sel[8] = h.settle.selector; // settle twice as often
        targetSelector(FuzzSelector(address(h), sel));
    }

    /// The contract holds exactly what it owes: all escrow plus all earnings.
    function invariant_balanceEqualsOwed() public view {
        uint256 owed;
        for (uint256 i = 0; i < tracked.length; ++i) {
            owed += s.escrowOf(address(0), tracked[i]) + s.earningsOf(address(0), tracked[i]);
        }
        assertEq(address(s).balance, owed, "balance == sum(escrow) + sum(earnings)");
        assertEq(address(s).balance, h.ghostIn() - h.ghostOut(), "balance == deposits - payouts");
    }

    function invariant_noBatchSettlesTwice() public view {
        assertFalse(h.doubleSettled(), "a batch id settled twice");
        uint256 n = h.settledCount();
        for (uint256 i = 0; i < n; ++i) {
            assertTrue(s.batchSettled(h.settledIds(i)), "settled id recorded");
        }
    }

    function invariant_onlyOperatorsSettle() public view {
        assertFalse(h.nonOperatorSettled(), "a non-operator settled");
    }
}
