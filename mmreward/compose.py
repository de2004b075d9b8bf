"""Reward composition: sums, normalisation, clipping, ensembles and weight averaging.

Every combinator is itself a :class:`~mmreward.interface.RewardModel`: it needs the
ordered union of its members' inputs and is differentiable w.r.t. pixels only when every
member is. Members are registered as sub-modules, so ``.to(device)`` moves them.

- :class:`WeightedSum` — r = Σ_i w_i·r_i (multi-objective rewards).
- :class:`Normalized` — (r − μ)/σ with fixed statistics (e.g. ImageReward's standardisation).
- :class:`PerPromptStatTracker` / :class:`RunningNormalized` — DDPO's per-prompt advantage
  normalisation (Black et al. 2023, "Training Diffusion Models with Reinforcement
  Learning", https://arxiv.org/abs/2305.13301, and its reference implementation).
- :func:`group_advantages` — GRPO group-relative advantages (Shao et al. 2024; used by
  Flow-GRPO / DanceGRPO).
- :class:`Clipped` — clamp to [low, high].
- :class:`Ensemble` — mean, min or mean − k·std over members (conservative ensembles
  against reward hacking, Coste et al. 2023, https://arxiv.org/abs/2310.02743).
- :func:`average_weights` — WARM, weight-averaged reward models (Ramé et al. 2024,
  https://arxiv.org/abs/2401.12187).

>>> import torch
>>> from mmreward.analytic import Colorfulness, Sharpness
>>> rm = WeightedSum({"color": Colorfulness(), "sharp": Sharpness()}, {"color": 1.0, "sharp": 0.01})
>>> out = rm(images=torch.rand(2, 3, 16, 16))
>>> sorted(out.sub_scores), rm.differentiable
(['color', 'sharp'], True)
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mmreward.interface import RewardInput, RewardModel, RewardOutput

ENSEMBLE_MODES = ("mean", "min", "mean_minus_std")


# -- helpers -------------------------------------------------------------------------------
def _union_inputs(members: Sequence[RewardModel], extra: Sequence[str] = ()) -> tuple[str, ...]:
    """Ordered union of the members' declared inputs (first appearance wins), then ``extra``."""
    seen: list[str] = []
    for m in members:
        for name in m.inputs:
            if name not in seen:
                seen.append(name)
    for name in extra:
        if name not in seen:
            seen.append(name)
    return tuple(seen)


def _check_member(reward: Any, where: str) -> RewardModel:
    if not isinstance(reward, RewardModel):
        raise TypeError(f"{where}: expected a RewardModel, got {type(reward).__name__}")
    return reward


def _adopt(owner: RewardModel, members: Sequence[RewardModel], extra: Sequence[str] = ()) -> None:
    """Set the interface attributes of a combinator from its members (instance attributes)."""
    owner.inputs = _union_inputs(members, extra)
    owner.differentiable = all(m.differentiable for m in members)
    resolutions = {m.native_resolution for m in members}
    owner.native_resolution = resolutions.pop() if len(resolutions) == 1 else None
    frames = {m.native_frames for m in members}
    owner.native_frames = frames.pop() if len(frames) == 1 else None


def _wrap(inner: RewardOutput, scores: Tensor) -> RewardOutput:
    """A wrapper's output: new scores; the member's sub-scores plus its raw score as ``raw``."""
    return RewardOutput(
        scores=scores,
        sub_scores={**inner.sub_scores, "raw": inner.scores},
        step_scores=inner.step_scores,
        extras=dict(inner.extras),
    )


