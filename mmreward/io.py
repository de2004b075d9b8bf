"""Turning user inputs (PIL images, paths, numpy arrays, tensors) into interface tensors.

Conversions are explicit and documented; anything ambiguous is rejected:

- grayscale → RGB by repeating the channel; RGBA/LA/P-with-alpha → RGB by compositing on
  white (the alpha is not silently dropped onto black);
- ``uint8`` → ``/255``; ``uint16`` / 16-bit PIL modes → ``/65535``;
- float arrays and tensors must already be in [0,1] (``[0,255]`` floats are an error).

>>> import numpy as np
>>> to_image_tensor([np.zeros((4, 6, 3), np.uint8)]).shape
torch.Size([1, 3, 4, 6])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mmreward.errors import InputError, ItemReadError
from mmreward.interface import check_pixels

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def load_image(path: str | Path) -> Tensor:
    """Read an image file as a ``(3,H,W)`` float tensor in [0,1].

    Raises :class:`ItemReadError` (naming the file) for missing, truncated or non-image files.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # force a full decode: truncated files fail here, not later
            return pil_to_tensor(im)
    except FileNotFoundError as e:
        raise ItemReadError(str(path), "no such file") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ItemReadError(str(path), f"{type(e).__name__}: {e}") from e


def pil_to_tensor(im: Image.Image) -> Tensor:
    """A PIL image as ``(3,H,W)`` float in [0,1] (mode handling as in the module docstring)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale (8-bit images open as "L"): full scale is 65535
        arr = np.asarray(im, dtype=np.float64)
        arr = np.clip(arr / 65535.0, 0.0, 1.0).astype(np.float32)
        return torch.from_numpy(arr).unsqueeze(0).repeat(3, 1, 1)
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        return numpy_to_tensor(arr, "image")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
    elif im.mode != "RGB":
        im = im.convert("RGB")
    arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def numpy_to_tensor(arr: np.ndarray, field_name: str = "images") -> Tensor:
    """An ``(H,W)``, ``(H,W,C)`` or ``(C,H,W)`` array as ``(3,H,W)`` float in [0,1]."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise InputError(field_name, "an (H,W), (H,W,C) or (C,H,W) array", f"shape {arr.shape}")
    if arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW → HWC
    if arr.shape[-1] not in (1, 3, 4):
        raise InputError(field_name, "1, 3 or 4 channels (HWC or CHW)", f"shape {arr.shape}")
    if arr.dtype == np.uint8:
        x = torch.from_numpy(arr.astype(np.float32) / 255.0)
    elif arr.dtype == np.uint16:
        x = torch.from_numpy(arr.astype(np.float32) / 65535.0)
    elif np.issubdtype(arr.dtype, np.floating):
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    elif arr.dtype == np.bool_:
        x = torch.from_numpy(arr.astype(np.float32))
    else:
        raise InputError(field_name, "uint8, uint16, bool or float in [0,1]", f"dtype {arr.dtype}")
    x = _channels_to_rgb(x.permute(2, 0, 1), field_name)
    check_pixels(x.unsqueeze(0), field_name, 4)
    return x


def _channels_to_rgb(x: Tensor, field_name: str) -> Tensor:
    """(C,H,W) → (3,H,W): grey repeated, alpha composited on white."""
    c = x.shape[0]
    if c == 1:
        return x.repeat(3, 1, 1)
    if c == 3:
        return x
    if c == 4:
        rgb, alpha = x[:3], x[3:4]
        return rgb * alpha + (1.0 - alpha)
    raise InputError(field_name, "1, 3 or 4 channels", f"{c} channels")


def _one_image(x: Any, field_name: str) -> Tensor:
    if isinstance(x, (str, Path)):
        return load_image(x)
    if isinstance(x, Image.Image):
        return pil_to_tensor(x)
    if isinstance(x, np.ndarray):
        return numpy_to_tensor(x, field_name)
    if isinstance(x, Tensor):
        if x.ndim != 3:
            raise InputError(field_name, "a (C,H,W) tensor per image", f"shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        x = _channels_to_rgb(x, field_name)
        check_pixels(x.unsqueeze(0), field_name, 4)
        return x
    raise InputError(field_name, "a tensor, PIL image, numpy array or path", type(x).__name__)


def to_image_tensor(images: Any, field_name: str = "images") -> Tensor | list[Tensor]:
    """Convert images to a ``(B,3,H,W)`` tensor, or a list of ``(3,H,W)`` tensors of mixed sizes.

    A 4-D tensor is validated and returned as is (uint8 is scaled by 1/255); anything else
    is converted item by item.
    """
    if isinstance(images, Tensor) and images.ndim == 4:
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        if images.shape[1] in (1, 4):
            images = torch.stack([_channels_to_rgb(x, field_name) for x in images])
        check_pixels(images, field_name, 4)
        return images
    if isinstance(images, (Image.Image, str, Path)) or (
        isinstance(images, (np.ndarray, Tensor)) and images.ndim in (2, 3)
    ):
        images = [images]  # one image
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)  # (B,H,W,C) or (B,C,H,W) array
    if not isinstance(images, Sequence):
        raise InputError(
            field_name,
            "a tensor, PIL image, numpy array, path or a list of them",
            type(images).__name__,
        )
    if len(images) == 0:
        raise InputError(field_name, "at least one image", "an empty list")
    items = [_one_image(x, field_name) for x in images]
    if len({tuple(x.shape) for x in items}) == 1:
        return torch.stack(items)
    return items


def to_video_tensor(videos: Any, field_name: str = "videos") -> Tensor | list[Tensor]:
    """Convert videos to ``(B,T,3,H,W)`` float in [0,1] (or a list of ``(T,3,H,W)``).

    Accepts a 5-D tensor, or a list of ``(T,3,H,W)`` tensors / ``(T,H,W,3)`` uint8 arrays.
    Decoding files is the job of the ``video`` package.
    """
    if isinstance(videos, Tensor) and videos.ndim == 5:
        if videos.dtype == torch.uint8:
            videos = videos.float() / 255.0
        check_pixels(videos, field_name, 5)
        return videos
    if isinstance(videos, (str, Path)):
        raise InputError(field_name, "decoded frames", "a path", "use video.load_video(path)")
    items = []
    for v in videos:
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
            if v.ndim == 4 and v.shape[-1] == 3:
                v = v.permute(0, 3, 1, 2)
        if not isinstance(v, Tensor) or v.ndim != 4:
            raise InputError(field_name, "(T,3,H,W) per video", f"{type(v).__name__}")
        if v.dtype == torch.uint8:
            v = v.float() / 255.0
        check_pixels(v.unsqueeze(0), field_name, 5)
        items.append(v)
    if not items:
        raise InputError(field_name, "at least one video", "an empty list")
    if len({tuple(x.shape) for x in items}) == 1:
        return torch.stack(items)
    return items


def group_by_shape(items: Tensor | list[Tensor]) -> list[list[int]]:
    """Indices grouped by item shape, groups in order of first appearance."""
    if isinstance(items, Tensor):
        return [list(range(items.shape[0]))]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(items):
        groups.setdefault(tuple(x.shape), []).append(i)
    return list(groups.values())
