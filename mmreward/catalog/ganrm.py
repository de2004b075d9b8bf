"""Registry entry of GAN-RM, the discriminator reward (data only: a lazy factory string).

GAN-RM has no public weights: it is trained on your own target images and policy
samples (``python -m vision_rm.ganrm_world`` on the built-in world) and loaded from the
directory ``GanRewardModel.save_pretrained`` wrote:
``mmreward.load("gan-rm", weights="runs/ganrm_world/gan_rm")`` or ``mmreward.load(dir)``.
"""

from __future__ import annotations

from mmreward.registry import RewardSpec

ENTRIES: list[RewardSpec] = [
    RewardSpec(
        "gan-rm.local",
        "vision_rm.ganrm:gan_rm",
        license="Apache-2.0",
        paper="Liu et al. 2025, Fake it till You Make it: Reward Modeling as Discriminative "
        "Prediction (arXiv:2506.13846)",
        description="GAN-RM: a discriminator (CLIP vision tower or timm encoder + MLP head) "
        "trained to tell unpaired target-look images from the policy's samples, refined by "
        "rank-based bootstrapping; score = logit D(x). Loads a local save_pretrained directory.",
        default=True,
    ),
]
