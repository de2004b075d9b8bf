"""Train the conditional video diffusion model on the world's expert clips.

    python -m video.diffusion_reward.train --out runs/diffusion_reward

Expert clips (:func:`video.world.make_clips`, kind ``"expert"``) are cut into (history of
k frames, next frame) pairs; the model learns ε-prediction on the next frame (L_simple).
After training, per-domain statistics (μ, σ) of the per-frame rewards are measured on
separate expert clips — per task (``world/<motion>``) and over all tasks (``world``) — and
stored next to the weights. The folder then holds:

- ``model.safetensors`` + ``config.json`` — the diffusion model (strict loading);
- ``stats.json`` — ``{"world": {"mean", "std", "count"}, "world/draw": …, …}``;
- ``train.json`` — the run's options, final loss, timings; ``train_log.jsonl`` — the loss
  every ``--log-every`` steps; ``loss.png`` — the loss curve.

Seeds: training clips use seeds ``seed .. seed+clips−1`` on the ``train`` digit scans;
statistics clips use seeds from ``seed + 10_000`` on the ``val`` scans (held out).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmreward.report import plot_curves, write_json, write_jsonl
from video.diffusion_reward.entropy import BOUNDS, frame_rewards
from video.diffusion_reward.model import ConditionalFrameDiffusion, DiffusionRewardConfig
from video.diffusion_reward.reward import WORLD_DOMAIN
from video.diffusion_reward.standardize import STATS_FILE, RewardStats

STATS_SEED_OFFSET = 10_000  # statistics clips: seeds seed + 10_000 + i, "val" scans


def world_clips(
    n: int,
    kind: str,
    seed: int,
    frames: int = 16,
    size: int = 32,
    digits: str = "train",
    motion: str | None = None,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """``n`` world clips as ``(N,T,3,H,W)`` float in [0,1] and their metadata
    (``motion``: one of :data:`video.world.MOTIONS`, default drawn per clip)."""
    from video.world import make_clips

    x, metas = make_clips(n, kind, seed, frames=frames, size=size, digits=digits, motion=motion)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 1, 4, 2, 3).float() / 255.0, metas


def get_lr(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to lr/10 at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def pairs(clips: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(history ``(P,k,3,r,r)``, next frame ``(P,3,r,r)``) for every frame with k before it."""
    n, t = clips.shape[:2]
    if t <= k:
        raise ValueError(f"frames: expected more than k={k} frames per clip, got {t}")
    hist = clips.unfold(1, k, 1).permute(0, 1, 5, 2, 3, 4)[:, : t - k]  # windows ending at t−1
    nxt = clips[:, k:]
    return hist.reshape(-1, *hist.shape[2:]), nxt.reshape(-1, *nxt.shape[2:])


