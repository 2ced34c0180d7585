// Hardhat configuration for users who live in Hardhat. Hardhat 2.29.1 is pinned in
// package.json as the project's second EVM node (tests/test_hardhat.py runs a job on
// `hardhat node`); `ledger compile` and `ledger chain up` need only solc and anvil.
//
// The compiler settings mirror ledger/compile.py (SETTINGS) so that
// `npx hardhat compile` produces the same bytecode as the committed artifact
// contracts/build/TrainingLedger.json. Keep the two in step.
//
// example:
//   cd hardhat-config && npx hardhat compile
//   npx hardhat node --port 8546 && LEDGER_RPC_URL=http://127.0.0.1:8546 ledger demo --rounds 2
//   ledger chain up   # anvil on 127.0.0.1:8545, then: npx hardhat console --network localhost

/** @type import('hardhat/config').HardhatUserConfig */
module.exports = {
  solidity: {
    version: "0.8.28",
    settings: {
      optimizer: { enabled: true, runs: 200 },
      evmVersion: "cancun",
      viaIR: true,
      metadata: { bytecodeHash: "ipfs" },
    },
  },
  // The project root is the repository, so the source is named
  // "contracts/TrainingLedger.sol" exactly as in the committed artifact (the
  // metadata hash in the bytecode depends on that name).
  paths: {
    root: "..",
    sources: "contracts",
    artifacts: "hardhat-config/artifacts",
    cache: "hardhat-config/cache",
    tests: "hardhat-config/test",
  },
  networks: {
    // `ledger chain up` (anvil, chain id 31337) listens here by default.
    localhost: {
      url: "http://127.0.0.1:8545",
      chainId: 31337,
    },
  },
};
