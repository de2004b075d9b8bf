"""Reward-model training on accelerate, for any :class:`~mmreward.interface.RewardModel`.

One loop for every kind of reward model (text, image, video, step-level). The objective
picks the loss from :mod:`mmreward.losses`:

- ``pairwise``: Bradley-Terry (optional per-pair margins and trl's centering term);
  pairs labelled as ties use the Rao-Kupper BT-with-ties loss when ``tie_k`` is set and
  are skipped otherwise;
- ``listwise``: ImageReward's k-way ranking loss;
- ``steps``: step-level BCE on the model's step logits (hard or soft labels).

Runs unchanged under ``accelerate launch`` (DDP), with mixed precision, gradient
accumulation, atomic checkpoints with exact resume, metrics to ``metrics.jsonl`` (and to
accelerate trackers), periodic evaluation and progress bars.

>>> from mmreward.train import TrainConfig
>>> TrainConfig(output_dir="runs/rm", objective="pairwise").batch_size
16
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from mmreward import losses, metrics
from mmreward.data import CollatedBatch, Collator, PreferenceExample, load_examples
from mmreward.interface import RewardModel, RewardOutput


@dataclass
class TrainConfig:
    """Reward-model training settings (every field can be set from YAML or the CLI)."""

    output_dir: str = "runs/rm"
    objective: str = "pairwise"  # pairwise | listwise | steps
    train_file: str | None = None  # JSONL (see mmreward.data)
    eval_file: str | None = None
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 16  # examples per process per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up, then constant
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"  # no | fp16 | bf16
    center_coef: float = 0.0  # trl centering regulariser
    use_margin: bool = False  # use per-pair "margin" from the data
    tie_k: float | None = None  # Rao-Kupper k for tie pairs (None: skip ties)
    image_size: list[int] | None = None  # resize candidates to (H, W) when sizes differ
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    seed: int = 0
    cpu: bool = False
    trackers: list[str] = field(default_factory=list)  # accelerate trackers, e.g. tensorboard
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict, rejecting unknown keys with the list of valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; valid: {sorted(names)}")
        cfg = cls(**d)
        if cfg.objective not in ("pairwise", "listwise", "steps"):
            raise ValueError(
                f"objective: expected pairwise, listwise or steps, got {cfg.objective!r}"
            )
        if cfg.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(
                f"mixed_precision: expected no, fp16 or bf16, got {cfg.mixed_precision!r}"
            )
        for name in ("epochs", "batch_size", "grad_accum"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"{name}: expected ≥ 1, got {getattr(cfg, name)}")
        return cfg


def compute_loss(model: RewardModel, batch: CollatedBatch, cfg: TrainConfig) -> tuple[Tensor, dict]:
    """The objective's loss for one collated batch, plus a few logging stats."""
    out: RewardOutput = model(batch.inputs)
    if batch.objective == "pairwise":
        b = batch.labels.shape[0]
        r_a, r_b = out.scores[:b].float(), out.scores[b:].float()
        labels = batch.labels.to(r_a.device)
        margins = batch.margins.to(r_a.device) if cfg.use_margin else None
        strict = labels != 0
        if cfg.tie_k is not None:
            loss = losses.bt_ties_loss(r_a, r_b, labels, k=cfg.tie_k)
        else:
            if not strict.any():  # a batch of ties only: nothing to learn from without tie_k
                return (out.scores.sum() * 0.0), {"acc": float("nan")}
            sign = labels[strict].to(r_a.dtype)
            # orient every pair as (chosen, rejected)
            chosen = torch.where(sign > 0, r_a[strict], r_b[strict])
            rejected = torch.where(sign > 0, r_b[strict], r_a[strict])
            m = margins[strict] if margins is not None else None
            loss = losses.bradley_terry_loss(
                chosen, rejected, margin=m, center_coef=cfg.center_coef
            )
        with torch.no_grad():
            correct = ((r_a - r_b) * labels)[strict] > 0
            acc = correct.float().mean().item() if strict.any() else float("nan")
        return loss, {"acc": acc}
    if batch.objective == "listwise":
        scores = out.scores.float().view(batch.ranks.shape)
        loss = losses.ranking_loss(scores, batch.ranks.to(scores.device))
        return loss, {}
    logits = out.extras.get("step_logits")
    if logits is None:
        if out.step_scores is None:
            raise ValueError(
                f"{model.reward_name}: the 'steps' objective needs a model that returns "
                "step_scores (or extras['step_logits'])"
            )
        logits = [torch.logit(p.float().clamp(1e-6, 1 - 1e-6)) for p in out.step_scores]
    labels = [y.to(logits[0].device) for y in batch.step_labels]
    return losses.step_bce_loss([x.float() for x in logits], labels), {}


