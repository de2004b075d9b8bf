"""CLIP-similarity rewards: CLIPScore, PickScore, HPS v2 / v2.1.

All three score an (image, prompt) pair by the cosine of their CLIP embeddings, scaled:

- CLIPScore (Hessel et al. 2021, https://arxiv.org/abs/2104.08718, Eq. 1):
  ``2.5 · max(cos(E_I, E_c), 0)`` with ViT-B/32 and the caption prefixed by
  ``"A photo depicts "``; torchmetrics' ``CLIPScore`` computes ``max(100 · cos, 0)`` instead.
- PickScore (Kirstain et al. 2023, https://arxiv.org/abs/2305.01569): a CLIP-H fine-tuned
  on Pick-a-Pic; ``exp(logit_scale) · cos`` (the logit CLIP's softmax would use).
- HPS v2 (Wu et al. 2023, https://arxiv.org/abs/2306.09341): open_clip ViT-H-14 fine-tuned
  on HPD v2; the official ``hpsv2.score`` returns the plain cosine of the normalised
  features (``diag(image_features @ text_features.T)``, no scale), with letterbox
  preprocessing (longest side → 224, zero pad) instead of a centre crop.

Every score is computed pairwise as ``(t * p).sum(-1)`` (never the diagonal of a B×B matrix)
on float32 embeddings, so it is batched and differentiable with respect to the pixels.

>>> import torch
>>> cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
...        "patch_size": 16, "head_width": 16}, "text_cfg": {"context_length": 77,
...        "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
>>> rm = hpsv2(open_clip_config=cfg, preprocess={"resolution": 32, "crop": "letterbox",
...            "mean": "openai_clip", "std": "openai_clip"})
>>> rm.score(torch.rand(2, 3, 40, 24), prompts="a cat").scores.shape
torch.Size([2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from mmreward.interface import RewardInput, RewardModel, RewardOutput
from mmreward.preprocess import Preprocess
from vision_rm.clip_backbone import ClipBackbone, load_clip_backbone

# -- building blocks -------------------------------------------------------------------


def clip_preprocess_config(resolution: int | tuple[int, int], crop: str = "center") -> dict:
    """OpenAI CLIP's eval transform as a preprocess config (bicubic, CLIP mean/std)."""
    return {
        "resolution": resolution if isinstance(resolution, int) else list(resolution),
        "resize": "bicubic",
        "antialias": True,
        "crop": crop,
        "fill": 0.0,
        "mean": "openai_clip",
        "std": "openai_clip",
    }


def checked_preprocess(config: Mapping[str, Any], backbone: ClipBackbone) -> Preprocess:
    """:class:`Preprocess` for ``config``, checked against the backbone's input size."""
    pp = Preprocess(config)
    if tuple(pp.size) != tuple(backbone.image_size):
        raise ValueError(
            f"preprocess: resolution {list(pp.size)} does not match the CLIP image size "
            f"{list(backbone.image_size)} of the checkpoint; set preprocess['resolution']"
        )
    return pp


# -- model -----------------------------------------------------------------------------


class ClipSimilarityReward(RewardModel):
    """``score = scale · cos(image, prefix + prompt)``, optionally floored (CLIPScore's max(·, 0)).

    Args:
        backbone: the CLIP model (:class:`~vision_rm.clip_backbone.ClipBackbone`).
        preprocess: a :class:`~mmreward.preprocess.Preprocess` config (the registry's).
        scale: a number, or ``"logit_scale"`` for the model's learned ``exp(logit_scale)``.
        min_score: lower clamp of the score (``0.0`` for CLIPScore), or None.
        prompt_prefix: prepended to every prompt (``"A photo depicts "`` for CLIPScore).

    The output's ``extras["cosine"]`` holds the unscaled cosine ``(B,)``. The factories
    return it frozen (``requires_grad=False``: gradients reach the pixels, not the weights);
    call ``.requires_grad_(True)`` to fine-tune it.
    """

    inputs = ("prompts", "images")
    differentiable = True

    def __init__(
        self,
        backbone: ClipBackbone,
        preprocess: Mapping[str, Any],
        scale: float | str = "logit_scale",
        min_score: float | None = None,
        prompt_prefix: str = "",
    ) -> None:
        super().__init__()
        if isinstance(scale, str) and scale != "logit_scale":
            raise ValueError(f"scale: expected a number or 'logit_scale', got {scale!r}")
        self.backbone = backbone
        self.preprocess = checked_preprocess(preprocess, backbone)
        self.native_resolution = tuple(self.preprocess.size)
        self.scale = scale
        self.min_score = min_score
        self.prompt_prefix = prompt_prefix

    def compute(self, batch: RewardInput) -> RewardOutput:
        x = self.preprocess(batch.images.float())  # resize/crop/normalise in fp32
        return self.score_preprocessed(x, batch.prompts)

    def score_preprocessed(self, pixels: Tensor, prompts: Sequence[str]) -> RewardOutput:
        """Scores of pixels already resized and normalised (e.g. by an official PIL transform).

        No input validation; :meth:`forward` / :meth:`score` are the checked entry points.
        """
        img = F.normalize(self.backbone.encode_image(pixels).float(), dim=-1)
        txt = self.backbone.encode_text([self.prompt_prefix + p for p in prompts])
        txt = F.normalize(txt.float(), dim=-1)
        cos = (img * txt).sum(-1)  # pairwise cosine, (B,)
        if self.scale == "logit_scale":
            scores = self.backbone.logit_scale.float().exp() * cos
        else:
            scores = float(self.scale) * cos
        if self.min_score is not None:
            scores = scores.clamp_min(self.min_score)
        return RewardOutput(scores=scores, extras={"cosine": cos.detach()})


