"""The policy over diffusers components: kinds, loading, LoRA and the reference model."""

from __future__ import annotations

import copy

import pytest
import torch

from diffusion_align.policy import DiffusionPolicy, LoraSpec
from diffusion_align.tiny import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def _perturb_lora(policy: DiffusionPolicy, scale: float = 0.2) -> None:
    with torch.no_grad():
        for _, p in policy.named_trainable_parameters():
            p.add_(torch.randn_like(p) * scale)


@pytest.mark.parametrize(("kind", "pooled"), [("sd", False), ("sdxl", True), ("flow", True)])
def test_kinds_encode_and_decode(kind: str, pooled: bool) -> None:
    policy = DiffusionPolicy(tiny_pipeline(kind))
    assert policy.kind == kind
    cond = policy.encode_prompt(["a red seven", "a blue one"])
    assert len(cond) == 2 and (cond.pooled is not None) == pooled and cond.has_negative()
    assert (cond.time_ids is not None) == (kind == "sdxl")
    images = policy.decode(torch.randn(policy.latent_shape(2)))
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    z = policy.encode(images, torch.Generator().manual_seed(0))
    assert z.shape == policy.latent_shape(2)
    with pytest.raises(ValueError, match="single string"):
        policy.encode_prompt("a red seven")


def test_prediction_types() -> None:
    assert DiffusionPolicy(tiny_pipeline("sd", "v_prediction")).prediction_type == "v_prediction"
    assert DiffusionPolicy(tiny_pipeline("flow")).prediction_type == "flow"


@pytest.mark.parametrize("kind", ["sd", "flow"])
def test_from_pretrained_local_directory(tmp_path, kind: str) -> None:
    tiny_pipeline(kind).save_pretrained(tmp_path / kind)
    policy = DiffusionPolicy.from_pretrained(str(tmp_path / kind), lora=LoraSpec(rank=2))
    assert policy.kind == kind and policy.reference_mode == "adapters"
    assert all("lora" in n for n, _ in policy.named_trainable_parameters())
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        DiffusionPolicy.from_pretrained(str(tmp_path))


def test_missing_hub_checkpoint_says_what_to_do(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="local-dir"):
        DiffusionPolicy.from_pretrained("nobody/not-a-real-model-xyz")


def test_lora_reference_is_the_base_model() -> None:
    pipe = tiny_pipeline("sd")
    base = copy.deepcopy(pipe.unet).eval()
    policy = DiffusionPolicy(pipe, lora=LoraSpec(rank=2))
    cond = policy.encode_prompt(["a red seven"], guidance=False)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor(300)
    with torch.no_grad():
        ref0 = base(x, t, encoder_hidden_states=cond.embeds).sample
        torch.testing.assert_close(policy.predict(x, t, cond), ref0)  # B = 0 at init
        _perturb_lora(policy)
        assert (policy.predict(x, t, cond) - ref0).abs().max() > 1e-4
        torch.testing.assert_close(policy.predict(x, t, cond, reference=True), ref0)
        assert (policy.predict(x, t, cond) - ref0).abs().max() > 1e-4  # adapters back on


def test_frozen_copy_reference_for_full_fine_tuning() -> None:
    policy = DiffusionPolicy(tiny_pipeline("sd"), reference="copy")
    assert policy.lora is None and len(policy.trainable_parameters()) > 10
    cond = policy.encode_prompt(["a"], guidance=False)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor(300)
    with torch.no_grad():
        before = policy.predict(x, t, cond, reference=True)
        for p in policy.trainable_parameters():
            p.add_(0.01)
        torch.testing.assert_close(policy.predict(x, t, cond, reference=True), before)
    with pytest.raises(ValueError, match="needs LoRA"):
        DiffusionPolicy(tiny_pipeline("sd"), reference="adapters")
    with pytest.raises(ValueError, match="reference model"):
        DiffusionPolicy(tiny_pipeline("sd")).predict(x, t, cond, reference=True)


