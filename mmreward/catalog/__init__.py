"""The registry's built-in entries, one module per area (data only, no model imports).

Each module defines ``ENTRIES: list[RewardSpec]`` with lazy ``"package.module:factory"``
strings; add a module here and list it below to register a new family.
"""

from __future__ import annotations

from mmreward.catalog import (
    core,
    diffusion_reward,
    ganrm,
    imagereward,
    text,
    video,
    videoalign,
    vision,
    vlm,
    world,
)

ENTRIES = [
    *core.ENTRIES,
    *vision.ENTRIES,
    *imagereward.ENTRIES,
    *text.ENTRIES,
    *world.ENTRIES,
    *video.ENTRIES,
    *ganrm.ENTRIES,
    *diffusion_reward.ENTRIES,
    *vlm.ENTRIES,
    *videoalign.ENTRIES,
]
