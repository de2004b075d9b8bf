"""Per-domain reward standardisation and the Diffusion Reward combination.

Conditional-entropy rewards live on a scale set by the model and the domain (bits/dim of
one task's frames), so they are standardised with statistics measured on that domain's
expert videos, r̂ = (r − μ)/σ, and combined with an exploration bonus and the task's
sparse reward (Huang et al. 2023, eq. 7):

    r = (1 − α)·r̂_ce + α·r_RND + r_sparse,   α = 0.95 in the paper.

Two failure modes of the reference implementation are guarded against: dividing by the
exploration scale (α = 0 must simply drop the bonus), and a statistics table whose key was
misspelled (a missing key is an error that lists the known keys, never a silent default).

>>> stats = RewardStats({"world": {"mean": -2.0, "std": 0.5}})
>>> stats.standardize(torch.tensor([-2.0, -1.0]), "world")
tensor([0., 2.])
>>> combine_rewards(torch.tensor([1.0]), alpha=0.0)
tensor([1.])
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mmreward.checkpoint import atomic_write

STATS_FILE = "stats.json"


@dataclass(frozen=True)
class DomainStats:
    """μ and σ of one domain's rewards (σ > 0)."""

    mean: float
    std: float
    count: int = 0  # rewards they were measured on (0: unknown)


def _check_stats(domain: str, mean: object, std: object) -> DomainStats:
    where = f"stats[{domain!r}]"
    if not isinstance(mean, (int, float)) or not math.isfinite(mean):
        raise ValueError(f"{where}.mean: expected a finite number, got {mean!r}")
    if not isinstance(std, (int, float)) or not math.isfinite(std) or std <= 0:
        raise ValueError(
            f"{where}.std: expected a finite number > 0, got {std!r} (σ = 0 means every "
            "reward it was measured on was equal; measure it on more varied expert videos)"
        )
    return DomainStats(float(mean), float(std))


class RewardStats:
    """A table of per-domain (μ, σ), read from and written to JSON.

    The JSON holds ``{"<domain>": {"mean": μ, "std": σ, "count": n}, ...}``.

    Args:
        table: domain → ``{"mean", "std"[, "count"]}`` or :class:`DomainStats`.
    """

    def __init__(self, table: Mapping[str, Mapping[str, float] | DomainStats] | None = None):
        self._table: dict[str, DomainStats] = {}
        for domain, entry in (table or {}).items():
            if isinstance(entry, DomainStats):
                entry = {"mean": entry.mean, "std": entry.std, "count": entry.count}
            if not isinstance(entry, Mapping) or not {"mean", "std"} <= set(entry):
                raise ValueError(
                    f"stats[{domain!r}]: expected a mapping with 'mean' and 'std', got {entry!r}"
                )
            checked = _check_stats(domain, entry["mean"], entry["std"])
            self._table[str(domain)] = DomainStats(
                checked.mean, checked.std, int(entry.get("count", 0))
            )

    # -- table --------------------------------------------------------------------------
    @property
    def domains(self) -> list[str]:
        return sorted(self._table)

    def __contains__(self, domain: object) -> bool:
        return domain in self._table

    def __getitem__(self, domain: str) -> DomainStats:
        if domain not in self._table:
            close = difflib.get_close_matches(str(domain), self.domains, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(
                f"domain: no reward statistics for {domain!r} (known domains: "
                f"{self.domains or 'none'}){hint} Measure them with RewardStats.fit on expert "
                "videos of that domain."
            )
        return self._table[domain]

    def set(self, domain: str, rewards: Tensor) -> DomainStats:
        """Measure μ and σ of ``rewards`` (any shape) for ``domain`` and store them."""
        stats = RewardStats.fit(rewards, domain)
        self._table[domain] = stats
        return stats

    @staticmethod
    def fit(rewards: Tensor, domain: str = "domain") -> DomainStats:
        """μ and σ (population) of ``rewards``; an error if σ = 0 or a value is not finite."""
        r = torch.as_tensor(rewards, dtype=torch.float64).flatten()
        if r.numel() < 2:
            raise ValueError(f"rewards: expected ≥ 2 values to measure σ, got {r.numel()}")
        if not torch.isfinite(r).all():
            raise ValueError("rewards: expected finite values, got NaN or inf")
        checked = _check_stats(domain, r.mean().item(), r.std(unbiased=False).item())
        return DomainStats(checked.mean, checked.std, r.numel())

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {
            d: {"mean": s.mean, "std": s.std, "count": s.count}
            for d, s in sorted(self._table.items())
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        atomic_write(path, lambda p: p.write_text(text))
        return path

    @classmethod
    def load(cls, path: str | Path) -> RewardStats:
        path = Path(path)
        try:
            table = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(table, dict):
            raise ValueError(f"{path}: expected a JSON object of domains, got {type(table)}")
        return cls(table)

    # -- use ----------------------------------------------------------------------------
    def standardize(self, rewards: Tensor, domain: str) -> Tensor:
        """(r − μ_domain) / σ_domain."""
        s = self[domain]
        return (rewards - s.mean) / s.std

    def __repr__(self) -> str:
        return f"RewardStats({self.to_dict()})"


def combine_rewards(
    ce: Tensor,
    alpha: float = 0.95,
    rnd_bonus: Tensor | None = None,
    sparse: Tensor | float | None = None,
) -> Tensor:
    """r = (1 − α)·r̂_ce + α·r_RND + r_sparse (Huang et al. 2023, eq. 7).

    Args:
        ce: the standardised conditional-entropy reward r̂_ce.
        alpha: the exploration weight in [0, 1]. With α = 0 the bonus is not used (and may
            be None); nothing is ever divided by α.
        rnd_bonus: the RND novelty bonus, same shape as ``ce`` (needed when α > 0).
        sparse: the task's sparse reward (broadcast to ``ce``), or None.
    """
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    r = (1.0 - alpha) * ce
    if alpha > 0:
        if rnd_bonus is None:
            raise ValueError(
                f"rnd_bonus: required when alpha > 0 (got alpha={alpha}); pass the RND "
                "bonus or set alpha=0 to use the conditional-entropy reward alone"
            )
        if rnd_bonus.shape != ce.shape:
            raise ValueError(
                f"rnd_bonus: expected shape {tuple(ce.shape)} like ce, got {tuple(rnd_bonus.shape)}"
            )
        r = r + alpha * rnd_bonus
    if sparse is not None:
        r = r + sparse
    return r
