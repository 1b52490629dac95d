// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "./utils/Test.sol";
import {DatanetRegistry} from "../src/DatanetRegistry.sol";

contract DatanetRegistryTest is Test {
    DatanetRegistry internal reg;
    address internal curator = address(0xC0);
    address internal c1 = address(0xC1);
    address internal c2 = address(0xC2);
    bytes32 internal constant ID = keccak256("medical-qa");
    bytes32 internal constant ROOT = keccak256("records");

    event DatanetCreated(bytes32 indexed id, address indexed curator, bytes32 recordsRoot);
    event ContributorAdded(bytes32 indexed id, address indexed contributor, uint256 shares);
    event RecordsRootUpdated(bytes32 indexed id, bytes32 oldRoot, bytes32 newRoot);

    function setUp() public {
        reg = new DatanetRegistry();
    }

    function _create() internal {
        address[] memory who = new address[](2);
        who[0] = c1;
        who[1] = c2;
        uint256[] memory sh = new uint256[](2);
        sh[0] = 3;
        sh[1] = 1;
        vm.prank(curator);
        reg.createDatanet(ID, ROOT, who, sh);
    }

    function test_create_storesDatanetAndContributors() public {
        vm.expectEmit(address(reg));
        emit DatanetCreated(ID, curator, ROOT);
        vm.expectEmit(address(reg));
        emit ContributorAdded(ID, c1, 3);
        _create();
        DatanetRegistry.Datanet memory d = reg.getDatanet(ID);
        assertEq(d.curator, curator);
        assertEq(d.recordsRoot, ROOT);
        assertEq(d.totalShares, 4);
        assertTrue(reg.exists(ID));
        (address[] memory who, uint256[] memory sh) = reg.getContributors(ID);
        assertEq(who.length, 2);
        assertEq(who[1], c2);
        assertEq(sh[0], 3);
        assertEq(reg.sharesOf(ID, c2), 1);
        assertEq(reg.contributorCount(ID), 2);
    }

    function test_create_revertsOnDuplicateId() public {
        _create();
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.DatanetExists.selector, ID));
        reg.createDatanet(ID, ROOT, new address[](0), new uint256[](0));
    }

    function test_create_revertsOnZeroId() public {
        vm.expectRevert(DatanetRegistry.ZeroId.selector);
        reg.createDatanet(bytes32(0), ROOT, new address[](0), new uint256[](0));
    }

    function test_create_revertsOnLengthMismatch() public {
        vm.expectRevert(DatanetRegistry.LengthMismatch.selector);
        reg.createDatanet(ID, ROOT, new address[](1), new uint256[](0));
    }

    function test_create_revertsOnDuplicateContributor() public {
        address[] memory who = new address[](2);
        who[0] = c1;
        who[1] = c1;
        uint256[] memory sh = new uint256[](2);
        sh[0] = 1;
        sh[1] = 1;
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.DuplicateContributor.selector, ID, c1));
        reg.createDatanet(ID, ROOT, who, sh);
    }

    function test_addContributor_byCurator() public {
        _create();
        address c3 = address(0xC3);
        vm.expectEmit(address(reg));
        emit ContributorAdded(ID, c3, 6);
        vm.prank(curator);
        reg.addContributor(ID, c3, 6);
        assertEq(reg.getDatanet(ID).totalShares, 10);
        assertEq(reg.sharesOf(ID, c3), 6);
    }

    function test_addContributor_revertsForNonCurator() public {
        _create();
        vm.prank(c1);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotCurator.selector, ID, c1));
        reg.addContributor(ID, address(0xC3), 1);
    }

    function test_addContributor_revertsOnUnknownDatanet() public {
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.UnknownDatanet.selector, ID));
        reg.addContributor(ID, c1, 1);
    }

    function test_addContributor_revertsOnBadInput() public {
        _create();
        vm.startPrank(curator);
        vm.expectRevert(DatanetRegistry.ZeroAddress.selector);
        reg.addContributor(ID, address(0), 1);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.ZeroShares.selector, address(0xC3)));
        reg.addContributor(ID, address(0xC3), 0);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.DuplicateContributor.selector, ID, c2));
        reg.addContributor(ID, c2, 1);
        vm.stopPrank();
    }

    function test_addContributor_revertsPastMax() public {
        vm.startPrank(curator);
        reg.createDatanet(ID, ROOT, new address[](0), new uint256[](0));
        uint256 max = reg.MAX_CONTRIBUTORS();
        for (uint256 i = 1; i <= max; ++i) {
            reg.addContributor(ID, address(uint160(i)), 1);
        }
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.TooManyContributors.selector, ID));
        reg.addContributor(ID, address(uint160(max + 1)), 1);
        vm.stopPrank();
    }

    function test_updateRecordsRoot() public {
        _create();
        bytes32 newRoot = keccak256("more records");
        vm.expectEmit(address(reg));
        emit RecordsRootUpdated(ID, ROOT, newRoot);
        vm.prank(curator);
        reg.updateRecordsRoot(ID, newRoot);
        assertEq(reg.getDatanet(ID).recordsRoot, newRoot);
        vm.prank(c1);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotCurator.selector, ID, c1));
        reg.updateRecordsRoot(ID, ROOT);
    }

    function test_views_revertOnUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.UnknownDatanet.selector, ID));
        reg.getDatanet(ID);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.UnknownDatanet.selector, ID));
        reg.getContributors(ID);
        assertFalse(reg.exists(ID));
    }

    function testFuzz_totalSharesIsSum(uint64[8] memory shares) public {
        vm.prank(curator);
        reg.createDatanet(ID, ROOT, new address[](0), new uint256[](0));
        uint256 sum;
        for (uint256 i = 0; i < shares.length; ++i) {
            uint256 sh = bound(shares[i], 1, type(uint64).max);
            vm.prank(curator);
            reg.addContributor(ID, address(uint160(0x1000 + i)), sh);
            sum += sh;
        }
        assertEq(reg.getDatanet(ID).totalShares, sum);
    }
}
