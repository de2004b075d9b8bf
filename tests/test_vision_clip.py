"""CLIP-family and timm-head image rewards on tiny checkpoints in the official layouts.

What is checked, per model: the reward contract (shape, finite, gradient to the pixels,
bf16, batched = one by one) with the ``tests.tiny.vision`` checkpoints; the tensor
preprocessing against each published PIL recipe on scikit-image's photographs; the score
formula against a hand computation with transformers / open_clip's own functions; strict
loading; bad inputs; training and save/load of the trainable heads.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

import mmreward
from mmreward import CheckpointError, InputError, RewardInput
from mmreward.catalog import vision as vision_catalog
from mmreward.preprocess import MEANS, STDS
from tests.tiny.vision import (
    TINY,
    TINY_HF_CLIP,
    TINY_OPEN_CLIP,
    aesthetic_pth,
    hf_clip_dir,
    write_hf_clip_tokenizer,
)

VISION = [spec.name for spec in vision_catalog.ENTRIES]
PROMPTS = ["a photo of an astronaut", "a cup of coffee", "a grey wall"]
REL_TOL = 0.01  # tensor vs PIL preprocessing: ≤ 1 % relative score difference


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is as fast and immune to CPU oversubscription
    (on the shared 2-core box this file takes ~50 s instead of ~190 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vision_tiny")


@pytest.fixture(scope="module")
def tiny_kwargs(tiny_root):
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = TINY[name](tiny_root / name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def load(tiny_kwargs):
    def _load(name: str, **overrides) -> mmreward.RewardModel:
        torch.manual_seed(0)  # heads start from random weights
        return mmreward.load(name, **{**tiny_kwargs(name), **overrides})

    return _load


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    """scikit-image's photographs at several sizes and aspect ratios (uint8 HWC)."""
    from skimage import data

    def resized(arr: np.ndarray, h: int, w: int) -> np.ndarray:
        return np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.LANCZOS))

    return {
        "astronaut_512x512": data.astronaut(),
        "coffee_400x600": data.coffee(),
        "chelsea_300x451": data.chelsea(),
        "rocket_427x640": data.rocket(),
        "astronaut_96x64": resized(data.astronaut(), 96, 64),  # small, portrait: upsampled
        "coffee_120x360": resized(data.coffee(), 120, 360),  # 3:1 panorama
    }


def _fields(rm: mmreward.RewardModel, images: torch.Tensor) -> dict:
    out = {"images": images}
    if "prompts" in rm.inputs:
        out["prompts"] = PROMPTS[: images.shape[0]]
    return out


def _images(rm: mmreward.RewardModel, n: int = 3) -> torch.Tensor:
    from skimage import data

    h, w = rm.native_resolution
    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    photo = F.interpolate(photo, size=(h, w), mode="bilinear", antialias=True).clamp(0, 1)
    noise = torch.rand(1, 3, h, w)
    return torch.cat([noise, photo, torch.full((1, 3, h, w), 0.5)])[:n]


# -- PIL reference recipes (the official pipelines) ------------------------------------------


def _to_normalised(im: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    mean = torch.tensor(MEANS["openai_clip"]).view(3, 1, 1)
    std = torch.tensor(STDS["openai_clip"]).view(3, 1, 1)
    return (x - mean) / std


def pil_clip_transform(im: Image.Image, size: int = 224) -> torch.Tensor:
    """OpenAI CLIP / open_clip eval transform (torchvision on PIL): Resize(bicubic) + CenterCrop."""
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])
    return _to_normalised(tf(im))


