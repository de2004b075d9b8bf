"""The algorithm contract shared by every alignment loop.

An :class:`Algorithm` holds its hyper-parameters (a dataclass ``Config``), the sampling
settings and the reward model(s). :meth:`Algorithm.losses` turns one batch into one or
more ``(loss, stats)`` pairs; the trainer calls ``backward`` on each as it is yielded, so
an algorithm that needs many model calls (D3PO over all denoising steps) can free each
chunk's graph before building the next. The yielded losses add up to the batch's loss.

On-policy RL and RAFT make several optimizer updates per batch of samples (PPO's inner
epochs and minibatches, RAFT's fine-tuning on the kept set): they set ``inner_updates``
and yield :data:`UPDATE` between minibatches; the trainer then applies the gradients
accumulated so far (clipping, NaN guard, AdamW, EMA) before the next loss arrives. One
trainer step is then one iteration (sample → score → updates), so checkpoints fall
between iterations and resuming stays exact. Algorithms that carry state from one
iteration to the next (DDPO's per-prompt reward statistics) expose it through
:meth:`Algorithm.state_dict`, which the trainer stores in every checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from diffusion_align.config import SampleConfig, build
from mmreward.interface import RewardInput, RewardModel

Stats = dict[str, float]


class _Update:
    """The marker an algorithm yields to ask for an optimizer update (see the module doc)."""

    def __repr__(self) -> str:
        return "UPDATE"


#: yielded by :meth:`Algorithm.losses` between minibatches of an iteration
UPDATE = _Update()


class Algorithm:
    """Base class: set the class attributes, implement :meth:`losses`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    #: ``prompts`` (on-policy sampling), ``preferences`` (image pairs), ``pairs`` (D3PO human)
    data_kind: ClassVar[str] = "prompts"
    needs_reward: ClassVar[bool] = True
    needs_differentiable_reward: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    #: yields :data:`UPDATE` markers (several optimizer updates per trainer step)
    inner_updates: ClassVar[bool] = False

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
    ) -> Iterator[tuple[Tensor, Stats] | _Update]:
        raise NotImplementedError  # pragma: no cover

    # -- run context and state (optional) --------------------------------------------------
    def begin_step(self, step: int, run_dir: Any = None, rank: int = 0) -> None:
        """Called by the trainer before each :meth:`losses` call: the trainer step about to
        run, the run's output folder and this process's rank (for per-iteration files)."""
        self.step_index, self.run_dir, self.rank = step, run_dir, rank

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state carried across iterations (stored in checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name}: unexpected algorithm state {sorted(state)}")

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
