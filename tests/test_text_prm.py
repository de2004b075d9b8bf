"""Implicit PRM (β·log π/π_ref per token, summed per step) and the step credit forms."""

from __future__ import annotations

import copy

import pytest
import torch

import mmreward
from mmreward import RewardInput
from mmreward.selection import aggregate_steps
from mmreward.text.prm import (
    ImplicitPRM,
    build_implicit_prm,
    clip_step_rewards,
    delta_step_rewards,
    min_form_values,
    step_returns,
)
from tests.tiny.text import checkpoint

PROMPTS = ["What is 2 + 3?", "Compute 4 * 2."]
STEPS = [["2 + 3 = 5.", "So the answer is 5."], ["4 * 2 = 8.", "Check: 8 / 2 = 4.", "Answer: 8."]]


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prm")
    return (
        checkpoint(root / "policy", "causal", "qwen2", seed=0),
        checkpoint(root / "reference", "causal", "qwen2", seed=1),
    )


def _logprobs(model, ids: list[int], n: int) -> torch.Tensor:
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    t = len(ids)
    return torch.stack([logp[i - 1, ids[i]] for i in range(t - n, t)])


def test_token_and_step_rewards_by_hand(dirs):
    policy, reference = dirs
    rm = build_implicit_prm(policy, reference=str(reference), beta=0.5).eval()
    with torch.no_grad():
        out = rm(RewardInput(prompts=PROMPTS, steps=STEPS))
    tok = rm.tokenizer
    for i, (p, steps) in enumerate(zip(PROMPTS, STEPS)):
        head = tok.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        ctx = tok(head, add_special_tokens=False)["input_ids"]
        pieces = [
            tok(s if k == 0 else "\n\n" + s, add_special_tokens=False)["input_ids"]
            for k, s in enumerate(steps)
        ]
        resp = [t for piece in pieces for t in piece]
        r_t = 0.5 * (
            _logprobs(rm.policy, ctx + resp, len(resp))
            - _logprobs(rm.reference, ctx + resp, len(resp))
        )
        torch.testing.assert_close(
            out.extras["token_rewards"][i].double(), r_t, rtol=1e-4, atol=1e-6
        )
        bounds = torch.tensor([0] + [len(piece) for piece in pieces]).cumsum(0)
        per_step = torch.stack([r_t[bounds[k] : bounds[k + 1]].sum() for k in range(len(steps))])
        torch.testing.assert_close(out.step_scores[i].double(), per_step, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(out.scores[i].double(), r_t.sum(), rtol=1e-4, atol=1e-6)
    # min aggregation uses the core aggregator on the same step rewards
    rm_min = build_implicit_prm(policy, reference=str(reference), beta=0.5, aggregate="min").eval()
    got = rm_min.score(prompts=PROMPTS, steps=STEPS)
    torch.testing.assert_close(got.scores, aggregate_steps(out.step_scores, "min"))
    # sigmoid step scores (probability-like) for step metrics
    sig = build_implicit_prm(policy, reference=str(reference), beta=0.5, step_sigmoid=True).eval()
    s = sig.score(prompts=PROMPTS, steps=STEPS)
    torch.testing.assert_close(s.step_scores[1], torch.sigmoid(out.step_scores[1]))


def test_identical_policy_and_reference_give_zero(dirs):
    policy, _ = dirs
    rm = build_implicit_prm(policy, reference=str(policy)).eval()
    out = rm.score(prompts=PROMPTS, steps=STEPS)
    assert torch.all(out.scores == 0) and all(torch.all(s == 0) for s in out.step_scores)


def test_saved_prm_reloads_both_models(dirs, tmp_path):
    policy, reference = dirs
    rm = build_implicit_prm(policy, reference=str(reference), beta=0.001).eval()
    rm.reward_name = "implicit-prm.eurusprm-stage2"
    ref = rm.score(prompts=PROMPTS, steps=STEPS).scores
    loaded = mmreward.load(rm.save_pretrained(tmp_path / "prm"))
    assert isinstance(loaded, ImplicitPRM) and loaded.beta == 0.001
    torch.testing.assert_close(loaded.score(prompts=PROMPTS, steps=STEPS).scores, ref)
    assert not any(p.requires_grad for p in loaded.reference.parameters())


def test_reference_errors(dirs, tmp_path):
    policy, _ = dirs
    with pytest.raises(ValueError, match="reference"):
        build_implicit_prm(policy)
    with pytest.raises(mmreward.WeightsNotFoundError, match="reference"):
        build_implicit_prm(policy, reference="no-such-org/no-such-model", local_files_only=True)
    rm = build_implicit_prm(policy, reference=str(policy))
    small = copy.deepcopy(rm.reference)
    small.resize_token_embeddings(10)
    with pytest.raises(ValueError, match="vocabulary"):
        ImplicitPRM(rm.policy, small, rm.tokenizer)


def test_credit_forms_by_hand():
    r = torch.tensor([0.5, -1.0, 2.0, 0.25])
    assert min_form_values(r).tolist() == [-1.0, -1.0, 0.25, 0.25]  # min_{k≥t} r_k
    assert step_returns(r).tolist() == [1.75, 1.25, 2.25, 0.25]  # Σ_{k≥t} r_k
    assert clip_step_rewards(r, eta=0.5).tolist() == [0.0, -1.5, 0.0, -0.25]  # min(r − η, 0)
    d = delta_step_rewards(r)
    assert d.tolist() == [1.5, -3.0, 1.75, 0.25]  # r_t − r_{t+1}, last r_T
    torch.testing.assert_close(step_returns(d), r)  # the return from t telescopes to r_t
    ragged = min_form_values([[3.0, 1.0], [2.0]])
    assert [x.tolist() for x in ragged] == [[1.0, 1.0], [2.0]]
    assert step_returns(r, gamma=0.5)[2].item() == pytest.approx(2.0 + 0.5 * 0.25)
    with pytest.raises(ValueError, match="at least one step"):
        min_form_values(torch.tensor([]))
