// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title ITrainingLedger
/// @notice Everything TrainingLedger shares with its callers and its libraries: the
/// structs of its functions and views, its events and its typed errors. The contract
/// and its libraries emit and revert with these (`ITrainingLedger.X`), so the ABI of
/// TrainingLedger (which inherits this interface) decodes every log and revert.
interface ITrainingLedger {
    /// @notice Parameters of a training job, fixed at creation.
    struct JobParams {
        bytes32 configDigest;   // sha256 of the canonical job config (JSON)
        bytes32 configCid;      // its CID's sha2-256 multihash digest
        uint64 configSize;      // its size in bytes (rebuilds the CID with cidVersion)
        bytes32 genesisDigest;  // sha256 of the initial checkpoint: round 1's parent
        bytes32 genesisCid;
        uint64 genesisSize;
        address[] workers;      // at most MAX_WORKERS, no duplicates, no zero address
        address[] aggregators;  // at most MAX_AGGREGATORS, no duplicates, no zero address, no worker
        uint8 quorum;           // identical reveals needed to finalize: a strict majority of the aggregators
        uint32 roundDuration;   // seconds a round accepts submissions
        uint32 proposalWindow;  // seconds of the commit phase, and again of the reveal phase
        uint32 numRounds;       // rounds until the job completes
        uint16 minSubmissions;  // accepted contributions needed to move the model
        uint8 cidVersion;       // 0 or 1: how CIDs are rebuilt from (digest, size)
        uint32 disclosureWindow; // seconds after the round's deadline to `disclose` (0: nothing to disclose)
        uint16 maxWorkers;      // 0: only the named workers; else an open job: anyone may `join` up to this many
        uint128 workerStake;    // wei each worker posts (`stake`, or with `join`) before it submits; 0: none
        uint16 slashBps;        // basis points of a worker's remaining stake slashed per cheating rejection
        uint16 aggregatorBps;   // basis points of each round's reward paid to the finalizing quorum
        uint8 committeeSize;    // aggregators judging each contribution in depth (0, or >= the aggregators: all of them)
        uint8 committeeQuorum;  // identical committee votes that decide a contribution (0: a majority of the committee)
        uint32 voteWindow;      // seconds after a round can be judged during which committee votes count
    }

    /// @notice A worker's submission as it signs it for `submitBatch` (EIP-712 type
    /// `Submission(uint256 jobId,uint32 round,bytes32 parentDigest,bytes32 digest,bytes32 cid,uint64 size,uint64 numSamples)`,
    /// domain name "TrainingLedger", version "1", this chain and contract), with the
    /// worker's index in the roster and its compact signature (EIP-2098: r, and s with
    /// v's parity in the top bit).
    struct SignedUpdate {
        uint8 index;
        bytes32 digest;
        bytes32 cid;
        uint64 size;
        uint64 numSamples;
        bytes32 r;
        bytes32 vs;
    }

    /// @notice What a proposal settles besides the merge: part of its outcome.
    struct Settlement {
        uint64[] credits; // one per worker index of the round (0..numWorkers-1): 0 unless accepted
        uint128 slashed;  // bitmap of worker indexes rejected for a cheating reason
    }

    /// @notice Status of a round as reported by `getRound`.
    enum RoundStatus {
        None,      // not opened (yet)
        Open,      // accepting submissions
        Closed,    // all workers submitted or the deadline passed: commits, then reveals
        Finalized, // a quorum of aggregators agreed; the merged checkpoint is the next parent
        Skipped    // see SkipReason; the parent was kept
    }

    /// @notice Why `closeRound` skipped a round.
    enum SkipReason {
        None,
        TooFewSubmissions, // the deadline passed with fewer than minSubmissions submissions
        NoQuorum           // the proposal window passed (or every commit was revealed) without a quorum
    }

    /// @notice Everything known about a job (see `getJob`).
    struct JobView {
        address creator;
        bytes32 configDigest;
        bytes32 configCid;
        uint64 configSize;
        bytes32 genesisDigest;
        bytes32 genesisCid;
        uint64 genesisSize;
        uint8 quorum;
        uint32 roundDuration;
        uint32 proposalWindow;
        uint32 numRounds;
        uint16 minSubmissions;
        uint8 cidVersion;
        uint16 numWorkers;
        uint16 numAggregators;
        uint32 currentRound;      // the open/closed round; numRounds once completed
        bytes32 parentDigest;     // current global model (the final one once completed)
        bytes32 parentCid;
        uint64 parentSize;
        bool completed;
        uint64 createdBlock;      // where to start reading the job's events
        uint32 disclosureWindow;
        uint16 maxWorkers;        // 0: a closed job (named workers only)
        uint16 activeWorkers;     // workers expected in the current round (joined, not left)
        uint128 workerStake;
        uint16 slashBps;
        uint16 aggregatorBps;
        uint128 reward;           // wei the job was funded with
        uint128 pool;             // wei not paid out yet (returned to the creator at completion)
    }

