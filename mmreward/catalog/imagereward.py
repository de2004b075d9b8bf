"""Registry entries of the imagereward reward models (data only: lazy factory strings)."""

from __future__ import annotations

from mmreward.registry import RewardSpec, WeightsSource

ENTRIES: list[RewardSpec] = [
    RewardSpec(
        "imagereward.v1.0",
        "vision_rm.imagereward:imagereward_v1",
        # the official file is a plain state dict (keys blip.*, mlp.layers.*); the hub repo
        # also holds med_config.json (the BERT sizes, equal to our defaults). The tokenizer
        # (bert-base-uncased + [DEC]/[ENC]) is not in the repo: see the factory.
        weights=WeightsSource(hub_id="THUDM/ImageReward", filename="ImageReward.pt"),
        # official: Resize(224, bicubic) + CenterCrop(224) + ToTensor + Normalize(CLIP)
        preprocess={
            "resolution": 224,
            "resize": "bicubic",
            "antialias": True,
            "crop": "center",
            "mean": "openai_clip",
            "std": "openai_clip",
        },
        description=(
            "ImageReward v1.0: BLIP ViT-L/16 + BERT cross-attention text encoder, [CLS] → MLP; "
            "prompt-conditioned human-preference score for text-to-image (standardised)."
        ),
        paper=(
            "Xu et al. 2023, ImageReward: Learning and Evaluating Human Preferences for "
            "Text-to-Image Generation, https://arxiv.org/abs/2304.05977"
        ),
        license="Apache-2.0",
        default=True,
    ),
]
