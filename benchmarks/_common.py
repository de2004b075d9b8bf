"""Timing, table and JSON helpers shared by the batched-vs-one-at-a-time benchmarks.

Imported as ``from _common import …``: each benchmark runs as a script from this folder.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Median wall time of ``repeats`` calls of ``fn`` (after one untimed warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def print_ratio_table(
    results: Sequence[dict[str, Any]],
    target: float,
    unit: str,
    name_width: int,
    params_width: int,
    decimals: int,
) -> None:
    """One row per model: batched and one-at-a-time time and throughput, their ratio."""
    header = (
        f"{'model':<{name_width}} {'params':>{params_width}} {'batched s':>10} {unit:>9} "
        f"{'1-by-1 s':>10} {unit:>9} {'ratio':>7}  target"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        mark = "ok" if r["meets_target"] else "MISSED"
        print(
            f"{r['model']:<{name_width}} {r['params']:>{params_width},} "
            f"{r['batched_s']:>10.{decimals}f} {r['batched_items_per_s']:>9.0f} "
            f"{r['one_at_a_time_s']:>10.{decimals}f} {r['one_at_a_time_items_per_s']:>9.0f} "
            f"{r['ratio']:>6.1f}x  >= {target:.0f}x {mark}"
        )


def write_results_json(path: Path | None, args: Any, results: Sequence[dict[str, Any]]) -> None:
    """Write the environment, the arguments and ``results`` to ``path`` (``None``: skip)."""
    if path is None:
        return
    payload = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, unet: torch.nn.Module | None = None
) -> dict[str, dict]:
    """Median wall and CPU seconds of each function, run in turn ``repeats`` times.

    One untimed warm-up round first; every round runs all functions, starting with a
    different one each round (A B C, B C A, …), so slow phases of a shared machine fall on
    all of them. Hooks on ``unet`` split each wall time into time inside the UNet and time
    outside it (the sampler's own work, the scheduler, the VAE decode); ``unet=None`` skips
    the split (on a GPU the hooks would only see kernel launches).
    """
    for fn in fns.values():
        fn()
    inside = [0.0, 0.0]  # [start of the current call, total]
    hooks = []
    if unet is not None:
        start = unet.register_forward_pre_hook(
            lambda *_: inside.__setitem__(0, time.perf_counter())
        )
        stop = unet.register_forward_hook(
            lambda *_: inside.__setitem__(1, inside[1] + time.perf_counter() - inside[0])
        )
        hooks = [start, stop]
    names = list(fns)
    runs: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": [], "unet": []} for k in fns}
    try:
        for r in range(repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                inside[1] = 0.0
                w0, c0 = time.perf_counter(), time.process_time()
                fns[name]()
                runs[name]["cpu"].append(time.process_time() - c0)
                runs[name]["wall"].append(time.perf_counter() - w0)
                runs[name]["unet"].append(inside[1])
    finally:
        for hook in hooks:
            hook.remove()
    med = statistics.median
    return {
        k: {"wall_s": med(v["wall"]), "cpu_s": med(v["cpu"]),
            "outside_unet_s": None if unet is None else med(
                w - u for w, u in zip(v["wall"], v["unet"], strict=True)),
            "wall_all_s": v["wall"], "cpu_all_s": v["cpu"], "unet_all_s": v["unet"]}
        for k, v in runs.items()
    }  # fmt: skip
