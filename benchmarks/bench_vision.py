"""CLIP-family rewards: our batched tensor path vs the official one-image-per-forward PIL loop.

Both sides use the same open_clip architecture (``--arch``, random weights, seeded) and the
same weights; only the pipeline differs:

- **official-style** (what ``hpsv2.score`` / the PickScore and CLIPScore examples do): for
  each image, the PIL eval transform (letterbox for HPS v2, Resize + CenterCrop otherwise),
  one forward of the image *and* of its prompt, normalise, take the score;
- **ours**: ``rm.score(images, prompts, batch_size=B)`` on the decoded images — tensor
  preprocessing, one batched forward per B images, each distinct prompt encoded once.

The inputs are N photographs from scikit-image (random crops to ``--image-size``², flips),
decoded to uint8 once (decoding is not timed). Prompts cycle through ``--n-prompts``
distinct strings (``--n-prompts 0``: every prompt distinct, which isolates batching from
prompt de-duplication). Each timing is the median of ``--repeats`` runs after an untimed run of both paths;
the score difference between the two paths is printed with the timings.

    python benchmarks/bench_vision.py --model hpsv2 --arch ViT-B-16 --n 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

TARGET_RATIO = 2.0  # batched should be ≥ 2× the official loop's images/s (batch 32, CPU)
_MEAN = (0.48145466, 0.4578275, 0.40821073)
_STD = (0.26862954, 0.26130258, 0.27577711)
_PROMPTS = [
    "an astronaut in a white suit",
    "a cup of coffee on a saucer",
    "a ginger cat lying down",
    "a rocket on the launch pad",
    "a photograph of a city at night",
    "a watercolour painting of a lighthouse",
    "a close-up of a red apple",
    "a dog running on the beach",
]


def make_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """N uint8 RGB images (size×size) cropped from scikit-image's bundled photographs."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = Image.fromarray(photos[i % len(photos)])
        side = int(min(im.size) * rng.uniform(0.6, 1.0))
        x0 = int(rng.integers(0, im.size[0] - side + 1))
        y0 = int(rng.integers(0, im.size[1] - side + 1))
        im = im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(np.asarray(im).copy())
    return out


# -- the official-style loop ---------------------------------------------------------------


def _normalise(im: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(_MEAN).view(3, 1, 1)) / torch.tensor(_STD).view(3, 1, 1)


def pil_letterbox(im: Image.Image, size: int) -> torch.Tensor:
    """HPS v2's ResizeMaxSize + zero pad, on PIL."""
    w, h = im.size
    scale = size / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(
        im.resize((nw, nh), Image.Resampling.BICUBIC), ((size - nw) // 2, (size - nh) // 2)
    )
    return _normalise(canvas)


def pil_center(im: Image.Image, size: int) -> torch.Tensor:
    """OpenAI CLIP's Resize(size, bicubic) + CenterCrop(size), on PIL (torchvision)."""
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])
    return _normalise(tf(im))


