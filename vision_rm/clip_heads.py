"""Reward heads on CLIP embeddings: the LAION aesthetic predictor and trainable CLIP heads.

- LAION improved aesthetic predictor (Schuhmann, https://github.com/christophschuhmann/
  improved-aesthetic-predictor; trained on SAC + LAION-Logos + AVA): CLIP ViT-L/14 image
  embedding, L2-normalised, then a *linear* MLP 768→1024→128→64→16→1 with dropout and no
  activations (keys ``layers.{0,2,4,6,7}``). Scores are roughly on AVA's 1–10 scale.
- ``clip-head``: a frozen, LoRA-tuned (peft) or fully tuned CLIP backbone (transformers or
  open_clip) with an MLP head on the normalised image embedding, or on
  ``[image, text, image ⊙ text]`` when the prompt should matter (ImageReward/PickScore-style
  preference heads, trained with :class:`mmreward.train.RewardModelTrainer`).

>>> import torch
>>> cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
...        "patch_size": 16, "head_width": 16}, "text_cfg": {"context_length": 77,
...        "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
>>> rm = clip_head(open_clip_config=cfg, features="image+text", hidden=[8])
>>> rm.score(torch.rand(2, 3, 32, 32), prompts=["a cat", "a dog"]).scores.shape
torch.Size([2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmreward.checkpoint import load_state_dict_strict, read_state_dict
from mmreward.interface import RewardInput, RewardModel, RewardOutput
from vision_rm.clip_backbone import ClipBackbone, load_clip_backbone, resolve_hub_dir
from vision_rm.clip_scores import checked_preprocess, clip_preprocess_config
from vision_rm.heads import MLPHead, apply_tuning

FEATURES = ("image", "image+text")

# -- building blocks -------------------------------------------------------------------


class LaionAestheticMLP(nn.Module):
    """The LAION aesthetic MLP: five linear layers, dropout between the first four, no activations."""

    def __init__(self, in_dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).squeeze(-1)


# -- model -----------------------------------------------------------------------------


class ClipHeadReward(RewardModel):
    """``score = head(features)``, features from a CLIP backbone's L2-normalised embeddings.

    Args:
        backbone: the CLIP model.
        head: ``(B, F) → (B,)``; ``F`` is ``D`` for ``features="image"`` and ``3·D`` for
            ``"image+text"`` (``[img, txt, img ⊙ txt]``).
        preprocess: the preprocessing config (the registry's).
        features: ``"image"`` (the prompt is not used) or ``"image+text"``.
        tuning: ``"frozen"`` (default), ``"lora"`` or ``"full"`` for the backbone; a frozen
            or LoRA-tuned backbone stays in eval mode while the head trains.
    """

    differentiable = True

    def __init__(
        self,
        backbone: ClipBackbone,
        head: nn.Module,
        preprocess: Mapping[str, Any],
        features: str = "image",
        tuning: str = "frozen",
    ) -> None:
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"features: expected one of {FEATURES}, got {features!r}")
        self.backbone = backbone
        self.head = head
        self.preprocess = checked_preprocess(preprocess, backbone)
        self.native_resolution = tuple(self.preprocess.size)
        self.features = features
        self.tuning = tuning
        self.inputs = ("prompts", "images") if features == "image+text" else ("images",)

    def train(self, mode: bool = True) -> ClipHeadReward:
        super().train(mode)
        if self.tuning != "full":
            self.backbone.eval()  # frozen weights: no dropout/BN-statistics updates
        return self

    def embed(self, pixels: Tensor, prompts: Sequence[str] | None = None) -> Tensor:
        """The head's input features ``(B, F)`` (float32) from preprocessed pixels."""
        img = F.normalize(self.backbone.encode_image(pixels).float(), dim=-1)
        if self.features == "image":
            return img
        if prompts is None:
            raise ValueError("prompts: this head uses image+text features; pass the prompts")
        txt = F.normalize(self.backbone.encode_text(prompts).float(), dim=-1)
        return torch.cat([img, txt, img * txt], dim=-1)

    def compute(self, batch: RewardInput) -> RewardOutput:
        x = self.preprocess(batch.images.float())  # resize/crop/normalise in fp32
        return self.score_preprocessed(x, batch.prompts)

    def score_preprocessed(
        self, pixels: Tensor, prompts: Sequence[str] | None = None
    ) -> RewardOutput:
        """Scores of pixels already resized and normalised (no input validation)."""
        feats = self.embed(pixels, prompts)
        head_dtype = next(self.head.parameters()).dtype
        return RewardOutput(scores=self.head(feats.to(head_dtype)).float())


# -- checkpoint converter (official keys → ours) ----------------------------------------


def convert_laion_aesthetic(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``sac+logos+ava1-l14-linearMSE.pth`` → :class:`LaionAestheticMLP` keys (identical).

    The file is the ``state_dict()`` of the training script's ``MLP`` (``layers.0/2/4/6/7``);
    a Lightning-style ``model.`` prefix is stripped if every key has it.
    """
    sd = dict(state_dict)
    if sd and all(k.startswith("model.") for k in sd):
        sd = {k[len("model.") :]: v for k, v in sd.items()}
    return sd


# -- factories ---------------------------------------------------------------------------

AESTHETIC_CLIP_HUB_ID = "openai/clip-vit-large-patch14"  # the CLIP the LAION MLP was fit on


def laion_aesthetic(
    weights: str | Path | None = None,
    *,
    clip_weights: str | Path | None = None,
    hf_config: Mapping[str, Any] | None = None,
    open_clip_config: str | Mapping[str, Any] | None = None,
    tokenizer: str | None = None,
    attn_implementation: str = "sdpa",
    preprocess: Mapping[str, Any] | None = None,
) -> ClipHeadReward:
    """The LAION aesthetic predictor (``weights``: the MLP ``.pth``; ``clip_weights``: CLIP ViT-L/14).

    ``clip_weights`` is a transformers CLIP directory (``openai/clip-vit-large-patch14``) or,
    with ``open_clip_config=``, an open_clip state-dict file. Without it, the Hugging Face
    cache is tried and the error says what to pass. The MLP's input size is the backbone's
    embedding size (768 for ViT-L/14).
    """
    if clip_weights is None and hf_config is None and open_clip_config is None:
        clip_weights = resolve_hub_dir(
            AESTHETIC_CLIP_HUB_ID, "the CLIP ViT-L/14 weights of the aesthetic head", "clip_weights"
        )
    backbone, arch = load_clip_backbone(
        clip_weights,
        hf_config=hf_config,
        open_clip_config=open_clip_config,
        tokenizer=tokenizer,
        attn_implementation=attn_implementation,
    )
    head = LaionAestheticMLP(backbone.embed_dim)
    if weights is not None:
        sd = read_state_dict(weights)
        load_state_dict_strict(head, sd, convert=convert_laion_aesthetic, source=str(weights))
    if preprocess is None:
        preprocess = clip_preprocess_config(backbone.image_size)
    model = ClipHeadReward(backbone, head, dict(preprocess), features="image", tuning="frozen")
    model.requires_grad_(False).eval()  # a fixed reward (unfreeze the head to fine-tune it)
    model.init_kwargs = {**arch, "preprocess": model.preprocess.config}
    return model


def clip_head(
    weights: str | Path | None = None,
    *,
    hf_config: Mapping[str, Any] | None = None,
    open_clip_config: str | Mapping[str, Any] | None = None,
    checkpoint_key: str | None = None,
    tokenizer: str | None = None,
    attn_implementation: str = "sdpa",
    preprocess: Mapping[str, Any] | None = None,
    features: str = "image+text",
    hidden: Sequence[int] = (512,),
    dropout: float = 0.1,
    tuning: str = "frozen",
    lora_targets: Sequence[str] | None = None,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
) -> ClipHeadReward:
    """A trainable reward head on a CLIP backbone (``weights``: the backbone's checkpoint).

    The head starts from random weights (train it with ``mmreward.train``); the backbone
    is frozen, LoRA-adapted (``tuning="lora"``, default targets: the image tower's
    ``q_proj``/``v_proj`` for transformers, ``c_fc``/``c_proj`` for open_clip) or fully
    tuned. ``save_pretrained`` stores backbone + head (+ adapters); ``mmreward.load(dir)``
    rebuilds it with no download.
    """
    backbone, arch = load_clip_backbone(
        weights,
        hf_config=hf_config,
        open_clip_config=open_clip_config,
        checkpoint_key=checkpoint_key,
        tokenizer=tokenizer,
        attn_implementation=attn_implementation,
    )
    if lora_targets is None and tuning == "lora":
        lora_targets = (
            ["q_proj", "v_proj"] if backbone.kind == "transformers" else ["c_fc", "c_proj"]
        )
    apply_tuning([backbone], "frozen")
    trainable = backbone.vision_modules()
    if features == "image+text" and tuning == "full":
        trainable += backbone.text_modules()
    apply_tuning(
        trainable,
        tuning,
        lora_targets=lora_targets,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
    )
    d = backbone.embed_dim
    head = MLPHead(d * (3 if features == "image+text" else 1), hidden, dropout)
    if preprocess is None:
        preprocess = clip_preprocess_config(backbone.image_size)
    model = ClipHeadReward(
        backbone, head, dict(preprocess), features=features, tuning=tuning
    ).eval()
    model.init_kwargs = {
        **arch,
        "preprocess": model.preprocess.config,
        "features": features,
        "hidden": list(hidden),
        "dropout": dropout,
        "tuning": tuning,
        "lora_targets": None if lora_targets is None else list(lora_targets),
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
    }
    return model


# -- registrations: mmreward/catalog/vision.py (data only, lazy "vision_rm.clip_heads:…") --
