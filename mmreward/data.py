"""Preference datasets in JSONL, shared by every reward model and the trainer.

Three formats, one JSON object per line; relative file paths are resolved against the
JSONL file's folder. A candidate is an image path, a video path or a text response.

- **pairwise**: ``{"prompt": str, "images": [a, b], "choice": 0 | 1 | "tie"}``
  (``"responses"``/``"videos"`` instead of ``"images"``; ``"chosen"``/``"rejected"``
  instead of a list + choice; optional ``"margin"``). ``choice`` is the index of the
  preferred candidate; ``"tie"`` or ``0.5`` marks a tie.
- **listwise**: ``{"prompt": str, "images": [c1, ..., cK], "ranking": [r1, ..., rK]}``,
  rank 1 is best (ImageReward's k-way format); equal ranks are ties.
- **steps**: ``{"prompt": str, "steps": [s1, ...], "labels": [y1, ...]}`` with labels in
  [0,1] (1 = correct step; soft Monte-Carlo labels allowed), optional ``"image"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmreward.errors import InputError
from mmreward.interface import RewardInput
from mmreward.io import load_image

_KINDS = ("images", "videos", "responses")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)``; a malformed line is an error naming file and line."""
    path = Path(path)
    with path.open("r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            yield n, row


@dataclass
class PreferenceExample:
    """One training/eval example: candidates of one kind for one prompt.

    ``label`` is ``1``/``-1``/``0`` (a better / b better / tie) for pairs, ``ranks`` for
    lists (1 = best), ``step_labels`` for step data.
    """

    prompt: str
    kind: str
    candidates: list[Any]
    label: int | None = None
    margin: float | None = None
    ranks: list[int] | None = None
    steps: list[str] | None = None
    step_labels: list[float] | None = None
    image: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


def _resolve(value: Any, kind: str, root: Path) -> Any:
    if kind in ("images", "videos") and isinstance(value, str):
        p = Path(value)
        return p if p.is_absolute() else root / p
    return value


def _candidates(row: dict[str, Any], where: str) -> tuple[str, list[Any]]:
    kinds = [k for k in _KINDS if k in row]
    if len(kinds) != 1:
        raise ValueError(f"{where}: expected exactly one of {_KINDS}, got {kinds or 'none'}")
    values = row[kinds[0]]
    if not isinstance(values, list) or len(values) < 2:
        raise ValueError(f"{where}: '{kinds[0]}' must be a list of at least 2 candidates")
    return kinds[0], values


def parse_pair(row: dict[str, Any], root: Path, where: str) -> PreferenceExample:
    """Normalise one pairwise row (see module docstring)."""
    prompt = row.get("prompt", row.get("caption", ""))
    if "chosen" in row or "rejected" in row:
        if "chosen" not in row or "rejected" not in row:
            raise ValueError(f"{where}: 'chosen' and 'rejected' go together")
        kind = row.get("kind", "responses" if _looks_textual(row["chosen"]) else "images")
        cands, label = [row["chosen"], row["rejected"]], 1
    else:
        kind, cands = _candidates(row, where)
        if len(cands) != 2:
            raise ValueError(f"{where}: a pair needs 2 candidates, got {len(cands)}")
        choice = row.get("choice", row.get("label"))
        if choice in ("tie", 0.5) or (choice is None and row.get("tie")):
            label = 0
        elif choice in (0, 1):
            label = 1 if choice == 0 else -1
        else:
            raise ValueError(f"{where}: choice must be 0, 1 or 'tie', got {choice!r}")
    margin = row.get("margin")
    return PreferenceExample(
        prompt=prompt,
        kind=kind,
        candidates=[_resolve(c, kind, root) for c in cands],
        label=label,
        margin=None if margin is None else float(margin),
        meta={k: row[k] for k in ("id",) if k in row},
    )


def _looks_textual(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    return not value.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".bmp", ".mp4"))


def parse_list(row: dict[str, Any], root: Path, where: str) -> PreferenceExample:
    """Normalise one listwise row (k-way ranking)."""
    kind, cands = _candidates(row, where)
    ranks = row.get("ranking", row.get("ranks"))
    if not isinstance(ranks, list) or len(ranks) != len(cands):
        raise ValueError(f"{where}: 'ranking' must list one rank per candidate ({len(cands)})")
    return PreferenceExample(
        prompt=row.get("prompt", ""),
        kind=kind,
        candidates=[_resolve(c, kind, root) for c in cands],
        ranks=[int(r) for r in ranks],
    )


