"""Video rewards: reading, frame sampling, frame-aggregated rewards, evaluation.

- :mod:`video.io` — decord reading (PyAV fallback) of only the sampled frames;
- :mod:`video.samplers` — uniform, target-fps (VideoAlign rule), TSN segmental, strided;
- :mod:`video.rewards` — any image reward on frames (mean / centre / min) + temporal term;
- :mod:`video.evaluate` — VideoGen-RewardBench-format pair files, accuracy w/o and with ties;
- :mod:`video.world` — the built-in world's expert / nonexpert clips as MP4;
- :mod:`video.videoalign`, :mod:`video.diffusion_reward` — VideoAlign-style VLM reward and
  Diffusion Reward.
"""

from video.io import VideoClip, load_video, load_videos, make_loader
from video.samplers import FrameSampler, FrameSelection, sample_frames

__all__ = [
    "FrameSampler",
    "FrameSelection",
    "VideoClip",
    "load_video",
    "load_videos",
    "make_loader",
    "sample_frames",
]
