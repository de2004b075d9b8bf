"""World videos: expert and nonexpert clips, MP4 writing and the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmreward.world.data import parse_prompt
from video.world import MOTIONS, make_clip, make_clips, write_mp4, write_world_videos


def _speeds(meta: dict) -> np.ndarray:
    xy = np.asarray(meta["trajectory"])
    return np.linalg.norm(np.diff(xy, axis=0), axis=1)


@pytest.mark.parametrize("motion", [m for m in MOTIONS if m != "draw"])
def test_expert_moves_smoothly_nonexpert_does_not(motion):
    frames, meta = make_clip("expert", seed=4, frames=16, motion=motion)
    assert frames.shape == (16, 32, 32, 3) and frames.dtype == np.uint8
    assert meta["kind"] == "expert" and meta["motion"] == motion
    assert meta["prompt"].endswith(MOTIONS[motion])
    expert = _speeds(meta)
    # a smooth path: every step is short (≤ 4 px at 32 px, 16 frames) and the digit moves
    assert expert.max() <= 4.0 and expert.sum() > 8
    _, bad = make_clip("nonexpert", seed=4, frames=16, motion=motion)
    assert bad["prompt"] == meta["prompt"]  # same prompt, done badly
    assert np.mean(np.abs(np.diff(_speeds(bad)))) > 2 * np.mean(np.abs(np.diff(expert))) + 0.5


def test_straight_slide_direction():
    _, meta = make_clip("expert", seed=0, motion="right")
    xs = np.asarray(meta["trajectory"])[:, 0]
    assert (np.diff(xs) >= 0).all() and xs[-1] - xs[0] >= 14  # 16 px of room at 32 px


def test_drawing_reveals_ink_monotonically():
    frames, meta = make_clip("expert", seed=2, frames=12, motion="draw")
    bg = np.median(frames[0].reshape(-1, 3), axis=0)
    ink = [(np.abs(f.astype(int) - bg).sum(-1) > 60).sum() for f in frames]
    assert ink[0] < ink[-1] and all(b >= a for a, b in zip(ink, ink[1:]))
    scrambled, bad = make_clip("nonexpert", seed=2, frames=12, motion="draw")
    assert bad["style"] == "scramble"
    ink_bad = [(np.abs(f.astype(int) - bg).sum(-1) > 60).sum() for f in scrambled]
    assert any(b < a for a, b in zip(ink_bad, ink_bad[1:]))  # flicker: ink disappears
    np.testing.assert_array_equal(scrambled[-1], frames[-1])  # both end with the full digit


def test_seeded_and_prompt_parses_in_the_image_world():
    a, ma = make_clip("nonexpert", seed=7)
    b, mb = make_clip("nonexpert", seed=7)
    np.testing.assert_array_equal(a, b)
    assert ma == mb
    attrs = parse_prompt(ma["prompt"])
    assert attrs == {k: ma["attributes"][k] for k in ("digit", "colour", "background", "size")}
    x, metas = make_clips(3, "expert", seed=7, frames=4)
    assert x.shape == (3, 4, 32, 32, 3) and metas[0]["prompt"] == ma["prompt"]


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="kind"):
        make_clip("amateur", 0)
    with pytest.raises(ValueError, match="motion"):
        make_clip("expert", 0, motion="spin")
    with pytest.raises(ValueError, match="frames"):
        write_mp4("/tmp/never.mp4", np.zeros((2, 31, 32, 3), np.uint8))


def test_write_world_videos_roundtrip(tmp_path):
    import av

    manifest = write_world_videos(tmp_path, n_per_kind=2, seed=5, frames=8, fps=8.0)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["expert", "expert", "nonexpert", "nonexpert"]
    assert rows[0]["prompt"] == rows[2]["prompt"]  # clip i of both kinds: one prompt
    expected, _ = make_clip("expert", seed=5, frames=8)
    with av.open(str(tmp_path / rows[0]["video"])) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        assert float(c.streams.video[0].average_rate) == pytest.approx(8.0)
    assert decoded.shape == expected.shape
    # lossy H.264 at crf 12: close to the rendered frames
    assert np.abs(decoded.astype(int) - expected.astype(int)).mean() < 6
