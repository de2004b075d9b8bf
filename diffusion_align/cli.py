"""``mmreward align``: run an alignment recipe from a YAML config.

    mmreward align --config align/refl_world                       # a recipe in configs/
    mmreward align --config my.yaml train.lr=3e-5 train.max_steps=50
    mmreward align --config align/d3po_human_world --write-pairs 64  # pairs for human labels
    mmreward align --config align/ddpo_world reward=gold.world       # RL against any reward
    mmreward align --config align/ctrlz_world                        # inference-time search
    accelerate launch -m diffusion_align.cli --config align/dpo_sd15

A config whose ``algorithm.name`` is ``ctrlz`` or ``bon`` runs inference-time search
(Ctrl-Z sampling, Best-of-N / Soft-BoN) instead of training: one image per prompt of
``data.prompts`` into ``train.output_dir`` (``images/``, ``samples.jsonl`` with scores and
NFE, ``grid.png``, ``summary.json``, ``report.html``); a rerun continues after the last
prompt done.

Registered in the core CLI by ``diffusion_align.cli.add_parser(subparsers)``; also runs
alone as ``python -m diffusion_align.cli``. Rerunning a command resumes from the run's
latest checkpoint (``--no-resume`` starts over).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from diffusion_align.config import AlignConfig, ConfigError, ModelConfig


def build_policy(mc: ModelConfig):
    """The policy a ``model`` section describes."""
    from diffusion_align.policy import DiffusionPolicy, LoraSpec

    lora = None
    if mc.lora_rank > 0:
        lora = LoraSpec(
            rank=mc.lora_rank, alpha=mc.lora_alpha, target_modules=list(mc.lora_targets)
        )
    return DiffusionPolicy.from_pretrained(
        mc.pretrained,
        lora=lora,
        reference=mc.reference,
        gradient_checkpointing=mc.gradient_checkpointing,
        lora_weights=mc.lora_weights,
        negative_prompt=mc.negative_prompt,
    )


def load_rewards(names: str | list[str] | None, kwargs: dict[str, Any]) -> list[Any]:
    import mmreward

    if names is None:
        return []
    return [mmreward.load(n, **kwargs) for n in ([names] if isinstance(names, str) else names)]


def build_data(cfg: AlignConfig, kind: str, policy: Any):
    """The data source an algorithm's ``data_kind`` needs, from the ``data`` section."""
    from diffusion_align import data

    d, seed = cfg.data, cfg.train.seed
    size = policy.resolution(cfg.sample.height, cfg.sample.width)
    if kind == "prompts":
        if d.prompts is None:
            raise ConfigError("data.prompts: required for this algorithm (a file or world:train)")
        captions = data.ImageCaptions(d.pretrain, size, seed) if d.pretrain else None
        return data.PromptSource(d.prompts, seed, captions)
    if kind == "preferences":
        if d.preferences is None:
            raise ConfigError("data.preferences: required for dpo (a pairwise JSONL of images)")
        path = d.preferences
        if path.startswith(data.WORLD_PREFIX):  # generated once, by the main process
            from accelerate import PartialState

            state, folder = PartialState(), Path(cfg.train.output_dir) / "data"
            split = path[len(data.WORLD_PREFIX) :]
            if state.is_main_process:
                data.world_preference_pairs(split, folder, policy.pipe, seed)
            state.wait_for_everyone()
            path = str(folder / f"{split}.jsonl")
        return data.PreferencePairs(path, size, seed)
    if d.pairs is None or d.labels is None:
        raise ConfigError("data.pairs and data.labels: required for d3po with preference: human")
    return data.TrajectoryPairs(d.pairs, d.labels, seed)


def _gallery_prompts(cfg: AlignConfig, source: Any) -> list[str]:
    from diffusion_align.data import read_prompts

    g = cfg.train.gallery_prompts
    if isinstance(g, list):
        return g
    pool = read_prompts(cfg.eval.prompts) if cfg.eval.prompts is not None else source.prompts
    pool = list(dict.fromkeys(pool))  # distinct, in order
    return pool[:g]


def build_trainer(cfg: AlignConfig):
    """Policy, rewards, algorithm, data and trainer from a validated config."""
    import mmreward
    from diffusion_align.algorithms import get_algorithm
    from diffusion_align.trainer import AlignTrainer

    algo_cls = get_algorithm(cfg.algorithm["name"])
    policy = build_policy(cfg.model)
    rewards = load_rewards(cfg.reward, cfg.reward_kwargs)
    algorithm = algo_cls.from_dict(cfg.algorithm, cfg.sample, rewards)
    source = build_data(cfg, algorithm.data_kind, policy)
    eval_rewards = {name: mmreward.load(spec) for name, spec in cfg.eval.rewards.items()}
    return AlignTrainer(
        policy,
        algorithm,
        source,
        cfg.train,
        eval_config=cfg.eval,
        eval_rewards=eval_rewards,
        gallery_prompts=_gallery_prompts(cfg, source),
        config_dump=cfg.to_dict(),
    )


def load_config(name: str, overrides: list[str]) -> AlignConfig:
    """Read a YAML recipe (path or ``align/<name>`` in ``configs/``) and apply overrides."""
    import yaml

    from mmreward.cli import apply_overrides, resolve_config

    path = resolve_config(name)
    raw = yaml.safe_load(path.read_text()) or {}
    raw = apply_overrides(raw, overrides)
    try:
        return AlignConfig.from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


#: inference-time search methods run by ``mmreward align`` (no training)
SEARCH_METHODS = ("ctrlz", "bon")


