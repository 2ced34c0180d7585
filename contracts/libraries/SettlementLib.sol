// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ITrainingLedger} from "../interfaces/ITrainingLedger.sol";
import {LedgerStorage} from "./LedgerStorage.sol";

/// @title SettlementLib
/// @notice Moving money when a round finalizes or the job completes: rewards, slashes,
/// returned stakes and pool. Cold paths (once per round or job), in a linked library.
/// Every payment is credited to a balance and pulled with `withdraw`.
library SettlementLib {
    /// @notice Pay a finalized round's share of the pool (pro rata to credit, and the
    /// quorum's part), then move the slashed stakes into the pool. `s` was checked against
    /// the round by the caller (credits and slashes only for workers that submitted).
    // slither-disable-next-line cyclomatic-complexity -- the payout rules in one place, replayed line by line off chain by ledger.protocol.settlement
    function settle(
        LedgerStorage.Layout storage st,
        uint256 jobId,
        uint32 round,
        bytes32 outcome,
        ITrainingLedger.Settlement calldata s
    ) external {
        LedgerStorage.Job storage j = st.jobs[jobId];
        address[] storage ws = st.workers[jobId];
        uint256 pool = j.pool;
        // slither-disable-next-line divide-before-multiply -- the round's share is the unit by design; the quorum's cut is a part of it and the remainder stays in the pool
        uint256 share = pool / (j.numRounds - round + 1);
        if (share != 0) {
            // the round's share is the unit everything below is a part of (off chain,
            // ledger.protocol.settlement replays exactly this arithmetic)
            uint256 toAggregators = share * j.aggregatorBps / LedgerStorage.BPS;
            uint256 toWorkers = share - toAggregators;
            uint256 total = 0;
            for (uint256 i = 0; i < s.credits.length; ++i) total += s.credits[i];
            if (total != 0) {
                for (uint256 i = 0; i < s.credits.length; ++i) {
                    if (s.credits[i] == 0) continue;
                    pool -= _pay(st, jobId, round, ws[i], toWorkers * s.credits[i] / total, false);
                }
            }
            uint256 each = toAggregators / j.quorum;
            if (each != 0) {
                address[] storage as_ = st.aggregators[jobId];
                mapping(address => bytes32) storage proposed = st.proposed[jobId][round];
                for (uint256 i = 0; i < as_.length; ++i) {
                    if (proposed[as_[i]] == outcome) pool -= _pay(st, jobId, round, as_[i], each, true);
                }
            }
        }
        if (s.slashed != 0) {
            for (uint256 i = 0; i < s.credits.length; ++i) {
                if ((uint256(s.slashed) >> i) & 1 == 0) continue;
                address w = ws[i];
                uint256 held = st.stakes[jobId][w];
                uint256 cut = held * j.slashBps / LedgerStorage.BPS;
                if (cut == 0) continue;
                st.stakes[jobId][w] = held - cut;
                pool += cut;
                emit ITrainingLedger.Slashed(jobId, round, w, cut);
            }
        }
        j.pool = uint128(pool);
    }

    /// @notice The job completed: every stake still held, and the pool, go back to balances.
    function returnStakesAndPool(LedgerStorage.Layout storage st, uint256 jobId) external {
        LedgerStorage.Job storage j = st.jobs[jobId];
        address[] storage ws = st.workers[jobId];
        if (j.workerStake != 0) {
            for (uint256 i = 0; i < ws.length; ++i) {
                address w = ws[i];
                uint256 held = st.stakes[jobId][w];
                if (held == 0) continue;
                st.stakes[jobId][w] = 0;
                st.balances[w] += held;
                emit ITrainingLedger.StakeReturned(jobId, w, held);
            }
        }
        uint256 left = j.pool;
        if (left != 0) {
            j.pool = 0;
            st.balances[j.creator] += left;
            emit ITrainingLedger.PoolReturned(jobId, j.creator, left);
        }
    }

    function _pay(LedgerStorage.Layout storage st, uint256 jobId, uint32 round, address account, uint256 amount, bool aggregator)
        private
        returns (uint256)
    {
        if (amount == 0) return 0;
        st.balances[account] += amount;
        emit ITrainingLedger.RewardPaid(jobId, round, account, amount, aggregator);
        return amount;
    }
}
