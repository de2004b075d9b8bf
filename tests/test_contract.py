"""The contract every registered reward model honours, run over ``mmreward.list_rewards()``.

New registry entries are covered automatically. Entries with public weights are loaded
from tiny checkpoints in their official layout, built by ``tests/tiny`` (an entry without
a builder fails here).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import mmreward
from mmreward import RewardInput
from mmreward.interface import INPUT_FIELDS
from tests.tiny import TINY

B = 3
LEARNED_RTOL = 0.05  # bf16 vs fp32, relative to the largest |score| in the batch


def _load(name: str, tmp_dir) -> mmreward.RewardModel:
    """Models with public weights load from a tiny checkpoint in their official layout."""
    kwargs = TINY[name](tmp_dir) if name in TINY else {}
    try:
        return mmreward.load(name, **kwargs)
    except mmreward.WeightsNotFoundError as e:
        pytest.fail(f"{name}: no tiny checkpoint builder in tests/tiny ({str(e).splitlines()[0]})")


def _side(rm: mmreward.RewardModel) -> tuple[int, int]:
    return tuple(rm.native_resolution) if rm.native_resolution else (32, 32)


def _mixed_images(rm: mmreward.RewardModel, sample_batch: torch.Tensor) -> torch.Tensor:
    """B images of different content: noise, a photograph, a flat grey image."""
    h, w = _side(rm)
    photo = F.interpolate(sample_batch[:1], size=(h, w), mode="bilinear", antialias=True)
    return torch.cat([torch.rand(1, 3, h, w), photo.clamp(0, 1), torch.full((1, 3, h, w), 0.5)])[:B]


def _fields(rm: mmreward.RewardModel, images: torch.Tensor) -> dict[str, Any]:
    """Every input the model declares, for a batch built around ``images``."""
    n = images.shape[0]
    out: dict[str, Any] = {}
    if "images" in rm.inputs:
        out["images"] = images
    if "videos" in rm.inputs:
        t = rm.native_frames or 4
        frames = [images.roll(shifts=k, dims=-1) for k in range(t)]  # a panning "video"
        out["videos"] = torch.stack(frames, dim=1)
        out["fps"] = 8.0
    if "prompts" in rm.inputs:
        subjects = ["an astronaut", "a cup of coffee", "a grey wall", "a cat", "a camera"]
        out["prompts"] = [f"a photo of {subjects[i % len(subjects)]}" for i in range(n)]
    if "responses" in rm.inputs:
        out["responses"] = [f"The answer is {i + 2}." for i in range(n)]
    if "steps" in rm.inputs:
        out["steps"] = [
            [f"Step 1: {i} + 2 = {i + 2}.", f"So the answer is {i + 2}."] for i in range(n)
        ]
    return out


def _select(fields: dict[str, Any], i: int) -> dict[str, Any]:
    return RewardInput(**fields).select([i]).__dict__


@pytest.fixture(scope="module", params=mmreward.list_rewards())
def rm(request, tmp_path_factory) -> mmreward.RewardModel:
    return _load(request.param, tmp_path_factory.mktemp(request.param.replace(".", "_")))


def test_declares_valid_metadata(rm):
    assert rm.inputs and set(rm.inputs) <= set(INPUT_FIELDS), rm.inputs
    assert isinstance(rm.differentiable, bool)
    assert rm.reward_name in mmreward.list_rewards()
    assert not rm.training
    if rm.native_resolution is not None:
        assert len(rm.native_resolution) == 2 and all(s > 0 for s in rm.native_resolution)


@torch.no_grad()
def test_scores_shape_finite_float(rm, sample_batch):
    fields = _fields(rm, _mixed_images(rm, sample_batch))
    out = rm(RewardInput(**fields))
    assert out.scores.shape == (B,)
    assert out.scores.is_floating_point() and torch.isfinite(out.scores).all()
    for name in rm.sub_score_names:
        assert out.sub_scores[name].shape == (B,)
        assert torch.isfinite(out.sub_scores[name]).all()
    if out.step_scores is not None:
        assert len(out.step_scores) == B
    # score() (same keyword names as the batch fields) agrees with the forward
    torch.testing.assert_close(rm.score(**fields).scores, out.scores)


def test_gradient_reaches_pixels(rm):
    h, w = _side(rm)
    x = (0.05 + 0.9 * torch.rand(B, 3, h, w)).requires_grad_(True)
    scores = rm(RewardInput(**_fields(rm, x))).scores
    if not rm.differentiable:
        # declared non-differentiable: it must still accept pixels that require grad
        assert scores.shape == (B,) and torch.isfinite(scores).all()
        return
    scores.sum().backward()
    assert x.grad is not None, "no gradient reached the pixels"
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in rm.parameters())


@torch.no_grad()
def test_bf16_matches_fp32(rm, sample_batch):
    fields = _fields(rm, _mixed_images(rm, sample_batch))
    ref = rm(RewardInput(**fields)).scores
    rm_bf16 = copy.deepcopy(rm).to(torch.bfloat16)
    for out in (
        rm_bf16(RewardInput(**fields).to(dtype=torch.bfloat16)).scores,  # bf16 pixels
        rm_bf16.score(**fields).scores,  # score() casts pixels to the model's dtype
    ):
        assert out.shape == (B,) and out.is_floating_point()
        assert torch.isfinite(out).all()
        scale = ref.abs().max().clamp_min(1e-6)
        err = (out.float() - ref).abs().max()
        assert err <= LEARNED_RTOL * scale, f"bf16 {out.tolist()} vs fp32 {ref.tolist()}"


@torch.no_grad()
def test_batched_equals_individual(rm, sample_batch):
    fields = _fields(rm, _mixed_images(rm, sample_batch))
    batched = rm(RewardInput(**fields)).scores
    alone = torch.cat([rm(RewardInput(**_select(fields, i))).scores for i in range(B)])
    atol = 1e-5 * float(batched.abs().max().clamp_min(1e-6))
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=atol)
