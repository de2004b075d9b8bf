"""World videos: digits of the built-in world that move or draw themselves.

Every clip shows one of scikit-learn's 8×8 digit scans (the image world's digits, colours
and backgrounds, :mod:`mmreward.world.data`) on a ``size``×``size`` canvas for ``frames``
frames. Its prompt is the image world's caption plus a motion phrase:

    "a small red seven on a dark background moving left to right"

- **expert** clips do what the prompt says: the digit slides along a straight line at
  constant speed, goes round a circle, or draws itself stroke by stroke (the scan's ink
  pixels appear in the order of a pen tour, nearest neighbour first).
- **nonexpert** clips try the same prompt and fail at the motion: random jumps to a new
  place every frame, the expert path with large jitter, or (for drawing) pixels that
  appear in random order and flicker.

The attributes, scan, motion and colour jitter depend on ``seed`` only, so
``make_clip("expert", s)`` and ``make_clip("nonexpert", s)`` are the same prompt done
well and badly. :func:`write_world_videos` writes clips as H.264 MP4 with PyAV (so the
decord reading path is exercised) plus a ``manifest.jsonl``.

>>> frames, meta = make_clip("expert", seed=0, frames=8)
>>> frames.shape, frames.dtype.name, len(meta["trajectory"])
((8, 32, 32, 3), 'uint8', 8)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmreward.world.data import (
    BACKGROUND_JITTER,
    BACKGROUNDS,
    COLOUR_JITTER,
    COLOURS,
    IMAGE_SIZE,
    SIZES,
    Attributes,
    _digits,
    all_attributes,
    digit_splits,
)

KINDS = ("expert", "nonexpert")
#: motion → prompt phrase
MOTIONS: dict[str, str] = {
    "right": "moving left to right",
    "left": "moving right to left",
    "up": "moving upwards",
    "down": "moving downwards",
    "circle": "moving in a circle",
    "draw": "drawing itself",
}
NONEXPERT_STYLES = {"move": ("jumps", "jitter"), "draw": ("scramble",)}
JITTER_FRACTION = 0.6  # nonexpert "jitter": noise std as a fraction of the free room
FLICKER = 0.35  # nonexpert "scramble": share of revealed pixels hidden in each frame
DEFAULT_FPS = 8.0


# -- building blocks -------------------------------------------------------------------
def _attributes(value: Attributes | Mapping[str, Any] | None, rng: np.random.Generator):
    if value is None:  # small digits leave room to move
        pool = [a for a in all_attributes() if a.size == "small"]
        return pool[int(rng.integers(len(pool)))]
    if isinstance(value, Attributes):
        return value
    if isinstance(value, Mapping):
        return Attributes(**value)
    raise TypeError(f"attributes: expected Attributes, a dict or None, got {type(value).__name__}")


def _glyph(scan: np.ndarray, side: int) -> np.ndarray:
    """An (8,8) scan in [0,1] upscaled (bilinear) to (side, side)."""
    x = torch.from_numpy(scan).view(1, 1, 8, 8).float()
    return (
        F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)[0, 0]
        .clamp(0, 1)
        .numpy()
    )


def _pen_tour(scan: np.ndarray, floor: float = 0.2) -> list[tuple[int, int]]:
    """Ink pixels of a scan in pen order: start at the top-most, then nearest neighbour."""
    ink = [(int(r), int(c)) for r, c in zip(*np.nonzero(scan > floor))]
    if not ink:
        return []
    order = [min(ink)]
    left = set(ink) - {order[0]}
    while left:
        r, c = order[-1]
        nxt = min(left, key=lambda p: ((p[0] - r) ** 2 + (p[1] - c) ** 2, p))
        order.append(nxt)
        left.remove(nxt)
    return order


def _path(motion: str, frames: int, room: int, rng: np.random.Generator) -> np.ndarray:
    """(T,2) offsets (dy, dx) of the digit's box from the centred position, smooth."""
    t = np.linspace(0.0, 1.0, frames)
    side = rng.uniform(-0.5, 0.5) * room  # the fixed coordinate of a straight slide
    if motion == "right":
        return np.stack([np.full(frames, side), -room + 2 * room * t], 1)
    if motion == "left":
        return np.stack([np.full(frames, side), room - 2 * room * t], 1)
    if motion == "down":
        return np.stack([-room + 2 * room * t, np.full(frames, side)], 1)
    if motion == "up":
        return np.stack([room - 2 * room * t, np.full(frames, side)], 1)
    if motion == "circle":
        phase = rng.uniform(0, 2 * math.pi)
        angle = phase + 2 * math.pi * np.arange(frames) / frames
        return np.stack([room * np.sin(angle), room * np.cos(angle)], 1)
    if motion == "draw":
        return np.zeros((frames, 2))
    raise ValueError(f"motion: expected one of {list(MOTIONS)}, got {motion!r}")


