"""Regenerate every asset of the built-in world: one command, stage by stage.

    python -m mmreward.world.build --out mmreward/world/assets            # everything
    python -m mmreward.world.build --out /tmp/w --stages gold,clip         # some stages
    python -m mmreward.world.build --out /tmp/w --tiny                     # a smoke build

Stages (each reads what the earlier ones wrote under ``--out``):

==========  =====================================================================
``gold``    gold classifier + sharpness reference → ``gold/``
``clip``    BPE tokenizer + tiny CLIP, contrastive → ``clip/``
``vae``     tiny ``AutoencoderKL`` → ``pipeline/vae/``
``unet``    tiny ``UNet2DConditionModel`` (+ EMA) → the full ``pipeline/``
``prefs``   candidates for train prompts, gold scores, annotator labels → ``--work``
``proxy``   ImageReward-style head trained on those labels → ``proxy/``
``figures`` the reported figures → ``figures.json``
==========  =====================================================================

Every stage is seeded; runs use one CPU thread by default (``--threads``), so a rebuild on
the same machine reproduces the weights. ``build.json`` records each stage's config,
metrics, wall time and CPU time.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmreward.world.diffusion import UNET_CONFIG, VAE_CONFIG

STAGES = ("gold", "clip", "vae", "unet", "prefs", "proxy", "figures")


@dataclass
class BuildConfig:
    """Sizes and seeds of every stage (defaults: the committed assets, ~20 min of CPU)."""

    seed: int = 0
    # gold classifier
    gold_n_train: int = 8000  # renders (15% "no digit" negatives)
    gold_epochs: int = 6
    gold_n_eval: int = 2000
    # tiny CLIP
    clip_steps: int = 2500
    clip_batch: int = 128
    clip_pool: int = 8000  # pre-rendered train images
    clip_config: dict[str, Any] | None = None  # None: clip.TINY_CONFIG
    clip_eval_n: int = 1000
    # VAE
    vae_steps: int = 1000
    vae_batch: int = 32
    vae_pool: int = 4000
    vae_config: dict[str, Any] | None = None  # None: diffusion.VAE_CONFIG
    # UNet
    unet_steps: int = 2500
    unet_batch: int = 32
    unet_pool: int = 6000
    unet_config: dict[str, Any] | None = None  # None: diffusion.UNET_CONFIG
    # preference data and proxy
    prefs_per_prompt: int = 16  # candidates per train prompt (cycling the study settings)
    prefs_pairs_per_prompt: int = 120  # every pair of the 16 candidates, one label each
    proxy_epochs: int = 1
    proxy_batch: int = 32
    proxy_lr: float = 1e-5  # full fine-tune: at 1e-4 it forgets CLIP and falls below it
    proxy_head: dict[str, Any] = field(default_factory=dict)  # overrides of proxy.HEAD_KWARGS
    # figures
    fig_per_test_prompt: int = 5  # samples per held-out prompt, per CFG setting
    fig_per_train_prompt: int = 2
    fig_study_per_prompt: int = 12  # candidates per held-out prompt in the preference study
    fig_train_study_per_prompt: int = 6  # … per training prompt (all 160 prompts)
    fig_prompts: int | None = None  # limit the prompts (tiny builds)


#: a smoke build for tests: every stage runs, in seconds, with tiny models
TINY_BUILD = BuildConfig(
    gold_n_train=200,
    gold_epochs=1,
    gold_n_eval=100,
    clip_steps=3,
    clip_batch=16,
    clip_pool=64,
    clip_eval_n=20,
    clip_config={
        "projection_dim": 16,
        "text_config": {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
        },
        "vision_config": {
            "image_size": 32,
            "patch_size": 16,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
    },
    vae_steps=2,
    vae_batch=4,
    vae_pool=32,
    vae_config={**VAE_CONFIG, "block_out_channels": [4, 4, 4], "norm_num_groups": 2},
    unet_steps=2,
    unet_batch=4,
    unet_pool=32,
    unet_config={
        **UNET_CONFIG,
        "block_out_channels": [8, 8],
        "attention_head_dim": 4,  # cross_attention_dim follows the tiny CLIP's text width
        "norm_num_groups": 4,
    },
    prefs_per_prompt=2,
    prefs_pairs_per_prompt=1,
    proxy_epochs=1,
    proxy_batch=4,
    proxy_head={"hidden": [8]},
    fig_per_test_prompt=1,
    fig_per_train_prompt=1,
    fig_study_per_prompt=2,
    fig_train_study_per_prompt=2,
    fig_prompts=4,
)


class _Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


# -- stages ------------------------------------------------------------------------------


def stage_gold(out: Path, work: Path, cfg: BuildConfig, log) -> dict[str, Any]:
    from mmreward.world.gold import load_gold, reference_sharpness, save_gold, train_classifier

    classifier, metrics = train_classifier(
        n_train=cfg.gold_n_train,
        epochs=cfg.gold_epochs,
        n_eval=cfg.gold_n_eval,
        seed=cfg.seed,
        log=log,
    )
    ref = reference_sharpness(n=min(2000, cfg.gold_n_train), seed=cfg.seed)
    save_gold(classifier, {"sharpness_ref": ref}, out / "gold")
    gold_check = _gold_sanity(load_gold(out / "gold"), n=min(500, cfg.gold_n_eval), seed=cfg.seed)
    return {**metrics, "sharpness_ref": ref, **gold_check}


def _gold_sanity(gold, n: int, seed: int) -> dict[str, float]:
    """Gold on clean held-out renders with their own prompts vs with a wrong attribute."""
    import numpy as np

    from mmreward.world.data import (
        ATTRIBUTES,
        BACKGROUNDS,
        COLOURS,
        SIZES,
        Attributes,
        sample_world,
    )

    s = sample_world(n, digits="test", prompts="all", seed=seed + 7)
    out = gold.score(s.images, prompts=s.prompts, batch_size=256)
    rng = np.random.default_rng(seed)
    values = {
        "digit": list(range(10)),
        "colour": list(COLOURS),
        "background": list(BACKGROUNDS),
        "size": list(SIZES),
    }
    wrong = []
    for a in s.attributes:
        attr = ATTRIBUTES[int(rng.integers(4))]
        d = a.as_dict()
        d[attr] = [v for v in values[attr] if v != d[attr]][
            int(rng.integers(len(values[attr]) - 1))
        ]
        wrong.append(Attributes(**d).prompt)
    bad = gold.score(s.images, prompts=wrong, batch_size=256)
    return {
        "gold_clean_mean": float(out.scores.mean()),
        "gold_clean_all_correct": float(out.extras["correct"].float().mean()),
        "gold_wrong_prompt_mean": float(bad.scores.mean()),
        "gold_prefers_true_prompt": float((out.scores > bad.scores).float().mean()),
    }


def stage_clip(out: Path, work: Path, cfg: BuildConfig, log) -> dict[str, Any]:
    from mmreward.world.clip import (
        build_clip,
        build_tokenizer,
        retrieval_accuracy,
        save_clip,
        train_clip,
    )

    tokenizer = build_tokenizer()
    model = build_clip(tokenizer, cfg.clip_config, seed=cfg.seed)
    train_clip(
        model,
        tokenizer,
        steps=cfg.clip_steps,
        batch_size=cfg.clip_batch,
        pool_size=cfg.clip_pool,
        seed=cfg.seed,
        log=log,
        log_every=max(1, cfg.clip_steps // 10),
    )
    save_clip(model, tokenizer, out / "clip")
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "n_params": n_params,
        "retrieval": retrieval_accuracy(model, tokenizer, n=cfg.clip_eval_n),
    }


def stage_vae(out: Path, work: Path, cfg: BuildConfig, log) -> dict[str, Any]:
    from mmreward.world.diffusion import build_vae, train_vae

    vae = build_vae(cfg.vae_config, seed=cfg.seed)
    vae, metrics = train_vae(
        vae,
        steps=cfg.vae_steps,
        batch_size=cfg.vae_batch,
        pool_size=cfg.vae_pool,
        seed=cfg.seed,
        log=log,
        log_every=max(1, cfg.vae_steps // 10),
    )
    from mmreward.world.clip import quiet_hf

    with quiet_hf():  # stored in fp16 (half the bytes); from_pretrained loads it in fp32
        vae.to(torch.float16).save_pretrained(out / "pipeline" / "vae", safe_serialization=True)
    return {"n_params": sum(p.numel() for p in vae.parameters()), **metrics}


def stage_unet(out: Path, work: Path, cfg: BuildConfig, log) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    from mmreward.world.clip import load_clip
    from mmreward.world.diffusion import (
        assemble_pipeline,
        build_unet,
        save_pipeline,
        text_encoder_from_clip,
        train_unet,
    )

    clip, tokenizer = load_clip(out / "clip")
    text_encoder = text_encoder_from_clip(clip)
    vae = AutoencoderKL.from_pretrained(out / "pipeline" / "vae").eval()
    unet_config = dict(cfg.unet_config or UNET_CONFIG)
    unet_config["cross_attention_dim"] = text_encoder.config.hidden_size
    unet = build_unet(unet_config, seed=cfg.seed)
    ema = train_unet(
        unet,
        vae,
        text_encoder,
        tokenizer,
        steps=cfg.unet_steps,
        batch_size=cfg.unet_batch,
        pool_size=cfg.unet_pool,
        seed=cfg.seed,
        log=log,
        log_every=max(1, cfg.unet_steps // 20),
    )
    from mmreward.world.clip import quiet_hf

    with quiet_hf():  # UNet and VAE stored in fp16; from_pretrained loads them in fp32
        pipe = assemble_pipeline(
            vae.to(torch.float16), ema.to(torch.float16), text_encoder, tokenizer
        )
    save_pipeline(pipe, out / "pipeline")
    return {"n_params": sum(p.numel() for p in ema.parameters())}


def stage_prefs(out: Path, work: Path, cfg: BuildConfig, log) -> dict[str, Any]:
    from mmreward.world.annotators import STUDY_SETTINGS, agreement, simulate_study
    from mmreward.world.data import prompt_splits
    from mmreward.world.diffusion import load_pipeline
    from mmreward.world.gold import load_gold

    pipe = load_pipeline(out / "pipeline")
    gold = load_gold(out / "gold")
    splits = prompt_splits()
    result = {}
    # train: candidates of the training prompts, one label per pair; eval (the trainer's
    # held-out monitor): a smaller study of the held-out prompts, two labels per pair
    plan = (
        ("train", splits["train"], cfg.prefs_per_prompt, cfg.prefs_pairs_per_prompt, 1),
        ("eval", splits["test"], min(cfg.prefs_per_prompt, 6), 15, 2),
    )
    for split, prompts, per_prompt, pairs_per_prompt, labels in plan:
        prompts = [a.prompt for a in prompts][: cfg.fig_prompts]
        study = simulate_study(
            pipe,
            gold,
            prompts,
            work / "prefs",
            split,
            per_prompt=per_prompt,
            settings=STUDY_SETTINGS,
            pairs_per_prompt=pairs_per_prompt,
            labels_per_pair=labels,
            seed=cfg.seed + (0 if split == "train" else 1),
        )
        result[split] = {"n_images": len(study["paths"]), **agreement(study["rows"])}
        log(f"prefs {split}: {result[split]}")
    return result


def stage_proxy(out: Path, work: Path, cfg: BuildConfig, log) -> dict[str, Any]:
    from mmreward.world.proxy import new_proxy, save_proxy, train_proxy

    model = new_proxy(out / "clip", seed=cfg.seed, **cfg.proxy_head)
    result = train_proxy(
        model,
        work / "prefs" / "train.jsonl",
        work / "prefs" / "eval.jsonl",
        work / "proxy_run",
        epochs=cfg.proxy_epochs,
        batch_size=cfg.proxy_batch,
        lr=cfg.proxy_lr,
        seed=cfg.seed,
    )
    save_proxy(model, out / "proxy")
    log(f"proxy: {result}")
    return result


def stage_figures(out: Path, work: Path, cfg: BuildConfig, log) -> dict[str, Any]:
    from mmreward.world.figures import compute_figures, write_figures

    figures = compute_figures(out, work / "figures", cfg, log=log)
    write_figures(figures, out / "figures.json")
    return {"written": "figures.json"}


_STAGE_FUNCS = {
    "gold": stage_gold,
    "clip": stage_clip,
    "vae": stage_vae,
    "unet": stage_unet,
    "prefs": stage_prefs,
    "proxy": stage_proxy,
    "figures": stage_figures,
}


def build(
    out: str | Path,
    stages: Sequence[str] = STAGES,
    config: BuildConfig | None = None,
    work: str | Path | None = None,
    threads: int = 1,
    log=print,
) -> dict[str, Any]:
    """Run ``stages`` in order; returns (and writes) ``out/build.json``."""
    cfg = config or BuildConfig()
    unknown = [s for s in stages if s not in _STAGE_FUNCS]
    if unknown:
        raise ValueError(f"stages: unknown {unknown}; expected some of {list(STAGES)}")
    out = Path(out)
    work = Path(work) if work is not None else Path("runs") / "world-build"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    from mmreward.report import write_json

    record_path = out / "build.json"
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for stage in [s for s in STAGES if s in stages]:
            log(f"== stage {stage}")
            torch.manual_seed(cfg.seed)
            with _Timer() as t:
                metrics = _STAGE_FUNCS[stage](out, work, cfg, log)
            log(f"== stage {stage} done in {t.wall:.0f} s wall, {t.cpu:.0f} s CPU")
            # re-read before writing: stages of one build may run in parallel processes
            record = json.loads(record_path.read_text()) if record_path.is_file() else {}
            record["config"] = asdict(cfg)
            record.setdefault("stages", {})[stage] = {
                "metrics": metrics,
                "wall_s": round(t.wall, 1),
                "cpu_s": round(t.cpu, 1),
                "threads": threads,
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            write_json(record_path, record)
    finally:
        torch.set_num_threads(previous_threads)
    return json.loads(record_path.read_text()) if record_path.is_file() else {}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="mmreward/world/assets", help="assets folder")
    parser.add_argument("--work", default="runs/world-build", help="intermediate files")
    parser.add_argument("--stages", default="all", help=f"comma list of {','.join(STAGES)} or all")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--tiny", action="store_true", help="a smoke build with tiny models")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    stages = STAGES if args.stages == "all" else tuple(s.strip() for s in args.stages.split(","))
    cfg = TINY_BUILD if args.tiny else BuildConfig()
    cfg = BuildConfig(**{**asdict(cfg), "seed": args.seed})
    return build(args.out, stages, cfg, args.work, args.threads)


if __name__ == "__main__":
    main()
