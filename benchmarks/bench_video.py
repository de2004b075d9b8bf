"""Video reading and scoring: decord sampling vs decoding every frame with PyAV; videos/s.

1. **Sampling 16 of 300 frames.** 300-frame world clips (``--sizes``², H.264, keyframe
   every ``--gop`` frames, written once, not timed) are read three ways:

   - **ours**: ``video.io.load_video(path, num_frames=16, backend="decord")`` — decord's
     ``get_batch`` decodes only what the 16 uniform indices need, then a float tensor;
   - **ours, PyAV path** (``backend="pyav"``): decodes the needed frames fully and every
     other packet with ``skip_frame="NONREF"``, stopping after the last needed frame;
   - **decode-all** (what many reference loaders do): PyAV decodes every frame to an RGB
     array, then the same 16 indices are picked.

   All use one decoder thread; the frames are checked against decode-all. Ratios are
   reported on wall time and on process CPU time (the latter is robust to other programs
   sharing the machine). The target is decord ≥ 5× faster than decode-all.
2. **Scoring throughput** of ``video-frames.gold-world`` (the world's gold reward on every
   frame, averaged) on ``--n-videos`` world clips: videos/s from decoded tensors, and
   end to end (MP4 → 8 sampled frames → score).

Sampling timings: ``--repeats`` rounds after an untimed one, the three readers
interleaved within each round (each round starting with the next reader), each call
reading ``--clips`` distinct clips; medians per clip. Scoring timings: the median of ``--repeats`` runs after one untimed run.

    python benchmarks/bench_video.py --repeats 5 --json runs/bench/video.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import interleaved, median_seconds, write_results_json

TARGET_RATIO = 5.0  # decord sampling should be ≥ 5× faster than decoding every frame
NUM_FRAMES = 300
SAMPLED = 16


def decode_all_pyav(path: str, indices: list[int]) -> np.ndarray:
    """Decode every frame with PyAV (one thread), then keep ``indices``."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack(frames)[indices]


def bench_sampling(size: int, gop: int | None, repeats: int, n_clips: int, tmp: Path) -> dict:
    from video.io import load_video
    from video.samplers import uniform_indices
    from video.world import make_clip, write_mp4

    paths = []
    for seed in range(n_clips):
        frames, _ = make_clip("expert", seed=seed, frames=NUM_FRAMES, size=size, motion="circle")
        out = tmp / f"clip_{size}_{gop}_{seed}.mp4"
        paths.append(str(write_mp4(out, frames, fps=30.0, gop=gop)))
    indices = uniform_indices(NUM_FRAMES, SAMPLED)

    def ours():
        return [load_video(p, num_frames=SAMPLED, backend="decord", threads=1) for p in paths]

    def ours_pyav():
        return [load_video(p, num_frames=SAMPLED, backend="pyav", threads=1) for p in paths]

    def decode_all():
        return [decode_all_pyav(p, indices) for p in paths]

    refs = decode_all()
    diffs = {}
    for name, fn in (("decord", ours), ("pyav", ours_pyav)):
        worst = 0.0
        for clip, ref in zip(fn(), refs, strict=True):
            if clip.indices != indices:
                raise RuntimeError(f"{name}: indices differ: {clip.indices} vs {indices}")
            got = (clip.frames.permute(0, 2, 3, 1) * 255).round().numpy()
            worst = max(worst, float(np.abs(got - ref.astype(np.float64)).mean()))
        diffs[name] = worst
        if worst > 2.0:
            raise RuntimeError(f"{name}: frames differ from decode-all by {worst:.2f}")
    row = {
        "case": f"{SAMPLED} of {NUM_FRAMES} frames, {size}x{size}, gop {gop or 'x264 default'}",
        "size": size,
        "gop": gop,
        "clips_per_timing": n_clips,
        "mean_abs_diff_grey_levels": diffs,
    }
    fns = {"decord": ours, "pyav_selective": ours_pyav, "decode_all": decode_all}
    times = interleaved(fns, repeats)  # CPU time counts every thread of this process
    for name, t in times.items():
        row[f"{name}_s"] = t["wall_s"] / n_clips
        row[f"{name}_cpu_s"] = t["cpu_s"] / n_clips
        row[f"{name}_runs"] = t["wall_all_s"]
    for name in ("decord", "pyav_selective"):
        row[f"{name}_ratio"] = row["decode_all_s"] / row[f"{name}_s"]
        row[f"{name}_cpu_ratio"] = row["decode_all_cpu_s"] / row[f"{name}_cpu_s"]
    row["meets_target"] = row["decord_cpu_ratio"] >= TARGET_RATIO
    return row


