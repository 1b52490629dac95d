// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test, Vm, console} from "./utils/Test.sol";
import {Settlement} from "../src/Settlement.sol";

/// Gas per settled call (README "Gas"). Run: `forge test --mc SettlementGasTest -vv`.
///
/// A call is one receipt in the batch. What the contract does scales with the number of distinct
/// payers and recipients after the server aggregated the calls, so each row fixes those counts:
///  - typical: payers = min(calls, 3), recipients = min(calls, 5) (adapter owner, three datanet
///    contributors, operator), recipients already hold unclaimed earnings (steady state);
///  - worst:   payers = calls, recipients = calls, every recipient credited for the first time
///    (zero -> nonzero storage writes); nothing aggregates.
/// Storage is made cold before the measured call (vm.cool), as in a fresh transaction.
/// tx gas = 21000 + calldata gas (4/zero byte, 16/nonzero byte) + execution gas - refund (capped at 1/5).
contract SettlementGasTest is Test {
    uint256 internal constant COST = 1e12; // wei per call

    function _settlement() internal returns (Settlement s) {
        s = new Settlement(address(this), address(0xFEE), 250, 1 days);
        s.setOperator(address(this), true);
    }

    function _addrs(uint256 base, uint256 n) internal pure returns (address[] memory a) {
        a = new address[](n);
        for (uint256 i = 0; i < n; ++i) {
            a[i] = address(uint160(base + i));
        }
    }

    function _batch(Settlement s, bytes32 id, uint256 calls, address[] memory payers, address[] memory recipients)
        internal
        view
        returns (Settlement.Batch memory b)
    {
        uint256[] memory debits = new uint256[](payers.length);
        for (uint256 i = 0; i < calls; ++i) {
            debits[i % payers.length] += COST;
        }
        uint256 total = calls * COST;
        uint256 rest = total - s.protocolFeeFor(total);
        uint256[] memory credits = new uint256[](recipients.length);
        for (uint256 i = 0; i < recipients.length; ++i) {
            credits[i] = rest / recipients.length;
        }
        credits[0] += rest - (rest / recipients.length) * recipients.length;
        b = Settlement.Batch(id, keccak256(abi.encode(id)), uint64(calls), address(0), payers, debits, recipients, credits);
    }

    function _calldataGas(bytes memory data) internal pure returns (uint256 g) {
        for (uint256 i = 0; i < data.length; ++i) {
            g += data[i] == 0 ? 4 : 16;
        }
    }

    function _measure(string memory label, uint256 calls, uint256 nPayers, uint256 nRecipients, bool fresh)
        internal
        returns (uint256 perCall)
    {
        Settlement s = _settlement();
        address[] memory payers = _addrs(0x100000, nPayers);
        address[] memory recipients = _addrs(0x200000, nRecipients);
        for (uint256 i = 0; i < nPayers; ++i) {
            vm.deal(payers[i], 10 ether);
            vm.prank(payers[i]);
            s.deposit{value: 10 ether}();
        }
        if (!fresh) s.settleBatch(_batch(s, "warmup", calls, payers, recipients));
        Settlement.Batch memory b = _batch(s, "measured", calls, payers, recipients);
        bytes memory data = abi.encodeCall(Settlement.settleBatch, (b));
        vm.cool(address(s));
        s.settleBatch(b);
        Vm.Gas memory g = vm.lastCallGas();
        uint256 used = 21_000 + _calldataGas(data) + g.gasTotalUsed;
        uint256 refund = g.gasRefunded > 0 ? uint256(uint64(g.gasRefunded)) : 0;
        if (refund > used / 5) refund = used / 5;
        used -= refund;
        perCall = used / calls;
        _row(label, calls, nPayers, nRecipients, data.length, used);
        assertTrue(s.batchSettled("measured"));
    }

    function _row(string memory label, uint256 calls, uint256 p, uint256 r, uint256 bytes_, uint256 used)
        internal
        view
    {
        string memory a = string.concat("| ", label, " | ", vm.toString(calls), " | ", vm.toString(p), " | ");
        string memory b = string.concat(vm.toString(r), " | ", vm.toString(bytes_), " | ", vm.toString(used), " | ");
        console.log(string.concat(a, b, vm.toString(used / calls), " |"));
    }

    function _min(uint256 a, uint256 b) internal pure returns (uint256) {
        return a < b ? a : b;
    }

    function test_gas_typical() public {
        console.log("| scenario | calls | payers | recipients | calldata bytes | tx gas | gas per call |");
        uint256[4] memory sizes = [uint256(1), 10, 100, 1000];
        uint256 prev = type(uint256).max;
        for (uint256 k = 0; k < 4; ++k) {
            uint256 n = sizes[k];
            uint256 per = _measure("typical", n, _min(n, 3), _min(n, 5), false);
            assertLe(per, prev, "per-call gas falls with batch size");
            prev = per;
        }
    }

    function test_gas_worst() public {
        uint256[4] memory sizes = [uint256(1), 10, 100, 1000];
        for (uint256 k = 0; k < 4; ++k) {
            uint256 n = sizes[k];
            uint256 per = _measure("worst", n, n, n, true);
            if (n >= 100) assertLe(per, 35_000, "worst case stays bounded per call");
        }
    }
}
