"""Diffusion Reward: the conditional frame diffusion model, the entropy estimator, the
standardisation and α-combination guards, RND, strict checkpoints, the reward wrapper and
a tiny training run. Tiny models (8×8 frames, T = 20 timesteps) on one CPU thread."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import mmreward
from mmreward.errors import CheckpointError, InputError
from video.diffusion_reward.entropy import conditional_entropy, frame_rewards, history_windows
from video.diffusion_reward.model import (
    WEIGHTS_FILE,
    ConditionalFrameDiffusion,
    DiffusionRewardConfig,
    quantize,
)
from video.diffusion_reward.reward import DiffusionReward, assets_dir, load_diffusion_reward
from video.diffusion_reward.rnd import RND
from video.diffusion_reward.standardize import RewardStats, combine_rewards
from video.diffusion_reward.train import get_lr, pairs, train, world_clips

TINY = DiffusionRewardConfig(resolution=8, channels=(8, 16), norm_groups=4, num_train_timesteps=20)
HAS_ASSETS = (assets_dir() / WEIGHTS_FILE).is_file()


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture
def tiny_model() -> ConditionalFrameDiffusion:
    torch.manual_seed(0)
    return ConditionalFrameDiffusion(TINY).eval()


def _oracle(model: ConditionalFrameDiffusion, target: torch.Tensor) -> None:
    """Make ``model`` a formula denoiser that knows x0 = ``target``: ε = (x_t − √ᾱ x0)/√(1−ᾱ)."""

    def eps(x_t, t, history):
        a = model.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * target) / (1 - a).sqrt()

    model.eps = eps  # type: ignore[method-assign]


# -- schedule, windows, pairs ------------------------------------------------------------


def test_strided_timesteps_match_the_paper_setting():
    m = ConditionalFrameDiffusion(
        DiffusionRewardConfig(resolution=8, channels=(8, 16), norm_groups=4)
    )
    assert m.timesteps(9) == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]
    assert m.timesteps(0) == list(range(99, -1, -1))
    # end_at_zero: step 0 is appended when the stride misses it (as the reference does)
    z = ConditionalFrameDiffusion(
        DiffusionRewardConfig(resolution=8, channels=(8, 16), norm_groups=4, end_at_zero=True)
    )
    assert z.timesteps(9) == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9, 0]
    assert z.timesteps(19) == [99, 79, 59, 39, 19, 0]
    assert z.timesteps(32) == [99, 66, 33, 0]  # the stride lands on 0: nothing appended
    assert z.timesteps(0) == m.timesteps(0)
    with pytest.raises(ValueError, match="skip"):
        m.timesteps(100)
    assert m.alphas_cumprod[-1] < 1e-3  # the rescaled schedule reaches (almost) pure noise


def test_history_windows_and_training_pairs_by_hand():
    # frame j of video b is filled with 10·b + j
    v = (torch.arange(2)[:, None] * 10 + torch.arange(5)[None]).float()
    frames = v.view(2, 5, 1, 1, 1).expand(2, 5, 3, 2, 2)
    w = history_windows(frames, 2)
    assert w.shape == (2, 4, 2, 3, 2, 2)
    assert w[1, :, :, 0, 0, 0].tolist() == [[10, 11], [11, 12], [12, 13], [13, 14]]
    hist, nxt = pairs(frames, 2)  # history frames j, j+1 → next frame j+2
    assert hist.shape == (6, 2, 3, 2, 2) and nxt.shape == (6, 3, 2, 2)
    assert hist[:, :, 0, 0, 0].tolist() == [[0, 1], [1, 2], [2, 3], [10, 11], [11, 12], [12, 13]]
    assert nxt[:, 0, 0, 0].tolist() == [2, 3, 4, 12, 13, 14]
    with pytest.raises(InputError, match="videos: expected at least k=2 frames"):
        history_windows(frames[:, :1], 2)


def test_lr_schedule():
    assert get_lr(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert get_lr(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert get_lr(100, 100, 1.0, 10) == pytest.approx(0.1)


def test_config_validation():
    with pytest.raises(ValueError, match="history"):
        DiffusionRewardConfig(history=0)
    with pytest.raises(ValueError, match="resolution"):
        DiffusionRewardConfig(resolution=10, channels=(8, 16, 16), norm_groups=4)
    with pytest.raises(ValueError, match=r"unknown keys \['widths'\]"):
        DiffusionRewardConfig.from_dict({"widths": [8]})
    with pytest.raises(ValueError, match="prediction: expected one of"):
        DiffusionRewardConfig(prediction="x_start")
    # configs written before the option existed load as ε-prediction
    assert DiffusionRewardConfig.from_dict({"history": 2}).prediction == "epsilon"


@pytest.mark.parametrize("prediction", ["v", "sample"])
def test_v_and_x0_targets_imply_the_true_noise(prediction):
    """A UNet that outputs the exact target (v or x0) implies ε_θ = ε at every t, by hand:
    v = √ᾱ ε − √(1−ᾱ) x0 and x_t = √ᾱ x0 + √(1−ᾱ) ε."""
    cfg = DiffusionRewardConfig(
        resolution=8, channels=(8, 16), norm_groups=4, num_train_timesteps=20, prediction=prediction
    )
    m = ConditionalFrameDiffusion(cfg)
    g = torch.Generator().manual_seed(0)
    x0, e = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1, torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([0, 9, 19])
    a = m.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * e
    y = m.target(x0, e, t)
    if prediction == "v":
        torch.testing.assert_close(y, a.sqrt() * e - (1 - a).sqrt() * x0)
    else:
        torch.testing.assert_close(y, x0)
    m.raw = lambda x_t, t, history: y  # type: ignore[method-assign]
    torch.testing.assert_close(m.eps(x_t, t, torch.zeros(3, 2, 3, 8, 8)), e, atol=1e-5, rtol=0)


# -- sampler and variational bound against formulas ----------------------------------------


@pytest.mark.parametrize("noise", [False, True])
def test_sampler_recovers_the_oracle_target(tiny_model, noise):
    """With a denoiser that knows x0, DDIM (η = 0 or 1) must land on x0 exactly."""
    target = quantize(torch.rand(3, 3, 8, 8) * 2 - 1)
    _oracle(tiny_model, target)
    history = torch.zeros(3, 2, 3, 8, 8)
    gen = torch.Generator().manual_seed(1)
    x = tiny_model.sample(history, skip=4, noise=noise, generator=gen)
    torch.testing.assert_close(x, target, atol=1e-5, rtol=0)


@pytest.mark.parametrize("skip,end_at_zero", [(0, False), (4, False), (4, True)])
def test_nll_bound_of_an_oracle_is_prior_plus_decoder(tiny_model, skip, end_at_zero):
    """Oracle ε ⇒ every KL term is 0; the bound is L_T + L_0, computed here by hand."""
    if end_at_zero:
        tiny_model = ConditionalFrameDiffusion(
            DiffusionRewardConfig(**{**TINY.to_dict(), "end_at_zero": True})
        )
    x0 = quantize(torch.rand(2, 3, 8, 8) * 1.6 - 0.8)  # interior bins only
    _oracle(tiny_model, x0)
    bits = tiny_model.nll_bound(x0, torch.zeros(2, 2, 3, 8, 8), skip=skip)
    d = x0[0].numel()
    a_bar = tiny_model.alphas_cumprod[-1].item()
    var0 = 1 - tiny_model.alphas_cumprod[tiny_model.timesteps(skip)[-1]].item()
    assert tiny_model.timesteps(skip)[-1] == (4 if skip == 4 and not end_at_zero else 0)
    if tiny_model.timesteps(skip)[-1] == 0:
        assert var0 == pytest.approx(tiny_model.betas[0].item(), rel=1e-4)
    for i in range(2):
        prior = sum(
            0.5 * (-math.log(1 - a_bar) + (1 - a_bar) + a_bar * v * v - 1)
            for v in x0[i].flatten().tolist()
        )
        # the decoder's mean is x0 exactly, σ² = 1 − ᾱ_τ1 (β_0 when τ1 = 0), bin ±1/255
        half = (1 / 255) / math.sqrt(var0)
        p_bin = math.erf(half / math.sqrt(2))
        decoder = -d * math.log(p_bin)
        expected = (prior + decoder) / (d * math.log(2))
        assert bits[i].item() == pytest.approx(expected, rel=2e-3)


def test_nll_bound_kl_terms_by_hand(tiny_model):
    """A denoiser that is off by a constant c in every ε: each KL term is coef·c²·D."""
    x0 = quantize(torch.rand(1, 3, 8, 8) * 1.6 - 0.8)
    _oracle(tiny_model, x0)
    exact = tiny_model.nll_bound(x0, torch.zeros(1, 2, 3, 8, 8), skip=4)
    oracle_eps = tiny_model.eps
    c = 0.1
    tiny_model.eps = lambda x_t, t, h: oracle_eps(x_t, t, h) + c  # type: ignore[method-assign]
    off = tiny_model.nll_bound(x0, torch.zeros(1, 2, 3, 8, 8), skip=4)
    a = tiny_model.alphas_cumprod
    taus = tiny_model.timesteps(4)[::-1]  # 4, 9, 14, 19
    assert taus == [4, 9, 14, 19]
    d = x0.numel()
    kl = sum(
        (1 - a[t] / a[s]) / (2 * (a[t] / a[s]) * (1 - a[s])) * c * c * d
        for s, t in zip(taus[:-1], taus[1:])
    )
    # the decoder's mean moves by −√(1−ᾱ)/√ᾱ·c: recompute L_0 with that mean
    from video.diffusion_reward.model import discretized_gaussian_log_likelihood

    t1 = taus[0]
    shift = -(1 - a[t1]).sqrt() / a[t1].sqrt() * c
    log_var = torch.log(1 - a[t1])
    dec_exact = -discretized_gaussian_log_likelihood(x0, x0, log_var).sum()
    dec_off = -discretized_gaussian_log_likelihood(x0, x0 + shift, log_var).sum()
    expected = exact.item() + (kl.item() + (dec_off - dec_exact).item()) / (d * math.log(2))
    assert off.item() == pytest.approx(expected, rel=1e-4)


def test_nll_bound_is_nonnegative_and_batch_independent(tiny_model):
    x0 = quantize(torch.rand(4, 3, 8, 8) * 2 - 1)
    h = torch.rand(4, 2, 3, 8, 8) * 2 - 1
    full = tiny_model.nll_bound(x0, h, skip=3, seed=3)
    assert (full >= 0).all()
    alone = torch.cat([tiny_model.nll_bound(x0[i : i + 1], h[i : i + 1], 3, 3) for i in range(4)])
    torch.testing.assert_close(full, alone, atol=1e-4, rtol=1e-5)


# -- the bound along the sampler's own trajectory --------------------------------------------


def test_trajectory_bound_by_hand_on_a_tiny_chain(tiny_model):
    """Two strided steps (T = 20, skip 9: 19 → 9), arbitrary visited states and predictions:
    L_T + coef·‖ε_19 − ε̂_19‖² + L_0 computed here with math/erf."""
    torch.manual_seed(3)
    x0 = quantize(torch.rand(1, 3, 8, 8) * 1.6 - 0.8)  # interior bins only
    x19, p19, e9 = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    ab9 = tiny_model.alphas_cumprod[9]
    x9 = ab9.sqrt() * x0 + (1 - ab9).sqrt() * e9
    p9 = e9 + 0.02 * torch.randn(1, 3, 8, 8)  # the decoder's mean lands near x0
    assert tiny_model.timesteps(9) == [19, 9]
    bits = tiny_model.trajectory_bound(x0, [(19, x19, p19), (9, x9, p9)]).item()
    a = tiny_model.alphas_cumprod.double().tolist()
    v0, vx19, vx9, vp19, vp9 = (t.double().flatten().tolist() for t in (x0, x19, x9, p19, p9))
    d = len(v0)
    prior = sum(0.5 * (-math.log(1 - a[19]) + (1 - a[19]) + a[19] * v * v - 1) for v in v0)
    coef = (1 - a[19] / a[9]) / (2 * (a[19] / a[9]) * (1 - a[9]))
    kl = coef * sum(
        ((xt - math.sqrt(a[19]) * v) / math.sqrt(1 - a[19]) - p) ** 2
        for v, xt, p in zip(v0, vx19, vp19)
    )
    sd = math.sqrt(1 - a[9])
    decoder = 0.0
    for v, xt, p in zip(v0, vx9, vp9):
        mean = (xt - sd * p) / math.sqrt(a[9])
        cdf = lambda z: 0.5 * (1 + math.erf(z / (sd * math.sqrt(2))))  # noqa: E731
        decoder -= math.log(cdf(v - mean + 1 / 255) - cdf(v - mean - 1 / 255))
    expected = (prior + kl + decoder) / (d * math.log(2))
    assert bits == pytest.approx(expected, rel=2e-3)


@pytest.mark.parametrize("noise", [False, True])
def test_trajectory_bound_of_an_oracle_equals_the_renoised_bound(tiny_model, noise):
    """An oracle points at x0 from every state: all KL terms vanish on any chain, so the
    bound along the sampler's chain is L_T + L_0, the same as at fresh noisings."""
    target = quantize(torch.rand(2, 3, 8, 8) * 1.6 - 0.8)
    _oracle(tiny_model, target)
    h = torch.zeros(2, 2, 3, 8, 8)
    gen = torch.Generator().manual_seed(1)
    x, visited = tiny_model.sample(h, skip=4, noise=noise, generator=gen, return_trajectory=True)
    assert [t for t, _, _ in visited] == tiny_model.timesteps(4)
    torch.testing.assert_close(x, target, atol=1e-5, rtol=0)
    along = tiny_model.trajectory_bound(x, visited)
    torch.testing.assert_close(along, tiny_model.nll_bound(x, h, skip=4), rtol=1e-4, atol=1e-4)


