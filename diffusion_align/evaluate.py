"""Held-out evaluation of a policy: rewards with confidence intervals, and diversity.

:func:`evaluate_policy` samples ``n`` images for held-out prompts (cycled) with a fixed
seed — the same start noise for the same index, so a *before* and an *after* evaluation
are paired — and scores them with every reward given (e.g. the world's gold reward and
the proxy that was optimised). :func:`mean_ci` gives a normal-approximation 95% interval,
:func:`paired_difference` the interval of the after − before difference, and
:func:`diversity` the mean pairwise RMS pixel distance between samples of the same prompt
(a drop signals mode collapse, a usual companion of reward hacking).

>>> mean_ci(torch.tensor([1.0, 2.0, 3.0]))["mean"]
2.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diffusion_align.config import SampleConfig
from diffusion_align.sampling import sample

Z95 = 1.959963984540054


def mean_ci(x: Tensor) -> dict[str, float]:
    """Mean and normal-approximation 95% confidence interval of a sample."""
    x = x.double().flatten()
    n = x.numel()
    m = x.mean().item()
    se = x.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": m, "ci_low": m - Z95 * se, "ci_high": m + Z95 * se, "se": se, "n": n}


def paired_difference(before: Tensor, after: Tensor) -> dict[str, float]:
    """``after − before`` per item (same prompt and start noise): mean, 95% CI, z."""
    d = mean_ci(after.double() - before.double())
    d["z"] = d["mean"] / d["se"] if d["se"] and d["se"] > 0 else float("nan")
    d["significant"] = bool(d["ci_low"] > 0 or d["ci_high"] < 0)
    return d


def diversity(images: Tensor, prompts: Sequence[str]) -> float:
    """Mean pairwise RMS pixel distance between images of the same prompt."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    dists = []
    for idx in groups.values():
        if len(idx) < 2:
            continue
        flat = images[idx].flatten(1).double()
        d = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
        iu = torch.triu_indices(len(idx), len(idx), 1)
        dists.append(d[iu[0], iu[1]])
    return torch.cat(dists).mean().item() if dists else float("nan")


@torch.no_grad()
def generate(
    policy: Any,
    prompts: Sequence[str],
    sample_cfg: SampleConfig,
    seed: int = 0,
    batch_size: int = 32,
) -> Tensor:
    """Images ``(N,3,H,W)`` in [0,1] on CPU for ``prompts``; batch ``k`` uses seed ``(seed, k)``."""
    s = sample_cfg
    schedule = policy.schedule(s.num_steps, s.eta, s.noise_level)
    out = []
    for k, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = list(prompts[start : start + batch_size])
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        cond = policy.encode_prompt(chunk, guidance=s.guidance_scale != 1.0)
        x = policy.initial_noise(len(chunk), g, s.height, s.width)
        res = sample(
            policy, cond, schedule, guidance_scale=s.guidance_scale, latents=x, generator=g
        )
        out.append(policy.decode(res.latents).cpu())
    return torch.cat(out)


@dataclass
class EvalResult:
    """Per-sample scores (name → ``(N,)``), the prompts and images they belong to."""

    prompts: list[str]
    scores: dict[str, Tensor]
    images: Tensor
    diversity: float = float("nan")
    extras: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, s in self.scores.items():
            ci = mean_ci(s)
            out[f"{name}_mean"] = ci["mean"]
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = ci["ci_low"], ci["ci_high"]
        out["diversity"] = self.diversity
        out["n"] = float(len(self.prompts))
        return out


def evaluate_policy(
    policy: Any,
    prompts: Sequence[str],
    rewards: Mapping[str, Any],
    sample_cfg: SampleConfig,
    n_samples: int = 256,
    batch_size: int = 32,
    seed: int = 1234,
) -> EvalResult:
    """Sample ``n_samples`` images (prompts cycled) and score them with every reward.

    A reward with named sub-scores (e.g. the world's gold reward: digit, colour, …) also
    contributes ``"<name>/<sub-score>"`` columns, so a before/after comparison shows which
    part of the reward moved.
    """
    cycled = [prompts[i % len(prompts)] for i in range(n_samples)]
    images = generate(policy, cycled, sample_cfg, seed, batch_size)
    scores = score_images(images, cycled, rewards, batch_size)
    return EvalResult(cycled, scores, images, diversity(images, cycled))


def score_images(
    images: Tensor, prompts: Sequence[str], rewards: Mapping[str, Any], batch_size: int = 32
) -> dict[str, Tensor]:
    """Every reward's ``(N,)`` scores of ``images`` and its sub-scores (``"<name>/<sub>"``)."""
    from mmreward.interface import RewardInput

    scores: dict[str, Tensor] = {}
    for name, r in rewards.items():
        cols: dict[str, list[Tensor]] = {}
        for i in range(0, len(images), batch_size):
            batch = images[i : i + batch_size].to(r.device, r.dtype)
            with torch.no_grad():
                out = r(RewardInput(prompts=list(prompts[i : i + batch_size]), images=batch))
            cols.setdefault(name, []).append(out.scores.float().cpu())
            for sub, v in (out.sub_scores or {}).items():
                cols.setdefault(f"{name}/{sub}", []).append(v.float().cpu())
        scores.update({key: torch.cat(parts) for key, parts in cols.items()})
    return scores


