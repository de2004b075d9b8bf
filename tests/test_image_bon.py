"""Best-of-N and Soft Best-of-N image generation: selection, candidates, NFE accounting."""

from __future__ import annotations

import math

import pytest
import torch

import mmreward
from diffusion_align.bon import BoNConfig, best_of_n_sample, combine_rewards
from diffusion_align.config import SampleConfig
from diffusion_align.ctrlz import item_generator
from diffusion_align.policy import DiffusionPolicy
from diffusion_align.sampling import NFECounter, sample
from diffusion_align.tiny import tiny_pipeline
from mmreward.selection import soft_best_of_n

PROMPTS = ["a red seven", "a blue one"]
SAMPLE = SampleConfig(num_steps=4, guidance_scale=2.0, eta=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def policy():
    p = DiffusionPolicy(tiny_pipeline("sd"))
    p.raw_denoiser.eval()
    return p


@pytest.fixture(scope="module")
def reward():
    return mmreward.load("colorfulness.hasler")


def test_best_of_n_picks_the_argmax_with_exact_nfe(policy, reward) -> None:
    cfg = BoNConfig(n=3, batch_size=4)  # 6 candidates in batches of 4 and 2
    with NFECounter(policy) as counter:
        out = best_of_n_sample(policy, reward, PROMPTS, cfg, SAMPLE, seed=0)
    assert counter.count == len(PROMPTS) * 3 * SAMPLE.num_steps
    assert out.nfe.tolist() == [12, 12] and out.reward_calls.tolist() == [3, 3]
    assert out.candidate_scores.shape == (2, 3)
    assert out.chosen.tolist() == out.candidate_scores.argmax(1).tolist()
    assert out.scores.tolist() == out.candidate_scores.max(1).values.tolist()
    # the returned image is the chosen candidate, and its score is the reward of that image
    torch.testing.assert_close(reward(images=out.images).scores, out.scores, atol=1e-4, rtol=1e-5)
    # candidate 0 is plain sampling from the same seed (the start noise of item_generator)
    g = item_generator(0, 1, 0)
    x = policy.initial_noise(1, g)
    with torch.no_grad():
        res = sample(policy, policy.encode_prompt(PROMPTS[1:]), policy.schedule(4), guidance_scale=2.0,
                     latents=x)  # fmt: skip
        plain = reward(images=policy.decode(res.latents)).scores
    assert out.candidate_scores[1, 0].item() == pytest.approx(plain.item(), rel=1e-5)
    assert (out.scores >= out.candidate_scores[:, 0]).all()
    # the same seed gives the same candidates, whatever the batch size
    again = best_of_n_sample(policy, reward, PROMPTS, BoNConfig(n=3, batch_size=32), SAMPLE, seed=0)
    torch.testing.assert_close(again.candidate_scores, out.candidate_scores, atol=1e-4, rtol=1e-5)


def test_soft_best_of_n_draws_from_the_softmax(policy, reward) -> None:
    soft = best_of_n_sample(policy, reward, PROMPTS, BoNConfig(n=4, mode="soft", lam=0.05),
                            SAMPLE, seed=3)  # fmt: skip
    g = torch.Generator().manual_seed(3 * 1_000_003)  # the seed of the selection draw
    expected = soft_best_of_n(soft.candidate_scores, 0.05, generator=g)
    assert soft.chosen.tolist() == expected.tolist()
    rows = torch.arange(2)
    assert soft.scores.tolist() == soft.candidate_scores[rows, soft.chosen].tolist()
    greedy = best_of_n_sample(policy, reward, PROMPTS, BoNConfig(n=4, mode="soft", lam=math.inf),
                              SAMPLE, seed=3)  # fmt: skip
    assert greedy.chosen.tolist() == greedy.candidate_scores.argmax(1).tolist()
    assert soft.nfe.tolist() == [16, 16]


def test_reward_combinations(policy, reward) -> None:
    sharp = mmreward.load("sharpness.laplacian")
    combo = combine_rewards({reward: 1.0, sharp: 0.01})
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    by_hand = reward(images=images).scores + 0.01 * sharp(images=images).scores
    torch.testing.assert_close(combo(images=images).scores, by_hand)
    assert combine_rewards([reward]) is reward
    out = best_of_n_sample(policy, [reward, sharp], PROMPTS[:1], BoNConfig(n=2), SAMPLE)
    assert out.candidate_scores.shape == (1, 2)
    with pytest.raises(ValueError, match="reward"):
        combine_rewards("pickscore")
    with pytest.raises(ValueError, match="n and batch_size"):
        best_of_n_sample(policy, reward, PROMPTS, BoNConfig(n=0), SAMPLE)
    with pytest.raises(ValueError, match="mode"):
        best_of_n_sample(policy, reward, PROMPTS[:1], BoNConfig(n=1, mode="top"), SAMPLE)
