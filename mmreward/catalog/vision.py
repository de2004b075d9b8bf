"""Registry entries of the CLIP-family and timm-head image reward models (data only).

Factories are lazy ``"vision_rm.module:factory"`` strings. Each entry's preprocessing
config is data next to its weights; it is also passed to the factory (``kwargs["preprocess"]``,
the same dict) so the model's tensor preprocessing is exactly the entry's.

Loading without network: ``mmreward.load(name, weights=...)`` with

- a transformers CLIP directory (``config.json`` + weights) for ``clipscore.vit-b-32``,
  ``clipscore.torchmetrics-vit-l-14``, ``pickscore.v1``, ``clip-head.openai-vit-l-14``;
- an open_clip state-dict file for ``hpsv2.*`` (``HPS_v2*.pt``, model under
  ``'state_dict'``), ``clipscore.laion-vit-b-32`` and ``clip-head.laion-vit-h-14``
  (``open_clip_pytorch_model.bin``);
- the MLP ``.pth`` for ``aesthetic.laion-v2`` plus ``clip_weights=`` (the CLIP ViT-L/14
  transformers directory);
- a timm ``model.safetensors`` for ``timm-head.*`` (the backbone; the head is new).
"""

from __future__ import annotations

from mmreward.registry import RewardSpec, WeightsSource

# -- preprocessing (resize → crop/letterbox → normalise), one dict per recipe ----------

#: OpenAI CLIP / open_clip / HF CLIPImageProcessor eval transform: shortest side → 224
#: (bicubic), centre crop 224, CLIP mean/std.
CLIP_224 = {
    "resolution": 224,
    "resize": "bicubic",
    "antialias": True,
    "crop": "center",
    "mean": "openai_clip",
    "std": "openai_clip",
}
#: HPS v2 (hpsv2 ``image_transform(..., resize_longest_max=True)``): longest side → 224
#: (bicubic), zero-pad to 224×224 (black, before normalisation), CLIP mean/std.
HPS_224 = {**CLIP_224, "crop": "letterbox", "fill": 0.0}
#: timm ``resnet50.a1_in1k`` eval transform (timm uses crop_pct 0.95; see README).
IMAGENET_224 = {**CLIP_224, "mean": "imagenet", "std": "imagenet"}
#: timm ``vit_small_patch16_224.augreg_in21k_ft_in1k`` (mean/std 0.5, crop_pct 0.9).
HALF_224 = {**CLIP_224, "mean": "half", "std": "half"}

_CLIP = "Radford et al. 2021, Learning Transferable Visual Models From Natural Language Supervision (arXiv:2103.00020)"
_CLIPSCORE = "Hessel et al. 2021, CLIPScore: A Reference-free Evaluation Metric for Image Captioning (arXiv:2104.08718)"
_PICK = "Kirstain et al. 2023, Pick-a-Pic: An Open Dataset of User Preferences for Text-to-Image Generation (arXiv:2305.01569)"
_HPS = "Wu et al. 2023, Human Preference Score v2 (arXiv:2306.09341)"
_AESTHETIC = "Schuhmann et al. 2022, LAION-5B (arXiv:2210.08402); improved-aesthetic-predictor (github.com/christophschuhmann/improved-aesthetic-predictor)"
_OPENCLIP = "Cherti et al. 2023, Reproducible scaling laws for contrastive language-image learning (arXiv:2212.07143)"
_TIMM = "Wightman, PyTorch Image Models (github.com/huggingface/pytorch-image-models)"

