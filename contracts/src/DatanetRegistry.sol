// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title DatanetRegistry
/// @notice A datanet is a curated data set: a Merkle root over its records and the contributors
///         who own it, each with a number of shares. Adapters name the datanets they were trained on
///         (see AdapterRegistry); the server pays contributors pro rata to their shares off-chain and
///         settles the resulting credits through Settlement.
/// @dev Invariants: a datanet's curator never changes; `totalShares` is the sum of all contributor
///      shares; a contributor appears at most once; shares are never zero.
contract DatanetRegistry {
    struct Datanet {
        address curator;
        bytes32 recordsRoot;
        uint256 totalShares;
        uint64 createdAt;
    }

    uint256 public constant MAX_CONTRIBUTORS = 1024;

    mapping(bytes32 id => Datanet) private _datanets;
    mapping(bytes32 id => address[]) private _contributors;
    mapping(bytes32 id => mapping(address contributor => uint256)) public sharesOf;

    event DatanetCreated(bytes32 indexed id, address indexed curator, bytes32 recordsRoot);
    event ContributorAdded(bytes32 indexed id, address indexed contributor, uint256 shares);
    event RecordsRootUpdated(bytes32 indexed id, bytes32 oldRoot, bytes32 newRoot);

    error DatanetExists(bytes32 id);
    error UnknownDatanet(bytes32 id);
    error NotCurator(bytes32 id, address caller);
    error ZeroId();
    error ZeroAddress();
    error ZeroShares(address contributor);
    error DuplicateContributor(bytes32 id, address contributor);
    error LengthMismatch();
    error TooManyContributors(bytes32 id);

    modifier onlyCurator(bytes32 id) {
        address curator = _datanets[id].curator;
        if (curator == address(0)) revert UnknownDatanet(id);
        if (curator != msg.sender) revert NotCurator(id, msg.sender);
        _;
    }

    /// @notice Create datanet `id` curated by the caller.
    function createDatanet(bytes32 id, bytes32 recordsRoot, address[] calldata contributors, uint256[] calldata shares)
        external
    {
        if (id == bytes32(0)) revert ZeroId();
        if (_datanets[id].curator != address(0)) revert DatanetExists(id);
        if (contributors.length != shares.length) revert LengthMismatch();
        _datanets[id] = Datanet({curator: msg.sender, recordsRoot: recordsRoot, totalShares: 0, createdAt: uint64(block.timestamp)});
        emit DatanetCreated(id, msg.sender, recordsRoot);
        for (uint256 i = 0; i < contributors.length; ++i) {
            _addContributor(id, contributors[i], shares[i]);
        }
    }

    /// @notice Add a contributor to datanet `id` (curator only).
    function addContributor(bytes32 id, address contributor, uint256 shares) external onlyCurator(id) {
        _addContributor(id, contributor, shares);
    }

    /// @notice Replace the records root after the curator added records (curator only).
    function updateRecordsRoot(bytes32 id, bytes32 newRoot) external onlyCurator(id) {
        bytes32 old = _datanets[id].recordsRoot;
        _datanets[id].recordsRoot = newRoot;
        emit RecordsRootUpdated(id, old, newRoot);
    }

    function _addContributor(bytes32 id, address contributor, uint256 shares) private {
        if (contributor == address(0)) revert ZeroAddress();
        if (shares == 0) revert ZeroShares(contributor);
        if (sharesOf[id][contributor] != 0) revert DuplicateContributor(id, contributor);
        if (_contributors[id].length >= MAX_CONTRIBUTORS) revert TooManyContributors(id);
        sharesOf[id][contributor] = shares;
        _contributors[id].push(contributor);
        _datanets[id].totalShares += shares;
        emit ContributorAdded(id, contributor, shares);
    }

    function exists(bytes32 id) public view returns (bool) {
        return _datanets[id].curator != address(0);
    }

    function getDatanet(bytes32 id) external view returns (Datanet memory d) {
        d = _datanets[id];
        if (d.curator == address(0)) revert UnknownDatanet(id);
    }

    /// @notice All contributors of `id` and their shares, in insertion order.
    function getContributors(bytes32 id) external view returns (address[] memory addrs, uint256[] memory shares) {
        if (!exists(id)) revert UnknownDatanet(id);
        addrs = _contributors[id];
        shares = new uint256[](addrs.length);
        for (uint256 i = 0; i < addrs.length; ++i) {
            shares[i] = sharesOf[id][addrs[i]];
        }
    }

    /// @notice Number of contributors of datanet `id`.
    function contributorCount(bytes32 id) external view returns (uint256) {
        return _contributors[id].length;
    }
}
