"""Tiny Hugging Face model directories for tests: a GPT-2 and a Llama-style model made
here with ``save_pretrained`` and a byte-level BPE tokenizer trained on local text,
exactly the files a consortium would bring (config.json, model.safetensors,
tokenizer.json). Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "data" / "tinyshakespeare.txt"


def train_tokenizer(out: Path, vocab_size: int = 384, text: bytes | None = None) -> Path:
    """A byte-level BPE ``tokenizer.json`` trained on ``text`` (default: the first 200 kB of the corpus)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = CORPUS.read_bytes()[:200_000] if text is None else text
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    lines = text.decode("utf-8", errors="replace").splitlines(keepends=True)
    tok.train_from_iterator(lines, trainer=trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    return out / "tokenizer.json"


def make_model_dir(out: Path, kind: str = "gpt2", *, vocab_size: int = 384, seed: int = 0, width: int = 32,
                   layers: int = 2, heads: int = 2, positions: int = 128) -> Path:
    """``out`` with config.json, model.safetensors and tokenizer.json of a tiny ``kind``
    ("gpt2" or "llama") model, weights drawn from ``seed``."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    train_tokenizer(out, vocab_size)
    torch.manual_seed(seed)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab_size, n_positions=positions, n_embd=width, n_layer=layers,
                                      n_head=heads, bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(cfg)
    elif kind == "llama":
        cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width,
                                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=1,
                                       max_position_embeddings=positions, bos_token_id=0, eos_token_id=0,
                                       pad_token_id=0, tie_word_embeddings=True)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        raise ValueError(kind)
    model.save_pretrained(str(out), safe_serialization=True)
    return out
