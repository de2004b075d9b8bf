"""Text reward-model experiments on the synthetic world: accuracy, WARM, hedging.

    python -m mmreward.text.experiments --out runs/text_experiments          # ~2–4 min on 2 CPU cores
    python -m mmreward.text.experiments --out /tmp/x --quick                  # a smoke run

Writes ``results.json`` (every number below) and ``hedging.png`` under ``--out``:

1. **Preference accuracy**: a tiny Llama-style sequence-classifier RM trained with
   :class:`mmreward.train.RewardModelTrainer` (Bradley-Terry) on noisy pairs labelled by
   the gold reward (:class:`~mmreward.text.synthetic.TextWorld`), evaluated on held-out
   pairs ordered by the gold reward.
2. **WARM** (M = 3): three RMs from one initialisation, different seeds / data order,
   weight-averaged; accuracy of each member, of WARM and of the prediction ensemble on the
   in-distribution split and on a **shifted** split (longer responses, more flourish bursts).
3. **Hedging**: a proxy RM trained on the *biased* annotator's labels (likes flourish
   words linearly; the gold reward penalises more than one) selects among n samples;
   the gold reward of Best-of-n rises, then falls as n grows, while Soft-BoN (finite λ)
   and Best-of-Poisson hedge. Proxy scores are standardised over the pool, so Soft-BoN's
   λ is in units of the proxy's standard deviation.

Everything is seeded; torch runs single-threaded (tiny models are fastest that way).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmreward import metrics
from mmreward.train import TrainConfig, evaluate

LAMS = (1.0, 2.0, 4.0)  # Soft-BoN inverse temperatures (per proxy std)


@dataclass
class Settings:
    """Sizes of the experiments (``quick`` shrinks everything for a smoke run)."""

    n_train: int = 1536
    n_eval: int = 1000
    epochs: int = 2
    batch_size: int = 32
    lr: float = 3e-3
    m: int = 3
    hidden_size: int = 32
    num_layers: int = 2
    hedge_prompts: int = 48
    hedge_pool: int = 128
    ns: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    seed: int = 0

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            n_train=256, n_eval=200, epochs=1, hedge_prompts=8, hedge_pool=64, ns=(1, 4, 16, 64)
        )


def _world_and_splits(s: Settings):
    from mmreward.text.synthetic import TextWorld

    world = TextWorld()
    shifted = world.shifted(length=(12, 20), p_burst=0.5)

    def strict(examples):
        return [e for e in examples if e.label != 0]

    splits = {
        "in_distribution": strict(world.pairs(s.n_eval, seed=1000 + s.seed, temperature=None)),
        "shifted": strict(shifted.pairs(s.n_eval, seed=2000 + s.seed, temperature=None)),
    }
    return world, shifted, splits


def _init_model(s: Settings, out: Path):
    import mmreward
    from mmreward.text.synthetic import build_tiny_checkpoint, train_tokenizer

    path = build_tiny_checkpoint(
        out / "init",
        "seqcls",
        "llama",
        tokenizer=train_tokenizer(),
        seed=s.seed,
        hidden_size=s.hidden_size,
        num_layers=s.num_layers,
        num_heads=4,
        num_kv_heads=2,
    )
    return mmreward.load("seqcls.skywork-reward-llama-3.1-8b", weights=path)


def _config(s: Settings, out: Path, seed: int) -> TrainConfig:
    return TrainConfig(
        output_dir=str(out),
        epochs=s.epochs,
        batch_size=s.batch_size,
        lr=s.lr,
        warmup_steps=10,
        seed=seed,
        progress=False,
        log_every=20,
        keep_checkpoints=1,
        cpu=True,
    )


def _accuracy(model, examples) -> float:
    return float(evaluate(model, examples, "pairwise", batch_size=128)["accuracy_without_ties"])


@torch.no_grad()
def _ensemble_accuracy(models, examples) -> float:
    from mmreward.data import Collator

    collate = Collator("pairwise")
    sa, sb, lab = [], [], []
    for i in range(0, len(examples), 128):
        batch = collate(examples[i : i + 128])
        s = torch.stack([m.eval()(batch.inputs).scores for m in models]).mean(0)
        n = batch.labels.shape[0]
        sa.append(s[:n])
        sb.append(s[n:])
        lab.append(batch.labels)
    return float(metrics.pairwise_accuracy(torch.cat(sa), torch.cat(sb), torch.cat(lab)))


def run_warm(s: Settings, out: Path) -> dict[str, Any]:
    """Experiments 1 and 2: trained-RM accuracy and WARM (M members) vs a single RM."""
    from mmreward.text.warm import train_warm

    world, _, splits = _world_and_splits(s)
    init = _init_model(s, out)
    before = {k: _accuracy(init, v) for k, v in splits.items()}
    train = world.pairs(s.n_train, seed=s.seed, annotator="gold", temperature=0.5)
    t0 = time.time()
    result = train_warm(
        init, train, _config(s, out / "warm", s.seed), m=s.m, seeds=[s.seed + i for i in range(s.m)]
    )
    seconds = time.time() - t0
    members = {k: [_accuracy(m, v) for m in result.members] for k, v in splits.items()}
    return {
        "train_pairs": len(train),
        "train_steps_per_member": result.metrics[0]["step"],
        "train_seconds_total": round(seconds, 1),
        "eval_pairs": {k: len(v) for k, v in splits.items()},
        "accuracy_init": before,
        "accuracy_single": {k: v[0] for k, v in members.items()},  # member 0 = the single RM
        "accuracy_members": members,
        "accuracy_members_mean": {k: sum(v) / len(v) for k, v in members.items()},
        "accuracy_warm": {k: _accuracy(result.model, v) for k, v in splits.items()},
        "accuracy_prediction_ensemble": {
            k: _ensemble_accuracy(result.members, v) for k, v in splits.items()
        },
    }


def run_hedging(s: Settings, out: Path) -> dict[str, Any]:
    """Experiment 3: gold reward vs n for Best-of-n, Soft-BoN and Best-of-Poisson."""
    from mmreward.text.bon import hedging_curve
    from mmreward.train import RewardModelTrainer

    world, _, splits = _world_and_splits(s)
    proxy_rm = _init_model(s, out / "proxy_init")
    train = world.pairs(s.n_train, seed=s.seed + 7, annotator="biased", temperature=0.5)
    trainer = RewardModelTrainer(proxy_rm, _config(s, out / "proxy", s.seed), train)
    trainer.train(resume=False)
    proxy_rm.eval()
    rng = random.Random(s.seed + 99)
    prompts = [world.prompt(rng) for _ in range(s.hedge_prompts)]
    pool = [[world.response(rng) for _ in range(s.hedge_pool)] for _ in prompts]
    flat_p = [p for p, row in zip(prompts, pool) for _ in row]
    flat_r = [r for row in pool for r in row]
    scores = proxy_rm.score(prompts=flat_p, responses=flat_r, batch_size=128).scores
    proxy = scores.view(len(prompts), s.hedge_pool).double()
    proxy = (proxy - proxy.mean()) / proxy.std()  # λ of Soft-BoN in units of the proxy's std
    gold = torch.tensor([[world.gold(r) for r in row] for row in pool], dtype=torch.float64)
    rows = hedging_curve(proxy, gold, ns=s.ns, lams=LAMS, draws=256, seed=s.seed)
    bon = [r["bon_gold"] for r in rows]
    peak = max(range(len(bon)), key=bon.__getitem__)
    return {
        "tuned_at_max_n": tune_hedge(proxy, gold, max(s.ns), seed=s.seed),
        "proxy_accuracy_vs_gold": {k: _accuracy(proxy_rm, v) for k, v in splits.items()},
        "pool": {"prompts": len(prompts), "samples_per_prompt": s.hedge_pool},
        "rows": rows,
        "bon_gold_peak_n": rows[peak]["n"],
        "bon_gold_peak": bon[peak],
        "bon_gold_at_max_n": bon[-1],
        "proxy_gold_correlation": float(
            metrics.spearman(proxy.flatten().numpy(), gold.flatten().numpy())
        ),
    }


def tune_hedge(proxy: torch.Tensor, gold: torch.Tensor, n: int, seed: int = 0) -> dict[str, Any]:
    """Hedging at a fixed budget of n samples: tune λ (Soft-BoN) and μ (Best-of-Poisson).

    The parameter is picked on the first half of the prompts by mean gold reward (an
    oracle calibration set, in the spirit of HedgeTune) and reported on the second half,
    next to plain Best-of-n on that half.
    """
    from mmreward.text.bon import expected_best_of_n, monte_carlo_selection

    half = proxy.shape[0] // 2
    cal, test = slice(0, half), slice(half, None)
    gen = torch.Generator().manual_seed(seed)

    def gold_of(method: str, part: slice, **kw: float) -> float:
        mc = monte_carlo_selection(
            proxy[part], gold[part], n, method, draws=256, generator=gen, **kw
        )
        return float(mc["gold"].mean())

    lams = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    mus = tuple(m for m in (0, 1, 2, 4, 8, 16, 32, 64) if m < n)
    lam = max(lams, key=lambda v: gold_of("soft", cal, lam=v))
    mu = max(mus, key=lambda v: gold_of("poisson", cal, mu=v))
    return {
        "n": n,
        "bon_gold_test": float(expected_best_of_n(proxy[test], gold[test], n).mean()),
        "soft_lambda": lam,
        "soft_gold_test": gold_of("soft", test, lam=lam),
        "bop_mu": mu,
        "bop_gold_test": gold_of("poisson", test, mu=mu),
        "random_gold_test": float(gold[test].mean()),
    }


def plot_hedging(rows: list[dict[str, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in rows]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax.plot(ns, [r["bon_gold"] for r in rows], "o-", label="Best-of-n (proxy RM)", color="C3")
    for i, lam in enumerate(LAMS):
        key = f"soft_gold[{lam:g}]"
        ax.plot(ns, [r[key] for r in rows], "s--", label=f"Soft-BoN λ={lam:g}", color=f"C{i}")
    ax.plot(ns, [r["bop_gold"] for r in rows], "^:", label="Best-of-Poisson μ=n−1", color="C4")
    ax.axhline(rows[0]["random_gold"], color="grey", lw=0.8, label="n = 1 (no selection)")
    ax.set(xscale="log", xlabel="n (candidates)", ylabel="gold reward of the selected response")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_title("Gold reward vs n: hacking and hedging")
    ax.legend(fontsize=7)
    ax2.plot(ns, [r["bon_proxy"] for r in rows], "o-", color="C3")
    ax2.set(
        xscale="log",
        xlabel="n (candidates)",
        ylabel="proxy RM score (standardised) of the selection",
    )
    ax2.set_xticks(ns, [str(n) for n in ns])
    ax2.set_title("Proxy reward keeps rising")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def hedging_table(rows: list[dict[str, float]]) -> str:
    """A Markdown table of the hedging curve."""
    keys = ["bon_proxy", "bon_gold", *(f"soft_gold[{lam:g}]" for lam in LAMS), "bop_gold"]
    head = "| n | " + " | ".join(keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 1)]
    for r in rows:
        lines.append(f"| {r['n']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/text_experiments")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = Settings.quick() if args.quick else Settings()
    s = dataclasses.replace(s, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(s.seed)
    warm = run_warm(s, out)
    torch.manual_seed(s.seed)
    hedge = run_hedging(s, out)
    plot = plot_hedging(hedge["rows"], out / "hedging.png")
    results = {
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s).items()},
        "warm": warm,
        "hedging": hedge,
        "seconds": round(time.time() - t0, 1),
        "torch_threads": args.threads,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"warm": warm, "seconds": results["seconds"]}, indent=2))
    print(hedging_table(hedge["rows"]))
    print(f"wrote {out / 'results.json'} and {plot}")
    return results


if __name__ == "__main__":
    main()
