"""The reward interface every reward model honours.

A reward model takes one :class:`RewardInput` (a batch of prompts, images, videos,
responses and/or reasoning steps) and returns one :class:`RewardOutput` whose ``scores``
has shape ``(B,)`` (higher is better). Pixels are float tensors in ``[0, 1]``; each model
resizes and normalises them itself with tensor ops, so gradients reach the pixels when the
model declares ``differentiable = True`` (ReFL/DRaFT rely on that).

>>> import torch
>>> from mmreward.analytic import Colorfulness
>>> rm = Colorfulness()
>>> out = rm(RewardInput(images=torch.rand(2, 3, 16, 16)))
>>> out.scores.shape
torch.Size([2])
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmreward.errors import InputError

#: Input fields a reward model may declare in ``RewardModel.inputs``.
INPUT_FIELDS = ("prompts", "images", "videos", "responses", "steps")
#: Fields that hold the things being scored (as opposed to the condition, ``prompts``).
CANDIDATE_FIELDS = ("images", "videos", "responses", "steps")

_RANGE_TOL = 1e-4  # float round-off allowed outside [0, 1]


def _per_item(value: Any, n: int) -> bool:
    """Whether an ``extras`` value holds one entry per batch row."""
    if isinstance(value, Tensor):
        return value.ndim > 0 and value.shape[0] == n
    return isinstance(value, list) and len(value) == n


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__} of length {len(x)}"
    return type(x).__name__


def check_pixels(x: Tensor, field_name: str, ndim: int) -> None:
    """Raise :class:`InputError` unless ``x`` is a finite float tensor in [0,1] of rank ``ndim``."""
    layout = "(B,3,H,W)" if ndim == 4 else "(B,T,3,H,W)"
    expected = f"{layout} float tensor in [0,1]"
    if not isinstance(x, Tensor):
        raise InputError(field_name, expected, _describe(x))
    if x.ndim != ndim or x.shape[-3] != 3:
        hint = ""
        if ndim == 5 and x.ndim == 5 and x.shape[2] != 3 and x.shape[1] == 3:
            hint = "looks like (B,C,T,H,W); permute to (B,T,C,H,W)"
        elif x.ndim == ndim and x.shape[-3] in (1, 4):
            hint = "convert grayscale/RGBA to RGB first (mmreward.io.to_image_tensor does)"
        raise InputError(field_name, expected, f"shape {tuple(x.shape)}", hint)
    if not x.is_floating_point():
        raise InputError(
            field_name, expected, f"dtype {x.dtype}", "use mmreward.io.to_image_tensor for uint8"
        )
    if x.numel() == 0:
        raise InputError(field_name, expected, "an empty tensor")
    with torch.no_grad():
        # one pass: NaN propagates through min/max, ±inf falls outside [0,1]
        lo_t, hi_t = torch.aminmax(x.detach())
        lo, hi = lo_t.item(), hi_t.item()
    if math.isnan(lo) or math.isnan(hi) or math.isinf(lo) or math.isinf(hi):
        raise InputError(field_name, expected, "NaN or inf values")
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        if hi > 1.5:
            hint = "values look like [0,255]; divide by 255"
        elif lo < -0.5:
            hint = "values look like [-1,1]; use (x + 1) / 2"
        else:
            hint = "clamp to [0,1]"
        raise InputError(field_name, expected, f"values in [{lo:.4g}, {hi:.4g}]", hint)


@dataclass
class RewardInput:
    """One batch of reward inputs. Every non-None field has the same batch size B.

    Attributes:
        prompts: ``list[str]`` of length B, the condition / question / instruction.
        images: ``(B,3,H,W)`` float tensor in [0,1], any H, W.
        videos: ``(B,T,3,H,W)`` float tensor in [0,1].
        fps: frames per second actually sampled for each video (float or list of B floats).
        responses: ``list[str]`` of length B (text or VLM outputs).
        steps: ``list[list[str]]``, the reasoning steps of each response (for PRMs).
        extras: anything model specific (not validated).
    """

    prompts: list[str] | None = None
    images: Tensor | None = None
    videos: Tensor | None = None
    fps: float | list[float] | None = None
    responses: list[str] | None = None
    steps: list[list[str]] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def batch_size(self) -> int:
        """The common batch size; :class:`InputError` if fields disagree or none is set."""
        sizes = {}
        for name in INPUT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):
                raise InputError(name, "a list of strings", "a single string; wrap it in a list")
            if value is not None:
                sizes[name] = value.shape[0] if isinstance(value, Tensor) else len(value)
        if not sizes:
            raise InputError("batch", f"at least one of {INPUT_FIELDS}", "no inputs")
        if len(set(sizes.values())) > 1:
            given = ", ".join(f"{k}={v}" for k, v in sizes.items())
            raise InputError("batch", "the same batch size for every field", given)
        return next(iter(sizes.values()))

    def validate(self, required: Sequence[str] = ()) -> int:
        """Check every field present and the ``required`` ones; return the batch size."""
        for name in required:
            if getattr(self, name) is None:
                raise InputError(name, "a value (this reward model needs it)", "None")
        n = self.batch_size()
        if n == 0:
            raise InputError("batch", "at least one item", "an empty batch")
        if self.images is not None:
            check_pixels(self.images, "images", 4)
        if self.videos is not None:
            check_pixels(self.videos, "videos", 5)
        for name in ("prompts", "responses"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str) or not all(isinstance(s, str) for s in value):
                raise InputError(name, "a list of strings", _describe(value))
            if name in required and any(not s.strip() for s in value):
                idx = [i for i, s in enumerate(value) if not s.strip()]
                raise InputError(name, "non-empty strings", f"empty string at index {idx}")
        if self.steps is not None:
            for i, s in enumerate(self.steps):
                if isinstance(s, str) or not all(isinstance(t, str) for t in s):
                    raise InputError("steps", "a list of lists of strings", f"item {i}: {s!r}")
                if "steps" in required and len(s) == 0:
                    raise InputError("steps", "at least one step per item", f"none at index {i}")
        if self.fps is not None and not isinstance(self.fps, (int, float)) and len(self.fps) != n:
            raise InputError("fps", f"a number or {n} numbers", _describe(self.fps))
        return n

    def select(self, index: Sequence[int] | slice) -> RewardInput:
        """A sub-batch (rows ``index``), sharing tensors where possible.

        Per-item ``extras`` (lists or tensors with one entry per row) are sliced too;
        other extras are shared.
        """
        n = self.batch_size()

        def take(value: Any) -> Any:
            if isinstance(value, Tensor):
                return value[index] if isinstance(index, slice) else value[list(index)]
            return value[index] if isinstance(index, slice) else [value[i] for i in index]

        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name == "fps" and isinstance(value, (int, float))):
                out[f.name] = value
            elif f.name == "extras":
                out[f.name] = {k: take(v) if _per_item(v, n) else v for k, v in value.items()}
            else:
                out[f.name] = take(value)
        return RewardInput(**out)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move pixel tensors to ``device``/``dtype`` (text is left alone)."""
        out = RewardInput(**{f.name: getattr(self, f.name) for f in fields(self)})
        for name in ("images", "videos"):
            value = getattr(out, name)
            if value is not None:
                setattr(out, name, value.to(device=device, dtype=dtype))
        return out


