"""Step-level evaluation of process reward models on VisualProcessBench-format JSONL.

VisualProcessBench (Wang et al. 2025, with VisualPRM) annotates every step of VLM
solutions as correct or wrong and scores a PRM by the F1 of its step judgements. Rows
are read in either layout:

- VisualProcessBench: ``{"image": [path] | path, "question": str, "response":
  {"steps": [...], "process_correctness": [1 | -1 | 0, ...]}, "data_source": str}`` —
  1 correct, −1 wrong, 0 neutral (neutral steps are scored by the PRM, in context, but
  left out of the metrics);
- flat (the core ``steps`` training format): ``{"question" | "prompt": str, "image":
  path, "steps": [...], "labels": [1 | 0 | soft, ...]}`` — labels ≥ 0.5 count as correct.

Image paths are relative to the JSONL file. A step is predicted correct when
P('+') ≥ ``threshold``. Reported: step F1 with the *erroneous* steps as the positive class
(``f1_error``, the number VisualProcessBench cares about), F1 of correct steps, their
macro mean, accuracy, expected calibration error (10 bins), per ``data_source``.
Written next to each other: ``metrics.json``, ``predictions.jsonl`` (P('+') per step)
and ``calibration.png`` (reliability diagram).

>>> # report = evaluate_process_bench(prm, "VisualProcessBench/test.jsonl", out_dir="eval/")
>>> # report["f1_error"], report["ece"]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmreward.data import read_jsonl
from mmreward.metrics import expected_calibration_error, step_f1


@dataclass
class StepItem:
    """One solution: its question, image path, steps and labels (1, 0, or None = neutral)."""

    id: str
    question: str
    image: Path | None
    steps: list[str]
    labels: list[int | None]
    source: str = ""


def _label(value: Any, where: str, layout: str) -> int | None:
    if layout == "bench":
        if isinstance(value, bool):  # True/False before the numbers: False == 0 in Python
            return int(value)
        if value is None or value == 0:
            return None
        if value == 1:
            return 1
        if value == -1:
            return 0
        raise ValueError(f"{where}: process_correctness values must be 1, -1 or 0, got {value!r}")
    try:
        y = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: labels must be numbers in [0,1], got {value!r}") from None
    if not 0.0 <= y <= 1.0:
        raise ValueError(f"{where}: labels must be in [0,1], got {value!r}")
    return int(y >= 0.5)


def parse_row(row: dict[str, Any], root: Path, where: str) -> StepItem:
    """One JSONL row (either layout) as a :class:`StepItem`."""
    if isinstance(row.get("response"), dict):
        response = row["response"]
        steps, raw, layout = response.get("steps"), response.get("process_correctness"), "bench"
        field = "response.process_correctness"
    else:
        steps, raw, layout, field = row.get("steps"), row.get("labels"), "flat", "labels"
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise ValueError(f"{where}: 'steps' must be a non-empty list of strings")
    if not isinstance(raw, list) or len(raw) != len(steps):
        raise ValueError(f"{where}: '{field}' must give one label per step ({len(steps)})")
    question = row.get("question", row.get("prompt"))
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: 'question' must be a non-empty string")
    image = row.get("image")
    if isinstance(image, list):
        if len(image) > 1:
            raise ValueError(f"{where}: 'image' lists {len(image)} images; one is supported")
        image = image[0] if image else None
    if image is not None and not isinstance(image, str):
        raise ValueError(f"{where}: 'image' must be a path (string), got {type(image).__name__}")
    path = None if image is None else (Path(image) if Path(image).is_absolute() else root / image)
    return StepItem(
        id=str(row.get("id", where)),
        question=question,
        image=path,
        steps=[str(s) for s in steps],
        labels=[_label(v, f"{where} {field}[{k}]", layout) for k, v in enumerate(raw)],
        source=str(row.get("data_source", "")),
    )


def read_step_items(path: str | Path, limit: int | None = None) -> list[StepItem]:
    """All rows of a VisualProcessBench-format JSONL (the first ``limit``)."""
    path = Path(path)
    items = []
    for n, row in read_jsonl(path):
        items.append(parse_row(row, path.parent, f"{path}:{n}"))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise ValueError(f"{path}: no rows")
    return items


def step_metrics(
    probs: Sequence[Sequence[float]],
    labels: Sequence[Sequence[int | None]],
    threshold: float = 0.5,
    n_bins: int = 10,
) -> dict[str, float]:
    """Step F1 (error / correct / macro), accuracy and ECE over the non-neutral steps."""
    p_flat, y_flat = [], []
    for ps, ys in zip(probs, labels):
        for p, y in zip(ps, ys):
            if y is not None:
                p_flat.append(float(p))
                y_flat.append(int(y))
    if not p_flat:
        raise ValueError("labels: every step is neutral; nothing to score")
    f1 = step_f1(np.asarray(p_flat), np.asarray(y_flat), threshold=threshold)
    return {
        "f1_error": f1.f1_error,
        "f1_correct": f1.f1_correct,
        "macro_f1": f1.macro_f1,
        "accuracy": f1.accuracy,
        "ece": expected_calibration_error(np.asarray(p_flat), np.asarray(y_flat), n_bins),
        "n_steps": f1.n_steps,
        "error_rate": 1.0 - float(np.mean(y_flat)),
    }


def evaluate_process_bench(
    prm: Any,
    path: str | Path,
    *,
    out_dir: str | Path | None = None,
    batch_size: int = 16,
    threshold: float = 0.5,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every step of every solution with ``prm`` and report step F1 and calibration.

    ``prm`` is any reward model returning ``step_scores`` in [0,1] (e.g.
    :class:`~vision_rm.vlm.prm.VisualPRM`). Items are scored in batches of one image
    size; rows without an image are scored text-only.
    """
    from mmreward.io import load_image

    items = read_step_items(path, limit)
    probs: list[list[float] | None] = [None] * len(items)
    with_image = [i for i, it in enumerate(items) if it.image is not None]
    without = [i for i, it in enumerate(items) if it.image is None]
    for group, use_images in ((with_image, True), (without, False)):
        if not group:
            continue
        images = [load_image(items[i].image) for i in group] if use_images else None
        out = prm.score(
            images,
            [items[i].question for i in group],
            steps=[items[i].steps for i in group],
            batch_size=batch_size,
            progress=progress,
        )
        if out.step_scores is None:
            raise ValueError(f"prm: {type(prm).__name__} returns no step scores")
        for i, s in zip(group, out.step_scores):
            probs[i] = s.detach().float().cpu().tolist()
    report: dict[str, Any] = step_metrics(probs, [it.labels for it in items], threshold)
    report.update({"n_solutions": len(items), "threshold": threshold})
    sources = sorted({it.source for it in items if it.source})
    if len(sources) > 1:
        report["by_source"] = {
            s: step_metrics(
                [p for p, it in zip(probs, items) if it.source == s],
                [it.labels for it in items if it.source == s],
                threshold,
            )
            for s in sources
        }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as f:
            for it, p in zip(items, probs):
                row = {"id": it.id, "step_probs": p, "labels": it.labels, "source": it.source}
                f.write(json.dumps(row) + "\n")
        plot_reliability(probs, [it.labels for it in items], out_dir / "calibration.png")
    return report


