"""Synthetic preference data with a known gold reward, built from scikit-learn's digits.

Each candidate is a coloured 32×32 digit blurred by a Gaussian of width σ; the gold
reward is −σ (sharper is better), so a trained reward model's accuracy can be checked
against the truth. Used by the training recipes in ``configs/rm`` and by tests.

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> paths = write_sharpness_preferences(d, n_train=8, n_eval=4)
>>> sorted(paths)
['eval', 'train']
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

_COLOURS = {
    "red": (0.9, 0.15, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
    "white": (0.95, 0.95, 0.95),
}
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_images(size: int = 32) -> tuple[Tensor, np.ndarray]:
    """All 1,797 scikit-learn digits as ``(N,1,size,size)`` in [0,1], with their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x, d.target


def colourise(mask: Tensor, colour: tuple[float, float, float], background: float = 0.05) -> Tensor:
    """A ``(1,H,W)`` intensity mask as an RGB image: ``colour`` on a grey ``background``."""
    c = torch.tensor(colour).view(3, 1, 1)
    return (mask * c + (1 - mask) * background).clamp(0, 1)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of a ``(C,H,W)`` image (σ in pixels; σ ≤ 0 is the identity)."""
    if sigma <= 1e-3:
        return x
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(x)
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return y[0]


def _save(x: Tensor, path: Path) -> None:
    arr = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)


def write_sharpness_preferences(
    out_dir: str | Path,
    n_train: int = 512,
    n_eval: int = 256,
    size: int = 32,
    max_sigma: float = 2.0,
    tie_gap: float = 0.05,
    seed: int = 0,
) -> dict[str, Path]:
    """Write PNGs and ``train.jsonl``/``eval.jsonl`` pairwise files; returns their paths.

    Each pair shows the same coloured digit at two blur widths σ_a, σ_b ~ U(0, max_sigma);
    the sharper one is chosen; ``|σ_a − σ_b| < tie_gap`` is labelled a tie. Train and eval
    use disjoint digit images.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    digits, labels = digit_images(size)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits))
    colours = list(_COLOURS)
    paths = {}
    start = 0
    for split, n in (("train", n_train), ("eval", n_eval)):
        pool = order[start : start + max(n, 1)]
        start += len(pool)
        rows = []
        for i in range(n):
            j = int(pool[i % len(pool)])
            colour = colours[int(rng.integers(len(colours)))]
            base = colourise(digits[j], _COLOURS[colour])
            sigmas = rng.uniform(0.0, max_sigma, size=2)
            names = []
            for s_idx, sigma in enumerate(sigmas):
                name = f"images/{split}_{i:05d}_{s_idx}.png"
                _save(gaussian_blur(base, float(sigma)), out / name)
                names.append(name)
            tie = abs(sigmas[0] - sigmas[1]) < tie_gap
            rows.append(
                {
                    "prompt": f"a sharp {colour} {DIGIT_NAMES[labels[j]]}",
                    "images": names,
                    "choice": "tie" if tie else int(sigmas[1] < sigmas[0]),
                    "gold": [-float(sigmas[0]), -float(sigmas[1])],
                }
            )
        path = out / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths[split] = path
    return paths
