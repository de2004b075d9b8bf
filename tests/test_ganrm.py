"""GAN-RM: discriminator training, bootstrapping labels, Best-of-N, DPO pairs, save/load."""

from __future__ import annotations

import json
import math

import pytest
import torch

import mmreward
from mmreward.errors import CheckpointError, InputError, WeightsNotFoundError
from vision_rm.ganrm import (
    BootstrapConfig,
    DiscriminatorConfig,
    GanRewardModel,
    best_of_n_images,
    bootstrap_round,
    convert_clip_vision,
    discriminator_accuracy,
    discriminator_loss,
    pair_indices,
    rank_pseudo_labels,
    train_discriminator,
    write_dpo_pairs,
)

TIMM_CFG = {"name": "resnet18", "kwargs": {"channels": [8, 8, 8, 8]}}
CLIP_CFG = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "image_size": 16, "patch_size": 8}  # fmt: skip
PREPROCESS = {"resolution": 16, "resize": "bilinear", "crop": "none", "mean": "half", "std": "half"}


pytestmark = pytest.mark.usefixtures("one_thread_module")


def tiny_model(encoder: str = "clip-vision", seed: int = 0, **kwargs) -> GanRewardModel:
    torch.manual_seed(seed)
    cfg = CLIP_CFG if encoder == "clip-vision" else TIMM_CFG
    return GanRewardModel(encoder, cfg, PREPROCESS, hidden=[16], dropout=0.0, **kwargs)