def run_search(cfg: AlignConfig, chunk: int = 8, progress: bool = True) -> dict[str, Any]:
    """Ctrl-Z or Best-of-N over ``data.prompts``; resumable (completed prompts are skipped)."""
    import mmreward
    from diffusion_align.algorithms.base import score_images
    from diffusion_align.bon import BoNConfig, best_of_n_sample, combine_rewards
    from diffusion_align.config import build
    from diffusion_align.ctrlz import CtrlZConfig, ctrlz_sample
    from diffusion_align.data import read_prompts
    from mmreward.report import (
        Figure,
        Gallery,
        GalleryItem,
        Section,
        save_image_grid,
        write_gallery_html,
        write_json,
    )

    name = cfg.algorithm["name"]
    options = {k: v for k, v in cfg.algorithm.items() if k != "name"}
    method_cfg = build(CtrlZConfig if name == "ctrlz" else BoNConfig, options, "algorithm")
    if cfg.data.prompts is None:
        raise ConfigError(f"data.prompts: required for {name} (a file or world:test)")
    rewards = load_rewards(cfg.reward, cfg.reward_kwargs)
    if not rewards:
        raise ConfigError(f"reward: required for {name} (the reward the search maximises)")
    reward = combine_rewards(rewards)
    extra = {n: mmreward.load(spec) for n, spec in cfg.eval.rewards.items()}
    policy = build_policy(cfg.model)
    policy.raw_denoiser.eval()
    prompts = read_prompts(cfg.data.prompts)
    out = Path(cfg.train.output_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    log = out / "samples.jsonl"
    rows = (
        [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []
    )
    seed = cfg.train.seed
    for start in range(len(rows), len(prompts), chunk):
        batch = prompts[start : start + chunk]
        if name == "ctrlz":
            res = ctrlz_sample(policy, reward, batch, method_cfg, cfg.sample, seed, progress,
                               index_offset=start)  # fmt: skip
        else:
            res = best_of_n_sample(policy, reward, batch, method_cfg, cfg.sample, seed, progress,
                                   index_offset=start)  # fmt: skip
        scores = {n: score_images([r], res.images.to(policy.device), batch)[:, 0].tolist()
                  for n, r in extra.items()}  # fmt: skip
        new = []
        for k, prompt in enumerate(batch):
            i = start + k
            path = save_image_grid(res.images[k : k + 1], out / "images" / f"{i:05d}.png", nrow=1)
            new.append({"index": i, "prompt": prompt, "image": f"images/{path.name}",
                        "reward": float(res.scores[k]), "nfe": int(res.nfe[k]),
                        **{n: v[k] for n, v in scores.items()}})  # fmt: skip
        with log.open("a") as f:  # appended per chunk: a rerun continues from here
            f.writelines(json.dumps(r) + "\n" for r in new)
        rows += new
    from mmreward.io import load_image

    images = [load_image(out / r["image"]) for r in rows]
    grid = save_image_grid(images[:64], out / "grid.png", nrow=8)
    keys = ["reward", *extra]
    summary = {"method": name, "options": options, "reward": cfg.reward, "prompts": len(rows),
               "nfe_mean": sum(r["nfe"] for r in rows) / max(1, len(rows)),
               **{f"{k}_mean": sum(r[k] for r in rows) / max(1, len(rows)) for k in keys}}  # fmt: skip
    write_json(out / "summary.json", summary)
    items = [GalleryItem(out / r["image"], r["prompt"], {k: r[k] for k in [*keys, "nfe"]})
             for r in rows[:64]]  # fmt: skip
    write_gallery_html(out / "report.html", f"{name}: {len(rows)} prompts",
                       [Section("Summary", json.dumps(summary), figures=[Figure(grid, "first 64")]),
                        Section("Samples", galleries=[Gallery("samples", items)])])  # fmt: skip
    return summary


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if cfg.algorithm.get("name") in SEARCH_METHODS:
        log = Path(cfg.train.output_dir) / "samples.jsonl"
        if args.no_resume and log.is_file():
            log.unlink()
        summary = run_search(cfg)
        print(json.dumps({"output_dir": cfg.train.output_dir, **summary}, indent=2, default=str))
        return 0
    if args.write_pairs:
        from diffusion_align.data import read_prompts, write_trajectory_pairs

        if cfg.data.pairs is None or cfg.data.prompts is None:
            raise ConfigError("--write-pairs: set data.pairs (output directory) and data.prompts")
        policy = build_policy(cfg.model)
        out = write_trajectory_pairs(policy, read_prompts(cfg.data.prompts), cfg.data.pairs,
                                     args.write_pairs, cfg.sample, cfg.train.seed)  # fmt: skip
        print(f"wrote {args.write_pairs} pairs to {out}; label them in {Path(out) / 'labels.json'} "
              "(0: first image better, 1: second, \"tie\"/null: skip), then set data.labels")  # fmt: skip
        return 0
    trainer = build_trainer(cfg)
    result = trainer.train(resume=not args.no_resume)
    if trainer.acc.is_main_process:
        print(json.dumps({"output_dir": cfg.train.output_dir, **result}, indent=2, default=str))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``align`` subcommand on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "align", help="fine-tune a diffusion model against rewards or preferences (ReFL, DRaFT, "
        "AlignProp, Diffusion-DPO, D3PO, RAFT, DDPO, GRPO), or steer sampling (Ctrl-Z, Best-of-N)"
    )  # fmt: skip
    p.add_argument("--config", required=True, help="YAML path or a name in configs/ (align/…)")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--write-pairs", type=int, metavar="N", default=0,
                   help="D3PO human feedback: sample N trajectory pairs into data.pairs and stop")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-5")
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmreward")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["align", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, PermissionError) as e:
        print(f"mmreward align: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