def test_trajectory_rewards_reuse_the_sampler_and_stay_deterministic(tiny_model):
    videos = torch.rand(2, 5, 3, 8, 8)
    kw = {"skip": 4, "noise": False, "bound": "trajectory"}
    a = frame_rewards(tiny_model, videos, **kw)
    torch.manual_seed(7)
    assert torch.equal(a, frame_rewards(tiny_model, videos, **kw))
    torch.testing.assert_close(a[1:], frame_rewards(tiny_model, videos[1:], batch_size=3, **kw))
    assert not torch.allclose(a, frame_rewards(tiny_model, videos, skip=4, noise=False))
    # the same sample as without the trajectory; the reward is its bound along the chain
    h = history_windows(tiny_model.to_model_space(videos), 2)[0]
    gen1, gen2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    x, visited = tiny_model.sample(h, skip=4, generator=gen1, shared=1, return_trajectory=True)
    assert torch.equal(x, tiny_model.sample(h, skip=4, generator=gen2, shared=1))
    gen3 = torch.Generator().manual_seed(2)
    ce = conditional_entropy(tiny_model, h, skip=4, generator=gen3, bound="trajectory")
    torch.testing.assert_close(ce, tiny_model.trajectory_bound(x, visited))
    with pytest.raises(ValueError, match="bound: expected one of"):
        frame_rewards(tiny_model, videos, bound="fresh")
    with pytest.raises(ValueError, match="trajectory: expected steps noisiest first"):
        tiny_model.trajectory_bound(x, visited[::-1])


