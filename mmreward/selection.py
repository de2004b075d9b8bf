"""Inference-time selection among N scored candidates (Best-of-N and relatives).

These functions only see scores: any reward model, verifier or aggregated process reward
can drive them. Randomness is explicit through ``generator``.

Papers:
- Best-of-N: Nakano et al. 2021 (WebGPT); Stiennon et al. 2020.
- Soft Best-of-n: Verma et al. 2025, "Soft Best-of-n Sampling for Model Alignment":
  pick candidate i with probability exp(λ·r_i) / Σ_j exp(λ·r_j).
- Best-of-Poisson: Khalaf et al. 2025, "Inference-Time Reward Hacking in Large Language
  Models": n' = 1 + Poisson(μ), then Best-of-n'.
- Step aggregation for process reward models: Lightman et al. 2023 (min, product);
  VisualPRM (Wang et al. 2025, mean); MM-PRM (min, last, product, mean, max, sum-logprob).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

__all__ = [
    "STEP_AGGREGATORS",
    "aggregate_steps",
    "best_of_n",
    "best_of_poisson",
    "soft_best_of_n",
]

StepAggregator = Literal["min", "last", "product", "mean", "max", "sum_logprob"]
STEP_AGGREGATORS: tuple[str, ...] = ("min", "last", "product", "mean", "max", "sum_logprob")
TensorLike = Tensor | Sequence[float] | Sequence[Sequence[float]]


# --------------------------------------------------------------------------- helpers


def _as_float(x: object, name: str) -> Tensor:
    try:
        if isinstance(x, (list, tuple)) and x and all(isinstance(e, Tensor) for e in x):
            x = torch.stack(list(x))  # keeps autograd, unlike as_tensor on a list of tensors
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name}: cannot convert to a tensor ({e})") from None
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t


def _candidate_scores(scores: object, dim: int, *, finite: bool = False) -> Tensor:
    """Scores with at least one dimension and at least one candidate along ``dim``."""
    s = _as_float(scores, "scores")
    if s.ndim == 0:
        raise ValueError("scores: expected shape (..., N) with N candidates, got ()")
    if not -s.ndim <= dim < s.ndim:
        raise ValueError(f"dim: expected a dimension of scores {tuple(s.shape)}, got {dim}")
    if s.shape[dim] == 0:
        raise ValueError(f"scores: expected at least one candidate along dim {dim}, got 0")
    if finite and not bool(torch.isfinite(s).all()):
        raise ValueError("scores: contains NaN or inf")
    if bool(torch.isnan(s).any()):
        raise ValueError("scores: contains NaN")
    return s


def _as_number(x: object, name: str) -> float:
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {x!r}") from None


# ------------------------------------------------------------------------ selection


def best_of_n(scores: TensorLike, dim: int = -1) -> Tensor:
    """Index of the best candidate along ``dim`` (ties → lowest index).

    ``scores`` may contain -inf (e.g. masked candidates) but not NaN.

    >>> best_of_n([[0.1, 0.7, 0.7], [2.0, 1.0, 0.0]]).tolist()
    [1, 0]
    """
    s = _candidate_scores(scores, dim)
    return torch.argmax(s, dim=dim)  # returns the first maximal index


def soft_best_of_n(
    scores: TensorLike,
    lam: float,
    generator: torch.Generator | None = None,
    dim: int = -1,
) -> Tensor:
    """Sample a candidate index with probability ∝ exp(λ·r) (Soft Best-of-n).

    λ = 0 is uniform over the N candidates; λ → ∞ approaches Best-of-N (``lam=math.inf``
    is exactly :func:`best_of_n`). Scores must be finite; ``generator`` must live on the
    scores' device.

    >>> g = torch.Generator().manual_seed(0)
    >>> soft_best_of_n([[0.0, 1.0, 5.0]], lam=math.inf, generator=g).tolist()
    [2]
    """
    lam = _as_number(lam, "lam")
    if math.isnan(lam) or lam < 0:
        raise ValueError(f"lam: expected a value >= 0 (inverse temperature), got {lam}")
    s = _candidate_scores(scores, dim, finite=True)
    if math.isinf(lam):
        return torch.argmax(s, dim=dim)
    s = s.movedim(dim, -1)
    batch_shape, n = s.shape[:-1], s.shape[-1]
    # Verma et al. 2025: P(i) = exp(λ r_i) / Σ_j exp(λ r_j). Subtracting the max first keeps
    # λ·(r - max) ≤ 0, so huge λ underflows to 0 instead of overflowing (stable softmax).
    centered = (s - s.amax(dim=-1, keepdim=True)).double()
    probs = torch.softmax(lam * centered, dim=-1).reshape(-1, n)
    idx = torch.multinomial(probs, 1, generator=generator)
    return idx.reshape(batch_shape)


def best_of_poisson(
    scores: TensorLike,
    mu: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Best-of-Poisson: per row draw n' = 1 + Poisson(μ) (clamped to N), argmax of the first n'.

    ``scores`` is (..., N). Taking the first n' candidates is a fair subsample only if the
    N candidates are i.i.d. draws from the policy (no ordering by quality or diversity).
    Returns ``(indices, n_used)``, both int64 with shape ``scores.shape[:-1]``.

    >>> idx, n_used = best_of_poisson([[0.0, 1.0, 5.0]], mu=math.inf)
    >>> idx.tolist(), n_used.tolist()
    ([2], [3])
    """
    mu = _as_number(mu, "mu")
    if math.isnan(mu) or mu < 0:
        raise ValueError(f"mu: expected a value >= 0 (Poisson mean), got {mu}")
    s = _candidate_scores(scores, -1)
    batch_shape, n = s.shape[:-1], s.shape[-1]
    if math.isinf(mu):
        n_used = torch.full(batch_shape, n, dtype=torch.long, device=s.device)
    else:
        rates = torch.full(batch_shape, mu, dtype=torch.float64, device=s.device)
        # Khalaf et al. 2025: n' = 1 + Poisson(μ)
        n_used = (1 + torch.poisson(rates, generator=generator)).clamp(max=n).long()
    positions = torch.arange(n, device=s.device)
    in_subsample = positions < n_used.unsqueeze(-1)
    masked = s.masked_fill(~in_subsample, -math.inf)
    return torch.argmax(masked, dim=-1), n_used


