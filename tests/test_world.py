"""The built-in world: data, gold reward, tokenizer, tiny CLIP, pipeline, annotators, proxy, build.

Builders run at tiny sizes (``mmreward.world.build.TINY_BUILD``); the committed assets are
checked for what they promise (the gold reward's accuracy and determinism, a pipeline that
``StableDiffusionPipeline.from_pretrained`` loads).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import mmreward
from mmreward.data import load_examples
from mmreward.synthetic import gaussian_blur
from mmreward.world import annotators as ann
from mmreward.world.data import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    SIZES,
    Attributes,
    all_attributes,
    canonical_images,
    digit_splits,
    parse_prompt,
    prompt_splits,
    sample_world,
)
from mmreward.world.gold import GoldReward, assets_dir, ink_map, load_gold, sharpness_ratio
from tests.tiny.world import tiny_world

ASSETS = assets_dir()
HAS_ASSETS = (ASSETS / "figures.json").is_file()
needs_assets = pytest.mark.skipif(not HAS_ASSETS, reason="world assets not built yet")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine they stall."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def world():
    return tiny_world()


# -- data ------------------------------------------------------------------------------


def test_prompts_parse_back_to_their_attributes():
    combos = all_attributes()
    assert len(combos) == 10 * len(COLOURS) * len(BACKGROUNDS) * len(SIZES) == len(set(combos))
    for a in combos:
        assert parse_prompt(a.prompt) == a.as_dict()
    assert parse_prompt("a red 7") == {"digit": 7, "colour": "red"}
    assert parse_prompt("a photo of a cat") == {}
    with pytest.raises(ValueError, match="two colours"):
        parse_prompt("a red blue seven")
    with pytest.raises(ValueError, match="colour"):
        Attributes(3, "pink", "dark", "small")


def test_splits_are_seeded_disjoint_and_cover_every_value():
    d = digit_splits()
    assert sum(len(v) for v in d.values()) == 1797
    assert not set(d["train"]) & set(d["test"]) and not set(d["val"]) & set(d["test"])
    p = prompt_splits()
    assert len(p["test"]) == 40 and len(p["train"]) == 160
    assert not set(p["train"]) & set(p["test"])
    for attr in ATTRIBUTES:  # every value of every attribute is seen in training
        assert {getattr(a, attr) for a in p["train"]} == {
            getattr(a, attr) for a in all_attributes()
        }
    assert prompt_splits() == p and all(np.array_equal(digit_splits()[k], d[k]) for k in d)


def test_sample_world_is_deterministic_and_respects_splits():
    a = sample_world(16, digits="test", prompts="test", seed=3)
    b = sample_world(16, digits="test", prompts="test", seed=3)
    assert a.images.shape == (16, 3, 32, 32) and torch.equal(a.images, b.images)
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert set(a.digit_index) <= set(digit_splits()["test"])
    assert set(a.attributes) <= set(prompt_splits()["test"])
    assert not torch.equal(a.images, sample_world(16, digits="test", prompts="test", seed=4).images)
    with pytest.raises(ValueError, match="digits"):
        sample_world(2, digits="holdout")


def test_rendered_attributes_are_measurable():
    attrs = [Attributes(8, c, b, s) for c in COLOURS for b in BACKGROUNDS for s in SIZES]
    x = canonical_images(attrs)
    rows = (ink_map(x).amax(dim=3)[:, 0] > 0.35).sum(1)
    for a, r, img in zip(attrs, rows, x):
        assert abs(int(r) - SIZES[a.size]) <= 3, (a, int(r))
        corner = img[:, 0, 0]
        assert torch.allclose(corner, torch.full((3,), BACKGROUNDS[a.background]), atol=1e-6)


# -- gold ------------------------------------------------------------------------------


def test_gold_analytic_checks_read_clean_renders():
    """Colour, background and size need no trained weights: exact on clean renders."""
    gold = GoldReward().eval()
    s = sample_world(200, digits="test", prompts="all", seed=1)
    p = gold.attribute_probs(s.images)
    for attr, table in (("colour", COLOURS), ("background", BACKGROUNDS), ("size", SIZES)):
        truth = torch.tensor([list(table).index(getattr(a, attr)) for a in s.attributes])
        assert (p[attr].argmax(1) == truth).all(), attr
    blurred = torch.stack([gaussian_blur(x, 1.5) for x in s.images[:20]])
    assert (sharpness_ratio(blurred) < sharpness_ratio(s.images[:20])).all()


def test_gold_is_deterministic(world):
    gold = load_gold(world["assets"] / "gold")
    again = load_gold(world["assets"] / "gold")
    s = sample_world(12, digits="test", prompts="all", seed=2)
    first = gold.score(s.images, prompts=s.prompts)
    assert torch.equal(first.scores, gold.score(s.images, prompts=s.prompts).scores)
    assert torch.equal(first.scores, again.score(s.images, prompts=s.prompts).scores)
    one_by_one = torch.cat(
        [gold.score(s.images[i : i + 1], prompts=s.prompts[i : i + 1]).scores for i in range(12)]
    )
    torch.testing.assert_close(first.scores, one_by_one, rtol=0, atol=1e-6)
    assert set(first.sub_scores) == set(GoldReward.sub_score_names)
    assert ((first.scores >= 0) & (first.scores <= 1)).all()


def test_gold_checks_only_the_attributes_a_prompt_names(world):
    gold = load_gold(world["assets"] / "gold")
    x = canonical_images([Attributes(7, "red", "dark", "large")])
    out = gold.score(x, prompts=["a red digit"])
    assert out.sub_scores["size"].item() == 1.0 and out.sub_scores["background"].item() == 1.0
    assert out.sub_scores["colour"].item() > 0.9
    legible = 1 - gold.attribute_probs(x)["digit"][0, 10]  # no digit named: any legible one
    assert out.sub_scores["digit"].item() == pytest.approx(legible.item())
    with pytest.raises(ValueError, match=r"prompts\[0\]"):
        gold.score(x, prompts=["a red green seven"])


@needs_assets
def test_committed_gold_is_accurate_and_prefers_the_true_prompt():
    gold = mmreward.load("gold.world")
    s = sample_world(200, digits="test", prompts="all", seed=5)
    out = gold.score(s.images, prompts=s.prompts)
    assert out.extras["correct"].float().mean() > 0.9
    wrong = [
        Attributes((a.digit + 1) % 10, a.colour, a.background, a.size).prompt for a in s.attributes
    ]
    assert (out.scores > gold.score(s.images, prompts=wrong).scores).float().mean() > 0.9
    digits = gold.predict(s.images[:50])
    assert np.mean([d["digit"] == a.digit for d, a in zip(digits, s.attributes[:50])]) > 0.85
    # gold declares itself differentiable: gradients reach the pixels
    x = s.images[:2].clone().requires_grad_(True)
    gold(mmreward.RewardInput(images=x, prompts=s.prompts[:2])).scores.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# -- tokenizer and CLIP ----------------------------------------------------------------


def test_tokenizer_has_one_token_per_world_word(tmp_path):
    from transformers import CLIPTokenizer

    from mmreward.world.clip import build_tokenizer, tokenize

    tok = build_tokenizer()
    for a in all_attributes()[::17]:
        ids = tok(a.prompt)["input_ids"]
        assert len(ids) == len(a.prompt.split()) + 2  # SOT … EOT
    assert tok.eos_token_id != 2  # transformers' legacy CLIP pooling keys on id 2
    tok.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert torch.equal(
        tokenize(tok, ["a blue two", "a cat!"]), tokenize(again, ["a blue two", "a cat!"])
    )
    assert tokenize(tok, ["a red seven"]).shape == (1, tok.model_max_length)


def test_tiny_clip_trains_and_reports_retrieval(world):
    from mmreward.world.clip import ClipEncoder, load_clip, retrieval_accuracy

    model, tok = load_clip(world["assets"] / "clip")
    sim = ClipEncoder(model, tok).similarity(torch.rand(3, 3, 32, 32), ["a red seven"] * 3)
    assert sim.shape == (3,) and torch.isfinite(sim).all()
    acc = retrieval_accuracy(model, tok, n=8)
    assert {"digit", "colour", "background", "size", "full_caption", "colour_alone"} <= set(acc)
    assert all(0 <= v <= 1 for v in acc.values())


# -- the pipeline ----------------------------------------------------------------------


def test_tiny_pipeline_loads_with_from_pretrained_and_is_seeded(world):
    from diffusers import StableDiffusionPipeline

    from mmreward.world.diffusion import generate, load_pipeline

    folder = world["assets"] / "pipeline"
    assert (
        json.loads((folder / "model_index.json").read_text())["_class_name"]
        == "StableDiffusionPipeline"
    )
    pipe = load_pipeline(folder)
    assert isinstance(pipe, StableDiffusionPipeline)
    prompts = ["a small red seven on a dark background", "a large blue two on a light background"]
    both = generate(pipe, prompts, seeds=[5, 6], num_inference_steps=2)
    alone = generate(pipe, prompts[1:], seeds=[6], num_inference_steps=2)
    assert both.shape == (2, 3, 32, 32) and both.min() >= 0 and both.max() <= 1
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=1e-5)  # independent of the batch
    plain = generate(pipe, prompts[:1], seeds=[5], guidance_scale=1.0, num_inference_steps=2)
    assert plain.shape == (1, 3, 32, 32)


@needs_assets
def test_committed_pipeline_is_a_real_stable_diffusion_pipeline():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(ASSETS / "pipeline")
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.vae_scale_factor * pipe.unet.config.sample_size == 32
    assert pipe.unet.dtype == torch.float32  # stored in fp16, loaded in fp32


# -- annotators ------------------------------------------------------------------------


def test_annotator_follows_bradley_terry():
    a = ann.Annotator(temperature=0.1, tie_band=0.0, label_noise=0.0, seed=0)
    labels = [a.label(0.6, 0.5) for _ in range(4000)]
    p = np.mean([y == 0 for y in labels])
    assert abs(p - 1 / (1 + math.exp(-1.0))) < 0.03  # σ(Δ/T) = σ(1)
    careless = ann.Annotator(temperature=0.0, tie_band=0.0, label_noise=1.0, seed=1)
    assert abs(np.mean([careless.label(1.0, 0.0) == 0 for _ in range(2000)]) - 0.5) < 0.05
    tied = ann.Annotator(temperature=0.0, tie_band=0.1, label_noise=0.0)
    assert tied.label(0.55, 0.5) == "tie" and tied.label(0.7, 0.5) == 0
    with pytest.raises(ValueError, match="label_noise"):
        ann.Annotator(label_noise=2.0)


def test_annotations_are_trainer_jsonl_and_agreement_is_hand_checked(tmp_path):
    pairs = ann.make_pairs([[0, 1, 2], [3, 4, 5]], pairs_per_group=3, seed=0)
    assert len(pairs) == 6 and all((a < 3) == (b < 3) for a, b in pairs)
    gold = [0.9, 0.5, 0.1, 0.8, 0.2, 0.4]
    prompts = ["a red seven"] * 3 + ["a blue two"] * 3
    paths = [f"images/{i}.png" for i in range(6)]
    annotators = [ann.Annotator(seed=k) for k in range(3)]
    rows = ann.annotate(pairs, gold, prompts, paths, annotators, per_pair=2)
    assert len(rows) == 12 and {r["annotator"] for r in rows} <= {0, 1, 2}
    for i, p in enumerate(paths):
        from mmreward.report import save_png

        save_png(torch.full((3, 8, 8), i / 10), tmp_path / p)
    path = ann.write_pairs(tmp_path / "pairs.jsonl", rows)
    examples = load_examples(path, "pairwise")
    assert len(examples) == 12 and examples[0].candidates[0].is_file()
    hand = [
        {"prompt": "p", "images": ["a", "b"], "choice": 0, "gold": [1.0, 0.0]},
        {"prompt": "p", "images": ["a", "b"], "choice": 0, "gold": [1.0, 0.0]},
        {"prompt": "p", "images": ["c", "d"], "choice": 0, "gold": [0.0, 1.0]},
        {"prompt": "p", "images": ["c", "d"], "choice": "tie", "gold": [0.0, 1.0]},
    ]
    stats = ann.agreement(hand)
    assert stats["inter_annotator"] == 0.5  # pair (a,b) agrees, pair (c,d) does not
    assert stats["accuracy_vs_gold"] == pytest.approx(2 / 3) and stats["tie_rate"] == 0.25
    p_e = (3 / 4) ** 2 + (1 / 4) ** 2  # label frequencies: three "a", one tie
    assert stats["cohen_kappa"] == pytest.approx((0.5 - p_e) / (1 - p_e))


# -- proxy and build -------------------------------------------------------------------


def test_tiny_build_writes_every_asset_and_record(world):
    assets = world["assets"]
    for rel in (
        "gold/classifier.safetensors",
        "gold/gold.json",
        "clip/config.json",
        "clip/tokenizer.json",
        "pipeline/unet/diffusion_pytorch_model.safetensors",
        "pipeline/vae/diffusion_pytorch_model.safetensors",
        "proxy/model.safetensors",
        "figures.json",
        "build.json",
    ):
        assert (assets / rel).is_file(), rel
    record = json.loads((assets / "build.json").read_text())
    assert set(record["stages"]) == {"gold", "clip", "vae", "unet", "prefs", "proxy", "figures"}
    assert all(s["cpu_s"] >= 0 and s["wall_s"] >= 0 for s in record["stages"].values())
    figures = json.loads((assets / "figures.json").read_text())
    for key in (
        "clip_retrieval",
        "gold_classifier",
        "generation",
        "annotators",
        "preference_accuracy",
    ):
        assert key in figures
    assert set(figures["generation"]["heldout_prompts"]) == {"cfg_1", "cfg_3"}
    assert load_examples(world["work"] / "prefs" / "train.jsonl", "pairwise")


def test_proxy_round_trips_and_trains(world, tmp_path):
    from mmreward.world.proxy import (
        gold_pair_accuracy,
        new_proxy,
        save_proxy,
        train_proxy,
        world_proxy,
    )

    proxy = world_proxy(world["assets"] / "proxy")
    x = sample_world(4, digits="test", seed=0)
    first = proxy.score(x.images, prompts=x.prompts).scores
    assert first.shape == (4,) and torch.isfinite(first).all()
    save_proxy(proxy, tmp_path / "copy")
    (tmp_path / "clip").symlink_to(world["assets"] / "clip", target_is_directory=True)
    torch.testing.assert_close(
        world_proxy(tmp_path / "copy").score(x.images, prompts=x.prompts).scores, first
    )
    # any trainable reward model trains on the annotators' JSONL
    fresh = new_proxy(world["assets"] / "clip", hidden=[4])
    result = train_proxy(
        fresh,
        world["work"] / "prefs" / "train.jsonl",
        None,
        tmp_path / "run",
        epochs=1,
        batch_size=2,
    )
    assert result["step"] >= 1
    assert gold_pair_accuracy([1.0, 0.0, 2.0], [0.5, 0.1, 0.9], [(0, 1), (2, 1)]) == 1.0


def test_build_rejects_unknown_stages(tmp_path):
    from mmreward.world.build import build

    with pytest.raises(ValueError, match="unknown"):
        build(tmp_path, stages=["gold", "paint"])