# -- per-frame rewards -----------------------------------------------------------------------


def test_one_reward_per_frame_and_first_frames_copy(tiny_model):
    videos = torch.rand(3, 6, 3, 16, 16)
    r = frame_rewards(tiny_model, videos, skip=4, noise=False)
    assert r.shape == (3, 6) and torch.isfinite(r).all()
    assert (r <= 0).all()  # −bits/dim of a discrete frame
    assert torch.equal(r[:, 0], r[:, 1])  # frame 0 has no full history: copies frame k−1 = 1
    assert not torch.equal(r[:, 1], r[:, 2])


def test_rewards_deterministic_with_noise_off(tiny_model):
    videos = torch.rand(2, 5, 3, 8, 8)
    kw = {"skip": 4, "noise": False}
    a = frame_rewards(tiny_model, videos, **kw)
    torch.manual_seed(123)  # the global RNG must not matter
    b = frame_rewards(tiny_model, videos, **kw)
    assert torch.equal(a, b)
    # nor the batch around a video, nor the chunking
    c = frame_rewards(tiny_model, videos[1:], batch_size=3, **kw)
    torch.testing.assert_close(a[1:], c, atol=1e-4, rtol=1e-5)


def test_rewards_with_noise_vary_unless_seeded(tiny_model):
    videos = torch.rand(1, 4, 3, 8, 8)
    kw = {"skip": 4, "noise": True}
    a = frame_rewards(tiny_model, videos, **kw)
    b = frame_rewards(tiny_model, videos, **kw)
    assert not torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    seeded = frame_rewards(tiny_model, videos, generator=g1, **kw)
    assert torch.equal(seeded, frame_rewards(tiny_model, videos, generator=g2, **kw))
    # seeded noise is shared across histories: same rewards in a bigger batch, any chunking
    g3 = torch.Generator().manual_seed(5)
    more = torch.cat([torch.rand(2, 4, 3, 8, 8), videos])
    bigger = frame_rewards(tiny_model, more, generator=g3, batch_size=4, **kw)
    torch.testing.assert_close(bigger[2:], seeded, atol=1e-4, rtol=1e-5)


