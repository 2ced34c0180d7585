"""DP-SGD whose noise a verifier can replay (a job's ``dp`` section, ``ledger.protocol.jobconfig.DPSpec``).

One DP step (``private_grads``), inside the one training loop (``node.training.train``):
each window of the batch gets its own gradient (one backward per window: the same
code for the byte GPT, full fine-tuning and LoRA, and deterministic where the plain
step is), clipped to ``max_grad_norm`` in L2 over all trainable tensors; the clipped
gradients are summed in window order, Gaussian noise of standard deviation
``noise_multiplier x max_grad_norm`` is added, and the sum is divided by the batch
size. AdamW then steps as usual. Batches are the job's fixed-size windows at offsets
drawn uniformly (with replacement) from the step's data seed, not Poisson sampling;
the accountant is told the matching sampling rate, batch size / windows of the data.

The noise is what a verifier cannot otherwise reproduce, so each step's noise comes
from its own seed, ``HMAC-SHA256(secret, job|round|worker|step)``, where ``secret`` is
32 random bytes the worker draws per round and keeps in its local round state. The
noise itself is drawn by numpy's PCG64 + ziggurat (``standard_normal``, float32): bit
for bit the same on every machine and kernel path, unlike torch's vectorised normal.
Before anything is public the worker commits, in its checkpoint's transcript manifest,
to one item per segment: the canonical JSON ``{step: seed hex}`` of the segment's
steps (its sha256, CID and size; ``seed_items``). After the draw it hands the drawn
segments' items to their verifiers only (``node.roles.worker.Worker.secret_items``),
who check them against the manifest (``open_seed_item``) and replay the segment with
the committed clipping and noise.

Accounting (Opacus's RDP or PRV accountant): ``noise_multiplier_for`` at job creation
(for ``rounds x steps`` steps), ``epsilon_spent`` for the steps a worker actually
trained on its data. The windows of one worker's data are that worker's dataset:
epsilon is per worker, about its own text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from ledger.protocol.jobconfig import DPSpec, canonical_json

SEED_DOMAIN = b"training-ledger/dp-seed/1"
ITEM_PREFIX = "dp-seeds-"
SECRET_BYTES = 32


class SeedError(ValueError):
    """A revealed seed item that is not the committed one or not the segment's."""


# --------------------------------------------------------------------------- seeds


def new_secret() -> bytes:
    """A worker's per-round secret (kept in its round state file; never logged)."""
    return os.urandom(SECRET_BYTES)


def step_seed(secret: bytes, job: int, round_: int, worker: str, step: int) -> bytes:
    """The 32-byte noise seed of one step: HMAC-SHA256 keyed by the worker's secret."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a DP secret is {SECRET_BYTES} bytes, got {len(secret)}")
    msg = SEED_DOMAIN + f"|{int(job)}|{int(round_)}|{worker.strip().lower()}|{int(step)}".encode()
    return hmac.new(secret, msg, hashlib.sha256).digest()


def item_name(segment: int) -> str:
    return f"{ITEM_PREFIX}{int(segment)}"


def seed_item(seeds: Mapping[int, bytes]) -> bytes:
    """What a verifier of one segment is given: canonical JSON of {step: seed hex}."""
    return canonical_json({str(int(s)): bytes(v).hex() for s, v in sorted(seeds.items())})


def seed_items(secret: bytes, job: int, round_: int, worker: str,
               bounds: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
    """(segment, item) for every segment of a round: what the manifest commits to."""
    return [(i, seed_item({s: step_seed(secret, job, round_, worker, s) for s in range(a, b)}))
            for i, (a, b) in enumerate(bounds)]


def open_seed_item(blob: bytes, digest: bytes, steps: tuple[int, int]) -> dict[int, bytes]:
    """The seeds of steps ``steps[0]..steps[1]-1`` from a revealed item, which must hash to
    the committed ``digest`` and name exactly those steps (``SeedError`` otherwise)."""
    if hashlib.sha256(bytes(blob)).digest() != bytes(digest):
        raise SeedError("the revealed noise seeds do not hash to the ones the manifest commits to")
    try:
        d = json.loads(blob)
        seeds = {int(k): bytes.fromhex(v) for k, v in d.items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise SeedError(f"the revealed noise seeds are malformed ({e})") from None
    want = set(range(*steps))
    if set(seeds) != want or any(len(v) != 32 for v in seeds.values()):
        raise SeedError(f"the revealed noise seeds are not the 32-byte seeds of steps {steps[0]}-{steps[1] - 1}")
    return seeds


# --------------------------------------------------------------------------- the step


@dataclass(frozen=True)
class DPStep:
    """How one run clips and noises: ``clip_norm`` per window (None: no clipping, which
    only a cheat does), noise of standard deviation ``noise_std``, each step's noise from
    ``seed_of(step)``."""

    clip_norm: float | None
    noise_std: float
    seed_of: Callable[[int], bytes]

    @classmethod
    def of(cls, spec: DPSpec, seed_of: Callable[[int], bytes]) -> "DPStep":
        """What the job's committed ``dp`` section prescribes."""
        c = float(spec.max_grad_norm)
        return cls(c, float(spec.noise_multiplier) * c, seed_of)

    @classmethod
    def for_worker(cls, spec: DPSpec, secret: bytes, job: int, round_: int, worker: str) -> "DPStep":
        return cls.of(spec, lambda step: step_seed(secret, job, round_, worker, step))


