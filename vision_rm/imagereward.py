"""ImageReward: a BLIP-based text-to-image preference reward model.

Xu et al. 2023, *ImageReward: Learning and Evaluating Human Preferences for Text-to-Image
Generation* (NeurIPS 2023), https://arxiv.org/abs/2304.05977 — official code
https://github.com/THUDM/ImageReward, weights ``hf-hub:THUDM/ImageReward/ImageReward.pt``.

The score of an image ``x`` for a prompt ``p`` is (official ``ImageReward.score``)::

    v = ViT(x)                                   # BLIP ViT-L/16 at 224 px, (197, 1024) tokens
    h = BERT(tokens(p), cross-attending to v)    # BLIP "text encoder" in multimodal mode
    r = MLP(h[CLS])                              # 768 → 1024 → 128 → 64 → 16 → 1, no activations
    score = (r − 0.16717362830052426) / 1.0333394966054072

The prompt is tokenized with BLIP's BERT tokenizer (``bert-base-uncased`` plus ``[DEC]``
and ``[ENC]``) and truncated at 35 tokens. Unlike BLIP's image-text matching head,
ImageReward keeps ``[CLS]`` as the first token (it does not swap in ``[ENC]``).

What differs from the official code (on purpose): one batched forward for B (prompt, image)
pairs instead of one image per forward; prompts padded to the batch's longest instead of
always to 35 tokens (same scores: padding is masked); differentiable tensor preprocessing
(:class:`mmreward.preprocess.Preprocess`: antialiased bicubic resize of the short side to
224, centre crop, OpenAI-CLIP mean/std) instead of PIL; fused attention
(``scaled_dot_product_attention``); strict checkpoint loading (the official loader uses
``strict=False``). Stochastic depth in the ViT (a training-only regulariser) is omitted.

>>> import torch
>>> from vision_rm.imagereward import ImageReward, ImageRewardConfig, tiny_tokenizer
>>> tok = tiny_tokenizer(["red", "cube"])
>>> cfg = ImageRewardConfig(image_size=32, patch_size=16, vision_width=16, vision_layers=1,
...                         vision_heads=2, text_hidden=16, text_layers=1, text_heads=2,
...                         text_intermediate=32, vocab_size=len(tok))
>>> rm = ImageReward(cfg, tokenizer=tok).eval()
>>> rm.score(torch.rand(2, 3, 40, 50), prompts="a red cube").scores.shape
torch.Size([2])
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmreward.checkpoint import load_state_dict_strict, read_state_dict
from mmreward.errors import CheckpointError, WeightsNotFoundError
from mmreward.interface import RewardInput, RewardModel, RewardOutput
from mmreward.preprocess import Preprocess

REGISTRY_NAME = "imagereward.v1.0"
CHECKPOINT_NAME = "ImageReward.pt"
MED_CONFIG_NAME = "med_config.json"
TOKENIZER_DIRNAME = "tokenizer"
#: files that mark a directory as holding a (BERT) tokenizer
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


# --------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------
def _split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, H·d) → (B, H, N, d)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """(B, H, N, d) → (B, N, H·d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class VisionAttention(nn.Module):
    """ViT multi-head self-attention with a fused qkv projection (BLIP ``vit.Attention``)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        # softmax(q kᵀ / √d_head) v
        return self.out(_merge_heads(F.scaled_dot_product_attention(q, k, v, dropout_p=p)))


class VisionBlock(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) (GELU, ratio 4)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = VisionAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict(fc1=nn.Linear(dim, hidden), act=nn.GELU(), fc2=nn.Linear(hidden, dim))
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """BLIP's ViT: patchify (conv) → [CLS] + patches + learned positions → blocks → LN.

    Returns all tokens ``(B, 1 + (S/P)², width)``; the text encoder cross-attends to them.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"image_size: expected a multiple of patch_size {patch_size}, got {image_size}"
            )
        n_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, width))
        self.blocks = nn.ModuleList(
            VisionBlock(width, heads, mlp_ratio, eps) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed[:, : x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class TextAttention(nn.Module):
    """BERT attention sub-layer, post-norm: LN(x + W_o · softmax(q kᵀ/√d + mask) v).

    Self-attention when ``context`` is None, else cross-attention to ``context`` (whose width
    ``kv_dim`` may differ, e.g. the ViT's 1024).
    """

    def __init__(self, hidden: int, heads: int, kv_dim: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.heads, self.attn_dropout = heads, dropout
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(kv_dim, hidden)
        self.v = nn.Linear(kv_dim, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None):
        kv = x if context is None else context
        q, k, v = (
            _split_heads(f(t), self.heads) for f, t in ((self.q, x), (self.k, kv), (self.v, kv))
        )
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.norm(x + self.drop(self.out(_merge_heads(y))))


class TextLayer(nn.Module):
    """One layer of BLIP's multimodal BERT: self-attn → (cross-attn to image) → FFN."""

    def __init__(self, cfg: ImageRewardConfig, cross: bool) -> None:
        super().__init__()
        h, eps, p = cfg.text_hidden, cfg.text_layer_norm_eps, cfg.text_dropout
        self.self_attn = TextAttention(h, cfg.text_heads, h, eps, cfg.text_attention_dropout)
        self.cross_attn = (
            TextAttention(h, cfg.text_heads, cfg.vision_width, eps, cfg.text_attention_dropout)
            if cross
            else None
        )
        self.ffn = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(h, cfg.text_intermediate),
                act=nn.GELU(),
                fc2=nn.Linear(cfg.text_intermediate, h),
                drop=nn.Dropout(p),
            )
        )
        self.ffn_norm = nn.LayerNorm(h, eps=eps)

    def forward(self, x: Tensor, image_tokens: Tensor, mask: Tensor) -> Tensor:
        x = self.self_attn(x, mask=mask)
        if self.cross_attn is not None:
            x = self.cross_attn(x, context=image_tokens)  # every image token is attended
        return self.ffn_norm(x + self.ffn(x))


class TextEncoder(nn.Module):
    """BERT (word + absolute position embeddings, no token types) with cross-attention."""

    def __init__(self, cfg: ImageRewardConfig) -> None:
        super().__init__()
        h = cfg.text_hidden
        self.tokens = nn.Embedding(cfg.vocab_size, h, padding_idx=cfg.pad_token_id)
        self.positions = nn.Embedding(cfg.max_position_embeddings, h)
        self.embed_norm = nn.LayerNorm(h, eps=cfg.text_layer_norm_eps)
        self.embed_drop = nn.Dropout(cfg.text_dropout)
        freq = cfg.cross_attention_freq
        self.layers = nn.ModuleList(TextLayer(cfg, i % freq == 0) for i in range(cfg.text_layers))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, image_tokens: Tensor) -> Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed_drop(self.embed_norm(self.tokens(input_ids) + self.positions(pos)))
        mask = attention_mask.bool()[:, None, None, :]  # padded keys are not attended
        for layer in self.layers:
            x = layer(x, image_tokens, mask)
        return x


