"""mmreward: one reward interface for images, videos and text; alignment loops in front of it.

>>> import torch, mmreward
>>> rm = mmreward.load("colorfulness.hasler")
>>> rm.score(torch.rand(4, 3, 32, 32)).scores.shape
torch.Size([4])
"""

from mmreward.errors import (
    CheckpointError,
    InputError,
    ItemReadError,
    RemoteCodeError,
    WeightsNotFoundError,
)
from mmreward.interface import RewardInput, RewardModel, RewardOutput
from mmreward.registry import (
    RewardSpec,
    WeightsSource,
    get_spec,
    list_rewards,
    load,
    register,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "InputError",
    "ItemReadError",
    "RemoteCodeError",
    "RewardInput",
    "RewardModel",
    "RewardOutput",
    "RewardSpec",
    "WeightsNotFoundError",
    "WeightsSource",
    "get_spec",
    "list_rewards",
    "load",
    "register",
]
