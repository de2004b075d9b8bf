"""vision_rm: image reward models behind the :mod:`mmreward` interface.

CLIP family (this package's ``clip_*`` modules; registry names in
``mmreward/catalog/vision.py``):

- ``clipscore.*`` — CLIPScore ``2.5·max(cos, 0)`` ("A photo depicts " prefix) and the
  torchmetrics ``max(100·cos, 0)`` variant (:mod:`vision_rm.clip_scores`);
- ``pickscore.v1`` — ``exp(logit_scale)·cos`` with a CLIP-H;
- ``hpsv2.v2-0`` / ``hpsv2.v2-1`` — open_clip ViT-H-14 cosine, letterbox preprocessing;
- ``aesthetic.laion-v2`` — LAION's MLP on the CLIP ViT-L/14 image embedding
  (:mod:`vision_rm.clip_heads`);
- ``clip-head.*`` / ``timm-head.*`` — trainable heads on CLIP or timm backbones
  (:mod:`vision_rm.clip_heads`, :mod:`vision_rm.timm_heads`).

Importing this package is cheap: the model modules (torch, transformers, open_clip, timm)
load on first attribute access.

>>> import vision_rm
>>> vision_rm.ClipSimilarityReward.__name__
'ClipSimilarityReward'
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ClipBackbone": "vision_rm.clip_backbone",
    "ClipTokenizer": "vision_rm.clip_backbone",
    "load_clip_backbone": "vision_rm.clip_backbone",
    "ClipSimilarityReward": "vision_rm.clip_scores",
    "clipscore": "vision_rm.clip_scores",
    "pickscore": "vision_rm.clip_scores",
    "hpsv2": "vision_rm.clip_scores",
    "ClipHeadReward": "vision_rm.clip_heads",
    "LaionAestheticMLP": "vision_rm.clip_heads",
    "clip_head": "vision_rm.clip_heads",
    "laion_aesthetic": "vision_rm.clip_heads",
    "MLPHead": "vision_rm.heads",
    "TimmHeadReward": "vision_rm.timm_heads",
    "timm_head": "vision_rm.timm_heads",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vision_rm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