# -- checkpoint loading (converters live in clip_backbone) -----------------------------


def clip_similarity(
    weights: str | Path | None = None,
    *,
    hf_config: Mapping[str, Any] | None = None,
    open_clip_config: str | Mapping[str, Any] | None = None,
    checkpoint_key: str | None = None,
    tokenizer: str | None = None,
    attn_implementation: str = "sdpa",
    preprocess: Mapping[str, Any] | None = None,
    default_crop: str = "center",
    scale: float | str = "logit_scale",
    min_score: float | None = None,
    prompt_prefix: str = "",
) -> ClipSimilarityReward:
    """Build a :class:`ClipSimilarityReward` from a checkpoint (see ``load_clip_backbone``).

    ``preprocess`` is the registry entry's config; without one, CLIP's eval transform at the
    checkpoint's image size with ``default_crop`` ("center" or "letterbox") is used.
    """
    backbone, arch = load_clip_backbone(
        weights,
        hf_config=hf_config,
        open_clip_config=open_clip_config,
        checkpoint_key=checkpoint_key,
        tokenizer=tokenizer,
        attn_implementation=attn_implementation,
    )
    if preprocess is None:
        preprocess = clip_preprocess_config(backbone.image_size, default_crop)
    model = ClipSimilarityReward(backbone, dict(preprocess), scale, min_score, prompt_prefix)
    model.requires_grad_(False).eval()  # a fixed reward: ReFL/DRaFT need d score/d pixels only
    model.init_kwargs = {
        **arch,
        "preprocess": model.preprocess.config,
        "scale": scale,
        "min_score": min_score,
        "prompt_prefix": prompt_prefix,
    }
    return model


# -- configs (the formula of each family; weights and preprocessing are in the catalog) --

CLIPSCORE_SCALE, CLIPSCORE_PREFIX = 2.5, "A photo depicts "  # Hessel et al. 2021, Eq. 1
TORCHMETRICS_SCALE = 100.0  # torchmetrics.multimodal.CLIPScore
HPS_SCALE = 1.0  # hpsv2.score: the cosine itself


def clipscore(
    weights: str | Path | None = None,
    *,
    scale: float = CLIPSCORE_SCALE,
    min_score: float | None = 0.0,
    prompt_prefix: str = CLIPSCORE_PREFIX,
    **kwargs: Any,
) -> ClipSimilarityReward:
    """CLIPScore: ``2.5 · max(cos, 0)`` with ``"A photo depicts "`` (torchmetrics: scale=100, no prefix).

    ``weights``: a transformers CLIP directory, or an open_clip file with ``open_clip_config=``.
    """
    return clip_similarity(
        weights, scale=scale, min_score=min_score, prompt_prefix=prompt_prefix, **kwargs
    )


def pickscore(
    weights: str | Path | None = None,
    *,
    scale: float | str = "logit_scale",
    min_score: float | None = None,
    prompt_prefix: str = "",
    **kwargs: Any,
) -> ClipSimilarityReward:
    """PickScore: ``exp(logit_scale) · cos`` with a transformers CLIP-H (``weights``: its directory)."""
    return clip_similarity(
        weights, scale=scale, min_score=min_score, prompt_prefix=prompt_prefix, **kwargs
    )


def hpsv2(
    weights: str | Path | None = None,
    *,
    open_clip_config: str | Mapping[str, Any] = "ViT-H-14",
    checkpoint_key: str | None = "state_dict",
    scale: float | str = HPS_SCALE,
    min_score: float | None = None,
    prompt_prefix: str = "",
    **kwargs: Any,
) -> ClipSimilarityReward:
    """HPS v2 / v2.1: cosine of open_clip ViT-H-14 embeddings (``weights``: ``HPS_v2*.pt``).

    The official checkpoints hold the model under ``'state_dict'`` (``checkpoint_key``).
    """
    return clip_similarity(
        weights,
        open_clip_config=open_clip_config,
        checkpoint_key=checkpoint_key,
        default_crop="letterbox",
        scale=scale,
        min_score=min_score,
        prompt_prefix=prompt_prefix,
        **kwargs,
    )


# -- registrations: mmreward/catalog/vision.py (data only, lazy "vision_rm.clip_scores:…") --
