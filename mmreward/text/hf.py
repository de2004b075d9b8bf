"""Hugging Face backbones for the text reward models: loading, chat formatting, padding, saving.

Every text reward model wraps one or two ``transformers`` models plus a tokenizer. This
module holds the parts they share:

- :func:`load_backbone` builds ``(model, tokenizer)`` from a Hugging Face model directory
  (``mmreward.load(name, weights=dir)``) or from the config + tokenizer files embedded in a
  saved ``mmreward.json`` (``mmreward.load(saved_dir)``); models load in fp32 and never run
  remote code unless ``trust_remote_code=True``;
- :func:`chat_text` applies the tokenizer's chat template (or :data:`SIMPLE_CHAT_TEMPLATE`
  when the tokenizer has none), :func:`pad_batch` pads token-id lists on either side and
  derives position ids from the attention mask, :func:`last_token_index` finds the last
  real token from the mask (never from the pad id, which may equal eos);
- :class:`TextRewardModel` is the base class: length-sorted batching in ``score`` and a
  ``save_pretrained`` that embeds the backbone config and tokenizer files in
  ``mmreward.json`` so ``mmreward.load(directory)`` rebuilds the model with no network.
"""

from __future__ import annotations

import base64
import json
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmreward.errors import WeightsNotFoundError
from mmreward.interface import RewardModel, RewardOutput

#: Chat template used when a tokenizer has none (and set on the tiny tokenizers). Messages
#: are ``<|role|>content<eos>``; the generation prompt is ``<|assistant|>``.
SIMPLE_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

_AUTO_CLASSES = {
    "seqcls": "AutoModelForSequenceClassification",
    "causal": "AutoModelForCausalLM",
}


# --------------------------------------------------------------------------- loading
def _auto_class(kind: str):
    import transformers

    return getattr(transformers, _AUTO_CLASSES[kind])


def check_model_dir(weights: str | Path, field: str = "weights") -> Path:
    """``weights`` as a Hugging Face model directory, or a ``ValueError`` saying what to pass."""
    path = Path(weights).expanduser()
    if path.is_file():
        raise ValueError(
            f"{field}: expected a Hugging Face model directory (config.json, *.safetensors, "
            f"tokenizer files), got the file {path}; pass its folder instead"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{field}: {path} has no config.json; expected a Hugging Face model directory "
            "(e.g. a snapshot of the hub repository, or model.save_pretrained(dir) + "
            "tokenizer.save_pretrained(dir))"
        )
    return path


def resolve_model_source(source: str | Path, field: str, local_files_only: bool = False) -> Path:
    """A local directory for ``source``: a path as is, or a hub id from the local HF cache/hub.

    Offline with nothing cached, raises :class:`~mmreward.errors.WeightsNotFoundError`
    saying which repository to download and what to pass instead.
    """
    path = Path(source).expanduser()
    if path.exists():
        return check_model_dir(path, field)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source), local_files_only=local_files_only))
    except Exception as e:  # offline / not found / gated: many exception types
        reason = (
            f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
        )
        raise WeightsNotFoundError(
            f"{field}: {source!r} is neither a local directory nor available from the hub "
            f"({reason}). Download hf-hub:{source} and pass {field}='/path/to/that/folder'."
        ) from e


