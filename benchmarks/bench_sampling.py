"""Sampling throughput with per-step log-probs vs a plain diffusers pipeline call.

The alignment sampler (:func:`diffusion_align.sampling.sample`) against
``pipe(prompt_embeds=…, output_type="pt")`` with the same scheduler family (DDIM, η = 1),
steps, guidance, batch, dtype and start noise, both followed by the same VAE decode. The
comparison is kept fair:

- both get the same precomputed prompt embeddings (prompt encoding is not timed: the
  pipeline would re-encode the negative prompt every call, the policy caches it);
- both run one batched ``[uncond; cond]`` UNet forward per step: the UNet calls are
  counted with a hook and must match, and the largest difference between the decoded
  images is reported (0 on the CPU: the same noise, the same arithmetic);
- the sampler runs twice: with log-probs and the trajectory (what DDPO/GRPO roll out) and
  without either (what galleries and evaluation use);
- the three runs are interleaved, each round starting with the next one, so that load
  from other processes hits all of them alike; medians of wall and CPU time
  (``time.process_time``) are reported, and on the CPU the time outside the UNet (the
  sampler's own work, the scheduler step and the decode), which is what the sampler can
  add: the UNet itself is the same call for both.

Overhead = sampler time / pipeline time − 1 (target ≤ 10%), from median wall times; the
CPU-time ratio is less sensitive to other processes on a shared machine.

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
from _common import interleaved, write_results_json

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


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def run(args) -> dict:
    from diffusers import DDIMScheduler

    from diffusion_align.policy import DiffusionPolicy
    from diffusion_align.sampling import sample

    device = torch.device(args.device)
    pipe = _pipeline(args.model).to(device)
    # a GPU runs asynchronously: wait for its work before a timer stops
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    policy = DiffusionPolicy(pipe)
    policy.raw_denoiser.eval()
    prompts = ["a small red seven on a dark background"] * args.batch
    h, w = policy.resolution()
    guided = args.guidance != 1.0
    with torch.no_grad():
        cond = policy.encode_prompt(prompts, guidance=guided)
    neg = cond.neg_embeds.contiguous() if guided else None

    def plain() -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            images = pipe(prompt_embeds=cond.embeds, negative_prompt_embeds=neg, height=h,
                          width=w, num_inference_steps=args.steps, eta=1.0,
                          guidance_scale=args.guidance, generator=g, output_type="pt").images  # fmt: skip
            sync()
            return images

    def ours(record: bool) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            out = sample(policy, cond, policy.schedule(args.steps, eta=1.0),
                         guidance_scale=args.guidance, generator=g, log_probs=record,
                         return_trajectory=record)  # fmt: skip
            images = policy.decode(out.latents)
            sync()
            return images

    fns = {"pipeline": plain, "sampler": lambda: ours(True), "sampler_plain": lambda: ours(False)}

    # fairness checks: the same number of UNet calls, the same images
    calls = {k: 0 for k in fns}
    images = {}
    for name, fn in fns.items():
        handle = pipe.unet.register_forward_pre_hook(
            lambda *_, n=name: calls.update({n: calls[n] + 1})
        )
        try:
            images[name] = fn()
        finally:
            handle.remove()
    if len(set(calls.values())) != 1:
        raise RuntimeError(f"unfair comparison: UNet calls differ {calls}")
    diff = max((images[k] - images["pipeline"]).abs().max().item() for k in fns)

    t = interleaved(fns, args.repeats, pipe.unet if device.type == "cpu" else None)
    t_pipe, t_ours, t_plain = (t[k]["wall_s"] for k in fns)
    c_pipe, c_ours, c_plain = (t[k]["cpu_s"] for k in fns)
    overhead = t_ours / t_pipe - 1
    return {
        "model": args.model,
        "params": sum(p.numel() for p in pipe.unet.parameters()),
        "batch": args.batch,
        "steps": args.steps,
        "unet_calls": calls["pipeline"],
        "max_abs_image_diff": diff,
        "pipeline_s": t_pipe,
        "sampler_logprob_s": t_ours,
        "sampler_plain_s": t_plain,
        "pipeline_cpu_s": c_pipe,
        "sampler_logprob_cpu_s": c_ours,
        "sampler_plain_cpu_s": c_plain,
        "pipeline_images_per_s": args.batch / t_pipe,
        "sampler_images_per_s": args.batch / t_ours,
        "pipeline_outside_unet_s": t["pipeline"]["outside_unet_s"],
        "sampler_logprob_outside_unet_s": t["sampler"]["outside_unet_s"],
        "sampler_plain_outside_unet_s": t["sampler_plain"]["outside_unet_s"],
        "overhead": overhead,
        "overhead_plain": t_plain / t_pipe - 1,
        "cpu_overhead": c_ours / c_pipe - 1,
        "cpu_overhead_plain": c_plain / c_pipe - 1,
        "meets_target": overhead <= TARGET,
        "times": t,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="world", help="world, sd15-size, tiny:sd or a pipeline dir")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the noise is drawn on the CPU)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = run(args)
    print(f"{r['model']}: batch {r['batch']}, {r['steps']} steps, {r['unet_calls']} UNet calls "
          f"each, max |image difference| {r['max_abs_image_diff']:.2e}, "
          f"medians of {args.repeats} interleaved runs")  # fmt: skip
    print(f"{'run':<34} {'wall s':>8} {'cpu s':>8} {'no-UNet s':>9} {'img/s':>7} "
          f"{'overhead':>9} {'cpu ovh':>8}")  # fmt: skip
    rows = [
        ("diffusers pipeline", "pipeline", None, None),
        ("sampler, log-probs + trajectory", "sampler_logprob", "overhead", "cpu_overhead"),
        ("sampler, plain", "sampler_plain", "overhead_plain", "cpu_overhead_plain"),
    ]
    for label, key, ok, cok in rows:
        ovh = f"{r[ok]:>8.1%} {r[cok]:>8.1%}" if ok else ""
        print(f"{label:<34} {r[key + '_s']:>8.3f} {r[key + '_cpu_s']:>8.3f} "
              f"{_secs(r[key + '_outside_unet_s']):>9} {r['batch'] / r[key + '_s']:>7.2f} {ovh}")  # fmt: skip
    mark = "ok" if r["meets_target"] else "MISSED"
    print(f"overhead with log-probs + trajectory {r['overhead']:.1%} <= {TARGET:.0%}: {mark}")
    write_results_json(args.json, args, [r])


if __name__ == "__main__":
    main()
