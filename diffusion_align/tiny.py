"""Tiny diffusers pipelines built in code: SD-style, SDXL-style and SD3-style (flow).

Real diffusers classes (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``,
``StableDiffusion3Pipeline``) with random weights a few hundred kB in size, for tests,
smoke runs and CPU benchmarks. They save with ``save_pretrained`` and load back with
:meth:`diffusion_align.policy.DiffusionPolicy.from_pretrained`, exactly like a hub
checkpoint. The tokenizer is a character-level CLIP BPE tokenizer (no merges), so nothing
is read from disk or the network.

>>> pipe = tiny_pipeline("sd")
>>> type(pipe).__name__, pipe.unet.config.sample_size
('StableDiffusionPipeline', 8)
"""

from __future__ import annotations

import string
from typing import Any

import torch

KINDS = ("sd", "sdxl", "flow")
#: text width of every tiny text encoder; the SDXL UNet's cross-attention sees two of them
TEXT_WIDTH = 32
MAX_TOKENS = 16


def tiny_tokenizer(max_length: int = MAX_TOKENS):
    """A character-level ``CLIPTokenizer`` (lower-case letters, digits, punctuation)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in sorted(set(string.ascii_lowercase + string.digits + ".,!?-'")):
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _text_encoder(with_projection: bool, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=100,
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_WIDTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


def _vae(seed: int, latent_channels: int = 4, shift_factor: float | None = None):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=latent_channels,
        sample_size=16,
        scaling_factor=0.5,
        shift_factor=shift_factor,
    ).eval()


def _unet(cross_attention_dim: int, seed: int, sdxl: bool = False):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    extra: dict[str, Any] = {}
    if sdxl:
        extra = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 4,
            # pooled text (TEXT_WIDTH) + 6 micro-conditioning ids × addition_time_embed_dim
            "projection_class_embeddings_input_dim": TEXT_WIDTH + 6 * 4,
        }
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=4,
        cross_attention_dim=cross_attention_dim,
        **extra,
    )


def _ddim(prediction_type: str):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def tiny_pipeline(kind: str = "sd", prediction_type: str = "epsilon", seed: int = 0):
    """A tiny pipeline of ``kind`` ``"sd"``, ``"sdxl"`` or ``"flow"`` (SD3-style).

    Latents are 4×8×8 and images 16×16 for every kind. ``prediction_type`` (``"epsilon"``
    or ``"v_prediction"``) applies to the UNet kinds; the flow transformer predicts velocity.
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    if kind == "sd":
        return StableDiffusionPipeline(
            vae=_vae(seed),
            text_encoder=_text_encoder(False, seed + 1),
            tokenizer=tiny_tokenizer(),
            unet=_unet(TEXT_WIDTH, seed + 2),
            scheduler=_ddim(prediction_type),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if kind == "sdxl":
        return StableDiffusionXLPipeline(
            vae=_vae(seed),
            text_encoder=_text_encoder(False, seed + 1),
            text_encoder_2=_text_encoder(True, seed + 3),
            tokenizer=tiny_tokenizer(),
            tokenizer_2=tiny_tokenizer(),
            unet=_unet(2 * TEXT_WIDTH, seed + 2, sdxl=True),
            scheduler=_ddim(prediction_type),
        )
    if kind == "flow":
        torch.manual_seed(seed + 2)
        transformer = SD3Transformer2DModel(
            sample_size=8,
            patch_size=1,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=2 * TEXT_WIDTH,
            caption_projection_dim=16,
            pooled_projection_dim=2 * TEXT_WIDTH,
            pos_embed_max_size=16,
        )
        return StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=_vae(seed, shift_factor=0.1),
            text_encoder=_text_encoder(True, seed + 1),
            tokenizer=tiny_tokenizer(),
            text_encoder_2=_text_encoder(True, seed + 3),
            tokenizer_2=tiny_tokenizer(),
            text_encoder_3=None,
            tokenizer_3=None,
        )
    raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
