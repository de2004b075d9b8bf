"""Registry entry of the VideoAlign-style multi-dimensional video reward model (data only).

``mmreward.load("videoalign", weights=folder)`` loads a folder in the exported layout: a
``transformers`` VLM directory (``from_pretrained``) plus ``reward_head.safetensors`` (head
weight + z-score statistics) and ``videoalign.json`` (options); see
:func:`video.videoalign.build_videoalign`. The public VideoReward release on the Hub is the
reference training layout (``model_config.json`` + LoRA ``checkpoint-*/``): merge it into
that layout first (the loader says how when given the reference folder).
"""

from __future__ import annotations

from mmreward.registry import RewardSpec, WeightsSource

ENTRIES: list[RewardSpec] = [
    RewardSpec(
        "videoalign.videoreward",
        "video.videoalign:build_videoalign",
        weights=WeightsSource(hub_id="KwaiVGI/VideoReward"),
        # Qwen2-VL video processing (ref): 2 fps, ≤ 448·448 pixels per frame, CLIP mean/std
        preprocess={
            "fps": 2.0,
            "max_pixels": 448 * 448,
            "resize": "bicubic",
            "mean": "openai_clip",
            "std": "openai_clip",
        },
        description=(
            "VideoReward: Qwen2-VL-2B with VQ/MQ/TA reward tokens read by a Linear(hidden, 3) "
            "head; sub-scores z-scored with per-checkpoint statistics, Overall = VQ + MQ + TA."
        ),
        paper=(
            "Liu et al. 2025, Improving Video Generation with Human Feedback, "
            "https://arxiv.org/abs/2501.13918"
        ),
        license="MIT (code); see the model card for the weights",
        default=True,
    ),
]
