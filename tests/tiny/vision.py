"""Tiny checkpoints for the CLIP-family and timm-head entries, in each official file format.

- transformers CLIP (``clipscore.vit-b-32``, ``clipscore.torchmetrics-vit-l-14``,
  ``pickscore.v1``, ``clip-head.openai-vit-l-14``, the aesthetic backbone): a directory
  written by ``CLIPModel.save_pretrained`` (``config.json`` + ``model.safetensors``) with the
  real CLIP BPE vocabulary size (49408), 2 layers of width 32, ViT patch 32 at 224 px —
  so the registry's 224-px preprocessing configs are used unchanged.
- open_clip (``hpsv2.*``: ``{'state_dict': ...}`` in a ``.pt`` like ``HPS_v2_compressed.pt``;
  ``clipscore.laion-vit-b-32`` / ``clip-head.laion-vit-h-14``: a plain
  ``open_clip_pytorch_model.bin``), built from :data:`TINY_OPEN_CLIP`.
- the LAION aesthetic MLP ``.pth`` (keys ``layers.{0,2,4,6,7}``) with a 32-dim input (the
  tiny CLIP's projection size).
- timm ``model.safetensors`` of ``resnet50`` / ``vit_small_patch16_224`` with tiny
  ``model_kwargs`` (same key layout, classifier included as in the hub files).

Each builder writes under the folder it is given and returns ``mmreward.load`` kwargs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#: open_clip config of the tiny CLIP (same key layout as ViT-B-32 / ViT-H-14).
TINY_OPEN_CLIP: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "patch_size": 32, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
#: transformers CLIPConfig kwargs of the tiny CLIP.
TINY_HF_CLIP: dict[str, Any] = {
    "text_config": {
        "vocab_size": 49408,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
    },
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 224,
        "patch_size": 32,
    },
    "projection_dim": 32,
}
#: timm backbones shrunk by kwargs (same state-dict layout as the registered ones).
TINY_TIMM: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet50": (
        "resnet50",
        {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8},
    ),
    "vit_small_patch16_224": (
        "vit_small_patch16_224",
        {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
    ),
}
TINY_TIMM_RESOLUTION = 32


def align_towers(
    model: torch.nn.Module, beta: float = 6.0, alpha: float = 1.0, seed: int = 1
) -> None:
    """Give a random tiny CLIP positively correlated towers (in place).

    Random CLIPs put image and text embeddings at cosines of either sign; CLIPScore's
    ``max(cos, 0)`` then often has no gradient. Adding ``beta·e`` to each tower's final
    LayerNorm bias and ``alpha·u eᵀ`` to its projection gives both embeddings a shared
    component along ``u``: cosines land around 0.1–0.6 and still vary with the input
    (like a trained CLIP's). Only values change, never keys or shapes.
    """
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    if hasattr(model, "visual_projection"):  # transformers CLIPModel: Linear weights (D, H)
        dim = model.config.projection_dim
        pairs = [
            (model.vision_model.post_layernorm, model.visual_projection.weight, False),
            (model.text_model.final_layer_norm, model.text_projection.weight, False),
        ]
    else:  # open_clip CLIP: projection matrices (H, D), used as x @ P
        dim = model.text_projection.shape[1]
        pairs = [
            (model.visual.ln_post, model.visual.proj, True),
            (model.ln_final, model.text_projection, True),
        ]
    u = F.normalize(torch.randn(dim, generator=g), dim=0)
    with torch.no_grad():
        for ln, proj, transposed in pairs:
            e = F.normalize(torch.randn(ln.bias.shape[0], generator=g), dim=0)
            ln.bias += beta * e
            proj += alpha * (torch.outer(e, u) if transposed else torch.outer(u, e))


def hf_clip_dir(folder: Path, seed: int = 0, tokenizer_files: bool = False) -> Path:
    """A tiny transformers CLIP directory (``CLIPModel.save_pretrained`` format)."""
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(**TINY_HF_CLIP))
    align_towers(model)
    model.save_pretrained(folder)
    if tokenizer_files:
        write_hf_clip_tokenizer(folder)
    return folder


def write_hf_clip_tokenizer(folder: Path) -> Path:
    """``vocab.json`` + ``merges.txt`` of the CLIP BPE (from open_clip's bundled file), HF names."""
    from open_clip.tokenizer import SimpleTokenizer

    st = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in st.encoder.items()}
    merges = sorted(st.bpe_ranks.items(), key=lambda kv: kv[1])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    lines = ["#version: 0.2"] + [f"{a} {b}" for (a, b), _ in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    return folder


def open_clip_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The tiny open_clip CLIP's state dict (random, seeded)."""
    from open_clip.model import CLIP

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIP(**TINY_OPEN_CLIP)
    align_towers(model)
    return {k: v.clone() for k, v in model.state_dict().items()}


def open_clip_file(path: Path, seed: int = 0, wrap: str | None = None) -> Path:
    """A tiny open_clip checkpoint: ``{wrap: state_dict}`` (HPS style) or a plain state dict."""
    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        sd = open_clip_state_dict(seed)
        torch.save({wrap: sd} if wrap else sd, path)
    return path


def aesthetic_pth(path: Path, in_dim: int, seed: int = 0) -> Path:
    """A LAION-aesthetic-style ``.pth``: the MLP's plain state dict (``layers.{0,2,4,6,7}``)."""
    from torch import nn

    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            mlp = nn.Sequential(  # the official training script's MLP.layers
                nn.Linear(in_dim, 1024),
                nn.Dropout(0.2),
                nn.Linear(1024, 128),
                nn.Dropout(0.2),
                nn.Linear(128, 64),
                nn.Dropout(0.1),
                nn.Linear(64, 16),
                nn.Linear(16, 1),
            )
        torch.save({f"layers.{k}": v for k, v in mlp.state_dict().items()}, path)
    return path


def timm_file(path: Path, arch: str, seed: int = 0) -> Path:
    """A tiny timm checkpoint (``model.safetensors``, classifier included like the hub files)."""
    import timm
    from safetensors.torch import save_file

    name, kwargs = TINY_TIMM[arch]
    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# -- builders: folder → mmreward.load kwargs ------------------------------------------------


def _hf(folder: Path) -> dict[str, Any]:
    return {"weights": str(hf_clip_dir(Path(folder) / "clip"))}


def _open_clip_plain(folder: Path) -> dict[str, Any]:
    path = open_clip_file(Path(folder) / "open_clip_pytorch_model.bin")
    return {"weights": str(path), "open_clip_config": TINY_OPEN_CLIP}


def _hps(filename: str) -> Callable[[Path], dict[str, Any]]:
    def build(folder: Path) -> dict[str, Any]:
        path = open_clip_file(Path(folder) / filename, wrap="state_dict")
        return {"weights": str(path), "open_clip_config": TINY_OPEN_CLIP}

    return build


def _aesthetic(folder: Path) -> dict[str, Any]:
    clip = hf_clip_dir(Path(folder) / "clip")
    pth = aesthetic_pth(
        Path(folder) / "sac+logos+ava1-l14-linearMSE.pth", TINY_HF_CLIP["projection_dim"]
    )
    return {"weights": str(pth), "clip_weights": str(clip)}


def _timm(arch: str, mean: str) -> Callable[[Path], dict[str, Any]]:
    def build(folder: Path) -> dict[str, Any]:
        path = timm_file(Path(folder) / "model.safetensors", arch)
        preprocess = {
            "resolution": TINY_TIMM_RESOLUTION,
            "resize": "bicubic",
            "antialias": True,
            "crop": "center",
            "mean": mean,
            "std": mean,
        }
        return {
            "weights": str(path),
            "model_kwargs": TINY_TIMM[arch][1],
            "preprocess": preprocess,
            "hidden": [16],
        }

    return build


def _clip_head_open_clip(folder: Path) -> dict[str, Any]:
    return {**_open_clip_plain(folder), "hidden": [16]}


def _clip_head_hf(folder: Path) -> dict[str, Any]:
    return {**_hf(folder), "hidden": [16]}


TINY: dict[str, Callable[[Path], dict[str, Any]]] = {
    "clipscore.vit-b-32": _hf,
    "clipscore.torchmetrics-vit-l-14": _hf,
    "clipscore.laion-vit-b-32": _open_clip_plain,
    "pickscore.v1": _hf,
    "hpsv2.v2-0": _hps("HPS_v2_compressed.pt"),
    "hpsv2.v2-1": _hps("HPS_v2.1_compressed.pt"),
    "aesthetic.laion-v2": _aesthetic,
    "clip-head.openai-vit-l-14": _clip_head_hf,
    "clip-head.laion-vit-h-14": _clip_head_open_clip,
    "timm-head.resnet50-a1-in1k": _timm("resnet50", "imagenet"),
    "timm-head.vit-small-augreg-in21k-ft-in1k": _timm("vit_small_patch16_224", "half"),
}
