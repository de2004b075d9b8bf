"""The algorithm contract shared by every alignment loop.

An :class:`Algorithm` holds its hyper-parameters (a dataclass ``Config``), the sampling
settings and the reward model(s). :meth:`Algorithm.losses` turns one batch into one or
more ``(loss, stats)`` pairs; the trainer calls ``backward`` on each as it is yielded, so
an algorithm that needs many model calls (D3PO over all denoising steps) can free each
chunk's graph before building the next. The yielded losses add up to the batch's loss.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from diffusion_align.config import SampleConfig, build
from mmreward.interface import RewardInput, RewardModel

Stats = dict[str, float]


class Algorithm:
    """Base class: set the class attributes, implement :meth:`losses`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    #: ``prompts`` (on-policy sampling), ``preferences`` (image pairs), ``pairs`` (D3PO human)
    data_kind: ClassVar[str] = "prompts"
    needs_reward: ClassVar[bool] = True
    needs_differentiable_reward: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False

    def __init__(
        self,
        config: Any = None,
        sample: SampleConfig | None = None,
        rewards: RewardModel | Sequence[RewardModel] = (),
    ) -> None:
        self.config = config if config is not None else self.Config()
        self.sample = sample if sample is not None else SampleConfig()
        self.rewards = [rewards] if isinstance(rewards, RewardModel) else list(rewards)
        self.check()

    @classmethod
    def from_dict(
        cls,
        options: dict[str, Any],
        sample: SampleConfig | None = None,
        rewards: RewardModel | Sequence[RewardModel] = (),
    ) -> Algorithm:
        """Build from a config's ``algorithm`` section (its ``name`` key is ignored)."""
        config = build(cls.Config, {k: v for k, v in options.items() if k != "name"}, "algorithm")
        return cls(config, sample, rewards)

    def check(self) -> None:
        """Reject impossible settings early, with a message that says what to change."""
        if self.needs_reward and not self.rewards:
            raise ValueError(f"{self.name}: needs a reward model (set `reward:` in the config)")
        if self.needs_differentiable_reward:
            for r in self.rewards:
                if not r.differentiable:
                    raise ValueError(
                        f"{self.name}: the reward {r.reward_name!r} is not differentiable "
                        "w.r.t. pixels; use d3po (or the RL algorithms) with it"
                    )

    def check_policy(self, policy: Any) -> None:
        if self.needs_reference and policy.reference_mode == "none":
            raise ValueError(
                f"{self.name}: needs a reference model; use LoRA (model.lora_rank > 0) "
                "or model.reference: copy"
            )

    def losses(
        self, policy: Any, batch: Any, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Stats]]:
        raise NotImplementedError  # pragma: no cover

    # -- helpers -------------------------------------------------------------------------
    def schedule(self, policy: Any):
        s = self.sample
        return policy.schedule(s.num_steps, s.eta, s.noise_level)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Scores of every reward, ``(B, K)`` fp32 (differentiable where the rewards are)."""
        return score_images(self.rewards, images, prompts)


def score_images(rewards: Sequence[RewardModel], images: Tensor, prompts: Sequence[str]) -> Tensor:
    """``(B, K)`` fp32 scores of ``images`` in [0,1] under each reward model."""
    cols = []
    for r in rewards:
        batch = RewardInput(prompts=list(prompts), images=images.to(r.device, r.dtype))
        cols.append(r(batch).scores.float().to(images.device))
    return torch.stack(cols, dim=1)
