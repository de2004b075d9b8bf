"""WARM: train M reward models from one initialisation and average their weights.

Ramé et al. 2024, "WARM: On the Benefits of Weight Averaged Reward Models": fine-tune M
reward models from a **shared** initialisation with different seeds / data orders /
hyper-parameters, then average the weights, θ_WARM = (1/M) Σ_i θ_i. The averaged model is
more robust under distribution shift and delays reward hacking. Training is
:class:`mmreward.train.RewardModelTrainer`; averaging is :func:`mmreward.compose.average_weights`.

Text-specific checks run first (:func:`check_same_backbone`): the members must share the
reward-model class, the backbone architecture and config shapes, and the tokenizer,
otherwise the error names the model and the field. LoRA members are merged before
averaging (averaging A and B separately is not the average of the updates B·A).

>>> # warm = train_warm(init_rm, train_examples, TrainConfig(output_dir="runs/warm"), m=3)
>>> # warm.model.score(prompts=[...], responses=[...])
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmreward.compose import average_weights
from mmreward.data import PreferenceExample
from mmreward.interface import RewardModel
from mmreward.train import RewardModelTrainer, TrainConfig

_CONFIG_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "num_labels",
)


def check_same_backbone(models: Sequence[RewardModel]) -> None:
    """``ValueError`` naming every member whose class, backbone config or tokenizer differs."""
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"WARM: expected at least two reward models, got {len(models)}")
    problems = []
    ref = models[0]
    for i, m in enumerate(models[1:], start=1):
        if type(m) is not type(ref):
            problems.append(f"model {i}: class {type(m).__name__} vs {type(ref).__name__}")
            continue
        for attr in ("model", "policy"):
            a, b = getattr(ref, attr, None), getattr(m, attr, None)
            if a is None or b is None or not hasattr(a, "config"):
                continue
            for name in _CONFIG_FIELDS:
                va, vb = getattr(a.config, name, None), getattr(b.config, name, None)
                if va != vb:
                    problems.append(f"model {i}: {attr}.config.{name} = {vb!r} vs {va!r}")
        ta, tb = getattr(ref, "tokenizer", None), getattr(m, "tokenizer", None)
        if ta is not None and tb is not None and ta.get_vocab() != tb.get_vocab():
            problems.append(f"model {i}: tokenizer vocabulary differs from model 0's")
    if problems:
        raise ValueError(
            "WARM needs reward models fine-tuned from one initialisation (same architecture "
            "and tokenizer):\n  " + "\n  ".join(problems)
        )


def average_reward_models(
    models: Sequence[RewardModel], weights: Sequence[float] | None = None
) -> RewardModel:
    """θ = Σ_i λ_i θ_i over ``models`` (LoRA members merged first); see module docstring."""
    models = list(models)
    check_same_backbone(models)
    merged = [copy.deepcopy(m).merge_lora() if getattr(m, "lora", None) else m for m in models]
    return average_weights(merged, weights)


@dataclass
class WarmResult:
    """The averaged model, the members, and each member's final metrics."""

    model: RewardModel
    members: list[RewardModel]
    metrics: list[dict[str, Any]] = field(default_factory=list)


def train_warm(
    init: RewardModel,
    train_examples: list[PreferenceExample],
    config: TrainConfig,
    m: int = 3,
    seeds: Sequence[int] | None = None,
    eval_examples: list[PreferenceExample] | None = None,
) -> WarmResult:
    """Train ``m`` copies of ``init`` (one shared initialisation) and average them.

    Member i uses ``seeds[i]`` (default ``config.seed + i``) for the trainer's seed and
    data order, and writes to ``<output_dir>/member_<i>``; the averaged model is saved to
    ``<output_dir>/warm``.
    """
    if m < 2:
        raise ValueError(f"m: WARM averages at least 2 models, got {m}")
    seeds = list(seeds) if seeds is not None else [config.seed + i for i in range(m)]
    if len(seeds) != m:
        raise ValueError(f"seeds: expected {m} seeds (one per member), got {len(seeds)}")
    out = Path(config.output_dir)
    members, metrics = [], []
    for i, seed in enumerate(seeds):
        member = copy.deepcopy(init)
        cfg = dataclasses.replace(config, seed=seed, output_dir=str(out / f"member_{i}"))
        metrics.append(
            RewardModelTrainer(member, cfg, train_examples, eval_examples).train(resume=False)
        )
        members.append(member.eval())
    warm = average_reward_models(members).eval()
    warm.save_pretrained(out / "warm")
    return WarmResult(model=warm, members=members, metrics=metrics)
