"""The toolkit demo: score bundled images with every analytic reward and write a report.

Data (built offline, in seconds): scikit-image's sample photos (grey ones made RGB,
resized to 128 px on the short side with tensor ops) and scikit-learn's 8×8 digits,
upscaled to 32×32, coloured with named colours on dark or light backgrounds, each with a
Gaussian-blurred twin. Every item has a caption ("a red seven on a dark background").

Rewards: every registered analytic reward (:mod:`mmreward.analytic`), loaded by name.

Outputs in ``out_dir``: ``scores.jsonl`` (one row per item and reward), ``summary.json``
(per-reward statistics, Spearman correlations between rewards, sanity checks, timings),
PNG plots and ``report.html`` (best/worst galleries per reward), all under ``images/``.

Run it with ``mmreward demo --out runs/demo`` or ``python -m mmreward.demo --out runs/demo``.

>>> summary = run_demo("/tmp/mmreward-demo", n_digits=4, progress=False)  # doctest: +SKIP
>>> summary["checks"]["blurred_digits_less_sharp"]["fraction"]  # doctest: +SKIP
1.0
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmreward.interface import RewardOutput
from mmreward.io import numpy_to_tensor
from mmreward.metrics import spearman
from mmreward.preprocess import resize_shortest
from mmreward.registry import get_spec, list_rewards, load
from mmreward.report import (
    Figure,
    Gallery,
    GalleryItem,
    Section,
    plot_heatmap,
    plot_score_histograms,
    save_png,
    write_gallery_html,
    write_json,
    write_jsonl,
)

# -- defaults (one line each) ---------------------------------------------------------
N_DIGITS = 60  # digits drawn from sklearn's 1797; each also gets a blurred twin
PHOTO_SHORT_SIDE = 128  # sample photos are resized to this many pixels on the short side
DIGIT_SIZE = 32  # 8×8 digits are upscaled (bilinear) to this size
BLUR_SIGMA = 1.2  # Gaussian blur σ (pixels at DIGIT_SIZE) of the blurred twins
GALLERY_SIZE = 6  # best / worst items shown per reward

#: scikit-image sample images (all bundled with the wheel) and their captions.
SAMPLE_IMAGES: dict[str, str] = {
    "astronaut": "a portrait of an astronaut in a spacesuit in front of a flag",
    "coffee": "a cup of coffee on a saucer",
    "chelsea": "a tabby cat looking at the camera",
    "rocket": "a rocket on its launch pad under a blue sky",
    "immunohistochemistry": "a microscope image of stained tissue",
    "hubble_deep_field": "distant galaxies on a black sky",
    "retina": "a fundus photograph of a human retina",
    "colorwheel": "a colour wheel",
    "logo": "the scikit-image logo",
    "camera": "a black-and-white photo of a cameraman with a tripod",
    "coins": "a grey photo of old coins",
    "moon": "a grey photo of the lunar surface",
    "page": "a scanned page of printed text",
    "clock": "a grey photo of a wall clock",
    "brick": "a grey texture of a brick wall",
    "grass": "a grey texture of grass",
    "gravel": "a grey texture of gravel",
    "horse": "a black silhouette of a horse",
}

#: named digit colours (RGB in [0,1]) and backgrounds.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.20, 0.80),
    "orange": (1.00, 0.55, 0.00),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "dark": (0.06, 0.06, 0.09),
    "light": (0.95, 0.95, 0.91),
}
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class DemoItem:
    """One image to score. ``attrs`` holds what the sanity checks need (kind, pair, …)."""

    id: str
    caption: str
    image: Tensor  # (3,H,W) float in [0,1]
    attrs: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ data


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of a (B,C,H,W) tensor, reflect padding, radius ⌈3σ⌉."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def sample_photos(
    names: Sequence[str] | None = None, short_side: int = PHOTO_SHORT_SIDE
) -> tuple[list[DemoItem], list[str]]:
    """scikit-image sample images as items, and the names that could not be loaded."""
    import skimage.data

    items, skipped = [], []
    for name in names if names is not None else SAMPLE_IMAGES:
        try:
            arr = getattr(skimage.data, name)()
        except Exception:  # missing optional file (pooch / network); skip it
            skipped.append(name)
            continue
        grey = arr.ndim == 2
        x = numpy_to_tensor(np.asarray(arr), "images")  # grey → RGB, RGBA → on white
        x = resize_shortest(x[None], short_side, mode="bilinear", antialias=True)[0]
        items.append(
            DemoItem(
                id=f"photo-{name}",
                caption=SAMPLE_IMAGES.get(name, name.replace("_", " ")),
                image=x.clamp(0, 1).contiguous(),
                attrs={"kind": "photo", "source": f"skimage.data.{name}", "grey": grey},
            )
        )
    return items, skipped


def coloured_digits(
    n_digits: int = N_DIGITS, seed: int = 0, size: int = DIGIT_SIZE, blur_sigma: float = BLUR_SIGMA
) -> list[DemoItem]:
    """``n_digits`` sklearn digits, coloured on a background, each followed by a blurred twin.

    The digit's ink (0..16) is the alpha of a named colour over a named background; the
    choice of digits, colours and backgrounds is drawn from ``seed``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(digits.images), size=min(n_digits, len(digits.images)), replace=False)
    colour_names, bg_names = list(COLOURS), list(BACKGROUNDS)
    ink = torch.from_numpy(digits.images[idx].astype(np.float32) / 16.0)[:, None]
    alpha = F.interpolate(ink, size=(size, size), mode="bilinear", align_corners=False)
    alpha = alpha.clamp(0, 1)
    items = []
    for k, i in enumerate(idx):
        colour = colour_names[rng.integers(len(colour_names))]
        bg = bg_names[rng.integers(len(bg_names))]
        fg_rgb = torch.tensor(COLOURS[colour]).view(3, 1, 1)
        bg_rgb = torch.tensor(BACKGROUNDS[bg]).view(3, 1, 1)
        sharp = bg_rgb * (1 - alpha[k]) + fg_rgb * alpha[k]
        blurred = gaussian_blur(sharp[None], blur_sigma)[0].clamp(0, 1)
        label = int(digits.target[i])
        word = _DIGIT_WORDS[label]
        base = f"digit-{int(i):04d}-{colour}-{bg}"
        attrs = {"kind": "digit", "label": label, "colour": colour, "background": bg, "pair": base}
        article = "an" if colour[0] in "aeiou" else "a"
        items.append(
            DemoItem(
                base,
                f"{article} {colour} {word} on a {bg} background",
                sharp,
                {**attrs, "blurred": False},
            )
        )
        items.append(
            DemoItem(
                f"{base}-blur",
                f"a blurry {colour} {word} on a {bg} background",
                blurred,
                {**attrs, "blurred": True},
            )
        )
    return items


