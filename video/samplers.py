"""Frame samplers: which frames of a ``T``-frame video to decode, and the fps that gives.

Every sampler returns a :class:`FrameSelection` (the indices plus the fps actually
sampled), so results can record what the reward model saw — fps mismatch between
training and scoring is the most reported problem with video reward models.

- **uniform count**: ``round(linspace(0, T−1, n))`` (VideoAlign / Qwen2-VL, Liu et al.
  2025). ``n > T`` repeats frames.
- **target fps** (VideoAlign rule): ``n = T / fps_video · fps``, clamped to
  ``[4, min(768, T)]`` and floored to an even count (Qwen2-VL merges frame pairs), then
  uniform indices. ``fps`` and ``num_frames`` are exclusive.
- **TSN segmental** (Wang et al. 2016; InstructVideo): ``k`` equal segments, one frame
  each — random within the segment (training, with a ``torch.Generator``) or its centre.
- **strided**: ``n`` frames ``stride`` apart (one clip, centred or from ``start``), and
  :func:`strided_clips` for every window of a video.

The sampled fps is ``n · fps_video / T`` for the count-based samplers (the rule of
``qwen_vl_utils``) and ``fps_video / stride`` for strided clips.

>>> sample_frames(300, 30.0, num_frames=4).indices
[0, 100, 199, 299]
>>> sel = sample_frames(300, 30.0, fps=2.0)     # 10 s at 2 fps → 20 frames
>>> len(sel.indices), sel.fps
(20, 2.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

SAMPLERS = ("uniform", "segment", "segment-centre", "strided")
DEFAULT_FPS = 2.0  # VideoAlign's default sampling rate
FPS_MIN_FRAMES = 4  # VideoAlign / Qwen2-VL clamp of the fps rule
FPS_MAX_FRAMES = 768
FRAME_FACTOR = 2  # the fps rule returns an even count (Qwen2-VL temporal patch of 2)


@dataclass
class FrameSelection:
    """Which frames were taken and the fps that amounts to.

    Attributes:
        indices: frame numbers (0-based, decode order), in playback order.
        fps: frames per second actually sampled (None when the video's fps is unknown).
        num_source_frames: frame count ``T`` of the video.
        source_fps: the video's (average) frame rate, or None.
        sampler: the sampler's name.
    """

    indices: list[int]
    fps: float | None
    num_source_frames: int
    source_fps: float | None
    sampler: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_total(total: int) -> int:
    if not isinstance(total, (int, np.integer)) or total < 1:
        raise ValueError(f"num_source_frames: expected a frame count ≥ 1, got {total!r}")
    return int(total)


def _check_count(n: int, name: str = "num_frames") -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name}: expected an integer ≥ 1, got {n!r}")
    return int(n)


def uniform_indices(total: int, n: int) -> list[int]:
    """``round(linspace(0, T−1, n))`` (round half to even); ``n > T`` repeats frames.

    >>> uniform_indices(10, 4)
    [0, 3, 6, 9]
    >>> uniform_indices(1, 3)
    [0, 0, 0]
    """
    total, n = _check_total(total), _check_count(n)
    return np.rint(np.linspace(0.0, total - 1, n)).astype(np.int64).tolist()


def fps_num_frames(
    total: int,
    video_fps: float,
    fps: float = DEFAULT_FPS,
    min_frames: int = FPS_MIN_FRAMES,
    max_frames: int = FPS_MAX_FRAMES,
) -> int:
    """The VideoAlign frame count for a target ``fps``.

    ``n = floor_even(clamp(T / video_fps · fps, ceil_even(min_frames),
    floor_even(min(max_frames, T))))``. A video needs at least 2 frames.

    >>> fps_num_frames(300, 30.0, fps=2.0), fps_num_frames(300, 30.0, fps=0.1)
    (20, 4)
    >>> fps_num_frames(5, 8.0, fps=2.0)          # clamp to the frames there are, even
    4
    """
    total = _check_total(total)
    if not (video_fps and video_fps > 0 and math.isfinite(video_fps)):
        raise ValueError(f"video_fps: expected a positive frame rate, got {video_fps!r}")
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps: expected a positive target frame rate, got {fps!r}")
    if total < FRAME_FACTOR:
        raise ValueError(
            f"num_source_frames: the fps rule needs ≥ {FRAME_FACTOR} frames, the video has "
            f"{total} (sample it with num_frames=…, which repeats the frame)"
        )
    lo = FRAME_FACTOR * math.ceil(min_frames / FRAME_FACTOR)
    hi = FRAME_FACTOR * math.floor(min(max_frames, total) / FRAME_FACTOR)
    n = min(max(total / video_fps * fps, lo), hi)
    return FRAME_FACTOR * math.floor(n / FRAME_FACTOR)


def segment_indices(
    total: int, k: int, random: bool = True, generator: torch.Generator | None = None
) -> list[int]:
    """TSN segmental sampling: ``k`` equal segments of ``[0, T)``, one frame from each.

    Segment ``i`` spans ``[i·T/k, (i+1)·T/k)``; ``random`` draws a frame uniformly inside it
    (from ``generator``), otherwise the frame at its centre ``floor((i + ½)·T/k)``.
    With ``k > T`` segments are shorter than a frame and frames repeat.

    >>> segment_indices(12, 3, random=False)
    [2, 6, 10]
    """
    total, k = _check_total(total), _check_count(k, "num_frames")
    edges = np.arange(k + 1, dtype=np.float64) * total / k
    if random:
        u = torch.rand(k, generator=generator, dtype=torch.float64).numpy()
    else:
        u = np.full(k, 0.5)
    idx = np.floor(edges[:-1] + u * (edges[1:] - edges[:-1])).astype(np.int64)
    return np.clip(idx, 0, total - 1).tolist()


def strided_indices(total: int, n: int, stride: int = 1, start: int | None = None) -> list[int]:
    """``n`` frames ``stride`` apart from ``start`` (default: the centred window).

    >>> strided_indices(20, 4, stride=3)
    [5, 8, 11, 14]
    """
    total, n, stride = _check_total(total), _check_count(n), _check_count(stride, "stride")
    span = (n - 1) * stride + 1
    if span > total:
        raise ValueError(
            f"num_frames: {n} frames {stride} apart span {span} frames, the video has {total}"
        )
    if start is None:
        start = (total - span) // 2
    if not 0 <= start <= total - span:
        raise ValueError(f"start: expected 0..{total - span} for this window, got {start}")
    return list(range(start, start + span, stride))


def strided_clips(total: int, n: int, stride: int = 1, step: int | None = None) -> list[list[int]]:
    """Every window of ``n`` frames ``stride`` apart, windows ``step`` frames apart.

    ``step`` defaults to the window's span (non-overlapping clips).

    >>> strided_clips(10, 3, stride=2, step=2)
    [[0, 2, 4], [2, 4, 6], [4, 6, 8]]
    """
    total, n, stride = _check_total(total), _check_count(n), _check_count(stride, "stride")
    span = (n - 1) * stride + 1
    step = span if step is None else _check_count(step, "step")
    if span > total:
        raise ValueError(
            f"num_frames: {n} frames {stride} apart span {span} frames, the video has {total}"
        )
    return [list(range(s, s + span, stride)) for s in range(0, total - span + 1, step)]


def sample_frames(
    total: int,
    video_fps: float | None,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    sampler: str = "uniform",
    stride: int = 1,
    generator: torch.Generator | None = None,
) -> FrameSelection:
    """Pick frames of a ``total``-frame video and report the fps that gives.

    Args:
        total: frames in the video.
        video_fps: the video's frame rate (None if unknown: only ``num_frames`` works).
        num_frames: how many frames (exclusive with ``fps``).
        fps: target sampling rate for the VideoAlign rule (exclusive with ``num_frames``);
            when neither is given, ``fps = 2``.
        sampler: ``uniform``, ``segment`` (TSN, random), ``segment-centre`` or ``strided``.
            ``fps`` only decides the count; the count is placed by the sampler.
        stride: frame step of the ``strided`` sampler.
        generator: randomness of ``segment``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {SAMPLERS}, got {sampler!r}")
    if num_frames is not None and fps is not None:
        raise ValueError("num_frames and fps are exclusive: pass one of them")
    total = _check_total(total)
    if num_frames is None:
        if video_fps is None:
            raise ValueError("video_fps: unknown for this video; sample it with num_frames=…")
        n = fps_num_frames(total, video_fps, DEFAULT_FPS if fps is None else fps)
    else:
        n = _check_count(num_frames)
    if sampler == "uniform":
        idx = uniform_indices(total, n)
    elif sampler == "segment":
        idx = segment_indices(total, n, random=True, generator=generator)
    elif sampler == "segment-centre":
        idx = segment_indices(total, n, random=False)
    else:
        idx = strided_indices(total, n, stride)
    if video_fps is None:
        used = None
    elif sampler == "strided":
        used = float(video_fps) / stride
    else:
        used = n * float(video_fps) / total
    return FrameSelection(
        idx, used, total, None if video_fps is None else float(video_fps), sampler
    )


@dataclass
class FrameSampler:
    """A sampler configuration, applied per video by :meth:`select`.

    >>> FrameSampler(num_frames=3).select(9, 24.0).indices
    [0, 4, 8]
    """

    num_frames: int | None = None
    fps: float | None = None
    sampler: str = "uniform"
    stride: int = 1
    seed: int | None = None
    generator: torch.Generator | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_frames is not None and self.fps is not None:
            raise ValueError("num_frames and fps are exclusive: pass one of them")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler: expected one of {SAMPLERS}, got {self.sampler!r}")
        if self.num_frames is not None:
            _check_count(self.num_frames)
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps: expected a positive target frame rate, got {self.fps!r}")
        if self.generator is None:  # the segment sampler's randomness
            self.generator = torch.Generator().manual_seed(0 if self.seed is None else self.seed)

    def select(self, total: int, video_fps: float | None) -> FrameSelection:
        return sample_frames(
            total,
            video_fps,
            num_frames=self.num_frames,
            fps=self.fps,
            sampler=self.sampler,
            stride=self.stride,
            generator=self.generator,
        )
