"""A tiny conditional video diffusion model: p_θ(x_{t+1} | x_{t−k+1..t}).

Diffusion Reward (Huang et al. 2023, arXiv:2312.14134) learns the distribution of the next
frame of expert videos given the last ``k`` frames. Here the model is a small diffusers
``UNet2DModel`` over single frames at ``resolution``×``resolution`` whose input is the noisy
next frame concatenated (channels) with the ``k`` history frames; it predicts the noise ε
(or v, or x0: ``config.prediction``) under a DDPM schedule of ``num_train_timesteps``
steps (Ho et al. 2020, arXiv:2006.11239).

Three operations matter for the reward:

- :meth:`ConditionalFrameDiffusion.loss` — the training loss ‖ε − ε_θ(x_t, t, h)‖² (Ho et
  al. eq. 14, "L_simple");
- :meth:`ConditionalFrameDiffusion.sample` — DDIM sampling (Song et al. 2021, eq. 12) on a
  strided subset of the timesteps (``skip``), stochastic (η = 1) or deterministic (η = 0,
  x_T = 0);
- :meth:`ConditionalFrameDiffusion.nll_bound` — the variational bound
  L = L_T + Σ_{t≥1} L_{t−1} + L_0 (Ho et al. eq. 5) of a frame, in bits per dimension;
  :meth:`ConditionalFrameDiffusion.trajectory_bound` evaluates the same terms at the states
  the sampler visited while generating the frame.

Frames enter in [0,1] with layout ``(..., 3, H, W)``; they are resized (bilinear,
antialiased) to the model's resolution and mapped to [−1, 1] inside.

Weights are ``model.safetensors`` (the UNet) plus ``config.json``
(:class:`DiffusionRewardConfig`); loading is strict.

>>> import torch
>>> cfg = DiffusionRewardConfig(resolution=8, channels=(8, 16), norm_groups=4)
>>> m = ConditionalFrameDiffusion(cfg)
>>> history = torch.rand(2, cfg.history, 3, 8, 8)
>>> m.sample(history, skip=24).shape
torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmreward.checkpoint import atomic_write, load_state_dict_strict, read_state_dict
from mmreward.checkpoint import save_state_dict as _save_state_dict
from mmreward.errors import InputError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_LOG2 = math.log(2.0)
#: what the UNet may be trained to predict (:attr:`DiffusionRewardConfig.prediction`)
PREDICTIONS = ("epsilon", "v", "sample")


@dataclass(frozen=True)
class DiffusionRewardConfig:
    """Architecture and noise schedule of :class:`ConditionalFrameDiffusion`.

    The linear β schedule is the DDPM one rescaled to ``num_train_timesteps`` steps
    (β from 1e-4·1000/T to 0.02·1000/T, Nichol & Dhariwal 2021), so ᾱ_T ≈ 0 at T = 100.
    """

    resolution: int = 16  # frame side the model works at
    history: int = 2  # k: conditioning frames
    channels: tuple[int, ...] = (32, 48, 48)  # UNet block widths (one block per level)
    layers_per_block: int = 1
    norm_groups: int = 8
    num_train_timesteps: int = 100
    beta_start: float = 1e-3
    beta_end: float = 0.2
    # what the UNet predicts: "epsilon" (ε, Ho et al.), "v" (v = √ᾱ ε − √(1−ᾱ) x0,
    # Salimans & Ho 2022) or "sample" (x0); sampling and the bound use the ε it implies
    prediction: str = "epsilon"
    # strided chains (sampler and bound) end at step 0, as the reference implementation's
    # do; False keeps the stride's own last step (e.g. 9 for skip 9), where the bound's
    # decoder L_0 is as wide as that step's noise (see ConditionalFrameDiffusion.timesteps)
    end_at_zero: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.history < 1:
            raise ValueError(f"history: expected ≥ 1 conditioning frame, got {self.history}")
        if self.resolution < 4 or self.resolution % (2 ** (len(self.channels) - 1)):
            raise ValueError(
                f"resolution: expected ≥ 4 and divisible by 2^(levels−1) = "
                f"{2 ** (len(self.channels) - 1)}, got {self.resolution}"
            )
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(
                f"channels: each width must be divisible by norm_groups={self.norm_groups}, "
                f"got {self.channels}"
            )
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps: expected ≥ 2, got {self.num_train_timesteps}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(
                f"prediction: expected one of {list(PREDICTIONS)}, got {self.prediction!r}"
            )
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(
                f"beta_start, beta_end: expected 0 < start < end < 1, got "
                f"{self.beta_start}, {self.beta_end}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionRewardConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown} (known: {sorted(known)})")
        return cls(**d)


class ConditionalFrameDiffusion(nn.Module):
    """ε-prediction DDPM over one frame, conditioned on the previous ``k`` frames.

    Args:
        config: architecture and schedule (:class:`DiffusionRewardConfig`).
    """

    def __init__(self, config: DiffusionRewardConfig | None = None) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        self.config = config or DiffusionRewardConfig()
        c = self.config
        levels = len(c.channels)
        self.unet = UNet2DModel(
            sample_size=c.resolution,
            in_channels=3 * (c.history + 1),
            out_channels=3,
            block_out_channels=c.channels,
            layers_per_block=c.layers_per_block,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            norm_num_groups=c.norm_groups,
        )
        # The schedule is rebuilt from the config (never in the checkpoint) and kept out of
        # the module's buffers, so casting the UNet (e.g. to bf16) leaves the diffusion math
        # in fp32: ᾱ close to 1 is not representable in bf16.
        betas = torch.linspace(c.beta_start, c.beta_end, c.num_train_timesteps, dtype=torch.float64)
        self._schedule = {"betas": betas, "alphas": 1.0 - betas}
        self._schedule["alphas_cumprod"] = torch.cumprod(self._schedule["alphas"], 0)
        self._schedule_on: tuple[torch.device | None, dict[str, Tensor]] = (None, {})

    def _sched(self, name: str) -> Tensor:
        device = self.unet.conv_in.weight.device
        if self._schedule_on[0] != device:
            self._schedule_on = (
                device,
                {k: v.to(device=device, dtype=torch.float32) for k, v in self._schedule.items()},
            )
        return self._schedule_on[1][name]

    @property
    def betas(self) -> Tensor:
        """β_t, ``(T,)`` fp32 on the model's device."""
        return self._sched("betas")

    @property
    def alphas(self) -> Tensor:
        """α_t = 1 − β_t."""
        return self._sched("alphas")

    @property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t = Π_{s≤t} α_s."""
        return self._sched("alphas_cumprod")

    # -- frames -----------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        return self.config.num_train_timesteps

    def to_model_space(self, frames: Tensor) -> Tensor:
        """``(..., 3, H, W)`` in [0,1] → ``(..., 3, r, r)`` in [−1,1] (bilinear, antialiased)."""
        if frames.ndim < 3 or frames.shape[-3] != 3:
            raise InputError("frames", "a (..., 3, H, W) tensor", f"shape {tuple(frames.shape)}")
        lead = frames.shape[:-3]
        x = frames.reshape(-1, *frames.shape[-3:]).to(self.betas.device, torch.float32)
        r = self.config.resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        return (x * 2.0 - 1.0).reshape(*lead, 3, r, r)

    def _check_history(self, history: Tensor) -> Tensor:
        k, r = self.config.history, self.config.resolution
        if history.ndim != 5 or history.shape[1:] != (k, 3, r, r):
            raise InputError(
                "history",
                f"(N, {k}, 3, {r}, {r}) frames in model space (see to_model_space)",
                f"shape {tuple(history.shape)}",
            )
        return history.flatten(1, 2)

    def raw(self, x_t: Tensor, t: Tensor, history: Tensor) -> Tensor:
        """The UNet's output (ε, v or x0, see ``config.prediction``), fp32.

        ``x_t (N,3,r,r)``, ``t (N,)`` ints, ``history (N,k,3,r,r)``; the UNet runs in its
        own dtype.
        """
        h = self._check_history(history)
        dtype = self.unet.conv_in.weight.dtype
        return self.unet(torch.cat([x_t, h], dim=1).to(dtype), t).sample.float()

    def eps(self, x_t: Tensor, t: Tensor, history: Tensor) -> Tensor:
        """ε_θ(x_t, t, h) implied by the UNet's prediction (``(N,3,r,r)``, fp32).

        ε-prediction: the output; v: ε = √ᾱ v + √(1−ᾱ) x_t; x0: ε = (x_t − √ᾱ x0)/√(1−ᾱ).
        """
        out = self.raw(x_t, t, history)
        kind = self.config.prediction
        if kind == "epsilon":
            return out
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        if kind == "v":
            return a.sqrt() * out + (1 - a).sqrt() * x_t
        return (x_t - a.sqrt() * out) / (1 - a).sqrt()

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The regression target of ``config.prediction`` for x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε."""
        kind = self.config.prediction
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return x0
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    # -- training ---------------------------------------------------------------------
    def loss(self, x0: Tensor, history: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """L_simple = E_{t,ε} ‖y − y_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t, h)‖² (Ho et al. eq. 14),
        with y the prediction target (:meth:`target`: ε, v or x0).

        ``x0 (N,3,r,r)`` and ``history (N,k,3,r,r)`` in model space ([−1,1]).
        """
        n = x0.shape[0]
        t = torch.randint(0, self.num_timesteps, (n,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        a = self.alphas_cumprod[t].view(n, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return F.mse_loss(self.raw(x_t, t, history), self.target(x0, noise, t))

    # -- sampling ---------------------------------------------------------------------
    def timesteps(self, skip: int) -> list[int]:
        """The strided subset of timesteps, noisiest first: every ``skip + 1``-th step.

        With T = 100 and ``skip = 9`` (the paper's setting) that is 99, 89, …, 9. With
        ``config.end_at_zero`` step 0 is appended when the stride misses it (99, …, 9, 0),
        as in the reference implementation: the bound's decoder L_0 is then the sharp one
        of step 0 (variance β_0) instead of a Gaussian as wide as the last strided step's
        noise (1 − ᾱ_9 ≈ 0.1; 1 − ᾱ_19 ≈ 0.33 for skip 19), which costs every frame about
        the same 6–8 bits/dim whatever the model predicts.
        """
        if skip < 0 or skip >= self.num_timesteps:
            raise ValueError(f"skip: expected 0 ≤ skip < {self.num_timesteps}, got {skip}")
        stride = skip + 1
        steps = list(range(self.num_timesteps - 1, -1, -stride))
        if self.config.end_at_zero and steps[-1] != 0:
            steps.append(0)
        return steps

    @torch.no_grad()
    def sample(
        self,
        history: Tensor,
        skip: int = 9,
        noise: bool = True,
        generator: torch.Generator | None = None,
        shared: int = 0,
        return_trajectory: bool = False,
    ) -> Tensor | tuple[Tensor, list[tuple[int, Tensor, Tensor]]]:
        """Sample x̂ ~ p_θ(x | h) with DDIM on :meth:`timesteps` (Song et al. 2021, eq. 12).

        ``noise=True``: x_T ~ N(0, I) and η = 1 (ancestral, a fresh ε each step, drawn from
        ``generator``). ``noise=False``: x_T = 0 and η = 0, so the sample is a deterministic
        function of the history. The predicted x̂_0 is clipped to [−1, 1] at every step and
        the result is quantised to the 8-bit grid (a valid frame). Returns ``(N,3,r,r)``
        in model space.

        ``shared = S > 0`` draws only S noise tensors per step and tiles them over the batch
        (item i gets draw i mod S; N must be a multiple of S): common random numbers, so an
        item's sample does not depend on the rest of the batch.

        ``return_trajectory=True`` also returns the chain the sampler visited, noisiest
        first: ``[(t, x_t, ε_θ(x_t, t, h)), …]`` with the UNet's own (unclipped) ε, one entry
        per strided step; :meth:`trajectory_bound` scores the sample along it.
        """
        h = history
        n, r = h.shape[0], self.config.resolution
        shape = (n, 3, r, r)
        if shared and n % shared:
            raise ValueError(f"shared: the batch ({n}) must be a multiple of shared={shared}")

        def randn() -> Tensor:
            if not shared:
                return torch.randn(shape, generator=generator, device=h.device)
            z = torch.randn((shared, 3, r, r), generator=generator, device=h.device)
            return z.repeat(n // shared, 1, 1, 1)

        x = randn() if noise else h.new_zeros(shape)
        steps = self.timesteps(skip)
        eta = 1.0 if noise else 0.0
        visited: list[tuple[int, Tensor, Tensor]] = []
        for i, t in enumerate(steps):
            prev = steps[i + 1] if i + 1 < len(steps) else -1
            a_t = self.alphas_cumprod[t]
            a_prev = self.alphas_cumprod[prev] if prev >= 0 else a_t.new_tensor(1.0)
            eps = self.eps(x, torch.full((n,), t, device=h.device, dtype=torch.long), h)
            if return_trajectory:
                visited.append((t, x, eps))
            x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # consistent with the clipped x0
            sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
            if eta > 0 and prev >= 0:
                x = x + sigma * randn()
        return (quantize(x), visited) if return_trajectory else quantize(x)

    # -- the variational bound -------------------------------------------------------
    @torch.no_grad()
    def nll_bound(self, x0: Tensor, history: Tensor, skip: int = 9, seed: int = 0) -> Tensor:
        """Negative ELBO of ``x0`` under p_θ(· | h), in bits per dimension, ``(N,)``.

        The bound is that of the diffusion on the strided timesteps τ_1 < … < τ_S of
        :meth:`timesteps` (``skip``; the chain the sampler runs), Ho et al. 2020, eq. 5:

            L = L_T + Σ_{i=2}^{S} L_i + L_0

        - L_T = KL(q(x_{τ_S} | x0) ‖ N(0, I)), analytic;
        - L_i = KL(q(x_s | x_t, x0) ‖ p_θ(x_s | x_t)) for s = τ_{i−1}, t = τ_i, with
          σ² = β̃ = β_{t|s}(1−ᾱ_s)/(1−ᾱ_t) and β_{t|s} = 1 − ᾱ_t/ᾱ_s:
          β_{t|s}² / (2 β̃ α_{t|s} (1−ᾱ_t)) ‖ε − ε_θ(x_t, t)‖²
          = β_{t|s} / (2 α_{t|s} (1−ᾱ_s)) ‖ε − ε_θ‖²  (eq. 12 of the full chain when s = t−1);
        - L_0 = −log p_θ(x0 | x_{τ_1}), a discretised Gaussian (256 bins over [−1,1],
          eq. 13) with mean x̂_0(x_{τ_1}) and variance 1 − ᾱ_{τ_1} (β_0 when the
          strided steps end at τ_1 = 0, ``config.end_at_zero``; see :meth:`timesteps`).

        ``skip = 0`` gives the full T-step bound. One ε per term, drawn from ``seed`` and
        shared by every item of the batch (common random numbers): a frame's bound does
        not depend on what else is in the batch, and comparisons between frames are less
        noisy.
        """
        self._check_history(history)
        n, dims = x0.shape[0], x0[0].numel()
        taus = self.timesteps(skip)[::-1]  # ascending: τ_1 … τ_S
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        a_bar = self.alphas_cumprod

        def noised(t: int) -> tuple[Tensor, Tensor, Tensor]:
            """x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε, ε, and ε_θ(x_t, t, h)."""
            eps = torch.randn((1, *x0.shape[1:]), generator=gen).to(x0.device).expand_as(x0)
            x_t = a_bar[t].sqrt() * x0 + (1 - a_bar[t]).sqrt() * eps
            tt = torch.full((n,), t, device=x0.device, dtype=torch.long)
            return x_t, eps, self.eps(x_t, tt, history)

        total = self._prior_nats(x0, taus[-1])
        # Σ L_i over consecutive strided steps (s, t)
        for s, t in zip(taus[:-1], taus[1:]):
            _, eps, pred = noised(t)
            total = total + self._kl_coef(s, t) * (eps - pred).pow(2).flatten(1).sum(1)
        # L_0: discretised Gaussian decoder from x_{τ_1}
        x_t1, _, pred = noised(taus[0])
        total = total + self._decoder_nats(x0, x_t1, pred, taus[0])
        return total / (dims * _LOG2)

    @torch.no_grad()
    def trajectory_bound(self, x0: Tensor, trajectory: list[tuple[int, Tensor, Tensor]]) -> Tensor:
        """The bound of :meth:`nll_bound`, in bits/dim ``(N,)``, with its terms evaluated at
        the states the sampler visited while generating ``x0`` instead of at fresh
        re-noisings of ``x0``.

        ``trajectory`` is :meth:`sample`'s ``[(t, x_t, ε_θ(x_t, t, h)), …]`` (noisiest
        first, the strided steps τ_S > … > τ_1). For each visited x_t let
        ε_t = (x_t − √ᾱ_t x0)/√(1−ᾱ_t), the noise that takes ``x0`` to x_t; then

            L = L_T + Σ_{i≥2} β_{t|s} / (2 α_{t|s} (1−ᾱ_s)) ‖ε_t − ε_θ(x_t, t)‖² + L_0,

        (s = τ_{i−1}, t = τ_i), L_0 the discretised Gaussian of ``x0`` around the x̂_0
        predicted at the visited x_{τ_1}. Each KL term is exactly
        KL(q(x_s | x_t, x0) ‖ p_θ(x_s | x_t)) at the visited x_t, so a term is the
        distance between where the model pointed at step t and where the sample ended up:
        a model that commits early (confident) pays little, one whose sample wanders away
        from its early predictions pays much. The sampler already computed every ε_θ, so
        no UNet pass is needed.
        """
        if not trajectory:
            raise ValueError("trajectory: expected the sampler's visited steps, got none")
        dims = x0[0].numel()
        a_bar = self.alphas_cumprod
        steps = [t for t, _, _ in trajectory]
        if steps != sorted(steps, reverse=True):
            raise ValueError(f"trajectory: expected steps noisiest first, got {steps}")
        total = self._prior_nats(x0, steps[0])
        for (t, x_t, pred), (s, _, _) in zip(trajectory[:-1], trajectory[1:]):
            eps = (x_t - a_bar[t].sqrt() * x0) / (1 - a_bar[t]).sqrt()
            total = total + self._kl_coef(s, t) * (eps - pred).pow(2).flatten(1).sum(1)
        t1, x_t1, pred = trajectory[-1]
        total = total + self._decoder_nats(x0, x_t1, pred, t1)
        return total / (dims * _LOG2)

    def _prior_nats(self, x0: Tensor, t: int) -> Tensor:
        """L_T = KL(q(x_t | x0) ‖ N(0, I)), nats summed over dimensions."""
        a = self.alphas_cumprod[t]
        dims = x0[0].numel()
        mean_sq = (a * x0**2).flatten(1).sum(1)
        return 0.5 * (dims * (-torch.log(1 - a) + (1 - a) - 1) + mean_sq)

    def _kl_coef(self, s: int, t: int) -> Tensor:
        """β_{t|s} / (2 α_{t|s} (1−ᾱ_s)): the KL of one strided step per unit ‖ε − ε_θ‖²."""
        a_bar = self.alphas_cumprod
        alpha_ts = a_bar[t] / a_bar[s]
        return (1 - alpha_ts) / (2 * alpha_ts * (1 - a_bar[s]))

    def _decoder_nats(self, x0: Tensor, x_t1: Tensor, pred: Tensor, t1: int) -> Tensor:
        """L_0 = −log p_θ(x0 | x_{τ_1}): discretised Gaussian around x̂_0, variance 1 − ᾱ_{τ_1}."""
        a = self.alphas_cumprod[t1]
        mean = (x_t1 - (1 - a).sqrt() * pred) / a.sqrt()  # x̂_0
        decoder = -discretized_gaussian_log_likelihood(x0, mean, torch.log(1 - a))
        return decoder.flatten(1).sum(1)

    # -- persistence -----------------------------------------------------------------
    def save(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (atomically) into ``directory``;
        ``dtype`` (e.g. ``torch.float16``) stores the weights in that type (they load back
        into the fp32 model)."""
        directory = Path(directory)
        sd = self.state_dict()
        if dtype is not None:
            sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
        _save_state_dict(sd, directory / WEIGHTS_FILE)
        text = json.dumps(self.config.to_dict(), indent=2) + "\n"
        atomic_write(directory / CONFIG_FILE, lambda p: p.write_text(text))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ConditionalFrameDiffusion:
        """Rebuild from :meth:`save`'s folder; strict (missing/unexpected keys are listed)."""
        directory = Path(directory)
        cfg_path = directory / CONFIG_FILE
        if not cfg_path.is_file():
            raise FileNotFoundError(
                f"{directory}: no {CONFIG_FILE}; train a model with "
                "`python -m video.diffusion_reward.train --out DIR`"
            )
        model = cls(DiffusionRewardConfig.from_dict(json.loads(cfg_path.read_text())))
        weights = directory / WEIGHTS_FILE
        load_state_dict_strict(model, read_state_dict(weights), source=str(weights))
        return model.eval()


def quantize(x: Tensor) -> Tensor:
    """Snap values in [−1,1] to the 256-level 8-bit grid (x = 2·k/255 − 1)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def _approx_std_normal_cdf(x: Tensor) -> Tensor:
    # Φ(x) via the tanh approximation used by Ho et al.'s reference implementation
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log P(x) for x on the 8-bit grid in [−1,1] under N(mean, exp(log_var)) binned into
    256 bins of width 2/255 (the edge bins extend to ±∞), elementwise (Ho et al. 2020, §3.3).
    """
    centred = x - mean
    inv_std = torch.exp(-0.5 * log_var)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta)
    )
