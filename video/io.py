"""Video reading: decode only the sampled frames, record the indices and fps used.

:func:`load_video` opens a file with decord (``VideoReader.get_batch`` decodes just the
frames asked for) and falls back to PyAV when decord is not installed or cannot open the
file. It returns a :class:`VideoClip`: ``frames (T,3,H,W)`` float in [0,1] plus the frame
indices, the fps actually sampled, the source frame count and fps, and the backend.
:func:`load_videos` stacks several into ``(B,T,3,H,W)``; :func:`make_loader` builds the
per-path loader ``mmreward score`` uses.

Documented behaviour for awkward files:

- **empty, corrupt or truncated** files raise :class:`~mmreward.errors.ItemReadError`
  naming the path (decoding never loops: the PyAV path stops at the last needed frame
  or the end of the stream, and a file whose frames run out early is an error);
- **one-frame** videos: ``num_frames=n`` repeats the frame ``n`` times (uniform
  sampling); the fps rule needs ≥ 2 frames and raises a ``ValueError`` saying so;
- **variable frame rate** files are sampled by frame number (decode order) and the fps
  reported is the average ``T / duration``; the clip's ``variable_frame_rate`` is True
  (timestamps vary by more than 10 % around their median step).

Layouts: every tensor here is ``(…,T,3,H,W)``. :func:`as_video_batch` checks a 5-D tensor
and converts ``(B,3,T,H,W)`` only when told (``layout="BCTHW"``); a tensor that looks
channel-first without that is rejected with a message naming the field.

>>> import tempfile
>>> from video.world import make_clip, write_mp4
>>> path = write_mp4(tempfile.mkdtemp() + "/a.mp4", make_clip("expert", 0, frames=16)[0])
>>> clip = load_video(path, num_frames=4)
>>> tuple(clip.frames.shape), clip.indices, clip.fps
((4, 3, 32, 32), [0, 5, 10, 15], 2.0)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmreward.errors import InputError, ItemReadError
from mmreward.interface import check_pixels
from video.samplers import FrameSampler, FrameSelection

BACKENDS = ("auto", "decord", "pyav")
LAYOUTS = ("BTCHW", "BCTHW")
VFR_TOLERANCE = 0.10  # relative spread of frame steps above which a file counts as VFR


@dataclass
class VideoClip:
    """Decoded frames of one video and how they were sampled.

    Attributes:
        frames: ``(T,3,H,W)`` float in [0,1].
        indices: the source frame numbers, one per frame.
        fps: frames per second actually sampled (None if the file has no frame rate).
        source_fps: the file's average frame rate.
        num_source_frames: frames in the file.
        path: the file read.
        backend: ``"decord"`` or ``"pyav"``.
        variable_frame_rate: True if the file's timestamps are irregular.
        sampler: the sampler's name.
    """

    frames: Tensor
    indices: list[int]
    fps: float | None
    source_fps: float | None
    num_source_frames: int
    path: str | None = None
    backend: str = ""
    variable_frame_rate: bool = False
    sampler: str = "uniform"

    def record(self) -> dict[str, Any]:
        """What a results row should keep: indices, fps used, source frames and fps."""
        return {
            "frame_indices": list(self.indices),
            "sampled_fps": self.fps,
            "num_frames": len(self.indices),
            "source_frames": self.num_source_frames,
            "source_fps": self.source_fps,
            "sampler": self.sampler,
            "variable_frame_rate": self.variable_frame_rate,
            "backend": self.backend,
        }


@dataclass
class VideoBatch:
    """Several clips stacked: ``frames (B,T,3,H,W)`` plus one :class:`VideoClip` each."""

    frames: Tensor
    clips: list[VideoClip]

    @property
    def fps(self) -> list[float | None]:
        return [c.fps for c in self.clips]

    @property
    def indices(self) -> list[list[int]]:
        return [c.indices for c in self.clips]


# -- backends ----------------------------------------------------------------------------
def _decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def _is_vfr(timestamps: np.ndarray) -> bool:
    if timestamps.size < 3:
        return False
    steps = np.diff(np.sort(timestamps))
    med = float(np.median(steps))
    if med <= 0:
        return True
    return float(np.max(np.abs(steps - med))) > VFR_TOLERANCE * med


class _DecordReader:
    name = "decord"

    def __init__(self, path: str, threads: int) -> None:
        import decord

        self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
        self.num_frames = len(self._vr)
        fps = float(self._vr.get_avg_fps())
        self.fps = fps if fps > 0 and np.isfinite(fps) else None

    def timestamps(self) -> np.ndarray:
        return np.asarray(self._vr.get_frame_timestamp(range(self.num_frames)))[:, 0]

    def read(self, indices: list[int]) -> np.ndarray:
        unique = sorted(set(indices))
        arr = self._vr.get_batch(unique).asnumpy()  # decodes only these frames
        pos = {i: k for k, i in enumerate(unique)}
        return arr[[pos[i] for i in indices]]

    def close(self) -> None:
        del self._vr


class _PyAVReader:
    name = "pyav"

    def __init__(self, path: str, threads: int) -> None:
        import av

        self._path = path
        self._av = av
        self._container = av.open(path)
        if not self._container.streams.video:
            self._container.close()
            raise ItemReadError(path, "no video stream")
        stream = self._container.streams.video[0]
        if threads:
            stream.thread_count = threads
        # count frames and collect timestamps from the packets (demuxing, no decoding)
        packets = [p for p in self._container.demux(stream) if p.size > 0]
        self.num_frames = len(packets)
        #: packet timestamps in display order (frame i has the i-th smallest)
        self._raw_pts = sorted(p.pts for p in packets if p.pts is not None)
        self._pts = np.asarray(self._raw_pts, dtype=np.float64) * float(stream.time_base or 0)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if (
            self.num_frames > 1
            and self._pts[-1] > self._pts[0]
            and (fps <= 0 or _is_vfr(self._pts))
        ):
            # the average over the whole file, frames / duration (what decord reports)
            last = float(np.median(np.diff(self._pts)))  # duration of the last frame
            fps = self.num_frames / (self._pts[-1] - self._pts[0] + last)
        self.fps = fps if fps > 0 else None

    def timestamps(self) -> np.ndarray:
        return self._pts

    def read(self, indices: list[int]) -> np.ndarray:
        """Decode only what the needed frames depend on.

        Frame ``i`` (display order) is the packet with the ``i``-th smallest timestamp.
        Packets of needed frames are decoded fully; every other packet is decoded with
        ``skip_frame = "NONREF"`` (frames no other frame refers to are skipped; reference
        frames still decode, so the needed ones come out bit-identical to decoding
        everything), and demuxing stops once all needed frames are out. Files without
        usable timestamps are decoded in order instead.
        """
        need = set(indices)
        got: dict[int, np.ndarray] = {}
        stream = self._container.streams.video[0]
        pts = self._raw_pts
        if len(pts) == self.num_frames and len(set(pts)) == len(pts):
            wanted = {pts[i]: i for i in need}
            ctx = stream.codec_context
            self._container.seek(0)
            try:
                for packet in self._container.demux(stream):
                    if packet.size == 0:
                        continue
                    ctx.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
                    for frame in ctx.decode(packet):
                        if frame.pts in wanted:
                            got[wanted[frame.pts]] = frame.to_ndarray(format="rgb24")
                    if len(got) == len(need):
                        break
                if len(got) < len(need):  # frames still inside the decoder
                    ctx.skip_frame = "DEFAULT"
                    for frame in ctx.decode(None):
                        if frame.pts in wanted:
                            got[wanted[frame.pts]] = frame.to_ndarray(format="rgb24")
            finally:
                ctx.skip_frame = "DEFAULT"
        if len(got) < len(need):  # no usable timestamps: decode in order
            got = self._read_in_order(need, stream)
        missing = sorted(need - set(got))
        if missing:
            raise ItemReadError(
                self._path, f"frames {missing[:5]} could not be decoded ({len(got)} were)"
            )
        return np.stack([got[i] for i in indices])

    def _read_in_order(self, need: set[int], stream: Any) -> dict[int, np.ndarray]:
        got: dict[int, np.ndarray] = {}
        last = max(need)
        self._container.seek(0)
        for i, frame in enumerate(self._container.decode(stream)):
            if i in need:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
        return got

    def close(self) -> None:
        self._container.close()


def _decode(
    path: str, backend: str, threads: int, chooser: FrameSampler
) -> tuple[np.ndarray, FrameSelection, bool, str]:
    """Open, sample and decode with the first backend that succeeds.

    ``auto`` tries decord, then PyAV: on a failure to open *or* to decode (decord rejects
    some frame widths, e.g. 16, 24 or 48 pixels). Sampler errors (``ValueError`` about the
    arguments) are not backend failures and propagate at once.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    errors = []
    order = ["decord", "pyav"] if backend == "auto" else [backend]
    for name in order:
        if name == "decord" and not _decord_available():
            errors.append("decord is not installed")
            continue
        try:
            reader = (_DecordReader if name == "decord" else _PyAVReader)(path, threads)
        except ItemReadError as e:
            errors.append(f"{name}: {e.reason}")
            continue
        except Exception as e:  # decord raises RuntimeError/DECORDError, PyAV FFmpegError
            errors.append(f"{name}: {str(e).splitlines()[0][:160]}")
            continue
        try:
            if reader.num_frames < 1:
                raise ItemReadError(path, "the video stream has no frames")
            vfr = _is_vfr(reader.timestamps())
            sel = chooser.select(reader.num_frames, reader.fps)  # ValueError propagates
            try:
                arr = reader.read(sel.indices)
            except ItemReadError as e:
                errors.append(f"{name}: {e.reason}")
                continue
            except Exception as e:
                errors.append(f"{name}: decoding failed ({str(e).splitlines()[0][:160]})")
                continue
            if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] != len(sel.indices):
                errors.append(f"{name}: decoder returned frames of shape {arr.shape}")
                continue
            return arr, sel, vfr, name
        finally:
            reader.close()
    raise ItemReadError(path, "; ".join(errors))


