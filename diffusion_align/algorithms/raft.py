"""RAFT (Dong et al. 2023, "RAFT: Reward rAnked FineTuning for Generative Foundation Model
Alignment", https://arxiv.org/abs/2304.06767): best-of-K filtering, then fine-tuning.

One trainer step is one iteration:

1. **sample** ``samples_per_prompt`` (K) images per prompt of the batch with the current
   model (no gradient) and score them;
2. **rank and keep**: ``keep: local`` keeps the best of each prompt's K samples (the
   paper's top 1/K per prompt; :func:`~mmreward.selection.best_of_n`), ``keep: global``
   the top ``alpha`` fraction of the whole batch (:func:`select_kept`);
3. **fine-tune** on the kept samples with the model's own denoising objective
   (ε-, v- or velocity regression): on the kept *latents* as sampled (``sft_on:
   latents``, default) or on the kept *images* re-encoded by the VAE (``sft_on: images``,
   what fine-tuning on saved images does, and on the distribution of latents the model was
   trained on), or on the kept samples' own denoising *trajectories* (``sft_on:
   trajectory``: maximise the log-likelihood of every recorded transition x_t → x_{t−1}
   under the guided sampler, DDPO's reward-weighted regression with a 0/1 weight; needs a
   stochastic sampler, e.g. ``sample.eta: 1``); ``sft_epochs`` passes in minibatches of
   ``sft_batch_size``, one optimizer update each.

Every iteration writes its kept set to ``<run>/raft/step_<N>/``: ``kept.png`` (the kept
images), ``kept.json`` (prompts, kept rewards, every sample's reward, the indices kept)
and ``kept_latents.safetensors`` (the latents trained on). Reference defaults: K = 8
(best-of-8), local ranking.

With classifier-free guidance the candidates come from the *guided* sampler, but the
plain objective fits them with the conditional prediction alone; at sampling time guidance
then amplifies every change of the conditional prediction by the guidance scale, so the
model drifts past its kept set (on the world, the fine-tuned models' samples change as the
base model's do at a higher guidance scale: larger and sharper digits, fewer of the right
class). ``sft_guidance: true`` regresses the guided prediction
ε_u + w(ε_c − ε_u), with the sampler's w, onto the kept samples' targets: the policy that
is fine-tuned is the one that samples (as DDPO trains with CFG). Off by default (the
reference code fine-tunes the conditional model).

``candidate_guidance: 1`` instead samples the candidates without guidance, from the
conditional model itself, so that the kept set is a filtered copy of what the fitted
prediction samples; galleries and evaluation keep ``sample.guidance_scale``. On the world,
this with ``sft_on: images`` turns the digit loss into a gain.

Fitting kept images (``sft_on: latents`` or ``images``) improves a model only as far as
supervised fine-tuning on better images does. On the built-in world that is not at all:
fine-tuning on the world's own renders leaves the samples as they were (``python -m
diffusion_align.sft_probe``). Fitting the kept trajectories there varies more between
training seeds than it gains (see the README).

``snr_gamma`` weighs the denoising loss per timestep with min-SNR-γ (Hang et al. 2023),
the weighting of diffusers' training scripts' ``--snr_gamma``. Fine-tune with the weighting
the model was pre-trained with (the world's model: γ = 5): plain MSE weighs the least noisy
timesteps up to a few hundred times more than min-SNR-5 does (235× at t = 0 on the world's
schedule), and on the model's own samples those are where the fit is worst.

Optionally, each fine-tuning minibatch adds ``pretrain_weight`` × the denoising loss on
image-caption pairs (``data.pretrain``, e.g. ``world:train``), as ReFL's regulariser
does: fine-tuning only on the model's own samples can reinforce their flaws (e.g. blur);
real data anchors it. The reference code has no such term (weight 0, the default).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from diffusion_align.algorithms.base import UPDATE, Algorithm, Stats
from diffusion_align.algorithms.ddpo import repeat_prompts
from diffusion_align.algorithms.refl import denoising_loss as pretrain_denoising_loss
from diffusion_align.algorithms.refl import latent_denoising_loss
from diffusion_align.data import PromptBatch
from diffusion_align.sampling import sample


def select_kept(
    rewards: Tensor,
    group_size: int,
    keep: str = "local",
    alpha: float = 0.125,
    min_reward: float | None = None,
) -> Tensor:
    """Indices (sorted) of the kept samples among ``N = prompts × group_size``.

    ``rewards`` ``(N,)`` are grouped by prompt, ``group_size`` consecutive samples each.
    ``local``: the best of every group (ties → the first); ``global``: the
    ``ceil(alpha·N)`` best of the batch. ``min_reward``: of those, only the ones scoring
    at least this much (possibly none).

    >>> select_kept(torch.tensor([0.1, 0.9, 0.5, 0.2]), 2).tolist()
    [1, 2]
    >>> select_kept(torch.tensor([0.1, 0.9, 0.5, 0.2]), 2, "global", alpha=0.5).tolist()
    [1, 2]
    >>> select_kept(torch.tensor([0.1, 0.9, 0.5, 0.2]), 2, min_reward=0.6).tolist()
    [1]
    """
    from mmreward.selection import best_of_n

    n = rewards.shape[0]
    if rewards.ndim != 1 or n % group_size:
        raise ValueError(f"rewards: expected (prompts × {group_size},), got {tuple(rewards.shape)}")
    if keep == "local":
        best = best_of_n(rewards.view(-1, group_size))
        kept = best + torch.arange(0, n, group_size, device=best.device)
    elif keep == "global":
        if not 0 < alpha <= 1:
            raise ValueError(f"algorithm.alpha: expected in (0, 1], got {alpha}")
        kept = torch.topk(rewards, math.ceil(alpha * n)).indices.sort().values
    else:
        raise ValueError(f"algorithm.keep: expected local or global, got {keep!r}")
    if min_reward is not None:
        kept = kept[rewards[kept] >= min_reward]
    return kept


@dataclass
class Candidates:
    """One iteration's samples: ``prompts`` (each batch prompt ``K`` times in a row), their
    conditioning, final ``latents``, the ``trajectory`` ``(N, S+1, …)`` when
    ``sft_on: trajectory`` (else None), decoded ``images`` and ``rewards`` ``(N,)``."""

    prompts: list[str]
    cond: Any
    latents: Tensor
    trajectory: Tensor | None
    images: Tensor
    rewards: Tensor


@dataclass
class RAFTConfig:
    samples_per_prompt: int = 8  # K: candidates per prompt (best-of-K)
    keep: Literal["local", "global"] = "local"  # best per prompt, or top alpha of the batch
    alpha: float = 0.125  # fraction kept by keep: global
    sft_epochs: int = 1  # passes over the kept set per iteration
    sft_batch_size: int | None = None  # kept samples per optimizer update (None: all)
    save_kept: bool = True  # write raft/step_<N>/ (images, rewards, latents)
    pretrain_weight: float = 0.0  # denoising loss on data.pretrain per minibatch (0: off)
    sft_on: Literal["latents", "images", "trajectory"] = "latents"  # or VAE(images), or paths
    min_reward: float | None = None  # drop kept samples scoring below this (None: keep all)
    sft_guidance: bool = False  # fit the CFG-guided prediction (the sampler), not the conditional
    snr_gamma: float | None = None  # min-SNR-γ weights on the denoising loss (None: plain MSE)
    candidate_guidance: float | None = None  # CFG scale of the candidates (None: sample's)


class RAFT(Algorithm):
    name = "raft"
    Config = RAFTConfig
    inner_updates = True

    def check(self) -> None:
        super().check()
        c = self.config
        if c.samples_per_prompt < 1 or c.sft_epochs < 1:
            raise ValueError("raft: samples_per_prompt and sft_epochs must be ≥ 1")
        if c.sft_batch_size is not None and c.sft_batch_size < 1:
            raise ValueError("raft: sft_batch_size must be ≥ 1 or null")
        if c.keep == "global" and not 0 < c.alpha <= 1:
            raise ValueError(f"raft: alpha must be in (0, 1], got {c.alpha}")
        if c.pretrain_weight < 0:
            raise ValueError(f"raft: pretrain_weight must be ≥ 0, got {c.pretrain_weight}")
        if c.candidate_guidance is not None and c.candidate_guidance < 1:
            raise ValueError(
                f"raft: candidate_guidance must be ≥ 1 or null, got {c.candidate_guidance}"
            )
        if c.snr_gamma is not None and c.snr_gamma <= 0:
            raise ValueError(f"raft: snr_gamma must be > 0 or null, got {c.snr_gamma}")

    @property
    def candidate_guidance(self) -> float:
        """The guidance scale the candidates are sampled with."""
        w = self.config.candidate_guidance
        return self.sample.guidance_scale if w is None else w

    @torch.no_grad()
    def _candidates(self, policy, prompts: list[str], generator: torch.Generator) -> Candidates:
        s, k, w = self.sample, self.config.samples_per_prompt, self.candidate_guidance
        all_prompts = repeat_prompts(prompts, k)
        cond = policy.encode_prompt(all_prompts, guidance=w != 1.0,
                                    height=s.height, width=s.width)  # fmt: skip
        x = policy.initial_noise(len(all_prompts), generator, s.height, s.width)
        out = sample(policy, cond, self.schedule(policy), guidance_scale=w,
                     latents=x, generator=generator,
                     return_trajectory=self.config.sft_on == "trajectory")  # fmt: skip
        images = policy.decode(out.latents)
        rewards = self.score(images, all_prompts)[:, 0]
        return Candidates(all_prompts, cond, out.latents, out.trajectory, images, rewards)

    def _minibatches(self, n: int, generator: torch.Generator) -> Iterator[Tensor]:
        """Row indices of the kept set: ``sft_epochs`` shuffled passes in ``sft_batch_size``."""
        mb = self.config.sft_batch_size or n
        for _ in range(self.config.sft_epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, mb):
                yield order[start : start + mb]

    def _trajectory_losses(
        self, policy, cands: Candidates, kept: Tensor, batch: PromptBatch, generator, stats: Stats
    ) -> Iterator[tuple[Tensor, Stats] | object]:
        """−log-likelihood of the kept samples' recorded transitions under the guided
        sampler, per latent dimension, averaged over steps; one update per minibatch."""
        from diffusion_align.sampling import transition_log_prob

        c = self.config
        schedule = self.schedule(policy)
        if not schedule.stochastic:
            raise ValueError(
                "raft: sft_on: trajectory needs a stochastic sampler (sample.eta > 0, or "
                "sample.noise_level > 0 for flow models)"
            )
        traj = cands.trajectory[kept.to(cands.trajectory.device)]
        cond = cands.cond.select(kept.tolist())
        steps, dims = traj.shape[1] - 1, traj[0, 0].numel()
        for rows in self._minibatches(len(kept), generator):
            sub = cond.select(rows.tolist())
            for i in range(steps):
                x_t = traj[rows, i].to(policy.device)
                x_prev = traj[rows, i + 1].to(policy.device)
                out = transition_log_prob(policy, schedule, i, x_t, x_prev, sub,
                                          self.candidate_guidance)  # fmt: skip
                loss = -out.log_prob.mean() / (dims * steps)
                if i == 0 and c.pretrain_weight > 0:
                    loss = loss + c.pretrain_weight * self._pretrain_loss(
                        policy, batch, generator, stats
                    )
                yield loss, stats
            yield UPDATE

    def _pretrain_loss(self, policy, batch: PromptBatch, generator, stats: Stats) -> Tensor:
        if batch.images is None:
            raise ValueError("raft: pretrain_weight > 0 needs data.pretrain (image-caption pairs)")
        reg = pretrain_denoising_loss(
            policy, batch.images, batch.image_prompts, generator, self.config.snr_gamma
        )
        stats["pretrain_loss"] = reg.item()
        return reg

    def _save(self, prompts, kept: Tensor, rewards: Tensor, latents: Tensor, images: Tensor):
        from mmreward.checkpoint import save_state_dict
        from mmreward.report import save_image_grid, write_json

        if getattr(self, "run_dir", None) is None:
            return
        suffix = f"_rank{self.rank}" if getattr(self, "rank", 0) else ""
        folder = Path(self.run_dir) / "raft" / f"step_{self.step_index:08d}{suffix}"
        folder.mkdir(parents=True, exist_ok=True)
        ids = kept.tolist()
        save_image_grid(images[kept].cpu(), folder / "kept.png", nrow=8)
        save_state_dict({"latents": latents[kept].detach().cpu().contiguous()},
                        folder / "kept_latents.safetensors")  # fmt: skip
        write_json(folder / "kept.json", {
            "step": self.step_index,
            "samples_per_prompt": self.config.samples_per_prompt,
            "keep": self.config.keep,
            "kept_index": ids,
            "kept_prompts": [prompts[i] for i in ids],
            "kept_rewards": rewards[kept].tolist(),
            "all_prompts": prompts,
            "all_rewards": rewards.tolist(),
        })  # fmt: skip

    def losses(
        self, policy, batch: PromptBatch, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Stats] | object]:
        c = self.config
        cands = self._candidates(policy, batch.prompts, generator)
        prompts, rewards = cands.prompts, cands.rewards
        kept = select_kept(rewards.cpu(), c.samples_per_prompt, c.keep, c.alpha, c.min_reward)
        if len(kept) == 0:  # nothing good enough this iteration: no update
            return
        if c.save_kept:
            self._save(prompts, kept, rewards.cpu(), cands.latents, cands.images)
        stats = {"reward": rewards.mean().item(), "kept_reward": rewards[kept].mean().item(),
                 "kept": float(len(kept))}  # fmt: skip
        if c.sft_on == "trajectory":
            yield from self._trajectory_losses(policy, cands, kept, batch, generator, stats)
            return
        if c.sft_on == "images":  # decode → re-encode: latents from the VAE's posterior
            with torch.no_grad():
                kept_latents = policy.encode(cands.images[kept.to(cands.images.device)], generator)
        else:
            kept_latents = cands.latents[kept.to(cands.latents.device)]
        kept_prompts = [prompts[i] for i in kept.tolist()]
        guidance = self.sample.guidance_scale if c.sft_guidance else 1.0
        cond = policy.encode_prompt(kept_prompts, guidance=guidance != 1.0,
                                    height=self.sample.height, width=self.sample.width)  # fmt: skip
        for rows in self._minibatches(len(kept), generator):
            x0 = kept_latents[rows.to(kept_latents.device)]
            loss = latent_denoising_loss(
                policy, x0, cond.select(rows.tolist()), generator, guidance, c.snr_gamma
            )
            if c.pretrain_weight > 0:
                loss = loss + c.pretrain_weight * self._pretrain_loss(
                    policy, batch, generator, stats
                )
            yield loss, stats
            yield UPDATE
