"""Implicit process reward models and step-level credit assignment.

**Implicit PRM** (Yuan et al. 2024, "Free Process Rewards without Process Labels"; used
by PRIME, Cui et al. 2025): an outcome reward parameterised as a log-likelihood ratio
r_φ(y) = β log π_φ(y)/π_ref(y) yields process rewards for free. Per token

    r_t = β · log( π_φ(y_t | y_<t) / π_ref(y_t | y_<t) )                 (PRIME, Eq. 3)

and the reward of step s is the sum of its tokens' r_t (q_t − q_{t−1} in the paper's
notation, q_t = Σ_{i≤t} r_i). The response score aggregates the step rewards:
``"sum"`` (= β log π_φ(y)/π_ref(y), EurusPRM-Stage2's accumulative form) or any of
:data:`mmreward.selection.STEP_AGGREGATORS` (``"min"`` for EurusPRM-Stage1).

**Credit forms** for RL with process rewards r_1 … r_T (one per step):

- min-form (PURE, Cheng et al. 2025, "Stop Summation: Min-Form Credit Assignment Is All
  Process Reward Model Needs for Reasoning"): the value of step t is the worst future step,
  V(s_t) = min_{k ≥ t} r_k, instead of the sum Σ_{k≥t} r_k;
- clip (Gao et al. 2024, "On Designing Effective RL Reward at Training Time for LLM
  Reasoning"): r̃_t = min(r_t − η, 0), so no step earns positive reward and padding a
  solution with extra steps cannot raise its return;
- delta (same paper): r̃_t = r_t − r_{t+1} for t < T and r̃_T = r_T, so the return from
  step t telescopes to Σ_{k≥t} r̃_k = r_t (bounded, no repetition hacking).

>>> min_form_values(torch.tensor([0.5, -1.0, 2.0])).tolist()
[-1.0, -1.0, 2.0]
>>> delta_step_rewards(torch.tensor([3.0, 1.0, 2.0])).tolist()
[2.0, -1.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmreward.interface import RewardInput, RewardOutput
from mmreward.selection import STEP_AGGREGATORS, aggregate_steps
from mmreward.text.hf import (
    TextRewardModel,
    chat_text,
    encode,
    load_backbone,
    prepare_tokenizer,
    resolve_model_source,
    token_logprobs,
)

AGGREGATES = ("sum", *STEP_AGGREGATORS)


# --------------------------------------------------------------------- credit forms
def _apply(fn, step_rewards: Tensor | Sequence[Tensor]):
    if isinstance(step_rewards, Tensor):
        if step_rewards.ndim != 1:
            raise ValueError(
                f"step_rewards: expected shape (T,) or a list of (T_i,) tensors, "
                f"got {tuple(step_rewards.shape)}"
            )
        if step_rewards.numel() == 0:
            raise ValueError("step_rewards: expected at least one step")
        return fn(step_rewards)
    return [_apply(fn, torch.as_tensor(r, dtype=torch.get_default_dtype())) for r in step_rewards]


def step_returns(step_rewards: Tensor | Sequence[Tensor], gamma: float = 1.0):
    """Summation-form returns G_t = Σ_{k≥t} γ^{k−t} r_k (the usual credit assignment)."""

    def f(r: Tensor) -> Tensor:
        out = torch.empty_like(r)
        acc = r.new_zeros(())
        for t in range(r.shape[0] - 1, -1, -1):
            acc = r[t] + gamma * acc
            out[t] = acc
        return out

    return _apply(f, step_rewards)


def min_form_values(step_rewards: Tensor | Sequence[Tensor]):
    """PURE min-form: V(s_t) = min_{k≥t} r_k (a suffix minimum), same shape as the input."""
    return _apply(lambda r: r.flip(0).cummin(0).values.flip(0), step_rewards)


def clip_step_rewards(step_rewards: Tensor | Sequence[Tensor], eta: float = 0.0):
    """Clip mechanism: r̃_t = min(r_t − η, 0)."""
    return _apply(lambda r: (r - eta).clamp(max=0.0), step_rewards)


def delta_step_rewards(step_rewards: Tensor | Sequence[Tensor]):
    """Delta mechanism: r̃_t = r_t − r_{t+1} (t < T), r̃_T = r_T; Σ_{k≥t} r̃_k = r_t."""
    return _apply(lambda r: torch.cat([r[:-1] - r[1:], r[-1:]]), step_rewards)


# ---------------------------------------------------------------------- implicit PRM
class ImplicitPRM(TextRewardModel):
    """Process rewards β·log π_φ/π_ref per token, summed per step.

    Args:
        policy: the implicit PRM's causal LM π_φ.
        reference: the reference causal LM π_ref (same tokenizer).
        tokenizer: the shared tokenizer.
        beta: β.
        aggregate: ``"sum"`` or one of :data:`mmreward.selection.STEP_AGGREGATORS`
            (``"product"``/``"sum_logprob"`` need probabilities: use ``step_sigmoid``).
        step_sigmoid: report σ(step reward) as step scores (probability-like, for
            step F1 / calibration) instead of the raw step rewards.
        step_separator: text between steps (its tokens count toward the following step).
        chat_template: override the tokenizer's chat template.

    Step rewards are in ``RewardOutput.step_scores`` (one ``(S_i,)`` tensor per item);
    ``extras["token_rewards"]`` holds the per-token r_t.
    """

    inputs = ("prompts", "steps")

    def __init__(
        self,
        policy: nn.Module,
        reference: nn.Module,
        tokenizer: Any,
        *,
        beta: float = 1.0,
        aggregate: str = "sum",
        step_sigmoid: bool = False,
        step_separator: str = "\n\n",
        chat_template: str | None = None,
    ) -> None:
        super().__init__()
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate: expected one of {AGGREGATES}, got {aggregate!r}")
        vp = policy.get_output_embeddings().weight.shape[0]
        vr = reference.get_output_embeddings().weight.shape[0]
        if vp != vr:
            raise ValueError(
                f"reference: vocabulary size {vr} differs from the policy's {vp}; the implicit "
                "PRM needs both models on one tokenizer"
            )
        self.policy, self.reference = policy, reference
        self.reference.requires_grad_(False)  # π_ref is frozen (PRIME trains π_φ only)
        self.tokenizer = prepare_tokenizer(tokenizer, chat_template)
        self.beta, self.aggregate, self.step_sigmoid = float(beta), aggregate, step_sigmoid
        self.step_separator = step_separator

    def _segments(self, prompt: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Context ids and, for each response token, the index of its step."""
        head = chat_text(
            self.tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True
        )
        texts = [s if i == 0 else self.step_separator + s for i, s in enumerate(steps)]
        ids = encode(self.tokenizer, [head, *texts])
        response, owner = [], []
        for i, step_ids in enumerate(ids[1:]):
            if not step_ids:
                raise ValueError(f"steps: step {i} of prompt {prompt!r} has no tokens")
            response += step_ids
            owner += [i] * len(step_ids)
        return ids[0] + response, owner

    def token_rewards(self, prompts: Sequence[str], steps: Sequence[Sequence[str]]):
        """Per-token r_t (fp32) and their step indices, one pair of tensors per item."""
        seqs, owners = zip(*(self._segments(p, s) for p, s in zip(prompts, steps)))
        n_target = [len(o) for o in owners]
        pad = self.tokenizer.pad_token_id
        lp_policy = token_logprobs(self.policy, seqs, n_target, pad)
        lp_ref = token_logprobs(self.reference, seqs, n_target, pad)
        device = lp_policy[0].device
        return [
            (self.beta * (a - b), torch.tensor(o, device=device))
            for a, b, o in zip(lp_policy, lp_ref, owners)
        ]

    def compute(self, batch: RewardInput) -> RewardOutput:
        per_item = self.token_rewards(batch.prompts, batch.steps)
        step_rewards = []
        for (r, owner), steps in zip(per_item, batch.steps):
            sums = torch.zeros(len(steps), dtype=r.dtype, device=r.device)
            step_rewards.append(sums.index_add(0, owner, r))  # Σ of r_t over each step
        if self.aggregate == "sum":
            scores = torch.stack([s.sum() for s in step_rewards])
        else:
            source = [torch.sigmoid(s) for s in step_rewards] if self.step_sigmoid else step_rewards
            scores = aggregate_steps(source, self.aggregate)
        step_scores = (
            [torch.sigmoid(s) for s in step_rewards] if self.step_sigmoid else step_rewards
        )
        return RewardOutput(
            scores=scores,
            step_scores=step_scores,
            extras={"token_rewards": [r for r, _ in per_item]},
        )

    def backbones(self) -> dict[str, tuple[nn.Module, Any]]:
        return {
            "policy": (self.policy, self.tokenizer),
            "reference": (self.reference, self.tokenizer),
        }


