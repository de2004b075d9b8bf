"""Building blocks shared by the trainable image reward heads (``clip-head``, ``timm-head``).

- :class:`MLPHead`: features → scalar reward (Linear/GELU/Dropout stack, keys ``layers.N``);
- :func:`apply_tuning`: what of a pretrained backbone trains — ``"frozen"`` (nothing),
  ``"lora"`` (low-rank adapters from peft, Hu et al. 2021, https://arxiv.org/abs/2106.09685,
  injected into the named linear/conv layers; everything else frozen) or ``"full"``.

>>> import torch
>>> head = MLPHead(8, hidden=(16,))
>>> head(torch.randn(3, 8)).shape
torch.Size([3])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor, nn

TUNINGS = ("frozen", "lora", "full")


class MLPHead(nn.Module):
    """``in_dim → hidden… → 1`` with GELU and dropout between layers; returns ``(B,)``."""

    def __init__(self, in_dim: int, hidden: Sequence[int] = (512,), dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.GELU(), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).squeeze(-1)


def apply_tuning(
    modules: Iterable[nn.Module | nn.Parameter],
    tuning: str,
    *,
    lora_targets: Sequence[str] | None = None,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
) -> None:
    """Mark ``modules`` trainable per ``tuning`` (in place); LoRA adapters are injected into them.

    Call it after the backbone's official weights are loaded: injecting LoRA renames the
    wrapped layers' keys (``q_proj.weight`` → ``q_proj.base_layer.weight``).
    """
    if tuning not in TUNINGS:
        raise ValueError(f"tuning: expected one of {TUNINGS}, got {tuning!r}")
    items = list(modules)
    for m in items:
        m.requires_grad_(tuning == "full")
    if tuning != "lora":
        return
    if not lora_targets:
        raise ValueError(
            "lora_targets: tuning='lora' needs the names of the layers to adapt, e.g. "
            "['q_proj', 'v_proj'] (transformers CLIP), ['c_fc', 'c_proj'] (open_clip), "
            "['qkv'] (timm ViT), ['conv2'] (timm ResNet)"
        )
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=list(lora_targets),
    )
    n_adapted = 0
    for m in items:
        if not isinstance(m, nn.Module):
            continue
        names = {name.rsplit(".", 1)[-1] for name, _ in m.named_modules()}
        if not names & set(lora_targets):
            continue
        inject_adapter_in_model(config, m)
        for name, p in m.named_parameters():
            p.requires_grad_("lora_" in name)
            n_adapted += "lora_" in name
    if n_adapted == 0:
        raise ValueError(f"lora_targets: no layer named any of {list(lora_targets)} was found")
