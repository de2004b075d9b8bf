"""Batched vs one-at-a-time scoring of a small image reward model on CPU.

Scores N random 3×64×64 images (seeded) with ``rm.score(images, batch_size=B)`` and with
``rm.score(images[i:i+1])`` in a Python loop, for ``mmreward.load("convnet.tiny")`` and a
bigger ``TinyConvReward(resolution=64, channels=(32, 64, 128), hidden=128)``. Each timing is
the median of ``--repeats`` runs after one warm-up run; torch's default thread count is kept.

The target (batched at least 3× faster than one at a time, at batch 32) is printed next to
the measured ratio; missing it is not an error. The script exits non-zero only if something
raises (e.g. batched and one-at-a-time scores disagree).

    python benchmarks/bench_batched_scoring.py --n 256 --batch-size 32 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
from _common import median_seconds, print_ratio_table, write_results_json

import mmreward
from mmreward.convnet import TinyConvReward

TARGET_RATIO = 3.0  # batched should be ≥ 3× faster than one at a time (at batch 32)


def bench_model(
    label: str, rm: mmreward.RewardModel, images: torch.Tensor, batch_size: int, repeats: int
) -> dict:
    n = images.shape[0]

    def batched() -> torch.Tensor:
        return rm.score(images, batch_size=batch_size).scores

    def one_at_a_time() -> torch.Tensor:
        return torch.cat([rm.score(images[i : i + 1]).scores for i in range(n)])

    # correctness first: the two paths must give the same scores
    torch.testing.assert_close(batched(), one_at_a_time(), rtol=1e-4, atol=1e-5)
    t_batched, all_batched = median_seconds(batched, repeats)
    t_single, all_single = median_seconds(one_at_a_time, repeats)
    n_params = sum(p.numel() for p in rm.parameters())
    return {
        "model": label,
        "params": n_params,
        "n": n,
        "batch_size": batch_size,
        "batched_s": t_batched,
        "one_at_a_time_s": t_single,
        "batched_items_per_s": n / t_batched,
        "one_at_a_time_items_per_s": n / t_single,
        "ratio": t_single / t_batched,
        "target_ratio": TARGET_RATIO,
        "meets_target": t_single / t_batched >= TARGET_RATIO,
        "batched_runs_s": all_batched,
        "one_at_a_time_runs_s": all_single,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="number of images (default 256)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs, median taken")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random images")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--n, --batch-size and --repeats must be positive")

    gen = torch.Generator().manual_seed(args.seed)
    images = torch.rand(args.n, 3, 64, 64, generator=gen)
    torch.manual_seed(args.seed)  # model init
    models = {
        "convnet.tiny": mmreward.load("convnet.tiny"),
        "TinyConv r64 (32,64,128) h128": TinyConvReward(
            resolution=64, channels=(32, 64, 128), hidden=128
        ).eval(),
    }

    print(
        f"torch {torch.__version__} | {platform.machine()} | threads {torch.get_num_threads()}"
        f" | N={args.n} images 3x64x64 | batch {args.batch_size} | median of {args.repeats}"
    )
    results = [
        bench_model(label, rm, images, args.batch_size, args.repeats)
        for label, rm in models.items()
    ]

    print_ratio_table(results, TARGET_RATIO, "img/s", 31, 8, 4)
    write_results_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
