"""The one rollout implementation: DDIM with η and the flow-matching SDE, with log-probs.

diffusers pipelines run under ``no_grad``, so alignment needs its own sampler. Everything
that samples (ReFL, DRaFT/AlignProp, D3PO, galleries, evaluation, and the RL loops that
reuse this module) goes through :func:`sample`; everything that re-scores a recorded
transition goes through :func:`transition_log_prob`. Both call one step function per
schedule family:

- :func:`ddim_step` — Song et al. 2021 (DDIM), eq. 12, with σ_t from eq. 16 scaled by η;
- :func:`flow_sde_step` — the reverse-time SDE of a rectified-flow model used by Flow-GRPO
  (Liu et al. 2025, eq. 8-9), noise std ``a·sqrt(σ/(1−σ))``.

**Log-prob convention.** ``log_prob`` is the *per-dimension mean* of the Gaussian
log-density ``log N(x_prev; μ, s² I)`` over all latent dimensions (C·h·w), computed in
fp32 whatever the model's dtype. This is the convention of the DDPO, D3PO and Flow-GRPO
reference code, whose ratio-clip ranges (1e-4, 0.1, ...) assume it; multiply by
``x.numel() / x.shape[0]`` for the joint density. Deterministic steps (η = 0, or noise
level 0) have no density: their ``log_prob`` is NaN, and :func:`sample` refuses
``log_probs=True`` for them.

>>> import torch
>>> x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
>>> out = ddim_step(eps, x, alpha_prod_t=0.5, alpha_prod_prev=0.8, eta=1.0,
...                 generator=torch.Generator().manual_seed(0))
>>> out.prev_sample.shape, out.log_prob.shape
(torch.Size([2, 4, 8, 8]), torch.Size([2]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from diffusion_align.policy import Conditioning, DiffusionPolicy

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class StepOutput:
    """One denoising step.

    Attributes:
        prev_sample: ``x_{t-1}`` (fp32), the given one when ``prev_sample`` was passed in.
        log_prob: ``(B,)`` fp32, per-dimension mean of ``log N(prev_sample; mean, std²)``.
        mean: the Gaussian mean ``μ`` (fp32), same shape as the sample.
        std: the Gaussian std, broadcastable to the sample (fp32).
        pred_x0: the model's prediction of the clean latent ``x_0`` (fp32).
    """

    prev_sample: Tensor
    log_prob: Tensor
    mean: Tensor
    std: Tensor
    pred_x0: Tensor


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor | float) -> Tensor:
    """Per-dimension mean of ``log N(x; mean, std² I)`` over all but the batch dim, in fp32.

    >>> gaussian_log_prob(torch.zeros(1, 3), torch.zeros(1, 3), 1.0)
    tensor([-0.9189])
    """
    x, mean = x.float(), mean.float()
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - _HALF_LOG_2PI
    return lp.mean(dim=tuple(range(1, lp.ndim)))


def _bcast(value: Tensor | float, like: Tensor) -> Tensor:
    """A float or ``(B,)`` tensor as a fp32 tensor broadcastable to ``like`` (B,...)."""
    v = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    return v.view(-1, *([1] * (like.ndim - 1))) if v.ndim == 1 else v


def _noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``like``, drawn on the generator's device (CPU by default)."""
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device).to(like.device)


def _finish(
    mean: Tensor, std: Tensor, prev_sample: Tensor | None, noise: Tensor | None, generator, x0
) -> StepOutput:
    if prev_sample is None:
        if noise is None:
            noise = _noise(mean, generator)
        prev_sample = mean + std * noise.float()
    prev_sample = prev_sample.float()
    if bool((std > 0).all()):
        log_prob = gaussian_log_prob(prev_sample.detach(), mean, std)
    else:  # a deterministic step has no density
        log_prob = torch.full((mean.shape[0],), float("nan"), device=mean.device)
    return StepOutput(prev_sample, log_prob, mean, std, x0)


