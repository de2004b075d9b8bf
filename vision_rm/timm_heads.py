"""Trainable image reward heads on any timm backbone (``timm-head``).

A timm model (Wightman, https://github.com/huggingface/pytorch-image-models) without its
classifier (``num_classes=0``) gives pooled features; an MLP head maps them to a scalar
reward. The backbone is built from its timm name plus ``model_kwargs`` with
``pretrained=False`` (architecture as data: tiny test variants are the same name with
smaller kwargs), and its ImageNet weights, when given, load strictly from the timm
checkpoint file (the classifier keys are dropped by name). The backbone trains fully,
with LoRA adapters (peft), or stays frozen. Train with
:class:`mmreward.train.RewardModelTrainer` (pairwise or listwise objectives).

>>> import torch
>>> rm = TimmHeadReward("resnet18", model_kwargs={"channels": [8, 8, 8, 8]}, hidden=[8],
...                     preprocess={"resolution": 32, "crop": "center", "mean": "imagenet",
...                                 "std": "imagenet"})
>>> rm.score(torch.rand(2, 3, 40, 48)).scores.shape
torch.Size([2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from mmreward.checkpoint import load_state_dict_strict, read_state_dict
from mmreward.interface import RewardInput, RewardModel, RewardOutput
from mmreward.preprocess import Preprocess
from vision_rm.heads import MLPHead, apply_tuning

# -- model -----------------------------------------------------------------------------


class TimmHeadReward(RewardModel):
    """``score = head(pool(timm_backbone(preprocess(images))))``.

    Args:
        backbone: a ``timm.create_model`` name (``"resnet50"``, ``"vit_small_patch16_224"``).
        model_kwargs: extra ``timm.create_model`` arguments (e.g. a smaller ``depth``).
        preprocess: the preprocessing config (default: 224 px, bicubic, centre crop, the
            backbone's ``pretrained_cfg`` mean/std).
        hidden, dropout: the MLP head.
        tuning: ``"full"`` (default), ``"lora"`` (needs ``lora_targets``) or ``"frozen"``.
    """

    inputs = ("images",)
    differentiable = True

    def __init__(
        self,
        backbone: str = "resnet50",
        model_kwargs: Mapping[str, Any] | None = None,
        preprocess: Mapping[str, Any] | None = None,
        hidden: Sequence[int] = (256,),
        dropout: float = 0.1,
        tuning: str = "full",
        lora_targets: Sequence[str] | None = None,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        import timm

        kwargs = dict(model_kwargs or {})
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, **kwargs)
        if preprocess is None:
            cfg = self.backbone.pretrained_cfg
            preprocess = {
                "resolution": list(cfg.get("input_size", (3, 224, 224))[1:]),
                "resize": cfg.get("interpolation", "bicubic"),
                "crop": "center",
                "mean": list(cfg.get("mean", (0.485, 0.456, 0.406))),
                "std": list(cfg.get("std", (0.229, 0.224, 0.225))),
            }
        self.preprocess = Preprocess(preprocess)
        self.native_resolution = tuple(self.preprocess.size)
        self.tuning = tuning
        apply_tuning(
            [self.backbone],
            tuning,
            lora_targets=lora_targets,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
        )
        self.head = MLPHead(self.backbone.num_features, hidden, dropout)
        self.init_kwargs = {
            "backbone": backbone,
            "model_kwargs": kwargs,
            "preprocess": self.preprocess.config,
            "hidden": list(hidden),
            "dropout": dropout,
            "tuning": tuning,
            "lora_targets": None if lora_targets is None else list(lora_targets),
            "lora_rank": lora_rank,
            "lora_alpha": lora_alpha,
            "lora_dropout": lora_dropout,
        }

    def train(self, mode: bool = True) -> TimmHeadReward:
        super().train(mode)
        if self.tuning != "full":
            self.backbone.eval()  # frozen weights: BatchNorm statistics stay fixed
        return self

    def compute(self, batch: RewardInput) -> RewardOutput:
        x = self.preprocess(batch.images.float())
        dtype = next(self.backbone.parameters()).dtype
        feats = self.backbone(x.to(dtype))  # (B, num_features), pooled
        head_dtype = next(self.head.parameters()).dtype
        return RewardOutput(scores=self.head(feats.to(head_dtype)).float())


# -- checkpoint converter (official keys → ours) ----------------------------------------


def convert_timm_backbone(
    state_dict: Mapping[str, Tensor], classifier: str | Sequence[str] | None
) -> dict[str, Tensor]:
    """A timm checkpoint → the head-less backbone's keys: drop the classifier (``fc.*``, ``head.*``)."""
    names = [classifier] if isinstance(classifier, str) else list(classifier or [])
    prefixes = tuple(f"{n}." for n in names)
    return {k: v for k, v in state_dict.items() if not (prefixes and k.startswith(prefixes))}


def timm_head(weights: str | Path | None = None, **kwargs: Any) -> TimmHeadReward:
    """A :class:`TimmHeadReward`; ``weights`` is the backbone's timm checkpoint (``model.safetensors``).

    The backbone loads strictly before any LoRA adapter is injected; the head is random.
    """
    tuning = kwargs.get("tuning", "full")
    model = TimmHeadReward(**{**kwargs, "tuning": "full"})  # adapters after the weights load
    if weights is not None:
        classifier = model.backbone.pretrained_cfg.get("classifier")
        load_state_dict_strict(
            model.backbone,
            read_state_dict(weights),
            convert=lambda sd: convert_timm_backbone(sd, classifier),
            source=str(weights),
        )
    if tuning != "full":
        apply_tuning(
            [model.backbone],
            tuning,
            lora_targets=kwargs.get("lora_targets"),
            lora_rank=kwargs.get("lora_rank", 8),
            lora_alpha=kwargs.get("lora_alpha", 16.0),
            lora_dropout=kwargs.get("lora_dropout", 0.0),
        )
        model.tuning = tuning
        model.init_kwargs["tuning"] = tuning
    return model.eval()


# -- registrations: mmreward/catalog/vision.py (data only, lazy "vision_rm.timm_heads:…") --
