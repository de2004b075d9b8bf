"""Diffusion Reward: rewards from a conditional video diffusion model trained on experts.

Huang et al. 2023, "Diffusion Reward: Learning Rewards via Conditional Video Diffusion"
(arXiv:2312.14134). The reward of a frame is the negative conditional entropy of the next
frame given the last k frames, estimated by sampling from the model and scoring the samples
with its variational bound; expert-like histories give confident (low-entropy) predictions.

- :mod:`~video.diffusion_reward.model`: the tiny conditional diffusion model (UNet2DModel);
- :mod:`~video.diffusion_reward.entropy`: per-frame conditional-entropy rewards;
- :mod:`~video.diffusion_reward.standardize`: per-domain (μ, σ) and the α combination;
- :mod:`~video.diffusion_reward.rnd`: the RND exploration bonus;
- :mod:`~video.diffusion_reward.reward`: the reward-interface wrapper
  (``mmreward.load("diffusion-reward.world")``);
- ``python -m video.diffusion_reward.train`` / ``.evaluate``: train on world expert clips,
  measure expert vs non-expert separation.
"""

from video.diffusion_reward.entropy import conditional_entropy, frame_rewards, history_windows
from video.diffusion_reward.model import ConditionalFrameDiffusion, DiffusionRewardConfig
from video.diffusion_reward.reward import DiffusionReward, load_diffusion_reward
from video.diffusion_reward.rnd import RND
from video.diffusion_reward.standardize import DomainStats, RewardStats, combine_rewards

__all__ = [
    "RND",
    "ConditionalFrameDiffusion",
    "DiffusionReward",
    "DiffusionRewardConfig",
    "DomainStats",
    "RewardStats",
    "combine_rewards",
    "conditional_entropy",
    "frame_rewards",
    "history_windows",
    "load_diffusion_reward",
]
