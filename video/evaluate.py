"""Pairwise evaluation of video reward models on VideoGen-RewardBench-format pair files.

The file is JSONL (or the benchmark's CSV) with one row per pair::

    {"prompt": "...", "path_A": "videos/a.mp4", "path_B": "videos/b.mp4",
     "Overall": "A" | "B" | "same", "VQ": ..., "MQ": ..., "TA": ...}

(VideoGen-RewardBench, Liu et al. 2025, arXiv:2501.13918). Relative paths are resolved
against the file's folder; labels may also be ``1``/``-1``/``0`` or ``"tie"``. Each
dimension present in the file and scored by the model (``Overall`` → ``scores``,
``VQ``/``MQ``/``TA`` → sub-scores of those names) gets two numbers, reported separately:

- **accuracy without ties**: pairs labelled A or B only (:func:`mmreward.metrics.pairwise_accuracy`);
- **tie-aware accuracy**: all pairs, a tie predicted when ``|r_A − r_B| ≤ ε``, with ε
  swept and the best reported (:func:`mmreward.metrics.tie_threshold_sweep`, "Ties
  Matter", Deutsch et al. 2023). ε is tuned on the evaluated pairs, as in VideoAlign, so
  this number is optimistic.

Each distinct (video, prompt) is decoded and scored once; what was sampled (frame
indices, fps) is kept per video. ``out`` writes ``metrics.json``, ``scores.jsonl`` and a
``tie_sweep.png`` of tie-aware accuracy against ε.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmreward.data import read_jsonl
from mmreward.errors import ItemReadError
from mmreward.interface import RewardInput, RewardModel
from mmreward.metrics import pairwise_accuracy, tie_threshold_sweep

DIMENSIONS = ("Overall", "VQ", "MQ", "TA")
_LABELS = {"a": 1, "b": -1, "same": 0, "tie": 0, "1": 1, "-1": -1, "0": 0}


@dataclass
class VideoPair:
    """One row of a pair file; ``labels`` maps a dimension to 1 (A), −1 (B) or 0 (tie)."""

    prompt: str
    path_a: str
    path_b: str
    labels: dict[str, int]
    line: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


def _label(value: Any, where: str, dim: str) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    key = str(int(value)) if isinstance(value, (int, float)) else str(value).strip().lower()
    if key not in _LABELS:
        raise ValueError(f"{where}: {dim}: expected 'A', 'B' or 'same' (or 1/-1/0), got {value!r}")
    return _LABELS[key]


def _resolve(value: Any, root: Path, where: str, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {name}: expected a video path, got {value!r}")
    p = Path(value)
    return str(p if p.is_absolute() else root / p)


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return [(n, row) for n, row in enumerate(csv.DictReader(f), 2)]
    return list(read_jsonl(path))


def read_pairs(path: str | os.PathLike, dimensions: Sequence[str] = DIMENSIONS) -> list[VideoPair]:
    """The pairs of a JSONL/CSV pair file (see the module docstring).

    ``path_A``/``path_B`` (or ``video_A``/``video_B``) and ``prompt`` are required; a row
    needs a label in at least one of ``dimensions`` (``Overall`` may also be called
    ``label`` or ``choice``). Errors name the file, the line and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs: {path} does not exist")
    pairs = []
    for n, row in _rows(path):
        where = f"{path}:{n}"
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: prompt: expected a non-empty string, got {prompt!r}")
        a = row.get("path_A", row.get("video_A"))
        b = row.get("path_B", row.get("video_B"))
        labels = {}
        for dim in dimensions:
            raw = row.get(dim)
            if raw is None and dim == "Overall":
                raw = row.get("label", row.get("choice"))
            lab = _label(raw, where, dim)
            if lab is not None:
                labels[dim] = lab
        if not labels:
            raise ValueError(f"{where}: expected a label in one of {list(dimensions)}")
        pairs.append(
            VideoPair(
                prompt=prompt,
                path_a=_resolve(a, path.parent, where, "path_A"),
                path_b=_resolve(b, path.parent, where, "path_B"),
                labels=labels,
                line=n,
            )
        )
    if not pairs:
        raise ValueError(f"pairs: {path} holds no pairs")
    return pairs


