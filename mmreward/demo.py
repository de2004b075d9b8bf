"""The toolkit demo on the built-in world: generate, score, check against gold, report.

Everything runs on CPU from the committed world assets (no download), in a minute or two:

1. the world's tiny ``StableDiffusionPipeline`` generates candidates for the **held-out
   prompts** under six sampling settings (CFG scale × DDIM steps: a spread of qualities);
2. every candidate is scored by the gold reward (``gold.world``), the preference-trained
   proxy (``clip-head.world-proxy``), zero-shot CLIPScore on the tiny CLIP
   (``clipscore.world-tiny``) and the analytic rewards (``sharpness.laplacian`` …);
3. candidates of one prompt are paired, simulated annotators label the pairs, and each
   reward's preference accuracy against gold is measured on the same pairs;
4. two short ReFL runs fine-tune the pipeline (LoRA) against the proxy and against gold;
   held-out samples before/after are scored with both (``out_dir/align``);
5. ``out_dir`` gets ``report.html`` (best/worst galleries per reward, where the proxy and
   gold disagree, samples per setting, tables), PNG plots, ``scores.jsonl``,
   ``heldout.jsonl`` (the labelled pairs, in the trainer's format) and ``summary.json``.

Run it with ``mmreward demo --out runs/demo`` or ``python -m mmreward.demo --out runs/demo``.

>>> summary = run_demo("/tmp/mmreward-demo", n_prompts=4, progress=False)  # doctest: +SKIP
>>> summary["preference_accuracy"]["clip-head.world-proxy"]  # doctest: +SKIP
0.8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmreward.metrics import pairwise_accuracy, spearman
from mmreward.registry import get_spec, list_rewards, load
from mmreward.report import (
    Figure,
    Gallery,
    GalleryItem,
    Section,
    plot_heatmap,
    plot_score_histograms,
    save_image_grid,
    write_gallery_html,
    write_json,
    write_jsonl,
)

# -- defaults (one line each) ---------------------------------------------------------
GALLERY_SIZE = 6  # best / worst items shown per reward
N_DISAGREEMENTS = 4  # pairs shown where the proxy and gold disagree most
GRID_PROMPTS = 12  # prompts shown in the samples-per-setting grid
#: the world's rewards shown in galleries, by role
WORLD_REWARDS = {
    "gold": "gold.world",
    "proxy": "clip-head.world-proxy",
    "clipscore": "clipscore.world-tiny",
}


# --------------------------------------------------------------------------- rewards


def analytic_reward_names() -> list[str]:
    """Registered rewards implemented in :mod:`mmreward.analytic` (no weights needed)."""
    names = []
    for name in list_rewards():
        factory = get_spec(name).factory
        target = factory if isinstance(factory, str) else getattr(factory, "__module__", "")
        if target.startswith("mmreward.analytic"):
            names.append(name)
    return names


def load_world_rewards(assets: str | Path | None = None) -> dict[str, Any]:
    """Gold, proxy and CLIPScore by role: registered names, or a build folder's files."""
    if assets is None:
        return {role: load(name) for role, name in WORLD_REWARDS.items()}
    from mmreward.world.gold import load_gold
    from mmreward.world.proxy import world_clipscore, world_proxy

    assets = Path(assets)
    models = {
        "gold": load_gold(assets / "gold"),
        "proxy": world_proxy(assets / "proxy"),
        "clipscore": world_clipscore(assets / "clip"),
    }
    for role, model in models.items():
        model.reward_name = WORLD_REWARDS[role]
    return {role: m.eval() for role, m in models.items()}


# ------------------------------------------------------------------------------ analysis