def train(
    model: ConditionalFrameDiffusion,
    clips: torch.Tensor,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup: int = 50,
    seed: int = 0,
    log_every: int = 25,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``model`` on ``clips`` ``(N,T,3,H,W)`` in [0,1]; returns the loss log.

    Each step draws ``batch_size`` (history, next frame) pairs uniformly (with a generator
    seeded by ``seed``) and takes one AdamW step on L_simple (grad-norm clipped at 1).
    """
    from tqdm.auto import tqdm

    x = model.to_model_space(clips)
    hist, nxt = pairs(x, model.config.history)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    log, running = [], []
    bar = tqdm(range(steps), desc="diffusion reward: train", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = get_lr(step, steps, lr, warmup)
        idx = torch.randint(0, hist.shape[0], (batch_size,), generator=gen)
        loss = model.loss(nxt[idx], hist[idx], generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step == steps - 1:
            mean = float(np.mean(running))
            log.append({"step": step + 1, "loss": mean, "lr": opt.param_groups[0]["lr"]})
            bar.set_postfix(loss=f"{mean:.4f}")
            running = []
    model.eval()
    return log


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m video.diffusion_reward.train", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--clips", type=int, default=384, help="expert training clips")
    p.add_argument("--stats-clips", type=int, default=48, help="expert clips for (μ, σ), all tasks")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--size", type=int, default=32, help="clip side in pixels")
    p.add_argument("--resolution", type=int, default=16, help="model frame side")
    p.add_argument("--history", type=int, default=2, help="k conditioning frames")
    p.add_argument("--channels", type=int, nargs="+", default=[32, 48, 48], help="UNet widths")
    p.add_argument(
        "--prediction",
        choices=["epsilon", "v", "sample"],
        default="epsilon",
        help="what the UNet predicts (v: v-prediction, sample: x0)",
    )
    p.add_argument(
        "--end-at-zero",
        action="store_true",
        help="strided sampler and bound end at step 0 (as the reference implementation)",
    )
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--save-dtype", choices=["float32", "float16"], default="float32", help="stored weights"
    )
    p.add_argument("--skip", type=int, default=19, help="statistics: denoising steps skipped")
    p.add_argument("--noise", choices=["on", "off"], default="on", help="statistics: sampling")
    p.add_argument("--num-samples", type=int, default=1, help="statistics: samples per reward")
    p.add_argument(
        "--bound",
        choices=list(BOUNDS),
        default="renoise",
        help="statistics: bound at fresh noisings of each sample or along the sampler's chain",
    )
    p.add_argument(
        "--stats-only",
        action="store_true",
        help="re-measure stats.json of the model already in --out (e.g. for other --skip/--noise)",
    )
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    if args.stats_only:
        return _stats_only(args)
    out.mkdir(parents=True, exist_ok=True)
    cfg = DiffusionRewardConfig(
        resolution=args.resolution,
        history=args.history,
        channels=tuple(args.channels),
        prediction=args.prediction,
        end_at_zero=args.end_at_zero,
    )
    model = ConditionalFrameDiffusion(cfg)
    clips, _ = world_clips(args.clips, "expert", args.seed, args.frames, args.size)

    t0 = time.perf_counter()
    log = train(
        model, clips, args.steps, args.batch_size, args.lr, args.warmup, args.seed, args.log_every
    )
    train_s = time.perf_counter() - t0
    model.save(out, dtype=getattr(torch, args.save_dtype))
    if args.save_dtype != "float32":  # measure the statistics with the weights as stored
        model = ConditionalFrameDiffusion.load(out)
    write_jsonl(out / "train_log.jsonl", log)
    plot_curves(
        {"L_simple": ([r["step"] for r in log], [r["loss"] for r in log])},
        out / "loss.png",
        xlabel="step",
        ylabel="ε-MSE",
        title="conditional frame diffusion on world expert clips",
    )

    t0 = time.perf_counter()
    stats, options = _write_stats(model, args)
    stats_s = time.perf_counter() - t0

    summary = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "config": cfg.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "first_loss": log[0]["loss"],
        "final_loss": log[-1]["loss"],
        "train_seconds": round(train_s, 1),
        "stats_seconds": round(stats_s, 1),
        "stats": stats.to_dict(),
        "stats_options": options,
    }
    write_json(out / "train.json", summary)
    print(json.dumps({k: summary[k] for k in ("final_loss", "train_seconds", "stats")}, indent=2))
    return summary


def task_domain(motion: str) -> str:
    """The statistics key of one world task (a motion): ``"world/<motion>"``."""
    return f"{WORLD_DOMAIN}/{motion}"


def _write_stats(model: ConditionalFrameDiffusion, args: argparse.Namespace):
    """``world`` over all expert statistics clips, and ``world/<motion>`` per task (motion),
    as the paper standardises per task."""
    from video.world import MOTIONS

    options = {
        "skip": args.skip,
        "noise": args.noise == "on",
        "seed": 0,
        "num_samples": args.num_samples,
        "bound": args.bound,
    }
    stats = RewardStats()
    per_task = max(2, args.stats_clips // len(MOTIONS))
    everything = []
    for i, motion in enumerate(MOTIONS):
        seed = args.seed + STATS_SEED_OFFSET + i * per_task
        clips, _ = world_clips(per_task, "expert", seed, args.frames, args.size, "val", motion)
        gen = torch.Generator().manual_seed(args.seed + i)
        rewards = frame_rewards(model, clips, generator=gen, **options)
        stats.set(task_domain(motion), rewards)
        everything.append(rewards.flatten())
    stats.set(WORLD_DOMAIN, torch.cat(everything))
    stats.save(args.out / STATS_FILE)
    return stats, options


def _stats_only(args: argparse.Namespace) -> dict[str, Any]:
    model = ConditionalFrameDiffusion.load(args.out)
    stats, options = _write_stats(model, args)
    summary_path = args.out / "train.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary.update(stats=stats.to_dict(), stats_options=options)
    write_json(summary_path, summary)
    print(json.dumps({"stats": stats.to_dict(), "stats_options": options}, indent=2))
    return summary


if __name__ == "__main__":
    main()