@torch.no_grad()
def pairwise_report(
    forward, collate, examples: list[PreferenceExample], batch_size: int = 32
) -> dict[str, float]:
    """Preference accuracy of ``forward`` on pairwise ``examples`` (batches from ``collate``:
    the A items, then the B items, then ``labels``), as floats."""
    sa, sb, lab = [], [], []
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i : i + batch_size])
        s = forward(batch.inputs).scores.float().cpu()
        n = batch.labels.shape[0]
        sa.append(s[:n])
        sb.append(s[n:])
        lab.append(batch.labels)
    report = metrics.preference_accuracy_report(torch.cat(sa), torch.cat(sb), torch.cat(lab))
    return {k: float(v) for k, v in report.items()}


@torch.no_grad()
def evaluate(
    model: RewardModel,
    examples: list[PreferenceExample],
    objective: str,
    batch_size: int = 32,
    image_size: tuple[int, int] | None = None,
) -> dict[str, float]:
    """Held-out metrics: preference accuracy (pairs), Spearman (lists), step F1 (steps)."""
    collate = Collator(objective, image_size)
    # the class's forward, in the model's own precision: under mixed precision accelerate
    # patches the instance's forward with autocast, and bf16 scores would tie spuriously
    forward = type(model).forward.__get__(model)
    was_training = model.training
    model.eval()
    try:
        if objective == "pairwise":
            return pairwise_report(forward, collate, examples, batch_size)
        if objective == "listwise":
            rhos = []
            for i in range(0, len(examples), batch_size):
                batch = collate(examples[i : i + batch_size])
                s = forward(batch.inputs).scores.float().cpu().view(batch.ranks.shape)
                rhos += [metrics.spearman(-s[j], batch.ranks[j].float()) for j in range(len(s))]
            return {"spearman": float(sum(rhos) / len(rhos)), "n_lists": float(len(rhos))}
        probs, labels = [], []
        for i in range(0, len(examples), batch_size):
            batch = collate(examples[i : i + batch_size])
            out = forward(batch.inputs)
            probs += [p.float().cpu() for p in out.step_scores]
            labels += [(y >= 0.5).float() for y in batch.step_labels]
        f1 = metrics.step_f1(probs, labels)
        ece = metrics.expected_calibration_error(torch.cat(probs), torch.cat(labels))
        return {"step_f1_error": f1.f1_error, "step_macro_f1": f1.macro_f1, "ece": ece}
    finally:
        model.train(was_training)