def bench_scoring(n: int, batch_size: int, repeats: int, tmp: Path) -> dict:
    import mmreward
    from mmreward.catalog.video import ENTRIES  # registered here if the catalog lacks them
    from mmreward.registry import _REGISTRY, register
    from video.io import make_loader
    from video.world import make_clips, write_mp4

    for spec in ENTRIES:
        if spec.name not in _REGISTRY:
            register(spec)
    rm = mmreward.load("video-frames.gold-world")
    x, metas = make_clips(n, "expert", seed=0, frames=16)
    prompts = [m["prompt"] for m in metas]
    videos = torch.from_numpy(x).permute(0, 1, 4, 2, 3).float() / 255
    paths = [str(write_mp4(tmp / f"v{i}.mp4", x[i])) for i in range(n)]
    load = make_loader(num_frames=8)

    def tensors():
        return rm.score(videos=videos, prompts=prompts, batch_size=batch_size).scores

    def end_to_end():
        clips = [load(p) for p in paths]
        stacked = torch.stack([c.frames for c in clips])
        return rm.score(videos=stacked, prompts=prompts, batch_size=batch_size).scores

    t_tensor, _ = median_seconds(tensors, repeats)
    t_e2e, _ = median_seconds(end_to_end, repeats)
    return {
        "reward": rm.reward_name,
        "n_videos": n,
        "batch_size": batch_size,
        "tensor_16_frames_s": t_tensor,
        "tensor_videos_per_s": n / t_tensor,
        "mp4_8_frames_s": t_e2e,
        "mp4_videos_per_s": n / t_e2e,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256],
                        help="clip sides in pixels (even)")  # fmt: skip
    parser.add_argument("--gops", type=int, nargs="+", default=[30, 0],
                        help="keyframe intervals (0: the x264 default, 250)")  # fmt: skip
    parser.add_argument("--clips", type=int, default=4,
                        help="distinct clips read per timed call (times are per clip)")  # fmt: skip
    parser.add_argument("--n-videos", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__} | {platform.machine()} | threads {torch.get_num_threads()}"
        f" | median of {args.repeats}"
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sampling = [
            bench_sampling(s, g or None, args.repeats, args.clips, tmp)
            for s in args.sizes
            for g in args.gops
        ]
        header = (
            f"{'case':<44} {'decord s':>9} {'PyAV-sel s':>10} {'PyAV-all s':>10} "
            f"{'decord x':>9} {'PyAV-sel x':>10}  target (decord, CPU)"
        )
        print(
            f"seconds per clip (median wall time over {args.repeats} interleaved rounds of "
            f"{args.clips} clips) and CPU-time ratios against decoding every frame"
        )
        print(header)
        print("-" * len(header))
        for r in sampling:
            mark = "ok" if r["meets_target"] else "MISSED"
            print(
                f"{r['case']:<44} {r['decord_s']:>9.4f} {r['pyav_selective_s']:>10.4f} "
                f"{r['decode_all_s']:>10.4f} {r['decord_cpu_ratio']:>8.1f}x "
                f"{r['pyav_selective_cpu_ratio']:>9.1f}x  >= {TARGET_RATIO:.0f}x {mark}"
            )
        scoring = bench_scoring(args.n_videos, args.batch_size, args.repeats, tmp)
    print(
        f"\n{scoring['reward']}: {scoring['n_videos']} videos, batch {scoring['batch_size']}: "
        f"{scoring['tensor_videos_per_s']:.1f} videos/s from tensors (16 frames), "
        f"{scoring['mp4_videos_per_s']:.1f} videos/s from MP4 (decode 8 frames + score)"
    )
    write_results_json(args.json, args, [*sampling, scoring])
    return 0


if __name__ == "__main__":
    sys.exit(main())
