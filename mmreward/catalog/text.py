"""Registry entries of the text reward models (data only: lazy factory strings)."""

from __future__ import annotations

from mmreward.registry import RewardSpec, WeightsSource  # noqa: F401

ENTRIES: list[RewardSpec] = []
