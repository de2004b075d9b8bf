"""Conditional-entropy rewards per frame (Diffusion Reward, Huang et al. 2023, §4.1).

The reward of frame t is the negative conditional entropy of the next frame given the last
``k`` frames ending at t:

    r_t = −H[p_θ(x_{t+1} | x_{t−k+1..t})] ≈ (1/S) Σ_s log p_θ(x̂_s | x_{t−k+1..t}),
    x̂_s ~ p_θ(· | x_{t−k+1..t}),

with log p_θ(x̂) replaced by its variational lower bound (−:meth:`nll_bound`). A history
the expert model has seen many times gives a peaked, confident prediction (low entropy,
high reward); an unfamiliar history gives diverse or blurry predictions (high entropy, low
reward). The reward does not need the true x_{t+1}, so the last frame of a clip gets one.

The first ``k − 1`` frames have no full history; they get the reward of frame ``k − 1``
(the first frame with one), so a clip of T frames has T rewards.
Units: bits per dimension (the bound's), so r_t ≤ 0 up to Monte Carlo error.

>>> import torch
>>> from video.diffusion_reward.model import ConditionalFrameDiffusion, DiffusionRewardConfig
>>> m = ConditionalFrameDiffusion(DiffusionRewardConfig(resolution=8, channels=(8, 16), norm_groups=4))
>>> frame_rewards(m, torch.rand(2, 5, 3, 8, 8), skip=49, noise=False).shape
torch.Size([2, 5])
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from mmreward.errors import InputError
from video.diffusion_reward.model import ConditionalFrameDiffusion

#: where the bound of a sample is evaluated (:func:`conditional_entropy`'s ``bound``)
BOUNDS = ("renoise", "trajectory")


def history_windows(frames: Tensor, k: int) -> Tensor:
    """All length-``k`` windows of ``(B,T,C,H,W)`` frames: ``(B, T−k+1, k, C, H, W)``.

    Window ``j`` holds frames ``j .. j+k−1``, the history of frame ``j + k − 1``.
    """
    if frames.ndim != 5:
        raise InputError("videos", "(B,T,3,H,W) frames", f"shape {tuple(frames.shape)}")
    t = frames.shape[1]
    if t < k:
        raise InputError(
            "videos",
            f"at least k={k} frames per video (the conditioning history)",
            f"{t} frame(s)",
        )
    return frames.unfold(1, k, 1).permute(0, 1, 5, 2, 3, 4)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def conditional_entropy(
    model: ConditionalFrameDiffusion,
    history: Tensor,
    skip: int = 9,
    num_samples: int = 1,
    noise: bool = True,
    seed: int = 0,
    generator: torch.Generator | None = None,
    bound: str = "renoise",
) -> Tensor:
    """Ĥ[p_θ(x | h)] in bits/dim for histories ``(N,k,3,r,r)`` in model space, ``(N,)``.

    Draws ``num_samples`` samples x̂ per history (:meth:`ConditionalFrameDiffusion.sample`
    with ``skip`` and ``noise``; the noise is shared across histories, one draw per sample
    index: common random numbers) and averages their negative ELBO on the same strided
    steps. ``bound="renoise"`` evaluates it at fresh noisings of x̂
    (:meth:`~ConditionalFrameDiffusion.nll_bound`, ε from ``seed``; 2× the sampler's UNet
    passes); ``bound="trajectory"`` at the states the sampler visited while generating x̂
    (:meth:`~ConditionalFrameDiffusion.trajectory_bound`; no extra UNet pass, ``seed``
    unused).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples: expected ≥ 1, got {num_samples}")
    check_bound(bound)
    n = history.shape[0]
    h = history.repeat_interleave(num_samples, dim=0) if num_samples > 1 else history
    # the sampler's noise is shared across histories (one draw per sample index), so a
    # frame's reward does not depend on the batch it is scored in
    kw = {"skip": skip, "noise": noise, "generator": generator, "shared": num_samples}
    if bound == "trajectory":
        x_hat, visited = model.sample(h, return_trajectory=True, **kw)
        bits = model.trajectory_bound(x_hat, visited)
    else:
        bits = model.nll_bound(model.sample(h, **kw), h, skip=skip, seed=seed)
    return bits.view(n, num_samples).mean(1)


def check_bound(bound: str) -> str:
    """``bound`` if it is one of :data:`BOUNDS`, else a ``ValueError`` naming the field."""
    if bound not in BOUNDS:
        raise ValueError(f"bound: expected one of {list(BOUNDS)}, got {bound!r}")
    return bound


@torch.no_grad()
def frame_rewards(
    model: ConditionalFrameDiffusion,
    videos: Tensor,
    skip: int = 9,
    num_samples: int = 1,
    noise: bool = True,
    seed: int = 0,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    progress: bool = False,
    bound: str = "renoise",
) -> Tensor:
    """Per-frame rewards r_t = −Ĥ[p_θ(x_{t+1} | x_{t−k+1..t})] of ``(B,T,3,H,W)`` videos in
    [0,1], as a ``(B,T)`` tensor (frames ``t < k−1`` repeat the reward of frame ``k−1``).

    Args:
        skip: denoising steps skipped between evaluated ones, for sampling and for the
            bound (T=100, skip=9: 10 steps; 2·10 UNet passes per sample).
        num_samples: samples x̂ averaged per frame.
        noise: sample with noise (η = 1, random x_T) or deterministically (η = 0, x_T = 0;
            then the rewards are a deterministic function of the video).
        seed: the bound's ε (shared across items, see ``nll_bound``).
        generator: the sampler's randomness when ``noise`` (None: the global RNG). Its
            noise is shared by all histories (see :func:`conditional_entropy`), so with a
            seeded generator a frame's reward depends neither on the batch nor on
            ``batch_size``.
        batch_size: histories per forward pass.
        bound: ``"renoise"`` (the bound at fresh noisings of each sample) or
            ``"trajectory"`` (along the sampler's own chain), see :func:`conditional_entropy`.
    """
    from tqdm.auto import tqdm

    check_bound(bound)
    k = model.config.history
    x = model.to_model_space(videos)
    windows = history_windows(x, k)  # (B, W, k, 3, r, r)
    b, w = windows.shape[:2]
    flat = windows.reshape(b * w, *windows.shape[2:])
    out = []
    bar = tqdm(total=flat.shape[0], desc="diffusion reward", disable=not progress, unit="frame")
    # every chunk starts from the same generator state: with the noise shared across
    # histories, a frame's reward does not depend on the chunking either
    state = generator.get_state() if generator is not None else None
    for part in _chunks(flat.shape[0], batch_size):
        if state is not None:
            generator.set_state(state)
        h = conditional_entropy(
            model, flat[part], skip, num_samples, noise, seed, generator=generator, bound=bound
        )
        out.append(-h)
        bar.update(part.stop - part.start)
    bar.close()
    r = torch.cat(out).view(b, w)
    if k > 1:  # frames without a full history take the first full-history reward
        r = torch.cat([r[:, :1].expand(b, k - 1), r], dim=1)
    return r