def test_num_samples_averages(tiny_model):
    h = torch.rand(2, 2, 3, 8, 8) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    two = conditional_entropy(tiny_model, h, skip=4, num_samples=2, noise=True, generator=gen)
    # the same draws one at a time: items [h0, h0, h1, h1]
    gen = torch.Generator().manual_seed(0)
    x_hat = tiny_model.sample(
        h.repeat_interleave(2, 0), skip=4, noise=True, generator=gen, shared=2
    )
    bits = tiny_model.nll_bound(x_hat, h.repeat_interleave(2, 0), skip=4)
    torch.testing.assert_close(two, bits.view(2, 2).mean(1))
    with pytest.raises(ValueError, match="num_samples"):
        conditional_entropy(tiny_model, h, num_samples=0)


# -- standardisation and combination guards ------------------------------------------------


def test_standardize_by_hand_and_json_round_trip(tmp_path):
    stats = RewardStats({"world": {"mean": -3.0, "std": 0.5}, "maze": {"mean": 1.0, "std": 2.0}})
    torch.testing.assert_close(
        stats.standardize(torch.tensor([-3.0, -2.0, -4.5]), "world"), torch.tensor([0.0, 2.0, -3.0])
    )
    back = RewardStats.load(stats.save(tmp_path / "stats.json"))
    assert back.to_dict() == stats.to_dict()
    fitted = RewardStats.fit(torch.tensor([1.0, 3.0]), "x")
    assert (fitted.mean, fitted.std, fitted.count) == (2.0, 1.0, 2)