# -- public API --------------------------------------------------------------------------
def _resize(frames: Tensor, size: int | tuple[int, int] | None) -> Tensor:
    if size is None:
        return frames
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(frames.shape[-2:]) == hw:
        return frames
    return F.interpolate(frames, size=hw, mode="bilinear", antialias=True, align_corners=False)


def load_video(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    *,
    sampler: str | FrameSampler = "uniform",
    stride: int = 1,
    size: int | tuple[int, int] | None = None,
    backend: str = "auto",
    threads: int = 1,
    generator: torch.Generator | None = None,
) -> VideoClip:
    """Decode the sampled frames of one video file.

    Args:
        path: the file.
        num_frames: frames to sample (exclusive with ``fps``).
        fps: target sampling rate, VideoAlign rule (default 2 when neither is given).
        sampler: ``uniform`` / ``segment`` / ``segment-centre`` / ``strided``, or a
            configured :class:`~video.samplers.FrameSampler` (then ``num_frames``/``fps``
            must be None).
        stride: frame step of the ``strided`` sampler.
        size: resize frames to ``size`` (int or ``(H, W)``), bilinear with antialiasing.
        backend: ``auto`` (decord, PyAV fallback), ``decord`` or ``pyav``.
        threads: decoder threads (0: the decoder's default).
        generator: randomness of the ``segment`` sampler.

    Raises:
        ItemReadError: the file is missing, empty, corrupt or has no decodable frames.
        ValueError: sampler arguments that do not fit this video (named in the message).
    """
    path_s = os.fspath(path)
    if not os.path.isfile(path_s):
        raise ItemReadError(path_s, "no such file")
    if os.path.getsize(path_s) == 0:
        raise ItemReadError(path_s, "empty file (0 bytes)")
    if isinstance(sampler, FrameSampler):
        if num_frames is not None or fps is not None:
            raise ValueError("num_frames/fps: already set by the FrameSampler passed as sampler")
        chooser = sampler
    else:
        chooser = FrameSampler(
            num_frames=num_frames, fps=fps, sampler=sampler, stride=stride, generator=generator
        )
    arr, sel, vfr, backend_used = _decode(path_s, backend, threads, chooser)
    frames = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0
    frames = _resize(frames, size).clamp(0, 1)
    return VideoClip(
        frames=frames,
        indices=sel.indices,
        fps=sel.fps,
        source_fps=sel.source_fps,
        num_source_frames=sel.num_source_frames,
        path=path_s,
        backend=backend_used,
        variable_frame_rate=vfr,
        sampler=sel.sampler,
    )


