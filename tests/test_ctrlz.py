"""Ctrl-Z sampling: the revert transition by hand, exact NFE accounting, plain sampling as
the no-stagnation special case, and a higher reward than plain sampling on a toy reward."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_align.config import SampleConfig
from diffusion_align.ctrlz import CtrlZConfig, ctrlz_sample, item_generator, revert
from diffusion_align.policy import DiffusionPolicy
from diffusion_align.sampling import NFECounter, sample
from diffusion_align.tiny import tiny_pipeline
from mmreward.interface import RewardInput, RewardModel

PROMPTS = ["a red seven", "a blue one", "a green two"]
STEPS = 6
SAMPLE = SampleConfig(num_steps=STEPS, guidance_scale=2.0, eta=0.0)


class TargetReward(RewardModel):
    """−mean squared distance to a flat grey-0.8 image: the optimum (0) is known."""

    inputs = ("images",)
    differentiable = True

    def compute(self, batch: RewardInput) -> torch.Tensor:
        return -((batch.images.float() - 0.8) ** 2).flatten(1).mean(1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def policy():
    p = DiffusionPolicy(tiny_pipeline("sd"))
    p.raw_denoiser.eval()
    return p


def _plain(policy, prompt_index: int) -> torch.Tensor:
    g = item_generator(0, prompt_index)
    x = policy.initial_noise(1, g)
    cond = policy.encode_prompt([PROMPTS[prompt_index]], guidance=True)
    schedule = policy.schedule(STEPS, 0.0)
    with torch.no_grad():
        out = sample(policy, cond, schedule, guidance_scale=2.0, latents=x, generator=g)
        return policy.decode(out.latents)


def test_revert_coefficients_by_hand(policy) -> None:
    ddim = policy.schedule(STEPS, 0.0)
    a_i, a_j = ddim.alpha_t[4].item(), ddim.alpha_t[1].item()
    one, zero = torch.ones(1, 2), torch.zeros(1, 2)
    assert revert(ddim, one, 4, 1, zero).tolist()[0] == pytest.approx([math.sqrt(a_j / a_i)] * 2)
    assert revert(ddim, zero, 4, 1, one).tolist()[0] == pytest.approx(
        [math.sqrt(1 - a_j / a_i)] * 2
    )
    # marginal check: x_i ~ N(√ᾱ_i·x0, 1−ᾱ_i) reverted has variance 1 − ᾱ_j around √ᾱ_j·x0 (x0 = 0)
    g = torch.Generator().manual_seed(0)
    x_i = math.sqrt(1 - a_i) * torch.randn(200_000, generator=g)
    x_j = revert(ddim, x_i, 4, 1, torch.randn(200_000, generator=g))
    assert x_j.var().item() == pytest.approx(1 - a_j, rel=0.02)
    flow = DiffusionPolicy(tiny_pipeline("flow")).schedule(STEPS, 0.0)
    s_i, s_j = flow.sigmas[4].item(), flow.sigmas[1].item()
    c = (1 - s_j) / (1 - s_i)
    assert revert(flow, one, 4, 1, zero).tolist()[0] == pytest.approx([c, c])
    assert revert(flow, zero, 4, 1, one).tolist()[0] == pytest.approx(
        [math.sqrt(s_j**2 - (c * s_i) ** 2)] * 2
    )
    with pytest.raises(ValueError, match="revert"):
        revert(ddim, one, 1, 4, zero)


def test_no_stagnation_is_plain_sampling(policy) -> None:
    out = ctrlz_sample(policy, TargetReward(), PROMPTS[:2], CtrlZConfig(threshold=-math.inf),
                       SAMPLE, seed=0)  # fmt: skip
    for k in range(2):
        # the same steps from the same noise (decoded in a batch of 2 vs 1: float tolerance)
        torch.testing.assert_close(out.images[k : k + 1], _plain(policy, k), atol=1e-5, rtol=0)
    assert out.nfe.tolist() == [STEPS, STEPS] and out.reward_calls.tolist() == [STEPS, STEPS]
    assert out.explorations.tolist() == [0, 0]


def test_nfe_accounting_is_exact(policy) -> None:
    # always stagnating, one candidate of depth 1 per step: each of steps 1..S−1 costs 2 more
    cfg = CtrlZConfig(threshold=math.inf, retries=1, max_depth=1)
    with NFECounter(policy) as counter:
        out = ctrlz_sample(policy, TargetReward(), PROMPTS[:1], cfg, SAMPLE, seed=0)
    assert out.nfe.item() == STEPS + 2 * (STEPS - 1) == counter.count
    assert out.reward_calls.item() == STEPS + (STEPS - 1)
    assert out.explorations.item() == STEPS - 1
    # deeper search under a budget: never above it, and the sample still completes
    for budget in (STEPS, STEPS + 3, 4 * STEPS):
        cfg = CtrlZConfig(threshold=math.inf, retries=3, max_depth=3, nfe_budget=budget)
        with NFECounter(policy) as counter:
            out = ctrlz_sample(policy, TargetReward(), PROMPTS[:1], cfg, SAMPLE, seed=0)
        assert out.nfe.item() == counter.count <= budget
        assert out.images.shape == (1, 3, 16, 16)
    assert out.nfe.item() > STEPS + 3  # the large budget was used
    with pytest.raises(ValueError, match="nfe_budget"):
        ctrlz_sample(policy, TargetReward(), PROMPTS[:1], CtrlZConfig(nfe_budget=2), SAMPLE)
    with pytest.raises(ValueError, match="explore_steps"):
        ctrlz_sample(policy, TargetReward(), PROMPTS[:1], CtrlZConfig(explore_steps=[0, 9]),
                     SAMPLE)  # fmt: skip


def test_ctrlz_beats_plain_sampling_on_a_toy_reward(policy) -> None:
    reward = TargetReward()
    cfg = CtrlZConfig(threshold=0.0, retries=2, max_depth=3, nfe_budget=5 * STEPS)
    out = ctrlz_sample(policy, reward, PROMPTS, cfg, SAMPLE, seed=0)
    plain = torch.cat([reward(images=_plain(policy, k)).scores for k in range(len(PROMPTS))])
    assert out.accepted.sum() > 0
    assert out.scores.mean() > plain.mean()
    assert (out.scores >= plain - 1e-6).sum() >= 2
    assert (out.nfe <= 5 * STEPS).all()
