"""RLPR probability rewards: the policy's own probability of the reference answer.

Yu et al. 2025, "RLPR: Extrapolating RLVR to General Domains without Verifiers". For a
prompt x the policy writes reasoning z and an answer y. Substituting the reference answer
y* = (y*_1 … y*_n) for y, the reward is the **mean** (not the geometric mean) per-token
probability of y* after the reasoning:

    r  = (1/n) Σ_i p_θ(y*_i | x, z, y*_<i)                              (RLPR, Eq. 3)
    r′ = (1/n) Σ_i p_θ(y*_i | x, y*_<i)          (the same without the reasoning)
    r̂  = clip(r − r′, 0, 1)                                             (debiased reward)

Only the reference answer's tokens are averaged: the text before it (chat template,
prompt, reasoning, ``answer_prefix``) and y* are tokenized separately and concatenated,
so no token straddles the boundary.

The response is split at the **last** ``answer_prefix`` (default ``"<answer>"``): the
text before it is the reasoning z (the policy's own answer after it is dropped). A
response without the marker is all reasoning. The reference for each prompt comes from
``RewardInput.extras["references"]`` (one string per item), else from the
``references`` mapping (prompt → answer) given at construction or via
:meth:`ProbabilityReward.set_references`. ``self_reference=True`` scores a response's own
answer where no reference is known (its confidence; a response without the marker is
then all answer and its debiased reward is 0).

:class:`StdFilter` is RLPR's standard-deviation filter for prompts: drop prompts whose
reward std over their samples is below β_t, with β_t = scale · EMA_α(mean std).

>>> f = StdFilter(alpha=0.5, scale=0.5)
>>> f([[0.1, 0.9], [0.5, 0.5]]).tolist()      # mean std 0.2, β = 0.1
[True, False]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmreward.errors import InputError
from mmreward.interface import RewardInput, RewardOutput
from mmreward.text.hf import (
    TextRewardModel,
    chat_text,
    encode,
    load_backbone,
    prepare_tokenizer,
    token_logprobs,
    truncate_left,
)


class ProbabilityReward(TextRewardModel):
    """RLPR's reward from any causal LM (usually the policy being trained).

    Args:
        model: a ``transformers`` causal LM.
        tokenizer: its tokenizer (chat template used when present).
        references: prompt → reference answer.
        answer_prefix: the marker before the answer in responses; it is kept before y*.
        answer_suffix: the marker after the answer in responses (dropped; y* is scored
            without it).
        debias: return r̂ = clip(r − r′, 0, 1) (True) or r (False). Both are sub-scores.
        self_reference: score the response's own answer when no reference is known.
        max_length: keep the last ``max_length`` tokens of the context.
        chat_template: override the tokenizer's chat template.
    """

    inputs = ("prompts", "responses")
    sub_score_names = ("prob", "prob_no_reasoning")

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        references: Mapping[str, str] | None = None,
        answer_prefix: str = "<answer>",
        answer_suffix: str = "</answer>",
        debias: bool = True,
        self_reference: bool = False,
        max_length: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = prepare_tokenizer(tokenizer, chat_template)
        self.references: dict[str, str] = dict(references or {})
        self.answer_prefix, self.answer_suffix = answer_prefix, answer_suffix
        self.debias, self.self_reference, self.max_length = debias, self_reference, max_length

    def set_references(self, references: Mapping[str, str]) -> None:
        """Add or replace prompt → reference answer entries."""
        self.references.update(references)

    def split_response(self, response: str) -> tuple[str, str | None]:
        """``(reasoning, own_answer)``: split at the last ``answer_prefix`` (None: no marker)."""
        at = response.rfind(self.answer_prefix) if self.answer_prefix else -1
        if at < 0:
            return response, None
        answer = response[at + len(self.answer_prefix) :]
        if self.answer_suffix and self.answer_suffix in answer:
            answer = answer[: answer.index(self.answer_suffix)]
        return response[:at], answer

    def _items(self, batch: RewardInput) -> list[tuple[str, str, str]]:
        """``(prompt, reasoning, reference)`` per item."""
        given = batch.extras.get("references")
        n = len(batch.prompts)
        if given is not None and (isinstance(given, str) or len(given) != n):
            raise InputError("extras['references']", f"a list of {n} strings", repr(given)[:80])
        items = []
        for i, (prompt, response) in enumerate(zip(batch.prompts, batch.responses)):
            reasoning, own = self.split_response(response)
            ref = given[i] if given is not None else self.references.get(prompt)
            if ref is None:
                if not self.self_reference:
                    raise InputError(
                        "references",
                        "a reference answer for every prompt (extras['references'], the "
                        "references= mapping or set_references())",
                        f"none for prompt {prompt!r}",
                        "or pass self_reference=True to score the response's own answer",
                    )
                reasoning, ref = (reasoning, own) if own is not None else ("", response)
            if not ref:
                raise InputError("references", "non-empty reference answers", f"{ref!r} at {i}")
            items.append((prompt, reasoning, ref))
        return items

    def answer_token_probs(self, contexts: Sequence[str], answers: Sequence[str]) -> list[Tensor]:
        """p(y*_i | context, y*_<i) for each answer token (fp32), one tensor per item."""
        ctx_ids = encode(self.tokenizer, contexts)
        ans_ids = encode(self.tokenizer, answers)
        for a, ids in zip(answers, ans_ids):
            if not ids:
                raise InputError("references", "answers with at least one token", repr(a))
        keep = None if self.max_length is None else self.max_length
        seqs = [truncate_left(c + a, keep) for c, a in zip(ctx_ids, ans_ids)]
        logps = token_logprobs(
            self.model, seqs, [len(a) for a in ans_ids], self.tokenizer.pad_token_id
        )
        return [lp.exp() for lp in logps]

    def compute(self, batch: RewardInput) -> RewardOutput:
        items = self._items(batch)
        heads = [
            chat_text(self.tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True)
            for p, _, _ in items
        ]
        with_z = [h + z + self.answer_prefix for h, (_, z, _) in zip(heads, items)]
        without_z = [h + self.answer_prefix for h in heads]
        refs = [ref for _, _, ref in items]
        probs = self.answer_token_probs(with_z + without_z, refs + refs)
        mean = torch.stack([p.mean() for p in probs])  # RLPR: mean, not geometric mean
        n = len(items)
        r, r_prime = mean[:n], mean[n:]
        debiased = (r - r_prime).clamp(0.0, 1.0)
        scores = debiased if self.debias else r
        return RewardOutput(
            scores=scores,
            sub_scores={"prob": r, "prob_no_reasoning": r_prime},
            extras={"debiased": debiased},
        )

    def backbones(self) -> dict[str, tuple[nn.Module, Any]]:
        return {"hf": (self.model, self.tokenizer)}


class StdFilter:
    """RLPR's standard-deviation filter: keep prompts whose reward std ≥ β_t.

    Each call takes the rewards of one training step as ``(G, K)`` (G prompts × K
    samples; a list of per-prompt lists may be ragged) and updates

        s_g = std_k(r_gk)  (population std),  m_t = mean_g s_g,
        EMA_t = α·EMA_{t−1} + (1 − α)·m_t  (EMA_1 = m_1),   β_t = scale · EMA_t,

    returning the boolean keep mask ``s_g ≥ β_t`` (the current step counts in β_t).
    """

    def __init__(self, alpha: float = 0.99, scale: float = 0.5) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha: expected an EMA decay in [0, 1), got {alpha}")
        if scale < 0:
            raise ValueError(f"scale: expected ≥ 0, got {scale}")
        self.alpha, self.scale = float(alpha), float(scale)
        self.ema: float | None = None
        self.steps = 0

    @property
    def threshold(self) -> float | None:
        """β_t after the last call (None before the first)."""
        return None if self.ema is None else self.scale * self.ema

    @staticmethod
    def prompt_std(rewards: Tensor | Sequence[Sequence[float]]) -> Tensor:
        """Population std of each prompt's rewards, ``(G,)``."""
        if isinstance(rewards, Tensor):
            if rewards.ndim != 2:
                raise ValueError(f"rewards: expected shape (G, K), got {tuple(rewards.shape)}")
            return rewards.double().std(dim=1, unbiased=False)
        rows = [torch.as_tensor(list(r), dtype=torch.float64) for r in rewards]
        if not rows or any(r.numel() == 0 for r in rows):
            raise ValueError("rewards: expected at least one sample for every prompt")
        return torch.stack([r.std(unbiased=False) for r in rows])

    def __call__(self, rewards: Tensor | Sequence[Sequence[float]]) -> Tensor:
        std = self.prompt_std(rewards)
        if std.numel() == 0:
            raise ValueError("rewards: expected at least one prompt")
        mean_std = float(std.mean())
        self.ema = (
            mean_std if self.ema is None else self.alpha * self.ema + (1 - self.alpha) * mean_std
        )
        self.steps += 1
        return std >= self.scale * self.ema

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "scale": self.scale, "ema": self.ema, "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.alpha, self.scale = float(state["alpha"]), float(state["scale"])
        self.ema, self.steps = state["ema"], int(state["steps"])


def build_probability_reward(
    weights: str | Path | None = None,
    *,
    hf_config: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    **options: Any,
) -> ProbabilityReward:
    """Registry factory: any causal LM directory (``weights``) or a saved mmreward directory."""
    model, tokenizer = load_backbone(
        "causal", weights, hf_config, trust_remote_code=trust_remote_code
    )
    rm = ProbabilityReward(model, tokenizer, **options)
    rm.init_kwargs = dict(options)
    return rm
