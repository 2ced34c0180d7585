// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ITrainingLedger} from "../interfaces/ITrainingLedger.sol";
import {LedgerStorage} from "./LedgerStorage.sol";
import {RoundSlot} from "./RoundSlot.sol";

/// @title JobLib
/// @notice Creating a job: checking its parameters and registering its workers and
/// aggregators. A cold path (once per job), so it lives in a linked library: its code
/// is not part of TrainingLedger's 24,576-byte budget (EIP-170).
library JobLib {
    /// @notice Check `p`, store the job as `jobId` of `creator` funded with `value` wei,
    /// register its members and emit `JobCreated` (and `RewardFunded`). The caller opens round 1.
    function create(
        LedgerStorage.Layout storage s,
        ITrainingLedger.JobParams calldata p,
        address creator,
        uint256 value
    ) external returns (uint256 jobId) {
        validate(p);
        jobId = ++s.jobCount;
        LedgerStorage.Job storage j = s.jobs[jobId];
        j.creator = creator;
        j.roundDuration = p.roundDuration;
        j.numRounds = p.numRounds;
        j.minSubmissions = p.minSubmissions;
        j.quorum = p.quorum;
        j.cidVersion = p.cidVersion;
        j.currentRound = 1;
        j.createdBlock = uint64(block.number);
        j.proposalWindow = p.proposalWindow;
        j.disclosureWindow = p.disclosureWindow;
        j.numWorkers = uint8(p.workers.length);
        j.numAggregators = uint8(p.aggregators.length);
        j.maxWorkers = uint8(p.maxWorkers);
        j.workerStake = p.workerStake;
        j.slashBps = p.slashBps;
        j.aggregatorBps = p.aggregatorBps;
        j.committeeSize = p.committeeSize;
        j.committeeQuorum = p.committeeQuorum;
        j.voteWindow = p.voteWindow;
        j.pool = uint128(value);
        j.reward = uint128(value);
        j.configSize = p.configSize;
        j.genesisSize = p.genesisSize;
        j.parentSize = p.genesisSize;
        j.configDigest = p.configDigest;
        j.configCid = p.configCid;
        j.genesisDigest = p.genesisDigest;
        j.genesisCid = p.genesisCid;
        j.parentDigest = p.genesisDigest;
        j.parentCid = p.genesisCid;

        mapping(address => uint256) storage index = s.workerIndex[jobId];
        address[] storage ws = s.workers[jobId];
        uint256 flag = p.workerStake != 0 ? LedgerStorage.UNSTAKED : 0;
        bytes32 roster = bytes32(0);
        for (uint256 i = 0; i < p.workers.length; ++i) {
            address w = p.workers[i];
            if (w == address(0)) revert ITrainingLedger.ZeroAddress();
            if (index[w] != 0) revert ITrainingLedger.DuplicateMember(w);
            index[w] = (i + 1) | flag;
            ws.push(w);
            roster = chain(roster, w);
        }
        s.rosters[jobId] = LedgerStorage.Roster({
            hash: roster,
            active: flag == 0 ? uint128((uint256(1) << p.workers.length) - 1) : 0
        });
        mapping(address => bool) storage isAgg = s.isAggregator[jobId];
        address[] storage as_ = s.aggregators[jobId];
        for (uint256 i = 0; i < p.aggregators.length; ++i) {
            address a = p.aggregators[i];
            if (a == address(0)) revert ITrainingLedger.ZeroAddress();
            // a repeated aggregator, or a worker who also judges (it would vote on its own contribution)
            if (isAgg[a] || index[a] != 0) revert ITrainingLedger.DuplicateMember(a);
            isAgg[a] = true;
            as_.push(a);
        }
        emit ITrainingLedger.JobCreated(jobId, creator, p);
        if (value != 0) emit ITrainingLedger.RewardFunded(jobId, value);
    }

    /// @notice TrainingLedger.join (a cold path kept out of the contract); `value` is the stake sent.
    function join(LedgerStorage.Layout storage st, uint256 jobId, bytes32 dataRoot, uint64 dataBytes, uint256 value) external {
        LedgerStorage.Job storage j = st.jobs[jobId];
        if (j.maxWorkers == 0) revert ITrainingLedger.JobNotOpen(jobId);
        if (j.completed) revert ITrainingLedger.JobFinished(jobId);
        if (st.workerIndex[jobId][msg.sender] != 0 || st.isAggregator[jobId][msg.sender]) {
            revert ITrainingLedger.AlreadyJoined(jobId, msg.sender);
        }
        address[] storage ws = st.workers[jobId];
        if (ws.length >= j.maxWorkers) revert ITrainingLedger.JobFull(jobId, j.maxWorkers);
        _requireBetweenRounds(st, jobId, j);
        if (value != j.workerStake) revert ITrainingLedger.WrongStake(jobId, j.workerStake, value);
        ws.push(msg.sender);
        st.workerIndex[jobId][msg.sender] = ws.length | LedgerStorage.QUEUED;
        LedgerStorage.Roster storage ro = st.rosters[jobId];
        ro.hash = chain(ro.hash, msg.sender);
        if (value != 0) {
            st.stakes[jobId][msg.sender] = value;
            emit ITrainingLedger.StakePosted(jobId, msg.sender, value);
        }
        emit ITrainingLedger.WorkerJoined(jobId, msg.sender, uint16(ws.length - 1), j.currentRound + 1, dataRoot, dataBytes);
    }

    /// @notice TrainingLedger.leave (a cold path kept out of the contract).
    function leave(LedgerStorage.Layout storage st, uint256 jobId) external {
        LedgerStorage.Job storage j = st.jobs[jobId];
        if (j.maxWorkers == 0) revert ITrainingLedger.JobNotOpen(jobId);
        if (j.completed) revert ITrainingLedger.JobFinished(jobId);
        uint256 slot = st.workerIndex[jobId][msg.sender];
        if (slot == 0) revert ITrainingLedger.NotWorker(jobId, msg.sender);
        if (slot & LedgerStorage.LEFT != 0) revert ITrainingLedger.WorkerHasLeft(jobId, msg.sender);
        RoundSlot live = _requireBetweenRounds(st, jobId, j);
        uint256 index = slot & LedgerStorage.INDEX_MASK;
        if (slot & LedgerStorage.QUEUED == 0 && live.hasSubmitted(index)) {
            revert ITrainingLedger.ContributionPending(jobId, j.currentRound, msg.sender);
        }
        st.workerIndex[jobId][msg.sender] = slot | LedgerStorage.LEFT;
        st.rosters[jobId].active &= ~(uint128(1) << (index - 1));
        if (slot & LedgerStorage.QUEUED == 0) j.numLeft += 1; // a queued one is counted when its round opens
        uint256 refund = st.stakes[jobId][msg.sender];
        st.stakes[jobId][msg.sender] = 0;
        st.balances[msg.sender] += refund;
        emit ITrainingLedger.WorkerLeft(jobId, msg.sender, refund);
    }

    /// @dev Joins and leaves: the job's current round must be closed to submissions.
    function _requireBetweenRounds(LedgerStorage.Layout storage st, uint256 jobId, LedgerStorage.Job storage j)
        private
        view
        returns (RoundSlot live)
    {
        live = RoundSlot.wrap(st.live[jobId][j.parentDigest].packed);
        if (!live.isClosed()) revert ITrainingLedger.RoundInProgress(jobId, j.currentRound, live.deadline());
    }

    /// @notice The checks of `createJob`'s parameters, each failure its own typed error.
    // slither-disable-next-line cyclomatic-complexity -- one check per parameter, each with its own typed error; split, the list is harder to audit
    function validate(ITrainingLedger.JobParams calldata p) internal pure {
        uint256 named = p.workers.length;
        uint256 n = p.aggregators.length;
        // an open job may start with nobody: its rounds wait for their deadlines until workers join
        if (named == 0 && p.maxWorkers == 0) revert ITrainingLedger.NoWorkers();
        if (named > LedgerStorage.MAX_WORKERS) revert ITrainingLedger.TooManyWorkers(named, LedgerStorage.MAX_WORKERS);
        if (p.maxWorkers > LedgerStorage.MAX_WORKERS) {
            revert ITrainingLedger.TooManyWorkers(p.maxWorkers, LedgerStorage.MAX_WORKERS);
        }
        if (p.maxWorkers != 0 && p.maxWorkers < named) revert ITrainingLedger.MaxWorkersBelowNamed(p.maxWorkers, named);
        if (p.slashBps > LedgerStorage.BPS) revert ITrainingLedger.BpsOutOfRange(p.slashBps);
        if (p.aggregatorBps > LedgerStorage.BPS) revert ITrainingLedger.BpsOutOfRange(p.aggregatorBps);
        if (n == 0) revert ITrainingLedger.NoAggregators();
        if (n > LedgerStorage.MAX_AGGREGATORS) revert ITrainingLedger.TooManyAggregators(n, LedgerStorage.MAX_AGGREGATORS);
        // A strict majority: two disjoint sets of aggregators can never both reach it.
        if (uint256(p.quorum) * 2 <= n || p.quorum > n) revert ITrainingLedger.QuorumNotMajority(p.quorum, n);
        if (p.roundDuration == 0 || p.proposalWindow == 0 || p.numRounds == 0) revert ITrainingLedger.ZeroDuration();
        if (p.roundDuration >= 1 << 24) revert ITrainingLedger.RoundTooLong(p.roundDuration);
        uint256 most = p.maxWorkers != 0 ? p.maxWorkers : named;
        if (p.minSubmissions == 0 || p.minSubmissions > most) {
            revert ITrainingLedger.MinSubmissionsOutOfRange(p.minSubmissions, most);
        }
        if (p.committeeQuorum > p.committeeSize || p.committeeSize > LedgerStorage.MAX_WORKERS) {
            revert ITrainingLedger.CommitteeOutOfRange(p.committeeSize, p.committeeQuorum);
        }
        if (p.cidVersion > 1) revert ITrainingLedger.BadCidVersion(p.cidVersion);
        if (p.genesisDigest == bytes32(0) || p.configDigest == bytes32(0)) revert ITrainingLedger.ZeroDigest();
    }

    /// @notice One link of a roster's chained hash: keccak256(h, w).
    function chain(bytes32 h, address w) internal pure returns (bytes32 out) {
        // slither-disable-next-line assembly -- keccak256 of two words in scratch space, without abi.encodePacked's memory copy
        assembly ("memory-safe") {
            mstore(0x00, h)
            mstore(0x20, w)
            out := keccak256(0x00, 0x40)
        }
    }
}
