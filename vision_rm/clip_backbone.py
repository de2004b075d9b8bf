"""CLIP backbones for the CLIP-family reward models: transformers or open_clip behind one API.

CLIP (Radford et al. 2021, https://arxiv.org/abs/2103.00020) embeds an image and a text
into one space; every CLIP-family reward (CLIPScore, PickScore, HPS v2, the LAION aesthetic
predictor, trainable CLIP heads) is a function of those two embeddings. Checkpoints come in
two layouts, and :class:`ClipBackbone` hides the difference:

- **transformers** ``CLIPModel`` (a directory with ``config.json`` + ``model.safetensors``
  or ``pytorch_model.bin``): PickScore, ``openai/clip-vit-*``;
- **open_clip** ``CLIP`` (one state-dict file, built from a model config such as
  ``"ViT-H-14"`` or a config dict): HPS v2, the LAION open_clip models.

The architecture always comes from data (the checkpoint's ``config.json`` or an explicit
open_clip config), so tiny configs work in tests and a saved reward model rebuilds with no
download. Weights load strictly (:func:`mmreward.checkpoint.load_state_dict_strict`).

Text goes through the CLIP BPE tokenizer bundled with open_clip (offline; the same
vocabulary as every CLIP checkpoint here) unless ``tokenizer=`` names a transformers
tokenizer directory or another open_clip tokenizer.

>>> import torch
>>> cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
...        "patch_size": 16, "head_width": 16}, "text_cfg": {"context_length": 77,
...        "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
>>> bb, arch = load_clip_backbone(open_clip_config=cfg)
>>> bb.encode_image(torch.rand(2, 3, 32, 32)).shape, bb.encode_text(["a cat", "a dog"]).shape
(torch.Size([2, 16]), torch.Size([2, 16]))
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmreward.checkpoint import load_state_dict_strict, read_state_dict
from mmreward.errors import WeightsNotFoundError

CONTEXT_LENGTH = 77  # CLIP's text context (tokens, SOT and EOT included)

# -- building blocks -------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _bundled_bpe():
    """open_clip's ``SimpleTokenizer`` (reading its BPE file takes ~0.4 s: share one)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


class ClipTokenizer:
    """CLIP BPE tokenizer: ``list[str]`` → ``(N, context_length)`` ids, ``SOT … EOT`` then pad.

    ``source=None`` uses open_clip's bundled ``SimpleTokenizer`` (offline). A directory
    loads a transformers tokenizer from it (``local_files_only``); any other string is
    passed to ``open_clip.get_tokenizer``. Over-long prompts are truncated with EOT kept
    last, as in ``clip.tokenize(..., truncate=True)`` and the HF processors.
    """

    def __init__(self, source: str | None = None, context_length: int = CONTEXT_LENGTH) -> None:
        self.source = source
        self.context_length = context_length
        self._hf = None
        if source is not None and Path(source).is_dir():
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(source, local_files_only=True)
            self.eot_id = self._hf.eos_token_id
        else:
            import open_clip

            self._oc = _bundled_bpe() if source is None else open_clip.get_tokenizer(source)
            self.eot_id = (
                getattr(self._oc, "eot_token_id", None) or self._oc.encoder["<end_of_text>"]
            )

    def __deepcopy__(self, memo: dict) -> ClipTokenizer:
        return self  # stateless apart from a memo cache; copying 49k-entry tables is waste

    def __call__(self, texts: Sequence[str]) -> Tensor:
        if self._hf is not None:
            enc = self._hf(
                list(texts),
                padding="max_length",
                truncation=True,
                max_length=self.context_length,
                return_tensors="pt",
            )
            return enc.input_ids
        return self._oc(list(texts), context_length=self.context_length)

    def eot_positions(self, ids: Tensor) -> Tensor:
        """Index of the first EOT token of each row (where CLIP pools the text)."""
        return (ids == self.eot_id).int().argmax(dim=-1)


