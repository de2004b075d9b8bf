"""Efficacy on the built-in world: does each algorithm raise the *gold* reward?

For each algorithm, the world recipe (``configs/align/<algo>_world.yaml``) trains at its
fixed budget against the proxy reward (DPO: against the simulated annotators' pairs);
then the base and the trained model are sampled on the **held-out** prompts (``world:test``,
``samples`` images, the same start noise for both: a paired comparison) and scored with
the gold reward and the proxy. Reported per algorithm: means with 95% confidence
intervals before/after, the paired after − before difference with its interval, sample
diversity before/after, and a **reward-hacking flag** when the proxy rises significantly
but the gold reward does not.

    python -m diffusion_align.efficacy --out runs/align_efficacy            # all algorithms
    python -m diffusion_align.efficacy --algorithms refl,dpo --steps 30
    python -m diffusion_align.efficacy --train-rewards recipe,gold.world  # proxy and gold
    python -m diffusion_align.efficacy --algorithms raft,ddpo,grpo --kl-samples 64
    python -m diffusion_align.efficacy --algorithms raft --train-seeds 1,2,3,4

Writes ``efficacy.json`` and ``report.html`` (before/after galleries, reward curves) into
``--out``, each run's own folder (metrics, galleries, checkpoints) below it, and every
evaluation's per-sample scores (``eval_scores*.safetensors``).

**Training seeds.** One training run is one draw of the training noise; on the world, two
seeds of one recipe can differ by as much as the effect. ``--train-seeds`` trains each
recipe once per seed (runs ``<label>.seed<N>``) and pools them (:func:`pool_seeds`):
``efficacy.json`` → ``pooled``. ``--pool DIR …`` pools runs already made in several
``--out`` folders (e.g. seeds run in parallel), which must share the evaluation and
differ only in ``train.seed``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from diffusion_align.config import SampleConfig
from diffusion_align.evaluate import EvalResult, evaluate_policy, mean_ci, paired_difference

ALGORITHMS = ("refl", "draft", "alignprop", "dpo", "d3po")
#: sample-then-update algorithms (``--algorithms raft,ddpo,grpo``)
RL_ALGORITHMS = ("raft", "ddpo", "grpo")
#: the world's default sampler (deterministic DDIM, 20 steps, CFG 3) for every evaluation
EVAL_SAMPLE = SampleConfig(num_steps=20, guidance_scale=3.0, eta=0.0)
WORLD_REWARDS = {"gold": "gold.world", "proxy": "clip-head.world-proxy"}
SCORES_FILE = "eval_scores.safetensors"  # a run's per-sample scores after training
BEFORE_FILE = "eval_scores_before.safetensors"  # the base model's, in the --out folder
SEED_SUFFIX = re.compile(r"\.seed(\d+)$")


def save_scores(scores: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in scores.items()}, str(path))


def load_scores(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no per-sample scores (rerun the evaluation)")
    return load_file(str(path))


def pool_seeds(
    before: dict[str, torch.Tensor], afters: Sequence[dict[str, torch.Tensor]]
) -> dict[str, Any]:
    """Pool S ≥ 2 training seeds of one recipe, evaluated on the same items as ``before``.

    Per reward column: ``per_seed`` (each run's paired mean Δ); ``difference``, the paired
    difference between the base and the runs' *mean* score per item (the seed-averaged
    effect, with its sample-level 95% interval); ``between_seeds``, the mean of the per-seed
    Δs with a Student-t 95% interval over the S runs (S − 1 degrees of freedom: the
    spread between training runs, which the sample-level interval does not see); and
    ``significant``, true only when both intervals exclude 0 on the same side.
    """
    from scipy.stats import t as student_t

    if len(afters) < 2:
        raise ValueError(f"pool_seeds: need at least 2 runs, got {len(afters)}")
    out: dict[str, Any] = {"seeds": len(afters)}
    for name, b in before.items():
        runs = torch.stack([a[name].double() for a in afters])  # (S, N)
        if runs.shape[1] != b.numel():
            raise ValueError(f"pool_seeds: {name}: {runs.shape[1]} items after, {b.numel()} before")
        per_seed = (runs - b.double()).mean(1)
        s = len(afters)
        m, sd = per_seed.mean().item(), per_seed.std(unbiased=True).item()
        half = float(student_t.ppf(0.975, s - 1)) * sd / math.sqrt(s)
        between = {"mean": m, "ci_low": m - half, "ci_high": m + half, "sd": sd, "n": s}
        diff = paired_difference(b, runs.mean(0))
        same_side = (diff["ci_low"] > 0 and between["ci_low"] > 0) or (
            diff["ci_high"] < 0 and between["ci_high"] < 0
        )
        out[name] = {
            "per_seed": per_seed.tolist(),
            "difference": diff,
            "between_seeds": between,
            "significant": bool(same_side),
        }
    if "gold" in out:
        out["gold_raised"] = bool(
            out["gold"]["significant"] and out["gold"]["difference"]["mean"] > 0
        )
    return out


def compare(before: EvalResult, after: EvalResult) -> dict[str, Any]:
    """Before/after statistics for every reward, diversity, and the reward-hacking flag."""
    out: dict[str, Any] = {}
    for name in before.scores:
        out[name] = {
            "before": mean_ci(before.scores[name]),
            "after": mean_ci(after.scores[name]),
            "difference": paired_difference(before.scores[name], after.scores[name]),
        }
    out["diversity"] = {"before": before.diversity, "after": after.diversity}
    if "gold" in out and "proxy" in out:
        gold, proxy = out["gold"]["difference"], out["proxy"]["difference"]
        out["gold_raised"] = bool(gold["ci_low"] > 0)
        out["reward_hacking"] = bool(proxy["ci_low"] > 0 and not gold["ci_low"] > 0)
    return out


def _grid(images: torch.Tensor, path: Path, n: int = 32) -> Path:
    from mmreward.report import save_image_grid

    return save_image_grid(images[:n], path, nrow=8)


def _curves(run_dir: Path) -> dict[str, tuple[list[float], list[float]]]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for key in ("train/reward", "train/implicit_acc", "train/loss"):
        pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
        if pts:
            curves[key] = ([p[0] for p in pts], [p[1] for p in pts])
    return curves


def run_algorithm(
    name: str,
    out: Path,
    before: EvalResult,
    rewards: dict[str, Any],
    prompts: Sequence[str],
    samples: int,
    seed: int,
    steps: int | None = None,
    overrides: Sequence[str] = (),
    config: str | None = None,
    train_reward: str | None = None,
    label: str | None = None,
    kl_samples: int = 0,
    train_seed: int | None = None,
) -> dict[str, Any]:
    """Train one world recipe, evaluate it on the held-out prompts, compare with ``before``.

    ``train_reward`` replaces the recipe's training reward and ``train_seed`` its
    ``train.seed``; the run's folder is ``out / label`` (default: the algorithm's name).
    ``kl_samples`` > 0 also estimates the trained model's path KL to the base model
    (:func:`~diffusion_align.evaluate.trajectory_kl`, DDIM η = 1) on that many samples.
    The per-sample scores after training are written to ``out / label / SCORES_FILE``.
    """
    from diffusion_align.cli import build_trainer, load_config

    label = label or name
    extra = [f"train.output_dir={out / label}", "eval.prompts=null", "train.progress=false"]
    if steps is not None:
        extra.append(f"train.max_steps={steps}")
    last = [] if train_reward is None else [f"reward={train_reward}"]  # wins over overrides
    if train_seed is not None:
        last.append(f"train.seed={train_seed}")
    cfg = load_config(config or f"align/{name}_world", [*extra, *overrides, *last])
    trainer = build_trainer(cfg)
    t0 = time.time()
    trainer.train()
    wall = time.time() - t0
    with trainer.eval_weights():
        after = evaluate_policy(trainer.policy, prompts, rewards, EVAL_SAMPLE, samples, seed=seed)
    _grid(after.images, out / label / "after.png")
    save_scores(after.scores, out / label / SCORES_FILE)
    result = compare(before, after)
    if kl_samples and trainer.policy.reference_mode != "none":
        from diffusion_align.evaluate import trajectory_kl

        with trainer.eval_weights():
            result["kl_to_base"] = trajectory_kl(trainer.policy, prompts, EVAL_SAMPLE,
                                                 kl_samples, seed=seed)  # fmt: skip
    result.update(
        algorithm=name,
        train_reward=cfg.reward,
        train_seed=cfg.train.seed,
        overrides=list(overrides),
        steps=cfg.train.max_steps,
        batch_size=cfg.train.batch_size,
        lr=cfg.train.lr,
        train_wall_s=round(wall, 1),
        curves=_curves(out / label),
    )
    return result


def report_sections(results: dict[str, Any], out: Path) -> list:
    """Report sections: a summary table, reward curves, before/after galleries."""
    from mmreward.report import Figure, Section, plot_curves

    table = []
    for name, r in results["algorithms"].items():
        row: dict[str, Any] = {
            "run": name,
            "trained on": _reward_text(r.get("train_reward")),
            "steps": r["steps"],
        }
        for rew in ("gold", "proxy"):
            if rew in r:
                b, a, d = r[rew]["before"], r[rew]["after"], r[rew]["difference"]
                row[f"{rew} before"] = f"{b['mean']:.4f} ± {b['ci_high'] - b['mean']:.4f}"
                row[f"{rew} after"] = f"{a['mean']:.4f} ± {a['ci_high'] - a['mean']:.4f}"
                row[f"{rew} Δ [95% CI]"] = (
                    f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
                )
        subs = [k for k in r if k.startswith("gold/")]
        if subs:  # which part of the gold reward moved (paired Δ; * = significant)
            row["gold sub-scores Δ"] = ", ".join(
                f"{k[5:]} {r[k]['difference']['mean']:+.4f}"
                + ("*" if r[k]["difference"]["significant"] else "")
                for k in subs
            )
        row["diversity before → after"] = (
            f"{r['diversity']['before']:.4f} → {r['diversity']['after']:.4f}"
        )
        if "kl_to_base" in r:
            kl = r["kl_to_base"]
            row["KL to base (nats/image)"] = f"{kl['mean']:.2f} ± {kl['ci_high'] - kl['mean']:.2f}"
        row["gold raised"] = r.get("gold_raised")
        row["reward hacking"] = r.get("reward_hacking")
        row["train s"] = r["train_wall_s"]
        table.append(row)
    n = results["samples"]
    sections = [
        Section(
            "Alignment efficacy on the built-in world",
            f"{n} samples on the held-out prompts per evaluation (the same start noise before "
            "and after: paired differences); means ± 95% normal-approximation half-widths. "
            "'Trained on' is the reward the run optimised (Diffusion-DPO: the simulated "
            "annotators' preference pairs). "
            "'Reward hacking' = the proxy rises significantly while the gold reward does not. "
            "Diversity = mean pairwise RMS pixel distance between samples of one prompt.",
            table=table,
        )
    ]
    curves = {
        name: r["curves"]["train/reward"]
        for name, r in results["algorithms"].items()
        if "train/reward" in r["curves"]
    }
    figures = []
    if curves:
        figures.append(
            Figure(
                plot_curves(
                    curves, out / "reward_curves.png", ylabel="training reward (train batch)"
                ),
                "Each run's training reward on its training samples, per step",
            )
        )
    dpo = {n: r["curves"]["train/implicit_acc"] for n, r in results["algorithms"].items()
           if "train/implicit_acc" in r["curves"]}  # fmt: skip
    if dpo:
        figures.append(
            Figure(
                plot_curves(dpo, out / "dpo_accuracy.png", ylabel="implicit accuracy"),
                "Diffusion-DPO implicit preference accuracy per step",
            )  # fmt: skip
        )
    sections.append(Section("Reward curves", figures=figures))
    gal = [Figure(out / "before.png", "Base model, held-out prompts (first 32 samples)")]
    for name in results["algorithms"]:
        gal.append(Figure(out / name / "after.png", f"After {name} (same prompts and noise)"))
    sections.append(Section("Before / after", figures=gal))
    if results.get("pooled"):
        sections.insert(1, pooled_section(results["pooled"]))
    return sections


def _recipe_key(r: dict[str, Any]) -> str:
    """What must agree between runs pooled as seeds of one recipe (all but the seed)."""
    over = sorted(o for o in r.get("overrides", []) if not o.startswith("train.seed="))
    keys = ("algorithm", "train_reward", "steps", "batch_size", "lr")
    return json.dumps({**{k: r.get(k) for k in keys}, "overrides": over}, sort_keys=True)


def pool_runs(dirs: Sequence[str | Path]) -> dict[str, Any]:
    """Pool the runs of one or more ``--out`` folders by recipe: runs whose labels agree
    up to a ``.seed<N>`` suffix (:func:`pool_seeds`; recipes with one run are skipped).

    The folders must share the base model's evaluation (the same items and scores) and
    pooled runs must differ only in ``train.seed`` (a clear error otherwise).
    """
    dirs = [Path(d) for d in dirs]
    before: dict[str, torch.Tensor] | None = None
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for d in dirs:
        results = json.loads((d / "efficacy.json").read_text())
        b = load_scores(d / BEFORE_FILE)
        if before is None:
            before = b
        elif b.keys() != before.keys() or any(not torch.equal(b[k], before[k]) for k in b):
            raise ValueError(f"{d}: its base evaluation differs from {dirs[0]}'s")
        for label, r in results["algorithms"].items():
            groups.setdefault(SEED_SUFFIX.sub("", label), []).append((d / label, r))
    pooled: dict[str, Any] = {}
    for label, runs in groups.items():
        if len(runs) < 2:
            continue
        if len({_recipe_key(r) for _, r in runs}) > 1:
            raise ValueError(
                f"{label}: the runs differ in more than train.seed: {[str(p) for p, _ in runs]}"
            )
        seeds = [r.get("train_seed") for _, r in runs]
        if len(set(seeds)) < len(seeds):
            raise ValueError(f"{label}: repeated training seeds {seeds}")
        assert before is not None
        pooled[label] = pool_seeds(before, [load_scores(p / SCORES_FILE) for p, _ in runs])
        pooled[label].update(train_seeds=seeds, runs=[str(p) for p, _ in runs])
    return pooled


def pooled_section(pooled: dict[str, Any]):
    """A report section: each recipe's gold Δ per seed, seed-averaged and between seeds."""
    from mmreward.report import Section

    def ci(d: dict[str, float]) -> str:
        return f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"

    table = [
        {
            "run": label,
            "training seeds": ", ".join(map(str, p["train_seeds"])),
            "gold Δ per seed": ", ".join(f"{x:+.4f}" for x in p["gold"]["per_seed"]),
            "seed-averaged gold Δ [95% CI]": ci(p["gold"]["difference"]),
            "between seeds [95% t-CI]": ci(p["gold"]["between_seeds"]),
            "gold raised": p.get("gold_raised"),
        }
        for label, p in pooled.items()
        if "gold" in p
    ]
    return Section(
        "Pooled over training seeds",
        "Seed-averaged: the paired difference between the base model and the runs' mean "
        "score per item (sample-level interval). Between seeds: the per-seed Δs' mean with a "
        "Student-t interval over runs. 'Gold raised' needs both intervals above 0.",
        table=table,
    )


