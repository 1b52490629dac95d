// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "./Test.sol";
import {Settlement} from "../../src/Settlement.sol";

abstract contract SettlementFixture is Test {
    Settlement internal s;
    address internal owner;
    address internal operator;
    address internal feeTo;
    address internal alice;
    address internal bob;
    address internal carol;
    address internal dave;

    uint16 internal constant FEE_BPS = 250; // 2.5%
    uint64 internal constant DELAY = 1 days;
    address internal constant NATIVE = address(0);

    function setUp() public virtual {
        owner = makeAddr("owner");
        operator = makeAddr("operator");
        feeTo = makeAddr("feeTo");
        alice = makeAddr("alice");
        bob = makeAddr("bob");
        carol = makeAddr("carol");
        dave = makeAddr("dave");
        s = new Settlement(owner, feeTo, FEE_BPS, DELAY);
        vm.prank(owner);
        s.setOperator(operator, true);
        vm.deal(alice, 100 ether);
        vm.deal(bob, 100 ether);
    }

    function _deposit(address who, uint256 amount) internal {
        vm.prank(who);
        s.deposit{value: amount}();
    }

    function _a(address x) internal pure returns (address[] memory r) {
        r = new address[](1);
        r[0] = x;
    }

    function _a(address x, address y) internal pure returns (address[] memory r) {
        r = new address[](2);
        r[0] = x;
        r[1] = y;
    }

    function _u(uint256 x) internal pure returns (uint256[] memory r) {
        r = new uint256[](1);
        r[0] = x;
    }

    function _u(uint256 x, uint256 y) internal pure returns (uint256[] memory r) {
        r = new uint256[](2);
        r[0] = x;
        r[1] = y;
    }

    function _batch(
        bytes32 id,
        address[] memory payers,
        uint256[] memory debits,
        address[] memory recipients,
        uint256[] memory credits
    ) internal pure returns (Settlement.Batch memory b) {
        b = Settlement.Batch({
            batchId: id,
            receiptsRoot: keccak256(abi.encode("root", id)),
            callCount: uint64(payers.length),
            token: NATIVE,
            payers: payers,
            debits: debits,
            recipients: recipients,
            credits: credits
        });
    }

    function _settle(Settlement.Batch memory b) internal {
        vm.prank(operator);
        s.settleBatch(b);
    }

    /// A valid one-payer batch of `total` paid to carol (minus the protocol fee).
    function _simple(bytes32 id, address payer, uint256 total) internal view returns (Settlement.Batch memory) {
        uint256 fee = s.protocolFeeFor(total);
        return _batch(id, _a(payer), _u(total), _a(carol), _u(total - fee));
    }
}