@dataclass
class RewardOutput:
    """What a reward model returns.

    Attributes:
        scores: ``(B,)``, higher is better.
        sub_scores: named ``(B,)`` tensors (e.g. ``{"VQ": ..., "MQ": ..., "TA": ...}``).
        step_scores: for process reward models, one ``(S_i,)`` tensor per item.
        extras: anything else (embeddings, logits); not concatenated across batches
            unless the values are tensors with a leading batch dimension.
    """

    scores: Tensor
    sub_scores: dict[str, Tensor] = field(default_factory=dict)
    step_scores: list[Tensor] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def sub_score_tensor(self) -> tuple[list[str], Tensor]:
        """The sub-scores stacked as ``(B, D)`` with their names in column order."""
        names = list(self.sub_scores)
        if not names:
            return names, self.scores.new_zeros(self.scores.shape[0], 0)
        return names, torch.stack([self.sub_scores[k] for k in names], dim=1)

    def to_rows(self) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per item (score, sub-scores, step scores)."""
        rows = []
        scores = self.scores.detach().float().cpu().tolist()
        subs = {k: v.detach().float().cpu().tolist() for k, v in self.sub_scores.items()}
        for i, s in enumerate(scores):
            row: dict[str, Any] = {"score": s}
            if subs:
                row["sub_scores"] = {k: v[i] for k, v in subs.items()}
            if self.step_scores is not None:
                row["step_scores"] = self.step_scores[i].detach().float().cpu().tolist()
            rows.append(row)
        return rows

    @staticmethod
    def concat(outputs: Sequence[RewardOutput]) -> RewardOutput:
        """Concatenate per-batch outputs along the batch dimension."""
        if not outputs:
            raise ValueError("outputs: expected at least one RewardOutput, got none")
        scores = torch.cat([o.scores for o in outputs])
        sub = {k: torch.cat([o.sub_scores[k] for o in outputs]) for k in outputs[0].sub_scores}
        steps = None
        if outputs[0].step_scores is not None:
            steps = [s for o in outputs for s in (o.step_scores or [])]
        extras: dict[str, Any] = {}
        for k, v in outputs[0].extras.items():
            if isinstance(v, Tensor) and v.ndim > 0:
                extras[k] = torch.cat([o.extras[k] for o in outputs])
            elif isinstance(v, list):
                extras[k] = [x for o in outputs for x in o.extras[k]]
        return RewardOutput(scores=scores, sub_scores=sub, step_scores=steps, extras=extras)

    def reorder(self, index: Sequence[int]) -> RewardOutput:
        """Rows in the order ``index`` (used to undo size-grouping in :meth:`score`)."""
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.scores.device)
        steps = [self.step_scores[i] for i in index] if self.step_scores is not None else None
        n = self.scores.shape[0]
        extras = {}
        for k, v in self.extras.items():
            if isinstance(v, Tensor) and v.ndim > 0:
                v = v[idx]
            elif isinstance(v, list) and len(v) == n:
                v = [v[i] for i in index]
            extras[k] = v
        return RewardOutput(
            scores=self.scores[idx],
            sub_scores={k: v[idx] for k, v in self.sub_scores.items()},
            step_scores=steps,
            extras=extras,
        )


class RewardModel(nn.Module):
    """Base class of every reward model.

    Subclasses set the class attributes and implement :meth:`compute`; :meth:`forward`
    validates the batch, calls ``compute`` and checks the output. Convenience methods
    (:meth:`score`, :meth:`compare`, :meth:`rank`) are built on the one forward.

    Class attributes:
        inputs: input fields the model needs (subset of ``INPUT_FIELDS``).
        differentiable: whether ``scores`` is differentiable w.r.t. pixels.
        native_resolution: ``(H, W)`` the model resizes images to, or None.
        native_frames: number of frames a video model samples, or None.
        sub_score_names: names of the sub-scores the model returns, if any.
    """

    inputs: ClassVar[tuple[str, ...]] = ("images",)
    differentiable: ClassVar[bool] = False
    native_resolution: ClassVar[tuple[int, int] | None] = None
    native_frames: ClassVar[int | None] = None
    sub_score_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        #: registry name (``architecture.tag``) when built by :func:`mmreward.load`
        self.reward_name: str = type(self).__name__
        #: keyword arguments that rebuild this model (written by ``save_pretrained``)
        self.init_kwargs: dict[str, Any] = {}

    # -- the one forward ---------------------------------------------------------------
    def compute(self, batch: RewardInput) -> RewardOutput | Tensor:  # pragma: no cover
        """Score a validated batch. Return a ``(B,)`` tensor or a :class:`RewardOutput`."""
        raise NotImplementedError

    def forward(self, batch: RewardInput | None = None, **fields_: Any) -> RewardOutput:
        if batch is None:
            batch = RewardInput(**fields_)
        elif fields_:
            raise TypeError("pass either a RewardInput or keyword fields, not both")
        n = batch.validate(self.inputs)
        out = self.compute(batch)
        if isinstance(out, Tensor):
            out = RewardOutput(scores=out)
        if out.scores.shape != (n,):
            raise RuntimeError(
                f"{self.reward_name}: scores must have shape ({n},), got {tuple(out.scores.shape)}"
            )
        return out

    # -- convenience ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    @property
    def candidate_field(self) -> str:
        """The input field holding the things being scored (e.g. ``images``)."""
        for name in CANDIDATE_FIELDS:
            if name in self.inputs:
                return name
        return "prompts"

    def score(
        self,
        images: Any = None,
        prompts: str | Sequence[str] | None = None,
        *,
        videos: Any = None,
        fps: float | list[float] | None = None,
        responses: Sequence[str] | None = None,
        steps: Sequence[Sequence[str]] | None = None,
        extras: dict[str, Any] | None = None,
        batch_size: int = 32,
        grad: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        progress: bool = False,
    ) -> RewardOutput:
        """Score any number of items in batches.

        ``extras`` are passed to the model; per-item entries (lists or tensors with one
        entry per item) are split into batches with the items.
        ``images`` may be a ``(B,3,H,W)`` tensor, or a list of PIL images, file paths,
        numpy arrays or tensors (of possibly different sizes: same-size items are batched
        together and the output is returned in input order). A single prompt string is
        broadcast to every item. Runs under ``torch.no_grad()`` unless ``grad=True``.

        >>> import torch
        >>> from mmreward.analytic import Colorfulness
        >>> Colorfulness().score(torch.rand(5, 3, 8, 8), batch_size=2).scores.shape
        torch.Size([5])
        """
        from mmreward.io import group_by_shape, to_image_tensor, to_video_tensor

        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)
        device = self.device
        pix_dtype = dtype or self.dtype
        values: dict[str, Any] = {}
        if images is not None:
            values["images"] = to_image_tensor(images)
        if videos is not None:
            values["videos"] = to_video_tensor(videos)
        for name, value in (("responses", responses), ("steps", steps)):
            if value is not None:
                if isinstance(value, str):
                    raise InputError(name, "a list", "a single string; wrap it in a list")
                values[name] = [list(v) if name == "steps" else v for v in value]
        if not values and prompts is not None and "prompts" in self.inputs:
            values["prompts"] = [prompts] if isinstance(prompts, str) else list(prompts)
            prompts = None
        if not values:
            raise InputError(self.candidate_field, "items to score", "nothing")
        n = next(len(v) for v in values.values())
        if prompts is not None:
            values["prompts"] = [prompts] * n if isinstance(prompts, str) else list(prompts)
        if fps is not None:
            values["fps"] = fps

        # group items of one size so they stack into one tensor
        pixel_key = "images" if "images" in values else ("videos" if "videos" in values else None)
        groups = group_by_shape(values[pixel_key]) if pixel_key else [list(range(n))]
        order, outs = [], []
        ctx = torch.enable_grad() if grad else torch.no_grad()
        from tqdm.auto import tqdm

        bar = tqdm(total=n, disable=not progress, desc=f"scoring ({self.reward_name})")
        with ctx:
            for group in groups:
                for start in range(0, len(group), batch_size):
                    idx = group[start : start + batch_size]
                    batch = _make_batch(values, idx, pixel_key, n, extras or {})
                    outs.append(self(batch.to(device=device, dtype=pix_dtype)))
                    order.extend(idx)
                    bar.update(len(idx))
        bar.close()
        out = RewardOutput.concat(outs)
        if order != list(range(n)):
            inverse = [0] * n
            for pos, i in enumerate(order):
                inverse[i] = pos
            out = out.reorder(inverse)
        return out

    def compare(
        self,
        a: Any,
        b: Any,
        prompts: str | Sequence[str] | None = None,
        temperature: float = 1.0,
        **kwargs: Any,
    ) -> Tensor:
        """P(a ≻ b) = σ((r(a) − r(b)) / T) under the Bradley-Terry model, shape ``(B,)``."""
        field_ = self.candidate_field
        ra = self.score(**{_score_arg(field_): a}, prompts=prompts, **kwargs).scores
        rb = self.score(**{_score_arg(field_): b}, prompts=prompts, **kwargs).scores
        if ra.shape != rb.shape:
            raise InputError("b", f"{ra.shape[0]} items like a", f"{rb.shape[0]} items")
        return torch.sigmoid((ra - rb).float() / temperature)

    def rank(self, candidates: Any, prompt: str | None = None, **kwargs: Any):
        """Rank candidates for one prompt: ``(order, scores)``, best first.

        ``order[0]`` is the index of the best candidate; ``scores`` are in input order.
        """
        out = self.score(**{_score_arg(self.candidate_field): candidates}, prompts=prompt, **kwargs)
        order = torch.argsort(out.scores, descending=True, stable=True)
        return order.tolist(), out.scores

    # -- persistence -----------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``mmreward.json`` and ``model.safetensors`` so :func:`mmreward.load` rebuilds it.

        Models that need more files (a tokenizer, a backbone config) write them in
        :meth:`save_extra_files`; their factory receives the folder as ``saved_dir``.
        """
        from mmreward.checkpoint import save_model_dir
        from mmreward.registry import registered_name

        self.reward_name = registered_name(self)
        directory = save_model_dir(self, directory)
        self.save_extra_files(directory)
        return directory

    def save_extra_files(self, directory: Path) -> None:
        """Write files besides the weights that rebuilding needs (default: none)."""

    def extra_repr(self) -> str:
        return json.dumps({"reward": self.reward_name, "inputs": list(self.inputs)})


def _score_arg(field_: str) -> str:
    return field_ if field_ != "prompts" else "prompts"


def _make_batch(
    values: dict[str, Any],
    idx: list[int],
    pixel_key: str | None,
    n: int,
    extras: dict[str, Any],
) -> RewardInput:
    kwargs: dict[str, Any] = {
        "extras": {
            k: ([v[i] for i in idx] if isinstance(v, list) else v[idx]) if _per_item(v, n) else v
            for k, v in extras.items()
        }
    }
    for name, value in values.items():
        if name == "fps":
            kwargs[name] = value if isinstance(value, (int, float)) else [value[i] for i in idx]
        elif name == pixel_key:
            kwargs[name] = (
                value[idx] if isinstance(value, Tensor) else torch.stack([value[i] for i in idx])
            )
        else:
            if len(value) != n:
                raise InputError(
                    name, f"{n} items (one per {pixel_key or 'item'})", f"{len(value)} items"
                )
            kwargs[name] = [value[i] for i in idx]
    return RewardInput(**kwargs)
