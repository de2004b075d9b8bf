"""VisualPRM step scorer, Monte-Carlo labels and the VisualProcessBench evaluator."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import mmreward
from mmreward import RewardInput
from mmreward.data import PreferenceExample
from mmreward.errors import InputError
from mmreward.interface import RewardModel, RewardOutput
from mmreward.selection import aggregate_steps
from mmreward.train import RewardModelTrainer, TrainConfig
from vision_rm.vlm.evaluate import evaluate_process_bench, read_step_items, step_metrics
from vision_rm.vlm.mc_label import hard_labels, label_solution, label_solutions
from vision_rm.vlm.prm import VisualPRM, build_visualprm, new_prm, split_steps
from vision_rm.vlm.tiny import build_tiny_qwen2vl, save_tiny

QUESTIONS = [
    "What is the sum of the two digits in the image?",
    "Which digit in the image is larger, the left or the right one?",
    "What is the sum of the two digits in the image?",
]
STEPS = [
    ["The left digit is 3.", "The right digit is 5.", "3 + 5 = 8.", "The answer is 8."],
    ["The left digit is 7.", "The answer is left."],
    ["3 + 5 = 9.", "+", "The answer is 9.", "x", "y", "z"],  # '+' as a step is not a judgement
]


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_qwen2vl(seed=0)


@pytest.fixture()
def prm(tiny):
    model, processor = tiny
    return new_prm(copy.deepcopy(model), processor).eval()


def _images(n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 64, generator=g)


def test_one_forward_equals_per_step_forwards(prm):
    images = _images()
    with torch.no_grad():
        out = prm(prompts=QUESTIONS, steps=STEPS, images=images)
    separate = prm.score_steps_separately(QUESTIONS, STEPS, images)
    assert [len(s) for s in out.step_scores] == [len(s) for s in STEPS]
    for one, sep in zip(out.step_scores, separate):
        torch.testing.assert_close(one, sep, atol=1e-5, rtol=1e-4)
    # step scores are P('+') = σ(z+ − z−): the extras hold the logits
    for p, z in zip(out.step_scores, out.extras["step_logits"]):
        torch.testing.assert_close(p, torch.sigmoid(z))
    # the judgement differs across steps and items (the model reads the context)
    flat = torch.cat(out.step_scores)
    assert flat.std() > 0


def test_padding_side_and_batch_size_do_not_change_scores(prm):
    images = _images()
    with torch.no_grad():
        left = prm(prompts=QUESTIONS, steps=STEPS, images=images)
        prm.padding_side = "right"
        right = prm(prompts=QUESTIONS, steps=STEPS, images=images)
    one_by_one = prm.score(images, QUESTIONS, steps=STEPS, batch_size=1)
    for a, b, c in zip(left.step_scores, right.step_scores, one_by_one.step_scores):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(left.scores, one_by_one.scores, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("agg", ["min", "last", "product", "mean", "max", "sum_logprob"])
def test_scores_use_the_core_aggregators(tiny, agg):
    model, processor = tiny
    prm = new_prm(model, processor, aggregate=agg).eval()
    with torch.no_grad():
        out = prm(prompts=QUESTIONS, steps=STEPS, images=_images())
    torch.testing.assert_close(out.scores, aggregate_steps(out.step_scores, agg))


def test_text_only_and_token_options(tiny):
    model, processor = tiny
    prm = new_prm(model, processor, plus_token="1", minus_token="0").eval()
    assert prm.plus_id == processor.tokenizer.convert_tokens_to_ids("1")
    with torch.no_grad():
        out = prm(prompts=QUESTIONS[:2], steps=STEPS[:2])  # no images
    sep = prm.score_steps_separately(QUESTIONS[:2], STEPS[:2])
    for a, b in zip(out.step_scores, sep):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(InputError, match="plus_token"):
        VisualPRM(model, processor, plus_token="The answer is")
    with pytest.raises(ValueError, match="aggregate"):
        VisualPRM(model, processor, aggregate="median")
    with pytest.raises(InputError, match="steps"):
        prm(prompts=["q"], steps=[[]])


def test_save_and_load_reproduce_scores(prm, tmp_path):
    images = _images()
    with torch.no_grad():
        before = prm(prompts=QUESTIONS, steps=STEPS, images=images).scores
    prm.save_pretrained(tmp_path / "prm")
    loaded = mmreward.load(tmp_path / "prm")
    assert isinstance(loaded, VisualPRM) and loaded.reward_name == "visualprm.local"
    after = loaded.score(images, QUESTIONS, steps=STEPS).scores
    torch.testing.assert_close(before, after)


def test_registry_loads_a_hf_directory(tiny, tmp_path):
    model, processor = tiny
    folder = save_tiny(model, processor, tmp_path / "hf")
    prm = mmreward.load("visualprm.local", weights=folder, aggregate="min")
    assert isinstance(prm, VisualPRM) and prm.aggregate == "min"
    with pytest.raises(ValueError, match="weights"):
        build_visualprm(None)


def test_step_bce_training_follows_the_labels(tiny, tmp_path):
    """The core trainer ("steps" objective) teaches a cue: steps saying 'wrong' are '-'."""
    model, processor = tiny
    prm = new_prm(copy.deepcopy(model), processor)
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(16):
        labels = rng.integers(0, 2, size=3).tolist()
        steps = [f"Step {k}: {'right' if y else 'wrong'}." for k, y in enumerate(labels)]
        soft = [0.9 if y else 0.1 for y in labels]  # soft MC-style labels
        examples.append(
            PreferenceExample(
                prompt="Check the steps.", kind="steps", candidates=["\n\n".join(steps)],
                steps=steps, step_labels=soft, image=torch.rand(3, 32, 32),
            )
        )  # fmt: skip
    cfg = TrainConfig(
        output_dir=str(tmp_path / "run"), objective="steps", max_steps=25, batch_size=8,
        lr=3e-3, log_every=5, cpu=True, progress=False,
    )  # fmt: skip
    result = RewardModelTrainer(prm, cfg, examples, examples).train(resume=False)
    prm.eval()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < losses[0] - 0.05
    assert result["eval/step_macro_f1"] > 0.9
    with torch.no_grad():
        out = prm(prompts=["Check the steps."], steps=[["Step 0: wrong.", "Step 1: right."]],
                  images=torch.rand(1, 3, 32, 32))  # fmt: skip
    p = out.step_scores[0]
    assert p[0] < 0.5 < p[1]


# ------------------------------------------------------------------- Monte-Carlo labels
class _ScriptedPolicy:
    """Rollouts are correct iff the prefix contains no 'bad' step, then with rate 0.75."""

    def continue_solution(self, item, prefix, n, rng):
        if any("bad" in s for s in prefix):
            return [prefix + ["The answer is 0."] for _ in range(n)]
        k = round(0.75 * n)
        return [prefix + ["The answer is 1."]] * k + [prefix + ["The answer is 0."]] * (n - k)


def _correct(item, steps):
    return steps[-1] == "The answer is 1."


def test_monte_carlo_labels_by_hand():
    steps = ["good", "bad", "The answer is 0."]
    mc = label_solution(_ScriptedPolicy(), None, steps, n=8, is_correct=_correct)
    assert mc == [0.75, 0.0, 0.0]  # last step: the solution's own outcome
    assert hard_labels(mc) == [1.0, 0.0, 0.0]  # VisualPRM: mc > 0 → '+'
    assert hard_labels([0.2, 0.6], threshold=0.5) == [0.0, 1.0]
    rows = label_solutions(
        _ScriptedPolicy(), [None, None], [["good", "The answer is 1."], steps], 4, _correct,
        hard=True,
    )  # fmt: skip
    assert rows[0]["mc"] == [0.75, 1.0] and rows[0]["labels"] == [1.0, 1.0]
    assert rows[1]["labels"] == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="n:"):
        label_solution(_ScriptedPolicy(), None, steps, n=0, is_correct=_correct)


def test_split_steps():
    assert split_steps("a\n\nb\n\n\n\nc ") == ["a", "b", "c"]
    assert split_steps("one line") == ["one line"]


# ------------------------------------------------------------- VisualProcessBench eval
class _FixedPRM(RewardModel):
    """Step probabilities looked up from the step text ('p=0.8')."""

    inputs = ("prompts", "steps")

    def compute(self, batch: RewardInput) -> RewardOutput:
        probs = [torch.tensor([float(s.split("=")[1]) for s in steps]) for steps in batch.steps]
        return RewardOutput(scores=torch.stack([p.mean() for p in probs]), step_scores=probs)


def test_evaluator_f1_and_ece_against_hand_computation(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "a.png")
    rows = [
        {  # VisualProcessBench layout: 1 correct, -1 wrong, 0 neutral
            "image": ["a.png"], "question": "q1", "data_source": "s1",
            "response": {"steps": ["p=0.9", "p=0.2", "p=0.7"],
                         "process_correctness": [1, -1, 0]},
        },
        {  # flat layout, text-only
            "question": "q2", "steps": ["p=0.6", "p=0.4", "p=0.1"], "labels": [0, 1, 0],
            "data_source": "s2",
        },
    ]  # fmt: skip
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = evaluate_process_bench(_FixedPRM(), path, out_dir=tmp_path / "out", progress=False)
    # non-neutral steps: p = [0.9, 0.2, 0.6, 0.4, 0.1], y = [1, 0, 0, 1, 0]
    # predicted correct (p ≥ 0.5): [1, 0, 1, 0, 0]
    # error class positive: tp = 2 (0.2, 0.1), fp = 1 (0.4 on a correct step), fn = 1 (0.6)
    assert report["f1_error"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # correct class positive: tp = 1 (0.9), fp = 1 (0.6), fn = 1 (0.4)
    assert report["f1_correct"] == pytest.approx(2 / 4)
    assert report["accuracy"] == pytest.approx(3 / 5) and report["n_steps"] == 5
    # ECE, 10 bins: each step alone in its bin → mean |y − p|
    ece = np.mean(np.abs(np.array([1, 0, 0, 1, 0]) - np.array([0.9, 0.2, 0.6, 0.4, 0.1])))
    assert report["ece"] == pytest.approx(ece)
    assert set(report["by_source"]) == {"s1", "s2"}
    out = tmp_path / "out"
    assert (out / "metrics.json").is_file() and (out / "calibration.png").stat().st_size > 0
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert preds[0]["labels"] == [1, 0, None]


def test_evaluator_rejects_bad_rows(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "steps": ["a", "b"], "labels": [1]}) + "\n")
    with pytest.raises(ValueError, match="labels"):
        read_step_items(bad)
    bad.write_text(
        json.dumps({"question": "q", "response": {"steps": ["a"], "process_correctness": [2]}})
        + "\n"
    )
    with pytest.raises(ValueError, match="process_correctness"):
        read_step_items(bad)
    with pytest.raises(ValueError, match="neutral"):
        step_metrics([[0.5]], [[None]])
