"""A trainable policy over diffusers components: SD 1.x/2.x, SDXL and SD3-style flow models.

:class:`DiffusionPolicy` wraps a diffusers pipeline (UNet or transformer, VAE, text
encoder(s), scheduler) and exposes what alignment needs — prompt encoding, one denoiser
call with classifier-free guidance, the reference model's call, VAE decode/encode, the
sampling schedule and the training noise — so every algorithm and the sampler are written
once for all three families:

=========  ==========================================  ==================================
kind       denoiser                                    conditioning
=========  ==========================================  ==================================
``sd``     ``UNet2DConditionModel`` (ε- or v-pred)     one CLIP text encoder
``sdxl``   ``UNet2DConditionModel`` (``text_time``)    two text encoders, pooled + size ids
``flow``   ``SD3Transformer2DModel`` (velocity)        two/three text encoders, pooled
=========  ==========================================  ==================================

Only the denoiser is trained (fully, or through LoRA adapters from peft); the text
encoders and VAE are frozen. The reference model is the denoiser with its LoRA adapters
disabled (``reference="adapters"``, no extra memory) or a frozen copy made at construction
(``reference="copy"``, needed for full fine-tuning).

>>> from diffusion_align.tiny import tiny_pipeline
>>> policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2))
>>> policy.kind, policy.reference_mode, policy.latent_shape(2)
('sd', 'adapters', (2, 4, 8, 8))
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffusion_align.sampling import DDIMSchedule, FlowSchedule, Schedule

KINDS = ("sd", "sdxl", "flow")
REFERENCE_MODES = ("auto", "adapters", "copy", "none")
#: attention projections of both UNet and SD3 transformer blocks (the diffusers LoRA scripts' default)
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class LoraSpec:
    """LoRA adapters on the denoiser (peft). ``alpha`` defaults to ``rank`` (scale 1)."""

    rank: int = 4
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    init: str = "gaussian"  # peft init_lora_weights: "gaussian" or "default"; B = 0 either way
    dropout: float = 0.0

    def peft_config(self):
        from peft import LoraConfig

        if self.rank < 1:
            raise ValueError(f"lora.rank: expected ≥ 1, got {self.rank}")
        init: Any = True if self.init == "default" else self.init
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha if self.alpha is not None else self.rank,
            init_lora_weights=init,
            target_modules=list(self.target_modules),
            lora_dropout=self.dropout,
        )


@dataclass
class Conditioning:
    """Encoded prompts for one batch (text encoders are frozen: no gradient here).

    Attributes:
        embeds: ``(B,L,D)`` text embeddings (cross-attention / joint-attention input).
        pooled: ``(B,P)`` pooled text embeddings (SDXL, flow), else None.
        time_ids: ``(B,6)`` SDXL size/crop micro-conditioning, else None.
        neg_embeds, neg_pooled: the unconditional (negative-prompt) counterparts, present
            when the batch was encoded for classifier-free guidance.
    """

    embeds: Tensor
    pooled: Tensor | None = None
    time_ids: Tensor | None = None
    neg_embeds: Tensor | None = None
    neg_pooled: Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def _map(self, fn) -> Conditioning:
        return Conditioning(
            **{
                f.name: (None if (v := getattr(self, f.name)) is None else fn(v))
                for f in fields(self)
            }
        )

    def select(self, index: Tensor | Sequence[int] | slice) -> Conditioning:
        """Rows ``index`` of every tensor."""
        return self._map(lambda v: v[index])

    def repeat_interleave(self, n: int) -> Conditioning:
        """Each row repeated ``n`` times in place (``[a, b]`` → ``[a, a, b, b]`` for n=2)."""
        return self._map(lambda v: v.repeat_interleave(n, dim=0))

    def repeat(self, n: int) -> Conditioning:
        """The whole batch repeated ``n`` times (``[a, b]`` → ``[a, b, a, b]``)."""
        return self._map(lambda v: v.repeat(n, *([1] * (v.ndim - 1))))

    def to(self, device: torch.device | str) -> Conditioning:
        return self._map(lambda v: v.to(device))

    def has_negative(self) -> bool:
        return self.neg_embeds is not None


def load_pipeline(name: str, torch_dtype: torch.dtype | None = None, **kwargs: Any):
    """A diffusers pipeline from a local directory, a hub id, ``tiny:sd|sdxl|flow`` or ``world``.

    ``world`` is the built-in world's tiny text-to-image model (:mod:`mmreward.world`).
    """
    if name.startswith("tiny:"):
        from diffusion_align.tiny import tiny_pipeline

        pipe = tiny_pipeline(name.split(":", 1)[1], **kwargs)
        return pipe.to(dtype=torch_dtype) if torch_dtype is not None else pipe
    if name == "world":
        try:
            from mmreward.world.diffusion import load_pipeline as load_world
        except ImportError as e:
            raise FileNotFoundError(
                "the built-in world's diffusion model (mmreward.world.diffusion) is not "
                f"available ({e}); build it with `python -m mmreward.world.build`"
            ) from e
        pipe = load_world(**kwargs)
        return pipe.to(dtype=torch_dtype) if torch_dtype is not None else pipe
    from diffusers import DiffusionPipeline

    extra: dict[str, Any] = dict(kwargs)
    index = Path(name) / "model_index.json"
    if index.is_file():
        # SD3 checkpoints saved without the T5 encoder: pass the missing parts as None
        spec = json.loads(index.read_text())
        if spec.get("_class_name") == "StableDiffusion3Pipeline":
            for part in ("text_encoder_3", "tokenizer_3"):
                if spec.get(part, [None, None])[0] is None:
                    extra.setdefault(part, None)
    elif Path(name).exists():
        raise FileNotFoundError(f"{name}: not a diffusers pipeline directory (no model_index.json)")
    try:
        return DiffusionPipeline.from_pretrained(name, torch_dtype=torch_dtype, **extra)
    except OSError as e:
        raise FileNotFoundError(
            f"cannot load the pipeline {name!r} ({e}). Without network access, download it "
            "elsewhere (`huggingface-cli download ID --local-dir DIR`) and pass DIR"
        ) from e


def detect_kind(pipe: Any) -> str:
    """``sd``, ``sdxl`` or ``flow`` from a pipeline's components."""
    if getattr(pipe, "transformer", None) is not None:
        return "flow"
    unet = getattr(pipe, "unet", None)
    if unet is None:
        raise ValueError(f"{type(pipe).__name__}: expected a pipeline with a unet or transformer")
    if unet.config.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd"


