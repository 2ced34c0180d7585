// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @notice TrainingLedger's storage: every state variable lives in one `Layout` struct,
/// so the contract and its external libraries (which receive it as a storage pointer)
/// share one definition of it.
library LedgerStorage {
    /// @notice Most workers a job can have: the submitted-bitmap shares the round's slot.
    uint256 internal constant MAX_WORKERS = 128;
    /// @notice Most aggregators a job can have.
    uint256 internal constant MAX_AGGREGATORS = 255;
    uint256 internal constant BPS = 10_000;

    // Worker index slot: index + 1 in the low bits; a flag above stops the submission fast path.
    uint256 internal constant QUEUED = 1 << 255;   // joined an open job: active from the next round
    uint256 internal constant UNSTAKED = 1 << 254; // named in a staked job, stake not posted yet
    uint256 internal constant LEFT = 1 << 253;     // left the job (its stake returned)
    uint256 internal constant INDEX_MASK = 0xff;

    /// @dev Job storage, packed: slot 0 and slot 1 hold all the small fields.
    struct Job {
        address creator;
        uint32 roundDuration;
        uint32 numRounds;
        uint16 minSubmissions;
        uint8 quorum;
        uint8 cidVersion;
        // slot 1
        uint32 currentRound;
        uint8 numWorkers; // 1..128 (fits: MAX_WORKERS = 128)
        uint8 numAggregators;
        bool completed;
        uint64 configSize;
        uint64 genesisSize;
        uint64 parentSize;
        // one slot each
        bytes32 configDigest;
        bytes32 configCid;
        bytes32 genesisDigest;
        bytes32 genesisCid;
        bytes32 parentDigest;
        bytes32 parentCid;
        uint64 createdBlock;
        uint32 proposalWindow;
        uint32 disclosureWindow;
        uint8 maxWorkers;
        uint8 numLeft; // workers (indexes < numWorkers) that left
        uint16 slashBps;
        uint16 aggregatorBps;
        // one slot
        uint128 workerStake;
        uint128 pool;
        uint128 reward;
    }

    /// @dev A closed round's record, written once at finalize/skip.
    struct RoundRecord {
        bytes32 parent;
        bytes32 commitment;
        bytes32 mergedDigest;
        bytes32 mergedCid;
        bytes32 outcome;
        uint64 mergedSize;
        uint64 deadline;
        uint16 submissions;
        uint16 accepted;
        uint16 proposals;
        uint16 commits;
        uint8 status; // RoundStatus
        uint8 skipReason; // SkipReason
        uint128 submitted; // bitmap of worker indexes that submitted
        uint64 commitDeadline;
        uint16 disclosed;  // submitters that disclosed
        uint32 closedEarlyBy; // seconds before the deadline that the last worker submitted (0: closed by the deadline)
        uint8 expected; // workers the round waited for
    }

    /// @dev The packed live state of a round (`RoundSlot`; a struct so one storage pointer serves read and write).
    struct LiveRound {
        uint256 packed;
    }

    /// @dev The running commitment of a job's current round.
    struct Commitment {
        bytes32 value;
    }

    /// @dev The proposal phase of a job's current round: one slot, stale when `round` is
    /// not the current round (then every count is zero and no commit deadline is set).
    struct Phase {
        uint32 round;
        uint64 commitDeadline; // zero until the first commit sets it
        uint16 commits;
        uint16 reveals;
    }

    /// @dev Who disclosed in a job's current round: one slot, stale when `round` is not
    /// the current round (overwritten from round to round, like the phase).
    struct Disclosures {
        uint32 round;
        uint16 count;
        uint128 bitmap; // worker indexes, as the submitted bitmap
    }

    /// @dev Who may submit in a batch: a chained hash over the job's workers in index
    /// order (so a batch checks the roster it is given with one read instead of a lookup
    /// per signer) and the bitmap of the active ones (no queued, unstaked or left flag).
    struct Roster {
        bytes32 hash;
        uint128 active;
    }

    struct Layout {
        uint256 jobCount;
        mapping(uint256 jobId => Job) jobs;
        mapping(uint256 jobId => address[]) workers;
        mapping(uint256 jobId => address[]) aggregators;
        /// @dev index + 1 (0 = not a worker of the job), with the flags above
        mapping(uint256 jobId => mapping(address worker => uint256)) workerIndex;
        mapping(uint256 jobId => mapping(address aggregator => bool)) isAggregator;
        /// @dev the packed live state (`RoundSlot`) of the round whose parent is the key
        mapping(uint256 jobId => mapping(bytes32 parent => LiveRound)) live;
        /// @dev running commitment of the job's current round
        mapping(uint256 jobId => Commitment) commitment;
        mapping(uint256 jobId => mapping(uint32 round => RoundRecord)) rounds;
        /// @dev proposal phase of the job's current round
        mapping(uint256 jobId => Phase) phase;
        /// @dev commit hash an aggregator committed for a round (zero = none)
        mapping(uint256 jobId => mapping(uint32 round => mapping(address aggregator => bytes32))) commits;
        /// @dev outcome an aggregator revealed for a round (zero = none)
        mapping(uint256 jobId => mapping(uint32 round => mapping(address aggregator => bytes32))) proposed;
        mapping(uint256 jobId => mapping(uint32 round => mapping(bytes32 outcome => uint256))) votes;
        /// @dev disclosures of the job's current round
        mapping(uint256 jobId => Disclosures) disclosures;
        /// @dev a worker's stake still held by the job (after slashes)
        mapping(uint256 jobId => mapping(address worker => uint256)) stakes;
        /// @dev wei an account may `withdraw`
        mapping(address account => uint256) balances;
        /// @dev the job's roster hash and active workers (see `submitBatch`)
        mapping(uint256 jobId => Roster) rosters;
    }
}
