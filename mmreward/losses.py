"""Reward-model losses as pure functions.

Every loss takes rewards/logits (torch tensors or plain sequences), validates them, and
returns a tensor reduced with ``reduction`` ("mean" | "sum" | "none"). All losses are
differentiable in their score arguments. Half-precision inputs are computed in float32;
float64 inputs stay float64.

Validation note: the NaN/inf checks call ``.item()`` on CUDA tensors, i.e. they are a
host-device sync point (cheap next to a reward-model forward pass).

Papers:
- Bradley-Terry reward modelling: Ouyang et al. 2022 (InstructGPT), Eq. 1; margin variant:
  Touvron et al. 2023 (Llama 2), Eq. 2; centering regulariser: trl ``RewardTrainer``
  (``center_rewards_coefficient``, Eisenstein et al. 2023).
- Bradley-Terry with ties: Rao & Kupper 1967; as used by VideoAlign (Liu et al. 2025).
- k-way ranking: Xu et al. 2023 (ImageReward), Eq. 2.
- Step-level BCE for process reward models: Lightman et al. 2023; soft Monte-Carlo
  labels: Wang et al. 2024 (Math-Shepherd), VisualPRM (Wang et al. 2025).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bradley_terry_loss",
    "bt_ties_loss",
    "pairwise_logits_to_prob",
    "ranking_loss",
    "step_bce_loss",
]

Reduction = Literal["mean", "sum", "none"]
TensorLike = Tensor | Sequence[float] | float
_REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------- helpers


def _as_float(x: object, name: str, like: Tensor | None = None) -> Tensor:
    """``torch.as_tensor`` + float dtype (half/bf16 → float32, float64 kept)."""
    device = like.device if like is not None else None
    try:
        if isinstance(x, (list, tuple)) and x and all(isinstance(e, Tensor) for e in x):
            x = torch.stack(list(x))  # keeps autograd, unlike as_tensor on a list of tensors
        t = torch.as_tensor(x, device=device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name}: cannot convert to a tensor ({e})") from None
    if not t.is_floating_point():
        t = t.to(like.dtype if like is not None else torch.get_default_dtype())
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t


def _as_number(x: object, name: str) -> float:
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {x!r}") from None


def _check_finite(t: Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or inf")


def _check_1d(t: Tensor, name: str) -> None:
    if t.ndim != 1:
        raise ValueError(f"{name}: expected shape (B,), got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one element, got shape (0,)")


def _check_same_shape(t: Tensor, ref: Tensor, name: str, ref_name: str) -> None:
    if t.shape != ref.shape:
        raise ValueError(
            f"{name}: expected shape {tuple(ref.shape)} (same as {ref_name}), got {tuple(t.shape)}"
        )


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _pair(a: object, b: object, name_a: str, name_b: str) -> tuple[Tensor, Tensor]:
    """Two (B,) finite float tensors of equal shape on a common dtype/device."""
    ta = _as_float(a, name_a)
    tb = _as_float(b, name_b, like=ta)
    _check_1d(ta, name_a)
    _check_1d(tb, name_b)
    _check_same_shape(tb, ta, name_b, name_a)
    _check_finite(ta, name_a)
    _check_finite(tb, name_b)
    dtype = torch.promote_types(ta.dtype, tb.dtype)
    return ta.to(dtype), tb.to(dtype)


def _preference_label(label: object, like: Tensor, name: str = "label") -> Tensor:
    """A (B,) tensor with values in {-1, 0, 1}, returned as int64."""
    t = torch.as_tensor(label, device=like.device)
    _check_same_shape(t, like, name, "the scores")
    if t.is_floating_point():
        _check_finite(t, name)
    valid = (t == 1) | (t == 0) | (t == -1)
    if not bool(valid.all()):
        bad = t[~valid][:5].tolist()
        raise ValueError(f"{name}: expected values in {{1, -1, 0}} (a, b, tie), got {bad}")
    return t.long()


# ------------------------------------------------------------------------ pairwise


def bradley_terry_loss(
    r_chosen: TensorLike,
    r_rejected: TensorLike,
    margin: TensorLike | None = None,
    center_coef: float = 0.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Bradley-Terry pairwise loss ``-log σ(r_w - r_l - m) + c·(r_w + r_l)²``.

    ``margin`` is ``None`` (m = 0), a scalar, or a (B,) tensor. ``center_coef`` adds trl's
    centering regulariser per pair before reduction, pushing rewards towards zero mean.

    >>> bradley_terry_loss([1.0], [0.0]).item()  # -log σ(1)
    0.3132616877555847
    """
    _check_reduction(reduction)
    r_w, r_l = _pair(r_chosen, r_rejected, "r_chosen", "r_rejected")
    center_coef = _as_number(center_coef, "center_coef")
    if not math.isfinite(center_coef) or center_coef < 0:
        raise ValueError(f"center_coef: expected a finite value >= 0, got {center_coef}")
    logits = r_w - r_l
    if margin is not None:
        m = _as_float(margin, "margin", like=r_w).to(r_w.dtype)
        if m.ndim != 0 and m.shape != r_w.shape:
            raise ValueError(
                f"margin: expected a scalar or shape {tuple(r_w.shape)}, got {tuple(m.shape)}"
            )
        _check_finite(m, "margin")
        logits = logits - m
    # InstructGPT Eq. 1 / Llama 2 Eq. 2: loss = -log σ(r_w - r_l - m)
    loss = -F.logsigmoid(logits)
    if center_coef > 0:
        # trl RewardTrainer: + center_rewards_coefficient · (r_w + r_l)²
        loss = loss + center_coef * (r_w + r_l) ** 2
    return _reduce(loss, reduction)


