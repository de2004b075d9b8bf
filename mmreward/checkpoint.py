"""Reading, strictly loading and writing weights.

- safetensors is preferred; ``.pt``/``.pth``/``.bin``/``.ckpt`` files are read with
  ``torch.load(weights_only=True)`` (no pickled code runs);
- :func:`load_state_dict_strict` never ignores a key: missing, unexpected and mis-shaped
  keys are listed in one :class:`~mmreward.errors.CheckpointError`;
- :func:`save_model_dir` / :func:`read_model_dir` are the toolkit's own directory format
  (``mmreward.json`` + ``model.safetensors``), written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mmreward.errors import CheckpointError

CONFIG_NAME = "mmreward.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_state_dict(path: str | Path, key: str | None = None) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a (weights-only) torch pickle.

    ``key`` unwraps a nested dict (e.g. ``"state_dict"`` for HPS v2 checkpoints); when
    ``key`` is None and the file holds a single dict under ``state_dict``/``model``, it is
    unwrapped too.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        sd: Any = load_file(str(path), device="cpu")
    elif path.suffix in PICKLE_SUFFIXES:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # the pickle holds objects other than tensors
            raise CheckpointError(
                [],
                [],
                source=f"{path} (cannot be read with weights_only=True: {e}; "
                "convert it to safetensors or to a plain state dict)",
            ) from e
    else:
        raise ValueError(
            f"checkpoint: expected a .safetensors or {'/'.join(PICKLE_SUFFIXES)} file, got {path}"
        )
    if not isinstance(sd, Mapping):
        raise CheckpointError(
            [], [], source=f"{path} (holds a {type(sd).__name__}, not a state dict of tensors)"
        )
    if key is not None:
        if key not in sd:
            raise KeyError(f"{path}: no '{key}' entry (top-level keys: {sorted(sd)[:10]})")
        sd = sd[key]
    elif isinstance(sd, Mapping) and len(sd) == 1:
        (only,) = sd
        if only in ("state_dict", "model") and isinstance(sd[only], Mapping):
            sd = sd[only]
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError([], bad, source=f"{path} (non-tensor entries)")
    return dict(sd)


def load_state_dict_strict(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    convert: Callable[[Mapping[str, Tensor]], Mapping[str, Tensor]] | None = None,
    source: str = "checkpoint",
) -> None:
    """Load ``state_dict`` (after ``convert``, e.g. official keys → ours) with no key ignored.

    Raises :class:`CheckpointError` listing missing, unexpected and mis-shaped keys.
    Persistent buffers count as keys; non-persistent buffers do not.
    """
    if convert is not None:
        state_dict = convert(state_dict)
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or mismatched:
        raise CheckpointError(missing, unexpected, mismatched, source=source)
    module.load_state_dict(state_dict, strict=True)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write a file through a temporary file in the same directory, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_state_dict(state_dict: Mapping[str, Tensor], path: str | Path) -> None:
    """Save tensors as safetensors, atomically (shared storage is copied)."""
    tensors = {k: v.detach().contiguous().clone().cpu() for k, v in state_dict.items()}
    atomic_write(Path(path), lambda p: save_file(tensors, str(p)))


def save_model_dir(model: nn.Module, directory: str | Path) -> Path:
    """Save a reward model as ``mmreward.json`` (architecture + kwargs) + ``model.safetensors``."""
    directory = Path(directory)
    config = {
        "reward": getattr(model, "reward_name", type(model).__name__),
        "kwargs": getattr(model, "init_kwargs", {}),
        "class": f"{type(model).__module__}:{type(model).__qualname__}",
    }
    save_state_dict(model.state_dict(), directory / WEIGHTS_NAME)
    atomic_write(
        directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(config, indent=2) + "\n")
    )
    return directory


def read_model_dir(directory: str | Path) -> dict[str, Any]:
    """The ``mmreward.json`` of a saved model directory."""
    path = Path(directory) / CONFIG_NAME
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
