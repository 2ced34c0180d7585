// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Base, Vm} from "./Base.sol";
import {ITrainingLedger} from "../interfaces/ITrainingLedger.sol";
import {TrainingLedger} from "../TrainingLedger.sol";

/// @dev The fuzzer's hands: random calls by workers, aggregators, the owner and a stranger
/// on up to three staked, funded jobs (the owner creates the later ones), each caught when the
/// contract refuses it. Ghost state records what must never happen, and how far the run got
/// (rounds finalized, payments made) so the invariants are known not to hold vacuously.
contract Handler is Base {
    uint256 internal constant MAX_JOBS = 3;

    uint256[] public jobs;
    uint256 public deposited;          // wei sent into the ledger (rewards + stakes)
    uint256 public withdrawn;          // wei pulled out by withdraw
    bool public roundWentBack;
    bool public strangerChangedRound;
    bool public paidTwice;
    bool public overpaid;              // a job paid out more than it was funded
    uint256 public calls;
    uint256 public finalized;          // RoundFinalized seen
    uint256 public payments;           // RewardPaid seen
    mapping(uint256 => uint256) public funded;    // per job: its reward + the stakes slashed into its pool
    mapping(uint256 => uint256) public paidOut;   // per job: RewardPaid + PoolReturned
    mapping(uint256 => uint32) internal _lastRound;
    mapping(bytes32 => bool) internal _paid;      // (job, round, account) paid
    mapping(bytes32 => bytes32) internal _salt;   // (job, aggregator) -> what it committed to

    bytes32 internal constant REWARD_PAID = keccak256("RewardPaid(uint256,uint32,address,uint256,bool)");
    bytes32 internal constant SLASHED = keccak256("Slashed(uint256,uint32,address,uint256)");
    bytes32 internal constant POOL_RETURNED = keccak256("PoolReturned(uint256,address,uint256)");
    bytes32 internal constant FINALIZED = keccak256("RoundFinalized(uint256,uint32,bytes32,bytes32,uint64,bytes32,uint16)");

    constructor() {
        _deploy();
        _newJob();
    }

    function _newJob() internal {
        vm.deal(owner, owner.balance + REWARD);
        for (uint256 i = 0; i < 3; ++i) vm.deal(workers[i], workers[i].balance + STAKE);
        uint256 id = _job(3);
        jobs.push(id);
        deposited += REWARD + 3 * STAKE;
        funded[id] = REWARD;
        _lastRound[id] = 1;
    }

    function theLedger() external view returns (TrainingLedger) {
        return ledger;
    }

    function jobCount() external view returns (uint256) {
        return jobs.length;
    }

    function parties() external view returns (address[] memory all) {
        all = new address[](8);
        for (uint256 i = 0; i < 3; ++i) (all[i], all[3 + i]) = (workers[i], aggs[i]);
        (all[6], all[7]) = (owner, stranger);
    }

    function _pick(uint8 j) internal view returns (uint256) {
        return jobs[j % jobs.length];
    }

    function _before() internal {
        ++calls;
        vm.recordLogs();
    }

    /// @dev Read the call's logs (payments, slashes, returns) and check every round moved only forward.
    function _after() internal {
        Vm.Log[] memory logs = vm.getRecordedLogs();
        for (uint256 i = 0; i < logs.length; ++i) {
            if (logs[i].emitter != address(ledger)) continue;
            bytes32 t = logs[i].topics[0];
            uint256 job = logs[i].topics.length > 1 ? uint256(logs[i].topics[1]) : 0;
            if (t == REWARD_PAID) {
                (uint256 amount,) = abi.decode(logs[i].data, (uint256, bool));
                bytes32 key = keccak256(abi.encode(job, logs[i].topics[2], logs[i].topics[3]));
                if (_paid[key]) paidTwice = true;
                _paid[key] = true;
                paidOut[job] += amount;
                ++payments;
            } else if (t == POOL_RETURNED) {
                paidOut[job] += abi.decode(logs[i].data, (uint256));
            } else if (t == SLASHED) {
                funded[job] += abi.decode(logs[i].data, (uint256));
            } else if (t == FINALIZED) {
                ++finalized;
            }
        }
        for (uint256 k = 0; k < jobs.length; ++k) {
            if (paidOut[jobs[k]] > funded[jobs[k]]) overpaid = true;
            (uint32 r,) = _round(jobs[k]);
            if (r < _lastRound[jobs[k]]) roundWentBack = true;
            _lastRound[jobs[k]] = r;
        }
    }

    function warp(uint16 dt) external {
        vm.warp(block.timestamp + 1 + dt % 200);
    }

    function submit(uint8 j, uint8 w, bytes32 digest) external {
        _before();
        _submit(_pick(j), workers[w % 3], digest);
        _after();
    }

    function commit(uint8 j, uint8 a, bool cheat) external {
        _before();
        _commit(_pick(j), aggs[a % 3], cheat);
        _after();
    }

    function reveal(uint8 j, uint8 a) external {
        _before();
        _reveal(_pick(j), aggs[a % 3]);
        _after();
    }

    /// @dev A whole round in one call, the way honest parties play it (every worker submits,
    /// every aggregator commits, then reveals; `cheats` picks aggregators that slash worker 0),
    /// so the random sequences reach settlement and payment often, not by luck.
    function playRound(uint8 j, uint8 cheats, bytes32 digest) external {
        _before();
        uint256 id = _pick(j);
        for (uint256 i = 0; i < 3; ++i) _submit(id, workers[i], keccak256(abi.encode(digest, i)));
        for (uint256 i = 0; i < 3; ++i) _commit(id, aggs[i], (cheats >> i) & 1 == 1);
        for (uint256 i = 0; i < 3; ++i) _reveal(id, aggs[i]);
        _after();
    }

    function _submit(uint256 id, address worker, bytes32 digest) internal {
        (uint32 r, bytes32 parent) = _round(id);
        vm.prank(worker);
        try ledger.submitUpdate(id, r, parent, digest, digest, 10, 5) {} catch {}
    }

    function _commit(uint256 id, address agg, bool cheat) internal {
        (uint32 r,) = _round(id);
        (,, bytes32 outcome) = _outcome(id, r, cheat);
        vm.prank(agg);
        try ledger.commitProposal(id, r, keccak256(abi.encodePacked(outcome, _saltOf(agg, r, cheat), agg))) {
            _salt[keccak256(abi.encode(id, agg))] = keccak256(abi.encode(r, cheat));
        } catch {}
    }

    function _saltOf(address agg, uint32 r, bool cheat) internal pure returns (bytes32) {
        return keccak256(abi.encode(agg, r, cheat));
    }

    function _reveal(uint256 id, address agg) internal {
        (uint32 r,) = _round(id);
        bool cheat = _salt[keccak256(abi.encode(id, agg))] == keccak256(abi.encode(r, true));
        (bytes memory verdicts, ITrainingLedger.Settlement memory s,) = _outcome(id, r, cheat);
        ITrainingLedger.RoundView memory rv = ledger.getRound(id, r);
        vm.prank(agg);
        try ledger.revealProposal(id, r, rv.commitment, verdicts, rv.parent, bytes32(0), 0, _saltOf(agg, r, cheat), s) {}
            catch {}
    }

    function close(uint8 j) external {
        _before();
        uint256 id = _pick(j);
        (uint32 r,) = _round(id);
        try ledger.closeRound(id, r) {} catch {}
        _after();
    }

    function withdraw(uint8 who) external {
        _before();
        address[8] memory all = [workers[0], workers[1], workers[2], aggs[0], aggs[1], aggs[2], owner, stranger];
        address account = all[who % 8];
        uint256 before = account.balance;
        vm.prank(account);
        try ledger.withdraw() {
            withdrawn += account.balance - before;
        } catch {}
        _after();
    }

    /// @dev The owner's own moves: another funded job (up to MAX_JOBS), or a grant.
    function ownerActs(uint8 j, bool newJob, bytes32 cid) external {
        _before();
        if (newJob && jobs.length < MAX_JOBS) {
            _newJob();
        } else {
            vm.prank(owner);
            try ledger.grant(_pick(j), stranger, cid, 1) {} catch {}
        }
        _after();
    }

    /// @dev An account that is no party to the rounds (the stranger, or the owner, who created
    /// the job but neither trains nor aggregates) tries everything a party may do; the round
    /// must not change.
    function strangerActs(uint8 j, bytes32 x, uint8 what, bool asOwner) external {
        _before();
        uint256 id = _pick(j);
        (uint32 r, bytes32 parent) = _round(id);
        ITrainingLedger.RoundView memory b = ledger.getRound(id, r);
        ITrainingLedger.Settlement memory s;
        vm.prank(asOwner ? owner : stranger);
        if (what % 5 == 0) try ledger.submitUpdate(id, r, parent, x, x, 1, 1) {} catch {}
        else if (what % 5 == 1) try ledger.commitProposal(id, r, x) {} catch {}
        else if (what % 5 == 2) try ledger.revealProposal(id, r, b.commitment, "", parent, x, 0, x, s) {} catch {}
        else if (what % 5 == 3) try ledger.disclose(id, r, x, 1) {} catch {}
        else try ledger.vote(id, r, abi.encodePacked(x)) {} catch {}
        ITrainingLedger.RoundView memory a = ledger.getRound(id, r);
        if (
            keccak256(abi.encode(a.submissions, a.commitment, a.commits, a.proposals, a.status, a.disclosed))
                != keccak256(abi.encode(b.submissions, b.commitment, b.commits, b.proposals, b.status, b.disclosed))
        ) strangerChangedRound = true;
        _after();
    }
}

