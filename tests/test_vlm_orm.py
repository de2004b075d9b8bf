"""VLM outcome reward head: last-token reading, padding, checkpoints, LoRA, BT training."""

from __future__ import annotations

import copy

import pytest
import torch

import mmreward
from mmreward.data import PreferenceExample
from mmreward.errors import CheckpointError
from mmreward.train import TrainConfig
from vision_rm.vlm.orm import VLMOutcomeReward, build_vlm_orm, new_orm
from vision_rm.vlm.tiny import build_tiny_qwen2vl, write_tiny_checkpoint
from vision_rm.vlm.train import VLMRewardTrainer, evaluate_pairs

PROMPTS = ["What is in the image?", "What is the sum?", "Describe it."]
RESPONSES = ["A digit.", "The answer is 8.", "Two digits side by side, a red 3 and a red 5."]


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_qwen2vl(seed=0)


@pytest.fixture()
def orm(tiny):
    model, processor = tiny
    return new_orm(copy.deepcopy(model), processor).eval()


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_head_reads_the_last_token(orm):
    images = _images()
    with torch.no_grad():
        scores = orm(prompts=PROMPTS, responses=RESPONSES, images=images).scores
        for i in range(3):  # unpadded, by hand: head(h[-1])
            conv = orm.conversation(PROMPTS[i], RESPONSES[i], image=True)
            text = orm.processor.apply_chat_template(conv, tokenize=False)
            enc = orm.processor(
                text=[text], images=[images[i]], return_tensors="pt",
                images_kwargs={"do_rescale": False},
            )  # fmt: skip
            h = orm.backbone.model(**enc).last_hidden_state[0, -1]
            torch.testing.assert_close(scores[i], orm.head(h)[0], atol=1e-5, rtol=1e-4)


def test_padding_side_and_batch_size_do_not_change_scores(orm):
    images = _images()
    with torch.no_grad():
        left = orm(prompts=PROMPTS, responses=RESPONSES, images=images).scores
        orm.padding_side = "right"
        right = orm(prompts=PROMPTS, responses=RESPONSES, images=images).scores
    single = orm.score(images, PROMPTS, responses=RESPONSES, batch_size=1).scores
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(left, single, atol=1e-5, rtol=1e-4)
    assert left.std() > 0  # different inputs, different scores


def test_compare_and_rank(orm):
    image = _images(1)[0]
    order, scores = orm.rank(RESPONSES, "What is the sum?", images=image)
    assert order == torch.argsort(scores, descending=True).tolist()
    p = orm.compare([RESPONSES[0]], [RESPONSES[1]], "What is the sum?", images=image)
    expected = torch.sigmoid(scores[0] - scores[1])
    torch.testing.assert_close(p[0], expected, atol=1e-5, rtol=1e-4)


def test_checkpoint_value_head_and_strict_loading(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = write_tiny_checkpoint(tmp_path / "skywork", value_head=True)
    rm = mmreward.load("vlm-orm.skywork-vl-reward-7b", weights=folder)
    head = load_file(str(folder / "value_head.safetensors"))
    torch.testing.assert_close(rm.head.weight.data, head["v_head.summary.weight"])
    torch.testing.assert_close(rm.head.bias.data, head["v_head.summary.bias"])
    # a head of the wrong width is reported, not silently re-initialised
    save_file({"v_head.summary.weight": torch.zeros(1, 7)}, str(folder / "value_head.safetensors"))
    with pytest.raises(CheckpointError, match="v_head.summary.weight"):
        build_vlm_orm(folder)
    save_file({"v_head.summary.kernel": torch.zeros(1, 64)}, str(folder / "value_head.safetensors"))
    with pytest.raises(CheckpointError, match="kernel"):
        build_vlm_orm(folder)
    (folder / "value_head.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        mmreward.load("vlm-orm.skywork-vl-reward-7b", weights=folder)  # require_head
    assert isinstance(build_vlm_orm(folder), VLMOutcomeReward)  # a fresh head for training


def test_save_load_round_trip_and_lora(tiny, tmp_path):
    model, processor = tiny
    rm = new_orm(copy.deepcopy(model), processor, lora={"r": 4, "lora_alpha": 8})
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert {"head.weight", "head.bias"} <= trainable
    with torch.no_grad():
        for n, p in rm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # adapters that change the output
    rm.eval()
    images = _images()
    before = rm.score(images, PROMPTS, responses=RESPONSES).scores
    rm.save_pretrained(tmp_path / "orm")
    loaded = mmreward.load(tmp_path / "orm")
    torch.testing.assert_close(loaded.score(images, PROMPTS, responses=RESPONSES).scores, before)
    merged = rm.merge_lora().score(images, PROMPTS, responses=RESPONSES).scores
    torch.testing.assert_close(merged, before, atol=1e-5, rtol=1e-4)


def _colour_pairs(n: int, seed: int) -> list[PreferenceExample]:
    """The better answer names the image's colour (red or blue)."""
    g = torch.Generator().manual_seed(seed)
    colours = {"red": (0.9, 0.1, 0.1), "blue": (0.1, 0.2, 0.9)}
    out = []
    for i in range(n):
        name = "red" if i % 2 == 0 else "blue"
        other = "blue" if name == "red" else "red"
        img = torch.tensor(colours[name]).view(3, 1, 1) * (
            0.8 + 0.2 * torch.rand(1, 32, 32, generator=g)
        )
        swap = bool(torch.rand(1, generator=g) < 0.5)
        cands = (
            [f"It is {other}.", f"It is {name}."] if swap else [f"It is {name}.", f"It is {other}."]
        )
        out.append(
            PreferenceExample(
                prompt="What colour is the digit?", kind="responses", candidates=cands,
                label=-1 if swap else 1, image=img.clamp(0, 1),
            )
        )  # fmt: skip
    return out


def test_bradley_terry_training_raises_heldout_accuracy(tiny, tmp_path):
    model, processor = tiny
    rm = new_orm(copy.deepcopy(model), processor)
    train, heldout = _colour_pairs(32, seed=0), _colour_pairs(24, seed=1)
    before = evaluate_pairs(rm, heldout)["accuracy_without_ties"]
    cfg = TrainConfig(
        output_dir=str(tmp_path / "run"), objective="pairwise", max_steps=40, batch_size=8,
        lr=1e-3, log_every=10, cpu=True, progress=False,
    )  # fmt: skip
    result = VLMRewardTrainer(rm, cfg, train, heldout).train(resume=False)
    assert result["eval/accuracy_without_ties"] >= 0.9 > before + 0.2
    assert (tmp_path / "run" / "model" / "mmreward.json").is_file()
    reloaded = mmreward.load(tmp_path / "run" / "model")
    assert (
        evaluate_pairs(reloaded, heldout)["accuracy_without_ties"]
        == result["eval/accuracy_without_ties"]
    )


def test_videos_and_text_only_inputs(orm):
    videos = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        both = orm(prompts=PROMPTS[:2], responses=RESPONSES[:2], videos=videos).scores
        first = orm(prompts=PROMPTS[:1], responses=RESPONSES[:1], videos=videos[:1]).scores
        text = orm(prompts=PROMPTS[:2], responses=RESPONSES[:2]).scores
    assert torch.isfinite(both).all()
    torch.testing.assert_close(both[:1], first, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(both, text)  # the video is read