def _reward_text(reward: Any) -> str:
    if reward is None:
        return "preference pairs"
    return reward if isinstance(reward, str) else " + ".join(map(str, reward))


def run_labels(
    algorithms: Sequence[str], train_rewards: Sequence[str | None]
) -> list[tuple[str, str, str | None]]:
    """``(label, algorithm, train_reward)`` per run: every algorithm × training reward
    (``None``: the recipe's own). Algorithms without a training reward (Diffusion-DPO) run
    once, with their recipe.

    >>> run_labels(["refl", "dpo"], [None, "gold.world"])
    [('refl', 'refl', None), ('refl@gold.world', 'refl', 'gold.world'), ('dpo', 'dpo', None)]
    """
    from diffusion_align.algorithms import get_algorithm

    runs = []
    for name in algorithms:
        rewards = list(train_rewards) if get_algorithm(name).needs_reward else [None]
        for reward in dict.fromkeys(rewards):
            runs.append((name if reward is None else f"{name}@{reward}", name, reward))
    return runs


def run(
    out: str | Path,
    algorithms: Sequence[str] = ALGORITHMS,
    steps: int | None = None,
    samples: int = 256,
    seed: int = 1234,
    model: str = "world",
    rewards: dict[str, str] | None = None,
    prompts: str = "world:test",
    overrides: Sequence[str] = (),
    train_rewards: Sequence[str | None] = (None,),
    kl_samples: int = 0,
    train_seeds: Sequence[int] = (),
) -> dict[str, Any]:
    """Evaluate the base model once, then train and evaluate each algorithm (× each training
    reward in ``train_rewards``; ``None`` = the recipe's own; × each of ``train_seeds``,
    pooled) and write the report."""
    import mmreward
    from diffusion_align.cli import build_policy
    from diffusion_align.config import ModelConfig
    from diffusion_align.data import read_prompts
    from mmreward.report import write_gallery_html, write_json

    out = Path(out).resolve()  # report figures are referenced from other folders too
    out.mkdir(parents=True, exist_ok=True)
    reward_models = {k: mmreward.load(v) for k, v in (rewards or WORLD_REWARDS).items()}
    eval_prompts = read_prompts(prompts)
    base = build_policy(ModelConfig(pretrained=model))
    base.raw_denoiser.eval()
    before = evaluate_policy(base, eval_prompts, reward_models, EVAL_SAMPLE, samples, seed=seed)
    _grid(before.images, out / "before.png")
    save_scores(before.scores, out / BEFORE_FILE)
    del base
    results: dict[str, Any] = {
        "samples": samples,
        "eval_prompts": prompts,
        "eval_sampler": EVAL_SAMPLE.__dict__,
        "before": before.summary(),
        "algorithms": {},
    }
    for label, name, train_reward in run_labels(algorithms, train_rewards):
        for train_seed in list(train_seeds) or [None]:
            run_label = label if train_seed is None else f"{label}.seed{train_seed}"
            results["algorithms"][run_label] = run_algorithm(
                name, out, before, reward_models, eval_prompts, samples, seed, steps, overrides,
                train_reward=train_reward, label=run_label, kl_samples=kl_samples,
                train_seed=train_seed,
            )  # fmt: skip
            write_json(out / "efficacy.json", results)
    if len(train_seeds) > 1:
        results["pooled"] = pool_runs([out])
        write_json(out / "efficacy.json", results)
    write_gallery_html(out / "report.html", "Diffusion alignment on the built-in world",
                       report_sections(results, out))  # fmt: skip
    return results


