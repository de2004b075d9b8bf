"""Alignment losses against hand computations (math.log / math.exp, not the code)."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_align.losses import (
    d3po_loss,
    denoising_loss,
    diffusion_dpo_loss,
    dpo_beta,
    pareto_preference,
    per_sample_mse,
    refl_loss,
    reward_loss,
)


def neg_log_sigmoid(x: float) -> float:
    return math.log(1.0 + math.exp(-x))


def f64(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_refl_hinge_and_scale() -> None:
    # relu(2 - 1) * 1e-3 = 1e-3 ; relu(2 - 3) = 0 → mean 5e-4
    assert refl_loss(f64([1.0, 3.0]), phi=2.0, lam=1e-3).item() == pytest.approx(5e-4)
    r = torch.tensor([0.5, 2.5], requires_grad=True)
    refl_loss(r, phi=2.0, lam=0.1).backward()
    assert r.grad.tolist() == pytest.approx([-0.05, 0.0])  # only the reward below φ is pushed


def test_reward_loss_is_negative_mean() -> None:
    assert reward_loss(f64([1.0, 2.0, 6.0])).item() == pytest.approx(-3.0)


def test_mse_per_sample_and_denoising() -> None:
    pred = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    assert per_sample_mse(pred, target).tolist() == pytest.approx([2.5, 2.0])  # (1+4)/2, 4/2
    assert denoising_loss(pred, target).item() == pytest.approx(2.25)
    weighted = denoising_loss(pred, target, torch.tensor([0.5, 2.0]))
    assert weighted.item() == pytest.approx((0.5 * 2.5 + 2.0 * 2.0) / 2)


def test_diffusion_dpo_by_hand_and_beta_conventions() -> None:
    ew, el, rw, rl = f64([0.30, 0.10]), f64([0.50, 0.05]), f64([0.40, 0.10]), f64([0.45, 0.10])
    # d − d_ref: (0.30−0.50) − (0.40−0.45) = −0.15 ; (0.10−0.05) − (0.10−0.10) = 0.05
    beta = 20.0
    half = [neg_log_sigmoid(-0.5 * beta * -0.15), neg_log_sigmoid(-0.5 * beta * 0.05)]
    got = diffusion_dpo_loss(ew, el, rw, rl, beta=beta, beta_convention="half")
    assert got.item() == pytest.approx(sum(half) / 2, rel=1e-6)
    plain = diffusion_dpo_loss(ew, el, rw, rl, beta=beta / 2, beta_convention="plain")
    assert plain.item() == pytest.approx(got.item(), rel=1e-6)  # β 5000 'half' = β 2500 'plain'
    assert dpo_beta(5000, "half") == dpo_beta(2500, "plain") == 2500
    with pytest.raises(ValueError, match="beta_convention"):
        dpo_beta(1.0, "double")


def test_diffusion_dpo_gradient_skips_the_reference() -> None:
    ew = torch.tensor([0.3], requires_grad=True)
    rw = torch.tensor([0.4], requires_grad=True)
    diffusion_dpo_loss(ew, torch.tensor([0.5]), rw, torch.tensor([0.45]), beta=2.0).backward()
    assert rw.grad is None or rw.grad.abs().sum() == 0
    # dL/de_w = β_eff·σ(β_eff·x) with x = d − d_ref = −0.15, β_eff = 1
    s = 1 / (1 + math.exp(0.15))
    assert ew.grad.item() == pytest.approx(s, rel=1e-6)


def test_d3po_clipped_ratio_by_hand() -> None:
    beta, eps = 0.1, 0.1
    # step 1: log-ratios 0.05 (winner) and −0.02 (loser): inside the clip range
    # step 2: log-ratios 0.5 → clipped to log(1.1), −0.5 → clipped to log(0.9)
    lw, ll = f64([0.05, 0.5]), f64([-0.02, -0.5])
    zeros = f64([0.0, 0.0])
    l1 = neg_log_sigmoid(beta * 0.05 - beta * -0.02)
    l2 = neg_log_sigmoid(beta * math.log(1.1) - beta * math.log(0.9))
    got = d3po_loss(lw, ll, zeros, zeros, beta=beta, clip=eps)
    assert got.item() == pytest.approx((l1 + l2) / 2, rel=1e-6)
    # reference log-probs shift the ratio; the clipped step carries no gradient
    lw_t = torch.tensor([0.05, 0.5], requires_grad=True)
    d3po_loss(lw_t, torch.tensor([-0.02, -0.5]), torch.zeros(2), torch.zeros(2)).backward()
    assert lw_t.grad[0] < 0 and lw_t.grad[1] == 0


def test_pareto_preference() -> None:
    a = torch.tensor([[1.0, 2.0], [0.0, 0.0], [1.0, 0.0], [3.0, 3.0]])
    b = torch.tensor([[0.0, 2.0], [1.0, 1.0], [0.0, 1.0], [3.0, 3.0]])
    # a dominates; b dominates; incomparable; equal
    assert pareto_preference(a, b).tolist() == [1, -1, 0, 0]
    assert pareto_preference(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 2.0])).tolist() == [1, -1]
    # near-ties below the margin carry no preference; the largest per-reward gap counts
    a, b = (
        torch.tensor([[0.50, 1.0], [0.5, 1.0], [0.9, 0.0]]),
        torch.tensor([[0.45, 1.0], [0.3, 0.9], [0.1, 0.0]]),
    )
    assert pareto_preference(a, b).tolist() == [1, 1, 1]
    assert pareto_preference(a, b, min_margin=0.1).tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="shapes differ"):
        pareto_preference(torch.zeros(2, 2), torch.zeros(2, 3))
