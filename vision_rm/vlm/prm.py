"""VisualPRM-style process reward model: one '+'/'−' judgement per step, all in one forward.

VisualPRM (Wang et al. 2025, "VisualPRM: An Effective Process Reward Model for Multimodal
Reasoning") frames step scoring as a multi-turn chat: the first user turn holds the image,
the question and the first step; every later user turn holds the next step; after each
user turn the assistant answers '+' (correct) or '-' (wrong). The score of step k is

    p_k = softmax([z_+, z_−])_+ = σ(z_+ − z_−)

where z are the LM logits at the position that predicts the k-th assistant answer. All
assistant turns hold the placeholder ``plus_token``, so one causal forward gives every
p_k at once (step k's logits see steps ≤ k only) — exactly the scores of S separate
forwards over the prefixes (:meth:`VisualPRM.score_steps_separately`), S times cheaper.

The solution score aggregates the step scores through
:func:`mmreward.selection.aggregate_steps` (VisualPRM: ``"mean"``; ``"min"``, ``"last"``,
``"product"``, ``"max"``, ``"sum_logprob"`` as in MM-PRM). Training is step-level BCE on
the logit z_+ − z_− (``extras["step_logits"]``), with hard or soft Monte-Carlo labels
(:mod:`vision_rm.vlm.mc_label`) — the ``steps`` objective of
:class:`mmreward.train.RewardModelTrainer`.

>>> # prm = mmreward.load("visualprm.local", weights="/models/tiny-prm")
>>> # out = prm.score(images, "What is 3 + 5?", steps=[["3 + 5 = 8.", "The answer is 8."]])
>>> # out.step_scores[0]        # P('+') per step
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmreward.interface import RewardInput, RewardOutput
from mmreward.selection import STEP_AGGREGATORS, aggregate_steps
from mmreward.text.seqcls import lora_settings
from vision_rm.vlm.backbone import (
    VLMRewardModel,
    assistant_header_ids,
    encode_chats,
    hidden_states,
    load_vlm,
    one_per_item,
    single_token_id,
    user_content,
)

#: How the first user turn joins the question and the first step.
FIRST_TURN = "{question}\n\n{step}"


class VisualPRM(VLMRewardModel):
    """Step scores P('+') from a VLM's next-token logits, every step in one forward.

    Args:
        backbone: a transformers image-text-to-text model with an LM head.
        processor: its processor (chat template, tokenizer, image/video processors).
        plus_token, minus_token: the judgement strings; each must be one token.
        aggregate: how step scores become the solution score
            (:data:`mmreward.selection.STEP_AGGREGATORS`).
        padding_side: "left" or "right" (scores do not depend on it).
        first_turn: format of the first user turn (``{question}`` and ``{step}``).
        system_prompt: an optional system turn.
        lora: ``True`` or a dict of LoRA settings to train adapters only.

    Inputs: ``prompts`` (the questions) and ``steps`` (required); ``images``
    ``(B,3,H,W)`` / ``videos`` in [0,1] (optional). Output: ``scores`` (aggregated),
    ``step_scores`` (one ``(S_i,)`` tensor of P('+') per item) and
    ``extras["step_logits"]`` (z_+ − z_−, for step-level BCE).
    """

    inputs = ("prompts", "steps")

    def __init__(
        self,
        backbone: nn.Module,
        processor: Any,
        *,
        plus_token: str = "+",
        minus_token: str = "-",
        aggregate: str = "mean",
        padding_side: str = "left",
        first_turn: str = FIRST_TURN,
        system_prompt: str | None = None,
        lora: bool | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if aggregate not in STEP_AGGREGATORS:
            raise ValueError(f"aggregate: expected one of {STEP_AGGREGATORS}, got {aggregate!r}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        if "{question}" not in first_turn or "{step}" not in first_turn:
            raise ValueError(
                f"first_turn: expected '{{question}}' and '{{step}}', got {first_turn!r}"
            )
        self.backbone, self.processor = backbone, processor
        self.plus_token, self.minus_token = plus_token, minus_token
        self.plus_id = single_token_id(processor, plus_token, "plus_token")
        self.minus_id = single_token_id(processor, minus_token, "minus_token")
        if self.plus_id == self.minus_id:
            raise ValueError("minus_token: must differ from plus_token")
        self.aggregate, self.padding_side = aggregate, padding_side
        self.first_turn, self.system_prompt = first_turn, system_prompt
        self.header_ids = assistant_header_ids(processor)
        self.lora = lora_settings(lora)
        self.__dict__["_peft"] = None
        if self.lora:
            self._add_lora(self.lora)

    # -- formatting ------------------------------------------------------------------
    def conversation(
        self,
        question: str,
        steps: Sequence[str],
        image: bool = False,
        video: bool = False,
        judgements: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The multi-turn chat: one user turn per step, one assistant judgement after each."""
        if not steps:
            raise ValueError(f"steps: expected at least one step for question {question!r}")
        judgements = list(judgements) if judgements is not None else [self.plus_token] * len(steps)
        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        for k, step in enumerate(steps):
            if k == 0:
                text = self.first_turn.format(question=question, step=step)
                messages.append({"role": "user", "content": user_content(text, image, video)})
            else:
                messages.append({"role": "user", "content": [{"type": "text", "text": step}]})
            if k < len(judgements):
                messages.append({"role": "assistant", "content": judgements[k]})
        return messages

    def judgement_positions(self, input_ids: Tensor, n_steps: Sequence[int]) -> list[Tensor]:
        """Per row, the indices of the assistant placeholders (header followed by '+')."""
        header = torch.tensor(self.header_ids + [self.plus_id], device=input_ids.device)
        k = header.shape[0]
        windows = input_ids.unfold(1, k, 1)  # (B, T-k+1, k)
        hits = (windows == header).all(-1)
        out = []
        for i, n in enumerate(n_steps):
            pos = hits[i].nonzero().flatten() + (k - 1)
            if pos.numel() != n:
                raise ValueError(
                    f"steps: found {pos.numel()} judgement positions for {n} steps in item {i}; "
                    "a step's text reproduces the assistant header, or the tokenizer merges "
                    "the judgement token with its neighbours"
                )
            out.append(pos)
        return out

    # -- the forward -----------------------------------------------------------------
    def _judgement_logits(self, h: Tensor) -> Tensor:
        """z_+ − z_− from hidden states ``(N, H)``, reading two rows of the LM head only."""
        lm_head = self.backbone.get_output_embeddings()
        w = lm_head.weight[[self.plus_id, self.minus_id]]  # (2, H)
        z = h.to(w.dtype) @ w.T
        if getattr(lm_head, "bias", None) is not None:
            z = z + lm_head.bias[[self.plus_id, self.minus_id]]
        return (z[:, 0] - z[:, 1]).float()

    def compute(self, batch: RewardInput) -> RewardOutput:
        has_img, has_vid = batch.images is not None, batch.videos is not None
        convs = [
            self.conversation(q, s, has_img, has_vid) for q, s in zip(batch.prompts, batch.steps)
        ]
        enc = encode_chats(
            self.processor,
            convs,
            batch.images,
            batch.videos,
            padding_side=self.padding_side,
            device=self.device,
        )
        hidden = hidden_states(self.backbone, enc)  # (B, T, H)
        n_steps = [len(s) for s in batch.steps]
        positions = self.judgement_positions(enc["input_ids"], n_steps)
        rows = torch.cat([torch.full_like(p, i) for i, p in enumerate(positions)])
        # the logits that predict the placeholder at position t are read at t − 1
        logits = self._judgement_logits(hidden[rows, torch.cat(positions) - 1])
        step_logits = list(logits.split(n_steps))
        step_scores = [torch.sigmoid(x) for x in step_logits]
        scores = aggregate_steps(step_scores, self.aggregate)
        return RewardOutput(
            scores=scores, step_scores=step_scores, extras={"step_logits": step_logits}
        )

    @torch.no_grad()
    def score_steps_separately(
        self,
        prompts: Sequence[str],
        steps: Sequence[Sequence[str]],
        images: Tensor | None = None,
    ) -> list[Tensor]:
        """Reference: P('+') of step k from its own forward over steps ≤ k (S forwards per item).

        What a naive implementation does; :meth:`compute` gives the same numbers in one.
        """
        out = []
        for i, (q, s) in enumerate(zip(prompts, steps)):
            image = None if images is None else images[i : i + 1]
            probs = []
            for k in range(1, len(s) + 1):
                conv = self.conversation(
                    q, s[:k], image is not None, judgements=[self.plus_token] * (k - 1)
                )
                enc = encode_chats(
                    self.processor, [conv], image, add_generation_prompt=True, device=self.device
                )
                h = hidden_states(self.backbone, enc)[0, -1:]
                probs.append(torch.sigmoid(self._judgement_logits(h))[0])
            out.append(torch.stack(probs))
        return out

    def rank(  # type: ignore[override]
        self,
        candidates: Sequence[Sequence[str]],
        prompt: str | None = None,
        images: Any = None,
        **kwargs: Any,
    ) -> tuple[list[int], Tensor]:
        """Rank step lists for one question (and one image): ``(order, scores)``, best first."""
        candidates = [list(c) for c in candidates]
        images = one_per_item(images, len(candidates), "images")
        out = self.score(images, prompt, steps=candidates, **kwargs)
        order = torch.argsort(out.scores, descending=True, stable=True)
        return order.tolist(), out.scores


