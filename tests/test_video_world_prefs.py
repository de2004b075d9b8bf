"""Simulated video preferences in the world: golds, degradations, annotators, JSONL + MP4."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mmreward.world.data import Attributes
from video.world_prefs import (
    BLUR_MAX,
    DIMENSIONS,
    MQ_SCALE,
    NOISE_MAX,
    degrade,
    gold_mq,
    gold_ta,
    gold_vq,
    label_stats,
    make_video,
    rows_to_pairs,
    simulate_pairs,
    write_pairs,
)


@pytest.fixture(scope="module")
def rows():
    return simulate_pairs(24, seed=3, frames=6)


def test_gold_formulas_by_hand():
    assert gold_vq(0.0, 0.0) == 1.0
    assert gold_vq(BLUR_MAX, 0.0) == pytest.approx(0.5)
    assert gold_vq(BLUR_MAX / 2, NOISE_MAX) == pytest.approx(0.25)
    line = [(float(t), 2.0 * t) for t in range(6)]  # constant velocity: no jerk
    assert gold_mq(line) == pytest.approx(1.0)
    zigzag = [(0.0, 0.0), (4.0, 0.0), (0.0, 0.0), (4.0, 0.0)]  # |Δ²| = 8 at each step
    assert gold_mq(zigzag) == pytest.approx(math.exp(-8.0 / MQ_SCALE))
    asked = Attributes(7, "red", "dark", "small")
    assert gold_ta(asked, asked) == 1.0
    assert gold_ta(asked, Attributes(3, "red", "dark", "small")) == pytest.approx(0.5)
    assert gold_ta(asked, Attributes(3, "blue", "dark", "small")) == pytest.approx(0.2)


def test_degrade_blurs_and_adds_noise():
    rng = np.random.default_rng(0)
    frames = (rng.random((3, 16, 16, 3)) > 0.5).astype(np.uint8) * 255
    assert np.array_equal(degrade(frames, 0.0, 0.0, seed=0), frames)
    blurred = degrade(frames, 1.2, 0.0, seed=0).astype(np.float64)
    hf = lambda x: np.abs(np.diff(x, axis=2)).mean()  # noqa: E731
    assert hf(blurred) < 0.5 * hf(frames.astype(np.float64))
    grey = np.full((2, 32, 32, 3), 128, np.uint8)
    noisy = degrade(grey, 0.0, 0.1, seed=1).astype(np.float64) / 255
    assert noisy.std() == pytest.approx(0.1, rel=0.1)
    assert np.array_equal(degrade(grey, 0.0, 0.1, seed=1), degrade(grey, 0.0, 0.1, seed=1))


def test_expert_clips_move_more_smoothly():
    asked = Attributes(2, "green", "dark", "small")
    mq = {"expert": [], "nonexpert": []}
    rng = np.random.default_rng(0)
    for s in range(10):
        v = make_video(asked, "right", s, rng, frames=6, p_degrade=0.0, p_mismatch=0.0)
        mq[v.info["kind"]].append(v.gold["MQ"])
        assert v.gold["VQ"] == 1.0 and v.gold["TA"] == 1.0
        assert v.gold["Overall"] == pytest.approx(np.mean([v.gold[d] for d in ("VQ", "MQ", "TA")]))
    assert mq["expert"] and mq["nonexpert"]
    assert min(mq["expert"]) > max(mq["nonexpert"])


def test_pairs_are_seeded_and_labels_follow_gold(rows):
    again = simulate_pairs(24, seed=3, frames=6)
    for a, b in zip(rows, again):
        assert a["prompt"] == b["prompt"]
        assert all(a[d] == b[d] for d in DIMENSIONS)
        assert np.array_equal(a["A"].frames, b["A"].frames)
    assert {r[d] for r in rows for d in DIMENSIONS} <= {"A", "B", "same"}
    stats = label_stats(rows)
    for d in DIMENSIONS:
        assert stats[d]["label_accuracy_vs_gold"] >= 0.75, (d, stats[d])
        assert 0.0 <= stats[d]["tie_rate"] < 0.6
    # both videos of a pair answer one prompt; the golds vary across pairs
    assert len({r["A"].gold["VQ"] for r in rows}) > 3
    assert len({r["A"].gold["TA"] for r in rows}) > 1


def test_rows_to_pairs_and_jsonl_with_mp4(rows, tmp_path):
    pairs = rows_to_pairs(rows[:5])
    assert pairs.videos_a.shape == (5, 6, 3, 32, 32)
    assert float(pairs.videos_a.min()) >= 0.0 and float(pairs.videos_a.max()) <= 1.0
    expect = {"A": 1, "B": -1, "same": 0}
    for d in DIMENSIONS:
        assert pairs.labels[d].tolist() == [expect[r[d]] for r in rows[:5]]
    path = write_pairs(rows[:3], tmp_path, "test")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 3
    for line, r in zip(lines, rows[:3]):
        assert {"prompt", "path_A", "path_B", *DIMENSIONS} <= set(line)
        assert line["prompt"] == r["prompt"] and line["VQ"] == r["VQ"]
        assert line["gold_A"] == pytest.approx(r["A"].gold)
    from video.io import load_video

    clip = load_video(tmp_path / lines[0]["path_A"], num_frames=6, backend="pyav")
    frames = clip.frames
    assert tuple(frames.shape[-3:]) == (3, 32, 32) and frames.shape[-4] == 6
    ref = torch.from_numpy(rows[0]["A"].frames).permute(0, 3, 1, 2).float() / 255
    assert (frames.reshape(ref.shape) - ref).abs().mean() < 0.05  # lossy H.264, crf 12
