# One image for every party of the training ledger: the `ledger` CLI (roles, audit),
# the local chain (anvil, pinned in hardhat-config/) and the local IPFS node (Helia on
# node 22, pinned in ipfs-node/). compose.yaml runs each party as its own service.
#
#   docker build -t training-ledger .
#   docker build -t training-ledger --build-arg TORCH_INDEX=<a CPU-only PyTorch wheel index> .
#
# requirements.txt pins torch==2.13.0; from PyPI on Linux that is the CUDA build (several
# GB of nvidia-* wheels). TORCH_INDEX, when given, is searched too, so a CPU-only index
# gives a much smaller image. Training here is CPU work either way.
#
# Not built on the machine this was written on (no Docker engine runs there): what
# was tested is that `docker compose config` accepts compose.yaml (tests/test_deploy_files.py),
# and every step below is what `make install` does there.
FROM node:20-bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# npm packages first (they change least): anvil, cast, solc, Hardhat; then Helia and node 22.
COPY hardhat-config/package.json hardhat-config/package-lock.json hardhat-config/
RUN cd hardhat-config && npm ci --no-audit --no-fund --loglevel=error
COPY ipfs-node/package.json ipfs-node/package-lock.json ipfs-node/
RUN cd ipfs-node && npm ci --no-audit --no-fund --loglevel=error

# The Python lock.
ARG TORCH_INDEX=
COPY requirements.txt pyproject.toml ./
RUN python3 -m venv /app/.venv \
 && /app/.venv/bin/pip install --no-cache-dir --disable-pip-version-check \
      ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} -r requirements.txt

COPY . .
RUN /app/.venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps -e . \
 && /app/.venv/bin/pip check

# A party's state (keystore, deployment records, role state, store, chain or IPFS
# blocks) lives in /data: mount one volume per party there. Not root inside.
RUN useradd --create-home --uid 10001 ledger && mkdir -p /data && chown ledger:ledger /data
USER ledger
ENV PATH=/app/.venv/bin:$PATH \
    LEDGER_DATA_DIR=/data \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
WORKDIR /data
ENTRYPOINT ["ledger"]
CMD ["--help"]
