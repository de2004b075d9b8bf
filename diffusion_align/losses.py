"""Alignment losses as pure functions (each tested against a hand computation).

Every function takes tensors and hyper-parameters and returns a scalar loss (fp32); the
data flow that produces the tensors (sampling, decoding, scoring) lives in
:mod:`diffusion_align.algorithms`.

>>> import torch
>>> refl_loss(torch.tensor([1.0, 3.0]), phi=2.0, lam=1e-3)
tensor(0.0005)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Diffusion-DPO β conventions: ``half`` multiplies β by 0.5 (the Diffusion-DPO reference
#: code, β=5000 for SD1.5), ``plain`` does not (β=2500 there is the same objective).
BETA_CONVENTIONS = ("half", "plain")


def refl_loss(rewards: Tensor, phi: float = 2.0, lam: float = 1e-3) -> Tensor:
    """ReFL (Xu et al. 2023, ImageReward §4): ``mean(relu(φ − r) · λ)``.

    Rewards above ``φ`` stop contributing (the hinge keeps the model from chasing the
    reward indefinitely); ``λ`` scales the reward gradient against the regulariser.
    """
    return (F.relu(phi - rewards.float()) * lam).mean()


def reward_loss(rewards: Tensor) -> Tensor:
    """DRaFT / AlignProp: ``−mean(r)`` (AlignProp's ``10 − mean(r)`` has the same gradient)."""
    return -rewards.float().mean()


def per_sample_mse(pred: Tensor, target: Tensor) -> Tensor:
    """``‖pred − target‖²`` averaged over all but the batch dimension, fp32: ``(B,)``."""
    err = (pred.float() - target.float()) ** 2
    return err.mean(dim=tuple(range(1, err.ndim)))


def denoising_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """The pre-training (denoising) objective: mean squared error, fp32; ``weight`` ``(B,)``
    weighs each sample's error (e.g. min-SNR-γ, :meth:`TrainingNoise.loss_weight`)."""
    err = per_sample_mse(pred, target)
    return (err if weight is None else err * weight.to(err)).mean()


def dpo_beta(beta: float, convention: str = "half") -> float:
    """The β that multiplies the error difference: ``β/2`` (``half``) or ``β`` (``plain``)."""
    if convention not in BETA_CONVENTIONS:
        raise ValueError(f"beta_convention: expected one of {BETA_CONVENTIONS}, got {convention!r}")
    return 0.5 * beta if convention == "half" else beta


def diffusion_dpo_loss(
    model_err_w: Tensor,
    model_err_l: Tensor,
    ref_err_w: Tensor,
    ref_err_l: Tensor,
    beta: float = 5000.0,
    beta_convention: str = "half",
) -> Tensor:
    """Diffusion-DPO (Wallace et al. 2023, eq. 14) on per-sample denoising errors.

    ``d = e_θ(w) − e_θ(l)``, ``d_ref = e_ref(w) − e_ref(l)`` with ``e = ‖ε − ε̂(x_t)‖²``
    averaged over latent dimensions (winner and loser noised with the same ε and t);
    ``L = −log σ(−β_eff (d − d_ref))`` with ``β_eff`` from :func:`dpo_beta`. The
    reference errors carry no gradient.
    """
    b = dpo_beta(beta, beta_convention)
    d = model_err_w.float() - model_err_l.float()
    d_ref = (ref_err_w.float() - ref_err_l.float()).detach()
    return -F.logsigmoid(-b * (d - d_ref)).mean()


def d3po_loss(
    logp_w: Tensor,
    logp_l: Tensor,
    ref_logp_w: Tensor,
    ref_logp_l: Tensor,
    beta: float = 0.1,
    clip: float = 0.1,
) -> Tensor:
    """D3PO (Yang et al. 2024, eq. 11) per denoising step, averaged over all entries.

    ``ρ = clip(π_θ(x_{t−1}|x_t,c) / π_ref(x_{t−1}|x_t,c), 1−ε, 1+ε)`` for the winner's and
    the loser's transition at the same step; ``L = −log σ(β log ρ_w − β log ρ_l)``.
    Inputs are per-step log-probs of any matching shape (``(B,)`` or ``(B,S)``). Outside
    the clip range the ratio is constant, so that step contributes no gradient (the
    reference code's ``torch.clamp``).
    """
    lo, hi = 1.0 - clip, 1.0 + clip
    ratio_w = torch.exp(logp_w.float() - ref_logp_w.float().detach()).clamp(lo, hi)
    ratio_l = torch.exp(logp_l.float() - ref_logp_l.float().detach()).clamp(lo, hi)
    return -F.logsigmoid(beta * torch.log(ratio_w) - beta * torch.log(ratio_l)).mean()


def pareto_preference(scores_a: Tensor, scores_b: Tensor, min_margin: float = 0.0) -> Tensor:
    """Pareto dominance between two candidates scored by ``K`` rewards: ``(B,K)`` each.

    Returns ``(B,)`` int64: ``1`` when ``a`` dominates ``b`` (≥ on every reward, > on at
    least one), ``−1`` when ``b`` dominates ``a``, ``0`` otherwise (incomparable or equal:
    no preference). With one reward this is the sign of ``a − b``. ``min_margin > 0`` also
    drops pairs whose largest per-reward gap ``max_k |a_k − b_k|`` is below it (near-ties,
    whose winner is mostly sampling noise).

    >>> pareto_preference(torch.tensor([[1., 2.], [1., 0.]]), torch.tensor([[0., 2.], [0., 1.]]))
    tensor([1, 0])
    """
    if scores_a.ndim == 1:
        scores_a, scores_b = scores_a[:, None], scores_b[:, None]
    if scores_a.shape != scores_b.shape:
        raise ValueError(
            f"scores: shapes differ, {tuple(scores_a.shape)} vs {tuple(scores_b.shape)}"
        )
    ge, gt = (scores_a >= scores_b).all(1), (scores_a > scores_b).any(1)
    le, lt = (scores_a <= scores_b).all(1), (scores_a < scores_b).any(1)
    labels = (ge & gt).long() - (le & lt).long()
    if min_margin > 0:
        labels[(scores_a - scores_b).abs().amax(1) < min_margin] = 0
    return labels
