"""Local servers the CLI starts and stops by PID: the dev chain (anvil, chainkeeper), the IPFS node (ipfs_node), their process plumbing (procs) and listen addresses (listen)."""