def official_loop(
    clip: torch.nn.Module,
    tokenizer: Callable,
    transform: Callable[[Image.Image], torch.Tensor],
    formula: Callable[[torch.Tensor], torch.Tensor],
    prefix: str,
    device: torch.device | str = "cpu",
) -> Callable[[list[Image.Image], list[str]], torch.Tensor]:
    @torch.no_grad()
    def run(images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        scores = []
        for im, prompt in zip(images, prompts):
            image = transform(im).unsqueeze(0).to(device)
            text = tokenizer([prefix + prompt]).to(device)
            img = clip.encode_image(image)
            txt = clip.encode_text(text)
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            scores.append(formula((img @ txt.T).diagonal())[0])  # as hpsv2.score does
        return torch.stack(scores)

    return run


# -- benchmark -------------------------------------------------------------------------------


def _median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    times = []  # the untimed correctness run before this is the warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def build(model: str, arch: str, seed: int, device: str = "cpu"):
    """Our reward (random weights) and the official loop over an identical open_clip CLIP."""
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    from vision_rm.clip_backbone import resolve_open_clip_config
    from vision_rm.clip_scores import clipscore, hpsv2, pickscore

    cfg = resolve_open_clip_config(arch)
    torch.manual_seed(seed)
    factory = {"hpsv2": hpsv2, "pickscore": pickscore, "clipscore": clipscore}[model]
    rm = factory(open_clip_config=cfg).eval()
    clip = CLIP(**cfg).eval()
    clip.load_state_dict(rm.backbone.model.state_dict())
    size = rm.native_resolution[0]
    if model == "hpsv2":
        transform, formula = (lambda im: pil_letterbox(im, size)), (lambda c: c)
    elif model == "pickscore":
        scale = float(rm.backbone.logit_scale.exp())
        transform, formula = (lambda im: pil_center(im, size)), (lambda c: scale * c)
    else:
        transform, formula = (lambda im: pil_center(im, size)), (lambda c: 2.5 * c.clamp_min(0))
    rm, clip = rm.to(device), clip.to(device)
    loop = official_loop(clip, SimpleTokenizer(), transform, formula, rm.prompt_prefix, device)
    return rm, loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["hpsv2", "pickscore", "clipscore"], default="hpsv2")
    parser.add_argument(
        "--arch", default="ViT-B-16", help="open_clip architecture (ViT-B-16, ViT-L-14, ViT-H-14)"
    )
    parser.add_argument("--n", type=int, default=32, help="number of images (default 32)")
    parser.add_argument("--batch-size", type=int, default=32, help="our batch size (default 32)")
    parser.add_argument("--image-size", type=int, default=512, help="input images are S×S")
    parser.add_argument(
        "--n-prompts", type=int, default=4, help="distinct prompts, cycled (0: all distinct)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per path (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both paths on it)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    rm, loop = build(args.model, args.arch, args.seed, args.device)
    build_s = time.perf_counter() - t0
    arrays = make_images(args.n, args.image_size, args.seed)
    pils = [Image.fromarray(a) for a in arrays]
    if args.n_prompts > 0:
        prompts = [_PROMPTS[i % args.n_prompts % len(_PROMPTS)] for i in range(args.n)]
    else:
        prompts = [f"{_PROMPTS[i % len(_PROMPTS)]}, variation {i}" for i in range(args.n)]

    def ours() -> torch.Tensor:
        return rm.score(arrays, prompts=prompts, batch_size=args.batch_size).scores.cpu()

    def official() -> torch.Tensor:
        return loop(pils, prompts).cpu()

    s_ours, s_official = ours(), official()
    diff = (s_ours - s_official).abs()
    rel = diff / s_official.abs().clamp_min(1e-8)
    t_ours, runs_ours = _median_seconds(ours, args.repeats)
    t_official, runs_official = _median_seconds(official, args.repeats)
    n_params = sum(p.numel() for p in rm.parameters())
    result = {
        "model": args.model,
        "arch": args.arch,
        "params": n_params,
        "weights": "random (seeded), identical on both paths",
        "n": args.n,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "distinct_prompts": len(set(prompts)),
        "threads": torch.get_num_threads(),
        "device": args.device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "build_s": build_s,
        "ours_s": t_ours,
        "official_s": t_official,
        "ours_images_per_s": args.n / t_ours,
        "official_images_per_s": args.n / t_official,
        "ratio": t_official / t_ours,
        "target_ratio": TARGET_RATIO,
        "meets_target": t_official / t_ours >= TARGET_RATIO,
        "max_abs_score_diff": float(diff.max()),
        "max_rel_score_diff": float(rel.max()),
        "max_diff_over_score_std": float(diff.max() / s_official.std().clamp_min(1e-12)),
        "mean_score": float(s_official.mean()),
        "score_std": float(s_official.std()),
        "ours_runs_s": runs_ours,
        "official_runs_s": runs_official,
    }
    print(
        f"{args.model} on open_clip {args.arch} ({n_params / 1e6:.0f}M params, random weights), "
        f"{args.n} images {args.image_size}², batch {args.batch_size}, "
        f"{result['distinct_prompts']} distinct prompts, {result['threads']} threads, CPU"
    )
    print(
        f"  official loop (PIL, 1 image/forward): {result['official_images_per_s']:7.2f} images/s"
    )
    print(f"  ours (tensor, batched):               {result['ours_images_per_s']:7.2f} images/s")
    verdict = "meets" if result["meets_target"] else "misses"
    print(f"  ratio {result['ratio']:.2f}× ({verdict} the {TARGET_RATIO:.0f}× target)")
    print(
        f"  score difference: max |Δ| {result['max_abs_score_diff']:.2e} "
        f"= {result['max_diff_over_score_std']:.2%} of the scores' std "
        f"(mean {result['mean_score']:.4f}, std {result['score_std']:.4f}; "
        f"max relative {result['max_rel_score_diff']:.2e}: random weights put scores near 0)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