@pytest.mark.parametrize(("kind", "w"), [("sd", 1.0), ("sd", 3.0), ("sdxl", 1.0), ("flow", 3.0)])
def test_batched_reference_forward_equals_two_forwards(kind: str, w: float) -> None:
    policy = DiffusionPolicy(tiny_pipeline(kind), lora=LoraSpec(rank=2))
    _perturb_lora(policy)
    cond = policy.encode_prompt(["a red seven", "a blue one"])
    x = torch.randn(policy.latent_shape(2))
    t = policy.schedule(4).model_timestep(1)
    pol_b, ref_b = policy.predict_with_reference(x, t, cond, w, batched=True)
    pol_s, ref_s = policy.predict_with_reference(x, t, cond, w, batched=False)
    torch.testing.assert_close(pol_b, pol_s, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ref_b, ref_s, rtol=1e-4, atol=1e-5)
    assert (pol_b - ref_b).abs().max() > 1e-4 and pol_b.requires_grad and not ref_b.requires_grad


def test_save_and_reload_lora(tmp_path) -> None:
    policy = DiffusionPolicy(tiny_pipeline("sd"), lora=LoraSpec(rank=3, alpha=6))
    _perturb_lora(policy)
    policy.save_pretrained(tmp_path / "lora")
    pipe_dir = tmp_path / "base"
    tiny_pipeline("sd").save_pretrained(pipe_dir)
    again = DiffusionPolicy.from_pretrained(str(pipe_dir), lora_weights=tmp_path / "lora")
    assert again.lora.rank == 3 and again.lora.alpha == 6
    for (n, a), (m, b) in zip(
        policy.named_trainable_parameters(), again.named_trainable_parameters()
    ):
        assert n == m
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_noise_targets(prediction_type: str) -> None:
    noise = DiffusionPolicy(tiny_pipeline("sd", prediction_type)).noise_schedule()
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    idx = torch.tensor([10, 900])
    x_t, t, target = noise.add_noise(x0, eps, idx)
    a = noise.alphas_cumprod[idx].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    want = eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(target, want)
    assert t.tolist() == [10, 900]
    flow = DiffusionPolicy(tiny_pipeline("flow")).noise_schedule()
    x_t, t, target = flow.add_noise(x0, eps, idx)
    s = flow.sigmas[idx].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, (1 - s) * x0 + s * eps)
    torch.testing.assert_close(target, eps - x0)
    torch.testing.assert_close(t, flow.sigmas[idx] * 1000)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_by_hand(prediction_type: str) -> None:
    noise = DiffusionPolicy(tiny_pipeline("sd", prediction_type)).noise_schedule()
    idx = torch.tensor([0, 10, 999])
    a = noise.alphas_cumprod[idx].double()
    snr = (a / (1 - a)).tolist()
    assert snr[0] > 5 > snr[2]  # a low-noise step is capped, a noisy one is not
    w = noise.loss_weight(idx, 5.0).tolist()
    if prediction_type == "epsilon":  # min(SNR, 5) / SNR
        want = [5 / snr[0], 5 / snr[1] if snr[1] > 5 else 1.0, 1.0]
    else:  # min(SNR, 5) / (SNR + 1)
        want = [5 / (s + 1) if s > 5 else s / (s + 1) for s in snr]
    assert w == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="snr_gamma"):
        noise.loss_weight(idx, 0.0)
    with pytest.raises(ValueError, match="snr_gamma: min-SNR weights need"):
        DiffusionPolicy(tiny_pipeline("flow")).noise_schedule().loss_weight(idx, 5.0)


def test_latent_denoising_loss_weighs_each_sample_by_min_snr() -> None:
    from diffusion_align.algorithms.refl import latent_denoising_loss
    from diffusion_align.losses import per_sample_mse

    policy = DiffusionPolicy(tiny_pipeline("sd"))
    h, w = policy.resolution()
    x0 = policy.encode(torch.rand(4, 3, h, w, generator=torch.Generator().manual_seed(1)))
    cond = policy.encode_prompt(["a", "b", "c", "d"], guidance=False)
    with torch.no_grad():
        got = latent_denoising_loss(policy, x0, cond, torch.Generator().manual_seed(3),
                                    snr_gamma=5.0)  # fmt: skip
        g = torch.Generator().manual_seed(3)  # the same draws, by hand
        noising = policy.noise_schedule()
        noise = torch.randn(x0.shape, generator=g)
        idx = noising.sample_indices(4, g)
        x_t, t, target = noising.add_noise(x0, noise, idx)
        err = per_sample_mse(policy.predict(x_t, t, cond, 1.0), target)
        a = noising.alphas_cumprod[idx]
        snr = a / (1 - a)
        want = (err * snr.clamp(max=5.0) / snr).mean()
    torch.testing.assert_close(got, want)
