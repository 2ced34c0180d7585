// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title TrainingLedger
/// @notice Anchors federated training on chain: workers submit checkpoints (by digest and
/// CID) for a round, aggregators verify them off chain, merge the accepted ones and
/// propose the result by commit-reveal; a round finalizes when `quorum` aggregators
/// revealed bit-for-bit the same outcome (merged checkpoint + every verdict), and the
/// next round starts from the merged checkpoint. Every state change emits an event so
/// anyone can audit a job from the chain alone.
///
/// @dev Round lifecycle: Open -> Closed (every worker submitted, or the deadline passed)
/// -> Finalized (quorum of identical reveals) or Skipped (`closeRound`: after the deadline
/// with fewer than `minSubmissions`, or after the proposal window without a quorum; the
/// parent is kept and the next round opens). Finalizing (or skipping) round `numRounds`
/// completes the job.
///
/// Proposals are commit-reveal, so k agreeing proposals are k independent verifications:
/// - commit phase: from the round's close until every aggregator committed or the commit
///   deadline, `min(first commit, round deadline) + proposalWindow`, each aggregator commits
///   keccak256(abi.encodePacked(outcome, salt, aggregator)). Nothing about its outcome is
///   public yet, and its address in the hash stops another from replaying the commit.
/// - reveal phase: from the end of the commit phase until the reveal deadline
///   (commit deadline + proposalWindow), each committed aggregator reveals its outcome and
///   salt; commits are closed by then, so a revealed outcome cannot be copied into one.
/// - after the reveal deadline (or once every commit is revealed) without a quorum,
///   anyone may `closeRound`: the round is skipped, the parent kept, the next round opens.
///
/// Disclosure (jobs with `disclosureWindow` > 0): once the round is closed, each worker
/// that submitted stores what the verifiers' draw asks of it (the snapshots of its drawn
/// transcript segments, the windows of private data) and calls `disclose`, until the
/// round's close (its last submission, or its deadline) + `disclosureWindow`. Commits
/// open once every submitter disclosed or that deadline passed, and the commit phase is
/// timed from there: whether a worker disclosed in time is read from the chain, alike by
/// every aggregator and the auditor.
///
/// Gas layout (a worker's submission is the hot path, see DESIGN.md "Gas"):
/// - the live state of the current round is ONE packed slot keyed by (job, parent digest):
///   round number, deadline, submission count, status, a bitmap of who submitted (so at
///   most 128 workers a job), the job's worker count and, once the last worker submitted,
///   how long before the deadline the round closed. It is overwritten from round to
///   round, so a submission only rewrites existing slots; a wrong parent finds an empty slot.
/// - the running commitment over the round's submissions is one slot per job, seeded
///   non-zero (keccak256(abi.encode(jobId, round))) when the round opens.
/// - a worker's index is one mapping slot; CIDs, sizes and sample counts live only in
///   events. Per-round records for the views are written once, at finalize or skip,
///   and paid by the aggregator (or caller of closeRound), not by the workers.
/// - the proposal phase of the current round (commit deadline, commit and reveal counts)
///   is one packed slot per job, overwritten from round to round like the commitment.
///
/// Credit, rewards and stakes (see README "Who is paid"): every reveal carries a
/// `Settlement`: one credit per worker index (what its accepted contribution is worth,
/// quantised so honest verifiers agree bit for bit; zero when rejected or absent) and a
/// bitmap of the workers it slashes (rejected for a cheating reason). Both are part of
/// the committed outcome, so the quorum agrees on them as on the merge. A job funded
/// with a reward (`msg.value` of `createJob`) pays, when a round finalizes, its share
/// `pool / rounds left` to the round's credited workers pro rata to credit and
/// `aggregatorBps` of it, in equal parts, to the aggregators whose reveal is the
/// finalized outcome. A skipped round's share stays in the pool for the later rounds;
/// what is left when the job completes (dust, rounds without credit) goes back to the
/// creator. A slash moves `slashBps` of the worker's remaining stake into the pool.
/// Payments are credited to balances and pulled with `withdraw` (checks-effects-
/// interactions: the only external call, after the balance is zeroed).
///
/// Open jobs (`maxWorkers` > 0) accept `join` (posting `workerStake`) from anyone while
/// the current round is not open for submissions (closed: being judged); a joiner
/// trains from the next round on. `leave` (same window, not while its own contribution
/// is being judged) returns what is left of its stake. Stakes come back to every
/// worker when the job completes.
contract TrainingLedger {
    // ------------------------------------------------------------------ types

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

    /// @dev The packed live state of a round (a struct so one storage pointer serves read and write).
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

    /// @dev A proposal's merge and its outcome, kept together in memory.
    struct Merge {
        bytes32 digest;
        bytes32 cid;
        uint64 size;
        bytes32 outcome;
        uint16 accepted;
    }

    // -------------------------------------------------------------- constants

    /// @notice Most workers a job can have: the submitted-bitmap shares the round's slot.
    uint256 public constant MAX_WORKERS = 128;
    /// @notice Most aggregators a job can have.
    uint256 public constant MAX_AGGREGATORS = 255;

    // Live round slot: | closed early by (32) @224 | workers (8) @216 | bitmap (128) @88 | status (8) @80 |
    //                  count (8) @72 | deadline (40) @32 | round (32) @0 |
    uint256 private constant DEADLINE_SHIFT = 32;
    uint256 private constant COUNT_SHIFT = 72;
    uint256 private constant STATUS_SHIFT = 80;
    uint256 private constant BITMAP_SHIFT = 88;
    uint256 private constant WORKERS_SHIFT = 216;
    uint256 private constant EARLY_SHIFT = 224;
    uint256 private constant COUNT_ONE = 1 << COUNT_SHIFT;
    uint256 private constant LIVE_OPEN = 1 << STATUS_SHIFT;
    uint256 private constant STATUS_MASK = 0xff << STATUS_SHIFT;
    uint256 private constant ROUND_MASK = 0xffffffff;

    // Worker index slot: index + 1 in the low bits; a flag above stops the submission fast path.
    uint256 private constant QUEUED = 1 << 255;   // joined an open job: active from the next round
    uint256 private constant UNSTAKED = 1 << 254; // named in a staked job, stake not posted yet
    uint256 private constant LEFT = 1 << 253;     // left the job (its stake returned)
    uint256 private constant INDEX_MASK = 0xff;
    uint256 private constant BPS = 10_000;

    /// @notice EIP-712 type hash of a worker's `Submission` (see `SignedUpdate`).
    bytes32 public constant SUBMISSION_TYPEHASH = keccak256(
        "Submission(uint256 jobId,uint32 round,bytes32 parentDigest,bytes32 digest,bytes32 cid,uint64 size,uint64 numSamples)"
    );
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    /// @dev bytes per counted entry of `BatchSubmitted`
    uint256 private constant BATCH_ENTRY = 100;
    // secp256k1n / 2: a higher s is the malleable twin of a valid signature (EIP-2)
    uint256 private constant HALF_N = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    bytes32 private immutable _cachedDomain;
    uint256 private immutable _cachedChainId;

    // ---------------------------------------------------------------- storage

    uint256 private _jobCount;
    mapping(uint256 jobId => Job) private _jobs;
    mapping(uint256 jobId => address[]) private _workers;
    mapping(uint256 jobId => address[]) private _aggregators;
    /// @dev index + 1 (0 = not a worker of the job)
    mapping(uint256 jobId => mapping(address worker => uint256)) private _workerIndex;
    mapping(uint256 jobId => mapping(address aggregator => bool)) private _isAggregator;
    /// @dev the packed live state of the round whose parent is the key
    mapping(uint256 jobId => mapping(bytes32 parent => LiveRound)) private _live;
    /// @dev running commitment of the job's current round
    mapping(uint256 jobId => Commitment) private _commitment;
    mapping(uint256 jobId => mapping(uint32 round => RoundRecord)) private _rounds;
    /// @dev proposal phase of the job's current round
    mapping(uint256 jobId => Phase) private _phase;
    /// @dev commit hash an aggregator committed for a round (zero = none)
    mapping(uint256 jobId => mapping(uint32 round => mapping(address aggregator => bytes32))) private _commits;
    /// @dev outcome an aggregator revealed for a round (zero = none)
    mapping(uint256 jobId => mapping(uint32 round => mapping(address aggregator => bytes32))) private _proposed;
    mapping(uint256 jobId => mapping(uint32 round => mapping(bytes32 outcome => uint256))) private _votes;
    /// @dev disclosures of the job's current round
    mapping(uint256 jobId => Disclosures) private _disclosures;
    /// @dev a worker's stake still held by the job (after slashes)
    mapping(uint256 jobId => mapping(address worker => uint256)) private _stakes;
    /// @dev wei an account may `withdraw`
    mapping(address account => uint256) private _balances;
    /// @dev the job's roster hash and active workers (see `submitBatch`)
    mapping(uint256 jobId => Roster) private _rosters;

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
    event Disclosed(uint256 indexed jobId, uint32 indexed round, address indexed worker);

    /// @notice `aggregator` voted, as a member of verification committees of `round`, on
    /// the contributions in `ballot`: 11 bytes an entry, big-endian: submission index (2),
    /// verdict (1), credit (8). Which votes count (members only, the first of each, mined
    /// by the vote deadline) and what they decide is a function of the chain's record
    /// alone, computed alike by every aggregator and auditor (`ledger.committee`).
    event CommitteeVoted(uint256 indexed jobId, uint32 indexed round, address indexed aggregator, bytes ballot);

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
    /// @notice createJob: a parameter is out of range; `reason` says which.
    error InvalidJobParams(string reason);
    /// @notice createJob: more workers than the bitmap holds.
    error TooManyWorkers(uint256 count, uint256 max);
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

    // -------------------------------------------------------------- modifiers

    modifier jobExists(uint256 jobId) {
        if (_jobs[jobId].creator == address(0)) revert UnknownJob(jobId);
        _;
    }

    modifier onlyAggregator(uint256 jobId) {
        if (!_isAggregator[jobId][msg.sender]) revert NotAggregator(jobId, msg.sender);
        _;
    }

    constructor() {
        _cachedChainId = block.chainid;
        _cachedDomain = _buildDomain();
    }

    // ------------------------------------------------------------ transitions

    /// @notice Create a training job and open its round 1 on top of the genesis checkpoint.
    /// The value sent is the job's reward pool (see `Settlement`).
    /// @param p the job's parameters (see `JobParams`)
    /// @return jobId the new job's id (ids start at 1)
    function createJob(JobParams calldata p) external payable returns (uint256 jobId) {
        _validate(p);
        jobId = ++_jobCount;
        Job storage j = _jobs[jobId];
        j.creator = msg.sender;
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
        j.pool = uint128(msg.value);
        j.reward = uint128(msg.value);
        j.configSize = p.configSize;
        j.genesisSize = p.genesisSize;
        j.parentSize = p.genesisSize;
        j.configDigest = p.configDigest;
        j.configCid = p.configCid;
        j.genesisDigest = p.genesisDigest;
        j.genesisCid = p.genesisCid;
        j.parentDigest = p.genesisDigest;
        j.parentCid = p.genesisCid;

        address[] storage ws = _workers[jobId];
        uint256 flag = p.workerStake != 0 ? UNSTAKED : 0;
        bytes32 roster;
        for (uint256 i = 0; i < p.workers.length; ++i) {
            address w = p.workers[i];
            if (w == address(0)) revert InvalidJobParams("zero worker address");
            if (_workerIndex[jobId][w] != 0) revert InvalidJobParams("duplicate worker");
            _workerIndex[jobId][w] = (i + 1) | flag;
            ws.push(w);
            roster = _chain(roster, w);
        }
        _rosters[jobId] = Roster({
            hash: roster,
            active: flag == 0 ? uint128((uint256(1) << p.workers.length) - 1) : 0
        });
        address[] storage as_ = _aggregators[jobId];
        for (uint256 i = 0; i < p.aggregators.length; ++i) {
            address a = p.aggregators[i];
            if (a == address(0)) revert InvalidJobParams("zero aggregator address");
            if (_isAggregator[jobId][a]) revert InvalidJobParams("duplicate aggregator");
            // A worker who also judges would vote on its own contribution.
            if (_workerIndex[jobId][a] != 0) revert InvalidJobParams("an address is both a worker and an aggregator");
            _isAggregator[jobId][a] = true;
            as_.push(a);
        }
        emit JobCreated(jobId, msg.sender, p);
        if (msg.value != 0) emit RewardFunded(jobId, msg.value);
        _openRound(jobId, 1, p.genesisDigest, p.roundDuration);
    }

    /// @notice Post the job's `workerStake`, as a worker named at creation, before submitting.
    /// @param jobId the job
    function stake(uint256 jobId) external payable jobExists(jobId) {
        Job storage j = _jobs[jobId];
        uint256 slot = _workerIndex[jobId][msg.sender];
        if (slot == 0) revert NotWorker(jobId, msg.sender);
        if (j.completed) revert JobFinished(jobId);
        if (slot & LEFT != 0) revert WorkerHasLeft(jobId, msg.sender);
        if (slot & UNSTAKED == 0) revert NoStakeDue(jobId, msg.sender);
        if (msg.value != j.workerStake) revert WrongStake(jobId, j.workerStake, msg.value);
        _workerIndex[jobId][msg.sender] = slot & ~UNSTAKED;
        _rosters[jobId].active |= uint128(1) << ((slot & INDEX_MASK) - 1);
        _stakes[jobId][msg.sender] = msg.value;
        emit StakePosted(jobId, msg.sender, msg.value);
    }

    /// @notice Join an open job, posting its `workerStake`, while its current round is not
    /// accepting submissions; the joiner is a worker from the next round on.
    /// @param jobId the job
    /// @param dataRoot for a job on private data, the Merkle root of the joiner's text
    ///        (`ledger data commit`); zero otherwise
    /// @param dataBytes that text's length
    function join(uint256 jobId, bytes32 dataRoot, uint64 dataBytes) external payable jobExists(jobId) {
        Job storage j = _jobs[jobId];
        if (j.maxWorkers == 0) revert JobNotOpen(jobId);
        if (j.completed) revert JobFinished(jobId);
        if (_workerIndex[jobId][msg.sender] != 0 || _isAggregator[jobId][msg.sender]) {
            revert AlreadyJoined(jobId, msg.sender);
        }
        address[] storage ws = _workers[jobId];
        if (ws.length >= j.maxWorkers) revert JobFull(jobId, j.maxWorkers);
        _requireBetweenRounds(jobId, j);
        if (msg.value != j.workerStake) revert WrongStake(jobId, j.workerStake, msg.value);
        ws.push(msg.sender);
        _workerIndex[jobId][msg.sender] = ws.length | QUEUED;
        Roster storage ro = _rosters[jobId];
        ro.hash = _chain(ro.hash, msg.sender);
        if (msg.value != 0) {
            _stakes[jobId][msg.sender] = msg.value;
            emit StakePosted(jobId, msg.sender, msg.value);
        }
        emit WorkerJoined(jobId, msg.sender, uint16(ws.length - 1), j.currentRound + 1, dataRoot, dataBytes);
    }

    /// @notice Leave an open job while its current round is not accepting submissions, and
    /// not while the caller's own contribution to it is being judged; what is left of the
    /// stake goes to the caller's balance.
    /// @param jobId the job
    function leave(uint256 jobId) external jobExists(jobId) {
        Job storage j = _jobs[jobId];
        if (j.maxWorkers == 0) revert JobNotOpen(jobId);
        if (j.completed) revert JobFinished(jobId);
        uint256 slot = _workerIndex[jobId][msg.sender];
        if (slot == 0) revert NotWorker(jobId, msg.sender);
        if (slot & LEFT != 0) revert WorkerHasLeft(jobId, msg.sender);
        uint256 live = _requireBetweenRounds(jobId, j);
        uint256 index = slot & INDEX_MASK;
        if (slot & QUEUED == 0 && (live >> (BITMAP_SHIFT + index - 1)) & 1 == 1) {
            revert ContributionPending(jobId, j.currentRound, msg.sender);
        }
        _workerIndex[jobId][msg.sender] = slot | LEFT;
        _rosters[jobId].active &= ~(uint128(1) << (index - 1));
        if (slot & QUEUED == 0) j.numLeft += 1; // a queued one is counted when its round opens
        uint256 refund = _stakes[jobId][msg.sender];
        _stakes[jobId][msg.sender] = 0;
        _balances[msg.sender] += refund;
        emit WorkerLeft(jobId, msg.sender, refund);
    }

    /// @notice Withdraw everything credited to the caller: rewards, returned stakes, a
    /// returned pool.
    function withdraw() external {
        uint256 amount = _balances[msg.sender];
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        _balances[msg.sender] = 0;
        emit Withdrawn(msg.sender, amount);
        (bool ok,) = payable(msg.sender).call{value: amount}("");
        if (!ok) revert WithdrawFailed(msg.sender, amount);
    }

    /// @notice Submit a worker's checkpoint for the job's current round.
    /// @dev The hot path: three cold reads (worker index, live round slot, commitment),
    /// two rewrites and one event. Any failed check falls through to `_rejectSubmission`,
    /// which reads whatever it needs to revert with a precise error.
    /// @param jobId the job
    /// @param round the current round (must match)
    /// @param parentDigest the round's parent digest the checkpoint was trained from
    /// @param digest sha256 of the checkpoint bytes
    /// @param cid the checkpoint CID's sha2-256 multihash digest
    /// @param size the checkpoint's size in bytes
    /// @param numSamples training samples behind this update (FedAvg weight)
    function submitUpdate(
        uint256 jobId,
        uint32 round,
        bytes32 parentDigest,
        bytes32 digest,
        bytes32 cid,
        uint64 size,
        uint64 numSamples
    ) external {
        uint256 index = _workerIndex[jobId][msg.sender];
        LiveRound storage slot = _live[jobId][parentDigest];
        uint256 live = slot.packed;
        uint256 bit;
        bool notActive;
        unchecked {
            bit = (1 << (BITMAP_SHIFT - 1)) << index; // index <= 128: bit <= 215
            notActive = index - 1 >= MAX_WORKERS; // none, or a flag (queued, unstaked, left)
        }
        if (
            notActive ||
            live & (STATUS_MASK | ROUND_MASK) != LIVE_OPEN | round ||
            block.timestamp > uint40(live >> DEADLINE_SHIFT) ||
            live & bit != 0
        ) {
            _rejectSubmission(jobId, round, parentDigest, index);
        }
        // effects: count + 1 and the worker's bit (the count never exceeds 128 < 256); the
        // last worker also records how early the round closed (its timestamp <= deadline)
        unchecked {
            uint256 next = live + COUNT_ONE + bit;
            if ((next >> COUNT_SHIFT) & 0xff == (live >> WORKERS_SHIFT) & 0xff) {
                next |= (uint256(uint40(live >> DEADLINE_SHIFT)) - block.timestamp) << EARLY_SHIFT;
            }
            slot.packed = next;
        }
        // the fold and the event written directly into free memory: what
        // `keccak256(abi.encodePacked(c, msg.sender, digest, cid, size, numSamples))` and
        // `emit UpdateSubmitted(...)` give, without the encoder's copies (keeps this path
        // well under 40,000 gas)
        Commitment storage c = _commitment[jobId];
        bytes32 topic = UpdateSubmitted.selector;
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, sload(c.slot))
            mstore(add(m, 0x20), shl(96, caller()))
            mstore(add(m, 0x34), digest)
            mstore(add(m, 0x54), cid)
            mstore(add(m, 0x74), shl(192, size))
            mstore(add(m, 0x7c), shl(192, numSamples))
            sstore(c.slot, keccak256(m, 0x84))
            mstore(m, digest)
            mstore(add(m, 0x20), cid)
            mstore(add(m, 0x40), size)
            mstore(add(m, 0x60), numSamples)
            log4(m, 0x80, topic, jobId, round, caller())
        }
    }

    /// @notice Submit many workers' checkpoints for the job's current round in one
    /// transaction: anyone may relay them, each signed by its worker (see `SignedUpdate`).
    /// The checks are `submitUpdate`'s (a worker of the job, active, the round's parent,
    /// before the deadline, once) and every counted entry folds into the round's
    /// commitment exactly as a direct submission does; the counted entries are logged
    /// together in one `BatchSubmitted`. An entry whose worker already submitted is skipped
    /// (`SubmissionSkipped`); any other failed check reverts the batch with the precise
    /// error (a relayer simulates first and drops the entry).
    /// @dev Per entry: one signature recovery, no storage access (the roster is checked
    /// against its stored hash once, activity against one bitmap) and 100 bytes of log
    /// data; the live slot and the commitment are written once for the batch.
    /// @param jobId the job
    /// @param round the current round (must match)
    /// @param parentDigest the round's parent digest every entry was trained from
    /// @param roster the job's workers in index order (`getWorkers`)
    /// @param updates the signed submissions, in the order they are counted
    function submitBatch(
        uint256 jobId,
        uint32 round,
        bytes32 parentDigest,
        address[] calldata roster,
        SignedUpdate[] calldata updates
    ) external {
        Roster storage ro = _rosters[jobId];
        if (_rosterHashOf(roster) != ro.hash) {
            if (_jobs[jobId].creator == address(0)) revert UnknownJob(jobId);
            revert RosterMismatch(jobId);
        }
        LiveRound storage slot = _live[jobId][parentDigest];
        uint256 live = slot.packed;
        if (live & (STATUS_MASK | ROUND_MASK) != LIVE_OPEN | round || block.timestamp > uint40(live >> DEADLINE_SHIFT)) {
            _rejectSubmission(jobId, round, parentDigest, 1); // a valid index: the round's own error
        }
        uint256 active = ro.active;
        bytes32 domain = _domainSeparator();
        bytes32 c = _commitment[jobId].value;
        bytes memory entries = new bytes(updates.length * BATCH_ENTRY);
        uint256 counted;
        for (uint256 k = 0; k < updates.length; ++k) {
            SignedUpdate calldata u = updates[k];
            uint256 i = u.index;
            if (i >= roster.length) revert BadSignature(jobId, round, k);
            address w = roster[i];
            if (_signer(domain, jobId, round, parentDigest, u) != w) revert BadSignature(jobId, round, k);
            if ((active >> i) & 1 == 0) _rejectInactive(jobId, w);
            uint256 bit;
            unchecked {
                bit = uint256(1) << (BITMAP_SHIFT + i);
            }
            if (live & bit != 0) {
                emit SubmissionSkipped(jobId, round, w);
                continue;
            }
            c = _record(entries, counted, c, w, u);
            unchecked {
                live += COUNT_ONE + bit;
                ++counted;
            }
        }
        if (counted != 0) {
            uint256 count = (live >> COUNT_SHIFT) & 0xff;
            if (count == (live >> WORKERS_SHIFT) & 0xff) {
                unchecked {
                    live |= (uint256(uint40(live >> DEADLINE_SHIFT)) - block.timestamp) << EARLY_SHIFT;
                }
            }
            slot.packed = live;
            _commitment[jobId].value = c;
        }
        assembly ("memory-safe") {
            mstore(entries, mul(counted, 100)) // BATCH_ENTRY: only the counted entries are logged
        }
        emit BatchSubmitted(jobId, round, msg.sender, entries);
    }

    /// @notice Commit to a proposal for a closed round, before anyone can see another's:
    /// `commitHash = keccak256(abi.encodePacked(outcome, salt, msg.sender))` with
    /// `outcome = keccak256(abi.encodePacked(mergedDigest, mergedCid, mergedSize, verdicts))`
    /// and a secret random `salt` the aggregator keeps until it reveals. The first commit
    /// fixes the commit deadline at `min(now, round deadline) + proposalWindow`.
    /// @param jobId the job
    /// @param round the job's current round, which must be closed
    /// @param commitHash the hash above (non-zero)
    function commitProposal(uint256 jobId, uint32 round, bytes32 commitHash)
        external
        jobExists(jobId)
        onlyAggregator(jobId)
    {
        Job storage j = _jobs[jobId];
        _checkCurrentRound(jobId, j, _rounds[jobId][round], round);
        uint256 live = _live[jobId][j.parentDigest].packed;
        _requireClosed(jobId, round, live);
        if (commitHash == bytes32(0)) revert EmptyCommit(jobId, round);
        if (_commits[jobId][round][msg.sender] != 0) revert AlreadyCommitted(jobId, round, msg.sender);
        Phase memory ph = _phaseOf(jobId, round);
        // the proposal phase starts after the disclosures (at the round's deadline without them)
        uint64 proposalStart = _proposalStart(live, j.disclosureWindow);
        if (j.disclosureWindow != 0 && block.timestamp <= proposalStart && !_allDisclosed(jobId, round, live)) {
            revert DisclosuresPending(jobId, round, proposalStart);
        }
        uint64 commitDeadline = _commitDeadline(ph, proposalStart, j.proposalWindow);
        if (block.timestamp > commitDeadline) revert CommitPhaseClosed(jobId, round, commitDeadline);
        if (ph.commits == 0 && block.timestamp < proposalStart) {
            // closed early (every worker submitted, and disclosed): the window runs from the first commit
            commitDeadline = uint64(block.timestamp) + j.proposalWindow;
        }
        _phase[jobId] = Phase({round: round, commitDeadline: commitDeadline, commits: ph.commits + 1, reveals: 0});
        _commits[jobId][round][msg.sender] = commitHash;
        emit ProposalCommitted(jobId, round, msg.sender, commitHash, commitDeadline);
    }

    /// @notice Reveal the committed proposal once commits are closed (every aggregator
    /// committed, or the commit deadline passed) and before the reveal deadline: the
    /// commitment over the round's submissions, one verdict byte per submission
    /// (0 = accepted) in submission order, the merged checkpoint, and the commit's salt.
    /// The reveal that brings an outcome to `quorum` finalizes the round and opens the
    /// next one (or completes the job).
    /// @param jobId the job
    /// @param round the job's current round
    /// @param submissionsCommitment the round's final commitment (see `getRound`)
    /// @param verdicts one byte per submission, in submission (event) order
    /// @param mergedDigest sha256 of the merged checkpoint (the parent if fewer than
    ///        minSubmissions verdicts are 0)
    /// @param mergedCid the merged checkpoint CID's sha2-256 multihash digest
    /// @param mergedSize the merged checkpoint's size in bytes
    /// @param salt the secret the commit hashed with the outcome
    /// @param s the credits and slashes (see `Settlement`); the outcome is
    ///        keccak256(abi.encodePacked(mergedDigest, mergedCid, mergedSize, verdicts,
    ///        keccak256(abi.encode(s.credits, s.slashed))))
    function revealProposal(
        uint256 jobId,
        uint32 round,
        bytes32 submissionsCommitment,
        bytes calldata verdicts,
        bytes32 mergedDigest,
        bytes32 mergedCid,
        uint64 mergedSize,
        bytes32 salt,
        Settlement calldata s
    ) external jobExists(jobId) onlyAggregator(jobId) {
        (uint256 live, uint16 accepted) = _checkProposal(jobId, round, submissionsCommitment, verdicts, mergedDigest);
        _checkSettlement(jobId, round, live, s);
        Merge memory m = Merge({
            digest: mergedDigest,
            cid: mergedCid,
            size: mergedSize,
            outcome: keccak256(
                abi.encodePacked(mergedDigest, mergedCid, mergedSize, verdicts, keccak256(abi.encode(s.credits, s.slashed)))
            ),
            accepted: accepted
        });
        _checkReveal(jobId, round, m.outcome, salt);
        if (_recordReveal(jobId, round, m, verdicts, salt, s)) {
            _finalize(jobId, round, live, m);
            _settle(jobId, round, m.outcome, s);
            _advance(jobId, _jobs[jobId], round);
        }
    }

    /// @notice Say, as a worker that submitted in the closed `round`, that what the
    /// verifiers' draw asks of it is stored (its drawn snapshots; its drawn windows for
    /// private data), before the round's deadline + the job's disclosureWindow. Every
    /// aggregator and the auditor then judge "disclosed in time" from this record.
    /// @param jobId the job
    /// @param round the job's current round, closed
    function disclose(uint256 jobId, uint32 round) external jobExists(jobId) {
        Job storage j = _jobs[jobId];
        if (j.disclosureWindow == 0) revert NothingToDisclose(jobId);
        uint256 index = _workerIndex[jobId][msg.sender] & INDEX_MASK;
        if (index == 0) revert NotWorker(jobId, msg.sender);
        _checkCurrentRound(jobId, j, _rounds[jobId][round], round);
        uint256 live = _live[jobId][j.parentDigest].packed;
        _requireClosed(jobId, round, live);
        if ((live >> (BITMAP_SHIFT + index - 1)) & 1 == 0) revert NotSubmitted(jobId, round, msg.sender);
        uint64 deadline = _proposalStart(live, j.disclosureWindow);
        if (block.timestamp > deadline) revert DisclosureClosed(jobId, round, deadline);
        Disclosures memory d = _disclosuresOf(jobId, round);
        uint128 bit = uint128(1) << (index - 1);
        if (d.bitmap & bit != 0) revert AlreadyDisclosed(jobId, round, msg.sender);
        _disclosures[jobId] = Disclosures({round: round, count: d.count + 1, bitmap: d.bitmap | bit});
        emit Disclosed(jobId, round, msg.sender);
    }

    /// @notice Vote, as an aggregator, on the contributions of `round` whose verification
    /// committee drew you (see `CommitteeVoted`).
    /// @param jobId the job
    /// @param round the round voted on
    /// @param ballot the packed entries
    function vote(uint256 jobId, uint32 round, bytes calldata ballot) external onlyAggregator(jobId) {
        emit CommitteeVoted(jobId, round, msg.sender, ballot);
    }

    /// @notice Skip a round that cannot move the model: past its deadline with fewer than
    /// minSubmissions submissions (`TooFewSubmissions`), or without a quorum once the
    /// reveal deadline passed or every commit was revealed after the commit phase
    /// (`NoQuorum`). The parent carries over to the next round (or becomes the final
    /// model if this was the last round). Anyone may call it.
    /// @param jobId the job
    /// @param round the job's current round
    function closeRound(uint256 jobId, uint32 round) external jobExists(jobId) {
        Job storage j = _jobs[jobId];
        RoundRecord storage rec = _rounds[jobId][round];
        _checkCurrentRound(jobId, j, rec, round);
        bytes32 parent = j.parentDigest;
        uint256 live = _live[jobId][parent].packed;
        uint64 deadline = uint40(live >> DEADLINE_SHIFT);
        uint256 count = (live >> COUNT_SHIFT) & 0xff;
        SkipReason reason;
        Phase memory ph = _phaseOf(jobId, round);
        uint64 commitDeadline = _commitDeadline(ph, _proposalStart(live, j.disclosureWindow), j.proposalWindow);
        if (count < j.minSubmissions) {
            if (block.timestamp <= deadline) revert RoundNotClosed(jobId, round, deadline);
            reason = SkipReason.TooFewSubmissions;
        } else {
            _requireClosed(jobId, round, live);
            uint64 revealDeadline = commitDeadline + j.proposalWindow;
            bool commitsClosed = ph.commits == j.numAggregators || block.timestamp > commitDeadline;
            if (block.timestamp <= revealDeadline && !(commitsClosed && ph.reveals == ph.commits)) {
                revert ProposalWindowOpen(jobId, round, revealDeadline);
            }
            reason = SkipReason.NoQuorum;
        }

        _live[jobId][parent].packed = live & ~STATUS_MASK;
        _writeRecord(rec, parent, _commitment[jobId].value, live, RoundStatus.Skipped, ph, commitDeadline);
        rec.disclosed = _disclosuresOf(jobId, round).count;
        rec.skipReason = uint8(reason);
        rec.mergedDigest = parent;
        rec.mergedCid = j.parentCid;
        rec.mergedSize = j.parentSize;
        emit RoundSkipped(jobId, round, parent, uint16(count), reason);
        _advance(jobId, j, round);
    }

    // ------------------------------------------------------------------ views

    /// @notice The EIP-712 domain separator workers sign their `Submission` under.
    /// @return the separator for this chain and contract
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparator();
    }

    /// @notice Number of jobs created; job ids run from 1 to jobCount().
    /// @return the number of jobs
    function jobCount() external view returns (uint256) {
        return _jobCount;
    }

    /// @notice A job's parameters and progress.
    /// @param jobId the job
    /// @return v see `JobView`
    function getJob(uint256 jobId) external view jobExists(jobId) returns (JobView memory v) {
        Job storage j = _jobs[jobId];
        v.creator = j.creator;
        v.configDigest = j.configDigest;
        v.configCid = j.configCid;
        v.configSize = j.configSize;
        v.genesisDigest = j.genesisDigest;
        v.genesisCid = j.genesisCid;
        v.genesisSize = j.genesisSize;
        v.quorum = j.quorum;
        v.roundDuration = j.roundDuration;
        v.proposalWindow = j.proposalWindow;
        v.numRounds = j.numRounds;
        v.minSubmissions = j.minSubmissions;
        v.cidVersion = j.cidVersion;
        v.numWorkers = j.numWorkers;
        v.numAggregators = j.numAggregators;
        v.currentRound = j.currentRound;
        v.parentDigest = j.parentDigest;
        v.parentCid = j.parentCid;
        v.parentSize = j.parentSize;
        v.completed = j.completed;
        v.createdBlock = j.createdBlock;
        v.disclosureWindow = j.disclosureWindow;
        v.maxWorkers = j.maxWorkers;
        v.activeWorkers = j.numWorkers - j.numLeft;
        v.workerStake = j.workerStake;
        v.slashBps = j.slashBps;
        v.aggregatorBps = j.aggregatorBps;
        v.reward = j.reward;
        v.pool = j.pool;
    }

    /// @notice A worker's standing in a job: 0 not a worker, 1 active, 2 joined (active
    /// from the next round), 3 named but its stake not posted, 4 left; and its stake held.
    /// @param jobId the job
    /// @param worker the address
    /// @return status see above
    /// @return staked wei of its stake the job still holds
    function workerState(uint256 jobId, address worker) external view returns (uint8 status, uint256 staked) {
        uint256 slot = _workerIndex[jobId][worker];
        staked = _stakes[jobId][worker];
        if (slot == 0) status = 0;
        else if (slot & LEFT != 0) status = 4;
        else if (slot & QUEUED != 0) status = 2;
        else if (slot & UNSTAKED != 0) status = 3;
        else status = 1;
    }

    /// @notice Wei `account` may withdraw.
    /// @param account the address
    /// @return the balance
    function balanceOf(address account) external view returns (uint256) {
        return _balances[account];
    }

    /// @notice A job's workers, in registration order (index i = bit i of the bitmap).
    /// @param jobId the job
    /// @return the worker addresses
    function getWorkers(uint256 jobId) external view jobExists(jobId) returns (address[] memory) {
        return _workers[jobId];
    }

    /// @notice A job's aggregators, in registration order.
    /// @param jobId the job
    /// @return the aggregator addresses
    function getAggregators(uint256 jobId) external view jobExists(jobId) returns (address[] memory) {
        return _aggregators[jobId];
    }

    /// @notice A round's state: live for the current round, the stored record for a past one.
    /// @param jobId the job
    /// @param round the round (1-based); a round not opened yet has status None
    /// @return v see `RoundView`
    function getRound(uint256 jobId, uint32 round) external view jobExists(jobId) returns (RoundView memory v) {
        Job storage j = _jobs[jobId];
        RoundRecord storage rec = _rounds[jobId][round];
        if (rec.status != uint8(RoundStatus.None)) {
            v.parent = rec.parent;
            v.deadline = rec.deadline;
            v.submissions = rec.submissions;
            v.commitment = rec.commitment;
            v.status = RoundStatus(rec.status);
            v.mergedDigest = rec.mergedDigest;
            v.mergedCid = rec.mergedCid;
            v.mergedSize = rec.mergedSize;
            v.outcome = rec.outcome;
            v.accepted = rec.accepted;
            v.proposals = rec.proposals;
            v.commits = rec.commits;
            v.commitDeadline = rec.commitDeadline;
            v.revealDeadline = rec.commitDeadline + j.proposalWindow;
            v.skipReason = SkipReason(rec.skipReason);
            v.disclosed = rec.disclosed;
            v.expected = rec.expected;
            if (j.disclosureWindow != 0) v.disclosureDeadline = rec.deadline - rec.closedEarlyBy + j.disclosureWindow;
        } else if (round == j.currentRound && !j.completed) {
            uint256 live = _live[jobId][j.parentDigest].packed;
            Phase memory ph = _phaseOf(jobId, round);
            v.parent = j.parentDigest;
            v.deadline = uint40(live >> DEADLINE_SHIFT);
            v.submissions = uint16((live >> COUNT_SHIFT) & 0xff);
            v.commitment = _commitment[jobId].value;
            v.status = _isClosed(live) ? RoundStatus.Closed : RoundStatus.Open;
            v.proposals = ph.reveals;
            v.commits = ph.commits;
            v.commitDeadline = _commitDeadline(ph, _proposalStart(live, j.disclosureWindow), j.proposalWindow);
            v.revealDeadline = v.commitDeadline + j.proposalWindow;
            v.disclosed = _disclosuresOf(jobId, round).count;
            v.expected = uint16((live >> WORKERS_SHIFT) & 0xff);
            if (j.disclosureWindow != 0) v.disclosureDeadline = _proposalStart(live, j.disclosureWindow);
        }
    }

    /// @notice Whether `worker` submitted in `round` of the job.
    /// @param jobId the job
    /// @param round the round
    /// @param worker the worker address
    /// @return true if it submitted
    function hasSubmitted(uint256 jobId, uint32 round, address worker) external view returns (bool) {
        uint256 index = _workerIndex[jobId][worker] & INDEX_MASK;
        if (index == 0) return false;
        RoundRecord storage rec = _rounds[jobId][round];
        if (rec.status != uint8(RoundStatus.None)) return (rec.submitted >> (index - 1)) & 1 == 1;
        Job storage j = _jobs[jobId];
        if (round != j.currentRound || j.completed) return false;
        uint256 live = _live[jobId][j.parentDigest].packed;
        return (live >> (BITMAP_SHIFT + index - 1)) & 1 == 1;
    }

    /// @notice The commit hash `aggregator` committed in `round` (zero if none).
    /// @param jobId the job
    /// @param round the round
    /// @param aggregator the aggregator address
    /// @return the commit hash
    function commitOf(uint256 jobId, uint32 round, address aggregator) external view returns (bytes32) {
        return _commits[jobId][round][aggregator];
    }

    /// @notice Whether `aggregator` revealed a proposal in `round` of the job.
    /// @param jobId the job
    /// @param round the round
    /// @param aggregator the aggregator address
    /// @return true if it revealed
    function hasProposed(uint256 jobId, uint32 round, address aggregator) external view returns (bool) {
        return _proposed[jobId][round][aggregator] != 0;
    }

    /// @notice The outcome `aggregator` revealed in `round` (zero if none).
    /// @param jobId the job
    /// @param round the round
    /// @param aggregator the aggregator address
    /// @return the revealed outcome
    function proposalOf(uint256 jobId, uint32 round, address aggregator) external view returns (bytes32) {
        return _proposed[jobId][round][aggregator];
    }

    /// @notice Reveals an outcome received in `round`.
    /// @param jobId the job
    /// @param round the round
    /// @param outcome keccak256(abi.encodePacked(mergedDigest, mergedCid, mergedSize, verdicts))
    /// @return the number of aggregators who revealed it
    function votes(uint256 jobId, uint32 round, bytes32 outcome) external view returns (uint256) {
        return _votes[jobId][round][outcome];
    }

    /// @notice Whether `worker` disclosed for `round` (the current round, or a past one
    /// through its `Disclosed` event: past rounds keep only the count).
    /// @param jobId the job
    /// @param round the job's current round
    /// @param worker the worker address
    /// @return true if it disclosed
    function hasDisclosed(uint256 jobId, uint32 round, address worker) external view returns (bool) {
        uint256 index = _workerIndex[jobId][worker] & INDEX_MASK;
        if (index == 0) return false;
        return (_disclosuresOf(jobId, round).bitmap >> (index - 1)) & 1 == 1;
    }

    // -------------------------------------------------------------- internals

    function _validate(JobParams calldata p) private pure {
        // an open job may start with nobody: its rounds wait for their deadlines until workers join
        if (p.workers.length == 0 && p.maxWorkers == 0) revert InvalidJobParams("no workers");
        if (p.workers.length > MAX_WORKERS) revert TooManyWorkers(p.workers.length, MAX_WORKERS);
        if (p.maxWorkers > MAX_WORKERS) revert TooManyWorkers(p.maxWorkers, MAX_WORKERS);
        if (p.maxWorkers != 0 && p.maxWorkers < p.workers.length) {
            revert InvalidJobParams("maxWorkers is below the number of named workers");
        }
        if (p.slashBps > BPS) revert InvalidJobParams("slashBps exceeds 10000");
        if (p.aggregatorBps > BPS) revert InvalidJobParams("aggregatorBps exceeds 10000");
        if (p.aggregators.length == 0) revert InvalidJobParams("no aggregators");
        if (p.aggregators.length > MAX_AGGREGATORS) revert InvalidJobParams("more than 255 aggregators");
        // A strict majority: two disjoint sets of aggregators can never both reach it.
        if (uint256(p.quorum) * 2 <= p.aggregators.length) {
            revert InvalidJobParams("quorum must be a strict majority of the aggregators");
        }
        if (p.quorum > p.aggregators.length) revert InvalidJobParams("quorum exceeds the number of aggregators");
        if (p.roundDuration == 0) revert InvalidJobParams("roundDuration must be positive");
        if (p.proposalWindow == 0) revert InvalidJobParams("proposalWindow must be positive");
        if (p.numRounds == 0) revert InvalidJobParams("numRounds must be positive");
        if (p.minSubmissions == 0) revert InvalidJobParams("minSubmissions must be at least 1");
        if (p.minSubmissions > (p.maxWorkers != 0 ? p.maxWorkers : p.workers.length)) {
            revert InvalidJobParams("minSubmissions exceeds the number of workers");
        }
        if (p.cidVersion > 1) revert InvalidJobParams("cidVersion must be 0 or 1");
        if (p.genesisDigest == bytes32(0)) revert InvalidJobParams("genesisDigest is zero");
        if (p.configDigest == bytes32(0)) revert InvalidJobParams("configDigest is zero");
    }

    function _buildDomain() private view returns (bytes32) {
        return keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("TrainingLedger"), keccak256("1"), block.chainid, address(this))
        );
    }

    /// @dev Recomputed only if the chain id changed since deployment (a fork).
    function _domainSeparator() private view returns (bytes32) {
        return block.chainid == _cachedChainId ? _cachedDomain : _buildDomain();
    }

    function _chain(bytes32 h, address w) private pure returns (bytes32 out) {
        assembly ("memory-safe") {
            mstore(0x00, h)
            mstore(0x20, w)
            out := keccak256(0x00, 0x40)
        }
    }

    function _rosterHashOf(address[] calldata roster) private pure returns (bytes32 h) {
        for (uint256 i = 0; i < roster.length; ++i) h = _chain(h, roster[i]);
    }

    /// @dev The address that signed `u` for this job, round and parent (zero if none).
    /// Hashes in scratch memory past the free pointer: a batch allocates nothing per entry.
    function _signer(bytes32 domain, uint256 jobId, uint32 round, bytes32 parent, SignedUpdate calldata u)
        private
        view
        returns (address signer)
    {
        bytes32 typeHash = SUBMISSION_TYPEHASH;
        uint256 s = uint256(u.vs) & ((uint256(1) << 255) - 1);
        if (s > HALF_N) return address(0);
        uint256 v = (uint256(u.vs) >> 255) + 27;
        bytes32 r = u.r;
        uint64 size = u.size; // read through Solidity: a dirty high bit reverts here
        uint64 samples = u.numSamples;
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typeHash)
            mstore(add(m, 0x20), jobId)
            mstore(add(m, 0x40), round)
            mstore(add(m, 0x60), parent)
            calldatacopy(add(m, 0x80), add(u, 0x20), 0x40) // digest, cid
            mstore(add(m, 0xc0), size)
            mstore(add(m, 0xe0), samples)
            let structHash := keccak256(m, 0x100)
            mstore(m, shl(240, 0x1901))
            mstore(add(m, 0x02), domain)
            mstore(add(m, 0x22), structHash)
            let h := keccak256(m, 0x42)
            mstore(m, h)
            mstore(add(m, 0x20), v)
            mstore(add(m, 0x40), r)
            mstore(add(m, 0x60), s)
            mstore(0x00, 0)
            if staticcall(gas(), 0x01, m, 0x80, 0x00, 0x20) {
                signer := mload(0x00)
            }
        }
    }

    /// @dev Write a counted entry into the batch's log data at `n` and return the
    /// commitment folded with it, as `submitUpdate` folds:
    /// keccak256(abi.encodePacked(c, worker, digest, cid, size, numSamples)).
    function _record(bytes memory entries, uint256 n, bytes32 c, address w, SignedUpdate calldata u)
        private
        pure
        returns (bytes32 folded)
    {
        uint64 size = u.size;
        uint64 samples = u.numSamples;
        assembly ("memory-safe") {
            let e := add(add(entries, 0x20), mul(n, 100))
            // the tail words spill past the entry: the next entry overwrites them, and the
            // array's spare room (or the free memory after it) absorbs the last one
            mstore(e, shl(96, w))
            calldatacopy(add(e, 20), add(u, 0x20), 0x40) // digest, cid
            mstore(add(e, 84), shl(192, size))
            mstore(add(e, 92), shl(192, samples))
            let m := mload(0x40)
            mstore(m, c)
            mstore(add(m, 0x20), shl(96, w))
            calldatacopy(add(m, 0x34), add(u, 0x20), 0x40)
            mstore(add(m, 0x74), shl(192, size))
            mstore(add(m, 0x7c), shl(192, samples))
            folded := keccak256(m, 0x84)
        }
    }

    /// @dev Reverts with why `w`, in the roster, may not submit now.
    function _rejectInactive(uint256 jobId, address w) private view {
        Job storage j = _jobs[jobId];
        uint256 slot = _workerIndex[jobId][w];
        if (j.completed) revert JobFinished(jobId);
        if (slot & LEFT != 0) revert WorkerHasLeft(jobId, w);
        if (slot & QUEUED != 0) revert NotActiveYet(jobId, j.currentRound, w);
        revert StakeMissing(jobId, w);
    }

    /// @dev Reverts with the precise reason a submission failed the fast path's checks.
    function _rejectSubmission(uint256 jobId, uint32 round, bytes32 parentDigest, uint256 index) private view {
        Job storage j = _jobs[jobId];
        if (j.creator == address(0)) revert UnknownJob(jobId);
        if (index == 0) revert NotWorker(jobId, msg.sender);
        if (j.completed) revert JobFinished(jobId);
        if (index & LEFT != 0) revert WorkerHasLeft(jobId, msg.sender);
        if (index & QUEUED != 0) revert NotActiveYet(jobId, j.currentRound, msg.sender);
        if (index & UNSTAKED != 0) revert StakeMissing(jobId, msg.sender);
        if (round != j.currentRound) revert WrongRound(jobId, j.currentRound, round);
        if (parentDigest != j.parentDigest) revert WrongParent(jobId, round, j.parentDigest, parentDigest);
        uint256 live = _live[jobId][parentDigest].packed;
        uint64 deadline = uint40(live >> DEADLINE_SHIFT);
        if (block.timestamp > deadline || live & STATUS_MASK != LIVE_OPEN) revert RoundClosed(jobId, round, deadline);
        revert AlreadySubmitted(jobId, round, msg.sender);
    }

    /// @dev `round` must be the job's current, unfinished round.
    function _checkCurrentRound(uint256 jobId, Job storage j, RoundRecord storage rec, uint32 round)
        private
        view
        returns (uint32 current)
    {
        if (rec.status == uint8(RoundStatus.Finalized)) revert RoundAlreadyFinalized(jobId, round);
        if (j.completed) revert JobFinished(jobId);
        current = j.currentRound;
        if (round != current) revert WrongRound(jobId, current, round);
    }

    /// @dev All checks of a reveal's content; returns the round's live slot and the accepted count.
    function _checkProposal(
        uint256 jobId,
        uint32 round,
        bytes32 submissionsCommitment,
        bytes calldata verdicts,
        bytes32 mergedDigest
    ) private view returns (uint256 live, uint16 accepted) {
        Job storage j = _jobs[jobId];
        _checkCurrentRound(jobId, j, _rounds[jobId][round], round);
        if (_proposed[jobId][round][msg.sender] != 0) revert AlreadyRevealed(jobId, round, msg.sender);
        bytes32 parent = j.parentDigest;
        live = _live[jobId][parent].packed;
        _requireClosed(jobId, round, live);
        bytes32 expected = _commitment[jobId].value;
        if (submissionsCommitment != expected) {
            revert CommitmentMismatch(jobId, round, expected, submissionsCommitment);
        }
        uint256 count = (live >> COUNT_SHIFT) & 0xff;
        if (verdicts.length != count) revert VerdictCountMismatch(jobId, round, count, verdicts.length);
        accepted = _countAccepted(verdicts);
        if (accepted < j.minSubmissions && mergedDigest != parent) {
            revert MergeMustKeepParent(jobId, round, parent, mergedDigest);
        }
    }

    /// @dev The reveal's timing (commits closed, reveal deadline ahead) and its commit.
    function _checkReveal(uint256 jobId, uint32 round, bytes32 outcome, bytes32 salt) private view {
        bytes32 committed = _commits[jobId][round][msg.sender];
        if (committed == bytes32(0)) revert NotCommitted(jobId, round, msg.sender);
        Job storage j = _jobs[jobId];
        Phase memory ph = _phase[jobId]; // current: this aggregator committed in this round
        if (ph.commits < j.numAggregators && block.timestamp <= ph.commitDeadline) {
            revert CommitPhaseOpen(jobId, round, ph.commitDeadline);
        }
        uint64 revealDeadline = ph.commitDeadline + j.proposalWindow;
        if (block.timestamp > revealDeadline) revert RevealPhaseOver(jobId, round, revealDeadline);
        if (keccak256(abi.encodePacked(outcome, salt, msg.sender)) != committed) {
            revert RevealMismatch(jobId, round, msg.sender);
        }
    }

    function _requireClosed(uint256 jobId, uint32 round, uint256 live) private view {
        if (!_isClosed(live)) revert RoundNotClosed(jobId, round, uint40(live >> DEADLINE_SHIFT));
    }

    /// @dev Every expected worker submitted (a round expecting none waits for its deadline),
    /// or the deadline passed.
    function _isClosed(uint256 live) private view returns (bool) {
        uint256 expected = (live >> WORKERS_SHIFT) & 0xff;
        return (expected != 0 && ((live >> COUNT_SHIFT) & 0xff) == expected)
            || block.timestamp > uint40(live >> DEADLINE_SHIFT);
    }

    /// @dev Joins and leaves: the job's current round must be closed to submissions.
    function _requireBetweenRounds(uint256 jobId, Job storage j) private view returns (uint256 live) {
        live = _live[jobId][j.parentDigest].packed;
        if (!_isClosed(live)) revert RoundInProgress(jobId, j.currentRound, uint40(live >> DEADLINE_SHIFT));
    }

    /// @dev A settlement names only workers of the round that submitted, none both credited and slashed.
    function _checkSettlement(uint256 jobId, uint32 round, uint256 live, Settlement calldata s) private view {
        uint256 n = _jobs[jobId].numWorkers;
        if (s.credits.length != n) revert CreditCountMismatch(jobId, round, n, s.credits.length);
        uint256 submitted = uint128(live >> BITMAP_SHIFT);
        if (uint256(s.slashed) & ~submitted != 0) {
            for (uint256 i = 0; i < 128; ++i) {
                if ((uint256(s.slashed) >> i) & 1 == 1 && (submitted >> i) & 1 == 0) revert InvalidSettlement(jobId, round, i);
            }
        }
        for (uint256 i = 0; i < n; ++i) {
            if (s.credits[i] != 0 && ((submitted >> i) & 1 == 0 || (uint256(s.slashed) >> i) & 1 == 1)) {
                revert InvalidSettlement(jobId, round, i);
            }
        }
    }

    /// @dev Pay the finalized round's share of the pool (pro rata to credit, and the
    /// quorum's part), then move the slashed stakes into the pool.
    function _settle(uint256 jobId, uint32 round, bytes32 outcome, Settlement calldata s) private {
        Job storage j = _jobs[jobId];
        address[] storage ws = _workers[jobId];
        uint256 pool = j.pool;
        uint256 share = pool / (j.numRounds - round + 1);
        if (share != 0) {
            uint256 toAggregators = share * j.aggregatorBps / BPS;
            uint256 toWorkers = share - toAggregators;
            uint256 total;
            for (uint256 i = 0; i < s.credits.length; ++i) total += s.credits[i];
            if (total != 0) {
                for (uint256 i = 0; i < s.credits.length; ++i) {
                    if (s.credits[i] == 0) continue;
                    uint256 amount = toWorkers * s.credits[i] / total;
                    pool -= _pay(jobId, round, ws[i], amount, false);
                }
            }
            uint256 each = toAggregators / j.quorum;
            if (each != 0) {
                address[] storage as_ = _aggregators[jobId];
                for (uint256 i = 0; i < as_.length; ++i) {
                    if (_proposed[jobId][round][as_[i]] == outcome) pool -= _pay(jobId, round, as_[i], each, true);
                }
            }
        }
        if (s.slashed != 0) {
            for (uint256 i = 0; i < s.credits.length; ++i) {
                if ((uint256(s.slashed) >> i) & 1 == 0) continue;
                address w = ws[i];
                uint256 held = _stakes[jobId][w];
                uint256 cut = held * j.slashBps / BPS;
                if (cut == 0) continue;
                _stakes[jobId][w] = held - cut;
                pool += cut;
                emit Slashed(jobId, round, w, cut);
            }
        }
        j.pool = uint128(pool);
    }

    function _pay(uint256 jobId, uint32 round, address account, uint256 amount, bool aggregator)
        private
        returns (uint256)
    {
        if (amount == 0) return 0;
        _balances[account] += amount;
        emit RewardPaid(jobId, round, account, amount, aggregator);
        return amount;
    }

    function _countAccepted(bytes calldata verdicts) private pure returns (uint16 accepted) {
        for (uint256 i = 0; i < verdicts.length; ++i) {
            if (verdicts[i] == 0) ++accepted;
        }
    }

    /// @dev The job's proposal phase for `round`: zero when the stored one is an earlier round's.
    function _phaseOf(uint256 jobId, uint32 round) private view returns (Phase memory ph) {
        ph = _phase[jobId];
        if (ph.round != round) ph = Phase({round: round, commitDeadline: 0, commits: 0, reveals: 0});
    }

    /// @dev When the proposal phase starts: the round's deadline in a job without
    /// disclosures (commits still open at an early close: see commitProposal), else the
    /// round's close (its last submission, or its deadline) + the disclosure window.
    function _proposalStart(uint256 live, uint32 disclosureWindow) private pure returns (uint64) {
        uint64 deadline = uint40(live >> DEADLINE_SHIFT);
        if (disclosureWindow == 0) return deadline;
        return deadline - uint32(live >> EARLY_SHIFT) + disclosureWindow;
    }

    /// @dev The job's disclosures for `round`: empty when the stored ones are an earlier round's.
    function _disclosuresOf(uint256 jobId, uint32 round) private view returns (Disclosures memory d) {
        d = _disclosures[jobId];
        if (d.round != round) d = Disclosures({round: round, count: 0, bitmap: 0});
    }

    /// @dev Every worker that submitted in `round` disclosed.
    function _allDisclosed(uint256 jobId, uint32 round, uint256 live) private view returns (bool) {
        return _disclosuresOf(jobId, round).bitmap == uint128(live >> BITMAP_SHIFT);
    }

    /// @dev The commit phase's last second: set by the first commit, else the proposal phase's start + window.
    function _commitDeadline(Phase memory ph, uint64 roundDeadline, uint32 window) private pure returns (uint64) {
        return ph.commits != 0 ? ph.commitDeadline : roundDeadline + window;
    }

    /// @dev Store an aggregator's reveal and its vote; true if it brings the outcome to quorum.
    function _recordReveal(
        uint256 jobId,
        uint32 round,
        Merge memory m,
        bytes calldata verdicts,
        bytes32 salt,
        Settlement calldata s
    ) private returns (bool) {
        _proposed[jobId][round][msg.sender] = m.outcome;
        uint256 n = ++_votes[jobId][round][m.outcome];
        _phase[jobId].reveals += 1;
        emit ProposalRevealed(jobId, round, msg.sender, m.digest, m.cid, m.size, m.outcome, m.accepted, verdicts, salt);
        emit SettlementRevealed(jobId, round, msg.sender, s.credits, s.slashed);
        return n == _jobs[jobId].quorum;
    }

    function _finalize(uint256 jobId, uint32 round, uint256 live, Merge memory m) private {
        Job storage j = _jobs[jobId];
        bytes32 parent = j.parentDigest;
        RoundRecord storage rec = _rounds[jobId][round];
        _live[jobId][parent].packed = live & ~STATUS_MASK;
        Phase memory ph = _phase[jobId];
        _writeRecord(rec, parent, _commitment[jobId].value, live, RoundStatus.Finalized, ph, ph.commitDeadline);
        rec.disclosed = _disclosuresOf(jobId, round).count;
        rec.mergedDigest = m.digest;
        rec.mergedCid = m.cid;
        rec.mergedSize = m.size;
        rec.outcome = m.outcome;
        rec.accepted = m.accepted;
        j.parentDigest = m.digest;
        j.parentCid = m.cid;
        j.parentSize = m.size;
        emit RoundFinalized(jobId, round, m.digest, m.cid, m.size, m.outcome, m.accepted);
    }

    function _writeRecord(
        RoundRecord storage rec,
        bytes32 parent,
        bytes32 commitment,
        uint256 live,
        RoundStatus status,
        Phase memory ph,
        uint64 commitDeadline
    ) private {
        rec.parent = parent;
        rec.commitment = commitment;
        rec.deadline = uint40(live >> DEADLINE_SHIFT);
        rec.submissions = uint16((live >> COUNT_SHIFT) & 0xff);
        rec.submitted = uint128(live >> BITMAP_SHIFT);
        rec.status = uint8(status);
        rec.proposals = ph.reveals;
        rec.commits = ph.commits;
        rec.commitDeadline = commitDeadline;
        rec.closedEarlyBy = uint32(live >> EARLY_SHIFT);
        rec.expected = uint8(live >> WORKERS_SHIFT);
    }

    /// @dev After round `round` closed: complete the job or open the next round on the job's parent.
    function _advance(uint256 jobId, Job storage j, uint32 round) private {
        if (round >= j.numRounds) {
            j.completed = true;
            emit JobCompleted(jobId, j.parentDigest, j.parentCid, j.parentSize);
            _returnStakesAndPool(jobId, j);
        } else {
            j.currentRound = round + 1;
            _openRound(jobId, round + 1, j.parentDigest, j.roundDuration);
        }
    }

    /// @dev The job completed: every stake still held, and the pool, go back to balances.
    function _returnStakesAndPool(uint256 jobId, Job storage j) private {
        address[] storage ws = _workers[jobId];
        if (j.workerStake != 0) {
            for (uint256 i = 0; i < ws.length; ++i) {
                uint256 held = _stakes[jobId][ws[i]];
                if (held == 0) continue;
                _stakes[jobId][ws[i]] = 0;
                _balances[ws[i]] += held;
                emit StakeReturned(jobId, ws[i], held);
            }
        }
        uint256 left = j.pool;
        if (left != 0) {
            j.pool = 0;
            _balances[j.creator] += left;
            emit PoolReturned(jobId, j.creator, left);
        }
    }

    /// @dev Workers that joined during the last round become active; returns how many
    /// workers the new round waits for.
    function _activateJoined(uint256 jobId, Job storage j) private returns (uint256) {
        address[] storage ws = _workers[jobId];
        uint256 n = j.numWorkers;
        if (ws.length > n) {
            uint256 left = j.numLeft;
            uint128 active = _rosters[jobId].active;
            for (uint256 i = n; i < ws.length; ++i) {
                uint256 slot = _workerIndex[jobId][ws[i]];
                if (slot & LEFT != 0) {
                    ++left;
                } else {
                    _workerIndex[jobId][ws[i]] = slot & ~QUEUED;
                    active |= uint128(1) << i;
                }
            }
            _rosters[jobId].active = active;
            j.numLeft = uint8(left);
            j.numWorkers = uint8(ws.length);
        }
        return j.numWorkers - j.numLeft;
    }

    function _openRound(uint256 jobId, uint32 round, bytes32 parent, uint32 duration) private {
        uint256 deadline = block.timestamp + duration;
        uint256 workers = _activateJoined(jobId, _jobs[jobId]);
        _live[jobId][parent].packed = uint256(round) | (deadline << DEADLINE_SHIFT) | LIVE_OPEN | (workers << WORKERS_SHIFT);
        _commitment[jobId].value = keccak256(abi.encode(jobId, round));
        emit RoundOpened(jobId, round, parent, uint64(deadline));
    }
}
