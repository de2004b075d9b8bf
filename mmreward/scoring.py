"""Batch scoring jobs: many files in, one JSONL row per item out; resumable and sharded.

- Inputs: a directory of images (prompts from a JSONL/sidecar ``.txt``) or a JSONL file
  of rows ``{"id"?, "image" | "video" | "response", "prompt"?}``.
- Output: ``out.jsonl`` with one row per item — ``{"index", "id", "score", ...}`` or
  ``{"index", "id", "error"}`` for an item that cannot be read or scored (the job goes
  on). Rows are flushed batch by batch, so a killed job loses at most the batch in flight;
  rerunning skips every id already written (a half-written last line is discarded).
- Under ``accelerate launch`` each process scores every ``world_size``-th pending item
  into its own part file; the main process then merges all rows in input order, so the
  result equals a single-process run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmreward.checkpoint import atomic_write
from mmreward.data import read_jsonl
from mmreward.errors import InputError, ItemReadError
from mmreward.interface import RewardInput, RewardModel, RewardOutput
from mmreward.io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, load_image


@dataclass
class Item:
    """One thing to score. ``kind`` is images, videos or responses."""

    index: int
    id: str
    kind: str
    value: Any  # a path for images/videos, the text for responses
    prompt: str | None = None


def _prompt_table(prompts: str | Path | None) -> dict[str, str]:
    if prompts is None:
        return {}
    table = {}
    for n, row in read_jsonl(prompts):
        key = row.get("id", row.get("image", row.get("path", row.get("file"))))
        if key is None or "prompt" not in row:
            raise ValueError(f"{prompts}:{n}: expected 'prompt' and one of id/image/path/file")
        table[str(key)] = row["prompt"]
    return table


def collect_items(source: str | Path, prompts: str | Path | None = None) -> list[Item]:
    """Enumerate the items of a directory or a JSONL file (see the module docstring).

    In a directory, every image/video file (recursively, sorted) is an item whose id is its
    relative path; its prompt comes from the ``prompts`` JSONL (keyed by id, relative path
    or file name) or from a sidecar ``<name>.txt``.
    """
    source = Path(source)
    table = _prompt_table(prompts)
    items: list[Item] = []
    if source.is_dir():
        files = sorted(
            p
            for p in source.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
        )
        for i, p in enumerate(files):
            rel = p.relative_to(source).as_posix()
            prompt = table.get(rel, table.get(p.name, table.get(p.stem)))
            sidecar = p.with_suffix(".txt")
            if prompt is None and sidecar.is_file():
                prompt = sidecar.read_text(encoding="utf-8").strip()
            kind = "videos" if p.suffix.lower() in VIDEO_EXTENSIONS else "images"
            items.append(Item(i, rel, kind, p, prompt))
    elif source.is_file():
        for i, (n, row) in enumerate(read_jsonl(source)):
            kinds = [k for k in ("image", "video", "response") if k in row]
            if len(kinds) != 1:
                raise ValueError(f"{source}:{n}: expected one of image/video/response")
            value = row[kinds[0]]
            if kinds[0] != "response":
                value = Path(value) if Path(value).is_absolute() else source.parent / value
            item_id = str(row.get("id", row.get(kinds[0]) if kinds[0] != "response" else n))
            prompt = row.get("prompt", table.get(item_id))
            items.append(Item(i, item_id, kinds[0] + "s", value, prompt))
    else:
        raise FileNotFoundError(f"input: {source} is neither a directory nor a JSONL file")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = sorted({x for x in ids if ids.count(x) > 1})[:5]
        raise ValueError(f"input: item ids must be unique, duplicated: {dup}")
    return items


def read_rows(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Rows of a JSONL output; a torn last line (killed writer) is dropped (and cut if ``repair``)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows, good = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    if repair and good < len(data):
        with path.open("r+b") as f:
            f.truncate(good)
    return rows


def _load_item(item: Item, load_video: Any = None) -> Any:
    if item.kind == "images":
        return load_image(item.value)
    if item.kind == "videos":
        if load_video is None:
            raise ItemReadError(str(item.value), "video decoding needs the `video` package")
        return load_video(item.value)
    return item.value


def _score_group(
    reward: RewardModel, kind: str, values: list[Any], prompts: list[str | None]
) -> RewardOutput:
    args: dict[str, Any] = {kind: values}
    if "prompts" in reward.inputs:
        if any(p is None for p in prompts):
            raise InputError("prompts", "a prompt for every item", "a missing prompt")
        args["prompts"] = prompts
    if kind == "videos":
        args["fps"] = [getattr(v, "fps", None) for v in values]
        args["videos"] = [getattr(v, "frames", v) for v in values]
        if any(f is None for f in args["fps"]):
            del args["fps"]
    return reward.score(**args, batch_size=len(values))


def score_batch(reward: RewardModel, items: Sequence[Item], load_video: Any = None) -> list[dict]:
    """Score ``items`` together; any that fail alone become error rows, the rest are scored."""
    rows: dict[int, dict[str, Any]] = {}
    loaded: list[tuple[Item, Any]] = []
    for it in items:
        try:
            loaded.append((it, _load_item(it, load_video)))
        except (ItemReadError, InputError, OSError) as e:
            rows[it.index] = {"error": str(e)}

    def run(group: list[tuple[Item, Any]]) -> None:
        if not group:
            return
        try:
            out = _score_group(
                reward, group[0][0].kind, [v for _, v in group], [it.prompt for it, _ in group]
            )
        except (ValueError, RuntimeError) as e:
            if len(group) == 1:
                rows[group[0][0].index] = {"error": f"{type(e).__name__}: {e}"}
                return
            for g in group:  # isolate the bad item(s)
                run([g])
            return
        for (it, value), row in zip(group, out.to_rows()):
            if not math.isfinite(row["score"]):
                row = {"error": f"non-finite score {row['score']}"}
            elif hasattr(value, "record"):  # a decoded video: the frames and fps it was scored on
                row.update(value.record())
            rows[it.index] = row

    by_kind: dict[str, list[tuple[Item, Any]]] = {}
    for pair in loaded:
        by_kind.setdefault(pair[0].kind, []).append(pair)
    for group in by_kind.values():
        run(group)
    out = []
    for it in items:
        base = {"index": it.index, "id": it.id}
        if it.kind != "responses":
            base["path"] = str(it.value)
        if it.prompt is not None:
            base["prompt"] = it.prompt
        out.append({**base, **rows[it.index]})
    return out


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def run_scoring(
    reward: RewardModel,
    items: Sequence[Item],
    out_path: str | Path,
    batch_size: int = 32,
    progress: bool = True,
    load_video: Any = None,
) -> dict[str, Any]:
    """Score ``items`` into ``out_path`` (resumable, shard-aware); returns the summary.

    The summary (also written to ``<out>.summary.json``): counts, score statistics,
    wall time, and the reward name.
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    state = PartialState()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    part = out_path.with_name(f"{out_path.name}.part{state.process_index}")
    if state.is_main_process:
        read_rows(out_path, repair=True)
    state.wait_for_everyone()
    done = {r["id"] for r in read_rows(out_path)}
    parts = sorted(out_path.parent.glob(f"{out_path.name}.part*"))
    for p in parts:
        done |= {r["id"] for r in read_rows(p, repair=(p == part))}
    pending = [it for it in items if it.id not in done]
    mine = pending[state.process_index :: state.num_processes]
    t0 = time.time()
    bar = tqdm(
        total=len(mine),
        desc=f"scoring with {reward.reward_name}",
        disable=not (progress and state.is_local_main_process),
    )
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        _append(part, score_batch(reward, chunk, load_video))
        bar.update(len(chunk))
    bar.close()
    state.wait_for_everyone()
    summary: dict[str, Any] = {}
    if state.is_main_process:
        rows = read_rows(out_path)
        for p in sorted(out_path.parent.glob(f"{out_path.name}.part*")):
            rows += read_rows(p)
        order = {it.id: it.index for it in items}
        seen: dict[str, dict[str, Any]] = {}
        for r in rows:
            seen.setdefault(r["id"], r)  # first written wins; nothing is scored twice
        merged = sorted(seen.values(), key=lambda r: order.get(r["id"], math.inf))
        text = "".join(json.dumps(r) + "\n" for r in merged)
        atomic_write(out_path, lambda p: p.write_text(text, encoding="utf-8"))
        for p in out_path.parent.glob(f"{out_path.name}.part*"):
            p.unlink()
        summary = summarise(merged, reward.reward_name, time.time() - t0, len(pending))
        atomic_write(
            out_path.with_name(out_path.stem + ".summary.json"),
            lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"),
        )
    state.wait_for_everyone()
    return summary


def summarise(rows: list[dict[str, Any]], reward: str, seconds: float, n_new: int) -> dict:
    """Counts and score statistics of a scored JSONL."""
    scores = torch.tensor([r["score"] for r in rows if "score" in r], dtype=torch.float64)
    stats: dict[str, Any] = {
        "reward": reward,
        "n_items": len(rows),
        "n_scored": int(scores.numel()),
        "n_errors": sum("error" in r for r in rows),
        "n_scored_this_run": n_new,
        "seconds_this_run": round(seconds, 3),
    }
    if scores.numel():
        stats.update(
            mean=scores.mean().item(),
            std=scores.std(unbiased=False).item(),
            min=scores.min().item(),
            max=scores.max().item(),
        )
    return stats


def score_inputs(reward: RewardModel, batch: RewardInput) -> RewardOutput:
    """Score an in-memory batch (thin alias used by the CLI for symmetry)."""
    return reward(batch)
