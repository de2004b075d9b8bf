"""Registry entries of the rewards defined in the core package (analytic and tiny CNN)."""

from __future__ import annotations

from mmreward.registry import RewardSpec

_DDPO = "Black et al. 2023, Training Diffusion Models with Reinforcement Learning (DDPO)"

ENTRIES = [
    RewardSpec(
        "jpeg.compressibility",
        "mmreward.analytic:JpegCompressibility",
        description="−(JPEG size in kB at quality 95): the DDPO compressibility reward.",
        paper=_DDPO,
        license="Apache-2.0",
        default=True,
    ),
    RewardSpec(
        "jpeg.incompressibility",
        "mmreward.analytic:JpegIncompressibility",
        description="+(JPEG size in kB at quality 95): the DDPO incompressibility reward.",
        paper=_DDPO,
        license="Apache-2.0",
    ),
    RewardSpec(
        "colorfulness.hasler",
        "mmreward.analytic:Colorfulness",
        description="Hasler & Süsstrunk colourfulness σ_rgyb + 0.3·μ_rgyb (differentiable).",
        paper="Hasler & Süsstrunk 2003, Measuring colourfulness in natural images",
        license="Apache-2.0",
        default=True,
    ),
    RewardSpec(
        "sharpness.laplacian",
        "mmreward.analytic:Sharpness",
        description="Variance of the Laplacian of luminance (differentiable).",
        paper="Pech-Pacheco et al. 2000, Diatom autofocusing in brightfield microscopy",
        license="Apache-2.0",
        default=True,
    ),
    RewardSpec(
        "convnet.tiny",
        "mmreward.convnet:TinyConvReward",
        description="A small trainable CNN image reward (random init; train it or pass weights).",
        preprocess={"resolution": 32, "resize": "bilinear", "antialias": True},
        license="Apache-2.0",
        default=True,
    ),
]
