"""Random Network Distillation (Burda et al. 2018, arXiv:1810.12894): a novelty bonus.

A fixed, randomly initialised *target* network f maps a frame to features; a *predictor*
f̂ is trained to match it on the frames the agent has seen. The prediction error
‖f̂(x) − f(x)‖² stays high on unfamiliar frames, so it is an exploration bonus. Diffusion
Reward adds it to the conditional-entropy reward with weight α (see
:func:`~video.diffusion_reward.standardize.combine_rewards`).

The bonus is divided by a running standard deviation of past errors (as in the paper), so
its scale does not drift as the predictor learns; the running statistics are buffers
(saved with the weights).

>>> import torch
>>> rnd = RND(resolution=8, seed=0)
>>> rnd.error(torch.rand(4, 3, 8, 8)).shape
torch.Size([4])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmreward.errors import InputError


def _encoder(resolution: int, width: int, features: int) -> nn.Sequential:
    side = resolution // 4
    return nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(width, width, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(width * side * side, features),
    )


class RND(nn.Module):
    """Target f (fixed) and predictor f̂ (trained) over frames ``(N,3,H,W)`` in [0,1].

    Args:
        resolution: frames are resized (bilinear, antialiased) to this side (÷4).
        width: conv channels; features: output dimension.
        seed: initialises the target and the predictor (different draws).
        eps: floor of the running σ the bonus is divided by (never divides by 0).
    """

    def __init__(
        self, resolution: int = 16, width: int = 16, features: int = 32, seed: int = 0, eps=1e-8
    ) -> None:
        super().__init__()
        if resolution % 4:
            raise ValueError(f"resolution: expected a multiple of 4, got {resolution}")
        self.resolution, self.eps = resolution, float(eps)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.target = _encoder(resolution, width, features)
            self.predictor = _encoder(resolution, width, features)
        self.target.requires_grad_(False)
        # running moments of the raw error (Chan et al. parallel update)
        self.register_buffer("err_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("err_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("err_var", torch.ones((), dtype=torch.float64))

    def _prep(self, frames: Tensor) -> Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise InputError("frames", "(N,3,H,W) float tensor in [0,1]", str(tuple(frames.shape)))
        x = frames.to(self.err_mean.device, torch.float32)
        r = self.resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        return x * 2.0 - 1.0

    def error(self, frames: Tensor) -> Tensor:
        """‖f̂(x) − f(x)‖² / features per frame, ``(N,)`` (differentiable in f̂)."""
        x = self._prep(frames)
        with torch.no_grad():
            target = self.target(x)
        return (self.predictor(x) - target).pow(2).mean(1)

    @torch.no_grad()
    def bonus(self, frames: Tensor, update_stats: bool = True) -> Tensor:
        """The novelty bonus error / running σ, ``(N,)``; ``update_stats`` folds the errors
        into the running moments first (as the agent sees them)."""
        err = self.error(frames).double()
        if update_stats:
            self._update_moments(err)
        std = self.err_var.clamp(min=0).sqrt().clamp(min=self.eps)
        return (err / std).float()

    def _update_moments(self, x: Tensor) -> None:
        n = float(x.numel())
        if n == 0:
            return
        mean, var = x.mean(), x.var(unbiased=False)
        total = self.err_count + n
        delta = mean - self.err_mean
        if self.err_count == 0:
            self.err_mean.copy_(mean)
            self.err_var.copy_(var)
        else:
            m2 = self.err_var * self.err_count + var * n + delta**2 * self.err_count * n / total
            self.err_mean.add_(delta * n / total)
            self.err_var.copy_(m2 / total)
        self.err_count.copy_(total)

    def update(self, frames: Tensor, optimizer: torch.optim.Optimizer) -> float:
        """One predictor step on ``frames`` (the ones just seen); returns the loss."""
        loss = self.error(frames).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def make_optimizer(self, lr: float = 1e-3) -> torch.optim.Optimizer:
        """Adam over the predictor only (the target stays fixed)."""
        return torch.optim.Adam(self.predictor.parameters(), lr=lr)