class ClipBackbone(nn.Module):
    """A transformers ``CLIPModel`` or an open_clip ``CLIP`` with one interface.

    ``encode_image`` takes normalised pixels at :attr:`image_size` and returns the projected
    (not L2-normalised) image embedding ``(B, D)``; ``encode_text`` does the same for a list
    of strings (duplicates are encoded once). The wrapped module is :attr:`model`, so the
    official checkpoint keys live under ``model.``.
    """

    def __init__(self, model: nn.Module, kind: str, tokenizer: ClipTokenizer) -> None:
        super().__init__()
        if kind not in ("transformers", "open_clip"):
            raise ValueError(f"kind: expected 'transformers' or 'open_clip', got {kind!r}")
        self.model = model
        self.kind = kind
        self.tokenizer = tokenizer

    @property
    def image_size(self) -> tuple[int, int]:
        if self.kind == "transformers":
            s = self.model.config.vision_config.image_size
        else:
            s = self.model.visual.image_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    @property
    def embed_dim(self) -> int:
        if self.kind == "transformers":
            return int(self.model.config.projection_dim)
        return int(self.model.text_projection.shape[-1])

    @property
    def logit_scale(self) -> Tensor:
        """The learned log temperature (``exp`` of it multiplies the cosine in CLIP's logits)."""
        return self.model.logit_scale

    def _param_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def encode_image(self, pixels: Tensor) -> Tensor:
        pixels = pixels.to(self._param_dtype())
        if self.kind == "transformers":
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            return self.model.visual_projection(pooled)
        return self.model.encode_image(pixels)

    def _causal_eot_pooled(self) -> bool:
        """Whether the text tower is causal and pools at EOT (then padding never matters)."""
        if self.kind == "transformers":
            return True
        from open_clip.model import CLIP

        m = self.model
        return (
            isinstance(m, CLIP)
            and m.attn_mask is not None
            and m.text_pool_type in ("argmax", "eos")
        )

    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        unique = list(dict.fromkeys(prompts))  # one forward per distinct prompt
        ids = self.tokenizer(unique).to(self.model.logit_scale.device)
        eot = self.tokenizer.eot_positions(ids)
        trim = self._causal_eot_pooled() and bool((ids == self.tokenizer.eot_id).any(-1).all())
        if trim:
            # causal attention + pooling at EOT: the padding after the longest EOT cannot
            # change the result, so drop it (77 → ~10 tokens for a typical prompt)
            ids = ids[:, : int(eot.max()) + 1]
        if self.kind == "transformers":
            mask = (torch.arange(ids.shape[1], device=ids.device)[None] <= eot[:, None]).long()
            pooled = self.model.text_model(input_ids=ids, attention_mask=mask).pooler_output
            emb = self.model.text_projection(pooled)
        elif trim:
            emb = _open_clip_encode_text(self.model, ids)
        else:
            emb = self.model.encode_text(ids)
        if len(unique) == len(prompts):
            return emb
        index = {p: i for i, p in enumerate(unique)}
        return emb[torch.tensor([index[p] for p in prompts], device=emb.device)]

    def vision_modules(self) -> list[nn.Module]:
        """The image tower and its projection (what LoRA / full tuning adapts)."""
        if self.kind == "transformers":
            return [self.model.vision_model, self.model.visual_projection]
        return [self.model.visual]

    def text_modules(self) -> list[nn.Module | nn.Parameter]:
        """The text tower and its projection."""
        m = self.model
        if self.kind == "transformers":
            return [m.text_model, m.text_projection]
        mods = [m.token_embedding, m.transformer, m.ln_final]
        params = [m.positional_embedding]
        if isinstance(m.text_projection, nn.Parameter):
            params.append(m.text_projection)
        else:
            mods.append(m.text_projection)
        return [*mods, *params]