def noise(seed: bytes, shapes: list[tuple[int, ...]], std: float) -> list[np.ndarray]:
    """The Gaussian noise of one step, one float32 array per trainable tensor (sorted
    names): numpy's PCG64 seeded by the step's 256-bit seed."""
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(bytes(seed), "big")))
    return [rng.standard_normal(shape, dtype=np.float32) * np.float32(std) for shape in shapes]


def private_grads(lm, model, named, x, y, dp: DPStep, step: int) -> float:
    """Set each trainable parameter's ``.grad`` to the DP-SGD gradient of the batch
    (x, y); returns the batch's mean loss."""
    import torch

    params = [p for _, p in named]
    linears = linear_owners(model, params)
    if linears is not None:
        acc, losses = _batched_clipped_sum(lm, model, params, linears, x, y, dp.clip_norm)
    else:
        acc, losses = _looped_clipped_sum(lm, model, params, x, y, dp.clip_norm)
    z = noise(dp.seed_of(step), [tuple(p.shape) for p in params], dp.noise_std)
    batch = float(x.size(0))
    for p, a, n in zip(params, acc, z):
        p.grad = (a + torch.from_numpy(n).to(a.device)) / batch
    return float(np.mean(losses))


def _clip_factor(norm, clip_norm: float | None):
    """Opacus's factor: C / (norm + 1e-6), at most 1 (1 without clipping: only a cheat)."""
    import torch

    if clip_norm is None:
        return torch.ones_like(norm)
    return (clip_norm / (norm + 1e-6)).clamp(max=1.0)


def linear_owners(model, params) -> list | None:
    """The ``torch.nn.Linear`` modules whose own weights and biases are exactly the
    trainable ``params`` (LoRA's adapters), or None where any trainable tensor lives
    elsewhere (an embedding, a norm, a tied output head): those models take the loop."""
    import torch

    owners, seen = [], set()
    for m in model.modules():
        own = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if not isinstance(m, torch.nn.Linear) or any(id(p) in seen for p in own):
            return None
        seen.update(id(p) for p in own)
        owners.append(m)
    return owners if seen == {id(p) for p in params} else None


def _window_losses(lm, model, x, y):
    """Each window's mean cross-entropy (what ``lm.loss`` is of a batch of one)."""
    import torch.nn.functional as F

    with lm.autocast(x.device):
        logits = lm.logits(model, x)
    flat = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
    return flat.view(x.size(0), -1).mean(dim=1)


