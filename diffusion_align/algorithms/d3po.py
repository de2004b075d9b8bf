"""D3PO (Yang et al. 2024, "Using Human Feedback to Fine-tune Diffusion Models without Any
Reward Model"): DPO over the denoising MDP with clipped per-step ratios.

Per prompt, two trajectories start from the **same** latent ``x_T`` (stochastic DDIM,
η > 0, or the flow SDE) and diverge through the sampling noise. A preference between
their final images comes from

- ``preference: reward`` — one or more reward models: the pair counts only when one image
  Pareto-dominates the other (≥ on every reward, > on one;
  :func:`~diffusion_align.losses.pareto_preference`), and, with ``min_margin > 0``, only
  when some reward differs by at least that much; or
- ``preference: human`` — labels in a JSON file for pairs written beforehand with
  ``mmreward align --config … --write-pairs N`` (``data.pairs`` + ``data.labels``).

Every denoising step of the pair is a DPO comparison
(:func:`~diffusion_align.losses.d3po_loss`): ``ρ = clip(π_θ/π_ref, 1 ± ε)`` of the
winner's and loser's transitions. The steps are re-scored in chunks of
``steps_per_backward`` (one backward each), a random ``timestep_fraction`` of them per
update. The reference is the initial model (LoRA disabled, or a frozen copy) with
``reference: initial`` (default, as ALGORITHMS.md states it), or, with
``reference: sampler`` (reward preferences only), the policy that sampled the pair: the
trajectories are fresh each update, so that is the current policy without gradient, the
ratio is 1 at every step, the clip never stops the gradient, and no reference forward is
needed. With the initial model as reference a policy that has moved more than ε per step
from it gets no gradient at all (``clip_frac`` → 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from diffusion_align import losses
from diffusion_align.algorithms.base import Algorithm, Stats
from diffusion_align.data import PairBatch, PromptBatch
from diffusion_align.sampling import sample, transition_log_prob


@dataclass
class D3POConfig:
    beta: float = 0.1
    clip: float = 0.1  # ratio clip ε: ρ ∈ [1 − ε, 1 + ε]
    preference: Literal["reward", "human"] = "reward"
    timestep_fraction: float = 1.0  # fraction of the denoising steps trained per update
    steps_per_backward: int = 1  # denoising steps per backward pass (memory vs. speed)
    min_margin: float = 0.0  # reward preferences: skip pairs whose reward gap is below this
    reference: Literal["initial", "sampler"] = "initial"  # π_ref of the ratio ρ


class D3PO(Algorithm):
    name = "d3po"
    Config = D3POConfig

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.config.reference == "initial"

    @property
    def data_kind(self) -> str:  # type: ignore[override]
        return "pairs" if self.config.preference == "human" else "prompts"

    @property
    def needs_reward(self) -> bool:  # type: ignore[override]
        return self.config.preference == "reward"

    def check(self) -> None:
        super().check()
        c = self.config
        if not 0 < c.timestep_fraction <= 1:
            raise ValueError(
                f"d3po: timestep_fraction must be in (0, 1], got {c.timestep_fraction}"
            )
        if c.min_margin < 0:
            raise ValueError(f"d3po: min_margin must be ≥ 0, got {c.min_margin}")
        if c.steps_per_backward < 1 or not 0 <= c.clip < 1:
            raise ValueError("d3po: steps_per_backward must be ≥ 1 and clip in [0, 1)")
        if c.reference == "sampler" and c.preference != "reward":
            raise ValueError(
                "d3po: reference 'sampler' needs preference 'reward' (pairs sampled by the "
                "policy being trained); human-labelled pairs use reference 'initial'"
            )

    def check_policy(self, policy) -> None:
        super().check_policy(policy)
        if self.data_kind == "prompts" and not self.schedule(policy).stochastic:
            raise ValueError(
                "d3po: needs stochastic sampling: set sample.eta > 0 (DDIM) "
                "or sample.noise_level > 0 (flow)"
            )

    def _pairs_from_rewards(self, policy, batch: PromptBatch, schedule, generator):
        s = self.sample
        n = len(batch.prompts)
        cond = policy.encode_prompt(batch.prompts, guidance=s.guidance_scale != 1.0)
        x_t = policy.initial_noise(n, generator).repeat_interleave(2, dim=0)  # one start per pair
        with torch.no_grad():
            out = sample(policy, cond.repeat_interleave(2), schedule, guidance_scale=s.guidance_scale,
                         latents=x_t, generator=generator, return_trajectory=True)  # fmt: skip
            images = policy.decode(out.latents)
            scores = self.score(images, [p for p in batch.prompts for _ in (0, 1)])
        labels = losses.pareto_preference(scores[0::2], scores[1::2], self.config.min_margin)
        traj = out.trajectory.view(n, 2, *out.trajectory.shape[1:])
        return cond, traj, labels, {"reward": scores[:, 0].mean().item()}

    def losses(
        self, policy, batch: PromptBatch | PairBatch, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Stats]]:
        c, s = self.config, self.sample
        if isinstance(batch, PairBatch):
            st = batch.settings
            guidance = st["guidance_scale"]
            schedule = policy.schedule(st["num_steps"], st["eta"], st["noise_level"])
            cond = policy.encode_prompt(batch.prompts, guidance=guidance != 1.0)
            traj, labels, stats = batch.trajectories.to(policy.device), batch.labels, {}
        else:
            guidance, schedule = s.guidance_scale, self.schedule(policy)
            cond, traj, labels, stats = self._pairs_from_rewards(policy, batch, schedule, generator)
        keep = labels != 0
        stats["pairs"] = float(keep.sum())
        if not keep.any():
            return  # no preference in this batch: nothing to learn
        first = (labels[keep] == 1).to(traj.device).view(-1, *([1] * (traj.ndim - 2)))
        traj = traj[keep.to(traj.device)]
        win = torch.where(first, traj[:, 0], traj[:, 1])  # (m, S+1, C, h, w)
        lose = torch.where(first, traj[:, 1], traj[:, 0])
        m = win.shape[0]
        cond2 = cond.select(keep.nonzero().flatten().tolist()).repeat(2)  # [win; lose]
        steps_total = schedule.num_steps
        k = max(1, round(c.timestep_fraction * steps_total))
        steps = torch.randperm(steps_total, generator=generator)[:k].sort().values.tolist()
        for start in range(0, k, c.steps_per_backward):
            chunk = steps[start : start + c.steps_per_backward]
            total = 0.0
            for j in chunk:
                x_t = torch.cat([win[:, j], lose[:, j]])
                x_prev = torch.cat([win[:, j + 1], lose[:, j + 1]])
                lp = transition_log_prob(policy, schedule, j, x_t, x_prev, cond2, guidance).log_prob
                if c.reference == "sampler":  # the sampling policy = this policy, no grad
                    ref = lp.detach()
                else:
                    ref = transition_log_prob(
                        policy, schedule, j, x_t, x_prev, cond2, guidance, reference=True
                    ).log_prob
                total = total + losses.d3po_loss(lp[:m], lp[m:], ref[:m], ref[m:], c.beta, c.clip)
            with torch.no_grad():
                ratio = (lp - ref).exp()
                clipped = ((ratio - 1).abs() > c.clip).float().mean().item()
            yield total / k, {**stats, "clip_frac": clipped}
