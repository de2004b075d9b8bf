"""Reward-model losses against hand computations (math.log / math.exp, not the code)."""

from __future__ import annotations

import math

import pytest
import torch

from mmreward.losses import (
    bradley_terry_loss,
    bt_ties_loss,
    pairwise_logits_to_prob,
    ranking_loss,
    step_bce_loss,
)


def neg_log_sigmoid(x: float) -> float:
    """-log σ(x) = log(1 + e^{-x}), written out by hand."""
    return math.log(1.0 + math.exp(-x))


def bce(x: float, y: float) -> float:
    p = 1.0 / (1.0 + math.exp(-x))
    return -(y * math.log(p) + (1.0 - y) * math.log(1.0 - p))


def f64(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ------------------------------------------------------------------- Bradley-Terry


def test_bt_plain_matches_hand_values() -> None:
    # Δ = 1.0 - 0.5 = 0.5 and 0.5 - 1.0 = -0.5
    l1 = math.log(1.0 + math.exp(-0.5))  # -log(1 / (1 + e^{-0.5}))
    l2 = math.log(1.0 + math.exp(0.5))
    loss = bradley_terry_loss(f64([1.0, 0.5]), f64([0.5, 1.0]))
    assert loss.item() == pytest.approx((l1 + l2) / 2, rel=1e-12)
    assert bradley_terry_loss([1.0, 0.5], [0.5, 1.0], reduction="sum").item() == pytest.approx(
        l1 + l2, rel=1e-6
    )
    per_pair = bradley_terry_loss(f64([1.0, 0.5]), f64([0.5, 1.0]), reduction="none")
    assert per_pair.shape == (2,)
    assert per_pair.tolist() == pytest.approx([l1, l2], rel=1e-12)


def test_bt_margin_tensor_and_scalar() -> None:
    # Δ - m = 0.5 - 0.2 = 0.3 and -0.5 - 0.1 = -0.6
    expected = [math.log(1 + math.exp(-0.3)), math.log(1 + math.exp(0.6))]
    loss = bradley_terry_loss(
        f64([1.0, 0.5]), f64([0.5, 1.0]), margin=f64([0.2, 0.1]), reduction="none"
    )
    assert loss.tolist() == pytest.approx(expected, rel=1e-12)
    # scalar margin 1.0: Δ - m = -0.5 and -1.5
    loss = bradley_terry_loss(f64([1.0, 0.5]), f64([0.5, 1.0]), margin=1.0, reduction="none")
    assert loss.tolist() == pytest.approx([neg_log_sigmoid(-0.5), neg_log_sigmoid(-1.5)])


def test_bt_centering_added_per_pair() -> None:
    c = 0.01
    r_w, r_l = [1.0, 0.5], [0.5, 1.0]
    # each pair: -log σ(Δ) + c·(r_w + r_l)² with r_w + r_l = 1.5
    expected = [math.log(1 + math.exp(-0.5)) + c * 1.5**2, math.log(1 + math.exp(0.5)) + c * 1.5**2]
    loss = bradley_terry_loss(f64(r_w), f64(r_l), center_coef=c, reduction="none")
    assert loss.tolist() == pytest.approx(expected, rel=1e-12)
    # margin and centering together, mean reduction
    m = 0.25
    expected = (
        math.log(1 + math.exp(-(0.5 - m))) + math.log(1 + math.exp(-(-0.5 - m))) + 2 * c * 2.25
    ) / 2
    loss = bradley_terry_loss(f64(r_w), f64(r_l), margin=m, center_coef=c)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_bt_gradients_finite_and_correct_for_extreme_rewards() -> None:
    r_w = torch.tensor([80.0, -80.0, 0.3], requires_grad=True)
    r_l = torch.tensor([-80.0, 80.0, 0.1], requires_grad=True)
    loss = bradley_terry_loss(r_w, r_l, center_coef=0.1)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(r_w.grad).all() and torch.isfinite(r_l.grad).all()
    # d/dΔ of -log σ(Δ) is -(1 - σ(Δ)); the third pair: Δ = 0.2, r_w + r_l = 0.4
    sig = 1 / (1 + math.exp(-0.2))
    expected = (-(1 - sig) + 0.1 * 2 * 0.4) / 3
    assert r_w.grad[2].item() == pytest.approx(expected, rel=1e-5)


def test_bt_half_precision_computed_in_float32() -> None:
    loss = bradley_terry_loss(torch.tensor([1.0], dtype=torch.bfloat16), torch.zeros(1))
    assert loss.dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"r_chosen": torch.zeros(3, 2), "r_rejected": torch.zeros(3, 2)},
            r"r_chosen: expected shape \(B,\), got \(3, 2\)",
        ),
        (
            {"r_chosen": [1.0, 2.0, 3.0], "r_rejected": [1.0, 2.0]},
            r"r_rejected: expected shape \(3,\).*got \(2,\)",
        ),
        ({"r_chosen": [1.0, float("nan")], "r_rejected": [0.0, 0.0]}, r"r_chosen: contains NaN"),
        ({"r_chosen": [1.0], "r_rejected": [0.0], "reduction": "avg"}, r"reduction"),
        ({"r_chosen": [1.0], "r_rejected": [0.0], "center_coef": -1.0}, r"center_coef"),
        (
            {"r_chosen": [1.0, 2.0], "r_rejected": [0.0, 0.0], "margin": [0.1, 0.2, 0.3]},
            r"margin: expected a scalar or shape \(2,\), got \(3,\)",
        ),
        ({"r_chosen": [], "r_rejected": []}, r"r_chosen: expected at least one"),
    ],
)
def test_bt_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bradley_terry_loss(**kwargs)


