"""The world's gold reward: a held-out digit classifier plus analytic attribute checks.

The gold reward is the ground truth every experiment in the world is measured against.
It is deterministic (fixed weights, eval mode, no sampling) and is **never** used to train
a proxy: proxies only see the simulated annotators' noisy preferences.

For a prompt naming some of the world's attributes and an image, each check returns a
probability-like sub-score in [0,1]:

- ``digit``: p(target digit) from a small CNN over the image's *ink map* (distance of each
  pixel from the estimated background colour, normalised), trained on clean world renders
  (train digit scans, blur/noise augmentation) with an 11th "no legible digit" class
  (blank canvases, blobs, overlaid digits, scribbles);
- ``colour``: the ink's mean opponent-colour vector (Hasler & Süsstrunk's rg, yb) compared
  in angle with each named colour, softmax(κ·cos Δθ), gated by how colourful the ink is;
- ``background``: the luminance of the median border colour, σ((0.5 − L)·k) for "dark";
- ``size``: the ink's height (rows whose ink exceeds a threshold, soft count) against
  the midpoint between the small and large heights;
- ``sharpness``: R = E[(∇²x)²] / E[|∇x|²] (contrast-invariant; blur lowers it), divided by
  the median R of clean renders and clipped to 1.

The score is the weighted mean of the sub-scores of the attributes the prompt names, plus
sharpness (weights: digit 0.4, colour 0.2, background 0.1, size 0.1, sharpness 0.2).
Attributes the prompt does not name are not checked (their sub-score reads 1), except the
digit: a prompt naming none still expects a legible one (``digit`` = 1 − p(no digit)).

>>> import mmreward                                                   # doctest: +SKIP
>>> gold = mmreward.load("gold.world")                                # doctest: +SKIP
>>> gold.score(images, prompts=["a small red seven on a dark background"] * len(images))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmreward.checkpoint import load_state_dict_strict, read_state_dict, save_state_dict
from mmreward.errors import InputError, WeightsNotFoundError
from mmreward.interface import RewardInput, RewardModel, RewardOutput
from mmreward.preprocess import resize
from mmreward.world.data import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    IMAGE_SIZE,
    SIZES,
    parse_prompt,
)

NONE_CLASS = 10  # the classifier's "no legible digit" class
WEIGHTS = {"digit": 0.4, "colour": 0.2, "background": 0.1, "size": 0.1, "sharpness": 0.2}
CLASSIFIER_FILE = "classifier.safetensors"
CONFIG_FILE = "gold.json"


def assets_dir() -> Path:
    """The folder of the committed world assets (inside the installed package)."""
    return Path(str(resources.files("mmreward.world").joinpath("assets")))


# -- building blocks -------------------------------------------------------------------


def _border(x: Tensor, width: int = 2) -> Tensor:
    """The pixels of the ``width``-pixel frame of each image: ``(B,C,K)``."""
    top, bottom = x[..., :width, :], x[..., -width:, :]
    left, right = x[..., width:-width, :width], x[..., width:-width, -width:]
    return torch.cat([t.flatten(2) for t in (top, bottom, left, right)], dim=2)


def background_colour(x: Tensor) -> Tensor:
    """Per-channel median of the 2-pixel border: ``(B,3)`` (the canvas behind the digit)."""
    return _border(x).median(dim=2).values


def ink_map(x: Tensor, floor: float = 0.1) -> Tensor:
    """``(B,1,H,W)`` in [0,1]: each pixel's RGB distance from the background, normalised.

    The distance is divided by the mean of the 16 largest distances (at least ``floor``),
    so a faint digit and a bold one give the same map while a blank canvas stays near 0.
    """
    bg = background_colour(x)[:, :, None, None]
    d = ((x - bg).pow(2).sum(1, keepdim=True) + 1e-8).sqrt() / math.sqrt(3.0)
    peak = d.flatten(1).topk(16, dim=1).values.mean(1).clamp_min(floor)
    return (d / peak[:, None, None, None]).clamp(0, 1)


def _opponent(rgb: Tensor) -> Tensor:
    """Hasler & Süsstrunk opponent channels (rg, yb) along dim 1."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    return torch.stack([r - g, 0.5 * (r + g) - b], dim=1)


def sharpness_ratio(x: Tensor) -> Tensor:
    """R = E[(∇²x)²] / E[|∇x|²] over RGB (valid finite differences); ``(B,)``."""
    lap = (x[..., 1:-1, 2:] + x[..., 1:-1, :-2] + x[..., 2:, 1:-1] + x[..., :-2, 1:-1]) - 4 * x[
        ..., 1:-1, 1:-1
    ]
    gx = x[..., :, 1:] - x[..., :, :-1]
    gy = x[..., 1:, :] - x[..., :-1, :]
    grad = gx.pow(2).flatten(1).mean(1) + gy.pow(2).flatten(1).mean(1)
    return lap.pow(2).flatten(1).mean(1) / (grad + 1e-6)