def test_missing_statistics_key_lists_the_known_keys():
    stats = RewardStats({"world": {"mean": 0.0, "std": 1.0}, "door-open": {"mean": 0, "std": 1}})
    with pytest.raises(KeyError) as e:
        stats.standardize(torch.zeros(2), "door_opne")
    msg = str(e.value)
    assert "known domains: ['door-open', 'world']" in msg and "did you mean 'door-open'" in msg
    with pytest.raises(KeyError, match="known domains"):
        DiffusionReward(config=TINY, stats=stats.to_dict(), domain="wrold")


@pytest.mark.parametrize("std", [0.0, -1.0, float("nan")])
def test_sigma_zero_or_invalid_is_refused(std):
    with pytest.raises(ValueError, match=r"stats\['world'\]\.std: expected a finite number > 0"):
        RewardStats({"world": {"mean": 0.0, "std": std}})
    with pytest.raises(ValueError, match="std"):
        RewardStats.fit(torch.full((5,), 2.0), "world")  # every reward equal: σ = 0


def test_combination_with_alpha_zero_needs_no_bonus_and_never_divides():
    ce, sparse = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0])
    assert torch.equal(combine_rewards(ce, alpha=0.0, sparse=sparse), ce + sparse)
    # a bonus given with α = 0 is ignored entirely (even a non-finite one)
    inf = torch.full((2,), float("inf"))
    assert torch.equal(combine_rewards(ce, alpha=0.0, rnd_bonus=inf), ce)
    bonus = torch.tensor([4.0, 8.0])
    torch.testing.assert_close(
        combine_rewards(ce, alpha=0.95, rnd_bonus=bonus, sparse=1.0),
        0.05 * ce + 0.95 * bonus + 1.0,
    )
    torch.testing.assert_close(combine_rewards(ce, alpha=1.0, rnd_bonus=bonus), bonus)
    with pytest.raises(ValueError, match="rnd_bonus: required when alpha > 0"):
        combine_rewards(ce, alpha=0.5)
    with pytest.raises(ValueError, match=r"alpha: expected a number in \[0, 1\]"):
        combine_rewards(ce, alpha=1.5, rnd_bonus=bonus)