@torch.no_grad()
def trajectory_kl(
    policy: Any,
    prompts: Sequence[str],
    sample_cfg: SampleConfig,
    n_samples: int = 64,
    batch_size: int = 32,
    seed: int = 4321,
    eta: float = 1.0,
) -> dict[str, float]:
    """KL(policy ‖ reference) of the sampling path measure, estimated on policy samples.

    Trajectories are sampled from the policy with a stochastic sampler (DDIM ``eta``, or
    the flow SDE at ``sample_cfg.noise_level``); at each step both models' Gaussian
    transitions share the std ``s``, so the step KL is ``‖μ_θ − μ_ref‖² / (2 s²)`` and the
    path KL is its sum over steps (chain rule), in nats per image (summed over latent
    dimensions). Needs a reference (LoRA adapters disabled, or a frozen copy).
    """
    s = sample_cfg
    schedule = policy.schedule(s.num_steps, eta, s.noise_level)
    if not schedule.stochastic:
        raise ValueError("trajectory_kl: needs eta > 0 (DDIM) or noise_level > 0 (flow)")
    cycled = [prompts[i % len(prompts)] for i in range(n_samples)]
    kls = []
    for k, start in enumerate(range(0, n_samples, batch_size)):
        chunk = cycled[start : start + batch_size]
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        cond = policy.encode_prompt(chunk, guidance=s.guidance_scale != 1.0)
        x = policy.initial_noise(len(chunk), g, s.height, s.width)
        total = torch.zeros(len(chunk), dtype=torch.float64)
        for i in range(schedule.num_steps):
            t = schedule.model_timestep(i)
            out = schedule.step(i, policy.predict(x, t, cond, s.guidance_scale), x, generator=g)
            ref_out = policy.predict(x, t, cond, s.guidance_scale, reference=True)
            ref = schedule.step(i, ref_out, x, prev_sample=out.prev_sample)
            d = ((out.mean - ref.mean) ** 2 / (2 * out.std**2)).flatten(1).sum(1)
            total += d.double().cpu()
            x = out.prev_sample
        kls.append(total)
    return mean_ci(torch.cat(kls))


def main(argv: Sequence[str] | None = None) -> int:
    """Score saved runs on held-out prompts: every reward's mean and each sub-score's.

    ``python -m diffusion_align.evaluate runs/x/raft/final runs/y/ddpo/final`` evaluates
    the base model (``--model``) and each LoRA directory with the same start noise, as the
    efficacy runner does, and prints one JSON line per model (``--json`` also writes them).
    ``--best-of K`` draws each item K times and also reports the means of the best draw per
    item by the first reward (``best_of_K/<column>``): what a best-of-K (RAFT) kept set
    looks like next to the samples it was chosen from; ``--eta`` sets the sampler's η.
    """
    import argparse
    import json
    import time

    from diffusion_align.algorithms.ddpo import repeat_prompts
    from diffusion_align.algorithms.raft import select_kept
    from diffusion_align.data import read_prompts
    from diffusion_align.policy import DiffusionPolicy
    from mmreward.registry import load

    parser = argparse.ArgumentParser(prog="python -m diffusion_align.evaluate")
    parser.add_argument("runs", nargs="*", help="LoRA directories (a run's final/)")
    parser.add_argument("--model", default="world", help="base pipeline (default: world)")
    parser.add_argument("--prompts", default="world:test")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--rewards", default="gold=gold.world",
                        help="comma-separated name=registry-entry pairs")  # fmt: skip
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM η (1: stochastic)")
    parser.add_argument("--best-of", type=int, default=1, metavar="K",
                        help="draw each item K times; also report the best draw's "
                        "means")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.best_of < 1:
        parser.error(f"--best-of: expected K ≥ 1, got {args.best_of}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rewards = {}
    for item in args.rewards.split(","):
        name, _, entry = item.partition("=")
        if not entry:
            parser.error(f"--rewards: expected name=entry, got {item!r}")
        rewards[name.strip()] = load(entry.strip())
    prompts = read_prompts(args.prompts)
    best_of = args.best_of
    cycled = [prompts[i % len(prompts)] for i in range(args.samples)]
    items = repeat_prompts(cycled, best_of)
    cfg = SampleConfig(num_steps=args.steps, guidance_scale=args.guidance, eta=args.eta)
    results = []
    for run in [None, *args.runs]:
        t0 = time.time()
        policy = DiffusionPolicy.from_pretrained(args.model, lora_weights=run)
        res = evaluate_policy(policy, items, rewards, cfg, len(items), seed=args.seed)
        row = {"model": run or args.model, "samples": args.samples, "prompts": args.prompts}
        row.update({k: round(v.double().mean().item(), 6) for k, v in res.scores.items()})
        if best_of > 1:
            best = select_kept(res.scores[next(iter(rewards))], best_of)
            row.update({f"best_of_{best_of}/{c}": round(v[best].double().mean().item(), 6)
                        for c, v in res.scores.items()})  # fmt: skip
        row["diversity"], row["seconds"] = res.diversity, round(time.time() - t0, 1)
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        from mmreward.report import write_json

        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
