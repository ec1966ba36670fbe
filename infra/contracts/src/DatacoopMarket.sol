// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title DatacoopMarket
/// @notice Escrow for dataset orders plus a cumulative Merkle distributor that pays members out of it.
///
/// Money flow:
///  1. A buyer pays for an order (`purchase` / `purchaseWithPermit`); the stablecoin moves into this
///     contract and `OrderPaid` is emitted. An order id can be paid once.
///  2. Each payout epoch the settlement service (SETTLER_ROLE) posts one Merkle root of
///     (account, cumulativeAmount) leaves and the sum of all cumulative amounts (`postRoot`).
///  3. A member (or anyone on their behalf) claims `cumulativeAmount - claimed[account]` with a proof;
///     the tokens always go to `account`.
///
/// Settlement and refunds: an order is *settled* once a root is posted after it was paid (every posted
/// root settles every order paid before it, by order sequence number). Settled orders cannot be
/// refunded; unsettled ones can be refunded by OPERATOR_ROLE. Orders paid after the settlement
/// service took its snapshot but before its root landed are therefore settled without being allocated:
/// their money stays in escrow and the service must allocate them in the next epoch.
///
/// Solvency invariant: `totalCumulative <= totalPaid - totalRefunded` holds at every `postRoot`, and
/// afterwards only orders paid after that root can be refunded, so it keeps holding. Claims are capped
/// by `totalCumulative` (`totalClaimed` never exceeds it), so a root whose leaves add up to more than
/// its declared total cannot drain escrow beyond that total.
///
/// Leaf format (OpenZeppelin StandardMerkleTree, types ["address", "uint256"]):
///   leaf = keccak256(bytes.concat(keccak256(abi.encode(account, cumulativeAmount))))
///
/// The token must be a plain ERC-20 (no fee on transfer, no rebasing): a payment that brings escrow less
/// than its amount reverts (`TransferAmountMismatch`); a rebasing token cannot be detected.
contract DatacoopMarket is AccessControl, Pausable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice May refund unsettled orders.
    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");
    /// @notice May post payout roots.
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");
    /// @notice May pause and unpause purchases, root posts and claims.
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");

    enum OrderStatus {
        None,
        Paid,
        Refunded
    }

    struct Order {
        address buyer;
        OrderStatus status;
        uint64 seq;
        uint256 amount;
    }

    /// @notice The stablecoin every order is paid in and every payout is made in.
    IERC20 public immutable token;

    // Storage order matters for gas: the two totals are uint120 so that they share one slot with
    // Pausable's `_paused` flag (declared just before them), and `claim` touches that slot once.

    /// @notice Sum of every leaf's cumulative amount in the current root (as declared by the settler).
    uint120 public totalCumulative;
    /// @notice Base units ever claimed; never exceeds `totalCumulative`.
    uint120 public totalClaimed;

    /// @notice The current payout root.
    bytes32 public merkleRoot;
    /// @notice Base units claimed so far per account.
    mapping(address account => uint256) public claimed;

    /// @notice Number of orders ever paid; an order's `seq` is its 1-based position.
    uint64 public orderCount;
    /// @notice Orders with `seq <= settledThroughSeq` are settled (not refundable).
    uint64 public settledThroughSeq;
    /// @notice Epoch of the current root (0 before the first root).
    uint64 public currentEpoch;
    /// @notice Orders by id.
    mapping(bytes32 orderId => Order) public orders;

    /// @notice Base units ever paid into escrow.
    uint256 public totalPaid;
    /// @notice Base units ever refunded.
    uint256 public totalRefunded;

    event OrderPaid(bytes32 indexed orderId, address indexed buyer, uint256 amount);
    event OrderRefunded(bytes32 indexed orderId, address indexed buyer, uint256 amount);
    event RootPosted(uint64 indexed epoch, bytes32 root, uint256 totalCumulative, uint64 settledThroughSeq);
    event Claimed(address indexed account, uint256 amount, uint256 cumulativeAmount);

    error ZeroAddress();
    error ZeroAmount();
    error OrderAlreadyPaid(bytes32 orderId);
    error OrderNotPaid(bytes32 orderId);
    error OrderAlreadySettled(bytes32 orderId);
    error EpochNotIncreasing(uint64 epoch, uint64 currentEpoch);
    error EmptyRoot();
    error TotalDecreased(uint256 totalCumulative, uint256 previousTotal);
    error RootExceedsEscrow(uint256 totalCumulative, uint256 fundedTotal);
    error InvalidProof(address account, uint256 cumulativeAmount);
    error ClaimExceedsRootTotal(uint256 wouldClaim, uint256 totalCumulative);
    error AmountTooLarge(uint256 amount);
    error RefundsChanged(uint256 totalRefunded, uint256 expectedTotalRefunded);
    error TransferAmountMismatch(uint256 amount, uint256 received);

    /// @param token_ the stablecoin.
    /// @param admin receives DEFAULT_ADMIN_ROLE (grants the other roles) and PAUSER_ROLE.
    constructor(IERC20 token_, address admin) {
        if (address(token_) == address(0) || admin == address(0)) revert ZeroAddress();
        token = token_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
    }

    // ------------------------------------------------------------------ escrow

    /// @notice Pay `amount` base units for `orderId`; needs a prior `approve` of this contract.
    function purchase(bytes32 orderId, uint256 amount) external whenNotPaused nonReentrant {
        _purchase(orderId, amount);
    }

    /// @notice Pay with an EIP-2612 permit in the same transaction.
    /// @dev The permit is tried and its failure ignored (someone may have front-run it onto the token);
    ///      the transfer then fails on its own if the allowance is missing.
    function purchaseWithPermit(bytes32 orderId, uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
        whenNotPaused
        nonReentrant
    {
        try IERC20Permit(address(token)).permit(msg.sender, address(this), amount, deadline, v, r, s) {} catch {}
        _purchase(orderId, amount);
    }

    /// @notice Return an unsettled order's payment to its buyer; only OPERATOR_ROLE.
    /// @dev Allowed while paused, so buyers can be made whole during an incident.
    function refund(bytes32 orderId) external onlyRole(OPERATOR_ROLE) nonReentrant {
        Order storage order = orders[orderId];
        if (order.status != OrderStatus.Paid) revert OrderNotPaid(orderId);
        if (order.seq <= settledThroughSeq) revert OrderAlreadySettled(orderId);
        order.status = OrderStatus.Refunded;
        uint256 amount = order.amount;
        totalRefunded += amount;
        emit OrderRefunded(orderId, order.buyer, amount);
        token.safeTransfer(order.buyer, amount);
    }

    /// @notice Whether an order can no longer be refunded because a root was posted after it was paid.
    function isSettled(bytes32 orderId) external view returns (bool) {
        Order storage order = orders[orderId];
        return order.status == OrderStatus.Paid && order.seq <= settledThroughSeq;
    }

    function _purchase(bytes32 orderId, uint256 amount) private {
        if (amount == 0) revert ZeroAmount();
        if (totalPaid + amount > type(uint120).max) revert AmountTooLarge(amount);
        Order storage order = orders[orderId];
        if (order.status != OrderStatus.None) revert OrderAlreadyPaid(orderId);
        uint64 seq = ++orderCount;
        order.buyer = msg.sender;
        order.status = OrderStatus.Paid;
        order.seq = seq;
        order.amount = amount;
        totalPaid += amount;
        emit OrderPaid(orderId, msg.sender, amount);
        // Escrow counts `amount`: a token that delivers less (a fee on transfer, which some stablecoins can
        // switch on) would let roots promise more than the contract holds, so such a payment reverts.
        uint256 held = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = token.balanceOf(address(this)) - held;
        if (received != amount) revert TransferAmountMismatch(amount, received);
    }

    // ------------------------------------------------------------- distributor

    /// @notice Post the payout root of `epoch`; only SETTLER_ROLE. Constant gas whatever the tree size.
    /// @param epoch must be greater than the current epoch.
    /// @param root StandardMerkleTree root of (address account, uint256 cumulativeAmount) leaves.
    /// @param newTotalCumulative sum of all leaves' cumulative amounts; never decreases and never exceeds
    ///        what escrow has received net of refunds.
    /// @param expectedTotalRefunded `totalRefunded` as the settler read it when it checked that no order its
    ///        root allocates was refunded; the post reverts with `RefundsChanged` when a refund landed since,
    ///        so a root can never pay out an order whose buyer was refunded between that check and the post.
    /// @dev Settles every order paid so far (see contract notes).
    function postRoot(uint64 epoch, bytes32 root, uint256 newTotalCumulative, uint256 expectedTotalRefunded)
        external
        onlyRole(SETTLER_ROLE)
        whenNotPaused
    {
        if (totalRefunded != expectedTotalRefunded) revert RefundsChanged(totalRefunded, expectedTotalRefunded);
        _postRoot(epoch, root, newTotalCumulative);
    }

    function _postRoot(uint64 epoch, bytes32 root, uint256 newTotalCumulative) private {
        if (epoch <= currentEpoch) revert EpochNotIncreasing(epoch, currentEpoch);
        if (root == bytes32(0)) revert EmptyRoot();
        if (newTotalCumulative < totalCumulative) revert TotalDecreased(newTotalCumulative, totalCumulative);
        uint256 funded = totalPaid - totalRefunded;
        if (newTotalCumulative > funded) revert RootExceedsEscrow(newTotalCumulative, funded);
        uint64 through = orderCount;
        currentEpoch = epoch;
        merkleRoot = root;
        totalCumulative = uint120(newTotalCumulative); // <= totalPaid, itself capped to uint120 in _purchase
        settledThroughSeq = through;
        emit RootPosted(epoch, root, newTotalCumulative, through);
    }

    /// @notice Pay `account` what it has earned and not yet claimed; anyone may call, `account` is paid.
    /// @return amount paid now: `cumulativeAmount - claimed[account]`, or 0 (no revert, no event) when
    ///         that was already claimed, so retries by relayers are harmless.
    function claim(address account, uint256 cumulativeAmount, bytes32[] calldata proof)
        external
        whenNotPaused
        nonReentrant
        returns (uint256 amount)
    {
        if (_rootOf(account, cumulativeAmount, proof) != merkleRoot) revert InvalidProof(account, cumulativeAmount);
        uint256 already = claimed[account];
        if (cumulativeAmount <= already) return 0;
        amount = cumulativeAmount - already;
        uint256 newTotalClaimed = uint256(totalClaimed) + amount;
        if (newTotalClaimed > totalCumulative) revert ClaimExceedsRootTotal(newTotalClaimed, totalCumulative);
        // Totals first: written right after they were read, the packed slot is not read a third time.
        totalClaimed = uint120(newTotalClaimed); // <= totalCumulative, a uint120
        claimed[account] = cumulativeAmount;
        emit Claimed(account, amount, cumulativeAmount);
        token.safeTransfer(account, amount);
    }

    /// @dev The root that `proof` leads to from the leaf of (account, cumulativeAmount): the same leaf
    ///      (keccak256(bytes.concat(keccak256(abi.encode(account, cumulativeAmount))))) and the same sorted-pair
    ///      hashing as OpenZeppelin's `MerkleProof.processProofCalldata`, written in assembly because that
    ///      loop is most of a claim's own computation (17 levels at 100,000 accounts; about 700 gas less).
    ///      Uses only the scratch space (0x00-0x3f).
    function _rootOf(address account, uint256 cumulativeAmount, bytes32[] calldata proof)
        private
        pure
        returns (bytes32 node)
    {
        assembly ("memory-safe") {
            mstore(0x00, and(account, 0xffffffffffffffffffffffffffffffffffffffff))
            mstore(0x20, cumulativeAmount)
            mstore(0x00, keccak256(0x00, 0x40))
            node := keccak256(0x00, 0x20)
            let end := add(proof.offset, shl(5, proof.length))
            for { let p := proof.offset } lt(p, end) { p := add(p, 0x20) } {
                let sibling := calldataload(p)
                // sorted pair, the smaller hash first: node goes second (0x20) only when sibling < node
                let nodeAt := shl(5, lt(sibling, node))
                mstore(nodeAt, node)
                mstore(xor(nodeAt, 0x20), sibling)
                node := keccak256(0x00, 0x40)
            }
        }
    }

    // ------------------------------------------------------------------- admin

    /// @notice Stop purchases, root posts and claims; only PAUSER_ROLE.
    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    /// @notice Resume; only PAUSER_ROLE.
    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }
}
