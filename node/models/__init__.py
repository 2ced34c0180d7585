"""Models: one interface (``base.LanguageModel``), three kinds.

- ``bytegpt``: the project's byte-level GPT, trained from scratch;
- ``hf``: a Hugging Face GPT-2 or Llama-style model, fully fine-tuned;
- ``lora``: the same with a frozen base and LoRA adapters as the trainable state.
``importer`` turns a model directory (or the built-in SmolLM2) into what a job
commits to; ``params`` converts torch state to the canonical numpy form.
"""

from __future__ import annotations

from typing import Callable

from ledger.errors import LedgerError
from ledger.protocol.jobconfig import Artifact, ModelSpec


def language_model(spec: ModelSpec, fetch: Callable[[Artifact, str], bytes] | None = None):
    """The ``LanguageModel`` a job's ``spec`` describes. ``fetch(artifact, what)`` returns
    the bytes of a committed artifact (the tokenizer, a LoRA base), already checked
    against its digest; a byte GPT needs none."""
    if spec.kind == "byte-gpt":
        from node.models.bytegpt import ByteGPTModel

        return ByteGPTModel(spec)
    if fetch is None:
        raise LedgerError(f"a {spec.kind} model needs its committed tokenizer and weights from storage")
    tokenizer = fetch(spec.tokenizer, "tokenizer")
    if spec.lora:
        from ledger.store import checkpoint

        from node.models.lora import LoraModel

        raw = fetch(spec.base, "base weights")
        try:
            base, _ = checkpoint.decode(raw, cid=spec.base.cid, max_size=spec.base.num_bytes)
        except ValueError as e:
            raise LedgerError(f"the base weights {spec.base.cid} are not a valid checkpoint: {e}") from None
        return LoraModel(spec, tokenizer, base)
    from node.models.hf import HFModel

    return HFModel(spec, tokenizer)