contract InvariantsTest is Base {
    /// @dev Where each run appends how far it got; tests/chain/test_forge.py reads it to show the
    /// invariants were checked on runs that finalized rounds and paid (foundry.toml fs_permissions).
    string internal constant STATS = ".forge/invariant-stats.txt";

    Handler internal h;

    function setUp() public {
        h = new Handler();
    }

    function targetContracts() public view returns (address[] memory t) {
        t = new address[](1);
        t[0] = address(h);
    }

    /// @notice The ledger's balance is every withdrawable balance + every job's pool + every
    /// stake held, to the wei; and no wei was created or lost against what went in and out.
    function invariant_conservation() public view {
        TrainingLedger l = h.theLedger();
        address[] memory all = h.parties();
        uint256 held;
        for (uint256 i = 0; i < all.length; ++i) held += l.balanceOf(all[i]);
        for (uint256 k = 0; k < h.jobCount(); ++k) {
            uint256 id = h.jobs(k);
            held += l.getJob(id).pool;
            for (uint256 i = 0; i < all.length; ++i) {
                (, uint256 staked) = l.workerState(id, all[i]);
                held += staked;
            }
        }
        require(address(l).balance == held, "balance != balances + pools + stakes");
        require(h.deposited() == held + h.withdrawn(), "wei created or lost");
    }

    /// @notice No account is paid twice for one round of one job.
    function invariant_nothingPaidTwice() public view {
        require(!h.paidTwice(), "an account paid twice for one round");
    }

    /// @notice What a job paid out (rewards and the pool returned) never exceeds what it was
    /// funded with (its reward and the stakes slashed into its pool), at every step.
    function invariant_payoutsWithinFunding() public view {
        require(!h.overpaid(), "a job paid more than it was funded");
        for (uint256 k = 0; k < h.jobCount(); ++k) {
            uint256 id = h.jobs(k);
            require(h.paidOut(id) <= h.funded(id), "a job paid more than it was funded");
        }
    }

    function invariant_roundsOnlyMoveForward() public view {
        require(!h.roundWentBack(), "a round went backwards");
    }

    function invariant_strangersChangeNothing() public view {
        require(!h.strangerChangedRound(), "a non-party changed a round");
    }

    /// @dev One line per run: how far the random sequence got.
    function afterInvariant() public {
        vm.writeLine(
            STATS,
            string.concat(
                "calls=", vm.toString(h.calls()), " jobs=", vm.toString(h.jobCount()), " finalized=",
                vm.toString(h.finalized()), " payments=", vm.toString(h.payments())
            )
        );
    }
}
