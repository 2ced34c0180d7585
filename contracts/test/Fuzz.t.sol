// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Base} from "./Base.sol";
import {ITrainingLedger} from "../interfaces/ITrainingLedger.sol";

/// @dev Fuzz tests of every external function: random arguments and callers either do
/// what the function promises or revert with its typed error, never anything else.
contract FuzzTest is Base {
    uint256 internal job;

    function setUp() public {
        _deploy();
        job = _job(2);
    }

    function testFuzz_createJob(uint8 nAggs, uint8 quorum, uint32 duration, uint16 minSubs, uint8 cidVersion, uint16 bps)
        public
    {
        ITrainingLedger.JobParams memory p = _params(1);
        address[] memory a = new address[](nAggs % 8);
        for (uint256 i = 0; i < a.length; ++i) a[i] = address(uint160(0xB000 + i));
        p.aggregators = a;
        p.quorum = quorum;
        p.roundDuration = duration;
        p.minSubmissions = minSubs;
        p.cidVersion = cidVersion;
        p.slashBps = bps;
        bool valid = a.length > 0 && uint256(quorum) * 2 > a.length && quorum <= a.length && duration > 0
            && minSubs > 0 && minSubs <= 3 && cidVersion <= 1 && bps <= 10_000;
        uint256 before = ledger.jobCount();
        vm.prank(owner);
        try ledger.createJob{value: 1 ether}(p) returns (uint256 id) {
            require(valid, "accepted invalid params");
            require(id == before + 1 && ledger.getJob(id).pool == 1 ether, "job not stored");
            require(ledger.getRound(id, 1).status == ITrainingLedger.RoundStatus.Open, "round 1 not open");
        } catch {
            require(!valid, "refused valid params");
            require(ledger.jobCount() == before, "a refused job was counted");
        }
    }

    function testFuzz_stake(uint8 who, uint256 amount) public {
        vm.prank(owner);
        uint256 id = ledger.createJob(_params(1));
        address w = who % 2 == 0 ? workers[who % 3] : stranger;
        amount = amount % (3 * STAKE);
        vm.deal(w, amount);
        vm.prank(w);
        try ledger.stake{value: amount}(id) {
            require(w != stranger && amount == STAKE, "wrong stake accepted");
            (uint8 st, uint256 held) = ledger.workerState(id, w);
            require(st == 1 && held == STAKE, "stake not held");
        } catch {
            require(w == stranger || amount != STAKE, "right stake refused");
        }
    }

    function testFuzz_submitUpdate(uint8 who, uint32 round, bytes32 parent, bytes32 digest, uint64 size) public {
        address w = who % 4 == 3 ? stranger : workers[who % 4];
        (uint32 r, bytes32 p) = _round(job);
        bool right = w != stranger && (round == r || round % 2 == 0) && (parent == p || uint256(parent) % 2 == 0);
        if (right) (round, parent) = (r, p);
        vm.prank(w);
        try ledger.submitUpdate(job, round, parent, digest, digest, size, 1) {
            require(right, "wrong submission accepted");
            require(ledger.hasSubmitted(job, r, w), "not recorded");
        } catch {
            require(!right, "right submission refused");
        }
    }

    function testFuzz_submitBatch(uint8 signerKey, bytes32 digest) public {
        (uint32 r, bytes32 p) = _round(job);
        ITrainingLedger.SignedUpdate[] memory u = new ITrainingLedger.SignedUpdate[](1);
        uint256 key = signerKey % 2 == 0 ? workerKeys[1] : 0xDEAD;
        bytes32 structHash = keccak256(abi.encode(ledger.SUBMISSION_TYPEHASH(), job, r, p, digest, digest, uint64(7), uint64(3)));
        (uint8 v, bytes32 rr, bytes32 s) =
            vm.sign(key, keccak256(abi.encodePacked(hex"1901", ledger.domainSeparator(), structHash)));
        u[0] = ITrainingLedger.SignedUpdate(1, digest, digest, 7, 3, rr, bytes32(uint256(s) | (uint256(v - 27) << 255)));
        vm.prank(stranger); // anyone relays
        try ledger.submitBatch(job, r, p, workers, u) {
            require(key == workerKeys[1] && ledger.hasSubmitted(job, r, workers[1]), "bad signature counted");
        } catch (bytes memory err) {
            require(key != workerKeys[1] && bytes4(err) == ITrainingLedger.BadSignature.selector, "good batch refused");
        }
    }

    function _closeWithSubmissions() internal returns (uint32 r) {
        bytes32 p;
        (r, p) = _round(job);
        for (uint256 i = 0; i < 3; ++i) {
            vm.prank(workers[i]);
            ledger.submitUpdate(job, r, p, bytes32(i + 1), bytes32(i + 1), 1, 1);
        }
    }

    function testFuzz_commitAndReveal(uint8 who, bytes32 salt, bool tamper) public {
        uint32 r = _closeWithSubmissions();
        address a = who % 4 == 3 ? stranger : aggs[who % 4];
        (bytes memory verdicts, ITrainingLedger.Settlement memory s, bytes32 outcome) = _outcome(job, r, false);
        vm.prank(a);
        try ledger.commitProposal(job, r, keccak256(abi.encodePacked(outcome, salt, a))) {
            require(a != stranger, "stranger committed");
        } catch (bytes memory err) {
            require(a == stranger && bytes4(err) == ITrainingLedger.NotAggregator.selector, "aggregator refused");
            return;
        }
        vm.warp(block.timestamp + 60); // the commit phase (50 s from the first commit) is over, the reveal phase not
        ITrainingLedger.RoundView memory rv = ledger.getRound(job, r);
        if (tamper) s.credits[0] += 1;
        vm.prank(a);
        try ledger.revealProposal(job, r, rv.commitment, verdicts, rv.parent, bytes32(0), 0, salt, s) {
            require(!tamper, "a reveal that does not open its commit was accepted");
            require(ledger.proposalOf(job, r, a) == outcome, "reveal not recorded");
        } catch (bytes memory err) {
            require(tamper && bytes4(err) == ITrainingLedger.RevealMismatch.selector, "honest reveal refused");
        }
    }

    function testFuzz_disclose(uint8 who, bytes32 cid, uint64 size) public {
        vm.prank(owner);
        ITrainingLedger.JobParams memory p = _params(1);
        p.disclosureWindow = 60;
        p.workerStake = 0;
        uint256 id = ledger.createJob(p);
        (uint32 r, bytes32 parent) = _round(id);
        vm.prank(workers[0]);
        ledger.submitUpdate(id, r, parent, bytes32(uint256(1)), bytes32(uint256(1)), 1, 1);
        vm.warp(block.timestamp + 101);
        address w = workers[who % 3];
        vm.prank(w);
        try ledger.disclose(id, r, cid, size) {
            require(w == workers[0] && ledger.hasDisclosed(id, r, w), "non-submitter disclosed");
        } catch (bytes memory err) {
            require(w != workers[0] && bytes4(err) == ITrainingLedger.NotSubmitted.selector, "submitter refused");
        }
    }

    function testFuzz_grant(address caller, address to, bytes32 cid, uint64 size) public {
        vm.prank(caller);
        try ledger.grant(job, to, cid, size) {
            require(caller == owner, "non-creator granted");
        } catch (bytes memory err) {
            require(caller != owner && bytes4(err) == ITrainingLedger.NotCreator.selector, "creator refused");
        }
    }

    function testFuzz_vote(address caller, bytes calldata ballot) public {
        vm.prank(caller);
        try ledger.vote(job, 1, ballot) {
            require(caller == aggs[0] || caller == aggs[1] || caller == aggs[2], "non-aggregator voted");
        } catch (bytes memory err) {
            require(bytes4(err) == ITrainingLedger.NotAggregator.selector, "wrong error");
        }
    }

    function testFuzz_closeRound(uint16 dt, uint8 submitters) public {
        (uint32 r, bytes32 p) = _round(job);
        for (uint256 i = 0; i < submitters % 3; ++i) {
            vm.prank(workers[i]);
            ledger.submitUpdate(job, r, p, bytes32(i + 1), bytes32(i + 1), 1, 1);
        }
        vm.warp(block.timestamp + dt);
        vm.prank(stranger); // anyone may close
        try ledger.closeRound(job, r) {
            require(ledger.getRound(job, r).status == ITrainingLedger.RoundStatus.Skipped, "not skipped");
            require(ledger.getJob(job).currentRound == r + 1, "next round not opened");
        } catch {
            require(ledger.getRound(job, r).status == ITrainingLedger.RoundStatus.Open
                || ledger.getRound(job, r).status == ITrainingLedger.RoundStatus.Closed, "state changed on a refusal");
        }
    }

    function testFuzz_joinAndLeave(uint256 amount, uint16 dt) public {
        ITrainingLedger.JobParams memory p = _params(2);
        p.maxWorkers = 5;
        vm.prank(owner);
        uint256 id = ledger.createJob(p);
        amount = amount % (2 * STAKE);
        vm.warp(block.timestamp + dt);
        bool between = dt > 100;
        vm.prank(stranger);
        try ledger.join{value: amount}(id, bytes32(0), 0) {
            require(amount == STAKE && between, "bad join accepted");
            uint256 before = ledger.balanceOf(stranger);
            vm.prank(stranger);
            ledger.leave(id);
            require(ledger.balanceOf(stranger) == before + STAKE, "stake not returned on leave");
        } catch {
            require(amount != STAKE || !between, "good join refused");
        }
    }

    function testFuzz_withdraw(address caller) public {
        vm.assume(caller.code.length == 0 && uint160(caller) > 0x10000);
        vm.prank(caller);
        try ledger.withdraw() {
            revert("withdrew a zero balance");
        } catch (bytes memory err) {
            require(bytes4(err) == ITrainingLedger.NothingToWithdraw.selector, "wrong error");
        }
    }

    function testFuzz_views(uint256 jobId, uint32 round, address who) public view {
        if (jobId == 0 || jobId > ledger.jobCount()) {
            try ledger.getJob(jobId) {
                revert("an unknown job has a view");
            } catch {}
            return;
        }
        ledger.getRound(jobId, round);
        ledger.hasSubmitted(jobId, round, who);
        ledger.workerState(jobId, who);
        require(ledger.votes(jobId, round, bytes32(0)) == 0, "votes for nothing");
    }
}
