"""Generative verifiers: P(Yes) against a hand-computed softmax, token resolution, CoT."""

from __future__ import annotations

import pytest
import torch

import mmreward
from mmreward import RewardInput
from mmreward.text.genrm import AmbiguousTokenError, GenerativeVerifier, build_generative_verifier
from mmreward.text.synthetic import build_tiny_checkpoint, train_tokenizer
from tests.tiny.text import checkpoint

PROMPTS = ["What is 2 + 3?", "Name a colour.", "Is the sky green?", "hi"]
RESPONSES = ["5", "The answer is blue, like the sky on a clear day.", "No", "hello there"]


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def lm_dir(request, tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp(f"lm_{request.param}"), "causal", request.param)


def _by_hand(rm: GenerativeVerifier, context: str) -> torch.Tensor:
    """softmax over the full vocabulary of the logits at the last position (unpadded)."""
    ids = torch.tensor([rm.tokenizer(context, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = rm.model(input_ids=ids).logits[0, -1]
    return torch.softmax(logits.double(), dim=-1)


def test_p_yes_equals_the_softmax_by_hand(lm_dir):
    rm = build_generative_verifier(lm_dir).eval()
    with torch.no_grad():
        out = rm(RewardInput(prompts=PROMPTS, responses=RESPONSES))
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        context = rm.tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{p}\n\nProposed answer: {r}\n\n{rm.question}"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        probs = _by_hand(rm, context)
        torch.testing.assert_close(
            out.scores[i].double(), probs[rm.yes_token_id], rtol=1e-5, atol=1e-7
        )
        torch.testing.assert_close(
            out.sub_scores["p_no"][i].double(), probs[rm.no_token_id], rtol=1e-5, atol=1e-7
        )
    assert out.scores.dtype == torch.float32 and torch.all((out.scores > 0) & (out.scores < 1))
    # batch composition does not matter (left padding + position ids from the mask)
    alone = torch.cat(
        [rm.score(prompts=[p], responses=[r]).scores for p, r in zip(PROMPTS, RESPONSES)]
    )
    torch.testing.assert_close(alone, out.scores, rtol=1e-5, atol=1e-8)


def test_yes_no_normalisation(lm_dir):
    full = build_generative_verifier(lm_dir).eval()
    norm = build_generative_verifier(lm_dir, normalize="yes_no").eval()
    a = full.score(prompts=PROMPTS, responses=RESPONSES)
    b = norm.score(prompts=PROMPTS, responses=RESPONSES)
    expected = a.sub_scores["p_yes"] / (a.sub_scores["p_yes"] + a.sub_scores["p_no"])
    torch.testing.assert_close(b.scores, expected)
    torch.testing.assert_close(b.scores + b.sub_scores["p_no"], torch.ones(len(PROMPTS)))


def test_answer_tokens_resolved_in_context(lm_dir):
    rm = build_generative_verifier(lm_dir)
    tok = rm.tokenizer
    # after the generation prompt the word has no leading space: the "Yes" token, not "ĠYes"
    assert rm.yes_token_id == tok.convert_tokens_to_ids("Yes")
    assert rm.no_token_id == tok.convert_tokens_to_ids("No")
    assert tok.convert_ids_to_tokens(rm.yes_token_id) == "Yes"
    with pytest.raises(AmbiguousTokenError, match="same token id"):
        build_generative_verifier(lm_dir, no="Yes")
    with pytest.raises(AmbiguousTokenError, match="does not map to one token"):
        build_generative_verifier(lm_dir, yes="Absolutely-not-a-word")
    custom = build_generative_verifier(lm_dir, yes_token_id=7, no_token_id=8)
    assert (custom.yes_token_id, custom.no_token_id) == (7, 8)
    with pytest.raises(ValueError, match="yes_token_id"):
        build_generative_verifier(lm_dir, yes_token_id=10**6, no_token_id=8)


def test_a_yes_that_splits_into_pieces_is_an_error(tmp_path):
    # a tokenizer that never saw "Yes" (tiny vocabulary): "Yes" is "Y" + "es"
    tok = train_tokenizer(["no no no", "the cat sat on the mat"], vocab_size=280)
    assert len(tok("Yes", add_special_tokens=False)["input_ids"]) > 1
    path = build_tiny_checkpoint(tmp_path / "m", "causal", "llama", tokenizer=tok)
    with pytest.raises(AmbiguousTokenError, match="'Yes'"):
        build_generative_verifier(path)


def test_cot_averages_k_rationales(lm_dir):
    rm = build_generative_verifier(lm_dir, cot_samples=3, cot_max_new_tokens=6).eval()
    out = rm.score(prompts=PROMPTS[:2], responses=RESPONSES[:2])
    rationales = out.extras["rationales"]
    assert [len(r) for r in rationales] == [3, 3]
    for i in range(2):
        by_hand = torch.stack(
            [
                _by_hand(rm, rm._answer_context(PROMPTS[i], RESPONSES[i], v))[rm.yes_token_id]
                for v in rationales[i]
            ]
        ).mean()
        torch.testing.assert_close(out.scores[i].double(), by_hand, rtol=1e-5, atol=1e-7)
    # rationales are seeded per item: the same alone, in another batch, in another order
    alone = rm.score(prompts=PROMPTS[1:2], responses=RESPONSES[1:2])
    assert alone.extras["rationales"][0] == rationales[1]
    torch.testing.assert_close(alone.scores[0], out.scores[1])
    reseeded = build_generative_verifier(lm_dir, cot_samples=3, cot_max_new_tokens=6, seed=1)
    assert (
        reseeded.score(prompts=PROMPTS[:1], responses=RESPONSES[:1]).extras["rationales"][0]
        != rationales[0]
    )


def test_saved_verifier_reloads(lm_dir, tmp_path):
    rm = build_generative_verifier(lm_dir, normalize="yes_no").eval()
    rm.reward_name = "genrm.qwen2.5-7b-instruct"
    ref = rm.score(prompts=PROMPTS, responses=RESPONSES).scores
    loaded = mmreward.load(rm.save_pretrained(tmp_path / "v"))
    assert loaded.normalize == "yes_no" and loaded.yes_token_id == rm.yes_token_id
    torch.testing.assert_close(loaded.score(prompts=PROMPTS, responses=RESPONSES).scores, ref)
