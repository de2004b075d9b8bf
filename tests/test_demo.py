"""The demo end to end on a small setting, and the report writers it is built on."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from mmreward.data import load_examples
from mmreward.demo import analytic_reward_names, run_demo
from mmreward.report import (
    Gallery,
    GalleryItem,
    Section,
    plot_curves,
    save_image_grid,
    save_png,
    write_gallery_html,
    write_json,
)
from tests.tiny.world import tiny_world

ANALYTIC = {
    "jpeg.compressibility",
    "jpeg.incompressibility",
    "colorfulness.hasler",
    "sharpness.laplacian",
}
WORLD = {"gold.world", "clip-head.world-proxy", "clipscore.world-tiny"}
N_PROMPTS, PER_PROMPT = 3, 3


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo on a tiny world build (the committed assets are exercised by `make demo`)."""
    out = tmp_path_factory.mktemp("demo")
    world = tiny_world()
    summary = run_demo(
        out,
        n_prompts=N_PROMPTS,
        per_prompt=PER_PROMPT,
        seed=0,
        progress=False,
        assets=world["assets"],
    )
    return out, summary


def test_analytic_rewards_are_found_in_the_registry():
    assert set(analytic_reward_names()) >= ANALYTIC
    assert "convnet.tiny" not in analytic_reward_names()


def test_demo_writes_every_file(demo):
    out, summary = demo
    for name in ("scores.jsonl", "summary.json", "report.html", "heldout.jsonl"):
        assert (out / name).is_file(), name
    for fig in summary["files"]["figures"]:
        assert (out / fig).is_file()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["checks"].keys() == summary["checks"].keys()
    assert not list(out.glob(".*.tmp")), "atomic writes left temporary files"


def test_summary_has_every_reward_and_preference_accuracy(demo):
    out, _ = demo
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["rewards"]) == WORLD | set(analytic_reward_names())
    assert summary["preference_accuracy"]["gold.world"] == 1.0  # gold agrees with itself
    for stats in summary["rewards"].values():
        assert stats["min"] <= stats["mean"] <= stats["max"]
        assert 0.0 <= stats["preference_accuracy_vs_gold"] <= 1.0
    data = summary["data"]
    assert data["n_images"] == N_PROMPTS * PER_PROMPT
    assert data["n_pairs"] == N_PROMPTS * PER_PROMPT * (PER_PROMPT - 1) // 2
    names = summary["spearman"]["names"]
    m = np.array(summary["spearman"]["matrix"], dtype=float)
    i, j = names.index("jpeg.compressibility"), names.index("jpeg.incompressibility")
    assert m[i, j] == pytest.approx(-1.0)
    assert [r["n"] for r in summary["gold_by_setting"]] == [N_PROMPTS] * PER_PROMPT
    assert summary["wall_time_s"] > 0 and summary["annotators"]["n_pairs"] == data["n_pairs"]


def test_scores_jsonl_has_one_row_per_sample(demo):
    out, summary = demo
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == summary["data"]["n_images"]
    for row in rows:
        assert {
            "id",
            "prompt",
            "image",
            "scores",
            "gold_sub_scores",
            "guidance_scale",
        } <= row.keys()
        assert set(row["scores"]) == set(summary["rewards"])
        assert (out / row["image"]).is_file()
        assert row["scores"]["jpeg.compressibility"] == -row["scores"]["jpeg.incompressibility"]


def test_labelled_pairs_are_training_data(demo):
    out, summary = demo
    examples = load_examples(out / "heldout.jsonl", "pairwise")
    assert len(examples) == 2 * summary["data"]["n_pairs"]  # two annotators per pair
    assert all(e.candidates[0].is_file() for e in examples)


def test_report_references_existing_images(demo):
    out, summary = demo
    text = (out / "report.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) >= 3 + 3 * 2 * min(6, summary["data"]["n_images"])
    for src in srcs:
        assert not src.startswith(("/", "http")), src
        assert (out / src).is_file(), src
    assert "<script" not in text and "http://" not in text and "https://" not in text
    for name in WORLD:
        assert f"<h2>{name}</h2>" in text
    assert "Where the proxy and gold disagree" in text and "How the world was built" in text


def test_gallery_html_escapes_text_and_checks_paths(tmp_path):
    png = save_png(torch.rand(3, 8, 12), tmp_path / "images" / "x.png")
    evil = '<script>alert("x")</script> & co'
    section = Section(
        evil,
        evil,
        table=[{"name": evil, "value": 1.23456789}],
        galleries=[Gallery(evil, [GalleryItem(png, evil, {evil: 0.5})])],
    )
    path = write_gallery_html(tmp_path / "report.html", evil, [section])
    text = path.read_text()
    assert "<script>" not in text
    assert "&lt;script&gt;" in text and "&amp; co" in text
    assert 'src="images/x.png"' in text  # absolute path made relative
    assert "1.235" in text
    # dict sections work too; a missing image is an error, not a broken link
    write_gallery_html(tmp_path / "r2.html", "t", [{"heading": "h", "figures": ["images/x.png"]}])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        write_gallery_html(
            tmp_path / "r3.html", "t", [{"heading": "h", "figures": ["missing.png"]}]
        )


def test_png_helpers(tmp_path):
    img = torch.rand(3, 5, 7)
    arr = np.asarray(Image.open(save_png(img, tmp_path / "a.png")))
    assert arr.shape == (5, 7, 3)
    assert np.abs(arr / 255.0 - img.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        save_png(img * 255, tmp_path / "b.png")
    grid = save_image_grid(
        [torch.rand(3, 4, 4), torch.rand(3, 6, 2), torch.rand(3, 4, 4)],
        tmp_path / "g.png",
        nrow=2,
        padding=1,
    )
    assert Image.open(grid).size == (2 * (4 + 1) + 1, 2 * (6 + 1) + 1)


def test_write_json_is_atomic_and_strict(tmp_path):
    path = write_json(
        tmp_path / "s.json",
        {"x": np.float32(2.5), "t": torch.arange(3), "nan": float("nan"), "p": Path("a/b")},
    )
    assert json.loads(path.read_text()) == {"x": 2.5, "t": [0, 1, 2], "nan": None, "p": "a/b"}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_plot_curves_writes_png(tmp_path):
    path = plot_curves(
        {"reward": ([0, 1, 2], [0.1, 0.4, 0.3])},
        tmp_path / "c.png",
        xlabel="step",
        ylabel="mean reward",
    )
    assert Image.open(path).format == "PNG"
    with pytest.raises(ValueError, match="xs"):
        plot_curves({"bad": ([0, 1], [1.0])}, tmp_path / "d.png")


def test_demo_alignment_runs_on_the_committed_world(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, n_prompts=2, per_prompt=2, progress=False, align_steps=1,
                       align_samples=8)  # fmt: skip
    runs = summary["alignment"]
    assert set(runs) == {"refl", "refl@gold.world"}
    assert runs["refl"]["train_reward"] == "clip-head.world-proxy"
    for r in runs.values():
        assert r["steps"] == 1 and r["gold"]["before"]["n"] == 8
        assert isinstance(r["reward_hacking"], bool)
    text = (out / "report.html").read_text()
    assert "Alignment efficacy on the built-in world" in text
    for src in re.findall(r'<img src="([^"]+)"', text):
        assert (out / unquote(src)).is_file(), src
    assert (out / "align" / "efficacy.json").is_file()
