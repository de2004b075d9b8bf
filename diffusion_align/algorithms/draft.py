"""DRaFT-K (Clark et al. 2024) and AlignProp (Prabhudesai et al. 2023): backprop through sampling.

Both sample the full chain, decode ``x_0``, score it with a differentiable reward and
minimise ``−mean(r)`` (:func:`~diffusion_align.losses.reward_loss`), with gradient
through only the last ``K`` sampling steps (each checkpointed: activation memory of one
step, not ``K``):

- **DRaFT-K**: ``K`` fixed (``k``; DRaFT-1 is the paper's best trade-off);
- **AlignProp**: randomised truncation — ``K`` is drawn per trajectory from
  ``[k, k_max]`` (default ``[1, num_steps]``), which the paper finds avoids the bias of
  a fixed truncation. Items whose window has not started are detached step by step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_align import losses
from diffusion_align.algorithms.base import Algorithm, Stats
from diffusion_align.data import PromptBatch
from diffusion_align.sampling import sample


@dataclass
class DRaFTConfig:
    k: int = 1  # gradient through the last k steps (the lower bound when per_trajectory)
    k_max: int | None = None  # upper bound of the per-trajectory draw (None: num_steps)
    per_trajectory: bool = False  # draw K per trajectory (AlignProp) instead of fixing it


@dataclass
class AlignPropConfig(DRaFTConfig):
    per_trajectory: bool = True


class DRaFT(Algorithm):
    name = "draft"
    Config = DRaFTConfig
    needs_differentiable_reward = True

    def check(self) -> None:
        super().check()
        c, n = self.config, self.sample.num_steps
        hi = c.k_max if c.k_max is not None else n
        if not 1 <= c.k <= hi <= n:
            raise ValueError(
                f"{self.name}: need 1 ≤ k ≤ k_max ≤ num_steps ({n}), got k={c.k}, k_max={c.k_max}"
            )

    def grad_mask(self, batch: int, generator: torch.Generator) -> Tensor:
        """``(B, S)`` bool: which (trajectory, step) pairs carry gradient."""
        c, n = self.config, self.sample.num_steps
        if c.per_trajectory:
            hi = c.k_max if c.k_max is not None else n
            k = torch.randint(c.k, hi + 1, (batch,), generator=generator)
        else:
            k = torch.full((batch,), c.k)
        steps = torch.arange(n)
        return steps[None, :] >= (n - k)[:, None]

    def losses(
        self, policy, batch: PromptBatch, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Stats]]:
        s = self.sample
        cond = policy.encode_prompt(batch.prompts, guidance=s.guidance_scale != 1.0)
        mask = self.grad_mask(len(batch.prompts), generator)
        out = sample(
            policy,
            cond,
            self.schedule(policy),
            guidance_scale=s.guidance_scale,
            generator=generator,
            grad_steps=mask,
            checkpoint_steps=s.checkpoint_steps,
        )
        rewards = self.score(policy.decode(out.latents), batch.prompts)[:, 0]
        stats = {"reward": rewards.mean().item(), "k_mean": mask.sum(1).float().mean().item()}
        yield losses.reward_loss(rewards), stats


class AlignProp(DRaFT):
    name = "alignprop"
    Config = AlignPropConfig
