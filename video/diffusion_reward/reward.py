"""Diffusion Reward behind the reward interface: videos in, one score per video out.

:class:`DiffusionReward` scores ``videos (B,T,3,H,W)`` in [0,1]: per-frame rewards
r_t = −Ĥ[p_θ(x_{t+1} | last k frames)] (:func:`~video.diffusion_reward.entropy.frame_rewards`),
standardised with the domain's stored (μ, σ), optionally combined with an RND bonus and a
sparse reward (r = (1−α)·r̂ + α·r_RND + r_sparse); the video's score is the mean over its
frames. ``extras={"domains": [...]}`` standardises each video with its own task's
statistics (the paper standardises per task; the world's table has ``world/<motion>``
entries). The per-frame rewards are in ``extras["frame_rewards"]`` ``(B,T)``, the raw
conditional-entropy rewards (bits/dim, before standardisation) in
``extras["entropy_rewards"]``.

For scoring videos the default is α = 0 (no exploration bonus); sampling noise comes from
a generator seeded with ``seed`` at every call, so a video always gets the same score
(``noise=False`` makes the sampler itself deterministic). An RL agent that wants the
paper's reward builds it with ``alpha=0.95, rnd=True`` and calls :meth:`update_rnd` on the
frames it visits; per-frame sparse rewards go in ``extras={"sparse_rewards": (B,T)}``.

>>> import mmreward                                                     # doctest: +SKIP
>>> rm = mmreward.load("diffusion-reward.world")                        # doctest: +SKIP
>>> out = rm(videos=torch.rand(2, 16, 3, 32, 32))                       # doctest: +SKIP
>>> out.scores.shape, out.extras["frame_rewards"].shape                 # doctest: +SKIP
(torch.Size([2]), torch.Size([2, 16]))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmreward.checkpoint import load_state_dict_strict, read_state_dict
from mmreward.errors import InputError, WeightsNotFoundError
from mmreward.interface import RewardInput, RewardModel, RewardOutput
from video.diffusion_reward.entropy import check_bound, frame_rewards
from video.diffusion_reward.model import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ConditionalFrameDiffusion,
    DiffusionRewardConfig,
)
from video.diffusion_reward.rnd import RND
from video.diffusion_reward.standardize import STATS_FILE, RewardStats, combine_rewards

#: the domain name of the built-in world's statistics
WORLD_DOMAIN = "world"
#: the registry name (``mmreward/catalog/diffusion_reward.py``)
WORLD_NAME = "diffusion-reward.world"


def assets_dir() -> Path:
    """Where the world model's committed weights live (``video/assets/diffusion_reward_world``)."""
    return Path(__file__).resolve().parent.parent / "assets" / "diffusion_reward_world"


