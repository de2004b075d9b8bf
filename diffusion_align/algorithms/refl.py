"""ReFL (Xu et al. 2023, "ImageReward", §4.2): reward feedback at one late denoising step.

Per batch: draw a stop step ``s`` in ``stop_range``; run steps ``0 … s−1`` without
gradient; run step ``s`` with gradient and take its predicted ``x̂0``; decode it, score it
with a differentiable reward, and minimise ``relu(φ − r)·λ``
(:func:`~diffusion_align.losses.refl_loss`). The paper also adds the pre-training
(denoising) loss on image-caption data as a regulariser — set ``pretrain_weight`` and
``data.pretrain``; the reference code leaves it out (weight 0, the default).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffusion_align import losses
from diffusion_align.algorithms.base import Algorithm, Stats
from diffusion_align.data import PromptBatch
from diffusion_align.sampling import sample


@dataclass
class ReFLConfig:
    stop_range: list[int] = field(default_factory=lambda: [30, 39])  # grad step, inclusive (of 40)
    phi: float = 2.0  # hinge: rewards above φ stop contributing
    lam: float = 1e-3  # reward-loss scale λ
    pretrain_weight: float = 0.0  # weight of the denoising regulariser (needs data.pretrain)


class ReFL(Algorithm):
    name = "refl"
    Config = ReFLConfig
    needs_differentiable_reward = True

    def check(self) -> None:
        super().check()
        lo, hi = self.config.stop_range
        if not 0 <= lo <= hi < self.sample.num_steps:
            raise ValueError(
                f"refl: stop_range {self.config.stop_range} must lie in 0..{self.sample.num_steps - 1} "
                "(sample.num_steps)"
            )

    def losses(
        self, policy, batch: PromptBatch, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Stats]]:
        cfg, s = self.config, self.sample
        lo, hi = cfg.stop_range
        stop = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        cond = policy.encode_prompt(batch.prompts, guidance=s.guidance_scale != 1.0)
        out = sample(
            policy,
            cond,
            self.schedule(policy),
            guidance_scale=s.guidance_scale,
            generator=generator,
            grad_steps=[stop],
            until=stop + 1,
            checkpoint_steps=False,  # one grad step: nothing to save
        )
        images = policy.decode(out.pred_x0[-1])
        rewards = self.score(images, batch.prompts)[:, 0]
        loss = losses.refl_loss(rewards, cfg.phi, cfg.lam)
        stats = {"reward": rewards.mean().item(), "stop_step": float(stop)}
        if cfg.pretrain_weight > 0:
            if batch.images is None:
                raise ValueError(
                    "refl: pretrain_weight > 0 needs data.pretrain (image-caption pairs)"
                )
            reg = denoising_loss(policy, batch.images, batch.image_prompts, generator)
            loss = loss + cfg.pretrain_weight * reg
            stats["pretrain_loss"] = reg.item()
        yield loss, stats


def denoising_loss(
    policy,
    images: Tensor,
    prompts: list[str],
    generator: torch.Generator,
    snr_gamma: float | None = None,
) -> Tensor:
    """The pre-training objective on image-caption pairs (ε, v or velocity regression)."""
    x0 = policy.encode(images, generator)
    cond = policy.encode_prompt(prompts, guidance=False)
    return latent_denoising_loss(policy, x0, cond, generator, snr_gamma=snr_gamma)


def latent_denoising_loss(
    policy,
    x0: Tensor,
    cond,
    generator: torch.Generator,
    guidance_scale: float = 1.0,
    snr_gamma: float | None = None,
) -> Tensor:
    """The pre-training objective on latents ``x0`` with conditioning ``cond``: noise them
    at random training timesteps and regress the schedule's target (ε, v or velocity).

    ``guidance_scale`` ≠ 1 regresses the classifier-free-guided prediction (``cond``
    encoded with its negative embeddings) instead of the conditional one. ``snr_gamma``
    weighs each timestep's error with min-SNR-γ (:meth:`TrainingNoise.loss_weight`)."""
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    noising = policy.noise_schedule()
    index = noising.sample_indices(len(x0), generator)
    x_t, t, target = noising.add_noise(x0, noise, index)
    weight = None if snr_gamma is None else noising.loss_weight(index, snr_gamma)
    return losses.denoising_loss(policy.predict(x_t, t, cond, guidance_scale), target, weight)