def _score_videos(
    reward: RewardModel,
    keys: list[tuple[str, str]],
    loader: Callable[[str], Any],
    batch_size: int,
    progress: bool,
) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, str]]:
    """Score every (path, prompt) once; returns the per-video records and read errors."""
    from tqdm.auto import tqdm

    records: dict[tuple[str, str], dict[str, Any]] = {}
    errors: dict[str, str] = {}
    clips: dict[str, Any] = {}
    bar = tqdm(total=len(keys), desc=f"video pairs ({reward.reward_name})", disable=not progress)
    for start in range(0, len(keys), batch_size):
        chunk = keys[start : start + batch_size]
        ready = []
        for path, prompt in chunk:
            if path not in clips and path not in errors:
                try:
                    clips[path] = loader(path)
                except (ItemReadError, ValueError, OSError) as e:
                    errors[path] = str(e)
            if path in clips:
                ready.append((path, prompt))
        groups: dict[tuple[int, ...], list[tuple[str, str]]] = {}
        for key in ready:
            groups.setdefault(tuple(clips[key[0]].frames.shape), []).append(key)
        for group in groups.values():
            videos = torch.stack([clips[p].frames for p, _ in group])
            fps = [clips[p].fps for p, _ in group]
            batch = RewardInput(
                videos=videos.to(device=reward.device, dtype=reward.dtype),
                prompts=[q for _, q in group] if "prompts" in reward.inputs else None,
                fps=None if any(f is None for f in fps) else fps,
            )
            with torch.no_grad():
                out = reward(batch)
            for (path, prompt), row in zip(group, out.to_rows()):
                clip = clips[path]
                records[(path, prompt)] = {
                    "path": path,
                    "prompt": prompt,
                    **row,
                    **(clip.record() if hasattr(clip, "record") else {}),
                }
        bar.update(len(chunk))
    bar.close()
    return records, errors


def _value(record: Mapping[str, Any] | float, dim: str) -> float | None:
    if isinstance(record, (int, float)):
        return float(record) if dim == "Overall" else None
    if dim == "Overall":
        return float(record["score"])
    subs = record.get("sub_scores") or {}
    return float(subs[dim]) if dim in subs else None


