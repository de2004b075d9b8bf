"""DDPO (Black et al. 2024, "Training Diffusion Models with Reinforcement Learning",
https://arxiv.org/abs/2305.13301): PPO over the denoising MDP.

One trainer step is one iteration:

1. **sample** — ``samples_per_prompt`` trajectories per prompt of the batch with a
   stochastic sampler (DDIM η = 1, or the flow SDE), classifier-free guidance as
   configured, per-step log-probs in fp32 (:func:`~diffusion_align.sampling.sample`);
2. **score** — decode the final latents and score them with the reward;
3. **advantages** — per-prompt normalisation through the core
   :class:`~mmreward.compose.PerPromptStatTracker` (each prompt's recent rewards; the batch
   statistics until a prompt has ``stat_min_count`` of them), or the batch mean/std;
4. **train** — ``inner_epochs`` passes over the sampled batch in shuffled minibatches of
   ``train_batch_size`` trajectories; each minibatch re-scores a random
   ``timestep_fraction`` of its transitions (one backward per denoising step, the step
   losses averaged) with the PPO clipped objective (:func:`ppo_clip_loss`), then one
   optimizer update.

On the first minibatch of an iteration the weights are those that sampled the batch, so
``π_old = π_θ``: the old log-prob is the freshly computed one, detached, and the
importance ratio is exactly 1 (clipping is inactive, the gradient is the plain policy
gradient ``−A ∇log π``). Later minibatches use the log-probs recorded while sampling.

The guidance scale used during training is the sampling one: the ratio compares the
same guided transition density.

Reference defaults (SD 1.5): 50 DDIM steps, η 1, CFG 5, clip range 1e-4, advantage clip 5,
per-prompt stat tracking (buffer 16, min count 16), lr 3e-4 with LoRA.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffusion_align.algorithms.base import UPDATE, Algorithm, Stats
from diffusion_align.data import PromptBatch
from diffusion_align.sampling import sample, transition_log_prob

# -- pure losses (hand-checked in tests/test_align_rl.py) ------------------------------------


def clip_advantages(advantages: Tensor, max_abs: float) -> Tensor:
    """Advantages clamped to ``[−max_abs, max_abs]`` (DDPO's ``adv_clip_max``).

    >>> clip_advantages(torch.tensor([-9.0, 0.5, 7.0]), 5.0)
    tensor([-5.0000,  0.5000,  5.0000])
    """
    if not max_abs > 0:
        raise ValueError(f"adv_clip_max: expected > 0, got {max_abs}")
    return advantages.clamp(-max_abs, max_abs)


def ppo_clip_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    clip_range: float,
    adv_clip_max: float = math.inf,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7) as DDPO minimises it.

    ``ρ = exp(log π_θ − log π_old)``; ``L = mean(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)))`` with
    ``A`` clamped to ``±adv_clip_max``. ``old_log_prob`` and the advantages carry no
    gradient. Returns the loss (fp32) and detached diagnostics: the mean ratio, the clipped
    fraction and the approximate KL ``½·mean((log π_θ − log π_old)²)``.

    >>> loss, info = ppo_clip_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1.0, -1.0]), 0.1)
    >>> float(loss), float(info["clip_frac"])
    (0.0, 0.0)
    """
    adv = advantages.float().detach()
    if math.isfinite(adv_clip_max):
        adv = clip_advantages(adv, adv_clip_max)
    log_ratio = log_prob.float() - old_log_prob.float().detach()
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        info = {
            "ratio": ratio.mean(),
            "ratio_dev": (ratio - 1).abs().max(),
            "clip_frac": ((ratio - 1).abs() > clip_range).float().mean(),
            "approx_kl": 0.5 * (log_ratio**2).mean(),
        }
    return loss, info


def batch_advantages(rewards: Tensor, eps: float = 1e-8) -> Tensor:
    """``(r − mean) / (std + eps)`` over the batch (population std), no per-prompt stats.

    >>> batch_advantages(torch.tensor([1.0, 3.0]))
    tensor([-1.,  1.])
    """
    r = rewards.float()
    return (r - r.mean()) / (r.std(unbiased=False) + eps)


# -- the rollout shared by DDPO, GRPO (and RAFT's sampling) ----------------------------------


@dataclass
class Rollout:
    """One iteration's samples (``N`` trajectories of ``S`` steps), all detached.

    Attributes:
        prompts: ``N`` prompts (each batch prompt repeated ``samples_per_prompt`` times).
        cond: their conditioning (with negative embeddings under CFG).
        trajectory: ``(N, S+1, C, h, w)`` latents ``x_T … x_0``.
        log_probs: ``(N, S)`` fp32 per-step log-probs under the sampling weights.
        images: ``(N, 3, H, W)`` decoded final samples in [0,1].
        rewards: ``(N, K)`` fp32 scores (one column per reward model).
    """

    prompts: list[str]
    cond: Any
    trajectory: Tensor
    log_probs: Tensor
    images: Tensor
    rewards: Tensor


def repeat_prompts(prompts: list[str], n: int) -> list[str]:
    """Each prompt ``n`` times in a row (``[a, b]`` → ``[a, a, b, b]``)."""
    return [p for p in prompts for _ in range(n)]


@dataclass
class DDPOConfig:
    samples_per_prompt: int = 1  # trajectories per prompt of the batch
    clip_range: float = 1e-4  # PPO ratio clip ε
    adv_clip_max: float = 5.0  # advantages clamped to ±this
    inner_epochs: int = 1  # passes over the sampled batch
    train_batch_size: int | None = None  # trajectories per optimizer update (None: all)
    timestep_fraction: float = 1.0  # fraction of each trajectory's steps trained
    per_prompt_stat_tracking: bool = True  # normalise per prompt (else over the batch)
    stat_buffer_size: int = 16  # rewards kept per prompt
    stat_min_count: int = 16  # below this, a prompt uses the batch statistics


class DDPO(Algorithm):
    """DDPO with the PPO clipped objective; :class:`~diffusion_align.algorithms.grpo.GRPO`
    shares everything but the advantages and the KL term."""

    name = "ddpo"
    Config = DDPOConfig
    inner_updates = True

    def __init__(self, config=None, sample=None, rewards=()) -> None:
        super().__init__(config, sample, rewards)
        self._tracker = None
        if getattr(self.config, "per_prompt_stat_tracking", False):
            from mmreward.compose import PerPromptStatTracker

            self._tracker = PerPromptStatTracker(
                self.config.stat_buffer_size, self.config.stat_min_count
            )

    def check(self) -> None:
        super().check()
        c = self.config
        if c.samples_per_prompt < 1 or c.inner_epochs < 1:
            raise ValueError(
                f"{self.name}: samples_per_prompt and inner_epochs must be ≥ 1, got "
                f"{c.samples_per_prompt} and {c.inner_epochs}"
            )
        if c.train_batch_size is not None and c.train_batch_size < 1:
            raise ValueError(f"{self.name}: train_batch_size must be ≥ 1 or null")
        if not 0 < c.timestep_fraction <= 1:
            raise ValueError(
                f"{self.name}: timestep_fraction must be in (0, 1], got {c.timestep_fraction}"
            )
        if not c.clip_range > 0 or not c.adv_clip_max > 0:
            raise ValueError(f"{self.name}: clip_range and adv_clip_max must be > 0")

    def check_policy(self, policy) -> None:
        super().check_policy(policy)
        if not self.schedule(policy).stochastic:
            raise ValueError(
                f"{self.name}: needs a stochastic sampler for log-probs: set sample.eta > 0 "
                "(DDIM; DDPO uses 1.0) or sample.noise_level > 0 (flow)"
            )

    @property
    def samples_per_prompt(self) -> int:
        return self.config.samples_per_prompt

    # -- state (the per-prompt reward buffers) ---------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"stat_tracker": self._tracker.state_dict()} if self._tracker else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._tracker is None:
            super().load_state_dict(state)
        elif "stat_tracker" in state:
            self._tracker.load_state_dict(state["stat_tracker"])
        else:
            self._tracker.clear()

    # -- phases ----------------------------------------------------------------------------
    def initial_latents(self, policy, n_prompts: int, generator: torch.Generator) -> Tensor:
        """Start noise for ``n_prompts × samples_per_prompt`` trajectories (independent)."""
        s = self.sample
        return policy.initial_noise(
            n_prompts * self.samples_per_prompt, generator, s.height, s.width
        )

    @torch.no_grad()
    def rollout(self, policy, prompts: list[str], generator: torch.Generator) -> Rollout:
        """Sample and score ``samples_per_prompt`` trajectories per prompt."""
        s, k = self.sample, self.samples_per_prompt
        cond = policy.encode_prompt(prompts, guidance=s.guidance_scale != 1.0, height=s.height,
                                    width=s.width).repeat_interleave(k)  # fmt: skip
        latents = self.initial_latents(policy, len(prompts), generator)
        out = sample(policy, cond, self.schedule(policy), guidance_scale=s.guidance_scale,
                     latents=latents, generator=generator, log_probs=True,
                     return_trajectory=True)  # fmt: skip
        images = policy.decode(out.latents)
        all_prompts = repeat_prompts(prompts, k)
        return Rollout(all_prompts, cond, out.trajectory, out.log_probs, images,
                       self.score(images, all_prompts))  # fmt: skip

    def advantages(self, rollout: Rollout) -> Tensor:
        """``(N,)`` advantages of the first reward column (before clipping)."""
        r = rollout.rewards[:, 0]
        if self._tracker is not None:
            return self._tracker.update(rollout.prompts, r.cpu()).float().to(r.device)
        return batch_advantages(r)

    def extra_loss(
        self, step_out, policy, schedule, idx, x_t, x_prev, cond
    ) -> tuple[Tensor, Stats]:
        """An additional per-step loss term (GRPO's KL to the reference); none here."""
        return torch.zeros((), device=x_t.device), {}

    def losses(
        self, policy, batch: PromptBatch, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Stats] | object]:
        c, s = self.config, self.sample
        schedule = self.schedule(policy)
        ro = self.rollout(policy, batch.prompts, generator)
        adv = self.advantages(ro).to(policy.device)
        n, steps = ro.log_probs.shape
        k = max(1, round(c.timestep_fraction * steps))
        mb = c.train_batch_size or n
        base_stats = {"reward": ro.rewards[:, 0].mean().item(),
                      "reward_std": ro.rewards[:, 0].std(unbiased=False).item(),
                      "adv_abs": adv.abs().mean().item()}  # fmt: skip
        first = True  # the weights that sampled the batch: π_old = π_θ
        for _ in range(c.inner_epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, mb):
                rows = order[start : start + mb]
                # DDPO: each trajectory trains a random subset of its steps, in random order
                step_idx = torch.stack(
                    [torch.randperm(steps, generator=generator)[:k] for _ in range(len(rows))]
                )
                cond = ro.cond.select(rows.tolist())
                traj = ro.trajectory[rows]
                ar = torch.arange(len(rows))
                for j in range(k):
                    idx = step_idx[:, j]
                    x_t = traj[ar, idx].to(policy.device)
                    x_prev = traj[ar, idx + 1].to(policy.device)
                    out = transition_log_prob(policy, schedule, idx.to(policy.device), x_t, x_prev,
                                              cond, s.guidance_scale)  # fmt: skip
                    recorded = ro.log_probs[rows, idx].to(policy.device)
                    old = out.log_prob.detach() if first else recorded
                    loss, info = ppo_clip_loss(out.log_prob, old, adv[rows.to(adv.device)],
                                               c.clip_range, c.adv_clip_max)  # fmt: skip
                    extra, extra_stats = self.extra_loss(out, policy, schedule, idx, x_t, x_prev,
                                                         cond)  # fmt: skip
                    stats = {**base_stats, **{key: v.item() for key, v in info.items()},
                             **extra_stats}  # fmt: skip
                    if first:  # how closely training re-scores the sampled transitions
                        stats["logp_replay_err"] = (
                            (out.log_prob.detach() - recorded).abs().max().item()
                        )
                    yield (loss + extra) / k, stats
                first = False
                yield UPDATE
