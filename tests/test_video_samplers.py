"""Frame samplers: indices and the fps used, against hand computation."""

from __future__ import annotations

import pytest
import torch

from video.samplers import (
    FrameSampler,
    fps_num_frames,
    sample_frames,
    segment_indices,
    strided_clips,
    strided_indices,
    uniform_indices,
)


def test_uniform_indices_by_hand():
    # linspace(0, 299, 16) = 0, 19.93, 39.87, …; round half to even
    assert uniform_indices(300, 16) == [
        0, 20, 40, 60, 80, 100, 120, 140, 159, 179, 199, 219, 239, 259, 279, 299,
    ]  # fmt: skip
    assert uniform_indices(10, 4) == [0, 3, 6, 9]
    assert uniform_indices(5, 1) == [0]
    assert uniform_indices(3, 5) == [0, 0, 1, 2, 2]  # 0, .5, 1, 1.5, 2 → half to even
    assert uniform_indices(1, 4) == [0, 0, 0, 0]  # a one-frame video repeats


def test_fps_rule_by_hand():
    # 10 s at 30 fps, target 2 fps → 20 frames; sampled fps = 20 · 30 / 300 = 2
    sel = sample_frames(300, 30.0, fps=2.0)
    assert len(sel.indices) == 20 and sel.fps == pytest.approx(2.0)
    assert sel.indices == uniform_indices(300, 20)
    # 16 frames at 8 fps (2 s): 2 fps → 4 frames; 3 fps → 6; 2.9 fps → 5.8 → floor even 4
    assert fps_num_frames(16, 8.0, 2.0) == 4
    assert fps_num_frames(16, 8.0, 3.0) == 6
    assert fps_num_frames(16, 8.0, 2.9) == 4
    # clamp to ≥ 4 frames, and to the frames there are (even)
    assert fps_num_frames(300, 30.0, 0.1) == 4
    assert fps_num_frames(7, 8.0, 100.0) == 6
    assert fps_num_frames(3, 8.0, 2.0) == 2
    # clamp to ≤ 768: one hour at 30 fps, 2 fps → 7200 → 768
    assert fps_num_frames(108_000, 30.0, 2.0) == 768
    sel = sample_frames(16, 8.0, fps=3.0)
    assert sel.indices == [0, 3, 6, 9, 12, 15] and sel.fps == pytest.approx(6 * 8.0 / 16)
    assert sample_frames(16, 8.0).fps == pytest.approx(2.0)  # default target: 2 fps


def test_fps_and_num_frames_are_exclusive_and_one_frame_errors():
    with pytest.raises(ValueError, match="exclusive"):
        sample_frames(10, 8.0, num_frames=4, fps=2.0)
    with pytest.raises(ValueError, match="exclusive"):
        FrameSampler(num_frames=4, fps=2.0)
    with pytest.raises(ValueError, match="num_source_frames.*1"):
        sample_frames(1, 8.0, fps=2.0)
    with pytest.raises(ValueError, match="video_fps"):
        sample_frames(10, None, fps=2.0)
    assert sample_frames(10, None, num_frames=2).fps is None
    with pytest.raises(ValueError, match="num_frames"):
        sample_frames(10, 8.0, num_frames=0)
    with pytest.raises(ValueError, match="sampler"):
        sample_frames(10, 8.0, num_frames=2, sampler="random")


def test_segment_sampling_by_hand():
    # 12 frames, 3 segments [0,4), [4,8), [8,12): centres 2, 6, 10
    assert segment_indices(12, 3, random=False) == [2, 6, 10]
    # 10 frames, 4 segments of 2.5: centres floor(1.25, 3.75, 6.25, 8.75)
    assert segment_indices(10, 4, random=False) == [1, 3, 6, 8]
    # random: floor(edge_i + u_i · 2.5) with u from the generator
    g = torch.Generator().manual_seed(3)
    u = torch.rand(4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = [int(2.5 * i + 2.5 * float(u[i])) for i in range(4)]
    got = segment_indices(10, 4, random=True, generator=g)
    assert got == expected
    assert all(int(2.5 * i) <= x < 2.5 * (i + 1) for i, x in enumerate(got))
    # seeded: the same seed gives the same frames, the sampler's fps is n · fps / T
    a = FrameSampler(num_frames=4, sampler="segment", seed=3).select(10, 5.0)
    assert a.indices == expected and a.fps == pytest.approx(2.0)


def test_strided_by_hand():
    assert strided_indices(20, 4, stride=3) == [5, 8, 11, 14]  # span 10, centred
    assert strided_indices(20, 4, stride=3, start=0) == [0, 3, 6, 9]
    sel = sample_frames(20, 24.0, num_frames=4, sampler="strided", stride=3)
    assert sel.indices == [5, 8, 11, 14] and sel.fps == pytest.approx(8.0)  # 24 / 3
    assert strided_clips(10, 3, stride=2, step=2) == [[0, 2, 4], [2, 4, 6], [4, 6, 8]]
    assert strided_clips(9, 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    with pytest.raises(ValueError, match="span 10 frames, the video has 8"):
        strided_indices(8, 4, stride=3)
    with pytest.raises(ValueError, match="start"):
        strided_indices(20, 4, stride=3, start=11)
