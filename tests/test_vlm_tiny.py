"""The tiny Qwen2-VL builder: tokenizer, processor and model handle images AND videos."""

from __future__ import annotations

import pytest
import torch

from vision_rm.vlm.tiny import (
    SPECIAL_TOKENS,
    build_tiny_qwen2vl,
    load_tiny,
    save_tiny,
    write_tiny_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_qwen2vl(seed=0)


def _chat(processor, kind: str, text: str) -> str:
    messages = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_special_tokens_and_config_ids_agree(tiny):
    model, processor = tiny
    tok = processor.tokenizer
    for t in SPECIAL_TOKENS:
        assert tok.tokenize(t) == [t]  # never split
    cfg = model.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert cfg.text_config.vocab_size == len(tok)
    assert cfg.text_config.num_hidden_layers == 2 and cfg.vision_config.depth == 2
    text = _chat(processor, "image", "What is it?")
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>What is it?" in text


def test_images_go_through_processor_and_model(tiny):
    model, processor = tiny
    images = [torch.rand(3, 32, 32), torch.rand(3, 32, 64)]  # two sizes in one batch
    texts = [_chat(processor, "image", "a"), _chat(processor, "image", "what digits?")]
    enc = processor(
        text=texts, images=images, padding=True, return_tensors="pt",
        images_kwargs={"do_rescale": False},
    )  # fmt: skip
    # 32×32 → 8×8 patches of 4 px → 2×2 merge → 16 tokens; 32×64 → 32 tokens
    assert enc["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 16]]
    n_img = (enc["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert n_img == [16, 32]
    with torch.no_grad():
        out = model(**enc)
    assert out.logits.shape == (*enc["input_ids"].shape, len(processor.tokenizer))
    assert torch.isfinite(out.logits).all()
    # the image changes the output (the vision tower is wired in)
    enc2 = processor(
        text=texts, images=[torch.zeros(3, 32, 32), images[1]], padding=True,
        return_tensors="pt", images_kwargs={"do_rescale": False},
    )  # fmt: skip
    with torch.no_grad():
        out2 = model(**enc2)
    assert not torch.allclose(out.logits[0, -1], out2.logits[0, -1])
    assert torch.allclose(out.logits[1, -1], out2.logits[1, -1], atol=1e-5)


def test_videos_go_through_processor_and_model(tiny):
    model, processor = tiny
    video = torch.rand(4, 3, 32, 32)  # (T, C, H, W) in [0, 1]
    enc = processor(
        text=[_chat(processor, "video", "Describe the video.")], videos=[video],
        return_tensors="pt", videos_kwargs={"do_rescale": False},
    )  # fmt: skip
    # 4 frames / temporal patch 2 = 2, 8×8 patches → 2·64/4 = 32 video tokens
    assert enc["video_grid_thw"].tolist() == [[2, 8, 8]]
    assert int((enc["input_ids"] == model.config.video_token_id).sum()) == 32
    with torch.no_grad():
        logits = model(**enc).logits
    assert torch.isfinite(logits).all()


def test_save_and_load_through_from_pretrained(tiny, tmp_path):
    model, processor = tiny
    folder = save_tiny(model, processor, tmp_path / "tiny")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    model2, processor2 = load_tiny(folder)
    assert type(model2) is type(model) and type(processor2) is type(processor)
    text = _chat(processor, "image", "a question")
    image = torch.rand(3, 32, 32)
    kw = {"return_tensors": "pt", "images_kwargs": {"do_rescale": False}}
    enc = processor(text=[text], images=[image], **kw)
    enc2 = processor2(text=[text], images=[image], **kw)
    assert torch.equal(enc["input_ids"], enc2["input_ids"])
    assert torch.allclose(enc["pixel_values"], enc2["pixel_values"])
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, model2(**enc2).logits)


def test_seed_decides_the_weights():
    a, _ = build_tiny_qwen2vl(seed=1)
    b, _ = build_tiny_qwen2vl(seed=1)
    c, _ = build_tiny_qwen2vl(seed=2)
    wa, wb, wc = (m.lm_head.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_value_head_checkpoint_layout(tmp_path):
    from safetensors import safe_open

    folder = write_tiny_checkpoint(tmp_path / "rm", value_head=True)
    with safe_open(str(folder / "value_head.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["v_head.summary.bias", "v_head.summary.weight"]
        assert tuple(f.get_tensor("v_head.summary.weight").shape) == (1, 64)
