"""Tiny ImageReward checkpoints in the official layout, and an official-style reference.

- :func:`build_tiny` writes what the official hub repo holds, at toy sizes: ``ImageReward.pt``
  (a plain state dict with the official keys ``blip.*`` and ``mlp.layers.*``, including the
  keys the score never reads), ``med_config.json`` (BLIP's BERT config) and, since the real
  tokenizer (bert-base-uncased) cannot be downloaded here, a tiny WordPiece tokenizer with
  BLIP's ``[DEC]``/``[ENC]`` in ``tokenizer/``.
- :class:`OfficialStyleImageReward` re-implements the official per-image forward
  (``ImageReward.score`` in THUDM/ImageReward: PIL + torchvision preprocessing, BLIP's
  ``vit.py`` and ``med.py`` math with eager attention and the −10000 additive mask), reading
  the official keys directly. It shares no code with ``vision_rm.imagereward``, so agreement
  checks both the converter and the model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

#: words the tests' prompts use (anything else falls back to letter pieces)
WORDS = [
    "a",
    "photo",
    "of",
    "an",
    "astronaut",
    "cup",
    "coffee",
    "cat",
    "grey",
    "wall",
    "camera",
    "red",
    "cube",
    "in",
    "the",
    "space",
    "with",
    "on",
    "and",
    "is",
    "sitting",
    "table",
    "white",
    "black",
]

#: the vision sizes (not in med_config.json: the official code hard-codes ViT-L)
TINY_VISION = {
    "image_size": 224,
    "patch_size": 16,
    "vision_width": 32,
    "vision_layers": 2,
    "vision_heads": 2,
}
#: BLIP's med_config.json at toy sizes (vocab_size is set from the tokenizer)
TINY_MED = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 64,
    "model_type": "bert",
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": None,
    "encoder_width": 768,
    "add_cross_attention": True,
}
EMBED_DIM = 256  # BLIP's contrastive projection size (unused keys of the official file)


def random_official_state_dict(
    med: Mapping[str, Any], vision: Mapping[str, Any], seed: int = 0
) -> dict[str, Tensor]:
    """A random state dict with exactly the official ImageReward keys and shapes.

    Every tensor is random (LayerNorm weights around 1, biases around 0, the head scaled so
    the reward varies across images), so a key mapped to the wrong place shows up.
    """
    from vision_rm.imagereward import (
        ImageRewardConfig,
        RewardHead,
        TextEncoder,
        VisionTransformer,
        to_official_state_dict,
    )

    cfg = ImageRewardConfig.from_med_config(dict(med), **vision)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    modules = {
        "vision": VisionTransformer(
            cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers, cfg.vision_heads
        ),
        "text": TextEncoder(cfg),
        "head": RewardHead(cfg.text_hidden, cfg.mlp_dims),
    }
    ours: dict[str, Tensor] = {}
    for prefix, module in modules.items():
        for key, value in module.state_dict().items():
            ours[f"{prefix}.{key}"] = value
    out: dict[str, Tensor] = {}
    for key, value in to_official_state_dict(ours).items():
        noise = torch.randn(value.shape, generator=gen)
        if "norm" in key.lower() and key.endswith("weight"):
            value = 1.0 + 0.1 * noise
        elif key.endswith("bias"):
            value = 0.05 * noise
        elif key.startswith("mlp."):
            value = noise / math.sqrt(value.shape[-1])
        else:
            value = 0.05 * noise
        out[key] = value.contiguous()
    # scores around 1 like the real model's standardised ones, not around 0, where every
    # relative tolerance (bf16 vs fp32, ours vs official) would be meaningless
    out["mlp.layers.7.bias"] = torch.ones(1)
    # keys the official file holds but the score never reads
    out["blip.vision_proj.weight"] = torch.randn(EMBED_DIM, cfg.vision_width, generator=gen)
    out["blip.vision_proj.bias"] = torch.zeros(EMBED_DIM)
    out["blip.text_proj.weight"] = torch.randn(EMBED_DIM, cfg.text_hidden, generator=gen)
    out["blip.text_proj.bias"] = torch.zeros(EMBED_DIM)
    out["blip.text_encoder.embeddings.position_ids"] = torch.arange(
        cfg.max_position_embeddings
    ).expand(1, -1)
    return out


def build_tiny(
    tmp_dir: Path, seed: int = 0, med: Mapping[str, Any] | None = None, vision=None
) -> dict[str, Any]:
    """Write a tiny official-layout ImageReward folder; return ``mmreward.load`` kwargs."""
    from vision_rm.imagereward import tiny_tokenizer

    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(WORDS)
    tokenizer.save_pretrained(str(tmp_dir / "tokenizer"))
    med = {**TINY_MED, **(med or {}), "vocab_size": len(tokenizer)}
    vision = {**TINY_VISION, **(vision or {})}
    (tmp_dir / "med_config.json").write_text(json.dumps(med, indent=2) + "\n")
    torch.save(random_official_state_dict(med, vision, seed), tmp_dir / "ImageReward.pt")
    return {"weights": tmp_dir / "ImageReward.pt", "config": dict(vision)}


TINY = {"imagereward.v1.0": build_tiny}


# --------------------------------------------------------------------------------------
# the official per-image forward, re-implemented from THUDM/ImageReward
# --------------------------------------------------------------------------------------
def official_transform(n_px: int):
    """``ImageReward._transform``: PIL bicubic resize of the short side, crop, CLIP norm."""
    from torchvision.transforms import (
        CenterCrop,
        Compose,
        InterpolationMode,
        Normalize,
        Resize,
        ToTensor,
    )

    return Compose(
        [
            Resize(n_px, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(n_px),
            lambda im: im.convert("RGB"),
            ToTensor(),
            Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ]
    )


class OfficialStyleImageReward:
    """The official ``ImageReward.score(prompt, image)``, one image per forward.

    ``sd`` holds official keys; ``med`` is the med_config dict; ``vision`` the ViT sizes
    (``image_size``, ``patch_size``, ``vision_heads``); ``tokenizer`` is BLIP's tokenizer.
    """

    mean = 0.16717362830052426
    std = 1.0333394966054072

    def __init__(self, sd: Mapping[str, Tensor], med: Mapping[str, Any], vision, tokenizer):
        self.sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
        self.med, self.vision, self.tokenizer = dict(med), dict(vision), tokenizer
        self.preprocess = official_transform(self.vision["image_size"])
        self.depth = 1 + max(
            int(k.split(".")[3]) for k in sd if k.startswith("blip.visual_encoder.blocks.")
        )

    # helpers reading official keys
    def _lin(self, x: Tensor, name: str) -> Tensor:
        return F.linear(x, self.sd[name + ".weight"], self.sd[name + ".bias"])

    def _ln(self, x: Tensor, name: str, eps: float) -> Tensor:
        return F.layer_norm(
            x, (x.shape[-1],), self.sd[name + ".weight"], self.sd[name + ".bias"], eps
        )

    def visual_encoder(self, image: Tensor) -> Tensor:
        """BLIP ``vit.VisionTransformer.forward`` (eager attention)."""
        p, heads = "blip.visual_encoder.", self.vision["vision_heads"]
        x = F.conv2d(
            image,
            self.sd[p + "patch_embed.proj.weight"],
            self.sd[p + "patch_embed.proj.bias"],
            stride=self.vision["patch_size"],
        )
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat((self.sd[p + "cls_token"].expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.sd[p + "pos_embed"][:, : x.size(1), :]
        for i in range(self.depth):
            b = f"{p}blocks.{i}."
            h = self._ln(x, b + "norm1", 1e-6)
            B, N, C = h.shape
            qkv = self._lin(h, b + "attn.qkv").reshape(B, N, 3, heads, C // heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            attn = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(dim=-1)
            h = (attn @ v).transpose(1, 2).reshape(B, N, C)
            x = x + self._lin(h, b + "attn.proj")
            h = self._ln(x, b + "norm2", 1e-6)
            x = x + self._lin(F.gelu(self._lin(h, b + "mlp.fc1")), b + "mlp.fc2")
        return self._ln(x, p + "norm", 1e-6)

    def _bert_attention(self, x: Tensor, kv: Tensor, name: str, mask: Tensor) -> Tensor:
        heads, eps = self.med["num_attention_heads"], self.med["layer_norm_eps"]

        def split(t: Tensor) -> Tensor:
            return t.view(t.shape[0], t.shape[1], heads, -1).permute(0, 2, 1, 3)

        q = split(self._lin(x, name + ".self.query"))
        k = split(self._lin(kv, name + ".self.key"))
        v = split(self._lin(kv, name + ".self.value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask
        ctx = (scores.softmax(dim=-1) @ v).permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(ctx.shape[0], ctx.shape[1], -1)
        return self._ln(self._lin(ctx, name + ".output.dense") + x, name + ".output.LayerNorm", eps)

    def text_encoder(self, input_ids: Tensor, attention_mask: Tensor, image_embeds: Tensor):
        """BLIP ``med.BertModel.forward`` in multimodal mode; returns the last hidden state."""
        p, eps = "blip.text_encoder.", self.med["layer_norm_eps"]
        length = input_ids.shape[1]
        pos = self.sd[p + "embeddings.position_ids"][:, :length]
        x = F.embedding(input_ids, self.sd[p + "embeddings.word_embeddings.weight"])
        x = x + F.embedding(pos, self.sd[p + "embeddings.position_embeddings.weight"])
        x = self._ln(x, p + "embeddings.LayerNorm", eps)
        ext = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
        enc_ext = (1.0 - image_atts[:, None, None, :].float()) * -10000.0
        for i in range(self.med["num_hidden_layers"]):
            b = f"{p}encoder.layer.{i}."
            x = self._bert_attention(x, x, b + "attention", ext)
            x = self._bert_attention(x, image_embeds, b + "crossattention", enc_ext)
            h = F.gelu(self._lin(x, b + "intermediate.dense"))
            x = self._ln(self._lin(h, b + "output.dense") + x, b + "output.LayerNorm", eps)
        return x

    def mlp(self, x: Tensor) -> Tensor:
        for i in (0, 2, 4, 6, 7):  # dropouts at 1, 3, 5 are identities in eval
            x = self._lin(x, f"mlp.layers.{i}")
        return x

    @torch.no_grad()
    def score(self, prompt: str, pil_image: Image.Image) -> float:
        """One (prompt, image) pair, exactly as ``ImageReward.score`` does it."""
        text_input = self.tokenizer(
            prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt"
        )
        image = self.preprocess(pil_image).unsqueeze(0)
        image_embeds = self.visual_encoder(image)
        text_output = self.text_encoder(
            text_input["input_ids"], text_input["attention_mask"], image_embeds
        )
        txt_features = text_output[:, 0, :].float()
        rewards = self.mlp(txt_features)
        rewards = (rewards - self.mean) / self.std
        return rewards.item()
