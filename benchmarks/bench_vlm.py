"""VLM reward models on CPU: candidates scored per second, and the PRM's one-forward gain.

Two tiny Qwen2-VL backbones built in code (no download): the test size (hidden 64, 2+2
layers) and a wider one (hidden 256, 4 LM layers). Items are the world's reasoning task
(32×64 images of two digits) with 6-step solutions.

1. Throughput: ``VisualPRM.score`` (6 steps per candidate) and ``VLMOutcomeReward.score``
   (the same solution as one response) at ``--batch-size``, candidates per second.
2. PRM one forward vs per-step forwards: every step's P('+') from one forward over the
   whole chat, against S forwards over the prefixes (steps ≤ k, one batch per k over all
   items, the usual way to score steps without the multi-turn trick). The scores must
   agree (checked; the script raises otherwise). Target: one forward ≥ 3× faster.

Each timing is the median of ``--repeats`` runs after one warm-up run.

    python benchmarks/bench_vlm.py --n 32 --batch-size 16 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from _common import median_seconds, write_results_json

from vision_rm.vlm.backbone import encode_chats, hidden_states
from vision_rm.vlm.orm import new_orm
from vision_rm.vlm.prm import new_prm
from vision_rm.vlm.reasoning import DigitPolicy, make_items
from vision_rm.vlm.tiny import build_tiny_qwen2vl

TARGET_RATIO = 3.0  # one forward ≥ 3× faster than per-step forwards (6-step solutions)
MODELS = {  # label → build_tiny_qwen2vl overrides
    "qwen2-vl h64 L2 (test size)": {},
    "qwen2-vl h256 L4": {
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 6, 6]},
    },
}


def six_step_items(n: int, seed: int):
    """N items with a 6-step solution each (4 policy steps + 2 checking steps)."""
    items = make_items(n, "test", seed=seed)
    policy, rng = DigitPolicy(), np.random.default_rng(seed)
    steps = []
    for it in items:
        s = policy.sample(it, 1, rng)[0]
        steps.append(
            [*s[:3], "Let me check the reading once more.", "The digits are as read.", s[3]]
        )
    return items, steps


@torch.no_grad()
def per_step_forwards(prm, questions, steps, images) -> list[torch.Tensor]:
    """P('+') of step k from a forward over the prefix ≤ k: one batch per k."""
    n_max = max(len(s) for s in steps)
    probs: list[list[torch.Tensor]] = [[] for _ in steps]
    for k in range(1, n_max + 1):
        rows = [i for i, s in enumerate(steps) if len(s) >= k]
        convs = [
            prm.conversation(
                questions[i], steps[i][:k], True, judgements=[prm.plus_token] * (k - 1)
            )
            for i in rows
        ]
        enc = encode_chats(prm.processor, convs, images[rows], add_generation_prompt=True)
        h = hidden_states(prm.backbone, enc)[:, -1]  # left padding: the last position is real
        p = torch.sigmoid(prm._judgement_logits(h))
        for j, i in enumerate(rows):
            probs[i].append(p[j])
    return [torch.stack(p) for p in probs]


def bench_model(label: str, overrides: dict, n: int, bs: int, repeats: int) -> dict:
    model, processor = build_tiny_qwen2vl(seed=0, **overrides)
    prm = new_prm(model, processor).eval()
    orm = new_orm(model, processor).eval()
    items, steps = six_step_items(n, seed=0)
    images = torch.stack([it.image for it in items])
    questions = [it.question for it in items]
    responses = ["\n\n".join(s) for s in steps]

    def prm_batched():
        return prm.score(images, questions, steps=steps, batch_size=bs)

    def orm_batched():
        return orm.score(images, questions, responses=responses, batch_size=bs)

    def one_forward():
        return [prm.score(images[i : i + bs], questions[i : i + bs], steps=steps[i : i + bs])
                for i in range(0, n, bs)]  # fmt: skip

    def per_step():
        return [per_step_forwards(prm, questions[i : i + bs], steps[i : i + bs], images[i : i + bs])
                for i in range(0, n, bs)]  # fmt: skip

    # the two ways agree before anything is timed
    fast = torch.cat([s for o in one_forward() for s in o.step_scores])
    slow = torch.cat([s for chunk in per_step() for s in chunk])
    if not torch.allclose(fast, slow, atol=1e-4):
        raise RuntimeError(f"{label}: one-forward and per-step scores differ by "
                           f"{(fast - slow).abs().max().item():.2e}")  # fmt: skip
    t_prm, _ = median_seconds(prm_batched, repeats)
    t_orm, _ = median_seconds(orm_batched, repeats)
    t_one, _ = median_seconds(one_forward, repeats)
    t_sep, _ = median_seconds(per_step, repeats)
    ratio = t_sep / t_one
    return {
        "model": label,
        "params": sum(p.numel() for p in model.parameters()),
        "n": n,
        "steps_per_solution": 6,
        "prm_candidates_per_s": n / t_prm,
        "orm_candidates_per_s": n / t_orm,
        "one_forward_s": t_one,
        "per_step_forwards_s": t_sep,
        "ratio": ratio,
        "max_abs_diff": float((fast - slow).abs().max()),
        "meets_target": ratio >= TARGET_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=32, help="candidates (6-step solutions)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="write results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} thread(s)")
    results = [bench_model(k, v, args.n, args.batch_size, args.repeats) for k, v in MODELS.items()]
    header = (f"{'model':<28} {'params':>9} {'PRM cand/s':>10} {'ORM cand/s':>10} "
              f"{'1-fwd s':>8} {'per-step s':>10} {'ratio':>6}  target")  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in results:
        mark = "ok" if r["meets_target"] else "MISSED"
        print(
            f"{r['model']:<28} {r['params']:>9,} {r['prm_candidates_per_s']:>10.1f} "
            f"{r['orm_candidates_per_s']:>10.1f} {r['one_forward_s']:>8.3f} "
            f"{r['per_step_forwards_s']:>10.3f} {r['ratio']:>5.1f}x  >= {TARGET_RATIO:.0f}x {mark}"
        )
    write_results_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
