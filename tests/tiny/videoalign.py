"""Tiny VideoAlign checkpoint (exported layout: VLM + processor + reward_head.safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _videoalign(folder: Path) -> dict[str, Any]:
    from video.videoalign import REWARD_TOKENS, VideoAlignReward
    from vision_rm.vlm.tiny import build_tiny_qwen2vl

    vlm, processor = build_tiny_qwen2vl(seed=0, extra_special_tokens=REWARD_TOKENS)
    torch.manual_seed(0)
    rm = VideoAlignReward(vlm, processor)
    rm.set_zscore([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    return {"weights": rm.export_pretrained(folder / "videoalign")}


TINY = {"videoalign.videoreward": _videoalign}
