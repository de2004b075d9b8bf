"""The rollout math: DDIM / flow-SDE steps against diffusers and against the Gaussian density
written out by hand; log-probs in fp32 under bf16 models; gradient only where asked."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_align.policy import DiffusionPolicy, LoraSpec
from diffusion_align.sampling import (
    DDIMSchedule,
    FlowSchedule,
    ddim_step,
    ddpm_to_x0_eps,
    flow_sde_step,
    gaussian_log_prob,
    sample,
    transition_log_prob,
)
from diffusion_align.tiny import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def _normal_logpdf_mean(x, mu, sigma) -> torch.Tensor:
    """log N(x; μ, σ²) per element by hand, averaged over non-batch dims (float64)."""
    x, mu = x.double(), mu.double()
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    lp = -((x - mu) ** 2) / (2 * sigma**2) - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(1)


def test_gaussian_log_prob_is_the_mean_of_the_density() -> None:
    x, mu = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    ref = torch.distributions.Normal(mu.double(), 0.7).log_prob(x.double()).flatten(1).mean(1)
    torch.testing.assert_close(gaussian_log_prob(x, mu, 0.7).double(), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_matches_diffusers(prediction_type: str) -> None:
    from diffusers import DDIMScheduler

    sched = tiny_pipeline("sd", prediction_type).scheduler
    ours = DDIMSchedule(dict(sched.config), num_steps=5, eta=0.8)
    theirs = DDIMScheduler.from_config(sched.config)
    theirs.set_timesteps(5)
    x = torch.randn(2, 4, 8, 8)
    for i, t in enumerate(theirs.timesteps):
        out, z = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
        ref = theirs.step(out, t, x, eta=0.8, variance_noise=z).prev_sample
        step = ours.step(i, out, x, noise=z)
        torch.testing.assert_close(step.prev_sample, ref, rtol=1e-5, atol=1e-5)
        x = ref


def test_ddim_log_prob_equals_gaussian_density_by_hand() -> None:
    a_t, a_prev, eta = 0.3, 0.6, 1.0
    x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    x_prev = torch.randn(2, 4, 8, 8)
    # Song et al. eq. 12 and 16, written out
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    mu = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps
    step = ddim_step(eps, x, a_t, a_prev, eta, "epsilon", prev_sample=x_prev)
    torch.testing.assert_close(step.mean, mu, rtol=1e-5, atol=1e-5)
    assert float(step.std) == pytest.approx(sigma, rel=1e-6)
    torch.testing.assert_close(
        step.log_prob.double(), _normal_logpdf_mean(x_prev, mu, sigma), rtol=0, atol=1e-5
    )
    # the joint density is the mean times the number of latent dimensions
    joint = (
        torch.distributions.Normal(mu.double(), sigma).log_prob(x_prev.double()).flatten(1).sum(1)
    )
    torch.testing.assert_close(step.log_prob.double() * 4 * 8 * 8, joint, rtol=1e-5, atol=1e-3)


def test_v_prediction_conversion_round_trips() -> None:
    a = torch.tensor([0.2, 0.9])
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    s = a.view(-1, 1, 1, 1)
    x_t = s.sqrt() * x0 + (1 - s).sqrt() * eps
    v = s.sqrt() * eps - (1 - s).sqrt() * x0
    x0_hat, eps_hat = ddpm_to_x0_eps(v, x_t, a, "v_prediction")
    torch.testing.assert_close(x0_hat, x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-5, atol=1e-5)


def test_flow_step_is_euler_without_noise_and_gaussian_with_it() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours = FlowSchedule(dict(sched.config), num_steps=4, noise_level=0.0)
    sched.set_timesteps(4)
    x = torch.randn(2, 4, 8, 8)
    for i, t in enumerate(sched.timesteps):
        v = torch.randn(2, 4, 8, 8)
        ref = sched.step(v, t, x).prev_sample
        torch.testing.assert_close(ours.step(i, v, x).prev_sample, ref, rtol=1e-5, atol=1e-5)
        x = ref
    # with noise: the Flow-GRPO mean/std, and the density by hand
    s, s_next, a = 0.6, 0.4, 0.7
    x, v, x_next = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    std_t = a * math.sqrt(s / (1 - s))
    dt = s_next - s
    mu = x + (v + std_t**2 / (2 * s) * (x + (1 - s) * v)) * dt
    step = flow_sde_step(v, x, s, s_next, a, prev_sample=x_next)
    torch.testing.assert_close(step.mean, mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        step.log_prob.double(),
        _normal_logpdf_mean(x_next, mu, std_t * math.sqrt(-dt)),
        rtol=0,
        atol=1e-5,
    )


def test_deterministic_steps_have_no_log_prob() -> None:
    policy = DiffusionPolicy(tiny_pipeline("sd"))
    cond = policy.encode_prompt(["a"], guidance=False)
    with pytest.raises(ValueError, match="eta > 0"):
        sample(policy, cond, policy.schedule(2, eta=0.0), log_probs=True)


@pytest.mark.parametrize("kind", ["sd", "flow"])
def test_rescoring_a_sampled_transition_reproduces_its_log_prob(kind: str) -> None:
    policy = DiffusionPolicy(tiny_pipeline(kind))
    cond = policy.encode_prompt(["a red seven", "a blue one"])
    sched = policy.schedule(3, eta=1.0, noise_level=0.7)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = sample(policy, cond, sched, guidance_scale=2.0, generator=g, log_probs=True,
                     return_trajectory=True)  # fmt: skip
        assert out.log_probs.shape == (2, 3) and torch.isfinite(out.log_probs).all()
        for j in range(3):
            lp = transition_log_prob(
                policy, sched, j, out.trajectory[:, j], out.trajectory[:, j + 1], cond, 2.0
            ).log_prob
            torch.testing.assert_close(lp, out.log_probs[:, j], rtol=1e-4, atol=1e-4)


def test_log_probs_stay_fp32_and_finite_under_a_bf16_model() -> None:
    policy = DiffusionPolicy(tiny_pipeline("sd").to(dtype=torch.bfloat16))
    cond = policy.encode_prompt(["a red seven", "a blue one"])
    sched = policy.schedule(4, eta=1.0)
    with torch.no_grad():
        out = sample(policy, cond, sched, generator=torch.Generator().manual_seed(0),
                     log_probs=True, return_trajectory=True)  # fmt: skip
    assert out.log_probs.dtype == torch.float32 and torch.isfinite(out.log_probs).all()
    # one late step: a bf16 model output through our fp32 path vs. float64, and vs. bf16 math
    j = 3
    x_t, x_prev = out.trajectory[:, j], out.trajectory[:, j + 1]
    with torch.no_grad():
        eps = policy.predict(x_t, sched.model_timestep(j), cond)
    assert eps.dtype == torch.bfloat16
    ours = sched.step(j, eps, x_t, prev_sample=x_prev).log_prob
    a_t, a_p = sched.alpha_t[j].double(), sched.alpha_prev[j].double()
    sigma = torch.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
    e = eps.double()
    x0 = (x_t.double() - torch.sqrt(1 - a_t) * e) / torch.sqrt(a_t)
    mu = torch.sqrt(a_p) * x0 + torch.sqrt(1 - a_p - sigma**2) * e
    exact = _normal_logpdf_mean(x_prev, mu, sigma)
    torch.testing.assert_close(ours.double(), exact, rtol=0, atol=1e-3)
    bf = torch.bfloat16  # the same formula evaluated in bf16 is visibly off
    x0_b = (x_t.to(bf) - torch.sqrt(1 - a_t).to(bf) * eps) / torch.sqrt(a_t).to(bf)
    mu_b = torch.sqrt(a_p).to(bf) * x0_b + torch.sqrt(1 - a_p - sigma**2).to(bf) * eps
    naive = -((x_prev.to(bf) - mu_b) ** 2) / (2 * sigma.to(bf) ** 2) - torch.log(sigma.to(bf))
    naive = (naive - 0.5 * math.log(2 * math.pi)).flatten(1).mean(1)
    assert (naive.double() - exact).abs().max() > 10 * (ours.double() - exact).abs().max()


def test_gradient_flows_only_through_the_chosen_steps() -> None:
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2, init="default"))
    cond = policy.encode_prompt(["a", "b"], guidance=False)
    sched = policy.schedule(4)
    out = sample(policy, cond, sched, generator=torch.Generator().manual_seed(0), grad_steps=[3])
    assert out.latents.requires_grad and out.pred_x0[3].requires_grad
    assert not any(x.requires_grad for x in out.pred_x0[:3])
    # ReFL-style: stop after a middle grad step
    out = sample(policy, cond, sched, grad_steps=[1], until=2, checkpoint_steps=False)
    assert len(out.pred_x0) == 2 and out.pred_x0[1].requires_grad
    out.pred_x0[1].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.trainable_parameters())


def test_per_trajectory_truncation_detaches_items_outside_their_window() -> None:
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2, init="default"))
    cond = policy.encode_prompt(["a", "b"], guidance=False)
    sched = policy.schedule(3)
    mask = torch.tensor([[False, True, True], [False, False, False]])
    out = sample(policy, cond, sched, generator=torch.Generator().manual_seed(0), grad_steps=mask)
    assert out.latents.requires_grad
    out.latents[1].sum().backward(retain_graph=True)  # item 1 has no gradient window
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in policy.trainable_parameters())
    out.latents[0].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.trainable_parameters())


def test_checkpointed_grad_steps_give_the_same_gradient() -> None:
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=2, init="default"))
    cond = policy.encode_prompt(["a", "b"])
    sched = policy.schedule(3, eta=0.5)
    grads = []
    for ckpt in (True, False):
        policy.raw_denoiser.zero_grad()
        out = sample(policy, cond, sched, guidance_scale=3.0, generator=torch.Generator().manual_seed(1),
                     grad_steps=[1, 2], checkpoint_steps=ckpt)  # fmt: skip
        out.latents.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.trainable_parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_classifier_free_guidance_is_one_batched_forward() -> None:
    policy = DiffusionPolicy(tiny_pipeline("sdxl"))
    cond = policy.encode_prompt(["a red seven"])
    x, t = torch.randn(1, 4, 8, 8), torch.tensor(500)
    with torch.no_grad():
        guided = policy.predict(x, t, cond, guidance_scale=4.0)
        c = policy.predict(x, t, cond, 1.0)
        neg = cond.select(slice(None))
        neg.embeds, neg.pooled = cond.neg_embeds, cond.neg_pooled
        u = policy.predict(x, t, neg, 1.0)
    torch.testing.assert_close(guided, u + 4.0 * (c - u), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="negative embeddings"):
        policy.predict(x, t, policy.encode_prompt(["a"], guidance=False), 4.0)