    /// @notice Everything known about one round (see `getRound`).
    struct RoundView {
        bytes32 parent;
        uint64 deadline;
        uint16 submissions;
        bytes32 commitment;   // running commitment (final once the round is closed)
        RoundStatus status;
        bytes32 mergedDigest; // zero until finalized; == parent when skipped
        bytes32 mergedCid;
        uint64 mergedSize;
        bytes32 outcome;      // the finalizing outcome (zero unless finalized)
        uint16 accepted;      // zero verdicts in the finalizing outcome
        uint16 proposals;     // reveals recorded for the round
        uint16 commits;       // commits recorded for the round
        uint64 commitDeadline; // last second of the commit phase (unless every aggregator committed before)
        uint64 revealDeadline; // last second of the reveal phase
        SkipReason skipReason;
        uint16 disclosed;          // submitters that disclosed (see `disclose`)
        uint64 disclosureDeadline; // last second to disclose (zero when the job has no disclosures)
        uint16 expected;           // workers the round waits for (it closes early once all submitted)
    }

    // ----------------------------------------------------------------- events

    /// @notice A job was created with parameters `params`; round 1 opens in the same
    /// transaction (`RoundOpened`).
    event JobCreated(uint256 indexed jobId, address indexed creator, JobParams params);

    /// @notice Round `round` accepts submissions on top of `parent` until `deadline`.
    event RoundOpened(uint256 indexed jobId, uint32 indexed round, bytes32 parent, uint64 deadline);

    /// @notice A worker submitted its checkpoint for a round.
    event UpdateSubmitted(
        uint256 indexed jobId,
        uint32 indexed round,
        address indexed worker,
        bytes32 digest,
        bytes32 cid,
        uint64 size,
        uint64 numSamples
    );

    /// @notice `relayer` sent workers' signed submissions in one `submitBatch`. `entries`
    /// holds the counted ones in their order, 100 bytes each: worker (20), digest (32),
    /// cid (32), size (8), numSamples (8), big-endian: what an `UpdateSubmitted` carries
    /// (a log topic costs a batch more than all its data).
    event BatchSubmitted(uint256 indexed jobId, uint32 indexed round, address indexed relayer, bytes entries);

    /// @notice A batch carried the submission of `worker`, which had already submitted
    /// (directly, or in another batch): skipped, so a worker racing its relayer cannot
    /// sink everyone else's submission.
    event SubmissionSkipped(uint256 indexed jobId, uint32 indexed round, address indexed worker);

    /// @notice An aggregator committed to a proposal it will reveal once commits close;
    /// `commitDeadline` is the commit phase's last second.
    event ProposalCommitted(
        uint256 indexed jobId,
        uint32 indexed round,
        address indexed aggregator,
        bytes32 commitHash,
        uint64 commitDeadline
    );

    /// @notice An aggregator revealed its committed proposal: a merge and one verdict per
    /// submission; with `salt`, anyone can check it against the commit.
    event ProposalRevealed(
        uint256 indexed jobId,
        uint32 indexed round,
        address indexed aggregator,
        bytes32 mergedDigest,
        bytes32 mergedCid,
        uint64 mergedSize,
        bytes32 outcome,
        uint16 accepted,
        bytes verdicts,
        bytes32 salt
    );

    /// @notice A quorum agreed on `outcome`; the merged checkpoint is the next round's parent.
    event RoundFinalized(
        uint256 indexed jobId,
        uint32 indexed round,
        bytes32 mergedDigest,
        bytes32 mergedCid,
        uint64 mergedSize,
        bytes32 outcome,
        uint16 accepted
    );

    /// @notice A round was skipped for `reason`; `parent` carries over.
    event RoundSkipped(
        uint256 indexed jobId, uint32 indexed round, bytes32 parent, uint16 submissions, SkipReason reason
    );

    /// @notice The last round closed; the final model is (finalDigest, finalCid, finalSize).
    event JobCompleted(uint256 indexed jobId, bytes32 finalDigest, bytes32 finalCid, uint64 finalSize);

