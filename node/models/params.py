"""torch state_dict <-> ``dict[str, np.ndarray]``, the form checkpoints are made of.

The numpy side is canonical: float32, C-contiguous, each array owning its memory,
names in sorted order, every tensor present exactly once. ``ledger.store.checkpoint.encode``
serialises exactly this, so two parties holding the same weights produce the same
bytes and the same digest.
"""

from __future__ import annotations

import numpy as np
import torch


def to_numpy(state: dict[str, torch.Tensor] | torch.nn.Module) -> dict[str, np.ndarray]:
    """Parameters of a module (or a state_dict) as canonical numpy arrays.

    For a module, only parameters are taken (buffers such as the attention mask are
    derived from the config, not learned). Tensors sharing storage (tied weights
    registered twice) are kept once, under the first name in sorted order, so a
    checkpoint never carries an aliased duplicate.
    """
    if isinstance(state, torch.nn.Module):
        # named_parameters() already de-duplicates shared Parameters; state_dict() does not.
        items = dict(state.named_parameters())
    else:
        items = dict(state)
    out: dict[str, np.ndarray] = {}
    seen: dict[tuple[int, int, tuple, tuple], str] = {}
    for name in sorted(items):
        t = items[name].detach()
        if t.device.type != "cpu":
            t = t.cpu()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            continue  # an alias of seen[key]
        seen[key] = name
        # np.array(copy) so the result never shares memory with a live torch tensor
        # that the optimiser will keep mutating.
        out[name] = np.array(t.to(torch.float32).numpy(), dtype=np.float32, order="C", copy=True)
    return out


def to_state_dict(params: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """numpy -> torch (copies; float32)."""
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C", copy=True)) for k, v in sorted(params.items())}


def load_into(model: torch.nn.Module, params: dict[str, np.ndarray],
              named: list[tuple[str, torch.nn.Parameter]] | None = None) -> torch.nn.Module:
    """Copy ``params`` into ``model``'s parameters in place, strictly: the names and
    shapes must match exactly (no missing, no extra). ``named``: the (name, parameter)
    pairs to fill (a LoRA model's adapter); default every parameter of ``model``."""
    own = dict(model.named_parameters() if named is None else named)
    missing = sorted(set(own) - set(params))
    extra = sorted(set(params) - set(own))
    if missing or extra:
        raise ValueError(f"parameter names do not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        for name, p in own.items():
            a = params[name]
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError(f"parameter {name}: shape {tuple(a.shape)} does not match the model's {tuple(p.shape)}")
            if p.is_meta:
                continue
            p.copy_(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)))
    return model


def param_bytes(params: dict[str, np.ndarray]) -> bytes:
    """The raw float32 bytes of all tensors in sorted-name order (for hashing / comparing)."""
    return b"".join(np.ascontiguousarray(params[k], dtype=np.float32).tobytes() for k in sorted(params))