def _compose(
    alpha: np.ndarray, size: int, top: int, left: int, rgb: np.ndarray, grey: float
) -> np.ndarray:
    canvas = np.zeros((size, size), dtype=np.float32)
    h, w = alpha.shape
    canvas[top : top + h, left : left + w] = alpha
    img = canvas[..., None] * rgb[None, None, :] + (1 - canvas[..., None]) * grey
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


# -- clips -----------------------------------------------------------------------------
def make_clip(
    kind: str,
    seed: int,
    frames: int = 16,
    size: int = 32,
    attributes: Attributes | Mapping[str, Any] | None = None,
    motion: str | None = None,
    digits: str = "train",
) -> tuple[np.ndarray, dict[str, Any]]:
    """One world clip: uint8 frames ``(T,H,W,3)`` and its metadata.

    Args:
        kind: ``"expert"`` (the motion the prompt asks for, smooth) or ``"nonexpert"``
            (the same prompt with random jumps, heavy jitter or scrambled drawing).
        seed: decides attributes, digit scan, motion and colour jitter (shared by both
            kinds) and, separately, the nonexpert's randomness.
        frames: number of frames T (≥ 2).
        size: canvas side in pixels (≥ 16); the digit scales with it.
        attributes: an :class:`~mmreward.world.data.Attributes` or dict (default: a random
            combination with a small digit, which leaves room to move).
        motion: one of :data:`MOTIONS` (default: drawn from the seed).
        digits: the split of digit scans to draw from (``train``/``val``/``test``).

    Returns:
        ``frames`` and ``meta = {"prompt", "kind", "motion", "style", "attributes",
        "trajectory", "fps", "digit_index"}``; ``trajectory`` is the digit's centre (or the
        pen, when drawing) as ``(x, y)`` canvas pixels per frame.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if frames < 2:
        raise ValueError(f"frames: expected ≥ 2, got {frames}")
    if size < 16:
        raise ValueError(f"size: expected ≥ 16 pixels, got {size}")
    rng = np.random.default_rng([seed, 0])  # shared by both kinds
    attrs = _attributes(attributes, rng)
    if motion is None:
        motion = list(MOTIONS)[int(rng.integers(len(MOTIONS)))]
    elif motion not in MOTIONS:
        raise ValueError(f"motion: expected one of {list(MOTIONS)}, got {motion!r}")
    scans, labels = _digits()
    pool = digit_splits()[digits]
    candidates = pool[labels[pool] == attrs.digit]
    digit_index = int(rng.choice(candidates))
    scan = scans[digit_index]
    rgb = np.clip(np.asarray(COLOURS[attrs.colour]) + rng.uniform(-1, 1, 3) * COLOUR_JITTER, 0, 1)
    grey = float(BACKGROUNDS[attrs.background] + rng.uniform(-1, 1) * BACKGROUND_JITTER)
    side = max(4, round(SIZES[attrs.size] * size / IMAGE_SIZE))
    room = (size - side) // 2  # free pixels on each side of the centred digit
    path = _path(motion, frames, room, rng)

    noise = np.random.default_rng([seed, 1])  # the nonexpert's own randomness
    style = "smooth" if motion != "draw" else "strokes"
    if kind == "nonexpert":
        options = NONEXPERT_STYLES["draw" if motion == "draw" else "move"]
        style = options[int(noise.integers(len(options)))]
        if style == "jumps":
            path = noise.uniform(-room, room, size=(frames, 2))
        elif style == "jitter":
            path = path + noise.normal(0.0, JITTER_FRACTION * max(room, 1), size=(frames, 2))
    offsets = np.clip(np.round(path), -room, room).astype(int)
    base = (size - side) // 2

    out, trajectory = [], []
    if motion == "draw":
        tour = _pen_tour(scan)
        if style == "scramble":
            tour = [tour[i] for i in noise.permutation(len(tour))]
        for t in range(frames):
            k = max(1, math.ceil(len(tour) * (t + 1) / frames))
            shown = tour[:k]
            if style == "scramble" and t < frames - 1:
                keep = noise.random(len(shown)) >= FLICKER
                shown = [p for p, m in zip(shown, keep) if m] or shown[-1:]
            partial = np.zeros_like(scan)
            for r, c in shown:
                partial[r, c] = scan[r, c]
            out.append(_compose(_glyph(partial, side), size, base, base, rgb, grey))
            r, c = tour[k - 1]  # the pen: centre of the last pixel drawn
            cell = side / 8.0
            trajectory.append((base + (c + 0.5) * cell, base + (r + 0.5) * cell))
    else:
        alpha = _glyph(scan, side)
        for dy, dx in offsets:
            out.append(_compose(alpha, size, base + dy, base + dx, rgb, grey))
            trajectory.append((base + dx + side / 2.0, base + dy + side / 2.0))
    meta = {
        "prompt": f"{attrs.prompt} {MOTIONS[motion]}",
        "kind": kind,
        "motion": motion,
        "style": style,
        "attributes": {**attrs.as_dict(), "motion": motion},
        "trajectory": [(float(x), float(y)) for x, y in trajectory],
        "fps": DEFAULT_FPS,
        "digit_index": digit_index,
    }
    return np.stack(out), meta


def make_clips(
    n: int, kind: str, seed: int, frames: int = 16, size: int = 32, **kwargs: Any
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``n`` clips of one kind, ``(N,T,H,W,3)`` uint8; clip ``i`` uses seed ``seed + i``.

    >>> x, metas = make_clips(2, "nonexpert", seed=3, frames=4)
    >>> x.shape, [m["kind"] for m in metas]
    ((2, 4, 32, 32, 3), ['nonexpert', 'nonexpert'])
    """
    if n < 1:
        raise ValueError(f"n: expected ≥ 1, got {n}")
    clips = [make_clip(kind, seed + i, frames, size, **kwargs) for i in range(n)]
    return np.stack([c[0] for c in clips]), [c[1] for c in clips]


