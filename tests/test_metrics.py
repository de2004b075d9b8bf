"""Evaluation metrics against hand-worked examples, scipy and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from mmreward.metrics import (
    StepF1,
    expected_calibration_error,
    pairwise_accuracy,
    preference_accuracy_report,
    roc_auc,
    spearman,
    step_f1,
    tie_aware_accuracy,
    tie_threshold_sweep,
)

# ---------------------------------------------------------------- preference accuracy


def test_pairwise_accuracy_excludes_label_ties_and_half_credits_predicted_ties() -> None:
    score_a = [2.0, 0.0, 1.0, 3.0, 4.0]
    score_b = [1.0, 1.0, 1.0, 0.0, 0.0]
    label = [1, 1, -1, -1, 0]  # Δ = 1, -1, 0, 3, 4
    # kept: right, wrong, predicted tie (½), wrong → 1.5 / 4
    assert pairwise_accuracy(score_a, score_b, label) == pytest.approx(1.5 / 4)
    assert pairwise_accuracy(torch.tensor(score_a), torch.tensor(score_b), torch.tensor(label)) == (
        pytest.approx(0.375)
    )


def test_pairwise_accuracy_errors() -> None:
    with pytest.raises(ValueError, match="no non-tie pairs"):
        pairwise_accuracy([1.0], [0.0], [0])
    with pytest.raises(ValueError, match=r"score_b: expected shape \(2,\)"):
        pairwise_accuracy([1.0, 2.0], [0.0], [1, 1])
    with pytest.raises(ValueError, match=r"label: expected values in"):
        pairwise_accuracy([1.0], [0.0], [0.5])
    with pytest.raises(ValueError, match=r"score_a: contains NaN"):
        pairwise_accuracy([float("nan")], [0.0], [1])


def test_tie_aware_accuracy_hand_example() -> None:
    score_a = [1.0, 0.05, 0.0, 0.3, 0.0]
    score_b = [0.0, 0.0, 1.0, 0.0, 0.0]
    label = [1, 0, 1, 0, -1]  # Δ = 1, 0.05, -1, 0.3, 0
    # threshold 0.1 → pred [1, 0, -1, 1, 0]; correct: yes, yes, no, no, no → 2/5
    assert tie_aware_accuracy(score_a, score_b, label, threshold=0.1) == pytest.approx(0.4)
    # threshold 0.5 → pred [1, 0, -1, 0, 0]; correct: yes, yes, no, yes, no → 3/5
    assert tie_aware_accuracy(score_a, score_b, label, threshold=0.5) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="threshold"):
        tie_aware_accuracy(score_a, score_b, label, threshold=-0.1)


def test_sweep_finds_threshold_that_predicts_ties() -> None:
    # ties have |Δ| ≤ 0.1, decided pairs |Δ| ≥ 0.5 with the right sign
    score_a = [0.0, 0.05, 1.0, 0.0, 2.0, 0.3, -0.6]
    score_b = [0.1, 0.0, 0.0, 0.9, 1.5, 0.3, 0.0]
    label = [0, 0, 1, -1, 1, 0, -1]
    sweep = tie_threshold_sweep(score_a, score_b, label)
    assert sweep.best_accuracy == 1.0
    assert 0.1 - 1e-12 <= sweep.best_threshold < 0.5
    assert sweep.thresholds[0] == 0.0
    assert sweep.thresholds == sorted(sweep.thresholds)
    assert len(sweep.thresholds) == len(sweep.accuracies)
    assert tie_aware_accuracy(score_a, score_b, label, sweep.best_threshold) == 1.0
    # at threshold 0 only the exact tie (0.3 vs 0.3) is predicted as a tie → 5/7
    assert sweep.accuracies[0] == pytest.approx(5 / 7)


def test_sweep_matches_tie_aware_accuracy_everywhere() -> None:
    rng = np.random.default_rng(0)
    score_a, score_b = rng.normal(size=500), rng.normal(size=500)
    label = rng.choice([-1, 0, 1], size=500)
    sweep = tie_threshold_sweep(score_a, score_b, label)
    assert len(sweep.thresholds) <= 201
    for t, acc in list(zip(sweep.thresholds, sweep.accuracies, strict=True))[::20]:
        assert acc == pytest.approx(tie_aware_accuracy(score_a, score_b, label, t))
    custom = tie_threshold_sweep(score_a, score_b, label, thresholds=[0.5, 0.0, 0.2])
    assert custom.thresholds == [0.5, 0.0, 0.2]
    assert custom.best_accuracy == max(custom.accuracies)
    with pytest.raises(ValueError, match="thresholds"):
        tie_threshold_sweep(score_a, score_b, label, thresholds=[-1.0])


def test_preference_accuracy_report() -> None:
    report = preference_accuracy_report([1.0, 0.1, 0.0, 2.0], [0.0, 0.0, 1.0, 2.5], [1, 0, 1, -1])
    assert report["accuracy_without_ties"] == pytest.approx(2 / 3)
    assert report["n_pairs"] == 4
    assert report["n_ties"] == 1
    # threshold 0.1 makes the tie right and keeps |Δ| ≥ 0.5 decided → 3/4
    assert report["best_tie_threshold"] == pytest.approx(0.1)
    assert report["tie_aware_accuracy"] == pytest.approx(0.75)


# ------------------------------------------------------------------------ Spearman


def test_spearman_hand_example() -> None:
    # ranks x: 1 2 3 4, ranks y: 1 3 2 4 → 1 - 6·Σd²/(n(n²-1)) = 1 - 6·2/60 = 0.8
    assert spearman([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0]) == pytest.approx(0.8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, size=40).astype(float)  # many ties
    y = x + rng.integers(0, 3, size=40)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(torch.tensor(x), torch.tensor(y)) == pytest.approx(
        spearmanr(x, y).statistic, abs=1e-12
    )


def test_spearman_errors() -> None:
    with pytest.raises(ValueError, match=r"y: expected shape \(3,\)"):
        spearman([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 2"):
        spearman([1.0], [2.0])
    with pytest.raises(ValueError, match="x: contains NaN"):
        spearman([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="all values are equal"):
        spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])


# ------------------------------------------------------------------------- step F1


def test_step_f1_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    probs = rng.uniform(size=200)
    labels = (rng.uniform(size=200) < 0.6).astype(int)
    pred = (probs >= 0.4).astype(int)
    out = step_f1(probs, labels, threshold=0.4)
    assert isinstance(out, StepF1)
    assert out.f1_error == pytest.approx(f1_score(labels, pred, pos_label=0))
    assert out.f1_correct == pytest.approx(f1_score(labels, pred, pos_label=1))
    assert out.macro_f1 == pytest.approx(f1_score(labels, pred, average="macro"))
    assert out.accuracy == pytest.approx(accuracy_score(labels, pred))
    assert out.n_steps == 200


def test_step_f1_ragged_hand_example() -> None:
    probs = [torch.tensor([0.9, 0.8, 0.3]), torch.tensor([0.6, 0.2])]
    labels = [[1, 1, 0], [0, 1]]
    # pred correct: [1, 1, 0, 1, 0]; gold [1, 1, 0, 0, 1]
    # correct class: TP 2, FP 1, FN 1 → F1 = 4/6; error class: TP 1, FP 1, FN 1 → 2/4
    out = step_f1(probs, labels)
    assert out.f1_correct == pytest.approx(4 / 6)
    assert out.f1_error == pytest.approx(0.5)
    assert out.macro_f1 == pytest.approx((4 / 6 + 0.5) / 2)
    assert out.accuracy == pytest.approx(3 / 5)
    assert out.n_steps == 5
    with pytest.raises(ValueError, match=r"step_labels: expected values in \{0, 1\}"):
        step_f1([0.5], [2])
    with pytest.raises(ValueError, match=r"step_labels: expected shape \(5,\)"):
        step_f1(probs, [[1, 1, 0], [0]])


# ---------------------------------------------------------------------------- ECE


def test_ece_hand_computation() -> None:
    probs = [0.05, 0.15, 0.72, 0.78, 0.95]
    labels = [0, 1, 1, 0, 1]
    # 5 bins of width 0.2:
    #   [0, 0.2]:   p 0.05, 0.15 → conf 0.10, acc 0.5 → 2/5·0.40
    #   (0.6, 0.8]: p 0.72, 0.78 → conf 0.75, acc 0.5 → 2/5·0.25
    #   (0.8, 1]:   p 0.95      → conf 0.95, acc 1.0 → 1/5·0.05
    expected = 2 / 5 * 0.40 + 2 / 5 * 0.25 + 1 / 5 * 0.05
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(expected)
    assert expected_calibration_error([0.5, 0.5], [0, 1]) == pytest.approx(0.0)
    assert expected_calibration_error([0.0, 1.0], [1, 0], n_bins=3) == pytest.approx(1.0)


def test_ece_validation() -> None:
    with pytest.raises(ValueError, match=r"probs: expected values in \[0, 1\]"):
        expected_calibration_error([1.2], [1])
    with pytest.raises(ValueError, match=r"labels: expected values in \{0, 1\}"):
        expected_calibration_error([0.2], [0.5])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([0.2], [0], n_bins=0)


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 10, 200).astype(float)  # many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.4]) == pytest.approx(2.5 / 4)
    assert np.isnan(roc_auc([0, 0], [0.1, 0.2]))
    with pytest.raises(ValueError, match="labels"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="scores"):
        roc_auc([0, 1], [0.1, 0.2, 0.3])
