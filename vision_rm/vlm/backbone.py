"""Vision-language backbones shared by the VLM reward models: loading, chat encoding, saving.

- :func:`load_vlm` builds ``(model, processor)`` from a Hugging Face model directory (any
  ``AutoModelForImageTextToText`` checkpoint: Qwen2-VL, Qwen2.5-VL, LLaVA, ...) with
  ``from_pretrained`` in fp32, or from the config + processor files that
  :meth:`VLMRewardModel.save_extra_files` writes beside a saved reward model (the
  weights then come from ``model.safetensors``, loaded strictly by :func:`mmreward.load`).
  Remote code runs only with ``trust_remote_code=True``.
- :func:`encode_chats` turns chat conversations (+ one optional image or video per item,
  float tensors in [0,1]) into model inputs through the processor's chat template.
- :func:`hidden_states` runs the backbone without the LM head (``(B, T, H)``).
- :class:`VLMRewardModel` is the base class: batching keeps one image size per batch,
  saving writes the backbone's config and processor next to the weights, LoRA adapters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmreward.errors import InputError
from mmreward.interface import RewardModel

#: Sub-folder of a saved reward model holding the backbone config and processor files.
BACKBONE_DIR = "backbone"


# --------------------------------------------------------------------------- loading
def _quiet():
    try:
        from mmreward.world.clip import quiet_hf

        return quiet_hf()
    except ImportError:  # pragma: no cover - the world ships with the toolkit
        return contextlib.nullcontext()


def _no_init_weights():
    from mmreward.text.hf import _no_init_weights as no_init

    return no_init()


def load_vlm(
    weights: str | Path | None = None,
    *,
    saved_dir: str | Path | None = None,
    trust_remote_code: bool = False,
    field: str = "weights",
) -> tuple[nn.Module, Any]:
    """``(model, processor)``: from a Hugging Face directory, or rebuilt from a saved RM.

    With ``weights`` (a directory with ``config.json``, weights and processor files) the
    model loads with ``AutoModelForImageTextToText.from_pretrained`` in fp32. With
    ``saved_dir`` (a folder written by :meth:`VLMRewardModel.save_pretrained`) the model is
    built from ``saved_dir/backbone/config.json`` with uninitialised weights; the caller
    fills them from the saved state dict.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from mmreward.text.hf import check_model_dir

    if weights is not None:
        path = check_model_dir(weights, field)
        with _quiet():
            model = AutoModelForImageTextToText.from_pretrained(
                path, dtype=torch.float32, trust_remote_code=trust_remote_code
            )
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        return model, processor
    if saved_dir is None:
        raise ValueError(
            f"{field}: expected a Hugging Face model directory, got None; pass "
            f"mmreward.load(name, {field}='/path/to/model_dir') or a saved mmreward directory"
        )
    folder = Path(saved_dir) / BACKBONE_DIR
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"saved_dir: {folder} has no config.json; the directory was not written by a VLM "
            "reward model's save_pretrained"
        )
    with _quiet():
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        with _no_init_weights():  # every weight comes from the saved state dict
            model = AutoModelForImageTextToText.from_config(
                config, dtype=torch.float32, trust_remote_code=trust_remote_code
            )
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
    return model, processor


def base_model(model: nn.Module) -> nn.Module:
    """The backbone without the LM head (``model.model`` for transformers VLMs)."""
    prefix = getattr(model, "base_model_prefix", "model")
    inner = getattr(model, prefix, None)
    if not isinstance(inner, nn.Module):
        raise ValueError(
            f"model: {type(model).__name__} has no base model under {prefix!r}; expected a "
            "transformers *ForConditionalGeneration / AutoModelForImageTextToText model"
        )
    return inner


def hidden_size(model: nn.Module) -> int:
    cfg = model.config
    text = getattr(cfg, "text_config", None) or cfg
    return int(text.hidden_size)


# ------------------------------------------------------------------------- encoding
def user_content(prompt: str, image: bool = False, video: bool = False) -> list[dict[str, str]]:
    """A user turn's content parts: the image/video placeholder first, then the text."""
    parts: list[dict[str, str]] = []
    if image:
        parts.append({"type": "image"})
    if video:
        parts.append({"type": "video"})
    parts.append({"type": "text", "text": prompt})
    return parts


