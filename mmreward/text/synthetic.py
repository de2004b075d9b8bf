"""A synthetic text world with a known gold reward, tokenizers trained on the fly, tiny LMs.

Nothing here downloads anything: tests, benchmarks and demos build everything in code.

- :func:`train_tokenizer` trains a byte-level BPE tokenizer (``tokenizers``) on a small
  corpus and wraps it as a ``transformers`` fast tokenizer with bos/eos/pad tokens and a
  chat template (:data:`~mmreward.text.hf.SIMPLE_CHAT_TEMPLATE`).
- :func:`tiny_config` / :func:`build_tiny_checkpoint` make tiny Llama / Qwen2 / Qwen3 /
  Gemma2-style models (sequence classifiers or causal LMs) and save them as Hugging Face
  model directories, the layout ``mmreward.load(name, weights=dir)`` reads.
- :class:`TextWorld` samples prompts and responses made of word classes, scores them with
  a **gold** reward and turns them into preference pairs through a simulated annotator
  (noisy Bradley-Terry on the gold reward, or on a *biased* utility that likes
  "flourish" words linearly where the gold reward only tolerates one).

Gold reward of a response with g good, b bad and f flourish words:

    gold = g − b + 0.5·min(f, 1) − 1.0·max(f − 1, 0)

Biased annotator utility (what a proxy RM trained on its labels learns):

    utility = g − b + 0.5·f

>>> world = TextWorld()
>>> world.gold("clear helpful wrong amazing")
1.5
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmreward.text.hf import SIMPLE_CHAT_TEMPLATE

SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>")

_GENERIC_CORPUS = (
    "Is the answer correct (Yes/No)? Yes",
    "Is the answer correct (Yes/No)? No",
    "Proposed answer: The answer is 42. Let's verify step by step.",
    "Question: what is 2 + 3? Answer: 5. Step 1: add the numbers. So the answer is 5.",
    "a photo of an astronaut, a cup of coffee, a grey wall, a cat, a camera",
    "<answer>Paris</answer> <think>The capital of France is Paris.</think>",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 + - * / = ( ) . , ! ? : ;",
)


# -------------------------------------------------------------------------- tokenizer
def train_tokenizer(
    corpus: Sequence[str] | None = None,
    vocab_size: int = 512,
    chat_template: str | None = SIMPLE_CHAT_TEMPLATE,
    padding_side: str = "right",
) -> Any:
    """A byte-level BPE tokenizer trained on ``corpus`` (default: :class:`TextWorld`'s + generic).

    Every byte is in the vocabulary, so any text can be encoded. Special tokens:
    :data:`SPECIAL_TOKENS` (pad, bos, eos and the chat-role markers).

    >>> tok = train_tokenizer(vocab_size=400)
    >>> tok.pad_token, tok.eos_token
    ('<|pad|>', '<|eos|>')
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if corpus is None:
        corpus = TextWorld().corpus()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        padding_side=padding_side,
        model_max_length=2048,
    )
    if chat_template is not None:
        hf.chat_template = chat_template
    return hf


# ------------------------------------------------------------------------ tiny models
#: Tiny-model families: Hugging Face ``model_type`` → extra config fields.
TINY_ARCHS: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": {},
    "qwen3": {},
    "gemma2": {"query_pre_attn_scalar": 16, "sliding_window": 64},
}


def tiny_config(
    arch: str = "llama",
    vocab_size: int = 512,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    num_labels: int = 1,
    tokenizer: Any = None,
    **overrides: Any,
):
    """A tiny ``transformers`` config of family ``arch`` (see :data:`TINY_ARCHS`)."""
    from transformers import AutoConfig

    if arch not in TINY_ARCHS:
        raise ValueError(f"arch: expected one of {sorted(TINY_ARCHS)}, got {arch!r}")
    ids = {}
    if tokenizer is not None:
        ids = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
    fields = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": hidden_size // num_heads,
        "max_position_embeddings": 512,
        "num_labels": num_labels,
        "tie_word_embeddings": False,
        **TINY_ARCHS[arch],
        **ids,
        **overrides,
    }
    return AutoConfig.for_model(arch, **fields)