def evaluate_pairs(
    reward_or_scores: RewardModel | Mapping[str, float | Mapping[str, Any]],
    pairs_path: str | os.PathLike,
    *,
    dimensions: Sequence[str] = DIMENSIONS,
    num_frames: int | None = None,
    fps: float | None = None,
    sampler: str = "uniform",
    size: int | tuple[int, int] | None = None,
    loader: Callable[[str], Any] | None = None,
    batch_size: int = 8,
    out: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy without ties and tie-aware accuracy of a video reward on a pair file.

    Args:
        reward_or_scores: a video :class:`~mmreward.interface.RewardModel`, or precomputed
            scores: ``{path: score}`` or ``{path: {"score": s, "sub_scores": {...}}}``
            keyed by the path as written in the file or as resolved.
        pairs_path: JSONL/CSV in the VideoGen-RewardBench layout.
        dimensions: which label columns to evaluate (those present and scored are).
        num_frames, fps, sampler, size: frame sampling (see :func:`video.io.load_video`);
            default: the model's ``native_frames`` if it declares one, else the fps rule.
        loader: a ``path → VideoClip`` callable replacing the above.
        out: a folder for ``metrics.json``, ``scores.jsonl`` and ``tie_sweep.png``.

    Returns:
        ``{"dimensions": {dim: {"accuracy_without_ties", "tie_aware_accuracy",
        "best_tie_threshold", "n_pairs", "n_ties"}}, "n_pairs", "n_skipped", "errors",
        "sweeps": {dim: {"thresholds", "accuracies"}}}``.

    Pairs whose videos cannot be read are skipped and counted (``errors`` says why).
    """
    pairs = read_pairs(pairs_path, dimensions)
    keys = sorted({(p.path_a, p.prompt) for p in pairs} | {(p.path_b, p.prompt) for p in pairs})
    errors: dict[str, str] = {}
    if isinstance(reward_or_scores, RewardModel):
        if "videos" not in reward_or_scores.inputs:
            raise ValueError(
                f"reward_or_scores: {reward_or_scores.reward_name} does not score videos "
                f"(inputs {reward_or_scores.inputs})"
            )
        if loader is None:
            from video.io import make_loader

            if num_frames is None and fps is None:
                num_frames = reward_or_scores.native_frames
            loader = make_loader(num_frames=num_frames, fps=fps, sampler=sampler, size=size)
        records, errors = _score_videos(reward_or_scores, keys, loader, batch_size, progress)
        lookup = records
    elif isinstance(reward_or_scores, Mapping):
        root = Path(pairs_path).parent
        table = {}
        for k, v in reward_or_scores.items():
            table[str(k)] = v
            if not Path(str(k)).is_absolute():
                table[str(root / str(k))] = v
        lookup = {}
        for path, prompt in keys:
            if path not in table:
                raise KeyError(f"reward_or_scores: no score for {path}")
            lookup[(path, prompt)] = table[path]
    else:
        raise TypeError(
            "reward_or_scores: expected a RewardModel or a mapping path → score, got "
            f"{type(reward_or_scores).__name__}"
        )

    result: dict[str, Any] = {"dimensions": {}, "sweeps": {}}
    usable = [p for p in pairs if p.path_a not in errors and p.path_b not in errors]
    for dim in dimensions:
        a, b, y = [], [], []
        for p in usable:
            if dim not in p.labels:
                continue
            va = _value(lookup[(p.path_a, p.prompt)], dim)
            vb = _value(lookup[(p.path_b, p.prompt)], dim)
            if va is None or vb is None:
                break  # the model does not score this dimension
            a.append(va)
            b.append(vb)
            y.append(p.labels[dim])
        else:
            if not y:
                continue
            sweep = tie_threshold_sweep(a, b, y)
            non_tie = any(v != 0 for v in y)
            result["dimensions"][dim] = {
                "accuracy_without_ties": pairwise_accuracy(a, b, y) if non_tie else None,
                "tie_aware_accuracy": sweep.best_accuracy,
                "best_tie_threshold": sweep.best_threshold,
                "n_pairs": len(y),
                "n_ties": sum(v == 0 for v in y),
            }
            result["sweeps"][dim] = {"thresholds": sweep.thresholds, "accuracies": sweep.accuracies}
    if not result["dimensions"]:
        raise ValueError(
            f"dimensions: none of {list(dimensions)} is both labelled in {pairs_path} and "
            "scored by the model"
        )
    result["n_pairs"] = len(pairs)
    result["n_skipped"] = len(pairs) - len(usable)
    result["errors"] = errors
    if out is not None:
        _write(Path(out), result, lookup if isinstance(reward_or_scores, RewardModel) else None)
    return result


#: the name the VideoAlign trainer looks up
evaluate_pairs_file = evaluate_pairs


def _write(out: Path, result: dict[str, Any], records: Mapping | None) -> None:
    from mmreward.report import plot_curves, write_json, write_jsonl

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result)
    if records is not None:
        write_jsonl(out / "scores.jsonl", list(records.values()))
    curves = {d: (s["thresholds"], s["accuracies"]) for d, s in result["sweeps"].items()}
    plot_curves(
        curves,
        out / "tie_sweep.png",
        xlabel="tie threshold ε on |r_A − r_B|",
        ylabel="tie-aware accuracy",
        title="tie-aware accuracy vs threshold",
    )


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_pairs`' result, one row per dimension."""
    lines = [
        f"{'dim':<8} {'acc w/o ties':>12} {'tie-aware':>10} {'ε*':>8} {'pairs':>6} {'ties':>5}"
    ]
    for dim, r in result["dimensions"].items():
        acc = "n/a" if r["accuracy_without_ties"] is None else f"{r['accuracy_without_ties']:.4f}"
        lines.append(
            f"{dim:<8} {acc:>12} {r['tie_aware_accuracy']:>10.4f} "
            f"{r['best_tie_threshold']:>8.4g} {r['n_pairs']:>6d} {r['n_ties']:>5d}"
        )
    return "\n".join(lines)
