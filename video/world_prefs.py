"""Simulated multi-dimensional video preferences in the built-in world.

Each pair shows two world clips (:mod:`video.world`) made for one prompt. Every clip has a
known gold score in [0,1] on each VideoAlign dimension:

- **VQ** (visual quality): a clip is degraded with Gaussian blur (σ) and/or pixel noise
  (std n) or left clean; ``VQ = 1 − ½·σ/σ_max − ½·n/n_max``.
- **MQ** (motion quality): from the clip's trajectory (digit centre or pen per frame), the
  mean length of its second difference ("jerk", pixels/frame²);
  ``MQ = exp(−jerk / MQ_SCALE)``: expert slides score ≈ 0.9, jumps and jitter ≈ 0.1.
- **TA** (text alignment): with probability ``p_mismatch`` the clip shows a different digit
  and/or colour than the prompt names; ``TA`` = weighted share of the prompt's attributes
  the clip shows (digit 0.5, colour 0.3, background 0.1, size 0.1).
- **Overall** = mean of the three.

Simulated annotators (:class:`mmreward.world.annotators.Annotator`: Bradley-Terry noise on
the gold difference, a tie band, careless answers) turn each dimension's gold difference
into A / B / same, and the pairs are written in the VideoGen-RewardBench layout: one JSONL
row per pair with ``prompt``, ``path_A``, ``path_B`` (MP4 files written with PyAV) and the
labels ``VQ``, ``MQ``, ``TA``, ``Overall`` ∈ {"A", "B", "same"} (plus the gold scores).

>>> pairs = make_world_pairs(4, seed=0, frames=4)
>>> sorted(pairs.labels), pairs.videos_a.shape
(['MQ', 'Overall', 'TA', 'VQ'], torch.Size([4, 4, 3, 32, 32]))
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmreward.report import write_json, write_jsonl
from mmreward.world.annotators import Annotator
from mmreward.world.data import COLOURS, Attributes

BLUR_MAX = 1.5  # largest Gaussian blur σ (pixels)
NOISE_MAX = 0.12  # largest pixel-noise std (on [0,1] pixels)
P_DEGRADE = 0.5  # share of clips degraded
MQ_SCALE = 8.0  # jerk (pixels/frame²) at which MQ = 1/e
P_MISMATCH = 0.35  # share of clips showing a wrong digit and/or colour
TA_WEIGHTS = {"digit": 0.5, "colour": 0.3, "background": 0.1, "size": 0.1}
DIMENSIONS = ("VQ", "MQ", "TA", "Overall")
# annotators: BT temperature and tie band on the [0,1] gold scale, careless-answer rate
TEMPERATURE = 0.05
TIE_BAND = 0.04
LABEL_NOISE = 0.05
_CHOICE = {0: "A", 1: "B", "tie": "same"}


# ------------------------------------------------------------------------------ golds
def degrade(frames: np.ndarray, blur: float, noise: float, seed: int) -> np.ndarray:
    """Blur every frame with a Gaussian of σ = ``blur`` px and add N(0, ``noise``²) pixel noise."""
    x = torch.from_numpy(frames).float().div(255.0).permute(0, 3, 1, 2)  # (T,3,H,W)
    if blur > 0:
        radius = max(1, math.ceil(3 * blur))
        k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1).float() / blur) ** 2)
        k = (k / k.sum()).to(x.dtype)
        c = x.shape[1]
        x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    if noise > 0:
        gen = torch.Generator().manual_seed(seed)
        x = x + noise * torch.randn(x.shape, generator=gen)
    out = (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1)
    return out.numpy()


def gold_vq(blur: float, noise: float) -> float:
    return float(1.0 - 0.5 * blur / BLUR_MAX - 0.5 * noise / NOISE_MAX)


def gold_mq(trajectory: Sequence[Sequence[float]]) -> float:
    """``exp(−mean ‖Δ²p_t‖ / MQ_SCALE)`` of a ``(T,2)`` trajectory (T ≥ 3; else 1)."""
    p = np.asarray(trajectory, dtype=np.float64)
    if p.shape[0] < 3:
        return 1.0
    jerk = float(np.linalg.norm(np.diff(p, n=2, axis=0), axis=1).mean())
    return float(math.exp(-jerk / MQ_SCALE))


def gold_ta(asked: Attributes, shown: Attributes) -> float:
    return float(sum(w for a, w in TA_WEIGHTS.items() if getattr(asked, a) == getattr(shown, a)))


# ------------------------------------------------------------------------------ clips
@dataclass
class WorldVideo:
    """One clip: uint8 frames ``(T,H,W,3)``, what it shows, its gold per dimension."""

    frames: np.ndarray
    shown: Attributes
    gold: dict[str, float]
    info: dict[str, Any]


def _mismatch(attrs: Attributes, rng: np.random.Generator) -> Attributes:
    what = ("digit", "colour", "both")[int(rng.integers(3))]
    digit, colour = attrs.digit, attrs.colour
    if what in ("digit", "both"):
        digit = int((attrs.digit + rng.integers(1, 10)) % 10)
    if what in ("colour", "both"):
        others = [c for c in COLOURS if c != attrs.colour]
        colour = others[int(rng.integers(len(others)))]
    return Attributes(digit, colour, attrs.background, attrs.size)


def make_video(
    asked: Attributes,
    motion: str,
    clip_seed: int,
    rng: np.random.Generator,
    frames: int = 8,
    size: int = 32,
    digits: str = "train",
    p_degrade: float = P_DEGRADE,
    p_mismatch: float = P_MISMATCH,
) -> WorldVideo:
    """A clip for the prompt of ``asked`` + ``motion``: expert or not, maybe degraded, maybe
    showing other attributes; its gold VQ/MQ/TA/Overall."""
    from video.world import make_clip

    kind = "expert" if rng.random() < 0.5 else "nonexpert"
    shown = _mismatch(asked, rng) if rng.random() < p_mismatch else asked
    clip, meta = make_clip(
        kind, clip_seed, frames=frames, size=size, attributes=shown, motion=motion, digits=digits
    )
    blur = noise = 0.0
    if rng.random() < p_degrade:
        blur = float(rng.uniform(0.0, BLUR_MAX)) if rng.random() < 0.7 else 0.0
        noise = float(rng.uniform(0.0, NOISE_MAX)) if (blur == 0.0 or rng.random() < 0.5) else 0.0
        clip = degrade(clip, blur, noise, seed=int(rng.integers(2**31)))
    gold = {
        "VQ": gold_vq(blur, noise),
        "MQ": gold_mq(meta["trajectory"]),
        "TA": gold_ta(asked, shown),
    }
    gold["Overall"] = float(np.mean([gold["VQ"], gold["MQ"], gold["TA"]]))
    info = {"kind": kind, "style": meta["style"], "blur": blur, "noise": noise, "fps": meta["fps"]}
    return WorldVideo(clip, shown, gold, info)


def _prompt_and_motion(seed: int, size: int = 32) -> tuple[Attributes, str, str]:
    from video.world import make_clip

    _, meta = make_clip("expert", seed, frames=2, size=size)
    attrs = {k: v for k, v in meta["attributes"].items() if k != "motion"}
    return Attributes(**attrs), meta["motion"], meta["prompt"]


def annotators(seed: int = 0) -> dict[str, Annotator]:
    """One simulated annotator per dimension (independent random streams)."""
    return {
        d: Annotator(TEMPERATURE, TIE_BAND, LABEL_NOISE, seed=seed * 10 + i)
        for i, d in enumerate(DIMENSIONS)
    }


def simulate_pairs(
    n_pairs: int, seed: int = 0, frames: int = 8, size: int = 32, digits: str = "train"
) -> list[dict[str, Any]]:
    """``n_pairs`` pairs ``{"prompt", "A": WorldVideo, "B": WorldVideo, labels...}``, seeded."""
    rng = np.random.default_rng([seed, 7])
    raters = annotators(seed)
    rows = []
    for i in range(n_pairs):
        prompt_seed = seed * 100_003 + i
        asked, motion, prompt = _prompt_and_motion(prompt_seed, size)
        a = make_video(asked, motion, prompt_seed, rng, frames, size, digits)
        b = make_video(asked, motion, prompt_seed, rng, frames, size, digits)
        labels = {d: _CHOICE[raters[d].label(a.gold[d], b.gold[d])] for d in DIMENSIONS}
        rows.append({"prompt": prompt, "A": a, "B": b, **labels})
    return rows


def _to_tensor(frames: np.ndarray) -> Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255.0)


def rows_to_pairs(rows: Sequence[dict[str, Any]]):
    """The simulated rows as in-memory :class:`video.videoalign.VideoPairs` (labels 1/−1/0)."""
    from video.videoalign import LABELS, VideoPairs

    return VideoPairs(
        videos_a=torch.stack([_to_tensor(r["A"].frames) for r in rows]),
        videos_b=torch.stack([_to_tensor(r["B"].frames) for r in rows]),
        prompts=[r["prompt"] for r in rows],
        labels={d: torch.tensor([LABELS[r[d]] for r in rows]) for d in DIMENSIONS},
    )


def make_world_pairs(n_pairs: int, seed: int = 0, frames: int = 8, digits: str = "train"):
    """:func:`simulate_pairs` straight to in-memory ``VideoPairs``."""
    return rows_to_pairs(simulate_pairs(n_pairs, seed, frames, digits=digits))


def write_pairs(rows: Sequence[dict[str, Any]], out_dir: str | Path, name: str) -> Path:
    """MP4s under ``out_dir/videos/`` and ``out_dir/<name>.jsonl`` (VideoGen-RewardBench rows;
    paths relative to the JSONL's folder)."""
    from video.world import write_mp4

    out_dir = Path(out_dir)
    lines = []
    for i, r in enumerate(rows):
        paths = {}
        for side in ("A", "B"):
            rel = Path("videos") / f"{name}_{i:05d}_{side}.mp4"
            write_mp4(out_dir / rel, r[side].frames, fps=r[side].info["fps"])
            paths[side] = rel.as_posix()
        lines.append(
            {
                "prompt": r["prompt"],
                "path_A": paths["A"],
                "path_B": paths["B"],
                **{d: r[d] for d in DIMENSIONS},
                "gold_A": r["A"].gold,
                "gold_B": r["B"].gold,
                "info_A": r["A"].info,
                "info_B": r["B"].info,
            }
        )
    return write_jsonl(out_dir / f"{name}.jsonl", lines)


def label_stats(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per dimension: tie rate and how often a non-tie label agrees with the gold order."""
    out = {}
    for d in DIMENSIONS:
        ties = [r[d] == "same" for r in rows]
        agree = [
            (r[d] == "A") == (r["A"].gold[d] > r["B"].gold[d])
            for r in rows
            if r[d] != "same" and r["A"].gold[d] != r["B"].gold[d]
        ]
        out[d] = {
            "tie_rate": float(np.mean(ties)),
            "label_accuracy_vs_gold": float(np.mean(agree)) if agree else float("nan"),
        }
    return out


# ------------------------------------------------------------------------- experiment
def run_experiment(args: argparse.Namespace) -> dict[str, Any]:
    """Train the VideoAlign RM on world pairs and report held-out accuracies (JSON + PNG)."""
    from video.videoalign import (
        REWARD_TOKENS,
        TrainSettings,
        VideoAlignReward,
        evaluate_pairs,
        pair_raw_scores,
        train_videoalign,
    )
    from vision_rm.vlm.tiny import build_tiny_qwen2vl

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_rows = simulate_pairs(args.n_train, seed=args.seed, frames=args.frames, digits="train")
    test_rows = simulate_pairs(args.n_test, seed=args.seed + 1, frames=args.frames, digits="test")
    write_pairs(train_rows, out, "train")
    test_jsonl = write_pairs(test_rows, out, "test")
    train, test = rows_to_pairs(train_rows), rows_to_pairs(test_rows)
    vlm, processor = build_tiny_qwen2vl(seed=args.seed, extra_special_tokens=REWARD_TOKENS)
    rm = VideoAlignReward(vlm, processor)
    before = evaluate_pairs(rm, test)
    log_path = out / "train_log.jsonl"
    history = train_videoalign(
        rm,
        train,
        TrainSettings(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            head_lr=args.head_lr,
            seed=args.seed,
            eval_every=100,
        ),
        eval_pairs=test,
    )
    write_jsonl(log_path, history)
    after = evaluate_pairs(rm, test)
    ra, _ = pair_raw_scores(rm, train)
    rm.set_zscore(ra.mean(0), ra.std(0).clamp_min(1e-6))
    rm.save_pretrained(out / "model")
    result: dict[str, Any] = {
        "command": "python -m video.videoalign " + " ".join(_argv(args)),
        "n_train_pairs": len(train_rows),
        "n_test_pairs": len(test_rows),
        "frames": args.frames,
        "label_stats_test": label_stats(test_rows),
        "before_training": before,
        "after_training": after,
        "zscore": {"mean": rm.zscore_mean.tolist(), "std": rm.zscore_std.tolist()},
        "seconds": round(time.time() - t0, 1),
        "test_pairs": str(test_jsonl),
    }
    result["evaluate_mp4"] = _evaluate_file(rm, test_jsonl, args.frames, out / "evaluate")
    write_json(out / "videoalign_world.json", result)
    _plot(result, history, out / "videoalign_world.png")
    print(json.dumps({"after_training": after}, indent=1))
    return result


def _argv(args: argparse.Namespace) -> list[str]:
    return [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "func"]


def _evaluate_file(rm: Any, jsonl: Path, frames: int, out: Path | None = None) -> dict[str, Any]:
    """Score the written pairs from their MP4 files through :func:`video.evaluate.evaluate_pairs`
    (decoded with ``video.io``; uniform ``frames`` per clip; z-scored sub-scores)."""
    from video.evaluate import evaluate_pairs

    result = evaluate_pairs(rm, jsonl, num_frames=frames, out=out)
    return {"dimensions": result["dimensions"], "n_pairs": result["n_pairs"]}


def load_saved(model_dir: str | Path):
    """A model written by ``save_pretrained`` (strict), without needing the registry entry."""
    from mmreward.checkpoint import (
        WEIGHTS_NAME,
        load_state_dict_strict,
        read_model_dir,
        read_state_dict,
    )
    from video.videoalign import build_videoalign

    model_dir = Path(model_dir)
    rm = build_videoalign(saved_dir=model_dir, **read_model_dir(model_dir)["kwargs"])
    load_state_dict_strict(rm, read_state_dict(model_dir / WEIGHTS_NAME), source=str(model_dir))
    return rm.eval()


def _plot(result: dict[str, Any], history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [h["step"] for h in history]
    loss = np.asarray([h["loss"] for h in history])
    w = max(1, len(loss) // 30)
    smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
    ax0.plot(steps[w - 1 :], smooth)
    ax0.set(xlabel="step", ylabel="BT-with-ties loss (smoothed)", title="training")
    dims = list(result["after_training"])
    x = np.arange(len(dims))
    for k, (key, label) in enumerate(
        (("accuracy_without_ties", "w/o ties"), ("tie_aware_accuracy", "with ties"))
    ):
        before = [result["before_training"][d][key] for d in dims]
        after = [result["after_training"][d][key] for d in dims]
        ax1.bar(x + (k - 0.5) * 0.4, after, 0.38, label=f"{label} (trained)")
        ax1.scatter(x + (k - 0.5) * 0.4, before, color="k", marker="_", s=200, zorder=3)
    ax1.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax1.set_xticks(x, dims)
    ax1.set(ylim=(0, 1), ylabel="held-out accuracy", title="held-out pairs (— = untrained)")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m video.world_prefs --out DIR`` (train + evaluate, as ``video.videoalign``), or
    ``--evaluate MODEL_DIR --pairs test.jsonl``: score a saved model on a pair file."""
    from video.videoalign import _arguments

    p = argparse.ArgumentParser(
        prog="python -m video.world_prefs", description=__doc__.split("\n")[0]
    )
    _arguments(p)
    p.add_argument("--evaluate", help="a saved model folder: only evaluate it on --pairs")
    p.add_argument("--pairs", help="the VideoGen-RewardBench-format JSONL for --evaluate")
    args = p.parse_args(argv)
    if args.evaluate:
        if not args.pairs:
            p.error("--evaluate needs --pairs")
        torch.set_num_threads(args.threads)
        rm = load_saved(args.evaluate)
        result = _evaluate_file(rm, Path(args.pairs), args.frames, Path(args.out))
        write_json(Path(args.out) / "evaluate_mp4.json", result)
        print(json.dumps(result, indent=1))
        return result
    return run_experiment(args)


if __name__ == "__main__":
    main()
