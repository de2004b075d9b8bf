"""A tiny build of the built-in world, shared by the world and demo tests.

The world's registered rewards (``gold.world``, ``clipscore.world-tiny``,
``clip-head.world-proxy``) ship their weights in ``mmreward/world/assets``, so they need
no builder here (``TINY`` is empty). :func:`tiny_world` runs every build stage with
:data:`mmreward.world.build.TINY_BUILD` once per test session and returns the folders.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

TINY: dict[str, Any] = {}
_CACHE: dict[str, Path] = {}


def tiny_world() -> dict[str, Path]:
    """``{"assets": …, "work": …}`` of a tiny world built (once) in a temporary folder."""
    if not _CACHE:
        from mmreward.world.build import TINY_BUILD, build

        root = Path(tempfile.mkdtemp(prefix="mmreward-tiny-world-"))
        build(
            root / "assets", config=TINY_BUILD, work=root / "work", threads=1, log=lambda *_: None
        )
        _CACHE.update(assets=root / "assets", work=root / "work")
    return dict(_CACHE)
