"""The world's tiny CLIP: a transformers ``CLIPModel`` and a ``CLIPTokenizer`` of its own.

CLIP (Radford et al. 2021, https://arxiv.org/abs/2103.00020) trained contrastively on the
world's renders and captions. The tokenizer is a real byte-level BPE in CLIP's format
(``</w>`` word ends, ``<|startoftext|>``/``<|endoftext|>``), trained on the world's closed
vocabulary so every world word is one token; unknown words fall back to characters.

Its text tower doubles as the diffusion pipeline's text encoder (as CLIP ViT-L/14's does
for Stable Diffusion 1.x), and its two towers give the world's zero-shot CLIPScore.

Training uses InfoNCE with *multi-positive* soft targets: in a closed world one batch
holds many images a caption describes (partial captions such as "a red seven" describe
every red seven), so each row's target is uniform over every consistent pair.

>>> tok = build_tokenizer()
>>> tok.convert_ids_to_tokens(tok("a red seven")["input_ids"])
['<|startoftext|>', 'a</w>', 'red</w>', 'seven</w>', '<|endoftext|>']
"""

from __future__ import annotations

import contextlib
import json
import math
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmreward.preprocess import Preprocess
from mmreward.world.data import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    DIGITS,
    IMAGE_SIZE,
    SIZES,
    Attributes,
    all_attributes,
    sample_world,
)

CONTEXT_LENGTH = 16  # tokens, SOT and EOT included (world prompts need ≤ 11)
#: the image preprocessing of the tiny CLIP (as a :class:`~mmreward.preprocess.Preprocess` config)
PREPROCESS = {
    "resolution": IMAGE_SIZE,
    "resize": "bilinear",
    "crop": "none",
    "mean": "openai_clip",
    "std": "openai_clip",
}
#: the tiny architecture (transformers ``CLIPConfig`` fields)
TINY_CONFIG: dict[str, Any] = {
    "projection_dim": 64,
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": CONTEXT_LENGTH,
    },
    "vision_config": {
        "image_size": IMAGE_SIZE,
        "patch_size": 8,
        "hidden_size": 96,
        "intermediate_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    },
}
_EXTRA_WORDS = ("a", "an", "the", "of", "on", "digit", "number", "photo", "image", "background")


# -- captions ----------------------------------------------------------------------------


def caption(attrs: Attributes, named: Sequence[str] = ATTRIBUTES) -> str:
    """A caption naming only the attributes in ``named`` (the digit is always named).

    >>> caption(Attributes(7, "red", "dark", "small"), ("digit", "colour"))
    'a red seven'
    """
    words = ["a"]
    if "size" in named:
        words.append(attrs.size)
    if "colour" in named:
        words.append(attrs.colour)
    words.append(DIGITS[attrs.digit])
    if "background" in named:
        words += ["on", "a", attrs.background, "background"]
    return " ".join(words)


def _partial(attrs: Attributes, rng: np.random.Generator, p_drop: float) -> tuple[str, tuple]:
    named = ["digit"] + [a for a in ATTRIBUTES[1:] if rng.random() >= p_drop]
    return caption(attrs, named), tuple(named)


def _consistent(
    image_attrs: Sequence[Attributes], text_attrs: Sequence[Attributes], named: Sequence[tuple]
) -> Tensor:
    """``(N_img, N_txt)`` bool: caption j (naming ``named[j]``) describes image i."""
    out = torch.ones(len(image_attrs), len(text_attrs), dtype=torch.bool)
    for attr in ATTRIBUTES:
        img = np.array([getattr(a, attr) for a in image_attrs])
        txt = np.array([getattr(a, attr) for a in text_attrs])
        mask = np.array([attr in n for n in named])
        same = torch.from_numpy(img[:, None] == txt[None, :])
        out &= same | torch.from_numpy(~mask)[None, :]
    return out


# -- tokenizer ---------------------------------------------------------------------------


def world_corpus() -> list[str]:
    """Texts the BPE is trained on: every world caption, the extra words, single characters."""
    texts = [a.prompt for a in all_attributes()]
    texts += list(_EXTRA_WORDS) + [f"{d} {c}" for d in DIGITS for c in COLOURS]
    texts += list(string.ascii_lowercase + string.digits) + list(string.punctuation)
    return texts * 4


