"""RLPR probability rewards (hand-computed) and the EMA standard-deviation filter."""

from __future__ import annotations

import pytest
import torch

import mmreward
from mmreward import RewardInput
from mmreward.text.rlpr import StdFilter, build_probability_reward
from tests.tiny.text import checkpoint

PROMPTS = ["What is 2 + 3?", "Capital of France?", "What is 2 + 3?"]
RESPONSES = [
    "<think>2 plus 3 is 5</think> <answer>5</answer>",
    "I think it is the city of Paris. <answer>Lyon</answer>",
    "no marker here, just reasoning",
]
REFS = {"What is 2 + 3?": "5", "Capital of France?": "Paris"}


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp("rlpr_lm"), "causal", "qwen2")


def _mean_prob_by_hand(rm, context: str, answer: str) -> torch.Tensor:
    """Mean p(answer token | everything before) over the answer's own tokens, unpadded."""
    tok = rm.tokenizer
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    ans = tok(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + ans])
    with torch.no_grad():
        logp = torch.log_softmax(rm.model(input_ids=ids).logits[0].double(), dim=-1)
    probs = [logp[len(ctx) + i - 1, a].exp() for i, a in enumerate(ans)]
    return torch.stack(probs).mean()


def test_probability_reward_by_hand(lm_dir):
    rm = build_probability_reward(lm_dir, references=REFS).eval()
    with torch.no_grad():
        out = rm(RewardInput(prompts=PROMPTS, responses=RESPONSES))
    head = rm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "{p}"}], tokenize=False, add_generation_prompt=True
    )
    reasoning = ["<think>2 plus 3 is 5</think> ", "I think it is the city of Paris. ", RESPONSES[2]]
    for i, (p, z) in enumerate(zip(PROMPTS, reasoning)):
        ref = REFS[p]
        r = _mean_prob_by_hand(rm, head.replace("{p}", p) + z + "<answer>", ref)
        r0 = _mean_prob_by_hand(rm, head.replace("{p}", p) + "<answer>", ref)
        torch.testing.assert_close(out.sub_scores["prob"][i].double(), r, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(
            out.sub_scores["prob_no_reasoning"][i].double(), r0, rtol=1e-5, atol=1e-8
        )
        torch.testing.assert_close(
            out.scores[i].double(), (r - r0).clamp(0, 1), rtol=1e-5, atol=1e-8
        )
    assert torch.all(out.scores >= 0) and torch.all(out.scores <= 1)
    raw = build_probability_reward(lm_dir, references=REFS, debias=False).eval()
    torch.testing.assert_close(
        raw.score(prompts=PROMPTS, responses=RESPONSES).scores, out.sub_scores["prob"]
    )


def test_only_reference_tokens_are_averaged(lm_dir):
    rm = build_probability_reward(lm_dir).eval()
    probs = rm.answer_token_probs(["<|bos|>ctx<answer>", "<|bos|>x"], ["Paris", "a b c d"])
    n_tokens = [
        len(rm.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in ("Paris", "a b c d")
    ]
    assert [len(p) for p in probs] == n_tokens
    assert all(torch.all((p > 0) & (p <= 1)) for p in probs)


def test_reference_sources_and_errors(lm_dir):
    rm = build_probability_reward(lm_dir).eval()
    with pytest.raises(mmreward.InputError, match="references"):
        rm.score(prompts=PROMPTS, responses=RESPONSES)
    rm.set_references(REFS)
    via_map = rm.score(prompts=PROMPTS, responses=RESPONSES).scores
    batch = RewardInput(
        prompts=PROMPTS, responses=RESPONSES, extras={"references": ["5", "Paris", "5"]}
    )
    torch.testing.assert_close(rm(batch).scores, via_map)
    other = rm(
        RewardInput(prompts=PROMPTS, responses=RESPONSES, extras={"references": ["6", "Rome", "6"]})
    )
    assert not torch.allclose(other.sub_scores["prob"], rm(batch).sub_scores["prob"])
    with pytest.raises(mmreward.InputError, match="references"):
        rm(RewardInput(prompts=PROMPTS, responses=RESPONSES, extras={"references": ["5"]}))
    # self_reference: a response's own answer, or (no marker) the whole response as the answer
    own = build_probability_reward(lm_dir, self_reference=True).eval()
    out = own.score(prompts=PROMPTS, responses=RESPONSES)
    assert out.scores[2] == 0  # no reasoning left: r = r'
    assert rm.split_response(RESPONSES[1]) == ("I think it is the city of Paris. ", "Lyon")


def test_saved_probability_reward_reloads(lm_dir, tmp_path):
    rm = build_probability_reward(lm_dir, references=REFS).eval()
    rm.reward_name = "rlpr.qwen2.5-7b"
    ref = rm.score(prompts=PROMPTS, responses=RESPONSES)
    loaded = mmreward.load(rm.save_pretrained(tmp_path / "r"))
    assert loaded.references == REFS
    got = loaded.score(prompts=PROMPTS, responses=RESPONSES)
    torch.testing.assert_close(got.sub_scores["prob"], ref.sub_scores["prob"])


def test_std_filter_ema_by_hand():
    f = StdFilter(alpha=0.5, scale=0.5)
    # step 1: stds 0.5, 0.0, 0.25 → mean 0.25 → EMA 0.25 → β = 0.125
    keep = f(torch.tensor([[0.0, 1.0], [0.3, 0.3], [0.5, 1.0]]))
    assert keep.tolist() == [True, False, True]
    assert f.threshold == pytest.approx(0.125)
    # step 2: stds 0.05, 0.1 → mean 0.075 → EMA 0.5·0.25 + 0.5·0.075 = 0.1625 → β = 0.08125
    keep = f([[0.0, 0.1], [0.2, 0.4]])
    assert keep.tolist() == [False, True]
    assert f.threshold == pytest.approx(0.08125)
    # ragged groups; state round trip
    g = StdFilter()
    g.load_state_dict(f.state_dict())
    assert g([[1.0, 2.0, 3.0], [1.0, 1.0]]).tolist() == f([[1.0, 2.0, 3.0], [1.0, 1.0]]).tolist()
    with pytest.raises(ValueError, match="alpha"):
        StdFilter(alpha=1.0)
    with pytest.raises(ValueError, match="at least one sample"):
        StdFilter()([[1.0], []])
