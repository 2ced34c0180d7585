"""Flower ServerApp: FedAvg over every node for ``num-server-rounds`` rounds.

The genesis parameters come from a .npz file the bench writes (the ledger job's
genesis, ``node.models.bytegpt.init_params``), so the server needs numpy only. Per-round
wall-clock timestamps (Flower logs only the total) are appended to ``timing-file``
by the strategy's ``evaluate_fn``, which Flower calls before round 1 and after each
round; after the last round the global model is saved to ``final-file``.
"""

from __future__ import annotations

import json
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    rounds = int(rc["num-server-rounds"])
    n = int(rc["num-clients"])
    timing_file, final_file = str(rc["timing-file"]), str(rc["final-file"])
    with np.load(str(rc["genesis-file"])) as z:
        genesis = {k: np.ascontiguousarray(z[k]) for k in sorted(z.files)}
    initial = ArrayRecord({k: Array.from_numpy_ndarray(v) for k, v in genesis.items()})

    def evaluate_fn(server_round: int, arrays: ArrayRecord):
        stamp = time.time()
        if timing_file:
            with open(timing_file, "a") as f:
                f.write(json.dumps({"round": server_round, "t": stamp}) + "\n")
        if server_round == rounds and final_file:
            np.savez(final_file, **{k: v.numpy() for k, v in arrays.items()})
        return None

    # Every node trains every round; no federated evaluation (the ledger's workers do
    # none either), so a round is exactly: send model, train, reply, FedAvg.
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0,
                      min_train_nodes=n, min_available_nodes=n)
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds,
                   train_config=ConfigRecord({}), evaluate_fn=evaluate_fn, timeout=3600)
