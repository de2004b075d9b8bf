"""Generative verifiers (GenRM): the reward is an LM's probability of answering "Yes".

Zhang et al. 2024, "Generative Verifiers: Reward Modeling as Next-Token Prediction":
the verifier reads the question x, the candidate answer y and a verification question I
("Is the answer correct (Yes/No)?") and the reward is the next-token probability

    r(x, y) = p_θ("Yes" | x, y, I)                                     (GenRM, direct)

taken from the softmax over the **full vocabulary** at the answer position
(``normalize="yes_no"`` gives p(Yes) / (p(Yes) + p(No)) instead). The CoT variant first
samples K verification rationales v_k ~ p_θ(· | x, y, "Let's verify step by step.") and
averages

    r_CoT(x, y) = (1/K) Σ_k p_θ("Yes" | x, y, v_k, I)                  (GenRM-CoT, majority-vote form)

Rationales are sampled per item with a seed derived from the item's text, so a score does
not depend on what else is in the batch.

The token ids of "Yes"/"No" are resolved from the tokenizer *in context*: the word (then
the word with a leading space) is appended to a formatted verification prompt and must add
exactly one token there. A word that splits into several tokens, or a Yes id equal to the
No id, is an error (pass ``yes_token_id``/``no_token_id`` to choose by hand).

>>> # rm = mmreward.load("genrm.qwen2.5-0.5b-instruct", weights="/models/qwen")
>>> # rm.score(prompts=["2+3?"], responses=["5"]).scores      # P("Yes")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmreward.interface import RewardInput, RewardOutput
from mmreward.text.hf import (
    TextRewardModel,
    chat_text,
    encode,
    forward_accepts,
    load_backbone,
    pad_batch,
    prepare_tokenizer,
    stable_seed,
    truncate_left,
)

#: The verification question (Zhang et al. 2024).
VERIFY_QUESTION = "Is the answer correct (Yes/No)?"
#: The instruction that starts a CoT verification rationale.
COT_INSTRUCTION = "Let's verify step by step."
#: How the question and the candidate answer are shown to the verifier.
VERIFY_TEMPLATE = "{prompt}\n\nProposed answer: {response}\n\n{instruction}"


class AmbiguousTokenError(ValueError):
    """An answer word does not map to exactly one token, or Yes and No share a token."""


def resolve_answer_token(tokenizer: Any, context: str, word: str) -> tuple[int, str]:
    """The single token id that ``word`` adds after ``context``, and the variant used.

    Tries ``word`` then ``" " + word``: the variant must leave the context's tokens
    unchanged and add exactly one token. Raises :class:`AmbiguousTokenError` otherwise.
    """
    base = encode(tokenizer, [context])[0]
    tried = []
    for variant in (word, " " + word):
        ids = encode(tokenizer, [context + variant])[0]
        new = ids[len(base) :]
        tried.append(f"{variant!r} → {tokenizer.convert_ids_to_tokens(new)}")
        if ids[: len(base)] == base and len(new) == 1:
            return new[0], variant
    raise AmbiguousTokenError(
        f"answer word {word!r} does not map to one token after the verification prompt "
        f"({'; '.join(tried)}); pass yes_token_id=/no_token_id= or other yes=/no= words"
    )


class GenerativeVerifier(TextRewardModel):
    """r = P("Yes") from any causal LM asked whether a response is correct.

    Args:
        model: a ``transformers`` causal LM.
        tokenizer: its tokenizer (its chat template is used when it has one).
        question: the verification question I.
        template: how ``{prompt}``, ``{response}`` and ``{instruction}`` form the user turn.
        yes, no: the answer words; ``yes_token_id``/``no_token_id`` override the lookup.
        normalize: ``"vocab"`` (softmax over the whole vocabulary, the paper's r) or
            ``"yes_no"`` (p(Yes) / (p(Yes) + p(No))).
        cot_samples: K > 0 turns on GenRM-CoT with K sampled rationales per item.
        cot_max_new_tokens, cot_temperature, cot_top_p: rationale sampling settings.
        seed: base seed of the per-item rationale sampling.
        max_length: keep the last ``max_length`` prompt tokens (left truncation).
        chat_template: override the tokenizer's chat template.
    """

    inputs = ("prompts", "responses")
    sub_score_names = ("p_yes", "p_no")

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        question: str = VERIFY_QUESTION,
        template: str = VERIFY_TEMPLATE,
        yes: str = "Yes",
        no: str = "No",
        yes_token_id: int | None = None,
        no_token_id: int | None = None,
        normalize: str = "vocab",
        cot_samples: int = 0,
        cot_max_new_tokens: int = 64,
        cot_temperature: float = 0.7,
        cot_top_p: float = 1.0,
        seed: int = 0,
        max_length: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = prepare_tokenizer(tokenizer, chat_template)
        if normalize not in ("vocab", "yes_no"):
            raise ValueError(f"normalize: expected 'vocab' or 'yes_no', got {normalize!r}")
        if cot_samples < 0:
            raise ValueError(f"cot_samples: expected K ≥ 0, got {cot_samples}")
        self.question, self.template, self.normalize = question, template, normalize
        self.cot_samples, self.cot_max_new_tokens = cot_samples, cot_max_new_tokens
        self.cot_temperature, self.cot_top_p, self.seed = cot_temperature, cot_top_p, seed
        self.max_length = max_length
        probe = self._answer_context("Question", "Answer")
        if yes_token_id is None:
            yes_token_id, _ = resolve_answer_token(self.tokenizer, probe, yes)
        if no_token_id is None:
            no_token_id, _ = resolve_answer_token(self.tokenizer, probe, no)
        vocab = model.get_output_embeddings().weight.shape[0]
        for name, tid in (("yes_token_id", yes_token_id), ("no_token_id", no_token_id)):
            if not 0 <= int(tid) < vocab:
                raise ValueError(f"{name}: expected a token id in [0, {vocab}), got {tid}")
        if yes_token_id == no_token_id:
            raise AmbiguousTokenError(
                f"yes/no: {yes!r} and {no!r} map to the same token id {yes_token_id}"
            )
        self.yes_token_id, self.no_token_id = int(yes_token_id), int(no_token_id)

    # -- prompts -----------------------------------------------------------------------
    def _user_turn(self, prompt: str, response: str, instruction: str) -> dict[str, str]:
        text = self.template.format(prompt=prompt, response=response, instruction=instruction)
        return {"role": "user", "content": text}

    def _answer_context(self, prompt: str, response: str, rationale: str | None = None) -> str:
        """Formatted text after which the next token is the verifier's Yes/No."""
        if rationale is None:
            messages = [self._user_turn(prompt, response, self.question)]
        else:
            messages = [
                self._user_turn(prompt, response, COT_INSTRUCTION),
                {"role": "assistant", "content": rationale},
                {"role": "user", "content": self.question},
            ]
        return chat_text(self.tokenizer, messages, add_generation_prompt=True)

    # -- the forward -----------------------------------------------------------------
    def answer_probs(self, contexts: list[str]) -> Tensor:
        """Softmax over the full vocabulary at the answer position, ``(N, V)`` in fp32."""
        ids = [truncate_left(x, self.max_length) for x in encode(self.tokenizer, contexts)]
        input_ids, mask, positions = pad_batch(
            ids, self.tokenizer.pad_token_id, "left", self.device
        )
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": positions,
        }
        if forward_accepts(self.model, "logits_to_keep"):
            kwargs["logits_to_keep"] = 1
        logits = self.model(**kwargs).logits[:, -1]  # left padding: the last real token
        return torch.softmax(logits.float(), dim=-1)

    def compute(self, batch: RewardInput) -> RewardOutput:
        prompts, responses = batch.prompts, batch.responses
        k = self.cot_samples
        if k == 0:
            contexts = [self._answer_context(p, r) for p, r in zip(prompts, responses)]
        else:
            rationales = [self.sample_rationales(p, r, k) for p, r in zip(prompts, responses)]
            contexts = [
                self._answer_context(p, r, v)
                for p, r, vs in zip(prompts, responses, rationales)
                for v in vs
            ]
        probs = self.answer_probs(contexts)
        p_yes, p_no = probs[:, self.yes_token_id], probs[:, self.no_token_id]
        if self.normalize == "yes_no":
            total = (p_yes + p_no).clamp_min(torch.finfo(p_yes.dtype).tiny)
            p_yes, p_no = p_yes / total, p_no / total
        n = len(prompts)
        if k:
            p_yes, p_no = p_yes.view(n, k).mean(dim=1), p_no.view(n, k).mean(dim=1)
        extras: dict[str, Any] = {}
        if k:
            extras["rationales"] = rationales
        return RewardOutput(scores=p_yes, sub_scores={"p_yes": p_yes, "p_no": p_no}, extras=extras)

    @torch.no_grad()
    def sample_rationales(self, prompt: str, response: str, k: int) -> list[str]:
        """K verification rationales for one item, seeded by the item's text (reproducible)."""
        text = chat_text(self.tokenizer, [self._user_turn(prompt, response, COT_INSTRUCTION)], True)
        ids = truncate_left(encode(self.tokenizer, [text])[0], self.max_length)
        input_ids = torch.tensor([ids] * k, device=self.device)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(stable_seed(prompt, response, base=self.seed))
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                temperature=self.cot_temperature,
                top_p=self.cot_top_p,
                top_k=0,
                max_new_tokens=self.cot_max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        new = out[:, input_ids.shape[1] :]
        return [s.strip() for s in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def backbones(self) -> dict[str, tuple[nn.Module, Any]]:
        return {"hf": (self.model, self.tokenizer)}


def build_generative_verifier(
    weights: str | Path | None = None,
    *,
    hf_config: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    **options: Any,
) -> GenerativeVerifier:
    """Registry factory: any causal LM directory (``weights``) or a saved mmreward directory.

    ``options`` go to :class:`GenerativeVerifier` (``cot_samples``, ``normalize``, ...).
    """
    model, tokenizer = load_backbone(
        "causal", weights, hf_config, trust_remote_code=trust_remote_code
    )
    rm = GenerativeVerifier(model, tokenizer, **options)
    rm.init_kwargs = dict(options)
    return rm
