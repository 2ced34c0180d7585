// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @notice The packed live state of a job's current round: ONE storage slot, keyed by
/// (job, parent digest), overwritten from round to round (see TrainingLedger "Gas layout").
///
///     | closed early by (32) @224 | workers (8) @216 | submitted bitmap (128) @88 |
///     | status (8) @80 | count (8) @72 | deadline (40) @32 | round (32) @0 |
///
/// `workers` is how many workers the round waits for; `closed early by` is set by the
/// last of them: how many seconds before the deadline the round closed (0: by the deadline).
type RoundSlot is uint256;

using RoundSlotLib for RoundSlot global;

/// @notice Decoding and encoding of `RoundSlot` (all internal: inlined, no call overhead).
library RoundSlotLib {
    uint256 internal constant DEADLINE_SHIFT = 32;
    uint256 internal constant COUNT_SHIFT = 72;
    uint256 internal constant STATUS_SHIFT = 80;
    uint256 internal constant BITMAP_SHIFT = 88;
    uint256 internal constant WORKERS_SHIFT = 216;
    uint256 internal constant EARLY_SHIFT = 224;
    uint256 internal constant COUNT_ONE = 1 << COUNT_SHIFT;
    uint256 internal constant LIVE_OPEN = 1 << STATUS_SHIFT;
    uint256 internal constant STATUS_MASK = 0xff << STATUS_SHIFT;
    uint256 internal constant ROUND_MASK = 0xffffffff;

    /// @dev A round opening now: open, `workers` expected, nobody submitted yet.
    function open(uint32 round_, uint256 deadline_, uint256 workers) internal pure returns (RoundSlot) {
        return RoundSlot.wrap(uint256(round_) | (deadline_ << DEADLINE_SHIFT) | LIVE_OPEN | (workers << WORKERS_SHIFT));
    }

    function deadline(RoundSlot s) internal pure returns (uint64) {
        return uint40(RoundSlot.unwrap(s) >> DEADLINE_SHIFT);
    }

    /// @dev Submissions counted so far.
    function count(RoundSlot s) internal pure returns (uint256) {
        return (RoundSlot.unwrap(s) >> COUNT_SHIFT) & 0xff;
    }

    /// @dev Workers the round waits for.
    function expected(RoundSlot s) internal pure returns (uint256) {
        return (RoundSlot.unwrap(s) >> WORKERS_SHIFT) & 0xff;
    }

    /// @dev Bitmap of the worker indexes that submitted.
    function submitted(RoundSlot s) internal pure returns (uint128) {
        return uint128(RoundSlot.unwrap(s) >> BITMAP_SHIFT);
    }

    /// @dev Whether the worker of 1-based `index` submitted.
    function hasSubmitted(RoundSlot s, uint256 index) internal pure returns (bool) {
        return (RoundSlot.unwrap(s) >> (BITMAP_SHIFT + index - 1)) & 1 == 1;
    }

    function closedEarlyBy(RoundSlot s) internal pure returns (uint32) {
        return uint32(RoundSlot.unwrap(s) >> EARLY_SHIFT);
    }

    /// @dev The same slot with its status cleared (the round left the live state).
    function retired(RoundSlot s) internal pure returns (RoundSlot) {
        return RoundSlot.wrap(RoundSlot.unwrap(s) & ~STATUS_MASK);
    }

    function isOpenStatus(RoundSlot s) internal pure returns (bool) {
        return RoundSlot.unwrap(s) & STATUS_MASK == LIVE_OPEN;
    }

    /// @dev Every expected worker submitted (a round expecting none waits for its
    /// deadline), or the deadline passed.
    function isClosed(RoundSlot s) internal view returns (bool) {
        uint256 n = s.expected();
        return (n != 0 && s.count() == n) || block.timestamp > s.deadline();
    }

    /// @dev When the proposal phase starts: the round's deadline in a job without
    /// disclosures (commits still open at an early close: see commitProposal), else the
    /// round's close (its last submission, or its deadline) + the disclosure window.
    function proposalStart(RoundSlot s, uint32 disclosureWindow) internal pure returns (uint64) {
        uint64 d = s.deadline();
        if (disclosureWindow == 0) return d;
        return d - s.closedEarlyBy() + disclosureWindow;
    }
}