# --------------------------------------------------------------- Rao-Kupper ties


def test_bt_ties_hand_values() -> None:
    k = 5.0
    # a wins with Δ = 1.2 - 0.2 = 1: -log σ(1 - log 5) = log(1 + 5·e^{-1})
    win = math.log(1 + 5 * math.exp(-1.0))
    # b wins with the same margin: Δ = r_b - r_a = 1
    # tie with r_a - r_b = 0.2: log(1 + 5e^{-0.2}) + log(1 + 5e^{0.2}) - log(5² - 1)
    tie = math.log(1 + 5 * math.exp(-0.2)) + math.log(1 + 5 * math.exp(0.2)) - math.log(24.0)
    loss = bt_ties_loss(
        f64([1.2, 0.2, 0.3]), f64([0.2, 1.2, 0.1]), [1, -1, 0], k=k, reduction="none"
    )
    assert loss.tolist() == pytest.approx([win, win, tie], rel=1e-12)
    mean = bt_ties_loss(f64([1.2, 0.2, 0.3]), f64([0.2, 1.2, 0.1]), torch.tensor([1, -1, 0]), k=k)
    assert mean.item() == pytest.approx((2 * win + tie) / 3, rel=1e-12)


@pytest.mark.parametrize("k", [1.5, 5.0, 20.0])
@pytest.mark.parametrize("delta", [-3.0, -0.4, 0.0, 0.7, 2.5])
def test_bt_ties_probabilities_sum_to_one(delta: float, k: float) -> None:
    r_a, r_b = f64([delta] * 3), f64([0.0] * 3)
    loss = bt_ties_loss(r_a, r_b, [1, -1, 0], k=k, reduction="none")
    assert torch.exp(-loss).sum().item() == pytest.approx(1.0, abs=1e-12)


def test_bt_ties_gradients_finite() -> None:
    r_a = torch.tensor([50.0, -3.0, 0.0], requires_grad=True)
    r_b = torch.tensor([-50.0, 2.0, 0.0], requires_grad=True)
    bt_ties_loss(r_a, r_b, [0, 1, -1]).backward()
    assert torch.isfinite(r_a.grad).all() and torch.isfinite(r_b.grad).all()


def test_bt_ties_validation() -> None:
    with pytest.raises(ValueError, match=r"k: expected a finite number > 1"):
        bt_ties_loss([1.0], [0.0], [1], k=1.0)
    with pytest.raises(ValueError, match=r"label: expected values in"):
        bt_ties_loss([1.0, 0.0], [0.0, 1.0], [1, 2])
    with pytest.raises(ValueError, match=r"label: expected shape \(2,\)"):
        bt_ties_loss([1.0, 0.0], [0.0, 1.0], [1])


