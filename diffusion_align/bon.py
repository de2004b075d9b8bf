"""Best-of-N and Soft Best-of-N image generation with any reward, with exact NFE accounting.

For each prompt, ``n`` candidates are sampled (candidate ``k`` of prompt ``i`` starts from
:func:`~diffusion_align.ctrlz.item_generator` ``(seed, i, k)``, so candidate 0 is plain
sampling with the same seed as Ctrl-Z), scored with the reward, and one is returned:

- ``mode: best`` — the argmax (:func:`mmreward.selection.best_of_n`);
- ``mode: soft`` — Soft Best-of-N (Verma et al. 2025): candidate ``j`` with probability
  ``∝ exp(λ·r_j)`` (:func:`mmreward.selection.soft_best_of_n`), ``λ = lam``.

The reward may be any :class:`~mmreward.interface.RewardModel`, a list of them (summed,
equal weights), or a ``{reward: weight}`` mapping (a :class:`~mmreward.compose.WeightedSum`).
Cost: ``n × num_steps`` denoiser evaluations and ``n`` reward evaluations per prompt,
counted at the denoiser (:class:`~diffusion_align.sampling.NFECounter`).

>>> # out = best_of_n_sample(policy, reward, ["a red seven"], n=4,
>>> #                        sample_cfg=SampleConfig(num_steps=20, guidance_scale=3.0))
>>> # out.nfe  # tensor([80])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from diffusion_align.config import SampleConfig
from diffusion_align.ctrlz import item_generator
from diffusion_align.sampling import NFECounter, sample


@dataclass
class BoNConfig:
    n: int = 4  # candidates per prompt
    mode: Literal["best", "soft"] = "best"
    lam: float = 10.0  # Soft-BoN inverse temperature λ (mode: soft)
    batch_size: int = 32  # candidates sampled per denoiser batch


@dataclass
class BoNOutput:
    """Attributes: ``images (B,3,H,W)`` chosen, ``chosen (B,)`` candidate index,
    ``scores (B,)`` chosen candidate's reward, ``candidate_scores (B,n)``, ``nfe (B,)`` and
    ``reward_calls (B,)`` per prompt."""

    images: Tensor
    chosen: Tensor
    scores: Tensor
    candidate_scores: Tensor
    nfe: Tensor
    reward_calls: Tensor


def combine_rewards(reward: Any) -> Any:
    """A single reward model from a model, a list (equal weights) or ``{model: weight}``."""
    from mmreward.compose import WeightedSum
    from mmreward.interface import RewardModel

    if isinstance(reward, RewardModel):
        return reward
    if isinstance(reward, Mapping):
        items = list(reward.items())
    elif isinstance(reward, Sequence) and not isinstance(reward, str) and reward:
        items = [(r, 1.0) for r in reward]
    else:
        raise ValueError(
            f"reward: expected a RewardModel, a list or a mapping of them, got {reward!r} "
            "(load names with mmreward.load first)"
        )
    for r, _ in items:
        if not isinstance(r, RewardModel):
            raise ValueError(f"reward: expected RewardModel members, got {type(r).__name__}")
    if len(items) == 1 and items[0][1] == 1.0:
        return items[0][0]
    names = [(getattr(r, "reward_name", None) or f"r{i}").replace(".", "_")
             for i, (r, _) in enumerate(items)]  # fmt: skip
    names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]
    return WeightedSum(dict(zip(names, (r for r, _ in items))),
                       dict(zip(names, (float(w) for _, w in items))))  # fmt: skip


@torch.no_grad()
def best_of_n_sample(
    policy: Any,
    reward: Any,
    prompts: Sequence[str],
    config: BoNConfig | None = None,
    sample_cfg: SampleConfig | None = None,
    seed: int = 0,
    progress: bool = False,
    index_offset: int = 0,
) -> BoNOutput:
    """Sample ``n`` candidates per prompt and keep one (best or soft); see the module doc.
    Prompt ``k`` is image ``index_offset + k`` of the seed."""
    from tqdm.auto import tqdm

    from diffusion_align.algorithms.base import score_images
    from mmreward.selection import best_of_n, soft_best_of_n

    c, s = config or BoNConfig(), sample_cfg or SampleConfig()
    if c.n < 1 or c.batch_size < 1:
        raise ValueError(f"bon: n and batch_size must be ≥ 1, got {c.n}, {c.batch_size}")
    reward = combine_rewards(reward)
    schedule = policy.schedule(s.num_steps, s.eta, s.noise_level)
    jobs = [(i, k) for i in range(len(prompts)) for k in range(c.n)]
    images, scores = [], []
    with NFECounter(policy) as counter:
        for start in tqdm(
            range(0, len(jobs), c.batch_size), desc="best-of-n", disable=not progress
        ):
            chunk = jobs[start : start + c.batch_size]
            chunk_prompts = [prompts[i] for i, _ in chunk]
            x = torch.cat([policy.initial_noise(1, item_generator(seed, index_offset + i, k),
                                                s.height, s.width) for i, k in chunk])  # fmt: skip
            g = torch.Generator().manual_seed(seed * 7_919 + start)  # η > 0 step noise
            cond = policy.encode_prompt(chunk_prompts, guidance=s.guidance_scale != 1.0)
            out = sample(policy, cond, schedule, guidance_scale=s.guidance_scale, latents=x,
                         generator=g)  # fmt: skip
            im = policy.decode(out.latents)
            scores.append(score_images([reward], im, chunk_prompts)[:, 0].cpu())
            images.append(im.cpu())
    all_images = torch.cat(images).view(len(prompts), c.n, *images[0].shape[1:])
    cand = torch.cat(scores).view(len(prompts), c.n)
    if c.mode == "best":
        chosen = best_of_n(cand)
    elif c.mode == "soft":
        g = torch.Generator().manual_seed(seed * 1_000_003 + index_offset)
        chosen = soft_best_of_n(cand, c.lam, generator=g)
    else:
        raise ValueError(f"bon: mode expected best or soft, got {c.mode!r}")
    rows = torch.arange(len(prompts))
    per_prompt = counter.count // max(1, len(prompts))
    if per_prompt * len(prompts) != counter.count or per_prompt != c.n * s.num_steps:
        raise RuntimeError(f"bon: counted {counter.count} NFE for {len(prompts)} prompts")
    return BoNOutput(
        images=all_images[rows, chosen],
        chosen=chosen,
        scores=cand[rows, chosen],
        candidate_scores=cand,
        nfe=torch.full((len(prompts),), per_prompt, dtype=torch.long),
        reward_calls=torch.full((len(prompts),), c.n, dtype=torch.long),
    )