def pil_hps_letterbox(im: Image.Image, size: int = 224) -> torch.Tensor:
    """HPS v2's ResizeMaxSize: longest side → size (bicubic), centred on a black canvas."""
    w, h = im.size
    scale = size / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(
        im.resize((nw, nh), Image.Resampling.BICUBIC), ((size - nw) // 2, (size - nh) // 2)
    )
    return _to_normalised(canvas)


def hf_clip_processor(im: Image.Image) -> torch.Tensor:
    """PickScore's processor (laion/CLIP-ViT-H-14's CLIPImageProcessor, PIL backend)."""
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None)
    if cls is None:
        from transformers.models.clip import CLIPImageProcessorPil as cls  # noqa: N813
    proc = cls(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return proc(images=[im], return_tensors="pt").pixel_values[0]


PIL_RECIPES = {
    "clipscore.vit-b-32": pil_clip_transform,
    "clipscore.laion-vit-b-32": pil_clip_transform,
    "pickscore.v1": hf_clip_processor,
    "hpsv2.v2-1": pil_hps_letterbox,
    "aesthetic.laion-v2": pil_clip_transform,
}


# -- the contract, with tiny checkpoints -----------------------------------------------------


def test_every_vision_entry_has_a_tiny_builder():
    assert set(VISION) <= set(TINY), sorted(set(VISION) - set(TINY))
    for name in VISION:
        spec = mmreward.get_spec(name)
        assert spec.weights is not None and (spec.weights.hub_id or spec.weights.url)
        assert spec.preprocess and spec.kwargs.get("preprocess") == dict(spec.preprocess)
        assert spec.license and spec.paper


@pytest.mark.parametrize("name", VISION)
def test_contract_on_tiny_checkpoint(name, load, tmp_path):
    rm = load(name)
    assert rm.reward_name == name and not rm.training and rm.differentiable
    assert rm.native_resolution == tuple(rm.preprocess.size)
    x = (0.05 + 0.9 * _images(rm)).requires_grad_(True)
    fields = _fields(rm, x)
    out = rm(RewardInput(**fields))
    assert out.scores.shape == (3,) and out.scores.dtype == torch.float32
    assert torch.isfinite(out.scores).all()
    out.scores.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        fields = _fields(rm, x.detach())
        ref = rm(RewardInput(**fields)).scores
        torch.testing.assert_close(rm.score(**fields).scores, ref)
        alone = torch.cat([rm(RewardInput(**fields).select([i])).scores for i in range(3)])
        torch.testing.assert_close(alone, ref, rtol=1e-5, atol=1e-5)
        half = copy.deepcopy(rm).to(torch.bfloat16)
        bf16 = half(RewardInput(**fields).to(dtype=torch.bfloat16)).scores
        assert (bf16.float() - ref).abs().max() <= 0.05 * ref.abs().max()
    # save_pretrained → mmreward.load(dir): rebuilt from the saved config alone, identical
    rm.save_pretrained(tmp_path / "saved")
    again = mmreward.load(tmp_path / "saved")
    assert type(again) is type(rm) and again.reward_name == name
    with torch.no_grad():
        assert torch.equal(again(RewardInput(**fields)).scores, ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_load_with_dtype_and_sdpa(dtype, load):
    rm = load("pickscore.v1")
    low = load("pickscore.v1", dtype=dtype)
    assert rm.backbone.model.config._attn_implementation == "sdpa"
    assert all(p.dtype == dtype for p in low.parameters())
    x = _images(rm)
    with torch.no_grad():
        ref, got = rm(**_fields(rm, x)).scores, low(**_fields(rm, x)).scores
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=0.03, atol=0.0)


# -- preprocessing: tensor ops vs the published PIL recipes --------------------------------


def _reference(rm, recipe, arrays: list[np.ndarray], prompts: list[str]) -> torch.Tensor:
    pixels = torch.stack([recipe(Image.fromarray(a)) for a in arrays])
    with torch.no_grad():
        kwargs = {"prompts": prompts} if "prompts" in rm.inputs else {}
        return rm.score_preprocessed(pixels, **kwargs).scores


@pytest.mark.parametrize("name", sorted(PIL_RECIPES))
def test_tensor_preprocessing_matches_pil_recipe(name, load, photos):
    rm = load(name)
    arrays = list(photos.values())
    prompts = [f"a photo of {k.split('_')[0]}" for k in photos]
    ours = rm.score(arrays, prompts=prompts if "prompts" in rm.inputs else None).scores
    ref = _reference(rm, PIL_RECIPES[name], arrays, prompts)
    rel = (ours - ref).abs() / ref.abs().clamp_min(1e-8)
    assert ref.abs().min() > 0.05, ref  # the comparison is not between near-zero scores
    assert rel.max() <= REL_TOL, dict(zip(photos, rel.tolist()))


def test_hps_letterbox_is_not_a_centre_crop(load, photos):
    """The check above has power: centre-cropping for HPS is caught at 1 %."""
    rm = load("hpsv2.v2-1")
    arrays = [photos["coffee_120x360"], photos["rocket_427x640"]]
    prompts = ["a photo of coffee", "a photo of rocket"]
    ours = rm.score(arrays, prompts=prompts).scores
    cropped = _reference(rm, pil_clip_transform, arrays, prompts)
    assert ((ours - cropped).abs() / cropped.abs()).max() > REL_TOL


# -- scores faithful to the original formulas ----------------------------------------------


def _hf_reference_model(root: Path):
    from transformers import AutoTokenizer, CLIPModel

    d = hf_clip_dir(root / "clip", tokenizer_files=False)
    write_hf_clip_tokenizer(d)
    return d, CLIPModel.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers ≥ 5


def _hf_cos(model, tok, pixels, texts) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        img = _features(model.get_image_features(pixel_values=pixels))
        txt = _features(model.get_text_features(**enc))
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return (img * txt).sum(-1), model.logit_scale.exp().detach()


def _square_batch(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """224×224 images (preprocessing is then only the normalisation) and their normalised pixels."""
    x = torch.rand(n, 3, 224, 224)
    mean = torch.tensor(MEANS["openai_clip"]).view(1, 3, 1, 1)
    std = torch.tensor(STDS["openai_clip"]).view(1, 3, 1, 1)
    return x, (x - mean) / std


def test_pickscore_is_logit_scale_times_cosine(tmp_path, tiny_kwargs):
    d, ref, tok = _hf_reference_model(tmp_path)
    x, pixels = _square_batch()
    cos, scale = _hf_cos(ref, tok, pixels, PROMPTS)
    for tokenizer in (None, str(d)):  # the bundled CLIP BPE and the checkpoint's HF tokenizer
        rm = mmreward.load("pickscore.v1", weights=d, tokenizer=tokenizer)
        out = rm(images=x, prompts=PROMPTS)
        torch.testing.assert_close(out.scores, scale * cos, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.extras["cosine"], cos, rtol=1e-5, atol=1e-6)


def test_clipscore_formulas(tmp_path):
    d, ref, tok = _hf_reference_model(tmp_path)
    x, pixels = _square_batch()
    cos, _ = _hf_cos(ref, tok, pixels, ["A photo depicts " + p for p in PROMPTS])
    original = mmreward.load("clipscore.vit-b-32", weights=d)
    torch.testing.assert_close(
        original(images=x, prompts=PROMPTS).scores, 2.5 * cos.clamp_min(0), rtol=1e-5, atol=1e-5
    )
    cos_plain, _ = _hf_cos(ref, tok, pixels, PROMPTS)
    tm = mmreward.load("clipscore.torchmetrics-vit-l-14", weights=d)
    torch.testing.assert_close(
        tm(images=x, prompts=PROMPTS).scores, (100 * cos_plain).clamp_min(0), rtol=1e-5, atol=1e-4
    )
    # max(cos, 0): flip the image embedding → negative cosines score exactly 0, no gradient
    with torch.no_grad():
        original.backbone.model.visual_projection.weight.neg_()
    xg = x.clone().requires_grad_(True)
    s = original(images=xg, prompts=PROMPTS).scores
    assert torch.equal(s, torch.zeros(3))
    s.sum().backward()
    assert xg.grad.abs().sum() == 0


def test_hpsv2_is_the_official_cosine(tiny_kwargs, photos):
    """The official hpsv2.score computation (one image per forward, open_clip, PIL letterbox)."""
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    kw = tiny_kwargs("hpsv2.v2-1")
    ref = CLIP(**TINY_OPEN_CLIP, output_dict=True).eval()
    ref.load_state_dict(torch.load(kw["weights"], weights_only=True)["state_dict"])
    tokenizer = SimpleTokenizer()
    arrays = [photos["coffee_400x600"], photos["astronaut_96x64"], photos["chelsea_300x451"]]
    expected = []
    for arr, prompt in zip(arrays, PROMPTS):
        image = pil_hps_letterbox(Image.fromarray(arr))[None]
        with torch.no_grad():
            out = ref(image, tokenizer([prompt]))
            logits = out["image_features"] @ out["text_features"].T
        expected.append(torch.diagonal(logits)[0])
    rm = mmreward.load("hpsv2.v2-1", **kw)
    got = rm.score(arrays, prompts=PROMPTS).scores
    torch.testing.assert_close(got, torch.stack(expected), rtol=REL_TOL, atol=0.0)


def test_aesthetic_is_the_mlp_on_the_normalised_embedding(tmp_path, photos):
    from transformers import CLIPModel

    d = hf_clip_dir(tmp_path / "clip")
    pth = aesthetic_pth(tmp_path / "mlp.pth", TINY_HF_CLIP["projection_dim"])
    mlp = nn.Sequential(
        nn.Linear(32, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    ).eval()
    mlp.load_state_dict({k.removeprefix("layers."): v for k, v in torch.load(pth).items()})
    clip = CLIPModel.from_pretrained(d).eval()
    arrays = [photos["astronaut_512x512"], photos["coffee_400x600"]]
    expected = []
    for arr in arrays:  # the official script: encode, normalise in numpy, MLP in float32
        with torch.no_grad():
            emb = _features(
                clip.get_image_features(pixel_values=pil_clip_transform(Image.fromarray(arr))[None])
            )
        emb = emb.numpy()
        emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
        with torch.no_grad():
            expected.append(mlp(torch.from_numpy(emb).float())[0, 0])
    rm = mmreward.load("aesthetic.laion-v2", weights=pth, clip_weights=d)
    assert rm.inputs == ("images",)
    got = rm.score(arrays).scores
    torch.testing.assert_close(got, torch.stack(expected), rtol=REL_TOL, atol=0.0)


def test_bundled_tokenizer_equals_hf_clip_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    from vision_rm.clip_backbone import ClipTokenizer

    d = write_hf_clip_tokenizer(tmp_path / "tok")
    hf = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    texts = ["A photo depicts an astronaut!", "ÜNÏCÖDÉ   spaces,  3.5kg", "word " * 100]
    ours = ClipTokenizer()(texts)
    ref = hf(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    for a, b, m in zip(ours, ref.input_ids, ref.attention_mask):
        n = int(m.sum())
        assert a[:n].tolist() == b[:n].tolist()  # same tokens, SOT … EOT (EOT kept on truncation)
        assert a[n - 1].item() == ClipTokenizer().eot_id


@pytest.mark.parametrize("name", ["hpsv2.v2-1", "pickscore.v1"])
def test_text_trimmed_at_eot_equals_full_context(name, load):
    """Causal text towers pooled at EOT: dropping the padding changes nothing."""
    bb = load(name).backbone
    prompts = ["a cat", "a much longer prompt about a dog running on a beach", "word " * 90]
    ids = bb.tokenizer(prompts)  # padded to 77
    with torch.no_grad():
        if bb.kind == "open_clip":
            full = bb.model.encode_text(ids)
        else:
            full = bb.model.text_projection(bb.model.text_model(input_ids=ids).pooler_output)
        torch.testing.assert_close(bb.encode_text(prompts), full, rtol=1e-5, atol=1e-6)
        short = bb.encode_text(prompts[:2])  # a batch of short prompts runs on ~12 tokens
    torch.testing.assert_close(short, full[:2], rtol=1e-5, atol=1e-6)


def test_repeated_prompts_are_encoded_once(load):
    rm = load("pickscore.v1")
    calls = []
    model = rm.backbone.model
    hook = model.text_model.register_forward_hook(lambda m, i, o: calls.append(o[0].shape[0]))
    x = torch.rand(4, 3, 224, 224)
    with torch.no_grad():
        s = rm(images=x, prompts=["a cat", "a dog", "a cat", "a cat"]).scores
        s2 = torch.cat(
            [
                rm(images=x[i : i + 1], prompts=[p]).scores
                for i, p in enumerate(["a cat", "a dog", "a cat", "a cat"])
            ]
        )
    hook.remove()
    assert calls[0] == 2
    torch.testing.assert_close(s, s2, rtol=1e-5, atol=1e-5)


# -- strict loading ----------------------------------------------------------------------------


def _edit_hf_dir(src: Path, dst: Path, edit, **config) -> Path:
    dst.mkdir(parents=True)
    cfg = {**json.loads((src / "config.json").read_text()), **config}
    (dst / "config.json").write_text(json.dumps(cfg))
    sd = load_file(str(src / "model.safetensors"))
    save_file(edit(dict(sd)), str(dst / "model.safetensors"))
    return dst


def test_strict_loading_transformers_dir(tmp_path, tiny_kwargs):
    src = Path(tiny_kwargs("pickscore.v1")["weights"])
    missing = "text_model.final_layer_norm.bias"

    def edit(sd):
        sd.pop(missing)
        sd["vision_model.extra_head.weight"] = torch.zeros(2)
        return sd

    bad = _edit_hf_dir(src, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError) as e:
        mmreward.load("pickscore.v1", weights=bad)
    assert e.value.missing == [missing]
    assert e.value.unexpected == ["vision_model.extra_head.weight"]
    assert missing in str(e.value) and "extra_head" in str(e.value)
    # checkpoints from transformers < 4.31 carry the position_ids buffers: accepted by name;
    # a config saying float16 still gives an fp32 model (dtype= on load decides)
    legacy = _edit_hf_dir(
        src,
        tmp_path / "legacy",
        lambda sd: {
            **{k: v.half() for k, v in sd.items()},
            "text_model.embeddings.position_ids": torch.arange(77)[None],
            "vision_model.embeddings.position_ids": torch.arange(50)[None],
        },
        torch_dtype="float16",
    )
    rm = mmreward.load("pickscore.v1", weights=legacy)
    assert all(p.dtype == torch.float32 for p in rm.parameters())


def test_strict_loading_open_clip_and_heads(tmp_path, tiny_kwargs):
    sd = torch.load(tiny_kwargs("hpsv2.v2-0")["weights"], weights_only=True)["state_dict"]
    sd.pop("ln_final.weight")
    sd["score_predictor.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd}, tmp_path / "HPS_v2_compressed.pt")
    with pytest.raises(CheckpointError) as e:
        mmreward.load(
            "hpsv2.v2-0",
            weights=tmp_path / "HPS_v2_compressed.pt",
            open_clip_config=TINY_OPEN_CLIP,
        )
    assert e.value.missing == ["ln_final.weight"] and e.value.unexpected == [
        "score_predictor.weight"
    ]
    # wrong size (an open_clip config that does not fit the file) lists the shapes
    wider = json.loads(json.dumps(TINY_OPEN_CLIP))
    wider["embed_dim"] = 48
    with pytest.raises(CheckpointError, match="shape mismatches"):
        mmreward.load("hpsv2.v2-0", **{**tiny_kwargs("hpsv2.v2-0"), "open_clip_config": wider})
    # the aesthetic MLP
    kw = tiny_kwargs("aesthetic.laion-v2")
    mlp = torch.load(kw["weights"], weights_only=True)
    mlp.pop("layers.7.bias")
    torch.save(mlp, tmp_path / "mlp.pth")
    with pytest.raises(CheckpointError, match=r"layers\.7\.bias"):
        mmreward.load("aesthetic.laion-v2", **{**kw, "weights": tmp_path / "mlp.pth"})
    # a timm backbone: the classifier is dropped by name, anything else extra is an error
    kw = tiny_kwargs("timm-head.resnet50-a1-in1k")
    sd = load_file(kw["weights"])
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"layer5\.0\.conv1\.weight"):
        mmreward.load(
            "timm-head.resnet50-a1-in1k", **{**kw, "weights": tmp_path / "model.safetensors"}
        )


def test_missing_weights_say_where_to_put_them(tmp_path):
    with pytest.raises(mmreward.WeightsNotFoundError, match="HPS_v2.1_compressed.pt"):
        mmreward.load("hpsv2.v2-1", local_files_only=True)
    with pytest.raises(FileNotFoundError, match="open_clip_config"):
        mmreward.load("pickscore.v1", weights=tmp_path)  # not a transformers directory
    pth = aesthetic_pth(tmp_path / "mlp.pth", 32)
    with pytest.raises(mmreward.WeightsNotFoundError, match="clip_weights"):
        mmreward.load("aesthetic.laion-v2", weights=pth)  # the CLIP backbone is not cached


def test_preprocess_resolution_must_match_the_checkpoint(tiny_kwargs):
    kw = tiny_kwargs("pickscore.v1")
    with pytest.raises(ValueError, match="resolution"):
        mmreward.load("pickscore.v1", **kw, preprocess={"resolution": 336, "crop": "center"})


# -- bad and unusual inputs -------------------------------------------------------------------


def test_unusual_images_are_converted(load, photos):
    rm = load("hpsv2.v2-1")
    rgb = photos["chelsea_300x451"]
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    rgba = Image.fromarray(rgb).convert("RGBA")
    rgba.putalpha(128)
    sixteen = Image.fromarray(grey.astype(np.uint16) * 257)  # mode I;16
    tiny = rgb[:8, :8]
    large = np.asarray(Image.fromarray(rgb).resize((2048, 1360)))
    out = rm.score([grey, rgba, sixteen, tiny, large], prompts="a cat").scores
    assert out.shape == (5,) and torch.isfinite(out).all()
    grey_rgb = rm.score([np.repeat(grey[..., None], 3, axis=-1)], prompts="a cat").scores
    torch.testing.assert_close(out[0], grey_rgb[0])  # grey → RGB by repetition
    torch.testing.assert_close(out[2], out[0], rtol=1e-3, atol=0.0)  # 16-bit = 8-bit content
    white = Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba).convert("RGB")
    torch.testing.assert_close(
        out[1], rm.score([white], prompts="a cat").scores[0], rtol=2e-3, atol=0.0
    )


def test_bad_inputs_are_clear_errors(load):
    rm = load("pickscore.v1")
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(InputError, match="divide by 255"):
        rm.score(x * 255, prompts="a cat")
    with pytest.raises(InputError, match=r"\[-1,1\]"):
        rm(images=x * 2 - 1, prompts=["a", "b"])
    with pytest.raises(InputError, match="prompts"):
        rm.score(x, prompts=["only one", "two", "three"])
    with pytest.raises(InputError, match="batch"):
        rm(images=x, prompts=["only one"])
    with pytest.raises(InputError, match="empty string"):
        rm(images=x, prompts=["a cat", "  "])
    with pytest.raises(InputError, match="prompts"):
        rm(images=x)
    with pytest.raises(InputError, match="grayscale/RGBA"):
        rm(images=torch.rand(2, 1, 64, 64), prompts=["a", "b"])
    with pytest.raises(InputError, match="integer|dtype"):
        rm(images=(x * 255).to(torch.uint8), prompts=["a", "b"])
    aesthetic = load("aesthetic.laion-v2")
    assert aesthetic.score(x).scores.shape == (2,)  # image-only: no prompts needed


# -- trainable heads ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    from mmreward.synthetic import write_sharpness_preferences

    return write_sharpness_preferences(tmp_path_factory.mktemp("pairs"), n_train=48, n_eval=32)


def _train(model, out: Path, pairs, **cfg):
    from mmreward.train import RewardModelTrainer, TrainConfig

    base = dict(
        output_dir=str(out),
        train_file=str(pairs["train"]),
        eval_file=str(pairs["eval"]),
        batch_size=16,
        progress=False,
        log_every=1,
        cpu=True,
    )
    result = RewardModelTrainer(model, TrainConfig.from_dict({**base, **cfg})).train()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    return result, losses


@pytest.fixture(scope="module")
def colour_pairs(tmp_path_factory):
    """Pairs of one digit in red and in blue (random order), red preferred.

    A frozen random tiny CLIP barely sees blur (pair embeddings differ by ~0.003) but does
    see colour, so this is the preference a head on it can learn in a few steps.
    """
    from mmreward.synthetic import colourise, digit_images

    root = tmp_path_factory.mktemp("colour_pairs")
    (root / "img").mkdir()
    digits, _ = digit_images(32)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        names = []
        for colour, rgb in (("red", (0.9, 0.1, 0.1)), ("blue", (0.1, 0.2, 0.9))):
            arr = (colourise(digits[i], rgb).permute(1, 2, 0).numpy() * 255).round()
            Image.fromarray(arr.astype(np.uint8)).save(root / "img" / f"{i}_{colour}.png")
            names.append(f"img/{i}_{colour}.png")
        flip = bool(rng.integers(2))
        rows.append(
            {"prompt": "a red digit", "images": names[::-1] if flip else names, "choice": int(flip)}
        )
    paths = {}
    for split, part in (("train", rows[:32]), ("eval", rows[32:])):
        paths[split] = root / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


@torch.no_grad()
def _train_set_loss(model, pairs) -> float:
    """The Bradley-Terry loss over the whole training file (eval mode, ties skipped)."""
    from mmreward.data import Collator, load_examples
    from mmreward.train import TrainConfig, compute_loss

    model.eval()
    batch = Collator("pairwise", model.native_resolution)(load_examples(pairs["train"], "pairwise"))
    return compute_loss(model, batch, TrainConfig(objective="pairwise"))[0].item()


def test_timm_head_learns_sharpness_and_round_trips(load, pairs, tmp_path):
    from mmreward.data import load_examples
    from mmreward.train import evaluate

    model = load("timm-head.resnet50-a1-in1k")
    ev = load_examples(pairs["eval"], "pairwise")
    before = evaluate(model, ev, "pairwise")["accuracy_without_ties"]
    result, losses = _train(model, tmp_path, pairs, epochs=4, lr=3e-3)
    after = result["eval/accuracy_without_ties"]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert after >= 0.75 and after > before + 0.1, (before, after)
    loaded = mmreward.load(tmp_path / "model")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images=x).scores, model.eval()(images=x).scores)


@pytest.mark.parametrize("tuning", ["frozen", "lora"])
def test_clip_head_trains_and_round_trips(tuning, load, colour_pairs, tmp_path):
    name = "clip-head.openai-vit-l-14"
    model = load(name, tuning=tuning)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("head.") for n in trainable)
    if tuning == "frozen":
        assert all(n.startswith("head.") for n in trainable)
    else:
        backbone = {n for n in trainable if not n.startswith("head.")}
        assert backbone and all("lora_" in n and "vision_model" in n for n in backbone)
    frozen_before = {
        n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad
    }
    before = _train_set_loss(model, colour_pairs)
    result, _ = _train(model, tmp_path, colour_pairs, max_steps=8, batch_size=8, lr=1e-2)
    after = _train_set_loss(model, colour_pairs)
    assert after < before - 0.02, (before, after)  # the trainer minimises the BT objective
    assert result["eval/accuracy_without_ties"] >= 0.75
    for n, p in model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n  # frozen weights did not move
    loaded = mmreward.load(tmp_path / "model")
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        ref = model.eval()(images=x, prompts=["a sharp red seven", "a sharp red seven"]).scores
        got = loaded(images=x, prompts=["a sharp red seven", "a sharp red seven"]).scores
    assert torch.equal(got, ref)


