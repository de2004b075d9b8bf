"""Video commands and the video options of ``mmreward score``.

    mmreward score --reward video-frames.gold-world --input videos/manifest.jsonl \\
        --out scores.jsonl --num-frames 8 --sampler segment-centre
    mmreward video world --out runs/world_videos --n 32          # expert + nonexpert MP4s
    mmreward video eval --reward video-frames.gold-world --pairs pairs.jsonl --out runs/eval

``add_score_arguments`` adds the sampler options to the ``score`` parser and
``loader_from_args`` builds the loader from them; ``add_parser`` registers ``video``.
Also runs alone: ``python -m video.cli world --out …``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from video.samplers import SAMPLERS


def add_score_arguments(p: argparse.ArgumentParser) -> None:
    """Sampler options of ``mmreward score`` (``--num-frames``/``--fps`` live in the core CLI)."""
    g = p.add_argument_group("video sampling")
    g.add_argument("--sampler", choices=SAMPLERS, default="uniform",
                   help="video: where the sampled frames sit (default uniform)")  # fmt: skip
    g.add_argument("--stride", type=int, default=1, help="video: frame step of --sampler strided")
    g.add_argument("--frame-size", type=int, default=None,
                   help="video: resize frames to this side (lets videos of any size batch)")  # fmt: skip
    g.add_argument("--video-backend", choices=("auto", "decord", "pyav"), default="auto",
                   help="video: decoder (auto: decord, PyAV when decord fails)")  # fmt: skip
    g.add_argument("--sampler-seed", type=int, default=None,
                   help="video: seed of --sampler segment (random TSN frames)")  # fmt: skip


def loader_from_args(args: argparse.Namespace):
    """The ``path → VideoClip`` loader the parsed ``score`` options describe."""
    from video.io import make_loader

    return make_loader(
        num_frames=getattr(args, "num_frames", None),
        fps=getattr(args, "fps", None),
        sampler=getattr(args, "sampler", "uniform"),
        stride=getattr(args, "stride", 1),
        size=getattr(args, "frame_size", None),
        backend=getattr(args, "video_backend", "auto"),
        seed=getattr(args, "sampler_seed", None),
    )


# -- mmreward video world ----------------------------------------------------------------
def cmd_world(args: argparse.Namespace) -> int:
    from video.world import write_world_videos

    manifest = write_world_videos(
        args.out,
        n_per_kind=args.n,
        seed=args.seed,
        frames=args.frames,
        size=args.size,
        fps=args.fps,
        progress=not args.no_progress,
    )
    print(f"wrote {2 * args.n} clips and {manifest}")
    return 0


# -- mmreward video eval -----------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    import mmreward
    from video.evaluate import evaluate_pairs, format_table

    reward = mmreward.load(args.reward, device=args.device)
    result = evaluate_pairs(
        reward,
        args.pairs,
        num_frames=args.num_frames,
        fps=args.fps,
        sampler=args.sampler,
        size=args.frame_size,
        batch_size=args.batch_size,
        out=args.out,
        progress=not args.no_progress,
    )
    print(format_table(result))
    if result["n_skipped"]:
        print(f"skipped {result['n_skipped']} pairs with unreadable videos (see errors)")
    if args.out is None:
        print(json.dumps(result["dimensions"], indent=2))
    else:
        print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``video`` (with ``world`` and ``eval``) on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("video", help="world videos and video-pair evaluation")
    sub = p.add_subparsers(dest="video_command", required=True)

    w = sub.add_parser("world", help="write expert/nonexpert world clips as MP4 + manifest.jsonl")
    w.add_argument("--out", required=True, help="output folder")
    w.add_argument("--n", type=int, default=16, help="clips per kind")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--frames", type=int, default=16)
    w.add_argument("--size", type=int, default=32, help="canvas side in pixels (even)")
    w.add_argument("--fps", type=float, default=8.0)
    w.add_argument("--no-progress", action="store_true")
    w.set_defaults(func=cmd_world)

    e = sub.add_parser("eval", help="accuracy w/o and with ties on a VideoGen-RewardBench file")
    e.add_argument("--reward", required=True, help="registry name or saved model directory")
    e.add_argument("--pairs", required=True, help="JSONL/CSV with prompt, path_A, path_B, labels")
    e.add_argument("--out", default=None, help="folder for metrics.json, scores.jsonl, PNG")
    e.add_argument("--device", default=None)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--num-frames", type=int, default=None, help="frames to sample per video")
    e.add_argument("--fps", type=float, default=None, help="target sampling fps")
    e.add_argument("--sampler", choices=SAMPLERS, default="uniform")
    e.add_argument("--frame-size", type=int, default=None, help="resize frames to this side")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmreward")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["video", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"mmreward video: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