# -- DDPM-family parameterisations (x_t = √ᾱ x0 + √(1−ᾱ) ε) ---------------------------------


def ddpm_to_x0_eps(
    model_output: Tensor, sample: Tensor, alpha_prod: Tensor | float, prediction_type: str
) -> tuple[Tensor, Tensor]:
    """``(x0, ε)`` from a model output of type ``epsilon``, ``v_prediction`` or ``sample`` (fp32)."""
    out, x = model_output.float(), sample.float()
    a = _bcast(alpha_prod, x)
    sa, s1a = a.sqrt(), (1 - a).sqrt()
    if prediction_type == "epsilon":
        eps = out
        x0 = (x - s1a * eps) / sa
    elif prediction_type == "v_prediction":  # v = √ᾱ ε − √(1−ᾱ) x0 (Salimans & Ho 2022)
        x0 = sa * x - s1a * out
        eps = s1a * x + sa * out
    elif prediction_type == "sample":
        x0 = out
        eps = (x - sa * x0) / s1a
    else:
        raise ValueError(
            f"prediction_type: expected epsilon, v_prediction or sample, got {prediction_type!r}"
        )
    return x0, eps


def ddim_step(
    model_output: Tensor,
    sample: Tensor,
    alpha_prod_t: Tensor | float,
    alpha_prod_prev: Tensor | float,
    eta: float,
    prediction_type: str = "epsilon",
    prev_sample: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """One DDIM step x_t → x_{t−1} (Song et al. 2021, eq. 12), all math in fp32.

    ``x_{t−1} = √ᾱ_{t−1} x̂0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z`` with
    ``σ_t = η √((1−ᾱ_{t−1})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1})`` (eq. 16). Pass ``prev_sample``
    to score a recorded transition instead of drawing one; ``noise`` to fix ``z``.
    ``alpha_prod_*`` may be floats or ``(B,)`` tensors (one timestep per item).
    """
    x0, eps = ddpm_to_x0_eps(model_output, sample, alpha_prod_t, prediction_type)
    a_t, a_prev = _bcast(alpha_prod_t, x0), _bcast(alpha_prod_prev, x0)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance.clamp(min=0).sqrt()
    direction = (1 - a_prev - std**2).clamp(min=0).sqrt() * eps  # "direction pointing to x_t"
    mean = a_prev.sqrt() * x0 + direction
    return _finish(mean, std, prev_sample, noise, generator, x0)


def flow_sde_step(
    velocity: Tensor,
    sample: Tensor,
    sigma: Tensor | float,
    sigma_next: Tensor | float,
    noise_level: float,
    sigma_max: float | None = None,
    prev_sample: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """One step of the Flow-GRPO reverse SDE for ``x_σ = (1−σ) x0 + σ ε``, ``v = ε − x0``.

    With ``dt = σ_next − σ < 0`` and ``s_t = a·sqrt(σ/(1−σ))`` (``σ = 1`` uses
    ``sigma_max``, the largest σ below 1, as the reference code does):
    ``μ = x + [v + s_t²/(2σ)·(x + (1−σ)v)]·dt`` and ``x_next = μ + s_t·sqrt(−dt)·z``
    (Flow-GRPO eq. 9: the ODE drift plus the score correction, the score being
    ``−(x + (1−σ)v)/σ``). ``noise_level`` 0 is the deterministic Euler (ODE) step.
    """
    v, x = velocity.float(), sample.float()
    s, s_next = _bcast(sigma, x), _bcast(sigma_next, x)
    dt = s_next - s
    denom = 1 - s
    if sigma_max is not None:
        denom = torch.where(s >= 1, torch.as_tensor(1 - sigma_max, device=x.device), denom)
    std_t = noise_level * (s / denom.clamp(min=1e-12)).sqrt()
    x0 = x - s * v
    mean = x + (v + std_t**2 / (2 * s) * (x + (1 - s) * v)) * dt
    std = std_t * (-dt).clamp(min=0).sqrt()
    return _finish(mean, std, prev_sample, noise, generator, x0)


# -- schedules: a scheduler's numbers for one number of steps ----------------------------------


def _index(values: Tensor, i: int | Tensor) -> Tensor:
    if isinstance(i, Tensor):
        return values.to(i.device)[i]
    return values[i]


class DDIMSchedule:
    """DDIM over a DDPM-family noise schedule (SD 1.x/2.x, SDXL): ``num_steps`` timesteps.

    The previous ᾱ of step ``i`` is ᾱ at the next timestep of the list (any spacing), and
    ``final_alpha_cumprod`` after the last step (1 when ``set_alpha_to_one``, else ᾱ_0).
    """

    family = "ddim"

    def __init__(
        self,
        scheduler_config: dict,
        num_steps: int,
        eta: float = 0.0,
        prediction_type: str | None = None,
    ) -> None:
        from diffusers import DDIMScheduler

        if num_steps < 1:
            raise ValueError(f"num_steps: expected ≥ 1, got {num_steps}")
        if eta < 0:
            raise ValueError(f"eta: expected ≥ 0, got {eta}")
        sched = DDIMScheduler.from_config(scheduler_config)
        sched.set_timesteps(num_steps)
        self.num_steps, self.eta = num_steps, float(eta)
        self.prediction_type = prediction_type or sched.config.prediction_type
        self.timesteps = sched.timesteps.clone()  # model timesteps, noisiest first
        ac = sched.alphas_cumprod.float()
        final = torch.tensor([1.0 if sched.config.set_alpha_to_one else ac[0].item()])
        self.alpha_t = ac[self.timesteps]
        self.alpha_prev = torch.cat([ac[self.timesteps[1:]], final])

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def model_timestep(self, i: int | Tensor) -> Tensor:
        return _index(self.timesteps, i)

    def step(
        self,
        i: int | Tensor,
        model_output: Tensor,
        sample: Tensor,
        prev_sample: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        return ddim_step(
            model_output,
            sample,
            _index(self.alpha_t, i),
            _index(self.alpha_prev, i),
            self.eta,
            self.prediction_type,
            prev_sample,
            noise,
            generator,
        )


class FlowSchedule:
    """Euler / SDE steps over a ``FlowMatchEulerDiscreteScheduler`` sigma schedule (SD3-style)."""

    family = "flow"

    def __init__(
        self,
        scheduler_config: dict,
        num_steps: int,
        noise_level: float = 0.0,
        image_seq_len: int | None = None,
    ) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        if num_steps < 1:
            raise ValueError(f"num_steps: expected ≥ 1, got {num_steps}")
        if not noise_level >= 0:
            raise ValueError(f"noise_level: expected ≥ 0, got {noise_level}")
        sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        kwargs = {}
        if sched.config.use_dynamic_shifting:  # FLUX-style: shift depends on the image size
            c = sched.config
            seq = image_seq_len or c.base_image_seq_len
            m = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
            kwargs["mu"] = seq * m + c.base_shift - m * c.base_image_seq_len
        sched.set_timesteps(num_steps, **kwargs)
        self.num_steps, self.noise_level = num_steps, float(noise_level)
        self.prediction_type = "flow"
        self.timesteps = sched.timesteps.clone().float()
        self.sigmas = sched.sigmas.clone().float()  # num_steps + 1, ends at 0
        self.sigma_max = self.sigmas[1].item() if len(self.sigmas) > 2 else 0.0

    @property
    def stochastic(self) -> bool:
        return self.noise_level > 0

    def model_timestep(self, i: int | Tensor) -> Tensor:
        return _index(self.timesteps, i)

    def step(
        self,
        i: int | Tensor,
        model_output: Tensor,
        sample: Tensor,
        prev_sample: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        nxt = i + 1
        return flow_sde_step(
            model_output,
            sample,
            _index(self.sigmas, i),
            _index(self.sigmas, nxt),
            self.noise_level,
            self.sigma_max,
            prev_sample,
            noise,
            generator,
        )


Schedule = DDIMSchedule | FlowSchedule


# -- rollout ----------------------------------------------------------------------------------


@dataclass
class SampleOutput:
    """What :func:`sample` returns (``S`` = number of steps run).

    Attributes:
        latents: ``(B,C,h,w)`` fp32, the latent after the last step run (``x_0`` when all
            steps ran); carries gradient when the last steps were grad steps.
        pred_x0: ``S`` tensors ``(B,C,h,w)``, the predicted clean latent at every step
            (with gradient at grad steps).
        log_probs: ``(B,S)`` fp32 per-step log-probs (see the module docstring), detached;
            None unless ``log_probs=True``.
        timesteps: ``(S,)`` the model timesteps of the steps run.
        trajectory: ``(B,S+1,C,h,w)`` detached latents ``x_T … x_end`` when requested.
    """

    latents: Tensor
    pred_x0: list[Tensor]
    log_probs: Tensor | None
    timesteps: Tensor
    trajectory: Tensor | None = None


def _grad_plan(grad_steps: Collection[int] | Tensor | None, batch: int, steps: int) -> Tensor:
    """A ``(B, S)`` bool mask of which (item, step) pairs carry gradient."""
    mask = torch.zeros(batch, steps, dtype=torch.bool)
    if grad_steps is None:
        return mask
    if isinstance(grad_steps, Tensor):
        if grad_steps.shape != (batch, steps) or grad_steps.dtype != torch.bool:
            raise ValueError(
                f"grad_steps: expected a ({batch}, {steps}) bool mask or step indices, "
                f"got {tuple(grad_steps.shape)} {grad_steps.dtype}"
            )
        return grad_steps.cpu()
    for i in grad_steps:
        if not -steps <= i < steps:
            raise ValueError(f"grad_steps: step {i} is outside 0..{steps - 1}")
        mask[:, i] = True
    return mask


def sample(
    policy: DiffusionPolicy,
    cond: Conditioning,
    schedule: Schedule,
    *,
    guidance_scale: float = 1.0,
    latents: Tensor | None = None,
    generator: torch.Generator | None = None,
    grad_steps: Collection[int] | Tensor | None = None,
    until: int | None = None,
    checkpoint_steps: bool = True,
    log_probs: bool = False,
    return_trajectory: bool = False,
    reference: bool = False,
) -> SampleOutput:
    """Roll out ``schedule`` from noise, with gradient only where asked.

    Args:
        cond: prompt conditioning (from ``policy.encode_prompt``); it must hold negative
            embeddings when ``guidance_scale > 1`` (one batched uncond+cond forward).
        latents: the start noise ``x_T`` ``(B,C,h,w)``; drawn from ``generator`` if None.
        grad_steps: step indices that run with gradient, or a ``(B,S)`` bool mask for
            per-trajectory truncation (AlignProp): at a masked-off (item, step) the step's
            output is detached, so no gradient flows into or through it. Other steps run
            under ``no_grad``.
        until: run only steps ``0 … until−1`` (ReFL stops after its grad step).
        checkpoint_steps: wrap the model call of each grad step in
            ``torch.utils.checkpoint`` (activations recomputed in backward: memory ∝ one
            step instead of all grad steps).
        log_probs: also return per-step log-probs (needs a stochastic schedule).
        return_trajectory: also return every latent ``x_T … x_end``.
        reference: sample from the reference model instead of the policy.

    >>> # out = sample(policy, policy.encode_prompt(["a red seven"]), policy.schedule(20, eta=1.0),
    >>> #              generator=torch.Generator().manual_seed(0), log_probs=True)
    """
    steps = schedule.num_steps if until is None else until
    if not 1 <= steps <= schedule.num_steps:
        raise ValueError(f"until: expected 1..{schedule.num_steps}, got {until}")
    if log_probs and not schedule.stochastic:
        raise ValueError(
            "log_probs: a deterministic schedule has no step density; "
            "use eta > 0 (DDIM) or noise_level > 0 (flow)"
        )
    if latents is None:
        latents = policy.initial_noise(len(cond), generator)
    x = latents.float()
    plan = _grad_plan(grad_steps, x.shape[0], schedule.num_steps)[:, :steps]
    pred_x0, lps, traj = [], [], [x.detach()] if return_trajectory else None
    for i in range(steps):
        t = schedule.model_timestep(i)
        row = plan[:, i]
        with torch.set_grad_enabled(bool(row.any()) and not reference):
            if torch.is_grad_enabled() and checkpoint_steps:
                out = checkpoint(
                    _predict_fn(policy, cond, guidance_scale), x, t, use_reentrant=False
                )
            else:
                out = policy.predict(x, t, cond, guidance_scale, reference=reference)
            step = schedule.step(i, out, x, generator=generator)
            x_next, x0 = step.prev_sample, step.pred_x0
            if torch.is_grad_enabled() and not bool(row.all()):  # per-trajectory truncation
                keep = row.to(x.device).view(-1, *([1] * (x.ndim - 1)))
                x_next = torch.where(keep, x_next, x_next.detach())
                x0 = torch.where(keep, x0, x0.detach())
        x = x_next
        pred_x0.append(x0)
        if log_probs:
            lps.append(step.log_prob.detach())
        if traj is not None:
            traj.append(x.detach())
    ts = schedule.timesteps[:steps]
    return SampleOutput(
        latents=x,
        pred_x0=pred_x0,
        log_probs=torch.stack(lps, dim=1) if log_probs else None,
        timesteps=ts,
        trajectory=torch.stack(traj, dim=1) if traj is not None else None,
    )


def _predict_fn(policy: DiffusionPolicy, cond: Conditioning, guidance_scale: float) -> Callable:
    def fn(x: Tensor, t: Tensor) -> Tensor:
        return policy.predict(x, t, cond, guidance_scale)

    return fn


def transition_log_prob(
    policy: DiffusionPolicy,
    schedule: Schedule,
    i: int | Tensor,
    sample_t: Tensor,
    prev_sample: Tensor,
    cond: Conditioning,
    guidance_scale: float = 1.0,
    reference: bool = False,
) -> StepOutput:
    """Re-score a recorded transition ``x_t → x_{t−1}`` (step ``i``) under the policy.

    Differentiable w.r.t. the policy unless ``reference``; ``i`` may be an int or a ``(B,)``
    tensor of step indices. The returned ``log_prob`` uses the same fp32 path as sampling,
    so re-scoring a sampled transition with unchanged weights reproduces its log-prob.
    """
    if not schedule.stochastic:
        raise ValueError("transition_log_prob: needs eta > 0 (DDIM) or noise_level > 0 (flow)")
    t = schedule.model_timestep(i)
    out = policy.predict(sample_t.float(), t, cond, guidance_scale, reference=reference)
    return schedule.step(i, out, sample_t.float(), prev_sample=prev_sample)


# -- function-evaluation accounting ----------------------------------------------------------


class NFECounter:
    """Count denoiser evaluations per image while active (a context manager).

    Every ``policy.predict`` call on a batch of ``n`` latents adds ``n`` (one function
    evaluation per image; under classifier-free guidance the conditional and
    unconditional branches run in that one batched call and count once, the usual
    convention for sampler NFE). ``count`` is the total over the context.

    >>> # with NFECounter(policy) as nfe:
    >>> #     sample(policy, cond, policy.schedule(20))
    >>> # nfe.count == 20 * len(cond)
    """

    def __init__(self, policy: DiffusionPolicy) -> None:
        self.policy, self.count = policy, 0

    def __enter__(self) -> NFECounter:
        inner = self.policy.predict
        self._saved = self.policy.__dict__.get("predict")  # an enclosing counter's wrapper

        def counted(x: Tensor, *args, **kwargs) -> Tensor:
            self.count += int(x.shape[0])
            return inner(x, *args, **kwargs)

        self.policy.predict = counted  # instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is None:
            del self.policy.predict
        else:
            self.policy.predict = self._saved