class DigitClassifier(nn.Module):
    """A small CNN over the ink map at half resolution → 11 logits (10 digits + "none").

    The 32×32 ink map is average-pooled to 16×16 (a small digit is then 8 pixels tall,
    the resolution of its scan), then conv + max-pool stages and an MLP.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 64), hidden: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.AvgPool2d(2)]
        c_in = 1
        for k, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GELU()]
            if k < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        side = IMAGE_SIZE // 2 ** len(channels)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * side * side, hidden), nn.GELU(), nn.Linear(hidden, 11)
        )

    def forward(self, ink: Tensor) -> Tensor:
        return self.head(self.features(ink))


# -- the model -------------------------------------------------------------------------


class GoldReward(RewardModel):
    """The world's gold reward (see the module docstring). Deterministic and differentiable.

    Args:
        sharpness_ref: median sharpness ratio of clean renders (set by the build).
        colour_kappa: concentration of the colour softmax over cos Δθ.
        colour_gate: opponent-vector length below which the ink counts as grey.
        size_threshold: ink height (pixels) between small and large.
        weights: per-check weights of the score.
    """

    inputs = ("prompts", "images")
    differentiable = True
    native_resolution = (IMAGE_SIZE, IMAGE_SIZE)
    sub_score_names = ("digit", "colour", "background", "size", "sharpness")

    def __init__(
        self,
        sharpness_ref: float = 0.5,
        colour_kappa: float = 8.0,
        colour_gate: float = 0.12,
        size_threshold: float | None = None,
        weights: Mapping[str, float] | None = None,
        classifier_channels: Sequence[int] = (32, 64, 64),
    ) -> None:
        super().__init__()
        if size_threshold is None:  # clean renders: small ≤ 16 rows, large ≥ 23 (bilinear edges)
            size_threshold = 19.5
        weights = dict(WEIGHTS if weights is None else weights)
        if set(weights) != set(WEIGHTS):
            raise ValueError(f"weights: expected keys {sorted(WEIGHTS)}, got {sorted(weights)}")
        self.init_kwargs = {
            "sharpness_ref": float(sharpness_ref),
            "colour_kappa": float(colour_kappa),
            "colour_gate": float(colour_gate),
            "size_threshold": float(size_threshold),
            "weights": weights,
            "classifier_channels": list(classifier_channels),
        }
        self.sharpness_ref = float(sharpness_ref)
        self.colour_kappa = float(colour_kappa)
        self.colour_gate = float(colour_gate)
        self.size_threshold = float(size_threshold)
        self.weights = weights
        self.classifier = DigitClassifier(classifier_channels)
        hue = _opponent(torch.tensor(list(COLOURS.values())).view(-1, 3))
        self.register_buffer("colour_dirs", F.normalize(hue, dim=1), persistent=False)

    # -- analytic checks (float32) ------------------------------------------------------
    def _prepare(self, images: Tensor) -> Tensor:
        x = images.float()
        if tuple(x.shape[-2:]) != self.native_resolution:
            x = resize(x, self.native_resolution, mode="bilinear", antialias=True)
        return x

    def attribute_probs(self, images: Tensor) -> dict[str, Tensor]:
        """Per-image probabilities of every attribute value and the sharpness sub-score.

        Returns ``digit (B,11)`` (index 10 = no legible digit), ``colour (B,5)`` (in
        :data:`COLOURS` order, not summing to 1 when the ink is grey), ``background (B,2)``,
        ``size (B,2)``, ``sharpness (B,)``.
        """
        x = self._prepare(images)
        ink = ink_map(x)
        param = next(self.classifier.parameters())
        logits = self.classifier(ink.to(param.dtype)).float()
        # colour: ink-weighted opponent vector, its angle against each named colour
        opp = _opponent(x)
        w = ink.pow(2)
        mean_opp = (opp * w).flatten(2).sum(2) / (w.flatten(2).sum(2) + 1e-6)  # (B,2)
        length = (mean_opp.pow(2).sum(1) + 1e-8).sqrt()
        cos = (mean_opp / length[:, None]) @ self.colour_dirs.float().T  # (B,5)
        gate = torch.sigmoid((length - self.colour_gate) * 40.0)
        colour = torch.softmax(self.colour_kappa * cos, dim=1) * gate[:, None]
        # background: luminance of the border's median colour
        bg = background_colour(x)
        lum = 0.299 * bg[:, 0] + 0.587 * bg[:, 1] + 0.114 * bg[:, 2]
        dark = torch.sigmoid((0.5 - lum) * 20.0)
        # size: soft count of rows whose strongest ink exceeds 0.35
        rows = torch.sigmoid((ink.amax(dim=3)[:, 0] - 0.35) * 25.0).sum(1)
        large = torch.sigmoid(rows - self.size_threshold)
        sharp = (sharpness_ratio(x) / self.sharpness_ref).clamp(max=1.0)
        return {
            "digit": torch.softmax(logits, dim=1),
            "colour": colour,
            "background": torch.stack([dark, 1 - dark], dim=1),
            "size": torch.stack([1 - large, large], dim=1),
            "sharpness": sharp,
        }

    @torch.no_grad()
    def predict(self, images: Tensor) -> list[dict[str, Any]]:
        """The attributes each image shows (argmax; digit ``None`` / colour ``None`` if absent)."""
        p = self.attribute_probs(images)
        colours, bgs, sizes = list(COLOURS), list(BACKGROUNDS), list(SIZES)
        out = []
        for i in range(images.shape[0]):
            d = int(p["digit"][i].argmax())
            c = int(p["colour"][i].argmax())
            out.append(
                {
                    "digit": None if d == NONE_CLASS else d,
                    "colour": colours[c] if p["colour"][i, c] > 0.5 else None,
                    "background": bgs[int(p["background"][i].argmax())],
                    "size": sizes[int(p["size"][i].argmax())],
                    "sharpness": float(p["sharpness"][i]),
                }
            )
        return out

    def compute(self, batch: RewardInput) -> RewardOutput:
        targets = []
        for i, prompt in enumerate(batch.prompts):
            try:
                targets.append(parse_prompt(prompt))
            except ValueError as e:
                raise InputError(
                    f"prompts[{i}]", "a prompt naming each attribute once", str(e)
                ) from e
        p = self.attribute_probs(batch.images)
        n = len(targets)
        device = p["sharpness"].device
        tables = {
            "digit": list(range(10)),
            "colour": list(COLOURS),
            "background": list(BACKGROUNDS),
            "size": list(SIZES),
        }
        subs: dict[str, Tensor] = {}
        correct: dict[str, Tensor] = {}
        total = self.weights["sharpness"] * p["sharpness"]
        norm = torch.full((n,), self.weights["sharpness"], device=device)
        for attr in ATTRIBUTES:
            named = torch.tensor([attr in t for t in targets], device=device)
            index = torch.tensor(
                [tables[attr].index(t[attr]) if attr in t else 0 for t in targets], device=device
            )
            prob = p[attr].gather(1, index[:, None])[:, 0]
            hit = (p[attr].argmax(1) == index) & (prob > 0.5)
            if attr == "digit":  # no digit named: a legible digit of any class is expected
                legible = 1 - p["digit"][:, NONE_CLASS]
                prob = torch.where(named, prob, legible)
                hit = torch.where(named, hit, p["digit"].argmax(1) != NONE_CLASS)
                named = torch.ones_like(named)
            subs[attr] = torch.where(named, prob, torch.ones_like(prob))
            correct[attr] = torch.where(named, hit, torch.ones_like(hit))
            total = total + self.weights[attr] * named.float() * prob
            norm = norm + self.weights[attr] * named.float()
        subs["sharpness"] = p["sharpness"]
        all_correct = torch.stack([correct[a] for a in ATTRIBUTES], 1).all(1)
        extras = {f"correct_{a}": correct[a] for a in ATTRIBUTES}
        extras["correct"] = all_correct
        return RewardOutput(scores=total / norm, sub_scores=subs, extras=extras)


def load_gold(weights: str | Path | None = None, **overrides: Any) -> GoldReward:
    """Build ``gold.world``: the committed classifier and config (or ``weights``: a folder
    holding ``classifier.safetensors`` + ``gold.json``, or a classifier file)."""
    folder = assets_dir() / "gold" if weights is None else Path(weights)
    path = folder / CLASSIFIER_FILE if folder.is_dir() else folder
    if not path.is_file():
        raise WeightsNotFoundError(
            f"gold.world: {path} does not exist; regenerate the world's assets with "
            "`python -m mmreward.world.build --stages gold`"
        )
    cfg_path = path.parent / CONFIG_FILE
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    model = GoldReward(**{**config, **overrides})
    load_state_dict_strict(model.classifier, read_state_dict(path), source=str(path))
    return model.eval()


# -- training the classifier (run by the build) --------------------------------------


def _none_alphas(n: int, rng: np.random.Generator) -> Tensor:
    """Alpha maps of things that are not a legible digit: blanks, blobs, overlays, scribbles."""
    from mmreward.world.data import _digits

    scans, labels = _digits()
    out = []
    for k in range(n):
        kind = k % 4
        if kind == 0:  # a blank canvas (maybe a faint smudge)
            a = torch.from_numpy(rng.random((1, 1, 4, 4)).astype(np.float32))
            a = a * float(rng.uniform(0, 0.3))
            a = F.interpolate(a, size=(IMAGE_SIZE,) * 2, mode="bilinear", align_corners=False)
        elif kind == 1:  # a blob of low-frequency noise
            side = int(rng.integers(3, 7))
            a = torch.from_numpy(rng.random((1, 1, side, side)).astype(np.float32))
            a = F.interpolate(a, size=(IMAGE_SIZE,) * 2, mode="bicubic", align_corners=False)
            a = ((a - float(rng.uniform(0.4, 0.7))) * 4).clamp(0, 1)
        elif kind == 2:  # two digits of different classes drawn over each other
            i, j = rng.integers(len(scans), size=2)
            while labels[j] == labels[i]:
                j = rng.integers(len(scans))
            pair = torch.from_numpy(
                np.maximum(scans[i], np.roll(scans[j], int(rng.integers(-2, 3)), 1))
            )
            side = int(rng.choice(list(SIZES.values())))
            a = F.interpolate(pair.view(1, 1, 8, 8), size=(side, side), mode="bilinear")
            a = F.pad(a, [(IMAGE_SIZE - side) // 2, (IMAGE_SIZE - side + 1) // 2] * 2)
        else:  # scribbles: high-frequency noise
            a = torch.from_numpy(
                (rng.random((1, 1, IMAGE_SIZE, IMAGE_SIZE)) > 0.7).astype(np.float32)
            )
            a = a * float(rng.uniform(0.3, 1.0))
        out.append(a[0].clamp(0, 1))
    return torch.stack(out)


def classifier_data(
    n: int, digits: str, seed: int, none_fraction: float = 0.15, augment: bool = True
) -> tuple[Tensor, Tensor]:
    """``n`` world renders (+ "none" negatives) as images and labels (0..9, 10 = none)."""
    from mmreward.synthetic import colourise, gaussian_blur
    from mmreward.world.data import sample_world

    rng = np.random.default_rng(seed)
    n_none = int(round(n * none_fraction))
    sample = sample_world(n - n_none, digits=digits, prompts="all", seed=seed)
    labels = [a.digit for a in sample.attributes] + [NONE_CLASS] * n_none
    negatives = [
        colourise(
            alpha,
            COLOURS[list(COLOURS)[int(rng.integers(len(COLOURS)))]],
            float(list(BACKGROUNDS.values())[int(rng.integers(len(BACKGROUNDS)))]),
        )
        for alpha in _none_alphas(n_none, rng)
    ]
    images = torch.cat([sample.images, torch.stack(negatives)]) if negatives else sample.images
    if augment:
        out = []
        for x in images:
            if rng.random() < 0.5:
                x = gaussian_blur(x, float(rng.uniform(0.2, 1.2)))
            if rng.random() < 0.5:
                x = x + torch.from_numpy(
                    rng.normal(0, rng.uniform(0.01, 0.06), x.shape).astype(np.float32)
                )
            out.append(x.clamp(0, 1))
        images = torch.stack(out)
    return images, torch.tensor(labels)


def train_classifier(
    n_train: int = 8000,
    epochs: int = 6,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    channels: Sequence[int] = (32, 64, 64),
    n_eval: int = 2000,
    log: Any = print,
) -> tuple[DigitClassifier, dict[str, float]]:
    """Train the gold classifier on train-split renders; accuracy on test-split renders."""
    torch.manual_seed(seed)
    x, y = classifier_data(n_train, "train", seed)
    ink = ink_map(x)
    model = DigitClassifier(channels)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for k in range(0, len(x), batch_size):
            idx = perm[k : k + batch_size]
            loss = F.cross_entropy(model(ink[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log(f"gold classifier epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}")
    model.eval()
    metrics = {}
    for name, (digits, augment) in {
        "test_clean": ("test", False),
        "test_augmented": ("test", True),
    }.items():
        xe, ye = classifier_data(n_eval, digits, seed + 1000, augment=augment)
        with torch.no_grad():
            pred = model(ink_map(xe)).argmax(1)
        metrics[f"accuracy_{name}"] = float((pred == ye).float().mean())
    return model, metrics


def reference_sharpness(n: int = 2000, seed: int = 0, quantile: float = 0.25) -> float:
    """A low quantile of the sharpness ratio of clean (jittered, unblurred) train renders.

    With the 25% quantile, three in four clean renders get the full sharpness sub-score.
    """
    from mmreward.world.data import sample_world

    x = sample_world(n, digits="train", prompts="all", seed=seed).images
    return float(sharpness_ratio(x).quantile(quantile))


def save_gold(classifier: DigitClassifier, config: Mapping[str, Any], folder: str | Path) -> Path:
    """Write ``classifier.safetensors`` and ``gold.json`` into ``folder``."""
    folder = Path(folder)
    save_state_dict(classifier.state_dict(), folder / CLASSIFIER_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2) + "\n")
    return folder
