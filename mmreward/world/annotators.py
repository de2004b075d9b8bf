"""Simulated annotators: gold scores of generated images → noisy preference pairs.

Each annotator compares two images of one prompt by their gold scores g_a, g_b:

    d = (g_a − g_b) + T·ξ,  ξ ~ Logistic(0, 1)
    "tie"  if |d| < τ,  else  a ≻ b  if d > 0

so without ties P(a ≻ b) = σ((g_a − g_b)/T), the Bradley-Terry model with temperature T
(Bradley & Terry 1952); the tie band τ gives a threshold model of ties. With probability
ε the annotator is careless and answers a or b uniformly at random (label noise).

Pairs are written in the toolkit's pairwise JSONL format (see :mod:`mmreward.data`):
``{"prompt", "images": [a, b], "choice": 0 | 1 | "tie", "annotator", "gold": [g_a, g_b]}``,
so :class:`~mmreward.train.RewardModelTrainer` trains on them as on any real dataset.

>>> ann = Annotator(temperature=0.05, tie_band=0.0, label_noise=0.0, seed=0)
>>> ann.label(0.9, 0.1) in (0, 1)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmreward.report import write_jsonl

TEMPERATURE = 0.05  # BT temperature on the gold scale (gold scores lie in [0,1])
TIE_BAND = 0.02  # |d| below this is a tie
LABEL_NOISE = 0.1  # probability of a careless (uniformly random) answer


@dataclass
class Annotator:
    """One simulated annotator with its own random stream (see the module docstring)."""

    temperature: float = TEMPERATURE
    tie_band: float = TIE_BAND
    label_noise: float = LABEL_NOISE
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.tie_band < 0 or not 0 <= self.label_noise <= 1:
            raise ValueError(
                "annotator: expected temperature ≥ 0, tie_band ≥ 0, 0 ≤ label_noise ≤ 1, got "
                f"{self.temperature}, {self.tie_band}, {self.label_noise}"
            )
        self._rng = np.random.default_rng(self.seed)

    def label(self, gold_a: float, gold_b: float) -> int | str:
        """0 (a preferred), 1 (b preferred) or ``"tie"``."""
        if self._rng.random() < self.label_noise:
            return int(self._rng.integers(2))
        u = self._rng.random()
        xi = np.log(u / (1 - u)) if 0 < u < 1 else 0.0  # standard logistic sample
        d = (gold_a - gold_b) + self.temperature * xi
        if abs(d) < self.tie_band:
            return "tie"
        return 0 if d > 0 else 1


def make_pairs(
    groups: Sequence[Sequence[int]], pairs_per_group: int, seed: int = 0
) -> list[tuple[int, int]]:
    """Distinct index pairs within each group (e.g. images of one prompt), seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for g in groups:
        g = list(g)
        all_pairs = [(g[i], g[j]) for i in range(len(g)) for j in range(i + 1, len(g))]
        k = min(pairs_per_group, len(all_pairs))
        for p in rng.choice(len(all_pairs), size=k, replace=False):
            a, b = all_pairs[int(p)]
            out.append((a, b) if rng.random() < 0.5 else (b, a))  # random order
    return out