def demo_sections(
    out: str | Path, steps: int = 30, samples: int = 128
) -> tuple[dict[str, Any], list]:
    """Short ReFL runs on the world for the README demo, one against the proxy and one
    against the gold reward: ``(results, report sections)``, files under ``out``."""
    results = run(out, ["refl"], steps=steps, samples=samples,
                  train_rewards=[None, WORLD_REWARDS["gold"]])  # fmt: skip
    return results, report_sections(results, Path(out).resolve())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/align_efficacy")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--steps", type=int, default=None, help="override every recipe's max_steps")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--train-rewards", default="recipe",
                        help="comma-separated training rewards per algorithm; 'recipe' = the "
                        "recipe's own (e.g. recipe,gold.world runs each twice)")  # fmt: skip
    parser.add_argument("--kl-samples", type=int, default=0,
                        help="also estimate each trained model's path KL to the base model "
                        "on this many samples (DDIM η = 1)")  # fmt: skip
    parser.add_argument("--train-seeds", default="",
                        help="comma-separated training seeds: each recipe is trained once per "
                        "seed and the runs are pooled")  # fmt: skip
    parser.add_argument("--pool", nargs="+", metavar="DIR", default=None,
                        help="pool the runs of these --out folders by recipe (no training); "
                        "writes <out>/pooled.json")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every recipe")
    args = parser.parse_args(argv)
    if args.pool:
        return _print_pooled(pool_runs(args.pool), Path(args.out))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train_seeds = [int(x) for x in args.train_seeds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--train-seeds: expected comma-separated integers, got {args.train_seeds!r}")
    train_rewards = [None if r.strip() == "recipe" else r.strip()
                     for r in args.train_rewards.split(",") if r.strip()]  # fmt: skip
    results = run(args.out, [a.strip() for a in args.algorithms.split(",") if a.strip()],
                  args.steps, args.samples, overrides=args.overrides,
                  train_rewards=train_rewards, kl_samples=args.kl_samples,
                  train_seeds=train_seeds)  # fmt: skip
    for name, r in results["algorithms"].items():
        g, p = r["gold"]["difference"], r["proxy"]["difference"]
        print(f"{name:10s} gold Δ {g['mean']:+.4f} [{g['ci_low']:+.4f}, {g['ci_high']:+.4f}]  "
              f"proxy Δ {p['mean']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]  "
              f"hacking={r['reward_hacking']}")  # fmt: skip
    if results.get("pooled"):
        _print_pooled(results["pooled"], None)
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def _print_pooled(pooled: dict[str, Any], out: Path | None) -> int:
    """Print each pooled recipe's gold line; with ``out``, also write ``pooled.json``/html."""
    if not pooled:
        print("no recipe has more than one run to pool")
        return 1
    for label, p in pooled.items():
        if "gold" not in p:
            continue
        g = p["gold"]
        d, b = g["difference"], g["between_seeds"]
        print(f"{label:10s} {p['seeds']} seeds  gold Δ {d['mean']:+.4f} "
              f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]  between seeds "
              f"[{b['ci_low']:+.4f}, {b['ci_high']:+.4f}]  "
              f"raised={p.get('gold_raised')}")  # fmt: skip
    if out is not None:
        from mmreward.report import write_gallery_html, write_json

        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "pooled.json", pooled)
        write_gallery_html(out / "pooled.html", "Pooled training seeds", [pooled_section(pooled)])
        print(f"pooled: {out / 'pooled.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
