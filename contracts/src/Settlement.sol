// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Ownable, Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {Address} from "@openzeppelin/contracts/utils/Address.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

/// @title Settlement
/// @notice Escrow for inference payments, settled in batches by registered operators.
///
///         Payers deposit the chain's native token (OPEN on OpenLedger's OP Stack chain) or an
///         allow-listed ERC-20. The server meters calls off-chain, groups them into a batch, and an
///         operator submits per-payer debits and per-recipient credits together with the Merkle
///         root of the batch's call receipts. The contract takes the protocol fee from the batch
///         total itself; recipients pull their earnings with `claim`.
///
/// @dev What always holds (tested as invariants in test/Settlement.invariant.t.sol):
///      - for every token, this contract's balance of it equals the sum of all escrow and all
///        earnings balances in that token (plus any tokens sent to it without a deposit);
///      - a batch id settles at most once; `batchRoot[id] != 0` iff batch `id` has settled;
///      - only addresses with `isOperator` can settle;
///      - in a settled batch: sum(debits) == sum(credits) + fee, fee == sum(debits) * protocolFeeBps / 10_000
///        (rounded down), and the fee is credited to `feeRecipient`.
///      Native token is keyed as token `address(0)` in every per-token mapping.
contract Settlement is Ownable2Step, Pausable, ReentrancyGuard {
    using SafeERC20 for IERC20;

    address public constant NATIVE = address(0);
    uint16 public constant BPS = 10_000;
    /// @notice Upper bound on the protocol fee: 10%.
    uint16 public constant MAX_PROTOCOL_FEE_BPS = 1_000;
    uint64 public constant MIN_WITHDRAWAL_DELAY = 1 minutes;
    uint64 public constant MAX_WITHDRAWAL_DELAY = 30 days;

    /// @notice One settlement batch. `debits[i]` is taken from `payers[i]`'s escrow, `credits[i]`
    ///         is added to `recipients[i]`'s earnings. Entries may repeat an address.
    struct Batch {
        bytes32 batchId;
        bytes32 receiptsRoot;
        uint64 callCount;
        address token;
        address[] payers;
        uint256[] debits;
        address[] recipients;
        uint256[] credits;
    }

    /// @notice One metered inference call: the leaf format of a batch's receipts tree
    ///         (see `receiptLeaf` and contracts/README.md).
    struct Receipt {
        bytes32 receiptId;
        bytes32 adapterId;
        address payer;
        address operator;
        uint64 inputTokens;
        uint64 outputTokens;
        uint256 cost;
        uint64 timestamp;
    }

    struct PendingWithdrawal {
        uint192 amount;
        uint64 unlockAt;
    }

    // One storage slot: read once per settlement.
    struct Config {
        address feeRecipient;
        uint16 protocolFeeBps;
        uint64 withdrawalDelay;
    }

    Config private _config;

    mapping(address token => mapping(address payer => uint256)) public escrowOf;
    mapping(address token => mapping(address recipient => uint256)) public earningsOf;
    mapping(address token => mapping(address payer => PendingWithdrawal)) public pendingWithdrawal;
    /// @notice Receipts root of each settled batch; zero for a batch that has not settled.
    mapping(bytes32 batchId => bytes32) public batchRoot;
    mapping(address => bool) public isOperator;
    mapping(address token => bool) public tokenAllowed;

    event Deposited(address indexed token, address indexed payer, address indexed from, uint256 amount);
    event WithdrawalRequested(address indexed token, address indexed payer, uint256 amount, uint64 unlockAt);
    event WithdrawalCancelled(address indexed token, address indexed payer);
    event Withdrawn(address indexed token, address indexed payer, uint256 amount);
    event Claimed(address indexed token, address indexed recipient, uint256 amount);
    event BatchSettled(
        bytes32 indexed batchId,
        bytes32 receiptsRoot,
        address indexed operator,
        address indexed token,
        uint256 totalDebits,
        uint256 protocolFee,
        uint64 callCount
    );
    event OperatorSet(address indexed operator, bool enabled);
    event ProtocolFeeSet(address indexed recipient, uint16 bps);
    event WithdrawalDelaySet(uint64 delay);
    event TokenAllowedSet(address indexed token, bool allowed);

    error NotOperator(address caller);
    error ZeroAddress();
    error ZeroAmount();
    error ZeroRoot();
    error EmptyBatch();
    error LengthMismatch();
    error BatchAlreadySettled(bytes32 batchId);
    error InsufficientEscrow(address payer, uint256 available, uint256 needed);
    error CreditsMismatch(uint256 totalDebits, uint256 protocolFee, uint256 totalCredits);
    error FeeTooHigh(uint16 bps);
    error DelayOutOfRange(uint64 delay);
    error TokenNotAllowed(address token);
    error NoPendingWithdrawal();
    error WithdrawalLocked(uint64 unlockAt);
    error NothingToClaim();

    modifier onlyOperator() {
        if (!isOperator[msg.sender]) revert NotOperator(msg.sender);
        _;
    }

    constructor(address owner_, address feeRecipient_, uint16 protocolFeeBps_, uint64 withdrawalDelay_)
        Ownable(owner_)
    {
        _setProtocolFee(feeRecipient_, protocolFeeBps_);
        _setWithdrawalDelay(withdrawalDelay_);
    }

    // ---------------------------------------------------------------- payers

    /// @notice Deposit native token into the caller's escrow.
    function deposit() external payable {
        depositFor(msg.sender);
    }

    /// @notice Deposit native token into `payer`'s escrow.
    function depositFor(address payer) public payable whenNotPaused {
        if (payer == address(0)) revert ZeroAddress();
        if (msg.value == 0) revert ZeroAmount();
        escrowOf[NATIVE][payer] += msg.value;
        emit Deposited(NATIVE, payer, msg.sender, msg.value);
    }

    /// @notice Deposit an allow-listed ERC-20 into the caller's escrow. Credits what actually arrived.
    function depositToken(address token, uint256 amount) external whenNotPaused nonReentrant {
        if (token == NATIVE || !tokenAllowed[token]) revert TokenNotAllowed(token);
        if (amount == 0) revert ZeroAmount();
        uint256 before = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = IERC20(token).balanceOf(address(this)) - before;
        if (received == 0) revert ZeroAmount();
        escrowOf[token][msg.sender] += received;
        emit Deposited(token, msg.sender, msg.sender, received);
    }

    /// @notice Start the withdrawal delay for `amount` of the caller's escrow. The escrow stays
    ///         debitable until `executeWithdrawal`, so calls already served can still settle.
    ///         A new request replaces the previous one and restarts the delay.
    function requestWithdrawal(address token, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        uint256 bal = escrowOf[token][msg.sender];
        if (amount > bal) revert InsufficientEscrow(msg.sender, bal, amount);
        uint64 unlockAt = uint64(block.timestamp) + _config.withdrawalDelay;
        pendingWithdrawal[token][msg.sender] = PendingWithdrawal(SafeCast.toUint192(amount), unlockAt);
        emit WithdrawalRequested(token, msg.sender, amount, unlockAt);
    }

    function cancelWithdrawal(address token) external {
        if (pendingWithdrawal[token][msg.sender].amount == 0) revert NoPendingWithdrawal();
        delete pendingWithdrawal[token][msg.sender];
        emit WithdrawalCancelled(token, msg.sender);
    }

    /// @notice After the delay, pay out the requested amount, capped at what is left in escrow.
    function executeWithdrawal(address token) external whenNotPaused nonReentrant returns (uint256 amount) {
        PendingWithdrawal memory p = pendingWithdrawal[token][msg.sender];
        if (p.amount == 0) revert NoPendingWithdrawal();
        if (block.timestamp < p.unlockAt) revert WithdrawalLocked(p.unlockAt);
        delete pendingWithdrawal[token][msg.sender];
        uint256 bal = escrowOf[token][msg.sender];
        amount = p.amount < bal ? p.amount : bal;
        if (amount == 0) revert ZeroAmount();
        escrowOf[token][msg.sender] = bal - amount;
        emit Withdrawn(token, msg.sender, amount);
        _pay(token, msg.sender, amount);
    }

    // ------------------------------------------------------------ recipients

    /// @notice Pay the caller all of its earnings in `token`.
    function claim(address token) external whenNotPaused nonReentrant returns (uint256 amount) {
        amount = earningsOf[token][msg.sender];
        if (amount == 0) revert NothingToClaim();
        earningsOf[token][msg.sender] = 0;
        emit Claimed(token, msg.sender, amount);
        _pay(token, msg.sender, amount);
    }

    // ------------------------------------------------------------- operators

    /// @notice Settle one batch of metered calls.
    /// @dev Reverts if the batch id was used, the root is zero, lengths differ, there are no payers,
    ///      a payer's escrow is short, a recipient is the zero address, or
    ///      sum(credits) != sum(debits) - sum(debits) * protocolFeeBps / 10_000.
    function settleBatch(Batch calldata batch) external onlyOperator whenNotPaused nonReentrant {
        bytes32 batchId = batch.batchId;
        if (batch.receiptsRoot == bytes32(0)) revert ZeroRoot();
        if (batchRoot[batchId] != bytes32(0)) revert BatchAlreadySettled(batchId);
        uint256 total = _debit(batch.token, batch.payers, batch.debits);
        Config memory cfg = _config;
        uint256 fee = total * cfg.protocolFeeBps / BPS;
        uint256 credited = _credit(batch.token, batch.recipients, batch.credits);
        if (credited + fee != total) revert CreditsMismatch(total, fee, credited);
        if (fee != 0) earningsOf[batch.token][cfg.feeRecipient] += fee;
        batchRoot[batchId] = batch.receiptsRoot;
        emit BatchSettled(batchId, batch.receiptsRoot, msg.sender, batch.token, total, fee, batch.callCount);
    }

    function _debit(address token, address[] calldata payers, uint256[] calldata debits)
        private
        returns (uint256 total)
    {
        uint256 n = payers.length;
        if (n == 0) revert EmptyBatch();
        if (debits.length != n) revert LengthMismatch();
        mapping(address => uint256) storage escrow = escrowOf[token];
        for (uint256 i = 0; i < n; ++i) {
            address payer = payers[i];
            uint256 d = debits[i];
            uint256 bal = escrow[payer];
            if (bal < d) revert InsufficientEscrow(payer, bal, d);
            unchecked {
                escrow[payer] = bal - d;
            }
            total += d;
        }
    }

    function _credit(address token, address[] calldata recipients, uint256[] calldata credits)
        private
        returns (uint256 total)
    {
        uint256 n = recipients.length;
        if (credits.length != n) revert LengthMismatch();
        mapping(address => uint256) storage earnings = earningsOf[token];
        for (uint256 i = 0; i < n; ++i) {
            address r = recipients[i];
            if (r == address(0)) revert ZeroAddress();
            uint256 c = credits[i];
            earnings[r] += c;
            total += c;
        }
    }

    // ----------------------------------------------------------------- views

    function batchSettled(bytes32 batchId) external view returns (bool) {
        return batchRoot[batchId] != bytes32(0);
    }

    /// @notice Whether `leaf` is in settled batch `batchId`'s receipts tree (OpenZeppelin
    ///         MerkleProof: sorted-pair keccak256). False for an unsettled batch.
    function verifyReceipt(bytes32 batchId, bytes32 leaf, bytes32[] calldata proof) external view returns (bool) {
        bytes32 root = batchRoot[batchId];
        return root != bytes32(0) && MerkleProof.verifyCalldata(proof, root, leaf);
    }

    /// @notice The canonical leaf of a receipt:
    ///         keccak256(bytes.concat(keccak256(abi.encode(receipt fields in declaration order)))).
    function receiptLeaf(Receipt calldata r) external pure returns (bytes32) {
        return keccak256(
            bytes.concat(
                keccak256(
                    abi.encode(
                        r.receiptId, r.adapterId, r.payer, r.operator, r.inputTokens, r.outputTokens, r.cost, r.timestamp
                    )
                )
            )
        );
    }

    function feeRecipient() external view returns (address) {
        return _config.feeRecipient;
    }

    function protocolFeeBps() external view returns (uint16) {
        return _config.protocolFeeBps;
    }

    function withdrawalDelay() external view returns (uint64) {
        return _config.withdrawalDelay;
    }

    /// @notice The protocol fee the contract takes from a batch whose debits total `totalDebits`.
    function protocolFeeFor(uint256 totalDebits) external view returns (uint256) {
        return totalDebits * _config.protocolFeeBps / BPS;
    }

    // ----------------------------------------------------------------- owner

    function setOperator(address operator, bool enabled) external onlyOwner {
        if (operator == address(0)) revert ZeroAddress();
        isOperator[operator] = enabled;
        emit OperatorSet(operator, enabled);
    }

    function setProtocolFee(address recipient, uint16 bps) external onlyOwner {
        _setProtocolFee(recipient, bps);
    }

    function setWithdrawalDelay(uint64 delay) external onlyOwner {
        _setWithdrawalDelay(delay);
    }

    function setTokenAllowed(address token, bool allowed) external onlyOwner {
        if (token == NATIVE) revert ZeroAddress();
        tokenAllowed[token] = allowed;
        emit TokenAllowedSet(token, allowed);
    }

    function pause() external onlyOwner {
        _pause();
    }

    function unpause() external onlyOwner {
        _unpause();
    }

    function _setProtocolFee(address recipient, uint16 bps) private {
        if (recipient == address(0)) revert ZeroAddress();
        if (bps > MAX_PROTOCOL_FEE_BPS) revert FeeTooHigh(bps);
        _config.feeRecipient = recipient;
        _config.protocolFeeBps = bps;
        emit ProtocolFeeSet(recipient, bps);
    }

    function _setWithdrawalDelay(uint64 delay) private {
        if (delay < MIN_WITHDRAWAL_DELAY || delay > MAX_WITHDRAWAL_DELAY) revert DelayOutOfRange(delay);
        _config.withdrawalDelay = delay;
        emit WithdrawalDelaySet(delay);
    }

    function _pay(address token, address to, uint256 amount) private {
        if (token == NATIVE) {
            Address.sendValue(payable(to), amount);
        } else {
            IERC20(token).safeTransfer(to, amount);
        }
    }
}