# -- RND ------------------------------------------------------------------------------------


def test_rnd_error_drops_on_seen_frames_more_than_on_unseen():
    rnd = RND(resolution=8, seed=0)
    seen, unseen = torch.rand(16, 3, 8, 8) * 0.5, torch.rand(16, 3, 8, 8) * 0.5 + 0.5
    target_before = [p.clone() for p in rnd.target.parameters()]
    e_seen0, e_unseen0 = rnd.error(seen).mean().item(), rnd.error(unseen).mean().item()
    opt = rnd.make_optimizer(lr=3e-3)
    for _ in range(150):
        rnd.update(seen, opt)
    e_seen1, e_unseen1 = rnd.error(seen).mean().item(), rnd.error(unseen).mean().item()
    assert e_seen1 < 0.1 * e_seen0
    assert e_seen1 / e_seen0 < e_unseen1 / e_unseen0
    assert all(torch.equal(a, b) for a, b in zip(target_before, rnd.target.parameters()))


def test_rnd_bonus_is_normalised_and_guarded():
    rnd = RND(resolution=8, seed=0, eps=1e-6)
    same = torch.full((4, 3, 8, 8), 0.3)  # identical frames: error variance 0
    b = rnd.bonus(same)
    assert torch.isfinite(b).all() and rnd.err_count.item() == 4
    err = rnd.error(same).double()
    torch.testing.assert_close(b, (err / 1e-6).float())  # divided by the floor, not by 0
    x = torch.rand(6, 3, 8, 8)
    rnd2 = RND(resolution=8, seed=0)
    e = rnd2.error(x).detach().double()
    torch.testing.assert_close(rnd2.bonus(x), (e / e.std(unbiased=False)).float())


# -- checkpoints ------------------------------------------------------------------------------


