"""VLM Best-of-N: generation (greedy + sampled), scoring, selection, resumable JSONL, CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from PIL import Image

from mmreward.selection import aggregate_steps
from vision_rm.vlm.bon import (
    BoNItem,
    VLMGenerator,
    read_bon_items,
    run_best_of_n,
    score_candidates,
)
from vision_rm.vlm.cli import main as bon_main
from vision_rm.vlm.prm import new_prm
from vision_rm.vlm.tiny import build_tiny_qwen2vl, save_tiny

CANDIDATES = [
    "The left digit is 3.\n\nThe right digit is 5.\n\n3 + 5 = 8.\n\nThe answer is 8.",
    "The left digit is 3.\n\nThe answer is 9.",
    "The answer is 7.",
]


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_qwen2vl(seed=0)


@pytest.fixture(scope="module")
def prm(tiny):
    model, processor = tiny
    return new_prm(copy.deepcopy(model), processor).eval()


class _Fixed:
    """A generator with scripted candidates (item "boom" fails)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def generate(self, question, image, n, seed):
        self.calls.append(question)
        if question == "boom":
            raise RuntimeError("generation failed")
        return CANDIDATES[:n]


def _items_file(tmp_path) -> str:
    Image.new("RGB", (64, 32), (200, 20, 20)).save(tmp_path / "a.png")
    rows = [
        {"id": "a", "question": "What is the sum of the two digits?", "image": "a.png"},
        {"id": "b", "question": "boom", "image": "a.png"},
        {"id": "c", "question": "What is the sum?", "image": "missing.png"},
        {"id": "d", "question": "What is 3 + 5?"},  # text-only
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_generator_greedy_first_and_seeded_samples(tiny):
    model, processor = tiny
    gen = VLMGenerator(model, processor, temperature=1.0, top_p=0.95, max_new_tokens=6)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = gen.generate("What is in the image?", image, n=4, seed=1)
    b = gen.generate("What is in the image?", image, n=4, seed=1)
    c = gen.generate("What is in the image?", image, n=4, seed=2)
    assert len(a) == 4 and a == b  # seeded
    assert a[0] == c[0]  # the greedy answer does not depend on the seed
    assert a[1:] != c[1:]
    assert gen.generate("What is in the image?", image, n=1, seed=5) == [a[0]]
    with pytest.raises(ValueError, match="temperature"):
        VLMGenerator(model, processor, temperature=0.0)


def test_score_candidates_with_a_prm_and_an_aggregator(prm):
    image = torch.rand(3, 32, 64)
    scores, steps = score_candidates(prm, "What is the sum?", image, CANDIDATES, aggregate="min")
    assert [len(s) for s in steps] == [4, 2, 1]
    expected = prm.score(
        image.expand(3, -1, -1, -1), "What is the sum?",
        steps=[c.split("\n\n") for c in CANDIDATES],
    )  # fmt: skip
    torch.testing.assert_close(scores, aggregate_steps(expected.step_scores, "min"))
    with pytest.raises(ValueError, match="aggregate"):
        score_candidates(prm, "q", image, CANDIDATES, aggregate="median")


def test_run_writes_all_candidates_resumes_and_records_bad_items(prm, tmp_path):
    items = read_bon_items(_items_file(tmp_path))
    out = tmp_path / "bon.jsonl"
    gen = _Fixed()
    summary = run_best_of_n(items, gen, prm, n=3, out_path=out, aggregate="mean", progress=False)
    assert summary == {"done": 2, "skipped": 0, "failed": 2, "out": str(out)}
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"a", "b", "c", "d"}
    assert "RuntimeError" in rows["b"]["error"] and "missing.png" in rows["c"]["error"]
    a = rows["a"]
    assert [c["text"] for c in a["candidates"]] == CANDIDATES
    assert [c["greedy"] for c in a["candidates"]] == [True, False, False]
    scores = [c["score"] for c in a["candidates"]]
    assert a["selected"] == scores.index(max(scores))
    assert a["selected_text"] == CANDIDATES[a["selected"]]
    for c in a["candidates"]:
        assert c["score"] == pytest.approx(sum(c["step_scores"]) / len(c["step_scores"]))
    assert "image" not in rows["d"] and rows["a"]["image"].endswith("a.png")
    # rerun: nothing new is generated; errors stay recorded unless retried
    gen2 = _Fixed()
    again = run_best_of_n(items, gen2, prm, n=3, out_path=out, progress=False)
    assert again["skipped"] == 4 and gen2.calls == []
    retry = run_best_of_n(items, gen2, prm, n=3, out_path=out, retry_errors=True, progress=False)
    assert retry["skipped"] == 2 and retry["failed"] == 2 and len(gen2.calls) == 1
    assert len(out.read_text().splitlines()) == 4  # stale error rows replaced, not duplicated


def test_interrupted_line_is_redone(prm, tmp_path):
    out = tmp_path / "bon.jsonl"
    out.write_text('{"id": "a", "candidates": [{"te')  # a write cut by a crash
    items = [BoNItem("a", "What is the sum?", torch.rand(3, 32, 64))]
    summary = run_best_of_n(items, _Fixed(), prm, n=2, out_path=out, progress=False)
    assert summary["done"] == 1
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 1 and len(rows[0]["candidates"]) == 2


def test_read_items_errors(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"id": "1", "image": "a.png"}) + "\n")
    with pytest.raises(ValueError, match="question"):
        read_bon_items(path)
    path.write_text(
        json.dumps({"id": "1", "question": "q"})
        + "\n"
        + json.dumps({"id": "1", "question": "r"})
        + "\n"
    )
    with pytest.raises(ValueError, match="duplicate"):
        read_bon_items(path)


def test_cli_end_to_end(tiny, prm, tmp_path):
    model, processor = tiny
    policy = save_tiny(model, processor, tmp_path / "policy")
    prm.save_pretrained(tmp_path / "prm")
    items = _items_file(tmp_path)
    out = tmp_path / "cli.jsonl"
    argv = [
        "bon", "--items", items, "--policy", str(policy), "--reward", str(tmp_path / "prm"),
        "--out", str(out), "--n", "3", "--max-new-tokens", "5", "--aggregate", "min",
        "--no-progress",
    ]  # fmt: skip
    assert bon_main(argv) == 0
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows["a"]["candidates"]) == 3 and rows["a"]["candidates"][0]["greedy"]
    assert "error" in rows["c"]  # the missing image is recorded and skipped
    assert "error" not in rows["b"] and "error" not in rows["d"]
    assert bon_main([*argv[:-3], "--aggregate", "median"]) == 2  # a clear error, no traceback