def test_clip_head_listwise_objective(load, tmp_path):
    from mmreward.synthetic import colourise, digit_images, gaussian_blur

    digits, _ = digit_images(32)
    rows = []
    (tmp_path / "img").mkdir()
    for i in range(8):
        base = colourise(digits[i], (0.9, 0.2, 0.2))
        names = []
        for k, sigma in enumerate((0.0, 1.0, 2.0)):
            arr = (gaussian_blur(base, sigma).permute(1, 2, 0).numpy() * 255).round()
            Image.fromarray(arr.astype(np.uint8)).save(tmp_path / "img" / f"{i}_{k}.png")
            names.append(f"img/{i}_{k}.png")
        rows.append({"prompt": "a sharp red digit", "images": names, "ranking": [1, 2, 3]})
    (tmp_path / "lists.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = load("clip-head.laion-vit-h-14")
    from mmreward.train import RewardModelTrainer, TrainConfig

    cfg = TrainConfig.from_dict(
        dict(
            output_dir=str(tmp_path / "run"),
            objective="listwise",
            train_file=str(tmp_path / "lists.jsonl"),
            batch_size=4,
            max_steps=6,
            lr=3e-3,
            log_every=1,
            progress=False,
            cpu=True,
        )
    )
    RewardModelTrainer(model, cfg).train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


# -- the official hpsv2 package (optional) -------------------------------------------------------


def _import_hpsv2():
    try:
        from hpsv2.src.open_clip import get_tokenizer
        from hpsv2.src.open_clip.model import CLIP
        from hpsv2.src.open_clip.transform import image_transform
    except Exception as e:  # not installed, or its BPE vocabulary file is missing (hpsv2 1.2.0)
        pytest.skip(f"hpsv2 not importable: {type(e).__name__}: {e}")
    return CLIP, get_tokenizer, image_transform


def test_matches_official_hpsv2_package(tiny_kwargs, photos):
    """hpsv2's own model, transform and scoring code (its img_score.score loop, no autocast)."""
    CLIP, get_tokenizer, image_transform = _import_hpsv2()
    kw = tiny_kwargs("hpsv2.v2-1")
    model = CLIP(**TINY_OPEN_CLIP, output_dict=True).eval()
    model.load_state_dict(torch.load(kw["weights"], weights_only=True)["state_dict"])
    preprocess_val = image_transform(224, is_train=False, resize_longest_max=True)
    tokenizer = get_tokenizer("ViT-H-14")
    arrays = list(photos.values())
    prompt = "a photo of a cat"
    expected = []
    for arr in arrays:
        image = preprocess_val(Image.fromarray(arr)).unsqueeze(0)
        with torch.no_grad():
            out = model(image, tokenizer([prompt]))
            logits = out["image_features"] @ out["text_features"].T
        expected.append(torch.diagonal(logits)[0])
    got = mmreward.load("hpsv2.v2-1", **kw).score(arrays, prompts=prompt).scores
    # hpsv2 1.2.0 resizes tensors (ToTensor → antialiased bicubic → pad): equal to round-off
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-5, atol=1e-6)