def build_demo_data(
    n_digits: int = N_DIGITS, seed: int = 0, photos: Sequence[str] | None = None
) -> tuple[list[DemoItem], dict[str, Any]]:
    """All demo items (photos, then digits) and a short description of the data."""
    photo_items, skipped = sample_photos(photos)
    digit_items = coloured_digits(n_digits, seed)
    info = {
        "n_items": len(photo_items) + len(digit_items),
        "n_photos": len(photo_items),
        "n_digit_items": len(digit_items),
        "photos_skipped": skipped,
        "seed": seed,
    }
    return photo_items + digit_items, info


# --------------------------------------------------------------------------- scoring


def analytic_reward_names() -> list[str]:
    """Registered rewards implemented in :mod:`mmreward.analytic` (no weights needed)."""
    names = []
    for name in list_rewards():
        factory = get_spec(name).factory
        target = factory if isinstance(factory, str) else getattr(factory, "__module__", "")
        if target.startswith("mmreward.analytic"):
            names.append(name)
    return names


def score_items(
    items: Sequence[DemoItem], rewards: Sequence[str], progress: bool = True
) -> tuple[dict[str, RewardOutput], dict[str, float]]:
    """Score every item with every reward: outputs and seconds spent, by reward name."""
    from tqdm.auto import tqdm

    images = [it.image for it in items]
    outputs, seconds = {}, {}
    bar = tqdm(rewards, desc="scoring", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        rm = load(name)
        outputs[name] = rm.score(images, batch_size=64)
        seconds[name] = time.perf_counter() - t0
    return outputs, seconds


# ---------------------------------------------------------------------------- checks


def _pair_fraction(better: np.ndarray, worse: np.ndarray) -> tuple[float, int]:
    """Fraction of pairs (elementwise, or all pairs if shapes differ) with better > worse."""
    if better.size == 0 or worse.size == 0:
        return float("nan"), 0
    if better.shape == worse.shape:
        wins = better > worse
    else:
        wins = better[:, None] > worse[None, :]
    return float(wins.mean()), int(wins.size)


def sanity_checks(
    items: Sequence[DemoItem], scores: dict[str, np.ndarray], threshold: float = 0.9
) -> dict[str, dict[str, Any]]:
    """Known orderings the analytic rewards must reproduce, with the measured fractions."""
    kind = np.array([it.attrs.get("kind") for it in items])
    blurred = np.array([bool(it.attrs.get("blurred")) for it in items])
    grey = np.array([bool(it.attrs.get("grey")) for it in items])
    sharp_idx = np.flatnonzero((kind == "digit") & ~blurred)
    blur_idx = sharp_idx + 1  # coloured_digits puts each blurred twin right after its original
    pairs_ok = all(
        items[b].attrs.get("pair") == items[s].attrs.get("pair") and blurred[b]
        for s, b in zip(sharp_idx, blur_idx)
    )
    if not pairs_ok:
        raise RuntimeError("demo data: every sharp digit must be followed by its blurred twin")
    colour_photos = np.flatnonzero((kind == "photo") & ~grey)
    grey_photos = np.flatnonzero((kind == "photo") & grey)

    specs = [
        (
            "blurred_digits_less_sharp",
            "sharpness.laplacian",
            sharp_idx,
            blur_idx,
            "a sharp digit scores higher on sharpness than its blurred twin",
        ),
        (
            "blurred_digits_more_compressible",
            "jpeg.compressibility",
            blur_idx,
            sharp_idx,
            "a blurred digit compresses to a smaller JPEG than its sharp original",
        ),
        (
            "colour_photos_more_colourful",
            "colorfulness.hasler",
            colour_photos,
            grey_photos,
            "every colour photo scores higher on colourfulness than every grey photo",
        ),
        (
            "coloured_digits_more_colourful",
            "colorfulness.hasler",
            sharp_idx,
            grey_photos,
            "every coloured digit scores higher on colourfulness than every grey photo",
        ),
    ]
    checks: dict[str, dict[str, Any]] = {}
    for name, reward, better, worse, description in specs:
        if reward not in scores:
            continue
        frac, n = _pair_fraction(scores[reward][better], scores[reward][worse])
        checks[name] = {
            "reward": reward,
            "description": description,
            "fraction": frac,
            "n_pairs": n,
            "threshold": threshold,
            "passed": bool(n > 0 and frac >= threshold),
        }
    if {"jpeg.compressibility", "jpeg.incompressibility"} <= scores.keys():
        err = float(np.abs(scores["jpeg.compressibility"] + scores["jpeg.incompressibility"]).max())
        checks["jpeg_rewards_are_negatives"] = {
            "reward": "jpeg.compressibility + jpeg.incompressibility",
            "description": "compressibility is exactly −incompressibility on every item",
            "max_abs_error": err,
            "n_pairs": len(items),
            "passed": err == 0.0,
        }
    return checks


def spearman_matrix(scores: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Pairwise Spearman rank correlations (average ranks); NaN where a reward is constant."""
    names = list(scores)
    m = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            with contextlib.suppress(ValueError):  # constant scores: undefined, stays NaN
                m[i, j] = spearman(scores[a], scores[b])
    return names, m


def _stats(x: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
    }


# ---------------------------------------------------------------------------- report


def _gallery(title, items, order, values, subs, name, paths) -> Gallery:
    cards = []
    for i in order:
        shown = {name: float(values[i])}
        shown.update({k: float(v[i]) for k, v in subs.items()})
        cards.append(GalleryItem(paths[i], items[i].caption, shown))
    return Gallery(title, cards)


def _report_sections(items, outputs, summary, paths, figures) -> list[Section]:
    rewards = summary["rewards"]
    overview = Section(
        "Overview",
        f"{summary['data']['n_items']} items ({summary['data']['n_photos']} scikit-image "
        f"photos, {summary['data']['n_digit_items']} coloured scikit-learn digits, half of "
        f"them blurred) scored with {len(rewards)} analytic rewards in "
        f"{summary['wall_time_s']:.1f} s.",
        figures=figures,
        table=[
            {
                "reward": n,
                **{k: r[k] for k in ("mean", "std", "min", "max")},
                "best": r["best"],
                "worst": r["worst"],
            }
            for n, r in rewards.items()
        ],
    )
    checks = Section(
        "Sanity checks",
        "Orderings every correct implementation must reproduce; fraction = share of "
        "pairs ordered as expected.",
        table=[{"check": n, **c} for n, c in summary["checks"].items()],
    )
    sections = [overview, checks]
    for name, out in outputs.items():
        values = out.scores.detach().float().cpu().numpy()
        subs = {k: v.detach().float().cpu().numpy() for k, v in out.sub_scores.items()}
        order = np.argsort(-values, kind="stable")
        k = min(GALLERY_SIZE, len(items))
        spec = get_spec(name)
        text = spec.description + (f" Paper: {spec.paper}." if spec.paper else "")
        sections.append(
            Section(
                name,
                text,
                galleries=[
                    _gallery(f"best {k}", items, order[:k], values, subs, name, paths),
                    _gallery(f"worst {k}", items, order[::-1][:k], values, subs, name, paths),
                ],
            )
        )
    return sections


# ------------------------------------------------------------------------------ main


def run_demo(
    out_dir: str | Path,
    n_digits: int = N_DIGITS,
    seed: int = 0,
    progress: bool = True,
    rewards: Sequence[str] | None = None,
    photos: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score the bundled data with the analytic rewards; write files; return the summary.

    Args:
        out_dir: output folder (created; files in it are overwritten).
        n_digits: sklearn digits to use (each also appears blurred).
        seed: draws the digits and their colours.
        progress: show tqdm progress bars.
        rewards: reward names (default: every registered analytic reward).
        photos: scikit-image sample names (default: :data:`SAMPLE_IMAGES`).

    Returns:
        The summary also written to ``summary.json``.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    # -- data
    t0 = time.perf_counter()
    items, data_info = build_demo_data(n_digits, seed, photos)
    t_data = time.perf_counter() - t0

    # -- score
    names = list(rewards) if rewards is not None else analytic_reward_names()
    outputs, t_score = score_items(items, names, progress)
    scores = {
        n: o.scores.detach().float().cpu().numpy().astype(np.float64) for n, o in outputs.items()
    }

    # -- analyse
    checks = sanity_checks(items, scores)
    corr_names, corr = spearman_matrix(scores)
    reward_stats = {}
    for n, s in scores.items():
        reward_stats[n] = {
            **_stats(s),
            "best": items[int(np.argmax(s))].id,
            "worst": items[int(np.argmin(s))].id,
            "description": get_spec(n).description,
        }

    # -- write
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    paths = []
    for it in tqdm(items, desc="images", disable=not progress):
        paths.append(save_png(it.image, img_dir / f"{it.id}.png").relative_to(out))
    rows = []
    for n, o in outputs.items():
        for it, path, row in zip(items, paths, o.to_rows()):
            rows.append(
                {
                    "id": it.id,
                    "caption": it.caption,
                    "reward": n,
                    "score": row["score"],
                    "sub_scores": row.get("sub_scores", {}),
                    "image": path.as_posix(),
                }
            )
    write_jsonl(out / "scores.jsonl", rows)
    hist = plot_score_histograms(scores, img_dir / "plot_score_histograms.png")
    heat = plot_heatmap(
        corr,
        corr_names,
        img_dir / "plot_spearman.png",
        title="Spearman rank correlation between rewards",
    )
    figures = [
        Figure(hist.relative_to(out), "score distribution per reward (dashed: mean)"),
        Figure(heat.relative_to(out), "Spearman rank correlation between rewards"),
    ]
    summary: dict[str, Any] = {
        "data": data_info,
        "rewards": reward_stats,
        "spearman": {"names": corr_names, "matrix": corr},
        "checks": checks,
        "all_checks_passed": all(c["passed"] for c in checks.values()),
        "timings_s": {"data": t_data, "score": t_score},
        "files": {
            "scores": "scores.jsonl",
            "report": "report.html",
            "figures": [f.path for f in figures],
        },
    }
    # the report states the wall time, so it is measured up to here (the HTML is quick)
    summary["wall_time_s"] = time.perf_counter() - t_start
    write_gallery_html(
        out / "report.html",
        "mmreward demo: analytic rewards on bundled images",
        _report_sections(items, outputs, summary, paths, figures),
        subtitle=f"{data_info['n_items']} items · seed {seed}",
    )
    summary["timings_s"]["write"] = time.perf_counter() - t0
    summary["wall_time_s"] = time.perf_counter() - t_start
    write_json(out / "summary.json", summary)
    return summary


def _print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    print(f"\nwrote {out_dir / 'report.html'} ({summary['wall_time_s']:.1f} s)")
    for name, r in summary["rewards"].items():
        print(f"  {name:26s} mean {r['mean']:10.4g}  std {r['std']:10.4g}  best {r['best']}")
    for name, c in summary["checks"].items():
        measured = c.get("fraction", c.get("max_abs_error"))
        print(f"  check {name:34s} {measured:.4g}  {'ok' if c['passed'] else 'FAILED'}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--n-digits", type=int, default=N_DIGITS, help="digits to use")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    summary = run_demo(
        args.out, n_digits=args.n_digits, seed=args.seed, progress=not args.no_progress
    )
    _print_summary(summary, Path(args.out))
    return summary


if __name__ == "__main__":
    main()
