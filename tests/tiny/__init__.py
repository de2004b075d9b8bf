"""Tiny checkpoints in each registered model's official layout, for offline tests.

Every module in this package defines ``TINY: dict[str, Callable[[Path], dict]]`` mapping a
registry name to a builder. A builder writes a tiny checkpoint (official file format and
key layout) under the given folder and returns the keyword arguments for
``mmreward.load(name, **kwargs)`` (typically ``{"weights": path}``, plus any constructor
overrides the tiny config needs). The contract test loads every registered name through
these builders.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

TINY: dict[str, Callable[[Path], dict[str, Any]]] = {}
for _mod in pkgutil.iter_modules(__path__):
    TINY.update(getattr(importlib.import_module(f"{__name__}.{_mod.name}"), "TINY", {}))