class EpochShuffle(Sampler[int]):
    """A permutation drawn from ``(seed, epoch)`` alone, so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class RewardModelTrainer:
    """Train a reward model on preference data with accelerate.

    >>> # trainer = RewardModelTrainer(model, TrainConfig(output_dir="runs/x",
    >>> #                                                 train_file="pairs.jsonl"))
    >>> # trainer.train()        # resumes from output_dir/checkpoints if present
    """

    def __init__(
        self,
        model: RewardModel,
        config: TrainConfig,
        train_examples: list[PreferenceExample] | None = None,
        eval_examples: list[PreferenceExample] | None = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        self.cfg = config
        self.out = Path(config.output_dir)
        _allow_new_precision(config.mixed_precision)
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.grad_accum,
            cpu=config.cpu,
            log_with=config.trackers or None,
            project_config=ProjectConfiguration(project_dir=str(self.out)),
        )
        set_seed(config.seed)
        if train_examples is None:
            if not config.train_file:
                raise ValueError("train_file: expected a JSONL path (or pass train_examples)")
            train_examples = load_examples(config.train_file, config.objective)
        if eval_examples is None and config.eval_file:
            eval_examples = load_examples(config.eval_file, config.objective)
        self.train_examples, self.eval_examples = train_examples, eval_examples
        image_size = tuple(config.image_size) if config.image_size else None
        self.image_size = image_size or getattr(model, "native_resolution", None)
        self.model = model
        self.sampler = EpochShuffle(len(train_examples), config.seed)
        loader = DataLoader(
            train_examples,
            batch_size=config.batch_size,
            sampler=self.sampler,
            collate_fn=Collator(config.objective, self.image_size),
            drop_last=len(train_examples) >= config.batch_size,
        )
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{model.reward_name}: no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        warm = max(config.warmup_steps, 0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
        )
        self.model, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            model, optimizer, loader, scheduler
        )
        steps_per_epoch = math.ceil(len(self.loader) / config.grad_accum)
        self.total_steps = config.max_steps or steps_per_epoch * config.epochs
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.step = 0
        if config.trackers:
            self.accelerator.init_trackers("mmreward-rm", config=_flat(asdict(config)))

    # -- checkpoints -----------------------------------------------------------------
    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (incomplete ones never get their final name)."""
        if not self.ckpt_root.is_dir():
            return None
        done = sorted(
            (p for p in self.ckpt_root.glob("step_*") if (p / "trainer_state.json").is_file()),
            key=lambda p: int(p.name.split("_")[1]),
        )
        return done[-1] if done else None

    def save_checkpoint(self) -> Path:
        """Atomically save model, optimizer, scheduler, RNG states and the step counter."""
        acc = self.accelerator
        final = self.ckpt_root / f"step_{self.step:08d}"
        tmp = self.ckpt_root / f".tmp_step_{self.step:08d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        if acc.is_main_process:
            state = {"step": self.step, "config": asdict(self.cfg)}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)  # the checkpoint exists only once it is complete
            older = sorted(self.ckpt_root.glob("step_*"))[: -self.cfg.keep_checkpoints]
            for p in older:
                shutil.rmtree(p, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def resume(self) -> bool:
        """Load the latest checkpoint if there is one; returns whether it resumed."""
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            return False
        self.accelerator.load_state(str(ckpt))
        self.step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
        return True

    # -- loop --------------------------------------------------------------------------
    def _log(self, row: dict[str, Any]) -> None:
        acc = self.accelerator
        if self.cfg.trackers:
            acc.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=self.step)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            with (self.out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")

    def evaluate(self) -> dict[str, float]:
        if not self.eval_examples:
            return {}
        model = self.accelerator.unwrap_model(self.model)
        return evaluate(
            model, self.eval_examples, self.cfg.objective, self.cfg.batch_size * 2, self.image_size
        )

    def train(self, resume: bool = True) -> dict[str, Any]:
        """Run to ``total_steps`` optimizer steps; returns the final metrics."""
        from tqdm.auto import tqdm

        acc, cfg = self.accelerator, self.cfg
        if resume and self.resume():
            acc.print(f"resumed from step {self.step}")
        self.model.train()
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="training reward model",
            disable=not (cfg.progress and acc.is_local_main_process),
        )
        t0, window = time.time(), []
        while self.step < self.total_steps:
            epoch, done_in_epoch = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch)  # the same order in a resumed run
            loader = acc.skip_first_batches(self.loader, done_in_epoch * cfg.grad_accum)
            for batch in loader:
                with acc.accumulate(self.model):
                    loss, stats = compute_loss(self.model, batch, cfg)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"non-finite loss {loss.item()} at step {self.step}; "
                            "lower the learning rate or use fp32"
                        )
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm:
                        acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad()
                window.append({"loss": loss.item(), **stats})
                if not acc.sync_gradients:
                    continue
                self.step += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    row = {
                        "step": self.step,
                        "lr": self.scheduler.get_last_lr()[0],
                        "time": round(time.time() - t0, 3),
                    }
                    for key in window[0]:
                        vals = [w[key] for w in window if not math.isnan(w[key])]
                        row[f"train/{key}"] = sum(vals) / len(vals) if vals else float("nan")
                    window = []
                    self._log(row)
                    bar.set_postfix(loss=f"{row['train/loss']:.4f}")
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self._log(
                        {"step": self.step, **{f"eval/{k}": v for k, v in self.evaluate().items()}}
                    )
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save_checkpoint()
                if self.step >= self.total_steps:
                    break
        bar.close()
        final = {f"eval/{k}": v for k, v in self.evaluate().items()}
        if final:
            self._log({"step": self.step, **final})
        self.save_checkpoint()
        if acc.is_main_process:
            acc.unwrap_model(self.model).save_pretrained(self.out / "model")
        acc.wait_for_everyone()
        if cfg.trackers:
            acc.end_training()
        return {"step": self.step, **final}


def _allow_new_precision(mixed_precision: str) -> None:
    """Let one single-process program train several models in different precisions.

    accelerate keeps one process-wide state and refuses a second Accelerator with another
    ``mixed_precision``; outside a distributed launch that state is safe to reset.
    """
    from accelerate.state import AcceleratorState, PartialState

    shared = AcceleratorState._shared_state
    current = shared.get("_mixed_precision")
    if current is not None and current != mixed_precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in d.items()}
