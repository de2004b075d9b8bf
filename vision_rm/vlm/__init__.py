"""Vision-language reward models: outcome heads, VisualPRM step scorers, Best-of-N.

- :mod:`vision_rm.vlm.orm` — a VLM + scalar head at the last token (Skywork-VL Reward /
  IXC-2.5-Reward style), ``score`` / ``compare`` / ``rank``, Bradley-Terry training, LoRA;
- :mod:`vision_rm.vlm.prm` — VisualPRM: P('+') per step from a multi-turn chat, all
  steps in one forward; step-level BCE training;
- :mod:`vision_rm.vlm.mc_label` — Monte-Carlo step labels from policy rollouts;
- :mod:`vision_rm.vlm.evaluate` — step F1 and calibration on VisualProcessBench JSONL;
- :mod:`vision_rm.vlm.bon` / :mod:`vision_rm.vlm.cli` — Best-of-N (``mmreward bon``);
- :mod:`vision_rm.vlm.reasoning` — the world's two-digit reasoning task and the study;
- :mod:`vision_rm.vlm.tiny` — a tiny Qwen2-VL (model, tokenizer, processor) built in code.

Registry names (``mmreward/catalog/vlm.py``): ``vlm-orm.*``, ``visualprm.*``.
Importing this package is cheap: submodules load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "VLMOutcomeReward": "vision_rm.vlm.orm",
    "build_vlm_orm": "vision_rm.vlm.orm",
    "VisualPRM": "vision_rm.vlm.prm",
    "build_visualprm": "vision_rm.vlm.prm",
    "split_steps": "vision_rm.vlm.prm",
    "VLMGenerator": "vision_rm.vlm.bon",
    "run_best_of_n": "vision_rm.vlm.bon",
    "evaluate_process_bench": "vision_rm.vlm.evaluate",
    "label_solutions": "vision_rm.vlm.mc_label",
    "VLMRewardTrainer": "vision_rm.vlm.train",
    "build_tiny_qwen2vl": "vision_rm.vlm.tiny",
    "save_tiny": "vision_rm.vlm.tiny",
    "load_tiny": "vision_rm.vlm.tiny",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vision_rm.vlm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
