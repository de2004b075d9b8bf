"""The efficacy pipeline end to end on a tiny pipeline with analytic stand-in rewards."""

from __future__ import annotations

import json

import pytest
import torch

from diffusion_align.efficacy import run
from diffusion_align.evaluate import diversity, mean_ci, paired_difference

pytestmark = pytest.mark.usefixtures("one_thread")


def test_statistics_by_hand() -> None:
    ci = mean_ci(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    se = (5 / 3) ** 0.5 / 2  # sample std sqrt(5/3), n = 4
    assert ci["mean"] == 2.5 and ci["ci_high"] == pytest.approx(2.5 + 1.959964 * se, rel=1e-6)
    d = paired_difference(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([2.0, 2.1, 1.9]))
    assert d["mean"] == pytest.approx(1.0) and d["significant"]
    images = torch.zeros(3, 3, 2, 2)
    images[1] += 1.0  # same prompt: RMS distance 1 between images 0 and 1
    assert diversity(images, ["a", "a", "b"]) == pytest.approx(1.0)


def test_efficacy_run_writes_json_and_report(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a relative output folder, as the CLI passes it
    overrides = [
        "model.pretrained=tiny:sd",
        "reward=colorfulness.hasler",
        "data.prompts=[a red seven, a blue one]",
        "data.pretrain=null",
        "eval.rewards={}",
        "sample.num_steps=3",
        "algorithm.stop_range=[1, 2]",
        "train.batch_size=2",
        "train.gallery_prompts=2",
    ]
    rewards = {"gold": "sharpness.laplacian", "proxy": "colorfulness.hasler"}
    results = run("eff", ["refl"], steps=2, samples=4, model="tiny:sd", rewards=rewards,
                  prompts=["a red seven", "a blue one"], overrides=overrides,
                  train_rewards=["sharpness.laplacian", None])  # fmt: skip
    assert list(results["algorithms"]) == ["refl@sharpness.laplacian", "refl"]
    assert results["algorithms"]["refl"]["train_reward"] == "colorfulness.hasler"
    assert (
        results["algorithms"]["refl@sharpness.laplacian"]["train_reward"] == "sharpness.laplacian"
    )
    r = results["algorithms"]["refl"]
    assert r["steps"] == 2 and {"gold", "proxy", "diversity", "reward_hacking"} <= set(r)
    assert r["gold"]["before"]["n"] == 4
    saved = json.loads((tmp_path / "eff" / "efficacy.json").read_text())
    assert saved["algorithms"]["refl"]["proxy"]["difference"]["n"] == 4
    html = (tmp_path / "eff" / "report.html").read_text()
    assert "reward_curves.png" in html and "refl/after.png" in html
    assert "refl%40sharpness.laplacian/after.png" in html


def test_evaluation_reports_gold_sub_scores() -> None:
    import mmreward
    from diffusion_align.config import SampleConfig
    from diffusion_align.efficacy import compare
    from diffusion_align.evaluate import evaluate_policy
    from diffusion_align.policy import DiffusionPolicy
    from mmreward.world.gold import WEIGHTS

    policy = DiffusionPolicy.from_pretrained("tiny:sd")
    prompts = ["a small red seven on a dark background", "a large blue one on a light background"]
    gold = mmreward.load("gold.world")
    res = evaluate_policy(policy, prompts, {"gold": gold}, SampleConfig(num_steps=2),
                          n_samples=4, batch_size=3)  # fmt: skip
    assert set(res.scores) == {"gold", *(f"gold/{k}" for k in WEIGHTS)}
    # every attribute is named in these prompts: the score is the weighted mean of its parts
    parts = sum(w * res.scores[f"gold/{k}"] for k, w in WEIGHTS.items())
    torch.testing.assert_close(res.scores["gold"], parts / sum(WEIGHTS.values()))
    cmp = compare(res, res)
    assert cmp["gold/digit"]["difference"]["mean"] == 0.0
    assert not cmp["gold/digit"]["difference"]["significant"]


def test_evaluate_cli_scores_base_and_saved_runs(tmp_path, capsys) -> None:
    from diffusion_align.evaluate import main
    from diffusion_align.policy import DiffusionPolicy, LoraSpec

    # fresh LoRA adapters start at zero: the saved run must score exactly like the base
    DiffusionPolicy.from_pretrained("tiny:sd", lora=LoraSpec(rank=2)).save_pretrained(
        tmp_path / "run"
    )
    argv = [str(tmp_path / "run"), "--model", "tiny:sd", "--samples", "3", "--steps", "2",
            "--prompts", "world:test", "--json", str(tmp_path / "eval.json")]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["model"] for r in rows] == ["tiny:sd", str(tmp_path / "run")]
    assert rows[0]["gold"] == rows[1]["gold"] and "gold/digit" in rows[0]
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert [(r["model"], r["gold"]) for r in saved] == [(r["model"], r["gold"]) for r in rows]
    with pytest.raises(SystemExit):
        main(["--rewards", "gold"])