ENTRIES: list[RewardSpec] = [
    # -- CLIPScore ---------------------------------------------------------------------
    RewardSpec(
        "clipscore.vit-b-32",
        "vision_rm.clip_scores:clipscore",
        weights=WeightsSource(hub_id="openai/clip-vit-base-patch32"),
        preprocess=CLIP_224,
        kwargs={"preprocess": CLIP_224},
        license="MIT (OpenAI CLIP)",
        paper=_CLIPSCORE,
        description='CLIPScore 2.5·max(cos, 0), caption prefixed "A photo depicts " (CLIP ViT-B/32).',
        default=True,
    ),
    RewardSpec(
        "clipscore.torchmetrics-vit-l-14",
        "vision_rm.clip_scores:clipscore",
        weights=WeightsSource(hub_id="openai/clip-vit-large-patch14"),
        preprocess=CLIP_224,
        kwargs={"preprocess": CLIP_224, "scale": 100.0, "prompt_prefix": ""},
        license="MIT (OpenAI CLIP)",
        paper=_CLIPSCORE,
        description="torchmetrics CLIPScore max(100·cos, 0), no prefix (its default CLIP ViT-L/14).",
    ),
    RewardSpec(
        "clipscore.laion-vit-b-32",
        "vision_rm.clip_scores:clipscore",
        weights=WeightsSource(
            hub_id="laion/CLIP-ViT-B-32-laion2B-s34B-b79K", filename="open_clip_pytorch_model.bin"
        ),
        preprocess=CLIP_224,
        kwargs={"preprocess": CLIP_224, "open_clip_config": "ViT-B-32"},
        license="MIT (LAION open_clip weights)",
        paper=f"{_CLIPSCORE}; {_OPENCLIP}",
        description="CLIPScore 2.5·max(cos, 0) on the open_clip ViT-B-32 LAION-2B model.",
    ),
    # -- PickScore ---------------------------------------------------------------------
    RewardSpec(
        "pickscore.v1",
        "vision_rm.clip_scores:pickscore",
        weights=WeightsSource(hub_id="yuvalkirstain/PickScore_v1"),
        preprocess=CLIP_224,  # = laion/CLIP-ViT-H-14-laion2B-s32B-b79K's CLIPProcessor
        kwargs={"preprocess": CLIP_224},
        license="see the model card (hf.co/yuvalkirstain/PickScore_v1)",
        paper=_PICK,
        description="PickScore: exp(logit_scale)·cos of a CLIP-H fine-tuned on Pick-a-Pic.",
        default=True,
    ),
    # -- HPS v2 ------------------------------------------------------------------------
    RewardSpec(
        "hpsv2.v2-0",
        "vision_rm.clip_scores:hpsv2",
        weights=WeightsSource(
            hub_id="xswu/HPSv2", filename="HPS_v2_compressed.pt", key="state_dict"
        ),
        preprocess=HPS_224,
        kwargs={"preprocess": HPS_224, "open_clip_config": "ViT-H-14"},
        license="Apache-2.0",
        paper=_HPS,
        description="HPS v2: cosine of open_clip ViT-H-14 embeddings, letterboxed input.",
    ),
    RewardSpec(
        "hpsv2.v2-1",
        "vision_rm.clip_scores:hpsv2",
        weights=WeightsSource(
            hub_id="xswu/HPSv2", filename="HPS_v2.1_compressed.pt", key="state_dict"
        ),
        preprocess=HPS_224,
        kwargs={"preprocess": HPS_224, "open_clip_config": "ViT-H-14"},
        license="Apache-2.0",
        paper=_HPS,
        description="HPS v2.1: cosine of open_clip ViT-H-14 embeddings, letterboxed input.",
        default=True,
    ),
    # -- LAION aesthetic ---------------------------------------------------------------
    RewardSpec(
        "aesthetic.laion-v2",
        "vision_rm.clip_heads:laion_aesthetic",
        weights=WeightsSource(
            url="https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth"
        ),
        preprocess=CLIP_224,
        kwargs={"preprocess": CLIP_224},
        license="Apache-2.0 (MLP); MIT (OpenAI CLIP ViT-L/14, from hf-hub:openai/clip-vit-large-patch14)",
        paper=_AESTHETIC,
        description="LAION improved aesthetic predictor: linear MLP on the normalised CLIP ViT-L/14 image embedding (needs clip_weights=).",
        default=True,
    ),
    # -- trainable heads ---------------------------------------------------------------
    RewardSpec(
        "clip-head.openai-vit-l-14",
        "vision_rm.clip_heads:clip_head",
        weights=WeightsSource(hub_id="openai/clip-vit-large-patch14"),
        preprocess=CLIP_224,
        kwargs={"preprocess": CLIP_224},
        license="MIT (OpenAI CLIP backbone); the head is yours",
        paper=_CLIP,
        description="Trainable MLP head on [image, text, image⊙text] CLIP ViT-L/14 embeddings (frozen / LoRA / full backbone).",
        default=True,
    ),
    RewardSpec(
        "clip-head.laion-vit-h-14",
        "vision_rm.clip_heads:clip_head",
        weights=WeightsSource(
            hub_id="laion/CLIP-ViT-H-14-laion2B-s32B-b79K", filename="open_clip_pytorch_model.bin"
        ),
        preprocess=CLIP_224,
        kwargs={"preprocess": CLIP_224, "open_clip_config": "ViT-H-14"},
        license="MIT (LAION open_clip weights); the head is yours",
        paper=_OPENCLIP,
        description="Trainable MLP head on open_clip ViT-H-14 (LAION-2B) embeddings (frozen / LoRA / full).",
    ),
    RewardSpec(
        "timm-head.resnet50-a1-in1k",
        "vision_rm.timm_heads:timm_head",
        weights=WeightsSource(hub_id="timm/resnet50.a1_in1k", filename="model.safetensors"),
        preprocess=IMAGENET_224,
        kwargs={"preprocess": IMAGENET_224, "backbone": "resnet50"},
        license="Apache-2.0 (timm weights); the head is yours",
        paper=_TIMM,
        description="Trainable MLP head on a timm ResNet-50 (ImageNet-1k A1 recipe); full / LoRA / frozen.",
        default=True,
    ),
    RewardSpec(
        "timm-head.vit-small-augreg-in21k-ft-in1k",
        "vision_rm.timm_heads:timm_head",
        weights=WeightsSource(
            hub_id="timm/vit_small_patch16_224.augreg_in21k_ft_in1k", filename="model.safetensors"
        ),
        preprocess=HALF_224,
        kwargs={"preprocess": HALF_224, "backbone": "vit_small_patch16_224"},
        license="Apache-2.0 (timm weights); the head is yours",
        paper=_TIMM,
        description="Trainable MLP head on a timm ViT-S/16 (AugReg IN-21k → IN-1k); full / LoRA / frozen.",
    ),
]
