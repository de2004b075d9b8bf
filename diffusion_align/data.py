"""Data for alignment runs: prompts, preference pairs, image-caption pairs, trajectory pairs.

Every source is indexed by a **cursor** (the number of items consumed so far) and orders
its items by a permutation drawn from ``(seed, epoch)`` alone, so ``batch(cursor, n)`` is a
pure function: a resumed run that restores the cursor sees exactly the same batches.

- :class:`PromptSource` — a text file (one prompt a line), JSONL (``{"prompt": …}``),
  a JSON list, an inline list, or ``world:train`` / ``world:test`` (the built-in world's
  prompt splits);
- :class:`PreferencePairs` — Diffusion-DPO data in mmreward's pairwise JSONL format
  (``{"prompt", "images": [a, b], "choice": 0|1}`` or ``{"prompt", "chosen", "rejected"}``;
  ties are dropped);
- :class:`ImageCaptions` — ``{"image", "prompt"}`` rows (ReFL's pre-training regulariser),
  or ``world:train`` renders;
- :class:`TrajectoryPairs` — D3PO pairs written by :func:`write_trajectory_pairs`, with
  a human-labels JSON.

>>> src = PromptSource(["a", "b", "c"], seed=0)
>>> batch, cursor = src.batch(0, 2)
>>> len(batch.prompts), cursor
(2, 2)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

WORLD_PREFIX = "world:"


def _order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _take(n: int, seed: int, cursor: int, size: int) -> list[int]:
    """Item indices ``cursor … cursor+size−1`` of the epoch-shuffled infinite stream."""
    out, cache = [], {}
    for k in range(cursor, cursor + size):
        epoch, pos = divmod(k, n)
        if epoch not in cache:
            cache[epoch] = _order(n, seed, epoch)
        out.append(cache[epoch][pos])
    return out


def _read_rows(path: Path) -> list[dict[str, Any]]:
    from mmreward.data import read_jsonl

    return [row for _, row in read_jsonl(path)]


def world_prompts(split: str) -> list[str]:
    """The built-in world's prompts of ``split`` (``train``, ``test`` or ``all``)."""
    from mmreward.world import data as world

    if split == "all":
        return [a.prompt for a in world.all_attributes()]
    splits = world.prompt_splits()
    if split not in splits:
        raise ValueError(
            f"world prompts: expected world:train, world:test or world:all, got {split!r}"
        )
    return [a.prompt for a in splits[split]]


def read_prompts(spec: str | Sequence[str]) -> list[str]:
    """Prompts from a file, ``world:<split>``, or a list (see the module docstring)."""
    if not isinstance(spec, str):
        prompts = [str(p) for p in spec]
    elif spec.startswith(WORLD_PREFIX):
        prompts = world_prompts(spec[len(WORLD_PREFIX) :])
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"data.prompts: {spec} is not a file (nor world:train|test)")
        if path.suffix == ".jsonl":
            prompts = [str(r.get("prompt", r.get("caption", ""))) for r in _read_rows(path)]
        elif path.suffix == ".json":
            loaded = json.loads(path.read_text())
            prompts = [p if isinstance(p, str) else p["prompt"] for p in loaded]
        else:
            prompts = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise ValueError(f"data.prompts: no prompts in {spec!r}")
    return prompts


@dataclass
class PromptBatch:
    """Prompts, plus image-caption pairs when a regulariser needs them."""

    prompts: list[str]
    images: Tensor | None = None  # (B',3,H,W) in [0,1]
    image_prompts: list[str] | None = None


@dataclass
class PreferenceBatch:
    """``winners``/``losers``: ``(B,3,H,W)`` in [0,1]; ``prompts``: ``B`` strings."""

    prompts: list[str]
    winners: Tensor
    losers: Tensor


@dataclass
class PairBatch:
    """D3PO pairs: ``trajectories (B,2,S+1,C,h,w)``, ``labels (B,)`` (1: first preferred,
    −1: second, 0: no preference), and the settings they were sampled with."""

    prompts: list[str]
    trajectories: Tensor
    labels: Tensor
    settings: dict[str, Any]


class PromptSource:
    """An endless, epoch-shuffled stream of prompts (optionally with image-caption pairs)."""

    def __init__(
        self, prompts: str | Sequence[str], seed: int = 0, captions: ImageCaptions | None = None
    ) -> None:
        self.prompts = read_prompts(prompts)
        self.seed, self.captions = seed, captions

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(self, cursor: int, size: int) -> tuple[PromptBatch, int]:
        idx = _take(len(self.prompts), self.seed, cursor, size)
        out = PromptBatch([self.prompts[i] for i in idx])
        if self.captions is not None:
            out.images, out.image_prompts = self.captions.get(cursor, size)
        return out, cursor + size


def _resize(x: Tensor, size: tuple[int, int] | None) -> Tensor:
    from mmreward.preprocess import resize

    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return resize(x[None], size, mode="bicubic").clamp(0, 1)[0]