class DiffusionPolicy:
    """The trainable denoiser plus the frozen parts of a diffusers pipeline.

    Args:
        pipeline: a diffusers ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``
            or ``StableDiffusion3Pipeline`` (or any pipeline with the same components).
        lora: add LoRA adapters (only they train); None trains the whole denoiser.
        reference: ``"adapters"`` (LoRA disabled), ``"copy"`` (frozen copy of the
            denoiser), ``"none"`` (algorithms that need one refuse), or ``"auto"``
            (adapters with LoRA, else none: set ``"copy"`` to get one for full fine-tuning).
        gradient_checkpointing: diffusers' block-level checkpointing in the denoiser
            (and VAE decoder), trading compute for activation memory.
        negative_prompt: the unconditional prompt for classifier-free guidance.
    """

    def __init__(
        self,
        pipeline: Any,
        lora: LoraSpec | None = None,
        reference: str = "auto",
        gradient_checkpointing: bool = False,
        negative_prompt: str = "",
    ) -> None:
        if reference not in REFERENCE_MODES:
            raise ValueError(f"reference: expected one of {REFERENCE_MODES}, got {reference!r}")
        self.pipe = pipeline
        self.kind = detect_kind(pipeline)
        raw = pipeline.transformer if self.kind == "flow" else pipeline.unet
        self.vae = pipeline.vae
        self.negative_prompt = negative_prompt
        for part in self._frozen_modules():
            part.requires_grad_(False)
            part.eval()
        self.lora = lora
        if lora is not None:
            raw.requires_grad_(False)
            raw.add_adapter(lora.peft_config())
        else:
            raw.requires_grad_(True)
        raw.train()
        if reference == "auto":
            reference = "adapters" if lora is not None else "none"
        if reference == "adapters" and lora is None:
            raise ValueError("reference='adapters' needs LoRA (lora=LoraSpec(...)); use 'copy'")
        self.reference_mode = reference
        self.ref_denoiser: nn.Module | None = None
        if reference == "copy":
            self.ref_denoiser = copy.deepcopy(raw).requires_grad_(False).eval()
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            raw.enable_gradient_checkpointing()
        self._raw = raw
        self.denoiser: nn.Module = raw  # replaced by the accelerate-prepared module in training
        sched_cfg = dict(pipeline.scheduler.config)
        self.scheduler_config = sched_cfg
        if self.kind == "flow":
            self.prediction_type = "flow"
        else:
            self.prediction_type = sched_cfg.get("prediction_type", "epsilon")
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._uncond_cache: dict[tuple, Conditioning] = {}

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        lora: LoraSpec | None = None,
        reference: str = "auto",
        gradient_checkpointing: bool = False,
        torch_dtype: torch.dtype | None = None,
        lora_weights: str | Path | None = None,
        negative_prompt: str = "",
        **pipeline_kwargs: Any,
    ) -> DiffusionPolicy:
        """Load a pipeline (see :func:`load_pipeline`) and wrap it.

        ``lora_weights``: a directory written by :meth:`save_pretrained` of a LoRA policy
        (e.g. a run's ``final/``): fresh adapters of the spec stored there, then its weights.

        >>> # DiffusionPolicy.from_pretrained("runwayml/stable-diffusion-v1-5", lora=LoraSpec(8))
        >>> # DiffusionPolicy.from_pretrained("/models/sdxl-base", torch_dtype=torch.bfloat16)
        """
        pipe = load_pipeline(name_or_path, torch_dtype=torch_dtype, **pipeline_kwargs)
        if lora_weights is not None:
            spec_file = Path(lora_weights) / "lora_spec.json"
            if lora is None and spec_file.is_file():
                lora = LoraSpec(**json.loads(spec_file.read_text()))
        policy = cls(pipe, lora, reference, gradient_checkpointing, negative_prompt)
        if lora_weights is not None:
            policy.load_trainable(Path(lora_weights) / "trainable.safetensors")
        return policy

    def save_pretrained(self, directory: str | Path) -> Path:
        """Save the trained part: the LoRA weights (+ spec) or the whole pipeline.

        LoRA: ``directory/trainable.safetensors`` + ``lora_spec.json`` (reload with
        ``from_pretrained(base, lora_weights=directory)``). Full fine-tune: a diffusers
        pipeline directory (``from_pretrained(directory)``).
        """
        from mmreward.checkpoint import atomic_write, save_state_dict

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.lora is None:
            self.pipe.save_pretrained(str(directory))
            return directory
        save_state_dict(self.trainable_state_dict(), directory / "trainable.safetensors")
        spec = json.dumps(self.lora.__dict__, indent=2) + "\n"
        atomic_write(directory / "lora_spec.json", lambda p: p.write_text(spec))
        return directory

    # -- parameters --------------------------------------------------------------------------
    @property
    def raw_denoiser(self) -> nn.Module:
        """The denoiser itself (never the DDP/compiled wrapper)."""
        return self._raw

    def _frozen_modules(self) -> list[nn.Module]:
        names = ("vae", "text_encoder", "text_encoder_2", "text_encoder_3")
        return [m for n in names if (m := getattr(self.pipe, n, None)) is not None]

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self._raw.named_parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_trainable_parameters()]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in self.named_trainable_parameters()}

    def load_trainable(self, path_or_state: str | Path | dict[str, Tensor]) -> None:
        """Load trainable weights saved by :meth:`trainable_state_dict` (strict)."""
        from mmreward.checkpoint import read_state_dict
        from mmreward.errors import CheckpointError

        state = (
            read_state_dict(path_or_state)
            if isinstance(path_or_state, (str, Path))
            else path_or_state
        )
        own = dict(self.named_trainable_parameters())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in set(own) & set(state)
               if state[k].shape != own[k].shape]  # fmt: skip
        if missing or unexpected or bad:
            raise CheckpointError(missing, unexpected, bad, source=str(path_or_state)[:200])
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(state[k].to(p.device, p.dtype))

    @property
    def device(self) -> torch.device:
        return next(self._raw.parameters()).device

    def _model_dtype(self, module: nn.Module) -> torch.dtype:
        """The dtype inputs are cast to: that of the (frozen) base weights."""
        for p in module.parameters():
            if not p.requires_grad or self.lora is None:
                return p.dtype
        return torch.float32

    def to(
        self, device: torch.device | str | None = None, frozen_dtype: torch.dtype | None = None
    ) -> DiffusionPolicy:
        """Move everything to ``device``; cast frozen parts (and LoRA base weights) to
        ``frozen_dtype`` (the diffusers training scripts' ``weight_dtype``). Trainable
        parameters stay in fp32."""
        cast = {} if frozen_dtype is None else {"dtype": frozen_dtype}
        for part in [*self._frozen_modules(), self.ref_denoiser]:
            if part is not None:
                part.to(device=device, **cast)
        self._raw.to(device=device)
        if frozen_dtype is not None and self.lora is not None:
            self._raw.to(dtype=frozen_dtype)
            for p in self.trainable_parameters():
                p.data = p.data.float()
        return self

    # -- conditioning ------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(
        self, prompts: Sequence[str], guidance: bool = True, height: int | None = None,
        width: int | None = None,
    ) -> Conditioning:  # fmt: skip
        """Encode prompts (and, when ``guidance``, the negative prompt) for the denoiser."""
        if isinstance(prompts, str):
            raise ValueError("prompts: expected a list of strings, got a single string")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts: expected at least one prompt")
        device = self.device
        pipe = self.pipe
        if self.kind == "sd":
            emb, _ = pipe.encode_prompt(prompts, device, 1, False)
            cond = Conditioning(emb)
        elif self.kind == "sdxl":
            emb, _, pooled, _ = pipe.encode_prompt(
                prompts, device=device, do_classifier_free_guidance=False
            )
            h, w = self.resolution(height, width)
            ids = torch.tensor([h, w, 0, 0, h, w], dtype=emb.dtype, device=device)
            cond = Conditioning(emb, pooled, ids.expand(len(prompts), 6).clone())
        else:
            kwargs = {}
            if getattr(pipe, "text_encoder_3", None) is None:
                kwargs["max_sequence_length"] = self._t5_free_length()
            emb, _, pooled, _ = pipe.encode_prompt(
                prompts, None, None, device=device, do_classifier_free_guidance=False, **kwargs
            )
            cond = Conditioning(emb, pooled)
        if guidance:
            neg = self._negative(len(prompts), cond)
            cond.neg_embeds, cond.neg_pooled = neg.embeds, neg.pooled
        return cond

    def _t5_free_length(self) -> int:
        # without T5, SD3 pads with zeros to max_sequence_length tokens: keep it short
        return int(getattr(self.pipe.tokenizer, "model_max_length", 77))

    def _negative(self, n: int, like: Conditioning) -> Conditioning:
        key = (self.negative_prompt, like.embeds.device, like.embeds.dtype)
        if key not in self._uncond_cache:
            zero = (
                self.kind == "sdxl"
                and not self.negative_prompt
                and self.pipe.config.get("force_zeros_for_empty_prompt", True)
            )
            if zero:  # the SDXL pipeline's default: zeros for an empty negative prompt
                one = Conditioning(
                    torch.zeros_like(like.embeds[:1]), torch.zeros_like(like.pooled[:1])
                )
            else:
                one = self.encode_prompt([self.negative_prompt], guidance=False)
            self._uncond_cache = {key: one}
        one = self._uncond_cache[key]
        return Conditioning(
            one.embeds.expand(n, *one.embeds.shape[1:]),
            None if one.pooled is None else one.pooled.expand(n, *one.pooled.shape[1:]),
        )

    # -- geometry ----------------------------------------------------------------------------
    def resolution(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """Image ``(H, W)``: the given values or the denoiser's native size."""
        size = self._raw.config.sample_size
        size = size if isinstance(size, int) else size[0]
        native = size * self.vae_scale_factor
        return (height or native, width or native)

    def latent_shape(self, batch: int, height: int | None = None, width: int | None = None):
        h, w = self.resolution(height, width)
        f = self.vae_scale_factor
        if h % f or w % f:
            raise ValueError(f"height/width: expected multiples of {f}, got {h}×{w}")
        return (batch, self._raw.config.in_channels, h // f, w // f)

    def initial_noise(
        self, batch: int, generator: torch.Generator | None = None, height=None, width=None
    ) -> Tensor:
        """``x_T ~ N(0, I)`` (fp32), drawn on the generator's device and moved to the model's."""
        gdev = generator.device if generator is not None else self.device
        x = torch.randn(self.latent_shape(batch, height, width), generator=generator, device=gdev)
        return x.to(self.device)

    def schedule(
        self, num_steps: int, eta: float = 0.0, noise_level: float = 0.0, latent_hw=None
    ) -> Schedule:
        """The sampling schedule: DDIM (η) for UNet kinds, the flow SDE (noise level a) for flow."""
        if self.kind == "flow":
            seq = None
            if latent_hw is not None:
                p = self._raw.config.patch_size
                seq = (latent_hw[0] // p) * (latent_hw[1] // p)
            return FlowSchedule(self.scheduler_config, num_steps, noise_level, seq)
        return DDIMSchedule(self.scheduler_config, num_steps, eta, self.prediction_type)

    # -- the denoiser call -----------------------------------------------------------------
    def _call(
        self, module: nn.Module, x: Tensor, t: Tensor, embeds: Tensor, pooled, time_ids
    ) -> Tensor:
        dtype = self._model_dtype(self._raw if module is self.denoiser else module)
        x, embeds = x.to(dtype), embeds.to(dtype)
        if self.kind == "flow":
            return module(
                hidden_states=x,
                timestep=t,
                encoder_hidden_states=embeds,
                pooled_projections=pooled.to(dtype),
                return_dict=False,
            )[0]
        added = None
        if self.kind == "sdxl":
            added = {"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(dtype)}
        return module(
            x, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False
        )[0]

    def _forward(
        self, module: nn.Module, x: Tensor, t: Tensor | float, cond: Conditioning, w: float
    ) -> Tensor:
        n = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(n) if t.ndim == 0 else t
        if w == 1.0:
            return self._call(module, x, t, cond.embeds, cond.pooled, cond.time_ids)
        if not cond.has_negative():
            raise ValueError(
                "guidance_scale > 1 needs negative embeddings: encode with guidance=True"
            )
        # one batched forward: [uncond; cond]
        cat = torch.cat
        pooled = None if cond.pooled is None else cat([cond.neg_pooled, cond.pooled])
        ids = None if cond.time_ids is None else cat([cond.time_ids, cond.time_ids])
        out = self._call(
            module, cat([x, x]), cat([t, t]), cat([cond.neg_embeds, cond.embeds]), pooled, ids
        )
        uncond, text = out.float().chunk(2)
        return uncond + w * (text - uncond)  # ε = ε_u + w(ε_c − ε_u) (Ho & Salimans 2022)

    def predict(
        self,
        x: Tensor,
        t: Tensor | float,
        cond: Conditioning,
        guidance_scale: float = 1.0,
        reference: bool = False,
    ) -> Tensor:
        """The denoiser output (ε, v or flow velocity) with classifier-free guidance.

        ``t`` is a scalar or a ``(B,)`` tensor of model timesteps. ``reference=True``
        calls the reference model under ``no_grad``.
        """
        if not reference:
            return self._forward(self.denoiser, x, t, cond, guidance_scale)
        with torch.no_grad(), self.reference_model() as ref:
            return self._forward(ref, x, t, cond, guidance_scale)

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[nn.Module]:
        """The reference denoiser: adapters disabled for the duration, or the frozen copy."""
        if self.reference_mode == "copy":
            yield self.ref_denoiser
        elif self.reference_mode == "adapters":
            self._raw.disable_adapters()
            try:
                yield self.denoiser
            finally:
                self._raw.enable_adapters()
        else:
            raise ValueError(
                "this algorithm needs a reference model: use LoRA (model.lora) or "
                "model.reference=copy"
            )

    def predict_with_reference(
        self,
        x: Tensor,
        t: Tensor | float,
        cond: Conditioning,
        guidance_scale: float = 1.0,
        batched: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """``(policy output, reference output)``; the reference output is detached.

        ``batched=True`` runs both in **one** forward of the doubled batch: a hook on every
        LoRA ``B`` projection zeroes the adapter's contribution on the reference half. It
        needs LoRA adapters as the reference and no block-level gradient checkpointing
        (whose recomputation in backward would run without the hooks). ``batched=False``:
        two forwards, the reference one under ``no_grad``.
        """
        if not batched:
            return self.predict(x, t, cond, guidance_scale), self.predict(
                x, t, cond, guidance_scale, reference=True
            )
        self.check_batched_reference()
        n = x.shape[0]
        t2 = torch.as_tensor(t, device=x.device)
        t2 = torch.cat([t2.expand(n), t2.expand(n)]) if t2.ndim == 0 else t2.repeat(2)
        # under CFG the denoiser sees [uncond; cond] for each half: mask rows accordingly
        rows = 4 * n if guidance_scale != 1.0 else 2 * n
        mask = torch.zeros(rows, device=x.device)
        if guidance_scale != 1.0:
            mask[:n], mask[2 * n : 3 * n] = 1.0, 1.0  # [pol-u, ref-u, pol-c, ref-c]
        else:
            mask[:n] = 1.0
        with _lora_row_mask(self._raw, mask):
            out = self._forward(
                self.denoiser, torch.cat([x, x]), t2, cond.repeat(2), guidance_scale
            )
        return out[:n], out[n:].detach()

    def check_batched_reference(self) -> None:
        """Raise unless policy and reference can share one batched forward."""
        if self.reference_mode != "adapters":
            raise ValueError(
                "ref_forward=batched needs LoRA adapters as the reference (model.lora_rank > 0); "
                "use ref_forward: separate with a frozen copy"
            )
        if self.gradient_checkpointing:
            raise ValueError(
                "ref_forward=batched cannot be combined with model.gradient_checkpointing (the "
                "recomputation in backward would not see the reference mask); use "
                "ref_forward: separate"
            )

    # -- pixels ------------------------------------------------------------------------------
    def decode(self, latents: Tensor) -> Tensor:
        """Latents → images ``(B,3,H,W)`` in [0,1] (fp32), differentiable."""
        cfg = self.vae.config
        z = latents.to(self.vae.dtype) / cfg.scaling_factor
        if cfg.get("shift_factor") is not None:
            z = z + cfg.shift_factor
        if self.gradient_checkpointing and torch.is_grad_enabled():
            image = torch.utils.checkpoint.checkpoint(
                lambda z_: self.vae.decode(z_, return_dict=False)[0], z, use_reentrant=False
            )
        else:
            image = self.vae.decode(z, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images in [0,1] → latents (fp32), sampled from the VAE posterior with ``generator``."""
        cfg = self.vae.config
        x = images.to(self.device, self.vae.dtype) * 2 - 1
        dist = self.vae.encode(x).latent_dist
        gdev = generator.device if generator is not None else dist.mean.device
        noise = torch.randn(dist.mean.shape, generator=generator, device=gdev).to(dist.mean)
        z = (dist.mean + dist.std * noise).float()
        if cfg.get("shift_factor") is not None:
            z = z - cfg.shift_factor
        return z * cfg.scaling_factor

    # -- training noise (denoising losses: Diffusion-DPO, ReFL's regulariser) -----------------
    def noise_schedule(self) -> TrainingNoise:
        """The forward process used for denoising losses."""
        if not hasattr(self, "_training_noise"):
            self._training_noise = TrainingNoise(self.scheduler_config, self.prediction_type)
        return self._training_noise


class TrainingNoise:
    """The forward (noising) process of the training objective, one per family.

    - DDPM family: ``x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε``, target ε (or v = √ᾱ ε − √(1−ᾱ) x0);
    - flow: ``x_σ = (1−σ) x0 + σ ε``, target ``v = ε − x0``, σ on the scheduler's
      (shifted) training grid, model timestep ``σ·T``.

    Timesteps are drawn uniformly from the ``T`` training timesteps.
    """

    def __init__(self, scheduler_config: dict, prediction_type: str) -> None:
        self.prediction_type = prediction_type
        if prediction_type == "flow":
            from diffusers import FlowMatchEulerDiscreteScheduler

            s = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
            self.num_train_timesteps = s.config.num_train_timesteps
            self.sigmas = s.sigmas.float().clone()[: self.num_train_timesteps]
            self.timesteps = s.timesteps.float().clone()[: self.num_train_timesteps]
        else:
            from diffusers import DDPMScheduler

            s = DDPMScheduler.from_config(scheduler_config)
            self.num_train_timesteps = s.config.num_train_timesteps
            self.alphas_cumprod = s.alphas_cumprod.float().clone()

    def sample_indices(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator)

    def loss_weight(self, index: Tensor, snr_gamma: float) -> Tensor:
        """Min-SNR-γ weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
        Weighting Strategy") of training indices ``index`` ``(B,)``: ``min(SNR, γ)/SNR`` for
        ε-prediction, ``min(SNR, γ)/(SNR + 1)`` for v-prediction (as diffusers' training
        scripts' ``--snr_gamma``), with ``SNR = ᾱ/(1 − ᾱ)``; they bring every timestep's
        regression to the same scale as the x0 error capped at γ."""
        if snr_gamma <= 0:
            raise ValueError(f"snr_gamma: expected > 0, got {snr_gamma}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"snr_gamma: min-SNR weights need ε- or v-prediction, not {self.prediction_type!r}"
            )
        a = self.alphas_cumprod[index.cpu()]
        snr = a / (1 - a)
        capped = snr.clamp(max=snr_gamma)
        return capped / snr if self.prediction_type == "epsilon" else capped / (snr + 1)

    def add_noise(self, x0: Tensor, noise: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_t, model timestep (B,), regression target)`` for training indices ``index``."""
        from diffusion_align.sampling import _bcast

        index = index.cpu()
        if self.prediction_type == "flow":
            s = _bcast(self.sigmas[index], x0).to(x0.device)
            x_t = (1 - s) * x0 + s * noise
            return x_t, self.timesteps[index].to(x0.device), noise - x0
        a = _bcast(self.alphas_cumprod[index], x0).to(x0.device)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = a.sqrt() * noise - (1 - a).sqrt() * x0
        else:
            target = x0
        return x_t, index.to(x0.device), target


@contextlib.contextmanager
def _lora_row_mask(module: nn.Module, mask: Tensor) -> Iterator[None]:
    """Scale every active LoRA ``B`` output row-wise by ``mask`` (N,) for the duration."""
    from peft.tuners.lora import LoraLayer

    def hook(mod: nn.Module, args: Any, out: Tensor) -> Tensor:
        if out.shape[0] != mask.shape[0]:
            raise RuntimeError(
                f"batched reference: a LoRA layer saw batch {out.shape[0]}, expected "
                f"{mask.shape[0]}; use the separate reference forward (ref_forward=separate)"
            )
        return out * mask.view(-1, *([1] * (out.ndim - 1))).to(out.dtype)

    handles = []
    for m in module.modules():
        if isinstance(m, LoraLayer):
            for name in m.active_adapters:
                if name in m.lora_B:
                    handles.append(m.lora_B[name].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
