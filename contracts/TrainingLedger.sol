// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ITrainingLedger} from "./interfaces/ITrainingLedger.sol";
import {CommitteeLib} from "./libraries/CommitteeLib.sol";
import {JobLib} from "./libraries/JobLib.sol";
import {LedgerStorage} from "./libraries/LedgerStorage.sol";
import {RoundSlot, RoundSlotLib} from "./libraries/RoundSlot.sol";
import {SettlementLib} from "./libraries/SettlementLib.sol";

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
/// Gas layout (a worker's submission is the hot path, README "Gas"):
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
contract TrainingLedger is ITrainingLedger {
    // ------------------------------------------------------------------ types

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
    uint256 public constant MAX_WORKERS = LedgerStorage.MAX_WORKERS;
    /// @notice Most aggregators a job can have.
    uint256 public constant MAX_AGGREGATORS = LedgerStorage.MAX_AGGREGATORS;

    // the round slot's fields (RoundSlotLib), for the hot paths that work on the raw word
    uint256 private constant DEADLINE_SHIFT = RoundSlotLib.DEADLINE_SHIFT;
    uint256 private constant COUNT_SHIFT = RoundSlotLib.COUNT_SHIFT;
    uint256 private constant BITMAP_SHIFT = RoundSlotLib.BITMAP_SHIFT;
    uint256 private constant WORKERS_SHIFT = RoundSlotLib.WORKERS_SHIFT;
    uint256 private constant COUNT_ONE = RoundSlotLib.COUNT_ONE;
    uint256 private constant LIVE_OPEN = RoundSlotLib.LIVE_OPEN;
    uint256 private constant STATUS_MASK = RoundSlotLib.STATUS_MASK;
    uint256 private constant ROUND_MASK = RoundSlotLib.ROUND_MASK;

    // worker index slot flags (LedgerStorage)
    uint256 private constant QUEUED = LedgerStorage.QUEUED;
    uint256 private constant UNSTAKED = LedgerStorage.UNSTAKED;
    uint256 private constant LEFT = LedgerStorage.LEFT;
    uint256 private constant INDEX_MASK = LedgerStorage.INDEX_MASK;

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

    /// @dev every state variable (see LedgerStorage.Layout); the libraries get it as a pointer
    LedgerStorage.Layout private _s;

    // -------------------------------------------------------------- modifiers

    modifier jobExists(uint256 jobId) {
        if (_s.jobs[jobId].creator == address(0)) revert UnknownJob(jobId);
        _;
    }

    modifier onlyAggregator(uint256 jobId) {
        if (!_s.isAggregator[jobId][msg.sender]) revert NotAggregator(jobId, msg.sender);
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
        jobId = JobLib.create(_s, p, msg.sender, msg.value);
        _openRound(jobId, 1, p.genesisDigest, p.roundDuration);
    }

    /// @notice Post the job's `workerStake`, as a worker named at creation, before submitting.
    /// @param jobId the job
    function stake(uint256 jobId) external payable jobExists(jobId) {
        LedgerStorage.Job storage j = _s.jobs[jobId];
        uint256 slot = _s.workerIndex[jobId][msg.sender];
        if (slot == 0) revert NotWorker(jobId, msg.sender);
        if (j.completed) revert JobFinished(jobId);
        if (slot & LEFT != 0) revert WorkerHasLeft(jobId, msg.sender);
        if (slot & UNSTAKED == 0) revert NoStakeDue(jobId, msg.sender);
        if (msg.value != j.workerStake) revert WrongStake(jobId, j.workerStake, msg.value);
        _s.workerIndex[jobId][msg.sender] = slot & ~UNSTAKED;
        _s.rosters[jobId].active |= uint128(1) << ((slot & INDEX_MASK) - 1);
        _s.stakes[jobId][msg.sender] = msg.value;
        emit StakePosted(jobId, msg.sender, msg.value);
    }

    /// @notice Join an open job, posting its `workerStake`, while its current round is not
    /// accepting submissions; the joiner is a worker from the next round on.
    /// @param jobId the job
    /// @param dataRoot for a job on private data, the Merkle root of the joiner's text
    ///        (`ledger data commit`); zero otherwise
    /// @param dataBytes that text's length
    function join(uint256 jobId, bytes32 dataRoot, uint64 dataBytes) external payable jobExists(jobId) {
        JobLib.join(_s, jobId, dataRoot, dataBytes, msg.value);
    }

    /// @notice Leave an open job while its current round is not accepting submissions, and
    /// not while the caller's own contribution to it is being judged; what is left of the
    /// stake goes to the caller's balance.
    /// @param jobId the job
    function leave(uint256 jobId) external jobExists(jobId) {
        JobLib.leave(_s, jobId);
    }

    /// @notice Withdraw everything credited to the caller: rewards, returned stakes, a
    /// returned pool.
    function withdraw() external {
        uint256 amount = _s.balances[msg.sender];
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        _s.balances[msg.sender] = 0;
        emit Withdrawn(msg.sender, amount);
        // slither-disable-next-line low-level-calls -- pull payment: the balance is zeroed before the call and `ok` is checked; a plain call lets contract wallets withdraw
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
        uint256 index = _s.workerIndex[jobId][msg.sender];
        LedgerStorage.LiveRound storage slot = _s.live[jobId][parentDigest];
        uint256 live = slot.packed;
        uint256 bit;
        bool notActive;
        unchecked {
            bit = (1 << (BITMAP_SHIFT - 1)) << index; // index <= 128: bit <= 215
            notActive = index - 1 >= MAX_WORKERS; // none, or a flag (queued, unstaked, left)
        }
        if (
            // slither-disable-next-line timestamp -- phases last minutes by design; seconds of block-time skew cannot change who may act
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
                next |= RoundSlotLib.closing(uint40(live >> DEADLINE_SHIFT));
            }
            slot.packed = next;
        }
        // the fold and the event written directly into free memory: what
        // `keccak256(abi.encodePacked(c, msg.sender, digest, cid, size, numSamples))` and
        // `emit UpdateSubmitted(...)` give, without the encoder's copies (keeps this path
        // well under 40,000 gas)
        LedgerStorage.Commitment storage c = _s.commitment[jobId];
        bytes32 topic = UpdateSubmitted.selector;
        // slither-disable-next-line assembly -- the event is written by hand to hold submitUpdate's gas bound (bench/gas.py); fuzzed in contracts/test
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
        LedgerStorage.Roster storage ro = _s.rosters[jobId];
        if (_rosterHashOf(roster) != ro.hash) {
            if (_s.jobs[jobId].creator == address(0)) revert UnknownJob(jobId);
            revert RosterMismatch(jobId);
        }
        LedgerStorage.LiveRound storage slot = _s.live[jobId][parentDigest];
        uint256 live = slot.packed;
        // slither-disable-next-line timestamp -- phases last minutes by design; seconds of block-time skew cannot change who may act
        if (live & (STATUS_MASK | ROUND_MASK) != LIVE_OPEN | round || block.timestamp > uint40(live >> DEADLINE_SHIFT)) {
            _rejectSubmission(jobId, round, parentDigest, 1); // a valid index: the round's own error
        }
        uint256 active = ro.active;
        bytes32 domain = _domainSeparator();
        bytes32 c = _s.commitment[jobId].value;
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
                    live |= RoundSlotLib.closing(uint40(live >> DEADLINE_SHIFT));
                }
            }
            slot.packed = live;
            _s.commitment[jobId].value = c;
        }
        // slither-disable-next-line assembly -- one BatchSubmitted log of packed entries instead of one event a worker (the batch's gas bound)
        assembly ("memory-safe") {
            mstore(entries, mul(counted, 100)) // BATCH_ENTRY: only the counted entries are logged
        }
        emit BatchSubmitted(jobId, round, msg.sender, entries);
    }

    /// @notice Commit to a proposal for a closed round, before anyone can see another's:
    /// `commitHash = keccak256(abi.encodePacked(outcome, salt, msg.sender))` with
    /// `outcome = keccak256(abi.encodePacked(mergedDigest, mergedCid, mergedSize, verdicts, settlementHash))`,
    /// `settlementHash = keccak256(abi.encode(credits, slashed))` (see `revealProposal`)
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
        LedgerStorage.Job storage j = _s.jobs[jobId];
        _checkCurrentRound(jobId, j, _s.rounds[jobId][round], round);
        RoundSlot live = RoundSlot.wrap(_s.live[jobId][j.parentDigest].packed);
        _requireClosed(jobId, round, live);
        if (commitHash == bytes32(0)) revert EmptyCommit(jobId, round);
        if (_s.commits[jobId][round][msg.sender] != 0) revert AlreadyCommitted(jobId, round, msg.sender);
        LedgerStorage.Phase memory ph = _phaseOf(jobId, round);
        // the proposal phase starts after the disclosures (at the round's deadline without them)
        uint64 proposalStart = live.proposalStart(j.disclosureWindow);
        // slither-disable-next-line timestamp -- phases last minutes by design; seconds of block-time skew cannot change who may act
        if (j.disclosureWindow != 0 && block.timestamp <= proposalStart && !_allDisclosed(jobId, round, live)) {
            revert DisclosuresPending(jobId, round, proposalStart);
        }
        uint64 commitDeadline = _commitDeadline(ph, proposalStart, j.proposalWindow);
        if (block.timestamp > commitDeadline) revert CommitPhaseClosed(jobId, round, commitDeadline);
        if (ph.commits == 0 && block.timestamp < proposalStart) {
            // closed early (every worker submitted, and disclosed): the window runs from the first commit
            commitDeadline = uint64(block.timestamp) + j.proposalWindow;
        }
        _s.phase[jobId] = LedgerStorage.Phase({round: round, commitDeadline: commitDeadline, commits: ph.commits + 1, reveals: 0});
        _s.commits[jobId][round][msg.sender] = commitHash;
        emit ProposalCommitted(jobId, round, msg.sender, commitHash, commitDeadline);
    }

    /// @notice Reveal the committed proposal once commits are closed (every aggregator
    /// committed, or the commit deadline passed) and before the reveal deadline: the
    /// commitment over the round's submissions, one verdict byte per submission
    /// (0 = accepted) in submission order, the merged checkpoint, the settlement and the
    /// commit's salt. The outcome, which the commit hashed, covers all of them:
    /// keccak256(abi.encodePacked(mergedDigest, mergedCid, mergedSize, verdicts, settlementHash))
    /// with settlementHash = keccak256(abi.encode(s.credits, s.slashed)).
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
        (RoundSlot live, uint16 accepted) = _checkProposal(jobId, round, submissionsCommitment, verdicts, mergedDigest);
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
            // an outcome reaching quorum must follow every committee decision (AgainstCommittee)
            CommitteeLib.check(_s, jobId, round, verdicts, s.credits);
            _finalize(jobId, round, live, m);
            SettlementLib.settle(_s, jobId, round, m.outcome, s);
            _advance(jobId, _s.jobs[jobId], round);
        }
    }

    /// @notice Say, as a worker that submitted in the closed `round`, that what the
    /// verifiers' draw asks of it is stored (its drawn snapshots; its drawn windows for
    /// private data), before the round's deadline + the job's disclosureWindow. Every
    /// aggregator and the auditor then judge "disclosed in time" from this record.
    /// @param jobId the job
    /// @param round the job's current round, closed
    /// @param sealedCid the sha2-256 root digest of the CID of an encrypted object holding
    ///        the worker's drawn window bundles for its verifiers (zero: nothing sealed)
    /// @param sealedSize that object's size in bytes (rebuilds its CID with the job's cidVersion)
    function disclose(uint256 jobId, uint32 round, bytes32 sealedCid, uint64 sealedSize) external jobExists(jobId) {
        LedgerStorage.Job storage j = _s.jobs[jobId];
        if (j.disclosureWindow == 0) revert NothingToDisclose(jobId);
        uint256 index = _s.workerIndex[jobId][msg.sender] & INDEX_MASK;
        if (index == 0) revert NotWorker(jobId, msg.sender);
        _checkCurrentRound(jobId, j, _s.rounds[jobId][round], round);
        RoundSlot live = RoundSlot.wrap(_s.live[jobId][j.parentDigest].packed);
        _requireClosed(jobId, round, live);
        if (!live.hasSubmitted(index)) revert NotSubmitted(jobId, round, msg.sender);
        uint64 deadline = live.proposalStart(j.disclosureWindow);
        // slither-disable-next-line timestamp -- phases last minutes by design; seconds of block-time skew cannot change who may act
        if (block.timestamp > deadline) revert DisclosureClosed(jobId, round, deadline);
        LedgerStorage.Disclosures memory d = _disclosuresOf(jobId, round);
        uint128 bit = uint128(1) << (index - 1);
        if (d.bitmap & bit != 0) revert AlreadyDisclosed(jobId, round, msg.sender);
        _s.disclosures[jobId] = LedgerStorage.Disclosures({round: round, count: d.count + 1, bitmap: d.bitmap | bit});
        emit Disclosed(jobId, round, msg.sender, sealedCid, sealedSize);
    }

    /// @notice As the job's creator, grant `to` access to the object `cid` (e.g. a key
    /// sealed to `to`'s public key): recorded as `AccessGranted`, nothing else changes.
    /// @param jobId the job
    /// @param to the grantee
    /// @param cid the object's CID as its sha2-256 root digest
    /// @param size the object's size in bytes (rebuilds its CID with the job's cidVersion)
    function grant(uint256 jobId, address to, bytes32 cid, uint64 size) external jobExists(jobId) {
        if (msg.sender != _s.jobs[jobId].creator) revert NotCreator(jobId, msg.sender);
        emit AccessGranted(jobId, to, msg.sender, cid, size);
    }

    /// @notice Draw `round`'s verification committees, as anyone, once the seed block (2
    /// after the block that closed the round) is mined; see `CommitteeLib` and `CommitteesDrawn`.
    /// @param jobId the job (with committees)
    /// @param round the job's current round, closed
    /// @param before for a round closed by its deadline, the RLP header of the block before `closing`; else empty
    /// @param closing for a round closed by its deadline, the RLP header of the first block past it; else empty
    /// @param subs per submission in order: worker index (1 byte), digest, cid, size (8), numSamples (8)
    function drawCommittees(uint256 jobId, uint32 round, bytes calldata before, bytes calldata closing, bytes calldata subs)
        external
        jobExists(jobId)
    {
        CommitteeLib.draw(_s, jobId, round, before, closing, subs);
    }

    /// @notice Vote, as a member of `round`'s drawn verification committees, by the vote
    /// deadline, once (see `CommitteeVoted`, `CommitteeLib`).
    /// @param jobId the job
    /// @param round the round voted on
    /// @param ballot the packed entries
    function vote(uint256 jobId, uint32 round, bytes calldata ballot) external onlyAggregator(jobId) {
        CommitteeLib.vote(_s, jobId, round, ballot);
    }

    /// @notice Skip a round that cannot move the model: past its deadline with fewer than
    /// minSubmissions submissions (`TooFewSubmissions`), or without a quorum once the
    /// reveal deadline passed or every commit was revealed after the commit phase
    /// (`NoQuorum`). The parent carries over to the next round (or becomes the final
    /// model if this was the last round). Anyone may call it.
    /// @param jobId the job
    /// @param round the job's current round
    function closeRound(uint256 jobId, uint32 round) external jobExists(jobId) {
        LedgerStorage.Job storage j = _s.jobs[jobId];
        LedgerStorage.RoundRecord storage rec = _s.rounds[jobId][round];
        _checkCurrentRound(jobId, j, rec, round);
        bytes32 parent = j.parentDigest;
        RoundSlot live = RoundSlot.wrap(_s.live[jobId][parent].packed);
        uint64 deadline = live.deadline();
        uint256 count = live.count();
        SkipReason reason;
        LedgerStorage.Phase memory ph = _phaseOf(jobId, round);
        uint64 commitDeadline = _commitDeadline(ph, live.proposalStart(j.disclosureWindow), j.proposalWindow);
        if (count < j.minSubmissions) {
            // slither-disable-next-line timestamp -- phases last minutes by design; seconds of block-time skew cannot change who may act
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

        _s.live[jobId][parent].packed = RoundSlot.unwrap(live.retired());
        _writeRecord(rec, parent, _s.commitment[jobId].value, live, RoundStatus.Skipped, ph, commitDeadline);
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
        return _s.jobCount;
    }

    /// @notice A job's parameters and progress.
    /// @param jobId the job
    /// @return v see `JobView`
    function getJob(uint256 jobId) external view jobExists(jobId) returns (JobView memory v) {
        LedgerStorage.Job storage j = _s.jobs[jobId];
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
        uint256 slot = _s.workerIndex[jobId][worker];
        staked = _s.stakes[jobId][worker];
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
        return _s.balances[account];
    }

    /// @notice A job's workers, in registration order (index i = bit i of the bitmap).
    /// @param jobId the job
    /// @return the worker addresses
    function getWorkers(uint256 jobId) external view jobExists(jobId) returns (address[] memory) {
        return _s.workers[jobId];
    }

    /// @notice A job's aggregators, in registration order.
    /// @param jobId the job
    /// @return the aggregator addresses
    function getAggregators(uint256 jobId) external view jobExists(jobId) returns (address[] memory) {
        return _s.aggregators[jobId];
    }

    /// @notice A round's state: live for the current round, the stored record for a past one.
    /// @param jobId the job
    /// @param round the round (1-based); a round not opened yet has status None
    /// @return v see `RoundView`
    function getRound(uint256 jobId, uint32 round) external view jobExists(jobId) returns (RoundView memory v) {
        LedgerStorage.Job storage j = _s.jobs[jobId];
        LedgerStorage.RoundRecord storage rec = _s.rounds[jobId][round];
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
            RoundSlot live = RoundSlot.wrap(_s.live[jobId][j.parentDigest].packed);
            LedgerStorage.Phase memory ph = _phaseOf(jobId, round);
            v.parent = j.parentDigest;
            v.deadline = live.deadline();
            v.submissions = uint16(live.count());
            v.commitment = _s.commitment[jobId].value;
            v.status = live.isClosed() ? RoundStatus.Closed : RoundStatus.Open;
            v.proposals = ph.reveals;
            v.commits = ph.commits;
            v.commitDeadline = _commitDeadline(ph, live.proposalStart(j.disclosureWindow), j.proposalWindow);
            v.revealDeadline = v.commitDeadline + j.proposalWindow;
            v.disclosed = _disclosuresOf(jobId, round).count;
            v.expected = uint16(live.expected());
            if (j.disclosureWindow != 0) v.disclosureDeadline = live.proposalStart(j.disclosureWindow);
        }
    }

    /// @notice Whether `worker` submitted in `round` of the job.
    /// @param jobId the job
    /// @param round the round
    /// @param worker the worker address
    /// @return true if it submitted
    function hasSubmitted(uint256 jobId, uint32 round, address worker) external view returns (bool) {
        uint256 index = _s.workerIndex[jobId][worker] & INDEX_MASK;
        if (index == 0) return false;
        LedgerStorage.RoundRecord storage rec = _s.rounds[jobId][round];
        if (rec.status != uint8(RoundStatus.None)) return (rec.submitted >> (index - 1)) & 1 == 1;
        LedgerStorage.Job storage j = _s.jobs[jobId];
        if (round != j.currentRound || j.completed) return false;
        RoundSlot live = RoundSlot.wrap(_s.live[jobId][j.parentDigest].packed);
        return live.hasSubmitted(index);
    }

    /// @notice The commit hash `aggregator` committed in `round` (zero if none).
    /// @param jobId the job
    /// @param round the round
    /// @param aggregator the aggregator address
    /// @return the commit hash
    function commitOf(uint256 jobId, uint32 round, address aggregator) external view returns (bytes32) {
        return _s.commits[jobId][round][aggregator];
    }

    /// @notice Whether `aggregator` revealed a proposal in `round` of the job.
    /// @param jobId the job
    /// @param round the round
    /// @param aggregator the aggregator address
    /// @return true if it revealed
    function hasProposed(uint256 jobId, uint32 round, address aggregator) external view returns (bool) {
        return _s.proposed[jobId][round][aggregator] != 0;
    }

    /// @notice The outcome `aggregator` revealed in `round` (zero if none).
    /// @param jobId the job
    /// @param round the round
    /// @param aggregator the aggregator address
    /// @return the revealed outcome
    function proposalOf(uint256 jobId, uint32 round, address aggregator) external view returns (bytes32) {
        return _s.proposed[jobId][round][aggregator];
    }

    /// @notice Reveals an outcome received in `round`.
    /// @param jobId the job
    /// @param round the round
    /// @param outcome keccak256(abi.encodePacked(mergedDigest, mergedCid, mergedSize, verdicts,
    ///        keccak256(abi.encode(credits, slashed))))
    /// @return the number of aggregators who revealed it
    function votes(uint256 jobId, uint32 round, bytes32 outcome) external view returns (uint256) {
        return _s.votes[jobId][round][outcome];
    }

    /// @notice Whether `worker` disclosed for `round` (the current round, or a past one
    /// through its `Disclosed` event: past rounds keep only the count).
    /// @param jobId the job
    /// @param round the job's current round
    /// @param worker the worker address
    /// @return true if it disclosed
    function hasDisclosed(uint256 jobId, uint32 round, address worker) external view returns (bool) {
        uint256 index = _s.workerIndex[jobId][worker] & INDEX_MASK;
        if (index == 0) return false;
        return (_disclosuresOf(jobId, round).bitmap >> (index - 1)) & 1 == 1;
    }

    // -------------------------------------------------------------- internals

    function _buildDomain() private view returns (bytes32) {
        return keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("TrainingLedger"), keccak256("1"), block.chainid, address(this))
        );
    }

    /// @dev Recomputed only if the chain id changed since deployment (a fork).
    function _domainSeparator() private view returns (bytes32) {
        return block.chainid == _cachedChainId ? _cachedDomain : _buildDomain();
    }

    function _rosterHashOf(address[] calldata roster) private pure returns (bytes32 h) {
        for (uint256 i = 0; i < roster.length; ++i) h = JobLib.chain(h, roster[i]);
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
        // slither-disable-next-line assembly -- the EIP-712 struct hash built in scratch memory: the batch's gas bound per contribution
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
        // slither-disable-next-line assembly -- the packed 100-byte batch entry written in place (ledger.contract.batch_entries reads it)
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
        LedgerStorage.Job storage j = _s.jobs[jobId];
        uint256 slot = _s.workerIndex[jobId][w];
        if (j.completed) revert JobFinished(jobId);
        if (slot & LEFT != 0) revert WorkerHasLeft(jobId, w);
        if (slot & QUEUED != 0) revert NotActiveYet(jobId, j.currentRound, w);
        revert StakeMissing(jobId, w);
    }

    /// @dev Reverts with the precise reason a submission failed the fast path's checks.
    function _rejectSubmission(uint256 jobId, uint32 round, bytes32 parentDigest, uint256 index) private view {
        LedgerStorage.Job storage j = _s.jobs[jobId];
        if (j.creator == address(0)) revert UnknownJob(jobId);
        if (index == 0) revert NotWorker(jobId, msg.sender);
        if (j.completed) revert JobFinished(jobId);
        if (index & LEFT != 0) revert WorkerHasLeft(jobId, msg.sender);
        if (index & QUEUED != 0) revert NotActiveYet(jobId, j.currentRound, msg.sender);
        if (index & UNSTAKED != 0) revert StakeMissing(jobId, msg.sender);
        if (round != j.currentRound) revert WrongRound(jobId, j.currentRound, round);
        if (parentDigest != j.parentDigest) revert WrongParent(jobId, round, j.parentDigest, parentDigest);
        RoundSlot live = RoundSlot.wrap(_s.live[jobId][parentDigest].packed);
        uint64 deadline = live.deadline();
        // slither-disable-next-line timestamp -- phases last minutes by design; seconds of block-time skew cannot change who may act
        if (block.timestamp > deadline || !live.isOpenStatus()) revert RoundClosed(jobId, round, deadline);
        revert AlreadySubmitted(jobId, round, msg.sender);
    }

    /// @dev `round` must be the job's current, unfinished round.
    function _checkCurrentRound(uint256 jobId, LedgerStorage.Job storage j, LedgerStorage.RoundRecord storage rec, uint32 round)
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
    ) private view returns (RoundSlot live, uint16 accepted) {
        LedgerStorage.Job storage j = _s.jobs[jobId];
        _checkCurrentRound(jobId, j, _s.rounds[jobId][round], round);
        if (_s.proposed[jobId][round][msg.sender] != 0) revert AlreadyRevealed(jobId, round, msg.sender);
        bytes32 parent = j.parentDigest;
        live = RoundSlot.wrap(_s.live[jobId][parent].packed);
        _requireClosed(jobId, round, live);
        bytes32 expected = _s.commitment[jobId].value;
        if (submissionsCommitment != expected) {
            revert CommitmentMismatch(jobId, round, expected, submissionsCommitment);
        }
        uint256 count = live.count();
        if (verdicts.length != count) revert VerdictCountMismatch(jobId, round, count, verdicts.length);
        accepted = _countAccepted(verdicts);
        if (accepted < j.minSubmissions && mergedDigest != parent) {
            revert MergeMustKeepParent(jobId, round, parent, mergedDigest);
        }
    }

    /// @dev The reveal's timing (commits closed, reveal deadline ahead) and its commit.
    function _checkReveal(uint256 jobId, uint32 round, bytes32 outcome, bytes32 salt) private view {
        bytes32 committed = _s.commits[jobId][round][msg.sender];
        if (committed == bytes32(0)) revert NotCommitted(jobId, round, msg.sender);
        LedgerStorage.Job storage j = _s.jobs[jobId];
        LedgerStorage.Phase memory ph = _s.phase[jobId]; // current: this aggregator committed in this round
        // slither-disable-next-line timestamp -- phases last minutes by design; seconds of block-time skew cannot change who may act
        if (ph.commits < j.numAggregators && block.timestamp <= ph.commitDeadline) {
            revert CommitPhaseOpen(jobId, round, ph.commitDeadline);
        }
        uint64 revealDeadline = ph.commitDeadline + j.proposalWindow;
        if (block.timestamp > revealDeadline) revert RevealPhaseOver(jobId, round, revealDeadline);
        if (keccak256(abi.encodePacked(outcome, salt, msg.sender)) != committed) {
            revert RevealMismatch(jobId, round, msg.sender);
        }
    }

    function _requireClosed(uint256 jobId, uint32 round, RoundSlot live) private view {
        if (!live.isClosed()) revert RoundNotClosed(jobId, round, live.deadline());
    }

    /// @dev A settlement names only workers of the round that submitted, none both credited and slashed.
    function _checkSettlement(uint256 jobId, uint32 round, RoundSlot live, Settlement calldata s) private view {
        uint256 n = _s.jobs[jobId].numWorkers;
        if (s.credits.length != n) revert CreditCountMismatch(jobId, round, n, s.credits.length);
        uint256 submitted = live.submitted();
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

    function _countAccepted(bytes calldata verdicts) private pure returns (uint16 accepted) {
        for (uint256 i = 0; i < verdicts.length; ++i) {
            if (verdicts[i] == 0) ++accepted;
        }
    }

    /// @dev The job's proposal phase for `round`: zero when the stored one is an earlier round's.
    function _phaseOf(uint256 jobId, uint32 round) private view returns (LedgerStorage.Phase memory ph) {
        ph = _s.phase[jobId];
        if (ph.round != round) ph = LedgerStorage.Phase({round: round, commitDeadline: 0, commits: 0, reveals: 0});
    }

    /// @dev The job's disclosures for `round`: empty when the stored ones are an earlier round's.
    function _disclosuresOf(uint256 jobId, uint32 round) private view returns (LedgerStorage.Disclosures memory d) {
        d = _s.disclosures[jobId];
        if (d.round != round) d = LedgerStorage.Disclosures({round: round, count: 0, bitmap: 0});
    }

    /// @dev Every worker that submitted in `round` disclosed.
    function _allDisclosed(uint256 jobId, uint32 round, RoundSlot live) private view returns (bool) {
        return _disclosuresOf(jobId, round).bitmap == live.submitted();
    }

    /// @dev The commit phase's last second: set by the first commit, else the proposal phase's start + window.
    function _commitDeadline(LedgerStorage.Phase memory ph, uint64 roundDeadline, uint32 window) private pure returns (uint64) {
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
        _s.proposed[jobId][round][msg.sender] = m.outcome;
        uint256 n = ++_s.votes[jobId][round][m.outcome];
        _s.phase[jobId].reveals += 1;
        emit ProposalRevealed(jobId, round, msg.sender, m.digest, m.cid, m.size, m.outcome, m.accepted, verdicts, salt);
        emit SettlementRevealed(jobId, round, msg.sender, s.credits, s.slashed);
        return n == _s.jobs[jobId].quorum;
    }

    function _finalize(uint256 jobId, uint32 round, RoundSlot live, Merge memory m) private {
        LedgerStorage.Job storage j = _s.jobs[jobId];
        bytes32 parent = j.parentDigest;
        LedgerStorage.RoundRecord storage rec = _s.rounds[jobId][round];
        _s.live[jobId][parent].packed = RoundSlot.unwrap(live.retired());
        LedgerStorage.Phase memory ph = _s.phase[jobId];
        _writeRecord(rec, parent, _s.commitment[jobId].value, live, RoundStatus.Finalized, ph, ph.commitDeadline);
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
        LedgerStorage.RoundRecord storage rec,
        bytes32 parent,
        bytes32 commitment,
        RoundSlot live,
        RoundStatus status,
        LedgerStorage.Phase memory ph,
        uint64 commitDeadline
    ) private {
        rec.parent = parent;
        rec.commitment = commitment;
        rec.deadline = live.deadline();
        rec.submissions = uint16(live.count());
        rec.submitted = live.submitted();
        rec.status = uint8(status);
        rec.proposals = ph.reveals;
        rec.commits = ph.commits;
        rec.commitDeadline = commitDeadline;
        rec.closedEarlyBy = live.closedEarlyBy();
        rec.expected = uint8(live.expected());
    }

    /// @dev After round `round` closed: complete the job or open the next round on the job's parent.
    function _advance(uint256 jobId, LedgerStorage.Job storage j, uint32 round) private {
        if (round >= j.numRounds) {
            j.completed = true;
            emit JobCompleted(jobId, j.parentDigest, j.parentCid, j.parentSize);
            SettlementLib.returnStakesAndPool(_s, jobId);
        } else {
            j.currentRound = round + 1;
            _openRound(jobId, round + 1, j.parentDigest, j.roundDuration);
        }
    }

    /// @dev Workers that joined during the last round become active; returns how many
    /// workers the new round waits for.
    function _activateJoined(uint256 jobId, LedgerStorage.Job storage j) private returns (uint256) {
        address[] storage ws = _s.workers[jobId];
        uint256 n = j.numWorkers;
        if (ws.length > n) {
            uint256 left = j.numLeft;
            uint128 active = _s.rosters[jobId].active;
            for (uint256 i = n; i < ws.length; ++i) {
                uint256 slot = _s.workerIndex[jobId][ws[i]];
                if (slot & LEFT != 0) {
                    ++left;
                } else {
                    _s.workerIndex[jobId][ws[i]] = slot & ~QUEUED;
                    active |= uint128(1) << i;
                }
            }
            _s.rosters[jobId].active = active;
            j.numLeft = uint8(left);
            j.numWorkers = uint8(ws.length);
        }
        return j.numWorkers - j.numLeft;
    }

    function _openRound(uint256 jobId, uint32 round, bytes32 parent, uint32 duration) private {
        uint256 deadline = block.timestamp + duration;
        uint256 workers = _activateJoined(jobId, _s.jobs[jobId]);
        _s.live[jobId][parent].packed = RoundSlot.unwrap(RoundSlotLib.open(round, deadline, workers));
        _s.commitment[jobId].value = keccak256(abi.encode(jobId, round));
        emit RoundOpened(jobId, round, parent, uint64(deadline));
    }
}
