"""One resumable trainer for every alignment algorithm, on accelerate.

The loop, top to bottom, per optimizer step:

1. **data** — ``grad_accum`` micro-batches; micro-batch ``m`` of step ``s`` is the data
   source's batch at cursor ``((s·grad_accum + m)·processes + rank)·batch_size``, and its
   randomness (noise, stop steps, truncations) comes from a generator seeded by
   ``(seed, s, m, rank)`` — so a step is a pure function of the weights, the optimizer
   state and ``s``, and resuming reproduces the uninterrupted run exactly;
2. **loss** — ``algorithm.losses(policy, batch, generator)`` yields one or more losses;
   each is checked (non-finite → the step is skipped) and back-propagated at once;
3. **update** — gradients averaged across processes (one all-reduce per step), clipped,
   AdamW step, LR schedule (linear warm-up), EMA of the trainable weights;
4. **bookkeeping** — metrics to ``metrics.jsonl`` (+ accelerate trackers), sample
   galleries to ``samples/``, atomic checkpoints to ``checkpoints/step_N``.

A step whose loss or gradient is NaN/inf is skipped (weights untouched, logged as
``skipped``); ``max_bad_steps`` consecutive skips abort the run with a message saying
what to try.

>>> # trainer = AlignTrainer(policy, ReFL(ReFLConfig(), sample_cfg, reward),
>>> #                        PromptSource("world:train"), TrainConfig(output_dir="runs/refl"))
>>> # trainer.train()      # resumes from runs/refl/checkpoints if present
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffusion_align.algorithms.base import UPDATE, Algorithm, score_images
from diffusion_align.config import EvalConfig, TrainConfig
from diffusion_align.policy import DiffusionPolicy
from mmreward.checkpoint import read_state_dict, save_state_dict

STATE_FILE = "trainer_state.json"
ALGORITHM_STATE_FILE = "algorithm_state.json"


class EMA:
    """Exponential moving average of named parameters (fp32 shadow copies).

    >>> p = nn.Parameter(torch.zeros(2))
    >>> ema = EMA([("w", p)], decay=0.5)
    >>> with torch.no_grad(): _ = p.fill_(1.0)
    >>> ema.update([("w", p)]); ema.shadow["w"]
    tensor([0.5000, 0.5000])
    """

    def __init__(self, named_params: Sequence[tuple[str, nn.Parameter]], decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in named_params}

    @torch.no_grad()
    def update(self, named_params: Sequence[tuple[str, nn.Parameter]]) -> None:
        for n, p in named_params:
            self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise ValueError("EMA state does not match the trainable parameters")
        self.shadow = {n: v.float().to(self.shadow[n].device) for n, v in state.items()}

    @contextlib.contextmanager
    def applied(self, named_params: Sequence[tuple[str, nn.Parameter]]) -> Iterator[None]:
        """Temporarily load the averaged weights (for galleries, evaluation, the final save)."""
        backup = {n: p.detach().clone() for n, p in named_params}
        with torch.no_grad():
            for n, p in named_params:
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in named_params:
                    p.copy_(backup[n])


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """A CPU generator seeded by ``(seed, step, micro-batch, rank)`` alone."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class AlignTrainer:
    """Train ``policy`` with ``algorithm`` on ``data`` (a source from :mod:`diffusion_align.data`).

    Args:
        eval_config: held-out evaluation (``eval.prompts`` + ``eval.rewards``) run at the
            start and the end (and every ``eval_every`` steps), logged as ``eval/*``.
        eval_rewards: name → reward model for the evaluation and the galleries.
        gallery_prompts: the prompts of the sample galleries.
        config_dump: the whole run config, stored in every checkpoint.
    """

    def __init__(
        self,
        policy: DiffusionPolicy,
        algorithm: Algorithm,
        data: Any,
        config: TrainConfig,
        eval_config: EvalConfig | None = None,
        eval_rewards: dict[str, Any] | None = None,
        gallery_prompts: Sequence[str] = (),
        config_dump: dict[str, Any] | None = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.cfg, self.algorithm, self.data = config, algorithm, data
        self.eval_cfg, self.eval_rewards = eval_config, dict(eval_rewards or {})
        self.gallery_prompts = list(gallery_prompts)
        self.config_dump = config_dump or {"train": asdict(config)}
        self.out = Path(config.output_dir)
        self.acc = Accelerator(
            mixed_precision=config.mixed_precision,
            # CPU-only machines: cpu=True lets a multi-process launch (torchrun) use gloo
            cpu=config.cpu or not torch.cuda.is_available(),
            log_with=config.trackers or None,
            project_config=ProjectConfiguration(project_dir=str(self.out)),
        )
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision)
        self.policy = policy.to(self.acc.device, frozen_dtype=weight_dtype)
        for r in [*algorithm.rewards, *self.eval_rewards.values()]:
            r.to(self.acc.device)
            r.eval()
        algorithm.check_policy(policy)
        if algorithm.inner_updates and config.grad_accum != 1:
            raise ValueError(
                f"{algorithm.name}: makes its own optimizer updates per iteration; set "
                "train.grad_accum: 1 (the algorithm's minibatch size sets the update size)"
            )
        self.named_params = policy.named_trainable_parameters()
        if not self.named_params:
            raise ValueError("the policy has no trainable parameters")
        self.params = [p for _, p in self.named_params]
        optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, weight_decay=config.weight_decay, eps=config.adam_eps
        )
        warm = config.warmup_steps
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warm) if warm > 0 else 1.0
        )
        policy.denoiser, self.optimizer = self.acc.prepare(policy.raw_denoiser, optimizer)
        self.ema = EMA(self.named_params, config.ema_decay) if config.ema_decay else None
        self.step = 0
        self.bad_streak = 0
        if config.trackers:
            self.acc.init_trackers("mmreward-align", config=_flat(self.config_dump))

    # -- data & randomness ---------------------------------------------------------------
    def cursor(self, step: int, micro: int) -> int:
        """Items consumed before micro-batch ``micro`` of ``step`` on this process."""
        acc, c = self.acc, self.cfg
        return (
            (step * c.grad_accum + micro) * acc.num_processes + acc.process_index
        ) * c.batch_size

    # -- checkpoints ---------------------------------------------------------------------
    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (an incomplete one never gets its final name)."""
        if not self.ckpt_root.is_dir():
            return None
        done = [p for p in self.ckpt_root.glob("step_*") if (p / STATE_FILE).is_file()]
        return max(done, key=lambda p: int(p.name.split("_")[1])) if done else None

    def save_checkpoint(self) -> Path:
        """Atomically write weights, optimizer, LR schedule, EMA, scaler, RNG and step."""
        acc = self.acc
        final = self.ckpt_root / f"step_{self.step:08d}"
        tmp = self.ckpt_root / f".tmp_step_{self.step:08d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        torch.save(_rng_state(), tmp / f"rng_{acc.process_index}.pt")
        if acc.is_main_process:
            save_state_dict(self.policy.trainable_state_dict(), tmp / "trainable.safetensors")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
            if self.ema is not None:
                save_state_dict(self.ema.state_dict(), tmp / "ema.safetensors")
            if self.acc.scaler is not None:
                torch.save(self.acc.scaler.state_dict(), tmp / "scaler.pt")
            algo_state = self.algorithm.state_dict()
            if algo_state:
                (tmp / ALGORITHM_STATE_FILE).write_text(json.dumps(_jsonable(algo_state)) + "\n")
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {
                "step": self.step,
                "cursor": self.cursor(self.step, 0),
                "bad_streak": self.bad_streak,
                "algorithm": self.algorithm.name,
                "num_processes": acc.num_processes,
                "config": self.config_dump,
            }
            (tmp / STATE_FILE).write_text(json.dumps(_jsonable(state), indent=2) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)  # the checkpoint appears only once complete
            done = sorted(p for p in self.ckpt_root.glob("step_*") if (p / STATE_FILE).is_file())
            for old in done[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def resume(self) -> bool:
        """Load the latest checkpoint, if any; returns whether it did."""
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            return False
        state = json.loads((ckpt / STATE_FILE).read_text())
        if state.get("num_processes", 1) != self.acc.num_processes:
            raise ValueError(
                f"{ckpt}: written by {state.get('num_processes')} processes, resuming with "
                f"{self.acc.num_processes}; the data order would change"
            )
        self.policy.load_trainable(ckpt / "trainable.safetensors")
        self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(ckpt / "lr_scheduler.pt", weights_only=True))
        if self.ema is not None:
            self.ema.load_state_dict(read_state_dict(ckpt / "ema.safetensors"))
        if self.acc.scaler is not None and (ckpt / "scaler.pt").is_file():
            self.acc.scaler.load_state_dict(torch.load(ckpt / "scaler.pt", weights_only=True))
        algo_state = ckpt / ALGORITHM_STATE_FILE
        self.algorithm.load_state_dict(
            json.loads(algo_state.read_text()) if algo_state.is_file() else {}
        )
        rng = ckpt / f"rng_{self.acc.process_index}.pt"
        if rng.is_file():
            _set_rng_state(torch.load(rng, weights_only=True))
        self.step, self.bad_streak = state["step"], state.get("bad_streak", 0)
        return True

    # -- one optimizer step --------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """Run one optimizer step (or skip it on a non-finite loss); returns its stats.

        For algorithms with ``inner_updates`` (RAFT, DDPO, GRPO) a step is one iteration:
        every :data:`~diffusion_align.algorithms.base.UPDATE` the algorithm yields applies
        the gradients accumulated since the previous one.
        """
        acc, cfg = self.acc, self.cfg
        model = self.policy.denoiser
        stats: dict[str, list[float]] = defaultdict(list)
        bad, n_losses = False, 0
        sync = acc.no_sync(model) if acc.num_processes > 1 else contextlib.nullcontext()
        with sync:  # gradients are averaged once, after accumulation
            for micro in range(cfg.grad_accum):
                batch, _ = self.data.batch(self.cursor(self.step, micro), cfg.batch_size)
                g = step_generator(cfg.seed, self.step, micro, acc.process_index)
                self.algorithm.begin_step(self.step, self.out, acc.process_index)
                micro_loss = None  # the yielded losses add up to the micro-batch's loss
                for item in self.algorithm.losses(self.policy, batch, g):
                    if item is UPDATE:
                        self._update(bad, n_losses, stats)
                        n_losses = 0
                        continue
                    loss, s = item
                    if not torch.isfinite(loss).all():
                        bad = True
                        stats["bad_loss"].append(float(loss.detach().float().mean()))
                        break
                    acc.backward(loss / cfg.grad_accum)
                    n_losses += 1
                    micro_loss = (micro_loss or 0.0) + loss.item()
                    for k, v in s.items():
                        stats[k].append(v)
                if bad:
                    break
                if micro_loss is not None:
                    stats["loss"].append(micro_loss)
        self._update(bad, n_losses, stats)
        out = {k: float(np.mean(v)) for k, v in stats.items() if k != "skipped"}
        if "skipped" in stats:
            out["skipped"] = float(sum(stats["skipped"]))
        self.step += 1
        return out

    def _update(self, bad: bool, n_losses: int, stats: dict[str, list[float]]) -> None:
        """Apply the accumulated gradients (or skip them when non-finite)."""
        acc, cfg = self.acc, self.cfg
        flags = torch.tensor([float(bad), float(n_losses > 0)], device=acc.device)
        if acc.num_processes > 1:
            flags = acc.reduce(flags, "sum")
            for p in self.params:  # one all-reduce per update, whatever each rank yielded
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad = acc.reduce(p.grad, "mean")
        bad, any_loss = bool(flags[0] > 0), bool(flags[1] > 0)
        if any_loss and not bad:
            norm = float(acc.clip_grad_norm_(self.params, cfg.max_grad_norm or float("inf")))
            stats["grad_norm"].append(norm)
            if not math.isfinite(norm) and acc.scaler is None:
                bad = True  # (fp16: the grad scaler skips inf steps itself)
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_streak += 1
            stats["skipped"].append(1.0)
            if self.bad_streak >= cfg.max_bad_steps:
                shown = {k: float(np.mean(v)) for k, v in stats.items()}
                raise FloatingPointError(
                    f"{self.algorithm.name}: non-finite loss or gradient in {self.bad_streak} "
                    f"consecutive steps (last at step {self.step}, stats {shown}); the weights "
                    "were not updated by them. Lower train.lr, use mixed_precision bf16 or no "
                    "instead of fp16, check the reward for NaN, or raise train.max_bad_steps"
                )
        elif any_loss:
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.named_params)
            self.bad_streak = 0

    # -- galleries and evaluation ------------------------------------------------------
    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        """EMA weights (if any) and eval mode for the duration."""
        raw = self.policy.raw_denoiser
        was = raw.training
        raw.eval()
        ctx = self.ema.applied(self.named_params) if self.ema else contextlib.nullcontext()
        try:
            with ctx, torch.no_grad():
                yield
        finally:
            raw.train(was)

    def gallery(self, tag: str) -> Path | None:
        """Sample the gallery prompts with a fixed seed; save a grid PNG and their scores."""
        if not self.gallery_prompts or not self.acc.is_main_process:
            return None
        from diffusion_align.evaluate import generate
        from mmreward.report import save_image_grid

        with self.eval_weights():
            images = generate(
                self.policy, self.gallery_prompts, self.algorithm.sample, seed=self.cfg.seed
            )
            rewards = {**{r.reward_name: r for r in self.algorithm.rewards}, **self.eval_rewards}
            scores = {n: score_images([r], images, self.gallery_prompts)[:, 0].tolist()
                      for n, r in rewards.items()}  # fmt: skip
        path = save_image_grid(images.cpu(), self.out / "samples" / f"{tag}.png", nrow=8)
        row = {"tag": tag, "step": self.step, "image": path.name, "prompts": self.gallery_prompts,
               "scores": scores}  # fmt: skip
        with (self.out / "samples" / "gallery.jsonl").open("a") as f:
            f.write(json.dumps(_jsonable(row)) + "\n")
        return path

    def evaluate(self) -> dict[str, float]:
        """Held-out evaluation (``eval.prompts`` × ``eval.samples``) with ``eval_rewards``."""
        ec = self.eval_cfg
        if (
            ec is None
            or ec.prompts is None
            or not self.eval_rewards
            or not self.acc.is_main_process
        ):
            return {}
        from diffusion_align.data import read_prompts
        from diffusion_align.evaluate import evaluate_policy

        with self.eval_weights():
            result = evaluate_policy(
                self.policy, read_prompts(ec.prompts), self.eval_rewards, self.algorithm.sample,
                n_samples=ec.samples, batch_size=ec.batch_size, seed=ec.seed,
            )  # fmt: skip
        return {f"eval/{k}": v for k, v in result.summary().items()}

    def plot_curves(self) -> list[Path]:
        """``curves/<metric>.png`` for the training reward and loss and each held-out reward,
        per step, from ``metrics.jsonl`` (the numbers stay in the JSONL next to them)."""
        from mmreward.report import plot_curves

        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return []
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        written = []
        for key in sorted({k for r in rows for k in r}):
            if key in ("train/reward", "train/loss") or (
                key.startswith("eval/") and key.endswith("_mean")
            ):
                pts = {r["step"]: r[key] for r in rows if isinstance(r.get(key), (int, float))}
                xs = sorted(pts)  # a resumed run's later rows win
                name = key.replace("/", "_")
                written.append(plot_curves({key: (xs, [pts[x] for x in xs])},
                                           self.out / "curves" / f"{name}.png", ylabel=key))  # fmt: skip
        return written

    # -- the loop ------------------------------------------------------------------------
    def _log(self, row: dict[str, Any]) -> None:
        if self.cfg.trackers:
            nums = {k: v for k, v in row.items() if isinstance(v, (int, float))}
            self.acc.log(nums, step=self.step)
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            with (self.out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(_jsonable(row)) + "\n")

    def train(self, resume: bool = True) -> dict[str, Any]:
        """Run to ``max_steps``; returns the last logged metrics (and the final evaluation)."""
        from tqdm.auto import tqdm

        acc, cfg = self.acc, self.cfg
        if resume and self.resume():
            acc.print(f"resumed from step {self.step}")
        if self.step == 0:
            self.gallery("step_00000000")
            first = self.evaluate()
            if first:
                self._log({"step": 0, **first})
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=f"align ({self.algorithm.name})",
                   disable=not (cfg.progress and acc.is_local_main_process))  # fmt: skip
        window: list[dict[str, float]] = []
        last: dict[str, Any] = {}
        t0 = time.time()
        while self.step < cfg.max_steps:
            window.append(self.train_step())
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                keys = {k for w in window for k in w}
                row: dict[str, Any] = {"step": self.step, "lr": self.lr_scheduler.get_last_lr()[0],
                                       "time": round(time.time() - t0, 3)}  # fmt: skip
                for k in sorted(keys):
                    vals = [w[k] for w in window if k in w]
                    row[f"train/{k}"] = float(np.mean(vals)) if k != "skipped" else sum(vals)
                self._log(row)
                last, window = row, []
                if "train/loss" in row:
                    bar.set_postfix(loss=f"{row['train/loss']:.4g}")
            if cfg.sample_every and self.step % cfg.sample_every == 0:
                self.gallery(f"step_{self.step:08d}")
            every = self.eval_cfg.every if self.eval_cfg is not None else 0
            if every and self.step % every == 0 and self.step < cfg.max_steps:
                self._log({"step": self.step, **self.evaluate()})
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save_checkpoint()
        bar.close()
        if not (cfg.save_every and self.step % cfg.save_every == 0):
            self.save_checkpoint()
        self.gallery(f"step_{self.step:08d}")
        final = self.evaluate()
        if final:
            self._log({"step": self.step, **final})
        if acc.is_main_process:
            ctx = self.ema.applied(self.named_params) if self.ema else contextlib.nullcontext()
            with ctx:
                self.policy.save_pretrained(self.out / "final")
            self.plot_curves()
        acc.wait_for_everyone()
        if cfg.trackers:
            acc.end_training()
        return {**last, **final}


def _rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and numbers (loadable with ``weights_only=True``)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _jsonable(obj: Any) -> Any:
    from mmreward.report import to_jsonable

    return to_jsonable(obj)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
