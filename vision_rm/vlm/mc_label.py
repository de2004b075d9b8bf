"""Monte-Carlo step labels: how often a policy still reaches the right answer from a prefix.

Math-Shepherd (Wang et al. 2024) and VisualPRM (Wang et al. 2025) label step k of a
solution by rolling the policy out n times from the prefix (steps 1..k) and checking the
final answers: the soft label is the success rate

    mc_k = (1/n) Σ_j 1[answer(rollout_j from steps ≤ k) is correct],

and the hard label is ``mc_k > threshold`` (VisualPRM: 16 rollouts, ``mc > 0`` → '+').
The last step needs no rollout: its label is the solution's own correctness.

Any policy works that can continue a solution from a prefix of steps (the
:class:`StepPolicy` protocol); the world's reasoning policy
(:class:`vision_rm.vlm.reasoning.DigitPolicy`) is one.

>>> class Coin:                     # a policy that ignores the prefix
...     def continue_solution(self, item, prefix, n, rng):
...         return [prefix + ["The answer is 1."] for _ in range(n)]
>>> label_solution(Coin(), {"answer": "1"}, ["x", "The answer is 1."], n=4,
...                is_correct=lambda item, s: s[-1].endswith("1."), seed=0)
[1.0, 1.0]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class StepPolicy(Protocol):
    """A policy that completes a solution (a list of steps) from a prefix of steps."""

    def continue_solution(
        self, item: Any, prefix: list[str], n: int, rng: np.random.Generator
    ) -> list[list[str]]:
        """``n`` complete step lists that start with ``prefix``."""
        ...


def label_solution(
    policy: StepPolicy,
    item: Any,
    steps: Sequence[str],
    n: int,
    is_correct: Callable[[Any, list[str]], bool],
    seed: int = 0,
) -> list[float]:
    """Soft MC labels (success rates in [0,1]) of every step of one solution."""
    if n < 1:
        raise ValueError(f"n: expected ≥ 1 rollouts per prefix, got {n}")
    if not steps:
        raise ValueError("steps: expected at least one step")
    rng = np.random.default_rng(seed)
    labels = []
    for k in range(1, len(steps) + 1):
        prefix = list(steps[:k])
        if k == len(steps):  # a complete solution: its own outcome
            labels.append(float(is_correct(item, prefix)))
            continue
        rollouts = policy.continue_solution(item, prefix, n, rng)
        if len(rollouts) != n:
            raise ValueError(f"policy: returned {len(rollouts)} rollouts, expected {n}")
        labels.append(float(np.mean([is_correct(item, r) for r in rollouts])))
    return labels


def hard_labels(mc: Sequence[float], threshold: float = 0.0) -> list[float]:
    """``1.0`` where the success rate exceeds ``threshold`` (VisualPRM: > 0), else ``0.0``."""
    return [1.0 if m > threshold else 0.0 for m in mc]


def label_solutions(
    policy: StepPolicy,
    items: Sequence[Any],
    solutions: Sequence[Sequence[str]],
    n: int,
    is_correct: Callable[[Any, list[str]], bool],
    *,
    hard: bool = False,
    threshold: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """MC labels for many solutions: ``[{"steps", "mc", "labels"}]`` (labels soft or hard)."""
    from tqdm.auto import tqdm

    if len(items) != len(solutions):
        raise ValueError(f"solutions: expected {len(items)} (one per item), got {len(solutions)}")
    rows = []
    for i, (item, steps) in enumerate(
        tqdm(list(zip(items, solutions)), desc="Monte-Carlo labels", disable=not progress)
    ):
        mc = label_solution(policy, item, steps, n, is_correct, seed=seed * 1_000_003 + i)
        labels = hard_labels(mc, threshold) if hard else mc
        rows.append({"steps": list(steps), "mc": mc, "labels": labels})
    return rows


def write_step_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write step-labelled rows (the core ``steps`` format: prompt, image, steps, labels)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path
