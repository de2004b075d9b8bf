"""VideoGen-RewardBench-format evaluation: accuracies by hand, reading, skipping, outputs."""

from __future__ import annotations

import json

import pytest
import torch

from mmreward.interface import RewardModel, RewardOutput
from video.evaluate import evaluate_pairs, format_table, read_pairs
from video.world import make_clip, write_mp4

SCORES = {"v1.mp4": 3.0, "v2.mp4": 1.0, "v3.mp4": 2.0, "v4.mp4": 2.1, "v5.mp4": 0.0}
# (A, B, label): Δ = 2 ✓, −1 for label A ✗, −0.1 for "same", 3 for label B ✗, 1 ✓
ROWS = [
    ("v1.mp4", "v2.mp4", "A"),
    ("v2.mp4", "v3.mp4", "A"),
    ("v3.mp4", "v4.mp4", "same"),
    ("v1.mp4", "v5.mp4", "B"),
    ("v2.mp4", "v5.mp4", "A"),
]


def _write_pairs(path, rows, **extra):
    lines = [
        {"prompt": "a red seven", "path_A": a, "path_B": b, "Overall": lab, **extra}
        for a, b, lab in rows
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_accuracies_by_hand_from_scores(tmp_path):
    pairs = _write_pairs(tmp_path / "pairs.jsonl", ROWS)
    res = evaluate_pairs(SCORES, pairs)
    overall = res["dimensions"]["Overall"]
    # without ties: 4 non-tie pairs, 2 right → 0.5
    assert overall["accuracy_without_ties"] == pytest.approx(0.5)
    # with ties, ε swept over {0, 0.1, 1, 2, 3}: ε = 0.1 predicts the tie → 3/5;
    # (ε = 1 also turns Δ = −1 (wrong) and Δ = 1 (right) into ties → 2/5)
    assert overall["tie_aware_accuracy"] == pytest.approx(3 / 5)
    assert overall["best_tie_threshold"] == pytest.approx(0.1)
    assert overall["n_pairs"] == 5 and overall["n_ties"] == 1
    assert res["sweeps"]["Overall"]["thresholds"][0] == 0.0
    assert "Overall" in format_table(res)


def test_csv_labels_and_errors(tmp_path):
    csv = tmp_path / "bench.csv"
    csv.write_text(
        "prompt,path_A,path_B,Overall,VQ\na cat,v1.mp4,v2.mp4,A,B\na dog,v3.mp4,v4.mp4,same,\n"
    )
    pairs = read_pairs(csv)
    assert [p.labels for p in pairs] == [{"Overall": 1, "VQ": -1}, {"Overall": 0}]
    assert pairs[0].path_a == str(tmp_path / "v1.mp4")
    bad = _write_pairs(tmp_path / "bad.jsonl", [("v1.mp4", "v2.mp4", "C")])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: Overall: expected 'A', 'B' or 'same'"):
        read_pairs(bad)
    no_path = tmp_path / "nopath.jsonl"
    no_path.write_text(json.dumps({"prompt": "x", "path_A": "a.mp4", "Overall": "A"}) + "\n")
    with pytest.raises(ValueError, match="path_B"):
        read_pairs(no_path)
    with pytest.raises(KeyError, match="v9.mp4"):
        evaluate_pairs(SCORES, _write_pairs(tmp_path / "p.jsonl", [("v1.mp4", "v9.mp4", "A")]))


class InkReward(RewardModel):
    """Scores a video by its mean brightness (Overall) and its first frame's (VQ)."""

    inputs = ("prompts", "videos")
    sub_score_names = ("VQ",)

    def compute(self, batch):
        v = batch.videos
        return RewardOutput(scores=v.mean((1, 2, 3, 4)), sub_scores={"VQ": v[:, 0].mean((1, 2, 3))})


def test_reward_model_on_mp4_pairs_with_a_broken_file(tmp_path):
    frames, _ = make_clip("expert", seed=0, frames=8)
    write_mp4(tmp_path / "dark.mp4", (frames * 0.3).astype("uint8"))
    write_mp4(tmp_path / "bright.mp4", frames)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    pairs = _write_pairs(
        tmp_path / "pairs.jsonl",
        [
            ("bright.mp4", "dark.mp4", "A"),
            ("dark.mp4", "bright.mp4", "B"),
            ("dark.mp4", "broken.mp4", "A"),
        ],  # fmt: skip
        VQ="A",
    )
    res = evaluate_pairs(InkReward(), pairs, num_frames=4, out=tmp_path / "eval")
    assert res["n_pairs"] == 3 and res["n_skipped"] == 1
    assert str(tmp_path / "broken.mp4") in res["errors"]
    assert res["dimensions"]["Overall"]["accuracy_without_ties"] == 1.0
    assert res["dimensions"]["VQ"]["accuracy_without_ties"] == 0.5  # label A twice
    assert "MQ" not in res["dimensions"]
    scores = [json.loads(x) for x in (tmp_path / "eval" / "scores.jsonl").read_text().splitlines()]
    assert {tuple(s["frame_indices"]) for s in scores} == {(0, 2, 5, 7)}
    assert all(s["sampled_fps"] == pytest.approx(4.0) for s in scores)  # 4 of 8 frames at 8 fps
    assert (tmp_path / "eval" / "tie_sweep.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["dimensions"]["Overall"]["n_pairs"] == 2


def test_rejects_non_video_reward(tmp_path):
    from mmreward.analytic import Colorfulness

    pairs = _write_pairs(tmp_path / "pairs.jsonl", ROWS)
    with pytest.raises(ValueError, match="does not score videos"):
        evaluate_pairs(Colorfulness(), pairs)
    with pytest.raises(TypeError, match="reward_or_scores"):
        evaluate_pairs(torch.zeros(3), pairs)


def test_cli_world_then_eval(tmp_path, capsys):
    import argparse

    from video.cli import add_score_arguments, loader_from_args, main

    assert main(["world", "--out", str(tmp_path / "w"), "--n", "2", "--frames", "6",
                 "--no-progress"]) == 0  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "w" / "manifest.jsonl").read_text().splitlines()]
    pairs = tmp_path / "w" / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(
                {"prompt": e["prompt"], "path_A": e["video"], "path_B": n["video"], "Overall": "A"}
            )
            + "\n"  # fmt: skip
            for e, n in zip(rows[:2], rows[2:])
        )
    )
    code = main(["eval", "--reward", "video-frames.gold-world", "--pairs", str(pairs),
                 "--num-frames", "3", "--out", str(tmp_path / "ev"), "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "Overall" in printed and (tmp_path / "ev" / "metrics.json").is_file()
    # the score options: sampler flags reach the loader
    p = argparse.ArgumentParser()
    p.add_argument("--num-frames", type=int)
    p.add_argument("--fps", type=float)
    add_score_arguments(p)
    args = p.parse_args(["--num-frames", "3", "--sampler", "strided", "--stride", "2"])
    clip = loader_from_args(args)(tmp_path / "w" / rows[0]["video"])
    assert clip.indices == [0, 2, 4]  # span 5 of 6 frames, centred: start (6 − 5) // 2 = 0
    assert clip.sampler == "strided" and clip.fps == pytest.approx(8.0 / 2)