def bt_ties_loss(
    r_a: TensorLike,
    r_b: TensorLike,
    label: TensorLike,
    k: float = 5.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Rao-Kupper Bradley-Terry-with-ties negative log-likelihood (VideoAlign).

    ``label`` is 1 (a preferred), -1 (b preferred) or 0 (tie); ``k > 1`` controls how much
    probability mass ties get. The three outcome probabilities sum to one.

    >>> round(bt_ties_loss([0.0], [0.0], [0]).item(), 4)  # tie of equal rewards, k = 5
    0.4055
    """
    _check_reduction(reduction)
    k = _as_number(k, "k")
    if not (math.isfinite(k) and k > 1):
        raise ValueError(f"k: expected a finite number > 1 (Rao-Kupper tie parameter), got {k}")
    ra, rb = _pair(r_a, r_b, "r_a", "r_b")
    y = _preference_label(label, ra)
    # Δ = winner - loser; for ties the loss below is symmetric in Δ so either order works.
    delta = torch.where(y == -1, rb - ra, ra - rb)
    log_k = math.log(k)
    # Rao & Kupper 1967: P(a ≻ b) = σ(Δ - log k), P(b ≻ a) = σ(-Δ - log k),
    # P(tie) = (k² - 1)·P(a ≻ b)·P(b ≻ a).
    win = -F.logsigmoid(delta - log_k)
    tie = win - F.logsigmoid(-delta - log_k) - math.log(k * k - 1.0)
    loss = torch.where(y == 0, tie, win)
    return _reduce(loss, reduction)


def pairwise_logits_to_prob(r_a: TensorLike, r_b: TensorLike, temperature: float = 1.0) -> Tensor:
    """Bradley-Terry preference probability ``P(a ≻ b) = σ((r_a - r_b) / T)``.

    >>> pairwise_logits_to_prob([1.0, 0.0], [0.0, 0.0]).tolist()
    [0.7310585975646973, 0.5]
    """
    temperature = _as_number(temperature, "temperature")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: expected a finite value > 0, got {temperature}")
    ra, rb = _pair(r_a, r_b, "r_a", "r_b")
    return torch.sigmoid((ra - rb) / temperature)


# ------------------------------------------------------------------------- ranking


def ranking_loss(
    scores: Tensor | Sequence[Sequence[float]],
    ranks: Tensor | Sequence[Sequence[float]],
    reduction: Reduction = "mean",
) -> Tensor:
    """ImageReward k-way ranking loss: BT over every ordered pair of a ranked list.

    ``scores`` and ``ranks`` are (B, K). A smaller rank is better (rank 1 = best). Every pair
    with ``ranks[b, i] < ranks[b, j]`` contributes ``-log σ(s_i - s_j)``; equal ranks
    contribute nothing. A rank ``<= 0`` marks an absent (padded) candidate, so lists of
    different lengths can share one batch.

    Reductions: "mean" averages over all valid pairs in the batch (error if there are
    none), "sum" adds them, "none" returns the (B, K, K) pair-loss matrix whose entry
    ``[b, i, j]`` is the loss for "i ranked above j" and 0 where (i, j) is not a valid pair.

    >>> round(ranking_loss([[2.0, 1.0, 0.0]], [[1, 2, 3]]).item(), 4)
    0.2512
    """
    _check_reduction(reduction)
    s = _as_float(scores, "scores")
    r = torch.as_tensor(ranks, device=s.device)
    if s.ndim != 2:
        raise ValueError(f"scores: expected shape (B, K), got {tuple(s.shape)}")
    if r.shape != s.shape:
        raise ValueError(
            f"ranks: expected shape {tuple(s.shape)} (same as scores), got {tuple(r.shape)}"
        )
    _check_finite(s, "scores")
    if r.is_floating_point():
        _check_finite(r, "ranks")
    present = r > 0
    # ImageReward Eq. 2: sum over pairs (i, j) with i ranked above j of -log σ(s_i - s_j).
    valid = present[:, :, None] & present[:, None, :] & (r[:, :, None] < r[:, None, :])
    diff = s[:, :, None] - s[:, None, :]
    pair_loss = torch.where(valid, -F.logsigmoid(diff), torch.zeros_like(diff))
    if reduction == "none":
        return pair_loss
    if reduction == "sum":
        return pair_loss.sum()
    n_pairs = int(valid.sum())
    if n_pairs == 0:
        raise ValueError(
            "ranks: no valid pairs (need two present candidates with different ranks; "
            "ranks <= 0 mark absent candidates)"
        )
    return pair_loss.sum() / n_pairs


# ------------------------------------------------------------------ process rewards


def _lengths_differ(x: Sequence[object]) -> bool:
    return len({len(e) for e in x}) > 1  # type: ignore[arg-type]


def _is_ragged(x: object) -> bool:
    """A list/tuple whose items are themselves 1-D sequences (one per solution)."""
    if not isinstance(x, (list, tuple)) or len(x) == 0:
        return False
    return all(isinstance(e, (list, tuple)) or getattr(e, "ndim", None) == 1 for e in x)


def _flatten_ragged(logits: Sequence[object], labels: object) -> tuple[Tensor, Tensor]:
    if not _is_ragged(labels):
        raise ValueError(
            "labels: expected a list of 1-D step-label sequences to match the ragged "
            f"step_logits, got {type(labels).__name__}"
        )
    if len(labels) != len(logits):  # type: ignore[arg-type]
        raise ValueError(
            f"labels: expected {len(logits)} solutions (same as step_logits), got {len(labels)}"  # type: ignore[arg-type]
        )
    flat_x, flat_y = [], []
    for i, (xi, yi) in enumerate(zip(logits, labels, strict=True)):  # type: ignore[arg-type]
        tx = _as_float(xi, f"step_logits[{i}]")
        ty = _as_float(yi, f"labels[{i}]", like=tx)
        if tx.ndim != 1:
            raise ValueError(f"step_logits[{i}]: expected shape (S,), got {tuple(tx.shape)}")
        _check_same_shape(ty, tx, f"labels[{i}]", f"step_logits[{i}]")
        flat_x.append(tx)
        flat_y.append(ty)
    dtype = flat_x[0].dtype
    for t in flat_x[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.cat([t.to(dtype) for t in flat_x]), torch.cat([t.to(dtype) for t in flat_y])


def step_bce_loss(
    step_logits: Tensor | Sequence[object],
    labels: Tensor | Sequence[object],
    mask: Tensor | Sequence[object] | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Step-level binary cross-entropy for process reward models.

    ``step_logits`` are pre-sigmoid scores, one per step; ``labels`` are in [0, 1] and may
    be soft (e.g. Monte-Carlo success rates). Inputs are either padded tensors of equal
    shape (typically (B, S)) with a boolean ``mask`` selecting the real steps, or ragged
    lists of 1-D tensors (one per solution, no mask; equal-length lists given with a mask
    are read as padded). Values at masked-out positions are
    ignored (they may hold padding such as -100).

    Reductions: "mean" averages over valid steps (error if there are none), "sum" adds
    them, "none" returns per-step losses: the input shape with 0 at masked-out positions,
    or, for ragged input, a flat (N_steps,) tensor in solution order.

    >>> round(step_bce_loss([0.0, 0.0], [1.0, 0.5]).item(), 4)  # log 2 for any label
    0.6931
    """
    _check_reduction(reduction)
    if _is_ragged(step_logits) and (mask is None or _lengths_differ(step_logits)):
        if mask is not None:
            raise ValueError("mask: not supported with ragged step_logits (no padding to mask)")
        x, y = _flatten_ragged(step_logits, labels)  # type: ignore[arg-type]
        valid = torch.ones_like(x, dtype=torch.bool)
    else:
        x = _as_float(step_logits, "step_logits")
        y = _as_float(labels, "labels", like=x).to(x.dtype)
        _check_same_shape(y, x, "labels", "step_logits")
        if mask is None:
            valid = torch.ones_like(x, dtype=torch.bool)
        else:
            m = torch.as_tensor(mask, device=x.device)
            _check_same_shape(m, x, "mask", "step_logits")
            if m.dtype != torch.bool:
                if not bool(((m == 0) | (m == 1)).all()):
                    raise ValueError("mask: expected booleans or 0/1 values")
                m = m.bool()
            valid = m
    x_valid, y_valid = x[valid], y[valid]
    _check_finite(x_valid, "step_logits")
    _check_finite(y_valid, "labels")
    if bool(((y_valid < 0) | (y_valid > 1)).any()):
        bad = y_valid[(y_valid < 0) | (y_valid > 1)][:5].tolist()
        raise ValueError(f"labels: expected values in [0, 1], got {bad}")
    # Fill ignored positions with harmless values so neither loss nor gradient turns NaN.
    x_safe = torch.where(valid, x, torch.zeros_like(x))
    y_safe = torch.where(valid, y, torch.zeros_like(y))
    # BCE with soft targets: -[y·log σ(x) + (1 - y)·log(1 - σ(x))]
    per_step = F.binary_cross_entropy_with_logits(x_safe, y_safe, reduction="none")
    per_step = torch.where(valid, per_step, torch.zeros_like(per_step))
    if reduction == "none":
        return per_step
    if reduction == "sum":
        return per_step.sum()
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("mask: no valid steps to average over")
    return per_step.sum() / n_valid
