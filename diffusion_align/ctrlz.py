"""Ctrl-Z sampling (Controlled Random Zigzag; "Ctrl-Z Sampling: Diffusion Sampling with
Controlled Random Zigzag Explorations", https://arxiv.org/abs/2506.20294), written from the
paper's description (no public code).

Sampling is hill climbing: at every step ``i`` the model's prediction ``x̂0`` is decoded and
scored with a reward (any :class:`~mmreward.interface.RewardModel`, including
:mod:`mmreward.compose` combinations). When the score stagnates — it rose by less than
``threshold`` since the previous step — the sampler takes it for a local optimum and
explores:

1. **revert**: inject fresh noise into the current latent ``x_i`` to take it ``d`` steps
   back to the noisier level of step ``i − d``, with the exact forward transition of the
   noising process (:func:`revert`);
2. **redo**: denoise the candidate forward again to step ``i`` (``d`` evaluations) and
   score its ``x̂0`` there (one more evaluation, which is also the step ``i`` call the
   candidate would need anyway);
3. **accept** the candidate only if its score beats the current one; otherwise draw
   another candidate (``retries`` per depth), then go back further (``d + 1``, up to
   ``max_depth``). If nothing improves, continue from the original ``x_i``.

``nfe_budget`` caps the denoiser evaluations per image: a candidate is only tried when
its cost plus the steps still needed to finish fit in the budget, so the budget is never
exceeded and the sample always completes. The NFE actually used is recorded per image
(counted at the denoiser, :class:`~diffusion_align.sampling.NFECounter`), with the reward
evaluations, explorations and accepted branches. With a threshold that never fires the
result is exactly plain sampling from the same start noise.

>>> # out = ctrlz_sample(policy, reward, ["a red seven"], CtrlZConfig(nfe_budget=80),
>>> #                    SampleConfig(num_steps=20, guidance_scale=3.0), seed=0)
>>> # out.images.shape, out.nfe  # (1, 3, H, W), tensor([≤ 80])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diffusion_align.config import SampleConfig
from diffusion_align.sampling import DDIMSchedule, NFECounter, Schedule


@dataclass
class CtrlZConfig:
    threshold: float = 0.0  # stagnation: the x̂0 score rose by less than this since the last step
    retries: int = 2  # candidates tried per revert depth
    max_depth: int = 3  # revert at most this many steps back
    nfe_budget: int | None = None  # denoiser evaluations per image (None: unlimited)
    explore_steps: list[int] | None = None  # [first, last] step indices that may explore


def item_generator(seed: int, index: int, candidate: int = 0) -> torch.Generator:
    """The generator of image ``index`` (candidate ``candidate``): the same start noise in
    plain sampling, Best-of-N (candidate 0) and Ctrl-Z for the same seed."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index * 1_009 + candidate)


def revert(schedule: Schedule, x: Tensor, i: int, j: int, noise: Tensor) -> Tensor:
    """Take a latent at the level of step ``i`` back to the (noisier) level of step ``j < i``.

    DDPM family: ``x_j = √(ᾱ_j/ᾱ_i)·x_i + √(1 − ᾱ_j/ᾱ_i)·z`` (the forward transition
    ``q(x_j | x_i)``); flow ``x_σ = (1−σ)x0 + σε``: ``x_j = c·x_i + √(σ_j² − c²σ_i²)·z``
    with ``c = (1−σ_j)/(1−σ_i)``. Either keeps the marginal of the noising process.
    """
    if not 0 <= j < i < schedule.num_steps:
        raise ValueError(f"revert: expected 0 ≤ j < i < {schedule.num_steps}, got i={i}, j={j}")
    if isinstance(schedule, DDIMSchedule):
        ratio = (schedule.alpha_t[j] / schedule.alpha_t[i]).item()
        return math.sqrt(ratio) * x + math.sqrt(max(0.0, 1 - ratio)) * noise
    s_i, s_j = schedule.sigmas[i].item(), schedule.sigmas[j].item()
    c = (1 - s_j) / (1 - s_i)
    return c * x + math.sqrt(max(0.0, s_j**2 - (c * s_i) ** 2)) * noise