    /// @notice `worker` stored what the draw asked of it for `round` and says so in time.
    /// `sealedCid` (with `sealedSize`, in the job's CID version) names an encrypted object
    /// holding the worker's drawn window bundles for its verifiers; zero: nothing sealed.
    event Disclosed(
        uint256 indexed jobId, uint32 indexed round, address indexed worker, bytes32 sealedCid, uint64 sealedSize
    );

    /// @notice The job's creator granted `to` access to the object `cid` (`size` bytes, in
    /// the job's CID version), e.g. a key sealed to `to`. The chain records who granted
    /// what to whom; the object itself stays off chain.
    event AccessGranted(
        uint256 indexed jobId, address indexed to, address indexed by, bytes32 cid, uint64 size
    );

    /// @notice `aggregator` voted, as a member of verification committees of `round`, on
    /// the contributions in `ballot`: 11 bytes an entry, big-endian: submission index (2),
    /// verdict (1), credit (8). Which votes count (members only, the first of each, mined
    /// by the vote deadline) and what they decide is a function of the chain's record
    /// alone, computed alike by every aggregator and auditor (`ledger.protocol.committee`).
    event CommitteeVoted(uint256 indexed jobId, uint32 indexed round, address indexed aggregator, bytes ballot);

    /// @notice `round`'s verification committees were drawn (`drawCommittees`): from
    /// `seed`, the hash of the block 2 after the one that closed the round, exactly as
    /// `ledger.protocol.committee.committees` draws them; votes count until `voteDeadline`.
    event CommitteesDrawn(uint256 indexed jobId, uint32 indexed round, bytes32 seed, uint64 voteDeadline);

    /// @notice The job holds `amount` wei to pay contributions (createJob's value).
    event RewardFunded(uint256 indexed jobId, uint256 amount);

    /// @notice `aggregator`'s reveal of `round` settles `credits` (per worker index) and slashes `slashed`.
    event SettlementRevealed(
        uint256 indexed jobId, uint32 indexed round, address indexed aggregator, uint64[] credits, uint128 slashed
    );

    /// @notice `worker` posted its stake.
    event StakePosted(uint256 indexed jobId, address indexed worker, uint256 amount);

    /// @notice `worker` joined an open job as worker index `index` (0-based); it trains from `fromRound` on,
    /// on private data committed to `dataRoot` (`dataBytes` long; zero for a job on public data).
    event WorkerJoined(
        uint256 indexed jobId, address indexed worker, uint16 index, uint32 fromRound, bytes32 dataRoot, uint64 dataBytes
    );

    /// @notice `worker` left the job; `refund` wei of its stake went back to its balance.
    event WorkerLeft(uint256 indexed jobId, address indexed worker, uint256 refund);

    /// @notice `account` earned `amount` wei in `round`: as an accepted worker, or as an aggregator of the quorum.
    event RewardPaid(uint256 indexed jobId, uint32 indexed round, address indexed account, uint256 amount, bool aggregator);

    /// @notice `amount` wei of `worker`'s stake moved into the job's pool: rejected for cheating in `round`.
    event Slashed(uint256 indexed jobId, uint32 indexed round, address indexed worker, uint256 amount);

    /// @notice The job completed: `worker` gets back `amount` wei of stake.
    event StakeReturned(uint256 indexed jobId, address indexed worker, uint256 amount);

    /// @notice The job completed: `amount` wei left in its pool went back to the creator.
    event PoolReturned(uint256 indexed jobId, address indexed creator, uint256 amount);

    /// @notice `account` withdrew `amount` wei.
    event Withdrawn(address indexed account, uint256 amount);

    // ----------------------------------------------------------------- errors

