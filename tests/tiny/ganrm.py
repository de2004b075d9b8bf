"""Tiny GAN-RM directory (``save_pretrained`` layout) for the contract test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _gan_rm(folder: Path) -> dict[str, Any]:
    from vision_rm.ganrm import GanRewardModel

    torch.manual_seed(0)
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    pre = {
        "resolution": 32,
        "resize": "bilinear",
        "crop": "none",
        "mean": "openai_clip",
        "std": "openai_clip",
    }
    GanRewardModel("clip-vision", vision, pre, hidden=[16]).save_pretrained(folder / "gan_rm")
    return {"weights": folder / "gan_rm"}


TINY = {"gan-rm.local": _gan_rm}
