// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "./utils/Test.sol";
import {DatanetRegistry} from "../src/DatanetRegistry.sol";
import {AdapterRegistry} from "../src/AdapterRegistry.sol";

contract AdapterRegistryTest is Test {
    DatanetRegistry internal dn;
    AdapterRegistry internal reg;
    address internal owner = address(0xA0);
    address internal other = address(0xA1);
    bytes32 internal constant ID = keccak256("sql-lora");
    bytes32 internal constant HASH = keccak256("weights");
    bytes32 internal constant D1 = keccak256("d1");
    bytes32 internal constant D2 = keccak256("d2");

    event AdapterPriceUpdated(bytes32 indexed id, uint128 pricePerMInput, uint128 pricePerMOutput);
    event AdapterDeactivated(bytes32 indexed id);

    function setUp() public {
        dn = new DatanetRegistry();
        reg = new AdapterRegistry(dn);
        dn.createDatanet(D1, bytes32(0), new address[](0), new uint256[](0));
        dn.createDatanet(D2, bytes32(0), new address[](0), new uint256[](0));
    }

    function _split(uint16 o, uint16 c, uint16 p) internal pure returns (AdapterRegistry.FeeSplit memory) {
        return AdapterRegistry.FeeSplit(o, c, p);
    }

    function _two(uint16 w1, uint16 w2) internal pure returns (AdapterRegistry.DatanetWeight[] memory w) {
        w = new AdapterRegistry.DatanetWeight[](2);
        w[0] = AdapterRegistry.DatanetWeight(D1, w1);
        w[1] = AdapterRegistry.DatanetWeight(D2, w2);
    }

    function _register() internal {
        vm.prank(owner);
        reg.register(ID, HASH, 100e9, 300e9, _two(7000, 3000), _split(6000, 3000, 1000));
    }

    function test_register_storesAdapter() public {
        _register();
        AdapterRegistry.Adapter memory a = reg.getAdapter(ID);
        assertEq(a.owner, owner);
        assertTrue(a.active);
        assertEq(a.weightsHash, HASH);
        assertEq(uint256(a.pricePerMInput), 100e9);
        assertEq(uint256(a.pricePerMOutput), 300e9);
        assertEq(uint256(a.split.ownerBps), 6000);
        assertEq(uint256(a.split.contributorsBps), 3000);
        assertEq(uint256(a.split.operatorBps), 1000);
        AdapterRegistry.DatanetWeight[] memory w = reg.getTrainedOn(ID);
        assertEq(w.length, 2);
        assertEq(w[0].datanetId, D1);
        assertEq(uint256(w[1].weightBps), 3000);
        assertEq(reg.adapterCount(), 1);
        assertTrue(reg.isActive(ID));
    }

    function test_registerFor_makesTheNamedAddressTheOwner() public {
        vm.prank(other);
        reg.registerFor(owner, ID, HASH, 100e9, 300e9, _two(7000, 3000), _split(6000, 3000, 1000));
        AdapterRegistry.Adapter memory a = reg.getAdapter(ID);
        assertEq(a.owner, owner);
        assertEq(a.weightsHash, HASH);
        assertEq(reg.getTrainedOn(ID).length, 2);
        // The registrar keeps no right over it; the owner has them all.
        vm.prank(other);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.NotAdapterOwner.selector, ID, other));
        reg.updatePrice(ID, 1, 1);
        vm.prank(owner);
        reg.updatePrice(ID, 1, 1);
        // Same checks as `register`: a taken id, a zero owner.
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.AdapterExists.selector, ID));
        reg.registerFor(other, ID, HASH, 1, 1, _two(5000, 5000), _split(6000, 3000, 1000));
        vm.expectRevert(AdapterRegistry.ZeroOwner.selector);
        reg.registerFor(address(0), keccak256("x"), HASH, 1, 1, _two(5000, 5000), _split(6000, 3000, 1000));
    }

    function test_register_withoutDatanetsWhenContributorsGetNothing() public {
        vm.prank(owner);
        reg.register(ID, HASH, 1, 1, new AdapterRegistry.DatanetWeight[](0), _split(9000, 0, 1000));
        assertEq(reg.getTrainedOn(ID).length, 0);
    }

    function test_register_reverts() public {
        AdapterRegistry.DatanetWeight[] memory w = _two(7000, 3000);
        AdapterRegistry.FeeSplit memory sp = _split(6000, 3000, 1000);
        vm.expectRevert(AdapterRegistry.ZeroId.selector);
        reg.register(bytes32(0), HASH, 1, 1, w, sp);
        vm.expectRevert(AdapterRegistry.ZeroWeightsHash.selector);
        reg.register(ID, bytes32(0), 1, 1, w, sp);
        vm.expectRevert(AdapterRegistry.BadFeeSplit.selector);
        reg.register(ID, HASH, 1, 1, w, _split(6000, 3000, 999));
        vm.expectRevert(AdapterRegistry.BadDatanetWeights.selector);
        reg.register(ID, HASH, 1, 1, _two(7000, 2999), sp);
        vm.expectRevert(AdapterRegistry.BadDatanetWeights.selector);
        reg.register(ID, HASH, 1, 1, _two(10000, 0), sp);
        vm.expectRevert(AdapterRegistry.BadDatanetWeights.selector);
        reg.register(ID, HASH, 1, 1, new AdapterRegistry.DatanetWeight[](0), sp);
        AdapterRegistry.DatanetWeight[] memory dup = _two(5000, 5000);
        dup[1].datanetId = D1;
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.DuplicateDatanet.selector, D1));
        reg.register(ID, HASH, 1, 1, dup, sp);
        AdapterRegistry.DatanetWeight[] memory unknown = _two(5000, 5000);
        unknown[1].datanetId = keccak256("nope");
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownDatanet.selector, keccak256("nope")));
        reg.register(ID, HASH, 1, 1, unknown, sp);
        vm.expectRevert(AdapterRegistry.TooManyDatanets.selector);
        reg.register(ID, HASH, 1, 1, new AdapterRegistry.DatanetWeight[](17), sp);
        _register();
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.AdapterExists.selector, ID));
        reg.register(ID, HASH, 1, 1, w, sp);
    }

    function test_updatePrice() public {
        _register();
        vm.expectEmit(address(reg));
        emit AdapterPriceUpdated(ID, 5, 7);
        vm.prank(owner);
        reg.updatePrice(ID, 5, 7);
        AdapterRegistry.Adapter memory a = reg.getAdapter(ID);
        assertEq(uint256(a.pricePerMInput), 5);
        assertEq(uint256(a.pricePerMOutput), 7);
    }

    function test_updatePrice_revertsForOthersUnknownInactive() public {
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownAdapter.selector, ID));
        reg.updatePrice(ID, 1, 1);
        _register();
        vm.prank(other);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.NotAdapterOwner.selector, ID, other));
        reg.updatePrice(ID, 1, 1);
        vm.prank(owner);
        reg.deactivate(ID);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.AdapterInactive.selector, ID));
        reg.updatePrice(ID, 1, 1);
    }

    function test_deactivate() public {
        _register();
        vm.prank(other);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.NotAdapterOwner.selector, ID, other));
        reg.deactivate(ID);
        vm.expectEmit(address(reg));
        emit AdapterDeactivated(ID);
        vm.prank(owner);
        reg.deactivate(ID);
        assertFalse(reg.isActive(ID));
        assertFalse(reg.getAdapter(ID).active);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.AdapterInactive.selector, ID));
        reg.deactivate(ID);
    }

    function test_views_revertOnUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownAdapter.selector, ID));
        reg.getAdapter(ID);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownAdapter.selector, ID));
        reg.getTrainedOn(ID);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownAdapter.selector, ID));
        reg.quote(ID, 1, 1);
    }

    function test_quote_roundsUp() public {
        _register(); // 100 gwei per M input, 300 gwei per M output
        assertEq(reg.quote(ID, 1_000_000, 0), 100e9);
        assertEq(reg.quote(ID, 0, 1_000_000), 300e9);
        assertEq(reg.quote(ID, 1, 0), 100_000); // 100e9 / 1e6
        vm.prank(owner);
        reg.updatePrice(ID, 1, 1);
        assertEq(reg.quote(ID, 1, 0), 1, "rounded up");
        assertEq(reg.quote(ID, 0, 0), 0);
    }

    function testFuzz_quote_matchesFormula(uint128 pin, uint128 pout, uint32 tin, uint32 tout) public {
        vm.prank(owner);
        reg.register(ID, HASH, pin, pout, _two(5000, 5000), _split(5000, 4000, 1000));
        uint256 num = uint256(tin) * pin + uint256(tout) * pout;
        uint256 q = reg.quote(ID, tin, tout);
        assertGe(q * 1_000_000, num, "covers cost");
        assertLe(q * 1_000_000, num + 999_999, "at most one wei over");
    }
}
