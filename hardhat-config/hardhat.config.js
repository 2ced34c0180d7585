// Hardhat configuration for users who live in Hardhat (Hardhat itself is not a
// dependency of this project: `ledger compile` and `ledger chain up` need only the
// pinned solc and anvil in package.json).
//
// The compiler settings mirror ledger/compile.py (SETTINGS) so that
// `npx hardhat compile` produces the same bytecode as the committed artifact
// contracts/build/TrainingLedger.json. Keep the two in step.
//
// example:
//   cd hardhat-config && npm install --save-dev hardhat && npx hardhat compile
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
