"""Analytic image rewards: no weights, exact definitions, useful as baselines and in tests.

- :class:`JpegCompressibility` / :class:`JpegIncompressibility`: the DDPO rewards
  (Black et al. 2023), ∓ JPEG file size in kB at quality 95. Not differentiable.
- :class:`Colorfulness`: Hasler & Süsstrunk (2003) colourfulness, differentiable.
- :class:`Sharpness`: variance of the Laplacian of luminance, differentiable.

Colourfulness and sharpness are computed on the 0–255 scale so values match the
published thresholds (e.g. colourfulness 33 ≈ "moderately colourful", Laplacian variance
< 100 ≈ "blurry" in the common OpenCV recipe).
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from mmreward.errors import InputError
from mmreward.interface import RewardInput, RewardModel, RewardOutput

# ITU-R BT.601 luma weights
_LUMA = (0.299, 0.587, 0.114)


def jpeg_size_kb(images: Tensor, quality: int = 95) -> Tensor:
    """JPEG file size in kB (1 kB = 1000 bytes) of each image in a (B,3,H,W) [0,1] batch."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(a)).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32, device=images.device)


class JpegCompressibility(RewardModel):
    """DDPO compressibility: r = −(JPEG size in kB at quality 95). Higher = more compressible."""

    inputs = ("images",)
    differentiable = False

    def __init__(self, quality: int = 95) -> None:
        super().__init__()
        self.quality = quality
        self.init_kwargs = {"quality": quality}

    def compute(self, batch: RewardInput) -> Tensor:
        return -jpeg_size_kb(batch.images, self.quality)


class JpegIncompressibility(JpegCompressibility):
    """DDPO incompressibility: r = +(JPEG size in kB at quality 95)."""

    def compute(self, batch: RewardInput) -> Tensor:
        return jpeg_size_kb(batch.images, self.quality)


class Colorfulness(RewardModel):
    """Hasler & Süsstrunk colourfulness M = σ_rgyb + 0.3·μ_rgyb on the 0–255 scale.

    rg = R − G, yb = (R + G)/2 − B; σ_rgyb = sqrt(σ_rg² + σ_yb²), μ_rgyb = sqrt(μ_rg² + μ_yb²)
    (eq. 3 of the paper). Sub-scores: ``sigma_rgyb``, ``mu_rgyb``.
    """

    inputs = ("images",)
    differentiable = True
    sub_score_names = ("sigma_rgyb", "mu_rgyb")

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps  # keeps sqrt differentiable at 0 (grey images)
        self.init_kwargs = {"eps": eps}

    def compute(self, batch: RewardInput) -> RewardOutput:
        x = batch.images.float() * 255.0
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        rg = (r - g).flatten(1)
        yb = (0.5 * (r + g) - b).flatten(1)
        sigma = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False) + self.eps)
        mu = torch.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2 + self.eps)
        return RewardOutput(
            scores=sigma + 0.3 * mu, sub_scores={"sigma_rgyb": sigma, "mu_rgyb": mu}
        )


class Sharpness(RewardModel):
    """Variance of the 3×3 Laplacian of luminance (0–255 scale), valid convolution."""

    inputs = ("images",)
    differentiable = True

    def __init__(self) -> None:
        super().__init__()
        kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("kernel", kernel.view(1, 1, 3, 3), persistent=False)
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)

    def compute(self, batch: RewardInput) -> Tensor:
        x = batch.images.float()
        if x.shape[-1] < 3 or x.shape[-2] < 3:
            raise InputError("images", "at least 3×3 pixels", f"{x.shape[-2]}×{x.shape[-1]}")
        grey = (x * self.luma.to(x)).sum(1, keepdim=True) * 255.0
        lap = F.conv2d(grey, self.kernel.to(x))
        return lap.flatten(1).var(dim=1, unbiased=False)
