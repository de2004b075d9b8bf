"""The efficacy pipeline end to end on a tiny pipeline with analytic stand-in rewards."""

from __future__ import annotations

import json

import pytest
import torch

from diffusion_align.efficacy import run
from diffusion_align.evaluate import diversity, mean_ci, paired_difference

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_refl(num_steps: int, stop_range: str, gallery_prompts: int) -> list[str]:
    """Overrides that run the ReFL world recipe on the tiny pipeline with stand-in rewards."""
    return [
        "model.pretrained=tiny:sd",
        "reward=colorfulness.hasler",
        "data.prompts=[a red seven, a blue one]",
        "data.pretrain=null",
        "eval.rewards={}",
        f"sample.num_steps={num_steps}",
        f"algorithm.stop_range={stop_range}",
        "train.batch_size=2",
        f"train.gallery_prompts={gallery_prompts}",
    ]


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
    overrides = tiny_refl(num_steps=3, stop_range="[1, 2]", gallery_prompts=2)
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


def test_evaluate_cli_best_of_k_reports_the_best_draw_per_item(capsys) -> None:
    import mmreward
    from diffusion_align.config import SampleConfig
    from diffusion_align.evaluate import evaluate_policy, main
    from diffusion_align.policy import DiffusionPolicy

    argv = ["--model", "tiny:sd", "--samples", "3", "--steps", "2", "--best-of", "2",
            "--eta", "1.0", "--prompts", "world:test"]  # fmt: skip
    assert main(argv) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    # by hand: each of the 3 items drawn twice (consecutive), the better draw by gold kept
    from diffusion_align.data import read_prompts

    prompts = read_prompts("world:test")
    items = [prompts[i] for i in range(3) for _ in range(2)]
    res = evaluate_policy(DiffusionPolicy.from_pretrained("tiny:sd"), items,
                          {"gold": mmreward.load("gold.world")},
                          SampleConfig(num_steps=2, guidance_scale=3.0, eta=1.0), 6, seed=1234)  # fmt: skip
    gold = res.scores["gold"].view(3, 2)
    best = gold.argmax(1) + torch.tensor([0, 2, 4])
    assert row["gold"] == pytest.approx(gold.mean().item(), abs=1e-6)
    assert row["best_of_2/gold"] == pytest.approx(gold.max(1).values.mean().item(), abs=1e-6)
    assert row["best_of_2/gold/digit"] == pytest.approx(
        res.scores["gold/digit"][best].mean().item(), abs=1e-6
    )
    with pytest.raises(SystemExit):
        main(["--best-of", "0"])


def test_pool_seeds_by_hand() -> None:
    from diffusion_align.efficacy import pool_seeds

    before = {"gold": torch.zeros(4)}
    afters = [
        {"gold": torch.tensor([1.0, 2.0, 3.0, 4.0])},
        {"gold": torch.tensor([2.0, 3.0, 4.0, 5.0])},
    ]
    p = pool_seeds(before, afters)["gold"]
    assert p["per_seed"] == pytest.approx([2.5, 3.5])
    # seed-averaged: the per-item mean after is [1.5, 2.5, 3.5, 4.5]
    ref = paired_difference(before["gold"], torch.tensor([1.5, 2.5, 3.5, 4.5]))
    assert p["difference"]["mean"] == pytest.approx(3.0)
    assert p["difference"]["ci_low"] == pytest.approx(ref["ci_low"])
    # between seeds: mean 3, sd sqrt(0.5), t(0.975, 1 dof) = 12.7062
    half = 12.706205 * 0.5**0.5 / 2**0.5
    assert p["between_seeds"]["ci_low"] == pytest.approx(3.0 - half, rel=1e-5)
    assert p["between_seeds"]["ci_high"] == pytest.approx(3.0 + half, rel=1e-5)
    # the sample-level interval excludes 0, the between-seed one does not: not significant
    assert ref["significant"] and p["between_seeds"]["ci_low"] < 0 and not p["significant"]
    # three consistent seeds: both intervals above 0
    afters.append({"gold": torch.tensor([1.5, 2.5, 3.5, 4.5])})
    pooled = pool_seeds(before, afters)
    assert pooled["gold"]["significant"] and pooled["gold_raised"] and pooled["seeds"] == 3
    with pytest.raises(ValueError, match="at least 2"):
        pool_seeds(before, afters[:1])
    with pytest.raises(ValueError, match="gold: 3 items after, 4 before"):
        pool_seeds(before, [{"gold": torch.zeros(3)}] * 2)


def test_training_seeds_are_pooled_in_one_run_and_across_folders(tmp_path, monkeypatch) -> None:
    from diffusion_align.efficacy import main, pool_runs

    monkeypatch.chdir(tmp_path)
    overrides = tiny_refl(num_steps=2, stop_range="[1, 1]", gallery_prompts=0)
    kw = dict(steps=1, samples=4, model="tiny:sd", prompts=["a red seven", "a blue one"],
              rewards={"gold": "sharpness.laplacian", "proxy": "colorfulness.hasler"})  # fmt: skip
    res = run("both", ["refl"], overrides=overrides, train_seeds=[0, 1], **kw)
    assert list(res["algorithms"]) == ["refl.seed0", "refl.seed1"]
    assert [r["train_seed"] for r in res["algorithms"].values()] == [0, 1]
    pooled = res["pooled"]["refl"]
    per_seed = [r["gold"]["difference"]["mean"] for r in res["algorithms"].values()]
    assert pooled["gold"]["per_seed"] == pytest.approx(per_seed)
    assert pooled["train_seeds"] == [0, 1]
    assert "Pooled over training seeds" in (tmp_path / "both" / "report.html").read_text()
    # the same seeds run in two folders pool to the same figures
    run("s0", ["refl"], overrides=[*overrides, "train.seed=0"], **kw)
    run("s1", ["refl"], overrides=[*overrides, "train.seed=1"], **kw)
    across = pool_runs(["s0", "s1"])["refl"]
    assert across["gold"]["per_seed"] == pytest.approx(per_seed)
    assert main(["--pool", "s0", "s1", "--out", "pooled"]) == 0
    assert json.loads((tmp_path / "pooled" / "pooled.json").read_text())["refl"]["seeds"] == 2
    # runs of different recipes are not pooled as seeds
    run("lr", ["refl"], overrides=[*overrides, "train.seed=2", "train.lr=1e-3"], **kw)
    with pytest.raises(ValueError, match="differ in more than train.seed"):
        pool_runs(["s0", "lr"])


def test_sft_probe_fine_tunes_fresh_adapters_on_a_fixed_set() -> None:
    from diffusion_align.data import read_prompts
    from diffusion_align.sft_probe import fixed_set, run

    prompts = read_prompts("world:test")[:2]
    res = run(model="tiny:sd", data="best-of-3", n=2, steps=2, lr=1e-2, batch_size=2,
              lora_rank=2, samples=2, guidances=(1.0,), prompts=prompts)  # fmt: skip
    kept, every = res["set"]["kept"], res["set"]["all"]
    assert kept["gold"] >= every["gold"] and set(kept) == set(every) == set(
        res["set"]["round_trip"]
    )
    assert res["before"]["cfg 1"]["gold"] != res["after"]["cfg 1"]["gold"]  # the adapters moved
    with pytest.raises(ValueError, match="best-of-K"):
        fixed_set(None, "best-of-0", prompts, 2, {})
    images, texts, summary = fixed_set(None, "renders", prompts, 3, {})
    assert images.shape[0] == 3 and len(texts) == 3 and summary == {"data": "renders", "n": 3}
