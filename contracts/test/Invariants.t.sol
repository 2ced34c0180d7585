// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Base, Vm} from "./Base.sol";
import {ITrainingLedger} from "../interfaces/ITrainingLedger.sol";
import {TrainingLedger} from "../TrainingLedger.sol";

/// @dev The fuzzer's hands: random calls by workers, aggregators, the owner and a stranger
/// on one staked, funded job, each caught when the contract refuses it. Ghost state records
/// what must never happen; the invariants below read it.
contract Handler is Base {
    // (Vm.Log is the cheatcode interface's struct)
    uint256 public jobId;
    uint256 public deposited;          // wei sent into the ledger (reward + stakes)
    uint256 public withdrawn;          // wei pulled out by withdraw
    uint256 public rewardsPaid;        // sum of RewardPaid
    uint256 public slashedTotal;       // sum of Slashed
    uint32 public lastRound;
    bool public roundWentBack;
    bool public strangerChangedRound;
    bool public paidTwice;
    uint256 public calls;
    mapping(uint32 => bool) internal _paidRound;
    mapping(address => bytes32) internal _salt;

    bytes32 internal constant REWARD_PAID = keccak256("RewardPaid(uint256,uint32,address,uint256,bool)");
    bytes32 internal constant SLASHED = keccak256("Slashed(uint256,uint32,address,uint256)");

    constructor() {
        _deploy();
        jobId = _job(3);
        deposited = REWARD + 3 * STAKE;
        lastRound = 1;
    }

    function theLedger() external view returns (TrainingLedger) {
        return ledger;
    }

    function parties() external view returns (address[] memory all) {
        all = new address[](8);
        for (uint256 i = 0; i < 3; ++i) (all[i], all[3 + i]) = (workers[i], aggs[i]);
        (all[6], all[7]) = (owner, stranger);
    }

    function _before() internal {
        ++calls;
        vm.recordLogs();
    }

    /// @dev Read the call's logs (payments, slashes) and check the round moved only forward.
    function _after() internal {
        Vm.Log[] memory logs = vm.getRecordedLogs();
        uint32 paidIn;
        for (uint256 i = 0; i < logs.length; ++i) {
            if (logs[i].emitter != address(ledger)) continue;
            bytes32 t = logs[i].topics[0];
            if (t == REWARD_PAID) {
                (uint256 amount,) = abi.decode(logs[i].data, (uint256, bool));
                rewardsPaid += amount;
                paidIn = uint32(uint256(logs[i].topics[2]));
            } else if (t == SLASHED) {
                slashedTotal += abi.decode(logs[i].data, (uint256));
            }
        }
        if (paidIn != 0) {
            if (_paidRound[paidIn]) paidTwice = true;
            _paidRound[paidIn] = true;
        }
        (uint32 r,) = _round(jobId);
        if (r < lastRound) roundWentBack = true;
        lastRound = r;
    }

    function warp(uint16 dt) external {
        vm.warp(block.timestamp + 1 + dt % 200);
    }

    function submit(uint8 w, bytes32 digest) external {
        _before();
        (uint32 r, bytes32 parent) = _round(jobId);
        vm.prank(workers[w % 3]);
        try ledger.submitUpdate(jobId, r, parent, digest, digest, 10, 5) {} catch {}
        _after();
    }

    function commit(uint8 a, bool cheat) external {
        _before();
        (uint32 r,) = _round(jobId);
        address agg = aggs[a % 3];
        (,, bytes32 outcome) = _outcome(jobId, r, cheat);
        bytes32 salt = keccak256(abi.encode(agg, r, cheat));
        vm.prank(agg);
        try ledger.commitProposal(jobId, r, keccak256(abi.encodePacked(outcome, salt, agg))) {
            _salt[agg] = keccak256(abi.encode(r, cheat));
        } catch {}
        _after();
    }

    function reveal(uint8 a) external {
        _before();
        (uint32 r,) = _round(jobId);
        address agg = aggs[a % 3];
        bool cheat = _salt[agg] == keccak256(abi.encode(r, true));
        (bytes memory verdicts, ITrainingLedger.Settlement memory s,) = _outcome(jobId, r, cheat);
        ITrainingLedger.RoundView memory rv = ledger.getRound(jobId, r);
        vm.prank(agg);
        try ledger.revealProposal(
            jobId, r, rv.commitment, verdicts, rv.parent, bytes32(0), 0, keccak256(abi.encode(agg, r, cheat)), s
        ) {} catch {}
        _after();
    }

    function close() external {
        _before();
        (uint32 r,) = _round(jobId);
        try ledger.closeRound(jobId, r) {} catch {}
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

    /// @dev A stranger tries everything a party may do; the round must not change.
    function strangerActs(bytes32 x, uint8 what) external {
        _before();
        (uint32 r, bytes32 parent) = _round(jobId);
        ITrainingLedger.RoundView memory b = ledger.getRound(jobId, r);
        ITrainingLedger.Settlement memory s;
        vm.prank(stranger);
        if (what % 5 == 0) try ledger.submitUpdate(jobId, r, parent, x, x, 1, 1) {} catch {}
        else if (what % 5 == 1) try ledger.commitProposal(jobId, r, x) {} catch {}
        else if (what % 5 == 2) try ledger.revealProposal(jobId, r, b.commitment, "", parent, x, 0, x, s) {} catch {}
        else if (what % 5 == 3) try ledger.disclose(jobId, r, x, 1) {} catch {}
        else try ledger.vote(jobId, r, abi.encodePacked(x)) {} catch {}
        ITrainingLedger.RoundView memory a = ledger.getRound(jobId, r);
        if (
            keccak256(abi.encode(a.submissions, a.commitment, a.commits, a.proposals, a.status, a.disclosed))
                != keccak256(abi.encode(b.submissions, b.commitment, b.commits, b.proposals, b.status, b.disclosed))
        ) strangerChangedRound = true;
        _after();
    }
}

contract InvariantsTest is Base {
    Handler internal h;

    function setUp() public {
        h = new Handler();
    }

    function targetContracts() public view returns (address[] memory t) {
        t = new address[](1);
        t[0] = address(h);
    }

    /// @notice The ledger's balance is every withdrawable balance + the pool + every stake
    /// held, to the wei (one job, so its pool is the only pool).
    function invariant_conservation() public view {
        ITrainingLedger.JobView memory v = h.theLedger().getJob(h.jobId());
        uint256 held = v.pool;
        address[] memory all = h.parties();
        for (uint256 i = 0; i < all.length; ++i) {
            (, uint256 staked) = h.theLedger().workerState(h.jobId(), all[i]);
            held += h.theLedger().balanceOf(all[i]) + staked;
        }
        require(address(h.theLedger()).balance == held, "balance != balances + pool + stakes");
        require(h.deposited() == held + h.withdrawn(), "wei created or lost");
    }

    /// @notice Each round pays once; payouts never exceed the funding plus the slashed stakes.
    function invariant_paidOnceAndWithinFunding() public view {
        require(!h.paidTwice(), "a round paid twice");
        require(h.rewardsPaid() <= REWARD + h.slashedTotal(), "paid more than funded");
    }

    function invariant_roundsOnlyMoveForward() public view {
        require(!h.roundWentBack(), "a round went backwards");
    }

    function invariant_strangersChangeNothing() public view {
        require(!h.strangerChangedRound(), "a non-party changed a round");
    }
}
