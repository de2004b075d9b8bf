"""VideoAlign-style multi-dimensional video reward model (VideoReward).

A vision-language model (Qwen2-VL family; any ``transformers`` image-text-to-text class
whose base model takes ``pixel_values_videos``/``video_grid_thw``) reads the video and a
prompt that ends with three special reward tokens, one per dimension:

- **VQ** visual quality (clarity, single-frame plausibility),
- **MQ** motion quality (smoothness, dynamics),
- **TA** text alignment (the video shows what the prompt asks for).

The last hidden state at each reward token goes through one ``Linear(hidden, 3)`` head;
the sub-score of dimension d is column d of the head at token d (the diagonal of the
``(3 tokens × 3 outputs)`` block, as in the reference ``reward_token="special"`` path, ref).
Sub-scores are z-scored with statistics stored per checkpoint, ``(r_d − μ_d) / σ_d``, and
**Overall = VQ + MQ + TA** (after normalisation, ref).

Preprocessing is tensor ops on ``(B,T,3,H,W)`` pixels in [0,1] (resize to multiples of
``patch_size·merge_size`` within the processor's pixel budget, CLIP normalisation, Qwen2-VL
patchification), so gradients reach the pixels. Training uses the Rao-Kupper
Bradley-Terry-with-ties loss (:func:`mmreward.losses.bt_ties_loss`, k = 5) on per-dimension
A/B/tie labels (:func:`train_videoalign`).

Paper: Liu et al. 2025, "Improving Video Generation with Human Feedback"
(arXiv:2501.13918): VideoReward, VideoGen-RewardBench 73.59 / 61.26 accuracy w/o / w ties.

>>> # rm = mmreward.load("videoalign", weights="/models/videoreward")      # exported layout
>>> # out = rm(videos=torch.rand(2, 8, 3, 64, 64), prompts=["a cat", "a dog"])
>>> # out.scores (Overall), out.sub_scores["VQ"], ["MQ"], ["TA"]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmreward import losses, metrics
from mmreward.checkpoint import atomic_write, read_state_dict, save_state_dict
from mmreward.errors import CheckpointError, InputError
from mmreward.interface import RewardInput, RewardModel, RewardOutput
from video.samplers import uniform_indices

#: The reward dimensions, in head-column order.
DIMENSIONS = ("VQ", "MQ", "TA")
#: Their special tokens (the reference's names, ref).
REWARD_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
#: The user message; ``{prompt}`` is the generation prompt. Modelled on the reference's
#: "detailed_special" template: a short rubric, then one reward token per dimension.
PROMPT_TEMPLATE = (
    "Evaluate the video generated from the prompt: {prompt}. "
    "Visual quality (clarity, sharpness): <|VQ_reward|> "
    "Motion quality (smooth, natural motion): <|MQ_reward|> "
    "Text alignment (the video shows the prompt): <|TA_reward|>"
)
HEAD_FILE = "reward_head.safetensors"  # exported layout: head weights + z-score statistics
CONFIG_FILE = "videoalign.json"  # exported layout: the reward model's options
BACKBONE_DIR = "backbone"  # mmreward layout: VLM config + processor files (no weights)
TIE_K = 5.0  # Rao-Kupper tie parameter used by VideoAlign (ref)
REGISTRY_NAME = "videoalign.videoreward"  # the catalog entry that rebuilds this class


# ----------------------------------------------------------------------- preprocessing
def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Qwen2-VL's target size: sides multiples of ``factor``, area in [min, max] pixels,
    aspect ratio kept as closely as possible (the processor's ``smart_resize``)."""
    if max(height, width) / min(height, width) > 200:
        raise InputError("videos", "an aspect ratio below 200", f"{height}×{width} frames")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


