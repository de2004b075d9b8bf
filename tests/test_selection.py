"""Best-of-N selection primitives and step aggregators."""

from __future__ import annotations

import math

import pytest
import torch

from mmreward.selection import (
    STEP_AGGREGATORS,
    aggregate_steps,
    best_of_n,
    best_of_poisson,
    soft_best_of_n,
)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------ best-of-n


def test_best_of_n_ties_lowest_index_and_dim() -> None:
    scores = torch.tensor([[0.1, 0.7, 0.7], [2.0, 1.0, 2.0]])
    assert best_of_n(scores).tolist() == [1, 0]
    assert best_of_n(scores, dim=0).tolist() == [1, 1, 1]
    assert best_of_n([[1.0, 0.5], [1.0, 0.9]], dim=0).tolist() == [0, 1]
    assert best_of_n([0.0, -math.inf, 3.0]).item() == 2
    with pytest.raises(ValueError, match="scores: contains NaN"):
        best_of_n([0.0, float("nan")])
    with pytest.raises(ValueError, match="at least one candidate"):
        best_of_n(torch.zeros(2, 0))


# ------------------------------------------------------------------- soft best-of-n


def test_soft_bon_huge_lambda_is_argmax() -> None:
    scores = torch.randn(64, 8, generator=seeded(1))
    expected = scores.argmax(dim=-1)
    assert torch.equal(soft_best_of_n(scores, lam=1e6, generator=seeded(2)), expected)
    assert torch.equal(soft_best_of_n(scores, lam=math.inf), expected)
    # works along another dim too
    assert torch.equal(soft_best_of_n(scores.T, lam=1e6, generator=seeded(2), dim=0), expected)


def test_soft_bon_lambda_zero_is_uniform() -> None:
    n, draws = 4, 20_000
    scores = torch.randn(draws, n, generator=seeded(3)) * 10  # scores must not matter
    idx = soft_best_of_n(scores, lam=0.0, generator=seeded(4))
    counts = torch.bincount(idx, minlength=n).double()
    expected = draws / n
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 16.3  # χ²(3 dof) 99.9th percentile


def test_soft_bon_frequencies_follow_softmax() -> None:
    draws = 20_000
    r = torch.tensor([0.0, 1.0, 2.0])
    idx = soft_best_of_n(r.expand(draws, 3), lam=0.5, generator=seeded(5))
    freq = torch.bincount(idx, minlength=3).double() / draws
    z = [math.exp(0.5 * v) for v in (0.0, 1.0, 2.0)]
    probs = [v / sum(z) for v in z]
    assert freq.tolist() == pytest.approx(probs, abs=0.015)


def test_soft_bon_reproducible_and_validated() -> None:
    scores = torch.randn(32, 5, generator=seeded(6))
    a = soft_best_of_n(scores, lam=1.0, generator=seeded(7))
    b = soft_best_of_n(scores, lam=1.0, generator=seeded(7))
    assert torch.equal(a, b)
    assert a.shape == (32,) and a.dtype == torch.long
    with pytest.raises(ValueError, match="lam"):
        soft_best_of_n(scores, lam=-1.0)
    with pytest.raises(ValueError, match="scores: contains NaN or inf"):
        soft_best_of_n([0.0, math.inf], lam=1.0)


# ----------------------------------------------------------------- best-of-poisson


def test_best_of_poisson_respects_n_used() -> None:
    scores = torch.randn(200, 6, generator=seeded(8))
    idx, n_used = best_of_poisson(scores, mu=2.0, generator=seeded(9))
    assert idx.shape == n_used.shape == (200,)
    assert int(n_used.min()) >= 1 and int(n_used.max()) <= 6
    assert bool((idx < n_used).all())
    for row in range(0, 200, 17):
        k = int(n_used[row])
        assert int(idx[row]) == int(scores[row, :k].argmax())
    assert n_used.double().mean().item() == pytest.approx(3.0, abs=0.3)  # 1 + μ, little clamping


def test_best_of_poisson_limits_and_reproducibility() -> None:
    scores = torch.randn(50, 7, generator=seeded(10))
    idx, n_used = best_of_poisson(scores, mu=1e6, generator=seeded(11))
    assert torch.equal(idx, scores.argmax(dim=-1))
    assert bool((n_used == 7).all())
    idx0, n0 = best_of_poisson(scores, mu=0.0, generator=seeded(12))
    assert bool((n0 == 1).all()) and bool((idx0 == 0).all())
    a = best_of_poisson(scores, mu=1.5, generator=seeded(13))
    b = best_of_poisson(scores, mu=1.5, generator=seeded(13))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="mu"):
        best_of_poisson(scores, mu=-0.5)


# ---------------------------------------------------------------- step aggregation

STEPS = [[0.9, 0.5, 0.8], [0.6]]
HAND = {
    "min": [0.5, 0.6],
    "max": [0.9, 0.6],
    "mean": [(0.9 + 0.5 + 0.8) / 3, 0.6],
    "last": [0.8, 0.6],
    "product": [0.9 * 0.5 * 0.8, 0.6],
    "sum_logprob": [math.log(0.9) + math.log(0.5) + math.log(0.8), math.log(0.6)],
}


def test_aggregators_listed() -> None:
    assert set(STEP_AGGREGATORS) == set(HAND)


@pytest.mark.parametrize("method", sorted(HAND))
def test_aggregate_ragged_and_padded_match_hand_values(method: str) -> None:
    ragged = [torch.tensor(s, dtype=torch.float64) for s in STEPS]
    assert aggregate_steps(ragged, method).tolist() == pytest.approx(HAND[method], rel=1e-12)
    padded = torch.tensor([[0.9, 0.5, 0.8], [0.6, 0.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out = aggregate_steps(padded, method, mask=mask)
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx(HAND[method], rel=1e-12)


def test_aggregate_last_with_non_prefix_mask_and_gradients() -> None:
    s = torch.tensor([[0.2, 0.7, 0.4]], requires_grad=True)
    assert aggregate_steps(s, "last", mask=[[1, 1, 0]]).tolist() == pytest.approx([0.7])
    assert aggregate_steps(s, "last", mask=[[1, 0, 1]]).tolist() == pytest.approx([0.4])
    for method in STEP_AGGREGATORS:
        s.grad = None
        aggregate_steps(s, method).sum().backward()
        assert torch.isfinite(s.grad).all()


def test_aggregate_validation() -> None:
    with pytest.raises(ValueError, match=r"method: expected one of \('min', 'last'"):
        aggregate_steps(STEPS, "median")
    with pytest.raises(ValueError, match=r"step_scores\[1\]: empty step list"):
        aggregate_steps([[0.5], []], "min")
    with pytest.raises(ValueError, match="empty step list"):
        aggregate_steps(torch.ones(2, 2), "min", mask=[[True, True], [False, False]])
    with pytest.raises(ValueError, match=r"step_scores: expected shape \(B, S\)"):
        aggregate_steps(torch.ones(3), "min")
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 2\)"):
        aggregate_steps(torch.ones(2, 2), "min", mask=[[True, True]])
    with pytest.raises(ValueError, match="sum_logprob"):
        aggregate_steps([[0.5, 1.5]], "sum_logprob")