def test_pairwise_logits_to_prob() -> None:
    p = pairwise_logits_to_prob(f64([1.0, 0.0]), f64([0.5, 0.0]), temperature=2.0)
    assert p.tolist() == pytest.approx([1 / (1 + math.exp(-0.25)), 0.5], rel=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        pairwise_logits_to_prob([1.0], [0.0], temperature=0.0)


# -------------------------------------------------------------------- k-way ranking


def test_ranking_loss_k3_is_mean_of_three_pair_losses() -> None:
    scores = f64([[0.3, 1.1, -0.4]])
    ranks = torch.tensor([[2, 1, 3]])  # candidate 1 best, then 0, then 2
    pairs = [
        math.log(1 + math.exp(-(1.1 - 0.3))),  # 1 over 0
        math.log(1 + math.exp(-(1.1 - (-0.4)))),  # 1 over 2
        math.log(1 + math.exp(-(0.3 - (-0.4)))),  # 0 over 2
    ]
    assert ranking_loss(scores, ranks).item() == pytest.approx(sum(pairs) / 3, rel=1e-12)
    assert ranking_loss(scores, ranks, reduction="sum").item() == pytest.approx(sum(pairs))
    matrix = ranking_loss(scores, ranks, reduction="none")
    assert matrix.shape == (1, 3, 3)
    assert matrix[0, 1, 0].item() == pytest.approx(pairs[0], rel=1e-12)
    assert matrix[0, 0, 1].item() == 0.0
    # same as BT over the three (winner, loser) pairs
    bt = bradley_terry_loss(f64([1.1, 1.1, 0.3]), f64([0.3, -0.4, -0.4]))
    assert ranking_loss(scores, ranks).item() == pytest.approx(bt.item(), rel=1e-12)


def test_ranking_loss_equal_ranks_and_padding() -> None:
    # list 0: ranks [1, 1, 2] → pairs (0 over 2), (1 over 2); list 1: rank 0 = absent → (0 over 1)
    scores = f64([[0.5, 0.2, 0.0], [1.0, 2.0, 9.0]])
    ranks = torch.tensor([[1, 1, 2], [1, 2, 0]])
    pairs = [neg_log_sigmoid(0.5), neg_log_sigmoid(0.2), neg_log_sigmoid(1.0 - 2.0)]
    assert ranking_loss(scores, ranks).item() == pytest.approx(sum(pairs) / 3, rel=1e-12)


def test_ranking_loss_gradients_and_validation() -> None:
    scores = torch.tensor([[3.0, -2.0, 0.5, 100.0]], requires_grad=True)
    ranks = torch.tensor([[4, 1, 2, 0]])
    ranking_loss(scores, ranks).backward()
    assert torch.isfinite(scores.grad).all()
    assert scores.grad[0, 3].item() == 0.0  # absent candidate gets no gradient
    with pytest.raises(ValueError, match=r"scores: expected shape \(B, K\), got \(3,\)"):
        ranking_loss([1.0, 2.0, 3.0], [1, 2, 3])
    with pytest.raises(ValueError, match=r"ranks: expected shape \(1, 3\)"):
        ranking_loss([[1.0, 2.0, 3.0]], [[1, 2]])
    with pytest.raises(ValueError, match=r"ranks: no valid pairs"):
        ranking_loss([[1.0, 2.0]], [[1, 1]])


# ----------------------------------------------------------------------- step BCE


def test_step_bce_soft_labels_and_mask() -> None:
    logits = f64([[0.5, -1.0, 2.0], [0.3, 9.9, 9.9]])
    labels = f64([[1.0, 0.25, 0.5], [0.0, -100.0, -100.0]])  # -100 = padding, ignored
    mask = torch.tensor([[True, True, True], [True, False, False]])
    per_step = [bce(0.5, 1.0), bce(-1.0, 0.25), bce(2.0, 0.5), bce(0.3, 0.0)]
    loss = step_bce_loss(logits, labels, mask=mask)
    assert loss.item() == pytest.approx(sum(per_step) / 4, rel=1e-12)
    assert step_bce_loss(logits, labels, mask, reduction="sum").item() == pytest.approx(
        sum(per_step), rel=1e-12
    )
    none = step_bce_loss(logits, labels, mask, reduction="none")
    assert none.shape == (2, 3)
    assert none[1, 1:].tolist() == [0.0, 0.0]
    # ragged input gives the same mean
    ragged = step_bce_loss([f64([0.5, -1.0, 2.0]), f64([0.3])], [[1.0, 0.25, 0.5], [0.0]])
    assert ragged.item() == pytest.approx(sum(per_step) / 4, rel=1e-12)


def test_step_bce_gradients_finite_and_masked() -> None:
    logits = torch.tensor([[40.0, -40.0, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 0.3], [0.7, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    step_bce_loss(logits, labels, mask).backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[1, 1:].tolist() == [0.0, 0.0]
    # d/dx BCE = σ(x) - y, divided by 4 valid steps
    assert logits.grad[0, 2].item() == pytest.approx((0.5 - 0.3) / 4, rel=1e-6)
    ragged = [
        torch.tensor([0.2, -0.1], requires_grad=True),
        torch.tensor([1.5], requires_grad=True),
    ]
    step_bce_loss(ragged, [torch.tensor([1.0, 0.0]), torch.tensor([0.5])]).backward()
    assert all(torch.isfinite(t.grad).all() for t in ragged)


def test_step_bce_validation() -> None:
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 1\]"):
        step_bce_loss([0.0, 1.0], [0.5, 1.5])
    with pytest.raises(ValueError, match=r"labels: expected shape \(2,\)"):
        step_bce_loss([0.0, 1.0], [0.5])
    with pytest.raises(ValueError, match=r"labels\[1\]: expected shape \(2,\)"):
        step_bce_loss([[0.0], [1.0, 2.0]], [[1.0], [0.0]])
    with pytest.raises(ValueError, match=r"step_logits: contains NaN"):
        step_bce_loss([float("nan")], [1.0])
    with pytest.raises(ValueError, match=r"mask: no valid steps"):
        step_bce_loss([[0.0, 1.0]], [[1.0, 1.0]], mask=[[False, False]])
    with pytest.raises(ValueError, match=r"mask: not supported with ragged"):
        step_bce_loss([[0.0], [1.0, 2.0]], [[1.0], [0.0, 1.0]], mask=[[True], [True, True]])
