"""Flower ClientApp: one round of the ledger's local training on this node's shard.

The node's ``partition-id`` / ``num-partitions`` (``flower-supernode --node-config``)
pick shard i of ``node.training.data.make_split`` (the same equal IID shards a ledger job with
that many workers cuts); training is ``node.training.train.train_local`` with the ledger's
default model and training spec and the run's ``steps``, one torch thread. The reply
carries the new parameters by name and ``num-examples`` = steps x batch size, the
weight the ledger's FedAvg uses too.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()

_SHARDS: dict = {}


def _config(steps: int):
    from ledger.protocol.jobconfig import JobConfig

    cfg = JobConfig(name="bench")
    cfg.train.steps = int(steps)
    return cfg


def _shard(cfg, i: int, n: int) -> bytes:
    key = (i, n)
    if key not in _SHARDS:
        from node.training import data as datamod

        corpus = datamod.load_corpus(expected_sha256=cfg.data.corpus_sha256)
        split = datamod.make_split(corpus, n, mode=cfg.data.split, val_fraction=cfg.data.val_fraction)
        _SHARDS[key] = split.shards[i]
    return _SHARDS[key]


@app.train()
def train(msg: Message, context: Context) -> Message:
    from node.training.train import derive_seed, train_local

    i = int(context.node_config["partition-id"])
    n = int(context.node_config["num-partitions"])
    cfg = _config(context.run_config["steps"])
    server_round = int(msg.content["config"]["server-round"])
    params = {k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in msg.content["arrays"].items()}
    seed = derive_seed(cfg.seed, 0, server_round, f"flower-partition-{i:02d}")
    res = train_local(cfg.model, cfg.train, params, _shard(cfg, i, n), seed)
    arrays = ArrayRecord({k: Array.from_numpy_ndarray(v) for k, v in sorted(res.params.items())})
    metrics = MetricRecord({
        "num-examples": int(res.metrics["samples"]),
        "loss-end": float(res.metrics["loss_end"]),
        "train-seconds": float(res.metrics["seconds"]),
    })
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