    /// @notice No job with this id.
    error UnknownJob(uint256 jobId);
    /// @notice The caller is not a registered worker of the job.
    error NotWorker(uint256 jobId, address account);
    /// @notice The caller is not a registered aggregator of the job.
    error NotAggregator(uint256 jobId, address account);
    /// @notice The declared parent is not the round's parent.
    error WrongParent(uint256 jobId, uint32 round, bytes32 expected, bytes32 given);
    /// @notice The round is not the job's current round.
    error WrongRound(uint256 jobId, uint32 current, uint32 given);
    /// @notice The round no longer accepts submissions (its deadline passed).
    error RoundClosed(uint256 jobId, uint32 round, uint64 deadline);
    /// @notice The round still accepts submissions: not every worker submitted and the deadline is ahead.
    error RoundNotClosed(uint256 jobId, uint32 round, uint64 deadline);
    /// @notice This worker already submitted in this round.
    error AlreadySubmitted(uint256 jobId, uint32 round, address worker);
    /// @notice This aggregator already committed in this round.
    error AlreadyCommitted(uint256 jobId, uint32 round, address aggregator);
    /// @notice This aggregator already revealed in this round.
    error AlreadyRevealed(uint256 jobId, uint32 round, address aggregator);
    /// @notice A commit must be a non-zero hash.
    error EmptyCommit(uint256 jobId, uint32 round);
    /// @notice Commits are closed: every aggregator committed, or the commit deadline passed.
    error CommitPhaseClosed(uint256 jobId, uint32 round, uint64 commitDeadline);
    /// @notice Reveals wait for every aggregator's commit or the commit deadline.
    error CommitPhaseOpen(uint256 jobId, uint32 round, uint64 commitDeadline);
    /// @notice The reveal deadline passed; the round can only be skipped now.
    error RevealPhaseOver(uint256 jobId, uint32 round, uint64 revealDeadline);
    /// @notice This aggregator committed nothing in this round, so it cannot reveal.
    error NotCommitted(uint256 jobId, uint32 round, address aggregator);
    /// @notice The revealed outcome and salt do not hash to the aggregator's commit.
    error RevealMismatch(uint256 jobId, uint32 round, address aggregator);
    /// @notice The round is already finalized.
    error RoundAlreadyFinalized(uint256 jobId, uint32 round);
    /// @notice The proposal's commitment does not cover exactly the round's submissions.
    error CommitmentMismatch(uint256 jobId, uint32 round, bytes32 expected, bytes32 given);
    /// @notice A proposal needs one verdict byte per submission.
    error VerdictCountMismatch(uint256 jobId, uint32 round, uint256 expected, uint256 given);
    /// @notice Fewer than minSubmissions accepted: the merged digest must be the parent.
    error MergeMustKeepParent(uint256 jobId, uint32 round, bytes32 parent, bytes32 given);
    /// @notice closeRound: the round can still finalize until `revealDeadline`.
    error ProposalWindowOpen(uint256 jobId, uint32 round, uint64 revealDeadline);
    /// @notice createJob: more workers than the bitmap holds.
    error TooManyWorkers(uint256 count, uint256 max);
    /// @notice createJob: more aggregators than a job holds.
    error TooManyAggregators(uint256 count, uint256 max);
    /// @notice createJob: no named workers in a closed job (an open job may start empty).
    error NoWorkers();
    /// @notice createJob: no aggregators.
    error NoAggregators();
    /// @notice createJob: an open job's `maxWorkers` is below the number of named workers.
    error MaxWorkersBelowNamed(uint256 maxWorkers, uint256 named);
    /// @notice createJob: a basis-point share (`slashBps`, `aggregatorBps`) above 10,000.
    error BpsOutOfRange(uint256 bps);
    /// @notice createJob: `quorum` is not a strict majority of the aggregators (or exceeds them).
    error QuorumNotMajority(uint256 quorum, uint256 aggregators);
    /// @notice createJob: `roundDuration`, `proposalWindow` and `numRounds` must be positive.
    error ZeroDuration();
    /// @notice createJob: `minSubmissions` must be between 1 and the (maximum) number of workers.
    error MinSubmissionsOutOfRange(uint256 minSubmissions, uint256 workers);
    /// @notice createJob: `cidVersion` must be 0 or 1.
    error BadCidVersion(uint256 cidVersion);
    /// @notice createJob: the config and genesis digests must be non-zero.
    error ZeroDigest();
    /// @notice createJob: a zero address among the workers or aggregators.
    error ZeroAddress();
    /// @notice createJob: `account` is named twice (as worker or aggregator), or is both.
    error DuplicateMember(address account);
    /// @notice Only the job's creator may do this (e.g. `grant`).
    error NotCreator(uint256 jobId, address account);
    /// @notice The job completed: no more rounds.
    error JobFinished(uint256 jobId);
    /// @notice The job has no disclosure phase (its disclosureWindow is zero).
    error NothingToDisclose(uint256 jobId);
    /// @notice Only a worker that submitted in the round discloses for it.
    error NotSubmitted(uint256 jobId, uint32 round, address worker);
    /// @notice The round's disclosure deadline has passed.
    error DisclosureClosed(uint256 jobId, uint32 round, uint64 disclosureDeadline);
    /// @notice This worker already disclosed for the round.
    error AlreadyDisclosed(uint256 jobId, uint32 round, address worker);
    /// @notice Commits open once every submitter disclosed or the disclosure deadline passed.
    error DisclosuresPending(uint256 jobId, uint32 round, uint64 disclosureDeadline);
    /// @notice A settlement needs one credit per worker index of the round.
    error CreditCountMismatch(uint256 jobId, uint32 round, uint256 expected, uint256 given);
    /// @notice A settlement credits or slashes worker `index`, which did not submit in the round (or both at once).
    error InvalidSettlement(uint256 jobId, uint32 round, uint256 index);
    /// @notice The stake sent is not the job's `workerStake`.
    error WrongStake(uint256 jobId, uint256 expected, uint256 given);
    /// @notice The job takes no stake, or this worker already posted it.
    error NoStakeDue(uint256 jobId, address worker);
    /// @notice A staked job's worker submits only after posting its stake.
    error StakeMissing(uint256 jobId, address worker);
    /// @notice This worker joined an open job during `round`: it submits from the next round on.
    error NotActiveYet(uint256 jobId, uint32 round, address worker);
    /// @notice This worker left the job.
    error WorkerHasLeft(uint256 jobId, address worker);
    /// @notice Only an open job (maxWorkers > 0) takes joins.
    error JobNotOpen(uint256 jobId);
    /// @notice The job has `maxWorkers` workers already.
    error JobFull(uint256 jobId, uint256 maxWorkers);
    /// @notice This address is already a worker (or an aggregator) of the job.
    error AlreadyJoined(uint256 jobId, address account);
    /// @notice Joins and leaves wait until the current round stops accepting submissions.
    error RoundInProgress(uint256 jobId, uint32 round, uint64 deadline);
    /// @notice A worker whose contribution to `round` is being judged cannot leave until it is.
    error ContributionPending(uint256 jobId, uint32 round, address worker);
    /// @notice No balance to withdraw.
    error NothingToWithdraw(address account);
    /// @notice The roster given to `submitBatch` is not the job's workers in index order (`getWorkers`).
    error RosterMismatch(uint256 jobId);
    /// @notice A batch's entry `position` is not signed by the worker at its index (or names no worker).
    error BadSignature(uint256 jobId, uint32 round, uint256 position);