def load_videos(paths: Sequence[str | os.PathLike], **kwargs: Any) -> VideoBatch:
    """Load several videos with the same options and stack them as ``(B,T,3,H,W)``.

    All clips must end up with the same frame count and size (pass ``num_frames`` and
    ``size``); a mismatch is a ``ValueError`` naming the first odd path.
    """
    if isinstance(paths, (str, os.PathLike)):
        raise InputError("paths", "a list of video paths", "a single path; wrap it in a list")
    clips = [load_video(p, **kwargs) for p in paths]
    if not clips:
        raise InputError("paths", "at least one video path", "an empty list")
    shape = tuple(clips[0].frames.shape)
    for c in clips[1:]:
        if tuple(c.frames.shape) != shape:
            raise ValueError(
                f"videos: {c.path} decodes to {tuple(c.frames.shape)}, {clips[0].path} to "
                f"{shape}; pass num_frames=… and size=… so they stack"
            )
    return VideoBatch(torch.stack([c.frames for c in clips]), clips)


def as_video_batch(x: Tensor | np.ndarray, layout: str = "BTCHW", field: str = "videos") -> Tensor:
    """Check a 5-D video tensor and return it as ``(B,T,3,H,W)`` float in [0,1].

    ``layout="BCTHW"`` converts channel-first ``(B,3,T,H,W)`` explicitly. Nothing is
    guessed: a ``BTCHW`` tensor whose dim 2 is not 3 but dim 1 is (a channel-first video,
    e.g. a one-frame ``(B,3,1,H,W)``) is rejected. uint8 is scaled by 1/255; other ranges
    are rejected.

    >>> as_video_batch(torch.rand(2, 3, 5, 8, 8), layout="BCTHW").shape
    torch.Size([2, 5, 3, 8, 8])
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor) or x.ndim != 5:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(field, f"a 5-D ({layout[0]},{','.join(layout[1:])}) tensor", got)
    if layout == "BCTHW":
        if x.shape[1] != 3:
            raise InputError(field, "(B,3,T,H,W) for layout='BCTHW'", f"shape {tuple(x.shape)}")
        x = x.permute(0, 2, 1, 3, 4)
    elif x.shape[2] != 3:
        hint = "it looks like (B,3,T,H,W); pass layout='BCTHW'" if x.shape[1] == 3 else ""
        raise InputError(field, "(B,T,3,H,W)", f"shape {tuple(x.shape)}", hint)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    check_pixels(x, field, 5)
    return x


def make_loader(
    num_frames: int | None = None,
    fps: float | None = None,
    sampler: str = "uniform",
    stride: int = 1,
    size: int | tuple[int, int] | None = None,
    backend: str = "auto",
    seed: int | None = None,
) -> Callable[[str | os.PathLike], VideoClip]:
    """A ``path → VideoClip`` loader with fixed sampling options (used by ``mmreward score``).

    The options are checked once here (e.g. ``num_frames`` with ``fps`` is an error).
    """
    config = FrameSampler(num_frames=num_frames, fps=fps, sampler=sampler, stride=stride, seed=seed)

    def load(path: str | os.PathLike) -> VideoClip:
        return load_video(path, sampler=config, size=size, backend=backend)

    load.sampler = config  # type: ignore[attr-defined]
    return load