@dataclass(frozen=True)
class VideoPatchConfig:
    """The video processor's geometry and normalisation, read from a ``transformers`` processor."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    resample: str = "bicubic"

    @classmethod
    def from_processor(cls, processor: Any, **overrides: Any) -> VideoPatchConfig:
        vp = getattr(processor, "video_processor", None) or processor.image_processor
        size = getattr(vp, "size", None) or {}
        size = dict(size) if not isinstance(size, dict) else size
        values = {
            "patch_size": int(vp.patch_size),
            "temporal_patch_size": int(vp.temporal_patch_size),
            "merge_size": int(vp.merge_size),
            "min_pixels": int(size.get("shortest_edge") or getattr(vp, "min_pixels", 56 * 56)),
            "max_pixels": int(size.get("longest_edge") or getattr(vp, "max_pixels", 1003520)),
            "mean": tuple(float(m) for m in vp.image_mean),
            "std": tuple(float(s) for s in vp.image_std),
            "resample": {2: "bilinear", 3: "bicubic"}.get(
                int(getattr(vp, "resample", 3)), "bicubic"
            ),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def video_patches(videos: Tensor, cfg: VideoPatchConfig) -> tuple[Tensor, Tensor]:
    """Differentiable Qwen2-VL video patchification of ``(B,T,3,H,W)`` pixels in [0,1].

    Returns ``pixel_values_videos`` ``(B·N, 3·tp·p·p)`` (N = grid_t·grid_h·grid_w patches per
    video) and ``video_grid_thw`` ``(B,3)``; the frame count is padded to a multiple of the
    temporal patch size by repeating the last frame, as the processor does.
    """
    b, t, c, h, w = videos.shape
    factor = cfg.patch_size * cfg.merge_size
    rh, rw = smart_resize(h, w, factor, cfg.min_pixels, cfg.max_pixels)
    x = videos.reshape(b * t, c, h, w)
    if (rh, rw) != (h, w):
        x = F.interpolate(x, size=(rh, rw), mode=cfg.resample, align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)  # the processor resizes uint8 frames, which saturate
    mean = x.new_tensor(cfg.mean).view(1, 3, 1, 1)
    std = x.new_tensor(cfg.std).view(1, 3, 1, 1)
    x = ((x - mean) / std).reshape(b, t, c, rh, rw)
    tp, p, m = cfg.temporal_patch_size, cfg.patch_size, cfg.merge_size
    if pad := -t % tp:
        x = torch.cat([x, x[:, -1:].expand(-1, pad, -1, -1, -1)], dim=1)
    gt, gh, gw = x.shape[1] // tp, rh // p, rw // p
    x = x.reshape(b, gt, tp, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)  # Qwen2-VL's patch order
    patches = x.reshape(b * gt * gh * gw, c * tp * p * p)
    grid = torch.tensor([[gt, gh, gw]] * b, dtype=torch.long, device=videos.device)
    return patches, grid


# ------------------------------------------------------------------------------ model
class VideoAlignReward(RewardModel):
    """VideoReward: a VLM with a linear reward head read at three special tokens.

    Args:
        vlm: a ``transformers`` VLM (e.g. ``Qwen2VLForConditionalGeneration``).
        processor: its processor (tokenizer + video processor; a chat template is used
            when it has one).
        num_frames: frames sampled uniformly from each input video (None: all frames).
        max_pixels, min_pixels: per-frame pixel budget (None: the processor's).
        prompt_template: the user message; must contain ``{prompt}`` and the three
            reward tokens once each.
        normalize: apply the stored z-score statistics to the sub-scores (an error
            when the checkpoint has none; see :meth:`fit_zscore`).
        padding_side: where rows are padded in a batch (scores do not depend on it).
    """

    inputs = ("prompts", "videos")
    differentiable = True
    sub_score_names = DIMENSIONS

    def __init__(
        self,
        vlm: nn.Module,
        processor: Any,
        *,
        num_frames: int | None = None,
        max_pixels: int | None = None,
        min_pixels: int | None = None,
        prompt_template: str = PROMPT_TEMPLATE,
        normalize: bool = True,
        padding_side: str = "right",
    ) -> None:
        super().__init__()
        self.reward_name = REGISTRY_NAME
        for token in ("{prompt}", *REWARD_TOKENS):
            if prompt_template.count(token) != 1:
                raise ValueError(f"prompt_template: must contain {token!r} exactly once")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        self.vlm = vlm
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self._add_reward_tokens()
        self.patch_cfg = VideoPatchConfig.from_processor(
            processor, max_pixels=max_pixels, min_pixels=min_pixels
        )
        self.num_frames = num_frames
        self.prompt_template = prompt_template
        self.normalize = normalize
        self.padding_side = padding_side
        hidden = _text_config(vlm.config).hidden_size
        # one Linear(hidden, 3) head, no bias, fp32 (ref: rm_head)
        self.head = nn.Linear(hidden, len(DIMENSIONS), bias=False)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden))
        self.register_buffer("zscore_mean", torch.full((len(DIMENSIONS),), float("nan")))
        self.register_buffer("zscore_std", torch.full((len(DIMENSIONS),), float("nan")))
        self.init_kwargs = {
            "num_frames": num_frames,
            "max_pixels": max_pixels,
            "min_pixels": min_pixels,
            "prompt_template": prompt_template,
            "normalize": normalize,
            "padding_side": padding_side,
        }

    def _add_reward_tokens(self) -> None:
        tok = self.tokenizer
        missing = [t for t in REWARD_TOKENS if t not in tok.get_vocab()]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing})
        self.reward_token_ids = [int(tok.convert_tokens_to_ids(t)) for t in REWARD_TOKENS]
        if len(tok) > self.vlm.get_input_embeddings().weight.shape[0]:
            self.vlm.resize_token_embeddings(len(tok))
        cfg = self.vlm.config
        self.video_token_id = int(cfg.video_token_id)
        self.image_token_id = int(getattr(cfg, "image_token_id", -1) or -1)
        self.video_token = tok.convert_ids_to_tokens(self.video_token_id)

    # -- z-score statistics -------------------------------------------------------------
    @property
    def has_zscore(self) -> bool:
        return bool(
            torch.isfinite(self.zscore_mean).all() and torch.isfinite(self.zscore_std).all()
        )

    def set_zscore(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> None:
        """Store per-dimension statistics (VQ, MQ, TA order); ``std`` must be > 0."""
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        for name, t in (("mean", mean_t), ("std", std_t)):
            if t.shape != (len(DIMENSIONS),) or not bool(torch.isfinite(t).all()):
                raise ValueError(f"zscore {name}: expected 3 finite values (VQ, MQ, TA), got {t}")
        if bool((std_t <= 0).any()):
            raise ValueError(f"zscore std: expected values > 0, got {std_t.tolist()}")
        self.zscore_mean.copy_(mean_t)
        self.zscore_std.copy_(std_t)

    @torch.no_grad()
    def fit_zscore(
        self, videos: Tensor, prompts: Sequence[str], batch_size: int = 8
    ) -> dict[str, list[float]]:
        """Set the statistics to the mean/std of the raw sub-scores on reference videos."""
        raws = []
        for s in range(0, len(prompts), batch_size):
            batch = RewardInput(
                prompts=list(prompts[s : s + batch_size]), videos=videos[s : s + batch_size]
            )
            batch.validate(self.inputs)
            raws.append(self.raw_scores(batch).float())
        raw = torch.cat(raws)
        if raw.shape[0] < 2:
            raise ValueError("videos: need at least 2 reference videos to estimate a std")
        self.set_zscore(raw.mean(0), raw.std(0).clamp_min(1e-6))
        return {"mean": self.zscore_mean.tolist(), "std": self.zscore_std.tolist()}

    # -- the forward ----------------------------------------------------------------------
    def _frames(self, videos: Tensor) -> tuple[Tensor, list[int]]:
        t = videos.shape[1]
        if self.num_frames is None or self.num_frames == t:
            return videos, list(range(t))
        idx = uniform_indices(t, self.num_frames)
        return videos[:, idx], idx

    def _user_text(self, prompt: str) -> str:
        text = self.prompt_template.format(prompt=prompt)
        chat_template = getattr(self.processor, "chat_template", None)
        if not chat_template:
            return f"<|vision_start|>{self.video_token}<|vision_end|>{text}"
        messages = [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}
        ]
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def encode(self, prompts: Sequence[str], tokens_per_video: int) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask ``(B, L)`` of the prompts, video tokens expanded."""
        for i, p in enumerate(prompts):
            if any(t in p for t in (*REWARD_TOKENS, self.video_token)):
                raise InputError(f"prompts[{i}]", "text without reserved special tokens", repr(p))
        rows = []
        for p in prompts:
            text = self._user_text(p)
            if text.count(self.video_token) != 1:
                raise ValueError(
                    f"processor: the chat template must place one {self.video_token!r} for the video"
                )
            text = text.replace(self.video_token, self.video_token * tokens_per_video)
            rows.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), int(pad_id), dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            sl = (
                slice(0, len(r))
                if self.padding_side == "right"
                else slice(longest - len(r), longest)
            )
            ids[i, sl] = torch.as_tensor(r)
            mask[i, sl] = 1
        return ids, mask

    def raw_scores(self, batch: RewardInput) -> Tensor:
        """Un-normalised sub-scores ``(B, 3)`` (VQ, MQ, TA), differentiable."""
        videos, _ = self._frames(batch.videos)
        param = next(self.vlm.parameters())
        pixel_values, grid = video_patches(videos.to(param.device, torch.float32), self.patch_cfg)
        per_video = int(grid[0].prod()) // self.patch_cfg.merge_size**2
        ids, mask = self.encode(batch.prompts, per_video)
        ids, mask = ids.to(param.device), mask.to(param.device)
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "pixel_values_videos": pixel_values.to(param.dtype),
            "video_grid_thw": grid,
        }
        base = getattr(self.vlm, self.vlm.base_model_prefix, self.vlm)
        if _accepts(base, "mm_token_type_ids"):
            kinds = torch.zeros_like(ids)
            kinds[ids == self.image_token_id] = 1
            kinds[ids == self.video_token_id] = 2
            kwargs["mm_token_type_ids"] = kinds
        hidden = base(**kwargs, use_cache=False).last_hidden_state  # (B, L, H)
        positions = torch.stack([(ids == t).int().argmax(dim=1) for t in self.reward_token_ids], 1)
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None]
        h = hidden[rows, positions].float()  # (B, 3, H): hidden state at each reward token
        logits = F.linear(h, self.head.weight.float())  # (B, 3 tokens, 3 outputs)
        return logits.diagonal(dim1=1, dim2=2)  # token d → output d (ref)

    def compute(self, batch: RewardInput) -> RewardOutput:
        raw = self.raw_scores(batch)
        scores = raw
        if self.normalize:
            if not self.has_zscore:
                raise RuntimeError(
                    f"{self.reward_name}: z-score statistics are missing from this checkpoint "
                    "(zscore_mean/zscore_std unset); compute them with rm.fit_zscore(videos, "
                    "prompts), set them with rm.set_zscore(mean, std), or build the model "
                    "with normalize=False"
                )
            scores = (raw - self.zscore_mean.float()) / self.zscore_std.float()
        subs = {d: scores[:, i] for i, d in enumerate(DIMENSIONS)}
        _, idx = self._frames(batch.videos)
        extras: dict[str, Any] = {"raw": raw, "frame_indices": [idx] * raw.shape[0]}
        if batch.fps is not None:
            extras["fps"] = batch.fps if isinstance(batch.fps, list) else [batch.fps] * raw.shape[0]
        return RewardOutput(scores=scores.sum(dim=1), sub_scores=subs, extras=extras)

    # -- persistence ----------------------------------------------------------------------
    def save_extra_files(self, directory: Path) -> None:
        """The VLM config and the processor files, so :func:`mmreward.load` rebuilds offline."""
        folder = Path(directory) / BACKBONE_DIR
        self.vlm.config.save_pretrained(folder)
        self.processor.save_pretrained(folder)

    def export_pretrained(self, directory: str | Path) -> Path:
        """The Hugging Face layout: the VLM and processor through ``save_pretrained``, the head
        and z-score statistics in ``reward_head.safetensors``, the options in ``videoalign.json``.

        ``mmreward.load("videoalign", weights=directory)`` loads it back (``from_pretrained``).
        """
        directory = Path(directory)
        self.vlm.save_pretrained(directory)
        self.processor.save_pretrained(directory)
        head = {k: v for k, v in self.state_dict().items() if not k.startswith("vlm.")}
        save_state_dict(head, directory / HEAD_FILE)
        options = {k: v for k, v in self.init_kwargs.items()}
        atomic_write(
            directory / CONFIG_FILE, lambda p: p.write_text(json.dumps(options, indent=2) + "\n")
        )
        return directory

    def load_head(self, state_dict: Mapping[str, Tensor], source: str = HEAD_FILE) -> None:
        """Strictly load the head + statistics (official ``rm_head.weight`` is accepted)."""
        sd = {("head.weight" if k == "rm_head.weight" else k): v for k, v in state_dict.items()}
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("vlm.")}
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        mismatched = sorted(
            f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
            for k in set(own) & set(sd)
            if sd[k].shape != own[k].shape
        )
        if missing or unexpected or mismatched:
            raise CheckpointError(missing, unexpected, mismatched, source=source)
        self.load_state_dict({**self.vlm_state(), **sd}, strict=True)

    def vlm_state(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith("vlm.")}


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def _accepts(module: nn.Module, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- loading
def _load_vlm(path: Path, trust_remote_code: bool = False) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    vlm = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    return vlm, processor


def _vlm_from_config(path: Path, trust_remote_code: bool = False) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from mmreward.text.hf import _no_init_weights

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with _no_init_weights():  # every weight comes from model.safetensors
        vlm = AutoModelForImageTextToText.from_config(
            config, dtype=torch.float32, trust_remote_code=trust_remote_code
        )
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    return vlm, processor


def build_videoalign(
    weights: str | Path | None = None,
    *,
    saved_dir: str | Path | None = None,
    trust_remote_code: bool = False,
    **options: Any,
) -> VideoAlignReward:
    """Registry factory.

    - ``weights``: a folder in the exported layout (:meth:`VideoAlignReward.export_pretrained`):
      a ``transformers`` VLM + processor (``from_pretrained``) plus ``reward_head.safetensors``
      (head weight and z-score statistics, strictly loaded; the reference's
      ``rm_head.weight`` name is accepted) and optional ``videoalign.json`` options;
    - ``saved_dir``: a folder written by ``save_pretrained`` (``mmreward.load(folder)``; the
      registry then loads ``model.safetensors`` strictly).
    """
    if saved_dir is not None:
        vlm, processor = _vlm_from_config(Path(saved_dir) / BACKBONE_DIR, trust_remote_code)
        return VideoAlignReward(vlm, processor, **options)
    if weights is None:
        raise ValueError(
            "weights: expected a VideoAlign folder (a transformers VLM directory with "
            f"{HEAD_FILE}), got None; pass mmreward.load('videoalign', weights='/path')"
        )
    path = Path(weights).expanduser()
    if (path / "model_config.json").is_file() and not (path / HEAD_FILE).is_file():
        raise ValueError(
            f"weights: {path} is the reference training layout (model_config.json + "
            "checkpoint-*/ LoRA files); merge the adapters into the base Qwen2-VL with the "
            f"reference code, save it with save_pretrained and the rm_head weight as {HEAD_FILE} "
            "(plus zscore_mean/zscore_std from inference_config) into one folder"
        )
    if not (path / HEAD_FILE).is_file():
        raise FileNotFoundError(f"weights: {path} has no {HEAD_FILE} (the reward head)")
    saved_options = {}
    if (path / CONFIG_FILE).is_file():
        saved_options = json.loads((path / CONFIG_FILE).read_text())
    vlm, processor = _load_vlm(path, trust_remote_code)
    kwargs = {**saved_options, **options}
    rm = VideoAlignReward(vlm, processor, **kwargs)
    rm.load_head(read_state_dict(path / HEAD_FILE), source=str(path / HEAD_FILE))
    rm.init_kwargs = dict(kwargs)
    return rm


# ---------------------------------------------------------------------------- training
#: label values: 1 = A better, -1 = B better, 0 = tie (the losses' convention)
LABELS = {"A": 1, "B": -1, "same": 0, "tie": 0}


@dataclass
class VideoPairs:
    """Preference pairs held in memory: videos ``(N,T,3,H,W)`` in [0,1] for A and B, prompts,
    and per-dimension labels ``{dim: (N,) in {1,-1,0}}`` for VQ/MQ/TA/Overall."""

    videos_a: Tensor
    videos_b: Tensor
    prompts: list[str]
    labels: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, idx: Sequence[int]) -> VideoPairs:
        i = torch.as_tensor(list(idx), dtype=torch.long)
        return VideoPairs(
            self.videos_a[i],
            self.videos_b[i],
            [self.prompts[j] for j in idx],
            {k: v[i] for k, v in self.labels.items()},
        )


