"""Sequence-classifier reward models (Skywork-Reward style) from any ``transformers`` checkpoint.

A decoder LM with a scalar head (``AutoModelForSequenceClassification``, ``num_labels=1``)
reads the (prompt, response) conversation through the tokenizer's chat template; the
reward is the head's output at the **last real token**, located from the attention mask
(not from the pad id, which may equal eos), so left and right padding give the same
rewards. Encoder cross-encoders (DeBERTa/BERT reward models) use the model's own pooling
on the tokenizer's ``(prompt, response)`` pair encoding instead.

Trainable with :class:`mmreward.train.RewardModelTrainer` (Bradley-Terry, margins,
centering): the forward keeps gradients; ``lora=True`` (or a dict of LoRA settings)
trains low-rank adapters + the head only (peft). A LoRA model is saved *unmerged*, with
its adapter settings in ``mmreward.json``, so ``mmreward.load(saved_dir)`` rebuilds the
same adapters; :meth:`SequenceClassifierReward.merge_lora` folds them into the weights.

Papers: Liu et al. 2024, "Skywork-Reward: Bag of Tricks for Reward Modeling in LLMs";
Ouyang et al. 2022 (InstructGPT), Eq. 1 (the pairwise loss, in :mod:`mmreward.losses`);
Hu et al. 2021, "LoRA".

>>> # rm = mmreward.load("seqcls.skywork-reward-llama-3.1-8b", weights="/models/skywork")
>>> # rm.score(prompts=["What is 2+2?"] * 2, responses=["4", "5"]).scores
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
    last_token_index,
    load_backbone,
    pad_batch,
    prepare_tokenizer,
    truncate_left,
)

#: LoRA settings used by ``lora=True`` (override any of them with a dict).
LORA_DEFAULTS: dict[str, Any] = {
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "target_modules": "all-linear",
}


def lora_settings(lora: bool | dict[str, Any] | None) -> dict[str, Any] | None:
    """``None`` for no LoRA, else :data:`LORA_DEFAULTS` updated with ``lora``."""
    if not lora:
        return None
    if lora is True:
        return dict(LORA_DEFAULTS)
    if not isinstance(lora, dict):
        raise ValueError(f"lora: expected True, False or a dict of LoRA settings, got {lora!r}")
    unknown = sorted(set(lora) - {*LORA_DEFAULTS, "modules_to_save", "bias"})
    if unknown:
        raise ValueError(f"lora: unknown setting(s) {unknown}; valid: {sorted(LORA_DEFAULTS)}")
    return {**LORA_DEFAULTS, **lora}


class SequenceClassifierReward(TextRewardModel):
    """A reward model reading a scalar head at the end of a chat-formatted conversation.

    Args:
        model: a ``transformers`` ``*ForSequenceClassification`` model.
        tokenizer: its tokenizer (a chat template is used when it has one).
        pooling: ``"last"`` (head on the last real token's hidden state; decoder RMs),
            ``"model"`` (the model's own pooled logits; encoder RMs) or ``"auto"``
            (``"last"`` when the model has a ``score`` head).
        input_format: ``"chat"`` (user/assistant turns through the chat template),
            ``"pair"`` (``tokenizer(prompt, response)``) or ``"auto"`` (chat for
            decoders or tokenizers with a template).
        reward_label: which output column is the reward (``num_labels > 1``).
        max_length: keep the last ``max_length`` tokens (left truncation; the reward
            is read at the end). None: no truncation.
        padding_side: override the tokenizer's padding side (results do not depend on it).
        chat_template: override the tokenizer's chat template (a Jinja string).
        lora: ``True`` or a dict (see :data:`LORA_DEFAULTS`) to train LoRA adapters.
    """

    inputs = ("prompts", "responses")

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        pooling: str = "auto",
        input_format: str = "auto",
        reward_label: int = 0,
        max_length: int | None = None,
        padding_side: str | None = None,
        chat_template: str | None = None,
        lora: bool | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = prepare_tokenizer(tokenizer, chat_template)
        if padding_side is not None:
            self.padding_side = padding_side
        if pooling == "auto":
            pooling = "last" if isinstance(getattr(model, "score", None), nn.Module) else "model"
        if pooling not in ("last", "model"):
            raise ValueError(f"pooling: expected 'last', 'model' or 'auto', got {pooling!r}")
        if input_format == "auto":
            has_template = bool(getattr(tokenizer, "chat_template", None))
            input_format = "chat" if pooling == "last" or has_template else "pair"
        if input_format not in ("chat", "pair"):
            raise ValueError(
                f"input_format: expected 'chat', 'pair' or 'auto', got {input_format!r}"
            )
        n_labels = int(getattr(model.config, "num_labels", 1))
        if not 0 <= reward_label < n_labels:
            raise ValueError(
                f"reward_label: expected an output index in [0, {n_labels}), got {reward_label}"
            )
        self.pooling, self.input_format, self.reward_label = pooling, input_format, reward_label
        self.max_length = max_length
        self.lora = lora_settings(lora)
        self.__dict__["_peft"] = None  # not a sub-module: its weights are self.model's
        if self.lora:
            self._add_lora(self.lora)

    # -- LoRA --------------------------------------------------------------------------
    def _add_lora(self, settings: dict[str, Any]) -> None:
        from peft import LoraConfig, TaskType, get_peft_model

        peft_model = get_peft_model(self.model, LoraConfig(task_type=TaskType.SEQ_CLS, **settings))
        self.__dict__["_peft"] = peft_model
        self.model = peft_model.base_model.model  # the same module, adapters injected in place

    def merge_lora(self) -> SequenceClassifierReward:
        """Fold the LoRA adapters into the base weights (in place); returns ``self``."""
        if self._peft is None:
            raise ValueError("merge_lora: this model has no LoRA adapters")
        self.model = self._peft.merge_and_unload()
        self.__dict__["_peft"] = None
        self.lora = None
        self.init_kwargs = {**self.init_kwargs, "lora": None}
        return self

    # -- the forward -----------------------------------------------------------------
    @property
    def padding_side(self) -> str:
        return self.tokenizer.padding_side

    @padding_side.setter
    def padding_side(self, side: str) -> None:
        if side not in ("left", "right"):
            raise ValueError(f"padding_side: expected 'left' or 'right', got {side!r}")
        self.tokenizer.padding_side = side

    def format(self, prompt: str, response: str) -> str:
        """The conversation text the model reads (chat format)."""
        messages = [{"role": "user", "content": prompt}] if prompt else []
        messages.append({"role": "assistant", "content": response})
        return chat_text(self.tokenizer, messages)

    def compute(self, batch: RewardInput) -> RewardOutput:
        prompts, responses = batch.prompts, batch.responses
        if self.input_format == "pair":
            enc = self.tokenizer(
                list(prompts),
                list(responses),
                padding=True,
                truncation="longest_first" if self.max_length else False,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            logits = self.model(**enc).logits
        else:
            ids = [
                truncate_left(x, self.max_length)
                for x in encode(
                    self.tokenizer, [self.format(p, r) for p, r in zip(prompts, responses)]
                )
            ]
            input_ids, mask, positions = pad_batch(
                ids, self.tokenizer.pad_token_id, self.padding_side, self.device
            )
            if self.pooling == "last":
                logits = self._last_token_logits(input_ids, mask, positions)
            else:
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits
        scores = logits[:, self.reward_label].float()
        return RewardOutput(scores=scores, extras={"logits": logits.float()})

    def _last_token_logits(self, input_ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        backbone = getattr(self.model, self.model.base_model_prefix)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
        if forward_accepts(backbone, "position_ids"):
            kwargs["position_ids"] = positions
        hidden = backbone(**kwargs)[0]  # (B, T, H)
        last = last_token_index(mask)
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.model.score(h)  # (B, num_labels)

    def backbones(self) -> dict[str, tuple[nn.Module, Any]]:
        return {"hf": (self.model, self.tokenizer)}


def build_sequence_classifier(
    weights: str | Path | None = None,
    *,
    hf_config: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    **options: Any,
) -> SequenceClassifierReward:
    """Registry factory: a Hugging Face model directory (``weights``) or a saved mmreward dir.

    ``options`` go to :class:`SequenceClassifierReward` (``lora``, ``max_length``,
    ``pooling``, ``input_format``, ``reward_label``, ``padding_side``, ``chat_template``).
    """
    model, tokenizer = load_backbone(
        "seqcls", weights, hf_config, trust_remote_code=trust_remote_code
    )
    rm = SequenceClassifierReward(model, tokenizer, **options)
    rm.init_kwargs = dict(options)
    return rm
