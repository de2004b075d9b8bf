"""One-step smoke tests: every algorithm × {SD-style, SDXL-style, flow} tiny pipeline."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

import mmreward
from diffusion_align.algorithms import ALGORITHMS, get_algorithm
from diffusion_align.config import SampleConfig
from diffusion_align.data import (
    PreferenceBatch,
    PromptBatch,
    TrajectoryPairs,
    write_trajectory_pairs,
)
from diffusion_align.policy import DiffusionPolicy, LoraSpec
from diffusion_align.tiny import KINDS, tiny_pipeline

PROMPTS = ["a red seven", "a blue one"]
OPTIONS = {
    "refl": {"stop_range": [1, 2], "phi": 1e4},  # φ above the colourfulness scale: loss > 0
    "draft": {"k": 2},
    "alignprop": {"k": 1, "k_max": 3},
    "dpo": {"beta": 500.0},
    "d3po": {"timestep_fraction": 0.67, "steps_per_backward": 1},
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reward():
    return mmreward.load("colorfulness.hasler")


def _batch(algorithm, policy) -> PromptBatch | PreferenceBatch:
    if algorithm.data_kind == "preferences":
        h, w = policy.resolution()
        g = torch.Generator().manual_seed(3)
        return PreferenceBatch(
            PROMPTS, torch.rand(2, 3, h, w, generator=g), torch.rand(2, 3, h, w, generator=g)
        )
    return PromptBatch(PROMPTS)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_one_step(name: str, kind: str, reward) -> None:
    policy = DiffusionPolicy(tiny_pipeline(kind), lora=LoraSpec(rank=2))
    sample_cfg = SampleConfig(num_steps=3, eta=1.0, noise_level=0.7, guidance_scale=2.0)
    algo = get_algorithm(name).from_dict({"name": name, **OPTIONS[name]}, sample_cfg, [reward])
    algo.check_policy(policy)
    n_losses = 0
    for loss, stats in algo.losses(policy, _batch(algo, policy), torch.Generator().manual_seed(0)):
        assert loss.ndim == 0 and torch.isfinite(loss), (name, kind, loss)
        assert all(isinstance(v, float) for v in stats.values())
        loss.backward()
        n_losses += 1
    assert n_losses >= 1
    grads = [p.grad for p in policy.trainable_parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0, (
        f"{name}/{kind}: no gradient reached the LoRA weights"
    )


def test_impossible_settings_are_refused(reward) -> None:
    jpeg = mmreward.load("jpeg.compressibility")
    with pytest.raises(ValueError, match="not differentiable"):
        get_algorithm("refl").from_dict(
            {"name": "refl", "stop_range": [0, 1]}, SampleConfig(num_steps=2), [jpeg]
        )
    with pytest.raises(ValueError, match="needs a reward"):
        get_algorithm("draft").from_dict({"name": "draft"}, SampleConfig(num_steps=2), [])
    with pytest.raises(ValueError, match="stop_range"):
        get_algorithm("refl").from_dict({"name": "refl"}, SampleConfig(num_steps=20), [reward])
    with pytest.raises(ValueError, match="snr_gamma"):
        get_algorithm("raft").from_dict({"name": "raft", "snr_gamma": 0}, SampleConfig(), [reward])
    d3po = get_algorithm("d3po").from_dict(
        {"name": "d3po"}, SampleConfig(num_steps=2, eta=0.0), [jpeg]
    )
    with pytest.raises(ValueError, match="stochastic"):
        d3po.check_policy(DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2)))
    dpo = get_algorithm("dpo").from_dict({"name": "dpo"})
    with pytest.raises(ValueError, match="reference model"):
        dpo.check_policy(DiffusionPolicy(tiny_pipeline("sd")))
    with pytest.raises(ValueError, match="needs LoRA adapters as the reference"):
        dpo.check_policy(DiffusionPolicy(tiny_pipeline("sd"), reference="copy"))
    checkpointed = DiffusionPolicy(
        tiny_pipeline("sd"), LoraSpec(rank=2), gradient_checkpointing=True
    )
    with pytest.raises(ValueError, match="ref_forward: separate"):
        dpo.check_policy(checkpointed)
    separate = get_algorithm("dpo").from_dict({"name": "dpo", "ref_forward": "separate"})
    separate.check_policy(checkpointed)


def test_d3po_pareto_preferences_from_several_rewards(reward) -> None:
    sharp = mmreward.load("sharpness.laplacian")
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2))
    algo = get_algorithm("d3po").from_dict(
        {"name": "d3po"}, SampleConfig(num_steps=2, eta=1.0), [reward, sharp]
    )
    stats = [
        s
        for _, s in algo.losses(policy, PromptBatch(PROMPTS * 2), torch.Generator().manual_seed(0))
    ]
    assert all(0 <= s["pairs"] <= 4 for s in stats)


def test_d3po_from_human_labels(tmp_path) -> None:
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2))
    cfg = SampleConfig(num_steps=3, eta=1.0)
    out = write_trajectory_pairs(policy, PROMPTS, tmp_path / "pairs", num_pairs=3, sample_cfg=cfg)
    template = json.loads((out / "labels.json").read_text())
    assert sorted(template) == ["000000", "000001", "000002"] and set(template.values()) == {None}
    assert (out / "images" / "000000_pair.png").is_file()
    (tmp_path / "labels.json").write_text(json.dumps({"000000": 1, "000001": "tie", "000002": 0}))
    pairs = TrajectoryPairs(out, tmp_path / "labels.json")
    assert len(pairs) == 2  # the tie is skipped
    batch, _ = pairs.batch(0, 2)
    assert batch.trajectories.shape == (2, 2, 4, 4, 8, 8) and sorted(batch.labels.tolist()) == [
        -1,
        1,
    ]
    algo = get_algorithm("d3po").from_dict({"name": "d3po", "preference": "human"}, cfg)
    assert algo.data_kind == "pairs"
    for loss, stats in algo.losses(policy, batch, torch.Generator().manual_seed(0)):
        assert torch.isfinite(loss) and stats["pairs"] == 2
        loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.trainable_parameters())


def _d3po_step(reference: str, reward, moved: bool) -> tuple[list[float], list[float], Tensor]:
    """Losses and clip fractions of one D3PO update on the tiny SD (one chunk per step),
    and the LoRA gradient of its first chunk."""
    torch.manual_seed(0)
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2))
    if moved:  # a policy far from the initial model: every per-step ratio leaves 1 ± ε
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in policy.denoiser.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    algo = get_algorithm("d3po").from_dict(
        {"name": "d3po", "reference": reference, "timestep_fraction": 1.0},
        SampleConfig(num_steps=3, eta=1.0),
        [reward],
    )
    losses, clip, grad = [], [], None
    for loss, stats in algo.losses(
        policy, PromptBatch(PROMPTS * 2), torch.Generator().manual_seed(0)
    ):
        loss.backward()
        losses.append(loss.item())
        clip.append(stats["clip_frac"])
        if grad is None:  # the first chunk: the noisiest denoising step
            grad = torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).flatten().clone()
                    for p in policy.trainable_parameters()
                ]
            )
    return losses, clip, grad


def test_d3po_sampler_reference(reward) -> None:
    # at the initial model both references are the same model: same loss, same gradient
    loss_init, _, grad_init = _d3po_step("initial", reward, moved=False)
    loss_samp, clip_samp, grad_samp = _d3po_step("sampler", reward, moved=False)
    assert loss_init == pytest.approx(loss_samp, abs=1e-7)
    assert torch.allclose(grad_init, grad_samp, atol=1e-9) and grad_samp.abs().sum() > 0
    # ratio 1 at every step: −log σ(0) = log 2 per step; each of the 3 one-step chunks
    # yields its share of the mean over the 3 steps
    assert loss_samp == pytest.approx([math.log(2) / 3] * 3, abs=1e-6) and clip_samp == [0.0] * 3
    # far from the initial model, the initial reference clips every ratio: no gradient;
    # the sampling policy as reference still learns
    _, clip_far, grad_far = _d3po_step("initial", reward, moved=True)
    assert clip_far[0] == 1.0 and grad_far.abs().sum() == 0
    _, _, grad_far_samp = _d3po_step("sampler", reward, moved=True)
    assert grad_far_samp.abs().sum() > 0
    algo = get_algorithm("d3po").from_dict(
        {"name": "d3po", "reference": "sampler"}, SampleConfig(eta=1.0), [reward]
    )
    assert not algo.needs_reference
    with pytest.raises(ValueError, match="reference 'sampler' needs preference 'reward'"):
        get_algorithm("d3po").from_dict(
            {"name": "d3po", "reference": "sampler", "preference": "human"},
            SampleConfig(eta=1.0),
        )


@pytest.mark.parametrize("name", ["refl", "dpo"])
def test_block_gradient_checkpointing_gives_the_same_gradient(name: str, reward) -> None:
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        policy = DiffusionPolicy(tiny_pipeline("sd"), LoraSpec(rank=2, init="default"),
                                 gradient_checkpointing=ckpt)  # fmt: skip
        opts = {"name": name, **OPTIONS[name], "ref_forward": "separate"} if name == "dpo" else {
            "name": name, **OPTIONS[name]}  # fmt: skip
        algo = get_algorithm(name).from_dict(opts, SampleConfig(num_steps=3), [reward])
        for loss, _ in algo.losses(policy, _batch(algo, policy), torch.Generator().manual_seed(0)):
            loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.trainable_parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)