def pair_loss(
    raw_a: Tensor,
    raw_b: Tensor,
    labels: Mapping[str, Tensor],
    k: float = TIE_K,
    weights: Mapping[str, float] | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Mean over dimensions of the BT-with-ties loss on per-dimension labels.

    ``raw_a``/``raw_b`` are ``(B, 3)`` raw sub-scores; a label for ``"Overall"`` is scored on
    the sums. ``weights`` (default 1 each) weight the dimensions that have labels.
    """
    terms, logs = [], {}
    for name, y in labels.items():
        if name in DIMENSIONS:
            d = DIMENSIONS.index(name)
            ra, rb = raw_a[:, d], raw_b[:, d]
        elif name == "Overall":
            ra, rb = raw_a.sum(1), raw_b.sum(1)
        else:
            raise ValueError(
                f"labels: unknown dimension {name!r}; expected {DIMENSIONS} or Overall"
            )
        w = 1.0 if weights is None else float(weights.get(name, 0.0))
        if w == 0.0:
            continue
        loss = losses.bt_ties_loss(ra, rb, y.to(ra.device), k=k)
        terms.append(w * loss)
        logs[f"loss_{name}"] = float(loss.detach())
    if not terms:
        raise ValueError("labels: no dimension to train on")
    total = torch.stack(terms).sum() / len(terms)
    return total, logs


@dataclass
class TrainSettings:
    """Settings of :func:`train_videoalign` (defaults sized for the built-in world on CPU)."""

    steps: int = 300  # optimizer steps
    batch_size: int = 8  # pairs per step
    lr: float = 1e-3  # AdamW, whole VLM + head
    head_lr: float | None = None  # separate head learning rate (None: lr)
    weight_decay: float = 0.0
    tie_k: float = TIE_K
    max_grad_norm: float = 1.0
    seed: int = 0
    eval_every: int = 0  # 0: only at the end
    progress: bool = True


def train_videoalign(
    rm: VideoAlignReward,
    train: VideoPairs,
    settings: TrainSettings | None = None,
    eval_pairs: VideoPairs | None = None,
    log: Any = None,
) -> list[dict[str, float]]:
    """Fine-tune ``rm`` (VLM + head) with the BT-with-ties loss on per-dimension labels.

    Pairs are drawn without replacement (reshuffled each epoch, seeded); A and B videos go
    through one forward. Returns the per-step log (loss, per-dimension losses, and held-out
    accuracies at ``eval_every`` steps and at the end).
    """
    from tqdm.auto import tqdm

    s = settings or TrainSettings()
    params = [p for n, p in rm.named_parameters() if not n.startswith("head.")]
    groups = [{"params": params}, {"params": list(rm.head.parameters()), "lr": s.head_lr or s.lr}]
    opt = torch.optim.AdamW(groups, lr=s.lr, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(s.seed)
    order: list[int] = []
    history: list[dict[str, float]] = []
    rm.train()
    for step in tqdm(range(1, s.steps + 1), disable=not s.progress, desc="videoalign"):
        if len(order) < s.batch_size:
            order += torch.randperm(len(train), generator=gen).tolist()
        idx, order = order[: s.batch_size], order[s.batch_size :]
        batch = train.select(idx)
        videos = torch.cat([batch.videos_a, batch.videos_b])
        raw = rm.raw_scores(RewardInput(prompts=batch.prompts * 2, videos=videos))
        n = len(idx)
        loss, logs = pair_loss(raw[:n], raw[n:], batch.labels, k=s.tie_k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), s.max_grad_norm)
        opt.step()
        row = {"step": step, "loss": float(loss.detach()), **logs}
        if eval_pairs is not None and (
            step == s.steps or (s.eval_every and step % s.eval_every == 0)
        ):
            rep = evaluate_pairs(rm, eval_pairs)
            row.update({f"eval_{d}_acc": r["accuracy_without_ties"] for d, r in rep.items()})
            rm.train()
        if log is not None:
            log(row)
        history.append(row)
    rm.eval()
    return history


@torch.no_grad()
def pair_raw_scores(
    rm: VideoAlignReward, pairs: VideoPairs, batch_size: int = 16
) -> tuple[Tensor, Tensor]:
    """Raw sub-scores ``(N, 3)`` of the A and B videos."""
    was_training = rm.training
    rm.eval()
    ra, rb = [], []
    for s in range(0, len(pairs), batch_size):
        sl = slice(s, s + batch_size)
        ra.append(rm.raw_scores(RewardInput(prompts=pairs.prompts[sl], videos=pairs.videos_a[sl])))
        rb.append(rm.raw_scores(RewardInput(prompts=pairs.prompts[sl], videos=pairs.videos_b[sl])))
    rm.train(was_training)
    return torch.cat(ra).float().cpu(), torch.cat(rb).float().cpu()


def evaluate_pairs(rm: VideoAlignReward, pairs: VideoPairs) -> dict[str, dict[str, float]]:
    """Accuracy without ties and tie-aware accuracy (threshold sweep), per dimension + Overall."""
    ra, rb = pair_raw_scores(rm, pairs)
    out = {}
    for name, y in pairs.labels.items():
        if name == "Overall":
            a, b = ra.sum(1), rb.sum(1)
        else:
            d = DIMENSIONS.index(name)
            a, b = ra[:, d], rb[:, d]
        out[name] = metrics.preference_accuracy_report(a.numpy(), b.numpy(), y.numpy())
    return out


# ------------------------------------------------------------------------------- CLI
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``mmreward videoalign``: train and evaluate the VideoAlign RM on the world's video pairs."""
    p = subparsers.add_parser(
        "videoalign",
        help="train/evaluate a VideoAlign-style video RM on the world's simulated preferences",
    )
    _arguments(p)
    p.set_defaults(func=_cli)
    return p


def _cli(args: argparse.Namespace) -> int:
    run(args)
    return 0


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (pairs, model, JSON, PNG)")
    p.add_argument("--n-train", type=int, default=192, help="training pairs")
    p.add_argument("--n-test", type=int, default=64, help="held-out pairs (test digit scans)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4, help="VLM learning rate")
    p.add_argument("--head-lr", type=float, default=1e-2, help="reward-head learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build world pairs, train, evaluate on held-out pairs; write JSON + PNG + the model."""
    from video.world_prefs import run_experiment

    return run_experiment(args)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m video.videoalign", description=__doc__.split("\n")[0]
    )
    _arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
