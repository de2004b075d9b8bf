"""The world's reported figures, computed from the assets and written as JSON.

- ``clip_retrieval``: zero-shot attribute retrieval of the tiny CLIP on held-out scans;
- ``gold_classifier``: the gold digit classifier's accuracy on held-out renders;
- ``vae_reconstruction``: gold on held-out renders and on their VAE reconstructions (the
  ceiling of what the pipeline's samples can show);
- ``generation``: the gold reward's verdict on samples of the pipeline, for held-out and
  train prompts, with and without classifier-free guidance (per-attribute accuracy, the
  share of samples with every attribute right, mean gold score);
- ``annotators``: agreement of the simulated annotators on a held-out preference study;
- ``preference_accuracy``: on fresh same-prompt pairs of held-out prompts and of training
  prompts (new seeds), how often each reward orders a pair as gold does (proxy vs
  zero-shot CLIPScore; the annotators themselves for reference), on all pairs and on
  decisive pairs (|Δgold| > 0.1).

``python -m mmreward.world.build --stages figures`` recomputes ``figures.json``;
:func:`gold_summary` and :func:`preference_report` are shared with the demo.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmreward.world.data import ATTRIBUTES

DECISIVE = 0.1  # |Δgold| above which a pair counts as decisive (a clear difference)
#: how closely a rebuild from scratch reproduces the figures (absolute, on accuracies in [0,1])
TOLERANCE = {
    "clip_retrieval": 0.05,
    "gold_classifier": 0.02,
    "generation": 0.08,
    "annotators": 0.03,
    "preference_accuracy": 0.05,
}


def gold_summary(out) -> dict[str, float]:
    """Per-attribute accuracy, all-correct share and mean score from a gold RewardOutput."""
    summary = {
        f"accuracy_{a}": float(out.extras[f"correct_{a}"].float().mean()) for a in ATTRIBUTES
    }
    summary["all_correct"] = float(out.extras["correct"].float().mean())
    summary["mean_gold"] = float(out.scores.float().mean())
    summary["mean_sharpness"] = float(out.sub_scores["sharpness"].float().mean())
    return summary


def generation_report(
    pipe,
    gold,
    prompts: Sequence[str],
    per_prompt: int,
    guidance_scales: Sequence[float],
    num_inference_steps: int,
    seed: int = 0,
) -> tuple[dict[str, dict[str, float]], dict[float, Tensor]]:
    """Gold summaries of ``per_prompt`` samples per prompt at each guidance scale.

    The same seeds are used at every scale, so the comparison is paired. Returns the
    summaries (keyed ``"cfg_<scale>"``, ``"cfg_1.0"`` = no guidance) and the images.
    """
    from mmreward.world.diffusion import generate

    expanded = [p for p in prompts for _ in range(per_prompt)]
    rng = np.random.default_rng(seed)
    seeds = rng.choice(2**31 - 1, size=len(expanded), replace=False).tolist()
    report, images = {}, {}
    for g in guidance_scales:
        x = generate(
            pipe, expanded, seeds, guidance_scale=g, num_inference_steps=num_inference_steps
        )
        out = gold.score(x, prompts=expanded, batch_size=256)
        report[f"cfg_{g:g}"] = {"n": len(expanded), **gold_summary(out)}
        images[g] = x
    return report, images


def preference_report(
    scores: Mapping[str, Sequence[float] | Tensor],
    gold: Sequence[float] | Tensor,
    pairs: Sequence[tuple[int, int]],
) -> dict[str, float]:
    """Gold-agreement of each reward's ordering on ``pairs`` (see ``proxy.gold_pair_accuracy``)."""
    from mmreward.world.proxy import gold_pair_accuracy

    return {name: gold_pair_accuracy(s, gold, pairs) for name, s in scores.items()}


