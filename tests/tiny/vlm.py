"""Tiny Hugging Face VLM directories for the vision-language reward models."""

from __future__ import annotations

from vision_rm.vlm.tiny import write_tiny_checkpoint


def _hf(value_head: bool = False):
    return lambda folder: {"weights": write_tiny_checkpoint(folder / "hf", value_head=value_head)}


TINY = {
    "vlm-orm.local": _hf(),
    "vlm-orm.skywork-vl-reward-7b": _hf(True),
    "visualprm.local": _hf(),
}
