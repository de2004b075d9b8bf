"""``mmreward bon``: Best-of-N answers from a VLM, selected by an outcome or process RM.

    mmreward bon --items items.jsonl --policy /models/Qwen2-VL-2B-Instruct \\
        --reward visualprm.local --weights /models/prm --n 8 --aggregate min --out bon.jsonl

Registered in the core CLI by ``vision_rm.vlm.cli.add_parser(subparsers)``; also runs
alone as ``python -m vision_rm.vlm.cli``. Rerunning the same command resumes (items already
in ``--out`` are skipped; ``--retry-errors`` redoes failed ones).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def cmd_bon(args: argparse.Namespace) -> int:
    import torch

    import mmreward
    from mmreward.selection import STEP_AGGREGATORS
    from vision_rm.vlm.bon import VLMGenerator, read_bon_items, run_best_of_n

    if args.aggregate is not None and args.aggregate not in STEP_AGGREGATORS:
        raise ValueError(f"--aggregate: expected one of {STEP_AGGREGATORS}, got {args.aggregate!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    items = read_bon_items(args.items)
    generator = VLMGenerator.from_pretrained(
        args.policy,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
    )
    reward = mmreward.load(
        args.reward,
        device=args.device,
        weights=args.weights,
        trust_remote_code=args.trust_remote_code,
    )
    with torch.no_grad():
        summary = run_best_of_n(
            items,
            generator,
            reward,
            n=args.n,
            out_path=args.out,
            aggregate=args.aggregate,
            seed=args.seed,
            retry_errors=args.retry_errors,
            progress=not args.no_progress,
        )
    print(json.dumps(summary))
    return 1 if summary["failed"] and not summary["done"] and not summary["skipped"] else 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bon`` to the ``mmreward`` command line (``subparsers`` of argparse)."""
    p = subparsers.add_parser(
        "bon", help="Best-of-N answers from a VLM selected by an ORM or PRM (resumable JSONL)"
    )
    p.add_argument("--items", required=True, help='JSONL of {"id", "question", "image"}')
    p.add_argument("--policy", required=True, help="Hugging Face VLM directory that answers")
    p.add_argument("--reward", required=True, help="registry name or saved reward directory")
    p.add_argument("--weights", help="local weights directory for a registered reward")
    p.add_argument("--out", required=True, help="output JSONL (rerun to resume)")
    p.add_argument("--n", type=int, default=8, help="candidates per item (1 greedy + n-1 sampled)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--aggregate", default=None,
                   help="PRM step aggregator: min, last, product, mean, max, sum_logprob "
                        "(default: the reward's own)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 …")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--retry-errors", action="store_true", help="redo items that failed before")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow models whose code is not in the installed packages")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_bon)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vision_rm.vlm.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, PermissionError) as e:
        print(f"mmreward {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