@dataclass
class CtrlZOutput:
    """Ctrl-Z results for ``B`` prompts.

    Attributes:
        images: ``(B,3,H,W)`` in [0,1] (CPU).
        latents: ``(B,C,h,w)`` final latents (CPU).
        scores: ``(B,)`` the search reward of the final images.
        nfe: ``(B,)`` int64 denoiser evaluations used per image.
        reward_calls: ``(B,)`` int64 reward evaluations per image.
        explorations: ``(B,)`` stagnations that triggered a search.
        accepted: ``(B,)`` branches accepted.
        step_scores: per image, the x̂0 score kept at every step.
    """

    images: Tensor
    latents: Tensor
    scores: Tensor
    nfe: Tensor
    reward_calls: Tensor
    explorations: Tensor
    accepted: Tensor
    step_scores: list[list[float]] = field(default_factory=list)


class _Searcher:
    """One image's search state (batch of one: every image branches on its own)."""

    def __init__(self, policy, reward, prompt: str, schedule: Schedule, guidance: float,
                 cfg: CtrlZConfig, generator: torch.Generator) -> None:  # fmt: skip
        self.policy, self.reward, self.prompt = policy, reward, prompt
        self.schedule, self.guidance, self.cfg, self.g = schedule, guidance, cfg, generator
        self.cond = policy.encode_prompt([prompt], guidance=guidance != 1.0)
        self.nfe = self.reward_calls = self.explorations = self.accepted = 0

    def step(self, i: int, x: Tensor):
        out = self.policy.predict(x, self.schedule.model_timestep(i), self.cond, self.guidance)
        self.nfe += 1
        return self.schedule.step(i, out, x, generator=self.g)

    def score(self, x0: Tensor) -> float:
        from diffusion_align.algorithms.base import score_images

        self.reward_calls += 1
        return float(score_images([self.reward], self.policy.decode(x0), [self.prompt])[0, 0])

    def fits(self, cost: int, i: int) -> bool:
        budget = self.cfg.nfe_budget
        remaining = self.schedule.num_steps - i - 1  # steps after step i
        return budget is None or self.nfe + cost + remaining <= budget

    def explore(self, i: int, x: Tensor, current: float):
        """Candidates from deeper and deeper reverts; the first that beats ``current``."""
        self.explorations += 1
        for depth in range(1, min(self.cfg.max_depth, i) + 1):
            for _ in range(self.cfg.retries):
                if not self.fits(depth + 1, i):
                    return None
                noise = torch.randn(x.shape, generator=self.g).to(x.device)
                cand = revert(self.schedule, x, i, i - depth, noise)
                for j in range(i - depth, i):
                    cand = self.step(j, cand).prev_sample
                out = self.step(i, cand)
                score = self.score(out.pred_x0)
                if score > current:
                    self.accepted += 1
                    return cand, out, score
        return None

    @torch.no_grad()
    def run(self, x: Tensor) -> tuple[Tensor, list[float]]:
        cfg, n = self.cfg, self.schedule.num_steps
        lo, hi = cfg.explore_steps if cfg.explore_steps is not None else (1, n - 1)
        prev, kept = None, []
        for i in range(n):
            out = self.step(i, x)
            score = self.score(out.pred_x0)
            if prev is not None and lo <= i <= hi and score - prev < cfg.threshold:
                found = self.explore(i, x, score)
                if found is not None:
                    x, out, score = found
            kept.append(score)
            prev = score
            x = out.prev_sample
        return x, kept


