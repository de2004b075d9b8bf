"""RAFT, DDPO and GRPO: losses against hand computations, one iteration each end to end,
the importance ratio on the first inner step, and exact resume."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import mmreward
from diffusion_align.algorithms import get_algorithm
from diffusion_align.algorithms.base import UPDATE
from diffusion_align.algorithms.ddpo import (
    DDPO,
    DDPOConfig,
    Rollout,
    batch_advantages,
    clip_advantages,
    ppo_clip_loss,
)
from diffusion_align.algorithms.grpo import GRPO, GRPOConfig, gaussian_mean_kl, grpo_advantages
from diffusion_align.algorithms.raft import RAFT, RAFTConfig, select_kept
from diffusion_align.config import SampleConfig, TrainConfig
from diffusion_align.data import PromptBatch, PromptSource
from diffusion_align.policy import Conditioning, DiffusionPolicy, LoraSpec
from diffusion_align.sampling import transition_log_prob
from diffusion_align.tiny import tiny_pipeline
from diffusion_align.trainer import AlignTrainer

PROMPTS = ["a red seven", "a blue one", "a green two", "a purple nine"]
SAMPLE = SampleConfig(num_steps=3, eta=1.0, noise_level=0.7, guidance_scale=2.0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reward():
    return mmreward.load("colorfulness.hasler")


# -- pure losses ----------------------------------------------------------------------------


def test_ppo_clipped_loss_by_hand() -> None:
    lp = torch.log(torch.tensor([1.5, 0.5, 1.05])).requires_grad_()
    old = torch.zeros(3)
    adv = torch.tensor([1.0, -2.0, 10.0])  # the last one is clipped to 5
    loss, info = ppo_clip_loss(lp, old, adv, clip_range=0.2, adv_clip_max=5.0)
    # −A·ρ = [−1.5, 1.0, −5.25]; −A·clip(ρ) = [−1.2, 1.6, −5.25]; the max of each pair:
    assert loss.item() == pytest.approx((-1.2 + 1.6 - 5.25) / 3, abs=1e-6)
    assert info["clip_frac"].item() == pytest.approx(2 / 3)
    assert info["ratio"].item() == pytest.approx((1.5 + 0.5 + 1.05) / 3, abs=1e-6)
    loss.backward()
    # the clipped branch wins for items 0 and 1 (no gradient); item 2: d(−5ρ/3)/dlogρ = −5ρ/3
    assert lp.grad.tolist() == pytest.approx([0.0, 0.0, -5 * 1.05 / 3], abs=1e-6)
    assert clip_advantages(torch.tensor([-7.0, 2.0]), 5.0).tolist() == [-5.0, 2.0]
    with pytest.raises(ValueError, match="adv_clip_max"):
        clip_advantages(torch.zeros(1), 0.0)


def test_ratio_one_gives_the_policy_gradient() -> None:
    lp = torch.tensor([0.3, -0.2], requires_grad=True)
    loss, info = ppo_clip_loss(lp, lp.detach(), torch.tensor([2.0, -1.0]), clip_range=1e-4)
    assert info["ratio_dev"].item() == 0.0 and info["clip_frac"].item() == 0.0
    loss.backward()
    assert lp.grad.tolist() == pytest.approx([-1.0, 0.5])  # −A/N


def test_per_prompt_advantage_normalisation_by_hand(reward) -> None:
    algo = DDPO(DDPOConfig(stat_buffer_size=4, stat_min_count=2), SAMPLE, [reward])

    def ro(prompts, r):
        return Rollout(prompts, None, None, None, None, torch.tensor(r)[:, None])

    adv = algo.advantages(ro(["a", "a", "b", "b"], [1.0, 3.0, 10.0, 14.0]))
    # a: mean 2, std 1; b: mean 12, std 2 (population std, +1e-6)
    assert adv.tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0], abs=1e-5)
    adv = algo.advantages(ro(["a", "c"], [5.0, 0.0]))
    # a's buffer is now [1, 3, 5]: mean 3, std √(8/3); c has one value < min_count: batch stats
    assert adv[0].item() == pytest.approx(2.0 / math.sqrt(8 / 3), abs=1e-5)
    assert adv[1].item() == pytest.approx(-1.0, abs=1e-5)  # batch [5, 0]: mean 2.5, std 2.5
    state = algo.state_dict()
    assert state["stat_tracker"]["buffers"]["a"] == [1.0, 3.0, 5.0]
    fresh = DDPO(DDPOConfig(stat_buffer_size=4, stat_min_count=2), SAMPLE, [reward])
    fresh.load_state_dict(json.loads(json.dumps(state)))
    assert fresh.state_dict() == state
    plain = DDPO(DDPOConfig(per_prompt_stat_tracking=False), SAMPLE, [reward])
    assert plain.advantages(ro(["a", "b"], [1.0, 3.0])).tolist() == pytest.approx([-1.0, 1.0])
    assert batch_advantages(torch.tensor([2.0, 2.0])).tolist() == [0.0, 0.0]


def test_grpo_group_advantages_by_hand() -> None:
    r = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 4.0])
    groups = ["a", "a", "b", "b", "c", "c"]
    adv = grpo_advantages(r, groups)
    # a: mean 2, std 1; b: all equal → 0; c: mean 2, std 2
    assert adv.tolist() == pytest.approx(
        [-1 / 1.0001, 1 / 1.0001, 0.0, 0.0, -2 / 2.0001, 2 / 2.0001]
    )
    centred = grpo_advantages(r, groups, std="none")
    assert centred.tolist() == [-1.0, 1.0, 0.0, 0.0, -2.0, 2.0]
    batch_std = r.std(unbiased=False).item()
    assert grpo_advantages(r, groups, std="batch").tolist() == pytest.approx(
        [v / (batch_std + 1e-4) for v in centred.tolist()]
    )
    with pytest.raises(ValueError, match="algorithm.std"):
        grpo_advantages(r, groups, std="global")


def test_gaussian_mean_kl_by_hand() -> None:
    mean = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    std = torch.tensor([[0.5], [2.0]])
    kl = gaussian_mean_kl(mean, ref, std)
    # item 0: (1 + 4) / 2 / (2·0.25) = 5; item 1: 0
    assert kl.tolist() == pytest.approx([5.0, 0.0])
    kl.sum().backward()
    assert mean.grad[0].tolist() == pytest.approx([1.0 / (2 * 0.25), 2.0 / (2 * 0.25)])


def test_raft_kept_sets_by_hand() -> None:
    r = torch.tensor([0.1, 0.9, 0.3, 0.5, 0.5, 0.2])
    assert select_kept(r, 3).tolist() == [1, 3]  # best of [0..2], of [3..5] (tie → first)
    assert select_kept(r, 2).tolist() == [1, 3, 4]
    assert select_kept(r, 3, "global", alpha=0.5).tolist() == [1, 3, 4]
    assert select_kept(r, 2, min_reward=0.5).tolist() == [1, 3, 4]  # 0.5 ≥ 0.5 stays
    assert select_kept(r, 3, "global", alpha=0.5, min_reward=0.6).tolist() == [1]
    assert select_kept(r, 3, min_reward=1.0).tolist() == []
    with pytest.raises(ValueError, match="rewards"):
        select_kept(r, 4)
    with pytest.raises(ValueError, match="keep"):
        select_kept(r, 3, "median")


def test_raft_min_reward_skips_iterations_with_nothing_good_enough(reward) -> None:
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2))
    batch = PromptBatch(PROMPTS[:2])

    def items(min_reward):
        algo = RAFT(RAFTConfig(samples_per_prompt=2, save_kept=False, min_reward=min_reward),
                    SAMPLE, [reward])  # fmt: skip
        return list(algo.losses(policy, batch, torch.Generator().manual_seed(0)))

    assert items(float("inf")) == []  # no kept sample: no loss, no update
    kept_all = items(None)
    assert len(kept_all) == 2 and kept_all[1] is UPDATE and kept_all[0][1]["kept"] == 2.0


def test_raft_pretrain_regulariser_adds_the_weighted_denoising_loss(reward) -> None:
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2))
    h, w = policy.resolution()
    images = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(5))
    batch = PromptBatch(PROMPTS[:2], images=images, image_prompts=PROMPTS[2:])

    def first_loss(weight: float) -> tuple[float, dict]:
        algo = RAFT(RAFTConfig(samples_per_prompt=2, save_kept=False, pretrain_weight=weight),
                    SAMPLE, [reward])  # fmt: skip
        torch.manual_seed(0)
        loss, stats = next(iter(algo.losses(policy, batch, torch.Generator().manual_seed(0))))
        return loss.item(), stats

    plain, plain_stats = first_loss(0.0)
    weighted, stats = first_loss(2.0)
    assert "pretrain_loss" not in plain_stats and stats["pretrain_loss"] > 0
    # same candidates, same kept set, same SFT noise: only the regulariser is added
    assert weighted == pytest.approx(plain + 2.0 * stats["pretrain_loss"], rel=1e-5)
    algo = RAFT(RAFTConfig(samples_per_prompt=2, save_kept=False, pretrain_weight=1.0),
                SAMPLE, [reward])  # fmt: skip
    with pytest.raises(ValueError, match="data.pretrain"):
        next(iter(algo.losses(policy, PromptBatch(PROMPTS[:2]), torch.Generator())))
    with pytest.raises(ValueError, match="pretrain_weight"):
        get_algorithm("raft").from_dict({"name": "raft", "pretrain_weight": -1}, SAMPLE, [reward])


def test_raft_sft_on_images_reencodes_the_kept_images(reward) -> None:
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2))
    batch = PromptBatch(PROMPTS[:2])
    calls = []
    encode = policy.encode

    def recording_encode(images, generator=None):
        calls.append(images.detach().clone())
        return encode(images, generator)

    policy.encode = recording_encode
    for sft_on in ("latents", "images"):
        calls.clear()
        algo = RAFT(RAFTConfig(samples_per_prompt=3, save_kept=False, sft_on=sft_on),
                    SAMPLE, [reward])  # fmt: skip
        cands = algo._candidates(policy, batch.prompts, torch.Generator().manual_seed(0))
        images = cands.images
        kept = select_kept(cands.rewards.cpu(), 3)
        losses = [
            x
            for x in algo.losses(policy, batch, torch.Generator().manual_seed(0))
            if x is not UPDATE
        ]
        assert len(losses) == 1 and torch.isfinite(losses[0][0])
        if sft_on == "latents":
            assert calls == []  # the sampled latents are used as they are
        else:  # one encode of exactly the kept images (the best of each prompt's 3)
            assert len(calls) == 1 and torch.equal(calls[0], images[kept])
    with pytest.raises(ValueError, match="sft_on"):
        get_algorithm("raft").from_dict({"name": "raft", "sft_on": "pixels"}, SAMPLE, [reward])


def test_raft_sft_on_trajectory_is_the_kept_paths_log_likelihood(reward) -> None:
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2))
    batch = PromptBatch(PROMPTS[:2])
    algo = RAFT(RAFTConfig(samples_per_prompt=2, save_kept=False, sft_on="trajectory"),
                SAMPLE, [reward])  # fmt: skip
    items = list(algo.losses(policy, batch, torch.Generator().manual_seed(0)))
    steps = SAMPLE.num_steps
    assert len(items) == steps + 1 and items[-1] is UPDATE  # one loss per step, one update
    # the same candidates (same generator seed); kept: the best of each prompt's 2
    cands = algo._candidates(policy, batch.prompts, torch.Generator().manual_seed(0))
    kept = select_kept(cands.rewards.cpu(), 2)
    traj, cond = cands.trajectory[kept], cands.cond.select(kept.tolist())
    schedule, dims = algo.schedule(policy), traj[0, 0].numel()
    with torch.no_grad():  # by hand: −Σ_i mean_rows log p(x_{i+1} | x_i) / (dims · steps)
        expected = -sum(
            transition_log_prob(policy, schedule, i, traj[:, i], traj[:, i + 1], cond,
                                SAMPLE.guidance_scale).log_prob.mean()
            for i in range(steps)
        ) / (dims * steps)  # fmt: skip
    got = sum(loss.item() for loss, _ in items[:-1])
    assert got == pytest.approx(expected.item(), rel=1e-5)
    eta0 = SampleConfig(num_steps=3, eta=0.0, guidance_scale=2.0)
    algo = RAFT(RAFTConfig(samples_per_prompt=2, save_kept=False, sft_on="trajectory"),
                eta0, [reward])  # fmt: skip
    with pytest.raises(ValueError, match="stochastic sampler"):
        list(algo.losses(policy, batch, torch.Generator().manual_seed(0)))


def test_raft_sft_guidance_fits_the_guided_prediction(reward) -> None:
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2))
    batch = PromptBatch(PROMPTS[:2])
    predict, noising = policy.predict, policy.noise_schedule()
    add_noise = noising.add_noise
    seen: list = []

    def recording_predict(x, t, cond, guidance_scale=1.0, reference=False):
        out = predict(x, t, cond, guidance_scale, reference)
        if torch.is_grad_enabled():  # the fine-tuning forward, not the candidates' sampling
            seen.append((x, t, cond, guidance_scale, out))
        return out

    def recording_add_noise(x0, noise, index):
        res = add_noise(x0, noise, index)
        seen.append(("target", res[2]))
        return res

    policy.predict, noising.add_noise = recording_predict, recording_add_noise
    for guided in (False, True):
        seen.clear()
        algo = RAFT(RAFTConfig(samples_per_prompt=2, save_kept=False, sft_guidance=guided),
                    SAMPLE, [reward])  # fmt: skip
        loss, _ = next(iter(algo.losses(policy, batch, torch.Generator().manual_seed(0))))
        (_, target), (x, t, cond, scale, out) = seen
        assert scale == (SAMPLE.guidance_scale if guided else 1.0)
        assert cond.has_negative() == guided
        assert loss.item() == pytest.approx((out - target).pow(2).mean().item(), rel=1e-6)
        if guided:  # ε_u + w (ε_c − ε_u), from two unguided forwards by hand
            with torch.no_grad():
                eps_c = predict(x, t, Conditioning(cond.embeds, cond.pooled, cond.time_ids))
                eps_u = predict(x, t, Conditioning(cond.neg_embeds, cond.neg_pooled, cond.time_ids))
            torch.testing.assert_close(
                out.detach(), eps_u + SAMPLE.guidance_scale * (eps_c - eps_u), rtol=1e-5, atol=1e-5
            )


def test_bad_settings_are_refused(reward) -> None:
    with pytest.raises(ValueError, match="group_size"):
        get_algorithm("grpo").from_dict({"name": "grpo", "group_size": 1}, SAMPLE, [reward])
    with pytest.raises(ValueError, match="group_size"):
        get_algorithm("grpo").from_dict({"name": "grpo", "samples_per_prompt": 4}, SAMPLE, [reward])
    with pytest.raises(ValueError, match="timestep_fraction"):
        get_algorithm("ddpo").from_dict({"name": "ddpo", "timestep_fraction": 0}, SAMPLE, [reward])
    with pytest.raises(ValueError, match="algorithm: unknown option"):
        get_algorithm("raft").from_dict({"name": "raft", "top_k": 2}, SAMPLE, [reward])
    ddpo = DDPO(DDPOConfig(), SampleConfig(num_steps=3, eta=0.0), [reward])
    with pytest.raises(ValueError, match="stochastic"):
        ddpo.check_policy(DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2)))
    kl = GRPO(GRPOConfig(group_size=2, kl_beta=0.1), SAMPLE, [reward])
    with pytest.raises(ValueError, match="reference"):
        kl.check_policy(DiffusionPolicy(tiny_pipeline("sd")))
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2))
    cfg = TrainConfig(output_dir="unused", grad_accum=2, progress=False, gallery_prompts=0)
    with pytest.raises(ValueError, match="grad_accum: 1"):
        AlignTrainer(policy, RAFT(RAFTConfig(), SAMPLE, [reward]), PromptSource(PROMPTS), cfg)


# -- PPO mechanics on a tiny model ---------------------------------------------------------


def _run(algo, policy, batch, lr: float = 0.0):
    """Drive ``algo.losses`` like the trainer: backward each loss, an SGD step per UPDATE."""
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=lr)
    stats, updates = [], 0
    for item in algo.losses(policy, batch, torch.Generator().manual_seed(0)):
        if item is UPDATE:
            opt.step()
            opt.zero_grad()
            updates += 1
            continue
        loss, s = item
        assert torch.isfinite(loss)
        loss.backward()
        stats.append((updates, s))
    return stats, updates


@pytest.mark.parametrize("kind", ["sd", "flow"])
def test_ratio_is_exactly_one_on_the_first_inner_step(kind: str, reward) -> None:
    policy = DiffusionPolicy(tiny_pipeline(kind), lora=LoraSpec(rank=2))
    with torch.no_grad():  # non-zero LoRA B so an update changes the model at once
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    cfg = DDPOConfig(samples_per_prompt=2, train_batch_size=2, inner_epochs=2,
                     per_prompt_stat_tracking=False)  # fmt: skip
    stats, updates = _run(DDPO(cfg, SAMPLE, [reward]), policy, PromptBatch(PROMPTS[:2]), lr=1.0)
    assert updates == 4  # 2 epochs × (4 trajectories / 2 per minibatch)
    first = [s for u, s in stats if u == 0]
    later = [s for u, s in stats if u > 0]
    assert len(first) == 3  # one loss per trained step (timestep_fraction 1)
    assert all(s["ratio"] == 1.0 and s["ratio_dev"] == 0.0 for s in first)
    # the recomputed log-prob of the sampled transition matches the sampler's (fp32 path)
    assert all(s["logp_replay_err"] < 1e-5 for s in first)
    assert max(s["ratio_dev"] for s in later) > 0  # after an update π_θ ≠ π_old


def test_ddpo_update_raises_the_likelihood_of_good_samples(reward) -> None:
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2))
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    algo = DDPO(DDPOConfig(samples_per_prompt=4, per_prompt_stat_tracking=False), SAMPLE, [reward])
    g = torch.Generator().manual_seed(0)
    ro = algo.rollout(policy, PROMPTS[:1], g)
    adv = algo.advantages(ro)
    schedule = algo.schedule(policy)

    def joint_logp() -> torch.Tensor:
        with torch.no_grad():
            return sum(
                transition_log_prob(policy, schedule, i, ro.trajectory[:, i], ro.trajectory[:, i + 1],
                                    ro.cond, SAMPLE.guidance_scale).log_prob
                for i in range(SAMPLE.num_steps)
            )  # fmt: skip

    before = joint_logp()
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=0.5)
    for i in range(SAMPLE.num_steps):  # one plain policy-gradient step (ratio 1)
        lp = transition_log_prob(policy, schedule, i, ro.trajectory[:, i], ro.trajectory[:, i + 1],
                                 ro.cond, SAMPLE.guidance_scale).log_prob  # fmt: skip
        loss, _ = ppo_clip_loss(lp, lp.detach(), adv, 1e-4)
        loss.backward()
    opt.step()
    delta = joint_logp() - before
    # −A·∇logπ descends: log-likelihood moves up for A > 0 and down for A < 0
    assert (delta * adv).sum() > 0
    assert delta[adv.argmax()] > delta[adv.argmin()]


# -- end to end through the trainer ------------------------------------------------------


def _trainer(out, name, options, kind="sd", gallery=True, **train) -> AlignTrainer:
    policy = DiffusionPolicy(tiny_pipeline(kind), lora=LoraSpec(rank=2))
    algo = get_algorithm(name).from_dict({"name": name, **options}, SAMPLE,
                                         [mmreward.load("colorfulness.hasler")])  # fmt: skip
    cfg = TrainConfig(output_dir=str(out), lr=1e-2, batch_size=2, progress=False,
                      gallery_prompts=2, **train)  # fmt: skip
    return AlignTrainer(policy, algo, PromptSource(PROMPTS, seed=0), cfg,
                        gallery_prompts=PROMPTS[:2] if gallery else ())  # fmt: skip


CASES = {
    "raft": ("sd", {"samples_per_prompt": 3, "sft_epochs": 2, "sft_batch_size": 1}),
    "ddpo": (
        "sdxl",
        {
            "samples_per_prompt": 2,
            "train_batch_size": 2,
            "timestep_fraction": 0.67,
            "stat_min_count": 2,
        },
    ),  # fmt: skip
    "grpo": (
        "flow",
        {"group_size": 2, "train_batch_size": 2, "kl_beta": 0.05, "timestep_fraction": 0.67},
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_iteration_end_to_end(name: str, tmp_path) -> None:
    kind, options = CASES[name]
    trainer = _trainer(tmp_path, name, options, kind=kind, max_steps=1)
    before = {k: v.clone() for k, v in trainer.policy.trainable_state_dict().items()}
    trainer.train()
    after = trainer.policy.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no update was applied"
    row = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert row["step"] == 1 and math.isfinite(row["train/loss"]) and "train/reward" in row
    assert (tmp_path / "curves" / "train_reward.png").is_file()
    assert (tmp_path / "samples" / "step_00000001.png").is_file()
    if name == "raft":  # 2 prompts × 3 candidates, the best of each kept, saved
        kept = json.loads((tmp_path / "raft" / "step_00000000" / "kept.json").read_text())
        rewards = torch.tensor(kept["all_rewards"]).view(2, 3)
        assert kept["kept_rewards"] == pytest.approx(rewards.max(1).values.tolist())
        assert kept["kept_index"] == (rewards.argmax(1) + torch.tensor([0, 3])).tolist()
        assert (tmp_path / "raft" / "step_00000000" / "kept.png").is_file()
        assert row["train/kept_reward"] >= row["train/reward"]
    if name == "grpo":
        assert "train/kl" in row and row["train/kl"] >= 0


def test_ddpo_resumes_exactly(tmp_path) -> None:
    opts = {"samples_per_prompt": 2, "train_batch_size": 2, "timestep_fraction": 0.67,
            "stat_min_count": 2}  # fmt: skip
    full = _trainer(tmp_path / "full", "ddpo", opts, gallery=False, max_steps=2, save_every=1)
    full.train()
    part = _trainer(tmp_path / "part", "ddpo", opts, gallery=False, max_steps=1, save_every=1)
    part.train()
    assert (part.latest_checkpoint() / "algorithm_state.json").is_file()
    resumed = _trainer(tmp_path / "part", "ddpo", opts, gallery=False, max_steps=2, save_every=1)
    assert resumed.resume() and resumed.step == 1
    assert resumed.algorithm.state_dict() == part.algorithm.state_dict()
    resumed.train()
    a, b = full.policy.trainable_state_dict(), resumed.policy.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.algorithm.state_dict() == resumed.algorithm.state_dict()


def test_raft_candidate_guidance_overrides_the_sampler_for_candidates_only(reward) -> None:
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2))
    batch = PromptBatch(PROMPTS[:2])

    def first(sample, **kw) -> tuple[float, dict]:
        algo = RAFT(RAFTConfig(samples_per_prompt=2, save_kept=False, **kw), sample, [reward])
        torch.manual_seed(0)
        loss, stats = next(iter(algo.losses(policy, batch, torch.Generator().manual_seed(0))))
        return loss.item(), stats

    guided = dataclasses.replace(SAMPLE, guidance_scale=3.0)
    unguided = dataclasses.replace(SAMPLE, guidance_scale=1.0)
    assert first(guided, candidate_guidance=1.0) == first(unguided)  # same candidates, same loss
    assert first(guided)[1]["reward"] != first(unguided)[1]["reward"]
    with pytest.raises(ValueError, match="candidate_guidance"):
        get_algorithm("raft").from_dict({"name": "raft", "candidate_guidance": 0.5}, SAMPLE,
                                        [reward])  # fmt: skip