# -- files -----------------------------------------------------------------------------
def write_mp4(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = DEFAULT_FPS,
    codec: str = "libx264",
    crf: int = 12,
    gop: int | None = None,
) -> Path:
    """Write uint8 ``(T,H,W,3)`` frames as MP4 (yuv420p) with PyAV; returns the path.

    ``codec`` is ``"libx264"`` (H.264, quality ``crf``) or ``"mpeg4"``; ``gop`` is the
    keyframe interval (encoder default when None). Height and width must be even
    (yuv420p halves the chroma planes). The file appears atomically (written beside it,
    then renamed).

    >>> import tempfile
    >>> p = write_mp4(tempfile.mkdtemp() + "/a.mp4", make_clip("expert", 0, frames=4)[0])
    >>> p.stat().st_size > 0
    True
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames: expected a (T,H,W,3) uint8 array, got shape {frames.shape} "
            f"dtype {frames.dtype}"
        )
    t, h, w, _ = frames.shape
    if t == 0:
        raise ValueError("frames: expected at least one frame, got 0")
    if h % 2 or w % 2:
        raise ValueError(f"frames: yuv420p needs an even height and width, got {h}×{w}")
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps: expected a positive number, got {fps}")
    if codec not in ("libx264", "mpeg4"):
        raise ValueError(f"codec: expected 'libx264' or 'mpeg4', got {codec!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=path.parent, prefix=f".{path.stem}.")
    os.close(fd)
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(crf), "preset": "veryfast"}
            else:
                stream.bit_rate = max(200_000, 40 * h * w)
            if gop is not None:
                stream.codec_context.gop_size = int(gop)
            for arr in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_world_videos(
    out_dir: str | os.PathLike,
    n_per_kind: int,
    seed: int = 0,
    frames: int = 16,
    size: int = 32,
    fps: float = DEFAULT_FPS,
    progress: bool = False,
) -> Path:
    """Write ``n_per_kind`` expert and nonexpert clips as MP4 plus ``manifest.jsonl``.

    Expert clip ``i`` and nonexpert clip ``i`` share seed ``seed + i`` (same prompt).
    Manifest rows: ``{"id", "video", "prompt", "kind", "motion", "style", "attributes",
    "trajectory", "fps", "frames", "seed"}`` with ``video`` relative to ``out_dir``
    (the row shape ``mmreward score --input manifest.jsonl`` reads). Returns the manifest.
    """
    from tqdm.auto import tqdm

    if n_per_kind < 1:
        raise ValueError(f"n_per_kind: expected ≥ 1, got {n_per_kind}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    bar = tqdm(total=2 * n_per_kind, desc="world videos", disable=not progress)
    for kind in KINDS:
        for i in range(n_per_kind):
            clip, meta = make_clip(kind, seed + i, frames, size)
            name = f"{kind}_{i:04d}.mp4"
            write_mp4(out_dir / name, clip, fps=fps)
            rows.append(
                {
                    "id": f"{kind}_{i:04d}",
                    "video": name,
                    **{k: meta[k] for k in ("prompt", "kind", "motion", "style", "attributes")},
                    "trajectory": meta["trajectory"],
                    "fps": fps,
                    "frames": frames,
                    "seed": seed + i,
                }
            )
            bar.update(1)
    bar.close()
    manifest = out_dir / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest
