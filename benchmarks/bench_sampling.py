"""Sampling throughput with per-step log-probs vs a plain diffusers pipeline call.

The alignment sampler (:func:`diffusion_align.sampling.sample` with ``log_probs=True`` and
the trajectory kept, what DDPO/GRPO roll out) against ``pipe(prompt, …, output_type="pt")``
with the same scheduler family (DDIM, η = 1), steps, guidance and batch, both followed by
the VAE decode. Overhead = sampler time / pipeline time − 1 (target ≤ 10%).

    python benchmarks/bench_sampling.py --threads 1                  # the world pipeline
    python benchmarks/bench_sampling.py --model sd15-size --batch 1 --steps 4
    python benchmarks/bench_sampling.py --json runs/bench/sampling.json

``sd15-size`` is an SD 1.5-shaped UNet (320/640/1280/1280 channels, 64×64 latents) with
random weights and the tiny text encoder: the UNet cost of SD 1.5 without a download.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import median_seconds, write_results_json

TARGET = 0.10


def _pipeline(name: str):
    if name == "world":
        from mmreward.world.diffusion import load_pipeline

        return load_pipeline()
    if name == "sd15-size":
        from diffusers import UNet2DConditionModel

        from diffusion_align.tiny import TEXT_WIDTH, tiny_pipeline

        pipe = tiny_pipeline("sd")
        torch.manual_seed(0)
        pipe.unet = UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=TEXT_WIDTH,
            block_out_channels=(320, 640, 1280, 1280),
            attention_head_dim=8,
        ).eval()
        return pipe
    from diffusion_align.policy import load_pipeline as load_any

    return load_any(name)


def run(args) -> dict:
    from diffusers import DDIMScheduler

    from diffusion_align.policy import DiffusionPolicy
    from diffusion_align.sampling import sample

    pipe = _pipeline(args.model)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    policy = DiffusionPolicy(pipe)
    policy.raw_denoiser.eval()
    prompts = ["a small red seven on a dark background"] * args.batch
    h, w = policy.resolution()

    def plain():
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            pipe(prompts, height=h, width=w, num_inference_steps=args.steps, eta=1.0,
                 guidance_scale=args.guidance, generator=g, output_type="pt")  # fmt: skip

    def ours():
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            cond = policy.encode_prompt(prompts, guidance=args.guidance != 1.0)
            out = sample(policy, cond, policy.schedule(args.steps, eta=1.0),
                         guidance_scale=args.guidance, generator=g, log_probs=True,
                         return_trajectory=True)  # fmt: skip
            policy.decode(out.latents)

    t_pipe, _ = median_seconds(plain, args.repeats)
    t_ours, _ = median_seconds(ours, args.repeats)
    overhead = t_ours / t_pipe - 1
    return {
        "model": args.model,
        "params": sum(p.numel() for p in pipe.unet.parameters()),
        "batch": args.batch,
        "steps": args.steps,
        "pipeline_s": t_pipe,
        "sampler_logprob_s": t_ours,
        "pipeline_images_per_s": args.batch / t_pipe,
        "sampler_images_per_s": args.batch / t_ours,
        "overhead": overhead,
        "meets_target": overhead <= TARGET,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="world", help="world, sd15-size, tiny:sd or a pipeline dir")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = run(args)
    print(f"{'model':<10} {'batch':>5} {'steps':>5} {'pipeline s':>11} {'sampler s':>10} "
          f"{'img/s pipe':>10} {'img/s ours':>10} {'overhead':>9}  target")  # fmt: skip
    mark = "ok" if r["meets_target"] else "MISSED"
    print(f"{r['model']:<10} {r['batch']:>5} {r['steps']:>5} {r['pipeline_s']:>11.3f} "
          f"{r['sampler_logprob_s']:>10.3f} {r['pipeline_images_per_s']:>10.2f} "
          f"{r['sampler_images_per_s']:>10.2f} {r['overhead']:>8.1%}  <= {TARGET:.0%} {mark}")  # fmt: skip
    write_results_json(args.json, args, [r])


if __name__ == "__main__":
    main()
