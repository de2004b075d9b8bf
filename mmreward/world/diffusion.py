"""The world's tiny text-to-image model: a real diffusers ``StableDiffusionPipeline``.

The same components as Stable Diffusion 1.x, just tiny:

- ``AutoencoderKL``: 32×32 RGB ↔ 8×8×4 latents (3 levels of 16/32/32 channels);
- ``UNet2DConditionModel``: ε-prediction on 8×8×4 latents, cross-attention at 4×4 and in the
  middle block to the text encoder's hidden states (width 64);
- ``CLIPTextModel`` + ``CLIPTokenizer``: the text tower of the world's tiny CLIP (frozen);
- ``DDIMScheduler`` with SD's scaled-linear β schedule (1000 training steps).

Training follows the latent-diffusion recipe (Rombach et al. 2022, https://arxiv.org/abs/2112.10752):
the VAE on reconstruction + a small KL term; latents scaled by 1/std (SD's
``scaling_factor``); the UNet on E‖ε − ε_θ(√ᾱ_t z₀ + √(1−ᾱ_t) ε, t, c)‖² (Ho et al. 2020,
eq. 14) with min-SNR-γ weighting (Hang et al. 2023) and the caption dropped 10% of the time
so classifier-free guidance works (Ho & Salimans 2022); an EMA of the weights is saved.

>>> pipe = load_pipeline()                                             # doctest: +SKIP
>>> images = generate(pipe, ["a small red seven on a dark background"], seeds=[0])  # doctest: +SKIP
>>> images.shape                                                       # doctest: +SKIP
torch.Size([1, 3, 32, 32])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmreward.world.data import IMAGE_SIZE, sample_world

#: the tiny VAE (``AutoencoderKL`` fields): 32×32×3 ↔ 8×8×4
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [16, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": IMAGE_SIZE,
    "mid_block_add_attention": False,
}
#: the tiny UNet (``UNet2DConditionModel`` fields); cross_attention_dim = text width
UNET_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE_SIZE // 4,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "norm_num_groups": 16,
}
#: Stable Diffusion 1.x's noise schedule
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
GUIDANCE_SCALE = 3.0  # the world's default classifier-free guidance scale
NUM_STEPS = 20  # the world's default number of DDIM steps


def build_vae(config: dict[str, Any] | None = None, seed: int = 0):
    """A randomly initialised ``AutoencoderKL`` (default: :data:`VAE_CONFIG`)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**(config or VAE_CONFIG))