class DiffusionReward(RewardModel):
    """Conditional-entropy video reward from an expert-trained video diffusion model.

    Args:
        config: the diffusion model's :class:`DiffusionRewardConfig` (or its dict).
        stats: per-domain (μ, σ) table (dict or :class:`RewardStats`); None: no
            standardisation (scores are raw −bits/dim).
        domain: which table entry standardises the rewards (checked at construction).
        alpha: exploration weight α in [0, 1]; α > 0 needs ``rnd=True``.
        rnd: attach an :class:`RND` module (bool, or a dict of its options).
        skip, num_samples, noise, bound: the entropy estimator's options
            (:func:`~video.diffusion_reward.entropy.frame_rewards`).
        seed: seeds the sampler's noise (each call) and the bound's ε.
        batch_size: frames per forward pass.
    """

    inputs: ClassVar[tuple[str, ...]] = ("videos",)
    differentiable: ClassVar[bool] = False

    def __init__(
        self,
        config: DiffusionRewardConfig | dict[str, Any] | None = None,
        stats: RewardStats | dict[str, Any] | None = None,
        domain: str | None = WORLD_DOMAIN,
        alpha: float = 0.0,
        rnd: bool | dict[str, Any] = False,
        skip: int = 9,
        num_samples: int = 1,
        noise: bool = True,
        seed: int = 0,
        batch_size: int = 256,
        bound: str = "renoise",
    ) -> None:
        super().__init__()
        self.reward_name = WORLD_NAME  # the one registered architecture (rebuilds any config)
        if isinstance(config, dict):
            config = DiffusionRewardConfig.from_dict(config)
        self.model = ConditionalFrameDiffusion(config)
        cfg = self.model.config
        self.stats = (
            stats if isinstance(stats, RewardStats) or stats is None else RewardStats(stats)
        )
        self.domain = domain
        if self.stats is not None:
            if domain is None:
                raise ValueError(f"domain: expected one of {self.stats.domains}, got None")
            self.stats[domain]  # a missing key fails now, listing the known ones
        combine_rewards(torch.zeros(1), alpha, torch.zeros(1) if rnd else None)  # checks α
        self.alpha = float(alpha)
        rnd_kwargs = rnd if isinstance(rnd, dict) else {}
        self.rnd = RND(resolution=cfg.resolution, **rnd_kwargs) if rnd else None
        self.model.timesteps(skip)  # validates skip
        if num_samples < 1:
            raise ValueError(f"num_samples: expected ≥ 1, got {num_samples}")
        self.skip, self.num_samples, self.noise = int(skip), int(num_samples), bool(noise)
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.bound = check_bound(bound)
        self.native_resolution = (cfg.resolution, cfg.resolution)
        self.init_kwargs = {
            "config": cfg.to_dict(),
            "stats": self.stats.to_dict() if self.stats is not None else None,
            "domain": domain,
            "alpha": self.alpha,
            "rnd": rnd,
            "skip": self.skip,
            "num_samples": self.num_samples,
            "noise": self.noise,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "bound": self.bound,
        }

    @property
    def history(self) -> int:
        return self.model.config.history

    def compute(self, batch: RewardInput) -> RewardOutput:
        videos = batch.videos
        assert videos is not None  # validated by forward()
        b, t = videos.shape[:2]
        # a fresh seeded generator per call: the same videos always get the same scores
        gen = torch.Generator(device=videos.device).manual_seed(self.seed)
        raw = frame_rewards(
            self.model,
            videos,
            skip=self.skip,
            num_samples=self.num_samples,
            noise=self.noise,
            seed=self.seed,
            generator=gen,
            batch_size=self.batch_size,
            bound=self.bound,
        )
        ce = self._standardize(raw, batch.extras.get("domains"))
        bonus = None
        if self.alpha > 0 and self.rnd is not None:
            bonus = self.rnd.bonus(videos.flatten(0, 1), update_stats=False).view(b, t)
        sparse = _sparse(batch.extras.get("sparse_rewards"), b, t, raw)
        total = combine_rewards(ce, self.alpha, bonus, sparse)
        extras: dict[str, Any] = {"frame_rewards": total, "entropy_rewards": raw}
        if bonus is not None:
            extras["rnd_bonus"] = bonus
        return RewardOutput(scores=total.mean(1), extras=extras)

    def _standardize(self, raw: Tensor, domains: Any) -> Tensor:
        if self.stats is None:
            if domains is not None:
                raise ValueError("extras['domains']: this reward has no statistics table")
            return raw
        if domains is None:
            return self.stats.standardize(raw, self.domain)
        if isinstance(domains, str) or len(domains) != raw.shape[0]:
            raise InputError("extras['domains']", f"{raw.shape[0]} domain names", repr(domains))
        rows = [self.stats.standardize(r, d) for r, d in zip(raw, domains)]
        return torch.stack(rows)

    def update_rnd(self, videos: Tensor, optimizer: torch.optim.Optimizer) -> float:
        """Train the RND predictor one step on the frames of ``videos`` ``(B,T,3,H,W)``."""
        if self.rnd is None:
            raise ValueError("rnd: this reward has no RND module; build it with rnd=True")
        frames = videos.flatten(0, 1)
        self.rnd.bonus(frames, update_stats=True)  # fold the visited frames into the σ
        return self.rnd.update(frames, optimizer)


def _sparse(value: Any, b: int, t: int, like: Tensor) -> Tensor | None:
    if value is None:
        return None
    s = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if s.shape == (b,):
        s = s[:, None]
    if s.shape not in ((b, 1), (b, t)):
        raise InputError(
            "extras['sparse_rewards']", f"a ({b},) or ({b},{t}) tensor", f"shape {tuple(s.shape)}"
        )
    return s


def load_diffusion_reward(weights: str | Path | None = None, **kwargs: Any) -> DiffusionReward:
    """Factory of ``diffusion-reward.*``: a folder written by the training script
    (``config.json`` + ``model.safetensors`` [+ ``stats.json``]); default: the world's
    committed weights. ``kwargs`` override :class:`DiffusionReward` options.

    Rebuilding from a ``save_pretrained`` folder passes ``config`` in ``kwargs`` (the
    registry then loads the weights strictly).
    """
    if "config" in kwargs:
        return DiffusionReward(**kwargs)
    folder = Path(weights) if weights is not None else assets_dir()
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise WeightsNotFoundError(
            f"diffusion reward: {folder} needs {CONFIG_FILE} and {WEIGHTS_FILE}; train them "
            f"with `python -m video.diffusion_reward.train --out {folder}`"
        )
    model = ConditionalFrameDiffusion.load(folder)
    stats_path = folder / STATS_FILE
    if "stats" not in kwargs and stats_path.is_file():
        kwargs["stats"] = RewardStats.load(stats_path)
    rm = DiffusionReward(config=model.config, **kwargs)
    load_state_dict_strict(
        rm.model, read_state_dict(folder / WEIGHTS_FILE), source=str(folder / WEIGHTS_FILE)
    )
    return rm
