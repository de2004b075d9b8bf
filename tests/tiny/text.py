"""Tiny Hugging Face checkpoints for the text reward models (see ``tests/tiny/__init__.py``).

Each builder writes a Hugging Face model directory (``config.json`` + ``model.safetensors``
+ tokenizer files: the layout of the hub repositories the registry names) with a tiny
Llama / Qwen2 / Qwen3 / Gemma2 / DeBERTa-v2 model and a byte-level BPE tokenizer trained
on the fly, and returns the ``mmreward.load`` keyword arguments.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

INIT_RANGE = 0.2  # sharper random output distributions than HF's 0.02


@functools.lru_cache(maxsize=2)
def tokenizer(chat: bool = True):
    """The shared tiny BPE tokenizer (cached; ``chat=False``: a pair post-processor, no template)."""
    from mmreward.text.synthetic import train_tokenizer

    tok = (
        train_tokenizer(vocab_size=400)
        if chat
        else train_tokenizer(vocab_size=400, chat_template=None)
    )
    if not chat:  # a cross-encoder: "<bos> prompt <eos> response <eos>" pair encoding
        from tokenizers.processors import TemplateProcessing

        specials = [(t, tok.convert_tokens_to_ids(t)) for t in ("<|bos|>", "<|eos|>")]
        tok.backend_tokenizer.post_processor = TemplateProcessing(
            single="<|bos|> $A <|eos|>",
            pair="<|bos|> $A <|eos|> $B:1 <|eos|>:1",
            special_tokens=specials,
        )
    return tok


def checkpoint(folder: Path, kind: str, arch: str, seed: int = 0, **config: Any) -> Path:
    """A tiny HF model directory (shared tokenizer, init range :data:`INIT_RANGE`)."""
    from mmreward.text.synthetic import build_tiny_checkpoint

    config = {"initializer_range": INIT_RANGE, **config}
    return build_tiny_checkpoint(folder, kind, arch, tokenizer=tokenizer(), seed=seed, **config)


def seqcls(arch: str) -> Callable[[Path], dict[str, Any]]:
    def build(folder: Path) -> dict[str, Any]:
        return {"weights": checkpoint(Path(folder) / f"seqcls-{arch}", "seqcls", arch)}

    return build


def deberta(folder: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tok = tokenizer(chat=False)
    cfg = AutoConfig.for_model(
        "deberta-v2",
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
        max_position_embeddings=512,
        relative_attention=True,
        position_biased_input=False,
        pos_att_type=["p2c", "c2p"],
        position_buckets=32,
        pooler_hidden_size=32,
        initializer_range=INIT_RANGE,
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(cfg)
    out = Path(folder) / "deberta"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"weights": out}


def causal(arch: str, **extra: Any) -> Callable[[Path], dict[str, Any]]:
    def build(folder: Path) -> dict[str, Any]:
        return {"weights": checkpoint(Path(folder) / f"causal-{arch}", "causal", arch), **extra}

    return build


def implicit_prm(folder: Path) -> dict[str, Any]:
    policy = checkpoint(Path(folder) / "policy", "causal", "qwen2", seed=0)
    reference = checkpoint(Path(folder) / "reference", "causal", "qwen2", seed=1)
    return {"weights": policy, "reference": str(reference)}


TINY: dict[str, Callable[[Path], dict[str, Any]]] = {
    "seqcls.skywork-reward-llama-3.1-8b": seqcls("llama"),
    "seqcls.skywork-reward-gemma-2-27b": seqcls("gemma2"),
    "seqcls.skywork-reward-v2-qwen3-0.6b": seqcls("qwen3"),
    "seqcls.deberta-v3-large-oasst": deberta,
    "genrm.qwen2.5-7b-instruct": causal("qwen2"),
    "genrm.qwen2.5-0.5b-instruct": causal("qwen2"),
    "rlpr.qwen2.5-7b": causal("qwen2", self_reference=True, debias=False),
    "implicit-prm.eurusprm-stage2": implicit_prm,
    "implicit-prm.eurusprm-stage1": implicit_prm,
}
