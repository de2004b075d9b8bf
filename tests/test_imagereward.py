"""ImageReward (vision_rm.imagereward): converter, strict loading, parity with the official
per-image forward, batching, truncation, gradients, input errors, bf16, persistence.

Everything runs on a tiny checkpoint in the official layout (tests/tiny/imagereward.py):
ViT width 32 × 2 layers at 224 px / patch 16 (197 tokens, as the official), BERT width
32 × 2 layers, the official MLP head.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmreward
from mmreward import CheckpointError, InputError, RewardInput, WeightsNotFoundError
from mmreward.checkpoint import read_state_dict
from tests.tiny.imagereward import (
    TINY_MED,
    TINY_VISION,
    OfficialStyleImageReward,
    build_tiny,
)
from vision_rm.imagereward import (
    UNUSED_OFFICIAL_KEYS,
    ImageRewardConfig,
    convert_official_state_dict,
    imagereward_v1,
    to_official_state_dict,
)

NAME = "imagereward.v1.0"
PROMPTS = ["a photo of an astronaut", "a cup of coffee on a table", "a cat sitting"]
#: (height, width) of the sample images: downscale, upscale, odd aspect ratios, native
SIZES = [(512, 512), (300, 451), (150, 100), (97, 223), (224, 224)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("imagereward_tiny")
    return d, build_tiny(d, seed=0)


@pytest.fixture(scope="module")
def rm(tiny_dir):
    return mmreward.load(NAME, **tiny_dir[1])


@pytest.fixture(scope="module")
def official(tiny_dir, rm) -> OfficialStyleImageReward:
    d, kwargs = tiny_dir
    med = json.loads((d / "med_config.json").read_text())
    return OfficialStyleImageReward(
        read_state_dict(kwargs["weights"]), med, TINY_VISION, rm.tokenizer
    )


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
    from skimage import data

    return {name: getattr(data, name)() for name in ("astronaut", "coffee", "chelsea")}


def _to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float() / 255


def _raw(rm, scores: torch.Tensor | float) -> torch.Tensor:
    """Undo the standardisation: the MLP output the two implementations compute."""
    return torch.as_tensor(scores) * rm.config.reward_std + rm.config.reward_mean


# -- registry and config -----------------------------------------------------------------
def test_registry_entry():
    spec = mmreward.get_spec("imagereward")
    assert spec.name == NAME
    assert spec.weights.hub_id == "THUDM/ImageReward" and spec.weights.filename == "ImageReward.pt"
    assert spec.preprocess["resolution"] == 224 and spec.preprocess["crop"] == "center"
    assert spec.preprocess["resize"] == "bicubic" and spec.preprocess["mean"] == "openai_clip"
    assert spec.license == "Apache-2.0" and "2304.05977" in spec.paper


def test_official_med_config_gives_default_sizes():
    med = {**TINY_MED, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12}
    med.update(intermediate_size=3072, vocab_size=30524, max_position_embeddings=512)
    assert ImageRewardConfig.from_med_config(med) == ImageRewardConfig()
    with pytest.raises(ValueError, match="hidden_act"):
        ImageRewardConfig.from_med_config({**med, "hidden_act": "relu"})
    with pytest.raises(ValueError, match="unknown keys.*vision_depth"):
        ImageRewardConfig.from_dict({"vision_depth": 3})


def test_offline_without_weights_says_where_to_put_them():
    with pytest.raises(WeightsNotFoundError, match=r"ImageReward\.pt.*THUDM/ImageReward"):
        mmreward.load(NAME, local_files_only=True)


def test_missing_tokenizer_is_a_clear_error(tiny_dir, tmp_path):
    (tmp_path / "ImageReward.pt").write_bytes(tiny_dir[1]["weights"].read_bytes())
    with pytest.raises(WeightsNotFoundError, match="tokenizer"):
        mmreward.load(NAME, weights=tmp_path / "ImageReward.pt", config=TINY_VISION)


# -- converter and strict loading ----------------------------------------------------------
def test_converter_round_trip(tiny_dir, rm):
    official_sd = read_state_dict(tiny_dir[1]["weights"])
    ours = convert_official_state_dict(official_sd)
    assert set(ours) == set(rm.state_dict())
    back = to_official_state_dict(ours)
    assert set(back) == set(official_sd) - set(UNUSED_OFFICIAL_KEYS)
    for k, v in back.items():
        assert torch.equal(v, official_sd[k]), k
    # and the loaded model holds exactly those tensors
    for k, v in rm.state_dict().items():
        assert torch.equal(v, ours[k]), k


def test_strict_loading_lists_missing_and_unexpected_keys(tiny_dir, tmp_path):
    sd = read_state_dict(tiny_dir[1]["weights"])
    del sd["blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"]
    sd["blip.visual_encoder.blocks.2.norm1.weight"] = torch.ones(32)  # a layer too many
    torch.save(sd, tmp_path / "ImageReward.pt")
    (tmp_path / "tokenizer").symlink_to(tiny_dir[0] / "tokenizer")
    (tmp_path / "med_config.json").write_text((tiny_dir[0] / "med_config.json").read_text())
    with pytest.raises(CheckpointError) as err:
        mmreward.load(NAME, weights=tmp_path / "ImageReward.pt", config=TINY_VISION)
    msg = str(err.value)
    assert "missing keys (1): text.layers.1.cross_attn.k.weight" in msg
    assert "unexpected keys (1): vision.blocks.2.norm1.weight" in msg


def test_position_ids_must_be_arange(tiny_dir):
    sd = read_state_dict(tiny_dir[1]["weights"])
    sd["blip.text_encoder.embeddings.position_ids"] = sd[
        "blip.text_encoder.embeddings.position_ids"
    ].flip(-1)
    with pytest.raises(CheckpointError, match="position_ids"):
        convert_official_state_dict(sd)


# -- parity with the official forward -------------------------------------------------------
def test_matches_official_per_image_forward(rm, official, samples):
    """Our batched, tensor-preprocessed score vs the official PIL, one-image-per-forward one."""
    pils, prompts = [], []
    for i, arr in enumerate(samples.values()):
        for j, (h, w) in enumerate(SIZES):
            pils.append(Image.fromarray(arr).resize((w, h), Image.Resampling.BICUBIC))
            prompts.append(PROMPTS[(i + j) % len(PROMPTS)])
    ours = rm.score([_to_tensor(p) for p in pils], prompts=prompts, batch_size=16).scores
    ref = torch.tensor([official.score(p, im) for p, im in zip(prompts, pils)])
    raw_ours, raw_ref = _raw(rm, ours), _raw(rm, ref)
    rel = ((raw_ours - raw_ref).abs() / raw_ref.abs()).max().item()
    spread = (raw_ref.max() - raw_ref.min()).item()
    print(
        f"max relative difference {rel:.2e}; max |Δ| / spread {((raw_ours - raw_ref).abs().max() / spread):.2e}"
    )
    assert rel <= 0.01, (ours.tolist(), ref.tolist())
    # the image-dependent part agrees too, not only the (large) constant part
    assert (raw_ours - raw_ref).abs().max() <= 0.05 * spread
    # at the native size no resampling happens: the two agree to float round-off
    native = [k for k, p in enumerate(pils) if p.size == (224, 224)]
    torch.testing.assert_close(ours[native], ref[native], rtol=1e-4, atol=1e-5)
    # and on identical (official PIL-preprocessed) pixels, at every size
    with torch.no_grad():
        pixels = torch.stack([official.preprocess(im) for im in pils])
        torch.testing.assert_close(
            rm.score_preprocessed(pixels, prompts), ref, rtol=1e-4, atol=1e-5
        )


def test_batch_equals_single_forwards(rm, samples):
    x = torch.stack(
        [
            _to_tensor(Image.fromarray(a).resize((180, 150), Image.Resampling.BICUBIC))
            for a in samples.values()
        ]
    )
    x = torch.cat([x, x.flip(-1)])  # 6 items
    prompts = PROMPTS + PROMPTS[::-1]
    with torch.no_grad():
        batched = rm(RewardInput(prompts=prompts, images=x)).scores
        single = torch.cat(
            [
                rm(RewardInput(prompts=[p], images=x[i : i + 1])).scores
                for i, p in enumerate(prompts)
            ]
        )
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    assert batched.dtype == torch.float32 and batched.shape == (6,)
    assert batched.std() > 0  # images and prompts matter


@torch.no_grad()
def test_prompt_truncated_at_35_tokens(rm):
    x = torch.rand(1, 3, 224, 224)
    long = " ".join(["a red cube in the space"] * 12)
    ids, mask = rm.tokenize([long, "a cat"])
    assert ids.shape == (2, 35) and mask[0].all() and mask[1].sum() == 4
    assert rm.tokenize(["a cat"])[0].shape == (1, 4)  # padded to the longest prompt only
    torch.testing.assert_close(  # ... which does not change the score (masked positions)
        rm.raw_reward(rm.preprocess(x), *rm.tokenize(["a cat"])),
        rm.raw_reward(rm.preprocess(x), *rm.tokenize(["a cat"], padding="max_length")),
    )
    tok = rm.tokenizer
    assert ids[0, 0] == tok.cls_token_id and ids[0, -1] == tok.sep_token_id  # [CLS] kept
    s_long = rm.score(x, prompts=long).scores
    s_longer = rm.score(x, prompts=long + " with a black cat on the table").scores
    s_short = rm.score(x, prompts="a red cube").scores
    torch.testing.assert_close(s_long, s_longer, rtol=0, atol=0)
    assert not torch.allclose(s_long, s_short)


# -- gradients, errors, precision, persistence ---------------------------------------------
def test_gradient_reaches_pixels(rm):
    x = (0.05 + 0.9 * torch.rand(2, 3, 150, 200)).requires_grad_(True)
    scores = rm(RewardInput(prompts=PROMPTS[:2], images=x)).scores
    scores.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    assert rm.differentiable and rm.native_resolution == (224, 224)
    # loaded frozen (a fixed reward): the gradient reaches the pixels, not the weights
    assert not any(p.requires_grad for p in rm.parameters()) and not rm.training


def test_bad_inputs_are_clear_errors(rm):
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(InputError, match=r"prompts: expected non-empty strings.*index \[1\]"):
        rm(RewardInput(prompts=["a cat", "  "], images=x))
    with pytest.raises(InputError, match=r"batch: .*prompts=3, images=2"):
        rm(RewardInput(prompts=PROMPTS, images=x))
    with pytest.raises(InputError, match=r"images: .*divide by 255"):
        rm(RewardInput(prompts=PROMPTS[:2], images=x * 255))
    with pytest.raises(InputError, match="prompts: expected a value"):
        rm(RewardInput(images=x))


def test_bf16_is_finite_and_close(rm, tiny_dir, samples):
    x = torch.stack([_to_tensor(Image.fromarray(a).resize((224, 224))) for a in samples.values()])
    ref = rm.score(x, prompts=PROMPTS).scores
    rm16 = copy.deepcopy(rm).to(torch.bfloat16)
    out = rm16.score(x, prompts=PROMPTS).scores
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()
    loaded = mmreward.load(NAME, dtype=torch.bfloat16, **tiny_dir[1])
    assert loaded.dtype == torch.bfloat16
    torch.testing.assert_close(loaded.score(x, prompts=PROMPTS).scores, out)


def test_save_pretrained_round_trip(rm, tmp_path):
    x = torch.rand(2, 3, 224, 224)
    d = rm.save_pretrained(tmp_path / "saved")
    assert (d / "tokenizer").is_dir()
    again = mmreward.load(d)
    torch.testing.assert_close(
        again.score(x, prompts=PROMPTS[:2]).scores, rm.score(x, prompts=PROMPTS[:2]).scores
    )


def test_weights_directory_and_cross_attention_frequency(tiny_dir):
    d, _ = tiny_dir
    rm_dir = imagereward_v1(
        d, config=TINY_VISION
    )  # a folder: ImageReward.pt + med_config + tokenizer
    assert rm_dir.config.text_layers == 2 and rm_dir.config.vocab_size == len(rm_dir.tokenizer)
    # cross-attention every 2nd text layer (not the official layout: layer 1 has none)
    sparse = imagereward_v1(
        config={**TINY_VISION, "cross_attention_freq": 2},
        med_config=d / "med_config.json",
        tokenizer=d / "tokenizer",
    )
    assert sparse.text.layers[0].cross_attn is not None and sparse.text.layers[1].cross_attn is None
    assert sparse.score(torch.rand(1, 3, 64, 64), prompts="a cat").scores.shape == (1,)


# -- the official package, when it can be imported ------------------------------------------
def _import_official():
    """Import the official ImageReward modules, skipping its package ``__init__`` (which
    pulls in CLIP, diffusers and datasets). Needs image-reward's pins (timm 0.6, fairscale,
    transformers 4.x); skipped otherwise."""
    spec = importlib.util.find_spec("ImageReward")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the official image-reward package is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    saved = {
        k: v for k, v in sys.modules.items() if k == "ImageReward" or k.startswith("ImageReward.")
    }
    for name, sub in (("ImageReward", root), ("ImageReward.models", root / "models")):
        stub = types.ModuleType(name)
        stub.__path__ = [str(sub)]
        sys.modules[name] = stub
    try:
        import ImageReward.ImageReward as official_module  # noqa: N813
        import ImageReward.models.BLIP.blip_pretrain as blip_pretrain
        import ImageReward.models.BLIP.vit as vit
    except Exception as e:  # old pins not satisfied (timm, fairscale, transformers 4.x)
        pytest.skip(
            f"the official image-reward modules cannot be imported here: {type(e).__name__}: {e}"
        )
    finally:
        for k in [k for k in sys.modules if k == "ImageReward" or k.startswith("ImageReward.")]:
            if k not in saved:
                del sys.modules[k]
        sys.modules.update(saved)
    return official_module, blip_pretrain, vit


def test_official_package_identical_weights(tiny_dir, rm, samples, monkeypatch):
    official_module, blip_pretrain, vit = _import_official()
    d, kwargs = tiny_dir
    v = TINY_VISION
    monkeypatch.setattr(blip_pretrain, "init_tokenizer", lambda: rm.tokenizer)
    monkeypatch.setattr(
        blip_pretrain,
        "create_vit",
        lambda *a, **k: (
            vit.VisionTransformer(
                img_size=v["image_size"],
                patch_size=v["patch_size"],
                embed_dim=v["vision_width"],
                depth=v["vision_layers"],
                num_heads=v["vision_heads"],
            ),
            v["vision_width"],
        ),
    )
    model = official_module.ImageReward(med_config=str(d / "med_config.json"))
    model.mlp = official_module.MLP(rm.config.text_hidden)  # the official hard-codes 768
    model.load_state_dict(torch.load(kwargs["weights"]), strict=True)  # our tiny file is exact
    model.eval()
    pils = [
        Image.fromarray(a).resize((300, 240), Image.Resampling.BICUBIC) for a in samples.values()
    ]
    ref = torch.tensor([model.score(p, im) for p, im in zip(PROMPTS, pils)])
    ours = rm.score([_to_tensor(p) for p in pils], prompts=PROMPTS).scores
    rel = ((_raw(rm, ours) - _raw(rm, ref)).abs() / _raw(rm, ref).abs()).max().item()
    print(f"official package vs ours: max relative difference of the raw reward {rel:.2e}")
    assert rel <= 0.01