def _batched_clipped_sum(lm, model, params, linears, x, y, clip_norm):
    """The sum of the clipped per-window gradients of Linear-owned parameters, from one
    forward and one backward of the whole batch: a Linear's weight gradient is the sum
    over positions of output-gradient x input, so keeping the window axis gives each
    window's own (Opacus's grad sampler for ``nn.Linear``). The windows do not interact
    (no batch statistics), so the summed loss's gradient at a window's rows is that
    window's. Our hooks, unlike Opacus's, also fire in eval mode, which replay needs
    (no dropout: training must be a pure function of parameters, data and seed)."""
    import torch

    samples = {id(p): torch.zeros((x.size(0), *p.shape), dtype=torch.float32, device=p.device) for p in params}
    calls = []      # (module, its input, its output) of every call of an adapter

    def on_forward(mod, inputs, out):
        calls.append((mod, inputs[0].detach().float(), out))

    handles = [m.register_forward_hook(on_forward) for m in linears]
    try:
        losses = _window_losses(lm, model, x, y)
    finally:
        for h in handles:
            h.remove()
    # the gradients at the adapters' outputs only: the summed weight gradients, which the
    # per-window ones replace, are never computed
    outs = torch.autograd.grad(losses.sum(), [out for _, _, out in calls])
    for (mod, a, _), g in zip(calls, outs):
        g = g.float()
        samples[id(mod.weight)].add_(torch.einsum("n...o,n...i->noi", g, a))
        if mod.bias is not None and mod.bias.requires_grad:
            samples[id(mod.bias)].add_(g.reshape(g.size(0), -1, g.size(-1)).sum(1))
    grads = [samples[id(p)] for p in params]
    norms = torch.linalg.vector_norm(torch.stack([g.flatten(1).norm(dim=1) for g in grads], dim=1), dim=1)
    factor = _clip_factor(norms, clip_norm)
    return [torch.einsum("n,n...->...", factor, g) for g in grads], losses.detach().tolist()


def _looped_clipped_sum(lm, model, params, x, y, clip_norm):
    """The same sum by one backward per window: any model (a tied head, an embedding, a
    norm), at about batch-size times the cost of its plain step."""
    import torch

    acc = [torch.zeros_like(p) for p in params]
    losses = []
    for i in range(x.size(0)):
        loss = lm.loss(model, x[i:i + 1], y[i:i + 1])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        factor = _clip_factor(norm, clip_norm)
        for a, g in zip(acc, grads):
            a.add_(g * factor)
        losses.append(float(loss.detach()))
    return acc, losses


# --------------------------------------------------------------------------- accounting


def sample_rate(batch_size: int, tokens: list[int], block_size: int) -> float:
    """Batch size over the windows of the smallest dataset (the highest rate: the most
    noise any worker needs)."""
    windows = min(int(n) - int(block_size) for n in tokens)
    if windows < 1:
        raise ValueError(f"data of {min(tokens)} tokens is too short for windows of {block_size + 1}")
    return min(1.0, int(batch_size) / windows)


def noise_multiplier_for(epsilon: float, delta: float, rate: float, steps: int, accountant: str = "rdp") -> float:
    """Opacus's noise multiplier reaching (epsilon, delta) after ``steps`` steps at ``rate``."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return float(get_noise_multiplier(target_epsilon=float(epsilon), target_delta=float(delta),
                                              sample_rate=float(rate), steps=int(steps), accountant=accountant))
    except ValueError as e:      # "The privacy budget is too low."
        raise ValueError(f"no noise reaches epsilon {epsilon:g} at delta {delta:g} over {steps} steps "
                         f"at sampling rate {rate:.3g} ({e})") from None


def commit(spec: DPSpec, *, rounds: int, steps: int, batch_size: int, tokens: list[int], block_size: int) -> DPSpec:
    """Fill in the accountant's answer for a job about to be created (``spec`` in place)."""
    spec.rounds = int(rounds)
    spec.sample_rate = sample_rate(batch_size, tokens, block_size)
    spec.noise_multiplier = noise_multiplier_for(spec.epsilon, spec.delta, spec.sample_rate,
                                                 int(rounds) * int(steps), spec.accountant)
    return spec


def epsilon_spent(spec: DPSpec, steps: int) -> float:
    """The epsilon (at the job's delta) of ``steps`` DP steps under the committed noise and rate."""
    if int(steps) <= 0:
        return 0.0
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=spec.accountant)
    acc.history = [(float(spec.noise_multiplier), float(spec.sample_rate), int(steps))]
    with warnings.catch_warnings():      # "optimal order is the largest alpha": a looser bound, still a bound
        warnings.simplefilter("ignore", UserWarning)
        return float(acc.get_epsilon(delta=float(spec.delta)))


def epsilon_by_rounds(config) -> Callable[[int], float] | None:
    """rounds a worker trained -> the epsilon it spent (``ledger.trail.history.JobHistory.epsilon_of``);
    None for a job without DP."""
    if config.dp is None:
        return None
    spec, steps, memo = config.dp, int(config.train.steps), {}

    def of(rounds: int) -> float:
        if rounds not in memo:
            memo[rounds] = epsilon_spent(spec, int(rounds) * steps)
        return memo[rounds]

    return of
