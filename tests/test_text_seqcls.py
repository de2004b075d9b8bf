"""Sequence-classifier reward models: padding invariance, last-token reading, LoRA, training."""

from __future__ import annotations

import json

import pytest
import torch

import mmreward
from mmreward import RewardInput
from mmreward.data import load_examples
from mmreward.text.hf import SIMPLE_CHAT_TEMPLATE, encode, pad_batch
from mmreward.text.seqcls import SequenceClassifierReward, build_sequence_classifier
from mmreward.text.synthetic import TextWorld, write_pairs_jsonl
from mmreward.train import RewardModelTrainer, TrainConfig, evaluate
from tests.tiny.text import checkpoint

PROMPTS = [
    "Write a short note about the river.",
    "hi",
    "What is 2 + 3?",
    "a photo of a cat",
    "Write a short note about the robot.",
    "?",
    "Tell me something kind and clear.",
    "ok",
]
RESPONSES = [
    "clear kind helpful",
    "The answer is 5, because 2 + 3 = 5 and nothing else.",
    "5",
    "a cat on a grey wall, very vivid and precise",
    "wow",
    "honest careful useful words near the ocean today",
    "No.",
    "Yes, absolutely: amazing amazing amazing",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded (and do not fight other jobs for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request, tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp(f"seqcls_{request.param}"), "seqcls", request.param)


def test_padding_side_and_batch_size_do_not_change_rewards(model_dir):
    rm = build_sequence_classifier(model_dir).eval()
    kw = {"prompts": PROMPTS, "responses": RESPONSES, "sort_by_length": False}
    rm.padding_side = "right"
    right8 = rm.score(batch_size=8, **kw).scores
    rm.padding_side = "left"
    left8 = rm.score(batch_size=8, **kw).scores
    left1 = rm.score(batch_size=1, **kw).scores
    rm.padding_side = "right"
    right1 = rm.score(batch_size=1, **kw).scores
    sorted8 = rm.score(prompts=PROMPTS, responses=RESPONSES, batch_size=3).scores
    for other in (left8, left1, right1, sorted8):
        torch.testing.assert_close(other, right8, rtol=0, atol=1e-5)
    assert right8.std() > 1e-3  # the items really get different rewards
    # the two batches really are padded differently
    ids = encode(rm.tokenizer, [rm.format(p, r) for p, r in zip(PROMPTS, RESPONSES)])
    right_ids = pad_batch(ids, rm.tokenizer.pad_token_id, "right")[0]
    left_ids = pad_batch(ids, rm.tokenizer.pad_token_id, "left")[0]
    assert not torch.equal(right_ids, left_ids)


@torch.no_grad()
def test_reward_is_the_head_at_the_last_token_by_hand(model_dir):
    rm = build_sequence_classifier(model_dir).eval()
    scores = rm(RewardInput(prompts=PROMPTS, responses=RESPONSES)).scores
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        text = rm.tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
        )
        ids = torch.tensor([rm.tokenizer(text, add_special_tokens=False)["input_ids"]])
        assert ids[0, -1] == rm.tokenizer.eos_token_id  # the template ends the turn with eos
        hidden = rm.model.model(input_ids=ids).last_hidden_state[0, -1]
        torch.testing.assert_close(scores[i], rm.model.score(hidden)[0], rtol=0, atol=1e-5)


@torch.no_grad()
def test_pad_equal_to_eos_is_safe(model_dir):
    """Reading the last token from the mask; HF's pad-id pooling would pick the wrong token."""
    rm = build_sequence_classifier(model_dir).eval()
    ref = rm(RewardInput(prompts=PROMPTS, responses=RESPONSES)).scores
    rm.tokenizer.pad_token = rm.tokenizer.eos_token
    rm.model.config.pad_token_id = rm.tokenizer.eos_token_id
    for side in ("left", "right"):
        rm.padding_side = side
        got = rm(RewardInput(prompts=PROMPTS, responses=RESPONSES)).scores
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    # transformers' own pooling looks for the first pad (= eos) token: a different position
    text = rm.format(PROMPTS[0], RESPONSES[0])
    ids = torch.tensor([rm.tokenizer(text, add_special_tokens=False)["input_ids"]])
    hf = rm.model(input_ids=ids).logits[0, 0]
    assert not torch.allclose(hf, ref[0], atol=1e-4)


def test_chat_template_is_used_and_defaulted(model_dir):
    rm = build_sequence_classifier(model_dir)
    assert rm.format("Q?", "A.") == "<|bos|><|user|>Q?<|eos|><|assistant|>A.<|eos|>"
    custom = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    rm2 = build_sequence_classifier(model_dir, chat_template=custom)
    assert rm2.format("Q?", "A.") == "[user] Q?\n[assistant] A.\n"
    rm2.tokenizer.chat_template = None  # no template: the simple default one
    assert rm2.format("Q?", "A.") == rm.format("Q?", "A.")
    assert "eos_token" in SIMPLE_CHAT_TEMPLATE


def test_left_truncation_keeps_the_end(model_dir):
    rm = build_sequence_classifier(model_dir, max_length=6).eval()
    full = build_sequence_classifier(model_dir).eval()
    long_prompt = "Write a short note about the river. " * 5
    out = rm.score(prompts=[long_prompt], responses=["clear kind"]).scores
    ids = encode(full.tokenizer, [full.format(long_prompt, "clear kind")])[0][-6:]
    with torch.no_grad():
        hidden = full.model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        torch.testing.assert_close(out[0], full.model.score(hidden)[0], rtol=0, atol=1e-5)