def _finite(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return value


# -- weighted sum --------------------------------------------------------------------------
class WeightedSum(RewardModel):
    """r = Σ_i w_i · r_i over named member rewards.

    ``sub_scores`` holds each member's raw (unweighted) score under its key. Weights default
    to 1 for every member; when given, their keys must be exactly the reward keys.

    >>> import torch
    >>> from mmreward.analytic import Colorfulness, Sharpness
    >>> rm = WeightedSum({"c": Colorfulness(), "s": Sharpness()}, {"c": 2.0, "s": -1.0})
    >>> x = torch.rand(3, 3, 8, 8)
    >>> out = rm(images=x)
    >>> torch.allclose(out.scores, 2 * out.sub_scores["c"] - out.sub_scores["s"])
    True
    """

    def __init__(
        self, rewards: Mapping[str, RewardModel], weights: Mapping[str, float] | None = None
    ) -> None:
        super().__init__()
        if not rewards:
            raise ValueError("rewards: expected at least one named reward model, got none")
        for key, rm in rewards.items():
            if not isinstance(key, str) or not key or "." in key:
                raise ValueError(
                    f"rewards: keys must be non-empty strings without '.', got {key!r}"
                )
            _check_member(rm, f"rewards[{key!r}]")
        if weights is None:
            weights = {key: 1.0 for key in rewards}
        missing = [k for k in rewards if k not in weights]
        extra = [k for k in weights if k not in rewards]
        if missing or extra:
            raise ValueError(
                "weights: keys must match the reward keys "
                f"{list(rewards)}; missing weights for {missing}, weights without a reward {extra}"
            )
        self.rewards = nn.ModuleDict(dict(rewards))
        self.weights: dict[str, float] = {
            k: _finite(weights[k], f"weights[{k!r}]") for k in rewards
        }
        self.sub_score_names = tuple(rewards)
        _adopt(self, list(rewards.values()))

    def compute(self, batch: RewardInput) -> RewardOutput:
        sub = {key: rm(batch).scores for key, rm in self.rewards.items()}
        total = sum(self.weights[key] * s for key, s in sub.items())
        return RewardOutput(scores=total, sub_scores=sub)


# -- fixed normalisation -----------------------------------------------------------------
class Normalized(RewardModel):
    """Fixed standardisation r' = (r − μ) / σ (e.g. ImageReward's published μ, σ).

    >>> import torch
    >>> from mmreward.analytic import Colorfulness
    >>> rm = Normalized(Colorfulness(), mean=30.0, std=10.0)
    >>> out = rm(images=torch.rand(2, 3, 8, 8))
    >>> torch.allclose(out.scores, (out.sub_scores["raw"] - 30.0) / 10.0)
    True
    """

    def __init__(self, reward: RewardModel, mean: float, std: float) -> None:
        super().__init__()
        self.reward = _check_member(reward, "reward")
        self.mean = _finite(mean, "mean")
        self.std = _finite(std, "std")
        if self.std <= 0:
            raise ValueError(f"std: expected a positive number, got {self.std}")
        self.sub_score_names = (*reward.sub_score_names, "raw")
        _adopt(self, [reward])

    def compute(self, batch: RewardInput) -> RewardOutput:
        inner = self.reward(batch)
        return _wrap(inner, (inner.scores - self.mean) / self.std)


# -- clipping ------------------------------------------------------------------------------
class Clipped(RewardModel):
    """r' = clamp(r, low, high); either bound may be None. Gradients pass inside the range.

    >>> import torch
    >>> from mmreward.analytic import Colorfulness
    >>> rm = Clipped(Colorfulness(), low=0.0, high=1.0)
    >>> bool((rm(images=torch.rand(4, 3, 8, 8)).scores <= 1.0).all())
    True
    """

    def __init__(
        self, reward: RewardModel, low: float | None = None, high: float | None = None
    ) -> None:
        super().__init__()
        self.reward = _check_member(reward, "reward")
        if low is None and high is None:
            raise ValueError("Clipped: expected at least one of low/high, got neither")
        self.low = None if low is None else _finite(low, "low")
        self.high = None if high is None else _finite(high, "high")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"Clipped: expected low <= high, got low={low}, high={high}")
        self.sub_score_names = (*reward.sub_score_names, "raw")
        _adopt(self, [reward])

    def compute(self, batch: RewardInput) -> RewardOutput:
        inner = self.reward(batch)
        return _wrap(inner, inner.scores.clamp(min=self.low, max=self.high))


