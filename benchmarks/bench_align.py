"""Step time and peak memory of every alignment algorithm.

CPU (always): each algorithm × pipeline (``world`` if its assets exist, and the tiny
SD / SDXL / flow pipelines), one optimizer step of the real trainer loop
(``AlignTrainer.train_step``: sampling, decoding, reward, backward, AdamW); Diffusion-DPO
with policy and reference in one batched forward vs. two forwards; ReFL and DPO with and
without gradient checkpointing. Each configuration runs in its own process, so its peak
resident memory (``VmHWM`` after a reset, minus the resident set before the timed steps)
is its own.

GPU (when CUDA is available): an SD1.5-size UNet (and SD VAE) with random weights at
512 px: ReFL and DPO step time and peak CUDA memory with and without gradient
checkpointing, and DPO batched vs. separate reference forwards.

    .venv/bin/python benchmarks/bench_align.py                 # CPU, ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_align.py --json runs/bench_align.json
    .venv/bin/python benchmarks/bench_align.py --gpu-only      # the GPU section alone
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ALGOS = {  # algorithm options for a 10-step sampler
    "refl": {"name": "refl", "stop_range": [5, 9], "phi": 1e4},
    "draft": {"name": "draft", "k": 1},
    "alignprop": {"name": "alignprop", "k": 1, "k_max": 5},
    "dpo": {"name": "dpo"},
    "d3po": {"name": "d3po", "timestep_fraction": 1.0, "steps_per_backward": 1},
}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _world_available() -> bool:
    try:
        from mmreward.world.gold import assets_dir

        return (assets_dir() / "pipeline" / "model_index.json").is_file()
    except Exception:
        return False


def _preference_file(folder: Path, size: int, n: int = 16) -> str:
    import torch

    from mmreward.report import save_png, write_jsonl

    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        a = save_png(torch.rand(3, size, size, generator=g), folder / f"{i}_a.png")
        b = save_png(torch.rand(3, size, size, generator=g), folder / f"{i}_b.png")
        rows.append({"prompt": "a red seven", "images": [a.name, b.name], "choice": 0})
    return str(write_jsonl(folder / "pairs.jsonl", rows))


def run_one(algo: str, model: str, steps: int, extra: dict) -> dict:
    """One configuration, in this process: setup, one warm-up step, ``steps`` timed steps."""
    import tempfile

    import torch

    from diffusion_align.cli import build_trainer
    from diffusion_align.config import AlignConfig

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    tmp = Path(tempfile.mkdtemp(prefix="bench_align_"))
    world = model == "world"
    size = 32 if world else 16
    cfg = {
        "model": {"pretrained": model, "lora_rank": 4, **extra.get("model", {})},
        "reward": "clip-head.world-proxy" if world else "colorfulness.hasler",
        "algorithm": {**ALGOS[algo], **extra.get("algorithm", {})},
        "sample": {"num_steps": 10, "guidance_scale": 3.0, "eta": 1.0},
        "data": {
            "prompts": "world:train" if world else ["a red seven", "a blue one", "a green two"],
            "preferences": _preference_file(tmp, size) if algo == "dpo" else None,
        },
        "train": {"output_dir": str(tmp / "run"), "max_steps": steps + 1, "batch_size": 4,
                  "progress": False, "gallery_prompts": 0, "lr": 1e-4},
    }  # fmt: skip
    trainer = build_trainer(AlignConfig.from_dict(cfg))
    trainer.train_step()  # warm-up (allocator, lazy init)
    rss0 = _rss_kib("VmRSS")
    exact = _reset_peak()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t)
    peak = _rss_kib("VmHWM")
    return {
        "algorithm": algo,
        "model": model,
        "label": extra.get("label", ""),
        "step_s_median": statistics.median(times),
        "step_s_min": min(times),
        "peak_extra_mib": round((peak - rss0) / 1024, 1) if exact else None,
        "rss_mib": round(peak / 1024, 1),
        "threads": torch.get_num_threads(),
        "batch_size": 4,
        "num_steps": 10,
    }


def _subprocess(algo: str, model: str, steps: int, extra: dict) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        json.dumps({"algo": algo, "model": model, "steps": steps, "extra": extra}),
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {
        "algorithm": algo,
        "model": model,
        "label": extra.get("label", ""),
        "error": out.stderr[-2000:],
    }


def cpu_section(models: list[str], steps: int) -> list[dict]:
    rows = []
    for model in models:
        for algo in ALGOS:
            rows.append(_subprocess(algo, model, steps, {}))
            _print(rows[-1])
    base = models[0]
    variants = [
        ("dpo", {"label": "ref_forward=separate", "algorithm": {"ref_forward": "separate"}}),
        ("refl", {"label": "gradient_checkpointing", "model": {"gradient_checkpointing": True}}),
        (
            "dpo",
            {
                "label": "ref_forward=separate + gradient_checkpointing",
                "model": {"gradient_checkpointing": True},
                "algorithm": {"ref_forward": "separate"},
            },
        ),
    ]
    for algo, extra in variants:
        rows.append(_subprocess(algo, base, steps, extra))
        _print(rows[-1])
    return rows


def gpu_section(steps: int) -> list[dict]:
    """SD1.5-size UNet + SD VAE with random weights at 512 px on CUDA."""
    import torch

    if not torch.cuda.is_available():
        print("GPU section skipped: no CUDA device")
        return [{"skipped": "no CUDA device"}]
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffusion_align.algorithms import get_algorithm
    from diffusion_align.config import SampleConfig
    from diffusion_align.data import PreferenceBatch, PromptBatch
    from diffusion_align.policy import DiffusionPolicy, LoraSpec
    from diffusion_align.tiny import tiny_tokenizer
    from mmreward.analytic import Colorfulness

    def pipeline():
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
            scaling_factor=0.18215,
        )
        te = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=768, intermediate_size=3072,
                                          num_hidden_layers=1, num_attention_heads=12,
                                          max_position_embeddings=77))  # fmt: skip
        sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)  # fmt: skip
        return StableDiffusionPipeline(vae, te, tiny_tokenizer(77), unet, sched, None, None, False)

    rows = []
    dev = torch.device("cuda")
    prompts = ["a photo of a cat"] * 2
    # (batched reference forwards cannot be combined with block-level checkpointing)
    for algo, ckpt, batched in [("refl", False, True), ("refl", True, True), ("dpo", False, True),
                                ("dpo", False, False), ("dpo", True, False)]:  # fmt: skip
        torch.cuda.empty_cache()
        policy = DiffusionPolicy(pipeline(), lora=LoraSpec(rank=8), gradient_checkpointing=ckpt)
        policy.to(dev, frozen_dtype=torch.bfloat16)
        opts = {"name": algo, "stop_range": [15, 19], "phi": 1e4} if algo == "refl" else {
            "name": "dpo", "ref_forward": "batched" if batched else "separate"}  # fmt: skip
        sample = SampleConfig(num_steps=20, guidance_scale=7.5, height=512, width=512)
        reward = Colorfulness().to(dev)
        alg = get_algorithm(algo).from_dict(opts, sample, [reward] if algo == "refl" else [])
        if algo == "refl":
            batch = PromptBatch(prompts)
        else:
            batch = PreferenceBatch(prompts, torch.rand(2, 3, 512, 512), torch.rand(2, 3, 512, 512))
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-5)
        times = []
        for i in range(steps + 1):
            if i == 1:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                for loss, _ in alg.losses(policy, batch, torch.Generator().manual_seed(i)):
                    loss.backward()
            opt.step()
            opt.zero_grad()
            torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t)
        rows.append({"algorithm": algo, "model": "sd15-size random, 512 px, LoRA 8, bf16",
                     "gradient_checkpointing": ckpt, "ref_forward": "batched" if batched else "separate",
                     "step_s_median": statistics.median(times),
                     "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30})  # fmt: skip
        _print(rows[-1])
        del policy, opt, alg
    return rows


def _print(row: dict) -> None:
    if "error" in row:
        print(
            f"{row['algorithm']:10s} {row['model']:10s} {row.get('label', ''):24s} ERROR {row['error'][-300:]}"
        )
        return
    if "skipped" in row:
        return
    mem = row.get("peak_extra_mib", row.get("peak_cuda_gib"))
    print(f"{row['algorithm']:10s} {row['model'][:24]:24s} {row.get('label', ''):24s} "
          f"step {row['step_s_median']:.3f} s   peak {mem}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=3, help="timed optimizer steps per configuration"
    )
    parser.add_argument(
        "--models",
        default=None,
        help="comma list (default: world if built, + tiny:sd,tiny:sdxl,tiny:flow)",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        spec = json.loads(args.one)
        print(json.dumps(run_one(spec["algo"], spec["model"], spec["steps"], spec["extra"])))
        return
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_count": os.cpu_count()}
    if not args.gpu_only:
        models = args.models.split(",") if args.models else (
            (["world"] if _world_available() else []) + ["tiny:sd", "tiny:sdxl", "tiny:flow"])  # fmt: skip
        result["cpu"] = cpu_section(models, args.steps)
        by = {
            (r["algorithm"], r.get("label", "")): r
            for r in result["cpu"]
            if r.get("model") == models[0]
        }
        if ("dpo", "") in by and ("dpo", "ref_forward=separate") in by:
            sep, bat = by[("dpo", "ref_forward=separate")], by[("dpo", "")]
            if "step_s_median" in sep and "step_s_median" in bat:
                result["cpu_dpo_batched_speedup"] = sep["step_s_median"] / bat["step_s_median"]
                print(f"DPO batched vs separate reference forward (CPU, {models[0]}): "
                      f"{result['cpu_dpo_batched_speedup']:.2f}×")  # fmt: skip
    result["gpu"] = gpu_section(args.steps)
    if args.json:
        from mmreward.report import write_json

        write_json(args.json, result)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
