"""GRPO for diffusion and flow models: Flow-GRPO (Liu et al. 2025,
https://arxiv.org/abs/2505.05470) and DanceGRPO (Xue et al. 2025,
https://arxiv.org/abs/2505.07818).

The same iteration as :class:`~diffusion_align.algorithms.ddpo.DDPO` (sample → score →
PPO updates over a random ``timestep_fraction`` of each trajectory's steps), with

- **groups**: every prompt of the batch is sampled ``group_size`` (G) times and each
  sample's advantage is relative to its own group (:func:`grpo_advantages`, built on the
  core :func:`~mmreward.compose.group_advantages`): ``(r − mean_g) / (std_g + 1e-4)``
  (``std: batch`` divides by the whole batch's std instead, ``std: none`` only centres);
  ``same_noise`` starts a group from one latent (DanceGRPO's shared noise);
- **the sampler**: DDIM with η > 0 for UNet models, and for flow-matching models the
  Flow-GRPO SDE (:func:`~diffusion_align.sampling.flow_sde_step`) with noise std
  ``a·sqrt(σ/(1−σ))``, ``a = sample.noise_level`` (0.7 in Flow-GRPO);
- **KL to the reference** on the Gaussian means of each trained step (Flow-GRPO eq. 12):
  ``KL = mean‖μ_θ − μ_ref‖² / (2 s²)`` (:func:`gaussian_mean_kl`), weighted by ``kl_beta``.
  ``kl_beta`` defaults to **0** — the Flow-GRPO maintainers recommend starting without
  it (0.01–0.04 in their recipes); with β > 0 the policy needs a reference
  (LoRA adapters disabled, or ``model.reference: copy``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from diffusion_align.algorithms.base import Stats
from diffusion_align.algorithms.ddpo import DDPO, DDPOConfig, Rollout
from diffusion_align.sampling import transition_log_prob

GRPO_STD_EPS = 1e-4  # added to the group std (the Flow-GRPO reference code)


def grpo_advantages(
    rewards: Tensor, groups: list[Any] | Tensor, std: str = "group", eps: float = GRPO_STD_EPS
) -> Tensor:
    """Group-relative advantages ``(N,)``.

    ``std``: ``group`` — ``(r − mean_g)/(std_g + eps)``; ``batch`` —
    ``(r − mean_g)/(std_batch + eps)``; ``none`` — ``r − mean_g``. Population std.

    >>> grpo_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), ["a", "a", "b", "b"], eps=0.0)
    tensor([-1.,  1.,  0.,  0.])
    """
    from mmreward.compose import group_advantages

    r = rewards.float()
    if std == "group":
        return group_advantages(r, groups, eps=eps)
    centred = group_advantages(r, groups, std=False)
    if std == "none":
        return centred
    if std == "batch":
        return centred / (r.std(unbiased=False) + eps)
    raise ValueError(f"algorithm.std: expected group, batch or none, got {std!r}")


def gaussian_mean_kl(mean: Tensor, ref_mean: Tensor, std: Tensor | float) -> Tensor:
    """``KL(N(μ, s²) ‖ N(μ_ref, s²))`` per item, as a per-dimension mean: ``(B,)`` fp32.

    Both transitions share the std ``s``, so the KL is ``‖μ − μ_ref‖² / (2 s²)``
    (Flow-GRPO eq. 12, averaged over latent dimensions like the log-probs).

    >>> gaussian_mean_kl(torch.ones(1, 4), torch.zeros(1, 4), 0.5)
    tensor([2.])
    """
    d = (mean.float() - ref_mean.float().detach()) ** 2
    s = torch.as_tensor(std, dtype=torch.float32, device=d.device)
    kl = d / (2 * s**2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


@dataclass
class GRPOConfig(DDPOConfig):
    group_size: int = 8  # G samples per prompt (replaces samples_per_prompt)
    std: Literal["group", "batch", "none"] = "group"  # advantage scale
    kl_beta: float = 0.0  # KL to the reference on the step means (0: off, no reference call)
    same_noise: bool = False  # one start latent per group (DanceGRPO)
    per_prompt_stat_tracking: bool = False  # (unused: the group is the statistic)


class GRPO(DDPO):
    name = "grpo"
    Config = GRPOConfig

    @property
    def samples_per_prompt(self) -> int:
        return self.config.group_size

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.config.kl_beta > 0

    def check(self) -> None:
        super().check()
        c = self.config
        if c.group_size < 2:
            raise ValueError(f"grpo: group_size must be ≥ 2 (advantages are group-relative), "
                             f"got {c.group_size}")  # fmt: skip
        if c.samples_per_prompt != 1:
            raise ValueError("grpo: set group_size (samples per prompt), not samples_per_prompt")
        if c.kl_beta < 0:
            raise ValueError(f"grpo: kl_beta must be ≥ 0, got {c.kl_beta}")
        if c.per_prompt_stat_tracking:
            raise ValueError("grpo: per_prompt_stat_tracking is a DDPO option; GRPO "
                             "normalises within each group (algorithm.std)")  # fmt: skip

    def initial_latents(self, policy, n_prompts: int, generator: torch.Generator) -> Tensor:
        c, s = self.config, self.sample
        if not c.same_noise:
            return super().initial_latents(policy, n_prompts, generator)
        x = policy.initial_noise(n_prompts, generator, s.height, s.width)
        return x.repeat_interleave(c.group_size, dim=0)

    def advantages(self, rollout: Rollout) -> Tensor:
        return grpo_advantages(rollout.rewards[:, 0], rollout.prompts, self.config.std)

    def extra_loss(
        self, step_out, policy, schedule, idx, x_t, x_prev, cond
    ) -> tuple[Tensor, Stats]:
        beta = self.config.kl_beta
        if beta == 0:
            return torch.zeros((), device=x_t.device), {}
        ref = transition_log_prob(policy, schedule, idx.to(x_t.device), x_t, x_prev, cond,
                                  self.sample.guidance_scale, reference=True)  # fmt: skip
        kl = gaussian_mean_kl(step_out.mean, ref.mean, step_out.std.detach())
        return beta * kl.mean(), {"kl": kl.mean().item()}