# -- ensembles -----------------------------------------------------------------------------
class Ensemble(RewardModel):
    """Combine M reward models scoring the same thing; scores stacked as ``(M, B)``.

    Modes: ``"mean"``; ``"min"`` (worst-case); ``"mean_minus_std"`` = mean − k·std, the
    uncertainty-weighted conservative ensemble (std over members, population, i.e.
    ``unbiased=False``). ``sub_scores``: ``member_0``, ``member_1``, ... and ``std`` (the
    ensemble spread, reported in every mode).

    >>> import torch
    >>> from mmreward.convnet import TinyConvReward
    >>> members = [TinyConvReward(resolution=8, channels=(4,)) for _ in range(3)]
    >>> out = Ensemble(members, mode="min")(images=torch.rand(2, 3, 8, 8))
    >>> sorted(out.sub_scores)
    ['member_0', 'member_1', 'member_2', 'std']
    """

    def __init__(self, rewards: Sequence[RewardModel], mode: str = "mean", k: float = 1.0) -> None:
        super().__init__()
        rewards = list(rewards)
        if not rewards:
            raise ValueError("Ensemble: expected at least one member reward model, got none")
        if mode not in ENSEMBLE_MODES:
            raise ValueError(f"Ensemble mode: expected one of {ENSEMBLE_MODES}, got {mode!r}")
        for i, rm in enumerate(rewards):
            _check_member(rm, f"rewards[{i}]")
        self.rewards = nn.ModuleList(rewards)
        self.mode = mode
        self.k = _finite(k, "k")
        self.sub_score_names = (*(f"member_{i}" for i in range(len(rewards))), "std")
        _adopt(self, rewards)

    def compute(self, batch: RewardInput) -> RewardOutput:
        stacked = torch.stack([rm(batch).scores for rm in self.rewards])  # (M, B)
        mean = stacked.mean(dim=0)
        std = stacked.std(dim=0, unbiased=False)
        if self.mode == "mean":
            scores = mean
        elif self.mode == "min":
            scores = stacked.min(dim=0).values
        else:  # mean_minus_std
            scores = mean - self.k * std
        sub = {f"member_{i}": s for i, s in enumerate(stacked.unbind(0))}
        sub["std"] = std
        return RewardOutput(scores=scores, sub_scores=sub)


# -- per-prompt statistics (DDPO) / group advantages (GRPO) --------------------------------
class PromptStats(NamedTuple):
    """Statistics of one prompt's reward buffer (population std)."""

    mean: float
    std: float
    count: int


