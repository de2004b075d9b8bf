"""The reward-model trainer: learning, exact resume, every objective, CLI and configs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import mmreward
from mmreward.cli import main as cli_main
from mmreward.data import load_examples
from mmreward.interface import RewardInput, RewardModel, RewardOutput
from mmreward.synthetic import write_sharpness_preferences
from mmreward.train import RewardModelTrainer, TrainConfig, evaluate


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_sharpness_preferences(tmp_path_factory.mktemp("pairs"), n_train=96, n_eval=64)


def _small_model():
    return mmreward.load("convnet.tiny", resolution=16, channels=[8, 16], hidden=16)


def _cfg(out, pairs, **kw):
    base = dict(
        output_dir=str(out),
        train_file=str(pairs["train"]),
        eval_file=str(pairs["eval"]),
        batch_size=16,
        lr=3e-3,
        progress=False,
        log_every=1,
        cpu=True,
    )
    return TrainConfig.from_dict({**base, **kw})


def test_training_raises_held_out_accuracy(tmp_path, pairs):
    torch.manual_seed(0)
    model = _small_model()
    ev = load_examples(pairs["eval"], "pairwise")
    before = evaluate(model, ev, "pairwise")["accuracy_without_ties"]
    result = RewardModelTrainer(model, _cfg(tmp_path, pairs, epochs=8)).train()
    after = result["eval/accuracy_without_ties"]
    assert after > 0.9 and after > before + 0.1
    # the saved model reloads to identical outputs
    loaded = mmreward.load(tmp_path / "model")
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(loaded.score(x).scores, model.eval().score(x).scores)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 1 and "train/loss" in rows[0]


def test_resume_equals_uninterrupted_run(tmp_path, pairs):
    """Stop after 7 of 14 steps (checkpoint at 6), resume: identical losses and weights."""

    def run(out, max_steps, resume=True):
        torch.manual_seed(0)
        model = _small_model()
        cfg = _cfg(out, pairs, max_steps=max_steps, save_every=3, epochs=100)
        RewardModelTrainer(model, cfg).train(resume=resume)
        losses = {}
        for line in (out / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            if "train/loss" in row:
                losses[row["step"]] = row["train/loss"]
        return model, losses

    full, full_losses = run(tmp_path / "full", 14)
    # "killed" run: reaches step 7, but its last checkpoint is step 6
    run(tmp_path / "cut", 7)
    ckpts = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").glob("step_*"))
    assert ckpts[-1] == "step_00000007"  # the final save; drop it to simulate a kill at step 7
    import shutil

    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_00000007")
    resumed, resumed_losses = run(tmp_path / "cut", 14)
    for step in range(7, 15):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-5, abs=1e-7)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_tie_loss_and_margin_paths(tmp_path, pairs):
    model = _small_model()
    r = RewardModelTrainer(model, _cfg(tmp_path, pairs, max_steps=2, tie_k=5.0)).train()
    assert r["step"] == 2
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(ValueError, match="objective"):
        TrainConfig.from_dict({"objective": "triplet"})


class _MeanStepModel(RewardModel):
    """Toy PRM: a learned logit per step from the step length (enough to test the loop)."""

    inputs = ("steps",)

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(1, 1)

    def compute(self, batch: RewardInput) -> RewardOutput:
        logits = [
            self.w(torch.tensor([[float(len(s))] for s in st])).squeeze(-1) for st in batch.steps
        ]
        probs = [torch.sigmoid(x) for x in logits]
        return RewardOutput(
            scores=torch.stack([p.min() for p in probs]),
            step_scores=probs,
            extras={"step_logits": logits},
        )


def test_steps_objective_learns(tmp_path):
    # label: long steps are wrong, short ones right
    rows = []
    for i in range(40):
        steps = ["x" * (1 + i % 3), "y" * (6 + i % 4)]
        rows.append({"prompt": "q", "steps": steps, "labels": [1, 0]})
    path = tmp_path / "steps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = _MeanStepModel()
    cfg = TrainConfig.from_dict(
        dict(
            output_dir=str(tmp_path / "o"),
            objective="steps",
            train_file=str(path),
            eval_file=str(path),
            epochs=60,
            batch_size=8,
            lr=0.05,
            progress=False,
            cpu=True,
        )
    )
    result = RewardModelTrainer(model, cfg).train()
    assert result["eval/step_macro_f1"] == 1.0


class _TextLenModel(RewardModel):
    inputs = ("responses",)

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def compute(self, batch):
        return self.w * torch.tensor([float(len(r)) for r in batch.responses])


def test_listwise_objective_on_text(tmp_path):
    rows = [{"prompt": "p", "responses": ["aaaa", "aa", "a"], "ranking": [1, 2, 3]}] * 12
    path = tmp_path / "lists.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = _TextLenModel()
    cfg = TrainConfig.from_dict(
        dict(
            output_dir=str(tmp_path / "o"),
            objective="listwise",
            train_file=str(path),
            eval_file=str(path),
            epochs=5,
            batch_size=4,
            lr=0.1,
            progress=False,
            cpu=True,
        )
    )
    result = RewardModelTrainer(model, cfg).train()
    assert model.w.item() > 0 and result["eval/spearman"] == pytest.approx(1.0)


def test_cli_train_and_eval(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(
        [
            "train",
            "--config",
            "rm/convnet_sharpness",
            f"train.output_dir={out}",
            "train.epochs=1",
            "data.n_train=64",
            "data.n_eval=32",
            "train.progress=false",
            "train.cpu=true",
            "reward_kwargs.resolution=16",
        ]
    )
    assert code == 0
    assert (out / "model" / "model.safetensors").is_file()
    capsys.readouterr()
    assert (
        cli_main(
            [
                "eval",
                "--reward",
                str(out / "model"),
                "--pairs",
                str(out / "data" / "eval.jsonl"),
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert 0.0 <= report["accuracy_without_ties"] <= 1.0 and report["n_pairs"] == 32
    with pytest.raises(SystemExit, match="unknown training option"):
        cli_main(
            ["train", "--config", "rm/convnet_sharpness", f"train.output_dir={out}", "train.lrr=1"]
        )
    with pytest.raises(SystemExit, match="unknown section"):
        cli_main(["train", "--config", "rm/convnet_sharpness", "optimiser.lr=1"])


def test_bf16_mixed_precision_and_accumulation(tmp_path, pairs):
    model = _small_model()
    cfg = _cfg(tmp_path, pairs, max_steps=3, grad_accum=2, mixed_precision="bf16")
    result = RewardModelTrainer(model, cfg).train()
    assert result["step"] == 3
    # evaluation runs in the model's own fp32 precision (no bf16 ties between pair scores)
    ev = load_examples(pairs["eval"], "pairwise")
    assert evaluate(model, ev, "pairwise") == pytest.approx(
        {k.removeprefix("eval/"): v for k, v in result.items() if k.startswith("eval/")}
    )
