"""The alignment trainer: exact resume after a crash, the NaN guard, EMA, outputs."""

from __future__ import annotations

import json

import pytest
import torch

import mmreward
from diffusion_align.algorithms.refl import ReFL, ReFLConfig
from diffusion_align.config import SampleConfig, TrainConfig
from diffusion_align.data import PromptSource
from diffusion_align.policy import DiffusionPolicy, LoraSpec
from diffusion_align.tiny import tiny_pipeline
from diffusion_align.trainer import AlignTrainer
from mmreward.interface import RewardModel

PROMPTS = ["a red seven", "a blue one", "a green two", "a purple nine", "a yellow four"]


pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(RuntimeError):
    pass


class CrashingSource(PromptSource):
    """Raises once the cursor reaches ``crash_at`` (a process killed mid-step)."""

    def __init__(self, prompts, crash_at: int | None) -> None:
        super().__init__(prompts, seed=0)
        self.crash_at = crash_at

    def batch(self, cursor: int, size: int):
        if self.crash_at is not None and cursor >= self.crash_at:
            raise Killed(f"killed at cursor {cursor}")
        return super().batch(cursor, size)


def _trainer(out, source, reward, **train) -> AlignTrainer:
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2))
    algo = ReFL(
        ReFLConfig(stop_range=[1, 2], phi=1e4, lam=1e-2),
        SampleConfig(num_steps=3, eta=0.5),
        [reward],
    )
    cfg = TrainConfig(output_dir=str(out), lr=1e-2, batch_size=2, grad_accum=2, ema_decay=0.9,
                      progress=False, gallery_prompts=2, **train)  # fmt: skip
    return AlignTrainer(policy, algo, source, cfg, gallery_prompts=PROMPTS[:2])


def _rows(out) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "train/loss" in r}  # later rows (the resumed run) win


def test_killed_run_resumes_exactly(tmp_path) -> None:
    reward = mmreward.load("colorfulness.hasler")
    steps = 5
    # the uninterrupted run
    full = _trainer(
        tmp_path / "full", CrashingSource(PROMPTS, None), reward, max_steps=steps, save_every=2
    )
    full.train()
    # the same run, killed while computing step 4 (checkpoints at steps 2 and 4)
    crash_cursor = 3 * 2 * 2  # step index 3, micro-batch 0, batch 2
    run = tmp_path / "run"
    first = _trainer(
        run, CrashingSource(PROMPTS, crash_cursor), reward, max_steps=steps, save_every=2
    )
    with pytest.raises(Killed):
        first.train()
    assert first.latest_checkpoint().name == "step_00000002"
    (run / "checkpoints" / ".tmp_step_00000004").mkdir()  # a half-written checkpoint: ignored
    again = _trainer(run, CrashingSource(PROMPTS, None), reward, max_steps=steps, save_every=2)
    again.train()
    a, b = _rows(tmp_path / "full"), _rows(run)
    for s in range(3, steps + 1):
        assert b[s]["train/loss"] == pytest.approx(a[s]["train/loss"], rel=1e-5, abs=1e-8), s
        assert b[s]["train/reward"] == pytest.approx(a[s]["train/reward"], rel=1e-6), s
        assert b[s]["train/stop_step"] == a[s]["train/stop_step"]
    for (n, p), (_, q) in zip(full.named_params, again.named_params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=n)
    for n in full.ema.shadow:
        torch.testing.assert_close(full.ema.shadow[n], again.ema.shadow[n], rtol=1e-5, atol=1e-7)
    # outputs: checkpoints kept, galleries, the final LoRA
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == [
        "step_00000004",
        "step_00000005",
    ]
    assert (run / "samples" / "step_00000000.png").is_file() and (
        run / "samples" / "step_00000005.png"
    ).is_file()
    assert (run / "final" / "trainable.safetensors").is_file()
    gallery = [json.loads(x) for x in (run / "samples" / "gallery.jsonl").read_text().splitlines()]
    assert "colorfulness.hasler" in gallery[-1]["scores"]


class NaNReward(RewardModel):
    inputs = ("images",)
    differentiable = True

    def compute(self, batch):
        return batch.images.mean(dim=(1, 2, 3)) * float("nan")


def test_non_finite_losses_are_skipped_then_abort(tmp_path) -> None:
    trainer = _trainer(tmp_path, PromptSource(PROMPTS), NaNReward(), max_steps=10, max_bad_steps=3)
    before = {n: p.detach().clone() for n, p in trainer.named_params}
    stats = trainer.train_step()
    assert stats["skipped"] == 1.0 and trainer.bad_streak == 1
    for n, p in trainer.named_params:
        torch.testing.assert_close(p, before[n])  # weights untouched by a skipped step
    with pytest.raises(FloatingPointError, match="3 consecutive steps.*Lower train.lr"):
        trainer.train(resume=False)


def test_step_generator_is_a_pure_function() -> None:
    from diffusion_align.trainer import step_generator

    a = torch.rand(3, generator=step_generator(0, 5, 1, 0))
    b = torch.rand(3, generator=step_generator(0, 5, 1, 0))
    c = torch.rand(3, generator=step_generator(0, 5, 1, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_full_fine_tune_with_a_frozen_reference(tmp_path) -> None:
    from diffusion_align.algorithms.d3po import D3PO, D3POConfig

    policy = DiffusionPolicy(tiny_pipeline("sd"), reference="copy")
    algo = D3PO(
        D3POConfig(), SampleConfig(num_steps=2, eta=1.0), [mmreward.load("colorfulness.hasler")]
    )
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=1, batch_size=2, lr=1e-3, progress=False)
    trainer = AlignTrainer(policy, algo, PromptSource(PROMPTS), cfg)
    ref_before = [p.detach().clone() for p in policy.ref_denoiser.parameters()]
    trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(ref_before, policy.ref_denoiser.parameters()))
    assert (tmp_path / "final" / "model_index.json").is_file()  # a whole diffusers pipeline
    again = DiffusionPolicy.from_pretrained(str(tmp_path / "final"))
    torch.testing.assert_close(
        next(again.raw_denoiser.parameters()), next(policy.raw_denoiser.parameters())
    )