def build_tokenizer(context_length: int = CONTEXT_LENGTH):
    """A ``CLIPTokenizer`` whose byte-level BPE is trained on :func:`world_corpus`."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]  # eos id 1, not 2 (see CLIPTextTransformer)
    seed = CLIPTokenizer(vocab={s: i for i, s in enumerate(specials)}, merges=[])
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    backend = seed.backend_tokenizer
    backend.train_from_iterator(world_corpus(), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=context_length)


def tokenize(tokenizer, prompts: Sequence[str]) -> Tensor:
    """``(N, context_length)`` ids, padded with EOT and truncated (as the SD pipeline does)."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


# -- model -------------------------------------------------------------------------------


def build_clip(tokenizer, config: dict[str, Any] | None = None, seed: int = 0):
    """A randomly initialised tiny ``CLIPModel`` matching ``tokenizer``'s vocabulary."""
    from transformers import CLIPConfig, CLIPModel

    cfg = json.loads(json.dumps(config or TINY_CONFIG))
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    cfg["text_config"] = {**cfg["text_config"], **ids}
    torch.manual_seed(seed)
    return CLIPModel(CLIPConfig(**cfg))


class ClipEncoder:
    """Embeds world images and prompts with a ``CLIPModel`` (unit-norm features).

    >>> enc = ClipEncoder(build_clip(build_tokenizer()), build_tokenizer())
    >>> enc.similarity(torch.rand(2, 3, 32, 32), ["a red seven", "a blue two"]).shape
    torch.Size([2])
    """

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.preprocess = Preprocess(PREPROCESS)

    def images(self, images: Tensor) -> Tensor:
        feats = self.model.get_image_features(pixel_values=self.preprocess(images))
        return F.normalize(_pooled(feats), dim=-1)

    def texts(self, prompts: Sequence[str]) -> Tensor:
        ids = tokenize(self.tokenizer, prompts).to(self.model.device)
        return F.normalize(_pooled(self.model.get_text_features(input_ids=ids)), dim=-1)

    def similarity(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Cosine similarity of each image with its own prompt, ``(B,)`` (pairwise, not B×B)."""
        return (self.images(images) * self.texts(prompts)).sum(-1)


def _pooled(out: Any) -> Tensor:
    # transformers 5 returns a model output from get_*_features; 4.x returns the tensor
    return out if isinstance(out, Tensor) else out.pooler_output


def train_clip(
    model,
    tokenizer,
    steps: int = 2500,
    batch_size: int = 128,
    lr: float = 7e-4,
    pool_size: int = 8000,
    p_drop: float = 0.3,
    styles_per_hard_batch: int = 4,
    seed: int = 0,
    log: Any = print,
    log_every: int = 100,
):
    """Contrastive training on train-split renders of train prompts; returns the model.

    Each step draws ``batch_size`` images from a pre-rendered pool; each image gets a
    caption with every attribute but the digit dropped with probability ``p_drop``.
    Every other batch is a *hard* batch: images of only ``styles_per_hard_batch`` styles
    (colour, background, size), so captions can only be told apart by their digits.
    Loss: symmetric InfoNCE against uniform soft targets over consistent pairs.
    """
    pool = sample_world(pool_size, digits="train", prompts="train", seed=seed)
    styles = [(a.colour, a.background, a.size) for a in pool.attributes]
    by_style: dict[tuple, np.ndarray] = {}
    for i, st in enumerate(styles):
        by_style.setdefault(st, []).append(i)  # type: ignore[attr-defined]
    by_style = {k: np.asarray(v) for k, v in by_style.items()}
    style_keys = sorted(by_style)
    enc = ClipEncoder(model, tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warm = max(1, steps // 20)

    def get_lr(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < warm:
            return lr * (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))

    rng = np.random.default_rng(seed)
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = get_lr(step)
        if step % 2:  # hard batch: few styles, many digits
            chosen = rng.choice(len(style_keys), size=styles_per_hard_batch, replace=False)
            per = batch_size // styles_per_hard_batch
            idx = np.concatenate([rng.choice(by_style[style_keys[k]], size=per) for k in chosen])
        else:
            idx = rng.integers(len(pool), size=batch_size)
        attrs = [pool.attributes[i] for i in idx]
        texts, named = zip(*(_partial(a, rng, p_drop) for a in attrs))
        img = enc.images(pool.images[idx])
        txt = enc.texts(texts)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        pos = _consistent(attrs, attrs, named).float()
        loss = 0.5 * (
            -(F.log_softmax(logits, 1) * pos / pos.sum(1, keepdim=True)).sum(1).mean()
            - (F.log_softmax(logits, 0) * pos / pos.sum(0, keepdim=True)).sum(0).mean()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % log_every == 0 or step == steps - 1:
            log(f"clip step {step + 1}/{steps}: loss {loss.item():.4f}")
    return model.eval()


@torch.no_grad()
def retrieval_accuracy(
    model, tokenizer, n: int = 1000, digits: str = "test", prompts: str = "all", seed: int = 123
) -> dict[str, float]:
    """Zero-shot attribute retrieval on ``n`` renders of held-out digit scans.

    - ``<attribute>``: pick the value of one attribute by comparing the full caption with
      every value of that attribute swapped in (the other attributes stay true);
    - ``<attribute>_alone``: the same with captions naming only that attribute and the
      digit ("a seven" vs "a two"; "a red seven" vs "a blue seven");
    - ``full_caption``: top-1 among all 200 world captions (exact match).
    """
    model.eval()
    enc = ClipEncoder(model, tokenizer)
    s = sample_world(n, digits=digits, prompts=prompts, seed=seed)
    img = enc.images(s.images)
    values = {
        "digit": list(range(10)),
        "colour": list(COLOURS),
        "background": list(BACKGROUNDS),
        "size": list(SIZES),
    }
    out: dict[str, float] = {}
    for attr in ATTRIBUTES:
        for alone in (False, True):
            named = ("digit", attr) if alone else ATTRIBUTES
            texts = []
            for a in s.attributes:
                for v in values[attr]:
                    texts.append(caption(_replace(a, attr, v), named))
            txt = enc.texts(texts).view(n, len(values[attr]), -1)
            pred = (txt * img[:, None]).sum(-1).argmax(1)
            truth = torch.tensor([values[attr].index(getattr(a, attr)) for a in s.attributes])
            correct = float((pred == truth).float().mean())
            out[f"{attr}_alone" if alone else attr] = correct
    combos = all_attributes()
    txt = enc.texts([a.prompt for a in combos])
    pred = (img @ txt.T).argmax(1)
    out["full_caption"] = float(np.mean([combos[int(p)] == a for p, a in zip(pred, s.attributes)]))
    return out


def _replace(a: Attributes, attr: str, value: Any) -> Attributes:
    d = a.as_dict()
    d[attr] = value
    return Attributes(**d)


# -- files ------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_hf():
    """Silence transformers' and diffusers' loading/saving progress bars and info logs."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    levels = (tlog.get_verbosity(), dlog.get_verbosity())
    bars = (tlog.is_progress_bar_enabled(), dlog.is_progress_bar_enabled())
    tlog.set_verbosity_error()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    dlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(levels[0])
        dlog.set_verbosity(levels[1])
        if bars[0]:
            tlog.enable_progress_bar()
        if bars[1]:
            dlog.enable_progress_bar()


def save_clip(model, tokenizer, folder: str | Path) -> Path:
    """A transformers directory: ``config.json``, ``model.safetensors``, tokenizer files and
    ``preprocessor_config.json`` (``CLIPImageProcessor``: 32 px, OpenAI CLIP mean/std)."""
    from transformers import CLIPImageProcessor

    from mmreward.preprocess import MEANS, STDS

    folder = Path(folder)
    with quiet_hf():
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(MEANS["openai_clip"]),
        image_std=list(STDS["openai_clip"]),
    ).save_pretrained(folder)
    return folder


def load_clip(folder: str | Path | None = None):
    """``(CLIPModel, CLIPTokenizer)`` from ``folder`` (default: the committed assets), eval mode."""
    from transformers import CLIPModel, CLIPTokenizer

    from mmreward.world.gold import assets_dir

    folder = Path(folder) if folder is not None else assets_dir() / "clip"
    if not (folder / "config.json").is_file():
        from mmreward.errors import WeightsNotFoundError

        raise WeightsNotFoundError(
            f"tiny CLIP: {folder} has no config.json; regenerate the world's assets with "
            "`python -m mmreward.world.build --stages clip`"
        )
    with quiet_hf():
        model = CLIPModel.from_pretrained(folder, local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer
