"""The world's data: attributes, prompts, seeded splits and image rendering.

Every image is one of scikit-learn's bundled 8×8 handwritten digits, upscaled (bilinear)
into a 32×32 RGB canvas, drawn in a named colour on a grey background, small or large,
with a little position and colour jitter. Its caption names all four attributes:

    "a small red seven on a dark background"

Splits are seeded and disjoint on two axes:

- **digit images** (the 1,797 sklearn scans) → ``train`` / ``val`` / ``test``;
- **prompts** (the 200 attribute combinations) → ``train`` (seen by every trained model)
  and ``test`` (held out: the diffusion model, CLIP and the proxies never see them, so
  evaluating on them measures compositional generalisation).

>>> s = sample_world(4, digits="test", prompts="test", seed=0)
>>> s.images.shape, s.prompts[0].startswith("a ")
(torch.Size([4, 3, 32, 32]), True)
>>> parse_prompt("a large blue three on a light background")
{'digit': 3, 'colour': 'blue', 'background': 'light', 'size': 'large'}
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmreward.synthetic import DIGIT_NAMES, colourise

# -- the world's vocabulary (one line each) -------------------------------------------
IMAGE_SIZE = 32  # canvas side in pixels
DIGITS = DIGIT_NAMES  # "zero" … "nine"
#: digit colours, RGB in [0,1] (well apart in hue, so colour is checkable analytically)
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.12, 0.72, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.62, 0.20, 0.85),
}
#: background grey levels
BACKGROUNDS: dict[str, float] = {"dark": 0.08, "light": 0.90}
#: digit height in pixels (sklearn digits span all 8 rows of their scan)
SIZES: dict[str, int] = {"small": 16, "large": 26}
POSITION_JITTER = {"small": 4, "large": 1}  # max shift (pixels) of the digit's box
COLOUR_JITTER = 0.04  # uniform ± jitter of each RGB channel of the ink
BACKGROUND_JITTER = 0.03  # uniform ± jitter of the background grey
ATTRIBUTES = ("digit", "colour", "background", "size")
SPLIT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}  # of the 1,797 digit scans
TEST_PROMPT_FRACTION = 0.2  # attribute combinations held out from training
WORLD_SEED = 0  # the seed of the canonical splits


@dataclass(frozen=True)
class Attributes:
    """One point of the world: what a prompt asks for and what an image shows."""

    digit: int
    colour: str
    background: str
    size: str

    def __post_init__(self) -> None:
        if not 0 <= self.digit <= 9:
            raise ValueError(f"digit: expected 0..9, got {self.digit}")
        for name, table in (("colour", COLOURS), ("background", BACKGROUNDS), ("size", SIZES)):
            if getattr(self, name) not in table:
                raise ValueError(
                    f"{name}: expected one of {list(table)}, got {getattr(self, name)!r}"
                )

    @property
    def prompt(self) -> str:
        """The caption, e.g. ``"a small red seven on a dark background"``."""
        return f"a {self.size} {self.colour} {DIGITS[self.digit]} on a {self.background} background"

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


def all_attributes() -> list[Attributes]:
    """Every attribute combination (200), in a fixed order."""
    return [
        Attributes(d, c, b, s)
        for d in range(10)
        for c in COLOURS
        for b in BACKGROUNDS
        for s in SIZES
    ]


_WORDS = {
    **{w: ("digit", i) for i, w in enumerate(DIGITS)},
    **{str(i): ("digit", i) for i in range(10)},
    **{w: ("colour", w) for w in COLOURS},
    **{w: ("background", w) for w in BACKGROUNDS},
    **{w: ("size", w) for w in SIZES},
}


def parse_prompt(text: str) -> dict[str, int | str]:
    """The world attributes a prompt names (any subset; other words are ignored).

    "dark"/"light" name the background; a prompt naming two values of one attribute is
    an error (``ValueError`` naming the words).

    >>> parse_prompt("a red 7")
    {'digit': 7, 'colour': 'red'}
    """
    found: dict[str, int | str] = {}
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if word not in _WORDS:
            continue
        attr, value = _WORDS[word]
        if attr in found and found[attr] != value:
            raise ValueError(f"prompt {text!r}: names two {attr}s ({found[attr]!r} and {value!r})")
        found[attr] = value
    return {a: found[a] for a in ATTRIBUTES if a in found}


# ------------------------------------------------------------------------------ splits


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def digit_splits(seed: int = WORLD_SEED) -> dict[str, np.ndarray]:
    """Indices of sklearn's digit scans per split (stratified by class, seeded, disjoint)."""
    _, labels = _digits()
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {k: [] for k in SPLIT_FRACTIONS}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(SPLIT_FRACTIONS["train"] * len(idx))
        n_val = round(SPLIT_FRACTIONS["val"] * len(idx))
        out["train"] += idx[:n_train].tolist()
        out["val"] += idx[n_train : n_train + n_val].tolist()
        out["test"] += idx[n_train + n_val :].tolist()
    return {k: np.sort(np.array(v, dtype=np.int64)) for k, v in out.items()}


def prompt_splits(seed: int = WORLD_SEED) -> dict[str, list[Attributes]]:
    """Attribute combinations: ``train`` and held-out ``test`` (every value stays in train).

    The test set holds ``TEST_PROMPT_FRACTION`` of the combinations and is balanced over
    digits (4 of each digit's 20 combinations).
    """
    rng = np.random.default_rng(seed + 1)
    combos = all_attributes()
    per_digit = len(combos) // 10
    k = round(TEST_PROMPT_FRACTION * per_digit)
    test_idx: list[int] = []
    for d in range(10):
        test_idx += (d * per_digit + rng.choice(per_digit, size=k, replace=False)).tolist()
    test = set(test_idx)
    return {
        "train": [a for i, a in enumerate(combos) if i not in test],
        "test": [a for i, a in enumerate(combos) if i in test],
    }


def _resolve_prompts(prompts: str | Sequence[Attributes]) -> list[Attributes]:
    if isinstance(prompts, str):
        if prompts == "all":
            return all_attributes()
        splits = prompt_splits()
        if prompts not in splits:
            raise ValueError(f"prompts: expected 'train', 'test', 'all' or a list, got {prompts!r}")
        return splits[prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: expected at least one Attributes, got none")
    return prompts


# --------------------------------------------------------------------------- rendering


def render(
    ink: Tensor,
    attrs: Attributes,
    offset: tuple[int, int] = (0, 0),
    colour: tuple[float, float, float] | None = None,
    background: float | None = None,
) -> Tensor:
    """Draw one digit scan ``ink`` ((8,8) in [0,1]) as a ``(3,32,32)`` image in [0,1].

    The scan is upscaled (bilinear) to the size's height (width scaled alike), centred,
    shifted by ``offset`` = (dy, dx) pixels, and used as the alpha of ``colour`` (default:
    the named colour) over a ``background`` grey (default: the named level).
    """
    side = SIZES[attrs.size]
    glyph = F.interpolate(
        ink.view(1, 1, 8, 8).float(), size=(side, side), mode="bilinear", align_corners=False
    )[0].clamp(0, 1)
    alpha = torch.zeros(1, IMAGE_SIZE, IMAGE_SIZE)
    top = (IMAGE_SIZE - side) // 2 + offset[0]
    left = (IMAGE_SIZE - side) // 2 + offset[1]
    if not (0 <= top <= IMAGE_SIZE - side and 0 <= left <= IMAGE_SIZE - side):
        raise ValueError(f"offset: {offset} moves the {attrs.size} digit off the canvas")
    alpha[:, top : top + side, left : left + side] = glyph
    rgb = COLOURS[attrs.colour] if colour is None else colour
    grey = BACKGROUNDS[attrs.background] if background is None else background
    return colourise(alpha, rgb, grey)


@dataclass
class WorldSample:
    """Rendered images with the attributes they show.

    Attributes:
        images: ``(N,3,32,32)`` float in [0,1].
        attributes: one :class:`Attributes` per image.
        digit_index: ``(N,)`` index of each image's sklearn digit scan.
    """

    images: Tensor
    attributes: list[Attributes]
    digit_index: np.ndarray

    @property
    def prompts(self) -> list[str]:
        return [a.prompt for a in self.attributes]

    def __len__(self) -> int:
        return len(self.attributes)


def sample_world(
    n: int,
    digits: str = "train",
    prompts: str | Sequence[Attributes] = "train",
    seed: int = 0,
    jitter: bool = True,
) -> WorldSample:
    """``n`` images of digit scans from split ``digits``, attributes drawn from ``prompts``.

    Args:
        n: number of images.
        digits: ``"train"``, ``"val"`` or ``"test"`` (sklearn scans, see :func:`digit_splits`).
        prompts: ``"train"``, ``"test"`` (held-out combinations), ``"all"`` or a list of
            :class:`Attributes` to draw from (uniformly, with replacement).
        seed: draws scans, attributes and jitter; the same seed gives the same images.
        jitter: random position/colour/background jitter (off: canonical renders).

    Each drawn combination's digit decides which scans of that class are eligible.
    """
    if n < 1:
        raise ValueError(f"n: expected ≥ 1, got {n}")
    images, labels = _digits()
    splits = digit_splits()
    if digits not in splits:
        raise ValueError(f"digits: expected one of {list(splits)}, got {digits!r}")
    pool = splits[digits]
    by_class = [pool[labels[pool] == c] for c in range(10)]
    combos = _resolve_prompts(prompts)
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(combos), size=n)
    out, attrs, index = [], [], []
    for p in picks:
        a = combos[int(p)]
        j = int(rng.choice(by_class[a.digit]))
        offset, colour, grey = (0, 0), None, None
        if jitter:
            m = POSITION_JITTER[a.size]
            offset = (int(rng.integers(-m, m + 1)), int(rng.integers(-m, m + 1)))
            base = np.asarray(COLOURS[a.colour])
            colour = tuple(np.clip(base + rng.uniform(-1, 1, 3) * COLOUR_JITTER, 0, 1).tolist())
            grey = float(BACKGROUNDS[a.background] + rng.uniform(-1, 1) * BACKGROUND_JITTER)
        out.append(render(torch.from_numpy(images[j]), a, offset, colour, grey))
        attrs.append(a)
        index.append(j)
    return WorldSample(torch.stack(out), attrs, np.asarray(index, dtype=np.int64))


def canonical_images(attributes: Sequence[Attributes], digits: str = "test") -> Tensor:
    """One unjittered render per combination (the first scan of that digit in ``digits``)."""
    images, labels = _digits()
    pool = digit_splits()[digits]
    first = {c: int(pool[labels[pool] == c][0]) for c in range(10)}
    return torch.stack([render(torch.from_numpy(images[first[a.digit]]), a) for a in attributes])