class ImageCaptions:
    """Image-caption pairs for a denoising regulariser (``{"image", "prompt"}`` JSONL or
    ``world:train``: 1,024 seeded renders of the world's training split)."""

    def __init__(self, spec: str, size: tuple[int, int] | None = None, seed: int = 0) -> None:
        self.size, self.seed = size, seed
        if spec.startswith(WORLD_PREFIX):
            from mmreward.world.data import sample_world

            split = spec[len(WORLD_PREFIX) :]
            s = sample_world(1024, digits=split, prompts=split, seed=seed)
            self.items: list[Any] = [(_resize(im, size), p) for im, p in zip(s.images, s.prompts)]
        else:
            path = Path(spec)
            if not path.is_file():
                raise FileNotFoundError(f"data.pretrain: {spec} is not a file (nor world:train)")
            self.items = []
            for i, row in enumerate(_read_rows(path)):
                if "image" not in row or "prompt" not in row:
                    raise ValueError(f"{path}: row {i + 1} needs 'image' and 'prompt'")
                img = Path(row["image"])
                self.items.append((img if img.is_absolute() else path.parent / img, row["prompt"]))
        if not self.items:
            raise ValueError(f"data.pretrain: no image-caption pairs in {spec!r}")

    def get(self, cursor: int, size: int) -> tuple[Tensor, list[str]]:
        from mmreward.io import load_image

        idx = _take(len(self.items), self.seed + 1, cursor, size)
        images, prompts = [], []
        for i in idx:
            im, p = self.items[i]
            images.append(im if isinstance(im, Tensor) else _resize(load_image(im), self.size))
            prompts.append(p)
        return torch.stack(images), prompts


class PreferencePairs:
    """Diffusion-DPO pairs from a pairwise JSONL (relative paths resolve against its folder)."""

    def __init__(self, path: str | Path, size: tuple[int, int] | None = None, seed: int = 0):
        from mmreward.data import parse_pair, read_jsonl

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"data.preferences: no such file {path}")
        self.size, self.seed = size, seed
        self.pairs: list[tuple[str, Path, Path]] = []
        self.ties = 0
        for n, row in read_jsonl(path):
            ex = parse_pair(row, path.parent, f"{path}:{n}")
            if ex.kind != "images":
                raise ValueError(f"{path}:{n}: Diffusion-DPO needs image pairs, got {ex.kind}")
            if ex.label == 0:
                self.ties += 1
                continue
            a, b = ex.candidates
            win, lose = (a, b) if ex.label == 1 else (b, a)
            self.pairs.append((ex.prompt, Path(win), Path(lose)))
        if not self.pairs:
            raise ValueError(f"data.preferences: {path} holds no strict preference pairs")

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def prompts(self) -> list[str]:
        return [p for p, _, _ in self.pairs]

    def batch(self, cursor: int, size: int) -> tuple[PreferenceBatch, int]:
        from mmreward.io import load_image

        idx = _take(len(self.pairs), self.seed, cursor, size)
        prompts, wins, loses = [], [], []
        for i in idx:
            p, w, lo = self.pairs[i]
            prompts.append(p)
            wins.append(_resize(load_image(w), self.size))
            loses.append(_resize(load_image(lo), self.size))
        return PreferenceBatch(prompts, torch.stack(wins), torch.stack(loses)), cursor + size


def world_preference_pairs(
    split: str, directory: str | Path, pipeline: Any, seed: int = 0, per_prompt: int = 6,
    pairs_per_prompt: int = 15,
) -> Path:  # fmt: skip
    """The built-in world's simulated preference study over ``pipeline``'s samples.

    ``per_prompt`` candidates per prompt of ``split`` (``train``/``test``), each pair labelled
    by one of the world's simulated annotators (noisy gold, see
    :mod:`mmreward.world.annotators`). Written once to ``directory/<split>.jsonl`` (+ images)
    and reused afterwards; returns the JSONL path.
    """
    import mmreward
    from mmreward.world.annotators import simulate_study

    jsonl = Path(directory) / f"{split}.jsonl"
    if not jsonl.is_file():
        gold = mmreward.load("gold.world")
        simulate_study(pipeline, gold, world_prompts(split), directory, split,
                       per_prompt=per_prompt, pairs_per_prompt=pairs_per_prompt, seed=seed)  # fmt: skip
    return jsonl


# -- D3PO pairs for human labelling -------------------------------------------------------------

PAIRS_INDEX = "pairs.jsonl"
PAIRS_SETTINGS = "settings.json"