def build_tiny_model(
    kind: str = "seqcls", arch: str = "llama", tokenizer: Any = None, seed: int = 0, **config: Any
):
    """A randomly initialised tiny model (``kind`` ∈ {"seqcls", "causal"}), seeded.

    ``config`` overrides :func:`tiny_config` fields (e.g. ``initializer_range=0.2`` for a
    random model with sharper output distributions).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if tokenizer is None:
        tokenizer = train_tokenizer()
    cfg = tiny_config(arch, len(tokenizer), tokenizer=tokenizer, **config)
    auto = {"seqcls": AutoModelForSequenceClassification, "causal": AutoModelForCausalLM}[kind]
    with _seeded(seed):  # HF init: normal(0, config.initializer_range)
        model = auto.from_config(cfg, dtype=torch.float32)
    return model.eval()


def build_tiny_checkpoint(
    directory: str | Path,
    kind: str = "seqcls",
    arch: str = "llama",
    tokenizer: Any = None,
    seed: int = 0,
    **config: Any,
) -> Path:
    """Save a tiny model + tokenizer as a Hugging Face model directory; returns it."""
    directory = Path(directory)
    if tokenizer is None:
        tokenizer = train_tokenizer()
    model = build_tiny_model(kind, arch, tokenizer, seed, **config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


class _seeded:
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self):
        import torch

        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


# ------------------------------------------------------------------------- the world
@dataclass(frozen=True)
class TextWorld:
    """Prompts and responses made of word classes, with a known gold reward.

    A response has ``length`` words (uniform in the range): each word is good with
    probability ``p_good``, bad with ``p_bad``, otherwise filler; with probability
    ``p_burst`` a burst of 1 + Geometric(``burst_p``) flourish words is inserted at a random
    place (the spurious feature that a biased annotator likes).
    """

    topics: tuple[str, ...] = (
        "river", "garden", "castle", "robot", "ocean", "forest", "city", "mountain",
    )  # fmt: skip
    good: tuple[str, ...] = (
        "clear", "kind", "precise", "helpful", "honest", "careful", "vivid", "useful",
    )  # fmt: skip
    bad: tuple[str, ...] = (
        "wrong", "rude", "vague", "sloppy", "false", "lazy", "boring", "messy",
    )  # fmt: skip
    filler: tuple[str, ...] = (
        "the", "a", "and", "it", "is", "was", "with", "of", "on", "near", "this", "that",
        "very", "quite", "often", "today",
    )  # fmt: skip
    flourish: tuple[str, ...] = ("amazing", "wow", "incredible", "awesome")
    length: tuple[int, int] = (5, 10)
    p_good: float = 0.25
    p_bad: float = 0.25
    p_burst: float = 0.25
    burst_p: float = 0.35

    # -- sampling ------------------------------------------------------------------
    def shifted(self, **changes: Any) -> TextWorld:
        """A copy with some fields changed (e.g. a shifted test distribution)."""
        return dataclasses.replace(self, **changes)

    def prompt(self, rng: random.Random) -> str:
        return f"Write a short note about the {rng.choice(self.topics)}."

    def response(self, rng: random.Random) -> str:
        n = rng.randint(*self.length)
        words = []
        for _ in range(n):
            u = rng.random()
            if u < self.p_good:
                words.append(rng.choice(self.good))
            elif u < self.p_good + self.p_bad:
                words.append(rng.choice(self.bad))
            else:
                words.append(rng.choice(self.filler))
        if rng.random() < self.p_burst:
            k = 1
            while rng.random() > self.burst_p:
                k += 1
            at = rng.randint(0, len(words))
            words[at:at] = [rng.choice(self.flourish) for _ in range(k)]
        return " ".join(words)

    # -- rewards -------------------------------------------------------------------
    def counts(self, response: str) -> tuple[int, int, int]:
        """(good, bad, flourish) word counts."""
        words = response.split()
        good, bad, flo = set(self.good), set(self.bad), set(self.flourish)
        return (
            sum(w in good for w in words),
            sum(w in bad for w in words),
            sum(w in flo for w in words),
        )

    def gold(self, response: str, prompt: str | None = None) -> float:
        """The gold reward: g − b + 0.5·min(f, 1) − 1.0·max(f − 1, 0)."""
        g, b, f = self.counts(response)
        return g - b + 0.5 * min(f, 1) - 1.0 * max(f - 1, 0)

    def biased_utility(self, response: str, prompt: str | None = None) -> float:
        """The biased annotator's utility: g − b + 0.5·f (likes every flourish word)."""
        g, b, f = self.counts(response)
        return g - b + 0.5 * f

    # -- datasets ------------------------------------------------------------------
    def pairs(
        self,
        n: int,
        seed: int = 0,
        annotator: str = "gold",
        temperature: float | None = 0.5,
    ) -> list[Any]:
        """``n`` preference pairs (:class:`mmreward.data.PreferenceExample`, responses).

        Labels come from ``annotator`` ∈ {"gold", "biased"}: a Bradley-Terry draw
        P(a ≻ b) = σ((u_a − u_b)/temperature), or the sign of u_a − u_b when
        ``temperature`` is None (equal utilities are ties, label 0). ``meta`` keeps the
        gold rewards of both responses.
        """
        from mmreward.data import PreferenceExample

        utility = {"gold": self.gold, "biased": self.biased_utility}[annotator]
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            prompt = self.prompt(rng)
            a, b = self.response(rng), self.response(rng)
            ua, ub = utility(a), utility(b)
            if temperature is None:
                label = (ua > ub) - (ua < ub)
            else:
                p = 1.0 / (1.0 + math.exp(-(ua - ub) / temperature))
                label = 1 if rng.random() < p else -1
            out.append(
                PreferenceExample(
                    prompt=prompt,
                    kind="responses",
                    candidates=[a, b],
                    label=label,
                    meta={"gold": [self.gold(a), self.gold(b)]},
                )
            )
        return out

    def corpus(self) -> list[str]:
        """Text to train a tokenizer on (every word with and without a leading space)."""
        words = [*self.topics, *self.good, *self.bad, *self.filler, *self.flourish]
        lines = [" ".join(words), *(f"{w} {w}" for w in words)]
        lines += [f"Write a short note about the {t}." for t in self.topics]
        return lines + list(_GENERIC_CORPUS)


def write_pairs_jsonl(examples: Sequence[Any], path: str | Path) -> Path:
    """Write pairwise examples as ``{"prompt", "chosen", "rejected"}`` / ``"choice": "tie"`` rows."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for e in examples:
            a, b = e.candidates
            if e.label == 0:
                row = {"prompt": e.prompt, "responses": [a, b], "choice": "tie"}
            elif e.label == 1:
                row = {"prompt": e.prompt, "chosen": a, "rejected": b}
            else:
                row = {"prompt": e.prompt, "chosen": b, "rejected": a}
            f.write(json.dumps(row) + "\n")
    return path
