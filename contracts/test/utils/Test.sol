// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// The subset of forge's cheatcodes our tests use (forge-std is not reachable from these machines).
/// The cheatcodes themselves are built into forge at the address below.
interface Vm {
    struct Gas {
        uint64 gasLimit;
        uint64 gasTotalUsed;
        uint64 gasMemoryUsed;
        int64 gasRefunded;
        uint64 gasRemaining;
    }

    function prank(address) external;
    function startPrank(address) external;
    function stopPrank() external;
    function deal(address who, uint256 amount) external;
    function warp(uint256) external;
    function assume(bool) external pure;
    function addr(uint256 privateKey) external pure returns (address);
    function label(address, string calldata) external;
    function cool(address) external;
    function expectRevert() external;
    function expectRevert(bytes4) external;
    function expectRevert(bytes calldata) external;
    function expectEmit() external;
    function expectEmit(address emitter) external;
    function pauseGasMetering() external;
    function resumeGasMetering() external;
    function lastCallGas() external view returns (Gas memory);
    function toString(uint256) external pure returns (string memory);
    function toString(bytes32) external pure returns (string memory);

    function assertEq(uint256, uint256, string calldata) external pure;
    function assertEq(address, address, string calldata) external pure;
    function assertEq(bytes32, bytes32, string calldata) external pure;
    function assertEq(bool, bool, string calldata) external pure;
    function assertTrue(bool, string calldata) external pure;
    function assertFalse(bool, string calldata) external pure;
    function assertLe(uint256, uint256, string calldata) external pure;
    function assertGe(uint256, uint256, string calldata) external pure;
}

/// forge prints calls to this address (hardhat's console.log convention).
library console {
    address constant CONSOLE = 0x000000000000000000636F6e736F6c652e6c6f67;

    function _send(bytes memory payload) private view {
        (bool ok,) = CONSOLE.staticcall(payload);
        ok;
    }

    function log(string memory s) internal view {
        _send(abi.encodeWithSignature("log(string)", s));
    }

    function log(string memory s, uint256 v) internal view {
        _send(abi.encodeWithSignature("log(string,uint256)", s, v));
    }

    function log(string memory s, bytes32 v) internal view {
        _send(abi.encodeWithSignature("log(string,bytes32)", s, v));
    }
}

/// Cheatcodes and input helpers, for tests and for invariant handlers.
abstract contract CommonBase {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    // ---- helpers
    function makeAddr(string memory name) internal returns (address a) {
        a = vm.addr(uint256(keccak256(bytes(name))));
        vm.label(a, name);
    }

    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        require(lo <= hi, "bound: lo > hi");
        if (x >= lo && x <= hi) return x;
        uint256 size = hi - lo;
        if (size == type(uint256).max) return x;
        return lo + (x % (size + 1));
    }
}

/// Minimal test base: cheatcodes, assertions, bounded fuzz inputs, invariant targets.
abstract contract Test is CommonBase {
    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    address[] private _targetContracts;
    FuzzSelector[] private _targetSelectors;
    address[] private _excludeSenders;

    function IS_TEST() external pure returns (bool) {
        return true;
    }

    // ---- invariant configuration read by forge
    function targetContracts() external view returns (address[] memory) {
        return _targetContracts;
    }

    function targetSelectors() external view returns (FuzzSelector[] memory) {
        return _targetSelectors;
    }

    function excludeSenders() external view returns (address[] memory) {
        return _excludeSenders;
    }

    function targetContract(address a) internal {
        _targetContracts.push(a);
    }

    function targetSelector(FuzzSelector memory s) internal {
        _targetSelectors.push(s);
    }

    function excludeSender(address a) internal {
        _excludeSenders.push(a);
    }

    // ---- assertions (delegate to forge's assertion cheatcodes for readable failures)
    function assertEq(uint256 a, uint256 b) internal pure {
        vm.assertEq(a, b, "");
    }

    function assertEq(uint256 a, uint256 b, string memory m) internal pure {
        vm.assertEq(a, b, m);
    }

    function assertEq(address a, address b) internal pure {
        vm.assertEq(a, b, "");
    }

    function assertEq(address a, address b, string memory m) internal pure {
        vm.assertEq(a, b, m);
    }

    function assertEq(bytes32 a, bytes32 b) internal pure {
        vm.assertEq(a, b, "");
    }

    function assertEq(bytes32 a, bytes32 b, string memory m) internal pure {
        vm.assertEq(a, b, m);
    }

    function assertEq(bool a, bool b) internal pure {
        vm.assertEq(a, b, "");
    }

    function assertTrue(bool c) internal pure {
        vm.assertTrue(c, "");
    }

    function assertTrue(bool c, string memory m) internal pure {
        vm.assertTrue(c, m);
    }

    function assertFalse(bool c) internal pure {
        vm.assertFalse(c, "");
    }

    function assertFalse(bool c, string memory m) internal pure {
        vm.assertFalse(c, m);
    }

    function assertLe(uint256 a, uint256 b, string memory m) internal pure {
        vm.assertLe(a, b, m);
    }

    function assertGe(uint256 a, uint256 b, string memory m) internal pure {
        vm.assertGe(a, b, m);
    }
}
