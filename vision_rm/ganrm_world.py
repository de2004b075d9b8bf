"""GAN-RM efficacy on the built-in world: learn a look from ≤ 500 unpaired images.

**The look: bold strokes.** The world's digit scans are handwritten with pens of every
width, so the base pipeline draws thin and bold digits for the same prompt. The gold
measure of the look is :func:`ink_coverage`: the fraction of the digit's bounding box
covered by ink (the gold reward's normalised ink map > 0.5; the box spans the rows and
columns holding such pixels). It is deterministic, scale-free (small and large digits
score alike) and independent of the prompt.

**Target set (Preference Proxy Data).** World renders (train digit scans, train prompts,
jitter) whose coverage is in the top quarter of the renders, passed through the
pipeline's VAE (encode → decode) so they live in the generator's image space: raw renders
are far sharper than anything the VAE decodes (sharpness ratio ≈ 1.5 vs ≈ 0.5), so a
discriminator could separate them by sharpness alone (``--target-space raw`` keeps them).
No prompts, no pairs, no preference labels.

**Protocol.**

1. round 0: GAN-RM (the world's tiny-CLIP vision tower + MLP head, fully tuned) learns
   targets vs fresh policy samples on train prompts;
2. rounds 1…R: rank-based bootstrapping on fresh samples of the train prompts
   (:func:`vision_rm.ganrm.bootstrap_round`);
3. after every round: Best-of-N (N = 8) on a fixed pool of held-out candidates
   (``world:test`` prompts, ``--eval-slots`` prompt slots × N seeds): coverage of the
   GAN-RM pick against a random pick (the slot's mean: the expected random pick), paired
   95% intervals, and the world's gold reward of the pick (does it collapse?);
4. GAN-RM writes winner/loser pairs (best vs worst of each train prompt's samples) and
   Diffusion-DPO (``configs/align/dpo_world.yaml``, LoRA) trains on them; base and tuned
   policies are sampled on the held-out prompts with the same noise and compared.

    python -m vision_rm.ganrm_world --out runs/ganrm_world
    python -m vision_rm.ganrm_world --out /tmp/g --rounds 1 --eval-slots 64 --dpo-steps 10

Writes ``ganrm_world.json``, ``report.html`` and PNGs (gain per round, Best-of-N grid,
before/after grid, target images) into ``--out``; the GAN-RM under ``--out/gan_rm``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmreward.interface import RewardInput, RewardModel, RewardOutput
from vision_rm.ganrm import (
    BootstrapConfig,
    DiscriminatorConfig,
    GanRewardModel,
    bootstrap_round,
    from_clip,
    train_discriminator,
    write_dpo_pairs,
)

INK_THRESHOLD = 0.5  # normalised ink above which a pixel counts as stroke
TARGET_QUANTILE = 0.75  # targets: renders whose coverage is in the top quarter
WORLD_PREPROCESS = {"resolution": 32, "resize": "bilinear", "crop": "none",
                    "mean": "openai_clip", "std": "openai_clip"}  # fmt: skip

# -- the gold measure of the look --------------------------------------------------------


def ink_coverage(images: Tensor, threshold: float = INK_THRESHOLD) -> Tensor:
    """Boldness ``(B,)`` in [0,1]: inked fraction of the digit's bounding box.

    Ink is :func:`mmreward.world.gold.ink_map` (distance from the border's median colour,
    normalised by the 16 strongest pixels); a pixel is inked when its ink exceeds
    ``threshold``; the box spans every row and column holding an inked pixel. An image
    with no inked pixel scores 0.

    >>> x = torch.zeros(1, 3, 32, 32); x[:, :, 8:24, 12:20] = 1.0   # a solid bar
    >>> ink_coverage(x).tolist()
    [1.0]
    """
    from mmreward.world.gold import ink_map

    ink = ink_map(images.float())[:, 0] > threshold
    area = _span(ink.any(dim=2)) * _span(ink.any(dim=1))
    return ink.flatten(1).sum(dim=1).float() / area.clamp_min(1).float()


def _span(mask: Tensor) -> Tensor:
    """``(B,)`` last − first + 1 of the True entries of each ``(B, L)`` row (0 if none)."""
    length = mask.shape[1]
    first = mask.int().argmax(dim=1)
    last = length - 1 - mask.flip(1).int().argmax(dim=1)
    return torch.where(mask.any(dim=1), last - first + 1, torch.zeros_like(first))


class WorldLook(RewardModel):
    """The look's gold measure as a reward model (``ink_coverage``; not differentiable)."""

    inputs = ("images",)
    native_resolution = (32, 32)

    def compute(self, batch: RewardInput) -> RewardOutput:
        return RewardOutput(scores=ink_coverage(batch.images))