def _open_clip_encode_text(model: nn.Module, ids: Tensor) -> Tensor:
    """open_clip ``CLIP.encode_text`` for ids shorter than the context (positions and causal
    mask cut to the length; the same computation as on the padded ids)."""
    from open_clip.transformer import text_global_pool

    n = ids.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(ids).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = text_global_pool(
        x, ids, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
    )
    if isinstance(model.text_projection, nn.Linear):
        return model.text_projection(x)
    return x if model.text_projection is None else x @ model.text_projection


def _skip_hf_init():
    """transformers' ``no_init_weights`` (v5: ``transformers.initialization``), else a no-op."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def build_hf_clip(
    config: Mapping[str, Any], attn_implementation: str = "sdpa", skip_init: bool = False
) -> nn.Module:
    """A transformers ``CLIPModel`` (float32) from a config dict.

    ``skip_init`` leaves the parameters uninitialised (fast for CLIP-H); only use it when
    a strict load will overwrite every parameter next.
    """
    from transformers import CLIPConfig, CLIPModel

    if config.get("model_type", "clip") != "clip":
        raise ValueError(
            f"hf_config: expected a CLIPModel config (model_type 'clip'), got {config.get('model_type')!r}"
        )
    cfg = CLIPConfig.from_dict(dict(config))
    with _skip_hf_init() if skip_init else contextlib.nullcontext():
        return CLIPModel._from_config(
            cfg, attn_implementation=attn_implementation, dtype=torch.float32
        )


def resolve_open_clip_config(config: str | Mapping[str, Any]) -> dict[str, Any]:
    """An open_clip model config as a dict: a registered name (``"ViT-H-14"``) or a dict."""
    if isinstance(config, Mapping):
        return json.loads(json.dumps(dict(config)))  # deep copy, JSON-safe
    import open_clip

    cfg = open_clip.get_model_config(config)
    if cfg is None:
        raise ValueError(
            f"open_clip_config: unknown open_clip model {config!r}; pass a config dict or one of "
            "open_clip.list_models()"
        )
    return json.loads(json.dumps(cfg))


def build_open_clip(config: Mapping[str, Any]) -> nn.Module:
    """A randomly initialised open_clip ``CLIP`` (or ``CustomTextCLIP``) from a config dict."""
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = dict(config)
    custom_text = bool(cfg.pop("custom_text", False)) or "hf_model_name" in cfg.get("text_cfg", {})
    if "multimodal_cfg" in cfg:
        raise ValueError("open_clip_config: CoCa-style models (multimodal_cfg) are not supported")
    cls = CustomTextCLIP if custom_text else CLIP
    return cls(**cfg)


# -- checkpoint converters (official keys → ours) ---------------------------------------


def convert_hf_clip(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """transformers CLIP checkpoint → ``CLIPModel.state_dict()`` keys.

    Checkpoints saved before transformers 4.31 carry the ``*.embeddings.position_ids``
    buffer (``arange(N)``, not a weight); today it is non-persistent, so it is dropped
    by name. Every other key must match exactly.
    """
    return {k: v for k, v in state_dict.items() if not k.endswith("embeddings.position_ids")}


def convert_open_clip(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """open_clip checkpoint → ``CLIP.state_dict()`` keys (strips a DDP ``module.`` prefix)."""
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


_HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def read_hf_state_dict(directory: str | Path) -> dict[str, Tensor]:
    """The weights of a transformers model directory (single file or sharded; safetensors first)."""
    directory = Path(directory)
    for name in _HF_WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            sd: dict[str, Tensor] = {}
            for shard in shards:
                sd.update(read_state_dict(directory / shard))
            return sd
        return read_state_dict(path)
    raise FileNotFoundError(
        f"{directory}: no weights found (expected one of {', '.join(_HF_WEIGHT_FILES)})"
    )


def _open_clip_file(weights: Path) -> Path:
    if weights.is_dir():
        for name in _OPEN_CLIP_WEIGHT_FILES:
            if (weights / name).is_file():
                return weights / name
        raise FileNotFoundError(
            f"{weights}: no open_clip weights (expected one of {', '.join(_OPEN_CLIP_WEIGHT_FILES)})"
        )
    return weights


def load_clip_backbone(
    weights: str | Path | None = None,
    *,
    hf_config: Mapping[str, Any] | None = None,
    open_clip_config: str | Mapping[str, Any] | None = None,
    checkpoint_key: str | None = None,
    tokenizer: str | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[ClipBackbone, dict[str, Any]]:
    """Build a :class:`ClipBackbone` and load its weights strictly.

    - ``open_clip_config`` set → open_clip; ``weights`` is a state-dict file (``.pt``,
      ``.bin``, ``.safetensors``; ``checkpoint_key`` unwraps e.g. ``"state_dict"``) or a
      directory holding ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``.
    - otherwise transformers; ``weights`` is a directory with ``config.json`` (its config is
      used unless ``hf_config`` is given).
    - ``weights=None`` builds the architecture from the config alone (random weights): how
      a saved reward model is rebuilt before its own state dict is loaded.

    Returns the backbone and the JSON-safe kwargs that rebuild the same architecture.
    """
    path = Path(weights).expanduser() if weights is not None else None
    if open_clip_config is not None:
        cfg = resolve_open_clip_config(open_clip_config)
        model = build_open_clip(cfg)
        if path is not None:
            sd = read_state_dict(_open_clip_file(path), key=checkpoint_key)
            load_state_dict_strict(model, sd, convert=convert_open_clip, source=str(path))
        context = int(model.context_length)
        arch: dict[str, Any] = {"open_clip_config": cfg}
        kind = "open_clip"
    else:
        if hf_config is None:
            if path is None:
                raise WeightsNotFoundError(
                    "a CLIP backbone needs weights= (a transformers CLIP directory with "
                    "config.json, or an open_clip state-dict file with open_clip_config=) or "
                    "hf_config= (a CLIPConfig dict) to build the architecture"
                )
            if not (path / "config.json").is_file():
                raise FileNotFoundError(
                    f"{path}: not a transformers CLIP directory (no config.json); for an "
                    "open_clip checkpoint also pass open_clip_config= (e.g. 'ViT-H-14')"
                )
            hf_config = json.loads((path / "config.json").read_text())
        model = build_hf_clip(hf_config, attn_implementation, skip_init=path is not None)
        if path is not None:
            sd = read_hf_state_dict(path)
            load_state_dict_strict(model, sd, convert=convert_hf_clip, source=str(path))
        hf_config = json.loads(model.config.to_json_string(use_diff=False))
        for k in ("_attn_implementation_autoset", "transformers_version", "dtype", "torch_dtype"):
            hf_config.pop(k, None)
        context = int(model.config.text_config.max_position_embeddings)
        arch = {"hf_config": hf_config, "attn_implementation": attn_implementation}
        kind = "transformers"
    arch["tokenizer"] = tokenizer
    return ClipBackbone(model, kind, ClipTokenizer(tokenizer, context)), arch


def resolve_hub_dir(hub_id: str, what: str, kwarg: str) -> Path:
    """A local snapshot of a transformers repo, or :class:`WeightsNotFoundError` saying what to pass.

    Used for a second set of weights that a registry entry cannot name itself (e.g. the
    CLIP ViT-L/14 under the LAION aesthetic head).
    """
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                hub_id, allow_patterns=["config.json", "*.safetensors", "*.json", "*.txt"]
            )
        )
    except Exception as e:  # offline, missing repo, network errors of all kinds
        raise WeightsNotFoundError(
            f"{what} are not available ({type(e).__name__}: {str(e).splitlines()[0][:160]}). "
            f"Download the transformers repository hf-hub:{hub_id} (config.json + "
            f"model.safetensors) and pass {kwarg}='/path/to/that/directory'."
        ) from e
