"""Batched vs one-at-a-time scoring of a text reward model (sequence classifier) on CPU.

Scores N (prompt, response) pairs from the synthetic text world (responses of 5–40 words,
seeded) with ``rm.score(prompts=…, responses=…, batch_size=B)`` (length-sorted batches)
and with ``rm.score(prompts=[p], responses=[r])`` in a Python loop, for two Llama-style
sequence-classifier RMs built in code (a tokenizer trained on the fly, no download):
the contract-test size (hidden 32, 2 layers) and a small one (hidden 256, 4 layers).
Each timing is the median of ``--repeats`` runs after one warm-up run.

The target (batched ≥ 3× faster than one at a time at batch 16) is printed next to the
measured ratio; missing it is not an error. The script exits non-zero only if something
raises (e.g. batched and one-at-a-time scores disagree).

    python benchmarks/bench_text.py --n 128 --batch-size 16 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import tempfile
from pathlib import Path

import torch
from _common import median_seconds, print_ratio_table, write_results_json

import mmreward
from mmreward.text.synthetic import TextWorld, build_tiny_checkpoint, train_tokenizer

TARGET_RATIO = 3.0  # batched should be ≥ 3× faster than one at a time (at batch 16)
MODELS = {  # label → tiny_config overrides
    "llama h32 L2 (contract size)": {"hidden_size": 32, "num_layers": 2},
    "llama h256 L4": {"hidden_size": 256, "num_layers": 4, "num_heads": 8, "num_kv_heads": 4},
}


def make_items(n: int, seed: int) -> tuple[list[str], list[str]]:
    """N prompts and responses of 5–40 words from the synthetic world."""
    world = TextWorld().shifted(length=(5, 40))
    rng = random.Random(seed)
    return [world.prompt(rng) for _ in range(n)], [world.response(rng) for _ in range(n)]


def bench_model(
    label: str,
    rm: mmreward.RewardModel,
    prompts: list[str],
    responses: list[str],
    bs: int,
    repeats: int,
) -> dict:
    n = len(prompts)

    def batched() -> torch.Tensor:
        return rm.score(prompts=prompts, responses=responses, batch_size=bs).scores

    def one_at_a_time() -> torch.Tensor:
        return torch.cat(
            [rm.score(prompts=[p], responses=[r]).scores for p, r in zip(prompts, responses)]
        )

    # correctness first: the two paths must give the same scores
    torch.testing.assert_close(batched(), one_at_a_time(), rtol=1e-4, atol=1e-5)
    t_batched, all_batched = median_seconds(batched, repeats)
    t_single, all_single = median_seconds(one_at_a_time, repeats)
    return {
        "model": label,
        "params": sum(p.numel() for p in rm.parameters()),
        "n": n,
        "batch_size": bs,
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
    parser.add_argument("--n", type=int, default=128, help="number of (prompt, response) pairs")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, median taken")
    parser.add_argument("--seed", type=int, default=0, help="seed for the items and the models")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--n, --batch-size and --repeats must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)

    prompts, responses = make_items(args.n, args.seed)
    tokenizer = train_tokenizer()
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, cfg) in enumerate(MODELS.items()):
            path = build_tiny_checkpoint(
                Path(tmp) / str(i), "seqcls", "llama", tokenizer=tokenizer, seed=args.seed, **cfg
            )
            models[label] = mmreward.load("seqcls.skywork-reward-llama-3.1-8b", weights=path)

    print(
        f"torch {torch.__version__} | {platform.machine()} | threads {torch.get_num_threads()}"
        f" | N={args.n} text pairs (5-40 words) | batch {args.batch_size} | median of {args.repeats}"
    )
    results = [
        bench_model(label, rm, prompts, responses, args.batch_size, args.repeats)
        for label, rm in models.items()
    ]
    print_ratio_table(results, TARGET_RATIO, "items/s", 30, 10, 3)
    write_results_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
