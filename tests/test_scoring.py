"""Batch scoring jobs: error rows, resume after a kill, and 2-process sharding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmreward
from mmreward.scoring import collect_items, read_rows, run_scoring

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _make_images(folder: Path, n: int, size: int = 8, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = (rng.random((size, size + i % 3, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i:04d}.png")
    good = (folder / "img0001.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "text.png").write_text("this is not a png")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _ids(rows):
    return [r["id"] for r in rows]


def test_error_rows_and_order(tmp_path):
    _make_images(tmp_path / "in", 20)
    items = collect_items(tmp_path / "in")
    rm = mmreward.load("colorfulness")
    summary = run_scoring(rm, items, tmp_path / "out.jsonl", batch_size=6, progress=False)
    rows = read_rows(tmp_path / "out.jsonl")
    assert _ids(rows) == [it.id for it in items]  # input order, each once
    errors = {r["id"]: r["error"] for r in rows if "error" in r}
    assert set(errors) == {"truncated.png", "text.png"}
    assert "truncated" in errors["truncated.png"] and "text.png" in errors["text.png"]
    assert summary["n_scored"] == 20 and summary["n_errors"] == 2
    # scores equal the in-memory API on the same files
    ok = [r for r in rows if "score" in r]
    direct = rm.score([Path(r["path"]) for r in ok]).scores.tolist()
    assert [r["score"] for r in ok] == pytest.approx(direct, rel=1e-6)
    # rerunning scores nothing new
    again = run_scoring(rm, items, tmp_path / "out.jsonl", batch_size=6, progress=False)
    assert again["n_scored_this_run"] == 0 and read_rows(tmp_path / "out.jsonl") == rows


def test_torn_last_line_is_repaired(tmp_path):
    _make_images(tmp_path / "in", 10)
    items = collect_items(tmp_path / "in")
    rm = mmreward.load("colorfulness")
    out = tmp_path / "out.jsonl"
    run_scoring(rm, items[:4], out, batch_size=2, progress=False)
    with out.open("a") as f:
        f.write('{"index": 4, "id": "img00')  # a writer killed mid-line
    run_scoring(rm, items, out, batch_size=3, progress=False)
    rows = read_rows(out)
    assert _ids(rows) == [it.id for it in items]


def test_kill_and_resume_1000_items(tmp_path):
    """Kill `mmreward score` half-way through 1,000 items; the rerun completes every item once."""
    _make_images(tmp_path / "in", 998)  # + 2 corrupt files = 1,000 items
    model_dir = tmp_path / "slow"
    model_dir.mkdir()
    (model_dir / "mmreward.json").write_text(
        json.dumps(
            {
                "reward": "slow.mean",
                "kwargs": {"delay": 0.02},
                "class": "tests.slow_reward:SlowMeanReward",
            }
        )
    )
    from safetensors.torch import save_file

    save_file({}, str(model_dir / "model.safetensors"))
    out = tmp_path / "out.jsonl"
    cmd = [
        str(BIN / "mmreward"),
        "score",
        "--reward",
        str(model_dir),
        "--trust-remote-code",
        "--input",
        str(tmp_path / "in"),
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--no-progress",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    part = out.with_name(out.name + ".part0")
    deadline = time.time() + 120
    while time.time() < deadline and len(read_rows(part)) < 300 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(read_rows(part))
    assert 300 <= n_before < 1000
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = read_rows(out)
    assert len(rows) == 1000 and len(set(_ids(rows))) == 1000
    assert [r["index"] for r in rows] == list(range(1000))
    errs = sorted(r["id"] for r in rows if "error" in r)
    assert errs == ["text.png", "truncated.png"]
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    assert summary["n_scored_this_run"] == 1000 - n_before


def test_untrusted_class_is_refused(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "mmreward.json").write_text(
        json.dumps({"reward": "slow.mean", "class": "tests.slow_reward:SlowMeanReward"})
    )
    with pytest.raises(mmreward.RemoteCodeError, match="trust_remote_code"):
        mmreward.load(model_dir)


def test_two_process_accelerate_matches_single_process(tmp_path):
    _make_images(tmp_path / "in", 37)
    single, multi = tmp_path / "single.jsonl", tmp_path / "multi.jsonl"
    base = [
        "score",
        "--reward",
        "colorfulness",
        "--input",
        str(tmp_path / "in"),
        "--batch-size",
        "5",
        "--no-progress",
    ]
    r1 = subprocess.run(
        [str(BIN / "mmreward"), *base, "--out", str(single)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r1.returncode == 0, r1.stderr
    r2 = subprocess.run(
        [
            str(BIN / "accelerate"),
            "launch",
            "--num_processes",
            "2",
            "--cpu",
            "-m",
            "mmreward.cli",
            *base,
            "--out",
            str(multi),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r2.returncode == 0, r2.stderr
    a, b = read_rows(single), read_rows(multi)
    assert len(a) == 39
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)  # identical scores, identical order
    assert not list(tmp_path.glob("*.part*"))