def compute_figures(assets: str | Path, work: str | Path, cfg=None, log=print) -> dict[str, Any]:
    """Every figure, from the assets in ``assets`` (intermediate images go to ``work``)."""
    from mmreward.world.annotators import (
        LABEL_NOISE,
        TEMPERATURE,
        TIE_BAND,
        agreement,
        simulate_study,
    )
    from mmreward.world.build import BuildConfig
    from mmreward.world.clip import load_clip, retrieval_accuracy
    from mmreward.world.data import prompt_splits
    from mmreward.world.diffusion import GUIDANCE_SCALE, NUM_STEPS, load_pipeline
    from mmreward.world.gold import classifier_data, ink_map, load_gold
    from mmreward.world.proxy import score_images, world_clipscore, world_proxy

    cfg = cfg or BuildConfig()
    assets, work = Path(assets), Path(work)
    figures: dict[str, Any] = {}

    clip, tokenizer = load_clip(assets / "clip")
    figures["clip_retrieval"] = retrieval_accuracy(clip, tokenizer, n=cfg.clip_eval_n)
    log(f"clip retrieval: {figures['clip_retrieval']}")

    gold = load_gold(assets / "gold")
    x, y = classifier_data(cfg.gold_n_eval, "test", cfg.seed + 1000, augment=False)
    with torch.no_grad():
        pred = gold.classifier(ink_map(x)).argmax(1)
    figures["gold_classifier"] = {
        "accuracy_test_renders": float((pred == y).float().mean()),
        "n": len(y),
    }

    pipe = load_pipeline(assets / "pipeline")
    # the VAE bounds what samples can show: gold on reconstructions of held-out renders
    from mmreward.world.data import sample_world

    s = sample_world(cfg.gold_n_eval // 4, digits="test", prompts="test", seed=cfg.seed + 9)
    with torch.no_grad():
        z = pipe.vae.encode(s.images * 2 - 1).latent_dist.mean
        recon = ((pipe.vae.decode(z).sample + 1) / 2).clamp(0, 1)
    figures["vae_reconstruction"] = {
        "psnr_db": float(-10 * torch.log10((recon - s.images).pow(2).mean())),
        "gold_renders": gold_summary(gold.score(s.images, prompts=s.prompts, batch_size=256)),
        "gold_reconstructions": gold_summary(gold.score(recon, prompts=s.prompts, batch_size=256)),
    }
    log(f"vae reconstruction: {figures['vae_reconstruction']}")
    splits = prompt_splits()
    generation = {"num_inference_steps": NUM_STEPS}
    for split, per_prompt in (
        ("heldout_prompts", cfg.fig_per_test_prompt),
        ("train_prompts", cfg.fig_per_train_prompt),
    ):
        prompts = [a.prompt for a in splits["test" if split == "heldout_prompts" else "train"]]
        report, _ = generation_report(
            pipe,
            gold,
            prompts[: cfg.fig_prompts],
            per_prompt,
            (1.0, GUIDANCE_SCALE),
            NUM_STEPS,
            seed=cfg.seed + 3,
        )
        generation[split] = report
        log(f"generation {split}: {report}")
    figures["generation"] = generation

    rewards = {
        "proxy (clip-head.world-proxy)": world_proxy(assets / "proxy"),
        "zero-shot CLIPScore (clipscore.world-tiny)": world_clipscore(assets / "clip"),
    }
    # two preference studies on fresh samples: held-out prompts (compositional
    # generalisation) and training prompts (new seeds: the proxy's own distribution)
    studies = {
        "heldout_prompts": ([a.prompt for a in splits["test"]], cfg.fig_study_per_prompt),
        "train_prompts_new_samples": (
            [a.prompt for a in splits["train"]],
            cfg.fig_train_study_per_prompt,
        ),
    }
    figures["preference_accuracy"] = {}
    for k, (name, (prompts, per_prompt)) in enumerate(studies.items()):
        study = simulate_study(  # every same-prompt pair, two labels each
            pipe,
            gold,
            prompts[: cfg.fig_prompts],
            work,
            name,
            per_prompt=per_prompt,
            pairs_per_prompt=per_prompt * (per_prompt - 1) // 2,
            labels_per_pair=2,
            seed=cfg.seed + 2 + k,
        )
        agree = agreement(study["rows"])
        if name == "heldout_prompts":
            figures["annotators"] = {
                "model": {
                    "temperature": TEMPERATURE,
                    "tie_band": TIE_BAND,
                    "label_noise": LABEL_NOISE,
                },
                **agree,
            }
        scores = {n: score_images(r, study["images"], study["prompts"]) for n, r in rewards.items()}
        gold_scores = study["gold"].numpy()
        decisive = [
            (a, b) for a, b in study["pairs"] if abs(gold_scores[a] - gold_scores[b]) > DECISIVE
        ]
        result: dict[str, Any] = {"n_pairs": len(study["pairs"]), "n_decisive_pairs": len(decisive)}
        result["all_pairs"] = preference_report(scores, study["gold"], study["pairs"])
        result["all_pairs"]["annotators (one label, vs gold)"] = agree["accuracy_vs_gold"]
        if decisive:
            result[f"decisive_pairs (|Δgold| > {DECISIVE})"] = preference_report(
                scores, study["gold"], decisive
            )
        figures["preference_accuracy"][name] = result
        log(f"preference accuracy {name}: {result}")
    figures["tolerance"] = TOLERANCE
    return figures


def write_figures(figures: Mapping[str, Any], path: str | Path) -> Path:
    from mmreward.report import write_json

    return write_json(path, figures)