def ctrlz_sample(
    policy: Any,
    reward: Any,
    prompts: Sequence[str],
    config: CtrlZConfig | None = None,
    sample_cfg: SampleConfig | None = None,
    seed: int = 0,
    progress: bool = False,
    index_offset: int = 0,
) -> CtrlZOutput:
    """Ctrl-Z sampling of one image per prompt (start noise from :func:`item_generator`;
    prompt ``k`` is image ``index_offset + k`` of the seed).

    ``reward`` scores the predicted x̂0 during the search (differentiability not needed).
    ``sample_cfg`` gives steps, guidance and η / noise level (deterministic DDIM, η = 0, is
    the paper's setting).
    """
    from tqdm.auto import tqdm

    cfg = config or CtrlZConfig()
    s = sample_cfg or SampleConfig()
    _check(cfg, s)
    schedule = policy.schedule(s.num_steps, s.eta, s.noise_level)
    cols: dict[str, list] = {k: [] for k in ("lat", "nfe", "rc", "exp", "acc", "steps")}
    for k, prompt in enumerate(tqdm(list(prompts), desc="ctrl-z", disable=not progress)):
        g = item_generator(seed, index_offset + k)
        x = policy.initial_noise(1, g, s.height, s.width)
        search = _Searcher(policy, reward, prompt, schedule, s.guidance_scale, cfg, g)
        with NFECounter(policy) as counter:
            latent, kept = search.run(x)
        if counter.count != search.nfe:  # the searcher's own tally must match the denoiser's
            raise RuntimeError(f"ctrl-z: NFE tally {search.nfe} != counted {counter.count}")
        for key, v in zip(cols, (latent, search.nfe, search.reward_calls, search.explorations,
                                 search.accepted, kept)):  # fmt: skip
            cols[key].append(v)
    latents = torch.cat(cols["lat"])
    with torch.no_grad():
        images = policy.decode(latents).cpu()
        from diffusion_align.algorithms.base import score_images

        scores = score_images([reward], images.to(policy.device), list(prompts))[:, 0].cpu()
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return CtrlZOutput(images, latents.cpu(), scores, as_long(cols["nfe"]), as_long(cols["rc"]),
                       as_long(cols["exp"]), as_long(cols["acc"]), cols["steps"])  # fmt: skip


def _check(cfg: CtrlZConfig, s: SampleConfig) -> None:
    if cfg.retries < 1 or cfg.max_depth < 1:
        raise ValueError(
            f"ctrlz: retries and max_depth must be ≥ 1, got {cfg.retries}, {cfg.max_depth}"
        )
    if cfg.nfe_budget is not None and cfg.nfe_budget < s.num_steps:
        raise ValueError(
            f"ctrlz: nfe_budget {cfg.nfe_budget} is below sample.num_steps {s.num_steps} "
            "(plain sampling alone needs that many)"
        )
    if cfg.explore_steps is not None:
        lo, hi = cfg.explore_steps
        if not 1 <= lo <= hi < s.num_steps:
            raise ValueError(
                f"ctrlz: explore_steps {cfg.explore_steps} must lie in 1..{s.num_steps - 1}"
            )


# -- Ctrl-Z vs Best-of-N vs plain sampling at equal NFE ----------------------------------------