class RewardHead(nn.Module):
    """The official MLP: Linear layers with dropout in between and NO activations.

    Keys ``layers.{0,2,4,6,7}`` (dropouts at 1, 3, 5), as in the official checkpoint.
    """

    def __init__(self, in_dim: int, dims: Sequence[int] = (1024, 128, 64, 16)) -> None:
        super().__init__()
        d1, d2, d3, d4 = dims
        self.layers = nn.Sequential(
            nn.Linear(in_dim, d1),
            nn.Dropout(0.2),
            nn.Linear(d1, d2),
            nn.Dropout(0.2),
            nn.Linear(d2, d3),
            nn.Dropout(0.1),
            nn.Linear(d3, d4),
            nn.Linear(d4, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).squeeze(-1)


# --------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------
class ImageReward(RewardModel):
    """ImageReward v1.0 as a batched, differentiable :class:`~mmreward.RewardModel`.

    Inputs: ``prompts`` (B strings) and ``images`` ``(B,3,H,W)`` in [0,1], any size (resized
    and centre-cropped to ``config.image_size`` with tensor ops). Output ``scores`` ``(B,)``
    float32: the official standardised reward.

    Args:
        config: an :class:`ImageRewardConfig` or a dict of its fields (default: official sizes).
        tokenizer: a tokenizer object or a local directory (see :func:`load_tokenizer`).
        preprocess: a :class:`~mmreward.preprocess.Preprocess` config (default: the
            registry entry's, with ``resolution = config.image_size``).

    >>> rm = mmreward.load("imagereward.v1.0", weights="~/ImageReward/")  # doctest: +SKIP
    >>> rm.score(["a.png", "b.png"], prompts="a cat in a hat").scores     # doctest: +SKIP
    """

    inputs = ("prompts", "images")
    differentiable = True
    native_resolution = (224, 224)

    def __init__(
        self,
        config: ImageRewardConfig | Mapping[str, Any] | None = None,
        tokenizer: str | Path | Any | None = None,
        preprocess: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        cfg = (
            config
            if isinstance(config, ImageRewardConfig)
            else ImageRewardConfig.from_dict(config or {})
        )
        self.config = cfg
        self.tokenizer = load_tokenizer(tokenizer)
        if len(self.tokenizer) > cfg.vocab_size:
            raise ValueError(
                f"tokenizer: {len(self.tokenizer)} tokens do not fit the model's vocab_size "
                f"{cfg.vocab_size} (BLIP's is bert-base-uncased + [DEC] + [ENC] = 30524)"
            )
        self.native_resolution = (cfg.image_size, cfg.image_size)
        pp = dict(preprocess) if preprocess is not None else default_preprocess(cfg.image_size)
        self.preprocess = Preprocess(pp)
        self.vision = VisionTransformer(
            cfg.image_size,
            cfg.patch_size,
            cfg.vision_width,
            cfg.vision_layers,
            cfg.vision_heads,
            mlp_ratio=cfg.vision_mlp_ratio,
            eps=cfg.vision_layer_norm_eps,
        )
        self.text = TextEncoder(cfg)
        self.head = RewardHead(cfg.text_hidden, cfg.mlp_dims)
        self._init_weights()
        self.init_kwargs = {
            "config": cfg.to_dict(),
            "tokenizer": _tokenizer_source(tokenizer, self.tokenizer),
            "preprocess": pp,
        }

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Random init (BERT/ViT style; the head as in the official ``MLP``)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.vision.cls_token, std=0.02)
        nn.init.trunc_normal_(self.vision.pos_embed, std=0.02)
        for m in self.head.layers:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=1.0 / (self.config.text_hidden + 1))
                nn.init.zeros_(m.bias)

    def tokenize(self, prompts: Sequence[str], padding: str = "longest") -> tuple[Tensor, Tensor]:
        """``(input_ids, attention_mask)``, ``(B, L)``: truncated at ``config.max_length``
        (35) tokens, ``[CLS]`` first, as the official code does.

        The official code pads every prompt to 35 tokens (``padding="max_length"``); the
        default here pads to the batch's longest prompt instead. The score is the same:
        padded positions are masked keys in self-attention and never reach ``[CLS]``.
        """
        enc = self.tokenizer(
            list(prompts),
            padding=padding,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def raw_reward(self, pixels: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The MLP output before standardisation, ``(B,)``, for normalised ``pixels``."""
        image_tokens = self.vision(pixels)
        hidden = self.text(input_ids, attention_mask, image_tokens)
        return self.head(hidden[:, 0])  # [CLS]

    def score_preprocessed(self, pixels: Tensor, prompts: Sequence[str]) -> Tensor:
        """Standardised scores ``(B,)`` float32 for pixels already resized to
        ``config.image_size`` and normalised (e.g. by the official PIL transform)."""
        input_ids, attention_mask = self.tokenize(prompts)
        r = self.raw_reward(pixels.to(self.dtype), input_ids, attention_mask).float()
        return (r - self.config.reward_mean) / self.config.reward_std

    def compute(self, batch: RewardInput) -> RewardOutput:
        # preprocess in (at least) fp32, then run the network in the model's dtype
        pixels = self.preprocess(batch.images.float())
        return RewardOutput(scores=self.score_preprocessed(pixels, batch.prompts))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Also saves the tokenizer (``<directory>/tokenizer``) and records its path."""
        tok_dir = Path(directory).resolve() / TOKENIZER_DIRNAME
        self.tokenizer.save_pretrained(str(tok_dir))
        self.init_kwargs["tokenizer"] = str(tok_dir)
        return super().save_pretrained(directory)


# --------------------------------------------------------------------------------------
# checkpoint converter: official keys → ours
# --------------------------------------------------------------------------------------
#: (official regex, ours) — applied in order, first match wins; ``{i}`` is a layer index.
_KEY_MAP: tuple[tuple[str, str], ...] = (
    # BLIP ViT (timm layout)
    ("blip.visual_encoder.cls_token", "vision.cls_token"),
    ("blip.visual_encoder.pos_embed", "vision.pos_embed"),
    ("blip.visual_encoder.patch_embed.proj.{p}", "vision.patch_embed.{p}"),
    ("blip.visual_encoder.blocks.{i}.norm1.{p}", "vision.blocks.{i}.norm1.{p}"),
    ("blip.visual_encoder.blocks.{i}.attn.qkv.{p}", "vision.blocks.{i}.attn.qkv.{p}"),
    ("blip.visual_encoder.blocks.{i}.attn.proj.{p}", "vision.blocks.{i}.attn.out.{p}"),
    ("blip.visual_encoder.blocks.{i}.norm2.{p}", "vision.blocks.{i}.norm2.{p}"),
    ("blip.visual_encoder.blocks.{i}.mlp.fc1.{p}", "vision.blocks.{i}.mlp.fc1.{p}"),
    ("blip.visual_encoder.blocks.{i}.mlp.fc2.{p}", "vision.blocks.{i}.mlp.fc2.{p}"),
    ("blip.visual_encoder.norm.{p}", "vision.norm.{p}"),
    # BLIP text encoder (med.py BertModel, no pooler)
    ("blip.text_encoder.embeddings.word_embeddings.{p}", "text.tokens.{p}"),
    ("blip.text_encoder.embeddings.position_embeddings.{p}", "text.positions.{p}"),
    ("blip.text_encoder.embeddings.LayerNorm.{p}", "text.embed_norm.{p}"),
    (
        "blip.text_encoder.encoder.layer.{i}.attention.self.query.{p}",
        "text.layers.{i}.self_attn.q.{p}",
    ),
    (
        "blip.text_encoder.encoder.layer.{i}.attention.self.key.{p}",
        "text.layers.{i}.self_attn.k.{p}",
    ),
    (
        "blip.text_encoder.encoder.layer.{i}.attention.self.value.{p}",
        "text.layers.{i}.self_attn.v.{p}",
    ),
    (
        "blip.text_encoder.encoder.layer.{i}.attention.output.dense.{p}",
        "text.layers.{i}.self_attn.out.{p}",
    ),
    (
        "blip.text_encoder.encoder.layer.{i}.attention.output.LayerNorm.{p}",
        "text.layers.{i}.self_attn.norm.{p}",
    ),
    (
        "blip.text_encoder.encoder.layer.{i}.crossattention.self.query.{p}",
        "text.layers.{i}.cross_attn.q.{p}",
    ),
    (
        "blip.text_encoder.encoder.layer.{i}.crossattention.self.key.{p}",
        "text.layers.{i}.cross_attn.k.{p}",
    ),
    (
        "blip.text_encoder.encoder.layer.{i}.crossattention.self.value.{p}",
        "text.layers.{i}.cross_attn.v.{p}",
    ),
    (
        "blip.text_encoder.encoder.layer.{i}.crossattention.output.dense.{p}",
        "text.layers.{i}.cross_attn.out.{p}",
    ),
    (
        "blip.text_encoder.encoder.layer.{i}.crossattention.output.LayerNorm.{p}",
        "text.layers.{i}.cross_attn.norm.{p}",
    ),
    ("blip.text_encoder.encoder.layer.{i}.intermediate.dense.{p}", "text.layers.{i}.ffn.fc1.{p}"),
    ("blip.text_encoder.encoder.layer.{i}.output.dense.{p}", "text.layers.{i}.ffn.fc2.{p}"),
    ("blip.text_encoder.encoder.layer.{i}.output.LayerNorm.{p}", "text.layers.{i}.ffn_norm.{p}"),
    # reward head
    ("mlp.layers.{i}.{p}", "head.layers.{i}.{p}"),
)

#: Official keys that ImageReward's score never reads: BLIP's contrastive projections and
#: BERT's ``position_ids`` buffer (saved by med.py, always ``arange``). Dropped on load
#: (``position_ids`` only after checking it is ``arange``); every other key must match.
UNUSED_OFFICIAL_KEYS = (
    "blip.vision_proj.weight",
    "blip.vision_proj.bias",
    "blip.text_proj.weight",
    "blip.text_proj.bias",
    "blip.text_encoder.embeddings.position_ids",
)


def _compile(pattern: str) -> re.Pattern[str]:
    rx = (
        re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    )
    return re.compile(rx + r"\Z")


_TO_OURS = [(_compile(a), b) for a, b in _KEY_MAP]
_TO_OFFICIAL = [(_compile(b), a) for a, b in _KEY_MAP]


def _rename(key: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for rx, target in table:
        m = rx.match(key)
        if m:
            return target.format(**m.groupdict())
    return None


def is_official_state_dict(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether the keys are in the official layout (``blip.*``, ``mlp.layers.*``)."""
    return any(k.startswith("blip.") for k in state_dict)


def convert_official_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official ``ImageReward.pt`` keys → this module's keys (strictness is the loader's job).

    Keys in :data:`UNUSED_OFFICIAL_KEYS` are dropped; keys with no mapping are kept as they
    are, so :func:`~mmreward.checkpoint.load_state_dict_strict` reports them as unexpected.
    """
    out: dict[str, Tensor] = {}
    pos = state_dict.get("blip.text_encoder.embeddings.position_ids")
    if pos is not None and not torch.equal(
        pos.reshape(-1).long(), torch.arange(pos.numel(), device=pos.device)
    ):
        raise CheckpointError(
            [], ["blip.text_encoder.embeddings.position_ids (not arange: unsupported)"]
        )
    for key, value in state_dict.items():
        if key in UNUSED_OFFICIAL_KEYS:
            continue
        out[_rename(key, _TO_OURS) or key] = value
    return out


def to_official_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`convert_official_state_dict` (unused keys are not re-created)."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = _rename(key, _TO_OFFICIAL)
        if new is None:
            raise KeyError(f"{key!r} has no official counterpart")
        out[new] = value
    return out


def load_weights(model: ImageReward, path: str | Path) -> ImageReward:
    """Load an official (``blip.*``) or our-layout checkpoint into ``model``, strictly."""
    sd = read_state_dict(path)
    convert = convert_official_state_dict if is_official_state_dict(sd) else None
    load_state_dict_strict(model, sd, convert=convert, source=str(path))
    return model


# --------------------------------------------------------------------------------------
# configs (architecture sizes, BLIP tokenizer)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageRewardConfig:
    """Architecture sizes. Defaults are the official ImageReward v1.0 (BLIP ViT-L + BERT-base).

    The text part mirrors BLIP's ``med_config.json`` (:meth:`from_med_config` reads one);
    the vision part is hard-coded ``vit='large'`` in the official code.
    """

    # vision (BLIP ViT-L/16)
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp_ratio: float = 4.0
    vision_layer_norm_eps: float = 1e-6
    # text (med_config.json)
    text_hidden: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate: int = 3072
    vocab_size: int = 30524  # bert-base-uncased 30522 + [DEC] + [ENC]
    max_position_embeddings: int = 512
    pad_token_id: int = 0
    text_layer_norm_eps: float = 1e-12
    text_dropout: float = 0.1
    text_attention_dropout: float = 0.1
    cross_attention_freq: int = 1  # a cross-attention sub-layer in every k-th text layer
    # prompt and head
    max_length: int = 35
    mlp_dims: tuple[int, int, int, int] = (1024, 128, 64, 16)
    reward_mean: float = 0.16717362830052426
    reward_std: float = 1.0333394966054072

    def __post_init__(self) -> None:
        for name in ("vision_width", "text_hidden"):
            heads = getattr(self, name.split("_")[0] + "_heads")
            if getattr(self, name) % heads:
                raise ValueError(
                    f"{name}: expected a multiple of {heads} heads, got {getattr(self, name)}"
                )
        if self.cross_attention_freq < 1:
            raise ValueError(
                f"cross_attention_freq: expected >= 1, got {self.cross_attention_freq}"
            )
        if not 2 <= self.max_length <= self.max_position_embeddings:
            raise ValueError(
                f"max_length: expected 2..{self.max_position_embeddings}, got {self.max_length}"
            )
        object.__setattr__(self, "mlp_dims", tuple(int(d) for d in self.mlp_dims))
        if len(self.mlp_dims) != 4:
            raise ValueError(f"mlp_dims: expected 4 hidden sizes, got {self.mlp_dims}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImageRewardConfig:
        """Build from a dict; unknown keys are an error listing the valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; valid keys: {sorted(valid)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mlp_dims"] = list(self.mlp_dims)
        return d

    @classmethod
    def from_med_config(
        cls, med_config: str | Path | Mapping[str, Any], **overrides: Any
    ) -> ImageRewardConfig:
        """The text sizes from a BLIP ``med_config.json`` (file or dict), plus ``overrides``.

        ``encoder_width`` is ignored (the official code overwrites it with the ViT width);
        anything that would change the math we implement (activation, relative positions,
        no cross-attention) is an error.
        """
        if not isinstance(med_config, Mapping):
            path = Path(med_config)
            try:
                med_config = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
        m = dict(med_config)
        checks = {
            "hidden_act": ("gelu", m.get("hidden_act", "gelu")),
            "add_cross_attention": (True, m.get("add_cross_attention", True)),
            "position_embedding_type": ("absolute", m.get("position_embedding_type", "absolute")),
        }
        for key, (want, got) in checks.items():
            if got != want:
                raise ValueError(f"med_config {key}: expected {want!r}, got {got!r}")
        renames = {
            "hidden_size": "text_hidden",
            "num_hidden_layers": "text_layers",
            "num_attention_heads": "text_heads",
            "intermediate_size": "text_intermediate",
            "vocab_size": "vocab_size",
            "max_position_embeddings": "max_position_embeddings",
            "pad_token_id": "pad_token_id",
            "layer_norm_eps": "text_layer_norm_eps",
            "hidden_dropout_prob": "text_dropout",
            "attention_probs_dropout_prob": "text_attention_dropout",
            "cross_attention_freq": "cross_attention_freq",
        }
        values = {ours: m[theirs] for theirs, ours in renames.items() if theirs in m}
        return cls.from_dict({**values, **overrides})


def _add_blip_tokens(tokenizer: Any) -> Any:
    """BLIP's ``init_tokenizer``: ``[DEC]`` as bos token, ``[ENC]`` as an extra special token.

    A no-op for a tokenizer that already has them (e.g. one saved after this call).
    """
    if "[DEC]" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    else:
        tokenizer.bos_token = "[DEC]"
    if "[ENC]" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.enc_token_id = tokenizer.convert_tokens_to_ids("[ENC]")
    return tokenizer


def _tokenizer_source(given: Any, tokenizer: Any) -> str | None:
    """Where ``tokenizer`` can be reloaded from (recorded in ``init_kwargs``), if known."""
    src = given if isinstance(given, (str, Path)) else getattr(tokenizer, "name_or_path", "")
    if not src:
        return None
    path = Path(src).expanduser()
    return str(path.resolve()) if path.exists() else str(src)


def _is_tokenizer_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in _TOKENIZER_FILES)


def load_tokenizer(source: str | Path | Any | None = None, search: Sequence[Path] = ()) -> Any:
    """BLIP's BERT tokenizer (``bert-base-uncased`` + ``[DEC]``/``[ENC]``).

    ``source``: a tokenizer object, a local directory (``vocab.txt`` or ``tokenizer.json``),
    or a name for ``transformers`` (``"bert-base-uncased"``; from the Hugging Face cache or
    the network). When None: the first of ``search`` (directories, and their ``tokenizer/``
    sub-folder) holding tokenizer files, then ``"bert-base-uncased"``.
    """
    from transformers import BertTokenizerFast

    if source is not None and not isinstance(source, (str, Path)):
        return _add_blip_tokens(source)
    if source is None:
        for d in search:
            for cand in (Path(d) / TOKENIZER_DIRNAME, Path(d)):
                if _is_tokenizer_dir(cand):
                    source = cand
                    break
            if source is not None:
                break
    name = str(source) if source is not None else "bert-base-uncased"
    where = f" or put them in {Path(search[0]) / TOKENIZER_DIRNAME}" if search else ""

    def missing(reason: str) -> WeightsNotFoundError:
        return WeightsNotFoundError(
            f"ImageReward needs BLIP's BERT tokenizer (bert-base-uncased: vocab.txt or "
            f"tokenizer.json); {name!r}: {reason}. Pass tokenizer='/path/to/bert-base-uncased'"
            f"{where}."
        )

    if Path(name).expanduser().is_dir() and not _is_tokenizer_dir(Path(name).expanduser()):
        raise missing(f"no {' or '.join(_TOKENIZER_FILES)} in it")
    try:
        tok = BertTokenizerFast.from_pretrained(str(Path(name).expanduser()) if source else name)
    except (OSError, ValueError) as e:
        raise missing(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}") from e
    # transformers 5 returns an empty tokenizer (special tokens only) when it finds no files
    if len(tok.get_vocab()) <= len(set(tok.all_special_tokens)):
        raise missing("no vocabulary found (not in the Hugging Face cache and offline?)")
    return _add_blip_tokens(tok)


def tiny_tokenizer(words: Sequence[str] = ()) -> Any:
    """A small BLIP-style WordPiece tokenizer, built offline (for tests and examples).

    Vocabulary: BERT's special tokens, ``words`` (lower-cased), the letters a-z and digits
    with their ``##`` continuations (so any ASCII text tokenizes), then ``[DEC]``/``[ENC]``.

    >>> tok = tiny_tokenizer(["cat"])
    >>> tok.convert_ids_to_tokens(tok("a cat!")["input_ids"])
    ['[CLS]', 'a', 'cat', '!', '[SEP]']
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    punct = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    tokens = special + [w.lower() for w in words] + chars + punct + [f"##{c}" for c in chars]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok = BertTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    return _add_blip_tokens(tok)


# --------------------------------------------------------------------------------------
# registration helpers (the registry entry lives in mmreward/catalog/imagereward.py)
# --------------------------------------------------------------------------------------
def default_preprocess(image_size: int = 224) -> dict[str, Any]:
    """The registry entry's preprocessing config with ``resolution = image_size``."""
    from mmreward.registry import get_spec

    return {**get_spec(REGISTRY_NAME).preprocess, "resolution": image_size}


def _checkpoint_in(directory: Path) -> Path:
    for name in (CHECKPOINT_NAME, "model.safetensors"):
        if (directory / name).is_file():
            return directory / name
    found = sorted(p.name for p in directory.iterdir())[:10]
    raise WeightsNotFoundError(
        f"{directory}: no {CHECKPOINT_NAME} (official) or model.safetensors in it "
        f"(found {found}); download {CHECKPOINT_NAME} from hf-hub:THUDM/ImageReward"
    )


def imagereward_v1(
    weights: str | Path | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    med_config: str | Path | Mapping[str, Any] | None = None,
    tokenizer: str | Path | Any | None = None,
    preprocess: Mapping[str, Any] | None = None,
) -> ImageReward:
    """Build ImageReward v1.0 (the registry factory of ``imagereward.v1.0``).

    Args:
        weights: the official ``ImageReward.pt`` (plain state dict, ``blip.*``/``mlp.*``
            keys), a ``.safetensors`` in either layout, or a directory holding one
            (optionally with ``med_config.json`` and the tokenizer files, or a
            ``tokenizer/`` folder). None: random weights.
        config: :class:`ImageRewardConfig` fields overriding the official sizes (tiny
            test models set the vision sizes here).
        med_config: a BLIP ``med_config.json`` (default: the one beside the weights, if
            any, else the official values, which are the class defaults).
        tokenizer: a tokenizer or a local directory; default: beside the weights, then
            ``bert-base-uncased`` from the Hugging Face cache.
        preprocess: preprocessing config override.

    The model is returned frozen (``requires_grad=False``, eval mode): gradients reach the
    pixels, not the weights; call ``.requires_grad_(True)`` to fine-tune it.
    """
    ckpt: Path | None = None
    search: list[Path] = []
    if weights is not None:
        path = Path(weights).expanduser()
        ckpt = _checkpoint_in(path) if path.is_dir() else path
        search = [ckpt.parent]
    if med_config is None and search and (search[0] / MED_CONFIG_NAME).is_file():
        med_config = search[0] / MED_CONFIG_NAME
    overrides = dict(config or {})
    cfg = (
        ImageRewardConfig.from_med_config(med_config, **overrides)
        if med_config is not None
        else ImageRewardConfig.from_dict(overrides)
    )
    tok = load_tokenizer(tokenizer, search=search)
    model = ImageReward(cfg, tokenizer=tok, preprocess=preprocess)
    if ckpt is not None:
        load_weights(model, ckpt)
    model.requires_grad_(False).eval()  # a fixed reward: ReFL/DRaFT need d score/d pixels only
    return model


__all__ = [
    "ImageReward",
    "ImageRewardConfig",
    "UNUSED_OFFICIAL_KEYS",
    "convert_official_state_dict",
    "imagereward_v1",
    "is_official_state_dict",
    "load_tokenizer",
    "load_weights",
    "tiny_tokenizer",
    "to_official_state_dict",
]
