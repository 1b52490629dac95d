// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {DatanetRegistry} from "./DatanetRegistry.sol";

/// @title AdapterRegistry
/// @notice The on-chain catalogue of LoRA adapters: who owns each one, the content hash of its
///         weights, its price, the datanets it was trained on and how each call's revenue is split.
/// @dev Invariants: an adapter's owner, weights hash, datanets and fee split never change after
///      registration; datanet weights sum to 10_000 bps (or there are no datanets and the
///      contributors' share is 0); the fee split sums to 10_000 bps; deactivation is final.
///
///      Revenue rule the server applies off-chain for one call (see contracts/README.md):
///        cost  = ceil((inputTokens * pricePerMInput + outputTokens * pricePerMOutput) / 1e6)   (= `quote`)
///        fee   = Settlement's protocol fee, taken by Settlement from the batch total
///        rest  = split between owner / contributors / operator by `FeeSplit` bps,
///                the contributors' part between datanets by weight, then contributors by shares.
contract AdapterRegistry {
    uint16 internal constant BPS = 10_000;
    uint256 public constant MAX_DATANETS = 16;

    /// @notice How the non-protocol part of a call's cost is divided. Sums to 10_000.
    struct FeeSplit {
        uint16 ownerBps;
        uint16 contributorsBps;
        uint16 operatorBps;
    }

    struct DatanetWeight {
        bytes32 datanetId;
        uint16 weightBps;
    }

    struct Adapter {
        address owner;
        bool active;
        FeeSplit split;
        bytes32 weightsHash;
        /// @notice Price in wei of the settlement token per one million input (prompt) tokens.
        uint128 pricePerMInput;
        /// @notice Price in wei per one million output (generated) tokens.
        uint128 pricePerMOutput;
        uint64 registeredAt;
    }

    DatanetRegistry public immutable datanets;

    mapping(bytes32 id => Adapter) private _adapters;
    mapping(bytes32 id => DatanetWeight[]) private _trainedOn;
    uint256 public adapterCount;

    event AdapterRegistered(
        bytes32 indexed id,
        address indexed owner,
        bytes32 weightsHash,
        uint128 pricePerMInput,
        uint128 pricePerMOutput,
        FeeSplit split,
        DatanetWeight[] trainedOn
    );
    event AdapterPriceUpdated(bytes32 indexed id, uint128 pricePerMInput, uint128 pricePerMOutput);
    event AdapterDeactivated(bytes32 indexed id);

    error ZeroId();
    error ZeroWeightsHash();
    error ZeroOwner();
    error AdapterExists(bytes32 id);
    error UnknownAdapter(bytes32 id);
    error NotAdapterOwner(bytes32 id, address caller);
    error AdapterInactive(bytes32 id);
    error BadFeeSplit();
    error BadDatanetWeights();
    error UnknownDatanet(bytes32 datanetId);
    error DuplicateDatanet(bytes32 datanetId);
    error TooManyDatanets();

    constructor(DatanetRegistry datanets_) {
        datanets = datanets_;
    }

    modifier onlyAdapterOwner(bytes32 id) {
        Adapter storage a = _adapters[id];
        if (a.owner == address(0)) revert UnknownAdapter(id);
        if (a.owner != msg.sender) revert NotAdapterOwner(id, msg.sender);
        if (!a.active) revert AdapterInactive(id);
        _;
    }

    /// @notice Register adapter `id`, owned by the caller.
    /// @param trainedOn datanets with weights summing to 10_000 bps; empty only if
    ///        `split.contributorsBps == 0`.
    function register(
        bytes32 id,
        bytes32 weightsHash,
        uint128 pricePerMInput,
        uint128 pricePerMOutput,
        DatanetWeight[] calldata trainedOn,
        FeeSplit calldata split
    ) external {
        _register(msg.sender, id, weightsHash, pricePerMInput, pricePerMOutput, trainedOn, split);
    }

    /// @notice Register adapter `id` on behalf of `owner` (e.g. the server that trained it
    ///         registers it for the owner its fine-tuning job named). The owner gets everything the
    ///         caller of `register` would: the owner's share of each call, `updatePrice`,
    ///         `deactivate`; the caller keeps no right over the adapter.
    function registerFor(
        address owner,
        bytes32 id,
        bytes32 weightsHash,
        uint128 pricePerMInput,
        uint128 pricePerMOutput,
        DatanetWeight[] calldata trainedOn,
        FeeSplit calldata split
    ) external {
        if (owner == address(0)) revert ZeroOwner();
        _register(owner, id, weightsHash, pricePerMInput, pricePerMOutput, trainedOn, split);
    }

    function _register(
        address owner,
        bytes32 id,
        bytes32 weightsHash,
        uint128 pricePerMInput,
        uint128 pricePerMOutput,
        DatanetWeight[] calldata trainedOn,
        FeeSplit calldata split
    ) private {
        if (id == bytes32(0)) revert ZeroId();
        if (weightsHash == bytes32(0)) revert ZeroWeightsHash();
        if (_adapters[id].owner != address(0)) revert AdapterExists(id);
        if (uint256(split.ownerBps) + split.contributorsBps + split.operatorBps != BPS) revert BadFeeSplit();
        _checkDatanets(trainedOn, split.contributorsBps);

        _adapters[id] = Adapter({
            owner: owner,
            active: true,
            split: split,
            weightsHash: weightsHash,
            pricePerMInput: pricePerMInput,
            pricePerMOutput: pricePerMOutput,
            registeredAt: uint64(block.timestamp)
        });
        DatanetWeight[] storage stored = _trainedOn[id];
        for (uint256 i = 0; i < trainedOn.length; ++i) {
            stored.push(trainedOn[i]);
        }
        ++adapterCount;
        emit AdapterRegistered(id, owner, weightsHash, pricePerMInput, pricePerMOutput, split, trainedOn);
    }

    /// @notice Change the price of an active adapter (owner only). Applies to calls metered afterwards.
    function updatePrice(bytes32 id, uint128 pricePerMInput, uint128 pricePerMOutput) external onlyAdapterOwner(id) {
        Adapter storage a = _adapters[id];
        a.pricePerMInput = pricePerMInput;
        a.pricePerMOutput = pricePerMOutput;
        emit AdapterPriceUpdated(id, pricePerMInput, pricePerMOutput);
    }

    /// @notice Permanently stop serving adapter `id` (owner only). The id stays taken.
    function deactivate(bytes32 id) external onlyAdapterOwner(id) {
        _adapters[id].active = false;
        emit AdapterDeactivated(id);
    }

    function _checkDatanets(DatanetWeight[] calldata trainedOn, uint16 contributorsBps) private view {
        if (trainedOn.length > MAX_DATANETS) revert TooManyDatanets();
        if (trainedOn.length == 0) {
            if (contributorsBps != 0) revert BadDatanetWeights();
            return;
        }
        uint256 sum;
        for (uint256 i = 0; i < trainedOn.length; ++i) {
            bytes32 d = trainedOn[i].datanetId;
            if (!datanets.exists(d)) revert UnknownDatanet(d);
            if (trainedOn[i].weightBps == 0) revert BadDatanetWeights();
            for (uint256 j = 0; j < i; ++j) {
                if (trainedOn[j].datanetId == d) revert DuplicateDatanet(d);
            }
            sum += trainedOn[i].weightBps;
        }
        if (sum != BPS) revert BadDatanetWeights();
    }

    function getAdapter(bytes32 id) external view returns (Adapter memory a) {
        a = _adapters[id];
        if (a.owner == address(0)) revert UnknownAdapter(id);
    }

    function getTrainedOn(bytes32 id) external view returns (DatanetWeight[] memory) {
        if (_adapters[id].owner == address(0)) revert UnknownAdapter(id);
        return _trainedOn[id];
    }

    function isActive(bytes32 id) external view returns (bool) {
        return _adapters[id].active;
    }

    /// @notice Cost in wei of one call, rounded up: what the server meters per receipt.
    function quote(bytes32 id, uint256 inputTokens, uint256 outputTokens) external view returns (uint256) {
        Adapter storage a = _adapters[id];
        if (a.owner == address(0)) revert UnknownAdapter(id);
        uint256 num = inputTokens * a.pricePerMInput + outputTokens * a.pricePerMOutput;
        return (num + 999_999) / 1_000_000;
    }
}
