"""Differentiable image preprocessing shared by every image reward model.

Each registered model carries a preprocessing config (a plain dict, stored next to its
weights in the registry); :class:`Preprocess` turns it into tensor ops so gradients flow
from the score back to the [0,1] pixels. The mean/std constants live here, once.

>>> import torch
>>> pp = Preprocess({"resolution": 224, "resize": "bicubic", "crop": "center",
...                  "mean": "openai_clip", "std": "openai_clip"})
>>> pp(torch.rand(2, 3, 300, 400)).shape
torch.Size([2, 3, 224, 224])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Normalisation constants, by name (one copy each).
MEANS: dict[str, tuple[float, float, float]] = {
    "openai_clip": (0.48145466, 0.4578275, 0.40821073),
    "imagenet": (0.485, 0.456, 0.406),
    "half": (0.5, 0.5, 0.5),
    "none": (0.0, 0.0, 0.0),
}
STDS: dict[str, tuple[float, float, float]] = {
    "openai_clip": (0.26862954, 0.26130258, 0.27577711),
    "imagenet": (0.229, 0.224, 0.225),
    "half": (0.5, 0.5, 0.5),
    "none": (1.0, 1.0, 1.0),
}
_MODES = ("bilinear", "bicubic", "nearest", "area")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize(
    x: Tensor, size: tuple[int, int], mode: str = "bicubic", antialias: bool = True
) -> Tensor:
    """Resize (B,C,H,W) to ``size`` with torch's (PIL-like, when antialiased) kernels."""
    if mode not in _MODES:
        raise ValueError(f"resize: expected one of {_MODES}, got {mode!r}")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    kwargs: dict[str, Any] = {"mode": mode}
    if mode in ("bilinear", "bicubic"):
        kwargs.update(align_corners=False, antialias=antialias)
    return F.interpolate(x, size=size, **kwargs)


def resize_shortest(x: Tensor, size: int, mode: str = "bicubic", antialias: bool = True) -> Tensor:
    """Resize so the shorter side equals ``size`` (torchvision ``Resize(int)`` rounding)."""
    h, w = x.shape[-2:]
    if h <= w:
        new = (size, int(size * w / h))
    else:
        new = (int(size * h / w), size)
    return resize(x, new, mode, antialias)


def center_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Centre crop (torchvision rounding); zero-pads first if the image is smaller."""
    th, tw = size
    h, w = x.shape[-2:]
    if h < th or w < tw:
        ph, pw = max(th - h, 0), max(tw - w, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = x.shape[-2:]
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return x[..., top : top + th, left : left + tw]


def letterbox(
    x: Tensor, size: int, mode: str = "bicubic", antialias: bool = True, fill: float = 0.0
) -> Tensor:
    """Resize the longest side to ``size`` and pad the rest with ``fill`` (centred).

    This is HPS v2's ``ResizeMaxSize`` (it pads with 0 after normalisation-free resize).
    """
    h, w = x.shape[-2:]
    scale = size / max(h, w)
    new = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = resize(x, new, mode, antialias)
    ph, pw = size - new[0], size - new[1]
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=fill)


class Preprocess(nn.Module):
    """Config-driven preprocessing: resize → centre-crop / letterbox / squash → normalise.

    Config keys: ``resolution`` (int or (H, W)), ``resize`` (interpolation, default
    bicubic), ``antialias`` (default True), ``crop`` ("center", "letterbox" or "none":
    resize straight to the resolution), ``mean``/``std`` (a name from :data:`MEANS` or
    three floats), ``fill`` (letterbox pad value), ``clamp`` (clamp to [0,1] after resizing,
    as PIL's 8-bit output is; default False).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.size = _pair(config.get("resolution", 224))
        self.mode = config.get("resize", "bicubic")
        self.antialias = bool(config.get("antialias", True))
        self.crop = config.get("crop", "center")
        if self.crop not in ("center", "letterbox", "none"):
            raise ValueError(f"crop: expected center, letterbox or none, got {self.crop!r}")
        mean = config.get("mean", "none")
        std = config.get("std", "none")
        mean = MEANS[mean] if isinstance(mean, str) else tuple(mean)
        std = STDS[std] if isinstance(std, str) else tuple(std)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if self.crop == "center":
            x = resize_shortest(images, min(self.size), self.mode, self.antialias)
            x = center_crop(x, self.size)
        elif self.crop == "letterbox":
            x = letterbox(
                images,
                max(self.size),
                self.mode,
                self.antialias,
                float(self.config.get("fill", 0.0)),
            )
        else:
            x = resize(images, self.size, self.mode, self.antialias)
        if self.config.get("clamp", False):
            x = x.clamp(0.0, 1.0)  # bicubic overshoots at sharp edges; PIL's uint8 output cannot
        return (x - self.mean.to(x)) / self.std.to(x)
