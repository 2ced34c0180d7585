// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ITrainingLedger} from "../interfaces/ITrainingLedger.sol";
import {LedgerStorage} from "./LedgerStorage.sol";
import {RoundSlot} from "./RoundSlot.sol";

/// @title CommitteeLib
/// @notice Verification committees enforced on chain (a linked library): the draw, the
/// votes and the check that a finalized outcome follows what the committees decided.
/// The rules are `ledger.protocol.committee`'s, so every party's tally of the `CommitteeVoted`
/// events equals what this library recorded:
/// - **Draw** (`draw`, anyone, once a round): the seed is the hash of the block
///   DRAW_DELAY = 2 after the block that closed the round: the last expected submission's
///   (its low 15 bits are in the round's slot) or, for a round closed by its deadline,
///   the first block past the deadline, proven by its RLP header and its parent's (their
///   hashes are `blockhash`es, their timestamps straddle the deadline). The seed block
///   must be at most 256 blocks old: a round nobody drew by then cannot finalize and is
///   skipped after its reveal deadline. The caller also gives the round's submissions,
///   which must fold into the round's commitment: the contract learns which worker made
///   each (credits are per worker). The vote deadline is fixed here: `voteWindow` after
///   the disclosure deadline (jobs with disclosures) or after the closing block's time.
/// - **Vote** (`vote`): only a drawn member, once a round, by the vote deadline, with a
///   well-formed ballot naming only contributions it was drawn for; anything else
///   reverts (the Python tally ignores the same votes). Each entry counts for its
///   (verdict, credit) pair; the first pair to reach the committee quorum decides.
/// - **Check** (`check`, when a reveal brings an outcome to quorum): every decided
///   contribution's verdict, and its worker's credit (the decided credit when
///   accepted, else 0), must be the decision, else `AgainstCommittee`; an undecided one
///   only once the vote deadline passed (`VotesPending`). Payouts and slashes follow only
///   an outcome that passed it; the audit re-verifies everything as a second line.
library CommitteeLib {
    uint256 internal constant DRAW_DELAY = 2;
    uint256 private constant ENTRY = 11; // index (2), verdict (1), credit (8), big-endian
    uint256 private constant SUB = 81;   // worker index (1), digest, cid, size (8), samples (8)
    uint256 private constant DECIDED = 1 << 72;

    /// @notice Draw `round`'s committees (see the library's notes).
    /// @param before for a round closed by its deadline, the RLP header of the block before `closing`; else empty
    /// @param closing for a round closed by its deadline, the RLP header of the first block past it; else empty
    /// @param subs per submission in order: worker index (1 byte), digest, cid, size (8), numSamples (8)
    function draw(
        LedgerStorage.Layout storage st,
        uint256 jobId,
        uint32 round,
        bytes calldata before,
        bytes calldata closing,
        bytes calldata subs
    ) external {
        LedgerStorage.Job storage j = st.jobs[jobId];
        if (j.completed || round != j.currentRound) revert ITrainingLedger.WrongRound(jobId, j.currentRound, round);
        (uint256 c,) = sizes(j);
        if (c == 0) revert ITrainingLedger.NoCommittees(jobId);
        if (st.draws[jobId].round == round) revert ITrainingLedger.AlreadyDrawn(jobId, round);
        RoundSlot live = RoundSlot.wrap(st.live[jobId][j.parentDigest].packed);
        if (!live.isClosed()) revert ITrainingLedger.RoundNotClosed(jobId, round, live.deadline());
        uint256 n = live.count();
        uint256 close;
        uint256 closeTime;
        if (live.expected() != 0 && n == live.expected()) {
            close = live.closeBlock();
            closeTime = live.deadline() - live.closedEarlyBy();
        } else {
            (uint256 prev, uint256 prevTime) = _header(jobId, round, before);
            (close, closeTime) = _header(jobId, round, closing);
            if (prev + 1 != close || prevTime > live.deadline() || closeTime <= live.deadline()) {
                revert ITrainingLedger.BadHeader(jobId, round);
            }
        }
        bytes32 seed = blockhash(close + DRAW_DELAY);
        if (seed == 0) revert ITrainingLedger.DrawUnavailable(jobId, round, close + DRAW_DELAY);
        uint64 voteDeadline =
            (j.disclosureWindow != 0 ? live.proposalStart(j.disclosureWindow) : uint64(closeTime)) + j.voteWindow;
        LedgerStorage.Draw storage d = st.draws[jobId];
        d.round = round;
        d.voteDeadline = voteDeadline;
        d.seed = seed;
        d.voted = 0;
        d.order = _order(st, jobId, round, n, subs);
        emit ITrainingLedger.CommitteesDrawn(jobId, round, seed, voteDeadline);
    }

    /// @notice Record an aggregator's vote (see the library's notes); the caller checked it is one.
    function vote(LedgerStorage.Layout storage st, uint256 jobId, uint32 round, bytes calldata ballot) external {
        LedgerStorage.Draw storage d = _drawn(st, jobId, round);
        // slither-disable-next-line timestamp -- phases last minutes by design; seconds of block-time skew cannot change who may act
        if (block.timestamp > d.voteDeadline) revert ITrainingLedger.VotePhaseClosed(jobId, round, d.voteDeadline);
        bytes32 seed = d.seed;
        (uint256 pos, uint256 bit, uint256 m) = _position(st.aggregators[jobId], seed, jobId, round);
        if (d.voted & bit != 0) revert ITrainingLedger.AlreadyVoted(jobId, round, msg.sender);
        d.voted |= bit;
        uint256 n = d.order.length;
        if (ballot.length == 0 || ballot.length % ENTRY != 0) revert ITrainingLedger.BadBallot(jobId, round);
        bytes32[] memory ranks = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) ranks[i] = keccak256(abi.encode(seed, jobId, round, "uint256", i));
        (uint256 c, uint256 q) = sizes(st.jobs[jobId]);
        uint256 last = 0;
        for (uint256 e = 0; e < ballot.length; e += ENTRY) {
            uint256 index = uint16(bytes2(ballot[e:e + 2]));
            // strictly increasing (index + 1 > last), and one of the round's submissions
            if (index + 1 <= last || index >= n) revert ITrainingLedger.BadBallot(jobId, round);
            last = index + 1;
            uint256 k = 0; // the contribution's place in the shuffled order
            for (uint256 i = 0; i < n; ++i) {
                if (ranks[i] < ranks[index]) ++k;
            }
            // members: the c aggregators at places kc .. kc+c-1 (mod m) of theirs
            if ((pos + m - (k * c) % m) % m >= c) revert ITrainingLedger.NotInCommittee(jobId, round, msg.sender, index);
            uint256 verdict = uint8(ballot[e + 2]);
            uint256 credit = uint64(bytes8(ballot[e + 3:e + 11]));
            uint256 votes = ++st.tallies[jobId][round][keccak256(abi.encodePacked(uint16(index), uint8(verdict), uint64(credit)))];
            mapping(uint256 => uint256) storage dec = st.decisions[jobId][round];
            if (votes >= q && dec[index] == 0) dec[index] = DECIDED | (verdict << 64) | credit;
        }
        emit ITrainingLedger.CommitteeVoted(jobId, round, msg.sender, ballot);
    }

    /// @notice Revert unless an outcome's verdicts and credits follow every committee
    /// decision of `round` (see the library's notes); nothing for a job without committees.
    function check(
        LedgerStorage.Layout storage st,
        uint256 jobId,
        uint32 round,
        bytes calldata verdicts,
        uint64[] calldata credits
    ) external view {
        (uint256 c,) = sizes(st.jobs[jobId]);
        if (c == 0 || verdicts.length == 0) return;
        LedgerStorage.Draw storage d = _drawn(st, jobId, round);
        bytes memory order = d.order;
        // slither-disable-next-line timestamp -- phases last minutes by design; seconds of block-time skew cannot change who may act
        bool open = block.timestamp <= d.voteDeadline;
        mapping(uint256 => uint256) storage dec = st.decisions[jobId][round];
        for (uint256 i = 0; i < verdicts.length; ++i) {
            uint256 x = dec[i];
            if (x == 0) {
                if (open) revert ITrainingLedger.VotesPending(jobId, round, d.voteDeadline);
                continue;
            }
            uint8 verdict = uint8(x >> 64);
            uint64 credit = verdict == 0 ? uint64(x) : 0;
            if (uint8(verdicts[i]) != verdict || credits[uint8(order[i])] != credit) {
                revert ITrainingLedger.AgainstCommittee(jobId, round, i);
            }
        }
    }

    /// @dev (committee size, quorum) in effect: size 0 when committees are off (0, or at
    /// least the aggregators: every aggregator judges everything); quorum a majority by default.
    function sizes(LedgerStorage.Job storage j) internal view returns (uint256 c, uint256 q) {
        c = j.committeeSize;
        if (c >= j.numAggregators) c = 0;
        q = j.committeeQuorum != 0 ? j.committeeQuorum : c / 2 + 1;
    }

    function _drawn(LedgerStorage.Layout storage st, uint256 jobId, uint32 round)
        private
        view
        returns (LedgerStorage.Draw storage d)
    {
        d = st.draws[jobId];
        LedgerStorage.Job storage j = st.jobs[jobId];
        if (d.round != round || j.currentRound != round || j.completed) {
            revert ITrainingLedger.CommitteesNotDrawn(jobId, round);
        }
    }

    /// @dev The caller's place among the aggregators shuffled by the seed, its bit (by
    /// job order) and the aggregator count.
    function _position(address[] storage aggs, bytes32 seed, uint256 jobId, uint32 round)
        private
        view
        returns (uint256 pos, uint256 bit, uint256 m)
    {
        m = aggs.length;
        bytes32 mine = keccak256(abi.encode(seed, jobId, round, "address", msg.sender));
        for (uint256 i = 0; i < m; ++i) {
            address a = aggs[i];
            if (a == msg.sender) bit = 1 << i;
            else if (keccak256(abi.encode(seed, jobId, round, "address", a)) < mine) ++pos;
        }
    }

    /// @dev The worker index of each submission, checked by folding them into the round's commitment.
    function _order(LedgerStorage.Layout storage st, uint256 jobId, uint32 round, uint256 n, bytes calldata subs)
        private
        view
        returns (bytes memory order)
    {
        if (subs.length != n * SUB) revert ITrainingLedger.SubmissionsMismatch(jobId, round);
        address[] storage ws = st.workers[jobId];
        bytes32 c = keccak256(abi.encode(jobId, round));
        order = new bytes(n);
        for (uint256 k = 0; k < n; ++k) {
            uint256 at = k * SUB;
            uint256 w = uint8(subs[at]);
            if (w >= ws.length) revert ITrainingLedger.SubmissionsMismatch(jobId, round);
            order[k] = subs[at];
            c = keccak256(abi.encodePacked(c, ws[w], subs[at + 1:at + SUB]));
        }
        if (c != st.commitment[jobId].value) revert ITrainingLedger.SubmissionsMismatch(jobId, round);
    }

    /// @dev (number, timestamp) of an RLP block header whose hash is that block's
    /// `blockhash`: a list of 256..65535 bytes, seven fixed-size fields (parent, ommers,
    /// coinbase, state, transactions, receipts: 33 bytes each but the coinbase's 21; the
    /// bloom's 259), then difficulty, number, gas limit, gas used, timestamp.
    function _header(uint256 jobId, uint32 round, bytes calldata h) private view returns (uint256 number, uint256 time) {
        if (h.length < 480 || uint8(h[0]) != 0xf9) revert ITrainingLedger.BadHeader(jobId, round);
        uint256 p = 448;
        for (uint256 f = 7; f <= 11; ++f) {
            uint256 b = uint8(h[p]);
            uint256 v = b;
            uint256 len = 0;
            if (b >= 0x80) {
                len = b - 0x80;
                if (len > 8) revert ITrainingLedger.BadHeader(jobId, round);
                v = uint64(bytes8(h[p + 1:p + 9])) >> (64 - 8 * len);
            }
            p += 1 + len;
            if (f == 8) number = v;
            time = v;
        }
        if (keccak256(h) != blockhash(number)) revert ITrainingLedger.BadHeader(jobId, round);
    }
}
