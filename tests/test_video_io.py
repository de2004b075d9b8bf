"""Video reading: decord and PyAV agree, only sampled frames decode, awkward files."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

import video.io as vio
from mmreward.errors import InputError, ItemReadError
from video.io import as_video_batch, load_video, load_videos, make_loader
from video.world import make_clip, write_mp4


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    frames, meta = make_clip("expert", seed=1, frames=16, motion="right")
    return write_mp4(tmp_path_factory.mktemp("v") / "clip.mp4", frames, fps=8.0), frames


def _write_vfr(path, frames, pts_ms):
    """An H.264 MP4 whose frame timestamps (ms) are ``pts_ms`` (irregular)."""
    import av

    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for arr, t in zip(frames, pts_ms):
            fr = av.VideoFrame.from_ndarray(arr, format="rgb24")
            fr.pts, fr.time_base = t, Fraction(1, 1000)
            for pk in s.encode(fr):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    return path


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_reads_sampled_frames_with_indices_and_fps(clip_file, backend):
    path, rendered = clip_file
    clip = load_video(path, num_frames=4, backend=backend)
    assert clip.backend == backend
    assert clip.indices == [0, 5, 10, 15]  # round(linspace(0, 15, 4))
    assert clip.fps == pytest.approx(4 * 8.0 / 16) and clip.source_fps == pytest.approx(8.0)
    assert clip.num_source_frames == 16 and not clip.variable_frame_rate
    assert clip.frames.shape == (4, 3, 32, 32) and clip.frames.dtype == torch.float32
    assert clip.frames.min() >= 0.0 and clip.frames.max() <= 1.0
    expected = torch.from_numpy(rendered[[0, 5, 10, 15]]).permute(0, 3, 1, 2).float() / 255
    assert (clip.frames - expected).abs().mean() < 0.03  # lossy H.264
    default = load_video(path, backend=backend)  # the fps rule, 2 fps of a 2 s clip
    assert default.indices == [0, 5, 10, 15] and default.fps == pytest.approx(2.0)
    rec = clip.record()
    assert rec["frame_indices"] == [0, 5, 10, 15] and rec["sampled_fps"] == pytest.approx(2.0)


def test_backends_agree_and_decord_decodes_only_needed_frames(clip_file, monkeypatch):
    path, _ = clip_file
    a = load_video(path, num_frames=5, backend="decord")
    b = load_video(path, num_frames=5, backend="pyav")
    assert a.indices == b.indices
    assert (a.frames - b.frames).abs().max() < 2 / 255  # same decoder, maybe other rounding
    import decord

    asked = []
    real = decord.VideoReader.get_batch

    def spy(self, indices):
        asked.append(list(indices))
        return real(self, indices)

    monkeypatch.setattr(decord.VideoReader, "get_batch", spy)
    clip = load_video(path, num_frames=20, backend="decord")  # 20 > 16: frames repeat
    assert asked == [sorted(set(clip.indices))] and len(asked[0]) == 16
    assert clip.frames.shape[0] == 20


def test_pyav_selective_decoding_is_exact(tmp_path):
    """Skipping non-reference frames gives the frames a full in-order decode gives."""
    import av

    frames, _ = make_clip("expert", seed=3, frames=60, size=64, motion="circle")
    path = write_mp4(tmp_path / "long.mp4", frames, fps=30.0)  # x264: B-frames
    with av.open(str(path)) as c:
        full = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    clip = load_video(path, num_frames=7, backend="pyav")
    assert clip.indices == [0, 10, 20, 30, 39, 49, 59]
    got = (clip.frames.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(got, full[clip.indices])


def test_falls_back_to_pyav(clip_file, monkeypatch):
    path, _ = clip_file
    monkeypatch.setattr(vio, "_decord_available", lambda: False)
    assert load_video(path, num_frames=2).backend == "pyav"
    monkeypatch.undo()

    def broken(self, path, threads):
        raise RuntimeError("decord cannot open this")

    monkeypatch.setattr(vio._DecordReader, "__init__", broken)
    assert load_video(path, num_frames=2).backend == "pyav"
    with pytest.raises(ItemReadError, match="decord cannot open this"):
        load_video(path, num_frames=2, backend="decord")


def test_bad_files_are_clear_errors(tmp_path, clip_file):
    path, _ = clip_file
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.mp4"
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # moov atom at the end: cut off
    for bad, reason in [
        (tmp_path / "missing.mp4", "no such file"),
        (empty, "empty file"),
        (garbage, "cannot read"),
        (truncated, "cannot read"),
    ]:
        with pytest.raises(ItemReadError) as e:
            load_video(bad, num_frames=4)
        assert str(bad) in str(e.value) and reason in str(e.value)


def test_truncated_stream_fails_fast(tmp_path, clip_file):
    """A faststart file (index first) cut short: frames run out, error instead of a hang."""
    import av

    _, frames = clip_file
    full = tmp_path / "fs.mp4"
    with av.open(str(full), "w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for arr in np.concatenate([frames] * 4):
            for pk in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    cut = tmp_path / "fs_cut.mp4"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    for backend in ("decord", "pyav"):
        with pytest.raises(ItemReadError, match="fs_cut.mp4"):
            load_video(cut, num_frames=8, backend=backend)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_one_frame_video(tmp_path, clip_file, backend):
    _, frames = clip_file
    path = write_mp4(tmp_path / "one.mp4", frames[:1], fps=8.0)
    clip = load_video(path, num_frames=3, backend=backend)
    assert clip.indices == [0, 0, 0] and clip.num_source_frames == 1
    torch.testing.assert_close(clip.frames[0], clip.frames[2])
    with pytest.raises(ValueError, match="needs ≥ 2 frames, the video has 1"):
        load_video(path, backend=backend)  # the fps rule


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_variable_frame_rate(tmp_path, clip_file, backend):
    _, frames = clip_file
    pts = [0, 40, 80, 200, 240, 500, 540, 580, 620, 1000, 1040, 1080, 1120, 1160, 1200, 1240]
    path = _write_vfr(tmp_path / "vfr.mp4", frames, pts)
    clip = load_video(path, num_frames=4, backend=backend)
    assert clip.variable_frame_rate
    assert clip.indices == [0, 5, 10, 15]  # by frame number
    # the average rate: 16 frames over 1.24 s + one 40 ms frame = 12.5 fps
    assert clip.source_fps == pytest.approx(12.5, rel=1e-3)
    assert clip.fps == pytest.approx(4 * 12.5 / 16, rel=1e-3)


def test_load_videos_stacks_and_resizes(tmp_path, clip_file):
    path, _ = clip_file
    other = write_mp4(tmp_path / "big.mp4", make_clip("nonexpert", 2, frames=10, size=48)[0])
    batch = load_videos([path, other], num_frames=4, size=32)
    assert batch.frames.shape == (2, 4, 3, 32, 32)
    # decord cannot copy out some frame widths (48 px here); auto falls back to PyAV
    assert [c.backend for c in batch.clips] == ["decord", "pyav"]
    assert batch.indices == [[0, 5, 10, 15], [0, 3, 6, 9]]
    assert batch.fps == pytest.approx([2.0, 4 * 8.0 / 10])
    with pytest.raises(ValueError, match="big.mp4"):
        load_videos([path, other], num_frames=4)
    with pytest.raises(InputError, match="paths"):
        load_videos(str(path))


def test_layouts():
    x = torch.rand(2, 5, 3, 8, 8)
    assert as_video_batch(x) is x
    torch.testing.assert_close(as_video_batch(x.permute(0, 2, 1, 3, 4), layout="BCTHW"), x)
    one = torch.rand(2, 3, 1, 8, 8)  # a one-frame video, channel first
    with pytest.raises(InputError, match=r"videos: expected \(B,T,3,H,W\).*layout='BCTHW'"):
        as_video_batch(one)
    assert as_video_batch(one, layout="BCTHW").shape == (2, 1, 3, 8, 8)
    with pytest.raises(InputError, match="clips"):
        as_video_batch(torch.rand(2, 4, 8, 8), field="clips")
    with pytest.raises(InputError, match="layout='BCTHW'"):
        as_video_batch(torch.rand(2, 5, 3, 8, 8), layout="BCTHW")
    u8 = (torch.rand(1, 2, 3, 4, 4) * 255).to(torch.uint8)
    torch.testing.assert_close(as_video_batch(u8), u8.float() / 255)
    with pytest.raises(InputError, match="255"):
        as_video_batch(torch.rand(1, 2, 3, 4, 4) * 255)
    with pytest.raises(ValueError, match="layout"):
        as_video_batch(x, layout="NCHW")


def test_make_loader(clip_file):
    path, _ = clip_file
    load = make_loader(num_frames=6, sampler="segment-centre")
    clip = load(path)
    assert clip.indices == [1, 4, 6, 9, 12, 14] and clip.sampler == "segment-centre"
    with pytest.raises(ValueError, match="exclusive"):
        make_loader(num_frames=4, fps=2.0)
    seeded = [make_loader(num_frames=4, sampler="segment", seed=5)(path).indices for _ in "ab"]
    assert seeded[0] == seeded[1]