def load_backbone(
    kind: str,
    weights: str | Path | None,
    hf_config: dict[str, Any] | None,
    *,
    trust_remote_code: bool = False,
    field: str = "weights",
) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` of ``kind`` ∈ {"seqcls", "causal"}.

    From ``weights`` (a Hugging Face model directory, loaded with ``from_pretrained`` in
    fp32), else from ``hf_config = {"config": dict, "tokenizer_files": dict}`` (written by
    :meth:`TextRewardModel.save_pretrained`; the model is built from the config and the
    caller's loader fills in the weights).
    """
    from transformers import AutoConfig, AutoTokenizer

    auto = _auto_class(kind)
    if weights is not None:
        path = check_model_dir(weights, field)
        model = auto.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        return model, tokenizer
    if not hf_config:
        raise ValueError(
            f"{field}: expected a Hugging Face model directory, got None; pass "
            f"mmreward.load(name, {field}='/path/to/model_dir') or a saved mmreward directory"
        )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(hf_config["config"]))
        config = AutoConfig.from_pretrained(tmp, trust_remote_code=trust_remote_code)
    with _no_init_weights():  # every weight comes from the saved state dict
        model = auto.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    tokenizer = tokenizer_from_files(hf_config["tokenizer_files"], trust_remote_code)
    return model, tokenizer


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            import contextlib

            return contextlib.nullcontext()
    return no_init_weights()


def tokenizer_files(tokenizer: Any) -> dict[str, str]:
    """The files ``tokenizer.save_pretrained`` writes, as ``{name: text}`` (binary → ``base64:``)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for p in sorted(Path(tmp).iterdir()):
            if not p.is_file():
                continue
            raw = p.read_bytes()
            try:
                out[p.name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                out[p.name] = "base64:" + base64.b64encode(raw).decode("ascii")
    return out


def tokenizer_from_files(files: dict[str, str], trust_remote_code: bool = False) -> Any:
    """Rebuild a tokenizer from :func:`tokenizer_files` output."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            target = Path(tmp) / Path(name).name
            if text.startswith("base64:"):
                target.write_bytes(base64.b64decode(text[len("base64:") :]))
            else:
                target.write_text(text, encoding="utf-8")
        return AutoTokenizer.from_pretrained(tmp, trust_remote_code=trust_remote_code)


def backbone_state(model: nn.Module, tokenizer: Any) -> dict[str, Any]:
    """What :func:`load_backbone` needs to rebuild ``model`` without its weights."""
    return {"config": model.config.to_dict(), "tokenizer_files": tokenizer_files(tokenizer)}


def prepare_tokenizer(tokenizer: Any, chat_template: str | None = None) -> Any:
    """Set a pad token (eos when missing) and, if given, a chat template override."""
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                "tokenizer: has neither a pad nor an eos token; set tokenizer.pad_token first"
            )
        tokenizer.pad_token = tokenizer.eos_token  # safe: rewards are read from the mask
    return tokenizer


# ----------------------------------------------------------------------- formatting
def chat_text(
    tokenizer: Any,
    messages: list[dict[str, str]],
    add_generation_prompt: bool = False,
) -> str:
    """``messages`` through the tokenizer's chat template (``SIMPLE_CHAT_TEMPLATE`` if none)."""
    template = None if getattr(tokenizer, "chat_template", None) else SIMPLE_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of already formatted texts (special tokens come from the template)."""
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def pad_batch(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    side: str = "right",
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pad token-id lists to one ``(B, T)`` batch on ``side``.

    Returns ``(input_ids, attention_mask, position_ids)``; position ids count real tokens
    only (``cumsum(mask) − 1``), so a left-padded row sees the same positions as unpadded.
    """
    if side not in ("left", "right"):
        raise ValueError(f"padding_side: expected 'left' or 'right', got {side!r}")
    if any(len(s) == 0 for s in sequences):
        raise ValueError("sequences: every sequence needs at least one token")
    t = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), t), dtype=torch.long)
    for i, s in enumerate(sequences):
        row = torch.as_tensor(list(s), dtype=torch.long)
        if side == "right":
            ids[i, : len(s)], mask[i, : len(s)] = row, 1
        else:
            ids[i, t - len(s) :], mask[i, t - len(s) :] = row, 1
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids.to(device), mask.to(device), position_ids.to(device)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real token of each row, from the mask (works for either padding side)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=-1)


def truncate_left(ids: list[int], max_length: int | None) -> list[int]:
    """Keep the last ``max_length`` tokens (rewards are read at the end of the sequence)."""
    return ids if max_length is None or len(ids) <= max_length else ids[-max_length:]


def forward_accepts(model: nn.Module, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def stable_seed(*parts: str, base: int = 0) -> int:
    """A seed that depends only on the text (not on batch composition or Python's hash salt)."""
    return (base * 1_000_003 + zlib.crc32("\x1f".join(parts).encode("utf-8"))) % (2**31)


def token_logprobs(
    model: nn.Module, sequences: Sequence[Sequence[int]], n_target: Sequence[int], pad_id: int
) -> list[Tensor]:
    """log p(token) of the last ``n_target[i]`` tokens of each sequence under a causal LM (fp32).

    Sequences are left-padded so every target sits at the end, and only the last
    ``max(n_target) + 1`` positions' logits are computed when the model supports
    ``logits_to_keep`` (no ``(B, T, V)`` tensor for long prompts).
    """
    device = next(model.parameters()).device
    ids, mask, pos = pad_batch(sequences, pad_id, "left", device)
    t = ids.shape[1]
    keep = max(n_target) + 1
    if any(n >= len(s) for n, s in zip(n_target, sequences)):
        raise ValueError("token_logprobs: every target needs at least one context token before it")
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    if forward_accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits
    logits = logits[:, -keep:]  # positions t-keep .. t-1
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # predicts positions t-keep+1 .. t-1
    targets = ids[:, t - keep + 1 :]
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, keep-1)
    return [picked[i, picked.shape[1] - n :] for i, n in enumerate(n_target)]


# ------------------------------------------------------------------------ base class
class TextRewardModel(RewardModel):
    """Base class of the text reward models: text in, ``(B,)`` scores out, no pixels.

    ``score`` sorts items by length before batching (less padding) and returns results in
    input order; ``save_pretrained`` embeds the backbones' configs and tokenizer files.
    """

    differentiable = False  # text models take no pixels

    def backbones(self) -> dict[str, tuple[nn.Module, Any]]:  # pragma: no cover - abstract
        """``{kwarg_key: (hf_model, tokenizer)}`` to embed in ``mmreward.json``."""
        raise NotImplementedError

    def rebuild_kwargs(self) -> dict[str, Any]:
        """``init_kwargs`` plus the embedded backbone state (written by ``save_pretrained``)."""
        states = {k: backbone_state(m, t) for k, (m, t) in self.backbones().items()}
        hf_config = states["hf"] if set(states) == {"hf"} else states
        # trust_remote_code is never persisted: a reload must not run code silently
        drop = ("hf_config", "trust_remote_code")
        kwargs = {k: v for k, v in self.init_kwargs.items() if k not in drop}
        return {**kwargs, "hf_config": hf_config}

    def save_pretrained(self, directory: str | Path) -> Path:
        """``mmreward.json`` (kwargs + backbone config + tokenizer files) and ``model.safetensors``.

        ``mmreward.load(directory)`` rebuilds the model offline and reproduces its scores.
        """
        from mmreward.checkpoint import save_model_dir

        saved = self.init_kwargs
        self.init_kwargs = self.rebuild_kwargs()
        try:
            return save_model_dir(self, directory)
        finally:
            self.init_kwargs = saved

    def score(
        self,
        images: Any = None,
        prompts: str | Sequence[str] | None = None,
        *,
        responses: Sequence[str] | None = None,
        steps: Sequence[Sequence[str]] | None = None,
        sort_by_length: bool = True,
        **kwargs: Any,
    ) -> RewardOutput:
        """Like :meth:`RewardModel.score`, batching items of similar length together.

        >>> # rm.score(prompts=["2+2?", "Capital of France?"], responses=["4", "Paris"])
        """
        lists = {"responses": responses, "steps": steps}
        if not isinstance(prompts, str):
            lists["prompts"] = prompts
        present = {k: list(v) for k, v in lists.items() if v is not None and not isinstance(v, str)}
        n = len(next(iter(present.values()))) if present else 0
        if not sort_by_length or images is not None or n < 2:
            return super().score(images, prompts, responses=responses, steps=steps, **kwargs)
        if any(len(v) != n for v in present.values()):  # let the base class name the field
            return super().score(images, prompts, responses=responses, steps=steps, **kwargs)

        def length(i: int) -> int:
            total = 0
            for k, v in present.items():
                item = v[i]
                total += sum(len(s) for s in item) if k == "steps" else len(item)
            return total

        order = sorted(range(n), key=length, reverse=True)
        sorted_lists = {k: [v[i] for i in order] for k, v in present.items()}
        out = super().score(
            images,
            sorted_lists.get("prompts", prompts),
            responses=sorted_lists.get("responses"),
            steps=sorted_lists.get("steps"),
            **kwargs,
        )
        inverse = [0] * n
        for pos, i in enumerate(order):
            inverse[i] = pos
        return out.reorder(inverse)  # tensors, step scores and per-item lists in extras
