"""GAN-RM: a reward model trained as a discriminator, from a few hundred unpaired target images.

Liu et al. 2025, "Fake it till You Make it: Reward Modeling as Discriminative Prediction"
(https://arxiv.org/abs/2506.13846, code: github.com/Visualignment/GAN-RM). No preference
labels: a discriminator D learns to tell a small set of *Preference Proxy Data* (PPD:
unpaired images with the look you want) from the policy's own generations,

    L = −E_{x∼PPD} log D(x) − E_{x∼G} log(1 − D(x)),                         (GAN-RM eq. 1)

and its logit is the reward. **Rank-based bootstrapping** then refines it: fresh policy
samples are ranked by the current D; the top-ranked become soft positive pseudo-labels,
the bottom-ranked negatives, and D is retrained on PPD + pseudo-labelled samples. The
reward drives Best-of-N selection (:func:`best_of_n_images`) and writes winner/loser pairs
for Diffusion-DPO (:func:`write_dpo_pairs`, the pairwise JSONL ``diffusion_align`` reads).

Encoders (architecture as data, so a saved model rebuilds with no download):

- ``encoder="clip-vision"``: a transformers ``CLIPVisionModel`` from a vision config dict;
  weights from any transformers CLIP directory (only ``vision_model.*`` keys are read);
- ``encoder="timm"``: any ``timm.create_model`` name + kwargs, pooled features.

Pixels are preprocessed with tensor ops (:class:`~mmreward.preprocess.Preprocess`), so the
score is differentiable w.r.t. the ``[0,1]`` pixels.

>>> import torch
>>> rm = GanRewardModel(encoder="timm", encoder_config={"name": "resnet18",
...     "kwargs": {"channels": [8, 8, 8, 8]}}, hidden=[8],
...     preprocess={"resolution": 32, "crop": "none", "mean": "half", "std": "half"})
>>> rm.score(torch.rand(3, 3, 32, 32)).scores.shape
torch.Size([3])
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmreward.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_state_dict_strict, read_state_dict
from mmreward.errors import InputError, WeightsNotFoundError
from mmreward.interface import RewardInput, RewardModel, RewardOutput, check_pixels
from mmreward.preprocess import Preprocess
from vision_rm.heads import MLPHead, apply_tuning

ENCODERS = ("clip-vision", "timm")
LABEL_MODES = ("rank", "confidence")

# -- building blocks -------------------------------------------------------------------


class ClipVisionEncoder(nn.Module):
    """A transformers ``CLIPVisionModel`` → its pooled output (post-layernorm CLS), ``(B, D)``."""

    def __init__(self, vision_config: Mapping[str, Any]) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        cfg = {k: v for k, v in vision_config.items() if k != "model_type"}
        self.model = CLIPVisionModel(CLIPVisionConfig(**cfg))
        self.num_features = int(self.model.config.hidden_size)
        self.image_size = int(self.model.config.image_size)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.model(pixel_values=pixels).pooler_output


class TimmEncoder(nn.Module):
    """A head-less timm model (``num_classes=0``) → pooled features ``(B, D)``."""

    def __init__(self, name: str, kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        import timm

        self.model = timm.create_model(name, pretrained=False, num_classes=0, **dict(kwargs or {}))
        self.num_features = int(self.model.num_features)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.model(pixels)


def build_encoder(encoder: str, encoder_config: Mapping[str, Any]) -> nn.Module:
    """The encoder module named ``encoder`` (one of :data:`ENCODERS`) from its config."""
    if encoder == "clip-vision":
        return ClipVisionEncoder(encoder_config)
    if encoder == "timm":
        if "name" not in encoder_config:
            raise ValueError("encoder_config: the timm encoder needs 'name' (e.g. 'resnet18')")
        return TimmEncoder(encoder_config["name"], encoder_config.get("kwargs"))
    raise ValueError(f"encoder: expected one of {ENCODERS}, got {encoder!r}")


# -- model -----------------------------------------------------------------------------


class GanRewardModel(RewardModel):
    """``score = logit D(x) = head(encoder(preprocess(x)))``; higher = more like the targets.

    ``extras["probability"]`` holds ``D(x) = σ(score)``. The prompt is not used: GAN-RM
    learns a look from unpaired images.

    Args:
        encoder: ``"clip-vision"`` or ``"timm"``.
        encoder_config: the CLIP vision config dict, or ``{"name": timm_name, "kwargs": {…}}``.
        preprocess: the preprocessing config (resolution, resize, crop, mean, std).
        hidden, dropout: the MLP head.
        tuning: ``"full"`` (default), ``"lora"`` (needs ``lora_targets``) or ``"frozen"``
            encoder; the head always trains.
    """

    inputs = ("images",)
    differentiable = True

    def __init__(
        self,
        encoder: str = "clip-vision",
        encoder_config: Mapping[str, Any] | None = None,
        preprocess: Mapping[str, Any] | None = None,
        hidden: Sequence[int] = (128,),
        dropout: float = 0.1,
        tuning: str = "full",
        lora_targets: Sequence[str] | None = None,
        lora_rank: int = 8,
    ) -> None:
        super().__init__()
        if encoder_config is None:
            raise ValueError(f"encoder_config: required for encoder {encoder!r}")
        self.encoder = build_encoder(encoder, encoder_config)
        if preprocess is None:
            side = getattr(self.encoder, "image_size", 224)
            preprocess = {"resolution": side, "resize": "bicubic", "crop": "center",
                          "mean": "openai_clip", "std": "openai_clip"}  # fmt: skip
        self.preprocess = Preprocess(preprocess)
        self.native_resolution = tuple(self.preprocess.size)
        self.head = MLPHead(self.encoder.num_features, hidden, dropout)
        self.tuning = tuning
        self._tuning_kwargs = {"lora_targets": lora_targets, "lora_rank": lora_rank}
        if tuning != "lora":  # LoRA adapters go in after the encoder's weights load
            apply_tuning([self.encoder], tuning)
        else:
            self.apply_lora()
        self.reward_name = "gan-rm.local"
        self.init_kwargs = {
            "encoder": encoder,
            "encoder_config": json.loads(json.dumps(dict(encoder_config))),
            "preprocess": self.preprocess.config,
            "hidden": list(hidden),
            "dropout": dropout,
            "tuning": tuning,
            "lora_targets": None if lora_targets is None else list(lora_targets),
            "lora_rank": lora_rank,
        }

    def apply_lora(self) -> None:
        """Inject LoRA adapters into the encoder (``tuning="lora"``)."""
        apply_tuning(
            [self.encoder],
            "lora",
            lora_targets=self._tuning_kwargs["lora_targets"],
            lora_rank=self._tuning_kwargs["lora_rank"],
            lora_alpha=float(self._tuning_kwargs["lora_rank"]),
        )

    def train(self, mode: bool = True) -> GanRewardModel:
        super().train(mode)
        if self.tuning == "frozen":
            self.encoder.eval()  # frozen weights: no dropout / BatchNorm-statistics updates
        return self

    def logits(self, images: Tensor) -> Tensor:
        """``(B,)`` discriminator logits of ``[0,1]`` pixels (no input validation)."""
        x = self.preprocess(images.float())
        feats = self.encoder(x.to(next(self.encoder.parameters()).dtype))
        return self.head(feats.to(next(self.head.parameters()).dtype)).float()

    def compute(self, batch: RewardInput) -> RewardOutput:
        logit = self.logits(batch.images)
        return RewardOutput(scores=logit, extras={"probability": torch.sigmoid(logit)})


# -- losses and pseudo-labels ------------------------------------------------------------


def discriminator_loss(
    target_logits: Tensor, sample_logits: Tensor, sample_labels: Tensor | None = None
) -> Tensor:
    """GAN-RM eq. 1, ``½·(−E_PPD log D − E_G log(1 − D))``, with optional soft labels.

    ``target_logits``: D's logits on Preference Proxy Data (label 1). ``sample_logits``:
    on policy samples, labelled ``sample_labels`` in [0,1] (default 0: every sample is a
    fake). Each group is averaged on its own, so the loss does not depend on the ratio of
    targets to samples in a batch; an empty group contributes 0.

    >>> round(discriminator_loss(torch.tensor([0.0]), torch.tensor([0.0])).item(), 4)
    0.6931
    """
    parts = []
    if target_logits.numel():
        ones = torch.ones_like(target_logits)
        parts.append(F.binary_cross_entropy_with_logits(target_logits, ones))
    if sample_logits.numel():
        if sample_labels is None:
            sample_labels = torch.zeros_like(sample_logits)
        if sample_labels.shape != sample_logits.shape:
            raise InputError(
                "sample_labels",
                f"shape {tuple(sample_logits.shape)}",
                str(tuple(sample_labels.shape)),
            )
        if bool(((sample_labels < 0) | (sample_labels > 1)).any()):
            raise InputError("sample_labels", "values in [0,1]", "values outside [0,1]")
        labels = sample_labels.to(sample_logits)
        parts.append(F.binary_cross_entropy_with_logits(sample_logits, labels))
    if not parts:
        raise InputError("batch", "at least one target or sample logit", "none")
    return torch.stack(parts).sum() / 2


@dataclass
class PseudoLabels:
    """Bootstrapping labels: ``index`` into the ranked samples and their ``labels`` in [0,1]."""

    index: Tensor  # (K,) long
    labels: Tensor  # (K,) float
    n_positive: int
    n_negative: int


def rank_pseudo_labels(
    scores: Tensor,
    top_fraction: float = 0.25,
    bottom_fraction: float = 0.25,
    mode: Literal["rank", "confidence"] = "rank",
    high: float = 1.0,
    low: float = 0.5,
) -> PseudoLabels:
    """Rank samples by the discriminator's ``scores`` (logits) and label the extremes.

    The top ``k⁺ = ceil(top_fraction·n)`` become soft positives, the bottom
    ``k⁻ = ceil(bottom_fraction·n)`` negatives (label 0); the middle is left out.

    - ``mode="rank"``: the positive at rank ``r`` (0 = best) gets
      ``high − (high − low)·r/(k⁺ − 1)`` (``high`` when ``k⁺ = 1``): a linear ramp;
    - ``mode="confidence"``: its label is the discriminator's own ``σ(score)`` (the
      paper's "confidence scores as soft labels").

    Ties in ``scores`` keep input order (stable sort).

    >>> pl = rank_pseudo_labels(torch.tensor([0.1, 3.0, -2.0, 1.0]), 0.5, 0.25)
    >>> pl.index.tolist(), pl.labels.tolist()
    ([1, 3, 2], [1.0, 0.5, 0.0])
    """
    s = torch.as_tensor(scores).detach().float().flatten()
    n = s.numel()
    if n == 0:
        raise InputError("scores", "at least one sample", "none")
    for name, frac in (("top_fraction", top_fraction), ("bottom_fraction", bottom_fraction)):
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"{name}: expected a value in [0, 1], got {frac}")
    if top_fraction + bottom_fraction > 1.0:
        raise ValueError(
            f"top_fraction + bottom_fraction: expected ≤ 1 (disjoint sets), got "
            f"{top_fraction} + {bottom_fraction}"
        )
    if mode not in LABEL_MODES:
        raise ValueError(f"mode: expected one of {LABEL_MODES}, got {mode!r}")
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"low, high: expected 0 ≤ low ≤ high ≤ 1, got {low}, {high}")
    order = torch.argsort(s, descending=True, stable=True)
    k_pos = min(n, math.ceil(top_fraction * n - 1e-9))
    k_neg = min(n - k_pos, math.ceil(bottom_fraction * n - 1e-9))
    pos = order[:k_pos]
    neg = order[n - k_neg :] if k_neg else order[:0]
    if mode == "rank":
        ramp = torch.arange(k_pos, dtype=torch.float32) / max(k_pos - 1, 1)
        pos_labels = high - (high - low) * ramp
    else:
        pos_labels = torch.sigmoid(s[pos])
    labels = torch.cat([pos_labels, torch.zeros(k_neg)])
    return PseudoLabels(torch.cat([pos, neg]), labels, k_pos, k_neg)


# -- training ----------------------------------------------------------------------------


@dataclass
class DiscriminatorConfig:
    epochs: int = 6  # passes over the larger of the two groups (targets / samples)
    batch_size: int = 64  # targets and samples per step, each
    lr: float = 3e-4  # AdamW learning rate of the encoder
    head_lr: float = 1e-3  # AdamW learning rate of the head
    weight_decay: float = 0.01
    val_fraction: float = 0.1  # of each group, held out for the accuracy curve
    seed: int = 0
    progress: bool = True


def _split(n: int, frac: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=g)
    n_val = int(round(frac * n)) if n > 1 else 0
    return perm[n_val:], perm[:n_val]


@torch.no_grad()
def discriminator_accuracy(
    model: GanRewardModel,
    targets: Tensor,
    samples: Tensor,
    sample_labels: Tensor | None = None,
    batch_size: int = 256,
) -> float:
    """Balanced accuracy: mean of (targets with D > ½) and (samples on their label's side).

    Samples with label ≥ ½ count as positives (soft positives included).
    """
    was = model.training
    model.eval()
    parts = []
    if len(targets):
        logit = _batched_logits(model, targets, batch_size)
        parts.append((logit > 0).float().mean().item())
    if len(samples):
        logit = _batched_logits(model, samples, batch_size)
        lab = torch.zeros(len(samples)) if sample_labels is None else sample_labels.float().cpu()
        parts.append(((logit > 0) == (lab >= 0.5)).float().mean().item())
    model.train(was)
    return float(sum(parts) / len(parts))


def _batched_logits(model: GanRewardModel, images: Tensor, batch_size: int) -> Tensor:
    return torch.cat(
        [model.logits(images[i : i + batch_size].to(model.device)).cpu()
         for i in range(0, len(images), batch_size)]
    )  # fmt: skip


def train_discriminator(
    model: GanRewardModel,
    targets: Tensor,
    samples: Tensor,
    sample_labels: Tensor | None = None,
    config: DiscriminatorConfig | None = None,
    desc: str = "GAN-RM",
) -> list[dict[str, float]]:
    """Fit ``model`` to separate ``targets`` (PPD, label 1) from ``samples`` (labels, default 0).

    Each step draws ``batch_size`` targets and ``batch_size`` samples (epoch-shuffled,
    seeded) and minimises :func:`discriminator_loss`. A ``val_fraction`` of each group is
    held out; returns one row per epoch: ``epoch``, ``loss``, ``train_accuracy``,
    ``val_accuracy`` (balanced, see :func:`discriminator_accuracy`).
    """
    from tqdm.auto import tqdm

    cfg = config or DiscriminatorConfig()
    check_pixels(targets, "targets", 4)
    check_pixels(samples, "samples", 4)
    if sample_labels is not None and sample_labels.shape != (len(samples),):
        raise InputError(
            "sample_labels", f"shape ({len(samples)},)", str(tuple(sample_labels.shape))
        )
    labels = torch.zeros(len(samples)) if sample_labels is None else sample_labels.float().cpu()
    g = torch.Generator().manual_seed(cfg.seed)
    t_train, t_val = _split(len(targets), cfg.val_fraction, g)
    s_train, s_val = _split(len(samples), cfg.val_fraction, g)
    head = list(model.head.parameters())
    ids = {id(p) for p in head}
    enc = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": head, "lr": cfg.head_lr}]
    if enc:
        groups.append({"params": enc, "lr": cfg.lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps = max(1, math.ceil(max(len(t_train), len(s_train)) / cfg.batch_size))
    device = model.device
    history = []
    bar = tqdm(total=cfg.epochs * steps, desc=desc, disable=not cfg.progress)
    for epoch in range(cfg.epochs):
        model.train()
        tp = t_train[torch.randperm(len(t_train), generator=g)]
        sp = s_train[torch.randperm(len(s_train), generator=g)]
        total = 0.0
        for k in range(steps):
            ti = tp[(torch.arange(cfg.batch_size) + k * cfg.batch_size) % len(tp)]
            si = sp[(torch.arange(cfg.batch_size) + k * cfg.batch_size) % len(sp)]
            logits = model.logits(torch.cat([targets[ti], samples[si]]).to(device))
            loss = discriminator_loss(logits[: len(ti)], logits[len(ti) :], labels[si].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            bar.update(1)
        row = {
            "epoch": epoch + 1,
            "loss": total / steps,
            "train_accuracy": discriminator_accuracy(
                model, targets[t_train], samples[s_train], labels[s_train]
            ),
        }
        if len(t_val) and len(s_val):
            row["val_accuracy"] = discriminator_accuracy(
                model, targets[t_val], samples[s_val], labels[s_val]
            )
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_accuracy']:.3f}")
    bar.close()
    model.eval()
    return history


@dataclass
class BootstrapConfig:
    top_fraction: float = 0.25  # of each round's fresh samples → soft positives
    bottom_fraction: float = 0.25  # → negatives
    label_mode: Literal["rank", "confidence"] = "rank"
    high: float = 1.0  # soft label of the best-ranked sample (rank mode)
    low: float = 0.5  # soft label of the last positive (rank mode)


def bootstrap_round(
    model: GanRewardModel,
    targets: Tensor,
    samples: Tensor,
    config: BootstrapConfig | None = None,
    train_config: DiscriminatorConfig | None = None,
    desc: str = "GAN-RM bootstrap",
) -> tuple[PseudoLabels, list[dict[str, float]]]:
    """One rank-based bootstrapping round on fresh policy ``samples``.

    Scores them with the current discriminator, labels the extremes with
    :func:`rank_pseudo_labels`, and continues training ``model`` on the targets plus
    the pseudo-labelled samples. Returns the labels (indices into ``samples``) and the
    training history.
    """
    bc = config or BootstrapConfig()
    check_pixels(samples, "samples", 4)
    model.eval()
    with torch.no_grad():
        scores = _batched_logits(model, samples, 256)
    pl = rank_pseudo_labels(scores, bc.top_fraction, bc.bottom_fraction, bc.label_mode,
                            bc.high, bc.low)  # fmt: skip
    history = train_discriminator(model, targets, samples[pl.index], pl.labels, train_config, desc)
    return pl, history


# -- using the reward --------------------------------------------------------------------


def best_of_n_images(reward: RewardModel, candidates: Tensor, batch_size: int = 256) -> Tensor:
    """Best-of-N: ``candidates (P, N, 3, H, W)`` → index ``(P,)`` of the highest-scored per row.

    Any image reward works (ties → lowest index, :func:`mmreward.selection.best_of_n`).
    """
    from mmreward.selection import best_of_n

    if not isinstance(candidates, Tensor) or candidates.ndim != 5:
        given = tuple(candidates.shape) if isinstance(candidates, Tensor) else type(candidates)
        raise InputError("candidates", "a (P, N, 3, H, W) tensor in [0,1]", str(given))
    p, n = candidates.shape[:2]
    scores = reward.score(candidates.flatten(0, 1), batch_size=batch_size).scores
    return best_of_n(scores.view(p, n).cpu())


def pair_indices(
    scores: Tensor, min_gap: float = 0.0, pairs_per_group: int = 1
) -> list[tuple[int, int, int]]:
    """Winner/loser pairs per group: ``scores (P, N)`` → ``[(row, winner, loser)]``.

    With candidates of a row ranked best first (stable sort), pair ``i`` is
    ``(rank i, rank N−1−i)`` for ``i < pairs_per_group`` (and ``i < N−1−i``): the best
    against the worst, the second best against the second worst, and so on. Pairs whose
    score gap is ≤ ``min_gap`` are skipped (no clear preference).

    >>> pair_indices(torch.tensor([[0.1, 2.0, -1.0], [1.0, 1.0, 1.0]]))
    [(0, 1, 2)]
    >>> pair_indices(torch.tensor([[0.0, 3.0, 1.0, 2.0]]), pairs_per_group=2)
    [(0, 1, 0), (0, 3, 2)]
    """
    s = torch.as_tensor(scores).float()
    if s.ndim != 2 or s.shape[1] < 2:
        raise InputError("scores", "shape (P, N) with N ≥ 2", str(tuple(s.shape)))
    if pairs_per_group < 1:
        raise ValueError(f"pairs_per_group: expected ≥ 1, got {pairs_per_group}")
    n = s.shape[1]
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    out = []
    for row in range(s.shape[0]):
        for i in range(min(pairs_per_group, n // 2)):
            w, lo = int(order[row, i]), int(order[row, n - 1 - i])
            if s[row, w] - s[row, lo] > min_gap:
                out.append((row, w, lo))
    return out


def write_dpo_pairs(
    images: Tensor,
    prompts: Sequence[str],
    scores: Tensor,
    directory: str | Path,
    min_gap: float = 0.0,
    pairs_per_group: int = 1,
    name: str = "pairs.jsonl",
) -> Path:
    """Write Diffusion-DPO pairs (best vs worst scored candidates of each prompt, see
    :func:`pair_indices`).

    ``images (P, N, 3, H, W)`` are the N candidates of ``prompts[p]``; ``scores (P, N)``
    their rewards. Writes PNGs under ``directory/images`` and ``directory/name`` with rows
    ``{"prompt", "images": [winner, loser], "choice": 0, "margin": gap}`` (mmreward's
    pairwise format, read by :class:`diffusion_align.data.PreferencePairs`). Returns the
    JSONL path.
    """
    from mmreward.report import save_png, write_jsonl

    if images.ndim != 5:
        raise InputError("images", "a (P, N, 3, H, W) tensor", str(tuple(images.shape)))
    if len(prompts) != images.shape[0] or tuple(scores.shape) != tuple(images.shape[:2]):
        raise InputError(
            "prompts/scores",
            f"{images.shape[0]} prompts and scores of shape {tuple(images.shape[:2])}",
            f"{len(prompts)} prompts, scores {tuple(scores.shape)}",
        )
    directory = Path(directory)
    rows = []
    s = scores.float().cpu()
    for k, (p, w, lo) in enumerate(pair_indices(s, min_gap, pairs_per_group)):
        files = []
        for tag, j in (("w", w), ("l", lo)):
            path = save_png(images[p, j], directory / "images" / f"{k:06d}_{tag}.png")
            files.append(path.relative_to(directory).as_posix())
        rows.append({"prompt": prompts[p], "images": files, "choice": 0,
                     "margin": float(s[p, w] - s[p, lo])})  # fmt: skip
    if not rows:
        raise ValueError(f"min_gap: no group has a score gap above {min_gap}; no pairs written")
    return write_jsonl(directory / name, rows)


# -- checkpoint converter (official keys → ours) ----------------------------------------


def convert_clip_vision(
    state_dict: Mapping[str, Tensor], own_keys: Sequence[str]
) -> dict[str, Tensor]:
    """A transformers ``CLIPModel`` state dict → :class:`ClipVisionEncoder` keys.

    Keeps ``vision_model.*`` (the image tower, without its projection) and drops the text
    tower, the projections and ``logit_scale``; the prefix is adapted to the installed
    transformers' ``CLIPVisionModel`` layout (``model.vision_model.…`` or ``model.…``).
    """
    nested = any(k.startswith("model.vision_model.") for k in own_keys)
    out = {}
    for k, v in state_dict.items():
        if k.startswith("vision_model."):
            rest = k[len("vision_model.") :]
            out[f"model.vision_model.{rest}" if nested else f"model.{rest}"] = v
    return out


def _read_clip_dir(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise WeightsNotFoundError(
            f"clip_weights: {folder} has no config.json (a transformers CLIP directory)"
        )
    config = json.loads(cfg_path.read_text())
    vision = config.get("vision_config", config)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return vision, read_state_dict(folder / name)
    raise WeightsNotFoundError(
        f"clip_weights: {folder} has no model.safetensors or pytorch_model.bin"
    )


# -- factories ---------------------------------------------------------------------------


def from_clip(
    clip_weights: str | Path,
    preprocess: Mapping[str, Any] | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> GanRewardModel:
    """A fresh GAN-RM on the image tower of a transformers CLIP directory (head random).

    >>> from mmreward.world.gold import assets_dir                   # doctest: +SKIP
    >>> rm = from_clip(assets_dir() / "clip")                          # doctest: +SKIP
    """
    folder = Path(clip_weights)
    vision, sd = _read_clip_dir(folder)
    torch.manual_seed(seed)
    tuning = kwargs.pop("tuning", "full")
    first = "full" if tuning == "lora" else tuning  # adapters after the weights load
    model = GanRewardModel("clip-vision", vision, preprocess, tuning=first, **kwargs)
    own = list(model.encoder.state_dict())
    load_state_dict_strict(
        model.encoder, sd, convert=lambda s: convert_clip_vision(s, own), source=str(folder)
    )
    if tuning == "lora":
        model.tuning = "lora"
        model.init_kwargs["tuning"] = "lora"
        model.apply_lora()
    return model


def gan_rm(
    weights: str | Path | None = None, saved_dir: str | Path | None = None, **kwargs: Any
) -> GanRewardModel:
    """``gan-rm``: a trained GAN-RM from a local directory (``save_pretrained`` output).

    ``mmreward.load("gan-rm", weights="runs/ganrm/model")`` or ``mmreward.load(dir)``;
    there are no public weights (train one with ``python -m vision_rm.ganrm_world``).
    When rebuilt from a saved directory (``saved_dir``), the registry loads the weights.
    """
    if saved_dir is not None or (weights is None and "encoder_config" in kwargs):
        return GanRewardModel(**kwargs)
    if weights is None:
        raise WeightsNotFoundError(
            "gan-rm: no public weights; pass weights='DIR' (a directory written by "
            "GanRewardModel.save_pretrained, e.g. by `python -m vision_rm.ganrm_world`)"
        )
    folder = Path(weights)
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise WeightsNotFoundError(
            f"gan-rm: {folder} must hold {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(written by GanRewardModel.save_pretrained)"
        )
    saved = json.loads((folder / CONFIG_NAME).read_text())
    model = GanRewardModel(**{**saved.get("kwargs", {}), **kwargs})
    load_state_dict_strict(model, read_state_dict(folder / WEIGHTS_NAME), source=str(folder))
    return model.eval()


# -- registrations: mmreward/catalog/ganrm.py (data only, lazy "vision_rm.ganrm:gan_rm") --
