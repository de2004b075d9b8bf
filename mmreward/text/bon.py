"""Best-of-N for text with any reward model, and the hedging curve (proxy vs gold as n grows).

Selection itself is :mod:`mmreward.selection` (Best-of-N, Soft Best-of-n, Best-of-Poisson);
this module scores candidate responses with a reward model and estimates how the *gold*
reward of the selected response moves with n when selection uses a *proxy*:

- Best-of-n from a pool of N i.i.d. samples has an exact, unbiased estimator (Nakano et
  al. 2021; Gao et al. 2023, "Scaling Laws for Reward Model Overoptimization"): with the
  pool sorted by proxy score, sample i (1-based rank) is the best of a uniformly random
  n-subset with probability C(i−1, n−1) / C(N, n);
- Soft-BoN (Verma et al. 2025) and Best-of-Poisson (Khalaf et al. 2025) are estimated by
  Monte Carlo over random n-subsets of the pool, through the core selection primitives.

Under a misspecified proxy the gold reward of Best-of-n rises and then falls with n
(reward hacking); Soft-BoN with a finite λ and Best-of-Poisson *hedge* against it
(Khalaf et al. 2025, "Inference-Time Reward Hacking in Large Language Models").

>>> import torch
>>> proxy = torch.tensor([[0.0, 1.0, 2.0]]); gold = torch.tensor([[1.0, 2.0, 0.0]])
>>> [round(expected_best_of_n(proxy, gold, n).item(), 6) for n in (1, 2, 3)]
[1.0, 0.666667, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmreward.interface import RewardModel
from mmreward.selection import best_of_n, best_of_poisson, soft_best_of_n


@dataclass
class Selection:
    """The chosen candidate: ``index`` into the candidates, ``response``, all ``scores``."""

    index: int
    response: str
    scores: Tensor


def select_response(
    rm: RewardModel,
    prompt: str,
    candidates: Sequence[str],
    method: str = "best",
    *,
    lam: float | None = None,
    mu: float | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 32,
) -> Selection:
    """Score ``candidates`` for ``prompt`` with ``rm`` and pick one.

    ``method``: ``"best"`` (Best-of-N), ``"soft"`` (Soft-BoN, P ∝ exp(λ r), needs
    ``lam``) or ``"poisson"`` (Best-of-Poisson, n' = 1 + Poisson(μ), needs ``mu``).

    >>> # sel = select_response(rm, "2+2?", ["4", "5", "four"], "soft", lam=2.0)
    """
    if not candidates:
        raise ValueError("candidates: expected at least one response")
    scores = rm.score(prompts=prompt, responses=list(candidates), batch_size=batch_size).scores
    s = scores.float().cpu()
    if method == "best":
        i = int(best_of_n(s))
    elif method == "soft":
        if lam is None:
            raise ValueError("lam: Soft-BoN needs an inverse temperature λ ≥ 0")
        i = int(soft_best_of_n(s[None], lam, generator=generator)[0])
    elif method == "poisson":
        if mu is None:
            raise ValueError("mu: Best-of-Poisson needs a Poisson mean μ ≥ 0")
        i = int(best_of_poisson(s[None], mu, generator=generator)[0][0])
    else:
        raise ValueError(f"method: expected 'best', 'soft' or 'poisson', got {method!r}")
    return Selection(index=i, response=candidates[i], scores=scores)


def _pool(proxy: Any, gold: Any) -> tuple[Tensor, Tensor]:
    p = torch.as_tensor(proxy, dtype=torch.float64)
    g = torch.as_tensor(gold, dtype=torch.float64)
    if p.ndim == 1:
        p, g = p[None], g[None]
    if p.shape != g.shape or p.ndim != 2:
        raise ValueError(
            f"proxy/gold: expected two (P, N) tensors of one shape, got {tuple(p.shape)} "
            f"and {tuple(g.shape)}"
        )
    return p, g


def expected_best_of_n(proxy: Any, gold: Any, n: int) -> Tensor:
    """E[gold of the proxy's best of n] per prompt, exact, from a pool of N samples ``(P, N)``.

    Uses P(rank i is the max of a random n-subset) = C(i−1, n−1)/C(N, n). Returns ``(P,)``.
    """
    p, g = _pool(proxy, gold)
    big_n = p.shape[1]
    if not 1 <= n <= big_n:
        raise ValueError(f"n: expected 1 ≤ n ≤ N = {big_n}, got {n}")
    order = torch.argsort(p, dim=1, stable=True)
    g_sorted = torch.gather(g, 1, order)
    ranks = torch.arange(1, big_n + 1, dtype=torch.float64)
    # log C(i−1, n−1) − log C(N, n) for i ≥ n, else probability 0
    log_w = (
        torch.lgamma(ranks)
        - math.lgamma(n)
        - torch.lgamma((ranks - n + 1).clamp_min(1))
        - (math.lgamma(big_n + 1) - math.lgamma(n + 1) - math.lgamma(big_n - n + 1))
    )
    w = torch.where(ranks >= n, log_w.exp(), torch.zeros_like(log_w))
    return (g_sorted * w).sum(dim=1)


def _random_subsets(p: Tensor, n: int, draws: int, generator: torch.Generator | None) -> Tensor:
    """Indices ``(P, draws, n)`` of uniformly random n-subsets (in random order) of each pool."""
    keys = torch.rand(p.shape[0], draws, p.shape[1], generator=generator)
    return keys.argsort(dim=-1)[..., :n]


def monte_carlo_selection(
    proxy: Any,
    gold: Any,
    n: int,
    method: str = "best",
    *,
    lam: float | None = None,
    mu: float | None = None,
    draws: int = 256,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Monte-Carlo E[gold] and E[proxy] of a selection rule on random n-subsets of the pool.

    ``method`` ∈ {"best", "soft", "poisson"}; for "poisson", n is the pool each draw may
    use and n' = 1 + Poisson(μ) is clamped to it. Returns ``{"gold", "proxy"}`` of shape
    ``(P,)`` (and ``"n_used"`` for Best-of-Poisson).
    """
    p, g = _pool(proxy, gold)
    idx = _random_subsets(p, n, draws, generator)  # (P, R, n)
    ps = torch.gather(p[:, None].expand(-1, draws, -1), 2, idx)
    gs = torch.gather(g[:, None].expand(-1, draws, -1), 2, idx)
    out: dict[str, Tensor] = {}
    if method == "best":
        pick = best_of_n(ps)
    elif method == "soft":
        pick = soft_best_of_n(ps, lam, generator=generator)
    elif method == "poisson":
        pick, n_used = best_of_poisson(ps, mu, generator=generator)
        out["n_used"] = n_used.double().mean(dim=1)
    else:
        raise ValueError(f"method: expected 'best', 'soft' or 'poisson', got {method!r}")
    out["gold"] = torch.gather(gs, 2, pick[..., None]).squeeze(-1).mean(dim=1)
    out["proxy"] = torch.gather(ps, 2, pick[..., None]).squeeze(-1).mean(dim=1)
    return out


def hedging_curve(
    proxy: Any,
    gold: Any,
    ns: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    lams: Sequence[float] = (),
    poisson: bool = True,
    draws: int = 256,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Gold and proxy reward of the selected response vs n, averaged over prompts.

    One row per n: ``bon_gold``/``bon_proxy`` (exact), ``soft_gold[λ]`` for each λ in
    ``lams`` (Soft-BoN on random n-subsets, Monte Carlo), and with ``poisson``
    ``bop_gold`` / ``bop_n_used``: Best-of-Poisson with μ = n − 1 (so E[n'] ≈ n) drawing
    from the whole pool. ``random_gold`` is the pool's mean gold (n = 1).
    """
    p, g = _pool(proxy, gold)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in ns:
        row: dict[str, float] = {"n": n, "random_gold": float(g.mean())}
        row["bon_gold"] = float(expected_best_of_n(p, g, n).mean())
        row["bon_proxy"] = float(expected_best_of_n(p, p, n).mean())
        for lam in lams:
            mc = monte_carlo_selection(p, g, n, "soft", lam=lam, draws=draws, generator=gen)
            row[f"soft_gold[{lam:g}]"] = float(mc["gold"].mean())
        if poisson:
            big_n = p.shape[1]
            mc = monte_carlo_selection(p, g, big_n, "poisson", mu=n - 1, draws=draws, generator=gen)
            row["bop_gold"] = float(mc["gold"].mean())
            row["bop_n_used"] = float(mc["n_used"].mean())
        rows.append(row)
    return rows