def split_steps(response: str, separator: str = "\n\n") -> list[str]:
    """A response split into steps on ``separator`` (VisualPRM: blank lines), empties dropped."""
    return [s.strip() for s in response.split(separator) if s.strip()]


def build_visualprm(
    weights: str | Path | None = None,
    *,
    saved_dir: str | Path | None = None,
    trust_remote_code: bool = False,
    **options: Any,
) -> VisualPRM:
    """Registry factory: a Hugging Face VLM directory (``weights``) or a saved mmreward dir.

    ``options`` go to :class:`VisualPRM` (``plus_token``, ``minus_token``, ``aggregate``,
    ``padding_side``, ``first_turn``, ``system_prompt``, ``lora``).
    """
    backbone, processor = load_vlm(
        weights, saved_dir=saved_dir, trust_remote_code=trust_remote_code
    )
    prm = VisualPRM(backbone, processor, **options)
    prm.init_kwargs = dict(options)
    return prm


def new_prm(backbone: nn.Module, processor: Any, **options: Any) -> VisualPRM:
    """A PRM on an in-memory backbone (e.g. the tiny Qwen2-VL), registered as ``visualprm``."""
    prm = VisualPRM(backbone, processor, **options)
    prm.init_kwargs = dict(options)
    prm.reward_name = "visualprm.local"
    return prm


__all__ = ["FIRST_TURN", "VisualPRM", "build_visualprm", "new_prm", "split_steps"]