def parse_steps(row: dict[str, Any], root: Path, where: str) -> PreferenceExample:
    """Normalise one step-labelled row."""
    steps, labels = row.get("steps"), row.get("labels")
    if not isinstance(steps, list) or not steps:
        raise ValueError(f"{where}: 'steps' must be a non-empty list of strings")
    if not isinstance(labels, list) or len(labels) != len(steps):
        raise ValueError(f"{where}: 'labels' must give one label per step ({len(steps)})")
    labels = [float(y) for y in labels]
    if any(not 0.0 <= y <= 1.0 for y in labels):
        raise ValueError(f"{where}: step labels must be in [0,1], got {labels}")
    image = row.get("image")
    return PreferenceExample(
        prompt=row.get("prompt", row.get("question", "")),
        kind="steps",
        candidates=[row.get("response", "\n\n".join(steps))],
        steps=[str(s) for s in steps],
        step_labels=labels,
        image=None if image is None else _resolve(image, "images", root),
    )


_PARSERS = {"pairwise": parse_pair, "listwise": parse_list, "steps": parse_steps}


def load_examples(path: str | Path, objective: str) -> list[PreferenceExample]:
    """Read a JSONL file of ``objective`` ∈ {pairwise, listwise, steps} examples."""
    if objective not in _PARSERS:
        raise ValueError(f"objective: expected one of {sorted(_PARSERS)}, got {objective!r}")
    path = Path(path)
    parse = _PARSERS[objective]
    examples = [parse(row, path.parent, f"{path}:{n}") for n, row in read_jsonl(path)]
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def stack_images(items: Sequence[Any], size: tuple[int, int] | None = None) -> Tensor:
    """Load images (paths/tensors) and stack them; resize to ``size`` when sizes differ."""
    tensors = [load_image(x) if isinstance(x, (str, Path)) else x for x in items]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1 or (size is not None and tuple(tensors[0].shape[-2:]) != tuple(size)):
        if size is None:
            size = tuple(tensors[0].shape[-2:])
        tensors = [
            F.interpolate(t[None], size=size, mode="bilinear", antialias=True, align_corners=False)[
                0
            ]
            for t in tensors
        ]
    return torch.stack(tensors)


def candidates_to_input(
    kind: str,
    candidates: Sequence[Any],
    prompts: Sequence[str],
    image_size: tuple[int, int] | None = None,
) -> RewardInput:
    """A :class:`RewardInput` for a flat list of candidates of one kind."""
    if kind == "images":
        return RewardInput(prompts=list(prompts), images=stack_images(candidates, image_size))
    if kind == "responses":
        return RewardInput(prompts=list(prompts), responses=[str(c) for c in candidates])
    if kind == "videos":
        from mmreward.io import to_video_tensor

        return RewardInput(prompts=list(prompts), videos=to_video_tensor(list(candidates)))
    raise InputError("kind", f"one of {_KINDS}", repr(kind))


@dataclass
class CollatedBatch:
    """What the trainer consumes: the flattened candidates and the targets."""

    objective: str
    inputs: RewardInput  # pairwise: 2B rows (a's then b's); listwise: B·K; steps: B
    labels: Tensor | None = None  # pairwise (B,) in {1,-1,0}
    margins: Tensor | None = None  # pairwise (B,)
    ranks: Tensor | None = None  # listwise (B,K)
    step_labels: list[Tensor] | None = None  # steps: one (S_i,) tensor per example


class Collator:
    """Turns a list of :class:`PreferenceExample` into a :class:`CollatedBatch`."""

    def __init__(self, objective: str, image_size: tuple[int, int] | None = None) -> None:
        self.objective = objective
        self.image_size = image_size

    def __call__(self, examples: list[PreferenceExample]) -> CollatedBatch:
        kind = examples[0].kind
        if any(e.kind != kind for e in examples):
            raise ValueError("a batch mixes candidate kinds; keep one kind per dataset")
        if self.objective == "pairwise":
            cands = [e.candidates[0] for e in examples] + [e.candidates[1] for e in examples]
            prompts = [e.prompt for e in examples] * 2
            margins = torch.tensor([e.margin or 0.0 for e in examples])
            return CollatedBatch(
                "pairwise",
                candidates_to_input(kind, cands, prompts, self.image_size),
                labels=torch.tensor([e.label for e in examples]),
                margins=margins,
            )
        if self.objective == "listwise":
            k = len(examples[0].candidates)
            if any(len(e.candidates) != k for e in examples):
                raise ValueError(
                    "listwise batch: every example needs the same number of candidates"
                )
            cands = [c for e in examples for c in e.candidates]
            prompts = [e.prompt for e in examples for _ in range(k)]
            return CollatedBatch(
                "listwise",
                candidates_to_input(kind, cands, prompts, self.image_size),
                ranks=torch.tensor([e.ranks for e in examples]),
            )
        inputs = RewardInput(
            prompts=[e.prompt for e in examples],
            responses=[e.candidates[0] for e in examples],
            steps=[list(e.steps or []) for e in examples],
        )
        if examples[0].image is not None:
            inputs.images = stack_images([e.image for e in examples], self.image_size)
        return CollatedBatch(
            "steps",
            inputs,
            step_labels=[torch.tensor(e.step_labels, dtype=torch.float32) for e in examples],
        )
