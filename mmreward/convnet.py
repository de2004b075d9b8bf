"""A small trainable CNN image reward model.

Useful as the fastest differentiable learned reward (tests, benchmarks, the built-in
world) and as a template for trainable heads: preprocessing comes from the registry's
config, the forward is batched, and ``save_pretrained``/``mmreward.load`` round-trip it.

>>> import torch
>>> rm = TinyConvReward(resolution=16, channels=(4, 8))
>>> rm.score(torch.rand(3, 3, 20, 24)).scores.shape
torch.Size([3])
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mmreward.interface import RewardInput, RewardModel
from mmreward.preprocess import Preprocess


class TinyConvReward(RewardModel):
    """Conv(3×3, stride 2) + GELU blocks → global average pool → MLP → scalar."""

    inputs = ("images",)
    differentiable = True

    def __init__(
        self,
        resolution: int = 32,
        channels: Sequence[int] = (16, 32, 64),
        hidden: int = 64,
        mean: str = "half",
    ) -> None:
        super().__init__()
        self.init_kwargs = {
            "resolution": resolution,
            "channels": list(channels),
            "hidden": hidden,
            "mean": mean,
        }
        self.native_resolution = (resolution, resolution)
        self.preprocess = Preprocess(
            {
                "resolution": resolution,
                "resize": "bilinear",
                "crop": "none",
                "mean": mean,
                "std": mean,
            }
        )
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GELU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c_in, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def compute(self, batch: RewardInput) -> Tensor:
        x = self.preprocess(batch.images.to(self.dtype))
        h = self.features(x).mean(dim=(2, 3))
        return self.head(h).squeeze(-1)
