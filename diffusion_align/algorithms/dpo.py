"""Diffusion-DPO (Wallace et al. 2023) from (prompt, winner, loser) image pairs.

Per pair: encode both images to latents, noise them with the **same** ε and timestep,
predict with the policy and the reference, and apply
:func:`~diffusion_align.losses.diffusion_dpo_loss` to the per-sample denoising errors.

**β convention.** ``beta_convention: half`` (default) multiplies β by 0.5, as the
Diffusion-DPO reference code does (its SD1.5 recipe: β = 5000); ``plain`` uses β as is
(β = 2500 there is the same objective). Errors are means over latent dimensions.

The reference is the policy with its LoRA adapters disabled (``ref_forward: batched``
runs policy and reference in one forward of the doubled batch) or a frozen copy (always
a separate ``no_grad`` forward).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from diffusion_align import losses
from diffusion_align.algorithms.base import Algorithm, Stats
from diffusion_align.data import PreferenceBatch


@dataclass
class DPOConfig:
    beta: float = 5000.0
    beta_convention: Literal["half", "plain"] = "half"  # half: β_eff = β/2 (reference code)
    # batched: one forward for policy + reference (LoRA reference, no gradient checkpointing)
    ref_forward: Literal["batched", "separate"] = "batched"


class DiffusionDPO(Algorithm):
    name = "dpo"
    Config = DPOConfig
    data_kind = "preferences"
    needs_reward = False
    needs_reference = True

    def check_policy(self, policy) -> None:
        super().check_policy(policy)
        if self.config.ref_forward == "batched":
            policy.check_batched_reference()

    def losses(
        self, policy, batch: PreferenceBatch, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Stats]]:
        cfg = self.config
        n = len(batch.prompts)
        x0 = policy.encode(torch.cat([batch.winners, batch.losers]), generator)  # [w; l]
        noise = (
            torch.randn((n, *x0.shape[1:]), generator=generator).to(x0.device).repeat(2, 1, 1, 1)
        )
        noising = policy.noise_schedule()
        index = noising.sample_indices(n, generator).repeat(2)  # same t for winner and loser
        x_t, t, target = noising.add_noise(x0, noise, index)
        cond = policy.encode_prompt(batch.prompts, guidance=False).repeat(2)
        pred, ref = policy.predict_with_reference(
            x_t, t, cond, batched=cfg.ref_forward == "batched"
        )
        err, ref_err = losses.per_sample_mse(pred, target), losses.per_sample_mse(ref, target)
        loss = losses.diffusion_dpo_loss(
            err[:n], err[n:], ref_err[:n], ref_err[n:], cfg.beta, cfg.beta_convention
        )
        with torch.no_grad():
            margin = (err[:n] - err[n:]) - (ref_err[:n] - ref_err[n:])
        stats = {
            "implicit_acc": (margin < 0).float().mean().item(),
            "err_w": err[:n].mean().item(),
            "err_l": err[n:].mean().item(),
            "ref_err_w": ref_err[:n].mean().item(),
        }
        yield loss, stats
