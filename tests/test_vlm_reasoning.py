"""The world's two-digit reasoning task: items, policy errors, labels, selection rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vision_rm.vlm.evaluate import read_step_items
from vision_rm.vlm.mc_label import label_solution
from vision_rm.vlm.reasoning import (
    STUDY_ARCH,
    DigitPolicy,
    PolicyConfig,
    final_answer,
    is_correct,
    majority_vote,
    make_items,
    pretrain_vision,
    selection_accuracy,
    solution_steps,
    step_truth,
    vision_probe,
    within_question_auc,
    write_process_bench,
)


@pytest.fixture(scope="module")
def policy():
    return DigitPolicy()


def test_items_are_seeded_and_show_their_digits():
    from mmreward.world.data import _digits

    a, b = make_items(6, "test", seed=3), make_items(6, "test", seed=3)
    assert all(torch.equal(x.image, y.image) for x, y in zip(a, b))
    _, labels = _digits()
    for it in a:
        assert it.image.shape == (3, 32, 64) and 0 <= it.image.min() <= it.image.max() <= 1
        assert (labels[it.scans[0]], labels[it.scans[1]]) == (it.left, it.right)
        assert it.kind in ("sum", "compare")
    assert make_items(6, "test", seed=4)[0].id != a[0].id


def test_answers_and_step_truth_by_hand():
    (it,) = make_items(1, "test", seed=0)
    it.kind, it.left, it.right = "sum", 3, 5
    good = solution_steps("sum", 3, 5, "8", "8")
    assert good == [
        "The left digit is 3.",
        "The right digit is 5.",
        "3 + 5 = 8.",
        "The answer is 8.",
    ]
    assert is_correct(it, good) and step_truth(it, good) == [1, 1, 1, 1]
    misread = solution_steps("sum", 4, 5, "9", "9")  # right arithmetic on a misread digit
    assert step_truth(it, misread) == [0, 1, 0, 0] and not is_correct(it, misread)
    slip = solution_steps("sum", 3, 5, "9", "9")
    assert step_truth(it, slip) == [1, 1, 0, 0]
    lucky = solution_steps("sum", 4, 4, "8", "8")  # two misreads that cancel out
    assert is_correct(it, lucky) and step_truth(it, lucky) == [0, 0, 0, 1]
    it.kind, it.left, it.right = "compare", 7, 2
    assert it.answer == "left"
    cmp = solution_steps("compare", 7, 2, "is larger than", "left")
    assert cmp[2] == "7 is larger than 2." and step_truth(it, cmp) == [1, 1, 1, 1]
    assert final_answer(["no answer here"]) is None


def test_policy_errors_depend_on_the_image(policy):
    items = make_items(120, "test", seed=1)
    rng = np.random.default_rng(0)
    p_true = np.array([policy.read_probs(s)[d] for it in items
                       for s, d in zip(it.scans, (it.left, it.right))])  # fmt: skip
    misread = []
    for it in items:
        sols = policy.sample(it, 16, rng)
        misread += [np.mean([step_truth(it, s)[0] == 0 for s in sols]),
                    np.mean([step_truth(it, s)[1] == 0 for s in sols])]  # fmt: skip
    misread = np.array(misread)
    ambiguous = p_true < np.median(p_true)
    assert misread[ambiguous].mean() > 2 * misread[~ambiguous].mean()  # unclear scans err more
    # arithmetic slips happen with the configured rate on clean readings
    cfg = PolicyConfig(sharpness=100.0, arithmetic_slip=0.5, comparison_slip=0.0, copy_slip=0.0)
    sharp = DigitPolicy(cfg)
    sums = [it for it in items if it.kind == "sum"]
    slips = [step_truth(it, sharp.sample(it, 1, rng)[0])[2] == 0 for it in sums for _ in range(8)]
    assert 0.35 < np.mean(slips) < 0.65


def test_continuation_keeps_the_prefix_and_mc_labels(policy):
    (it,) = make_items(1, "test", seed=2)
    it.kind = "sum"  # a misread in a sum is never recovered
    wrong = (it.left + 1) % 10
    prefix = [f"The left digit is {wrong}."]
    rng = np.random.default_rng(0)
    for sol in policy.continue_solution(it, prefix, 8, rng):
        assert sol[0] == prefix[0] and len(sol) == 4
    # with no slips and sharp reading, a misread sum is never recovered: MC 0 throughout
    exact = DigitPolicy(PolicyConfig(sharpness=1e4, arithmetic_slip=0, copy_slip=0))
    sol = exact.continue_solution(it, prefix, 1, rng)[0]
    mc = label_solution(exact, it, sol, n=16, is_correct=is_correct, seed=0)
    assert mc == [0.0, 0.0, 0.0, 0.0]
    right = exact.greedy(it)
    assert label_solution(exact, it, right, n=16, is_correct=is_correct) == [1.0] * 4
    with pytest.raises(ValueError, match="prefix"):
        policy.continue_solution(it, ["I think it is a seven."], 1, rng)


def test_majority_vote_and_selection_accuracy_by_hand():
    assert majority_vote(["8", "9", "9", None]) == 1
    assert majority_vote(["8", "9"]) == 0  # ties → the first
    assert majority_vote([None, None]) == 0
    correct = np.array([[1, 0, 0, 0], [0, 0, 1, 1]], dtype=float)
    answers = [["8", "9", "9", "7"], ["3", "4", "5", "5"]]
    scores = {"rm": np.array([[0.1, 0.9, 0.0, 0.0], [0.0, 0.0, 0.2, 0.1]])}
    acc = selection_accuracy(correct, answers, scores, n=4)
    # single: (1/4 + 2/4)/2; majority: q1 picks "9" (wrong), q2 picks "5" (right) → 1/2
    assert acc["single"] == pytest.approx(0.375)
    assert acc["majority"] == pytest.approx(0.5)
    assert acc["oracle"] == pytest.approx(1.0)
    assert acc["rm"] == pytest.approx(0.5)  # q1 → index 1 (wrong), q2 → index 2 (right)
    # weighted vote: q1 "9" (0.9 + 0.0) vs "8" (0.1) → "9" wrong; q2 "5" (0.2 + 0.1) right
    votes = selection_accuracy(correct, answers, scores, n=4, vote_scores={"v": scores["rm"]})
    assert votes["v"] == pytest.approx(0.5)
    flip = {"v": np.array([[0.9, 0.3, 0.3, 0.0], [0.9, 0.0, 0.2, 0.1]])}  # "8": 0.9 > "9": 0.6
    assert selection_accuracy(correct, answers, scores, n=4, vote_scores=flip)["v"] == 0.5
    sub = selection_accuracy(correct, answers, scores, n=1, draws=400, seed=0)
    assert sub["single"] == pytest.approx(sub["rm"]) == pytest.approx(sub["oracle"])
    assert sub["single"] == pytest.approx(0.375, abs=0.05)
    with pytest.raises(ValueError, match="n:"):
        selection_accuracy(correct, answers, scores, n=5)


def test_process_bench_export_reads_back(policy, tmp_path):
    items = make_items(2, "test", seed=5)
    rng = np.random.default_rng(0)
    sols = [s for it in items for s in policy.sample(it, 2, rng)]
    owner = [0, 0, 1, 1]
    path = write_process_bench(tmp_path / "bench" / "test.jsonl", items, sols, owner)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows[0]["response"]["steps"] == sols[0]
    back = read_step_items(path)
    for b, s, i in zip(back, sols, owner):
        assert b.labels == step_truth(items[i], s) and b.image.is_file()
        assert b.question == items[i].question


def test_within_question_auc_by_hand():
    correct = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=bool)
    scores = np.array([[0.5, 0.9, 0.1], [0.3, 0.3, 0.3], [0.0, 1.0, 2.0]])
    # q1: 0.5 > 0.1, 0.5 < 0.9 → 1 of 2; q2: two ties → ½ + ½; q3 has no (right, wrong) pair
    assert within_question_auc(correct, scores) == pytest.approx((1 + 1) / 4)
    assert within_question_auc(correct, -scores) == pytest.approx((1 + 1) / 4)
    assert within_question_auc(correct[:2], np.array([[1, 0, 0], [2, 2, 0]])) == 1.0
    # only the marked wrong candidates: q1 keeps 0.9 (a loss), q2 keeps nothing marked
    mask = np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=bool)
    assert within_question_auc(correct, scores, mask) == 0.0
    with pytest.raises(ValueError, match="wrong_mask"):
        within_question_auc(correct, scores, mask[:2])
    assert np.isnan(within_question_auc(correct[2:], scores[2:]))
    with pytest.raises(ValueError, match="scores"):
        within_question_auc(correct, scores[:, :2])


def test_vision_pretraining_makes_the_tower_read_held_out_digits():
    from vision_rm.vlm.tiny import build_tiny_qwen2vl

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, processor = build_tiny_qwen2vl(seed=0, **STUDY_ARCH)
        before = vision_probe(model, processor, n_train=400, n_test=300)
        losses = pretrain_vision(
            model, processor, steps=150, batch_size=32, n_images=2000, decay=False,
            progress=False,
        )  # fmt: skip
        after = vision_probe(model, processor, n_train=400, n_test=300)
    finally:
        torch.set_num_threads(n)
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.1
    assert before < 0.15  # a random tower: chance level
    assert after > before + 0.1  # test-split scans, unseen in pre-training


def test_binary_auc_and_gold_solution_by_hand():
    from mmreward.metrics import roc_auc as binary_auc
    from vision_rm.vlm.reasoning import gold_solution

    # positives 0.9, 0.4; negatives 0.5, 0.4 → (1 + 1 + 0 + ½) / 4
    assert binary_auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.4]) == pytest.approx(2.5 / 4)
    assert np.isnan(binary_auc([1, 1], [0.2, 0.3]))
    (it,) = make_items(1, "test", seed=0)
    it.kind, it.left, it.right = "compare", 2, 2
    assert gold_solution(it) == [
        "The left digit is 2.",
        "The right digit is 2.",
        "2 equals 2.",
        "The answer is equal.",
    ]
    assert step_truth(it, gold_solution(it)) == [1, 1, 1, 1]


def test_alignment_trains_merger_and_lm_only_and_reading_accuracy():
    from vision_rm.vlm.reasoning import align_reading, reading_accuracy
    from vision_rm.vlm.tiny import build_tiny_qwen2vl

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, processor = build_tiny_qwen2vl(seed=0, **STUDY_ARCH)
        model.model.visual.requires_grad_(False)
        flags = {k: p.requires_grad for k, p in model.named_parameters()}
        before = {k: p.detach().clone() for k, p in model.named_parameters()}
        items = make_items(64, "train", seed=9)
        losses = align_reading(model, processor, items, steps=12, batch_size=8, progress=False)
        held_out = make_items(40, "test", seed=9)
        acc = reading_accuracy(model, processor, held_out, batch_size=16)
        acc_shuffled = reading_accuracy(model, processor, held_out, batch_size=16, shuffle=True)
    finally:
        torch.set_num_threads(n)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3  # the caption template is learnt
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags  # restored
    changed = {k for k, p in model.named_parameters() if not torch.equal(p, before[k])}
    assert any(k.startswith("model.visual.merger") for k in changed)
    assert any(k.startswith("model.language_model") for k in changed)
    assert not any(k.startswith("model.visual.blocks") for k in changed)  # tower stays
    for a in (acc, acc_shuffled):
        assert set(a) == {"left", "right", "both_mean"} and 0 <= a["left"] <= 1
        assert a["both_mean"] == pytest.approx((a["left"] + a["right"]) / 2)


def test_command_line_maps_onto_the_study_config():
    from vision_rm.vlm.reasoning import StudyConfig, parse_args

    args, cfg = parse_args(["--out", "x"])
    assert cfg == StudyConfig() and args.out == "x" and args.threads == 1
    assert cfg.align_steps > 0 and cfg.train_items * cfg.samples_per_item == 24000
    _, cfg = parse_args(
        [
            "--out",
            "x",
            "--align-steps",
            "0",
            "--no-hard-labels",
            "--ns",
            "2",
            "4",
            "--rm-lr",
            "1e-3",
        ]
    )
    assert (cfg.align_steps, cfg.hard_labels, cfg.ns, cfg.rm_lr) == (0, False, (2, 4), 1e-3)
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--align-steps", "many"])
