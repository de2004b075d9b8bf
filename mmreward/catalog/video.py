"""Registry entries of frame-aggregated video rewards (data only: lazy factory strings).

Each wraps a registered image reward (``video.rewards:frame_reward``); the built-in
world's rewards ship their weights, so these load offline.
"""

from __future__ import annotations

from mmreward.registry import RewardSpec

_FRAMES = (
    "frame-aggregated image reward as in T2V-Turbo (Li et al. 2024, arXiv:2405.18750) and "
    "InstructVideo (Yuan et al. 2024, arXiv:2312.12490)"
)
_WORLD = "the mmreward built-in world (README, 'The built-in world')"
_FACTORY = "video.rewards:frame_reward"

ENTRIES: list[RewardSpec] = [
    RewardSpec(
        "video-frames.gold-world",
        _FACTORY,
        kwargs={"image_reward": "gold.world", "aggregate": "mean"},
        license="Apache-2.0",
        paper=f"{_FRAMES}; {_WORLD}",
        description="The world's gold reward on every frame, averaged (differentiable).",
        default=True,
    ),
    RewardSpec(
        "video-frames.gold-world-centre",
        _FACTORY,
        kwargs={"image_reward": "gold.world", "aggregate": "centre", "centre_lambda": 0.5},
        license="Apache-2.0",
        paper=f"{_FRAMES}; {_WORLD}",
        description="The world's gold reward per frame, centre-weighted exp(−|i − F/2|·λ), "
        "λ = 0.5.",
    ),
    RewardSpec(
        "video-frames.clipscore-world-tiny-temporal",
        _FACTORY,
        kwargs={
            "image_reward": "clipscore.world-tiny",
            "aggregate": "mean",
            "temporal_encoder": "image_reward",
            "temporal_weight": 1.0,
        },
        license="Apache-2.0",
        paper=f"{_FRAMES}; Hessel et al. 2021, CLIPScore (arXiv:2104.08718); {_WORLD}",
        description="Tiny-CLIP CLIPScore per frame, averaged, plus the mean cosine "
        "similarity of consecutive frame embeddings (temporal consistency, weight 1).",
    ),
]