def build_implicit_prm(
    weights: str | Path | None = None,
    *,
    reference: str | Path | None = None,
    hf_config: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    local_files_only: bool = False,
    **options: Any,
) -> ImplicitPRM:
    """Registry factory: the PRM directory (``weights``) + ``reference`` (a directory or hub id).

    From a saved mmreward directory both models are rebuilt from ``hf_config`` and
    ``reference`` is only recorded.
    """
    if hf_config is not None and weights is None:
        policy, tokenizer = load_backbone(
            "causal", None, hf_config["policy"], trust_remote_code=trust_remote_code
        )
        ref_model, _ = load_backbone(
            "causal", None, hf_config["reference"], trust_remote_code=trust_remote_code
        )
    else:
        if reference is None:
            raise ValueError(
                "reference: the implicit PRM needs its reference model π_ref (a directory or a "
                "hub id)"
            )
        policy, tokenizer = load_backbone(
            "causal", weights, None, trust_remote_code=trust_remote_code
        )
        ref_dir = resolve_model_source(reference, "reference", local_files_only=local_files_only)
        ref_model, _ = load_backbone(
            "causal", ref_dir, None, trust_remote_code=trust_remote_code, field="reference"
        )
    rm = ImplicitPRM(policy, ref_model, tokenizer, **options)
    ref_name = None if reference is None else str(reference)
    rm.init_kwargs = {**options, "reference": ref_name}
    return rm