def test_forward_keeps_gradients_for_parameters(model_dir):
    rm = build_sequence_classifier(model_dir).train()
    rm(RewardInput(prompts=PROMPTS[:4], responses=RESPONSES[:4])).scores.sum().backward()
    assert rm.model.score.weight.grad is not None and rm.model.score.weight.grad.abs().sum() > 0
    emb = rm.model.model.embed_tokens.weight.grad
    assert emb is not None and emb.abs().sum() > 0


def test_save_load_roundtrip_and_registry_errors(model_dir, tmp_path):
    rm = build_sequence_classifier(model_dir, max_length=64, trust_remote_code=False).eval()
    rm.reward_name = "seqcls.skywork-reward-llama-3.1-8b"
    ref = rm.score(prompts=PROMPTS, responses=RESPONSES).scores
    rm.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "mmreward.json").read_text())["kwargs"]
    assert saved["max_length"] == 64 and "trust_remote_code" not in saved
    assert saved["hf_config"]["config"]["model_type"] in ("llama", "qwen2")
    assert "tokenizer.json" in saved["hf_config"]["tokenizer_files"]
    loaded = mmreward.load(tmp_path / "saved")
    assert isinstance(loaded, SequenceClassifierReward) and loaded.max_length == 64
    torch.testing.assert_close(loaded.score(prompts=PROMPTS, responses=RESPONSES).scores, ref)
    with pytest.raises(ValueError, match="directory"):
        build_sequence_classifier(model_dir / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_sequence_classifier(tmp_path)
    with pytest.raises(ValueError, match="reward_label"):
        build_sequence_classifier(model_dir, reward_label=3)
    with pytest.raises(mmreward.WeightsNotFoundError, match="Skywork/Skywork-Reward-Llama"):
        mmreward.load("seqcls.skywork-reward-llama-3.1-8b", local_files_only=True)


def test_lora_trains_adapters_only_and_roundtrips(model_dir, tmp_path):
    torch.manual_seed(0)
    rm = build_sequence_classifier(model_dir, lora={"r": 4, "lora_alpha": 8})
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "score" in n for n in trainable)
    frozen_before = rm.model.model.embed_tokens.weight.detach().clone()
    opt = torch.optim.AdamW([p for p in rm.parameters() if p.requires_grad], lr=1e-2)
    rm.train()
    for _ in range(3):
        opt.zero_grad()
        s = rm(RewardInput(prompts=PROMPTS, responses=RESPONSES)).scores
        (-(s[:4].mean() - s[4:].mean())).backward()
        opt.step()
    rm.eval()
    assert torch.equal(rm.model.model.embed_tokens.weight, frozen_before)
    ref = rm.score(prompts=PROMPTS, responses=RESPONSES).scores
    rm.reward_name = "seqcls.skywork-reward-llama-3.1-8b"
    rm.save_pretrained(tmp_path / "lora")  # unmerged, adapter settings in mmreward.json
    loaded = mmreward.load(tmp_path / "lora")
    assert loaded.lora["r"] == 4
    torch.testing.assert_close(loaded.score(prompts=PROMPTS, responses=RESPONSES).scores, ref)
    merged = loaded.merge_lora()
    assert not any("lora_" in k for k in merged.state_dict())
    torch.testing.assert_close(
        merged.score(prompts=PROMPTS, responses=RESPONSES).scores, ref, rtol=0, atol=1e-5
    )


def test_core_trainer_learns_the_synthetic_preference(tmp_path):
    """BT + margin + centering through RewardModelTrainer on chosen/rejected JSONL."""
    world = TextWorld()
    train = write_pairs_jsonl(world.pairs(640, seed=1), tmp_path / "train.jsonl")
    held_out = [e for e in world.pairs(200, seed=2, temperature=None) if e.label != 0]
    write_pairs_jsonl(held_out, tmp_path / "eval.jsonl")
    model_dir = checkpoint(tmp_path / "init", "seqcls", "llama", initializer_range=0.02)
    torch.manual_seed(0)
    rm = mmreward.load("seqcls.skywork-reward-llama-3.1-8b", weights=model_dir)
    examples = load_examples(tmp_path / "eval.jsonl", "pairwise")
    before = evaluate(rm, examples, "pairwise")["accuracy_without_ties"]
    cfg = TrainConfig(
        output_dir=str(tmp_path / "run"),
        train_file=str(train),
        eval_file=str(tmp_path / "eval.jsonl"),
        batch_size=16,
        epochs=1,
        lr=3e-3,
        warmup_steps=5,
        center_coef=0.01,
        use_margin=True,
        progress=False,
        cpu=True,
    )
    result = RewardModelTrainer(rm, cfg).train()
    after = result["eval/accuracy_without_ties"]
    assert after >= 0.8 and after > before + 0.2, (before, after)
    reloaded = mmreward.load(tmp_path / "run" / "model")
    torch.testing.assert_close(
        reloaded.score(prompts=PROMPTS, responses=RESPONSES).scores,
        rm.eval().score(prompts=PROMPTS, responses=RESPONSES).scores,
    )
