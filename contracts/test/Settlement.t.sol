// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {SettlementFixture} from "./utils/Fixture.sol";
import {ReceiptTree} from "./utils/ReceiptTree.sol";
import {Settlement} from "../src/Settlement.sol";
import {MockERC20, FeeOnTransferERC20} from "./mocks/MockERC20.sol";
import {Reentrant} from "./mocks/Reentrant.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

contract SettlementTest is SettlementFixture {
    event Deposited(address indexed token, address indexed payer, address indexed from, uint256 amount);
    event BatchSettled(
        bytes32 indexed batchId,
        bytes32 receiptsRoot,
        address indexed operator,
        address indexed token,
        uint256 totalDebits,
        uint256 protocolFee,
        uint64 callCount
    );
    event WithdrawalRequested(address indexed token, address indexed payer, uint256 amount, uint64 unlockAt);

    // ------------------------------------------------------------ constructor

    function test_constructor_setsConfig() public view {
        assertEq(s.owner(), owner);
        assertEq(s.feeRecipient(), feeTo);
        assertEq(uint256(s.protocolFeeBps()), FEE_BPS);
        assertEq(uint256(s.withdrawalDelay()), DELAY);
        assertTrue(s.isOperator(operator));
    }

    function test_constructor_revertsOnFeeTooHigh() public {
        vm.expectRevert(abi.encodeWithSelector(Settlement.FeeTooHigh.selector, uint16(1001)));
        new Settlement(owner, feeTo, 1001, DELAY);
    }

    function test_constructor_revertsOnZeroFeeRecipient() public {
        vm.expectRevert(Settlement.ZeroAddress.selector);
        new Settlement(owner, address(0), 100, DELAY);
    }

    function test_constructor_revertsOnDelayOutOfRange() public {
        vm.expectRevert(abi.encodeWithSelector(Settlement.DelayOutOfRange.selector, uint64(59)));
        new Settlement(owner, feeTo, 100, 59);
        vm.expectRevert(abi.encodeWithSelector(Settlement.DelayOutOfRange.selector, uint64(30 days + 1)));
        new Settlement(owner, feeTo, 100, 30 days + 1);
    }

    // ---------------------------------------------------------------- deposit

    function test_deposit_creditsEscrow() public {
        vm.expectEmit(address(s));
        emit Deposited(NATIVE, alice, alice, 1 ether);
        _deposit(alice, 1 ether);
        assertEq(s.escrowOf(NATIVE, alice), 1 ether);
        assertEq(address(s).balance, 1 ether);
    }

    function test_depositFor_creditsPayerNotSender() public {
        vm.prank(bob);
        s.depositFor{value: 2 ether}(alice);
        assertEq(s.escrowOf(NATIVE, alice), 2 ether);
        assertEq(s.escrowOf(NATIVE, bob), 0);
    }

    function test_deposit_revertsOnZero() public {
        vm.prank(alice);
        vm.expectRevert(Settlement.ZeroAmount.selector);
        s.deposit{value: 0}();
    }

    function test_depositFor_revertsOnZeroPayer() public {
        vm.prank(alice);
        vm.expectRevert(Settlement.ZeroAddress.selector);
        s.depositFor{value: 1}(address(0));
    }

    function test_deposit_revertsWhenPaused() public {
        vm.prank(owner);
        s.pause();
        vm.prank(alice);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        s.deposit{value: 1}();
    }

    // ---------------------------------------------------------------- settle

    function test_settle_movesBalancesAndTakesFee() public {
        _deposit(alice, 10 ether);
        _deposit(bob, 10 ether);
        // 3 ether total: fee 2.5% = 0.075 ether; credits 2.925 ether
        Settlement.Batch memory b =
            _batch(bytes32("b1"), _a(alice, bob), _u(1 ether, 2 ether), _a(carol, dave), _u(2 ether, 0.925 ether));
        b.callCount = 7;
        vm.expectEmit(address(s));
        emit BatchSettled(bytes32("b1"), b.receiptsRoot, operator, NATIVE, 3 ether, 0.075 ether, 7);
        vm.prank(operator);
        s.settleBatch(b);

        assertEq(s.escrowOf(NATIVE, alice), 9 ether);
        assertEq(s.escrowOf(NATIVE, bob), 8 ether);
        assertEq(s.earningsOf(NATIVE, carol), 2 ether);
        assertEq(s.earningsOf(NATIVE, dave), 0.925 ether);
        assertEq(s.earningsOf(NATIVE, feeTo), 0.075 ether);
        assertTrue(s.batchSettled(bytes32("b1")));
        assertEq(s.batchRoot(bytes32("b1")), b.receiptsRoot);
        assertFalse(s.batchSettled(bytes32("b2")));
        assertEq(address(s).balance, 20 ether);
    }

    function test_settle_duplicatePayersAndRecipients() public {
        _deposit(alice, 1 ether);
        Settlement.Batch memory b =
            _batch(bytes32("dup"), _a(alice, alice), _u(0.5 ether, 0.5 ether), _a(carol, carol), _u(0.5 ether, 0.475 ether));
        vm.prank(operator);
        s.settleBatch(b);
        assertEq(s.escrowOf(NATIVE, alice), 0);
        assertEq(s.earningsOf(NATIVE, carol), 0.975 ether);
    }

    function test_settle_zeroFee() public {
        vm.prank(owner);
        s.setProtocolFee(feeTo, 0);
        _deposit(alice, 1 ether);
        vm.prank(operator);
        s.settleBatch(_batch(bytes32("z"), _a(alice), _u(1 ether), _a(carol), _u(1 ether)));
        assertEq(s.earningsOf(NATIVE, carol), 1 ether);
        assertEq(s.earningsOf(NATIVE, feeTo), 0);
    }

    function test_settle_feeRoundsDown() public {
        _deposit(alice, 1 ether);
        // 39 wei * 2.5% = 0.975 -> fee 0, credits must be 39
        vm.prank(operator);
        s.settleBatch(_batch(bytes32("r"), _a(alice), _u(39), _a(carol), _u(39)));
        assertEq(s.earningsOf(NATIVE, feeTo), 0);
        // 40 wei -> fee 1
        vm.prank(operator);
        s.settleBatch(_batch(bytes32("r2"), _a(alice), _u(40), _a(carol), _u(39)));
        assertEq(s.earningsOf(NATIVE, feeTo), 1);
    }

    function test_settle_revertsForNonOperator() public {
        _deposit(alice, 1 ether);
        Settlement.Batch memory b = _simple(bytes32("x"), alice, 1 ether);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Settlement.NotOperator.selector, alice));
        s.settleBatch(b);
        vm.prank(owner); // the owner is not an operator either
        vm.expectRevert(abi.encodeWithSelector(Settlement.NotOperator.selector, owner));
        s.settleBatch(b);
    }

    function test_settle_revertsForRemovedOperator() public {
        _deposit(alice, 1 ether);
        vm.prank(owner);
        s.setOperator(operator, false);
        Settlement.Batch memory b = _simple(bytes32("x"), alice, 1 ether);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.NotOperator.selector, operator));
        s.settleBatch(b);
    }

    function test_settle_revertsWhenPaused() public {
        _deposit(alice, 1 ether);
        vm.prank(owner);
        s.pause();
        Settlement.Batch memory b = _simple(bytes32("x"), alice, 1 ether);
        vm.prank(operator);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        s.settleBatch(b);
        vm.prank(owner);
        s.unpause();
        vm.prank(operator);
        s.settleBatch(b);
    }

    function test_settle_revertsOnReusedBatchId() public {
        _deposit(alice, 2 ether);
        Settlement.Batch memory b = _simple(bytes32("same"), alice, 1 ether);
        vm.prank(operator);
        s.settleBatch(b);
        b.receiptsRoot = keccak256("another root");
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.BatchAlreadySettled.selector, bytes32("same")));
        s.settleBatch(b);
        assertEq(s.escrowOf(NATIVE, alice), 1 ether);
    }

    function test_settle_revertsOnZeroRoot() public {
        _deposit(alice, 1 ether);
        Settlement.Batch memory b = _simple(bytes32("x"), alice, 1 ether);
        b.receiptsRoot = bytes32(0);
        vm.prank(operator);
        vm.expectRevert(Settlement.ZeroRoot.selector);
        s.settleBatch(b);
    }

    function test_settle_revertsOnEmptyBatch() public {
        Settlement.Batch memory b = _batch(bytes32("e"), new address[](0), new uint256[](0), _a(carol), _u(0));
        vm.prank(operator);
        vm.expectRevert(Settlement.EmptyBatch.selector);
        s.settleBatch(b);
    }

    function test_settle_revertsOnDebitLengthMismatch() public {
        _deposit(alice, 1 ether);
        Settlement.Batch memory b = _batch(bytes32("l"), _a(alice), _u(1, 2), _a(carol), _u(3));
        vm.prank(operator);
        vm.expectRevert(Settlement.LengthMismatch.selector);
        s.settleBatch(b);
    }

    function test_settle_revertsOnCreditLengthMismatch() public {
        _deposit(alice, 1 ether);
        Settlement.Batch memory b = _batch(bytes32("l"), _a(alice), _u(1), _a(carol, dave), _u(1));
        vm.prank(operator);
        vm.expectRevert(Settlement.LengthMismatch.selector);
        s.settleBatch(b);
    }

    function test_settle_revertsOnInsufficientEscrow() public {
        _deposit(alice, 1 ether);
        Settlement.Batch memory b = _simple(bytes32("i"), alice, 1 ether + 1);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InsufficientEscrow.selector, alice, 1 ether, 1 ether + 1));
        s.settleBatch(b);
    }

    function test_settle_revertsWhenCreditsTooHigh() public {
        _deposit(alice, 1 ether);
        // credits == debits: ignores the protocol fee the contract takes
        Settlement.Batch memory b = _batch(bytes32("c"), _a(alice), _u(1 ether), _a(carol), _u(1 ether));
        vm.prank(operator);
        vm.expectRevert(
            abi.encodeWithSelector(Settlement.CreditsMismatch.selector, 1 ether, 0.025 ether, 1 ether)
        );
        s.settleBatch(b);
    }

    function test_settle_revertsWhenCreditsTooLow() public {
        _deposit(alice, 1 ether);
        Settlement.Batch memory b = _batch(bytes32("c"), _a(alice), _u(1 ether), _a(carol), _u(0.9 ether));
        vm.prank(operator);
        vm.expectRevert(
            abi.encodeWithSelector(Settlement.CreditsMismatch.selector, 1 ether, 0.025 ether, 0.9 ether)
        );
        s.settleBatch(b);
    }

    function test_settle_revertsOnZeroRecipient() public {
        _deposit(alice, 1 ether);
        Settlement.Batch memory b = _batch(bytes32("c"), _a(alice), _u(1 ether), _a(address(0)), _u(0.975 ether));
        vm.prank(operator);
        vm.expectRevert(Settlement.ZeroAddress.selector);
        s.settleBatch(b);
    }

    // ----------------------------------------------------------- receipts

    function _receipt(uint256 i) internal view returns (Settlement.Receipt memory) {
        return Settlement.Receipt({
            receiptId: keccak256(abi.encode("receipt", i)),
            adapterId: keccak256("adapter"),
            payer: i % 2 == 0 ? alice : bob,
            operator: operator,
            inputTokens: uint64(100 + i),
            outputTokens: uint64(20 + i),
            cost: 1000 * (i + 1),
            timestamp: uint64(1_700_000_000 + i)
        });
    }

    function test_receiptLeaf_isDoubleHashedAbiEncoding() public view {
        Settlement.Receipt memory r = _receipt(3);
        bytes32 expected = keccak256(bytes.concat(keccak256(abi.encode(r))));
        assertEq(s.receiptLeaf(r), expected);
    }

    function test_verifyReceipt_everyLeafOfEveryTreeSize() public {
        _deposit(alice, 1 ether);
        for (uint256 n = 1; n <= 9; ++n) {
            bytes32[] memory leaves = new bytes32[](n);
            for (uint256 i = 0; i < n; ++i) {
                leaves[i] = s.receiptLeaf(_receipt(i));
            }
            bytes32 id = keccak256(abi.encode("tree", n));
            Settlement.Batch memory b = _simple(id, alice, 1000);
            b.receiptsRoot = ReceiptTree.root(leaves);
            vm.prank(operator);
            s.settleBatch(b);
            for (uint256 i = 0; i < n; ++i) {
                assertTrue(s.verifyReceipt(id, leaves[i], ReceiptTree.proof(leaves, i)), "leaf verifies");
            }
            // a receipt not in the batch does not verify
            assertFalse(s.verifyReceipt(id, s.receiptLeaf(_receipt(n)), ReceiptTree.proof(leaves, 0)));
        }
    }

    function test_verifyReceipt_falseForUnsettledBatch() public view {
        bytes32[] memory leaves = new bytes32[](1);
        leaves[0] = s.receiptLeaf(_receipt(0));
        assertFalse(s.verifyReceipt(bytes32("nope"), leaves[0], new bytes32[](0)));
    }

    /// Cross-language test vector: the Rust ledger (src/chain) must compute the same root for the
    /// same five receipts (see tests/chain_settlement.rs and src/chain/merkle.rs).
    function test_receiptTree_vector() public pure {
        bytes32[] memory leaves = new bytes32[](5);
        for (uint256 i = 0; i < 5; ++i) {
            leaves[i] = keccak256(bytes.concat(keccak256(abi.encode(_vectorReceipt(i)))));
        }
        assertEq(leaves[0], VECTOR_LEAF0, "leaf 0");
        assertEq(ReceiptTree.root(leaves), VECTOR_ROOT, "root");
    }

    bytes32 internal constant VECTOR_LEAF0 = 0x934b041a0e921efa3994d9ad3df3c7b9b0f6a74c0a4be62410ba250cbaff36f5;
    bytes32 internal constant VECTOR_ROOT = 0xb792cea4d64f8caaf70b0fefe619faf28de4581cbe313892577c7df56ff02478;

    function _vectorReceipt(uint256 i) internal pure returns (Settlement.Receipt memory) {
        return Settlement.Receipt({
            receiptId: bytes32(i + 1),
            adapterId: keccak256("demo-adapter"),
            payer: address(uint160(0x1000 + i % 2)),
            operator: address(uint160(0x2000)),
            inputTokens: uint64(10 * (i + 1)),
            outputTokens: uint64(5 * (i + 1)),
            cost: 1_000_000 * (i + 1),
            timestamp: uint64(1_750_000_000 + i)
        });
    }

    // ------------------------------------------------------------ withdraw

    function test_withdraw_afterDelay() public {
        _deposit(alice, 5 ether);
        vm.expectEmit(address(s));
        emit WithdrawalRequested(NATIVE, alice, 2 ether, uint64(block.timestamp + DELAY));
        vm.prank(alice);
        s.requestWithdrawal(NATIVE, 2 ether);
        vm.warp(block.timestamp + DELAY);
        uint256 before = alice.balance;
        vm.prank(alice);
        uint256 got = s.executeWithdrawal(NATIVE);
        assertEq(got, 2 ether);
        assertEq(alice.balance, before + 2 ether);
        assertEq(s.escrowOf(NATIVE, alice), 3 ether);
        (uint192 amt,) = s.pendingWithdrawal(NATIVE, alice);
        assertEq(uint256(amt), 0);
    }

    function test_withdraw_revertsBeforeDelay() public {
        _deposit(alice, 5 ether);
        vm.prank(alice);
        s.requestWithdrawal(NATIVE, 2 ether);
        uint64 unlockAt = uint64(block.timestamp + DELAY);
        vm.warp(block.timestamp + DELAY - 1);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Settlement.WithdrawalLocked.selector, unlockAt));
        s.executeWithdrawal(NATIVE);
    }

    function test_withdraw_escrowStillSettlesDuringDelay() public {
        _deposit(alice, 5 ether);
        vm.prank(alice);
        s.requestWithdrawal(NATIVE, 5 ether);
        // in-flight usage settles while the withdrawal waits
        _settle(_simple(bytes32("inflight"), alice, 4 ether));
        vm.warp(block.timestamp + DELAY);
        vm.prank(alice);
        uint256 got = s.executeWithdrawal(NATIVE);
        assertEq(got, 1 ether, "capped at what is left");
        assertEq(s.escrowOf(NATIVE, alice), 0);
    }

    function test_withdraw_revertsWhenEscrowFullyDebited() public {
        _deposit(alice, 1 ether);
        vm.prank(alice);
        s.requestWithdrawal(NATIVE, 1 ether);
        _settle(_simple(bytes32("all"), alice, 1 ether));
        vm.warp(block.timestamp + DELAY);
        vm.prank(alice);
        vm.expectRevert(Settlement.ZeroAmount.selector);
        s.executeWithdrawal(NATIVE);
    }

    function test_withdraw_requestRevertsAboveEscrow() public {
        _deposit(alice, 1 ether);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InsufficientEscrow.selector, alice, 1 ether, 2 ether));
        s.requestWithdrawal(NATIVE, 2 ether);
    }

    function test_withdraw_requestRevertsOnZero() public {
        vm.prank(alice);
        vm.expectRevert(Settlement.ZeroAmount.selector);
        s.requestWithdrawal(NATIVE, 0);
    }

    function test_withdraw_newRequestRestartsDelay() public {
        _deposit(alice, 5 ether);
        vm.prank(alice);
        s.requestWithdrawal(NATIVE, 1 ether);
        vm.warp(block.timestamp + DELAY - 10);
        vm.prank(alice);
        s.requestWithdrawal(NATIVE, 3 ether);
        vm.warp(block.timestamp + 10);
        vm.prank(alice);
        vm.expectRevert();
        s.executeWithdrawal(NATIVE);
        vm.warp(block.timestamp + DELAY);
        vm.prank(alice);
        assertEq(s.executeWithdrawal(NATIVE), 3 ether);
    }

    function test_withdraw_cancel() public {
        _deposit(alice, 5 ether);
        vm.prank(alice);
        s.requestWithdrawal(NATIVE, 1 ether);
        vm.prank(alice);
        s.cancelWithdrawal(NATIVE);
        vm.warp(block.timestamp + DELAY);
        vm.prank(alice);
        vm.expectRevert(Settlement.NoPendingWithdrawal.selector);
        s.executeWithdrawal(NATIVE);
    }

    function test_withdraw_cancelRevertsWithoutRequest() public {
        vm.prank(alice);
        vm.expectRevert(Settlement.NoPendingWithdrawal.selector);
        s.cancelWithdrawal(NATIVE);
    }

    function test_withdraw_pausedBlocksExecuteNotRequest() public {
        _deposit(alice, 5 ether);
        vm.prank(owner);
        s.pause();
        vm.prank(alice);
        s.requestWithdrawal(NATIVE, 1 ether);
        vm.warp(block.timestamp + DELAY);
        vm.prank(alice);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        s.executeWithdrawal(NATIVE);
    }

    // ---------------------------------------------------------------- claim

    function test_claim_paysRecipient() public {
        _deposit(alice, 1 ether);
        _settle(_simple(bytes32("c"), alice, 1 ether));
        uint256 before = carol.balance;
        vm.prank(carol);
        assertEq(s.claim(NATIVE), 0.975 ether);
        assertEq(carol.balance, before + 0.975 ether);
        assertEq(s.earningsOf(NATIVE, carol), 0);
        vm.prank(feeTo);
        assertEq(s.claim(NATIVE), 0.025 ether);
        assertEq(address(s).balance, 0);
    }

    function test_claim_revertsWithNothing() public {
        vm.prank(carol);
        vm.expectRevert(Settlement.NothingToClaim.selector);
        s.claim(NATIVE);
    }

    function test_claim_revertsWhenPaused() public {
        _deposit(alice, 1 ether);
        _settle(_simple(bytes32("c"), alice, 1 ether));
        vm.prank(owner);
        s.pause();
        vm.prank(carol);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        s.claim(NATIVE);
    }

    // ---------------------------------------------------------- reentrancy

    function test_reentrancy_claimCannotReenter() public {
        Reentrant r = new Reentrant(s);
        _deposit(alice, 1 ether);
        vm.prank(operator);
        s.settleBatch(_batch(bytes32("re"), _a(alice), _u(1 ether), _a(address(r)), _u(0.975 ether)));
        vm.expectRevert(ReentrancyGuard.ReentrancyGuardReentrantCall.selector);
        r.claim(true);
        assertEq(s.earningsOf(NATIVE, address(r)), 0.975 ether, "nothing paid");
    }

    function test_reentrancy_withdrawCannotReenter() public {
        Reentrant r = new Reentrant(s);
        vm.deal(address(this), 1 ether);
        r.deposit{value: 1 ether}();
        r.request(1 ether);
        vm.warp(block.timestamp + DELAY);
        vm.expectRevert(ReentrancyGuard.ReentrancyGuardReentrantCall.selector);
        r.execute();
        assertEq(s.escrowOf(NATIVE, address(r)), 1 ether);
    }

    // ---------------------------------------------------------------- ERC-20

    function test_token_depositSettleClaimWithdraw() public {
        MockERC20 t = new MockERC20();
        vm.prank(owner);
        s.setTokenAllowed(address(t), true);
        t.mint(alice, 100);
        vm.startPrank(alice);
        t.approve(address(s), 100);
        s.depositToken(address(t), 100);
        vm.stopPrank();
        assertEq(s.escrowOf(address(t), alice), 100);

        Settlement.Batch memory b = _batch(bytes32("tok"), _a(alice), _u(80), _a(carol), _u(78));
        b.token = address(t);
        vm.prank(operator);
        s.settleBatch(b);
        assertEq(s.earningsOf(address(t), carol), 78);
        assertEq(s.earningsOf(address(t), feeTo), 2);
        assertEq(s.escrowOf(NATIVE, alice), 0, "native untouched");

        vm.prank(carol);
        s.claim(address(t));
        assertEq(t.balanceOf(carol), 78);

        vm.prank(alice);
        s.requestWithdrawal(address(t), 20);
        vm.warp(block.timestamp + DELAY);
        vm.prank(alice);
        s.executeWithdrawal(address(t));
        assertEq(t.balanceOf(alice), 20);
        assertEq(t.balanceOf(address(s)), 2);
    }

    function test_token_nativeBalanceCannotPayTokenBatch() public {
        MockERC20 t = new MockERC20();
        _deposit(alice, 1 ether);
        Settlement.Batch memory b = _simple(bytes32("tok"), alice, 100);
        b.token = address(t);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InsufficientEscrow.selector, alice, 0, 100));
        s.settleBatch(b);
    }

    function test_token_depositRevertsWhenNotAllowed() public {
        MockERC20 t = new MockERC20();
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Settlement.TokenNotAllowed.selector, address(t)));
        s.depositToken(address(t), 1);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Settlement.TokenNotAllowed.selector, address(0)));
        s.depositToken(address(0), 1);
    }

    function test_token_depositRevertsOnZero() public {
        MockERC20 t = new MockERC20();
        vm.prank(owner);
        s.setTokenAllowed(address(t), true);
        vm.prank(alice);
        vm.expectRevert(Settlement.ZeroAmount.selector);
        s.depositToken(address(t), 0);
    }

    function test_token_feeOnTransferCreditsReceived() public {
        FeeOnTransferERC20 t = new FeeOnTransferERC20();
        vm.prank(owner);
        s.setTokenAllowed(address(t), true);
        t.mint(alice, 1000);
        vm.startPrank(alice);
        t.approve(address(s), 1000);
        s.depositToken(address(t), 1000);
        vm.stopPrank();
        assertEq(s.escrowOf(address(t), alice), 990);
        assertEq(t.balanceOf(address(s)), 990);
    }

    // ----------------------------------------------------------------- owner

    function test_owner_setters() public {
        address op2 = makeAddr("op2");
        vm.startPrank(owner);
        s.setOperator(op2, true);
        s.setProtocolFee(dave, 1000);
        s.setWithdrawalDelay(7 days);
        s.setTokenAllowed(address(0xBEEF), true);
        vm.stopPrank();
        assertTrue(s.isOperator(op2));
        assertEq(s.feeRecipient(), dave);
        assertEq(uint256(s.protocolFeeBps()), 1000);
        assertEq(uint256(s.withdrawalDelay()), 7 days);
        assertTrue(s.tokenAllowed(address(0xBEEF)));
        assertEq(s.protocolFeeFor(1 ether), 0.1 ether);
    }

    function test_owner_settersRevertForOthers() public {
        bytes memory err = abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, alice);
        vm.startPrank(alice);
        vm.expectRevert(err);
        s.setOperator(alice, true);
        vm.expectRevert(err);
        s.setProtocolFee(alice, 0);
        vm.expectRevert(err);
        s.setWithdrawalDelay(2 days);
        vm.expectRevert(err);
        s.setTokenAllowed(address(1), true);
        vm.expectRevert(err);
        s.pause();
        vm.expectRevert(err);
        s.unpause();
        vm.stopPrank();
    }

    function test_owner_settersRejectBadValues() public {
        vm.startPrank(owner);
        vm.expectRevert(Settlement.ZeroAddress.selector);
        s.setOperator(address(0), true);
        vm.expectRevert(abi.encodeWithSelector(Settlement.FeeTooHigh.selector, uint16(1001)));
        s.setProtocolFee(feeTo, 1001);
        vm.expectRevert(Settlement.ZeroAddress.selector);
        s.setProtocolFee(address(0), 10);
        vm.expectRevert(abi.encodeWithSelector(Settlement.DelayOutOfRange.selector, uint64(0)));
        s.setWithdrawalDelay(0);
        vm.expectRevert(abi.encodeWithSelector(Settlement.DelayOutOfRange.selector, uint64(31 days)));
        s.setWithdrawalDelay(31 days);
        vm.expectRevert(Settlement.ZeroAddress.selector);
        s.setTokenAllowed(address(0), true);
        vm.stopPrank();
    }

    function test_owner_twoStepTransfer() public {
        vm.prank(owner);
        s.transferOwnership(alice);
        assertEq(s.owner(), owner, "pending until accepted");
        vm.prank(alice);
        s.acceptOwnership();
        assertEq(s.owner(), alice);
    }

    // ----------------------------------------------------------------- fuzz

    /// Any split of any deposit settles iff credits == total - fee, and conserves value.
    function testFuzz_settle_conservesValue(uint96 depA, uint96 depB, uint96 debitA, uint96 debitB, uint16 feeBps, uint96 cut)
        public
    {
        feeBps = uint16(bound(feeBps, 0, 1000));
        vm.prank(owner);
        s.setProtocolFee(feeTo, feeBps);
        depA = uint96(bound(depA, 1, 50 ether));
        depB = uint96(bound(depB, 1, 50 ether));
        debitA = uint96(bound(debitA, 0, depA));
        debitB = uint96(bound(debitB, 0, depB));
        _deposit(alice, depA);
        _deposit(bob, depB);
        uint256 total = uint256(debitA) + debitB;
        uint256 fee = total * feeBps / 10_000;
        uint256 c1 = bound(cut, 0, total - fee);
        Settlement.Batch memory b =
            _batch(bytes32("f"), _a(alice, bob), _u(debitA, debitB), _a(carol, dave), _u(c1, total - fee - c1));
        vm.prank(operator);
        s.settleBatch(b);
        assertEq(s.escrowOf(NATIVE, alice) + s.escrowOf(NATIVE, bob), uint256(depA) + depB - total);
        assertEq(s.earningsOf(NATIVE, carol) + s.earningsOf(NATIVE, dave) + s.earningsOf(NATIVE, feeTo), total);
        assertEq(s.earningsOf(NATIVE, feeTo), fee);
        assertEq(address(s).balance, uint256(depA) + depB);
    }

    /// Any credit total other than total - fee reverts.
    function testFuzz_settle_rejectsWrongCredits(uint96 debit, uint96 credit) public {
        debit = uint96(bound(debit, 1, 50 ether));
        _deposit(alice, debit);
        uint256 fee = s.protocolFeeFor(debit);
        vm.assume(credit != debit - fee);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.CreditsMismatch.selector, uint256(debit), fee, uint256(credit)));
        s.settleBatch(_batch(bytes32("w"), _a(alice), _u(debit), _a(carol), _u(credit)));
    }

    /// Any debit above the escrow reverts and leaves balances untouched.
    function testFuzz_settle_rejectsOverdraft(uint96 dep, uint96 debit) public {
        dep = uint96(bound(dep, 1, 50 ether));
        debit = uint96(bound(debit, uint256(dep) + 1, type(uint96).max));
        _deposit(alice, dep);
        Settlement.Batch memory b = _simple(bytes32("o"), alice, debit);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InsufficientEscrow.selector, alice, uint256(dep), uint256(debit)));
        s.settleBatch(b);
        assertEq(s.escrowOf(NATIVE, alice), dep);
    }

    /// A withdrawal pays min(requested, escrow left) and only after the delay.
    function testFuzz_withdraw_cappedByDebits(uint96 dep, uint96 req, uint96 debit, uint32 wait) public {
        dep = uint96(bound(dep, 1, 50 ether));
        req = uint96(bound(req, 1, dep));
        debit = uint96(bound(debit, 0, dep));
        wait = uint32(bound(wait, 0, 2 * DELAY));
        _deposit(alice, dep);
        vm.prank(alice);
        s.requestWithdrawal(NATIVE, req);
        if (debit > 0) {
            _settle(_simple(bytes32("d"), alice, debit));
        }
        vm.warp(block.timestamp + wait);
        uint256 left = uint256(dep) - debit;
        uint256 expect = req < left ? req : left;
        vm.prank(alice);
        if (wait < DELAY) {
            vm.expectRevert();
            s.executeWithdrawal(NATIVE);
        } else if (expect == 0) {
            vm.expectRevert(Settlement.ZeroAmount.selector);
            s.executeWithdrawal(NATIVE);
        } else {
            assertEq(s.executeWithdrawal(NATIVE), expect);
            assertEq(s.escrowOf(NATIVE, alice), left - expect);
        }
    }

    /// A batch id can never be settled twice, whatever the second batch contains.
    function testFuzz_settle_batchIdOnce(bytes32 id, bytes32 root2, uint64 amount) public {
        vm.assume(root2 != bytes32(0));
        amount = uint64(bound(amount, 1, 1 ether));
        _deposit(alice, 3 ether);
        _settle(_simple(id, alice, amount));
        Settlement.Batch memory b = _simple(id, alice, amount);
        b.receiptsRoot = root2;
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.BatchAlreadySettled.selector, id));
        s.settleBatch(b);
    }
}