    /// @notice The transfer of a withdrawal failed (the balance is kept).
    error WithdrawFailed(address account, uint256 amount);
    /// @notice A round of 2**24 seconds (194 days) or more: the round's slot keeps how early it closed in 24 bits.
    error RoundTooLong(uint256 roundDuration);
    /// @notice committeeQuorum above committeeSize, or committeeSize above MAX_WORKERS.
    error CommitteeOutOfRange(uint256 size, uint256 quorum);
    /// @notice The job has no verification committees (committeeSize 0, or at least its aggregators).
    error NoCommittees(uint256 jobId);
    /// @notice The round's committees are not drawn yet (`drawCommittees`), or the round is not the current one.
    error CommitteesNotDrawn(uint256 jobId, uint32 round);
    /// @notice The round's committees were already drawn.
    error AlreadyDrawn(uint256 jobId, uint32 round);
    /// @notice The block that seeds the draw is not mined yet, or is more than 256 blocks old.
    error DrawUnavailable(uint256 jobId, uint32 round, uint256 seedBlock);
    /// @notice The block headers given do not prove the block that closed the round at its deadline.
    error BadHeader(uint256 jobId, uint32 round);
    /// @notice The submissions given do not fold into the round's commitment.
    error SubmissionsMismatch(uint256 jobId, uint32 round);
    /// @notice The round's vote deadline passed.
    error VotePhaseClosed(uint256 jobId, uint32 round, uint64 voteDeadline);
    /// @notice The aggregator already voted in this round (only its first vote counts).
    error AlreadyVoted(uint256 jobId, uint32 round, address aggregator);
    /// @notice A ballot that is not whole 11-byte entries with increasing indexes of the round's submissions.
    error BadBallot(uint256 jobId, uint32 round);
    /// @notice The voter was not drawn for the committee of submission `index`.
    error NotInCommittee(uint256 jobId, uint32 round, address aggregator, uint256 index);
    /// @notice The outcome reaching quorum gives submission `index` a verdict or credit
    /// other than its committee decided: the round cannot finalize it.
    error AgainstCommittee(uint256 jobId, uint32 round, uint256 index);
    /// @notice A contribution is undecided and its committee may still vote until `voteDeadline`.
    error VotesPending(uint256 jobId, uint32 round, uint64 voteDeadline);
}