class PerPromptStatTracker:
    """DDPO per-prompt reward normalisation (Black et al. 2023, reference implementation).

    Each prompt keeps a buffer (a deque) of its last ``buffer_size`` rewards. The
    advantage of a reward r for prompt p is (r − μ_p) / (σ_p + 1e-6), where (μ_p, σ_p) are
    the mean and population std of p's buffer when it holds at least ``min_count`` values,
    and otherwise of the whole current batch (all prompts). :meth:`update` adds the new
    rewards to the buffers *before* computing the statistics, as the reference does.

    Statistics are treated as constants (computed without gradient); the returned
    advantages keep the gradient of ``rewards`` itself. The state is JSON-serialisable
    (:meth:`state_dict`) so trainers can checkpoint it.

    >>> import torch
    >>> tracker = PerPromptStatTracker(buffer_size=4, min_count=2)
    >>> adv = tracker.update(["a", "a", "b", "b"], torch.tensor([1.0, 3.0, 10.0, 10.0]))
    >>> [round(v, 3) for v in adv.tolist()]
    [-1.0, 1.0, 0.0, 0.0]
    >>> tracker.get_stats()["a"]
    PromptStats(mean=2.0, std=1.0, count=2)
    """

    eps = 1e-6  # added to σ, as in the reference

    def __init__(self, buffer_size: int = 32, min_count: int = 16) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size: expected a positive integer, got {buffer_size}")
        if min_count < 1:
            raise ValueError(f"min_count: expected a positive integer, got {min_count}")
        self.buffer_size = int(buffer_size)
        self.min_count = int(min_count)
        self._buffers: dict[str, deque[float]] = {}

    def _check(self, prompts: Sequence[str], rewards: Tensor) -> None:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts: expected a list of strings, got {type(prompts).__name__}")
        if not isinstance(rewards, Tensor) or rewards.ndim != 1:
            shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
            raise ValueError(f"rewards: expected a (B,) tensor, got {shape}")
        if len(prompts) != rewards.shape[0]:
            raise ValueError(
                f"prompts: expected one prompt per reward ({rewards.shape[0]}), got {len(prompts)}"
            )
        if rewards.numel() == 0:
            raise ValueError("rewards: expected at least one reward, got an empty tensor")

    def update(self, prompts: Sequence[str], rewards: Tensor) -> Tensor:
        """Add ``rewards`` (B,) to the per-prompt buffers, then return advantages (B,)."""
        self._check(prompts, rewards)
        for p, r in zip(prompts, rewards.detach().double().cpu().tolist(), strict=True):
            self._buffers.setdefault(p, deque(maxlen=self.buffer_size)).append(r)
        return self.advantages(prompts, rewards)

    def advantages(self, prompts: Sequence[str], rewards: Tensor) -> Tensor:
        """Advantages (B,) from the stored buffers, without updating them."""
        self._check(prompts, rewards)
        batch = rewards.detach().double()
        batch_stats = (batch.mean().item(), batch.std(unbiased=False).item())
        mean = torch.empty_like(batch)
        std = torch.empty_like(batch)
        cache: dict[str, tuple[float, float]] = {}
        for i, p in enumerate(prompts):
            if p not in cache:
                buf = self._buffers.get(p, ())
                if len(buf) >= self.min_count:
                    s = self._stats(buf)
                    cache[p] = (s.mean, s.std)
                else:
                    cache[p] = batch_stats
            mean[i], std[i] = cache[p]
        mean, std = mean.to(rewards.dtype), std.to(rewards.dtype)
        return (rewards - mean) / (std + self.eps)

    @staticmethod
    def _stats(buf: Sequence[float]) -> PromptStats:
        t = torch.tensor(list(buf), dtype=torch.float64)
        return PromptStats(t.mean().item(), t.std(unbiased=False).item(), len(buf))

    def get_stats(self) -> dict[str, PromptStats]:
        """``{prompt: (mean, std, count)}`` of every buffer (population std)."""
        return {p: self._stats(buf) for p, buf in self._buffers.items() if buf}

    def clear(self) -> None:
        """Forget every prompt's buffer."""
        self._buffers.clear()

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: settings and every prompt's buffer (oldest first)."""
        return {
            "buffer_size": self.buffer_size,
            "min_count": self.min_count,
            "buffers": {p: list(buf) for p, buf in self._buffers.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` snapshot (settings included)."""
        missing = [k for k in ("buffer_size", "min_count", "buffers") if k not in state]
        if missing:
            raise KeyError(f"PerPromptStatTracker state: missing entries {missing}")
        self.buffer_size = int(state["buffer_size"])
        self.min_count = int(state["min_count"])
        self._buffers = {
            str(p): deque((float(v) for v in values), maxlen=self.buffer_size)
            for p, values in state["buffers"].items()
        }

    def __len__(self) -> int:
        return len(self._buffers)

    def __repr__(self) -> str:
        return (
            f"PerPromptStatTracker(buffer_size={self.buffer_size}, min_count={self.min_count}, "
            f"prompts={len(self._buffers)})"
        )


def group_advantages(
    rewards: Tensor,
    group_ids: Sequence[Hashable] | Tensor,
    eps: float = 1e-6,
    std: bool = True,
) -> Tensor:
    """GRPO group-relative advantages: Â_i = (r_i − mean_g) / (std_g + eps), g = group of i.

    Statistics are over the current batch only (population std, ``unbiased=False``, like
    :class:`PerPromptStatTracker`); with ``std=False`` only the group mean is subtracted. A group
    of one gets advantage 0.

    >>> import torch
    >>> adv = group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), ["a", "a", "b", "b"])
    >>> [round(v, 4) for v in adv.tolist()]
    [-1.0, 1.0, 0.0, 0.0]
    """
    if not isinstance(rewards, Tensor) or rewards.ndim != 1:
        shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise ValueError(f"rewards: expected a (B,) tensor, got {shape}")
    if isinstance(group_ids, Tensor):
        if group_ids.shape != rewards.shape:
            raise ValueError(
                f"group_ids: expected shape {tuple(rewards.shape)}, got {tuple(group_ids.shape)}"
            )
        _, inverse = torch.unique(group_ids, return_inverse=True)
    else:
        if len(group_ids) != rewards.shape[0]:
            raise ValueError(
                f"group_ids: expected {rewards.shape[0]} ids (one per reward), got {len(group_ids)}"
            )
        index: dict[Hashable, int] = {}
        inverse = torch.tensor([index.setdefault(g, len(index)) for g in group_ids])
    inverse = inverse.to(rewards.device)
    n_groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    r = rewards if rewards.is_floating_point() else rewards.float()
    count = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(
        0, inverse, torch.ones_like(r)
    )
    total = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add(0, inverse, r)
    centred = r - (total / count)[inverse]
    if not std:
        return centred
    sq = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add(0, inverse, centred**2)
    sigma = (sq / count).sqrt()[inverse]
    return centred / (sigma + eps)


# -- running (per-prompt) normalisation --------------------------------------------------------
class RunningNormalized(RewardModel):
    """Per-prompt running normalisation: scores are :class:`PerPromptStatTracker` advantages.

    Needs ``prompts`` (in addition to the member's inputs).

    - **train mode** (``rm.train()``, the nn.Module default): each forward adds the batch to
      the tracker's buffers, then normalises (DDPO's behaviour).
    - **eval mode** (``rm.eval()``): the stored statistics are used and nothing is added;
      prompts whose buffer holds fewer than ``min_count`` values fall back to the current
      batch's statistics, as in training.

    The statistics are constants for autograd, so the model is differentiable when its
    member is. ``sub_scores["raw"]`` keeps the member's raw score.

    >>> import torch
    >>> from mmreward.analytic import Colorfulness
    >>> rm = RunningNormalized(Colorfulness(), PerPromptStatTracker(buffer_size=8, min_count=2))
    >>> out = rm(images=torch.rand(4, 3, 8, 8), prompts=["a", "a", "b", "b"])
    >>> rm.tracker.get_stats()["a"].count
    2
    """

    def __init__(self, reward: RewardModel, tracker: PerPromptStatTracker | None = None) -> None:
        super().__init__()
        self.reward = _check_member(reward, "reward")
        self.tracker = tracker if tracker is not None else PerPromptStatTracker()
        self.sub_score_names = (*reward.sub_score_names, "raw")
        _adopt(self, [reward], extra=("prompts",))

    def compute(self, batch: RewardInput) -> RewardOutput:
        inner = self.reward(batch)
        if self.training:
            adv = self.tracker.update(batch.prompts, inner.scores)
        else:
            adv = self.tracker.advantages(batch.prompts, inner.scores)
        return _wrap(inner, adv)


# -- weight averaging (WARM) ---------------------------------------------------------------
def average_weights(
    models: Sequence[nn.Module], weights: Sequence[float] | None = None
) -> nn.Module:
    """WARM: one model whose weights are the (weighted) mean of fine-tuned models' weights.

    Ramé et al. 2024 fine-tune M reward models from one shared initialisation and average
    them, θ = Σ_i λ_i θ_i (λ_i = 1/M by default), which is more reliable under
    distribution shift and delays reward hacking. Returns a deep copy of ``models[0]``
    with every floating-point parameter/buffer in its ``state_dict`` replaced by the
    average, accumulated in fp64 (so averaging a model with itself is exact) and cast
    back to the first model's dtype. Integer and bool buffers must be identical across
    models; non-persistent buffers come from ``models[0]``. ``weights`` (non-negative,
    positive sum) are normalised to sum to 1.

    Raises ``ValueError`` naming the problem when the models differ in class, state-dict
    keys (missing/unexpected per model index) or shapes.

    >>> from mmreward.convnet import TinyConvReward
    >>> a, b = (TinyConvReward(resolution=8, channels=(4,)) for _ in range(2))
    >>> warm = average_weights([a, b])
    >>> import torch
    >>> torch.allclose(warm.head[0].bias, (a.head[0].bias + b.head[0].bias) / 2)
    True
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"average_weights: expected at least two models, got {len(models)}")
    lam = _averaging_weights(weights, len(models))
    _check_compatible(models)

    states = [m.state_dict() for m in models]
    averaged: dict[str, Tensor] = {}
    for key, ref in states[0].items():
        if ref.is_floating_point() or ref.is_complex():
            # fp64 accumulation (MPS has no fp64; complex stays complex)
            wide = torch.float32 if ref.device.type == "mps" else torch.float64
            acc_dtype = torch.promote_types(ref.dtype, wide)
            acc = torch.zeros(ref.shape, dtype=acc_dtype, device=ref.device)
            for w, sd in zip(lam, states, strict=True):
                acc += w * sd[key].detach().to(device=ref.device, dtype=acc_dtype)
            averaged[key] = acc.to(ref.dtype)
        else:
            for i, sd in enumerate(states[1:], start=1):
                other = sd[key].to(ref.device)
                if other.dtype != ref.dtype or not torch.equal(other, ref):
                    raise ValueError(
                        f"average_weights: non-floating buffer {key!r} ({ref.dtype}) differs "
                        f"between model 0 and model {i}; integer/bool buffers must be identical"
                    )
            averaged[key] = ref.clone()

    merged = copy.deepcopy(models[0])
    merged.load_state_dict(averaged, strict=True)
    return merged


def _averaging_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    weights = [_finite(w, "weights") for w in weights]
    if len(weights) != n:
        raise ValueError(f"weights: expected {n} weights (one per model), got {len(weights)}")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(
            f"weights: expected non-negative weights with a positive sum, got {weights}"
        )
    total = sum(weights)
    return [w / total for w in weights]


def _check_compatible(models: Sequence[nn.Module]) -> None:
    """Raise ``ValueError`` listing every class / key / shape difference against model 0."""
    classes = [type(m).__qualname__ for m in models]
    if len({type(m) for m in models}) > 1:
        listed = ", ".join(f"model {i}: {c}" for i, c in enumerate(classes))
        raise ValueError(f"average_weights: models must share one class, got {listed}")
    ref = models[0].state_dict()
    problems: list[str] = []
    for i, m in enumerate(models[1:], start=1):
        sd = m.state_dict()
        missing = sorted(set(ref) - set(sd))
        unexpected = sorted(set(sd) - set(ref))
        if missing:
            problems.append(f"model {i}: missing keys {missing}")
        if unexpected:
            problems.append(f"model {i}: unexpected keys {unexpected}")
        shapes = [
            f"{k}: model 0 {tuple(ref[k].shape)} vs model {i} {tuple(sd[k].shape)}"
            for k in ref
            if k in sd and ref[k].shape != sd[k].shape
        ]
        if shapes:
            problems.append(f"model {i}: shape mismatches [{'; '.join(shapes)}]")
    if problems:
        raise ValueError(
            f"average_weights: {classes[0]} models have incompatible state dicts "
            "(WARM needs one architecture fine-tuned from a shared init):\n  "
            + "\n  ".join(problems)
        )


__all__ = [
    "ENSEMBLE_MODES",
    "Clipped",
    "Ensemble",
    "Normalized",
    "PerPromptStatTracker",
    "PromptStats",
    "RunningNormalized",
    "WeightedSum",
    "average_weights",
    "group_advantages",
]
