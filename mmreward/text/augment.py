"""RRM data augmentation: pairs whose losing side answers a *different* prompt.

Liu et al. 2024, "RRM: Robust Reward Model Training Mitigates Reward Hacking". A reward
model trained on (x, y_w ≻ y_l) pairs can learn artifacts of the responses (length,
format) that predict preference independently of the prompt. RRM adds pairs in which a
response to x competes with a response y' to another prompt x' ≠ x:

- **contextual** pairs (x, y ≻ y') for y ∈ {y_w, y_l}: any response to the prompt beats
  an off-topic one, whatever its artifacts;
- **neutral** pairs (x, y'_w ≈ y'_l), labelled as ties: two responses to another prompt
  are equally (un)helpful for x, so their artifacts must not separate them.

Works for any pairwise dataset (:class:`mmreward.data.PreferenceExample`: text, image or
video candidates). Ties need a tie-aware loss: train with ``TrainConfig(tie_k=...)``
(Rao-Kupper) or they are skipped by the Bradley-Terry objective.

>>> from mmreward.data import PreferenceExample
>>> data = [PreferenceExample(f"q{i}", "responses", [f"good {i}", f"bad {i}"], label=1)
...         for i in range(3)]
>>> out = rrm_augment(data, seed=0)
>>> len(out), sum(e.label == 0 for e in out)
(12, 3)
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path

from mmreward.data import PreferenceExample


def rrm_augment(
    examples: Sequence[PreferenceExample],
    seed: int = 0,
    contextual: bool = True,
    neutral: bool = True,
    include_original: bool = True,
) -> list[PreferenceExample]:
    """The dataset plus RRM's augmented pairs (one partner prompt per example).

    For example i a partner j with a different prompt is drawn (seeded); then
    ``contextual`` adds (x_i, y ≻ y'_j) for both of i's candidates (y'_j drawn from j's
    two candidates) and ``neutral`` adds (x_i, j's candidates) labelled as a tie.
    Augmented examples carry ``meta = {"augment": "rrm_contextual" | "rrm_neutral",
    "source": i, "partner": j}``. Raises ``ValueError`` when every example has the same
    prompt (there is no "other prompt" to draw from).
    """
    examples = list(examples)
    for i, e in enumerate(examples):
        if len(e.candidates) != 2 or e.label is None:
            raise ValueError(
                f"examples[{i}]: RRM augments pairwise examples (2 candidates and a label)"
            )
    if len({e.prompt for e in examples}) < 2:
        raise ValueError("examples: RRM needs at least two different prompts")
    rng = random.Random(seed)
    out = list(examples) if include_original else []
    n = len(examples)
    for i, e in enumerate(examples):
        j = rng.randrange(n)
        while examples[j].prompt == e.prompt:
            j = rng.randrange(n)
        partner = examples[j]
        meta = {"source": i, "partner": j}
        if contextual:
            other = partner.candidates[rng.randrange(2)]
            for own in e.candidates:
                out.append(
                    _pair(e, [own, other], label=1, meta={"augment": "rrm_contextual", **meta})
                )
        if neutral:
            out.append(
                _pair(e, list(partner.candidates), label=0, meta={"augment": "rrm_neutral", **meta})
            )
    return out


def _pair(base: PreferenceExample, candidates: list, label: int, meta: dict) -> PreferenceExample:
    return dataclasses.replace(
        base, candidates=candidates, label=label, margin=None, meta={**base.meta, **meta}
    )


def write_augmented_jsonl(examples: Sequence[PreferenceExample], path: str | Path) -> Path:
    """Write pairwise examples in the trainer's JSONL format (``"choice": 0 | 1 | "tie"``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for e in examples:
            choice = {1: 0, -1: 1, 0: "tie"}[e.label]
            cands = [str(c) for c in e.candidates]
            row = {"prompt": e.prompt, e.kind: cands, "choice": choice}
            if e.meta:
                row["meta"] = e.meta
            f.write(json.dumps(row) + "\n")
    return path
