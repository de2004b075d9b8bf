"""Diffusion Reward throughput: per-frame rewards per second, batched vs one frame at a time.

Batched: every frame of ``--videos`` clips goes through the sampler and the bound in chunks
of ``--batch-size`` histories (what :class:`~video.diffusion_reward.reward.DiffusionReward`
does). One at a time: the same histories one by one, as an RL loop that calls the reward
after each environment step would. Both use the world model's estimator settings
(skip 9 of 100: 10 sampling steps and a 10-step bound, 20 UNet passes per reward) and
give the same rewards (noise off; checked).

    .venv/bin/python benchmarks/bench_diffusion_reward.py
    .venv/bin/python benchmarks/bench_diffusion_reward.py --json runs/bench_diffusion_reward.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_seconds, write_results_json  # noqa: E402

from video.diffusion_reward.entropy import conditional_entropy, frame_rewards  # noqa: E402
from video.diffusion_reward.model import (  # noqa: E402
    ConditionalFrameDiffusion,
    DiffusionRewardConfig,
)
from video.diffusion_reward.reward import assets_dir  # noqa: E402


def _model() -> tuple[ConditionalFrameDiffusion, str]:
    folder = assets_dir()
    if (folder / "config.json").is_file():
        return ConditionalFrameDiffusion.load(folder), "world"
    torch.manual_seed(0)
    return ConditionalFrameDiffusion(DiffusionRewardConfig()).eval(), "random-init"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=4, help="clips of 16 frames")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=256, help="histories per forward")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, weights = _model()
    videos = torch.rand(args.videos, args.frames, 3, 32, 32)
    kw = {"skip": 9, "noise": False}
    k = model.config.history
    n_rewards = args.videos * (args.frames - k + 1)  # frames with a full history

    def batched():
        return frame_rewards(model, videos, batch_size=args.batch_size, **kw)

    x = model.to_model_space(videos)
    histories = x.unfold(1, k, 1).permute(0, 1, 5, 2, 3, 4).reshape(-1, k, *x.shape[2:])

    def one_at_a_time():
        return torch.cat([conditional_entropy(model, h[None], **kw) for h in histories])

    same = torch.allclose(-one_at_a_time(), batched()[:, k - 1 :].reshape(-1), atol=1e-4)
    t_b, _ = median_seconds(batched, args.repeats)
    t_1, _ = median_seconds(one_at_a_time, args.repeats)
    result = {
        "model": f"diffusion-reward ({weights})",
        "params": sum(q.numel() for q in model.parameters()),
        "rewards": n_rewards,
        "batched_s": t_b,
        "batched_rewards_per_s": n_rewards / t_b,
        "one_at_a_time_s": t_1,
        "one_at_a_time_rewards_per_s": n_rewards / t_1,
        "ratio": t_1 / t_b,
        "same_rewards": bool(same),
    }
    print(
        f"{result['model']}: {n_rewards} rewards, batched {t_b:.2f} s "
        f"({result['batched_rewards_per_s']:.1f}/s), one at a time {t_1:.2f} s "
        f"({result['one_at_a_time_rewards_per_s']:.1f}/s), ratio {result['ratio']:.1f}x, "
        f"same rewards: {same}"
    )
    write_results_json(args.json, args, [result])


if __name__ == "__main__":
    main()
