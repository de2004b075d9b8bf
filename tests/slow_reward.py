"""A deliberately slow reward, imported by subprocess tests through trust_remote_code."""

from __future__ import annotations

import time

from mmreward.interface import RewardInput, RewardModel


class SlowMeanReward(RewardModel):
    """Mean pixel value, sleeping ``delay`` seconds per batch so a job can be killed mid-way."""

    inputs = ("images",)

    def __init__(self, delay: float = 0.02) -> None:
        super().__init__()
        self.delay = delay
        self.init_kwargs = {"delay": delay}

    def compute(self, batch: RewardInput):
        time.sleep(self.delay)
        return batch.images.mean(dim=(1, 2, 3))