def read_labels(path: str | Path) -> dict[str, int]:
    """Human labels: ``{"id": 0 | 1 | "tie" | null}`` (JSON object) or a JSON/JSONL list of
    ``{"id", "choice"}`` rows. Returns id → 1 (first preferred), −1 (second) or 0 (skip)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.labels: no such file {path}")
    if path.suffix == ".jsonl":
        raw: Any = [row for row in _read_rows(path)]
    else:
        raw = json.loads(path.read_text())
    if isinstance(raw, list):
        raw = {str(r["id"]): r.get("choice") for r in raw}
    out = {}
    for k, v in raw.items():
        if v in (0, 1):
            out[str(k)] = 1 if v == 0 else -1
        elif v in ("tie", None, 0.5):
            out[str(k)] = 0
        else:
            raise ValueError(f"{path}: label of {k!r} must be 0, 1, 'tie' or null, got {v!r}")
    return out


class TrajectoryPairs:
    """Labelled D3PO pairs: ``directory`` from :func:`write_trajectory_pairs` + labels.

    Trajectories are read from disk batch by batch (only the index is kept in memory).
    """

    def __init__(self, directory: str | Path, labels: str | Path, seed: int = 0) -> None:
        directory = Path(directory)
        index = directory / PAIRS_INDEX
        if not index.is_file():
            raise FileNotFoundError(
                f"data.pairs: {index} not found; write pairs with "
                "`mmreward align --config … --write-pairs N`"
            )
        self.directory = directory
        self.settings = json.loads((directory / PAIRS_SETTINGS).read_text())
        lab = read_labels(labels)
        self.items: list[tuple[str, str, int]] = [
            (row["prompt"], row["trajectory"], lab[str(row["id"])])
            for row in _read_rows(index)
            if lab.get(str(row["id"]), 0)
        ]
        if not self.items:
            raise ValueError(
                f"data.labels: no pair of {directory} has a strict preference in {labels}"
            )
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    @property
    def prompts(self) -> list[str]:
        return [p for p, _, _ in self.items]

    def batch(self, cursor: int, size: int) -> tuple[PairBatch, int]:
        from safetensors.torch import load_file

        idx = _take(len(self.items), self.seed, cursor, size)
        prompts = [self.items[i][0] for i in idx]
        traj = torch.stack(
            [load_file(str(self.directory / self.items[i][1]))["trajectory"] for i in idx]
        ).float()
        labels = torch.tensor([self.items[i][2] for i in idx])
        return PairBatch(prompts, traj, labels, self.settings), cursor + size


def write_trajectory_pairs(
    policy: Any,
    prompts: Sequence[str],
    directory: str | Path,
    num_pairs: int,
    sample_cfg: Any,
    seed: int = 0,
    batch_size: int = 8,
) -> Path:
    """Sample ``num_pairs`` D3PO pairs (two trajectories from one start latent per prompt)
    and write images, trajectories (fp16 safetensors), ``pairs.jsonl`` and a
    ``labels.json`` template (``null`` = unlabelled) for a human to fill in."""
    from safetensors.torch import save_file

    from diffusion_align.sampling import sample
    from mmreward.report import save_image_grid, save_png, write_json, write_jsonl

    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    (directory / "trajectories").mkdir(exist_ok=True)
    schedule = policy.schedule(sample_cfg.num_steps, sample_cfg.eta, sample_cfg.noise_level)
    if not schedule.stochastic:
        raise ValueError(
            "D3PO pairs need a stochastic sampler: sample.eta > 0 (or noise_level > 0)"
        )
    rows = []
    src = PromptSource(prompts, seed)
    g = torch.Generator().manual_seed(seed)
    for start in range(0, num_pairs, batch_size):
        n = min(batch_size, num_pairs - start)
        batch, _ = src.batch(start, n)
        w = sample_cfg.guidance_scale
        cond = policy.encode_prompt(batch.prompts, guidance=w != 1.0).repeat_interleave(2)
        x_t = policy.initial_noise(n, g).repeat_interleave(2, dim=0)
        with torch.no_grad():
            out = sample(policy, cond, schedule, guidance_scale=w, latents=x_t, generator=g,
                         return_trajectory=True)  # fmt: skip
            images = policy.decode(out.latents).cpu()
        traj = out.trajectory.view(n, 2, *out.trajectory.shape[1:]).half().cpu()
        for k in range(n):
            pid = f"{start + k:06d}"
            a = save_png(images[2 * k], directory / "images" / f"{pid}_a.png")
            b = save_png(images[2 * k + 1], directory / "images" / f"{pid}_b.png")
            save_image_grid(images[2 * k : 2 * k + 2], directory / "images" / f"{pid}_pair.png", 2)
            tfile = f"trajectories/{pid}.safetensors"
            save_file({"trajectory": traj[k].contiguous()}, str(directory / tfile))
            rows.append({"id": pid, "prompt": batch.prompts[k], "images": [
                a.relative_to(directory).as_posix(), b.relative_to(directory).as_posix()],
                "trajectory": tfile})  # fmt: skip
    settings = {
        "num_steps": sample_cfg.num_steps,
        "eta": sample_cfg.eta,
        "noise_level": sample_cfg.noise_level,
        "guidance_scale": sample_cfg.guidance_scale,
    }
    write_json(directory / PAIRS_SETTINGS, settings)
    write_jsonl(directory / PAIRS_INDEX, rows)
    labels = directory / "labels.json"
    if not labels.exists():
        write_json(labels, {r["id"]: None for r in rows})
    return directory
