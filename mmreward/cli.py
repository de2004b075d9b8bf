"""The ``mmreward`` command line: list, score, eval, train, demo, align, video and more.

The CLI is the composition root: model packages are imported only when a command needs
them (through the registry's lazy factories).

    mmreward list 'clip*'
    mmreward score --reward colorfulness --input gen/ --out scores.jsonl
    mmreward eval --reward runs/rm/model --pairs pairs.jsonl
    mmreward train --config rm/convnet_sharpness train.lr=1e-3
    mmreward demo --out runs/demo
    mmreward align --config align/refl_world train.max_steps=30
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

_DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}


def _dtype(name: str | None):
    import torch

    if name is None:
        return None
    if name not in _DTYPES:
        raise SystemExit(f"--dtype: expected one of {sorted(_DTYPES)}, got {name!r}")
    return getattr(torch, _DTYPES[name])


def _load_reward(args: argparse.Namespace):
    import mmreward

    return mmreward.load(
        args.reward,
        device=args.device,
        dtype=_dtype(args.dtype),
        weights=args.weights,
        trust_remote_code=args.trust_remote_code,
    )


def _add_reward_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reward", required=True, help="registry name or saved model directory")
    p.add_argument("--weights", help="local weights file/directory for a registered reward")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: accelerate's)")
    p.add_argument("--dtype", default=None, help="fp32 (default), bf16 or fp16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow building models whose code is not in the installed packages",
    )
    p.add_argument("--no-progress", action="store_true")


# -- list ------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    import mmreward

    names = mmreward.list_rewards(args.pattern)
    if args.json:
        rows = []
        for n in names:
            s = mmreward.get_spec(n)
            rows.append(
                {
                    "name": n,
                    "weights": s.weights.describe() if s.weights else None,
                    "license": s.license,
                    "paper": s.paper,
                    "description": s.description,
                }
            )
        print(json.dumps(rows, indent=2))
    else:
        for n in names:
            s = mmreward.get_spec(n)
            src = s.weights.describe() if s.weights else "no weights"
            print(f"{n:32s} {src:40s} {s.description}")
    return 0


# -- score -------------------------------------------------------------------------------
def cmd_score(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from mmreward.scoring import collect_items, run_scoring

    state = PartialState()
    if args.device is None:
        args.device = str(state.device)
    items = collect_items(args.input, args.prompts)
    if not items:
        raise SystemExit(f"--input: no images, videos or rows found in {args.input}")
    reward = _load_reward(args)
    load_video = None
    if any(it.kind == "videos" for it in items):
        load_video = _video_loader(args)
    summary = run_scoring(
        reward,
        items,
        args.out,
        args.batch_size,
        progress=not args.no_progress,
        load_video=load_video,
    )
    if state.is_main_process:
        print(json.dumps(summary, indent=2))
    return 0


def _video_loader(args: argparse.Namespace):
    try:
        from video.cli import loader_from_args
    except ImportError:
        return None
    return loader_from_args(args)


# -- eval --------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from mmreward.data import load_examples
    from mmreward.train import evaluate

    reward = _load_reward(args)
    examples = load_examples(args.pairs, "pairwise")
    report = evaluate(reward, examples, "pairwise", batch_size=args.batch_size)
    report = {"reward": args.reward, "pairs": str(args.pairs), **report}
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


# -- train -------------------------------------------------------------------------------
def resolve_config(name: str) -> Path:
    """A config path, or a name inside the installed ``configs`` package (``rm/x``)."""
    p = Path(name)
    if p.is_file():
        return p
    root = resources.files("configs")
    for candidate in (name, f"{name}.yaml"):
        ref = root.joinpath(candidate)
        if ref.is_file():
            return Path(str(ref))
    available = sorted(str(q.relative_to(Path(str(root)))) for q in Path(str(root)).rglob("*.yaml"))
    raise SystemExit(f"--config: {name!r} not found; available: {available}")


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict."""
    import yaml

    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"override {item!r}: expected key=value (e.g. train.lr=1e-3)")
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SystemExit(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return cfg


_TRAIN_SECTIONS = {"reward", "reward_kwargs", "data", "train"}


def cmd_train(args: argparse.Namespace) -> int:
    import yaml

    import mmreward
    from mmreward.train import RewardModelTrainer, TrainConfig

    path = resolve_config(args.config)
    cfg = yaml.safe_load(path.read_text()) or {}
    cfg = apply_overrides(cfg, args.overrides)
    unknown = sorted(set(cfg) - _TRAIN_SECTIONS)
    if unknown:
        raise SystemExit(f"{path}: unknown section(s) {unknown}; valid: {sorted(_TRAIN_SECTIONS)}")
    if "reward" not in cfg:
        raise SystemExit(f"{path}: 'reward' (a registry name or model directory) is required")
    try:
        tcfg = TrainConfig.from_dict(cfg.get("train", {}))
    except (TypeError, ValueError) as e:
        raise SystemExit(f"{path}: {e}") from e
    data = dict(cfg.get("data") or {})
    builtin = data.pop("builtin", None)
    if builtin:
        from accelerate import PartialState

        from mmreward.synthetic import write_sharpness_preferences

        if builtin != "sharpness-pairs":
            raise SystemExit(f"data.builtin: expected 'sharpness-pairs', got {builtin!r}")
        state = PartialState()
        data_dir = Path(tcfg.output_dir) / "data"
        if state.is_main_process and not (data_dir / "eval.jsonl").is_file():
            write_sharpness_preferences(data_dir, **data)
        state.wait_for_everyone()
        tcfg.train_file = tcfg.train_file or str(data_dir / "train.jsonl")
        tcfg.eval_file = tcfg.eval_file or str(data_dir / "eval.jsonl")
    elif data:
        raise SystemExit(
            f"{path}: data: only 'builtin' data is generated here; "
            "set train.train_file / train.eval_file for your own JSONL"
        )
    model = mmreward.load(cfg["reward"], **(cfg.get("reward_kwargs") or {}))
    result = RewardModelTrainer(model, tcfg).train(resume=not args.no_resume)
    print(json.dumps(result, indent=2))
    return 0


# -- demo --------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from mmreward.demo import run_demo

    summary = run_demo(args.out, progress=not args.no_progress, align_steps=args.align_steps)
    print(f"report: {Path(args.out) / 'report.html'}")
    if isinstance(summary, dict) and "wall_time_s" in summary:
        print(f"wall time: {summary['wall_time_s']:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmreward", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered reward models")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("score", help="score a directory or JSONL of items into JSONL (resumable)")
    _add_reward_args(p)
    p.add_argument("--input", required=True, help="directory of images/videos, or a JSONL file")
    p.add_argument("--prompts", help="JSONL of {id|image|path, prompt} for a directory input")
    p.add_argument("--out", required=True, help="output JSONL (rerun to resume)")
    p.add_argument("--num-frames", type=int, default=None, help="video: frames to sample")
    p.add_argument("--fps", type=float, default=None, help="video: target sampling fps")
    from video.cli import add_score_arguments

    add_score_arguments(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("eval", help="preference accuracy of a reward on a pairs JSONL")
    _add_reward_args(p)
    p.add_argument("--pairs", required=True)
    p.add_argument("--out", help="write the metrics JSON here too")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="train a reward model from a YAML config")
    p.add_argument("--config", required=True, help="YAML path or a name in configs/ (rm/…)")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-3")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="run the demo on the built-in data and write a report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--align-steps", type=int, default=30,
                   help="steps of the demo's ReFL runs (0: no alignment)")  # fmt: skip
    p.set_defaults(func=cmd_demo)

    from diffusion_align.cli import add_parser as add_align_parser

    add_align_parser(sub)
    from video.cli import add_parser as add_video_parser

    add_video_parser(sub)
    from vision_rm.ganrm_world import add_parser as add_ganrm_world_parser

    add_ganrm_world_parser(sub)
    from vision_rm.vlm.cli import add_parser as add_bon_parser

    add_bon_parser(sub)
    from video.videoalign import add_parser as add_videoalign_parser

    add_videoalign_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, PermissionError) as e:
        print(f"mmreward {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
