"""Proxy rewards for the world: zero-shot CLIPScore and a preference-trained head.

- ``clipscore.world-tiny``: CLIPScore (Hessel et al. 2021) on the world's tiny CLIP,
  ``2.5·max(cos, 0)``, with no caption prefix (the tiny CLIP never saw "A photo depicts").
- ``clip-head.world-proxy``: an ImageReward-style head (Xu et al. 2023) on
  ``[image, text, image ⊙ text]`` tiny-CLIP embeddings — linear, started at the CLIP logit
  ``exp(s)·cos`` so training refines zero-shot CLIP as PickScore does (Kirstain et al.
  2023), backbone fine-tuned — trained with :class:`~mmreward.train.RewardModelTrainer` on
  the simulated annotators' preferences (never on gold scores). A randomly initialised
  MLP head did not learn from 6,400 noisy pairs within the build budget (held-out
  accuracy ≈ 0.5), hence the CLIP-logit start. The fine-tune is gentle (one epoch over
  every labelled pair, lr 1e-5): at lr 1e-4 the backbone forgot what zero-shot CLIP
  knew and the head ranked held-out pairs worse than CLIPScore; a frozen backbone with a
  trained linear head stayed at CLIPScore's accuracy.

Both are built by ``vision_rm`` (``vision_rm.clip_scores.clipscore`` and
``vision_rm.clip_heads.clip_head``), imported when a factory runs, never at import time.
:func:`train_proxy` trains any trainable reward model on pairwise JSONL.

>>> import mmreward                                                    # doctest: +SKIP
>>> proxy = mmreward.load("clip-head.world-proxy")                     # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmreward.checkpoint import WEIGHTS_NAME, load_state_dict_strict, read_state_dict
from mmreward.errors import WeightsNotFoundError
from mmreward.interface import RewardModel
from mmreward.metrics import pairwise_accuracy
from mmreward.world.clip import PREPROCESS
from mmreward.world.gold import assets_dir

PROXY_CONFIG = "proxy.json"
#: the head's constructor options (``vision_rm.clip_heads.clip_head``)
HEAD_KWARGS: dict[str, Any] = {
    "features": "image+text",
    "hidden": [],
    "dropout": 0.0,
    "tuning": "full",
}


def _clip_folder(folder: str | Path | None) -> Path:
    folder = Path(folder) if folder is not None else assets_dir() / "clip"
    if not (folder / "config.json").is_file():
        raise WeightsNotFoundError(
            f"tiny CLIP: {folder} has no config.json; regenerate the world's assets with "
            "`python -m mmreward.world.build --stages clip`"
        )
    return folder


def world_clipscore(weights: str | Path | None = None, **kwargs: Any) -> RewardModel:
    """``clipscore.world-tiny``: CLIPScore on the tiny CLIP (``weights``: a CLIP directory).

    Rebuilding from a saved model directory passes ``hf_config`` etc. in ``kwargs``.
    """
    from vision_rm.clip_scores import clipscore

    if "hf_config" in kwargs:  # rebuilt from mmreward.json; the registry loads the weights
        return clipscore(None, **kwargs)
    folder = _clip_folder(weights)
    opts = {"tokenizer": str(folder), "preprocess": PREPROCESS, "prompt_prefix": "", **kwargs}
    return clipscore(folder, **opts)


def world_proxy(weights: str | Path | None = None, **kwargs: Any) -> RewardModel:
    """``clip-head.world-proxy``: the committed preference-trained head (or ``weights``:
    a folder with ``model.safetensors`` + ``proxy.json`` written by :func:`save_proxy`)."""
    from vision_rm.clip_heads import clip_head

    if "hf_config" in kwargs:  # rebuilt from mmreward.json; the registry loads the weights
        return clip_head(None, **kwargs)
    folder = Path(weights) if weights is not None else assets_dir() / "proxy"
    if not (folder / WEIGHTS_NAME).is_file():
        raise WeightsNotFoundError(
            f"clip-head.world-proxy: {folder / WEIGHTS_NAME} does not exist; regenerate the "
            "world's assets with `python -m mmreward.world.build --stages prefs,proxy`"
        )
    config = json.loads((folder / PROXY_CONFIG).read_text())
    sibling = folder.parent / "clip"  # a build's own CLIP, else the committed one
    clip = _clip_folder(sibling if (sibling / "config.json").is_file() else None)
    hf_config = json.loads((clip / "config.json").read_text())
    opts = {"tokenizer": str(clip), "preprocess": PREPROCESS, **config, **kwargs}
    model = clip_head(None, hf_config=hf_config, **opts)
    load_state_dict_strict(model, read_state_dict(folder / WEIGHTS_NAME), source=str(folder))
    return model.eval()


def new_proxy(
    clip_folder: str | Path | None = None, seed: int = 0, **head_kwargs: Any
) -> RewardModel:
    """A fresh head on the tiny CLIP (``HEAD_KWARGS`` unless overridden), ready to train."""
    from vision_rm.clip_heads import clip_head

    folder = _clip_folder(clip_folder)
    torch.manual_seed(seed)
    opts = {**HEAD_KWARGS, **head_kwargs}
    model = clip_head(folder, tokenizer=str(folder), preprocess=PREPROCESS, **opts)
    model.reward_name = "clip-head.world-proxy"
    if not opts["hidden"] and opts["features"] == "image+text":
        init_head_as_clip_logit(model)
    return model


def init_head_as_clip_logit(model: RewardModel) -> RewardModel:
    """Start a linear ``[img, txt, img ⊙ txt]`` head at the CLIP logit ``exp(s)·cos(img, txt)``.

    Training then refines zero-shot CLIP (as PickScore fine-tunes CLIP, Kirstain et al.
    2023) instead of starting from a random function; the image and text blocks start at 0.
    """
    linear = model.head.layers[-1]
    d = model.backbone.embed_dim
    if linear.in_features != 3 * d:
        raise ValueError(f"head: expected a linear head on 3·{d} features, got {linear}")
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[0, 2 * d :] = model.backbone.logit_scale.exp().item()
        linear.bias.zero_()
    return model


def save_proxy(model: RewardModel, folder: str | Path) -> Path:
    """Write the head's weights and its head options (no absolute paths) into ``folder``."""
    from mmreward.checkpoint import save_state_dict

    folder = Path(folder)
    save_state_dict(model.state_dict(), folder / WEIGHTS_NAME)
    config = {k: model.init_kwargs[k] for k in HEAD_KWARGS if k in model.init_kwargs}
    (folder / PROXY_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def train_proxy(
    model: RewardModel,
    train_file: str | Path,
    eval_file: str | Path | None,
    output_dir: str | Path,
    epochs: int = 3,
    batch_size: int = 32,
    lr: float = 5e-4,
    tie_k: float | None = 5.0,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Train any trainable reward model on pairwise JSONL with the toolkit's trainer.

    Ties are used with the Rao-Kupper loss (``tie_k``); ``None`` skips them.
    Returns the trainer's final metrics (evaluated against the annotators' labels).
    """
    from mmreward.train import RewardModelTrainer, TrainConfig

    cfg = TrainConfig(
        output_dir=str(output_dir),
        objective="pairwise",
        train_file=str(train_file),
        eval_file=None if eval_file is None else str(eval_file),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=10,
        tie_k=tie_k,
        seed=seed,
        cpu=True,
        progress=progress,
        log_every=20,
    )
    return RewardModelTrainer(model, cfg).train(resume=False)


# -- evaluation against gold -------------------------------------------------------------


def gold_pair_accuracy(
    scores: Tensor | np.ndarray | Sequence[float],
    gold: Tensor | np.ndarray | Sequence[float],
    pairs: Sequence[tuple[int, int]],
) -> float:
    """Fraction of pairs ordered as gold orders them (gold ties excluded; score ties ½)."""
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(gold, dtype=np.float64)
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    label = np.sign(g[a] - g[b])
    return pairwise_accuracy(s[a], s[b], label)


def score_images(
    reward: RewardModel, images: Tensor, prompts: Sequence[str], batch_size: int = 64
) -> Tensor:
    """``reward``'s scores ``(N,)`` for images and their prompts (no grad, float32)."""
    kwargs: dict[str, Any] = {"batch_size": batch_size}
    if "prompts" in reward.inputs:
        kwargs["prompts"] = list(prompts)
    return reward.score(images, **kwargs).scores.float().cpu()
