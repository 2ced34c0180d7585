// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @notice The packed live state of a job's current round: ONE storage slot, keyed by
/// (job, parent digest), overwritten from round to round (see TrainingLedger "Gas layout").
///
///     | close block low (8) @248 | closed early by (24) @224 | workers (8) @216 |
///     | submitted bitmap (128) @88 | close block high (7) @81 | open (1) @80 |
///     | count (8) @72 | deadline (40) @32 | round (32) @0 |
///
/// `workers` is how many workers the round waits for; `closed early by` is set by the
/// last of them: how many seconds before the deadline the round closed (0: by the
/// deadline; rounds last under 2**24 s), and with it the low 15 bits of its block number
/// (the committee draw's seed is the hash of a block 2 later, see CommitteeLib: within
/// 256 blocks, so 15 bits name it).
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
    uint256 internal constant STATUS_MASK = 1 << STATUS_SHIFT;
    uint256 internal constant CLOSE_HI_SHIFT = 81;
    uint256 internal constant CLOSE_LO_SHIFT = 248;
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
        return uint24(RoundSlot.unwrap(s) >> EARLY_SHIFT);
    }

    /// @dev What the last expected submission (made now) adds: how early, and this block.
    function closing(uint256 deadline_) internal view returns (uint256) {
        unchecked {
            return ((deadline_ - block.timestamp) << EARLY_SHIFT) | ((block.number & 0xff) << CLOSE_LO_SHIFT)
                | (((block.number >> 8) & 0x7f) << CLOSE_HI_SHIFT);
        }
    }

    /// @dev The block of the last expected submission, from its low 15 bits: the latest
    /// block at or before this one with them (exact within 32,768 blocks).
    function closeBlock(RoundSlot s) internal view returns (uint256) {
        uint256 w = RoundSlot.unwrap(s);
        uint256 low = ((w >> CLOSE_LO_SHIFT) & 0xff) | (((w >> CLOSE_HI_SHIFT) & 0x7f) << 8);
        unchecked {
            return block.number - ((block.number - low) & 0x7fff);
        }
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
        // slither-disable-next-line timestamp -- phases last minutes by design; seconds of block-time skew cannot change who may act
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