def compare_at_equal_nfe(
    policy: Any,
    search_reward: Any,
    eval_rewards: dict[str, Any],
    prompts: Sequence[str],
    sample_cfg: SampleConfig,
    factor: int = 4,
    ctrlz: CtrlZConfig | None = None,
    soft_lam: float = 10.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Plain sampling (``S`` and ``factor·S`` steps), Best-of-``factor``, Soft-BoN and Ctrl-Z
    (budget ``factor·S``) on the same prompts and start noise; every output scored with
    ``eval_rewards``. Returns per method: mean NFE, each reward's mean with 95% CI, images."""
    import dataclasses

    from diffusion_align.algorithms.base import score_images
    from diffusion_align.bon import BoNConfig, best_of_n_sample
    from diffusion_align.evaluate import mean_ci

    s, budget = sample_cfg, factor * sample_cfg.num_steps
    cz = dataclasses.replace(ctrlz or CtrlZConfig(), nfe_budget=budget)
    outs: dict[str, tuple[Tensor, Tensor]] = {}
    one = BoNConfig(n=1)
    plain = best_of_n_sample(policy, search_reward, prompts, one, s, seed=seed)
    outs[f"plain {s.num_steps} steps"] = (plain.images, plain.nfe)
    long = dataclasses.replace(s, num_steps=budget)
    plain_long = best_of_n_sample(policy, search_reward, prompts, one, long, seed=seed)
    outs[f"plain {budget} steps"] = (plain_long.images, plain_long.nfe)
    bon = best_of_n_sample(policy, search_reward, prompts, BoNConfig(n=factor), s, seed=seed)
    outs[f"best-of-{factor}"] = (bon.images, bon.nfe)
    soft = best_of_n_sample(policy, search_reward, prompts,
                            BoNConfig(n=factor, mode="soft", lam=soft_lam), s, seed=seed)  # fmt: skip
    outs[f"soft best-of-{factor} (λ={soft_lam:g})"] = (soft.images, soft.nfe)
    z = ctrlz_sample(policy, search_reward, prompts, cz, s, seed=seed, progress=True)
    outs[f"ctrl-z (budget {budget})"] = (z.images, z.nfe)
    results: dict[str, Any] = {}
    for name, (images, nfe) in outs.items():
        row: dict[str, Any] = {"nfe_mean": nfe.double().mean().item(), "nfe_max": int(nfe.max())}
        with torch.no_grad():
            for rname, r in eval_rewards.items():
                sc = score_images([r], images.to(policy.device), list(prompts))[:, 0].cpu()
                row[rname] = mean_ci(sc)
        row["images"] = images
        results[name] = row
    results[f"ctrl-z (budget {budget})"].update(
        explorations=z.explorations.double().mean().item(),
        accepted=z.accepted.double().mean().item(),
        reward_calls=z.reward_calls.double().mean().item(),
    )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m diffusion_align.ctrlz``: Ctrl-Z vs Best-of-N vs plain sampling on the world."""
    import argparse
    from pathlib import Path

    import mmreward
    from diffusion_align.cli import build_policy
    from diffusion_align.config import ModelConfig
    from diffusion_align.data import read_prompts
    from mmreward.report import Figure, Section, save_image_grid, write_gallery_html, write_json

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--out", default="runs/ctrlz_vs_bon")
    ap.add_argument("--model", default="world")
    ap.add_argument("--prompts", default="world:test")
    ap.add_argument("--samples", type=int, default=64, help="prompts (cycled) per method")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--factor", type=int, default=4, help="NFE budget = factor × steps")
    ap.add_argument("--search-reward", default="clip-head.world-proxy")
    ap.add_argument("--eval-rewards", default="gold=gold.world,proxy=clip-head.world-proxy")
    ap.add_argument("--threshold", type=float, default=0.0)
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--max-depth", type=int, default=3)
    ap.add_argument("--soft-lam", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    policy = build_policy(ModelConfig(pretrained=args.model))
    policy.raw_denoiser.eval()
    pool = read_prompts(args.prompts)
    prompts = [pool[i % len(pool)] for i in range(args.samples)]
    evals = dict(kv.split("=", 1) for kv in args.eval_rewards.split(","))
    eval_rewards = {k: mmreward.load(v) for k, v in evals.items()}
    cfg = SampleConfig(num_steps=args.steps, guidance_scale=args.guidance, eta=0.0)
    cz = CtrlZConfig(threshold=args.threshold, retries=args.retries, max_depth=args.max_depth)
    res = compare_at_equal_nfe(policy, mmreward.load(args.search_reward), eval_rewards, prompts,
                               cfg, args.factor, cz, args.soft_lam, args.seed)  # fmt: skip
    table, figures = [], []
    for i, (name, row) in enumerate(res.items()):
        path = save_image_grid(row.pop("images")[:32], out / f"method_{i}.png", nrow=8)
        figures.append(Figure(path, name))
        cells = {"method": name, "NFE / image": f"{row['nfe_mean']:.1f}"}
        for rname in eval_rewards:
            ci = row[rname]
            cells[rname] = f"{ci['mean']:.4f} ± {ci['ci_high'] - ci['mean']:.4f}"
        table.append(cells)
    summary = {"settings": vars(args), "search_reward": args.search_reward, "methods": res}
    write_json(out / "comparison.json", summary)
    text = (f"{args.samples} images per method (the same prompts and start noise); the search "
            f"reward is {args.search_reward}; means ± 95% CI half-widths.")  # fmt: skip
    write_gallery_html(out / "report.html", "Ctrl-Z vs Best-of-N vs plain sampling",
                       [Section("Equal NFE", text, figures=figures, table=table)])  # fmt: skip
    for cells in table:
        print("  ".join(f"{k}: {v}" for k, v in cells.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
