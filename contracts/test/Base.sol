// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {TrainingLedger} from "../TrainingLedger.sol";
import {ITrainingLedger} from "../interfaces/ITrainingLedger.sol";

/// @dev The cheatcodes these tests use (forge's `Vm`; forge-std is not vendored).
interface Vm {
    struct Log {
        bytes32[] topics;
        bytes data;
        address emitter;
    }

    function prank(address) external;
    function warp(uint256) external;
    function deal(address, uint256) external;
    function addr(uint256) external pure returns (address);
    function sign(uint256, bytes32) external pure returns (uint8, bytes32, bytes32);
    function expectRevert(bytes4) external;
    function expectRevert() external;
    function recordLogs() external;
    function getRecordedLogs() external returns (Log[] memory);
    function assume(bool) external pure;
    function writeLine(string calldata, string calldata) external;
    function toString(uint256) external pure returns (string memory);
}

/// @dev A deployed TrainingLedger with named parties and helpers that act as them.
abstract contract Base {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));
    uint256 internal constant STAKE = 1 ether;
    uint256 internal constant REWARD = 30 ether;

    TrainingLedger internal ledger;
    address internal owner = address(0xA11CE);
    address internal stranger = address(0xBAD);
    address[] internal workers;
    uint256[] internal workerKeys;
    address[] internal aggs;

    function _deploy() internal {
        ledger = new TrainingLedger();
        for (uint256 i = 0; i < 3; ++i) {
            workerKeys.push(0x1000 + i);
            workers.push(vm.addr(0x1000 + i));
            aggs.push(address(uint160(0xA660 + i)));
            vm.deal(workers[i], 10 ether);
            vm.deal(aggs[i], 1 ether);
        }
        vm.deal(owner, 100 ether);
        vm.deal(stranger, 10 ether);
    }

    function _params(uint32 rounds) internal view returns (ITrainingLedger.JobParams memory p) {
        p.configDigest = keccak256("config");
        p.configCid = keccak256("config cid");
        p.configSize = 100;
        p.genesisDigest = keccak256("genesis");
        p.genesisCid = keccak256("genesis cid");
        p.genesisSize = 200;
        p.workers = workers;
        p.aggregators = aggs;
        p.quorum = 2;
        p.roundDuration = 100;
        p.proposalWindow = 50;
        p.numRounds = rounds;
        p.minSubmissions = 1;
        p.workerStake = uint128(STAKE);
        p.slashBps = 5000;
        p.aggregatorBps = 1000;
    }

    /// @dev A staked, funded job of 3 workers (all staked) and 3 aggregators.
    function _job(uint32 rounds) internal returns (uint256 jobId) {
        vm.prank(owner);
        jobId = ledger.createJob{value: REWARD}(_params(rounds));
        for (uint256 i = 0; i < workers.length; ++i) {
            vm.prank(workers[i]);
            ledger.stake{value: STAKE}(jobId);
        }
    }

    function _round(uint256 jobId) internal view returns (uint32 r, bytes32 parent) {
        ITrainingLedger.JobView memory v = ledger.getJob(jobId);
        return (v.currentRound, v.parentDigest);
    }

    /// @dev What an aggregator reveals for a round: all accepted, credit 1 each submitter
    /// (or `cheat`: worker 0 slashed when it submitted), the parent kept.
    function _outcome(uint256 jobId, uint32 r, bool cheat)
        internal
        view
        returns (bytes memory verdicts, ITrainingLedger.Settlement memory s, bytes32 outcome)
    {
        ITrainingLedger.RoundView memory rv = ledger.getRound(jobId, r);
        verdicts = new bytes(rv.submissions);
        uint256 n = ledger.getJob(jobId).numWorkers;
        s.credits = new uint64[](n);
        for (uint256 i = 0; i < n; ++i) {
            if (ledger.hasSubmitted(jobId, r, workers[i])) {
                if (cheat && i == 0) s.slashed = 1;
                else s.credits[i] = uint64(1 + i);
            }
        }
        outcome = keccak256(
            abi.encodePacked(rv.parent, bytes32(0), uint64(0), verdicts, keccak256(abi.encode(s.credits, s.slashed)))
        );
    }

    function _sumBalances(uint256 jobId) internal view returns (uint256 total) {
        for (uint256 i = 0; i < workers.length; ++i) {
            (, uint256 staked) = ledger.workerState(jobId, workers[i]);
            total += ledger.balanceOf(workers[i]) + staked;
        }
        for (uint256 i = 0; i < aggs.length; ++i) total += ledger.balanceOf(aggs[i]);
        total += ledger.balanceOf(owner) + ledger.balanceOf(stranger);
    }
}
