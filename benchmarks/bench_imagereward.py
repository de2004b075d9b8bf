"""ImageReward: our batched scoring vs the official-style loop, same weights, on CPU.

Both paths score the same N PIL images (scikit-image's bundled photographs, resized to
512×512, as a diffusion model would output them) with one prompt each:

- **ours**: ``rm.score(pil_images, prompts=..., batch_size=B)`` — tensor preprocessing and
  one forward per batch of B (``vision_rm.imagereward.ImageReward``);
- **official-style**: ``ImageReward.score(prompt, image)`` called once per image — PIL +
  torchvision preprocessing, eager attention, one image per forward
  (``tests/tiny/imagereward.py:OfficialStyleImageReward``, a re-implementation of the
  official code reading the official checkpoint keys).

The weights are random (no download here), in the official layout, shared by both paths.
Sizes (``--size``): ``tiny`` = the test checkpoint (ViT 32×2, BERT 32×2); ``base`` = BLIP
``vit='base'`` (ViT-B/16 768×12) + BERT-base 768×12; ``full`` = the official ImageReward
(ViT-L/16 1024×24 + BERT-base), heavy on a small CPU: use a small ``--n``. Each timing is
the median of ``--repeats`` rounds (the paths take turns within a round) after a warm-up on
two images; torch's thread count is kept. Ours is also timed from a ``(N,3,H,W)`` tensor
(how a diffusion pipeline hands images over), which skips the PIL → tensor conversion.
The target (ours ≥ 2× the official-style throughput) is printed next to the ratio; missing
it is not an error. The script fails only if the two paths' scores differ by more than 1%
of the largest |score| (they differ by resampling: PIL rounds to uint8, tensors do not).

    python benchmarks/bench_imagereward.py --size tiny --n 64
    python benchmarks/bench_imagereward.py --size full --n 8 --repeats 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests/ package

import mmreward  # noqa: E402
from mmreward.checkpoint import read_state_dict  # noqa: E402
from tests.tiny.imagereward import OfficialStyleImageReward, build_tiny  # noqa: E402

TARGET_RATIO = 2.0
PROMPTS = ["a photo of an astronaut", "a cup of coffee on a table", "a cat sitting"]
#: (med_config overrides, vision sizes) per --size
SIZES = {
    "tiny": ({}, {}),
    "base": (
        {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 512,
        },
        {"vision_width": 768, "vision_layers": 12, "vision_heads": 12},
    ),
    "full": (
        {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 512,
        },
        {"vision_width": 1024, "vision_layers": 24, "vision_heads": 16},
    ),
}


def _interleaved_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict:
    """Run each function once per round, ``repeats`` rounds (so load changes on a shared
    machine hit every path alike); return ``{name: (median wall s, walls, median CPU s)}``.

    CPU time (this process, all threads) is reported too: on a busy machine it moves much
    less than wall time."""
    walls: dict[str, list[float]] = {name: [] for name in fns}
    cpus: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            walls[name].append(time.perf_counter() - t0)
            cpus[name].append(time.process_time() - c0)
    return {
        name: (statistics.median(walls[name]), walls[name], statistics.median(cpus[name]))
        for name in fns
    }


def _images(n: int, side: int) -> list[Image.Image]:
    from skimage import data

    base = [getattr(data, k)() for k in ("astronaut", "coffee", "chelsea")]
    out = []
    for i in range(n):
        im = Image.fromarray(base[i % 3]).resize((side, side), Image.Resampling.BICUBIC)
        out.append(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if (i // 3) % 2 else im)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="number of images (default 32)")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="architecture")
    parser.add_argument("--batch-size", type=int, default=32, help="our batch size (32)")
    parser.add_argument("--image-side", type=int, default=512, help="input image side (512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, median taken")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--batch1",
        action="store_true",
        help="also time our model one image per forward (separates batching from the rest)",
    )
    args = parser.parse_args(argv)
    if min(args.n, args.batch_size, args.repeats, args.image_side) < 1:
        parser.error("--n, --batch-size, --repeats and --image-side must be positive")

    med_over, vision_over = SIZES[args.size]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        kwargs = build_tiny(Path(tmp), seed=args.seed, med=med_over, vision=vision_over)
        rm = mmreward.load("imagereward.v1.0", **kwargs)
        med = json.loads((Path(tmp) / "med_config.json").read_text())
        official = OfficialStyleImageReward(
            read_state_dict(kwargs["weights"]), med, kwargs["config"], rm.tokenizer
        )
        setup_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in rm.parameters())
    images = _images(args.n, args.image_side)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.n)]

    tensors = torch.stack([torch.from_numpy(np.asarray(im).copy()) for im in images])
    tensors = tensors.permute(0, 3, 1, 2).float() / 255  # (N,3,H,W) in [0,1], as a VAE gives

    def ours() -> torch.Tensor:
        return rm.score(images, prompts=prompts, batch_size=args.batch_size).scores

    def ours_tensors() -> torch.Tensor:
        return rm.score(tensors, prompts=prompts, batch_size=args.batch_size).scores

    def official_loop() -> torch.Tensor:
        return torch.tensor([official.score(p, im) for p, im in zip(prompts, images)])

    with torch.no_grad():  # warm-up (allocator, oneDNN caches, lazy imports) on two images
        rm.score(images[:2], prompts=prompts[:2])
        official.score(prompts[0], images[0])

    def ours_batch1() -> torch.Tensor:
        return rm.score(tensors, prompts=prompts, batch_size=1).scores

    paths = {"ours": ours, "ours_tensors": ours_tensors, "official": official_loop}
    if args.batch1:
        paths["ours_batch1"] = ours_batch1
    timed = _interleaved_seconds(paths, args.repeats)
    load_before = os.getloadavg()[0]
    (t_ours, runs_ours, c_ours), (t_tens, runs_tens, c_tens) = timed["ours"], timed["ours_tensors"]
    t_off, runs_off, c_off = timed["official"]
    s_ours, s_off = ours(), official_loop()
    max_abs = (s_ours - s_off).abs().max().item()
    rel_to_scale = max_abs / s_off.abs().max().clamp_min(1e-6).item()
    ratio = t_off / t_ours
    result = {
        "size": args.size,
        "config": rm.config.to_dict(),
        "params": n_params,
        "n": args.n,
        "image_side": args.image_side,
        "batch_size": args.batch_size,
        "setup_s": setup_s,
        "ours_s": t_ours,
        "official_style_s": t_off,
        "ours_images_per_s": args.n / t_ours,
        "official_style_images_per_s": args.n / t_off,
        "ours_from_tensors_s": t_tens,
        "ours_from_tensors_images_per_s": args.n / t_tens,
        "ratio": ratio,
        "ratio_from_tensors": t_off / t_tens,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "cpu_s": {"ours": c_ours, "ours_from_tensors": c_tens, "official_style": c_off},
        "cpu_ratio": c_off / c_ours,
        "ours_batch1_s": timed["ours_batch1"][0] if args.batch1 else None,
        "ours_batch1_cpu_s": timed["ours_batch1"][2] if args.batch1 else None,
        "load_average_1min": load_before,
        "max_abs_score_diff": max_abs,
        "max_score_diff_rel_to_max_score": rel_to_scale,
        "ours_runs_s": runs_ours,
        "ours_from_tensors_runs_s": runs_tens,
        "official_style_runs_s": runs_off,
    }
    c = rm.config
    print(
        f"torch {torch.__version__} | {platform.machine()} | threads {torch.get_num_threads()}"
        f" | size {args.size}: ViT {c.vision_width}x{c.vision_layers} @ {c.image_size}/"
        f"{c.patch_size}, BERT {c.text_hidden}x{c.text_layers}, {n_params / 1e6:.1f}M params"
        f" | N={args.n} PIL {args.image_side}x{args.image_side} | median of {args.repeats}"
    )
    mark = "ok" if result["meets_target"] else "MISSED"
    print(
        f"ours (batch {args.batch_size}): {result['ours_images_per_s']:.2f} img/s"
        f" | official-style loop: {result['official_style_images_per_s']:.2f} img/s"
        f" | ratio {ratio:.2f}x (target >= {TARGET_RATIO:.0f}x {mark})"
    )
    print(
        f"ours from (N,3,H,W) tensors instead of PIL: {args.n / t_tens:.2f} img/s"
        f" | ratio {t_off / t_tens:.2f}x"
    )
    print(
        f"CPU time: ours {c_ours:.2f}s, from tensors {c_tens:.2f}s, official-style {c_off:.2f}s"
        f" | ratio {c_off / c_ours:.2f}x | load average {load_before:.1f} on {os.cpu_count()} cores"
    )
    if args.batch1:
        t1, _, c1 = timed["ours_batch1"]
        print(
            f"ours one image per forward (tensors): {args.n / t1:.2f} img/s, CPU {c1:.2f}s"
            f" | official-style / ours-batch-1: {t_off / t1:.2f}x wall, {c_off / c1:.2f}x CPU"
        )
    print(f"scores: max |difference| {max_abs:.2e} = {rel_to_scale:.2e} of the largest |score|")
    if args.json is not None:
        payload = {
            "torch": torch.__version__,
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "result": result,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    if rel_to_scale > 0.01:
        print("ERROR: the two paths disagree by more than 1% of the score scale", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    np.random.seed(0)
    sys.exit(main())