def build_unet(config: dict[str, Any] | None = None, seed: int = 0):
    """A randomly initialised ``UNet2DConditionModel`` (default: :data:`UNET_CONFIG`)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**(config or UNET_CONFIG))


def text_encoder_from_clip(clip_model):
    """A ``CLIPTextModel`` holding the text tower of a ``CLIPModel`` (weights copied)."""
    from transformers import CLIPTextModel

    text = CLIPTextModel(clip_model.config.text_config)
    target = getattr(text, "text_model", text)  # transformers 4 wraps the tower, 5 does not
    target.load_state_dict(clip_model.text_model.state_dict())
    return text.eval()


def _cosine_lr(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.475 * (1 + math.cos(math.pi * t)))


# -- VAE ---------------------------------------------------------------------------------


def train_vae(
    vae,
    steps: int = 600,
    batch_size: int = 32,
    lr: float = 2e-3,
    kl_weight: float = 1e-6,
    pool_size: int = 4000,
    seed: int = 0,
    log: Any = print,
    log_every: int = 100,
):
    """Train on train-split renders: L1 + L2 reconstruction in [-1,1] + ``kl_weight``·KL.

    Sets ``vae.config.scaling_factor`` to 1/std of the latents of the pool (SD's recipe).
    Returns ``(vae, metrics)`` with the held-out reconstruction error.
    """
    pool = sample_world(pool_size, digits="train", prompts="train", seed=seed + 10).images
    if vae.quant_conv is not None:  # start with a narrow posterior (log σ² = −6), so early
        with torch.no_grad():  # steps are not drowned in sampling noise
            vae.quant_conv.bias[vae.config.latent_channels :] = -6.0
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    vae.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(step, steps, lr, max(1, steps // 20))
        x = pool[torch.randint(len(pool), (batch_size,), generator=g)] * 2 - 1
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        recon = vae.decode(z).sample
        rec = (recon - x).abs().mean() + (recon - x).pow(2).mean()
        loss = rec + kl_weight * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % log_every == 0 or step == steps - 1:
            log(f"vae step {step + 1}/{steps}: reconstruction {rec.item():.4f}")
    vae.eval()
    with torch.no_grad():
        z = vae.encode(pool[:1000] * 2 - 1).latent_dist.mean
        vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        test = sample_world(500, digits="test", prompts="test", seed=seed + 20).images
        recon = ((vae.decode(vae.encode(test * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
    metrics = {
        "test_l1": float((recon - test).abs().mean()),
        "test_psnr_db": float(-10 * torch.log10((recon - test).pow(2).mean())),
        "scaling_factor": float(vae.config.scaling_factor),
    }
    return vae, metrics


# -- UNet --------------------------------------------------------------------------------


@torch.no_grad()
def encode_prompts(text_encoder, tokenizer, prompts: Sequence[str]) -> Tensor:
    """The text encoder's last hidden states ``(N, L, D)`` (what the pipeline conditions on)."""
    from mmreward.world.clip import tokenize

    ids = tokenize(tokenizer, prompts).to(text_encoder.device)
    return text_encoder(ids)[0]


def train_unet(
    unet,
    vae,
    text_encoder,
    tokenizer,
    steps: int = 2500,
    batch_size: int = 32,
    lr: float = 1e-3,
    p_uncond: float = 0.1,
    snr_gamma: float = 5.0,
    ema_decay: float = 0.995,
    pool_size: int = 6000,
    seed: int = 0,
    log: Any = print,
    log_every: int = 100,
):
    """Train the UNet on latents of train-split renders of train prompts; returns the EMA UNet.

    Latents (posterior mean and std) and text embeddings are computed once; each step
    samples z₀ from the posterior, a timestep, and noise; the caption becomes "" with
    probability ``p_uncond`` (for classifier-free guidance).
    """
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    pool = sample_world(pool_size, digits="train", prompts="train", seed=seed + 30)
    with torch.no_grad():
        dist = [
            vae.encode(pool.images[i : i + 256] * 2 - 1).latent_dist
            for i in range(0, len(pool), 256)
        ]
    mean = torch.cat([d.mean for d in dist])
    std = torch.cat([d.std for d in dist])
    scale = vae.config.scaling_factor
    prompts = sorted(set(pool.prompts))
    table = encode_prompts(text_encoder, tokenizer, ["", *prompts])  # row 0: unconditional
    row = {p: i + 1 for i, p in enumerate(prompts)}
    caption_rows = torch.tensor([row[p] for p in pool.prompts])
    alphas_cumprod = sched.alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod)
    # min-SNR-γ weights for ε-prediction: min(SNR, γ) / SNR (Hang et al. 2023, eq. 9)
    weight = torch.clamp(snr, max=snr_gamma) / snr

    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    unet.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(step, steps, lr, max(1, steps // 20))
        idx = torch.randint(len(pool), (batch_size,), generator=g)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        zt = sched.add_noise(z0, eps, t)
        drop = torch.rand(batch_size, generator=g) < p_uncond
        cond = table[torch.where(drop, 0, caption_rows[idx])]
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        loss = (weight[t] * (pred - eps).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # EMA; the warm-up form keeps early averages from lagging
            d = min(ema_decay, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - d)
        if (step + 1) % log_every == 0 or step == steps - 1:
            log(f"unet step {step + 1}/{steps}: loss {loss.item():.4f}")
    return ema


# -- pipeline ----------------------------------------------------------------------------


def assemble_pipeline(vae, unet, text_encoder, tokenizer):
    """A ``StableDiffusionPipeline`` (DDIM scheduler, no safety checker) from the parts."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipe, folder: str | Path) -> Path:
    """``pipe.save_pretrained(folder)`` in safetensors (loads with ``from_pretrained``)."""
    from mmreward.world.clip import quiet_hf

    folder = Path(folder)
    with quiet_hf():
        pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def load_pipeline(folder: str | Path | None = None, device: str | torch.device = "cpu"):
    """``StableDiffusionPipeline.from_pretrained`` on the committed assets (or ``folder``)."""
    from diffusers import StableDiffusionPipeline

    from mmreward.world.clip import quiet_hf
    from mmreward.world.gold import assets_dir

    folder = Path(folder) if folder is not None else assets_dir() / "pipeline"
    if not (folder / "model_index.json").is_file():
        from mmreward.errors import WeightsNotFoundError

        raise WeightsNotFoundError(
            f"world pipeline: {folder} has no model_index.json; regenerate the world's assets "
            "with `python -m mmreward.world.build --stages vae,unet`"
        )
    with quiet_hf():  # the tiny pipeline has no safety checker, on purpose
        pipe = StableDiffusionPipeline.from_pretrained(
            folder, safety_checker=None, requires_safety_checker=False, local_files_only=True
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.no_grad()
def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int] | None = None,
    guidance_scale: float = GUIDANCE_SCALE,
    num_inference_steps: int = NUM_STEPS,
    batch_size: int = 64,
    progress: bool = False,
) -> Tensor:
    """Sample one image per prompt: ``(N,3,32,32)`` float in [0,1].

    Each image has its own ``torch.Generator`` seeded with ``seeds[i]`` (default: ``i``),
    so an image does not depend on the batch it was generated in.
    """
    from tqdm.auto import tqdm

    prompts = list(prompts)
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds: expected {len(prompts)} (one per prompt), got {len(seeds)}")
    out = []
    for k in tqdm(range(0, len(prompts), batch_size), desc="generating", disable=not progress):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[k : k + batch_size]]
        images = pipe(
            prompts[k : k + batch_size],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=gens,
            output_type="pt",
        ).images
        out.append(images.float().clamp(0, 1).cpu())
    return torch.cat(out)