# -- data --------------------------------------------------------------------------------


def vae_roundtrip(policy: Any, images: Tensor, seed: int = 0, batch_size: int = 256) -> Tensor:
    """Images through the policy's VAE (encode with posterior noise, decode), in [0,1]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(policy.decode(policy.encode(images[i : i + batch_size], g)).cpu())
    return torch.cat(out)


def target_images(
    n: int = 500,
    policy: Any = None,
    quantile: float = TARGET_QUANTILE,
    seed: int = 0,
    pool_factor: int = 5,
) -> tuple[Tensor, dict[str, float]]:
    """``n`` unpaired target images with the look, and how they were chosen.

    ``pool_factor·n`` world renders (train scans, train prompts, jitter; through the
    ``policy``'s VAE when given) are ranked by :func:`ink_coverage`; the first ``n`` whose
    coverage is at least the pool's ``quantile`` are kept.
    """
    from mmreward.world.data import sample_world

    pool_n = max(pool_factor * n, math.ceil(n / (1 - quantile)) + 1)
    pool = sample_world(pool_n, digits="train", prompts="train", seed=seed).images
    if policy is not None:
        pool = vae_roundtrip(policy, pool, seed)
    cover = ink_coverage(pool)
    threshold = float(cover.quantile(quantile))
    keep = torch.nonzero(cover >= threshold).flatten()[:n]
    info = {
        "pool": pool_n,
        "threshold": threshold,
        "pool_mean_coverage": float(cover.mean()),
        "target_mean_coverage": float(cover[keep].mean()),
    }
    return pool[keep].contiguous(), info


def policy_samples(
    policy: Any, prompts: Sequence[str], per_prompt: int, seed: int, batch_size: int = 64
) -> Tensor:
    """``(P, per_prompt, 3, H, W)`` world-sampler images of each prompt (seeded)."""
    from diffusion_align.evaluate import generate

    flat = [p for p in prompts for _ in range(per_prompt)]
    images = generate(policy, flat, _eval_sample(), seed=seed, batch_size=batch_size)
    return images.view(len(prompts), per_prompt, *images.shape[1:])


def _eval_sample():
    """The world's evaluation sampler (deterministic DDIM, 20 steps, CFG 3)."""
    from diffusion_align.efficacy import EVAL_SAMPLE

    return EVAL_SAMPLE


# -- Best-of-N statistics ----------------------------------------------------------------


def bon_gain(selector: Tensor, measure: Tensor, n: int | None = None) -> dict[str, Any]:
    """Best-of-n by ``selector (P, N)``, measured by ``measure (P, N)``.

    Uses the first ``n`` candidates of each row (default all). Returns the mean measure of
    the picks, of a random pick (each row's mean: its expectation), and their paired
    difference with a 95% interval.
    """
    from diffusion_align.evaluate import mean_ci, paired_difference
    from mmreward.selection import best_of_n

    n = n or selector.shape[1]
    s, m = selector[:, :n].float(), measure[:, :n].double()
    pick = best_of_n(s)
    picked = m.gather(1, pick[:, None])[:, 0]
    random_pick = m.mean(dim=1)
    return {
        "n": n,
        "pick": mean_ci(picked),
        "random": mean_ci(random_pick),
        "gain": paired_difference(random_pick, picked),
    }


def _score(reward: RewardModel, images: Tensor, prompts: Sequence[str] | None = None) -> Tensor:
    kwargs: dict[str, Any] = {"batch_size": 256}
    if "prompts" in reward.inputs:
        kwargs["prompts"] = list(prompts or [])
    return reward.score(images, **kwargs).scores.float().cpu()


def evaluate_round(
    model: GanRewardModel,
    pool: Tensor,
    look: Tensor,
    gold: Tensor,
    ns: Sequence[int] = (2, 4, 8),
) -> dict[str, Any]:
    """Best-of-N with GAN-RM on the held-out pool: look and gold gains over a random pick."""
    p, n = pool.shape[:2]
    scores = _score(model, pool.flatten(0, 1)).view(p, n)
    out = {
        f"bon{k}": {"look": bon_gain(scores, look, k), "gold": bon_gain(scores, gold, k)}
        for k in ns
        if k <= n
    }
    corr = torch.corrcoef(torch.stack([scores.flatten(), look.flatten().float()]))[0, 1]
    out["corr_score_look"] = float(corr)
    out["scores"] = scores
    return out


# -- figures -----------------------------------------------------------------------------


def plot_round_gains(rounds: Sequence[dict[str, Any]], oracle: dict[str, Any], path: Path) -> Path:
    """Best-of-N look gain (± 95% CI) per bootstrap round, with the gold-look oracle."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ks = sorted({int(k[3:]) for r in rounds for k in r if k.startswith("bon")})
    for k in ks:
        xs = [r["round"] for r in rounds]
        g = [r[f"bon{k}"]["look"]["gain"] for r in rounds]
        ys = [d["mean"] for d in g]
        err = [[d["mean"] - d["ci_low"] for d in g], [d["ci_high"] - d["mean"] for d in g]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label=f"GAN-RM Best-of-{k}")
    top = oracle[f"bon{ks[-1]}"]["gain"]["mean"]
    ax.axhline(top, color="grey", linestyle="--", label=f"oracle Best-of-{ks[-1]} (gold look)")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("bootstrap round (0 = initial discriminator)")
    ax.set_ylabel("ink coverage gain over a random pick")
    ax.set_xticks([r["round"] for r in rounds])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _interleave_rows(a: Tensor, b: Tensor, ncol: int) -> Tensor:
    """Rows of ``a`` and ``b`` alternating (``ncol`` images per row)."""
    rows = []
    for i in range(0, min(len(a), len(b)), ncol):
        rows += [a[i : i + ncol], b[i : i + ncol]]
    return torch.cat(rows)


# -- the run -----------------------------------------------------------------------------


def _pack(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "scores"}


def run(
    out: str | Path,
    n_targets: int = 500,
    rounds: int = 2,
    per_prompt: int = 3,
    n_candidates: int = 8,
    eval_slots: int = 256,
    dpo_steps: int = 100,
    pairs_per_prompt: int = 3,
    epochs: int = 8,
    bootstrap_epochs: int = 3,
    target_space: str = "vae",
    seed: int = 0,
    eval_seed: int = 1234,
) -> dict[str, Any]:
    """The whole protocol (module docstring); writes the report into ``out``."""
    import mmreward
    from diffusion_align.cli import build_policy, build_trainer, load_config
    from diffusion_align.config import ModelConfig
    from diffusion_align.data import world_prompts
    from diffusion_align.efficacy import compare
    from diffusion_align.evaluate import evaluate_policy
    from mmreward.report import Figure, Section, save_image_grid, write_gallery_html, write_json
    from mmreward.world.gold import assets_dir

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    timings: dict[str, float] = {}
    gold_rm = mmreward.load("gold.world")
    look_rm = WorldLook()
    base = build_policy(ModelConfig(pretrained="world"))
    base.raw_denoiser.eval()
    train_prompts, test_prompts = world_prompts("train"), world_prompts("test")

    # -- targets ------------------------------------------------------------------------
    t0 = time.time()
    targets, target_info = target_images(
        n_targets, base if target_space == "vae" else None, seed=seed
    )
    save_image_grid(targets[:64], out / "targets.png", nrow=16)
    timings["targets_s"] = time.time() - t0

    # -- held-out Best-of-N pool: eval_slots prompt slots × n_candidates seeds -------------
    t0 = time.time()
    slots = [test_prompts[i % len(test_prompts)] for i in range(eval_slots)]
    pool = policy_samples(base, slots, n_candidates, seed=eval_seed)
    flat_prompts = [p for p in slots for _ in range(n_candidates)]
    look = _score(look_rm, pool.flatten(0, 1)).view(eval_slots, n_candidates)
    gold = _score(gold_rm, pool.flatten(0, 1), flat_prompts).view(eval_slots, n_candidates)
    ns = [k for k in (2, 4, 8, 16) if k <= n_candidates]
    oracle = {f"bon{k}": bon_gain(look, look, k) for k in ns}
    timings["eval_pool_s"] = time.time() - t0

    # -- round 0 and bootstrapping ----------------------------------------------------------
    model = from_clip(assets_dir() / "clip", preprocess=WORLD_PREPROCESS, seed=seed)
    dcfg = DiscriminatorConfig(epochs=epochs, seed=seed)
    bcfg = BootstrapConfig()
    train_pools: list[Tensor] = []
    round_rows: list[dict[str, Any]] = []
    for r in range(rounds + 1):
        t0 = time.time()
        fresh = policy_samples(base, train_prompts, per_prompt, seed=seed * 1000 + r + 1)
        train_pools.append(fresh)
        flat = fresh.flatten(0, 1)
        gen_s = time.time() - t0
        t0 = time.time()
        if r == 0:
            history = train_discriminator(model, targets, flat, None, dcfg, "GAN-RM round 0")
            labels_info: dict[str, Any] = {"negatives": len(flat)}
        else:
            rcfg = DiscriminatorConfig(epochs=bootstrap_epochs, seed=seed + r)
            pl, history = bootstrap_round(model, targets, flat, bcfg, rcfg, f"GAN-RM round {r}")
            chosen_look = ink_coverage(flat[pl.index])
            labels_info = {
                "soft_positives": pl.n_positive,
                "negatives": pl.n_negative,
                "look_of_positives": float(chosen_look[: pl.n_positive].mean()),
                "look_of_negatives": float(chosen_look[pl.n_positive :].mean()),
                "look_of_all_samples": float(ink_coverage(flat).mean()),
            }
        train_s = time.time() - t0
        res = evaluate_round(model, pool, look, gold, ns)
        row = {"round": r, **_pack(res), "history": history, "labels": labels_info,
               "generate_s": round(gen_s, 1), "train_s": round(train_s, 1)}  # fmt: skip
        round_rows.append(row)
        g = res[f"bon{n_candidates}"]["look"]["gain"]
        print(f"round {r}: Best-of-{n_candidates} look gain {g['mean']:+.4f} "
              f"[{g['ci_low']:+.4f}, {g['ci_high']:+.4f}]  val acc "
              f"{history[-1].get('val_accuracy', float('nan')):.3f}", flush=True)  # fmt: skip
        last_scores = res["scores"]
    model.save_pretrained(out / "gan_rm")
    plot_round_gains(round_rows, oracle, out / "bon_gain_per_round.png")
    pick = last_scores.argmax(dim=1)
    show = min(16, eval_slots)
    rand_imgs = pool[:show, 0]
    pick_imgs = pool[torch.arange(show), pick[:show]]
    save_image_grid(_interleave_rows(rand_imgs, pick_imgs, 8), out / "bon_grid.png", nrow=8)

    results: dict[str, Any] = {
        "look": "bold strokes (ink coverage of the digit's bounding box)",
        "target_space": target_space,
        "targets": {"n": len(targets), **target_info},
        "eval": {
            "prompts": "world:test",
            "slots": eval_slots,
            "candidates": n_candidates,
            "seed": eval_seed,
            "pool_look_mean": float(look.mean()),
            "pool_gold_mean": float(gold.mean()),
        },  # fmt: skip
        "oracle": oracle,
        "rounds": round_rows,
        "discriminator": dcfg.__dict__,
        "bootstrap": bcfg.__dict__,
    }
    write_json(out / "ganrm_world.json", results)

    # -- Diffusion-DPO on GAN-RM pairs ------------------------------------------------------
    if dpo_steps > 0:
        t0 = time.time()
        groups = torch.cat(train_pools, dim=1)  # (P, (rounds+1)·per_prompt)
        p, n = groups.shape[:2]
        scores = _score(model, groups.flatten(0, 1)).view(p, n)
        pairs = write_dpo_pairs(groups, train_prompts, scores, out / "pairs",
                                pairs_per_group=pairs_per_prompt)  # fmt: skip
        rows = [json.loads(x) for x in pairs.read_text().splitlines() if x.strip()]
        pair_look = {"winner": [], "loser": []}
        from mmreward.io import load_image

        for row in rows:
            for key, f in zip(("winner", "loser"), row["images"]):
                pair_look[key].append(float(ink_coverage(load_image(pairs.parent / f)[None])[0]))
        cfg = load_config("align/dpo_world", [
            f"train.output_dir={out / 'dpo'}", f"data.preferences={pairs}", "eval.prompts=null",
            f"train.max_steps={dpo_steps}", "train.progress=true", f"train.seed={seed}",
        ])  # fmt: skip
        rewards = {"look": look_rm, "gold": gold_rm, "gan_rm": model}
        before = evaluate_policy(base, test_prompts, rewards, _eval_sample(), eval_slots,
                                 seed=eval_seed + 1)  # fmt: skip
        trainer = build_trainer(cfg)
        trainer.train(resume=False)
        with trainer.eval_weights():
            after = evaluate_policy(trainer.policy, test_prompts, rewards, _eval_sample(),
                                    eval_slots, seed=eval_seed + 1)  # fmt: skip
        n_show = 32
        save_image_grid(_interleave_rows(before.images[:n_show], after.images[:n_show], 8),
                        out / "dpo_before_after.png", nrow=8)  # fmt: skip
        cmp = compare(before, after)
        results["dpo"] = {
            "pairs": len(rows),
            "pairs_file": str(pairs),
            "pair_look_winner": sum(pair_look["winner"]) / len(rows),
            "pair_look_loser": sum(pair_look["loser"]) / len(rows),
            "steps": cfg.train.max_steps,
            "batch_size": cfg.train.batch_size,
            "lr": cfg.train.lr,
            "beta": cfg.algorithm.get("beta"),
            **cmp,
        }
        timings["dpo_s"] = time.time() - t0
        d = cmp["look"]["difference"]
        print(f"DPO: look Δ {d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], "
              f"gold Δ {cmp['gold']['difference']['mean']:+.4f}", flush=True)  # fmt: skip
    timings["total_s"] = time.time() - t_start
    results["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    write_json(out / "ganrm_world.json", results)
    write_gallery_html(out / "report.html", "GAN-RM on the built-in world",
                       _sections(results, Figure, Section))  # fmt: skip
    return results


def _fmt_ci(d: dict[str, float]) -> str:
    return f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"


def _sections(results: dict[str, Any], Figure: Any, Section: Any) -> list:
    table = []
    for r in results["rounds"]:
        for key in (k for k in r if k.startswith("bon")):
            table.append({
                "round": r["round"], "N": r[key]["look"]["n"],
                "look: random pick": f"{r[key]['look']['random']['mean']:.4f}",
                "look: GAN-RM pick": f"{r[key]['look']['pick']['mean']:.4f}",
                "look gain [95% CI]": _fmt_ci(r[key]["look"]["gain"]),
                "gold gain [95% CI]": _fmt_ci(r[key]["gold"]["gain"]),
                "val accuracy": f"{r['history'][-1].get('val_accuracy', float('nan')):.3f}",
            })  # fmt: skip
    ev = results["eval"]
    sections = [
        Section(
            "Best-of-N with GAN-RM, per bootstrap round",
            f"{ev['slots']} held-out prompt slots (world:test) × {ev['candidates']} candidates. "
            "Look = ink coverage of the digit's box (bold strokes); gain = GAN-RM pick − "
            "random pick (the slot's mean), paired 95% intervals. Gold = gold.world.",
            figures=[
                Figure("bon_gain_per_round.png", "Look gain per round (± 95% CI)"),
                Figure(
                    "bon_grid.png",
                    "Odd rows: a random candidate; even rows: the "
                    "GAN-RM Best-of-N pick (same prompt slots)",
                ),
                Figure("targets.png", "Target images (Preference Proxy Data)"),
            ],
            table=table,
        )  # fmt: skip
    ]
    if "dpo" in results:
        d = results["dpo"]
        rows = [{"reward": k, "before": f"{d[k]['before']['mean']:.4f}",
                 "after": f"{d[k]['after']['mean']:.4f}", "Δ [95% CI]": _fmt_ci(d[k]["difference"])}
                for k in ("look", "gold", "gan_rm")]  # fmt: skip
        sections.append(
            Section(
                "Diffusion-DPO on GAN-RM pairs",
                f"{d['pairs']} pairs (GAN-RM best vs worst per train prompt), {d['steps']} steps. "
                "Held-out prompts, same start noise before and after.",
                figures=[Figure("dpo_before_after.png", "Odd rows: base; even rows: after DPO")],
                table=rows,
            )
        )
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_args(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/ganrm_world")
    parser.add_argument("--targets", type=int, default=500, help="target images (≤ 500)")
    parser.add_argument("--rounds", type=int, default=2, help="bootstrap rounds after round 0")
    parser.add_argument("--per-prompt", type=int, default=3,
                        help="fresh samples per train prompt per round")  # fmt: skip
    parser.add_argument("--candidates", type=int, default=8, help="Best-of-N N")
    parser.add_argument("--eval-slots", type=int, default=256, help="held-out prompt slots")
    parser.add_argument("--epochs", type=int, default=8, help="round-0 discriminator epochs")
    parser.add_argument("--bootstrap-epochs", type=int, default=3)
    parser.add_argument("--dpo-steps", type=int, default=100, help="0 skips Diffusion-DPO")
    parser.add_argument("--pairs-per-prompt", type=int, default=3)
    parser.add_argument("--target-space", choices=("vae", "raw"), default="vae")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def run_args(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    results = run(args.out, args.targets, args.rounds, args.per_prompt, args.candidates,
                  args.eval_slots, args.dpo_steps, args.pairs_per_prompt, args.epochs,
                  args.bootstrap_epochs, args.target_space, args.seed)  # fmt: skip
    print(f"report: {Path(args.out) / 'report.html'} ({results['timings_s']['total_s']} s)")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ganrm-world`` (this efficacy run) on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "ganrm-world", help="GAN-RM on the built-in world: Best-of-N per bootstrap round, "
        "Diffusion-DPO on its pairs"
    )  # fmt: skip
    add_arguments(p)
    p.set_defaults(func=run_args)
    return p


if __name__ == "__main__":
    raise SystemExit(main())