def test_strict_load_round_trip_and_bad_keys(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "m")
    back = ConditionalFrameDiffusion.load(tmp_path / "m")
    x, t, h = torch.rand(2, 3, 8, 8), torch.tensor([3, 17]), torch.rand(2, 2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(tiny_model.eps(x, t, h), back.eps(x, t, h))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["resolution"] == 8
    sd = load_file(str(tmp_path / "m" / WEIGHTS_FILE))
    dropped = sorted(sd)[0]
    sd.pop(dropped)
    sd["unet.extra.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "m" / WEIGHTS_FILE))
    with pytest.raises(CheckpointError) as e:
        ConditionalFrameDiffusion.load(tmp_path / "m")
    assert dropped in str(e.value) and "unet.extra.weight" in str(e.value)
    with pytest.raises(FileNotFoundError, match="video.diffusion_reward.train"):
        ConditionalFrameDiffusion.load(tmp_path / "nothing")


# -- the reward-interface wrapper ----------------------------------------------------------


def _tiny_reward(**kwargs) -> DiffusionReward:
    torch.manual_seed(0)
    opts = {"config": TINY, "skip": 4, **kwargs}
    return DiffusionReward(**opts).eval()


def test_wrapper_scores_are_the_mean_of_standardised_frame_rewards():
    stats = {"world": {"mean": -10.0, "std": 2.0}}
    rm = _tiny_reward(stats=stats)
    videos = torch.rand(2, 5, 3, 16, 16)
    out = rm(videos=videos)
    gen = torch.Generator().manual_seed(0)  # the wrapper seeds its sampler with seed=0
    raw = frame_rewards(rm.model, videos, skip=4, noise=True, generator=gen)
    assert out.extras["frame_rewards"].shape == (2, 5)
    torch.testing.assert_close(out.extras["entropy_rewards"], raw)
    torch.testing.assert_close(out.extras["frame_rewards"], (raw + 10.0) / 2.0)
    torch.testing.assert_close(out.scores, ((raw + 10.0) / 2.0).mean(1))
    sparse = torch.zeros(2, 5)
    sparse[0, -1] = 1.0
    with_sparse = rm(videos=videos, extras={"sparse_rewards": sparse})
    torch.testing.assert_close(with_sparse.scores, out.scores + torch.tensor([0.2, 0.0]))
    assert torch.equal(rm(videos=videos).scores, out.scores)  # seeded: same scores every call


def test_wrapper_standardises_each_video_with_its_task():
    stats = {"world": {"mean": 0.0, "std": 1.0}, "world/draw": {"mean": -10.0, "std": 2.0}}
    rm = _tiny_reward(stats=stats)
    videos = torch.rand(2, 4, 3, 8, 8)
    out = rm(videos=videos, extras={"domains": ["world/draw", "world"]})
    raw = out.extras["entropy_rewards"]
    torch.testing.assert_close(out.extras["frame_rewards"][0], (raw[0] + 10.0) / 2.0)
    torch.testing.assert_close(out.extras["frame_rewards"][1], raw[1])
    with pytest.raises(KeyError, match=r"'world/drwa'.*known domains.*did you mean 'world/draw'"):
        rm(videos=videos, extras={"domains": ["world/drwa", "world"]})


def test_wrapper_batched_equals_alone_and_bf16_keeps_fp32_math():
    rm = _tiny_reward(stats={"world": {"mean": -10.0, "std": 2.0}})
    videos = torch.rand(3, 4, 3, 8, 8)
    batched = rm(videos=videos).scores
    alone = torch.cat([rm(videos=videos[i : i + 1]).scores for i in range(3)])
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-5)
    rm.to(torch.bfloat16)
    assert rm.model.alphas_cumprod.dtype == torch.float32  # the schedule stays fp32
    low = rm(videos=videos.bfloat16()).scores
    assert low.dtype == torch.float32 and torch.isfinite(low).all()


def test_wrapper_input_errors():
    rm = _tiny_reward()
    with pytest.raises(InputError, match=r"videos: .*permute"):
        rm(videos=torch.rand(1, 3, 4, 8, 8))  # (B,C,T,H,W)
    with pytest.raises(InputError, match="videos: expected at least k=2 frames"):
        rm(videos=torch.rand(1, 1, 3, 8, 8))
    with pytest.raises(InputError, match=r"sparse_rewards"):
        rm(videos=torch.rand(1, 3, 3, 8, 8), extras={"sparse_rewards": torch.zeros(1, 7)})
    with pytest.raises(ValueError, match="rnd_bonus: required when alpha > 0"):
        _tiny_reward(alpha=0.95)
    with pytest.raises(ValueError, match="bound: expected one of"):
        _tiny_reward(bound="along")


def test_wrapper_with_rnd_combines_and_updates():
    rm = _tiny_reward(alpha=0.5, rnd={"seed": 1})
    videos = torch.rand(1, 4, 3, 8, 8)
    out = rm(videos=videos)
    bonus = out.extras["rnd_bonus"]
    torch.testing.assert_close(
        out.extras["frame_rewards"], 0.5 * out.extras["entropy_rewards"] + 0.5 * bonus
    )
    opt = rm.rnd.make_optimizer(lr=3e-3)
    before = rm.rnd.error(videos.flatten(0, 1)).mean().item()
    for _ in range(30):
        rm.update_rnd(videos, opt)
    assert rm.rnd.error(videos.flatten(0, 1)).mean().item() < 0.5 * before


def test_save_pretrained_and_load_give_identical_scores(tmp_path):
    rm = _tiny_reward(stats={"world": {"mean": -10.0, "std": 2.0}}, alpha=0.3, rnd=True)
    rm.save_pretrained(tmp_path / "rm")
    back = mmreward.load(tmp_path / "rm")
    assert isinstance(back, DiffusionReward) and back.reward_name == "diffusion-reward.world"
    videos = torch.rand(2, 4, 3, 8, 8)
    assert torch.equal(rm(videos=videos).scores, back(videos=videos).scores)


# -- training ----------------------------------------------------------------------------------


def _eval_loss(model, clips, seed=0) -> float:
    x = model.to_model_space(clips)
    hist, nxt = pairs(x, model.config.history)
    with torch.no_grad():
        return model.loss(nxt, hist, generator=torch.Generator().manual_seed(seed)).item()


def test_tiny_training_run_lowers_the_loss():
    clips, metas = world_clips(6, "expert", seed=0, frames=6)
    assert clips.shape == (6, 6, 3, 32, 32) and {m["kind"] for m in metas} == {"expert"}
    torch.manual_seed(0)
    model = ConditionalFrameDiffusion(TINY)
    before = _eval_loss(model, clips)
    log = train(
        model, clips, steps=60, batch_size=16, lr=3e-3, warmup=5, log_every=20, progress=False
    )
    after = _eval_loss(model, clips)
    assert [r["step"] for r in log] == [20, 40, 60]
    assert after < 0.6 * before, (before, after)


def test_v_prediction_training_lowers_the_loss_and_uses_the_history():
    clips, _ = world_clips(6, "expert", seed=0, frames=6)
    torch.manual_seed(0)
    model = ConditionalFrameDiffusion(
        DiffusionRewardConfig(
            resolution=8, channels=(8, 16), norm_groups=4, num_train_timesteps=20, prediction="v"
        )
    )
    before = _eval_loss(model, clips)
    train(model, clips, steps=60, batch_size=16, lr=3e-3, warmup=5, log_every=20, progress=False)
    after = _eval_loss(model, clips)
    assert after < 0.6 * before, (before, after)
    # at the noisiest step v ≈ −x0: the trained model predicts the next frame from the history
    x = model.to_model_space(clips)
    hist, nxt = pairs(x, model.config.history)
    t = torch.full((nxt.shape[0],), model.num_timesteps - 1)
    x_t = torch.randn(nxt.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        err_true = (model.raw(x_t, t, hist) + nxt).abs().mean()
        err_none = (model.raw(x_t, t, torch.zeros_like(hist)) + nxt).abs().mean()
    assert err_true < 0.8 * err_none, (err_true, err_none)


def test_train_script_writes_a_loadable_folder(tmp_path):
    from video.diffusion_reward.train import main

    out = tmp_path / "run"
    args = "--clips 3 --stats-clips 2 --frames 4 --steps 4 --batch-size 4 --log-every 2"
    args += " --resolution 8 --channels 8 16 --skip 9"
    summary = main([*args.split(), "--out", str(out)])
    for name in ("model.safetensors", "config.json", "stats.json", "train.json", "loss.png"):
        assert (out / name).is_file(), name
    # per task (6 motions × 2 clips × 4 frames) and over all tasks
    assert summary["stats"]["world"]["count"] == 6 * 2 * 4
    assert summary["stats"]["world/draw"]["count"] == 2 * 4
    rm = load_diffusion_reward(out, skip=49)
    assert rm.stats is not None and "world" in rm.stats.domains and len(rm.stats.domains) == 7
    assert rm(videos=torch.rand(1, 3, 3, 8, 8)).scores.shape == (1,)
    # the statistics again, along the sampler's chain: recorded with their options
    stats_args = "--stats-clips 2 --frames 4 --skip 9 --bound trajectory --stats-only"
    again = main([*stats_args.split(" "), "--out", str(out)])
    assert again["stats_options"]["bound"] == "trajectory"
    assert json.loads((out / "train.json").read_text())["stats_options"]["bound"] == "trajectory"
    assert again["stats"]["world"]["mean"] != summary["stats"]["world"]["mean"]


# -- the committed world model ---------------------------------------------------------------


@pytest.mark.skipif(not HAS_ASSETS, reason="world Diffusion Reward weights not trained yet")
def test_committed_world_model_prefers_expert_clips():
    rm = mmreward.load("diffusion-reward.world")
    expert, _ = world_clips(3, "expert", seed=30_000, frames=8, digits="test")
    nonexpert, _ = world_clips(3, "nonexpert", seed=30_000, frames=8, digits="test")
    s_exp = rm(videos=expert).scores
    s_non = rm(videos=nonexpert).scores
    assert s_exp.mean() > s_non.mean()
    assert torch.equal(s_exp, rm(videos=expert).scores)  # deterministic by default