def annotate(
    pairs: Sequence[tuple[int, int]],
    gold: Sequence[float],
    prompts: Sequence[str],
    images: Sequence[str],
    annotators: Sequence[Annotator],
    per_pair: int = 1,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Rows of the pairwise JSONL: each pair labelled by ``per_pair`` distinct annotators.

    ``images`` are the paths written into the rows (relative to the JSONL's folder).
    """
    if per_pair > len(annotators):
        raise ValueError(f"per_pair: {per_pair} > the {len(annotators)} annotators")
    rng = np.random.default_rng(seed)
    rows = []
    for a, b in pairs:
        for k in rng.choice(len(annotators), size=per_pair, replace=False):
            rows.append(
                {
                    "prompt": prompts[a],
                    "images": [images[a], images[b]],
                    "choice": annotators[int(k)].label(float(gold[a]), float(gold[b])),
                    "annotator": int(k),
                    "gold": [float(gold[a]), float(gold[b])],
                }
            )
    return rows


def write_pairs(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write the rows as JSONL (atomically)."""
    return write_jsonl(path, rows)


def _as_int(choice: int | str) -> int:
    return {0: 1, 1: -1, "tie": 0}[choice]


def agreement(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Agreement statistics of annotated rows.

    - ``inter_annotator``: among pairs labelled twice or more, how often two labels of
      one pair agree (ties count as a label), averaged over label pairs;
    - ``cohen_kappa``: the same, corrected for chance agreement (Cohen 1960);
    - ``accuracy_vs_gold``: how often a non-tie label matches the gold order;
    - ``tie_rate``: the fraction of labels that are ties.
    """
    by_pair: dict[tuple, list[int]] = {}
    hits, n_decided, ties = 0, 0, 0
    for r in rows:
        y = _as_int(r["choice"])
        by_pair.setdefault((r["prompt"], *r["images"]), []).append(y)
        ties += y == 0
        ga, gb = r["gold"]
        if y != 0 and ga != gb:
            n_decided += 1
            hits += (y > 0) == (ga > gb)
    agree, total = 0, 0
    labels_all = []
    for ys in by_pair.values():
        labels_all += ys
        for i in range(len(ys)):
            for j in range(i + 1, len(ys)):
                agree += ys[i] == ys[j]
                total += 1
    out = {
        "n_labels": float(len(rows)),
        "n_pairs": float(len(by_pair)),
        "tie_rate": ties / max(1, len(rows)),
        "accuracy_vs_gold": hits / max(1, n_decided),
    }
    if total:
        p_o = agree / total
        freq = np.bincount(np.asarray(labels_all) + 1, minlength=3) / len(labels_all)
        p_e = float((freq**2).sum())
        out["inter_annotator"] = p_o
        out["cohen_kappa"] = (p_o - p_e) / (1 - p_e) if p_e < 1 else 1.0
    return out


# -- a simulated labelling study ---------------------------------------------------------

#: (guidance scale, DDIM steps) of the candidates generated per prompt: a spread of
#: qualities (no CFG → wrong attributes; few steps → blur), as a real study would show.
STUDY_SETTINGS: tuple[tuple[float, int], ...] = (
    (3.0, 20),
    (1.0, 20),
    (3.0, 5),
    (5.0, 10),
    (2.0, 10),
    (1.0, 5),
)


def simulate_study(
    pipe,
    gold,
    prompts: Sequence[str],
    out_dir: str | Path,
    name: str,
    per_prompt: int = len(STUDY_SETTINGS),
    settings: Sequence[tuple[float, int]] = STUDY_SETTINGS,
    pairs_per_prompt: int = 15,
    labels_per_pair: int = 1,
    n_annotators: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Generate candidates, score them with gold, pair them and have annotators label them.

    Writes ``out_dir/images/<name>_<i>.png``, ``out_dir/<name>.jsonl`` (pairwise rows) and
    returns ``{"images", "prompts", "settings", "gold", "pairs", "rows", "paths", "jsonl"}``.
    Candidate ``i`` of a prompt uses ``settings[i % len(settings)]``; seeds are drawn from
    ``seed``, so the same call gives the same images.
    """
    import torch

    from mmreward.report import save_png
    from mmreward.world.diffusion import generate

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    expanded = [p for p in prompts for _ in range(per_prompt)]
    cand_settings = [settings[i % len(settings)] for _ in prompts for i in range(per_prompt)]
    seeds = rng.choice(2**31 - 1, size=len(expanded), replace=False)
    images = torch.zeros(len(expanded), 3, 32, 32)
    for setting in sorted(set(cand_settings)):
        idx = [i for i, s in enumerate(cand_settings) if s == setting]
        images[idx] = generate(
            pipe,
            [expanded[i] for i in idx],
            seeds=[int(seeds[i]) for i in idx],
            guidance_scale=setting[0],
            num_inference_steps=setting[1],
        )
    gold_scores = gold.score(images, prompts=expanded, batch_size=256).scores.float()
    paths = []
    for i, x in enumerate(images):
        rel = f"images/{name}_{i:05d}.png"
        save_png(x, out / rel)
        paths.append(rel)
    groups = [list(range(k * per_prompt, (k + 1) * per_prompt)) for k in range(len(prompts))]
    pairs = make_pairs(groups, pairs_per_prompt, seed=seed + 1)
    annotators = [Annotator(seed=seed * 100 + k) for k in range(n_annotators)]
    rows = annotate(pairs, gold_scores.tolist(), expanded, paths, annotators, labels_per_pair, seed)
    jsonl = write_pairs(out / f"{name}.jsonl", rows)
    return {
        "images": images,
        "prompts": expanded,
        "settings": cand_settings,
        "gold": gold_scores,
        "pairs": pairs,
        "rows": rows,
        "paths": paths,
        "jsonl": jsonl,
    }
