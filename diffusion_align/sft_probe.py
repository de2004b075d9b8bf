"""Does supervised fine-tuning on a fixed set of images raise a model's reward?

RAFT's update is supervised fine-tuning on the best of K of the model's own samples. This
probe isolates that step from the loop: it fine-tunes fresh LoRA adapters with RAFT's loss
(the images re-encoded by the VAE, the denoising objective with min-SNR-γ weights) on a
fixed set, either the world's renders of training prompts (``--data renders``: the kind of
data the model was pre-trained on) or the best of K unguided samples of the base model per
training prompt (``--data best-of-K``: a RAFT kept set), then samples the training prompts
before and after at each ``--guidance`` and scores them.

    python -m diffusion_align.sft_probe --data renders --lr 1e-3 --steps 320 --threads 2
    python -m diffusion_align.sft_probe --data best-of-4 --lr 1e-3 --steps 320 --threads 2

Prints one JSON object (``--json`` also writes it): the fixed set's scores, and the mean
of every reward column before and after at each guidance scale.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def _means(scores: dict[str, Tensor], rows: Tensor | None = None) -> dict[str, float]:
    return {k: round((v if rows is None else v[rows]).double().mean().item(), 6)
            for k, v in scores.items()}  # fmt: skip


def fixed_set(
    policy: Any,
    data: str,
    prompts: Sequence[str],
    n: int,
    rewards: dict[str, Any],
    seed: int = 0,
) -> tuple[Tensor, list[str], dict[str, Any]]:
    """``(images, prompts, summary)`` of ``n`` training items: world renders (``renders``)
    or the best of K unguided DDIM samples per prompt by the first reward (``best-of-K``).

    With rewards, the summary has the set's scores (``kept``; for ``best-of-K`` also
    ``all``, the samples it was chosen from) and those of the set after a VAE round trip
    (``round_trip``: encoded as the loss sees it, then decoded)."""
    from diffusion_align.algorithms.ddpo import repeat_prompts
    from diffusion_align.algorithms.raft import select_kept
    from diffusion_align.config import SampleConfig
    from diffusion_align.evaluate import evaluate_policy, score_images

    summary: dict[str, Any] = {"data": data, "n": n}
    if data == "renders":
        from mmreward.world.data import sample_world

        world = sample_world(n, digits="train", prompts="train", seed=seed + 77)
        images, texts = world.images, list(world.prompts)
    else:
        match = re.fullmatch(r"best-of-(\d+)", data)
        if match is None or int(match.group(1)) < 1:
            raise ValueError(f"data: expected 'renders' or 'best-of-K' (K ≥ 1), got {data!r}")
        k = int(match.group(1))
        items = repeat_prompts([prompts[i % len(prompts)] for i in range(n)], k)
        unguided = SampleConfig(num_steps=20, guidance_scale=1.0)
        res = evaluate_policy(policy, items, rewards, unguided, len(items), seed=seed + 5)
        best = select_kept(res.scores[next(iter(rewards))], k)  # RAFT's local best-of-K
        images, texts = res.images[best], [items[i] for i in best.tolist()]
        summary["all"] = _means(res.scores)
    if rewards:
        g = torch.Generator().manual_seed(seed)
        trip = torch.cat([policy.decode(policy.encode(images[i : i + 32], g)).cpu()
                          for i in range(0, len(images), 32)])  # fmt: skip
        summary["kept"] = _means(score_images(images, texts, rewards))
        summary["round_trip"] = _means(score_images(trip.clamp(0, 1), texts, rewards))
    return images, texts, summary


def fine_tune(
    policy: Any,
    images: Tensor,
    prompts: Sequence[str],
    steps: int,
    lr: float,
    batch_size: int = 32,
    snr_gamma: float | None = 5.0,
    seed: int = 0,
) -> list[float]:
    """AdamW on the policy's trainable weights: ``steps`` minibatches drawn with
    replacement, RAFT's ``sft_on: images`` loss; returns the losses."""
    from tqdm.auto import tqdm

    from diffusion_align.algorithms.refl import latent_denoising_loss

    params = policy.trainable_parameters()
    if not params:
        raise ValueError("fine_tune: the policy has no trainable weights (use LoRA)")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    policy.raw_denoiser.train()
    losses = []
    for _ in tqdm(range(steps), desc="fine-tune", leave=False):
        rows = torch.randint(len(images), (batch_size,), generator=g)
        with torch.no_grad():
            x0 = policy.encode(images[rows], g)
        cond = policy.encode_prompt([prompts[i] for i in rows.tolist()], guidance=False)
        loss = latent_denoising_loss(policy, x0, cond, g, 1.0, snr_gamma)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    policy.raw_denoiser.eval()
    return losses


def run(
    model: str = "world",
    data: str = "renders",
    n: int = 512,
    steps: int = 320,
    lr: float = 1e-3,
    batch_size: int = 32,
    snr_gamma: float | None = 5.0,
    lora_rank: int = 8,
    samples: int = 256,
    guidances: Sequence[float] = (1.0, 3.0),
    prompts: str | Sequence[str] = "world:train",
    rewards: dict[str, str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the fixed set, score the base model, fine-tune, score again (same noise)."""
    import mmreward
    from diffusion_align.cli import build_policy
    from diffusion_align.config import ModelConfig, SampleConfig
    from diffusion_align.data import read_prompts
    from diffusion_align.evaluate import evaluate_policy

    reward_models = {k: mmreward.load(v) for k, v in (rewards or {"gold": "gold.world"}).items()}
    prompt_list = read_prompts(prompts) if isinstance(prompts, str) else list(prompts)
    policy = build_policy(ModelConfig(pretrained=model, lora_rank=lora_rank))
    policy.raw_denoiser.eval()
    with torch.no_grad():
        images, texts, summary = fixed_set(policy, data, prompt_list, n, reward_models, seed)

    def scores() -> dict[str, dict[str, float]]:
        out = {}
        for w in guidances:
            with torch.no_grad():
                res = evaluate_policy(policy, prompt_list, reward_models,
                                      SampleConfig(num_steps=20, guidance_scale=w), samples,
                                      seed=seed + 99)  # fmt: skip
            out[f"cfg {w:g}"] = _means(res.scores)
        return out

    before = scores()
    losses = fine_tune(policy, images, texts, steps, lr, batch_size, snr_gamma, seed)
    after = scores()
    k = max(1, len(losses) // 10)
    return {
        "model": model,
        "set": summary,
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "snr_gamma": snr_gamma,
        "samples": samples,
        "loss_first_last": [sum(losses[:k]) / k, sum(losses[-k:]) / k],
        "before": before,
        "after": after,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion_align.sft_probe",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--model", default="world")
    parser.add_argument("--data", default="renders", help="renders or best-of-K")
    parser.add_argument("--n", type=int, default=512, help="images in the fixed set")
    parser.add_argument("--steps", type=int, default=320)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--snr-gamma", type=float, default=5.0, help="0: plain MSE")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.model, args.data, args.n, args.steps, args.lr, args.batch_size,
                 args.snr_gamma or None, samples=args.samples, seed=args.seed)  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:
        from mmreward.report import write_json

        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