# ------------------------------------------------------------- step aggregation


def _lengths_differ(x: Sequence[object]) -> bool:
    return len({len(e) for e in x}) > 1  # type: ignore[arg-type]


def _is_ragged(x: object) -> bool:
    if not isinstance(x, (list, tuple)) or len(x) == 0:
        return False
    return all(isinstance(e, (list, tuple)) or getattr(e, "ndim", None) == 1 for e in x)


def _pad_ragged(step_scores: Sequence[object]) -> tuple[Tensor, Tensor]:
    rows = []
    for i, steps in enumerate(step_scores):
        t = _as_float(steps, f"step_scores[{i}]")
        if t.ndim != 1:
            raise ValueError(f"step_scores[{i}]: expected shape (S,), got {tuple(t.shape)}")
        if t.shape[0] == 0:
            raise ValueError(f"step_scores[{i}]: empty step list; every candidate needs a step")
        rows.append(t)
    dtype = rows[0].dtype
    for t in rows[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    padded = pad_sequence([t.to(dtype) for t in rows], batch_first=True)
    lengths = torch.tensor([t.shape[0] for t in rows], device=padded.device)
    mask = torch.arange(padded.shape[1], device=padded.device) < lengths[:, None]
    return padded, mask


def aggregate_steps(
    step_scores: Tensor | Sequence[object],
    method: StepAggregator = "min",
    mask: Tensor | Sequence[Sequence[bool]] | None = None,
) -> Tensor:
    """Reduce per-step scores to one score per candidate, shape (B,).

    ``step_scores`` is a ragged list of 1-D tensors (one per candidate) or a padded (B, S)
    tensor with an optional boolean ``mask`` of real steps (equal-length lists given with a
    mask are read as padded). Methods (``STEP_AGGREGATORS``):
    "min", "max", "mean", "last" (last valid step), "product" (Π p) and "sum_logprob"
    (Σ log p; needs p in [0, 1]). Gradients reach the step scores for every method.

    >>> aggregate_steps([[0.9, 0.5], [0.8]], "min").tolist()
    [0.5, 0.800000011920929]
    """
    if method not in STEP_AGGREGATORS:
        raise ValueError(f"method: expected one of {STEP_AGGREGATORS}, got {method!r}")
    if _is_ragged(step_scores) and (mask is None or _lengths_differ(step_scores)):
        if mask is not None:
            raise ValueError("mask: not supported with ragged step_scores (no padding to mask)")
        s, valid = _pad_ragged(step_scores)  # type: ignore[arg-type]
    else:
        s = _as_float(step_scores, "step_scores")
        if s.ndim != 2:
            raise ValueError(
                "step_scores: expected shape (B, S) or a list of per-candidate (S_i,) "
                f"tensors, got {tuple(s.shape)}"
            )
        if mask is None:
            valid = torch.ones_like(s, dtype=torch.bool)
        else:
            valid = torch.as_tensor(mask, device=s.device)
            if valid.shape != s.shape:
                raise ValueError(
                    f"mask: expected shape {tuple(s.shape)} (same as step_scores), "
                    f"got {tuple(valid.shape)}"
                )
            if valid.dtype != torch.bool:
                if not bool(((valid == 0) | (valid == 1)).all()):
                    raise ValueError("mask: expected booleans or 0/1 values")
                valid = valid.bool()
    if s.shape[1] == 0 or not bool(valid.any(dim=1).all()):
        raise ValueError("step_scores: empty step list; every candidate needs a valid step")
    if bool(torch.isnan(s[valid]).any()):
        raise ValueError("step_scores: contains NaN")

    if method == "min":
        return s.masked_fill(~valid, math.inf).amin(dim=1)
    if method == "max":
        return s.masked_fill(~valid, -math.inf).amax(dim=1)
    if method == "mean":
        return torch.where(valid, s, torch.zeros_like(s)).sum(dim=1) / valid.sum(dim=1)
    if method == "last":
        positions = torch.arange(s.shape[1], device=s.device)
        last = torch.where(valid, positions, torch.zeros_like(positions)).amax(dim=1)
        return s.gather(1, last[:, None]).squeeze(1)
    if method == "product":
        return torch.where(valid, s, torch.ones_like(s)).prod(dim=1)
    # sum_logprob: Σ_t log p_t = log Π_t p_t, computed in log space to avoid underflow.
    p = s[valid]
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError(
            f"step_scores: 'sum_logprob' needs probabilities in [0, 1], "
            f"got {p[(p < 0) | (p > 1)][:5].tolist()}"
        )
    return torch.where(valid, s, torch.ones_like(s)).log().sum(dim=1)
