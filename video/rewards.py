"""Frame-aggregated video rewards: any image reward model on the frames of a video.

``r(video) = Σ_i w_i · r_img(frame_i) + β · temporal(video)``

- aggregation (T2V-Turbo, Li et al. 2024; InstructVideo, Yuan et al. 2024):
  ``mean`` (w_i = 1/F), ``centre`` (temporally attenuated, w_i ∝ exp(−|i − F/2|·λ),
  normalised to sum 1, i = 0…F−1) or ``min`` (the worst frame);
- temporal consistency: the mean cosine similarity of consecutive frame embeddings from a
  CLIP-style image encoder, ``(1/(F−1)) Σ_i cos(e_i, e_{i+1})`` (1 for a one-frame video);
  reported as the ``temporal`` sub-score and added with weight β (``temporal_weight``).

Everything is tensor ops on ``(B,T,3,H,W)`` pixels, so gradients reach the frames when the
image reward is differentiable (ReFL-style video fine-tuning: ``loss = −r.mean()``). The
image reward's own sub-scores are aggregated with the same weights and keep their names.

>>> import torch
>>> from mmreward.analytic import Colorfulness
>>> rm = FrameAggregatedReward(Colorfulness(), aggregate="centre")
>>> rm(videos=torch.rand(2, 5, 3, 16, 16)).scores.shape
torch.Size([2])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmreward.interface import RewardInput, RewardModel, RewardOutput

AGGREGATES = ("mean", "centre", "min")
DEFAULT_CENTRE_LAMBDA = 0.5  # λ of the centre weighting, per frame


def frame_weights(num_frames: int, aggregate: str = "mean", centre_lambda: float = 0.5) -> Tensor:
    """The ``(F,)`` weights of ``mean`` or ``centre`` aggregation (sum 1).

    >>> frame_weights(3, "centre", centre_lambda=1.0)   # exp(-1.5), exp(-0.5), exp(-0.5)
    tensor([0.1554, 0.4223, 0.4223])
    """
    if num_frames < 1:
        raise ValueError(f"num_frames: expected ≥ 1, got {num_frames}")
    if aggregate == "mean":
        return torch.full((num_frames,), 1.0 / num_frames)
    if aggregate == "centre":
        i = torch.arange(num_frames, dtype=torch.float64)
        w = torch.exp(-(i - num_frames / 2).abs() * centre_lambda)
        return (w / w.sum()).float()
    raise ValueError(f"aggregate: weights exist for 'mean' and 'centre', got {aggregate!r}")


def temporal_consistency(embeddings: Tensor) -> Tensor:
    """Mean cosine similarity of consecutive embeddings ``(B,T,D)`` → ``(B,)``; 1 if T = 1.

    >>> e = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    >>> temporal_consistency(e)
    tensor([0.5000])
    """
    if embeddings.ndim != 3:
        raise ValueError(f"embeddings: expected (B,T,D), got shape {tuple(embeddings.shape)}")
    if embeddings.shape[1] < 2:
        return embeddings.new_ones(embeddings.shape[0])
    e = F.normalize(embeddings.float(), dim=-1)
    return (e[:, 1:] * e[:, :-1]).sum(-1).mean(1)


class ClipImageEmbedder(nn.Module):
    """Unit-norm image embeddings from a CLIP-family reward model's backbone.

    Works with :mod:`vision_rm` CLIP rewards (``.backbone.encode_image`` and a tensor
    ``.preprocess``), so the world's ``clipscore.world-tiny`` provides one.
    """

    def __init__(self, clip_reward: nn.Module) -> None:
        super().__init__()
        if not (hasattr(clip_reward, "backbone") and hasattr(clip_reward, "preprocess")):
            raise ValueError(
                f"temporal_encoder: {type(clip_reward).__name__} has no CLIP backbone "
                "(.backbone.encode_image and .preprocess); pass a CLIP reward model"
            )
        self.clip = clip_reward

    def forward(self, images: Tensor) -> Tensor:
        x = self.clip.preprocess(images.float())
        param = next(self.clip.backbone.parameters())
        return F.normalize(self.clip.backbone.encode_image(x.to(param.dtype)).float(), dim=-1)


class FrameAggregatedReward(RewardModel):
    """An image reward model applied to every frame and aggregated (see module docstring).

    Args:
        image_reward: any :class:`~mmreward.interface.RewardModel` that scores ``images``.
        aggregate: ``mean``, ``centre`` or ``min``.
        centre_lambda: λ of the centre weighting.
        num_frames: if set, videos with another frame count are subsampled uniformly
            (``round(linspace(0, T−1, n))``) before scoring; None scores every frame given.
        temporal_weight: β, the weight of the temporal-consistency term in the score.
        temporal_encoder: a module mapping ``(N,3,H,W)`` frames to ``(N,D)`` embeddings
            (e.g. :class:`ClipImageEmbedder`); None: no temporal term.

    Output: ``scores (B,)``; sub-scores ``frames`` (the aggregated image score),
    ``temporal`` (when an encoder is set) and the image reward's own sub-scores,
    aggregated; ``extras["frame_scores"] (B,T)`` and ``extras["frame_indices"]``.
    """

    inputs = ("videos",)

    def __init__(
        self,
        image_reward: RewardModel,
        aggregate: str = "mean",
        centre_lambda: float = DEFAULT_CENTRE_LAMBDA,
        num_frames: int | None = None,
        temporal_weight: float = 0.0,
        temporal_encoder: nn.Module | Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate: expected one of {AGGREGATES}, got {aggregate!r}")
        if "images" not in image_reward.inputs:
            raise ValueError(
                f"image_reward: expected a model that scores images, "
                f"{image_reward.reward_name} takes {image_reward.inputs}"
            )
        if not centre_lambda >= 0:
            raise ValueError(f"centre_lambda: expected ≥ 0, got {centre_lambda}")
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames: expected ≥ 1 or None, got {num_frames}")
        if temporal_weight and temporal_encoder is None:
            raise ValueError("temporal_weight: needs a temporal_encoder to embed frames")
        self.image_reward = image_reward
        self.aggregate = aggregate
        self.centre_lambda = float(centre_lambda)
        self.num_frames = num_frames
        self.temporal_weight = float(temporal_weight)
        self.temporal_encoder = temporal_encoder
        # instance-level declarations (the class attributes are the defaults)
        self.inputs = ("prompts", "videos") if "prompts" in image_reward.inputs else ("videos",)
        self.differentiable = bool(image_reward.differentiable)
        self.native_resolution = image_reward.native_resolution
        self.native_frames = num_frames
        names = ["frames"] + (["temporal"] if temporal_encoder is not None else [])
        self.sub_score_names = tuple(names) + tuple(image_reward.sub_score_names)
        self.init_kwargs = {
            "aggregate": aggregate,
            "centre_lambda": self.centre_lambda,
            "num_frames": num_frames,
            "temporal_weight": self.temporal_weight,
        }

    def _aggregate(self, per_frame: Tensor) -> Tensor:
        """``(B,T)`` → ``(B,)`` with the configured aggregation (differentiable)."""
        if self.aggregate == "min":
            return per_frame.min(dim=1).values
        w = frame_weights(per_frame.shape[1], self.aggregate, self.centre_lambda)
        return (per_frame * w.to(per_frame)).sum(1)

    def compute(self, batch: RewardInput) -> RewardOutput:
        videos = batch.videos
        b, t = videos.shape[:2]
        idx = list(range(t))
        if self.num_frames is not None and self.num_frames != t:
            from video.samplers import uniform_indices

            idx = uniform_indices(t, self.num_frames)
            videos = videos[:, idx]
            t = len(idx)
        frames = videos.reshape(b * t, *videos.shape[2:])
        prompts = None
        if batch.prompts is not None and "prompts" in self.image_reward.inputs:
            prompts = [p for p in batch.prompts for _ in range(t)]
        out = self.image_reward(RewardInput(images=frames, prompts=prompts))
        per_frame = out.scores.float().view(b, t)
        score = self._aggregate(per_frame)
        subs: dict[str, Tensor] = {"frames": score}
        if self.temporal_encoder is not None:
            emb = self.temporal_encoder(frames).reshape(b, t, -1)
            subs["temporal"] = temporal_consistency(emb)
            score = score + self.temporal_weight * subs["temporal"]
        for name, value in out.sub_scores.items():
            subs[name] = self._aggregate(value.float().view(b, t))
        extras: dict[str, Any] = {"frame_scores": per_frame.detach(), "frame_indices": [idx] * b}
        return RewardOutput(scores=score, sub_scores=subs, extras=extras)


# -- factories (registry entries in mmreward/catalog/video.py) ---------------------------
def frame_reward(
    image_reward: str = "gold.world",
    aggregate: str = "mean",
    centre_lambda: float = DEFAULT_CENTRE_LAMBDA,
    num_frames: int | None = None,
    temporal_weight: float = 0.0,
    temporal_encoder: str | None = None,
    **image_kwargs: Any,
) -> FrameAggregatedReward:
    """Build a :class:`FrameAggregatedReward` around a registered image reward.

    ``temporal_encoder`` is ``"image_reward"`` (the image reward's own CLIP backbone), the
    registry name of a CLIP reward whose backbone embeds the frames, or None.

    >>> rm = frame_reward("gold.world", aggregate="min")
    >>> rm.inputs, rm.sub_score_names[:2]
    (('prompts', 'videos'), ('frames', 'digit'))
    """
    import mmreward

    inner = mmreward.load(image_reward, **image_kwargs)
    encoder: nn.Module | None = None
    if temporal_encoder == "image_reward":
        encoder = ClipImageEmbedder(inner)
    elif temporal_encoder is not None:
        encoder = ClipImageEmbedder(mmreward.load(temporal_encoder))
    model = FrameAggregatedReward(
        inner,
        aggregate=aggregate,
        centre_lambda=centre_lambda,
        num_frames=num_frames,
        temporal_weight=temporal_weight,
        temporal_encoder=encoder,
    )
    model.init_kwargs = {
        "image_reward": image_reward,
        **model.init_kwargs,
        "temporal_encoder": temporal_encoder,
        **image_kwargs,
    }
    return model
