"""Evaluation metrics for reward models; inputs are tensors or sequences, outputs floats.

All metrics detach their inputs and compute in float64 NumPy; none is differentiable.

Papers:
- Pairwise preference accuracy: Xu et al. 2023 (ImageReward); Kirstain et al. 2023
  (PickScore, ties get half credit).
- Tie-aware accuracy with a tuned tie threshold: Deutsch et al. 2023 ("Ties Matter"),
  as used by VideoAlign / VideoGen-RewardBench (Liu et al. 2025).
- Step F1: VisualProcessBench (Wang et al. 2025, VisualPRM), macro F1 of the "correct" and
  "erroneous" step classes.
- Expected calibration error: Naeini et al. 2015; Guo et al. 2017, Eq. 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "StepF1",
    "TieThresholdSweep",
    "expected_calibration_error",
    "pairwise_accuracy",
    "preference_accuracy_report",
    "roc_auc",
    "spearman",
    "step_f1",
    "tie_aware_accuracy",
    "tie_threshold_sweep",
]

ArrayLike = Tensor | np.ndarray | Sequence[float]
_MAX_SWEEP_THRESHOLDS = 200


# --------------------------------------------------------------------------- helpers


def _to_numpy(x: object, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: cannot convert to a numeric array ({e})") from None
    return a


def _vector(x: object, name: str, *, allow_empty: bool = False) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected shape (N,), got {a.shape}")
    if a.size == 0 and not allow_empty:
        raise ValueError(f"{name}: expected at least one element, got shape (0,)")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return a


def _same_length(a: np.ndarray, b: np.ndarray, name: str, ref_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: expected shape {b.shape} (same as {ref_name}), got {a.shape}")


def _preference_inputs(
    score_a: object, score_b: object, label: object
) -> tuple[np.ndarray, np.ndarray]:
    """Return (Δ = score_a - score_b, label in {-1, 0, 1}) after validation."""
    a = _vector(score_a, "score_a")
    b = _vector(score_b, "score_b")
    y = _vector(label, "label")
    _same_length(b, a, "score_b", "score_a")
    _same_length(y, a, "label", "score_a")
    bad = ~np.isin(y, (-1.0, 0.0, 1.0))
    if bad.any():
        raise ValueError(
            f"label: expected values in {{1, -1, 0}} (a, b, tie), got {y[bad][:5].tolist()}"
        )
    return a - b, y


def _binary_labels(y: np.ndarray, name: str) -> np.ndarray:
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise ValueError(f"{name}: expected values in {{0, 1}}, got {y[bad][:5].tolist()}")
    return y


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not (np.isfinite(t) and t >= 0):
        raise ValueError(f"threshold: expected a finite value >= 0, got {threshold}")
    return t


# ----------------------------------------------------------------------- preference


def pairwise_accuracy(score_a: ArrayLike, score_b: ArrayLike, label: ArrayLike) -> float:
    """Preference accuracy over non-tie pairs; a predicted exact tie counts as half.

    ``label`` is 1 (a better), -1 (b better) or 0 (tie, excluded).

    >>> pairwise_accuracy([1.0, 0.0, 2.0, 5.0], [0.0, 1.0, 2.0, 0.0], [1, 1, 1, 0])
    0.5
    """
    delta, y = _preference_inputs(score_a, score_b, label)
    keep = y != 0
    if not keep.any():
        raise ValueError("label: no non-tie pairs; pairwise accuracy is undefined")
    pred = np.sign(delta[keep])
    # PickScore convention: a predicted tie (Δ == 0) earns half credit.
    credit = np.where(pred == 0, 0.5, (pred == y[keep]).astype(np.float64))
    return float(credit.mean())


def tie_aware_accuracy(
    score_a: ArrayLike, score_b: ArrayLike, label: ArrayLike, threshold: float
) -> float:
    """Three-way accuracy: predict a tie when ``|Δ| <= threshold``, else ``sign(Δ)``.

    Accuracy is ``mean(pred == label)`` over all pairs, ties included ("Ties Matter").

    >>> tie_aware_accuracy([1.0, 0.1, 0.0], [0.0, 0.0, 1.0], [1, 0, 1], threshold=0.2)
    0.6666666666666666
    """
    t = _check_threshold(threshold)
    delta, y = _preference_inputs(score_a, score_b, label)
    pred = np.where(np.abs(delta) <= t, 0.0, np.sign(delta))
    return float((pred == y).mean())


@dataclass
class TieThresholdSweep:
    """Result of :func:`tie_threshold_sweep`; ``accuracies[i]`` is at ``thresholds[i]``."""

    best_threshold: float
    best_accuracy: float
    thresholds: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)


def _default_thresholds(abs_delta: np.ndarray) -> np.ndarray:
    """0 plus the distinct |Δ| (every distinct prediction), thinned to ~200 quantiles."""
    cuts = np.unique(abs_delta)
    if cuts.size > _MAX_SWEEP_THRESHOLDS:
        cuts = np.unique(np.quantile(cuts, np.linspace(0.0, 1.0, _MAX_SWEEP_THRESHOLDS)))
    return np.unique(np.concatenate([[0.0], cuts]))


def tie_threshold_sweep(
    score_a: ArrayLike,
    score_b: ArrayLike,
    label: ArrayLike,
    thresholds: Sequence[float] | None = None,
) -> TieThresholdSweep:
    """Tie-aware accuracy at each threshold; the best is the smallest with top accuracy.

    By default the candidates are 0 and the sorted distinct ``|Δ|`` values (each one a cut
    point that changes the prediction), capped at ~200 quantiles. The threshold is tuned on
    the evaluated data itself (as in VideoAlign), so the best accuracy is optimistic.

    >>> tie_threshold_sweep([1.0, 0.1], [0.0, 0.0], [1, 0]).best_threshold
    0.1
    """
    delta, y = _preference_inputs(score_a, score_b, label)
    abs_delta = np.abs(delta)
    if thresholds is None:
        cand = _default_thresholds(abs_delta)
    else:
        cand = _vector(thresholds, "thresholds")
        if (cand < 0).any():
            raise ValueError(f"thresholds: expected values >= 0, got {cand[cand < 0][:5].tolist()}")
    # Sort pairs by |Δ| once: at threshold t the first idx(t) pairs are predicted ties.
    order = np.argsort(abs_delta, kind="stable")
    sorted_abs = abs_delta[order]
    tie_ok = np.concatenate([[0], np.cumsum(y[order] == 0)])
    sign_ok = np.concatenate([[0], np.cumsum(np.sign(delta[order]) == y[order])])
    idx = np.searchsorted(sorted_abs, cand, side="right")
    acc = (tie_ok[idx] + (sign_ok[-1] - sign_ok[idx])) / y.size
    top = acc == acc.max()
    best = int(np.flatnonzero(top)[np.argmin(cand[top])])  # smallest top threshold
    return TieThresholdSweep(
        best_threshold=float(cand[best]),
        best_accuracy=float(acc[best]),
        thresholds=cand.tolist(),
        accuracies=acc.tolist(),
    )


def preference_accuracy_report(
    score_a: ArrayLike, score_b: ArrayLike, label: ArrayLike
) -> dict[str, float | int]:
    """Summary used by reward benchmarks: accuracy with and without ties.

    Keys: ``accuracy_without_ties``, ``tie_aware_accuracy`` (at the best swept threshold),
    ``best_tie_threshold``, ``n_pairs``, ``n_ties``.

    >>> preference_accuracy_report([1.0, 0.1], [0.0, 0.0], [1, 0])["tie_aware_accuracy"]
    1.0
    """
    _, y = _preference_inputs(score_a, score_b, label)
    sweep = tie_threshold_sweep(score_a, score_b, label)
    return {
        "accuracy_without_ties": pairwise_accuracy(score_a, score_b, label),
        "tie_aware_accuracy": sweep.best_accuracy,
        "best_tie_threshold": sweep.best_threshold,
        "n_pairs": int(y.size),
        "n_ties": int((y == 0).sum()),
    }


# ------------------------------------------------------------------------- ranking


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..N with ties given their average rank (scipy.stats.rankdata 'average')."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    new_group = np.concatenate([[True], sorted_a[1:] != sorted_a[:-1]])
    group_id = np.cumsum(new_group)  # 1-based group index per sorted position
    bounds = np.concatenate([np.flatnonzero(new_group), [a.size]])
    # Group g spans sorted positions bounds[g-1] .. bounds[g]-1 → ranks bounds[g-1]+1 .. bounds[g].
    avg = 0.5 * (bounds[group_id - 1] + 1 + bounds[group_id])
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = avg
    return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation (Pearson of average ranks), as ``scipy.stats.spearmanr``.

    >>> spearman([1.0, 2.0, 3.0], [10.0, 30.0, 20.0])
    0.5
    """
    a = _vector(x, "x")
    b = _vector(y, "y")
    _same_length(b, a, "y", "x")
    if a.size < 2:
        raise ValueError(f"x: expected at least 2 items, got {a.size}")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    for r, name in ((ra, "x"), (rb, "y")):
        if not r.any():
            raise ValueError(f"{name}: all values are equal; Spearman correlation is undefined")
    return float(np.clip((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)), -1.0, 1.0))


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC: P(a positive outscores a negative), ties counting ½ (Mann–Whitney U from
    average ranks); NaN unless both classes are present.

    >>> roc_auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.4])
    0.625
    """
    y = _binary_labels(_vector(labels, "labels"), "labels").astype(bool)
    s = _vector(scores, "scores")
    _same_length(s, y, "scores", "labels")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan")
    u = _average_ranks(s)[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


# ------------------------------------------------------------------ process rewards


@dataclass
class StepF1:
    """Step-level classification scores (VisualProcessBench)."""

    f1_error: float  # F1 with erroneous steps (label 0) as the positive class
    f1_correct: float  # F1 with correct steps (label 1) as the positive class
    macro_f1: float  # mean of the two
    accuracy: float
    n_steps: int


def _flat_steps(x: object, name: str) -> np.ndarray:
    """Flatten ragged per-solution step lists, or a flat/padded array, to (N,)."""
    is_ragged = isinstance(x, (list, tuple)) and any(
        isinstance(e, (list, tuple)) or getattr(e, "ndim", 0) >= 1 for e in x
    )
    if is_ragged:
        parts = [_vector(e, f"{name}[{i}]", allow_empty=True) for i, e in enumerate(x)]  # type: ignore[arg-type]
        return np.concatenate(parts) if parts else np.zeros(0)
    a = _to_numpy(x, name)
    if a.ndim != 1:
        raise ValueError(
            f"{name}: expected shape (N,) or a list of per-solution (S_i,) steps, got {a.shape}"
        )
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return a


def _f1(tp: int, fp: int, fn: int) -> float:
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0  # sklearn's zero_division=0 convention


def step_f1(
    step_probs: ArrayLike | Sequence[ArrayLike],
    step_labels: ArrayLike | Sequence[ArrayLike],
    threshold: float = 0.5,
) -> StepF1:
    """Step F1 scores: labels 1 = correct step, 0 = erroneous; predicted correct if p ≥ t.

    Inputs are flat (N,) arrays or ragged lists with one (S_i,) array per solution.

    >>> step_f1([[0.9, 0.2], [0.8]], [[1, 0], [0]]).macro_f1
    0.6666666666666666
    """
    p = _flat_steps(step_probs, "step_probs")
    y = _binary_labels(_flat_steps(step_labels, "step_labels"), "step_labels")
    _same_length(y, p, "step_labels", "step_probs")
    if p.size == 0:
        raise ValueError("step_probs: expected at least one step, got none")
    t = float(threshold)
    if not np.isfinite(t):
        raise ValueError(f"threshold: expected a finite value, got {threshold}")
    pred = p >= t
    gold = y == 1
    tp_c = int((pred & gold).sum())  # correct steps predicted correct
    tp_e = int((~pred & ~gold).sum())  # erroneous steps predicted erroneous
    fp_c = int((pred & ~gold).sum())  # erroneous predicted correct
    fn_c = int((~pred & gold).sum())  # correct predicted erroneous
    f1_correct = _f1(tp_c, fp_c, fn_c)
    f1_error = _f1(tp_e, fn_c, fp_c)
    return StepF1(
        f1_error=f1_error,
        f1_correct=f1_correct,
        macro_f1=0.5 * (f1_error + f1_correct),
        accuracy=(tp_c + tp_e) / p.size,
        n_steps=int(p.size),
    )


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> float:
    """Binary expected calibration error with ``n_bins`` equal-width bins.

    ``ECE = Σ_b (n_b / N)·|acc_b - conf_b|`` where ``conf_b`` is the mean predicted
    probability of the positive class in bin b and ``acc_b`` the fraction of positive
    labels there. Bins are (i/n, (i+1)/n], with p = 0 placed in the first bin.

    >>> round(expected_calibration_error([0.9, 0.9, 0.2], [1, 0, 0], n_bins=2), 4)
    0.3333
    """
    p = _vector(probs, "probs")
    y = _binary_labels(_vector(labels, "labels"), "labels")
    _same_length(y, p, "labels", "probs")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(
            f"probs: expected values in [0, 1], got {p[(p < 0) | (p > 1)][:5].tolist()}"
        )
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins: expected an integer >= 1, got {n_bins!r}")
    inner_edges = np.linspace(0.0, 1.0, int(n_bins) + 1)[1:-1]
    bin_id = np.searchsorted(inner_edges, p, side="left")
    # Guo et al. 2017, Eq. 3: Σ_b |B_b|/N · |acc(B_b) - conf(B_b)|
    conf_sum = np.bincount(bin_id, weights=p, minlength=n_bins)
    pos_sum = np.bincount(bin_id, weights=y, minlength=n_bins)
    return float(np.abs(pos_sum - conf_sum).sum() / p.size)