def chat_template_text(processor: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """``messages`` through the processor's chat template (the tokenizer's as a fallback)."""
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(messages, tokenize=False, **kwargs)
    tokenizer = getattr(processor, "tokenizer", processor)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "processor: has no chat template; pass chat_template=... (a Jinja string) to the "
            "reward model"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def encode_chats(
    processor: Any,
    conversations: Sequence[list[dict[str, Any]]],
    images: Tensor | None = None,
    videos: Tensor | None = None,
    *,
    padding_side: str = "left",
    add_generation_prompt: bool = False,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Model inputs for ``conversations`` (one image ``(B,3,H,W)`` or video ``(B,T,3,H,W)``
    per conversation, floats in [0,1]; the conversation holds the placeholder parts)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
    texts = [
        chat_template_text(processor, m, add_generation_prompt=add_generation_prompt)
        for m in conversations
    ]
    kwargs: dict[str, Any] = {}
    if images is not None:
        kwargs["images"] = [x.detach().float().cpu() for x in images]
        kwargs["images_kwargs"] = {"do_rescale": False}  # pixels are already in [0,1]
    if videos is not None:
        kwargs["videos"] = [v.detach().float().cpu() for v in videos]
        kwargs["videos_kwargs"] = {"do_rescale": False, "do_sample_frames": False}
    tokenizer = getattr(processor, "tokenizer", processor)
    saved_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        enc = processor(text=texts, padding=True, return_tensors="pt", **kwargs)
    finally:
        tokenizer.padding_side = saved_side
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in enc.items()}


def assistant_header_ids(processor: Any) -> list[int]:
    """Token ids the chat template puts before an assistant answer.

    For Qwen2-VL that is ``<|im_start|>assistant\\n``: the difference between a rendered
    user turn with and without ``add_generation_prompt``.
    """
    user = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    bare = chat_template_text(processor, user)
    prompt = chat_template_text(processor, user, add_generation_prompt=True)
    if not prompt.startswith(bare) or prompt == bare:
        raise ValueError(
            "processor: the chat template adds no assistant header with "
            "add_generation_prompt=True; assistant turns cannot be located"
        )
    tokenizer = getattr(processor, "tokenizer", processor)
    return tokenizer.encode(prompt[len(bare) :], add_special_tokens=False)


def hidden_states(model: nn.Module, enc: dict[str, Tensor]) -> Tensor:
    """Last hidden states ``(B, T, H)`` of the backbone (no LM head, no ``(B,T,V)`` logits)."""
    inner = base_model(model)
    out = inner(**enc, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def single_token_id(processor: Any, text: str, field: str) -> int:
    """The id of ``text`` when it is exactly one token, else an :class:`InputError`."""
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise InputError(field, "a string that is one token of the tokenizer", f"{text!r} → {ids}")
    return int(ids[0])


def one_per_item(x: Any, n: int, field: str) -> Any:
    """Broadcast a single image ``(3,H,W)`` / PIL / path to ``n`` items; lists pass through."""
    if x is None:
        return None
    if isinstance(x, Tensor) and x.ndim == 3:
        return x.unsqueeze(0).expand(n, -1, -1, -1)
    if isinstance(x, (str, Path)) or type(x).__name__.endswith("Image"):
        return [x] * n
    if isinstance(x, Tensor) and x.shape[0] == 1 and n > 1:
        return x.expand(n, *x.shape[1:])
    if len(x) != n:
        raise InputError(field, f"one image or {n} images", f"{len(x)}")
    return x


# ------------------------------------------------------------------------ base class
class VLMRewardModel(RewardModel):
    """Base class of the VLM reward models: a transformers VLM + processor (+ a head).

    Subclasses set ``self.backbone`` and ``self.processor``. ``save_pretrained`` writes
    ``model.safetensors`` (backbone + head), ``mmreward.json`` and ``backbone/`` (the
    backbone's ``config.json`` and processor files), so ``mmreward.load(directory)``
    rebuilds the model offline and reproduces its scores.
    """

    differentiable = False  # pixels go through the processor (resize/patchify on CPU)
    backbone: nn.Module
    processor: Any

    def save_extra_files(self, directory: Path) -> None:
        folder = Path(directory) / BACKBONE_DIR
        with _quiet():
            self.backbone.config.save_pretrained(folder)
            self.processor.save_pretrained(folder)

    def save_pretrained(self, directory: str | Path) -> Path:
        saved = self.init_kwargs
        # trust_remote_code is never persisted: a reload must not run code silently
        self.init_kwargs = {k: v for k, v in saved.items() if k != "trust_remote_code"}
        try:
            return super().save_pretrained(directory)
        finally:
            self.init_kwargs = saved

    # -- LoRA ------------------------------------------------------------------------
    def _add_lora(self, settings: dict[str, Any]) -> None:
        from peft import LoraConfig, get_peft_model

        peft_model = get_peft_model(self.backbone, LoraConfig(**settings))
        self.__dict__["_peft"] = peft_model  # not a sub-module: its weights are the backbone's
        self.backbone = peft_model.base_model.model  # adapters injected in place

    def merge_lora(self):
        """Fold LoRA adapters into the backbone weights (in place); returns ``self``."""
        peft_model = self.__dict__.get("_peft")
        if peft_model is None:
            raise ValueError("merge_lora: this model has no LoRA adapters")
        self.backbone = peft_model.merge_and_unload()
        self.__dict__["_peft"] = None
        self.lora = None
        self.init_kwargs = {**self.init_kwargs, "lora": None}
        return self
