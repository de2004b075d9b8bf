"""Vision-language outcome reward models: a VLM with a scalar head read at the last token.

Skywork-VL Reward (Wang et al. 2025, "Skywork-VL Reward: An Effective Reward Model for
Multimodal Understanding and Reasoning") and InternLM-XComposer2.5-Reward (Zang et al.
2025, "InternLM-XComposer2.5-Reward: A Simple Yet Effective Multi-Modal Reward Model")
put a value head on a VLM: the (image, question, answer) conversation goes through the
chat template, and ``r = w·h_T + b`` where ``h_T`` is the final hidden state of the
**last real token**, located from the attention mask so left and right padding give the
same reward. Trained with the Bradley-Terry loss −log σ(r_w − r_l) (InstructGPT Eq. 1).

Any ``AutoModelForImageTextToText`` checkpoint works as the backbone (Qwen2-VL family
at least). The head is read from the checkpoint when it has one: trl's
``AutoModelForCausalLMWithValueHead`` layout (``v_head.summary.weight/bias``, used by
Skywork-VL-Reward) by default, any other prefix with ``head_key=...``.

IXC-style API on top of the reward interface: :meth:`VLMOutcomeReward.score`,
:meth:`~VLMOutcomeReward.compare` (P(a ≻ b) for one image and prompt) and
:meth:`~VLMOutcomeReward.rank` (order of N answers, best first).

>>> # rm = mmreward.load("vlm-orm.skywork-vl-reward-7b", weights="/models/Skywork-VL-Reward-7B")
>>> # rm.rank(["The answer is 8.", "The answer is 9."], "What is 3 + 5?", images=img)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmreward.checkpoint import CheckpointError
from mmreward.interface import RewardInput, RewardOutput
from mmreward.text.hf import last_token_index
from mmreward.text.seqcls import lora_settings
from vision_rm.vlm.backbone import (
    VLMRewardModel,
    encode_chats,
    hidden_size,
    hidden_states,
    load_vlm,
    one_per_item,
    user_content,
)

#: Where the value head lives in trl's ``AutoModelForCausalLMWithValueHead`` checkpoints.
TRL_HEAD_KEY = "v_head.summary"


class VLMOutcomeReward(VLMRewardModel):
    """``r(image, prompt, response)`` = Linear(last real token's hidden state).

    Args:
        backbone: a transformers image-text-to-text model (e.g.
            ``Qwen2VLForConditionalGeneration``).
        processor: its processor (tokenizer + image/video processors + chat template).
        head: the ``Linear(hidden, 1)`` value head (new, zero bias, when None).
        padding_side: "left" or "right" (scores do not depend on it).
        lora: ``True`` or a dict of LoRA settings (:data:`mmreward.text.seqcls.LORA_DEFAULTS`)
            to train low-rank adapters + the head only.
        system_prompt: an optional system turn.

    Inputs: ``prompts`` and ``responses`` (required); ``images`` ``(B,3,H,W)`` or
    ``videos`` ``(B,T,3,H,W)`` in [0,1] (optional: without them the question is text-only).
    """

    inputs = ("prompts", "responses")

    def __init__(
        self,
        backbone: nn.Module,
        processor: Any,
        head: nn.Linear | None = None,
        *,
        padding_side: str = "left",
        lora: bool | dict[str, Any] | None = None,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.processor = processor
        self.head = head if head is not None else nn.Linear(hidden_size(backbone), 1)
        if head is None:
            nn.init.normal_(self.head.weight, std=1.0 / (hidden_size(backbone) + 1) ** 0.5)
            nn.init.zeros_(self.head.bias)
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        self.padding_side = padding_side
        self.system_prompt = system_prompt
        self.lora = lora_settings(lora)
        self.__dict__["_peft"] = None
        if self.lora:
            self._add_lora(self.lora)

    # -- the forward -----------------------------------------------------------------
    def conversation(
        self, prompt: str, response: str, image: bool = False, video: bool = False
    ) -> list[dict[str, Any]]:
        """The chat the model reads: [system], user (image + prompt), assistant (response)."""
        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": user_content(prompt, image, video)})
        messages.append({"role": "assistant", "content": response})
        return messages

    def compute(self, batch: RewardInput) -> RewardOutput:
        convs = [
            self.conversation(p, r, batch.images is not None, batch.videos is not None)
            for p, r in zip(batch.prompts, batch.responses)
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
        last = last_token_index(enc["attention_mask"])
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        scores = self.head(h.to(self.head.weight.dtype)).squeeze(-1).float()
        return RewardOutput(scores=scores)

    # -- IXC-style convenience -------------------------------------------------------
    def compare(  # type: ignore[override]
        self,
        a: Sequence[str] | str,
        b: Sequence[str] | str,
        prompts: str | Sequence[str] | None = None,
        temperature: float = 1.0,
        images: Any = None,
        **kwargs: Any,
    ) -> Tensor:
        """P(a ≻ b) = σ((r(a) − r(b)) / T) for responses ``a`` and ``b`` to the same inputs.

        ``images`` is one image (shared) or one per pair.
        """
        a = [a] if isinstance(a, str) else list(a)
        b = [b] if isinstance(b, str) else list(b)
        images = one_per_item(images, len(a), "images")
        ra = self.score(images, prompts, responses=a, **kwargs).scores
        rb = self.score(images, prompts, responses=b, **kwargs).scores
        if ra.shape != rb.shape:
            raise ValueError(f"b: expected {ra.shape[0]} responses like a, got {rb.shape[0]}")
        return torch.sigmoid((ra - rb).float() / temperature)

    def rank(  # type: ignore[override]
        self,
        candidates: Sequence[str],
        prompt: str | None = None,
        images: Any = None,
        **kwargs: Any,
    ) -> tuple[list[int], Tensor]:
        """Rank responses to one prompt (and one image): ``(order, scores)``, best first."""
        candidates = list(candidates)
        images = one_per_item(images, len(candidates), "images")
        out = self.score(images, prompt, responses=candidates, **kwargs)
        order = torch.argsort(out.scores, descending=True, stable=True)
        return order.tolist(), out.scores


# ------------------------------------------------------------------ checkpoint head
def read_head(folder: str | Path, head_key: str = TRL_HEAD_KEY) -> dict[str, Tensor] | None:
    """``{"weight", "bias"}`` of a value head stored in a HF directory's safetensors, or None."""
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    files = set(folder.glob("*.safetensors"))
    if index.is_file():  # sharded: the head sits in one of the shards
        files |= {folder / f for f in json.loads(index.read_text())["weight_map"].values()}
    found: dict[str, Tensor] = {}
    for f in sorted(files):
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():  # noqa: SIM118 - safe_open has no __iter__
                if key.startswith(head_key + "."):
                    found[key[len(head_key) + 1 :]] = sf.get_tensor(key)
    if not found:
        return None
    unexpected = sorted(set(found) - {"weight", "bias"})
    missing = sorted({"weight"} - set(found))
    if unexpected or missing:
        raise CheckpointError(missing, unexpected, source=f"{folder} value head '{head_key}'")
    return found


def build_vlm_orm(
    weights: str | Path | None = None,
    *,
    saved_dir: str | Path | None = None,
    trust_remote_code: bool = False,
    head_key: str = TRL_HEAD_KEY,
    require_head: bool = False,
    **options: Any,
) -> VLMOutcomeReward:
    """Registry factory: a Hugging Face VLM directory (``weights``) or a saved mmreward dir.

    From ``weights``, the value head is read from the checkpoint under ``head_key`` when
    present (strictly: ``weight`` (1, H) and optional ``bias``); otherwise a new head is
    initialised for training, or ``require_head=True`` makes that an error.
    ``options`` go to :class:`VLMOutcomeReward` (``lora``, ``padding_side``, ``system_prompt``).
    """
    backbone, processor = load_vlm(
        weights, saved_dir=saved_dir, trust_remote_code=trust_remote_code
    )
    head = None
    if weights is not None:
        state = read_head(weights, head_key)
        if state is None and require_head:
            raise CheckpointError(["weight"], [], source=f"{weights} value head '{head_key}'")
        if state is not None:
            h = hidden_size(backbone)
            if tuple(state["weight"].shape) != (1, h):
                raise CheckpointError(
                    [],
                    [],
                    [f"{head_key}.weight: checkpoint {tuple(state['weight'].shape)} vs (1, {h})"],
                    source=str(weights),
                )
            head = nn.Linear(h, 1, bias="bias" in state)
            head.load_state_dict(state, strict=True)
            if "bias" not in state:  # keep one head layout: a zero bias
                bias_free, head = head, nn.Linear(h, 1)
                head.weight.data.copy_(bias_free.weight.data)
                nn.init.zeros_(head.bias)
    rm = VLMOutcomeReward(backbone, processor, head, **options)
    rm.init_kwargs = dict(options)
    return rm


def new_orm(backbone: nn.Module, processor: Any, **options: Any) -> VLMOutcomeReward:
    """A fresh outcome RM on ``backbone`` (e.g. the tiny Qwen2-VL), registered as ``vlm-orm``."""
    rm = VLMOutcomeReward(backbone, processor, **options)
    rm.init_kwargs = dict(options)
    rm.reward_name = "vlm-orm.local"
    return rm


__all__ = [
    "TRL_HEAD_KEY",
    "VLMOutcomeReward",
    "build_vlm_orm",
    "new_orm",
    "read_head",
]