def plot_reliability(
    probs: Sequence[Sequence[float]],
    labels: Sequence[Sequence[int | None]],
    path: str | Path,
    n_bins: int = 10,
) -> Path:
    """Reliability diagram: fraction of correct steps per P('+') bin, against the diagonal."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p = np.array([x for ps, ys in zip(probs, labels) for x, y in zip(ps, ys) if y is not None])
    y = np.array([y for ys in labels for y in ys if y is not None], dtype=float)
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.clip(np.searchsorted(edges[1:-1], p, side="left"), 0, n_bins - 1)
    centres, acc, counts = [], [], []
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            centres.append(p[sel].mean())
            acc.append(y[sel].mean())
            counts.append(int(sel.sum()))
    fig = Figure(figsize=(4.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.scatter(centres, acc, s=[10 + 190 * c / max(counts) for c in counts], zorder=3)
    ax.plot(centres, acc, lw=1)
    ax.set_xlabel("predicted P('+')")
    ax.set_ylabel("fraction of correct steps")
    ax.set_title(f"PRM calibration (ECE {expected_calibration_error(p, y, n_bins):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)
    return Path(path)


def _cli(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import argparse

    import mmreward

    parser = argparse.ArgumentParser(
        prog="python -m vision_rm.vlm.evaluate",
        description="Step F1 and calibration of a PRM on VisualProcessBench-format JSONL",
    )
    parser.add_argument("--reward", required=True, help="registry name or saved PRM directory")
    parser.add_argument("--weights", help="local weights directory for a registered reward")
    parser.add_argument("--data", required=True, help="JSONL (VisualProcessBench or flat)")
    parser.add_argument("--out", help="folder for metrics.json, predictions, calibration.png")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    prm = mmreward.load(args.reward, weights=args.weights, trust_remote_code=args.trust_remote_code)
    with torch.no_grad():
        report = evaluate_process_bench(
            prm, args.data, out_dir=args.out, batch_size=args.batch_size,
            threshold=args.threshold, limit=args.limit,
        )  # fmt: skip
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    _cli()
