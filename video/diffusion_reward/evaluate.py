"""Expert vs non-expert separation of Diffusion Reward on held-out world clips.

    python -m video.diffusion_reward.evaluate --out runs/diffusion_reward_eval

Scores ``--clips`` expert and ``--clips`` non-expert clips (the same prompts done well and
badly; seeds from ``--seed``, the ``test`` digit scans, so nothing was seen in training)
and reports the ROC AUC of "expert" by the mean per-frame reward, overall and per motion /
non-expert style, with the rewards standardised by the world's overall (μ, σ) (the same
ranking as the raw rewards) and by each clip's task (motion) statistics, as the paper does
per task. Writes ``eval.json`` (figures, options, per-clip scores), ``scores.png``
(score histograms per kind), ``frames.png`` (mean reward per frame index) and
``examples.png`` (a few clips with their per-frame rewards).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmreward import metrics
from mmreward.report import plot_curves, plot_score_histograms, write_json
from video.diffusion_reward.entropy import BOUNDS
from video.diffusion_reward.reward import load_diffusion_reward
from video.diffusion_reward.train import task_domain, world_clips

EVAL_SEED = 20_000  # held out from training (seeds 0..) and statistics (10_000..)


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(score of a positive > score of a negative), ties counting ½ (Mann–Whitney U)."""
    y = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return metrics.roc_auc(y, np.r_[positive, negative])


def _examples_figure(videos: torch.Tensor, rewards: torch.Tensor, labels: list[str], path: Path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n, t = rewards.shape
    fig = Figure(figsize=(0.8 * t, 1.0 * n), dpi=100)
    FigureCanvasAgg(fig)
    for i in range(n):
        for j in range(t):
            ax = fig.add_subplot(n, t, i * t + j + 1)
            ax.imshow(videos[i, j].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{rewards[i, j]:.2f}", fontsize=6)
            if j == 0:
                ax.set_ylabel(labels[i], fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def evaluate(
    model_dir: Path | None,
    clips: int = 100,
    frames: int = 16,
    size: int = 32,
    seed: int = EVAL_SEED,
    **options: Any,
) -> dict[str, Any]:
    """Score held-out expert and non-expert clips; returns the figures and per-clip rows."""
    rm = load_diffusion_reward(model_dir, **options)
    rows, scores, task_scores, per_frame = [], {}, {}, {}
    t0 = time.perf_counter()
    videos = {}
    for kind in ("expert", "nonexpert"):
        v, metas = world_clips(clips, kind, seed, frames, size, digits="test")
        out = rm.score(videos=v, batch_size=max(1, rm.batch_size // frames), progress=True)
        scores[kind] = out.scores.tolist()
        # the paper's per-task standardisation: each clip with its motion's (μ, σ)
        raw = out.extras["entropy_rewards"]
        task_scores[kind] = [
            rm.stats.standardize(raw[i], task_domain(m["motion"])).mean().item()
            for i, m in enumerate(metas)
        ]
        per_frame[kind] = out.extras["frame_rewards"]
        videos[kind] = v
        for i, m in enumerate(metas):
            rows.append(
                {
                    "kind": kind,
                    "seed": seed + i,
                    "motion": m["motion"],
                    "style": m["style"],
                    "score": scores[kind][i],
                    "task_score": task_scores[kind][i],
                }
            )
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {
        "auc": roc_auc(scores["expert"], scores["nonexpert"]),
        "auc_task_standardised": roc_auc(task_scores["expert"], task_scores["nonexpert"]),
        "clips_per_kind": clips,
        "frames": frames,
        "seconds": round(seconds, 1),
        "frames_per_second": round(2 * clips * frames / seconds, 1),
        "mean_score": {k: float(np.mean(v)) for k, v in scores.items()},
        "options": {
            k: rm.init_kwargs[k] for k in ("skip", "num_samples", "noise", "seed", "bound")
        },
        "stats": rm.init_kwargs["stats"],
    }
    # separation per non-expert style, against all experts
    styles = sorted({r["style"] for r in rows if r["kind"] == "nonexpert"})
    for key, name in (("score", "auc_by_style"), ("task_score", "auc_task_by_style")):
        result[name] = {
            s: roc_auc(
                [r[key] for r in rows if r["kind"] == "expert"],
                [r[key] for r in rows if r["kind"] == "nonexpert" and r["style"] == s],
            )
            for s in styles
        }
    # separation per motion (expert vs non-expert of the same motion)
    result["auc_by_motion"] = {}
    for m in sorted({r["motion"] for r in rows}):
        pos = [r["score"] for r in rows if r["kind"] == "expert" and r["motion"] == m]
        neg = [r["score"] for r in rows if r["kind"] == "nonexpert" and r["motion"] == m]
        if pos and neg:
            result["auc_by_motion"][m] = roc_auc(pos, neg)
    result["rows"] = rows
    result["_per_frame"] = per_frame
    result["_videos"] = videos
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m video.diffusion_reward.evaluate", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--model", type=Path, default=None, help="trained folder (default: world)")
    p.add_argument("--clips", type=int, default=100, help="clips per kind")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--skip", type=int, default=19, help="denoising steps skipped")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--noise", choices=["on", "off"], default="on")
    p.add_argument(
        "--bound",
        choices=list(BOUNDS),
        default="renoise",
        help="bound at fresh noisings of each sample or along the sampler's chain",
    )
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    res = evaluate(
        args.model,
        args.clips,
        args.frames,
        args.size,
        args.seed,
        skip=args.skip,
        num_samples=args.num_samples,
        noise=args.noise == "on",
        bound=args.bound,
    )
    out: Path = args.out
    per_frame, videos = res.pop("_per_frame"), res.pop("_videos")
    res["command"] = "python -m video.diffusion_reward.evaluate " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    write_json(out / "eval.json", res)
    hist = {
        f"{k} (AUC {res['auc']:.3f})" if k == "expert" else k: v
        for k, v in ((k, [r["score"] for r in res["rows"] if r["kind"] == k]) for k in per_frame)
    }
    plot_score_histograms(hist, out / "scores.png", ncols=2)
    t = per_frame["expert"].shape[1]
    plot_curves(
        {k: (list(range(t)), v.mean(0).tolist()) for k, v in per_frame.items()},
        out / "frames.png",
        xlabel="frame",
        ylabel="mean reward",
        title="Diffusion Reward per frame (held-out world clips)",
    )
    show = 3
    ex_videos = torch.cat([videos["expert"][:show], videos["nonexpert"][:show]])
    ex_rewards = torch.cat([per_frame["expert"][:show], per_frame["nonexpert"][:show]])
    labels = [f"{r['kind']}/{r['style']}" for r in res["rows"][:show]]
    labels += [f"{r['kind']}/{r['style']}" for r in res["rows"] if r["kind"] == "nonexpert"][:show]
    _examples_figure(ex_videos, ex_rewards, labels, out / "examples.png")
    keys = ("auc", "auc_task_standardised", "auc_by_style", "auc_task_by_style", "auc_by_motion")
    summary = {k: res[k] for k in (*keys, "mean_score", "seconds")}
    print(json.dumps(summary, indent=2))
    return res


if __name__ == "__main__":
    main()
