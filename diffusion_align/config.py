"""Run configuration: typed sections read from YAML, with errors that name the bad key.

A run config has the sections ``model``, ``reward``, ``algorithm``, ``sample``, ``data``,
``train`` and ``eval`` (see ``configs/align/*.yaml``). Every section is a dataclass; an
unknown key is an error listing the valid ones, and a value of the wrong type or outside
its choices is an error naming the key, e.g.
``train.mixed_precision: expected one of ['no', 'fp16', 'bf16'], got 'fp8'``.

>>> cfg = AlignConfig.from_dict({"model": {"pretrained": "tiny:sd"},
...                              "algorithm": {"name": "refl", "stop_range": [2, 3]}})
>>> cfg.train.lr, cfg.algorithm["name"]
(1e-05, 'refl')
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin


class ConfigError(ValueError):
    """A config key is unknown, or its value has the wrong type or is out of range."""


@dataclass
class ModelConfig:
    pretrained: str = "world"  # a diffusers directory, a hub id, tiny:sd|sdxl|flow, or world
    lora_rank: int = 0  # 0: full fine-tune; > 0: LoRA adapters of this rank
    lora_alpha: float | None = None  # default: the rank (scale 1)
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    reference: Literal["auto", "adapters", "copy", "none"] = "auto"
    gradient_checkpointing: bool = False  # diffusers block checkpointing in the denoiser/VAE
    negative_prompt: str = ""
    lora_weights: str | None = None  # start from a saved LoRA (a run's final/ directory)


@dataclass
class SampleConfig:
    num_steps: int = 20  # sampling steps (DDIM or flow)
    guidance_scale: float = 1.0  # classifier-free guidance (1: off)
    eta: float = 0.0  # DDIM η (D3PO needs > 0)
    noise_level: float = 0.7  # flow SDE noise level a (0: deterministic Euler)
    height: int | None = None  # default: the model's native size
    width: int | None = None
    checkpoint_steps: bool = True  # torch.utils.checkpoint on every grad step of a rollout


@dataclass
class DataConfig:
    prompts: str | list[str] | None = None  # file (.txt/.jsonl/.json), world:train|test, or a list
    preferences: str | None = None  # Diffusion-DPO pairs JSONL (mmreward pairwise format)
    pretrain: str | None = None  # ReFL regulariser: JSONL of {image, prompt}, or world:train
    pairs: str | None = None  # D3PO human feedback: directory written by `--write-pairs`
    labels: str | None = None  # D3PO human feedback: labels JSON


@dataclass
class TrainConfig:
    output_dir: str = "runs/align"
    max_steps: int = 100  # optimizer steps
    batch_size: int = 4  # prompts (or pairs) per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-5
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    warmup_steps: int = 0  # linear warm-up, then constant
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    ema_decay: float | None = None  # EMA of the trainable weights (e.g. 0.999); None: off
    seed: int = 0
    log_every: int = 1
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    sample_every: int = 0  # gallery every N steps (0: at start and end only)
    gallery_prompts: list[str] | int = 8  # prompts, or the number taken from the data prompts
    max_bad_steps: int = 5  # consecutive non-finite steps before the run aborts
    trackers: list[str] = field(default_factory=list)  # accelerate trackers, e.g. tensorboard
    cpu: bool = False
    progress: bool = True


@dataclass
class EvalConfig:
    prompts: str | list[str] | None = None  # held-out prompts (world:test); None: no evaluation
    samples: int = 256  # images per evaluation (cycled over the prompts)
    batch_size: int = 32
    rewards: dict[str, str] = field(default_factory=dict)  # name → reward (e.g. gold: gold.world)
    seed: int = 1234
    every: int = 0  # also evaluate every N training steps (0: start and end only)


SECTIONS = ("model", "reward", "reward_kwargs", "algorithm", "sample", "data", "train", "eval")


@dataclass
class AlignConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    reward: str | list[str] | None = None  # registry name(s) or model directories
    reward_kwargs: dict[str, Any] = field(default_factory=dict)
    algorithm: dict[str, Any] = field(default_factory=lambda: {"name": "refl"})
    sample: SampleConfig = field(default_factory=SampleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlignConfig:
        """Build and validate; the algorithm section is checked by the algorithm's own config."""
        if not isinstance(d, dict):
            raise ConfigError(f"config: expected a mapping of sections, got {type(d).__name__}")
        unknown = sorted(set(d) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown section(s) {unknown}; valid: {list(SECTIONS)}")
        cfg = cls(
            model=build(ModelConfig, d.get("model") or {}, "model"),
            reward=check_value(d.get("reward"), str | list[str] | None, "reward"),
            reward_kwargs=check_value(
                d.get("reward_kwargs") or {}, dict[str, Any], "reward_kwargs"
            ),
            algorithm=dict(d.get("algorithm") or {"name": "refl"}),
            sample=build(SampleConfig, d.get("sample") or {}, "sample"),
            data=build(DataConfig, d.get("data") or {}, "data"),
            train=build(TrainConfig, d.get("train") or {}, "train"),
            eval=build(EvalConfig, d.get("eval") or {}, "eval"),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        t, s = self.train, self.sample
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints",
                     "max_bad_steps"):  # fmt: skip
            if getattr(t, name) < 1:
                raise ConfigError(f"train.{name}: expected ≥ 1, got {getattr(t, name)}")
        if t.lr <= 0:
            raise ConfigError(f"train.lr: expected > 0, got {t.lr}")
        if t.ema_decay is not None and not 0 < t.ema_decay < 1:
            raise ConfigError(f"train.ema_decay: expected in (0, 1) or null, got {t.ema_decay}")
        if s.num_steps < 1:
            raise ConfigError(f"sample.num_steps: expected ≥ 1, got {s.num_steps}")
        if s.eta < 0 or s.noise_level < 0:
            raise ConfigError("sample.eta and sample.noise_level: expected ≥ 0")
        if self.model.lora_rank < 0:
            raise ConfigError(f"model.lora_rank: expected ≥ 0, got {self.model.lora_rank}")
        if "name" not in self.algorithm:
            raise ConfigError(
                "algorithm.name: required (refl, draft, alignprop, dpo, d3po, raft, ddpo, grpo; "
                "ctrlz or bon for inference-time search)"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build(cls: type, values: dict[str, Any], where: str):
    """Instantiate dataclass ``cls`` from ``values``, checking keys and value types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; valid: {names}")
    kwargs = {k: check_value(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return f"one of {list(get_args(tp))}"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin is list:
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _matches(value: Any, tp: Any) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if tp is Any:
        return True, value
    if origin is Literal:
        return value in get_args(tp), value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            ok, v = _matches(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        out = []
        for item in value:
            ok, v = _matches(item, get_args(tp)[0])
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if origin is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


def check_value(value: Any, tp: Any, where: str) -> Any:
    """``value`` converted to ``tp`` (ints to floats, '1e-5' to 1e-05), or a :class:`ConfigError`."""
    ok, converted = _matches(value, tp)
    if not ok:
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
    return converted
