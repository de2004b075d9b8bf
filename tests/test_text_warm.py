"""WARM for text reward models: averaging, architecture checks, the training helper."""

from __future__ import annotations

import pytest
import torch

import mmreward
from mmreward.text.seqcls import build_sequence_classifier
from mmreward.text.synthetic import TextWorld
from mmreward.text.warm import average_reward_models, train_warm
from mmreward.train import TrainConfig
from tests.tiny.text import checkpoint

PROMPTS = ["Write a short note about the river.", "hi", "What is 2 + 3?"]
RESPONSES = ["clear kind helpful", "wrong rude", "amazing wow"]


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp("warm_init"), "seqcls", "llama")


def test_average_is_the_mean_of_the_weights(init_dir):
    a = build_sequence_classifier(init_dir)
    b = build_sequence_classifier(init_dir)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.01 * torch.randn_like(p))
    warm = average_reward_models([a, b])
    for (name, pw), pa, pb in zip(warm.named_parameters(), a.parameters(), b.parameters()):
        torch.testing.assert_close(pw, (pa + pb) / 2, msg=name)
    assert warm.score(prompts=PROMPTS, responses=RESPONSES).scores.shape == (3,)


def test_mismatched_members_are_clear_errors(init_dir, tmp_path):
    a = build_sequence_classifier(init_dir)
    wider = build_sequence_classifier(
        checkpoint(tmp_path / "wide", "seqcls", "llama", hidden_size=48)
    )
    with pytest.raises(ValueError, match=r"model 1: model\.config\.hidden_size = 48 vs 32"):
        average_reward_models([a, wider])
    qwen = build_sequence_classifier(checkpoint(tmp_path / "qwen", "seqcls", "qwen2"))
    with pytest.raises(ValueError, match="model_type = 'qwen2' vs 'llama'"):
        average_reward_models([a, qwen])
    from tests.test_text_augment_bon import CountReward

    with pytest.raises(ValueError, match="class CountReward"):
        average_reward_models([a, CountReward()])


def test_lora_members_are_merged_before_averaging(init_dir):
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = build_sequence_classifier(init_dir, lora={"r": 2})
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.05)
        members.append(m.eval())
    warm = average_reward_models(members)
    assert warm.lora is None and not any("lora_" in k for k in warm.state_dict())
    merged = [build_sequence_classifier(init_dir, lora={"r": 2}) for _ in members]
    for src, dst in zip(members, merged):
        dst.load_state_dict(src.state_dict())
        dst.merge_lora()
    expected = (
        merged[0].model.model.layers[0].self_attn.q_proj.weight
        + merged[1].model.model.layers[0].self_attn.q_proj.weight
    ) / 2
    torch.testing.assert_close(warm.model.model.layers[0].self_attn.q_proj.weight, expected)


def test_train_warm_members_share_init_and_differ_by_data_order(init_dir, tmp_path):
    world = TextWorld()
    cfg = TrainConfig(
        output_dir=str(tmp_path / "warm"),
        batch_size=8,
        max_steps=4,
        lr=3e-3,
        progress=False,
        cpu=True,
    )
    torch.manual_seed(0)
    init = mmreward.load("seqcls.skywork-reward-llama-3.1-8b", weights=init_dir)
    result = train_warm(init, world.pairs(64, seed=0), cfg, m=3, seeds=[0, 1, 2])
    assert len(result.members) == 3 and all(m["step"] == 4 for m in result.metrics)
    heads = [m.model.score.weight for m in result.members]
    assert not torch.allclose(heads[0], heads[1]) and not torch.allclose(heads[1], heads[2])
    torch.testing.assert_close(result.model.model.score.weight, sum(heads) / 3)
    loaded = mmreward.load(tmp_path / "warm" / "warm")
    torch.testing.assert_close(
        loaded.score(prompts=PROMPTS, responses=RESPONSES).scores,
        result.model.score(prompts=PROMPTS, responses=RESPONSES).scores,
    )