def spearman_matrix(scores: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Pairwise Spearman rank correlations (average ranks); NaN where a reward is constant."""
    names = list(scores)
    m = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            with contextlib.suppress(ValueError):  # constant scores: undefined, stays NaN
                m[i, j] = spearman(scores[a], scores[b])
    return names, m


def _spec_text(name: str) -> tuple[str, str]:
    """A reward's description and paper from the registry ("" if it is not registered)."""
    try:
        spec = get_spec(name)
    except KeyError:
        return "", ""
    return spec.description, spec.paper


def _stats(x: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
    }


def _setting_name(setting: Sequence[float]) -> str:
    g, steps = setting
    return f"{'no CFG' if g == 1.0 else f'CFG {g:g}'} · {int(steps)} steps"


def setting_table(gold_out, settings: Sequence[tuple[float, int]]) -> list[dict[str, Any]]:
    """Gold's verdict per sampling setting: share with every attribute right, mean score, …"""
    from mmreward.world.data import ATTRIBUTES

    rows = []
    keys = list(dict.fromkeys(settings))
    for s in keys:
        idx = torch.tensor([i for i, t in enumerate(settings) if t == s])
        row: dict[str, Any] = {
            "setting": _setting_name(s),
            "n": len(idx),
            "all attributes right": float(gold_out.extras["correct"][idx].float().mean()),
            "mean gold": float(gold_out.scores[idx].mean()),
        }
        for a in ATTRIBUTES:
            row[a] = float(gold_out.extras[f"correct_{a}"][idx].float().mean())
        row["sharpness"] = float(gold_out.sub_scores["sharpness"][idx].mean())
        rows.append(row)
    return rows


def annotator_accuracy(
    scores: np.ndarray, rows: Sequence[Mapping[str, Any]], index: Mapping[str, int]
) -> float:
    """Agreement of a reward's ordering with the annotators' non-tie labels."""
    a = np.array([scores[index[r["images"][0]]] for r in rows])
    b = np.array([scores[index[r["images"][1]]] for r in rows])
    label = np.array([{0: 1, 1: -1, "tie": 0}[r["choice"]] for r in rows])
    return pairwise_accuracy(a, b, label)


def sanity_checks(
    gold_table: Sequence[Mapping[str, Any]], accuracy: Mapping[str, float], proxy: str
) -> dict[str, dict[str, Any]]:
    """What a working world shows: CFG and more steps help gold; learned rewards beat chance."""
    by = {r["setting"]: r for r in gold_table}
    checks: dict[str, dict[str, Any]] = {}

    def add(name, description, measured, reference, passed):
        checks[name] = {
            "description": description,
            "measured": measured,
            "reference": reference,
            "passed": bool(passed),
        }

    cfg, plain, few = (
        by.get("CFG 3 · 20 steps"),
        by.get("no CFG · 20 steps"),
        by.get("CFG 3 · 5 steps"),
    )
    if cfg and plain:
        add(
            "cfg_helps",
            "gold: more samples have every attribute right with CFG 3 than without (20 steps)",
            cfg["all attributes right"],
            plain["all attributes right"],
            cfg["all attributes right"] > plain["all attributes right"],
        )
    if cfg and few:
        add(
            "more_steps_sharper",
            "gold sharpness is higher with 20 DDIM steps than with 5 (CFG 3)",
            cfg["sharpness"],
            few["sharpness"],
            cfg["sharpness"] > few["sharpness"],
        )
    for role, name in (("proxy", proxy), ("CLIPScore", WORLD_REWARDS["clipscore"])):
        if name in accuracy:
            add(
                f"{role.lower()}_beats_chance",
                f"{role} orders held-out pairs as gold does more often than a coin",
                accuracy[name],
                0.5,
                accuracy[name] > 0.5,
            )
    return checks


# ------------------------------------------------------------------------------ report


def _card_scores(i: int, scores: Mapping[str, np.ndarray], setting: Sequence[float]) -> dict:
    shown: dict[str, Any] = {
        role: float(scores[name][i]) for role, name in WORLD_REWARDS.items() if name in scores
    }
    shown["sampled"] = _setting_name(setting)
    return shown


def _galleries(name, order, prompts, paths, scores, settings) -> list[Gallery]:
    k = min(GALLERY_SIZE, len(order))

    def cards(idx):
        return [
            GalleryItem(paths[i], prompts[i], _card_scores(i, scores, settings[i])) for i in idx
        ]

    return [Gallery(f"best {k}", cards(order[:k])), Gallery(f"worst {k}", cards(order[::-1][:k]))]


def _disagreements(study, scores: Mapping[str, np.ndarray], proxy: str) -> list[Gallery]:
    gold = study["gold"].numpy()
    p = scores[proxy]
    wrong = [
        (abs(p[a] - p[b]), a, b)
        for a, b in study["pairs"]
        if np.sign(p[a] - p[b]) * np.sign(gold[a] - gold[b]) < 0
    ]
    wrong.sort(reverse=True)
    shown: set[int] = set()
    chosen = []
    for _, a, b in wrong:  # distinct images, so one bad sample does not fill the section
        if a not in shown and b not in shown:
            chosen.append((a, b))
            shown |= {a, b}
        if len(chosen) == N_DISAGREEMENTS:
            break
    galleries = []
    for k, (a, b) in enumerate(chosen):
        liked, right = (a, b) if p[a] > p[b] else (b, a)
        items = [
            GalleryItem(
                study["paths"][i],
                f"{label}: {study['prompts'][i]}",
                _card_scores(i, scores, study["settings"][i]),
            )
            for label, i in (("proxy prefers", liked), ("gold prefers", right))
        ]
        galleries.append(Gallery(f"pair {k + 1}", items))
    return galleries


def _world_figures_table(assets_dir: Path) -> list[dict[str, Any]]:
    """The build's reported figures (``figures.json``), flattened to table rows."""
    path = assets_dir / "figures.json"
    if not path.is_file():
        return []
    fig = json.loads(path.read_text())
    rows = [
        {"figure": f"tiny-CLIP zero-shot retrieval: {k}", "value": v}
        for k, v in fig.get("clip_retrieval", {}).items()
    ]
    for k, v in fig.get("gold_classifier", {}).items():
        rows.append({"figure": f"gold classifier: {k}", "value": v})
    gen = fig.get("generation", {})
    for split in ("heldout_prompts", "train_prompts"):
        for setting, summary in gen.get(split, {}).items():
            rows.append(
                {
                    "figure": f"samples, {split.replace('_', ' ')}, {setting}: all attributes right",
                    "value": summary["all_correct"],
                }
            )
    for k in ("inter_annotator", "cohen_kappa", "accuracy_vs_gold", "tie_rate"):
        if k in fig.get("annotators", {}):
            rows.append({"figure": f"annotators: {k}", "value": fig["annotators"][k]})
    for study, result in fig.get("preference_accuracy", {}).items():
        for subset, accuracies in result.items():
            if not isinstance(accuracies, dict):
                continue
            for reward, v in accuracies.items():
                rows.append(
                    {
                        "figure": f"preference accuracy vs gold, {study.replace('_', ' ')}, "
                        f"{subset.replace('_', ' ')}: {reward}",
                        "value": v,
                    }
                )
    return rows


# ------------------------------------------------------------------------------ main


def run_demo(
    out_dir: str | Path,
    n_prompts: int | None = None,
    per_prompt: int = 6,
    seed: int = 0,
    progress: bool = True,
    baselines: Sequence[str] | None = None,
    assets: str | Path | None = None,
    threads: int | None = 1,
    align_steps: int = 30,
    align_samples: int = 128,
) -> dict[str, Any]:
    """Generate, score, compare with gold and write the report; returns the summary.

    Args:
        out_dir: output folder (created; files in it are overwritten).
        n_prompts: use the first ``n_prompts`` held-out prompts (default: all 40).
        per_prompt: candidates per prompt (cycling through the six sampling settings).
        seed: draws the candidates' noise and the annotators' labels.
        progress: show progress bars.
        baselines: extra rewards to evaluate (default: every analytic reward).
        assets: a world build folder (default: the committed assets, by registry name).
        threads: torch CPU threads while the demo runs (restored after). The world's models
            are tiny, so extra intra-op threads gain little and, on a busy machine, stall
            on each other; ``None`` keeps the current setting.
        align_steps: optimizer steps of the two short ReFL runs (against the proxy, and
            against gold), written to ``out_dir/align``; 0 skips alignment. Runs on the
            committed world only (skipped when ``assets`` is given).
        align_samples: held-out samples per before/after evaluation of those runs.

    Returns:
        The summary also written to ``summary.json``.
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_demo(out_dir, n_prompts, per_prompt, seed, progress, baselines, assets,
                         align_steps, align_samples)  # fmt: skip
    finally:
        torch.set_num_threads(previous)


def _run_demo(
    out_dir, n_prompts, per_prompt, seed, progress, baselines, assets, align_steps, align_samples
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from mmreward.world.annotators import STUDY_SETTINGS, agreement, simulate_study
    from mmreward.world.data import prompt_splits
    from mmreward.world.diffusion import load_pipeline
    from mmreward.world.figures import preference_report
    from mmreward.world.gold import assets_dir

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = Path(assets) if assets is not None else assets_dir()

    # -- load
    t0 = time.perf_counter()
    pipe = load_pipeline(world / "pipeline")
    rewards = load_world_rewards(assets)
    names = {role: m.reward_name for role, m in rewards.items()}
    extra = list(baselines) if baselines is not None else analytic_reward_names()
    models = {m.reward_name: m for m in rewards.values()}
    models.update({n: load(n) for n in extra})
    timings["load"] = time.perf_counter() - t0

    # -- generate (and label: the annotators see only gold)
    t0 = time.perf_counter()
    prompts = [a.prompt for a in prompt_splits()["test"]][:n_prompts]
    study = simulate_study(
        pipe,
        rewards["gold"],
        prompts,
        out,
        "heldout",
        per_prompt=per_prompt,
        settings=STUDY_SETTINGS,
        pairs_per_prompt=per_prompt * (per_prompt - 1) // 2,
        labels_per_pair=2,
        seed=seed,
    )
    timings["generate"] = time.perf_counter() - t0

    # -- score
    t0 = time.perf_counter()
    images, cand_prompts = study["images"], study["prompts"]
    outputs = {}
    for name, model in tqdm(models.items(), desc="scoring", disable=not progress):
        kwargs = {"prompts": cand_prompts} if "prompts" in model.inputs else {}
        outputs[name] = model.score(images, batch_size=128, **kwargs)
    scores = {
        n: o.scores.detach().float().cpu().numpy().astype(np.float64) for n, o in outputs.items()
    }
    timings["score"] = time.perf_counter() - t0

    # -- analyse
    gold_name, proxy_name = names["gold"], names["proxy"]
    gold = scores[gold_name]
    pairs = study["pairs"]
    index = {p: i for i, p in enumerate(study["paths"])}
    accuracy = preference_report(scores, gold, pairs)
    ann = agreement(study["rows"])
    accuracy_vs_labels = {n: annotator_accuracy(s, study["rows"], index) for n, s in scores.items()}
    gold_table = setting_table(outputs[gold_name], study["settings"])
    corr_names, corr = spearman_matrix(scores)
    reward_stats = {}
    for n, s in scores.items():
        reward_stats[n] = {
            **_stats(s),
            "preference_accuracy_vs_gold": accuracy[n],
            "accuracy_vs_annotator_labels": accuracy_vs_labels[n],
            "spearman_with_gold": float(corr[corr_names.index(n), corr_names.index(gold_name)]),
            "description": _spec_text(n)[0],
        }
    checks = sanity_checks(gold_table, accuracy, proxy_name)

    # -- write
    t0 = time.perf_counter()
    rows = []
    for i, (p, path) in enumerate(zip(cand_prompts, study["paths"])):
        g, steps = study["settings"][i]
        rows.append(
            {
                "id": Path(path).stem,
                "prompt": p,
                "image": path,
                "guidance_scale": g,
                "num_inference_steps": steps,
                "scores": {n: float(s[i]) for n, s in scores.items()},
                "gold_sub_scores": {
                    k: float(v[i]) for k, v in outputs[gold_name].sub_scores.items()
                },
                "gold_all_correct": bool(outputs[gold_name].extras["correct"][i]),
            }
        )
    write_jsonl(out / "scores.jsonl", rows)
    img_dir = out / "images"
    hist = plot_score_histograms(scores, img_dir / "plot_score_histograms.png")
    heat = plot_heatmap(
        corr,
        corr_names,
        img_dir / "plot_spearman.png",
        title="Spearman rank correlation between rewards",
    )
    grid_prompts = list(range(min(GRID_PROMPTS, len(prompts))))
    grid = [
        images[k * per_prompt + s]
        for s in range(min(per_prompt, len(STUDY_SETTINGS)))
        for k in grid_prompts
    ]
    grid_png = save_image_grid(
        [x.repeat_interleave(3, 1).repeat_interleave(3, 2) for x in grid],
        img_dir / "plot_samples_by_setting.png",
        nrow=len(grid_prompts),
        padding=4,
    )
    figures = [
        Figure(hist.relative_to(out), "score distribution per reward (dashed: mean)"),
        Figure(
            heat.relative_to(out),
            "Spearman rank correlation between rewards on the same candidates",
        ),
    ]
    summary: dict[str, Any] = {
        "data": {
            "n_prompts": len(prompts),
            "per_prompt": per_prompt,
            "n_images": len(cand_prompts),
            "n_pairs": len(pairs),
            "settings": [list(s) for s in dict.fromkeys(study["settings"])],
            "seed": seed,
            "prompts": prompts,
        },
        "roles": names,
        "rewards": reward_stats,
        "preference_accuracy": accuracy,
        "annotators": ann,
        "gold_by_setting": gold_table,
        "spearman": {"names": corr_names, "matrix": corr},
        "checks": checks,
        "all_checks_passed": all(c["passed"] for c in checks.values()),
        "timings_s": timings,
        "threads": torch.get_num_threads(),
        "files": {
            "scores": "scores.jsonl",
            "pairs": "heldout.jsonl",
            "report": "report.html",
            "figures": [f.path for f in figures] + [grid_png.relative_to(out)],
        },
    }
    align_sections: list[Section] = []
    if align_steps > 0 and assets is None:
        from diffusion_align.efficacy import demo_sections

        t_align = time.perf_counter()
        results, align_sections = demo_sections(out / "align", align_steps, align_samples)
        summary["alignment"] = {
            label: {k: r[k] for k in ("train_reward", "steps", "gold", "proxy", "diversity",
                                      "gold_raised", "reward_hacking", "train_wall_s")}
            for label, r in results["algorithms"].items()
        }  # fmt: skip
        summary["files"]["alignment"] = "align/efficacy.json"
        timings["align"] = time.perf_counter() - t_align
    summary["wall_time_s"] = time.perf_counter() - t_start
    sections = _report_sections(study, scores, summary, figures, grid_png.relative_to(out), world)
    at = next(i for i, sec in enumerate(sections) if sec.heading == "Sanity checks")
    sections[at:at] = align_sections
    write_gallery_html(
        out / "report.html",
        "mmreward demo: the built-in world",
        sections,
        subtitle=f"{len(cand_prompts)} samples for {len(prompts)} held-out prompts · seed {seed}",
    )
    timings["write"] = time.perf_counter() - t0
    summary["wall_time_s"] = time.perf_counter() - t_start
    write_json(out / "summary.json", summary)
    return summary


def _report_sections(study, scores, summary, figures, grid_png, world: Path) -> list[Section]:
    names = summary["roles"]
    data = summary["data"]
    acc_rows = [
        {
            "reward": n,
            "preference accuracy vs gold": r["preference_accuracy_vs_gold"],
            "accuracy vs annotator labels": r["accuracy_vs_annotator_labels"],
            "Spearman with gold": r["spearman_with_gold"],
            "mean": r["mean"],
            "std": r["std"],
        }
        for n, r in sorted(
            summary["rewards"].items(), key=lambda kv: -kv[1]["preference_accuracy_vs_gold"]
        )
    ]
    ann = summary["annotators"]
    overview = Section(
        "Overview",
        f"The world's tiny Stable Diffusion pipeline generated {data['n_images']} samples for "
        f"{data['n_prompts']} held-out prompts (never seen in training), {data['per_prompt']} per "
        f"prompt under different sampling settings. Each reward scored every sample; "
        f"{data['n_pairs']} same-prompt pairs were labelled by simulated annotators (two labels "
        f"per pair) from gold scores. Preference accuracy = share of pairs a reward orders as the "
        f"gold reward does (gold ties excluded). Annotators agree with each other on "
        f"{ann.get('inter_annotator', float('nan')):.0%} of labels and with gold on "
        f"{ann['accuracy_vs_gold']:.0%} of their non-tie labels. Wall time "
        f"{summary['wall_time_s']:.0f} s.",
        figures=figures,
        table=acc_rows,
    )
    samples = Section(
        "Samples by sampling setting",
        "Rows: sampling settings (top to bottom as in the table); columns: the first held-out "
        "prompts. The table is the gold reward's verdict per setting (share of samples with "
        "every attribute right, per-attribute accuracy, mean gold score and sharpness).",
        figures=[
            Figure(grid_png, "rows: " + "; ".join(r["setting"] for r in summary["gold_by_setting"]))
        ],
        table=summary["gold_by_setting"],
    )
    sections = [overview, samples]
    settings, prompts, paths = study["settings"], study["prompts"], study["paths"]
    for role in ("gold", "proxy", "clipscore"):
        name = names[role]
        description, paper = _spec_text(name)
        order = np.argsort(-scores[name], kind="stable")
        text = description + (f" Paper: {paper}." if paper else "")
        sections.append(
            Section(name, text, galleries=_galleries(name, order, prompts, paths, scores, settings))
        )
    sections.append(
        Section(
            "Where the proxy and gold disagree",
            "Same-prompt pairs the proxy orders against gold, largest proxy margin first: what "
            "an alignment loop optimising the proxy would push towards.",
            galleries=_disagreements(study, scores, names["proxy"]),
        )
    )
    sections.append(
        Section(
            "Sanity checks",
            "What a working world shows (measured vs reference).",
            table=[{"check": n, **c} for n, c in summary["checks"].items()],
        )
    )
    built = _world_figures_table(world)
    if built:
        sections.append(
            Section(
                "How the world was built",
                "Figures recorded by `python -m mmreward.world.build` (figures.json next to the "
                "assets): tiny-CLIP retrieval, gold classifier accuracy, generated-sample gold "
                "accuracy with and without CFG, annotator agreement, proxy vs CLIPScore.",
                table=built,
            )
        )
    return sections


def _print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    print(f"\nwrote {out_dir / 'report.html'} ({summary['wall_time_s']:.1f} s)")
    for name, r in summary["rewards"].items():
        print(f"  {name:26s} preference accuracy vs gold {r['preference_accuracy_vs_gold']:.3f}")
    for name, c in summary["checks"].items():
        print(
            f"  check {name:24s} {c['measured']:.3f} vs {c['reference']:.3f}  {'ok' if c['passed'] else 'FAILED'}"
        )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--n-prompts", type=int, default=None, help="held-out prompts to use")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--align-steps", type=int, default=30,
                        help="steps of the demo's ReFL runs (0: no alignment)")  # fmt: skip
    args = parser.parse_args(argv)
    summary = run_demo(args.out, n_prompts=args.n_prompts, seed=args.seed,
                       progress=not args.no_progress, align_steps=args.align_steps)  # fmt: skip
    _print_summary(summary, Path(args.out))
    return summary


if __name__ == "__main__":
    main()
