"""Tiny Diffusion Reward folder (training-script layout: config.json + model.safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _diffusion_reward(folder: Path) -> dict[str, Any]:
    from video.diffusion_reward.model import ConditionalFrameDiffusion, DiffusionRewardConfig

    torch.manual_seed(0)
    config = DiffusionRewardConfig(channels=(8, 8), norm_groups=4, num_train_timesteps=20)
    ConditionalFrameDiffusion(config).save(folder / "diffusion_reward")
    return {"weights": folder / "diffusion_reward", "skip": 4}


TINY = {"diffusion-reward.world": _diffusion_reward}
