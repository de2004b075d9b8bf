"""Run configs: every shipped recipe parses; bad keys and values are clear errors; the CLI runs."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

from diffusion_align.algorithms import get_algorithm
from diffusion_align.cli import SEARCH_METHODS, add_parser, load_config, main
from diffusion_align.config import AlignConfig, ConfigError

RECIPES = sorted(Path(str(resources.files("configs"))).joinpath("align").glob("*.yaml"))


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_algorithm_has_world_and_gpu_recipes() -> None:
    names = {p.stem for p in RECIPES}
    for algo in ("refl", "draft", "alignprop", "dpo", "d3po", "raft", "ddpo", "grpo"):
        assert {f"{algo}_world", f"{algo}_sd15", f"{algo}_sdxl"} <= names, algo


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses(path: Path) -> None:
    cfg = load_config(f"align/{path.stem}", [])
    if cfg.algorithm["name"] in SEARCH_METHODS:  # inference-time search, not a training loss
        from diffusion_align.bon import BoNConfig
        from diffusion_align.config import build
        from diffusion_align.ctrlz import CtrlZConfig

        options = {k: v for k, v in cfg.algorithm.items() if k != "name"}
        build(CtrlZConfig if cfg.algorithm["name"] == "ctrlz" else BoNConfig, options, "algorithm")
        return
    algo_cls = get_algorithm(cfg.algorithm["name"])
    algo = algo_cls.from_dict(cfg.algorithm, cfg.sample, rewards=[_Differentiable()])
    assert algo.name == cfg.algorithm["name"]


class _Differentiable:
    """Stands in for the recipe's reward (no weights are loaded here)."""

    differentiable = True
    reward_name = "stand-in"


def test_bad_keys_and_values_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match=r"train: unknown option\(s\) \['lrr'\]; valid: .*'lr'"):
        AlignConfig.from_dict({"train": {"lrr": 1.0}})
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['optimiser'\]"):
        AlignConfig.from_dict({"optimiser": {}})
    with pytest.raises(
        ConfigError,
        match=r"train.mixed_precision: expected one of \['no', 'fp16', 'bf16'\], got 'fp8'",
    ):
        AlignConfig.from_dict({"train": {"mixed_precision": "fp8"}})
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer, got 'four'"):
        AlignConfig.from_dict({"train": {"batch_size": "four"}})
    with pytest.raises(ConfigError, match="train.max_steps: expected ≥ 1"):
        AlignConfig.from_dict({"train": {"max_steps": 0}})
    assert AlignConfig.from_dict({"train": {"lr": "3e-5"}}).train.lr == 3e-5  # YAML's 3e-5 is a str
    with pytest.raises(ConfigError, match=r"algorithm: unknown option\(s\) \['bta'\]"):
        get_algorithm("dpo").from_dict({"name": "dpo", "bta": 1.0})
    with pytest.raises(
        ConfigError, match=r"algorithm.beta_convention: expected one of \['half', 'plain'\]"
    ):
        get_algorithm("dpo").from_dict({"name": "dpo", "beta_convention": "double"})
    with pytest.raises(ValueError, match="algorithm.name: expected one of"):
        get_algorithm("ppo")


def test_cli_runs_a_recipe_with_overrides_and_resumes(tmp_path, capsys) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"pretrained": "tiny:sd", "lora_rank": 2},
        "reward": "colorfulness.hasler",
        "algorithm": {"name": "draft", "k": 1},
        "sample": {"num_steps": 2},
        "data": {"prompts": ["a red seven", "a blue one"]},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "batch_size": 2,
                  "progress": False, "gallery_prompts": 0},
    }))  # fmt: skip
    assert main(["--config", str(recipe), "train.lr=1e-3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 1 and "train/reward" in out
    assert main(["--config", str(recipe), "train.lr=1e-3", "train.max_steps=2"]) == 0  # resumes
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert main(["--config", str(recipe), "train.lrr=1"]) == 2
    assert "train: unknown option(s) ['lrr']" in capsys.readouterr().err
    assert main(["--config", str(recipe), "sample.eta=-1"]) == 2


def test_add_parser_registers_align() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="mmreward")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["align", "--config", "align/refl_world", "train.lr=1e-4"])
    assert args.command == "align" and args.overrides == ["train.lr=1e-4"]


def test_core_cli_runs_align(tmp_path, capsys) -> None:
    from mmreward.cli import main as mmreward_main

    out = tmp_path / "run"
    args = ["align", "--config", "align/draft_world", "model.pretrained=tiny:sd",
            "reward=colorfulness.hasler", "sample.num_steps=2", "algorithm.k=1",
            "data.prompts=[a red seven]", "eval.prompts=null", "eval.rewards={}",
            f"train.output_dir={out}", "train.max_steps=1", "train.batch_size=1",
            "train.progress=false", "train.gallery_prompts=0"]  # fmt: skip
    assert mmreward_main(args) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 1
    assert (out / "metrics.jsonl").is_file()
    assert mmreward_main(["align", "--config", "align/draft_world", "model.bogus=1"]) == 2
    assert "model: unknown option(s) ['bogus']" in capsys.readouterr().err


def test_cli_search_mode_best_of_n_counts_nfe_and_resumes(tmp_path, capsys) -> None:
    out = tmp_path / "bon"
    args = ["--config", "align/bon_world", "model.pretrained=tiny:sd", "reward=colorfulness.hasler",
            "sample.num_steps=2", "sample.guidance_scale=1.0", "algorithm.n=2",
            "data.prompts=[a red seven, a blue one, a green two]", "eval.rewards={}",
            f"train.output_dir={out}"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert all(r["nfe"] == 2 * 2 for r in rows)  # N candidates × steps, no CFG
    assert summary["nfe_mean"] == 4 and (out / "report.html").is_file()
    assert main(args) == 0  # every prompt is done: nothing is sampled again
    again = (out / "samples.jsonl").read_text().splitlines()
    assert len(again) == 3