def looks(n: int, bold: bool, seed: int) -> torch.Tensor:
    """Random 16×16 strokes: bold ones are 5 px wide, thin ones 1 px (the look to learn)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 3, 16, 16), 0.1)
    width = 5 if bold else 1
    for i in range(n):
        c = int(torch.randint(2, 14 - width, (1,), generator=g))
        colour = torch.rand(3, generator=g) * 0.5 + 0.5
        if torch.rand(1, generator=g) < 0.5:
            x[i, :, 2:14, c : c + width] = colour[:, None, None]
        else:
            x[i, :, c : c + width, 2:14] = colour[:, None, None]
    return x


# -- loss and labels against hand computation ---------------------------------------------


def test_discriminator_loss_matches_hand_computation():
    t = torch.tensor([2.0, -1.0])
    s = torch.tensor([0.5, -3.0, 1.0])
    y = torch.tensor([0.0, 0.0, 0.8])

    def bce(z, lab):  # −[y log σ(z) + (1−y) log(1−σ(z))]
        p = 1 / (1 + math.exp(-z))
        return -(lab * math.log(p) + (1 - lab) * math.log(1 - p))

    pos = (bce(2.0, 1) + bce(-1.0, 1)) / 2
    neg = (bce(0.5, 0) + bce(-3.0, 0) + bce(1.0, 0.8)) / 3
    assert discriminator_loss(t, s, y).item() == pytest.approx((pos + neg) / 2, rel=1e-6)
    hard = (bce(0.5, 0) + bce(-3.0, 0) + bce(1.0, 0)) / 3
    assert discriminator_loss(t, s).item() == pytest.approx((pos + hard) / 2, rel=1e-6)
    with pytest.raises(InputError, match="sample_labels"):
        discriminator_loss(t, s, torch.tensor([0.0, 1.5, 0.0]))


def test_rank_pseudo_labels_rank_mode_by_hand():
    scores = torch.tensor([0.3, 2.0, -1.0, 5.0, 0.0, 1.0, -4.0, 0.7])
    pl = rank_pseudo_labels(scores, top_fraction=0.5, bottom_fraction=0.25, high=1.0, low=0.4)
    # ranked: 3 (5.0), 1 (2.0), 5 (1.0), 7 (0.7) | 0 (0.3), 4 (0.0) | 2 (-1.0), 6 (-4.0)
    assert pl.index.tolist() == [3, 1, 5, 7, 2, 6]
    ramp = [1.0, 1.0 - 0.6 / 3, 1.0 - 1.2 / 3, 0.4]
    assert pl.labels.tolist() == pytest.approx([*ramp, 0.0, 0.0])
    assert (pl.n_positive, pl.n_negative) == (4, 2)


def test_rank_pseudo_labels_confidence_mode_and_errors():
    scores = torch.tensor([0.0, 2.0, -2.0, 1.0])
    pl = rank_pseudo_labels(scores, 0.25, 0.25, mode="confidence")
    assert pl.index.tolist() == [1, 2]
    assert pl.labels.tolist() == pytest.approx([1 / (1 + math.exp(-2.0)), 0.0])
    one = rank_pseudo_labels(torch.tensor([3.0, 1.0]), 0.5, 0.5)  # k⁺ = 1 → label `high`
    assert one.labels.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="top_fraction"):
        rank_pseudo_labels(scores, 0.7, 0.5)
    with pytest.raises(ValueError, match="mode"):
        rank_pseudo_labels(scores, mode="median")


def test_pair_indices_best_against_worst():
    s = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 5.0, 5.0, 5.0], [1.0, -1.0, 0.5, 0.9]])
    assert pair_indices(s) == [(0, 1, 0), (2, 0, 1)]
    assert pair_indices(s, pairs_per_group=2) == [(0, 1, 0), (0, 3, 2), (2, 0, 1), (2, 3, 2)]
    assert pair_indices(s, min_gap=1.5) == [(0, 1, 0), (2, 0, 1)]
    assert pair_indices(s, min_gap=2.5) == [(0, 1, 0)]
    with pytest.raises(InputError, match="scores"):
        pair_indices(torch.tensor([1.0, 2.0]))


# -- training -----------------------------------------------------------------------------


def test_discriminator_learns_the_look():
    targets, samples = looks(96, True, 0), looks(96, False, 1)
    model = tiny_model()
    held_t, held_s = looks(64, True, 2), looks(64, False, 3)
    before = discriminator_accuracy(model, held_t, held_s)
    cfg = DiscriminatorConfig(epochs=8, batch_size=32, lr=1e-3, head_lr=3e-3, progress=False)
    history = train_discriminator(model, targets, samples, config=cfg)
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["train_accuracy"] > history[0]["train_accuracy"] - 1e-9
    after = discriminator_accuracy(model, held_t, held_s)  # held-out, balanced
    assert after >= 0.9 and after > before + 0.2
    # the reward ranks held-out bold strokes above thin ones
    out = model.score(torch.cat([held_t, held_s]))
    assert out.scores[:64].mean() > out.scores[64:].mean()
    assert torch.allclose(out.extras["probability"], torch.sigmoid(out.scores))


def test_bootstrap_round_labels_and_keeps_learning():
    targets = looks(64, True, 0)
    model = tiny_model()
    cfg = DiscriminatorConfig(epochs=8, batch_size=32, lr=1e-3, head_lr=3e-3, progress=False)
    train_discriminator(model, targets, looks(64, False, 1), config=cfg)
    fresh = torch.cat([looks(16, True, 5), looks(48, False, 6)])  # a quarter already bold
    with torch.no_grad():
        scores = model.logits(fresh)
    expected = rank_pseudo_labels(scores, 0.25, 0.25)
    pl, history = bootstrap_round(model, targets, fresh, BootstrapConfig(), cfg)
    assert pl.index.tolist() == expected.index.tolist()
    assert torch.equal(pl.labels, expected.labels)
    assert len(history) == cfg.epochs
    assert (pl.index[: pl.n_positive] < 16).float().mean() >= 0.75  # the bold ones rank top


def test_train_rejects_bad_pixels():
    model = tiny_model()
    with pytest.raises(InputError, match="targets"):
        train_discriminator(model, torch.rand(4, 3, 16, 16) * 255, torch.rand(4, 3, 16, 16))
    with pytest.raises(InputError, match="sample_labels"):
        train_discriminator(model, torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16),
                            torch.zeros(3))  # fmt: skip


# -- Best-of-N and pairs ------------------------------------------------------------------


def test_best_of_n_picks_highest_scored_candidate():
    model = tiny_model("timm", seed=3)
    cands = torch.rand(3, 5, 3, 16, 16)
    idx = best_of_n_images(model, cands)
    with torch.no_grad():
        scores = model.logits(cands.flatten(0, 1)).view(3, 5)
    assert idx.tolist() == scores.argmax(dim=1).tolist()
    with pytest.raises(InputError, match="candidates"):
        best_of_n_images(model, torch.rand(5, 3, 16, 16))


def test_score_is_differentiable_wrt_pixels():
    model = tiny_model()
    x = torch.rand(2, 3, 20, 20, requires_grad=True)
    model(images=x).scores.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_pairs_jsonl_reads_back_with_the_dpo_loader(tmp_path):
    from diffusion_align.data import PreferencePairs

    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 4, 3, 16, 16, generator=g)
    scores = torch.tensor([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 1.0, 2.0], [0.1, 0.2, 0.3, 0.4]])
    prompts = ["a red one", "a blue two", "a green three"]
    path = write_dpo_pairs(images, prompts, scores, tmp_path / "pairs")
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    assert all(r["choice"] == 0 and len(r["images"]) == 2 for r in rows)
    assert rows[0]["margin"] == pytest.approx(3.0)
    pairs = PreferencePairs(path, size=(16, 16))
    assert len(pairs) == 3 and pairs.ties == 0
    batch, _ = pairs.batch(0, 3)
    order = {p: i for i, p in enumerate(prompts)}
    win, lose = [1, 0, 3], [3, 1, 0]
    for k, p in enumerate(batch.prompts):
        i = order[p]  # PNG round trip: 8-bit quantisation
        assert torch.allclose(batch.winners[k], images[i, win[i]], atol=1 / 255 + 1e-6)
        assert torch.allclose(batch.losers[k], images[i, lose[i]], atol=1 / 255 + 1e-6)


# -- persistence ----------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["clip-vision", "timm"])
def test_save_load_gives_identical_outputs(tmp_path, encoder):
    model = tiny_model(encoder, seed=1).eval()
    with torch.no_grad():  # move the head off its init so the check is not trivial
        for p in model.head.parameters():
            p.add_(0.1)
    x = torch.rand(4, 3, 16, 16)
    ref = model.score(x).scores
    model.save_pretrained(tmp_path / "rm")
    for loaded in (
        mmreward.load(tmp_path / "rm"),
        mmreward.load("gan-rm", weights=tmp_path / "rm"),
    ):
        assert isinstance(loaded, GanRewardModel)
        assert torch.equal(loaded.score(x).scores, ref)


def test_lora_model_saves_and_loads(tmp_path):
    model = tiny_model(tuning="lora", lora_targets=["q_proj", "v_proj"]).eval()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    x = torch.rand(2, 3, 16, 16)
    model.save_pretrained(tmp_path / "rm")
    assert torch.equal(mmreward.load(tmp_path / "rm").score(x).scores, model.score(x).scores)


def test_strict_load_lists_bad_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_model("timm")
    model.save_pretrained(tmp_path / "rm")
    sd = load_file(str(tmp_path / "rm" / "model.safetensors"))
    sd.pop("head.layers.0.weight")
    sd["head.extra"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "rm" / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        mmreward.load("gan-rm", weights=tmp_path / "rm")
    assert "head.layers.0.weight" in str(err.value) and "head.extra" in str(err.value)
    assert err.value.missing == ["head.layers.0.weight"]
    assert err.value.unexpected == ["head.extra"]


def test_missing_weights_say_what_to_do(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="save_pretrained"):
        mmreward.load("gan-rm")
    with pytest.raises(WeightsNotFoundError, match="mmreward.json"):
        mmreward.load("gan-rm", weights=tmp_path)


def test_clip_vision_weights_come_from_a_clip_checkpoint():
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 64},
        vision_config=CLIP_CFG, projection_dim=8,
    )  # fmt: skip
    clip = CLIPModel(cfg).eval()
    model = tiny_model().eval()
    own = list(model.encoder.state_dict())
    sd = convert_clip_vision(clip.state_dict(), own)
    assert sorted(sd) == sorted(own)
    model.encoder.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = clip.vision_model(pixel_values=x).pooler_output
        assert torch.allclose(model.encoder(x), expected, atol=1e-6)


def test_world_look_measure_by_hand():
    from vision_rm.ganrm_world import ink_coverage

    x = torch.zeros(3, 3, 32, 32)
    x[0, :, 8:24, 12:20] = 1.0  # a solid 16×8 bar: covers its whole box
    x[1, :, 8:24, 12:20] = 1.0
    x[1, :, 10:22, 14:18] = 0.0  # hollowed: (128 − 48) / 128 inked
    x[2, :, 8:24, 12:13] = 1.0
    x[2, :, 8:24, 19:20] = 1.0  # two 1-px lines 8 apart: 32 / 128
    assert ink_coverage(x).tolist() == pytest.approx([1.0, 80 / 128, 32 / 128])
    assert ink_coverage(torch.zeros(1, 3, 32, 32)).tolist() == [0.0]  # blank: no ink
